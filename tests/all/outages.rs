//! zooid outages of any length, against the fixture zooid: the breaker stops the hammering,
//! no relay gives up because zooid was down, every relay converges when it returns; a relay
//! zooid refuses still gives up; a flapping zooid converges; a SIGKILL during an outage loses
//! nothing; and the rate toward zooid never exceeds `SYNC_MAX_RATE`. Long outages are
//! compressed into milliseconds of backoff.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use rusqlite::Connection;
use zooid_sync::fixture::{Fault, RecordedRequest};
use zooid_sync::RetryPolicy;
use zooid_sync::PROBE_ID;
use zooid_sync::{Env, Infra, Store};

const WAIT: Duration = Duration::from_secs(30);

fn down() -> Fault {
    Fault::Status {
        status: 503,
        body: r#"{"error":"zooid is restarting"}"#.into(),
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn probes(requests: &[RecordedRequest]) -> Vec<&RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.relay_id() == Some(PROBE_ID))
        .collect()
}

fn relay_requests(requests: &[RecordedRequest]) -> Vec<&RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.relay_id().is_some_and(|id| id != PROBE_ID))
        .collect()
}

fn unavailable_records(db: &std::path::Path, id: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM activity WHERE resource_id = ?1
               AND activity_type = 'fail_relay_sync' AND detail LIKE 'zooid is unavailable%'",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn all_synced(store: &Store, ids: &[String]) -> bool {
    ids.iter()
        .all(|id| store.query.get_relay(id).unwrap().is_some_and(|r| r.synced))
}

#[test]
fn zooid_down_longer_than_the_retry_schedule_then_back_every_relay_converges() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let mut env = env_for(&fx.url());
    env.retry = RetryPolicy {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_attempts: 4, // the whole schedule: 50 + 100 + 200 + 200 ms
        jitter: false,
    };
    let store = open_store(&db);
    let infra = Infra::new(store.query.clone(), store.command.clone(), &env);
    let metrics = infra.metrics();
    let worker = infra.spawn().unwrap();
    let old = ids("old", 25);
    for id in &old {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    expect_within(WAIT, "the old relays synced", || all_synced(&store, &old));

    // zooid goes down: 503 for everything. The host creates 50 relays and renames 25.
    fx.inject("*", down());
    let new = ids("new", 50);
    for id in &new {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    for id in &old {
        let mut s = settings(id);
        s.info_name = format!("Renamed {id}");
        store.command.update_relay(id, &s).unwrap();
    }
    expect_within(WAIT, "the breaker to open", || {
        metric(&metrics.render(&Default::default()), "zooid_sync_zooid_up") == 0.0
    });
    let opened = fx.requests().len();
    // Down for several times the whole retry schedule: at least eight probes.
    expect_within(WAIT, "eight probes during the outage", || {
        probes(&fx.requests()[opened..]).len() >= 8
    });
    // Then not even connections: the prober finds the port closed.
    fx.refuse_connections();
    expect_within(WAIT, "a probe to find the port closed", || {
        store
            .query
            .zooid_outage("default")
            .unwrap()
            .is_some_and(|(_, e)| !e.contains("503"))
    });
    let during = fx.requests()[opened..].to_vec();
    fx.clear_faults();
    fx.accept_connections().unwrap();
    let back = Instant::now();

    let changed: Vec<String> = new.iter().chain(&old).cloned().collect();
    expect_within(
        Duration::from_secs(10),
        "every relay synced after zooid's return",
        || all_synced(&store, &changed),
    );
    let converged_in = back.elapsed();
    worker.shutdown().unwrap();

    // While it was down, after the breaker opened: probes only (and the few syncs that raced
    // the opening), one per backoff interval at most.
    let relay_syncs = relay_requests(&during).len();
    let probe_list = probes(&during);
    let gaps: Vec<Duration> = probe_list
        .windows(2)
        .map(|w| w[1].started - w[0].started)
        .collect();
    println!(
        "outage: {} requests before the breaker opened, {relay_syncs} relay syncs and {} \
         probes after, probe gaps {:?}; all 75 synced {converged_in:?} after zooid returned",
        opened,
        probe_list.len(),
        gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
    );
    assert!(
        relay_syncs <= env.sync_workers,
        "{relay_syncs} syncs sent into the outage"
    );
    assert!(
        gaps.iter().all(|g| *g >= env.retry.base),
        "probes closer than the backoff: {gaps:?}"
    );
    // Nobody gave up, each relay was told once, and zooid has the newest names.
    for id in &changed {
        assert_eq!(
            store.query.count_trailing_sync_failures(id).unwrap(),
            0,
            "{id}"
        );
        assert!(
            unavailable_records(&db, id) <= 1,
            "{id} told more than once"
        );
    }
    for id in &old {
        assert_eq!(
            fx.relay(id).unwrap()["info"]["name"],
            format!("Renamed {id}")
        );
    }
    let text = metrics.render(&Default::default());
    assert_eq!(metric(&text, "zooid_sync_breaker_opened_total"), 1.0);
    assert_eq!(metric(&text, "zooid_sync_zooid_up"), 1.0);
    assert!(store.query.zooid_outage("default").unwrap().is_none());
}

#[test]
fn a_relay_zooid_refuses_forever_still_gives_up_and_holds_back_no_other() {
    for status in [500, 503] {
        let fx = fixture();
        let (_dir, db) = temp_db();
        let mut env = env_for(&fx.url());
        env.retry = RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            ..RetryPolicy::default() // six retries: seven tries
        };
        env.retry.jitter = false;
        let store = open_store(&db);
        let infra = Infra::new(store.query.clone(), store.command.clone(), &env);
        let metrics = infra.metrics();
        let worker = infra.spawn().unwrap();
        fx.inject(
            "bad",
            Fault::Status {
                status,
                body: r#"{"error":"no"}"#.into(),
            },
        );
        let good = ids("good", 20);
        store.command.create_relay("bad", &settings("bad")).unwrap();
        for id in &good {
            store.command.create_relay(id, &settings(id)).unwrap();
        }
        expect_within(WAIT, "the good relays synced", || all_synced(&store, &good));
        expect_within(WAIT, "seven failures of the bad relay", || {
            store.query.count_trailing_sync_failures("bad").unwrap() == 7
        });
        let more = fx.wait_for_requests(Duration::from_millis(300), |rs| {
            rs.iter().filter(|r| r.relay_id() == Some("bad")).count() > 7
        });
        assert!(!more, "{status}: tried again after giving up");
        let text = metrics.render(&Default::default());
        println!(
            "{status} for one relay: {} tries, then given up; breaker opened {} times",
            fx.requests_for("bad").len(),
            metric(&text, "zooid_sync_breaker_opened_total")
        );
        assert_eq!(fx.requests_for("bad").len(), 7, "{status}");
        assert_eq!(metric(&text, "zooid_sync_relays_given_up_total"), 1.0);
        assert_eq!(metric(&text, "zooid_sync_breaker_opened_total"), 0.0);
        worker.shutdown().unwrap();
    }
}

