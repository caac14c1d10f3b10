//! Pacing against a zooid that costs what the real one does: a catch-up takes zooid's spare
//! time, never its users' share; a lone change still goes out at once; a fast zooid still gets
//! the rate ceiling; a slow one is slowed down for, never given up on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use zooid_sync::fixture::{CostModel, Fault, FixtureZooid, Work};
use zooid_sync::{Env, Infra, InfraHandle, Store};

const WAIT: Duration = Duration::from_secs(120);

/// A worker with pacing at its default share, against `fx`, and `n` relays pending.
fn catch_up(
    fx: &FixtureZooid,
    n: usize,
    tune: impl FnOnce(&mut Env),
) -> (tempfile::TempDir, Store, Env, Vec<String>) {
    let (dir, db) = temp_db();
    let store = open_store(&db);
    let mut env = env_for(&fx.url());
    env.sync_zooid_share = zooid_sync::DEFAULT_ZOOID_SHARE;
    tune(&mut env);
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for id in &ids {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    (dir, store, env, ids)
}

fn start(store: &Store, env: &Env) -> InfraHandle {
    Infra::new(store.query.clone(), store.command.clone(), env)
        .spawn()
        .unwrap()
}

fn all_synced(store: &Store, ids: &[String]) -> bool {
    ids.iter()
        .all(|id| store.query.get_relay(id).unwrap().is_some_and(|r| r.synced))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Requests for relays among `ids` since `since`: (first started, last finished, count).
fn span(fx: &FixtureZooid, ids: &[String], since: Instant) -> (Instant, Instant, usize) {
    let requests: Vec<_> = fx
        .requests()
        .into_iter()
        .filter(|r| r.started >= since)
        .filter(|r| r.relay_id().is_some_and(|id| ids.iter().any(|i| i == id)))
        .collect();
    let first = requests.iter().map(|r| r.started).min().unwrap();
    let last = requests.iter().map(|r| r.finished).max().unwrap();
    (first, last, requests.len())
}

/// `n` relays zooid has (created through an unpaced worker while zooid cost nothing), and the
/// first `changed` of them renamed by the host since: a backlog for the next start.
fn fleet(fx: &FixtureZooid, n: usize, changed: usize) -> (tempfile::TempDir, Store, Vec<String>) {
    let (dir, store, env, ids) = catch_up(fx, n, |env| env.sync_zooid_share = 0.0);
    let worker = start(&store, &env);
    expect_within(WAIT, "the fleet created", || all_synced(&store, &ids));
    worker.shutdown().unwrap();
    for id in &ids[..changed] {
        let mut renamed = settings(id);
        renamed.info_name = format!("Renamed {id}");
        store.command.update_relay(id, &renamed).unwrap();
    }
    (dir, store, ids[..changed].to_vec())
}

/// What a relay user waits, asked every 20 ms until `stop`: the waits.
fn user_samples(fx: &FixtureZooid, host: &str, stop: &AtomicBool) -> Vec<Duration> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Acquire) {
        samples.push(fx.user_request(host).unwrap().0);
        std::thread::sleep(Duration::from_millis(20));
    }
    samples
}

/// What a measured catch-up shows.
struct Measured {
    /// What a relay user waited during it.
    during: Vec<Duration>,
    /// The share of zooid's core its writes took (before and after their answers), from its
    /// first request to its last answer and reload.
    busy: f64,
    /// Relays a second.
    rate: f64,
    /// The worker's `/metrics` at its end.
    metrics: String,
}

