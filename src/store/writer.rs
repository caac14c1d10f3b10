//! The writer: writes queued as data and group-committed by whichever thread holds the
//! writer connection (the writer thread, when one runs), each in its own savepoint of one
//! `BEGIN IMMEDIATE` transaction; what committed is published on the bus; an outcome the
//! database refused for a reason that passes is kept and written again with backoff
//! ([`WriteHealth`]).

use super::*;

/// The writes waiting to be committed.
#[derive(Default)]
pub(super) struct WriteQueue {
    pub(super) writes: Vec<Queued>,
    /// Whether the writer thread sleeps until a write arrives. Only then is it woken for one;
    /// while it lingers, it is woken only when [`MAX_BATCH`] writes wait.
    pub(super) waiting: bool,
    /// Outcomes whose write failed for a reason that passes (the database busy, locked, full,
    /// read-only or failing I/O): the writer thread writes them again at `retry_at`. zooid has
    /// them already; only the record is missing, so nothing is sent again meanwhile.
    pub(super) retry: Vec<Queued>,
    pub(super) retry_at: Option<Instant>,
    /// The wait before the next retry; doubles up to [`WRITE_RETRY_CAP`] while writes fail.
    pub(super) backoff: Duration,
    pub(super) health: WriteHealth,
}

impl WriteQueue {
    /// Keeps `failed` to be written again after the backoff, and notes why.
    pub(super) fn keep_for_retry(&mut self, failed: Vec<Queued>, error: &str) {
        if failed.is_empty() {
            return;
        }
        self.health.failures += failed.len() as u64;
        self.health.failing = Some(match self.health.failing.take() {
            Some((since, _)) => (since, error.to_string()),
            None => (now_unix(), error.to_string()),
        });
        self.retry.extend(failed);
        self.backoff = (self.backoff * 2).clamp(WRITE_RETRY_BASE, WRITE_RETRY_CAP);
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// A commit went through: the database takes writes again, so what waits is due now.
    pub(super) fn writes_pass(&mut self) {
        if let Some((since, _)) = self.health.failing.take() {
            log::info!(
                "the database takes writes again after {} s; {} waiting sync outcomes are \
                 written now",
                now_unix().saturating_sub(since),
                self.retry.len()
            );
        }
        self.backoff = Duration::ZERO;
        if !self.retry.is_empty() {
            self.retry_at = Some(Instant::now());
        }
    }
}

/// How the writes of this process fare: what a health check and `/metrics` show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteHealth {
    /// Writes of sync outcomes that failed and were kept to be written again, in all.
    pub failures: u64,
    /// While writes fail: since when (unix seconds) and the last error.
    pub failing: Option<(i64, String)>,
    /// Outcomes waiting to be written again.
    pub waiting: usize,
}

/// The first wait before an outcome whose write failed is written again, and the longest.
pub(super) const WRITE_RETRY_BASE: Duration = Duration::from_millis(250);
pub(super) const WRITE_RETRY_CAP: Duration = Duration::from_secs(30);

/// Whether a write that failed with `error` may succeed later as it is: the database was busy
/// or locked, the disk full, the file read-only for now, or I/O failed. A constraint or a
/// malformed statement will not pass by itself.
pub(super) fn passes(error: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode::*;
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    DatabaseBusy
                        | DatabaseLocked
                        | DiskFull
                        | SystemIoFailure
                        | ReadOnly
                        | CannotOpen
                        | OutOfMemory
                )
        )
    })
}

/// The most writes the writer thread lets gather before it commits, however short the
/// linger so far.
pub(super) const MAX_BATCH: usize = 256;

impl Command {
    /// A `Command` whose bus handle does not keep the bus open (see [`Bus::weak`]).
    /// The worker holds one of these, so it stops when the host drops its own.
    #[doc(hidden)]
    pub fn weak(&self) -> Command {
        Command {
            db: self.db.clone(),
            notify: self.notify.weak(),
            own_writes: self.own_writes.clone(),
        }
    }

