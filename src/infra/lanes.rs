//! The pool's state machine: which relays wait, in which lane, which run, and which one starts
//! next. Pure: no threads, no clocks of its own, no I/O, so that a property test can drive it
//! through any interleaving of events ([`super::pool`] holds it under one lock and runs it).
//!
//! **Two lanes.** A sync is *fresh* when someone waits for it now: a host's change (create,
//! update, activation, deactivation, deletion), a manual sync of a few relays, and the
//! follow-up of either when the relay changed while its sync was in flight (the host's second
//! edit is as fresh as its first). Everything else is a *backlog*: the startup reconcile,
//! relays handed back when zooid answers again, retries after failures, relays the audit found
//! missing, `sync --all`. Fresh syncs start at once, ahead of any backlog, whatever the pace
//! says, and are charged to it ([`Pace::try_start`]), so zooid's share still holds. Only
//! [`FRESH_AT_ONCE`] relays wait in the fresh lane at a time: a host that changes more at once
//! (an import) makes a backlog of the rest, paced like any other, so fresh work can never take
//! zooid's users' share. A backlog relay asked for freshly is promoted.
//!
//! **One sync per relay.** A relay asked for while it waits needs nothing more (its sync reads
//! fresh data when it starts). A relay asked for once its sync started (from the read on) is
//! marked to sync once more, from fresh data, when that sync's outcome is recorded, in the lane
//! of the freshest ask. So a burst of updates to one relay costs at most two requests, and an
//! older body can never overwrite a newer one at zooid.
//!
//! **Invariants** (checked by the property test after every step): a relay is `Queued` in a
//! lane exactly while a job for it waits in that lane's queue (jobs left behind by a promotion
//! or a start are copies, skipped when they come up); it is `Running` from the start of its
//! sync until its outcome is recorded, and never twice; the counts match the states; and
//! [`Lanes::next`] never answers "wait" while a fresh relay waits, and a backlog's wait is at
//! most its turn, which fresh work pushes back by a bounded debt
//! ([`crate::pace::DEBT_SPACINGS`]).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::pace::Pace;

/// How many relays may wait in the fresh lane at once; fresh work beyond this is a backlog.
/// Manual syncs found together up to this many are fresh too.
pub const FRESH_AT_ONCE: usize = 8;

/// The lane a relay waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Someone waits for it: it starts at once, ahead of the backlog.
    Fresh,
    /// Paced by what writes cost zooid.
    Backlog,
}

/// Where a relay the pool knows of stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its sync to start.
    Queued(Lane),
    /// Its sync started (read, sent, or being recorded); `again` once it changed meanwhile:
    /// it is synced once more, in that lane, when the outcome is recorded.
    Running { again: Option<Lane> },
}

/// What the preparer does next ([`Lanes::next`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Start syncing `id` now: it is running from here on, and counted in the pace's writes in
    /// flight until the caller says the write is over ([`Pace::finished`]). `answering` are the
    /// manual sync requests this sync answers.
    Start {
        /// The relay.
        id: String,
        /// The lane it came from.
        lane: Lane,
        /// The manual sync requests it answers.
        answering: Vec<i64>,
    },
    /// A backlog waits for its turn, at this instant (or for a fresh relay, whichever first).
    WaitUntil(Instant),
    /// A backlog waits for a write in flight to end (the pace's limit), or a fresh relay.
    WaitForWrite,
    /// Nothing waits.
    Idle,
}

/// The relays the pool knows of, and its two lanes.
#[derive(Debug, Default)]
pub struct Lanes {
    relays: HashMap<String, State>,
    requests: HashMap<String, Vec<i64>>,
    fresh: VecDeque<String>,
    backlog: VecDeque<String>,
    /// Relays `Queued(Fresh)`.
    fresh_waiting: usize,
    /// Relays `Queued` in either lane.
    queued: usize,
    /// Once closed (the pool stops), nothing is queued any more.
    closed: bool,
}