/// A catch-up of `ids` with `env` while a relay user asks for `host`'s document every 20 ms;
/// zooid's writes leave `after` of work once answered.
fn measured_catch_up(
    fx: &FixtureZooid,
    store: &Store,
    env: &Env,
    ids: &[String],
    host: &str,
    after: Duration,
) -> Measured {
    let writes = [Work::Write, Work::AfterWrite];
    let since = Instant::now();
    let busy_before = fx.core_busy_of(&writes);
    let reloads_before = fx.core_busy_of(&[Work::AfterWrite]);
    let stop = AtomicBool::new(false);
    let (during, metrics) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| user_samples(fx, host, &stop));
        let infra = Infra::new(store.query.clone(), store.command.clone(), env);
        let metrics = infra.metrics();
        let worker = infra.spawn().unwrap();
        expect_within(WAIT, "every relay synced", || all_synced(store, ids));
        let text = metrics.render(&Default::default());
        stop.store(true, Ordering::Release);
        worker.shutdown().unwrap();
        (sampler.join().unwrap(), text)
    });
    let (first, last, _) = span(fx, ids, since);
    // Every accepted write's reload has run (they run one after another).
    let accepted = fx
        .requests()
        .iter()
        .filter(|r| r.started >= since && r.status / 100 == 2)
        .filter(|r| matches!(r.method.as_str(), "POST" | "PATCH"))
        .count() as u32;
    expect_within(WAIT, "the reloads", || {
        fx.core_busy_of(&[Work::AfterWrite]) - reloads_before >= after * accepted
    });
    let busy = (fx.core_busy_of(&writes) - busy_before).as_secs_f64();
    let reloaded = fx
        .core_finished_last(&writes)
        .expect("writes ran")
        .max(last);
    Measured {
        during,
        busy: busy / (reloaded - first).as_secs_f64(),
        rate: ids.len() as f64 / (last - first).as_secs_f64(),
        metrics,
    }
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The lines of `metrics` that start with `name`.
fn series(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The costly zooid: writes cost 60 ms before their answer and 30 ms after it (zooid reloads
/// the relay), 1 000 relays, 200 renamed. The pacer learns the part after the answer from
/// relay users' answers: zooid's core spends at most 1.1 times `SYNC_ZOOID_SHARE` on the
/// catch-up's writes, and a relay user's median wait stays within twice idle or a millisecond
/// of it.
#[test]
fn a_catch_up_holds_the_share_of_zooids_core_its_writes_really_take() {
    let fx = fixture();
    let (_dir, store, ids) = fleet(&fx, 1000, 200);
    let after = Duration::from_millis(30);
    fx.set_cost(Some(
        CostModel::writes_of(Duration::from_millis(60)).with_after(after),
    ));
    let host = "c999.relays.example.com";
    let user = || fx.user_request(host).unwrap().0;
    for _ in 0..5 {
        user();
    }
    let idle: Vec<Duration> = (0..100)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            user()
        })
        .collect();
    let mut env = env_for(&fx.url());
    env.sync_zooid_share = zooid_sync::DEFAULT_ZOOID_SHARE;
    let m = measured_catch_up(&fx, &store, &env, &ids, host, after);
    let (idle50, during50) = (median(idle.clone()), median(m.during.clone()));
    println!(
        "200 writes of 60 + 30 ms: {:.2} relays a second; zooid's core {:.3} busy with them \
         (share {}); a relay user's p50 {idle50:?} idle, {during50:?} during, p99 {:?} -> {:?} \
         ({} samples); {}; {}; {}",
        m.rate,
        m.busy,
        zooid_sync::DEFAULT_ZOOID_SHARE,
        percentile(&idle, 0.99),
        percentile(&m.during, 0.99),
        m.during.len(),
        series(&m.metrics, "zooid_sync_zooid_write_cost_seconds"),
        series(&m.metrics, "zooid_sync_zooid_busy_share"),
        series(&m.metrics, "zooid_sync_user_wait_seconds"),
    );
    assert!(
        m.busy <= 1.1 * zooid_sync::DEFAULT_ZOOID_SHARE,
        "zooid's core spent {:.3} of its time on the catch-up's writes",
        m.busy
    );
    assert!(
        during50 <= (2 * idle50).max(idle50 + Duration::from_millis(1)),
        "a user waited {during50:?} instead of {idle50:?}"
    );
    // Paced, not stopped: at least half the rate the share allows (0.25 / 90 ms a write).
    assert!(
        m.rate >= 0.5 * 0.25 / 0.090,
        "{:.2} relays a second",
        m.rate
    );
    assert!(
        m.metrics
            .contains("zooid_sync_pacing_by_users{zooid=\"default\"} 1"),
        "{}",
        m.metrics
    );
}

/// A zooid whose writes are cheap: relay users feel nothing, so a paced catch-up runs at the
/// rate an unpaced one does (here the rate ceiling's), not held back by latency that is not
/// zooid's work.
#[test]
fn a_fast_zooid_gets_what_an_unpaced_catch_up_gets() {
    let rates: Vec<f64> = [0.0, zooid_sync::DEFAULT_ZOOID_SHARE]
        .into_iter()
        .map(|share| {
            let fx = fixture();
            let (_dir, store, ids) = fleet(&fx, 1000, 1000);
            fx.set_cost(Some(CostModel::writes_of(Duration::from_millis(1))));
            let mut env = env_for(&fx.url());
            env.sync_max_rate = 100.0;
            env.sync_zooid_share = share;
            let host = "c0.relays.example.com";
            let m = measured_catch_up(&fx, &store, &env, &ids, host, Duration::ZERO);
            println!(
                "1 000 writes of 1 ms, SYNC_ZOOID_SHARE={share}: {:.1} a second, zooid's core \
                 {:.3} busy with them; {}; {}",
                m.rate,
                m.busy,
                series(&m.metrics, "zooid_sync_zooid_write_cost_seconds"),
                series(&m.metrics, "zooid_sync_write_spacing_seconds"),
            );
            m.rate
        })
        .collect();
    let (unpaced, paced) = (rates[0], rates[1]);
    assert!(
        paced >= 0.9 * unpaced,
        "{paced:.1} against {unpaced:.1} a second"
    );
    assert!(paced >= 80.0, "{paced:.1} a second, SYNC_MAX_RATE=100");
}