    /// Applies `write` and publishes its activity once it is committed.
    ///
    /// Writes are committed in groups: the write is queued, and whichever thread holds the
    /// writer connection applies everything queued in one transaction (each write in its own
    /// savepoint, so one failing write does not undo the others). A thread that finds its
    /// write already done by another returns at once. Under load this turns several commits
    /// into one; alone, it is one transaction as before.
    pub(super) fn write(&self, write: Write) -> WriteResult {
        let (done, result) = crossbeam_channel::bounded(1);
        self.db
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writes
            .push(Queued {
                write,
                done: Done::Wait(done),
            });
        let mut conn = self
            .db
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Ok(outcome) = result.try_recv() {
            return outcome;
        }
        // Give the other threads one chance to queue their writes behind ours, so that under
        // load one commit carries several outcomes (measured: 169 -> 152 us per sync with four
        // workers; a lone writer pays one sched_yield).
        std::thread::yield_now();
        let later = self.commit_queued(&mut conn);
        drop(conn);
        run_deferred(later);
        result
            .try_recv()
            .unwrap_or_else(|_| Err(anyhow!("the write was lost by the writer")))
    }

    /// Queues `write` for the writer thread ([`Command::spawn_writer`]) and returns at once;
    /// `then` learns the outcome once it committed (or failed). Whoever commits next runs it,
    /// after releasing the writer connection, so `then` may write again.
    pub(super) fn write_then(&self, write: Write, then: impl FnOnce(WriteResult) + Send + 'static) {
        let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.writes.push(Queued {
            write,
            done: Done::Then(Box::new(then)),
        });
        if queue.waiting || queue.writes.len() >= MAX_BATCH {
            self.db.queued.notify_one();
        }
    }

    /// Commits whatever is queued on this thread, and runs the callbacks of what it
    /// committed: what a caller of [`write_then`](Self::write_then) does when no writer
    /// thread runs (a foreground `zooid-sync sync`).
    pub(crate) fn flush(&self) {
        let mut conn = self
            .db
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let later = self.commit_queued(&mut conn);
        drop(conn);
        run_deferred(later);
    }

