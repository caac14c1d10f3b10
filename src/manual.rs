//! `zooid-sync sync`: manual syncs of some relays, of every relay whose last sync failed
//! (`--failed`), or of every relay (`--all`).
//!
//! A manual sync never runs beside the worker's own. When a worker holds the database's lease
//! (a daemon, or a host that links the library), the syncs are handed to it through the
//! database (`sync_request`), and this waits for its answers: the worker syncs each relay like
//! any other, after whatever sync of it is in flight, paced by its pool and the rate limit.
//! When no worker holds the lease, this takes it for its duration and syncs in the foreground
//! with `SYNC_WORKERS` threads; and if the worker stops while this waits, it takes over what
//! is left. Either way a manual sync is an ordinary sync: a relay that gave up starts afresh.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::env::Env;
use crate::infra::sync::Syncer;
use crate::lease::{Holder, Lease};
use crate::store::{Store, SyncAnswer};

/// Which relays to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These relays.
    Ids(Vec<String>),
    /// Every unsynced relay whose last attempt failed: waiting on its backoff or given up.
    Failed,
    /// Every relay: a full re-push (after zooid is restored from a backup, say).
    All,
}

/// How the manual syncs went, one answer per relay, in the order asked.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub answers: Vec<SyncAnswer>,
}

impl Report {
    /// The relays that did not sync.
    pub fn failures(&self) -> impl Iterator<Item = &SyncAnswer> {
        self.answers.iter().filter(|a| a.outcome != "synced")
    }

    /// The exit status: 0 all synced; 2 when a relay named on the command line is unknown or
    /// cannot be sent as it is (bad configuration); 1 when any other failed.
    pub fn exit_code(&self, selection: &Selection) -> u8 {
        let bad_config = |a: &&SyncAnswer| a.outcome == "invalid" || a.outcome == "unknown";
        match self.failures().next() {
            None => 0,
            Some(_)
                if matches!(selection, Selection::Ids(_))
                    && self.failures().any(|a| bad_config(&a)) =>
            {
                2
            }
            Some(_) => 1,
        }
    }
}

/// How often the answers are looked for while a worker syncs.
const POLL: Duration = Duration::from_millis(50);

/// How long `sync` waits for the lease holder's next answer by default before it says the
/// holder does not answer. A relay's sync takes at most two requests of `ZOOID_TIMEOUT`
/// once the worker takes it; two minutes leaves room for a queue of other work before it.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the manual syncs of `selection` on `store`; shows a progress line on standard error
/// when it is a terminal. Through a worker, it waits at most `timeout` for each next answer:
/// the relays still unanswered then fail with an error naming the worker that did not
/// answer and what to do.
pub fn run(env: &Env, store: &Store, selection: &Selection, timeout: Duration) -> Result<Report> {
    // Deletions zooid has not confirmed are part of the fleet's state too: `--all` repairs
    // them, `--failed` takes those whose last attempt failed.
    let deletions = |only_failed: bool| -> Result<Vec<String>> {
        Ok(store
            .query
            .list_pending_deletions()?
            .into_iter()
            .filter(|d| !only_failed || !d.sync_error.is_empty())
            .map(|d| d.id)
            .collect())
    };
    let ids = match selection {
        Selection::Ids(ids) => ids.clone(),
        Selection::Failed => [store.query.relay_ids(true)?, deletions(true)?].concat(),
        Selection::All => [store.query.relay_ids(false)?, deletions(false)?].concat(),
    };
    if ids.is_empty() {
        return Ok(Report::default());
    }
    let mut progress = Progress::new(ids.len());
    match Lease::try_acquire(store.query.path())? {
        Ok(lease) => {
            let answers = in_foreground(env, store, &ids, &mut progress)?;
            drop(lease);
            progress.end();
            Ok(Report { answers })
        }
        Err(holder) => {
            log::info!(
                "handing {} to the worker of {holder}",
                crate::words::plural(ids.len() as u64, "manual sync", "manual syncs")
            );
            let answers = through_worker(env, store, &ids, &holder, timeout, &mut progress)?;
            progress.end();
            Ok(Report { answers })
        }
    }
}

