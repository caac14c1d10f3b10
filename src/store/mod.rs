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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

use model::{relay_select_list, ACTIVITY_SELECT_LIST, SETTINGS_COLUMNS};

/// How the store opens its connections and sizes its bus.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a statement waits for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// How many activities each bus subscriber may have queued before it lags.
    pub bus_capacity: usize,
    /// The most read connections open at once; a reader beyond this waits for one to be
    /// free, so no burst of readers (scrapers, say) can open connections without bound.
    pub max_readers: usize,
    /// How long the writer thread lets outcomes gather before it commits the first one that
    /// arrived: one commit then carries every outcome of that span. Each commit writes the
    /// pages it touched to the WAL whatever it carries, so under load this is most of the
    /// cost of recording an outcome; alone, an outcome is recorded this much later. Zero
    /// commits each outcome as soon as the writer wakes.
    pub write_linger: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            bus_capacity: 4096,
            max_readers: 8,
            write_linger: Duration::from_millis(8),
        }
    }
}

/// The opened database: its reading and its writing half.
#[derive(Debug)]
pub struct Store {
    /// The reading half.
    pub query: Query,
    /// The writing half; the worker learns of writes through it.
    pub command: Command,
}

/// The answer to a manual sync request (`zooid-sync sync`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    /// The request's id in `sync_request`.
    pub request: i64,
    /// The relay it asked to sync.
    pub relay: String,
    /// `synced`, `failed`, `invalid` (the relay cannot be sent as it is) or `unknown`.
    pub outcome: String,
    /// What the worker said.
    pub detail: String,
}

/// A relay waiting for a sync (`synced = 0`), with the error of its last failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRelay {
    /// The relay's id.
    pub id: String,
    /// The error of its last failed attempt; empty if none failed since its last change.
    pub sync_error: String,
}

impl PendingRelay {
    fn from_row(row: &rusqlite::Row) -> Result<PendingRelay, BadRow> {
        use rusqlite::types::ValueRef;
        let rowid: i64 = row.get(0).unwrap_or(-1);
        let bad = |error: String| BadRow {
            table: "relay",
            key: rowid,
            error,
        };
        let text = |i: usize, name: &str| -> Result<String, BadRow> {
            match row.get_ref(i) {
                Ok(ValueRef::Text(t)) => String::from_utf8(t.to_vec())
                    .map_err(|_| bad(format!("column {name} is not valid UTF-8"))),
                Ok(ValueRef::Null) if name == "sync_error" => Ok(String::new()),
                Ok(_) => Err(bad(format!("column {name} does not hold text"))),
                Err(e) => Err(bad(format!("column {name}: {e}"))),
            }
        };
        Ok(PendingRelay {
            id: text(1, "id")?,
            sync_error: text(2, "sync_error")?,
        })
    }
}

/// A relay as a sync reads it ([`Query::get_relay_for_sync`]).
#[derive(Debug, Clone)]
pub struct RelayForSync {
    /// The relay's row.
    pub relay: Relay,
    /// Whether it completed a sync since it was last created: updated, not created, at zooid.
    pub ever_completed: bool,
    /// The newest `seq` of its activity when it was read. A `delete_relay` after it means the
    /// relay this sync read was deleted, whatever row holds its id now.
    pub seen: i64,
}

/// A relay the host deleted that zooid has not confirmed deleting yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeletion {
    /// The relay's id.
    pub id: String,
    /// When the host deleted it (unix seconds).
    pub requested_at: i64,
    /// The error of the last attempt to delete it at zooid, if that failed; empty otherwise.
    pub sync_error: String,
}

struct Db {
    path: PathBuf,
    /// Whether every connection is opened read-only ([`Query::open_read_only`]).
    read_only: bool,
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
}

/// The writes waiting to be committed.
#[derive(Default)]
struct WriteQueue {
    writes: Vec<Queued>,
    /// Whether the writer thread sleeps until a write arrives. Only then is it woken for one;
    /// while it lingers, it is woken only when [`MAX_BATCH`] writes wait.
    waiting: bool,
    /// Outcomes whose write failed for a reason that passes (the database busy, locked, full,
    /// read-only or failing I/O): the writer thread writes them again at `retry_at`. zooid has
    /// them already; only the record is missing, so nothing is sent again meanwhile.
    retry: Vec<Queued>,
    retry_at: Option<Instant>,
    /// The wait before the next retry; doubles up to [`WRITE_RETRY_CAP`] while writes fail.
    backoff: Duration,
    health: WriteHealth,
}

impl WriteQueue {
    /// Keeps `failed` to be written again after the backoff, and notes why.
    fn keep_for_retry(&mut self, failed: Vec<Queued>, error: &str) {
        if failed.is_empty() {
            return;
        }
        self.health.failures += failed.len() as u64;
        self.health.failing = Some(match self.health.failing.take() {
            Some((since, _)) => (since, error.to_string()),
            None => (now_unix(), error.to_string()),
        });
        self.retry.extend(failed);
        self.backoff = (self.backoff * 2).clamp(WRITE_RETRY_BASE, WRITE_RETRY_CAP);
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// A commit went through: the database takes writes again, so what waits is due now.
    fn writes_pass(&mut self) {
        if let Some((since, _)) = self.health.failing.take() {
            log::info!(
                "the database takes writes again after {} s; {} waiting sync outcomes are \
                 written now",
                now_unix().saturating_sub(since),
                self.retry.len()
            );
        }
        self.backoff = Duration::ZERO;
        if !self.retry.is_empty() {
            self.retry_at = Some(Instant::now());
        }
    }
}

/// How the writes of this process fare: what a health check and `/metrics` show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteHealth {
    /// Writes of sync outcomes that failed and were kept to be written again, in all.
    pub failures: u64,
    /// While writes fail: since when (unix seconds) and the last error.
    pub failing: Option<(i64, String)>,
    /// Outcomes waiting to be written again.
    pub waiting: usize,
}

/// The first wait before an outcome whose write failed is written again, and the longest.
const WRITE_RETRY_BASE: Duration = Duration::from_millis(250);
const WRITE_RETRY_CAP: Duration = Duration::from_secs(30);

/// Whether a write that failed with `error` may succeed later as it is: the database was busy
/// or locked, the disk full, the file read-only for now, or I/O failed. A constraint or a
/// malformed statement will not pass by itself.
fn passes(error: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode::*;
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    DatabaseBusy
                        | DatabaseLocked
                        | DiskFull
                        | SystemIoFailure
                        | ReadOnly
                        | CannotOpen
                        | OutOfMemory
                )
        )
    })
}

/// The most writes the writer thread lets gather before it commits, however short the
/// linger so far.
const MAX_BATCH: usize = 256;

/// The pool of read connections: the idle ones, and how many exist in all.
#[derive(Default)]
struct Readers {
    idle: Vec<Connection>,
    open: usize,
}

impl Store {
    /// Opens the database at `path` with default options, creating it if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens the database at `path`, creating it and its tables if needed.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        create_private(&path)?;
        let mut writer = open_connection(&path, options.busy_timeout)?;
        schema::migrate(&mut writer)
            .with_context(|| format!("cannot prepare the database {}", path.display()))?;
        let db = Arc::new(Db::new(path, false, writer, &options));
        Ok(Store {
            query: Query { db: db.clone() },
            command: Command {
                db,
                notify: Bus::new(options.bus_capacity),
                own_writes: Arc::new(OwnWrites::default()),
            },
        })
    }
}

impl Db {
    fn new(path: PathBuf, read_only: bool, writer: Connection, options: &StoreOptions) -> Db {
        Db {
            path,
            read_only,
            busy_timeout: options.busy_timeout,
            readers: Mutex::new(Readers::default()),
            reader_returned: Condvar::new(),
            max_readers: options.max_readers.max(1),
            writer: Mutex::new(writer),
            queue: Mutex::new(WriteQueue::default()),
            queued: Condvar::new(),
            write_linger: options.write_linger,
            retrying: AtomicBool::new(false),
            watch: Mutex::new(None),
        }
    }
}

