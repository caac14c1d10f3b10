//! Pacing against a zooid that costs what the real one does: a catch-up takes zooid's spare
//! time, never its users' share; a lone change still goes out at once; a fast zooid still gets
//! the rate ceiling; a slow one is slowed down for, never given up on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use zooid_sync::fixture::{CostModel, Fault, FixtureZooid};
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

/// Requests for relays among `ids`: (first started, last finished, count).
fn span(fx: &FixtureZooid, ids: &[String]) -> (Instant, Instant, usize) {
    let requests: Vec<_> = fx
        .requests()
        .into_iter()
        .filter(|r| r.relay_id().is_some_and(|id| ids.iter().any(|i| i == id)))
        .collect();
    let first = requests.iter().map(|r| r.started).min().unwrap();
    let last = requests.iter().map(|r| r.finished).max().unwrap();
    (first, last, requests.len())
}

#[test]
fn a_catch_up_of_costly_writes_leaves_zooids_users_their_time() {
    let fx = fixture();
    fx.set_cost(Some(CostModel::writes_of(Duration::from_millis(60))));
    // A relay whose users keep asking for its NIP-11 document.
    fx.put_relay(
        "home",
        serde_json::json!({"host": "home.relays.example.com", "schema": "home",
                           "info": {"name": "Home", "pubkey": OWNER}}),
    );
    let user = || fx.user_request("home.relays.example.com").unwrap().0;
    for _ in 0..5 {
        user();
    }
    let idle = median((0..40).map(|_| user()).collect());

    let (_dir, store, env, ids) = catch_up(&fx, 200, |_| {});
    let stop = AtomicBool::new(false);
    let (during, handle) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Acquire) {
                samples.push(user());
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        let worker = start(&store, &env);
        expect_within(WAIT, "every relay synced", || all_synced(&store, &ids));
        stop.store(true, Ordering::Release);
        (sampler.join().unwrap(), worker)
    });
    handle.shutdown().unwrap();
    let (first, last, writes) = span(&fx, &ids);
    let rate = ids.len() as f64 / (last - first).as_secs_f64();
    let during_median = median(during.clone());
    println!(
        "200 writes of 60 ms: {rate:.1} relays a second; a relay user's median {idle:?} idle, \
         {during_median:?} during ({} samples), {writes} requests",
        during.len()
    );
    assert!(rate >= 3.0, "{rate:.1} relays a second");
    assert!(
        during_median <= (2 * idle).max(idle + Duration::from_millis(1)),
        "a user waited {during_median:?} instead of {idle:?}"
    );
}

#[test]
fn a_fast_zooid_still_gets_the_rate_ceiling() {
    let fx = fixture();
    fx.set_cost(Some(CostModel::writes_of(Duration::from_millis(1))));
    let (_dir, store, env, ids) = catch_up(&fx, 1000, |env| env.sync_max_rate = 100.0);
    let worker = start(&store, &env);
    expect_within(WAIT, "every relay synced", || all_synced(&store, &ids));
    worker.shutdown().unwrap();
    let (first, last, _) = span(&fx, &ids);
    let rate = ids.len() as f64 / (last - first).as_secs_f64();
    println!("1 000 writes of 1 ms with SYNC_MAX_RATE=100: {rate:.1} a second");
    assert!(rate >= 80.0, "{rate:.1} a second");
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
