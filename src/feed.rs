//! The feed: activity written by other processes, brought onto this process's bus.
//!
//! When zooid-sync runs as its own daemon, the host platform writes relays and activity from
//! another process, so nothing arrives on the in-process bus. The feed tails the `activity`
//! table by its increasing `seq` and publishes each new row. It checks
//! `PRAGMA data_version` first, which changes only when another connection committed, so an
//! idle feed costs one tiny query per interval and reads nothing.
//!
//! Each activity is dispatched exactly once: rows this process wrote itself were published by
//! [`Command`] when they committed, and are remembered (only while a feed runs) so that the
//! feed skips them.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use crate::store::{open_connection, Command, Query};

/// How many rows the feed reads at a time.
const BATCH: usize = 1000;

/// A running feed. Stopping it drops its bus handle.
pub struct Feed {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Feed {
    /// Starts tailing from the newest activity now in the table (everything older is the
    /// startup reconcile's business), checking every `interval`.
    pub fn start(query: Query, command: Command, interval: Duration) -> Result<Feed> {
        command.track_own_writes();
        let cursor = query.last_activity_seq()?;
        let conn = open_connection(query.path(), Duration::from_secs(5))?;
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("zooid-sync-feed".into())
            .spawn(move || tail(conn, query, command, cursor, interval, stopped))
            .context("cannot start the feed thread")?;
        Ok(Feed {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the feed and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

fn tail(
    conn: Connection,
    query: Query,
    command: Command,
    mut cursor: i64,
    interval: Duration,
    stop: Receiver<()>,
) {
    let mut seen_version = None;
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match data_version(&conn) {
            Ok(v) if Some(v) == seen_version => continue,
            Ok(v) => seen_version = Some(v),
            Err(e) => {
                log::error!("feed: cannot check the database for changes: {e}");
                continue;
            }
        }
        loop {
            let batch = match query.activities_after(cursor, BATCH) {
                Ok(batch) => batch,
                Err(e) => {
                    log::error!("feed: {e:#}");
                    seen_version = None; // look again next time
                    break;
                }
            };
            let full = batch.len() == BATCH;
            for activity in batch {
                cursor = activity.seq;
                if !command.take_own_write(activity.seq) {
                    command.notify.send(activity);
                }
            }
            if !full {
                break;
            }
        }
    }
}
