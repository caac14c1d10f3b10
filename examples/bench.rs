//! The benchmark: what zooid-sync costs, measured against the fixture zooid on loopback.
//!
//! `cargo run --release --example bench` prints every figure of `BENCHMARKS.md`:
//!
//! 1. throughput of the real worker syncing N pending relays at startup, against bare ureq
//!    threads sending the same pre-signed requests with the same concurrency (the HTTP limit);
//! 2. CPU per sync of the worker's own threads, and where it goes;
//! 3. latency from an activity row written by another process to the request at zooid;
//! 4. idle RSS and idle CPU of `zooid-sync run` with 10 000 synced relays, binary size;
//! 5. the timer wheel at 1k, 10k and 100k entries;
//! 6. startup: process start to first request with 10 000 pending relays, and the idle RSS
//!    the daemon keeps after syncing them all;
//! 7. latency-bound throughput: zooid answering after 1 ms and 5 ms (a zooid some distance
//!    away), the worker against bare ureq threads at the same concurrency;
//! 8. a large fleet: 1k, 10k, 100k relays with ten activity rows each: `status`, startup, idle
//!    RSS, feed latency.
//!
//! Options: `--relays 1000,10000` (throughput sizes), `--skip-process` (skip 3, 4 and 6, which
//! need the release binary: build it first with `cargo build --release`), `--only-latency`
//! (section 7 alone), `--only-scale` (section 8 alone), `--only-prune` (section 9 alone),
//! `--only-catch-up` (section 10 alone), `--only-startup` (section 6 alone), `--only-idle` (section 4 alone),
//! `--only-host-idle` (section 12 alone), `--only-throughput` (sections 1 and 2 alone).
//! `BENCH_SMAPS=<program>` runs the program with the daemon's pid once section 6's burst is
//! over, to look at where its memory is (`/proc/<pid>/smaps`); `BENCH_THREADS=1` prints the
//! CPU per sync of each kind of worker thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use zooid_sync::bench_support::TimerWheel;
use zooid_sync::fixture::{Fault, FixtureZooid};
use zooid_sync::nip98::make_auth;
use zooid_sync::relay_body;
use zooid_sync::Secret;
use zooid_sync::StoreOptions;
use zooid_sync::{Env, Infra, RobotKey, Store};

/// Counts the bytes the process holds, for bytes per timer entry.
struct Counting;
static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const OWNER: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--relays")
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("--relays takes numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![1000, 10_000]);
    let skip_process = args.iter().any(|a| a == "--skip-process");
    let only_latency = args.iter().any(|a| a == "--only-latency");
    if args.iter().any(|a| a == "--only-idle") {
        println!("## 4. footprint of `zooid-sync run` with 10 000 synced relays");
        return footprint(&release_binary()?, 10_000);
    }
    if args.iter().any(|a| a == "--only-host-idle") {
        println!("## 12. a host process's idle CPU, 10 000 synced relays");
        return host_idle(10_000);
    }
    if args.iter().any(|a| a == "--only-startup") {
        println!("## 6. startup with 10 000 pending relays");
        return startup(&release_binary()?, 10_000);
    }
    if args.iter().any(|a| a == "--only-catch-up") {
        println!("## 10. catch-ups against a costly zooid and a fast one");
        return catch_ups();
    }
    if args.iter().any(|a| a == "--only-zooids") {
        println!("## 13. three zooids at once");
        return many_zooids();
    }
    if args.iter().any(|a| a == "--only-audit") {
        println!("## 11. the existence audit's load on zooid");
        for n in [1_000, 100_000] {
            audit_load(n)?;
        }
        return Ok(());
    }
    if args.iter().any(|a| a == "--only-prune") {
        println!("## 9. prune: a year of a 10 000-relay fleet");
        return prune_a_year(&release_binary()?, 10_000);
    }
    if args.iter().any(|a| a == "--only-scale") {
        let binary = release_binary()?;
        println!("## 8. a large fleet");
        for n in [1_000, 10_000, 100_000] {
            scale(&binary, n)?;
        }
        return Ok(());
    }
    let workers = 4;

    println!("# zooid-sync benchmark");
    println!(
        "machine: {} cores, {}",
        cores(),
        first_line("/proc/cpuinfo", "model name")
    );
    println!();

    if only_latency {
        return latency_bound(workers);
    }
    let only_throughput = args.iter().any(|a| a == "--only-throughput");
    println!("## 1-2. throughput and CPU per sync ({workers} workers)");
    for &n in &sizes {
        let (raw, raw_cpu, raw_zooid) = raw_limit(n, workers, None, StandIn::Fixture)?;
        let (worker, cpu, worker_zooid) = worker_run(n, workers, None, StandIn::Fixture)?;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "N={n:>6}: worker {:>7.0} syncs/s, raw ureq {:>7.0} req/s, ratio {:.2}",
            worker,
            raw,
            worker / raw
        );
        println!(
            "          CPU per request: worker threads {:.0} us vs raw senders {:.0} us; fixture zooid {:.0} us (worker run) / {:.0} us (raw run)",
            us(cpu),
            us(raw_cpu),
            us(worker_zooid),
            us(raw_zooid)
        );
    }
    cost_breakdown(2000)?;
    if only_throughput {
        return Ok(());
    }

    println!("\n## 5. timer wheel");
    for n in [1_000usize, 10_000, 100_000] {
        timer_wheel(n);
    }

    if !skip_process {
        let binary = release_binary()?;
        println!("\n## 3. feed latency (row written by another process -> request at zooid)");
        feed_latency(&binary, 200)?;
        println!("\n## 4. footprint of `zooid-sync run` with 10 000 synced relays");
        footprint(&binary, 10_000)?;
        println!("\n## 6. startup with 10 000 pending relays");
        startup(&binary, 10_000)?;
    }
    if !skip_process {
        let binary = release_binary()?;
        println!("\n## 8. a large fleet");
        for n in [1_000, 10_000, 100_000] {
            scale(&binary, n)?;
        }
    }
    println!();
    latency_bound(workers)
}

