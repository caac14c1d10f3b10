//! The feed: activity written by other processes, brought onto this process's bus.
//!
//! A platform has several processes on one database (web workers, jobs, an admin tool, the
//! daemon), and what one of them writes never reaches another's in-process bus by itself. So a
//! store follows the other writers as soon as anything listens to its bus
//! ([`Command::outcomes`], a worker): the feed tails the `activity` table by its increasing
//! `seq` and publishes each new row that another connection committed, a host's change as
//! much as an outcome another process's worker recorded. It ends once the bus closes (the last
//! strong [`Command`] dropped). It checks
//! `PRAGMA data_version` first, which changes only when another connection committed, so a
//! look that finds nothing costs one tiny query and reads nothing.
//!
//! It looks every `interval` while activity flows. After a second of quiet it looks less and
//! less often, down to once every ten intervals; then, on Linux, it stops looking and sleeps
//! until the kernel reports a write to the database's files (`src/watch.rs`), with one
//! backstop look every [`BACKSTOP`]. The first write after a quiet spell wakes it: it waits one
//! interval (the writer may not have finished committing) and looks, and is back at full
//! speed. So an idle daemon's feed wakes a few times a minute, and a lone change is seen
//! within an interval. Where the watch is not available it keeps looking every ten intervals.
//!
//! Each activity is dispatched exactly once: rows this process wrote itself were published by
//! [`Command`] when they committed, and are remembered (only while a feed runs) so that the
//! feed skips them.

use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;
use std::sync::atomic::Ordering;

use super::{open_connection, Command, Query};
use crate::watch::{Watch, Woken};

/// How many rows the feed reads at a time.
const BATCH: usize = 1000;

/// How often a feed that waits for writes looks anyway (or every ten intervals, if longer).
/// Nothing is known to slip past the watch; this bounds the cost if something ever does.
pub const BACKSTOP: Duration = Duration::from_secs(2);