#[test]
fn a_lone_change_goes_out_at_once_while_a_catch_up_waits_its_turn() {
    let fx = fixture();
    fx.set_cost(Some(CostModel::writes_of(Duration::from_millis(60))));
    let (_dir, store, env, ids) = catch_up(&fx, 60, |_| {});
    store
        .command
        .create_relay("fresh", &settings("fresh"))
        .unwrap();
    let worker = start(&store, &env);
    // Let the catch-up learn the pace and settle into it.
    assert!(
        fx.wait_for_requests(WAIT, |rs| rs.iter().filter(|r| r.method == "POST").count()
            >= 8)
    );
    let mut waits = Vec::new();
    for round in 0..5 {
        let mut changed = settings("fresh");
        changed.info_name = format!("Round {round}");
        let before = fx.requests_for("fresh").len();
        let at = Instant::now();
        store.command.update_relay("fresh", &changed).unwrap();
        assert!(fx.wait_for_requests(Duration::from_secs(10), |rs| {
            rs.iter().filter(|r| r.relay_id() == Some("fresh")).count() > before
        }));
        waits.push(fx.requests_for("fresh")[before].started - at);
        std::thread::sleep(Duration::from_millis(300));
    }
    let pending = ids
        .iter()
        .filter(|id| !store.query.get_relay(id).unwrap().unwrap().synced)
        .count();
    let status = |fx: &FixtureZooid| {
        let out = run_cli(fx, store.query.path(), &["status"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let during = status(&fx);
    worker.shutdown().unwrap();
    let after = status(&fx);
    assert!(
        during
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("catch-up since") && l.contains("relays left, about")),
        "{during}"
    );
    assert!(
        !after.contains("catch-up since"),
        "forgotten once stopped: {after}"
    );
    println!(
        "a lone change reached zooid after {waits:?}, {pending} relays of the catch-up waiting"
    );
    assert!(pending > 0, "the catch-up was still waiting its turn");
    assert!(
        waits.iter().all(|w| *w < Duration::from_millis(50)),
        "{waits:?}"
    );
}

#[test]
fn a_write_that_times_out_while_zooid_answers_reads_slows_the_pace_and_never_gives_up() {
    let fx = fixture();
    let (_dir, store, env, _) = catch_up(&fx, 0, |env| {
        env.zooid_timeout = Duration::from_millis(400);
        env.retry.max_attempts = 1;
    });
    store
        .command
        .create_relay("slow", &settings("slow"))
        .unwrap();
    fx.inject("slow", Fault::Delay(Duration::from_millis(700)));
    let infra = Infra::new(store.query.clone(), store.command.clone(), &env);
    let metrics = infra.metrics();
    let worker = infra.spawn().unwrap();
    // Far more attempts than the one retry it may fail before giving up.
    let slow = |rs: &[zooid_sync::fixture::RecordedRequest]| {
        rs.iter().filter(|r| r.relay_id() == Some("slow")).count()
    };
    assert!(fx.wait_for_requests(WAIT, |rs| slow(rs) >= 4));
    let text = metrics.render(&Default::default());
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert_eq!(store.query.count_trailing_sync_failures("slow").unwrap(), 0);
    assert_eq!(gauge("zooid_sync_breaker_opened_total"), 0.0, "{text}");
    assert!(gauge("zooid_sync_zooid_up") == 1.0);
    assert!(
        gauge("zooid_sync_write_spacing_seconds") >= 1.0,
        "a 400 ms timeout at 25 %: writes spaced by over a second\n{text}"
    );
    fx.clear_faults();
    expect_within(WAIT, "the slow relay synced once zooid is fast", || {
        all_synced(&store, &["slow".to_string()])
    });
    worker.shutdown().unwrap();
}

#[test]
fn pacing_is_arithmetic_a_share_can_be_given() {
    // SYNC_ZOOID_SHARE: read, bounded, and 0 turns pacing off.
    let vars = |share: &'static str| {
        move |name: &str| match name {
            "ZOOID_API_URL" => Some("http://127.0.0.1:3334".to_string()),
            "RELAY_DOMAIN" => Some("relays.example.com".to_string()),
            "ROBOT_SECRET" => Some(ROBOT_SECRET.to_string()),
            "SYNC_ZOOID_SHARE" => Some(share.to_string()),
            _ => None,
        }
    };
    assert_eq!(Env::from_vars(vars("0.5")).unwrap().sync_zooid_share, 0.5);
    assert_eq!(Env::from_vars(vars("0")).unwrap().sync_zooid_share, 0.0);
    for bad in ["2", "-0.1", "0.001", "half"] {
        let err = format!("{:#}", Env::from_vars(vars(bad)).unwrap_err());
        assert!(err.contains("SYNC_ZOOID_SHARE"), "{bad}: {err}");
    }
    let _ = Arc::new(());
}

/// The issue of a host's second edit: a relay changed again while its sync is in flight,
/// during a paced catch-up of 300 relays on a zooid whose writes cost 60 ms, with two relays
/// zooid refuses retrying all along. The follow-up is as fresh as the change: it starts as
/// soon as the first sync's outcome is recorded, not behind the catch-up.
#[test]
fn a_relay_changed_while_its_sync_is_in_flight_goes_before_the_catch_up() {
    let fx = fixture();
    fx.set_cost(Some(CostModel::writes_of(Duration::from_millis(60))));
    let (_dir, store, env, _) = catch_up(&fx, 0, |env| {
        env.retry.max_attempts = 100;
    });
    store.command.create_relay("hot", &settings("hot")).unwrap();
    let worker = start(&store, &env);
    expect_within(WAIT, "hot synced once", || {
        store.query.get_relay("hot").unwrap().unwrap().synced
    });
    worker.shutdown().unwrap();
    // A backlog for the next start: 300 relays and two that zooid refuses.
    let ids: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
    for id in ids.iter().map(String::as_str).chain(["bad0", "bad1"]) {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    for id in ["bad0", "bad1"] {
        fx.inject(
            id,
            Fault::Status {
                status: 422,
                body: r#"{"error":"refused"}"#.into(),
            },
        );
    }
    let worker = start(&store, &env);
    let mut waits = Vec::new();
    let mut answers = Vec::new();
    for attempt in 0..8 {
        let mut relay = settings("hot");
        relay.info_name = format!("first {attempt}");
        store.command.update_relay("hot", &relay).unwrap();
        expect_within(WAIT, "the first sync in flight", || fx.in_flight("hot") > 0);
        relay.info_name = format!("second {attempt}");
        store.command.update_relay("hot", &relay).unwrap();
        let changed = Instant::now();
        expect_within(WAIT, "the second value at zooid", || {
            fx.relay("hot")
                .is_some_and(|r| r["info"]["name"] == relay.info_name)
        });
        let requests = fx.requests_for("hot");
        let [.., first, follow_up] = requests.as_slice() else {
            panic!("two requests for hot");
        };
        let could_start = changed.max(first.finished);
        waits.push(follow_up.started.saturating_duration_since(could_start));
        answers.push(follow_up.finished - follow_up.started);
        assert!(
            !all_synced(&store, &ids),
            "the catch-up still runs, or the test shows nothing"
        );
    }
    worker.shutdown().unwrap();
    let (p50, max) = (median(waits.clone()), *waits.iter().max().unwrap());
    println!(
        "a follow-up waited {p50:?} (p50), {max:?} (max) after it could start, during a \
         catch-up of 300 with two refused relays retrying; zooid then answered it in \
         {:?} (p50)",
        median(answers)
    );
    assert!(
        max <= Duration::from_millis(100),
        "a follow-up waited {max:?}: {waits:?}"
    );
}

/// A host's small batch is fresh work too: four relays created at once, before zooid has
/// answered anything (nothing is known of the pace yet), all go out at once on the four
/// workers instead of one at a time.
#[test]
fn a_small_batch_of_changes_goes_out_at_once_before_the_pace_is_known() {
    let fx = fixture();
    fx.inject("*", Fault::Delay(Duration::from_millis(300)));
    let (_dir, store, env, _) = catch_up(&fx, 0, |env| env.sync_workers = 4);
    let worker = start(&store, &env);
    let ids: Vec<String> = (0..4).map(|i| format!("b{i}")).collect();
    for id in &ids {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    expect_within(WAIT, "the batch synced", || all_synced(&store, &ids));
    worker.shutdown().unwrap();
    let requests: Vec<_> = fx
        .requests()
        .into_iter()
        .filter(|r| r.relay_id().is_some_and(|id| id.starts_with('b')))
        .collect();
    assert_eq!(requests.len(), 4, "one request each");
    let first_answer = requests.iter().map(|r| r.finished).min().unwrap();
    let late: Vec<_> = requests
        .iter()
        .filter(|r| r.started >= first_answer)
        .map(|r| r.path.clone())
        .collect();
    assert!(late.is_empty(), "started only after an answer: {late:?}");
}

/// At start the daemon asks zooid, as a user of a relay it serves, for the relay's NIP-11
/// document, and says once in its log which way catch-ups are paced: by what relay users
/// feel, or, where zooid does not answer relay users at its API's address (a proxy that
/// routes relay hosts elsewhere), by zooid's answers alone. Then a catch-up still goes, paced,
/// and relay users are not asked again.
#[test]
fn the_log_says_once_at_start_how_catch_ups_are_paced() {
    let fx = fixture();
    let (dir, store, _) = fleet(&fx, 30, 0);
    let db = store.query.path().to_path_buf();
    let by_users = "catch-ups are paced by what zooid's relay users feel";
    let by_answers = "catch-ups are paced by zooid's answers alone";
    for (round, elsewhere) in [false, true].into_iter().enumerate() {
        fx.serve_users_elsewhere(elsewhere);
        // A backlog of 25 renamed relays for this start.
        let ids: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
        for id in &ids {
            let mut renamed = settings(id);
            renamed.info_name = format!("Round {round} {id}");
            store.command.update_relay(id, &renamed).unwrap();
        }
        let since = Instant::now();
        let log = dir.path().join(format!("round-{round}.log"));
        let mut cmd = zooid_sync(&fx, &db);
        cmd.env_remove("SYNC_ZOOID_SHARE")
            .env("RUST_LOG", "info")
            .args(["run", "--feed-interval", "10ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        expect_within(WAIT, "the catch-up", || all_synced(&store, &ids));
        terminate(&mut child);
        let text = std::fs::read_to_string(&log).unwrap();
        let count = |line: &str| text.lines().filter(|l| l.contains(line)).count();
        let asked = fx
            .requests()
            .iter()
            .filter(|r| r.started >= since && r.path == "/")
            .count();
        println!("round {round}: {asked} questions as a relay user");
        if elsewhere {
            assert_eq!(count(by_answers), 1, "{text}");
            assert_eq!(count(by_users), 0, "{text}");
            assert!(
                text.contains("A proxy in front of zooid may route relay hosts elsewhere"),
                "{text}"
            );
            // Three refusals in a row (`pace::USER_REFUSALS`), each about another relay.
            assert_eq!(
                asked, 3,
                "asked about three relays at start, then never again"
            );
        } else {
            assert_eq!(count(by_users), 1, "{text}");
            assert_eq!(count(by_answers), 0, "{text}");
            assert!(asked > 3, "relay users asked during the catch-up: {asked}");
        }
    }
}

/// `zooid-sync check` says how catch-ups will be paced: by what relay users feel where zooid
/// answers them at its API's address, else (a warning, which passes) by its answers alone.
#[test]
fn check_says_whether_relay_users_can_be_asked() {
    let fx = fixture();
    let (_dir, store, _) = fleet(&fx, 2, 0);
    let db = store.query.path().to_path_buf();
    let check = |share: Option<&str>| {
        let out = output({
            let mut c = zooid_sync(&fx, &db);
            match share {
                Some(share) => c.env("SYNC_ZOOID_SHARE", share),
                None => c.env_remove("SYNC_ZOOID_SHARE"),
            };
            c.arg("check");
            c
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let (code, text) = check(None);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok   relay users: zooid answers c0.relays.example.com's NIP-11 document")
            && text.contains("catch-ups are paced by what its users feel"),
        "{text}"
    );
    fx.serve_users_elsewhere(true);
    let (code, text) = check(None);
    assert_eq!(code, Some(0), "a warning passes: {text}");
    assert!(
        text.contains("WARN relay users: zooid does not answer a relay user's NIP-11 request")
            && text.contains("c1.relays.example.com: 404: Not Found"),
        "{text}"
    );
    let (_, text) = check(Some("0"));
    assert!(
        text.contains("ok   pacing: off (SYNC_ZOOID_SHARE=0)"),
        "{text}"
    );
    assert!(!text.contains("relay users"), "{text}");
}