impl Lanes {
    /// A sync of `id` is wanted, `fresh` if someone waits for it now. Answers whether a job
    /// was queued (the preparer is then to be woken).
    pub fn request(&mut self, id: &str, fresh: bool) -> bool {
        if self.closed {
            return false;
        }
        match self.relays.get(id).copied() {
            None => {
                self.enqueue(id, fresh);
                true
            }
            Some(State::Queued(Lane::Backlog)) if fresh && self.fresh_waiting < FRESH_AT_ONCE => {
                // Promoted; the backlog's job is now a copy, skipped when it comes up.
                self.queued -= 1;
                self.enqueue(id, true);
                true
            }
            Some(State::Queued(_)) => false,
            Some(State::Running { again }) => {
                let again = match (again, fresh) {
                    (Some(Lane::Fresh), _) | (_, true) => Lane::Fresh,
                    _ => Lane::Backlog,
                };
                self.relays
                    .insert(id.to_string(), State::Running { again: Some(again) });
                false
            }
        }
    }

    /// Manual sync request `request` wants a sync of `id` that starts after now; `fresh` as
    /// for [`request`](Self::request).
    pub fn request_answer(&mut self, id: &str, request: i64, fresh: bool) -> bool {
        if self.closed {
            return false;
        }
        self.requests
            .entry(id.to_string())
            .or_default()
            .push(request);
        self.request(id, fresh)
    }

    /// Queues `id` (not queued now), in the fresh lane if it is fresh and the lane has room.
    fn enqueue(&mut self, id: &str, fresh: bool) {
        let lane = match fresh && self.fresh_waiting < FRESH_AT_ONCE {
            true => Lane::Fresh,
            false => Lane::Backlog,
        };
        self.queued += 1;
        match lane {
            Lane::Fresh => {
                self.fresh_waiting += 1;
                self.fresh.push_back(id.to_string());
            }
            Lane::Backlog => self.backlog.push_back(id.to_string()),
        }
        self.relays.insert(id.to_string(), State::Queued(lane));
    }

    /// What the preparer does next at `now`, by `pace`: start the first fresh relay (at once,
    /// charged to the pace), else the backlog's first when the pace admits it, else wait.
    pub fn next(&mut self, pace: &mut Pace, now: Instant) -> Next {
        loop {
            if let Some(id) = self.fresh.front() {
                if self.lane(id) == Some(Lane::Fresh) {
                    let _ = pace.try_start(now, true);
                    let id = self.fresh.pop_front().expect("looked at");
                    return self.start(id, Lane::Fresh);
                }
                self.fresh.pop_front(); // a copy
                continue;
            }
            let Some(id) = self.backlog.front() else {
                return Next::Idle;
            };
            if self.lane(id) != Some(Lane::Backlog) {
                self.backlog.pop_front(); // a copy
                continue;
            }
            return match pace.try_start(now, false) {
                Ok(()) => {
                    let id = self.backlog.pop_front().expect("looked at");
                    self.start(id, Lane::Backlog)
                }
                Err(None) => Next::WaitForWrite,
                Err(Some(at)) => Next::WaitUntil(at),
            };
        }
    }

    /// Marks `id` (queued in `lane`) running, and hands out the requests its sync answers.
    fn start(&mut self, id: String, lane: Lane) -> Next {
        self.queued -= 1;
        if lane == Lane::Fresh {
            self.fresh_waiting -= 1;
        }
        self.relays
            .insert(id.clone(), State::Running { again: None });
        let answering = self.requests.remove(&id).unwrap_or_default();
        Next::Start {
            id,
            lane,
            answering,
        }
    }

    /// The lane `id` waits in, if it waits.
    pub fn lane(&self, id: &str) -> Option<Lane> {
        match self.relays.get(id) {
            Some(State::Queued(lane)) => Some(*lane),
            _ => None,
        }
    }

    /// The outcome of `id`'s sync is recorded: only now may its next sync start. Answers
    /// whether it was queued again (it changed meanwhile), in the lane of the freshest ask.
    pub fn finish(&mut self, id: &str) -> bool {
        match self.relays.get(id).copied() {
            Some(State::Running { again }) => {
                self.relays.remove(id);
                match again {
                    Some(lane) if !self.closed => {
                        self.enqueue(id, lane == Lane::Fresh);
                        true
                    }
                    _ => {
                        self.requests.remove(id);
                        false
                    }
                }
            }
            // Not running: nothing to finish.
            _ => false,
        }
    }