/// Section 7: zooid some distance away. Each request waits `delay` at the stand-in, so
/// `workers` senders can do at most `workers / delay` a second; how close each side comes is
/// what the worker's own time per sync costs. Against the fixture (which checks signatures
/// on the same cores) and against a delay server (which checks nothing).
fn latency_bound(workers: usize) -> anyhow::Result<()> {
    println!("## 7. latency-bound throughput ({workers} workers vs {workers} bare ureq threads)");
    for (delay, n, stand_in) in [
        (Duration::from_millis(1), 3000, StandIn::Fixture),
        (Duration::from_millis(5), 1000, StandIn::Fixture),
        (Duration::from_millis(1), 3000, StandIn::DelayServer),
        (Duration::from_millis(5), 1000, StandIn::DelayServer),
    ] {
        // Five rounds, alternating: the median ratio, and every round to show the spread.
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let (raw, raw_cpu, _) = raw_limit(n, workers, Some(delay), stand_in)?;
            let (worker, cpu, _) = worker_run(n, workers, Some(delay), stand_in)?;
            rounds.push((worker / raw, worker, raw, cpu, raw_cpu));
        }
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, worker, raw, cpu, raw_cpu) = rounds[rounds.len() / 2];
        let limit = workers as f64 / delay.as_secs_f64();
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "{:<12} {:>2} ms away: worker/bare {ratio:.2} (rounds {}); median round: worker \
             {worker:.0} syncs/s, bare {raw:.0} req/s (limit {limit:.0}/s); CPU per sync \
             {:.0} us, per bare request {:.0} us",
            match stand_in {
                StandIn::Fixture => "fixture",
                StandIn::DelayServer => "delay server",
            },
            delay.as_millis(),
            rounds
                .iter()
                .map(|r| format!("{:.2}", r.0))
                .collect::<Vec<_>>()
                .join(", "),
            us(cpu),
            us(raw_cpu)
        );
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn first_line(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string()
}

struct Setup {
    _dir: tempfile::TempDir,
    db: PathBuf,
    env: Env,
    zooid: FixtureZooid,
}

/// What stands in for zooid in sections 1, 2 and 7.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StandIn {
    /// The fixture zooid: it checks every request's NIP-98 signature, as zooid does, on the
    /// benchmark's cores.
    Fixture,
    /// A bare HTTP server that answers every request `201` after the delay, checking
    /// nothing: what the client costs, with as little of the server's cost beside it as can be.
    DelayServer,
}

impl Setup {
    /// Makes `stand_in` answer after `delay`: the fixture (with a delay fault), or a delay
    /// server started here, which `env` then points at.
    fn stand_in(
        &mut self,
        delay: Option<Duration>,
        stand_in: StandIn,
    ) -> anyhow::Result<Option<DelayServer>> {
        match stand_in {
            StandIn::Fixture => {
                if let Some(d) = delay {
                    self.zooid.inject("*", Fault::Delay(d));
                }
                Ok(None)
            }
            StandIn::DelayServer => {
                let server = DelayServer::start(delay.unwrap_or_default())?;
                self.env.zooid_api_url = format!("http://{}", server.addr);
                Ok(Some(server))
            }
        }
    }
}

/// A bare HTTP/1.1 server on loopback, a thread per connection, that reads each request and
/// answers `201 {"message": "relay created successfully"}` after `delay`, keeping the
/// connection: zooid at a distance, costing nothing.
struct DelayServer {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<(
        std::sync::Mutex<Option<Instant>>,
        std::sync::atomic::AtomicUsize,
    )>,
}

impl DelayServer {
    fn start(delay: Duration) -> anyhow::Result<DelayServer> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(None::<Instant>),
            std::sync::atomic::AtomicUsize::new(0),
        ));
        let shared = state.clone();
        std::thread::Builder::new()
            .name("delay-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = shared.clone();
                    let _ =
                        std::thread::Builder::new()
                            .name("delay-conn".into())
                            .spawn(move || {
                                let _ = stream.set_nodelay(true);
                                let mut writer = match stream.try_clone() {
                                    Ok(w) => w,
                                    Err(_) => return,
                                };
                                let mut reader = BufReader::new(stream);
                                let body = br#"{"message":"relay created successfully"}"#;
                                loop {
                                    let mut length = 0usize;
                                    let mut line = String::new();
                                    let mut first = true;
                                    loop {
                                        line.clear();
                                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                            return;
                                        }
                                        if first {
                                            state
                                                .0
                                                .lock()
                                                .unwrap()
                                                .get_or_insert_with(Instant::now);
                                            first = false;
                                        }
                                        if line == "\r\n" {
                                            break;
                                        }
                                        let lower = line.to_ascii_lowercase();
                                        if let Some(v) = lower.strip_prefix("content-length:") {
                                            length = v.trim().parse().unwrap_or(0);
                                        }
                                    }
                                    let mut request_body = vec![0u8; length];
                                    if reader.read_exact(&mut request_body).is_err() {
                                        return;
                                    }
                                    std::thread::sleep(delay);
                                    let head = format!(
                                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                                     content-length: {}\r\n\r\n",
                                    body.len()
                                );
                                    if writer.write_all(head.as_bytes()).is_err()
                                        || writer.write_all(body).is_err()
                                    {
                                        return;
                                    }
                                    state.1.fetch_add(1, Ordering::Relaxed);
                                }
                            });
                }
            })?;
        Ok(DelayServer { addr, state })
    }

    /// When the first request arrived.
    fn first(&self) -> Option<Instant> {
        *self.state.0.lock().unwrap()
    }

    /// How many requests it answered.
    fn answered(&self) -> usize {
        self.state.1.load(Ordering::Relaxed)
    }
}

/// A fixture zooid and a database of `n` relays (`synced` as given).
fn setup(n: usize, synced: bool, workers: usize) -> anyhow::Result<Setup> {
    let robot = RobotKey::parse(Secret::generate(32).expose())?;
    let zooid = FixtureZooid::start(&[robot.public_key().to_hex()])?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    drop(Store::open(&db)?);
    let mut conn = Connection::open(&db)?;
    let tx = conn.transaction()?;
    {
        let mut relay = tx.prepare(
            "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, info_name, groups_enabled,
                                management_enabled, synced, created_at, updated_at)
             VALUES (?1, ?2, ?1, ?1, ?1, 1, 1, ?3, 0, 0)",
        )?;
        let mut activity = tx.prepare(
            "INSERT INTO activity (id, created_at, activity_type, resource_type, resource_id)
             VALUES (?1, 0, ?2, 'relay', ?3)",
        )?;
        for i in 0..n {
            let id = format!("r{i:06}");
            relay.execute(params![id, OWNER, synced as i64])?;
            activity.execute(params![format!("c-{id}"), "create_relay", id])?;
            if synced {
                activity.execute(params![format!("s-{id}"), "complete_relay_sync", id])?;
            }
        }
    }
    tx.commit()?;
    let mut env = Env::new(&zooid.url(), "relays.example.com", robot)?;
    env.sync_workers = workers;
    // The worker's own cost and throughput, without SYNC_MAX_RATE's ceiling (100/s by
    // default), which would measure the ceiling instead.
    env.sync_max_rate = 0.0;
    // And without pacing (SYNC_ZOOID_SHARE), which section 10 measures on its own.
    env.sync_zooid_share = 0.0;
    Ok(Setup {
        _dir: dir,
        db,
        env,
        zooid,
    })
}