    /// Starts the writer thread, which commits queued writes in groups, so that
    /// [`write_then`](Self::write_then) never waits: once a write arrives, it lets others
    /// gather for [`StoreOptions::write_linger`], then commits them all. An outcome whose
    /// write fails for a reason that passes is kept and written again after a backoff
    /// (250 ms doubling to 30 s) until it is recorded; [`Query::write_health`] tells. Stop it
    /// with [`Writer::stop`], which commits what is still queued first.
    pub(crate) fn spawn_writer(
        &self,
        watcher: Arc<dyn crate::liveness::WriterWatch>,
    ) -> std::io::Result<Writer> {
        let watch = watcher.writer_started();
        let stop = Arc::new(AtomicBool::new(false));
        let (command, stopping) = (self.weak(), stop.clone());
        self.db.retrying.store(true, Ordering::Release);
        let thread = std::thread::Builder::new()
            .name("zooid-sync-writer".into())
            .spawn(move || loop {
                let _watch = &watch;
                let db = &command.db;
                let mut queue = db.queue.lock().unwrap_or_else(PoisonError::into_inner);
                while queue.writes.is_empty() {
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let retry_in = match (queue.retry.is_empty(), queue.retry_at) {
                        (false, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
                        _ => None,
                    };
                    if retry_in.is_some_and(|wait| wait.is_zero()) {
                        break;
                    }
                    queue.waiting = true;
                    queue = match retry_in {
                        Some(wait) => {
                            db.queued
                                .wait_timeout(queue, wait)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                        None => db
                            .queued
                            .wait(queue)
                            .unwrap_or_else(PoisonError::into_inner),
                    };
                    queue.waiting = false;
                }
                let deadline = Instant::now() + db.write_linger;
                while queue.writes.len() < MAX_BATCH && !stopping.load(Ordering::Acquire) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    queue = db
                        .queued
                        .wait_timeout(queue, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                drop(queue);
                watcher.writer_busy(true);
                command.flush();
                watcher.writer_busy(false);
            })?;
        Ok(Writer {
            command: self.weak(),
            stop,
            thread: Some(thread),
        })
    }

    /// Applies every queued write in one transaction, answers each, publishes what committed.
    /// Answers the callbacks to run once the writer connection is released. While a writer
    /// thread runs, outcomes whose write failed for a reason that passes are kept for it to
    /// write again instead of being answered.
    fn commit_queued(&self, conn: &mut Connection) -> Deferred {
        let mut later = Deferred::new();
        let retrying = self.db.retrying.load(Ordering::Acquire);
        let batch = {
            let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let due = !retrying || queue.retry_at.is_some_and(|at| at <= Instant::now());
            let mut batch = if due {
                queue.retry_at = None;
                std::mem::take(&mut queue.retry)
            } else {
                Vec::new()
            };
            batch.append(&mut queue.writes);
            batch
        };
        if batch.is_empty() {
            return later;
        }
        // Whether a write that failed with `error` is kept to be written again.
        let keep = |done: &Done, error: &anyhow::Error| {
            retrying && matches!(done, Done::Then(_)) && passes(error)
        };
        let mut kept = Vec::new();
        let run = |conn: &Connection, sql: &str| -> rusqlite::Result<()> {
            conn.prepare_cached(sql)?.execute([]).map(|_| ())
        };
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            let e = anyhow::Error::from(e);
            let text = format!("cannot start a write transaction: {e}");
            for q in batch {
                if keep(&q.done, &e) {
                    kept.push(q);
                } else {
                    let error = anyhow!("{}: {text}", q.write.describe());
                    q.done.answer(Err(error), &mut later);
                }
            }
            self.retry_later(kept, &text);
            return later;
        }
        let tracking = self.own_writes.tracking.load(Ordering::Acquire);
        let mut applied = Vec::with_capacity(batch.len());
        let mut last_error = String::new();
        for q in batch {
            let outcome = run(conn, "SAVEPOINT one_write")
                .map_err(anyhow::Error::from)
                .and_then(|()| q.write.apply(conn));
            match &outcome {
                Ok(done) => {
                    let _ = run(conn, "RELEASE one_write");
                    if let (true, Some(activity)) = (tracking, &done.activity) {
                        self.own_writes
                            .seqs
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(activity.seq);
                    }
                }
                Err(_) => {
                    let _ = run(conn, "ROLLBACK TO one_write");
                    let _ = run(conn, "RELEASE one_write");
                }
            }
            match outcome {
                Err(e) if keep(&q.done, &e) => {
                    last_error = format!("{e:#}");
                    kept.push(q);
                }
                outcome => {
                    let outcome = outcome.with_context(|| q.write.describe());
                    applied.push((q, outcome));
                }
            }
        }
        if let Err(e) = run(conn, "COMMIT") {
            let _ = run(conn, "ROLLBACK");
            let e = anyhow::Error::from(e);
            for (q, outcome) in applied {
                if let Ok(Applied {
                    activity: Some(activity),
                    ..
                }) = &outcome
                {
                    self.own_writes
                        .seqs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&activity.seq);
                }
                if outcome.is_ok() && keep(&q.done, &e) {
                    kept.push(q);
                } else {
                    let result = outcome.and_then(|_| Err(anyhow!("cannot commit: {e}")));
                    q.done.answer(result, &mut later);
                }
            }
            self.retry_later(kept, &format!("cannot commit: {e}"));
            return later;
        }
        {
            let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.is_empty() {
                queue.writes_pass();
            }
        }
        self.retry_later(kept, &last_error);
        for (q, outcome) in applied {
            if let Ok(Applied {
                activity: Some(activity),
                ..
            }) = &outcome
            {
                self.notify.send(activity.clone());
            }
            q.done.answer(outcome, &mut later);
        }
        later
    }

    /// Keeps outcomes whose write failed, for the writer thread to write again.
    fn retry_later(&self, kept: Vec<Queued>, error: &str) {
        if kept.is_empty() {
            return;
        }
        let mut queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let first = queue.health.failing.is_none();
        queue.keep_for_retry(kept, error);
        if first {
            log::error!(
                "the database refuses writes ({error}); {} sync outcomes wait and are written \
                 again, with backoff, until it accepts them (nothing is sent to zooid again \
                 meanwhile)",
                queue.retry.len()
            );
        }
    }
}

/// What a write answers.
pub(super) type WriteResult = Result<Applied>;

/// What a write did.
#[derive(Debug)]
pub(super) struct Applied {
    /// The activity it appended; none when the relay it is about no longer exists.
    pub(super) activity: Option<Activity>,
    /// Whether it changed the relay row (for a sync outcome: marked it synced).
    pub(super) changed: bool,
}

impl Applied {
    /// The activity a host-side write always appends.
    pub(super) fn activity(self) -> Result<Activity> {
        self.activity
            .ok_or_else(|| anyhow!("the write appended no activity"))
    }
}

/// A write waiting for the writer connection, and where its outcome goes.
pub(super) struct Queued {
    pub(super) write: Write,
    pub(super) done: Done,
}

/// Who learns a write's outcome.
pub(super) enum Done {
    /// A thread blocked in [`Command::write`].
    Wait(crossbeam_channel::Sender<WriteResult>),
    /// A callback ([`Command::write_then`]), run once the write committed or failed, after
    /// the writer connection is released.
    Then(Box<dyn FnOnce(WriteResult) + Send>),
}

/// Callbacks to run once the writer connection is released.
pub(super) type Deferred = Vec<(Box<dyn FnOnce(WriteResult) + Send>, WriteResult)>;

impl Done {
    /// Answers a waiting thread now, or keeps the callback for later.
    fn answer(self, result: WriteResult, later: &mut Deferred) {
        match self {
            Done::Wait(tx) => {
                let _ = tx.send(result);
            }
            Done::Then(f) => later.push((f, result)),
        }
    }
}

impl Command {
    /// Follows the activity other processes commit from now on, publishing it on this
    /// store's bus (see [`feed`](super::feed)): started once, by the first that listens (a
    /// host's [`outcomes`](Self::outcomes), a worker), and running until the bus closes. A
    /// failure to start it is logged: this process then sees its own writes only.
    #[doc(hidden)]
    pub fn follow_other_writers(&self) {
        if self.db.feed_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = super::feed::start(
            Query {
                db: self.db.clone(),
            },
            self.weak(),
            self.db.feed_interval,
        );
        if let Err(e) = started {
            self.db.feed_running.store(false, Ordering::Release);
            log::error!(
                "cannot follow other processes' writes: {e:#}; only this process's own are seen"
            );
        }
    }

