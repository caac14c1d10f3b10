//! Delayed retries: a hierarchical timing wheel, and the thread that runs it.
//!
//! [`TimerWheel`] is pure: it knows time only as millisecond ticks handed to it. Four levels of
//! 64 slots cover 64^4 ms (about 4.6 hours, far beyond the 15-minute longest retry); an entry
//! sits in the level whose slot width matches how far away it is, and moves down a level when
//! its slot comes round. Insert and cancel are O(1) (each entry is in a doubly-linked list per
//! slot, found through a map by relay id); finding the next due slot is a few bit operations
//! per level. Each relay has at most one entry: scheduling it again replaces the old one.
//!
//! [`spawn`] runs a wheel on its own thread. The thread blocks on its command channel until
//! the next due slot (or forever when nothing is scheduled), so an idle worker makes no
//! periodic wake-ups. Due relay ids are sent to the dispatcher.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

const LEVELS: usize = 4;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
const NONE: usize = usize::MAX;

/// The furthest ahead an entry can be scheduled, in ticks; later deadlines are clamped.
pub const MAX_DELAY_TICKS: u64 = (1 << (SLOT_BITS * LEVELS as u32)) - 1;

struct Entry {
    key: Option<String>,
    when: u64,
    prev: usize,
    next: usize,
    level: u8,
    slot: u8,
}