/// The HTTP limit: bare ureq threads sending the worker's requests, pre-signed and pre-built.
/// Answers requests/s and the CPU time of the sending threads.
fn raw_limit(
    n: usize,
    workers: usize,
    delay: Option<Duration>,
    stand_in: StandIn,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let mut s = setup(n, false, workers)?;
    let _server = s.stand_in(delay, stand_in)?;
    let store = Store::open(&s.db)?;
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        let relay = store.query.get_relay(&format!("r{i:06}"))?.unwrap();
        let secret = Secret::generate(32);
        let body = serde_json::to_vec(&relay_body(&relay, &s.env, Some(&secret))?)?;
        let url = format!("{}/relay/{}", s.env.zooid_api_url, relay.id);
        let auth = make_auth(&s.env.robot, "POST", &url, Some(&body))?;
        requests.push((url, auth, body));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let chunks: Vec<Vec<_>> = {
        let mut chunks: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, r) in requests.into_iter().enumerate() {
            chunks[i % workers].push(r);
        }
        chunks
    };
    let started = Instant::now();
    let cpu = std::sync::Mutex::new(Duration::ZERO);
    let (waits, preempted) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    std::thread::scope(|scope| {
        for chunk in &chunks {
            let (agent, cpu, waits, preempted) = (agent.clone(), &cpu, &waits, &preempted);
            scope.spawn(move || {
                for (url, auth, body) in chunk {
                    let mut r = agent
                        .post(url)
                        .header("authorization", auth)
                        .header("content-type", "application/json")
                        .send(&body[..])
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    let _ = r.body_mut().read_to_vec();
                }
                *cpu.lock().unwrap() += this_thread_cpu();
                let status =
                    std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
                for (key, total) in [
                    ("voluntary_ctxt_switches:", &waits),
                    ("nonvoluntary_ctxt_switches:", &preempted),
                ] {
                    let n: usize = status
                        .lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    total.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    if std::env::var_os("BENCH_THREADS").is_some() {
        println!(
            "  bare senders: {:.2} waits and {:.2} preemptions a request",
            waits.load(Ordering::Relaxed) as f64 / n as f64,
            preempted.load(Ordering::Relaxed) as f64 / n as f64
        );
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let zooid = thread_cpu("fixture-");
    Ok((rate, cpu.into_inner().unwrap(), zooid))
}

/// CPU time so far of the calling thread.
fn this_thread_cpu() -> Duration {
    schedstat(Path::new("/proc/thread-self"))
}

/// The CPU time a task (a thread, under `/proc`) has used, to the nanosecond: the first field
/// of its `schedstat`. (`/proc/<pid>/stat` counts 10 ms clock ticks, too coarse for an idle
/// daemon.)
fn schedstat(task: &Path) -> Duration {
    let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
    Duration::from_nanos(
        stat.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// CPU time so far of the threads of `process` (`/proc/self` or `/proc/<pid>`) whose name
/// starts with `prefix` (every thread for `""`).
fn threads_cpu(process: &str, prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("{process}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .map(|task| schedstat(&task.path()))
        .sum()
}

/// How many times the threads of this process whose name starts with `prefix` went off their
/// core so far, of their own accord (to wait) and not (preempted): `schedstat`'s third field
/// counts both; `status` tells the voluntary ones.
fn threads_switches(prefix: &str) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let field = |status: &str, key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            (
                field(&status, "voluntary_ctxt_switches:"),
                field(&status, "nonvoluntary_ctxt_switches:"),
            )
        })
        .fold((0, 0), |(v, n), (a, b)| (v + a, n + b))
}

/// The real worker syncing `n` pending relays at startup. Answers syncs/s and the CPU time
/// of the worker's own threads.
fn worker_run(
    n: usize,
    workers: usize,
    delay: Option<Duration>,
    stand_in: StandIn,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let mut s = setup(n, false, workers)?;
    let server = s.stand_in(delay, stand_in)?;
    let store = Store::open_with(
        &s.db,
        StoreOptions {
            bus_capacity: n + 16,
            ..StoreOptions::default()
        },
    )?;
    let completions = store.command.notify.subscribe();
    let started = Instant::now();
    let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
    await_syncs(&completions, n)?;
    // From the first request, as the bare client is timed: what the worker costs at startup
    // (opening, the reconcile) is section 6's figure, not a throughput.
    let first = match &server {
        Some(server) => server.first().expect("a request"),
        None => s.zooid.requests()[0].started,
    };
    let rate = n as f64 / first.elapsed().as_secs_f64();
    let startup = first.saturating_duration_since(started);
    if std::env::var_os("BENCH_THREADS").is_some() {
        println!(
            "  startup to the first request: {:.1} ms",
            startup.as_secs_f64() * 1e3
        );
    }
    let cpu = thread_cpu("zooid-sync-");
    let zooid = thread_cpu("fixture-");
    if std::env::var_os("BENCH_THREADS").is_some() {
        for t in [
            "zooid-sync-work",
            "zooid-sync-prep",
            "zooid-sync-writ",
            "zooid-sync-disp",
            "zooid-sync-time",
        ] {
            let (waits, preempted) = threads_switches(t);
            println!(
                "  {t}: {:.0} us/sync, {:.2} waits and {:.2} preemptions a sync",
                thread_cpu(t).as_secs_f64() * 1e6 / n as f64,
                waits as f64 / n as f64,
                preempted as f64 / n as f64
            );
        }
    }
    worker.shutdown()?;
    match &server {
        Some(server) => assert_eq!(server.answered(), n),
        None => assert_eq!(s.zooid.relay_ids().len(), n),
    }
    Ok((rate, cpu, zooid))
}

/// The idle CPU of a host process over 10 s, after a settling second: with an open `Store`
/// that waits on `outcomes()` (the feed follows the daemon's writes) and no worker, then with
/// an embedded worker beside it (its existence audit off, as the daemon's idle figure is
/// measured with and without it). Counts this process's `zooid-sync-*` threads.
fn host_idle(n: usize) -> anyhow::Result<()> {
    let s = setup(n, true, 4)?;
    let store = Store::open(&s.db)?;
    let outcomes = store.command.outcomes();
    let measure = |what: &str| {
        std::thread::sleep(Duration::from_secs(2));
        let before = thread_cpu("zooid-sync");
        std::thread::sleep(Duration::from_secs(10));
        let used = thread_cpu("zooid-sync") - before;
        println!(
            "{what}: {:.2} ms of CPU over 10 s",
            used.as_secs_f64() * 1e3
        );
    };
    measure("a Store and outcomes(), no worker");
    let mut env = s.env.clone();
    env.sync_audit_interval = Duration::ZERO;
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env).spawn()?;
    measure("with an embedded worker");
    worker.shutdown()?;
    drop(outcomes);
    Ok(())
}

/// CPU time so far of this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> Duration {
    threads_cpu("/proc/self", prefix)
}

/// Where the CPU of one sync goes, timed piece by piece on one thread.
fn cost_breakdown(n: usize) -> anyhow::Result<()> {
    let s = setup(n, false, 1)?;
    let store = Store::open(&s.db)?;
    let ids: Vec<String> = (0..n).map(|i| format!("r{i:06}")).collect();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;

    let t = Instant::now();
    let mut relays = Vec::with_capacity(n);
    for id in &ids {
        // One read, as the preparer makes: the relay and whether it ever completed a sync.
        relays.push(store.query.get_relay_for_sync(id)?.unwrap().relay);
    }
    let read = t.elapsed();

    let t = Instant::now();
    let mut bodies = Vec::with_capacity(n);
    for r in &relays {
        let secret = Secret::generate(32);
        bodies.push(serde_json::to_vec(&relay_body(r, &s.env, Some(&secret))?)?);
    }
    let json = t.elapsed();

    let t = Instant::now();
    for (r, body) in relays.iter().zip(&bodies) {
        let url = format!("{}/relay/{}", s.env.zooid_api_url, r.id);
        make_auth(&s.env.robot, "POST", &url, Some(body))?;
    }
    let sign = t.elapsed();

    let t = Instant::now();
    for r in &relays {
        store.command.complete_relay_sync(&r.id, r.revision)?;
    }
    let record = t.elapsed();
    println!(
        "per sync, one thread: read relay {:.0} us, body+JSON {:.0} us, NIP-98 sign {:.0} us, record outcome {:.0} us (HTTP is the rest)",
        per(read),
        per(json),
        per(sign),
        per(record)
    );
    Ok(())
}

fn timer_wheel(n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("r{i:06}")).collect();
    let mut wheel = TimerWheel::new();
    let before = HELD.load(Ordering::Relaxed);
    let t = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        wheel.insert(id, 1 + (i as u64 * 7919) % 900_000);
    }
    let insert = t.elapsed();
    let bytes = (HELD.load(Ordering::Relaxed) - before) as f64 / n as f64;
    let t = Instant::now();
    for id in ids.iter().step_by(2) {
        wheel.cancel(id);
    }
    let cancel = t.elapsed();
    let t = Instant::now();
    let mut due = Vec::with_capacity(n);
    while let Some(next) = wheel.next_deadline() {
        wheel.advance(next, &mut due);
    }
    let expire = t.elapsed();
    assert_eq!(due.len(), n - n.div_ceil(2));
    let ns = |d: Duration, k: usize| d.as_nanos() as f64 / k as f64;
    println!(
        "n={n:>6}: insert {:>4.0} ns, cancel {:>4.0} ns, expiry {:>4.0} ns per entry; {:.0} bytes per entry",
        ns(insert, n),
        ns(cancel, n.div_ceil(2)),
        ns(expire, due.len()),
        bytes
    );
}

fn release_binary() -> anyhow::Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/zooid-sync");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo build --release` first (or pass --skip-process)",
        path.display()
    );
    Ok(path)
}

