//! zooid-sync keeps a fleet of hosted Nostr relays configured on zooid.
//!
//! A hosting platform records its relays and an activity log in SQLite. zooid-sync watches that
//! activity and pushes each relay's configuration to zooid's management API (`POST` to create,
//! `PATCH` to update, every request NIP-98 signed), retries with exponential backoff when zooid
//! fails, and records every outcome back in the database.
//!
//! Everything runs on plain threads with blocking I/O; there is no async runtime, so a
//! non-async host program can link this library directly. What a host needs is re-exported
//! here: [`Store`] (with [`Query`] and [`Command`]) over the database, [`Env`] for the
//! settings, [`Infra`] for the worker, [`ZooidClient`] for zooid itself. Build with
//! `default-features = false` to leave out the binary's modules and dependencies (feature
//! `cli`) and the fixture zooid (feature `fixture`). `ARCHITECTURE.md` has the code map.

mod env;
mod infra;
mod lease;
mod memory;
pub mod metrics;
pub mod nip98;
mod quote;
mod rate;
mod relay_config;
mod secret;
mod store;
mod words;
mod zooid;

#[cfg(any(feature = "cli", feature = "fixture"))]
mod http_server;

#[cfg(feature = "fixture")]
pub mod fixture;

#[cfg(feature = "cli")]
pub mod check;
#[cfg(feature = "cli")]
pub mod daemon;
#[cfg(feature = "cli")]
pub mod dev;
#[cfg(feature = "cli")]
pub mod endpoint;
#[cfg(feature = "cli")]
pub mod feed;
#[cfg(feature = "cli")]
pub mod logging;
#[cfg(feature = "cli")]
pub mod manual;
#[cfg(feature = "cli")]
pub mod notify;
#[cfg(feature = "cli")]
mod process;
#[cfg(feature = "cli")]
pub mod prune;
#[cfg(feature = "cli")]
pub mod status;
#[cfg(feature = "cli")]
mod watch;

pub use env::{
    BlossomS3, Env, Livekit, DEFAULT_AUDIT_INTERVAL, DEFAULT_MAX_RATE, DEFAULT_ZOOID_SHARE,
};
pub use infra::retry::RetryPolicy;
pub use infra::{Infra, InfraHandle};
pub use lease::{Holder, Lease};
pub use metrics::Metrics;
pub use nip98::RobotKey;
pub use relay_config::{relay_body, InvalidRelay, RelayBody};
pub use secret::Secret;
pub use store::{
    activity_type, Activity, BadRow, Bus, Command, HostError, PendingDeletion, PendingRelay, Query,
    RecvError, Relay, RelayForSync, RelaySettings, RelayStatus, Store, StoreOptions, Subscriber,
    SyncAnswer, WriteHealth, RELAY_RESOURCE, SCHEMA_VERSION, ZOOID_UNAVAILABLE,
};
pub use zooid::{Response, ZooidClient, ZooidError, PROBE_ID};

/// What the binary parses beside [`Env`].
#[cfg(feature = "cli")]
pub use env::{parse_duration, within};
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