    /// Stops queueing: every waiting relay is forgotten, and so are the requests waiting
    /// for them (they stay unanswered in the database, for the next worker); a relay
    /// running now is forgotten once its outcome is recorded.
    pub fn close(&mut self) {
        self.closed = true;
        self.relays
            .retain(|_, state| matches!(state, State::Running { .. }));
        let relays = &self.relays;
        self.requests.retain(|id, _| relays.contains_key(id));
        self.fresh.clear();
        self.backlog.clear();
        self.queued = 0;
        self.fresh_waiting = 0;
    }

    /// Whether the pool stops.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Forgets `id`, running, without recording an outcome (its prepared sync was dropped at
    /// shutdown).
    pub fn abandon(&mut self, id: &str) {
        if let Some(State::Running { .. }) = self.relays.get(id) {
            self.relays.remove(id);
            self.requests.remove(id);
        }
    }

    /// How many relays are queued or running.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether no relay is queued or running.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// How many relays wait for their sync to start.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Gives back the room a burst left behind: the maps and queues keep their largest size
    /// otherwise (~0.5 MB after 10 000 relays).
    pub fn shrink(&mut self) {
        self.relays.shrink_to_fit();
        self.requests.shrink_to_fit();
        self.fresh.shrink_to_fit();
        self.backlog.shrink_to_fit();
    }

    /// Checks the invariants of the module's doc; answers the first one broken.
    #[cfg(test)]
    pub fn broken_invariant(&self) -> Option<String> {
        let mut queued = 0;
        let mut fresh = 0;
        for (id, state) in &self.relays {
            if let State::Queued(lane) = state {
                queued += 1;
                let jobs = match lane {
                    Lane::Fresh => {
                        fresh += 1;
                        &self.fresh
                    }
                    Lane::Backlog => &self.backlog,
                };
                if !jobs.contains(id) {
                    return Some(format!("{id} is queued {lane:?} with no job in that lane"));
                }
            }
        }
        if (queued, fresh) != (self.queued, self.fresh_waiting) {
            return Some(format!(
                "counts {}/{} for {queued} queued, {fresh} fresh",
                self.queued, self.fresh_waiting
            ));
        }
        if fresh > FRESH_AT_ONCE {
            return Some(format!("{fresh} relays in the fresh lane"));
        }
        if self.closed && queued > 0 {
            return Some("relays queued after closing".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    /// A pace with nothing known: every backlog write admitted one at a time.
    fn pace() -> Pace {
        Pace::new(0.0, 4)
    }

    fn started(next: Next) -> (String, Lane, Vec<i64>) {
        match next {
            Next::Start {
                id,
                lane,
                answering,
            } => (id, lane, answering),
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_while_queued_costs_one_job() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        assert!(l.request("a", false));
        assert!(!l.request("a", false));
        assert!(!l.request("a", false));
        assert_eq!(started(l.next(&mut p, t)).0, "a");
        assert_eq!(l.next(&mut p, t), Next::Idle);
        assert!(!l.finish("a"));
        assert!(l.is_empty());
        assert_eq!(l.broken_invariant(), None);
    }

    #[test]
    fn a_burst_while_running_costs_one_more_sync_in_the_freshest_lane() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        assert!(l.request("a", false));
        started(l.next(&mut p, t));
        assert!(!l.request("a", false));
        assert!(!l.request("a", true), "a fresh change while it runs");
        assert!(!l.request("a", false));
        assert!(l.finish("a"), "changed while running: sync again");
        assert_eq!(l.lane("a"), Some(Lane::Fresh), "as fresh as the change");
        assert_eq!(started(l.next(&mut p, t)).1, Lane::Fresh);
        assert!(!l.finish("a"));
        assert!(l.request("a", false), "idle again: a new job");
        assert_eq!(l.lane("a"), Some(Lane::Backlog));
        assert_eq!(l.broken_invariant(), None);
    }

    #[test]
    fn a_request_is_answered_by_a_sync_that_starts_after_it() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        assert!(l.request("a", false));
        assert!(started(l.next(&mut p, t)).2.is_empty());
        // Asked for while a sync runs: that sync does not answer it; the next one does.
        assert!(!l.request_answer("a", 7, true));
        assert!(l.finish("a"), "synced again");
        assert_eq!(
            started(l.next(&mut p, t)),
            ("a".into(), Lane::Fresh, vec![7])
        );
        assert!(!l.finish("a"));
    }

    #[test]
    fn fresh_goes_first_and_promotes_a_waiting_backlog_relay() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        assert!(l.is_empty() && !l.is_closed());
        for id in ["a", "b", "c"] {
            assert!(l.request(id, false));
        }
        assert!(l.request("c", true), "promoted");
        assert!(l.request("d", true));
        assert_eq!((l.len(), l.queued()), (4, 4), "a promotion counts once");
        assert!(!l.is_empty());
        let order: Vec<_> = (0..4).map(|_| started(l.next(&mut p, t))).collect();
        let ids: Vec<_> = order
            .iter()
            .map(|(id, lane, _)| (id.as_str(), *lane))
            .collect();
        assert_eq!(
            ids,
            [
                ("c", Lane::Fresh),
                ("d", Lane::Fresh),
                ("a", Lane::Backlog),
                ("b", Lane::Backlog)
            ],
            "the copy of c left in the backlog is skipped"
        );
        assert_eq!(l.next(&mut p, t), Next::Idle);
        assert_eq!(l.broken_invariant(), None);
    }

    #[test]
    fn only_so_many_wait_as_fresh_and_the_rest_are_a_backlog() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        for n in 0..FRESH_AT_ONCE + 2 {
            assert!(l.request(&format!("r{n}"), true));
        }
        let fresh = (0..FRESH_AT_ONCE + 2)
            .filter(|n| l.lane(&format!("r{n}")) == Some(Lane::Fresh))
            .count();
        assert_eq!(fresh, FRESH_AT_ONCE);
        assert!(
            !l.request(&format!("r{}", FRESH_AT_ONCE), true),
            "no room to promote it"
        );
        started(l.next(&mut p, t));
        assert!(
            l.request(&format!("r{}", FRESH_AT_ONCE), true),
            "room again: promoted"
        );
        assert_eq!(l.broken_invariant(), None);
    }