fn daemon(binary: &Path, s: &Setup, extra: &[(&str, &str)]) -> anyhow::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("run")
        .env_clear()
        .env("ZOOID_API_URL", &s.env.zooid_api_url)
        .env("RELAY_DOMAIN", "relays.example.com")
        .env("ROBOT_SECRET", s.env.robot.to_secret().expose())
        .env("DATABASE_PATH", &s.db)
        .env("RUST_LOG", "warn")
        // The worker as it is, not the ceiling (SYNC_MAX_RATE is 100/s by default).
        .env("SYNC_MAX_RATE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

fn stop(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn feed_latency(binary: &Path, samples: usize) -> anyhow::Result<()> {
    let s = setup(1, true, 4)?;
    let child = daemon(binary, &s, &[])?;
    let host = Connection::open(&s.db)?;
    host.busy_timeout(Duration::from_secs(5))?;
    // Wait for the daemon: its startup reconcile has nothing to do, so probe with one change.
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..=samples {
        // Changes arrive at random moments, not in step with the feed's interval.
        std::thread::sleep(Duration::from_micros(jitter_us()));
        let before = s.zooid.requests().len();
        let written = Instant::now();
        host.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             UPDATE relay SET info_name = 'n{i}', synced = 0, revision = revision + 1 WHERE id = 'r000000';
             INSERT INTO activity (id, created_at, activity_type, resource_type, resource_id)
             VALUES ('u{i}', 0, 'update_relay', 'relay', 'r000000');
             COMMIT;"
        ))?;
        let wait = if i == 0 { 10 } else { 5 };
        wait_for("the request", Duration::from_secs(wait), || {
            s.zooid.requests().len() > before
        })?;
        let arrived = s.zooid.requests()[before].started;
        if i > 0 {
            latencies.push(arrived.saturating_duration_since(written));
        }
        // Let the completion land before the next change.
        wait_for("the completion", Duration::from_secs(5), || {
            host.query_row("SELECT synced FROM relay", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
                == 1
        })?;
    }
    stop(child);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{samples} changes, feed interval 20 ms: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    Ok(())
}

/// A random pause of up to 25 ms.
fn jitter_us() -> u64 {
    u64::from_str_radix(&Secret::generate(2).expose()[..4], 16).unwrap_or(0) * 25_000 / 65_536
}

fn proc_status(pid: u32, key: &str) -> String {
    first_line(&format!("/proc/{pid}/status"), key)
}

/// CPU time so far of each thread of process `pid`, by thread name and id.
fn per_thread_cpu(pid: u32) -> Vec<(String, Duration)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(String, Duration)> = tasks
        .flatten()
        .map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let name = format!("{} ({})", comm.trim(), task.file_name().to_string_lossy());
            (name, schedstat(&task.path()))
        })
        .collect();
    threads.sort();
    threads
}

