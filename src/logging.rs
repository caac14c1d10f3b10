//! The binary's log, on standard error, filtered by `RUST_LOG` (default `info`), in the
//! format its reader wants (`SYNC_LOG_FORMAT`):
//!
//! - `text` (the default on a terminal or a plain pipe): env_logger's lines, with a timestamp;
//! - `journal` (the default under systemd, which sets `JOURNAL_STREAM`): no timestamp (journald
//!   stamps each line) and the `<N>` priority prefix journald reads (`<3>` error, `<4>`
//!   warning, `<6>` info, `<7>` debug), so `journalctl -p warning` works;
//! - `json`: one object per line for a log pipeline: `time` (RFC 3339, UTC), `level`,
//!   `target`, `message`, and `relay` when the line is about one relay (it starts
//!   `relay <id>: `, as every such line in zooid-sync does).
//!
//! Every format prints the same messages, so secrets are kept out the same way: zooid-sync
//! never puts one in a message (they are [`crate::Secret`]s, and text quoted from outside is
//! redacted before it is logged).
//!
//! One thing is kept out whatever `RUST_LOG` says: the HTTP client's wire dumps. At `trace`,
//! `ureq_proto` logs every byte it writes, so the `Authorization` header (a signed NIP-98
//! event that zooid does not check for freshness, and could be replayed) would reach the log.
//! Hosts that link the library and set up their own logger should cap `ureq_proto` below
//! `trace` the same way.

use std::io::Write;

use anyhow::{bail, Result};
use log::{Level, Log, Metadata, Record};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Journal,
    Json,
}

impl Format {
    /// The format `SYNC_LOG_FORMAT` asks for (`text`, `journal` or `json`); when it is unset,
    /// `journal` under systemd (`JOURNAL_STREAM` set), `text` otherwise.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Format> {
        match var("SYNC_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("") => Ok(match var("JOURNAL_STREAM") {
                Some(_) => Format::Journal,
                None => Format::Text,
            }),
            Some("text") => Ok(Format::Text),
            Some("journal") => Ok(Format::Journal),
            Some("json") => Ok(Format::Json),
            Some(other) => {
                bail!("SYNC_LOG_FORMAT is malformed: expected text, journal or json, got {other:?}")
            }
        }
    }
}

/// Installs the logger. Call once, first thing in `main`. A malformed `SYNC_LOG_FORMAT` is
/// reported (in text) and the daemon goes on with the text format.
pub fn init() {
    let format = Format::from_vars(|name| std::env::var(name).ok());
    let (logger, max): (Box<dyn Log>, _) = match format {
        Ok(lines @ (Format::Journal | Format::Json)) => {
            let logger = Lines::new(lines);
            let max = logger.filter.filter();
            (Box::new(logger), max)
        }
        Ok(Format::Text) | Err(_) => {
            let env = env_logger::Env::default().default_filter_or(DEFAULT_FILTER);
            let logger = env_logger::Builder::from_env(env).build();
            let max = logger.filter();
            (Box::new(WithoutWireDumps(logger)), max)
        }
    };
    log::set_max_level(max);
    // Fails only if a logger is already installed, and then that one stays.
    if log::set_boxed_logger(logger).is_ok() {
        if let Err(e) = format {
            log::error!("{e:#}; logging as text");
        }
    }
}

/// What is logged when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info";

/// The target of the log records that carry raw request bytes.
const WIRE_DUMP_TARGET: &str = "ureq_proto";

fn is_wire_dump(metadata: &Metadata) -> bool {
    metadata.level() == Level::Trace && metadata.target().starts_with(WIRE_DUMP_TARGET)
}

/// A logger that drops the HTTP client's `trace` records and passes on everything else.
struct WithoutWireDumps(env_logger::Logger);

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

/// The journal and JSON loggers: `RUST_LOG`'s filter, one line per record.
struct Lines {
    format: Format,
    filter: env_filter::Filter,
}

