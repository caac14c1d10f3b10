//! The property test: [`Lanes`] and the real [`Pace`] driven through random interleavings of
//! what happens to a running pool, on a virtual clock, against a model of the rules written
//! independently of the code. Half the cases pace by relay users' answers too (their samples
//! arrive at random, moving a write's cost and the users' penalty), half by zooid's alone.

use super::*;
use crate::pace::DEBT_SPACINGS;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const RELAYS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const TIMEOUT: Duration = Duration::from_millis(1_000);

#[derive(Debug, Clone)]
enum Event {
    /// The host changes a relay (fresh).
    Host(usize),
    /// An operator runs `zooid-sync sync` on a relay (fresh).
    Manual(usize),
    /// A relay is asked for as a backlog (reconcile, retry, audit, `sync --all`).
    Backlog(usize),
    /// Several relays at once from the host: an import.
    Import(usize),
    /// The preparer runs.
    Step,
    /// A request in flight ends: which one, after how long, and how.
    Answer(usize, u64, Ending),
    /// A cheap read answers: the floor.
    Floor(u64),
    /// A relay user's sample (when the pace asks them): the two waits, in microseconds.
    User(u64, u64),
    /// Time passes.
    Advance(u64),
    /// The breaker opens (sends are parked) or closes (everything pending is handed back).
    Breaker(bool),
    /// The pool stops.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Accepted,
    Refused,
    TimedOut,
}

fn event() -> impl Strategy<Value = Event> {
    let relay = 0..RELAYS.len();
    prop_oneof![
        4 => relay.clone().prop_map(Event::Host),
        2 => relay.clone().prop_map(Event::Manual),
        2 => relay.prop_map(Event::Backlog),
        1 => (1..RELAYS.len()).prop_map(Event::Import),
        6 => Just(Event::Step),
        4 => (0..8usize, 1..600u64, prop_oneof![
                6 => Just(Ending::Accepted),
                1 => Just(Ending::Refused),
                1 => Just(Ending::TimedOut)
            ])
            .prop_map(|(k, ms, end)| Event::Answer(k, ms, end)),
        1 => (1..50u64).prop_map(Event::Floor),
        3 => (100..4_000u64, 100..4_000u64).prop_map(|(a, b)| Event::User(a, b)),
        3 => (1..400u64).prop_map(Event::Advance),
        1 => any::<bool>().prop_map(Event::Breaker),
        1 => Just(Event::Shutdown),
    ]
}

/// A request at zooid.
#[derive(Debug)]
struct Request {
    id: String,
    /// The host's version of the relay its body carries.
    version: u32,
    answering: Vec<i64>,
}

/// The model: what the host, the operators and zooid did, and what the rules say the lanes
/// hold.
struct World {
    lanes: Lanes,
    pace: Pace,
    t0: Instant,
    now: Instant,
    version: HashMap<String, u32>,
    synced: HashMap<String, u32>,
    at_zooid: Vec<Request>,
    /// Relays whose sync started and whose outcome is not recorded.
    running: HashSet<String>,
    /// The rules' word on where each waiting relay waits (true: fresh), and on the lane of
    /// each running relay's follow-up.
    waits: HashMap<String, bool>,
    again: HashMap<String, bool>,
    next_request: i64,
    asked: HashSet<i64>,
    answered: HashSet<i64>,
    retries: Vec<String>,
    breaker_open: bool,
    closed: bool,
}

impl World {
    /// A world whose pace asks relay users (`users`) or goes by zooid's answers alone.
    fn new(users: bool) -> World {
        let t0 = Instant::now();
        let pace = match users {
            true => Pace::new(0.25, 4).with_users(Duration::from_millis(1)),
            false => Pace::new(0.25, 4),
        };
        World {
            lanes: Lanes::default(),
            pace,
            t0,
            now: t0,
            version: HashMap::new(),
            synced: HashMap::new(),
            at_zooid: Vec::new(),
            running: HashSet::new(),
            waits: HashMap::new(),
            again: HashMap::new(),
            next_request: 1,
            asked: HashSet::new(),
            answered: HashSet::new(),
            retries: Vec::new(),
            breaker_open: false,
            closed: false,
        }
    }