/// CPU time so far of process `pid`, every thread.
fn proc_cpu(pid: u32) -> Duration {
    threads_cpu(&format!("/proc/{pid}"), "")
}

fn footprint(binary: &Path, n: usize) -> anyhow::Result<()> {
    let s = setup(n, true, 4)?;
    // zooid has them, as the audit expects of synced relays (it would create them again).
    hold_relays(&s.zooid, n);
    let child = daemon(binary, &s, &[])?;
    std::thread::sleep(Duration::from_secs(2)); // startup reconcile over 10 000 synced relays
                                                // A second daemon on the same database stands by while the first holds the lease.
    let standby = daemon(binary, &s, &[])?;
    std::thread::sleep(Duration::from_secs(1));
    let (pid, standby_pid) = (child.id(), standby.id());
    let rss = proc_status(pid, "VmRSS");
    let standby_rss = proc_status(standby_pid, "VmRSS");
    let (cpu_before, standby_before) = (proc_cpu(pid), proc_cpu(standby_pid));
    let threads_before = per_thread_cpu(pid);
    std::thread::sleep(Duration::from_secs(10));
    let cpu_idle = proc_cpu(pid) - cpu_before;
    let standby_idle = proc_cpu(standby_pid) - standby_before;
    if std::env::var_os("BENCH_THREADS").is_some() {
        for (name, after) in per_thread_cpu(pid) {
            let before = threads_before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Duration::ZERO, |(_, d)| *d);
            println!("  {name}: {:.2} ms", (after - before).as_secs_f64() * 1e3);
        }
    }
    let hwm = proc_status(pid, "VmHWM");
    stop(standby);
    stop(child);
    println!(
        "idle RSS {rss} (peak {hwm}); CPU over 10 s idle: {:.1} ms; binary {} KiB stripped",
        cpu_idle.as_secs_f64() * 1e3,
        std::fs::metadata(binary)?.len() / 1024
    );
    println!(
        "standby beside it: RSS {standby_rss}; CPU over 10 s: {:.1} ms",
        standby_idle.as_secs_f64() * 1e3
    );
    Ok(())
}

fn startup(binary: &Path, n: usize) -> anyhow::Result<()> {
    let s = setup(n, false, 4)?;
    let spawned = Instant::now();
    let child = daemon(binary, &s, &[])?;
    wait_for("the first request", Duration::from_secs(30), || {
        !s.zooid.requests().is_empty()
    })?;
    let first = s.zooid.requests()[0]
        .started
        .saturating_duration_since(spawned);
    wait_for("all synced", Duration::from_secs(120), || {
        s.zooid.relay_ids().len() == n
    })?;
    let all = spawned.elapsed();
    // The burst is over: what the idle daemon keeps.
    std::thread::sleep(Duration::from_secs(3));
    let rss = proc_status(child.id(), "VmRSS");
    if let Some(script) = std::env::var_os("BENCH_SMAPS") {
        let _ = std::process::Command::new(script)
            .arg(child.id().to_string())
            .status();
    }
    stop(child);
    println!(
        "process start -> first request {:.1} ms; all {n} synced after {:.2} s; idle RSS after \
         the burst {rss}",
        first.as_secs_f64() * 1e3,
        all.as_secs_f64()
    );
    Ok(())
}

/// Section 8: a large fleet. `n` relays, ten activity rows each (1 000 000 at 100 000 relays),
/// 100 of them pending: `zooid-sync status`, start to first request, the idle daemon's RSS,
/// and the feed's latency (its cost per look must not grow with the table).
fn scale(binary: &Path, n: usize) -> anyhow::Result<()> {
    let s = setup(0, true, 4)?;
    {
        let conn = Connection::open(&s.db)?;
        conn.execute_batch(&format!(
            "BEGIN;
             WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < {n})
             INSERT INTO relay (id, tenant_pubkey, schema, subdomain, status, synced, revision,
                                created_at, updated_at)
             SELECT printf('r%07d', i), '{OWNER}', printf('s%07d', i), printf('d%07d', i),
                    'active', i >= 100, 1, 0, 0 FROM k;
             WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < {rows})
             INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type,
                                   resource_id)
             SELECT 'a' || i, '{OWNER}', 0,
                    CASE WHEN i % 10 = 9 THEN 'complete_relay_sync' ELSE 'update_relay' END,
                    'relay', printf('r%07d', i / 10) FROM k;
             COMMIT;",
            rows = n * 10
        ))?;
    }
    let status_started = Instant::now();
    let out = std::process::Command::new(binary)
        .arg("status")
        .env_clear()
        .env("DATABASE_PATH", &s.db)
        .output()?;
    let status = status_started.elapsed();
    anyhow::ensure!(out.status.success(), "status failed");

    let spawned = Instant::now();
    // Relays the fixture does not hold: without the audit, which would create them again.
    let child = daemon(binary, &s, &[("SYNC_AUDIT_INTERVAL", "0")])?;
    wait_for("the first request", Duration::from_secs(60), || {
        !s.zooid.requests().is_empty()
    })?;
    let first = s.zooid.requests()[0]
        .started
        .saturating_duration_since(spawned);
    wait_for("the pending synced", Duration::from_secs(60), || {
        s.zooid.relay_ids().len() >= 100
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let rss = proc_status(child.id(), "VmRSS");
    // The feed: one change at a time, written by another process.
    let host = Connection::open(&s.db)?;
    host.busy_timeout(Duration::from_secs(5))?;
    let mut latencies = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_micros(jitter_us()));
        let before = s.zooid.requests().len();
        let written = Instant::now();
        host.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             UPDATE relay SET info_name = 'n{i}', synced = 0, revision = revision + 1
              WHERE id = 'r0000000';
             INSERT INTO activity (id, created_at, activity_type, resource_type, resource_id)
             VALUES ('scale-u{i}', 0, 'update_relay', 'relay', 'r0000000');
             COMMIT;"
        ))?;
        wait_for("the request", Duration::from_secs(5), || {
            s.zooid.requests().len() > before
        })?;
        latencies.push(
            s.zooid.requests()[before]
                .started
                .saturating_duration_since(written),
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    stop(child);
    latencies.sort();
    println!(
        "n={n:>6} ({:>7} activity rows): status {:>6.0} ms; start -> first request {:>5.1} ms; \
         idle RSS {rss}; feed p50 {:.1} ms",
        n * 10,
        status.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        latencies[latencies.len() / 2].as_secs_f64() * 1e3
    );
    Ok(())
}