impl Query {
    /// Opens the database at `path` only to read it, for commands that report (`status`):
    /// every connection is read-only, no lock beyond a reader's is ever taken, and nothing
    /// is created or migrated. The file must exist and its schema be current.
    #[doc(hidden)]
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Query> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            bail!("there is no database at {}", path.display());
        }
        let options = StoreOptions::default();
        let conn = open_read_only_connection(&path, options.busy_timeout)?;
        schema::require_current(&conn)
            .with_context(|| format!("cannot read the database {}", path.display()))?;
        Ok(Query {
            db: Arc::new(Db::new(path, true, conn, &options)),
        })
    }
}

/// Creates the database file, if it does not exist yet, readable by its owner and (as the
/// umask allows) its group, never by other users: it names every relay and its owner.
/// SQLite gives the `-wal` and `-shm` files the same permissions. An existing file is left
/// as the host made it.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot open the database {}: creating it failed",
                path.display()
            )
        }),
    }
}

/// Opens one connection the way every connection of zooid-sync is opened.
pub(crate) fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .with_context(|| format!("cannot use the database {}", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!(
            "the database {} is in journal mode {mode}, not WAL; readers may wait for writers",
            path.display()
        );
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 1 MiB of page cache per connection (SQLite's default is 2 MiB): the working set of a
    // sync is a handful of pages, and a daemon holds several connections.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

/// Opens one connection that can only read: no `journal_mode` change, no creation.
fn open_read_only_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open the database {} to read it", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_unix(secs: i64) -> String {
    let (year, month, day, rem) = civil(secs);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-12-02T18:30:00.123Z`), for logs.
#[cfg(feature = "cli")]
pub(crate) fn format_rfc3339_millis(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (year, month, day, rem) = civil(since.as_secs() as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Unix seconds as a civil date (year, month, day) and the seconds into that day.
fn civil(secs: i64) -> (i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem)
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

impl Query {
    /// Runs `f` on a pooled read connection, waiting for one when all
    /// [`StoreOptions::max_readers`] are in use.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let db = &self.db;
        let mut readers = db.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = loop {
            if let Some(conn) = readers.idle.pop() {
                drop(readers);
                break conn;
            }
            if readers.open < db.max_readers {
                readers.open += 1;
                drop(readers);
                let opened = match db.read_only {
                    true => open_read_only_connection(&db.path, db.busy_timeout),
                    false => open_connection(&db.path, db.busy_timeout),
                };
                match opened {
                    Ok(conn) => break conn,
                    Err(e) => {
                        db.readers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .open -= 1;
                        db.reader_returned.notify_one();
                        return Err(e);
                    }
                }
            }
            readers = db
                .reader_returned
                .wait(readers)
                .unwrap_or_else(PoisonError::into_inner);
        };
        let result = f(&conn);
        db.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .idle
            .push(conn);
        db.reader_returned.notify_one();
        result
    }

    /// Gives memory back after a burst: idle read connections beyond one are closed (a burst
    /// opens them again), and the remaining connections' page caches are emptied
    /// (`PRAGMA shrink_memory`; the writer's only if it is free). A connection refills its
    /// cache on its next use.
    #[doc(hidden)]
    pub fn release_memory(&self) {
        let shrink = |conn: &Connection| {
            if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
                log::debug!("shrinking a connection's cache: {e}");
            }
        };
        let closed = {
            let mut readers = self
                .db
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let keep = readers.idle.len().min(1);
            let closed: Vec<Connection> = readers.idle.drain(keep..).collect();
            readers.open -= closed.len();
            for conn in &readers.idle {
                shrink(conn);
            }
            closed
        };
        drop(closed); // closed outside the lock
        self.db.reader_returned.notify_all();
        if let Ok(writer) = self.db.writer.try_lock() {
            shrink(&writer);
        }
    }

    /// Whether any connection committed since `seen` was taken (`PRAGMA data_version` on a
    /// connection kept for this); moves `seen` on. The first call answers true.
    pub(crate) fn changed(&self, seen: &mut Option<i64>) -> Result<bool> {
        let mut watch = self.db.watch.lock().unwrap_or_else(PoisonError::into_inner);
        if watch.is_none() {
            *watch = Some(open_connection(&self.db.path, self.db.busy_timeout)?);
        }
        let conn = watch.as_ref().expect("opened above");
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        let changed = *seen != Some(version);
        *seen = Some(version);
        Ok(changed)
    }

    /// How this process's writes of sync outcomes fare (see [`WriteHealth`]).
    #[doc(hidden)]
    pub fn write_health(&self) -> WriteHealth {
        let queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
        WriteHealth {
            waiting: queue.retry.len(),
            ..queue.health.clone()
        }
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// The relay with this id, `None` if there is none. A row the host wrote badly is an error
    /// naming the column.
    pub fn get_relay(&self, id: &str) -> Result<Option<Relay>> {
        Ok(self.get_relay_for_sync(id)?.map(|found| found.relay))
    }

    /// The relay with this id and whether it ever completed a sync since it was created (a
    /// relay deleted and created again under the same id starts over), in one read: what a
    /// sync needs to choose between create and update.
    #[doc(hidden)]
    pub fn get_relay_for_sync(&self, id: &str) -> Result<Option<RelayForSync>> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {}, COALESCE((SELECT MAX(seq) FROM activity
                     WHERE resource_type = 'relay' AND resource_id = relay.id), 0),
                   EXISTS (SELECT 1 FROM activity
                     WHERE resource_type = 'relay' AND resource_id = relay.id
                       AND activity_type = 'complete_relay_sync'
                       AND seq > COALESCE((SELECT MAX(seq) FROM activity
                           WHERE resource_type = 'relay' AND resource_id = relay.id
                             AND activity_type = 'create_relay'), 0))
                 FROM relay WHERE id = ?1",
                relay_select_list()
            )
        });
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&SQL)?;
            let mut rows = stmt.query([id])?;
            match rows.next()? {
                Some(row) => {
                    let seen: i64 = row.get(6 + SETTINGS_COLUMNS.len())?;
                    let ever_completed: bool = row.get(7 + SETTINGS_COLUMNS.len())?;
                    Ok(Some(RelayForSync {
                        relay: Relay::from_row(row)?,
                        ever_completed,
                        seen,
                    }))
                }
                None => Ok(None),
            }
        })
        .with_context(|| format!("reading relay {id:?}"))
    }

    /// When relay `id` waits to be deleted at zooid (the host deleted its row with a
    /// `delete_relay` activity, and zooid has not confirmed the deletion since), that
    /// activity's `seq`.
    #[doc(hidden)]
    pub fn deletion_pending(&self, id: &str) -> Result<Option<i64>> {
        self.read(|conn| Ok(pending_deletion(conn, id)?))
            .with_context(|| format!("reading the deletion of relay {id:?}"))
    }

    /// The relays that wait to be deleted at zooid, the oldest deletion first, each with the
    /// error of its last attempt if that failed.
    pub fn list_pending_deletions(&self) -> Result<Vec<PendingDeletion>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.resource_id, COALESCE(CAST(d.created_at AS INTEGER), 0),
                        COALESCE((SELECT CASE WHEN n.activity_type = 'fail_relay_sync'
                                              THEN n.detail END
                                  FROM activity n
                                  WHERE n.resource_type = 'relay'
                                    AND n.resource_id = d.resource_id
                                  ORDER BY n.seq DESC LIMIT 1), '')
                 FROM activity d
                 WHERE d.activity_type = 'delete_relay' AND d.resource_type = 'relay'
                   AND typeof(d.resource_id) = 'text'
                   AND d.seq = (SELECT MAX(x.seq) FROM activity x
                                WHERE x.resource_type = 'relay'
                                  AND x.resource_id = d.resource_id
                                  AND x.activity_type IN ('delete_relay', 'complete_relay_sync'))
                   AND NOT EXISTS (SELECT 1 FROM relay r WHERE r.id = d.resource_id)
                 ORDER BY d.seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PendingDeletion {
                    id: r.get(0)?,
                    requested_at: r.get(1)?,
                    sync_error: match r.get_ref(2)? {
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        _ => String::new(),
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("listing relays waiting to be deleted at zooid")
    }

    /// How many relays are marked synced: what an audit pass checks.
    #[doc(hidden)]
    pub fn count_synced(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT COUNT(*) FROM relay WHERE synced = 1")?
                .query_row([], |r| r.get(0))?)
        })
        .context("counting synced relays")
    }

    /// The first relay marked synced whose id comes after `after` (ids in byte order): the
    /// audit's next step, read by the primary key without holding a list of the fleet.
    #[doc(hidden)]
    pub fn next_synced_relay_after(&self, after: &str) -> Result<Option<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM relay WHERE id > ?1 AND typeof(id) = 'text' AND synced = 1
                 ORDER BY id LIMIT 1",
            )?;
            let mut rows = stmt.query([after])?;
            Ok(match rows.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            })
        })
        .context("reading the next relay to audit")
    }

    /// Every relay, in id order, each read on its own: one bad row does not hide the others.
    pub fn list_relays(&self) -> Result<Vec<Result<Relay>>> {
        self.read(|conn| {
            let sql = format!("SELECT {} FROM relay ORDER BY id", relay_select_list());
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([])?;
            let mut relays = Vec::new();
            while let Some(row) = rows.next()? {
                relays.push(Relay::from_row(row));
            }
            Ok(relays)
        })
    }

    /// Relays with `synced = 0`, with their last sync error. A row whose id or error cannot
    /// be read is a [`BadRow`] in its place; the others are unaffected.
    pub fn list_relays_pending_sync(&self) -> Result<Vec<Result<PendingRelay, BadRow>>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT rowid, id, sync_error FROM relay WHERE synced = 0 ORDER BY updated_at, id",
            )?;
            let mut rows = stmt.query([])?;
            let mut pending = Vec::new();
            while let Some(row) = rows.next()? {
                pending.push(PendingRelay::from_row(row));
            }
            Ok(pending)
        })
        .context("listing relays pending sync")
    }

    /// How many `fail_relay_sync` activities the relay has had since its last other activity:
    /// the number of the attempt that just failed. Failures because zooid was unavailable
    /// ([`ZOOID_UNAVAILABLE`]) are passed over: they neither count nor end the run.
    #[doc(hidden)]
    pub fn count_trailing_sync_failures(&self, relay_id: &str) -> Result<u32> {
        Ok(self.trailing_sync_failures(relay_id)?.0)
    }

    /// [`count_trailing_sync_failures`](Self::count_trailing_sync_failures), and when the
    /// newest of them was recorded (unix seconds): what the next retry is scheduled from.
    #[doc(hidden)]
    pub fn trailing_sync_failures(&self, relay_id: &str) -> Result<(u32, Option<i64>)> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT activity_type, detail, created_at FROM activity
                 WHERE resource_type = 'relay' AND resource_id = ?1
                 ORDER BY seq DESC",
            )?;
            let mut rows = stmt.query([relay_id])?;
            let mut count = 0;
            let mut newest = None;
            while let Some(row) = rows.next()? {
                // An activity type that is not text is some other activity: it ends the run.
                if row.get_ref(0)?.as_str().ok() != Some(activity_type::FAIL_RELAY_SYNC) {
                    break;
                }
                let detail = row.get_ref(1)?.as_str().unwrap_or("");
                if !detail.starts_with(ZOOID_UNAVAILABLE) {
                    count += 1;
                    newest = newest.or(row.get_ref(2)?.as_i64().ok());
                }
            }
            Ok((count, newest))
        })
        .with_context(|| format!("counting failed syncs of relay {relay_id:?}"))
    }

    /// The newest `fail_relay_sync` activity of the relay, if its newest activity is one.
    #[doc(hidden)]
    pub fn trailing_sync_failure(&self, relay_id: &str) -> Result<Option<Activity>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {ACTIVITY_SELECT_LIST} FROM activity
                 WHERE resource_type = 'relay' AND resource_id = ?1
                 ORDER BY seq DESC LIMIT 1"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([relay_id])?;
            let newest = match rows.next()? {
                Some(row) => Some(Activity::from_row(row)?),
                None => None,
            };
            Ok(newest.filter(|a| a.activity_type == activity_type::FAIL_RELAY_SYNC))
        })
    }

    /// Whether zooid ever accepted this relay (a `complete_relay_sync` exists).
    #[doc(hidden)]
    pub fn has_completed_sync(&self, relay_id: &str) -> Result<bool> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM activity
                 WHERE resource_type = 'relay' AND resource_id = ?1
                   AND activity_type = 'complete_relay_sync')",
            )?;
            Ok(stmt.query_row([relay_id], |r| r.get(0))?)
        })
        .with_context(|| format!("reading the sync history of relay {relay_id:?}"))
    }

    /// Up to `limit` activities with `seq > after`, oldest first. A row that cannot be read
    /// is a [`BadRow`] in its place, so a reader can move past it.
    #[doc(hidden)]
    pub fn activities_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Result<Activity, BadRow>>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {ACTIVITY_SELECT_LIST} FROM activity WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![after, limit as i64])?;
            let mut activities = Vec::new();
            while let Some(row) = rows.next()? {
                activities.push(Activity::from_row(row));
            }
            Ok(activities)
        })
        .context("reading new activity")
    }

    /// Runs `f` on one of the read connections (for checks that look at the schema).
    #[cfg(feature = "cli")]
    pub(crate) fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.read(f)
    }

    /// The settings the worker that last held the lease recorded when it started: `name`
    /// and `value` pairs (`retry_base_ms`, `retry_cap_ms`, `retry_max_attempts`,
    /// `relay_domain`, `zooid_api_url`, ...). Empty when no worker recorded any.
    #[doc(hidden)]
    pub fn worker_settings(&self) -> Result<Vec<(String, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT name, value FROM worker_settings")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading the worker's settings")
    }

    /// How many relays there are.
    pub fn count_relays(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM relay", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// How many relays wait for a sync.
    pub fn count_pending(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(
                conn.query_row("SELECT COUNT(*) FROM relay WHERE synced = 0", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
    }

    /// The zooid outage in progress, as the breaker recorded it: since when (unix seconds)
    /// and the last error. `None` while zooid answers.
    #[doc(hidden)]
    pub fn zooid_outage(&self) -> Result<Option<(i64, String)>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT since, last_error FROM zooid_outage WHERE id = 1")?;
            let mut rows = stmt.query([])?;
            match rows.next()? {
                Some(row) => Ok(Some((row.get(0)?, row.get(1)?))),
                None => Ok(None),
            }
        })
        .context("reading the recorded zooid outage")
    }

    /// Manual sync requests after `after` that no worker answered yet: (request, relay id).
    #[doc(hidden)]
    pub fn unanswered_sync_requests(&self, after: i64) -> Result<Vec<(i64, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, relay_id FROM sync_request
                 WHERE id > ?1 AND outcome IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading manual sync requests")
    }

    /// How many of the manual sync requests `first..=last` are answered, and how many of
    /// those synced.
    #[doc(hidden)]
    pub fn count_sync_answers(&self, first: i64, last: i64) -> Result<(u64, u64)> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT COUNT(outcome), COALESCE(SUM(outcome = 'synced'), 0) FROM sync_request
                 WHERE id BETWEEN ?1 AND ?2",
            )?;
            Ok(stmt.query_row([first, last], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?)
        })
        .context("counting the answers to manual sync requests")
    }

    /// The answers to the manual sync requests `first..=last` so far: (request, relay id,
    /// outcome, detail).
    #[doc(hidden)]
    pub fn sync_answers(&self, first: i64, last: i64) -> Result<Vec<SyncAnswer>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, relay_id, outcome, detail FROM sync_request
                 WHERE id BETWEEN ?1 AND ?2 AND outcome IS NOT NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([first, last], |r| {
                Ok(SyncAnswer {
                    request: r.get(0)?,
                    relay: r.get(1)?,
                    outcome: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading the answers to manual sync requests")
    }

    /// Ids of relays waiting for a sync whose last attempt failed (waiting on their backoff or
    /// given up), or of every relay when `all`. Ids that are not text are left out.
    #[doc(hidden)]
    pub fn relay_ids(&self, only_failed: bool) -> Result<Vec<String>> {
        self.read(|conn| {
            let sql = if only_failed {
                "SELECT id FROM relay WHERE synced = 0 AND sync_error != '' ORDER BY id"
            } else {
                "SELECT id FROM relay ORDER BY id"
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query([])?;
            let mut ids = Vec::new();
            while let Some(row) = rows.next()? {
                if let Ok(id) = row.get::<_, String>(0) {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .context("listing relays")
    }

    /// The oldest and the newest activity's `seq` (0 and 0 when there is none).
    #[doc(hidden)]
    pub fn activity_seq_range(&self) -> Result<(i64, i64)> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM activity",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
    }

    /// How many activity rows there are.
    #[doc(hidden)]
    pub fn count_activity(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM activity", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// The newest activity's `seq`, 0 when there is none.
    #[doc(hidden)]
    pub fn last_activity_seq(&self) -> Result<i64> {
        self.read(|conn| {
            Ok(
                conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM activity", [], |r| {
                    r.get(0)
                })?,
            )
        })
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

impl Command {
    /// A `Command` whose bus handle does not keep the bus open (see [`Bus::weak`]).
    /// The worker holds one of these, so it stops when the host drops its own.
    #[doc(hidden)]
    pub fn weak(&self) -> Command {
        Command {
            db: self.db.clone(),
            notify: self.notify.weak(),
            own_writes: self.own_writes.clone(),
        }
    }

    /// Applies `write` and publishes its activity once it is committed.
    ///
    /// Writes are committed in groups: the write is queued, and whichever thread holds the
    /// writer connection applies everything queued in one transaction (each write in its own
    /// savepoint, so one failing write does not undo the others). A thread that finds its
    /// write already done by another returns at once. Under load this turns several commits
    /// into one; alone, it is one transaction as before.
    fn write(&self, write: Write) -> WriteResult {
        let (done, result) = crossbeam_channel::bounded(1);
        self.db
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writes
            .push(Queued {
                write,
                done: Done::Wait(done),
            });
        let mut conn = self
            .db
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Ok(outcome) = result.try_recv() {
            return outcome;
        }
        // Give the other threads one chance to queue their writes behind ours, so that under
        // load one commit carries several outcomes (measured: 169 -> 152 us per sync with four
        // workers; a lone writer pays one sched_yield).
        std::thread::yield_now();
        let later = self.commit_queued(&mut conn);
        drop(conn);
        run_deferred(later);
        result
            .try_recv()
            .unwrap_or_else(|_| Err(anyhow!("the write was lost by the writer")))
    }

    /// Queues `write` for the writer thread ([`Command::spawn_writer`]) and returns at once;
    /// `then` learns the outcome once it committed (or failed). Whoever commits next runs it,
    /// after releasing the writer connection, so `then` may write again.
    fn write_then(&self, write: Write, then: impl FnOnce(WriteResult) + Send + 'static) {
        let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.writes.push(Queued {
            write,
            done: Done::Then(Box::new(then)),
        });
        if queue.waiting || queue.writes.len() >= MAX_BATCH {
            self.db.queued.notify_one();
        }
    }

    /// Commits whatever is queued on this thread, and runs the callbacks of what it
    /// committed: what a caller of [`write_then`](Self::write_then) does when no writer
    /// thread runs (a foreground `zooid-sync sync`).
    pub(crate) fn flush(&self) {
        let mut conn = self
            .db
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let later = self.commit_queued(&mut conn);
        drop(conn);
        run_deferred(later);
    }

    /// Starts the writer thread, which commits queued writes in groups, so that
    /// [`write_then`](Self::write_then) never waits: once a write arrives, it lets others
    /// gather for [`StoreOptions::write_linger`], then commits them all. An outcome whose
    /// write fails for a reason that passes is kept and written again after a backoff
    /// (250 ms doubling to 30 s) until it is recorded; [`Query::write_health`] tells. Stop it
    /// with [`Writer::stop`], which commits what is still queued first.
    pub(crate) fn spawn_writer(
        &self,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Writer> {
        let watch = metrics.watch_thread("zooid-sync-writer");
        let stop = Arc::new(AtomicBool::new(false));
        let (command, stopping) = (self.weak(), stop.clone());
        self.db.retrying.store(true, Ordering::Release);
        let thread = std::thread::Builder::new()
            .name("zooid-sync-writer".into())
            .spawn(move || loop {
                let _watch = &watch;
                let db = &command.db;
                let mut queue = db.queue.lock().unwrap_or_else(PoisonError::into_inner);
                while queue.writes.is_empty() {
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let retry_in = match (queue.retry.is_empty(), queue.retry_at) {
                        (false, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
                        _ => None,
                    };
                    if retry_in.is_some_and(|wait| wait.is_zero()) {
                        break;
                    }
                    queue.waiting = true;
                    queue = match retry_in {
                        Some(wait) => {
                            db.queued
                                .wait_timeout(queue, wait)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                        None => db
                            .queued
                            .wait(queue)
                            .unwrap_or_else(PoisonError::into_inner),
                    };
                    queue.waiting = false;
                }
                let deadline = Instant::now() + db.write_linger;
                while queue.writes.len() < MAX_BATCH && !stopping.load(Ordering::Acquire) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    queue = db
                        .queued
                        .wait_timeout(queue, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                drop(queue);
                metrics.writer_busy(true);
                command.flush();
                metrics.writer_busy(false);
            })?;
        Ok(Writer {
            command: self.weak(),
            stop,
            thread: Some(thread),
        })
    }

    /// Applies every queued write in one transaction, answers each, publishes what committed.
    /// Answers the callbacks to run once the writer connection is released. While a writer
    /// thread runs, outcomes whose write failed for a reason that passes are kept for it to
    /// write again instead of being answered.
    fn commit_queued(&self, conn: &mut Connection) -> Deferred {
        let mut later = Deferred::new();
        let retrying = self.db.retrying.load(Ordering::Acquire);
        let batch = {
            let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let due = !retrying || queue.retry_at.is_some_and(|at| at <= Instant::now());
            let mut batch = if due {
                queue.retry_at = None;
                std::mem::take(&mut queue.retry)
            } else {
                Vec::new()
            };
            batch.append(&mut queue.writes);
            batch
        };
        if batch.is_empty() {
            return later;
        }
        // Whether a write that failed with `error` is kept to be written again.
        let keep = |done: &Done, error: &anyhow::Error| {
            retrying && matches!(done, Done::Then(_)) && passes(error)
        };
        let mut kept = Vec::new();
        let run = |conn: &Connection, sql: &str| -> rusqlite::Result<()> {
            conn.prepare_cached(sql)?.execute([]).map(|_| ())
        };
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            let e = anyhow::Error::from(e);
            let text = format!("cannot start a write transaction: {e}");
            for q in batch {
                if keep(&q.done, &e) {
                    kept.push(q);
                } else {
                    let error = anyhow!("{}: {text}", q.write.describe());
                    q.done.answer(Err(error), &mut later);
                }
            }
            self.retry_later(kept, &text);
            return later;
        }
        let tracking = self.own_writes.tracking.load(Ordering::Acquire);
        let mut applied = Vec::with_capacity(batch.len());
        let mut last_error = String::new();
        for q in batch {
            let outcome = run(conn, "SAVEPOINT one_write")
                .map_err(anyhow::Error::from)
                .and_then(|()| q.write.apply(conn));
            match &outcome {
                Ok(done) => {
                    let _ = run(conn, "RELEASE one_write");
                    if let (true, Some(activity)) = (tracking, &done.activity) {
                        self.own_writes
                            .seqs
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(activity.seq);
                    }
                }
                Err(_) => {
                    let _ = run(conn, "ROLLBACK TO one_write");
                    let _ = run(conn, "RELEASE one_write");
                }
            }
            match outcome {
                Err(e) if keep(&q.done, &e) => {
                    last_error = format!("{e:#}");
                    kept.push(q);
                }
                outcome => {
                    let outcome = outcome.with_context(|| q.write.describe());
                    applied.push((q, outcome));
                }
            }
        }
        if let Err(e) = run(conn, "COMMIT") {
            let _ = run(conn, "ROLLBACK");
            let e = anyhow::Error::from(e);
            for (q, outcome) in applied {
                if let Ok(Applied {
                    activity: Some(activity),
                    ..
                }) = &outcome
                {
                    self.own_writes
                        .seqs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&activity.seq);
                }
                if outcome.is_ok() && keep(&q.done, &e) {
                    kept.push(q);
                } else {
                    let result = outcome.and_then(|_| Err(anyhow!("cannot commit: {e}")));
                    q.done.answer(result, &mut later);
                }
            }
            self.retry_later(kept, &format!("cannot commit: {e}"));
            return later;
        }
        {
            let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.is_empty() {
                queue.writes_pass();
            }
        }
        self.retry_later(kept, &last_error);
        for (q, outcome) in applied {
            if let Ok(Applied {
                activity: Some(activity),
                ..
            }) = &outcome
            {
                self.notify.send(activity.clone());
            }
            q.done.answer(outcome, &mut later);
        }
        later
    }

    /// Keeps outcomes whose write failed, for the writer thread to write again.
    fn retry_later(&self, kept: Vec<Queued>, error: &str) {
        if kept.is_empty() {
            return;
        }
        let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let first = queue.health.failing.is_none();
        queue.keep_for_retry(kept, error);
        if first {
            log::error!(
                "the database refuses writes ({error}); {} sync outcomes wait and are written \
                 again, with backoff, until it accepts them (nothing is sent to zooid again \
                 meanwhile)",
                queue.retry.len()
            );
        }
    }

    /// Records a sync zooid accepted. The relay is marked synced only if its revision is still
    /// `revision`, the one the sync read: a change that landed meanwhile stays pending.
    /// Answers whether the relay is now marked synced (not when it was deleted meanwhile:
    /// then nothing is recorded).
    #[doc(hidden)]
    pub fn complete_relay_sync(&self, relay_id: &str, revision: i64) -> Result<bool> {
        let applied = self.write(Write::Complete {
            relay_id: relay_id.to_string(),
            revision,
            seen: None,
        })?;
        Ok(applied.changed)
    }

    /// [`complete_relay_sync`](Self::complete_relay_sync) through the writer thread: returns
    /// at once, `then` learns whether the relay is now marked synced, or `None` when it was
    /// deleted while its sync was in flight (nothing is recorded then, even if the host
    /// created it again: `seen` is the relay's newest activity when the sync read it).
    pub(crate) fn complete_relay_sync_then(
        &self,
        relay_id: &str,
        revision: i64,
        seen: i64,
        then: impl FnOnce(Result<Option<bool>>) + Send + 'static,
    ) {
        let write = Write::Complete {
            relay_id: relay_id.to_string(),
            revision,
            seen: Some(seen),
        };
        self.write_then(write, move |result| {
            then(result.map(|a| a.activity.is_some().then_some(a.changed)))
        });
    }

    /// Records, through the writer thread, that zooid no longer has relay `relay_id`, whose
    /// deletion the host asked for (`detail` says how zooid answered). `then` learns whether
    /// it was recorded: not when the relay was created again meanwhile.
    pub(crate) fn record_deletion_then(
        &self,
        relay_id: &str,
        detail: &str,
        then: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let write = Write::Deleted {
            relay_id: relay_id.to_string(),
            detail: detail.to_string(),
        };
        self.write_then(write, move |result| {
            then(result.map(|a| a.activity.is_some()))
        });
    }

    /// Marks a synced relay pending again because zooid no longer has it (the existence
    /// audit found it gone); answers whether it was marked (not when it changed meanwhile or
    /// is gone: then its own sync or deletion follows anyway).
    pub(crate) fn mark_lost(&self, relay_id: &str) -> Result<bool> {
        Ok(self
            .write(Write::Lost {
                relay_id: relay_id.to_string(),
            })?
            .changed)
    }

    /// [`fail_relay_sync`](Self::fail_relay_sync) through the writer thread; `then` learns
    /// whether it was recorded: not when the relay was deleted meanwhile, nor when it was
    /// deleted or created again after `seen`, its newest activity when the sync read it.
    pub(crate) fn fail_relay_sync_then(
        &self,
        relay_id: &str,
        error: &str,
        seen: Option<i64>,
        then: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let error = if error.is_empty() {
            "unknown error"
        } else {
            error
        };
        let write = Write::Fail {
            relay_id: relay_id.to_string(),
            error: error.to_string(),
            seen,
        };
        self.write_then(write, move |result| {
            then(result.map(|a| a.activity.is_some()))
        });
    }

    /// Records a failed sync with its error.
    #[doc(hidden)]
    pub fn fail_relay_sync(&self, relay_id: &str, error: &str) -> Result<()> {
        let error = if error.is_empty() {
            "unknown error"
        } else {
            error
        };
        self.write(Write::Fail {
            relay_id: relay_id.to_string(),
            error: error.to_string(),
            seen: None,
        })?;
        Ok(())
    }

    /// Records that zooid has been unavailable since `since` (unix seconds), or updates the
    /// last error of the outage already recorded (keeping its start).
    #[doc(hidden)]
    pub fn record_zooid_outage(&self, since: i64, last_error: &str) -> Result<()> {
        self.write_state(
            "INSERT INTO zooid_outage (id, since, last_error) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET last_error = excluded.last_error",
            params![since, last_error],
        )
        .context("recording the zooid outage")
    }

    /// Records that zooid answers again.
    #[doc(hidden)]
    pub fn clear_zooid_outage(&self) -> Result<()> {
        self.write_state("DELETE FROM zooid_outage", [])
            .context("clearing the zooid outage")
    }

    /// Hands manual syncs of `relay_ids` to the worker holding the lease; answers the request
    /// ids, in order.
    #[doc(hidden)]
    pub fn request_syncs(&self, relay_ids: &[String]) -> Result<Vec<i64>> {
        self.transaction(|conn| {
            let now = now_unix();
            // Housekeeping: answers nobody waited for (a `sync` that was interrupted) are
            // kept for a day, for whoever wants to look, then go.
            conn.prepare_cached(
                "DELETE FROM sync_request WHERE outcome IS NOT NULL AND requested_at < ?1",
            )?
            .execute([now - 86_400])?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO sync_request (relay_id, requested_at) VALUES (?1, ?2)",
            )?;
            relay_ids
                .iter()
                .map(|relay| {
                    stmt.execute(params![relay, now])?;
                    Ok(conn.last_insert_rowid())
                })
                .collect()
        })
        .context("handing manual syncs to the worker")
    }

    /// Forgets the manual sync requests `first..=last`, once their answers were read.
    #[doc(hidden)]
    pub fn forget_sync_requests(&self, first: i64, last: i64) -> Result<()> {
        self.write_state(
            "DELETE FROM sync_request WHERE id BETWEEN ?1 AND ?2",
            params![first, last],
        )
        .context("forgetting manual sync requests")
    }

    /// Answers a manual sync request: `outcome` is `synced`, `failed`, `invalid` or
    /// `unknown`.
    #[doc(hidden)]
    pub fn answer_sync_request(&self, request: i64, outcome: &str, detail: &str) -> Result<()> {
        self.write(Write::Answer {
            request,
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        })
        .map(|_| ())
    }

    /// [`answer_sync_request`](Self::answer_sync_request) through the writer thread, which
    /// writes it again until it is recorded: a `sync` waiting for it always gets its answer.
    pub(crate) fn answer_sync_request_later(&self, request: i64, outcome: &str, detail: &str) {
        let write = Write::Answer {
            request,
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        self.write_then(write, move |result| {
            if let Err(e) = result {
                log::error!("manual sync request {request}: {e:#}");
            }
        });
    }

    /// Records the settings the worker runs with (`name`, `value`), replacing what an earlier
    /// worker recorded (see [`Query::worker_settings`]).
    pub(crate) fn record_worker_settings(&self, settings: &[(&str, String)]) -> Result<()> {
        self.transaction(|conn| {
            // The audit's place in its pass outlives a restart; everything else is replaced.
            conn.execute(
                r"DELETE FROM worker_settings WHERE name NOT LIKE 'audit\_%' ESCAPE '\'",
                [],
            )?;
            let mut stmt =
                conn.prepare_cached("INSERT INTO worker_settings (name, value) VALUES (?1, ?2)")?;
            for (name, value) in settings {
                stmt.execute(params![name, value])?;
            }
            Ok(())
        })
        .context("recording the worker's settings")
    }

    /// Records pieces of the worker's state beside its settings (`Some`), or forgets them
    /// (`None`), in one transaction: what `status` shows of a catch-up in progress.
    pub(crate) fn record_worker_state(&self, state: &[(&str, Option<String>)]) -> Result<()> {
        self.transaction(|conn| {
            for (name, value) in state {
                match value {
                    Some(value) => conn.execute(
                        "INSERT INTO worker_settings (name, value) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        params![name, value],
                    )?,
                    None => conn.execute("DELETE FROM worker_settings WHERE name = ?1", [name])?,
                };
            }
            Ok(())
        })
        .context("recording the worker's state")
    }

    /// Deletes the activity rows with `seq` in `after + 1 ..= through` that were written
    /// before `cutoff` (unix seconds) and that zooid-sync no longer needs, in one short write
    /// transaction; answers how many went. What is kept, whatever its age:
    ///
    /// - each relay's last `complete_relay_sync` (it decides `POST` or `PATCH`), and every
    ///   activity of the relay after it (its trailing failures: attempts, backoff, give-up);
    /// - every activity of a relay that waits for a sync (`synced = 0`), so that no change the
    ///   feed may not have read yet goes;
    /// - every activity of a relay that never completed a sync.
    ///
    /// Rows about other kinds of resource are the host's; zooid-sync needs none of them, and
    /// they go by age alone.
    #[doc(hidden)]
    pub fn prune_activity(&self, after: i64, through: i64, cutoff: i64) -> Result<usize> {
        self.transaction(|conn| {
            conn.prepare_cached(
                "DELETE FROM activity WHERE seq IN (
                   SELECT a.seq FROM activity a
                   WHERE a.seq > ?1 AND a.seq <= ?2 AND a.created_at < ?3
                     AND (a.resource_type != 'relay' OR (
                       EXISTS (SELECT 1 FROM activity c
                               WHERE c.resource_type = 'relay'
                                 AND c.resource_id = a.resource_id
                                 AND c.seq > a.seq
                                 AND c.activity_type = 'complete_relay_sync')
                       AND NOT EXISTS (SELECT 1 FROM relay r
                                       WHERE r.id = a.resource_id AND r.synced = 0))))",
            )?
            .execute(params![after, through, cutoff])
        })
        .context("pruning old activity")
    }

    /// One statement on zooid-sync's own state, which announces nothing on the bus: run on
    /// the writer connection in its own transaction, between group commits.
    fn write_state(&self, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        self.transaction(|conn| conn.execute(sql, params).map(|_| ()))
    }

    /// Runs `f` on the writer connection in one `BEGIN IMMEDIATE` transaction, between group
    /// commits: committed when it succeeds, rolled back when it fails.
    fn transaction<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self
            .db
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&conn) {
            Ok(value) => {
                conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// Subscribes to the sync outcomes recorded from now on: each relay's sync, deletion
    /// or failure, in the order they were committed. This is how a host that runs the worker
    /// ([`crate::Infra`]) learns what became of its changes, without polling.
    ///
    /// ```no_run
    /// # fn example(store: zooid_sync::Store) -> Result<(), Box<dyn std::error::Error>> {
    /// # let settings = zooid_sync::RelaySettings::default();
    /// let outcomes = store.command.outcomes(); // before the change, so none is missed
    /// store.command.create_relay("alpha", &settings)?;
    /// let outcome = outcomes.wait_for("alpha", std::time::Duration::from_secs(30))?;
    /// println!("alpha: {:?}", outcome.kind);
    /// # Ok(())
    /// # }
    /// ```
    pub fn outcomes(&self) -> Outcomes {
        Outcomes::new(self.notify.subscribe_to(outcomes::is_outcome))
    }

    /// Host side: adds a relay (pending, revision 1) and its `create_relay` activity, in one
    /// transaction. Its settings are checked first with the rules a sync applies before
    /// sending ([`HostError::InvalidField`]); a relay with this id must not exist
    /// ([`HostError::RelayExists`]).
    pub fn create_relay(
        &self,
        id: &str,
        settings: &RelaySettings,
    ) -> std::result::Result<Activity, HostError> {
        crate::relay_config::validate_settings(id, settings)?;
        self.host_write(
            id,
            Write::Create {
                id: id.to_string(),
                settings: settings.clone(),
            },
        )
    }

    /// Host side: replaces a relay's settings; it becomes pending at a new revision. Checked
    /// like [`create_relay`](Self::create_relay); the relay must exist
    /// ([`HostError::UnknownRelay`]).
    pub fn update_relay(
        &self,
        id: &str,
        settings: &RelaySettings,
    ) -> std::result::Result<Activity, HostError> {
        crate::relay_config::validate_settings(id, settings)?;
        self.host_write(
            id,
            Write::Update {
                id: id.to_string(),
                settings: settings.clone(),
            },
        )
    }

    /// A host's write, its activity, or what went wrong in the host's terms.
    fn host_write(&self, id: &str, write: Write) -> std::result::Result<Activity, HostError> {
        self.write(write)
            .and_then(Applied::activity)
            .map_err(|e| HostError::classify(id, e))
    }

    /// Host side: deletes the relay's row and appends its `delete_relay` activity, in one
    /// transaction; zooid-sync then deletes the relay at zooid. A relay created again under
    /// the same id later is a new relay (created at zooid with a new secret).
    pub fn delete_relay(&self, id: &str) -> std::result::Result<Activity, HostError> {
        self.host_write(id, Write::Delete { id: id.to_string() })
    }

    /// Host side: sets the relay's status to `active`; it becomes pending at a new revision.
    pub fn activate_relay(&self, id: &str) -> std::result::Result<Activity, HostError> {
        self.set_status(id, RelayStatus::Active, activity_type::ACTIVATE_RELAY)
    }

    /// Host side: sets the relay's status to `inactive` (zooid stops serving it); it becomes
    /// pending at a new revision.
    pub fn deactivate_relay(&self, id: &str) -> std::result::Result<Activity, HostError> {
        self.set_status(id, RelayStatus::Inactive, activity_type::DEACTIVATE_RELAY)
    }

    fn set_status(
        &self,
        id: &str,
        status: RelayStatus,
        activity: &'static str,
    ) -> std::result::Result<Activity, HostError> {
        let write = Write::SetStatus {
            id: id.to_string(),
            status,
            activity,
        };
        self.host_write(id, write)
    }
}

/// What a write answers.
type WriteResult = Result<Applied>;

/// What a write did.
#[derive(Debug)]
struct Applied {
    /// The activity it appended; none when the relay it is about no longer exists.
    activity: Option<Activity>,
    /// Whether it changed the relay row (for a sync outcome: marked it synced).
    changed: bool,
}

impl Applied {
    /// The activity a host-side write always appends.
    fn activity(self) -> Result<Activity> {
        self.activity
            .ok_or_else(|| anyhow!("the write appended no activity"))
    }
}

/// A write waiting for the writer connection, and where its outcome goes.
struct Queued {
    write: Write,
    done: Done,
}

/// Who learns a write's outcome.
enum Done {
    /// A thread blocked in [`Command::write`].
    Wait(crossbeam_channel::Sender<WriteResult>),
    /// A callback ([`Command::write_then`]), run once the write committed or failed, after
    /// the writer connection is released.
    Then(Box<dyn FnOnce(WriteResult) + Send>),
}

/// Callbacks to run once the writer connection is released.
type Deferred = Vec<(Box<dyn FnOnce(WriteResult) + Send>, WriteResult)>;

impl Done {
    /// Answers a waiting thread now, or keeps the callback for later.
    fn answer(self, result: WriteResult, later: &mut Deferred) {
        match self {
            Done::Wait(tx) => {
                let _ = tx.send(result);
            }
            Done::Then(f) => later.push((f, result)),
        }
    }
}

/// One write, as data, so that whichever thread holds the writer connection can apply it.
enum Write {
    Complete {
        relay_id: String,
        revision: i64,
        /// The relay's newest activity when the sync read it, if known.
        seen: Option<i64>,
    },
    Fail {
        relay_id: String,
        error: String,
        /// The relay's newest activity when the sync read it, if known.
        seen: Option<i64>,
    },
    Create {
        id: String,
        settings: RelaySettings,
    },
    Update {
        id: String,
        settings: RelaySettings,
    },
    SetStatus {
        id: String,
        status: RelayStatus,
        activity: &'static str,
    },
    /// The host deletes a relay.
    Delete {
        id: String,
    },
    /// zooid no longer has a synced relay: it is pending again.
    Lost {
        relay_id: String,
    },
    /// zooid confirmed a relay's deletion (`detail` says how).
    Deleted {
        relay_id: String,
        detail: String,
    },
    /// The answer to a manual sync request.
    Answer {
        request: i64,
        outcome: String,
        detail: String,
    },
}

impl Write {
    fn describe(&self) -> String {
        match self {
            Write::Complete { relay_id, .. } => format!("recording the sync of relay {relay_id:?}"),
            Write::Fail { relay_id, .. } => {
                format!("recording the failed sync of relay {relay_id:?}")
            }
            Write::Create { id, .. } => format!("creating relay {id:?}"),
            Write::Update { id, .. } => format!("updating relay {id:?}"),
            Write::SetStatus { id, activity, .. } => format!("{activity} {id:?}"),
            Write::Delete { id } => format!("deleting relay {id:?}"),
            Write::Lost { relay_id } => format!("marking relay {relay_id:?} pending"),
            Write::Deleted { relay_id, .. } => {
                format!("recording the deletion of relay {relay_id:?} at zooid")
            }
            Write::Answer { request, .. } => format!("answering manual sync request {request}"),
        }
    }

    /// Applies the write inside the current transaction.
    fn apply(&self, conn: &Connection) -> Result<Applied> {
        let no_relay = |id: &str| anyhow::Error::new(NoSuchRelay(id.to_string()));
        let appended = |activity: Activity, changed: bool| Applied {
            activity: Some(activity),
            changed,
        };
        // A relay deleted while its sync was in flight gets no outcome: there is nothing to
        // record it on, and an activity about it would name no owner.
        let gone = Applied {
            activity: None,
            changed: false,
        };
        match self {
            Write::Complete {
                relay_id,
                revision,
                seen,
            } => {
                // Deleted since the sync read it: a row under its id now is another relay
                // (revisions start over), which this outcome says nothing about.
                if !relay_exists(conn, relay_id)? || replaced_since(conn, relay_id, *seen)? {
                    return Ok(gone);
                }
                let activity = insert_activity(
                    conn,
                    relay_id,
                    activity_type::COMPLETE_RELAY_SYNC,
                    &format!("revision {revision}"),
                )?;
                let marked = conn
                    .prepare_cached(
                        "UPDATE relay SET synced = 1, sync_error = '' WHERE id = ?1 AND revision = ?2",
                    )?
                    .execute(params![relay_id, revision])?
                    > 0;
                Ok(appended(activity, marked))
            }
            Write::Fail {
                relay_id,
                error,
                seen,
            } => {
                // Deleted or created again since the sync read it: the failure was another
                // relay's.
                if replaced_since(conn, relay_id, *seen)? {
                    return Ok(gone);
                }
                if !relay_exists(conn, relay_id)? {
                    // A deletion's failures are recorded in the log alone: there is no row.
                    if !deletion_pending(conn, relay_id)? {
                        return Ok(gone);
                    }
                    let activity =
                        insert_activity(conn, relay_id, activity_type::FAIL_RELAY_SYNC, error)?;
                    return Ok(appended(activity, false));
                }
                let activity =
                    insert_activity(conn, relay_id, activity_type::FAIL_RELAY_SYNC, error)?;
                let changed = conn
                    .prepare_cached("UPDATE relay SET sync_error = ?2 WHERE id = ?1")?
                    .execute(params![relay_id, error])?;
                Ok(appended(activity, changed > 0))
            }
            Write::Delete { id } => {
                if !relay_exists(conn, id)? {
                    return Err(no_relay(id));
                }
                // Appended first: the activity takes its tenant from the row.
                let activity = insert_activity(conn, id, activity_type::DELETE_RELAY, "")?;
                conn.prepare_cached("DELETE FROM relay WHERE id = ?1")?
                    .execute([id])?;
                Ok(appended(activity, true))
            }
            Write::Lost { relay_id } => {
                let changed = conn
                    .prepare_cached("UPDATE relay SET synced = 0 WHERE id = ?1 AND synced = 1")?
                    .execute([relay_id])?;
                Ok(Applied {
                    activity: None,
                    changed: changed > 0,
                })
            }
            Write::Deleted { relay_id, detail } => {
                // Created again meanwhile: that relay's own sync follows, and its history
                // must not say it completed one.
                if !deletion_pending(conn, relay_id)? {
                    return Ok(gone);
                }
                let activity =
                    insert_activity(conn, relay_id, activity_type::COMPLETE_RELAY_SYNC, detail)?;
                Ok(appended(activity, true))
            }
            Write::Answer {
                request,
                outcome,
                detail,
            } => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE sync_request SET outcome = ?2, detail = ?3 WHERE id = ?1",
                    )?
                    .execute(params![request, outcome, detail])?;
                Ok(Applied {
                    activity: None,
                    changed: changed > 0,
                })
            }
            Write::Create { id, settings } => {
                let now = now_unix();
                let sql = format!(
                    "INSERT INTO relay (id, synced, sync_error, revision, created_at, updated_at, {})
                     VALUES (?1, 0, '', 1, ?2, ?2, {})",
                    SETTINGS_COLUMNS.join(", "),
                    (3..3 + SETTINGS_COLUMNS.len())
                        .map(|i| format!("?{i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut values: Vec<rusqlite::types::Value> = vec![id.clone().into(), now.into()];
                values.extend(settings.to_values());
                conn.execute(&sql, params_from_iter(values))?;
                let activity = insert_activity(conn, id, activity_type::CREATE_RELAY, "")?;
                Ok(appended(activity, true))
            }
            Write::Update { id, settings } => {
                let assignments = SETTINGS_COLUMNS
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", i + 3))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "UPDATE relay SET {assignments}, synced = 0, revision = revision + 1,
                     updated_at = ?2 WHERE id = ?1"
                );
                let mut values: Vec<rusqlite::types::Value> =
                    vec![id.clone().into(), now_unix().into()];
                values.extend(settings.to_values());
                if conn.execute(&sql, params_from_iter(values))? == 0 {
                    return Err(no_relay(id));
                }
                let activity = insert_activity(conn, id, activity_type::UPDATE_RELAY, "")?;
                Ok(appended(activity, true))
            }
            Write::SetStatus {
                id,
                status,
                activity,
            } => {
                let changed = conn.execute(
                    "UPDATE relay SET status = ?2, synced = 0, revision = revision + 1,
                     updated_at = ?3 WHERE id = ?1",
                    params![id, status.as_str(), now_unix()],
                )?;
                if changed == 0 {
                    return Err(no_relay(id));
                }
                Ok(appended(insert_activity(conn, id, activity, "")?, true))
            }
        }
    }
}

impl Command {
    /// From now on, remember which activities this process writes, so that a feed tailing
    /// the table can skip them ([`take_own_write`](Self::take_own_write)): they were
    /// published already.
    #[cfg(feature = "cli")]
    pub(crate) fn track_own_writes(&self) {
        self.own_writes.tracking.store(true, Ordering::Release);
    }

    /// Whether this process wrote (and so already published) activity `seq`; forgets it.
    #[cfg(feature = "cli")]
    pub(crate) fn take_own_write(&self, seq: i64) -> bool {
        self.own_writes
            .seqs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq)
    }
}

/// Runs the callbacks of writes that are done. A callback that panics (a bug) is logged and
/// passed over, so that the others still run and the thread that runs them survives.
fn run_deferred(later: Deferred) {
    for (then, result) in later {
        let run = std::panic::AssertUnwindSafe(move || then(result));
        if let Err(panic) = std::panic::catch_unwind(run) {
            log::error!(
                "handling a recorded outcome panicked (a bug in zooid-sync; please report it): {}",
                crate::metrics::panic_message(panic.as_ref())
            );
        }
    }
}

/// The running writer thread ([`Command::spawn_writer`]).
pub(crate) struct Writer {
    command: Command,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Commits what is still queued, then stops the thread.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let db = &self.command.db;
        self.stop.store(true, Ordering::Release);
        {
            let _queue = db.queue.lock().unwrap_or_else(PoisonError::into_inner);
            db.queued.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // One last try for the outcomes still waiting to be written; what fails now is
        // answered as failed, and stays pending in the database for the next start.
        if db.retrying.swap(false, Ordering::AcqRel) {
            self.command.flush();
        }
    }
}

impl Drop for Writer {
    /// A worker that fails to start after its writer did still stops the writer.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether relay `id` exists.
/// Whether the host deleted relay `id` and zooid has not confirmed it: its row is gone, and
/// its newest `delete_relay` is newer than its newest `complete_relay_sync`.
fn deletion_pending(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(pending_deletion(conn, id)?.is_some())
}

/// The `seq` of relay `id`'s pending `delete_relay`, if its deletion is pending.
fn pending_deletion(conn: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT seq FROM activity
         WHERE NOT EXISTS (SELECT 1 FROM relay WHERE id = ?1)
           AND seq = (SELECT seq FROM activity
                      WHERE resource_type = 'relay' AND resource_id = ?1
                        AND activity_type IN ('delete_relay', 'complete_relay_sync')
                      ORDER BY seq DESC LIMIT 1)
           AND activity_type = 'delete_relay'",
    )?
    .query_row([id], |r| r.get(0))
    .optional()
}

/// Whether relay `id` was deleted or created again after its activity `seen` (never, for
/// `None`): then the relay a sync read is not the one that holds the id now.
fn replaced_since(conn: &Connection, id: &str, seen: Option<i64>) -> rusqlite::Result<bool> {
    let Some(seen) = seen else { return Ok(false) };
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM activity
         WHERE resource_type = 'relay' AND resource_id = ?1 AND seq > ?2
           AND activity_type IN ('delete_relay', 'create_relay'))",
    )?
    .query_row(params![id, seen], |r| r.get(0))
}

