//! zooid-sync keeps a fleet of hosted Nostr relays configured on zooid.
//!
//! A hosting platform records its relays and an activity log in SQLite. zooid-sync watches that
//! activity and pushes each relay's configuration to zooid's management API (`POST` to create,
//! `PATCH` to update, every request NIP-98 signed), retries with exponential backoff when zooid
//! fails, and records every outcome back in the database.
//!
//! Everything runs on plain threads with blocking I/O; there is no async runtime, so a
//! non-async host program can link this library directly. See `ARCHITECTURE.md` for the code
//! map and [`Infra`] for the worker.

pub mod daemon;
pub mod dev;
pub mod env;
pub mod feed;
pub mod fixture;
mod http_server;
pub mod infra;
pub mod lease;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod nip98;
mod quote;
mod rate;
pub mod relay_config;
pub mod secret;
pub mod status;
pub mod store;
pub mod zooid;

pub use env::{Env, RobotKey};
pub use infra::{Infra, InfraHandle};
pub use store::{Activity, Command, Query, Relay, RelaySettings, RelayStatus, Store};
pub use zooid::ZooidClient;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