/// Section 9: `zooid-sync prune --older-than 90d` on a year of activity of `n` relays, each
/// changed and synced once a week, while a host writes a change every 20 ms: how long it
/// takes, what is left, and the longest a host write waited.
fn prune_a_year(binary: &Path, n: usize) -> anyhow::Result<()> {
    let s = setup(0, true, 4)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    {
        let conn = Connection::open(&s.db)?;
        conn.execute_batch(&format!(
            "BEGIN;
             WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < {n})
             INSERT INTO relay (id, tenant_pubkey, schema, subdomain, status, synced, revision,
                                created_at, updated_at)
             SELECT printf('r%07d', i), '{OWNER}', printf('s%07d', i), printf('d%07d', i),
                    'active', 1, 53, 0, 0 FROM k;
             WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < {rows})
             INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type,
                                   resource_id, detail)
             SELECT 'a' || i, '{OWNER}', {now} - (52 - (i / 2) / {n}) * 7 * 86400,
                    CASE WHEN i % 2 = 1 THEN 'complete_relay_sync' ELSE 'update_relay' END,
                    'relay', printf('r%07d', (i / 2) % {n}), '' FROM k;
             COMMIT;",
            rows = n * 2 * 53
        ))?;
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let rows_before: i64 =
        Connection::open(&s.db)?.query_row("SELECT COUNT(*) FROM activity", [], |r| r.get(0))?;
    let size_before = size(&s.db);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = {
        let (db, stop) = (s.db.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<Duration> {
            let conn = Connection::open(&db)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            let mut longest = Duration::ZERO;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let started = Instant::now();
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE;
                     UPDATE relay SET info_name = 'n{i}' WHERE id = 'r0000001';
                     COMMIT;"
                ))?;
                longest = longest.max(started.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(longest)
        })
    };
    let started = Instant::now();
    let out = std::process::Command::new(binary)
        .args(["prune", "--older-than", "90d"])
        .env_clear()
        .env("DATABASE_PATH", &s.db)
        .output()?;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let longest_host_wait = host.join().expect("host thread")?;
    anyhow::ensure!(
        out.status.success(),
        "prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = Connection::open(&s.db)?;
    let rows_after: i64 = conn.query_row("SELECT COUNT(*) FROM activity", [], |r| r.get(0))?;
    conn.execute_batch("VACUUM")?;
    println!(
        "{n} relays, {rows_before} activity rows ({:.0} MB): prune --older-than 90d took \
         {:.1} s and left {rows_after} rows ({:.0} MB after VACUUM); a host write waited at \
         most {:.1} ms meanwhile",
        size_before as f64 / 1e6,
        took.as_secs_f64(),
        size(&s.db) as f64 / 1e6,
        longest_host_wait.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Makes the fixture hold the `n` relays [`setup`] writes, as if they were synced.
fn hold_relays(zooid: &FixtureZooid, n: usize) {
    for i in 0..n {
        let id = format!("r{i:06}");
        zooid.put_relay(
            &id,
            serde_json::json!({"host": format!("{id}.relays.example.com"), "schema": id}),
        );
    }
}

/// The audit of `n` synced relays against a zooid whose reads cost what the real one's do,
/// run at 50 reads a second for a sample, then carried over to the default interval: reads
/// a second, zooid's time per pass, and zooid-sync's own CPU per read.
fn audit_load(n: usize) -> anyhow::Result<()> {
    let mut s = setup(n, true, 4)?;
    hold_relays(&s.zooid, n);
    s.zooid
        .set_cost(Some(zooid_sync::fixture::CostModel::real_zooid()));
    s.env.sync_max_rate = zooid_sync::DEFAULT_MAX_RATE;
    // A pass compressed so that reads come every 20 ms; the sample is 10 s of it.
    s.env.sync_audit_interval = Duration::from_millis(20) * n as u32;
    let store = Store::open(&s.db)?;
    let busy_before = s.zooid.core_busy();
    let cpu_before = thread_cpu("zooid-sync-audi");
    let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let reads = s
        .zooid
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.status == 200)
        .count();
    let took = started.elapsed();
    let busy = s.zooid.core_busy() - busy_before;
    let cpu = thread_cpu("zooid-sync-audi") - cpu_before;
    worker.shutdown()?;
    let writes = s
        .zooid
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(writes, 0, "the audit never writes for relays zooid has");
    let per_read = busy / reads.max(1) as u32;
    let day = zooid_sync::DEFAULT_AUDIT_INTERVAL.as_secs_f64();
    println!(
        "{n} relays: sample {reads} reads in {:.1} s ({:.0}/s), zooid {:.2} ms a read, \
         zooid-sync {:.0} us a read; at the default interval (a day): {:.3} reads/s, zooid {:.1} s \
         per pass ({:.4} % of its core), zooid-sync {:.2} ms of CPU per 10 s",
        took.as_secs_f64(),
        reads as f64 / took.as_secs_f64(),
        per_read.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / reads.max(1) as f64,
        n as f64 / day,
        per_read.as_secs_f64() * n as f64,
        per_read.as_secs_f64() * n as f64 / day * 100.0,
        n as f64 / day * 10.0 * cpu.as_secs_f64() / reads.max(1) as f64 * 1e3,
    );
    Ok(())
}

/// Section 10's zooids: what a write costs its core before and after the answer, how many
/// relays it holds and how many changed.
struct CatchUpZooid {
    name: &'static str,
    write: Duration,
    after: Duration,
    relays: usize,
    changed: usize,
}

/// Section 10's settings: the old fixed ones (4 workers, `SYNC_MAX_RATE` 100, no pacing),
/// the last release's pacer (zooid's answers alone, `SYNC_PACING=answers`) and the pacer
/// that asks relay users (the default), both at the default share.
const CATCH_UP_SETTINGS: [(&str, f64, zooid_sync::PacingSignal); 3] = [
    ("fixed", 0.0, zooid_sync::PacingSignal::Answers),
    (
        "answers",
        zooid_sync::DEFAULT_ZOOID_SHARE,
        zooid_sync::PacingSignal::Answers,
    ),
    (
        "users",
        zooid_sync::DEFAULT_ZOOID_SHARE,
        zooid_sync::PacingSignal::Users,
    ),
];

fn catch_ups() -> anyhow::Result<()> {
    let zooids = [
        CatchUpZooid {
            name: "costly",
            write: Duration::from_millis(60),
            after: Duration::from_millis(30),
            relays: 1000,
            changed: 200,
        },
        CatchUpZooid {
            name: "fast",
            write: Duration::from_millis(1),
            after: Duration::ZERO,
            relays: 1000,
            changed: 1000,
        },
    ];
    println!(
        "zooid   setting  relays  took     relays/s  zooid's core  user p50 idle -> during   \
         user p99 idle -> during"
    );
    for zooid in &zooids {
        for setting in CATCH_UP_SETTINGS {
            catch_up(zooid, setting)?;
        }
    }
    println!(
        "(The fixture's slices are 2 ms: a user whose request lands on a write waits up to one, \
         so p99 during any write load is about idle + 2 ms. The real zooid's Go runtime has \
         10 ms slices.)"
    );
    Ok(())
}

/// Section 10: a catch-up of `zooid.changed` of `zooid.relays` relays zooid holds, against a
/// fixture whose writes cost `zooid.write` of its one core before they answer and
/// `zooid.after` once they have (the reload), which its relays' users share; with `setting`.
/// A relay user asks for a NIP-11 document every 20 ms, idle first and then during the
/// catch-up. Prints the time it took, its rate, the share of zooid's core its writes took
/// (from its first request to its last answer and reload), and the user's waits.
fn catch_up(
    zooid: &CatchUpZooid,
    (setting, share, signal): (&str, f64, zooid_sync::PacingSignal),
) -> anyhow::Result<()> {
    use zooid_sync::fixture::{CostModel, Work};
    let mut s = setup(zooid.relays, false, 4)?;
    // zooid holds every relay: created while it cost nothing.
    {
        let store = Store::open(&s.db)?;
        let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
        wait_for("the fleet", Duration::from_secs(300), || {
            store.query.count_pending().unwrap_or(1) == 0
        })?;
        worker.shutdown()?;
    }
    // The host renames the changed ones, as another process would.
    rename_first(&s.db, zooid.changed)?;
    s.zooid.set_cost(Some(
        CostModel::writes_of(zooid.write).with_after(zooid.after),
    ));
    s.env.sync_max_rate = 100.0;
    s.env.sync_zooid_share = share;
    s.env.sync_pacing = signal;
    let host_name = format!("r{:06}.relays.example.com", zooid.relays - 1);
    let user = || -> Duration {
        s.zooid
            .user_request(&host_name)
            .map(|(took, _)| took)
            .unwrap_or(Duration::from_secs(30))
    };
    let sample = |stop: &std::sync::atomic::AtomicBool| {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Acquire) {
            samples.push(user());
            std::thread::sleep(Duration::from_millis(20));
        }
        samples
    };
    let percentiles = |mut samples: Vec<Duration>| {
        samples.sort();
        let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        (at(0.5), at(0.99))
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let idle = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(&stop));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Release);
        sampler.join().expect("sampler")
    });
    let store = Store::open(&s.db)?;
    let writes = [Work::Write, Work::AfterWrite];
    let busy_before = s.zooid.core_busy_of(&writes);
    let since = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (during, took) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let sampler = scope.spawn(|| sample(&stop));
        let started = Instant::now();
        let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
        wait_for("the catch-up", Duration::from_secs(900), || {
            store.query.count_pending().unwrap_or(1) == 0
        })?;
        let took = started.elapsed();
        stop.store(true, Ordering::Release);
        worker.shutdown()?;
        Ok((sampler.join().expect("sampler"), took))
    })?;
    let Writes {
        span: (first, last),
        share: busy,
        ..
    } = writes_since(&s.zooid, since, busy_before, zooid.write + zooid.after)?;
    let ((idle50, idle99), (busy50, busy99)) = (percentiles(idle), percentiles(during));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<7} {setting:<8} {:>6}  {:>6.1} s  {:>8.1}  {busy:>12.3}  {:>5.2} -> {:>5.2} ms        \
         {:>5.2} -> {:>5.2} ms",
        zooid.name,
        zooid.changed,
        took.as_secs_f64(),
        zooid.changed as f64 / (last - first).as_secs_f64(),
        ms(idle50),
        ms(busy50),
        ms(idle99),
        ms(busy99)
    );
    Ok(())
}