    /// From now on, remember which activities this process writes, so that a feed tailing
    /// the table can skip them ([`take_own_write`](Self::take_own_write)): they were
    /// published already.
    pub(crate) fn track_own_writes(&self) {
        self.own_writes.tracking.store(true, Ordering::Release);
    }

    /// Whether this process wrote (and so already published) activity `seq`; forgets it.
    pub(crate) fn take_own_write(&self, seq: i64) -> bool {
        self.own_writes
            .seqs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq)
    }
}

/// Runs the callbacks of writes that are done. A callback that panics (a bug) is logged and
/// passed over, so that the others still run and the thread that runs them survives.
pub(super) fn run_deferred(later: Deferred) {
    for (then, result) in later {
        let run = std::panic::AssertUnwindSafe(move || then(result));
        if let Err(panic) = std::panic::catch_unwind(run) {
            log::error!(
                "handling a recorded outcome panicked (a bug in zooid-sync; please report it): {}",
                crate::liveness::panic_message(panic.as_ref())
            );
        }
    }
}

/// The running writer thread ([`Command::spawn_writer`]).
pub(crate) struct Writer {
    command: Command,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Commits what is still queued, then stops the thread.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let db = &self.command.db;
        self.stop.store(true, Ordering::Release);
        {
            let _queue = db.queue.lock().unwrap_or_else(PoisonError::into_inner);
            db.queued.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // One last try for the outcomes still waiting to be written; what fails now is
        // answered as failed, and stays pending in the database for the next start.
        if db.retrying.swap(false, Ordering::AcqRel) {
            self.command.flush();
        }
    }
}

impl Drop for Writer {
    /// A worker that fails to start after its writer did still stops the writer.
    fn drop(&mut self) {
        self.shutdown();
    }
}
