//! zooid-sync keeps a fleet of hosted Nostr relays configured on zooid.
//!
//! A hosting platform records its relays and an activity log in SQLite. zooid-sync watches that
//! activity and pushes each relay's configuration to zooid's management API (`POST` to create,
//! `PATCH` to update, `DELETE` to delete, every request NIP-98 signed), retries with
//! exponential backoff when zooid fails, and records every outcome back in the database.
//!
//! Everything runs on plain threads with blocking I/O; there is no async runtime, so a
//! non-async host program can link this library directly (with `default-features = false`,
//! which leaves out the binary's command line and the fixture zooid). A host:
//!
//! 1. opens the database with [`Store::open`]: a [`Query`] to read relays and their sync
//!    state, a [`Command`] to record changes;
//! 2. starts the worker with [`Infra::new`] and [`Infra::spawn`], configured by an [`Env`]
//!    ([`Env::from_env`] reads the same variables as the binary, [`Env::new`] starts from the
//!    defaults);
//! 3. records each change with [`Command::create_relay`], [`update_relay`],
//!    [`activate_relay`], [`deactivate_relay`] or [`delete_relay`], which check it and answer
//!    a [`HostError`] it can match on;
//! 4. learns what became of it from [`Command::outcomes`], without polling;
//! 5. stops the worker with [`InfraHandle::shutdown`].
//!
//! [`update_relay`]: Command::update_relay
//! [`activate_relay`]: Command::activate_relay
//! [`deactivate_relay`]: Command::deactivate_relay
//! [`delete_relay`]: Command::delete_relay
//!
//! ```no_run
//! use std::time::Duration;
//! use zooid_sync::{Env, HostError, Infra, OutcomeKind, RelaySettings, Store};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // ZOOID_API_URL, RELAY_DOMAIN and ROBOT_SECRET, as for the binary.
//!     let env = Env::from_env()?;
//!     let store = Store::open("platform.db")?;
//!     let worker = Infra::new(store.query.clone(), store.command.clone(), &env).spawn()?;
//!
//!     let outcomes = store.command.outcomes(); // subscribe before the change
//!     let settings = RelaySettings {
//!         tenant_pubkey: "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
//!         schema: "alpha".into(),
//!         subdomain: "alpha".into(),
//!         info_name: "Alpha".into(),
//!         ..RelaySettings::default()
//!     };
//!     match store.command.create_relay("alpha", &settings) {
//!         Ok(_) => {}
//!         Err(HostError::RelayExists { .. }) => {
//!             store.command.update_relay("alpha", &settings)?;
//!         }
//!         Err(e) => return Err(e.into()),
//!     }
//!     let outcome = outcomes.wait_for("alpha", Duration::from_secs(30))?;
//!     match outcome.kind {
//!         OutcomeKind::Synced => println!("zooid serves alpha"),
//!         OutcomeKind::Failed { error } => println!("alpha failed (retried later): {error}"),
//!         other => println!("alpha: {other:?}"),
//!     }
//!     println!("alpha synced: {}", store.query.get_relay("alpha")?.is_some_and(|r| r.synced));
//!
//!     worker.shutdown()?;
//!     Ok(())
//! }
//! ```
//!
//! `examples/embedded.rs` is the same program, runnable against the fixture zooid.
//! `ARCHITECTURE.md` has the code map; the README the database contract.
//!
//! # Three ways to run it
//!
//! A platform has several processes on one database, and a [`Store`] sees what every one of
//! them commits: once anything listens to its bus (a worker, [`Command::outcomes`]), it
//! follows the `activity` table ([`StoreOptions::feed_interval`]) and publishes the rows
//! other processes wrote, so their changes and the outcomes their workers record reach it
//! too. So:
//!
//! 1. **The worker embedded in the host** (the example above). It syncs the host's own
//!    changes at once and every other process's within the feed interval; the host's
//!    [`Outcomes`] see all of them. Needs the zooid settings ([`Env`]) in the host.
//! 2. **The worker in the daemon, the host only recording.** `zooid-sync run` syncs; the host
//!    opens a [`Store`], records changes with [`Command`] and waits on [`Command::outcomes`]
//!    for what the daemon recorded, within the feed interval plus zooid's answer. Needs only
//!    the database: no zooid settings, no secrets in the host.
//! 3. **Several host processes and one daemon**: each host as in 2. Every change is synced
//!    once, whoever wrote it (one process at a time holds the database's lease and syncs),
//!    and each host sees the outcomes of every change, its own among them.
//!
//! In each, an outcome arrives once per sync, in the order it was committed; a host that
//! subscribed late sees only what is recorded after it subscribed (the database has the rest:
//! [`Query::get_relay`]). A host that falls behind by more than its queue
//! ([`StoreOptions::bus_capacity`]) is told once ([`WaitError::Lagged`]) and should read the
//! relays it waits for from the database.

#![warn(missing_docs)]

mod env;
mod infra;
mod lease;
mod liveness;
mod memory;
pub mod metrics;
#[doc(hidden)]
pub mod nip98;
mod pace;
mod pause;
mod quote;
mod rate;
mod relay_config;
mod retry;
mod rules;
mod secret;
mod store;
mod time;
mod watch;
mod words;
mod zooid;

#[cfg(any(feature = "cli", feature = "fixture"))]
mod http_server;

#[cfg(feature = "fixture")]
pub mod fixture;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod check;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod daemon;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod dev;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod endpoint;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod logging;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod manual;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod notify;
#[cfg(feature = "cli")]
mod process;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod prune;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod status;

/// The error type of opening the store, reading it, reading settings and starting the worker
/// (`anyhow::Result`), re-exported so that a host needs no dependency of its own to name it.
/// The host's writes answer [`HostError`] and waits [`WaitError`] instead.
pub use anyhow;
pub use env::{
    BlossomS3, Env, Livekit, PacingSignal, ZooidAddress, DEFAULT_AUDIT_INTERVAL, DEFAULT_MAX_RATE,
    DEFAULT_USER_DELAY, DEFAULT_ZOOID, DEFAULT_ZOOID_SHARE,
};
pub use infra::{Infra, InfraHandle};
pub use metrics::Metrics;
pub use nip98::RobotKey;
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use store::{
    activity_type, Activity, Command, HostError, Outcome, OutcomeKind, Outcomes, PendingDeletion,
    PendingRelay, Query, Relay, RelaySettings, RelayStatus, Store, StoreOptions, WaitError,
    RELAY_RESOURCE, SCHEMA_VERSION, ZOOID_UNAVAILABLE,
};

// The worker's own parts, public for the binary, the tests and the benchmark (separate crates
// that link this one), not for hosts: hidden from the documentation, and free to change.
#[doc(hidden)]
pub use lease::{Holder, Lease};
#[doc(hidden)]
pub use relay_config::{relay_body, RelayBody};
#[doc(hidden)]
pub use rules::InvalidRelay;
#[doc(hidden)]
pub use store::{
    BadRow, Bus, Placement, RecvError, RelayForSync, Subscriber, SyncAnswer, WriteHealth,
};
#[doc(hidden)]
pub use zooid::{Response, ZooidClient, ZooidError, PROBE_ID};

/// What the binary parses beside [`Env`].
#[cfg(feature = "cli")]
#[doc(hidden)]
pub use env::{database_path, parse_duration, within};
pub use words::{plural, show_duration};

/// Pieces the benchmark (`examples/bench.rs`) times on their own. Not for hosts.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod bench_support {
    pub use crate::infra::timer::TimerWheel;
}

/// The README's Rust examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
