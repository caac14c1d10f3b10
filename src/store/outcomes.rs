//! Sync outcomes a host can wait on: [`Command::outcomes`](super::Command::outcomes).
//!
//! Every outcome the worker records (`complete_relay_sync`, `fail_relay_sync`) is published on
//! the bus after it is committed. [`Outcomes`] subscribes to those alone and hands them out as
//! [`Outcome`]s, with blocking, deadline and per-relay waits, so a host learns what happened to
//! its change without polling the database.

use std::time::{Duration, Instant};

use super::bus::{RecvError, Subscriber};
use super::model::{activity_type, Activity};

/// What the worker recorded for one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The relay's id.
    pub relay_id: String,
    /// What happened.
    pub kind: OutcomeKind,
    /// The activity the outcome was recorded as.
    pub activity: Activity,
}

/// What happened to a relay's sync.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// zooid took the relay's configuration (created or updated).
    Synced,
    /// zooid no longer has the relay the host deleted.
    Deleted,
    /// The sync failed; it is retried on the backoff schedule (or was given up). The error is
    /// also the relay's `sync_error`.
    Failed {
        /// Why, as recorded.
        error: String,
    },
}

impl Outcome {
    fn from_activity(activity: Activity) -> Option<Outcome> {
        let kind = match activity.activity_type.as_str() {
            activity_type::COMPLETE_RELAY_SYNC if activity.detail.starts_with("DELETE") => {
                OutcomeKind::Deleted
            }
            activity_type::COMPLETE_RELAY_SYNC => OutcomeKind::Synced,
            activity_type::FAIL_RELAY_SYNC => OutcomeKind::Failed {
                error: activity.detail.clone(),
            },
            _ => return None,
        };
        Some(Outcome {
            relay_id: activity.resource_id.clone(),
            kind,
            activity,
        })
    }
}

/// Why a wait for an outcome ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError {
    /// The time given passed first.
    TimedOut,
    /// The subscriber fell behind and this many outcomes were dropped; the database holds
    /// them (`Query::get_relay`). Waiting again goes on with the next ones.
    Lagged(u64),
    /// The bus closed: every strong [`Command`](super::Command) handle was dropped.
    Closed,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::TimedOut => f.write_str("no sync outcome arrived in time"),
            WaitError::Lagged(n) => write!(
                f,
                "{n} sync outcomes were dropped because they were not taken in time; the \
                 database holds them"
            ),
            WaitError::Closed => {
                f.write_str("no more sync outcomes: every Command handle was dropped")
            }
        }
    }
}

impl std::error::Error for WaitError {}

impl From<RecvError> for WaitError {
    fn from(e: RecvError) -> WaitError {
        match e {
            RecvError::Lagged(n) => WaitError::Lagged(n),
            RecvError::Closed => WaitError::Closed,
        }
    }
}

/// A subscription to sync outcomes, from the moment it was made. Each subscription gets
/// every outcome (they are broadcast); take them promptly, or the oldest are dropped and the
/// next wait says how many ([`WaitError::Lagged`]). Iterating yields outcomes until the bus
/// closes, passing over lags.
pub struct Outcomes {
    subscriber: Subscriber,
}

impl Outcomes {
    pub(crate) fn new(subscriber: Subscriber) -> Outcomes {
        Outcomes { subscriber }
    }

    /// The next outcome, waiting as long as it takes.
    pub fn recv(&self) -> Result<Outcome, WaitError> {
        loop {
            if let Some(outcome) = Outcome::from_activity(self.subscriber.recv()?) {
                return Ok(outcome);
            }
        }
    }

    /// The next outcome, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Outcome, WaitError> {
        self.recv_deadline(Instant::now() + timeout)
    }

    /// The next outcome, waiting until `deadline` at most.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Outcome, WaitError> {
        loop {
            match self.subscriber.recv_deadline(deadline)? {
                None => return Err(WaitError::TimedOut),
                Some(activity) => {
                    if let Some(outcome) = Outcome::from_activity(activity) {
                        return Ok(outcome);
                    }
                }
            }
        }
    }

    /// The next outcome of relay `relay_id`, waiting at most `timeout`; other relays'
    /// outcomes that arrive meanwhile are passed over.
    pub fn wait_for(&self, relay_id: &str, timeout: Duration) -> Result<Outcome, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let outcome = self.recv_deadline(deadline)?;
            if outcome.relay_id == relay_id {
                return Ok(outcome);
            }
        }
    }
}

impl Iterator for Outcomes {
    type Item = Outcome;

    fn next(&mut self) -> Option<Outcome> {
        loop {
            match self.recv() {
                Ok(outcome) => return Some(outcome),
                Err(WaitError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// The activities an [`Outcomes`] subscription takes.
pub(crate) fn is_outcome(activity: &Activity) -> bool {
    matches!(
        activity.activity_type.as_str(),
        activity_type::COMPLETE_RELAY_SYNC | activity_type::FAIL_RELAY_SYNC
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(kind: &str, detail: &str) -> Activity {
        Activity {
            seq: 1,
            id: "x".into(),
            tenant_pubkey: String::new(),
            created_at: 0,
            activity_type: kind.into(),
            resource_type: "relay".into(),
            resource_id: "alpha".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn activities_read_as_outcomes() {
        let kind = |a| Outcome::from_activity(a).map(|o| o.kind);
        assert_eq!(
            kind(activity("complete_relay_sync", "revision 2")),
            Some(OutcomeKind::Synced)
        );
        assert_eq!(
            kind(activity("complete_relay_sync", "DELETE: deleted at zooid")),
            Some(OutcomeKind::Deleted)
        );
        assert_eq!(
            kind(activity("fail_relay_sync", "zooid answered 500")),
            Some(OutcomeKind::Failed {
                error: "zooid answered 500".into()
            })
        );
        assert_eq!(kind(activity("update_relay", "")), None);
        assert!(is_outcome(&activity("fail_relay_sync", "")));
        assert!(!is_outcome(&activity("create_relay", "")));
        assert_eq!(
            Outcome::from_activity(activity("complete_relay_sync", ""))
                .unwrap()
                .relay_id,
            "alpha"
        );
    }

    #[test]
    fn wait_errors_say_what_happened() {
        assert!(WaitError::from(RecvError::Lagged(3))
            .to_string()
            .contains('3'));
        assert_eq!(WaitError::from(RecvError::Closed), WaitError::Closed);
        assert!(RecvError::Closed.to_string().contains("closed"));
    }
}