fn relay_exists(conn: &Connection, id: &str) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM relay WHERE id = ?1)")?;
    Ok(stmt.query_row([id], |r| r.get(0))?)
}

/// Appends an activity about relay `relay_id`, owned by the relay's tenant.
fn insert_activity(
    tx: &Connection,
    relay_id: &str,
    activity_type: &str,
    detail: &str,
) -> Result<Activity> {
    let id = crate::secret::random_hex(16);
    let created_at = now_unix();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type,
                               resource_id, detail)
         VALUES (?1, COALESCE((SELECT tenant_pubkey FROM relay WHERE id = ?3), ''), ?2, ?4,
                 'relay', ?3, ?5)
         RETURNING seq, tenant_pubkey",
    )?;
    let (seq, tenant_pubkey) = stmt.query_row(
        params![id, created_at, relay_id, activity_type, detail],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Activity {
        seq,
        id,
        tenant_pubkey,
        created_at,
        activity_type: activity_type.to_string(),
        resource_type: RELAY_RESOURCE.to_string(),
        resource_id: relay_id.to_string(),
        detail: detail.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_for_a_relay_deleted_since_it_was_read_marks_no_successor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("z.db")).unwrap();
        let (q, c) = (&store.query, &store.command);
        let settings = RelaySettings {
            tenant_pubkey: "ab".repeat(32),
            schema: "alpha".into(),
            subdomain: "alpha".into(),
            ..RelaySettings::default()
        };
        c.create_relay("alpha", &settings).unwrap();
        let read = q.get_relay_for_sync("alpha").unwrap().unwrap();
        // While the create is in flight the host deletes the relay and creates it again: the
        // new row has revision 1 too.
        c.delete_relay("alpha").unwrap();
        c.create_relay("alpha", &settings).unwrap();
        let complete = |seen| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            c.complete_relay_sync_then("alpha", read.relay.revision, seen, move |r| {
                tx.send(r.unwrap()).unwrap()
            });
            c.flush();
            rx.recv().unwrap()
        };
        assert_eq!(complete(read.seen), None, "the relay it read is gone");
        assert!(!q.get_relay("alpha").unwrap().unwrap().synced);
        let again = q.get_relay_for_sync("alpha").unwrap().unwrap();
        assert!(!again.ever_completed);
        assert_eq!(complete(again.seen), Some(true), "the successor's own sync");
        assert!(q.get_relay("alpha").unwrap().unwrap().synced);

        // A failure of the relay it read is not the successor's; nor is a failed deletion
        // once the relay was created again.
        let fail = |seen| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            c.fail_relay_sync_then("alpha", "zooid answered 500", seen, move |r| {
                tx.send(r.unwrap()).unwrap()
            });
            c.flush();
            rx.recv().unwrap()
        };
        assert!(!fail(Some(read.seen)), "the relay it read is gone");
        c.delete_relay("alpha").unwrap();
        let deletion = q.deletion_pending("alpha").unwrap().expect("pending");
        assert!(
            fail(Some(deletion)),
            "the deletion's own failure is recorded"
        );
        c.create_relay("alpha", &settings).unwrap();
        assert!(
            !fail(Some(deletion)),
            "created again: the deletion's failure is moot"
        );
        assert_eq!(q.get_relay("alpha").unwrap().unwrap().sync_error, "");
    }

    #[test]
    fn only_failures_that_pass_are_written_again() {
        let sqlite = |code: i32| {
            anyhow::Error::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
            .context("recording the sync of relay \"a\"")
        };
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_CANTOPEN,
            rusqlite::ffi::SQLITE_NOMEM,
        ] {
            assert!(passes(&sqlite(code)), "code {code}");
        }
        for code in [
            rusqlite::ffi::SQLITE_CONSTRAINT,
            rusqlite::ffi::SQLITE_ERROR,
        ] {
            assert!(!passes(&sqlite(code)), "code {code}");
        }
        assert!(!passes(&anyhow!("there is no relay")));
    }

    #[test]
    fn kept_writes_back_off_and_are_due_as_soon_as_writes_pass() {
        let kept = |n: usize| {
            (0..n)
                .map(|i| Queued {
                    write: Write::Answer {
                        request: i as i64,
                        outcome: "synced".into(),
                        detail: String::new(),
                    },
                    done: Done::Then(Box::new(|_| {})),
                })
                .collect::<Vec<_>>()
        };
        let mut q = WriteQueue::default();
        let before = Instant::now();
        q.keep_for_retry(kept(2), "database is locked");
        assert_eq!(q.backoff, WRITE_RETRY_BASE);
        assert!(q.retry_at.unwrap() >= before + WRITE_RETRY_BASE);
        let (since, error) = q.health.failing.clone().unwrap();
        assert_eq!(error, "database is locked");
        q.keep_for_retry(kept(1), "disk is full");
        assert_eq!(q.backoff, 2 * WRITE_RETRY_BASE, "doubles");
        assert_eq!(
            q.health.failing,
            Some((since, "disk is full".into())),
            "same start"
        );
        assert_eq!((q.health.failures, q.retry.len()), (3, 3));
        for _ in 0..20 {
            q.keep_for_retry(kept(1), "disk is full");
        }
        assert_eq!(q.backoff, WRITE_RETRY_CAP, "capped");
        q.writes_pass();
        assert!(q.health.failing.is_none());
        assert_eq!(q.backoff, Duration::ZERO);
        assert!(q.retry_at.unwrap() <= Instant::now(), "due at once");
        q.keep_for_retry(kept(1), "again");
        assert_eq!(q.backoff, WRITE_RETRY_BASE, "starts over");
    }

    #[test]
    #[cfg(feature = "cli")]
    fn log_times_are_rfc3339_with_milliseconds() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_764_700_200_123);
        assert_eq!(format_rfc3339_millis(t), "2025-12-02T18:30:00.123Z");
        assert_eq!(
            format_rfc3339_millis(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn unix_times_read_as_utc() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix(1_795_745_139), "2026-11-27 02:05:39 UTC");
    }
}