#[test]
fn a_flapping_zooid_converges_and_opens_the_breaker_a_bounded_number_of_times() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let mut env = env_for(&fx.url());
    env.retry = RetryPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        max_attempts: 6,
        jitter: false,
    };
    let store = open_store(&db);
    let infra = Infra::new(store.query.clone(), store.command.clone(), &env);
    let metrics = infra.metrics();
    let worker = infra.spawn().unwrap();
    fx.inject("*", Fault::EveryOther(503));
    let started = Instant::now();
    let relays = ids("flap", 30);
    for id in &relays {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    expect_within(WAIT, "every relay synced", || all_synced(&store, &relays));
    let took = started.elapsed();
    worker.shutdown().unwrap();
    let opened = metric(
        &metrics.render(&Default::default()),
        "zooid_sync_breaker_opened_total",
    );
    // The bound the breaker promises over a window W: log2(cap / base) + 1 + W / cap.
    let bound = (100f64 / 20.0).log2() + 1.0 + took.as_secs_f64() / 0.1;
    println!(
        "flapping: 30 relays synced in {took:?}, {} requests, breaker opened {opened} times \
         (bound {bound:.0})",
        fx.requests().len()
    );
    assert!(opened <= bound, "opened {opened} times, bound {bound}");
    for id in &relays {
        assert!(
            store.query.count_trailing_sync_failures(id).unwrap() == 0,
            "{id} is synced, its failures behind it"
        );
    }
}