/// Waits for `n` completed syncs on `completions`; a failed sync, or a minute without one, is
/// an error.
fn await_syncs(completions: &zooid_sync::Subscriber, n: usize) -> anyhow::Result<()> {
    let mut done = 0;
    while done < n {
        let a = completions
            .recv_deadline(Instant::now() + Duration::from_secs(60))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .ok_or_else(|| anyhow::anyhow!("no progress for 60 s"))?;
        match a.activity_type.as_str() {
            "complete_relay_sync" => done += 1,
            "fail_relay_sync" => anyhow::bail!("a sync failed: {}", a.detail),
            _ => {}
        }
    }
    Ok(())
}

/// The host renames relays `r000000` to the `n`th in one transaction, as another process
/// would: each pending again, with its `update_relay`.
fn rename_first(db: &Path, n: usize) -> anyhow::Result<()> {
    let mut host = Connection::open(db)?;
    let tx = host.transaction()?;
    for i in 0..n {
        let id = format!("r{i:06}");
        tx.execute(
            "UPDATE relay SET info_name = 'renamed', synced = 0, revision = revision + 1
             WHERE id = ?1",
            [&id],
        )?;
        tx.execute(
            "INSERT INTO activity (id, created_at, activity_type, resource_type, resource_id)
             VALUES (?1, 0, 'update_relay', 'relay', ?2)",
            params![format!("u-{id}"), id],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// A catch-up's writes at one fixture zooid.
struct Writes {
    count: usize,
    /// When the first started and the last was answered.
    span: (Instant, Instant),
    /// The share of the zooid's core they took, before and after their answers, from the
    /// first to the last reload.
    share: f64,
}

/// The relay writes `zooid` received since `since`, each costing its core `cost` in all;
/// `busy_before` is what its core had run of writes at `since`. Waits for their reloads.
fn writes_since(
    zooid: &FixtureZooid,
    since: Instant,
    busy_before: Duration,
    cost: Duration,
) -> anyhow::Result<Writes> {
    use zooid_sync::fixture::Work;
    let kinds = [Work::Write, Work::AfterWrite];
    let writes: Vec<_> = zooid
        .requests()
        .into_iter()
        .filter(|r| r.started >= since && r.relay_id().is_some() && r.method == "PATCH")
        .collect();
    let first = writes.iter().map(|r| r.started).min().expect("writes");
    let last = writes.iter().map(|r| r.finished).max().expect("writes");
    wait_for("the reloads", Duration::from_secs(60), || {
        zooid.core_busy_of(&kinds) - busy_before >= cost * writes.len() as u32
    })?;
    // Queued reloads may run well after the last answer (fixed settings saturate the core).
    let reloaded = zooid
        .core_finished_last(&kinds)
        .expect("writes ran")
        .max(last);
    let share =
        (zooid.core_busy_of(&kinds) - busy_before).as_secs_f64() / (reloaded - first).as_secs_f64();
    Ok(Writes {
        count: writes.len(),
        span: (first, last),
        share,
    })
}

/// The fixture zooids beyond `s.zooid` that `s.env` names (`z1`, `z2`, ...), trusting the same
/// robot, and the relays of `s` spread over all of them by their number (`r000000` at the
/// default zooid, `r000001` at `z1`, ...).
fn more_zooids(s: &mut Setup, n: usize, more: usize) -> anyhow::Result<Vec<FixtureZooid>> {
    let robot = s.env.robot.public_key().to_hex();
    let others = (0..more)
        .map(|_| FixtureZooid::start(std::slice::from_ref(&robot)))
        .collect::<std::io::Result<Vec<_>>>()?;
    s.env.zooid_instances = others
        .iter()
        .enumerate()
        .map(|(k, fx)| zooid_sync::ZooidAddress {
            name: format!("z{}", k + 1),
            url: fx.url(),
        })
        .collect();
    let mut conn = Connection::open(&s.db)?;
    let tx = conn.transaction()?;
    for i in 0..n {
        let zooid = match i % (more + 1) {
            0 => String::new(),
            k => format!("z{k}"),
        };
        tx.execute(
            "UPDATE relay SET zooid = ?2 WHERE id = ?1",
            params![format!("r{i:06}"), zooid],
        )?;
    }
    tx.commit()?;
    Ok(others)
}

/// Section 13: three zooids at once. First the client's CPU per sync, 3 000 pending relays at
/// one zooid against 1 000 at each of three (no pacing, no ceiling; two rounds, alternating).
/// Then three costly zooids (writes of 60 ms before the answer and 30 ms after), 1 000 relays
/// each of which 200 changed, catching up at once at the default share: each zooid's share of
/// its core, from its first write to its last reload, and its rate.
fn many_zooids() -> anyhow::Result<()> {
    use zooid_sync::fixture::{CostModel, Work};
    let n = 3000;
    for round in 1..=2 {
        for more in [0, 2] {
            let mut s = setup(n, false, 4)?;
            let others = more_zooids(&mut s, n, more)?;
            let store = Store::open_with(
                &s.db,
                StoreOptions {
                    bus_capacity: n + 16,
                    ..StoreOptions::default()
                },
            )?;
            let completions = store.command.notify.subscribe();
            let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
            await_syncs(&completions, n)?;
            let first = std::iter::once(&s.zooid)
                .chain(&others)
                .filter_map(|fx| fx.requests().first().map(|r| r.started))
                .min()
                .expect("requests");
            let rate = n as f64 / first.elapsed().as_secs_f64();
            let cpu = thread_cpu("zooid-sync-");
            worker.shutdown()?;
            println!(
                "round {round}: {} x {} relays: {rate:>6.0} syncs/s, CPU per sync {:.0} us",
                more + 1,
                n / (more + 1),
                cpu.as_secs_f64() * 1e6 / n as f64
            );
        }
    }

    let mut s = setup(n, false, 4)?;
    let others = more_zooids(&mut s, n, 2)?;
    {
        let store = Store::open(&s.db)?;
        let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
        wait_for("the fleet", Duration::from_secs(300), || {
            store.query.count_pending().unwrap_or(1) == 0
        })?;
        worker.shutdown()?;
    }
    // 200 of each zooid's relays renamed at once, as another process would.
    rename_first(&s.db, 600)?;
    let (write, after) = (Duration::from_millis(60), Duration::from_millis(30));
    let fixtures: Vec<&FixtureZooid> = std::iter::once(&s.zooid).chain(&others).collect();
    for fx in &fixtures {
        fx.set_cost(Some(CostModel::writes_of(write).with_after(after)));
    }
    s.env.sync_max_rate = zooid_sync::DEFAULT_MAX_RATE;
    s.env.sync_zooid_share = zooid_sync::DEFAULT_ZOOID_SHARE;
    let writes = [Work::Write, Work::AfterWrite];
    let busy_before: Vec<Duration> = fixtures.iter().map(|fx| fx.core_busy_of(&writes)).collect();
    let since = Instant::now();
    let store = Store::open(&s.db)?;
    let worker = Infra::new(store.query.clone(), store.command.clone(), &s.env).spawn()?;
    wait_for("the catch-ups", Duration::from_secs(900), || {
        store.query.count_pending().unwrap_or(1) == 0
    })?;
    let took = since.elapsed();
    worker.shutdown()?;
    println!(
        "three costly zooids (60 + 30 ms a write), 200 of 1 000 relays changed at each, at \
         once, SYNC_ZOOID_SHARE {}: all done in {:.1} s",
        zooid_sync::DEFAULT_ZOOID_SHARE,
        took.as_secs_f64()
    );
    for (k, fx) in fixtures.iter().enumerate() {
        let Writes {
            count,
            span: (first, last),
            share,
        } = writes_since(fx, since, busy_before[k], write + after)?;
        println!(
            "  zooid {}: {count} writes, {:.1} relays/s, its core {share:.3} busy with them",
            match k {
                0 => "default".to_string(),
                k => format!("z{k}"),
            },
            count as f64 / (last - first).as_secs_f64()
        );
    }
    Ok(())
}
