//! The store: the SQLite database shared with the host, and the bus that announces changes.
//!
//! [`Store::open`] opens (or creates) the database in WAL mode with a busy timeout, brings the
//! schema up to date, and hands out the two halves the rest of the program uses:
//!
//! - [`Query`] reads. It keeps a small pool of read connections, so any number of threads can
//!   read at once (WAL lets readers run beside a writer).
//! - [`Command`] writes, through one connection behind a mutex (SQLite has one writer at a
//!   time anyway). Writes are queued as data and committed in groups, each in its own
//!   savepoint inside one `BEGIN IMMEDIATE` transaction; once committed, each new activity is
//!   announced on [`Command::notify`], the [`Bus`].
//!
//! The host owns the relay rows; zooid-sync itself only ever calls
//! [`Command::complete_relay_sync`] and [`Command::fail_relay_sync`]. The host-side writes
//! (`create_relay`, `update_relay`, ...) are here for hosts that link the library and for tests;
//! they show in code what a host in another language must do in SQL.

mod bus;
mod error;
mod model;
mod outcomes;
pub mod schema;

pub use schema::SCHEMA_VERSION;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};

pub use bus::{Bus, RecvError, Subscriber};
pub use error::HostError;
use error::NoSuchRelay;
pub use model::{
    activity_type, Activity, BadRow, Relay, RelaySettings, RelayStatus, RELAY_RESOURCE,
    ZOOID_UNAVAILABLE,
};
pub use outcomes::{Outcome, OutcomeKind, Outcomes, WaitError};

use model::{relay_select_list, ACTIVITY_SELECT_LIST, RELAY_WIDTH, SETTINGS_COLUMNS};

mod feed;
mod host;
mod open;
mod query;
#[cfg(test)]
mod tests;
mod worker;
mod writer;
mod writes;

use crate::time::now_unix;
pub(crate) use open::open_connection;
pub use open::StoreOptions;
use open::*;
pub use query::{PendingDeletion, PendingRelay, Placement, RelayForSync, SyncAnswer};
pub use writer::WriteHealth;
use writer::*;
use writes::*;

/// The opened database: its reading and its writing half.
#[derive(Debug)]
pub struct Store {
    /// The reading half.
    pub query: Query,
    /// The writing half; the worker learns of writes through it.
    pub command: Command,
}

struct Db {
    path: PathBuf,
    /// Whether every connection is opened read-only ([`Query::open_read_only`]).
    read_only: bool,
    /// Whether the host's `relay` table has the optional `zooid` column (looked at when the
    /// store opens: a column added later is seen by the next start).
    relay_zooid: bool,
    busy_timeout: Duration,
    readers: Mutex<Readers>,
    /// Signalled when a read connection goes back to the pool.
    reader_returned: Condvar,
    max_readers: usize,
    writer: Mutex<Connection>,
    /// Writes waiting for the writer connection (see [`Command::write`]).
    queue: Mutex<WriteQueue>,
    /// Signalled when the writer thread has something to do (see [`WriteQueue::waiting`]).
    queued: Condvar,
    /// See [`StoreOptions::write_linger`].
    write_linger: Duration,
    /// The connection [`Query::changed`] asks whether anything was committed (its
    /// `data_version` moves only for commits made through other connections).
    watch: Mutex<Option<Connection>>,
    /// Whether a writer thread runs, which writes failed outcomes again until they are
    /// recorded; without one (a foreground `sync`), a failed write is answered at once.
    retrying: AtomicBool,
    /// See [`StoreOptions::feed_interval`].
    feed_interval: Duration,
    /// Whether the feed runs ([`Command::follow_other_writers`]).
    feed_running: AtomicBool,
    /// Activity rows the feed skipped because they cannot be read.
    bad_activity_rows: std::sync::atomic::AtomicU64,
}

/// The reading half of the store. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Query {
    db: Arc<Db>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query({})", self.db.path.display())
    }
}

/// The activity sequence numbers this process wrote and already published, kept only while a
/// feed is attached, so that the feed does not publish them a second time.
#[derive(Default)]
struct OwnWrites {
    tracking: AtomicBool,
    seqs: Mutex<HashSet<i64>>,
}

/// The writing half of the store. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Command {
    db: Arc<Db>,
    /// Every activity written through this store is published here after it commits. The
    /// worker's own channel; a host subscribes with [`Command::outcomes`].
    #[doc(hidden)]
    pub notify: Bus,
    own_writes: Arc<OwnWrites>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Command({})", self.db.path.display())
    }
}