impl Lines {
    fn new(format: Format) -> Lines {
        let mut builder = env_filter::Builder::new();
        let spec = std::env::var(env_logger::DEFAULT_FILTER_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_FILTER.into());
        builder.parse(&spec);
        Lines {
            format,
            filter: builder.build(),
        }
    }
}

impl Log for Lines {
    fn enabled(&self, metadata: &Metadata) -> bool {
        !is_wire_dump(metadata) && self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.filter.matches(record) || is_wire_dump(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let line = match self.format {
            Format::Json => json_line(
                &crate::time::format_rfc3339_millis(std::time::SystemTime::now()),
                record.level(),
                record.target(),
                &message,
            ),
            _ => journal_line(record.level(), record.target(), &message),
        };
        // A log line that cannot be written has nowhere else to go.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// A line for journald: its priority prefix, the target, the message. A message of several
/// lines becomes several journal lines, each with the prefix.
fn journal_line(level: Level, target: &str, message: &str) -> String {
    let priority = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    message
        .lines()
        .map(|line| format!("<{priority}>{target}: {line}\n"))
        .collect()
}

/// One JSON object on one line.
fn json_line(time: &str, level: Level, target: &str, message: &str) -> String {
    let relay = message
        .strip_prefix("relay ")
        .and_then(|rest| rest.split_once(": "))
        .map(|(id, _)| id)
        .filter(|id| !id.contains(char::is_whitespace));
    let mut object = serde_json::json!({
        "time": time,
        "level": level.as_str(),
        "target": target,
        "message": message,
    });
    if let Some(relay) = relay {
        object["relay"] = relay.into();
    }
    format!("{object}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_setting_then_systemd() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Format::from_vars(vars(&[])).unwrap(), Format::Text);
        assert_eq!(
            Format::from_vars(vars(&[("JOURNAL_STREAM", "8:1234")])).unwrap(),
            Format::Journal
        );
        assert_eq!(
            Format::from_vars(vars(&[
                ("JOURNAL_STREAM", "8:1"),
                ("SYNC_LOG_FORMAT", "json")
            ]))
            .unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::from_vars(vars(&[
                ("SYNC_LOG_FORMAT", "text"),
                ("JOURNAL_STREAM", "8:1")
            ]))
            .unwrap(),
            Format::Text
        );
        let err = Format::from_vars(vars(&[("SYNC_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("SYNC_LOG_FORMAT"), "{err}");
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_time() {
        assert_eq!(
            journal_line(Level::Warn, "zooid_sync::infra", "relay a: failed"),
            "<4>zooid_sync::infra: relay a: failed\n"
        );
        assert_eq!(journal_line(Level::Error, "t", "x"), "<3>t: x\n");
        assert_eq!(journal_line(Level::Info, "t", "x"), "<6>t: x\n");
        assert_eq!(journal_line(Level::Debug, "t", "x"), "<7>t: x\n");
        assert_eq!(journal_line(Level::Trace, "t", "x"), "<7>t: x\n");
        assert_eq!(
            journal_line(Level::Info, "t", "one\ntwo"),
            "<6>t: one\n<6>t: two\n"
        );
    }

    #[test]
    fn json_lines_name_the_relay_when_there_is_one() {
        let line = json_line(
            "2026-12-02T18:30:00.123Z",
            Level::Info,
            "zooid_sync::infra::sync",
            "relay alpha: POST 201 in 3 ms",
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-02T18:30:00.123Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "zooid_sync::infra::sync");
        assert_eq!(v["message"], "relay alpha: POST 201 in 3 ms");
        assert_eq!(v["relay"], "alpha");
        let other: serde_json::Value =
            serde_json::from_str(&json_line("t", Level::Warn, "x", "relays: \"q\"\nnext")).unwrap();
        assert!(other.get("relay").is_none());
        assert_eq!(other["message"], "relays: \"q\"\nnext");
    }
}
