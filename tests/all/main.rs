//! The integration tests, as one test binary (each file a module): every test links the
//! bundled SQLite, rustls and nostr once instead of once per file.
//!
//! They run the real worker, and the binary as a process, against the fixture zooid over real
//! HTTP on 127.0.0.1 and real SQLite files. `faults`, `crash`, `edges`, `outages` and
//! `one_syncer` are the fault suite; `stress` runs the daemon under a seeded, randomized load.

mod common;

mod audit;
mod cli;
mod crash;
mod edges;
mod faults;
mod feed;
mod fixture_zooid;
mod host_api;
mod layers;
mod lifecycle;
mod monitoring;
mod one_syncer;
mod operators;
mod outages;
mod pacing;
mod processes;
mod relay_body;
mod secrets;
mod store;
mod stress;
mod worker;
mod zooid_client;
mod zooids;