    /// The rules, for a sync of `id` asked for (`fresh` or not).
    fn ask(&mut self, id: &str, fresh: bool) {
        if self.closed {
            return;
        }
        let fresh_waiting = self.waits.values().filter(|f| **f).count();
        if self.running.contains(id) {
            let again = self.again.entry(id.to_string()).or_insert(false);
            *again |= fresh;
        } else if let Some(waits_fresh) = self.waits.get_mut(id) {
            if fresh && !*waits_fresh && fresh_waiting < FRESH_AT_ONCE {
                *waits_fresh = true;
            }
        } else {
            self.waits
                .insert(id.to_string(), fresh && fresh_waiting < FRESH_AT_ONCE);
        }
        self.lanes.request(id, fresh);
    }

    fn change(&mut self, id: &str) {
        *self.version.entry(id.to_string()).or_default() += 1;
        self.ask(id, true);
    }

    fn manual(&mut self, id: &str) {
        if self.closed {
            return;
        }
        let request = self.next_request;
        self.next_request += 1;
        self.asked.insert(request);
        self.lanes.request_answer(id, request, true);
        // The model's side of the same ask (the lanes were told above).
        let fresh_waiting = self.waits.values().filter(|f| **f).count();
        if self.running.contains(id) {
            self.again.insert(id.to_string(), true);
        } else if let Some(waits_fresh) = self.waits.get_mut(id) {
            if !*waits_fresh && fresh_waiting < FRESH_AT_ONCE {
                *waits_fresh = true;
            }
        } else {
            self.waits
                .insert(id.to_string(), fresh_waiting < FRESH_AT_ONCE);
        }
    }

    fn spacing(&self) -> Duration {
        self.pace.spacing()
    }

    /// The preparer's turn; checks what it answered against the rules.
    fn step(&mut self) -> Result<(), TestCaseError> {
        let fresh_waits = self.waits.values().any(|f| *f);
        let next = self.lanes.next(&mut self.pace, self.now);
        match next {
            Next::Start {
                id,
                lane,
                answering,
            } => {
                prop_assert!(!self.closed, "{id} started after the pool stopped");
                prop_assert!(
                    self.running.insert(id.clone()),
                    "{id} started while its sync runs"
                );
                let waited_fresh = self.waits.remove(&id);
                prop_assert!(waited_fresh.is_some(), "{id} started without being asked");
                prop_assert_eq!(
                    waited_fresh == Some(true),
                    lane == Lane::Fresh,
                    "{} started from the wrong lane",
                    id
                );
                if fresh_waits {
                    prop_assert_eq!(lane, Lane::Fresh, "a backlog went before fresh work");
                }
                let version = self.version.get(&id).copied().unwrap_or(0);
                if self.breaker_open {
                    // Parked: no request; the outcome is recorded at once.
                    self.pace.finished();
                    self.answered.extend(answering);
                    self.finish(&id);
                } else {
                    self.at_zooid.push(Request {
                        id,
                        version,
                        answering,
                    });
                }
            }
            Next::WaitUntil(at) => {
                prop_assert!(!fresh_waits, "fresh work waits for a backlog's turn");
                let most = self.spacing() * DEBT_SPACINGS;
                prop_assert!(
                    at.saturating_duration_since(self.now) <= most,
                    "a backlog waits {:?}, more than {:?} ({} spacings)",
                    at.saturating_duration_since(self.now),
                    most,
                    DEBT_SPACINGS
                );
            }
            Next::WaitForWrite => {
                prop_assert!(!fresh_waits, "fresh work waits for a write to end");
                prop_assert!(
                    !self.at_zooid.is_empty(),
                    "waiting for a write to end with none in flight: nothing would wake it"
                );
            }
            Next::Idle => {
                prop_assert!(
                    self.waits.is_empty(),
                    "idle while {:?} wait",
                    self.waits.keys().collect::<Vec<_>>()
                );
            }
        }
        Ok(())
    }

    /// The outcome of `id`'s sync is recorded.
    fn finish(&mut self, id: &str) {
        self.running.remove(id);
        let again = self.again.remove(id);
        let queued = self.lanes.finish(id);
        if let (Some(fresh), false) = (again, self.closed) {
            let fresh_waiting = self.waits.values().filter(|f| **f).count();
            self.waits
                .insert(id.to_string(), fresh && fresh_waiting < FRESH_AT_ONCE);
        }
        assert_eq!(queued, again.is_some() && !self.closed, "{id} queued again");
    }

