//! The binary's log: `env_logger`, filtered by `RUST_LOG` (default `info`), on standard error.
//!
//! One thing is kept out whatever `RUST_LOG` says: the HTTP client's wire dumps. At `trace`,
//! `ureq_proto` logs every byte it writes, so the `Authorization` header (a signed NIP-98
//! event that zooid does not check for freshness, and could be replayed) would reach the log.
//! Hosts that link the library and set up their own logger should cap `ureq_proto` below
//! `trace` the same way.

use log::{Log, Metadata, Record};

/// Installs the logger. Call once, first thing in `main`.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    log::set_max_level(inner.filter());
    // Fails only if a logger is already installed, and then that one stays.
    let _ = log::set_boxed_logger(Box::new(WithoutWireDumps(inner)));
}

/// The target of the log records that carry raw request bytes.
const WIRE_DUMP_TARGET: &str = "ureq_proto";

/// A logger that drops the HTTP client's `trace` records and passes on everything else.
struct WithoutWireDumps(env_logger::Logger);

fn is_wire_dump(metadata: &Metadata) -> bool {
    metadata.level() == log::Level::Trace && metadata.target().starts_with(WIRE_DUMP_TARGET)
}

impl Log for WithoutWireDumps {
    fn enabled(&self, metadata: &Metadata) -> bool {
        !is_wire_dump(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !is_wire_dump(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