#[test]
fn sigkill_during_an_outage_loses_nothing_and_the_restart_resumes_probing() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let relays = ids("k", 10);
    {
        let store = open_store(&db);
        for id in &relays {
            store.command.create_relay(id, &settings(id)).unwrap();
        }
    }
    fx.inject("*", down());
    let mut first = daemon(&fx, &db, None);
    let query = open_store(&db).query;
    expect_within(WAIT, "the outage recorded", || {
        query.zooid_outage("default").unwrap().is_some()
    });
    let status = Command::new(env!("CARGO_BIN_EXE_zooid-sync"))
        .env_clear()
        .env("DATABASE_PATH", &db)
        .arg("status")
        .output()
        .unwrap();
    let first_line = String::from_utf8_lossy(&status.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        first_line.starts_with("zooid unreachable since")
            && first_line.contains("10 relays waiting"),
        "{first_line}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let before_restart = fx.requests().len();

    let mut second = daemon(&fx, &db, None);
    expect_within(WAIT, "the restarted daemon to probe", || {
        probes(&fx.requests()[before_restart..]).len() >= 3
    });
    assert!(
        relay_requests(&fx.requests()[before_restart..]).is_empty(),
        "the restart sent relays into the outage"
    );
    fx.clear_faults();
    expect_within(WAIT, "every relay synced after zooid's return", || {
        relays
            .iter()
            .all(|id| query.get_relay(id).unwrap().is_some_and(|r| r.synced))
    });
    expect_within(WAIT, "the outage cleared", || {
        query.zooid_outage("default").unwrap().is_none()
    });
    terminate(&mut second);
    for id in &relays {
        assert!(fx.relay(id).is_some(), "{id} reached zooid");
    }
}

#[test]
fn a_catch_up_never_exceeds_the_rate_ceiling() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let mut env: Env = env_for(&fx.url());
    let rate = 200.0;
    env.sync_max_rate = rate;
    let store = open_store(&db);
    let relays = ids("c", 1000);
    for id in &relays {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env)
        .spawn()
        .unwrap();
    expect_within(WAIT, "the catch-up done", || all_synced(&store, &relays));
    worker.shutdown().unwrap();
    let starts: Vec<Instant> = fx.requests().iter().map(|r| r.started).collect();
    let first = starts[0];
    let window = Duration::from_secs(1);
    let in_window = |from: Instant| {
        starts
            .iter()
            .filter(|t| **t >= from && **t < from + window)
            .count()
    };
    let busiest = starts.iter().map(|t| in_window(*t)).max().unwrap();
    // Past the first second the burst is spent: the rate alone, and a request of slack for
    // the moment a request is stamped at the fixture.
    let busiest_after_burst = starts
        .iter()
        .filter(|t| **t >= first + window)
        .map(|t| in_window(*t))
        .max()
        .unwrap_or(0);
    let took = *starts.last().unwrap() - first;
    println!(
        "catch-up of 1 000 at SYNC_MAX_RATE={rate}: {} requests in {took:?}; busiest second \
         {busiest}, busiest after the first second {busiest_after_burst}",
        starts.len()
    );
    // Slack for the time between a request leaving and the fixture stamping it: with the
    // rest of the suite running on the same two cores, stamps arrive in small bunches. (With
    // no ceiling the catch-up sends all 1 000 in well under a second.)
    let slack = rate * 0.1 + 5.0;
    assert!(
        busiest as f64 <= 2.0 * rate + slack,
        "{busiest} in one second"
    );
    assert!(
        busiest_after_burst as f64 <= rate + slack,
        "{busiest_after_burst} in one second"
    );
}

/// `zooid-sync run` with a relay whose request hangs at zooid; answers the daemon once the
/// request is in flight, with its standard error piped.
fn daemon_with_a_hanging_request(
    fx: &zooid_sync::fixture::FixtureZooid,
    db: &std::path::Path,
    timeout: &str,
) -> std::process::Child {
    fx.inject("*", Fault::Hang);
    let mut cmd = zooid_sync(fx, db);
    cmd.env("RUST_LOG", "info")
        .env("ZOOID_TIMEOUT", timeout)
        .args(["run", "--feed-interval", "10ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    assert!(fx.wait_for_requests(Duration::from_secs(20), |rs| !rs.is_empty()));
    child
}

fn signal(child: &std::process::Child, name: &str) {
    Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
}

#[test]
fn stopping_while_zooid_hangs_probes_nothing_and_records_no_outage() {
    let (fx, _dir, db, store) = one_relay("alpha");
    let mut run = daemon_with_a_hanging_request(&fx, &db, "1s");
    signal(&run, "TERM");
    let status = wait_for_exit(&mut run, Duration::from_secs(20)).expect("stopped");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let probes = fx
        .requests()
        .iter()
        .filter(|r| r.path.contains(zooid_sync::PROBE_ID))
        .count();
    assert_eq!(probes, 0, "probed while stopping: {stderr}");
    assert!(
        store.query.zooid_outage("default").unwrap().is_none(),
        "{stderr}"
    );
    assert!(!stderr.contains("zooid is unavailable"), "{stderr}");
    assert!(stderr.contains("synced at the next start"), "{stderr}");
    let alpha = store.query.get_relay("alpha").unwrap().unwrap();
    assert!(!alpha.synced && alpha.sync_error.is_empty(), "{alpha:?}");
    assert_eq!(
        store.query.count_trailing_sync_failures("alpha").unwrap(),
        0
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let mut run = daemon_with_a_hanging_request(&fx, &db, "60s");
    // Pending signals of one kind coalesce: the second goes once the first was taken.
    let (told, heard) = crossbeam_channel::unbounded();
    let stderr = run.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("received signal") {
                let _ = told.send(());
            }
        }
    });
    signal(&run, "TERM");
    heard.recv_timeout(Duration::from_secs(10)).unwrap();
    signal(&run, "TERM");
    let status = wait_for_exit(&mut run, Duration::from_secs(10));
    let _ = run.kill();
    let status = status.expect("the second SIGTERM stopped it before the 60 s timeout");
    assert_eq!(status.code(), Some(128 + 15));
}