/// Hands the syncs to the worker holding the lease and waits for its answers; takes over
/// what is left if the worker stops first.
fn through_worker(
    env: &Env,
    store: &Store,
    ids: &[String],
    holder: &Holder,
    timeout: Duration,
    progress: &mut Progress,
) -> Result<Vec<SyncAnswer>> {
    let requests = store.command.request_syncs(ids)?;
    let (first, last) = (requests[0], requests[requests.len() - 1]);
    if last - first + 1 != requests.len() as i64 {
        bail!("the manual sync requests were not numbered in one run");
    }
    let mut last_progress = (0, Instant::now());
    loop {
        let (answered, synced) = store.query.count_sync_answers(first, last)?;
        progress.show(answered as usize, synced as usize);
        if answered as usize == requests.len() {
            let answers = store.query.sync_answers(first, last)?;
            store.command.forget_sync_requests(first, last)?;
            return Ok(answers);
        }
        if answered > last_progress.0 {
            last_progress = (answered, Instant::now());
        } else if last_progress.1.elapsed() >= timeout {
            return unanswered(store, first, last, &requests, ids, holder, timeout);
        }
        if let Ok(lease) = Lease::try_acquire(store.query.path())? {
            // The worker stopped: what it did not answer, this does.
            let answered: HashSet<i64> = store
                .query
                .sync_answers(first, last)?
                .iter()
                .map(|a| a.request)
                .collect();
            let left: Vec<(i64, String)> = requests
                .iter()
                .copied()
                .zip(ids.iter().cloned())
                .filter(|(request, _)| !answered.contains(request))
                .collect();
            log::info!(
                "the worker stopped; syncing the {} left here",
                crate::words::plural(left.len() as u64, "relay", "relays")
            );
            let left_ids: Vec<String> = left.iter().map(|(_, id)| id.clone()).collect();
            let answers = in_foreground(env, store, &left_ids, progress)?;
            for ((request, _), answer) in left.iter().zip(&answers) {
                store
                    .command
                    .answer_sync_request(*request, &answer.outcome, &answer.detail)?;
            }
            drop(lease);
            let answers = store.query.sync_answers(first, last)?;
            store.command.forget_sync_requests(first, last)?;
            return Ok(answers);
        }
        std::thread::sleep(POLL);
    }
}

/// The answers so far, and a failure for each relay the worker did not answer within
/// `timeout`; the requests are forgotten (a worker that comes back syncs nothing for them).
fn unanswered(
    store: &Store,
    first: i64,
    last: i64,
    requests: &[i64],
    ids: &[String],
    holder: &Holder,
    timeout: Duration,
) -> Result<Vec<SyncAnswer>> {
    let answered = store.query.sync_answers(first, last)?;
    store.command.forget_sync_requests(first, last)?;
    let detail = format!(
        "no answer from the worker of {holder} within {}: it may be hung or busy with a \
         long backlog. Check its /healthz or `systemctl status zooid-sync` (under systemd's \
         watchdog a hung daemon is restarted); wait longer with --timeout, or stop it and run \
         this again to sync here",
        crate::words::show_duration(timeout)
    );
    log::warn!("{detail}");
    let mut answers: Vec<SyncAnswer> = answered;
    for (request, relay) in requests.iter().zip(ids) {
        if !answers.iter().any(|a| a.request == *request) {
            answers.push(SyncAnswer {
                request: *request,
                relay: relay.clone(),
                outcome: "failed".into(),
                detail: detail.clone(),
            });
        }
    }
    answers.sort_by_key(|a| a.request);
    Ok(answers)
}

/// Syncs `ids` here, with `SYNC_WORKERS` threads, while this process holds the lease.
fn in_foreground(
    env: &Env,
    store: &Store,
    ids: &[String],
    progress: &mut Progress,
) -> Result<Vec<SyncAnswer>> {
    let syncer = Syncer::new(store.query.clone(), store.command.clone(), env)?;
    let (jobs, queue) = crossbeam_channel::unbounded::<(usize, String)>();
    for job in ids.iter().cloned().enumerate() {
        let _ = jobs.send(job);
    }
    drop(jobs);
    let (done, answers) = crossbeam_channel::unbounded::<(usize, SyncAnswer)>();
    std::thread::scope(|scope| {
        for _ in 0..env.sync_workers.clamp(1, ids.len()) {
            let (queue, done, syncer) = (queue.clone(), done.clone(), &syncer);
            scope.spawn(move || {
                for (n, relay) in queue {
                    let (outcome, detail) = syncer.sync_relay_by_id(&relay).answer();
                    let answer = SyncAnswer {
                        request: 0,
                        relay,
                        outcome: outcome.to_string(),
                        detail,
                    };
                    let _ = done.send((n, answer));
                }
            });
        }
        drop(done);
        let mut collected: Vec<Option<SyncAnswer>> = vec![None; ids.len()];
        let (mut count, mut synced) = (0, 0);
        for (n, answer) in answers {
            count += 1;
            synced += usize::from(answer.outcome == "synced");
            progress.show(count, synced);
            collected[n] = Some(answer);
        }
        Ok::<_, anyhow::Error>(collected.into_iter().flatten().collect())
    })
    .and_then(|answers: Vec<SyncAnswer>| {
        // This process holds the lease, so no other process's prober watches zooid: when
        // zooid answered and this run found no outage, one recorded earlier is over.
        if syncer.breaker().outage().is_none() && answers.iter().any(|a| a.outcome == "synced") {
            store.command.clear_zooid_outage(syncer.zooid())?;
        }
        Ok(answers)
    })
}

/// The progress line, `done/total  synced N  failed M`, on standard error when it is a
/// terminal; nothing otherwise.
struct Progress {
    total: usize,
    on_terminal: bool,
    shown: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            on_terminal: std::io::stderr().is_terminal() && total > 1,
            shown: false,
        }
    }

    fn show(&mut self, done: usize, synced: usize) {
        if !self.on_terminal {
            return;
        }
        let failed = done - synced;
        eprint!("\r{done}/{}  synced {synced}  failed {failed}", self.total);
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    fn end(&mut self) {
        if self.shown {
            eprintln!();
        }
    }
}
