//! The bus: a broadcast of [`Activity`] from the writers to every subscriber.
//!
//! It behaves like tokio's `broadcast`, which the original worker used, but on crossbeam
//! channels and plain threads. Every subscriber has its own bounded queue. A subscriber that
//! falls behind loses the activities that did not fit and is told so once, with
//! [`RecvError::Lagged`] and how many it lost; the dispatcher answers that by reconciling from
//! the database, which holds everything the lost activities said. A [`Bus`] handle is a sender:
//! when the last *strong* handle is dropped, subscribers drain what is queued and then get
//! [`RecvError::Closed`]. A *weak* handle ([`Bus::weak`]) can send but does not keep the bus
//! open, which is how the worker can publish its own outcomes without keeping itself alive.
//!
//! A queue takes memory only for what it holds: its bound is counted, not preallocated (a
//! bounded crossbeam channel allocates and touches every slot up front, ~0.7 MB for the
//! dispatcher's 4 096 activities, all of it resident for the life of the process).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::model::Activity;

/// Why [`Subscriber::recv`] returned no activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// This many activities were dropped because the subscriber fell behind.
    Lagged(u64),
    /// Every strong sender is gone and the queue is drained.
    Closed,
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(
                f,
                "fell behind the bus and lost {n} activities; the database holds what they said"
            ),
            RecvError::Closed => f.write_str("the bus is closed: every Command handle is gone"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A sending handle of the bus. Cloning a strong handle makes another strong handle.
pub struct Bus {
    shared: Arc<Shared>,
    strong: bool,
}

struct Shared {
    capacity: usize,
    strong_count: AtomicUsize,
    /// `None` once closed.
    subscribers: Mutex<Option<Vec<Slot>>>,
    /// Run once when the bus closes ([`Bus::on_close`]).
    on_close: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

struct Slot {
    tx: Sender<Activity>,
    lagged: Arc<AtomicU64>,
    /// Only activities for which this answers true are delivered.
    wants: fn(&Activity) -> bool,
}

/// The receiving end of one subscription.
pub struct Subscriber {
    rx: Receiver<Activity>,
    lagged: Arc<AtomicU64>,
}

impl Bus {
    /// A new bus whose subscribers each queue at most `capacity` activities.
    pub fn new(capacity: usize) -> Bus {
        Bus {
            shared: Arc::new(Shared {
                capacity: capacity.max(1),
                strong_count: AtomicUsize::new(1),
                subscribers: Mutex::new(Some(Vec::new())),
                on_close: Mutex::new(Vec::new()),
            }),
            strong: true,
        }
    }

    /// A handle that can send and subscribe but does not keep the bus open.
    pub fn weak(&self) -> Bus {
        Bus {
            shared: self.shared.clone(),
            strong: false,
        }
    }

    /// Delivers `activity` to every subscriber that has room; the others are marked lagged.
    /// Sending on a closed bus does nothing.
    pub fn send(&self, activity: Activity) {
        let mut guard = self.shared.subscribers.lock().unwrap();
        let Some(slots) = guard.as_mut() else { return };
        slots.retain(|slot| {
            if !(slot.wants)(&activity) {
                return true; // a dropped subscriber is forgotten at the next delivery
            }
            // Senders take turns under the lock and receivers only shorten the queue, so the
            // length checked here bounds the queue.
            if slot.tx.len() >= self.shared.capacity {
                slot.lagged.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            slot.tx.send(activity.clone()).is_ok()
        });
    }

    /// Runs `f` once the bus closes (at once if it is closed already): how a thread that
    /// serves the bus learns that nobody can hear it any more.
    pub(crate) fn on_close(&self, f: impl FnOnce() + Send + 'static) {
        let closed = self.shared.subscribers.lock().unwrap().is_none();
        match closed {
            true => f(),
            false => self.shared.on_close.lock().unwrap().push(Box::new(f)),
        }
    }

    /// Whether the bus is closed: its last strong handle is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.subscribers.lock().unwrap().is_none()
    }

    /// A new subscription that sees every activity sent from now on.
    /// Subscribing to a closed bus gives a subscriber that is already closed.
    pub fn subscribe(&self) -> Subscriber {
        self.subscribe_to(|_| true)
    }

    /// A subscription to the activities `wants` accepts. The others are not queued for it, so
    /// they neither wake it nor count towards its lag.
    pub fn subscribe_to(&self, wants: fn(&Activity) -> bool) -> Subscriber {
        let (tx, rx) = crossbeam_channel::unbounded();
        let lagged = Arc::new(AtomicU64::new(0));
        if let Some(slots) = self.shared.subscribers.lock().unwrap().as_mut() {
            slots.push(Slot {
                tx,
                lagged: lagged.clone(),
                wants,
            });
        }
        Subscriber { rx, lagged }
    }
}

impl Clone for Bus {
    fn clone(&self) -> Bus {
        if self.strong {
            self.shared.strong_count.fetch_add(1, Ordering::Relaxed);
        }
        Bus {
            shared: self.shared.clone(),
            strong: self.strong,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if self.strong && self.shared.strong_count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Dropping the senders disconnects every subscriber once its queue is drained.
            self.shared.subscribers.lock().unwrap().take();
            let callbacks = std::mem::take(&mut *self.shared.on_close.lock().unwrap());
            for f in callbacks {
                f();
            }
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("strong", &self.strong).finish()
    }
}

impl Subscriber {
    /// The next activity, blocking until one arrives. A lag is reported first, once.
    pub fn recv(&self) -> Result<Activity, RecvError> {
        self.take_lag()?;
        self.rx.recv().map_err(|_| RecvError::Closed)
    }

    /// Like [`recv`](Self::recv) but gives up at `deadline`, answering `Ok(None)`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Option<Activity>, RecvError> {
        self.take_lag()?;
        match self.rx.recv_deadline(deadline) {
            Ok(a) => Ok(Some(a)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(RecvError::Closed),
        }
    }

    /// The channel underneath, for `crossbeam_channel::select!`. Call
    /// [`take_lag`](Self::take_lag) before handling a message received from it.
    pub(crate) fn receiver(&self) -> &Receiver<Activity> {
        &self.rx
    }

    /// `Err(Lagged(n))` if activities were dropped since the last call.
    pub(crate) fn take_lag(&self) -> Result<(), RecvError> {
        match self.lagged.swap(0, Ordering::AcqRel) {
            0 => Ok(()),
            n => Err(RecvError::Lagged(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(n: i64) -> Activity {
        Activity {
            seq: n,
            id: format!("a{n}"),
            tenant_pubkey: String::new(),
            created_at: 0,
            activity_type: "update_relay".into(),
            resource_type: "relay".into(),
            resource_id: "r".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn every_subscriber_gets_every_activity() {
        let bus = Bus::new(8);
        let a = bus.subscribe();
        let b = bus.subscribe();
        bus.send(activity(1));
        bus.send(activity(2));
        for s in [&a, &b] {
            assert_eq!(s.recv().unwrap().seq, 1);
            assert_eq!(s.recv().unwrap().seq, 2);
        }
    }

    #[test]
    fn a_slow_subscriber_is_told_it_lagged_once() {
        let bus = Bus::new(2);
        let s = bus.subscribe();
        for n in 1..=5 {
            bus.send(activity(n));
        }
        assert_eq!(s.recv(), Err(RecvError::Lagged(3)));
        assert_eq!(s.recv().unwrap().seq, 1);
        assert_eq!(s.recv().unwrap().seq, 2);
        bus.send(activity(6));
        assert_eq!(s.recv().unwrap().seq, 6);
    }

    #[test]
    fn closes_when_the_last_strong_sender_goes_after_draining() {
        let bus = Bus::new(4);
        let weak = bus.weak();
        let other = bus.clone();
        let s = bus.subscribe();
        bus.send(activity(1));
        drop(bus);
        other.send(activity(2));
        drop(other);
        weak.send(activity(3)); // closed: goes nowhere
        assert_eq!(s.recv().unwrap().seq, 1);
        assert_eq!(s.recv().unwrap().seq, 2);
        assert_eq!(s.recv(), Err(RecvError::Closed));
        assert_eq!(weak.subscribe().recv(), Err(RecvError::Closed));
    }

    #[test]
    fn a_filtered_subscriber_sees_only_what_it_wants() {
        let bus = Bus::new(1);
        let s = bus.subscribe_to(|a| a.seq % 2 == 0);
        for n in 1..=3 {
            bus.send(activity(n)); // 1 and 3 are not queued, so no lag either
        }
        assert_eq!(s.recv().unwrap().seq, 2);
        drop(bus);
        assert_eq!(s.recv(), Err(RecvError::Closed));
    }

    #[test]
    fn a_dropped_subscriber_is_forgotten() {
        let bus = Bus::new(1);
        let s = bus.subscribe();
        drop(s);
        bus.send(activity(1));
        assert!(bus
            .shared
            .subscribers
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .is_empty());
    }
}