/// How zooid refuses the robot in [`zooid_refusing_the_robot_is_waited_out_then_fixed`].
enum Refusal {
    NotWhitelisted,
    WrongHostName,
}

/// zooid refuses every request for much longer than the whole retry schedule, then the
/// operator fixes zooid's side: no relay gives up, zooid is only probed meanwhile, and every
/// relay syncs by itself soon after the fix.
fn zooid_refusing_the_robot_is_waited_out_then_fixed(refusal: Refusal) {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = Store::open(&db).unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    for id in &ids {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    match refusal {
        Refusal::NotWhitelisted => fx.set_whitelist(&[]),
        Refusal::WrongHostName => fx.set_api_host(Some("zooid.example.test:3334")),
    }
    let port = free_port();
    let mut run = {
        let mut cmd = zooid_sync(&fx, &db);
        cmd.env("RUST_LOG", "info")
            .env("SYNC_RETRY_BASE", "50ms")
            .env("SYNC_RETRY_CAP", "200ms")
            .env("SYNC_RETRY_MAX_ATTEMPTS", "2") // the whole schedule: 150 ms
            .args(["run", "--feed-interval", "10ms", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().unwrap()
    };
    expect_within(WAIT, "the refusal seen in /metrics", || {
        local_get(port, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "zooid_sync_zooid_refuses_robot") == 1.0)
    });
    // A relay request already on its way when the breaker opened may still arrive: the
    // window starts once those are answered.
    std::thread::sleep(Duration::from_millis(300));
    let opened = Instant::now();
    let sent_when_opened = fx.requests().len();
    // Ten times the whole retry schedule.
    while opened.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, health) = local_get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{health}");
    assert!(
        health.contains("zooid: refuses zooid-sync since"),
        "{health}"
    );
    let out = run_cli(&fx, &db, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("zooid refuses zooid-sync since"),
        "{text}"
    );
    match refusal {
        Refusal::NotWhitelisted => {
            let hex = robot().public_key().to_hex();
            assert!(first.contains(&format!("Add {hex} to it")), "{first}");
        }
        Refusal::WrongHostName => assert!(first.contains("API_HOST"), "{first}"),
    }
    assert!(!text.contains("gave up"), "{text}");
    for id in &ids {
        assert_eq!(
            store.query.count_trailing_sync_failures(id).unwrap(),
            0,
            "{id}"
        );
    }
    let meanwhile: Vec<RecordedRequest> = fx.requests()[sent_when_opened..].to_vec();
    assert!(
        meanwhile.iter().all(|r| r.path.contains(PROBE_ID)),
        "only probes while refused: {:?}",
        meanwhile.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    // One probe per backoff interval (the cap, 200 ms, by now): at most 1500 / 200 + 1.
    assert!(meanwhile.len() <= 9, "{} probes in 1.5 s", meanwhile.len());

    match refusal {
        Refusal::NotWhitelisted => fx.set_whitelist(&[robot().public_key().to_hex()]),
        Refusal::WrongHostName => fx.set_api_host(None),
    }
    let fixed = Instant::now();
    expect_within(
        Duration::from_secs(10),
        "every relay synced after the fix",
        || all_synced(&store, &ids),
    );
    println!("every relay synced {:?} after the fix", fixed.elapsed());
    expect_within(WAIT, "the refusal over in /metrics", || {
        local_get(port, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "zooid_sync_zooid_refuses_robot") == 0.0)
    });
    terminate(&mut run);
}

#[test]
fn a_robot_missing_from_the_whitelist_makes_relays_wait_not_give_up() {
    zooid_refusing_the_robot_is_waited_out_then_fixed(Refusal::NotWhitelisted);
}

#[test]
fn a_host_name_that_is_not_zooids_api_makes_relays_wait_not_give_up() {
    zooid_refusing_the_robot_is_waited_out_then_fixed(Refusal::WrongHostName);
}