    fn answer(&mut self, k: usize, ms: u64, ending: Ending) {
        if self.at_zooid.is_empty() {
            return;
        }
        let request = self.at_zooid.remove(k % self.at_zooid.len());
        let took = match ending {
            Ending::TimedOut => TIMEOUT,
            _ => Duration::from_millis(ms).min(TIMEOUT),
        };
        self.now += took / 4; // answers overlap; time moves on a little
        self.pace.write_took(took, self.now);
        self.pace.finished();
        self.answered.extend(request.answering);
        match ending {
            Ending::Accepted => {
                let synced = self.synced.entry(request.id.clone()).or_default();
                *synced = (*synced).max(request.version);
            }
            // A refusal is retried after its backoff; a timeout is sent again later.
            Ending::Refused | Ending::TimedOut => self.retries.push(request.id.clone()),
        }
        self.finish(&request.id);
    }

    fn apply(&mut self, event: &Event) -> Result<(), TestCaseError> {
        match event {
            Event::Host(r) => self.change(RELAYS[*r]),
            Event::Manual(r) => self.manual(RELAYS[*r]),
            Event::Backlog(r) => self.ask(RELAYS[*r], false),
            Event::Import(n) => {
                for id in &RELAYS[..*n] {
                    self.change(id);
                }
            }
            Event::Step => self.step()?,
            Event::Answer(k, ms, ending) => self.answer(*k, *ms, *ending),
            Event::Floor(ms) => self.pace.read_took(Duration::from_millis(*ms), self.now),
            Event::User(first, second) => self.pace.user_sample(
                self.now,
                Duration::from_micros(*first),
                Duration::from_micros(*second),
            ),
            Event::Advance(ms) => {
                self.now += Duration::from_millis(*ms);
                for id in std::mem::take(&mut self.retries) {
                    self.ask(&id, false);
                }
            }
            Event::Breaker(open) => {
                let was_open = std::mem::replace(&mut self.breaker_open, *open);
                if was_open && !open {
                    // zooid answers again: every pending relay is handed back.
                    let pending: Vec<String> = RELAYS
                        .iter()
                        .filter(|id| self.version.get(**id) > self.synced.get(**id))
                        .map(|id| id.to_string())
                        .collect();
                    for id in pending {
                        self.ask(&id, false);
                    }
                }
            }
            Event::Shutdown => {
                self.closed = true;
                self.lanes.close();
                self.waits.clear();
            }
        }
        if let Some(broken) = self.lanes.broken_invariant() {
            return Err(TestCaseError::fail(broken));
        }
        // The lanes hold what the rules say, relay by relay.
        for id in RELAYS {
            let expected = self.waits.get(id).map(|fresh| match fresh {
                true => Lane::Fresh,
                false => Lane::Backlog,
            });
            prop_assert_eq!(self.lanes.lane(id), expected, "the lane of {}", id);
        }
        Ok(())
    }

    /// Runs the pool until nothing is left to do, zooid answering every request and the
    /// breaker closed: every relay must reach zooid at its latest version, and every
    /// manual sync be answered.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        self.apply(&Event::Breaker(false))?;
        for _ in 0..10_000 {
            for id in std::mem::take(&mut self.retries) {
                self.ask(&id, false);
            }
            self.step()?;
            if !self.at_zooid.is_empty() {
                self.answer(0, 20, Ending::Accepted);
            } else if self.waits.is_empty() && self.retries.is_empty() {
                break;
            } else {
                // Waiting for a backlog's turn.
                self.now += self.spacing().max(Duration::from_millis(1));
            }
        }
        if self.closed {
            return Ok(());
        }
        for id in RELAYS {
            prop_assert_eq!(
                self.synced.get(id).copied().unwrap_or(0),
                self.version.get(id).copied().unwrap_or(0),
                "{} reached zooid at its latest version",
                id
            );
        }
        let unanswered: Vec<_> = self.asked.difference(&self.answered).collect();
        prop_assert!(unanswered.is_empty(), "unanswered: {:?}", unanswered);
        prop_assert!(self.lanes.is_empty(), "{} relays left", self.lanes.len());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// After every event the lanes keep their invariants and hold what the rules say;
    /// the preparer never makes fresh work wait, never waits for a write that is not in
    /// flight, and never waits longer than a bounded debt; at the end every relay reaches
    /// zooid at its latest version and every manual sync is answered.
    #[test]
    fn any_interleaving_keeps_the_rules_and_ends_with_everything_synced(
        events in proptest::collection::vec(event(), 1..400),
        users in any::<bool>(),
    ) {
        let mut world = World::new(users);
        for event in &events {
            world.apply(event)?;
        }
        world.settle()?;
        let _ = world.t0;
    }
}