    #[test]
    fn a_backlog_waits_for_its_turn_or_a_write_and_fresh_work_never_waits() {
        let (mut l, t) = (Lanes::default(), Instant::now());
        let mut p = Pace::new(0.25, 4);
        p.read_took(MS, t);
        p.write_took(101 * MS, t); // one at a time, 400 ms apart
        assert!(l.request("a", false));
        assert!(l.request("b", false));
        started(l.next(&mut p, t));
        assert_eq!(l.next(&mut p, t), Next::WaitForWrite, "one in flight");
        p.finished();
        assert_eq!(l.next(&mut p, t), Next::WaitUntil(t + 400 * MS));
        assert!(l.request("c", true));
        assert_eq!(started(l.next(&mut p, t)).0, "c", "fresh goes at once");
        assert_eq!(
            l.next(&mut p, t),
            Next::WaitForWrite,
            "the fresh write counts in flight"
        );
        p.finished();
        assert_eq!(
            l.next(&mut p, t),
            Next::WaitUntil(t + 800 * MS),
            "and is charged to the backlog"
        );
        assert_eq!(started(l.next(&mut p, t + 800 * MS)).0, "b");
    }

    #[test]
    fn closing_forgets_what_waits_and_queues_nothing_more() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        assert!(l.request("a", false));
        assert!(l.request_answer("b", 3, true));
        started(l.next(&mut p, t)); // b, fresh
        assert!(!l.request_answer("b", 4, true));
        l.close();
        assert!(l.is_closed());
        assert_eq!(l.queued(), 0);
        assert_eq!(l.lane("a"), None);
        assert!(!l.request("c", true));
        assert!(
            !l.finish("b"),
            "changed meanwhile, but closed: not queued again"
        );
        assert!(l.is_empty());
        assert_eq!(l.next(&mut p, t), Next::Idle);
        assert_eq!(l.broken_invariant(), None);
    }

    #[test]
    fn abandoning_forgets_a_running_relay_only() {
        let (mut l, mut p, t) = (Lanes::default(), pace(), Instant::now());
        assert!(l.request("a", false));
        assert!(l.request("b", false));
        started(l.next(&mut p, t));
        l.abandon("b");
        assert_eq!(l.lane("b"), Some(Lane::Backlog), "waiting: kept");
        l.abandon("a");
        assert_eq!(l.len(), 1);
        assert!(!l.finish("a"), "forgotten");
        assert!(!l.finish("b"), "not running");
        assert_eq!(l.broken_invariant(), None);
    }
}

#[cfg(test)]
mod interleavings;