/// Starts tailing from the newest activity now in the table (everything older is the
/// startup reconcile's business), checking every `interval`.
/// Rows that cannot be read are logged once, counted ([`Query::bad_activity_rows`]) and
/// skipped.
pub(super) fn start(query: Query, command: Command, interval: Duration) -> Result<()> {
    command.track_own_writes();
    let cursor = query.last_activity_seq()?;
    let conn = open_connection(query.path(), Duration::from_secs(5))?;
    let watch = match Watch::new(query.path()) {
        Ok(watch) => Some(watch),
        Err(e) => {
            log::info!(
                "feed: cannot watch the database's files ({e}); looking every {} instead",
                crate::words::show_duration(interval * Pace::MAX_FACTOR)
            );
            None
        }
    };
    if let Some(waker) = watch.as_ref().map(Watch::waker) {
        // A feed asleep in the watch ends as soon as nobody can hear it.
        command.notify.on_close(move || waker.wake());
    }
    std::thread::Builder::new()
        .name("zooid-sync-feed".into())
        .spawn(move || {
            let feed = Tail {
                conn,
                query,
                command,
            };
            feed.run(cursor, interval, watch);
            feed.command.db.feed_running.store(false, Ordering::Release);
        })
        .context("cannot start the feed thread")?;
    Ok(())
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

/// The feed thread's belongings.
struct Tail {
    /// Its own connection, for `PRAGMA data_version` (which is per connection).
    conn: Connection,
    query: Query,
    /// A weak handle: the feed does not keep the bus open.
    command: Command,
}

impl Tail {
    /// Tails from `cursor` until the bus closes. Its sleeps need no stop of their own: a
    /// closed bus wakes the watch ([`Bus::on_close`](super::Bus)), and a polling sleep is at
    /// most ten intervals.
    fn run(&self, mut cursor: i64, interval: Duration, mut watch: Option<Watch>) {
        let mut seen_version = None;
        let mut pace = Pace::new(interval);
        let backstop = BACKSTOP.max(interval * Pace::MAX_FACTOR);
        loop {
            if self.command.notify.is_closed() {
                return; // nothing can hear it any more
            }
            match watch.as_ref().filter(|_| pace.settled()) {
                Some(w) => match w.wait(backstop) {
                    Ok(Woken::Written) => {
                        // Looking at once could come before the commit is visible.
                        pace.active();
                        std::thread::sleep(interval);
                    }
                    // Called: the bus closed (`Bus::on_close`), the loop's first check ends it.
                    Ok(Woken::Called | Woken::TimedOut) => {}
                    Err(e) => {
                        log::warn!("feed: watching the database's files failed ({e}); looking every {} instead",
                            crate::words::show_duration(interval * Pace::MAX_FACTOR));
                        watch = None;
                    }
                },
                None => std::thread::sleep(pace.next_sleep()),
            }
            match data_version(&self.conn) {
                Ok(v) if Some(v) == seen_version => {
                    pace.quiet();
                    continue;
                }
                Ok(v) => {
                    seen_version = Some(v);
                    pace.active();
                }
                Err(e) => {
                    log::error!("feed: cannot check the database for changes: {e}");
                    continue;
                }
            }
            if let Err(e) = self.publish_after(&mut cursor) {
                log::error!("feed: {e:#}");
                seen_version = None; // look again next time
            }
        }
    }

    /// Publishes every activity after `cursor` and moves the cursor past it. A row that
    /// cannot be read is logged, counted and passed over: it must not hold up the rows
    /// behind it.
    fn publish_after(&self, cursor: &mut i64) -> Result<()> {
        loop {
            let batch = self.query.activities_after(*cursor, BATCH)?;
            let full = batch.len() == BATCH;
            for row in batch {
                match row {
                    Ok(activity) => {
                        *cursor = activity.seq;
                        if !self.command.take_own_write(activity.seq) {
                            self.command.notify.send(activity);
                        }
                    }
                    Err(bad) => {
                        *cursor = (*cursor).max(bad.key);
                        log::error!("feed: {bad}");
                        self.command
                            .db
                            .bad_activity_rows
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// How long the feed sleeps between looks: `interval` while there is activity, backing off
/// to ten intervals after a second of quiet.
#[derive(Debug)]
struct Pace {
    interval: Duration,
    current: Duration,
    quiet_for: Duration,
}

impl Pace {
    const QUIET_BEFORE_BACKOFF: Duration = Duration::from_secs(1);
    const MAX_FACTOR: u32 = 10;

    fn new(interval: Duration) -> Pace {
        Pace {
            interval,
            current: interval,
            quiet_for: Duration::ZERO,
        }
    }

    fn next_sleep(&self) -> Duration {
        self.current
    }

    /// Whether the looks have backed off as far as they go: time to wait for writes instead.
    fn settled(&self) -> bool {
        self.current >= self.interval * Self::MAX_FACTOR
    }

    /// A look found nothing new.
    fn quiet(&mut self) {
        self.quiet_for += self.current;
        if self.quiet_for >= Self::QUIET_BEFORE_BACKOFF {
            self.current = (self.current * 2).min(self.interval * Self::MAX_FACTOR);
        }
    }

    /// A look found a change.
    fn active(&mut self) {
        self.current = self.interval;
        self.quiet_for = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;
    use std::time::Duration;

    #[test]
    fn backs_off_after_a_quiet_second_and_snaps_back() {
        let ms = Duration::from_millis;
        let mut pace = Pace::new(ms(20));
        for _ in 0..49 {
            pace.quiet();
        }
        assert_eq!(pace.next_sleep(), ms(20), "still within the first second");
        pace.quiet();
        assert_eq!(pace.next_sleep(), ms(40));
        for _ in 0..10 {
            pace.quiet();
        }
        assert_eq!(pace.next_sleep(), ms(200), "capped at ten intervals");
        assert!(pace.settled());
        pace.active();
        assert_eq!(pace.next_sleep(), ms(20));
        assert!(!pace.settled());
    }
}
