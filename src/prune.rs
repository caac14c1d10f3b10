//! `zooid-sync prune --older-than <age>`: trims the activity table, which grows by at least one
//! row per sync and is most of a busy platform's database after a year.
//!
//! It deletes what is older than the age and that zooid-sync no longer needs (see
//! [`Command::prune_activity`](crate::Command::prune_activity) for what is always kept), walking
//! the table by `seq` in windows of [`WINDOW`] rows, each in its own short write transaction,
//! with a pause between them: the host's writes wait a few milliseconds at most. It can run
//! beside the daemon (a cron job or a systemd timer); nothing it deletes changes what the
//! worker does next.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::store::Store;
use crate::time::now_unix;

/// The rows of `seq` one transaction looks at.
pub const WINDOW: i64 = 2000;

/// The shortest age `prune` accepts: anything younger may not have been read by a running
/// daemon's feed yet, and is the history an operator looks at first.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// The pause between two windows, which lets the host's writers in.
const PAUSE: Duration = Duration::from_millis(2);

/// What a prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Activity rows deleted.
    pub deleted: u64,
    /// Activity rows left.
    pub left: u64,
    /// How long it took.
    pub took: Duration,
}

/// Deletes the activity older than `older_than` that zooid-sync no longer needs.
pub fn prune(store: &Store, older_than: Duration) -> Result<Pruned> {
    if older_than < MIN_AGE {
        bail!(
            "--older-than must be at least {}: younger activity may not have been read by a \
             running daemon yet",
            crate::words::show_duration(MIN_AGE)
        );
    }
    let started = Instant::now();
    let cutoff = now_unix().saturating_sub(older_than.as_secs() as i64);
    let (first, last) = store.query.activity_seq_range()?;
    let mut deleted = 0;
    let mut after = first.saturating_sub(1);
    while after < last {
        let through = after.saturating_add(WINDOW).min(last);
        deleted += store.command.prune_activity(after, through, cutoff)? as u64;
        after = through;
        std::thread::sleep(PAUSE);
    }
    Ok(Pruned {
        deleted,
        left: store.query.count_activity()?,
        took: started.elapsed(),
    })
}
