//! A blocking FIFO between the pool's threads that puts a waiting thread to sleep at once.
//!
//! The pool's preparer hands prepared syncs to its workers through a [`Queue`]. A channel that spins before it sleeps (crossbeam's does, calling
//! `sched_yield` in a loop) is made for cores to spare; on the two cores of a small VM, shared
//! with SQLite and zooid, every spin is time taken from a thread with work to do. Here a thread
//! that finds nothing to take (or no room) waits on a condition variable straight away, and a
//! thread that adds or takes wakes another only when one is waiting.
//!
//! A full bounded queue wakes a thread waiting for room only once it is down to half: the
//! thread that fills it then adds several items per wake-up instead of one. Each wake-up is a
//! context switch on a busy core, paid on the critical path of whoever waits for that core.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};

/// A FIFO with an optional capacity, closed by [`Queue::close`].
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item arrives or the queue closes.
    filled: Condvar,
    /// Signalled when an item leaves or the queue closes.
    emptied: Condvar,
    capacity: usize,
    /// A thread waiting for room is woken once the queue holds this many items or fewer.
    refill_at: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Threads waiting in [`Queue::pop`].
    takers: usize,
    /// Threads waiting in [`Queue::push`] for room.
    givers: usize,
}

impl<T> Queue<T> {
    /// A queue that holds any number of items.
    #[cfg(test)]
    pub(crate) fn unbounded() -> Queue<T> {
        Queue::bounded(usize::MAX)
    }

    /// A queue that holds at most `capacity` items (at least one): [`push`](Self::push)
    /// waits for room, until the queue is down to half.
    pub(crate) fn bounded(capacity: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                takers: 0,
                givers: 0,
            }),
            filled: Condvar::new(),
            emptied: Condvar::new(),
            capacity: capacity.max(1),
            refill_at: capacity.max(1) / 2,
        }
    }

    /// Adds `item` at the back, once there is room (see [`bounded`](Self::bounded)). Answers
    /// the item back if the queue is closed (before or while waiting).
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        self.add(item, false)
    }

    /// Adds `item` at the front, ahead of everything waiting, once there is room: for an item
    /// someone waits for. Answers the item back if the queue is closed.
    pub(crate) fn push_first(&self, item: T) -> Result<(), T> {
        self.add(item, true)
    }

    fn add(&self, item: T, first: bool) -> Result<(), T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.items.len() >= self.capacity && !state.closed {
            state.givers += 1;
            state = self
                .emptied
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.givers -= 1;
        }
        if state.closed {
            return Err(item);
        }
        match first {
            true => state.items.push_front(item),
            false => state.items.push_back(item),
        }
        if state.takers > 0 {
            self.filled.notify_one();
        }
        Ok(())
    }

    /// Takes the item at the front, waiting for one. Answers `None` once the queue is closed
    /// and empty.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(item) = state.items.pop_front() {
                if state.givers > 0 && state.items.len() <= self.refill_at {
                    self.emptied.notify_one();
                }
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state.takers += 1;
            state = self
                .filled
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.takers -= 1;
        }
    }

    /// Gives back the room a burst left behind, beyond what the queue holds now.
    pub(crate) fn shrink(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items
            .shrink_to_fit();
    }

    /// Closes the queue: nothing more is added, and once the items left are taken,
    /// [`pop`](Self::pop) answers `None`. Wakes every waiting thread.
    pub(crate) fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.filled.notify_all();
        self.emptied.notify_all();
    }
}

/// Closes a queue when dropped: the thread that feeds a queue holds one, so that the threads
/// taking from it end even if the feeder ends early.
pub(crate) struct CloseOnDrop<'a, T>(pub(crate) &'a Queue<T>);

impl<T> Drop for CloseOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;
    use std::sync::Arc;
    use std::time::Duration;

    /// `q.pop()` on another thread, within a few seconds: a queue that lost an item fails the
    /// test at once instead of hanging it.
    fn pop_soon<T: Send + 'static>(q: &Arc<Queue<T>>) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = q.clone();
        std::thread::spawn(move || {
            let _ = tx.send(q.pop());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("pop waited for an item that was never there")
    }

    #[test]
    fn first_in_first_out() {
        let q = Arc::new(Queue::unbounded());
        for i in 0..5 {
            q.push(i).unwrap();
        }
        let taken: Vec<_> = (0..5).map(|_| pop_soon(&q).unwrap()).collect();
        assert_eq!(taken, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn an_item_pushed_first_goes_ahead_of_what_waits() {
        let q = Arc::new(Queue::bounded(4));
        for i in 0..3 {
            q.push(i).unwrap();
        }
        q.push_first(9).unwrap();
        let taken: Vec<_> = (0..4).map(|_| pop_soon(&q).unwrap()).collect();
        assert_eq!(taken, vec![9, 0, 1, 2]);
        q.close();
        assert_eq!(q.push_first(7), Err(7));
    }

    #[test]
    fn closing_hands_out_what_is_left_then_ends() {
        let q = Queue::unbounded();
        q.push("a").unwrap();
        q.close();
        assert_eq!(q.push("b"), Err("b"));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_full_queue_waits_for_room_and_keeps_order_across_threads() {
        let q = Arc::new(Queue::bounded(2));
        let giver = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    q.push(i).unwrap();
                }
                q.close();
            })
        };
        let mut taken = Vec::new();
        while let Some(i) = q.pop() {
            taken.push(i);
        }
        giver.join().unwrap();
        assert_eq!(taken, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn closing_wakes_waiting_threads() {
        let q = Arc::new(Queue::<u8>::bounded(1));
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || q.pop())
            })
            .collect();
        q.close();
        for t in takers {
            assert_eq!(t.join().unwrap(), None);
        }
        // A giver waiting for room is answered its item back.
        let q = Arc::new(Queue::bounded(1));
        q.push(1).unwrap();
        let giver = {
            let q = q.clone();
            std::thread::spawn(move || q.push(2))
        };
        q.close();
        assert_eq!(giver.join().unwrap(), Err(2));
    }
}