/// A timing wheel of relay ids, keyed by id, at millisecond resolution.
pub struct TimerWheel {
    /// The tick up to which everything due has been fired.
    elapsed: u64,
    heads: [[usize; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    entries: Vec<Entry>,
    free: Vec<usize>,
    index: HashMap<String, usize>,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel::new()
    }
}

impl TimerWheel {
    /// An empty wheel at time zero.
    pub fn new() -> TimerWheel {
        TimerWheel {
            elapsed: 0,
            heads: [[NONE; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// How many entries are scheduled.
    #[cfg(any(test, feature = "cli"))]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is scheduled.
    #[cfg(any(test, feature = "cli"))]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Schedules `key` at tick `when` (at least one tick from now, at most
    /// [`MAX_DELAY_TICKS`]), replacing an earlier schedule of the same key.
    pub fn insert(&mut self, key: &str, when: u64) {
        self.cancel(key);
        let when = when.clamp(self.elapsed + 1, self.elapsed + MAX_DELAY_TICKS);
        let entry = Entry {
            key: Some(key.to_string()),
            when,
            prev: NONE,
            next: NONE,
            level: 0,
            slot: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        self.index.insert(key.to_string(), i);
        self.link(i);
    }

    /// Removes `key`'s schedule; answers whether there was one.
    pub fn cancel(&mut self, key: &str) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        self.unlink(i);
        self.entries[i].key = None;
        self.free.push(i);
        true
    }

    /// The tick of the next slot that needs processing, if anything is scheduled.
    pub fn next_deadline(&self) -> Option<u64> {
        (0..LEVELS)
            .filter_map(|l| self.next_slot(l))
            .map(|(_, d)| d)
            .min()
    }

    /// Advances to tick `now`, appending every key due by then to `due`.
    pub fn advance(&mut self, now: u64, due: &mut Vec<String>) {
        loop {
            let next = (0..LEVELS)
                .filter_map(|l| self.next_slot(l).map(|(s, d)| (l, s, d)))
                .min_by_key(|&(_, _, d)| d);
            let Some((level, slot, deadline)) = next.filter(|&(_, _, d)| d <= now) else {
                break;
            };
            self.elapsed = deadline;
            // Take the whole slot, then fire or re-file each entry against the new time.
            let mut i = self.heads[level][slot];
            self.heads[level][slot] = NONE;
            self.occupied[level] &= !(1 << slot);
            while i != NONE {
                let next = self.entries[i].next;
                if self.entries[i].when <= self.elapsed {
                    let key = self.entries[i]
                        .key
                        .take()
                        .expect("linked entries have keys");
                    self.index.remove(&key);
                    self.free.push(i);
                    due.push(key);
                } else {
                    self.link(i);
                }
                i = next;
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    fn link(&mut self, i: usize) {
        let when = self.entries[i].when;
        let significant = 63 - ((self.elapsed ^ when) | (SLOTS as u64 - 1)).leading_zeros();
        let level = ((significant / SLOT_BITS) as usize).min(LEVELS - 1);
        let slot = ((when >> (level as u32 * SLOT_BITS)) as usize) % SLOTS;
        let head = self.heads[level][slot];
        let e = &mut self.entries[i];
        e.level = level as u8;
        e.slot = slot as u8;
        e.prev = NONE;
        e.next = head;
        if head != NONE {
            self.entries[head].prev = i;
        }
        self.heads[level][slot] = i;
        self.occupied[level] |= 1 << slot;
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next, level, slot) = {
            let e = &self.entries[i];
            (e.prev, e.next, e.level as usize, e.slot as usize)
        };
        if prev == NONE {
            self.heads[level][slot] = next;
        } else {
            self.entries[prev].next = next;
        }
        if next != NONE {
            self.entries[next].prev = prev;
        }
        if self.heads[level][slot] == NONE {
            self.occupied[level] &= !(1 << slot);
        }
    }

    /// The next occupied slot of `level` and the tick at which it must be processed.
    fn next_slot(&self, level: usize) -> Option<(usize, u64)> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let slot_range = 1u64 << (level as u32 * SLOT_BITS);
        let level_range = slot_range << SLOT_BITS;
        let now_slot = ((self.elapsed / slot_range) % SLOTS as u64) as u32;
        let slot = (occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as usize % SLOTS;
        let level_start = self.elapsed & !(level_range - 1);
        let mut deadline = level_start + slot as u64 * slot_range;
        if deadline <= self.elapsed {
            // Only the top level wraps: its slots form a ring beyond the current rotation.
            deadline += level_range;
        }
        Some((slot, deadline))
    }
}

/// Requests to the timer thread.
#[derive(Debug)]
pub enum TimerCommand {
    /// Fire `relay_id` after this long, replacing any earlier schedule for it.
    Schedule(String, Duration),
    /// Forget `relay_id`'s schedule.
    Cancel(String),
}

/// The handle the dispatcher and the pool use to schedule and cancel retries.
///
/// It remembers which relays have a retry scheduled, so that the common case (a sync that
/// succeeds with no retry pending) costs a set lookup instead of waking the timer thread.
pub struct Retries {
    timer: Sender<TimerCommand>,
    scheduled: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Retries {
    pub fn new(timer: Sender<TimerCommand>) -> Retries {
        Retries {
            timer,
            scheduled: Default::default(),
        }
    }

    /// Retries `relay_id` after `delay`, replacing an earlier schedule.
    pub fn schedule(&self, relay_id: &str, delay: Duration) {
        self.scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(relay_id.to_string());
        let _ = self
            .timer
            .send(TimerCommand::Schedule(relay_id.to_string(), delay));
    }

    /// Cancels `relay_id`'s retry, if one is scheduled.
    pub fn cancel(&self, relay_id: &str) {
        if self
            .scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(relay_id)
        {
            let _ = self.timer.send(TimerCommand::Cancel(relay_id.to_string()));
        }
    }

    /// The timer fired `relay_id`'s retry.
    pub fn fired(&self, relay_id: &str) {
        self.scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(relay_id);
    }
}

/// Starts the timer thread. It sends each due relay id on `due` and ends when `commands`
/// is disconnected or `due` is.
pub fn spawn(
    commands: Receiver<TimerCommand>,
    due: Sender<String>,
    watch: crate::metrics::ThreadWatch,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("zooid-sync-timer".into())
        .spawn(move || {
            let _watch = watch;
            run(commands, due)
        })
}

fn run(commands: Receiver<TimerCommand>, due: Sender<String>) {
    let origin = Instant::now();
    let tick = |at: Instant| at.saturating_duration_since(origin).as_millis() as u64;
    let mut wheel = TimerWheel::new();
    let mut fired = Vec::new();
    loop {
        wheel.advance(tick(Instant::now()), &mut fired);
        for id in fired.drain(..) {
            if due.send(id).is_err() {
                return;
            }
        }
        let command = match wheel.next_deadline() {
            Some(t) => commands.recv_deadline(origin + Duration::from_millis(t)),
            None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match command {
            Ok(TimerCommand::Schedule(id, delay)) => {
                // Round up so a retry never fires early.
                let ticks = delay.as_micros().div_ceil(1000) as u64;
                wheel.insert(&id, tick(Instant::now()) + ticks.max(1));
            }
            Ok(TimerCommand::Cancel(id)) => {
                wheel.cancel(&id);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Advances tick by tick (jumping to deadlines) and records when each key fired.
    fn run_until(wheel: &mut TimerWheel, end: u64) -> Vec<(String, u64)> {
        let mut fired = Vec::new();
        let mut due = Vec::new();
        while let Some(t) = wheel.next_deadline() {
            if t > end {
                break;
            }
            wheel.advance(t, &mut due);
            fired.extend(due.drain(..).map(|k| (k, t)));
        }
        wheel.advance(end, &mut due);
        fired.extend(due.drain(..).map(|k| (k, end)));
        fired
    }

    #[test]
    fn fires_each_entry_exactly_at_its_tick() {
        let mut wheel = TimerWheel::new();
        let whens = [
            1u64, 5, 63, 64, 65, 100, 4095, 4096, 30_000, 262_144, 900_000, 2_000_000,
        ];
        for (i, w) in whens.iter().enumerate() {
            wheel.insert(&format!("k{i}"), *w);
        }
        assert_eq!(wheel.len(), whens.len());
        let fired = run_until(&mut wheel, 3_000_000);
        let expected: Vec<(String, u64)> = whens
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("k{i}"), *w))
            .collect();
        assert_eq!(fired, expected);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn never_fires_early_from_an_arbitrary_start() {
        let mut wheel = TimerWheel::new();
        let mut due = Vec::new();
        wheel.advance(16_777_000, &mut due); // near the top level's wrap
        for (i, d) in [1u64, 100, 5_000, 900_000].iter().enumerate() {
            wheel.insert(&format!("k{i}"), 16_777_000 + d);
        }
        let fired = run_until(&mut wheel, 16_777_000 + 1_000_000);
        for (key, at) in &fired {
            let i: usize = key[1..].parse().unwrap();
            assert_eq!(*at, 16_777_000 + [1u64, 100, 5_000, 900_000][i], "{key}");
        }
        assert_eq!(fired.len(), 4);
    }

    #[test]
    fn rescheduling_replaces_and_cancel_removes() {
        let mut wheel = TimerWheel::new();
        wheel.insert("a", 1000);
        wheel.insert("a", 50);
        wheel.insert("b", 70);
        assert!(wheel.cancel("b"));
        assert!(!wheel.cancel("b"));
        assert_eq!(wheel.len(), 1);
        assert_eq!(run_until(&mut wheel, 5000), vec![("a".to_string(), 50)]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut wheel = TimerWheel::new();
        let mut due = Vec::new();
        wheel.advance(500, &mut due);
        wheel.insert("late", 10);
        assert_eq!(wheel.next_deadline(), Some(501));
        wheel.advance(501, &mut due);
        assert_eq!(due, ["late"]);
    }

    #[test]
    fn entries_are_reused_after_firing() {
        let mut wheel = TimerWheel::new();
        let mut due = Vec::new();
        for round in 0..10u64 {
            for i in 0..100 {
                wheel.insert(&format!("k{i}"), round * 1000 + 500 + i);
            }
            wheel.advance(round * 1000 + 999, &mut due);
        }
        assert_eq!(due.len(), 1000);
        assert!(wheel.entries.len() <= 100);
    }

    #[test]
    fn the_thread_fires_in_order_and_honours_cancel() {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (due_tx, due_rx) = crossbeam_channel::unbounded();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let handle = spawn(cmd_rx, due_tx, metrics.watch_thread("timer")).unwrap();
        let start = Instant::now();
        cmd_tx
            .send(TimerCommand::Schedule(
                "slow".into(),
                Duration::from_millis(60),
            ))
            .unwrap();
        cmd_tx
            .send(TimerCommand::Schedule(
                "fast".into(),
                Duration::from_millis(20),
            ))
            .unwrap();
        cmd_tx
            .send(TimerCommand::Schedule(
                "gone".into(),
                Duration::from_millis(30),
            ))
            .unwrap();
        cmd_tx.send(TimerCommand::Cancel("gone".into())).unwrap();
        let timeout = Duration::from_secs(5);
        assert_eq!(due_rx.recv_timeout(timeout).unwrap(), "fast");
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(due_rx.recv_timeout(timeout).unwrap(), "slow");
        assert!(start.elapsed() >= Duration::from_millis(60));
        drop(cmd_tx);
        handle.join().unwrap();
        assert!(
            due_rx.try_recv().is_err(),
            "the cancelled entry never fired"
        );
    }
}
