//! The fault suite: zooid down, slow or misbehaving, a busy database, bad rows, and signed
//! requests that stay fresh. Each test is bounded by deadlines; every relay must converge and
//! nothing may be lost.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use rusqlite::{params, Connection};
use zooid_sync::fixture::{Fault, FixtureZooid};
use zooid_sync::manual::{self, Selection};
use zooid_sync::RetryPolicy;
use zooid_sync::{status, Env, Infra, InfraHandle, Store};

const WAIT: Duration = Duration::from_secs(20);

struct Rig {
    fx: FixtureZooid,
    _dir: tempfile::TempDir,
    env: Env,
    store: Store,
}

impl Rig {
    fn new(tune: impl FnOnce(&mut Env)) -> Rig {
        let fx = fixture();
        let (dir, path) = temp_db();
        let mut env = env_for(&fx.url());
        tune(&mut env);
        let store = Store::open(&path).unwrap();
        Rig {
            fx,
            _dir: dir,
            env,
            store,
        }
    }

    fn start(&self) -> InfraHandle {
        Infra::new(
            self.store.query.clone(),
            self.store.command.clone(),
            &self.env,
        )
        .spawn()
        .unwrap()
    }

    fn create(&self, ids: &[String]) {
        for id in ids {
            self.store.command.create_relay(id, &settings(id)).unwrap();
        }
    }

    fn all_synced(&self, ids: &[String]) -> bool {
        ids.iter().all(|id| {
            self.store
                .query
                .get_relay(id)
                .unwrap()
                .is_some_and(|r| r.synced)
        })
    }

    fn completions(&self, id: &str) -> i64 {
        Connection::open(self.store.query.path())
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM activity WHERE resource_id = ?1 AND activity_type = 'complete_relay_sync'",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn zooid_down_for_several_attempts_then_back_every_relay_converges() {
    let rig = Rig::new(|env| {
        env.retry = RetryPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(80),
            max_attempts: 6,
            jitter: true,
        }
    });
    let relays = ids("r", 20);
    // Down for the first three attempts of every relay: 60 refused requests.
    rig.fx.inject_times(
        "*",
        Fault::Status {
            status: 503,
            body: "{\"error\":\"down\"}".into(),
        },
        60,
    );
    let worker = rig.start();
    rig.create(&relays);
    expect_within(WAIT, "every relay synced", || rig.all_synced(&relays));
    worker.shutdown().unwrap();
    assert_eq!(rig.fx.relay_ids().len(), 20);
    for id in &relays {
        assert_eq!(rig.completions(id), 1, "{id}");
    }
}

#[test]
fn a_relay_that_gave_up_is_visible_in_status_and_recovers_with_sync() {
    let rig = Rig::new(|env| env.retry.max_attempts = 2);
    rig.fx.inject(
        "stuck",
        Fault::Status {
            status: 502,
            body: "{}".into(),
        },
    );
    let worker = rig.start();
    rig.create(&["stuck".to_string()]);
    expect_within(WAIT, "three failures", || {
        rig.store
            .query
            .count_trailing_sync_failures("stuck")
            .unwrap()
            == 3
    });
    let report = status::report(&rig.store.query, None, &rig.env.retry).unwrap();
    assert_eq!(report[0].next_retry, "gave up");
    assert_eq!(report[0].attempts, 3);
    rig.fx.clear_faults();
    let stuck = Selection::Ids(vec!["stuck".into()]);
    let report = manual::run(&rig.env, &rig.store, &stuck, manual::DEFAULT_ANSWER_TIMEOUT).unwrap();
    assert_eq!(report.answers[0].outcome, "synced", "{report:?}");
    let report = status::report(&rig.store.query, None, &rig.env.retry).unwrap();
    assert!(report[0].synced && report[0].next_retry.is_empty());
    worker.shutdown().unwrap();
}

#[test]
fn a_slow_zooid_times_out_and_never_holds_the_whole_pool() {
    let rig = Rig::new(|env| {
        env.zooid_timeout = Duration::from_millis(400);
        env.sync_workers = 4;
        env.retry.base = Duration::from_secs(60); // no retry during the test
        env.retry.cap = Duration::from_secs(60);
    });
    let slow = ids("slow", 3);
    let fast = ids("fast", 20);
    for id in &slow {
        rig.fx.inject(id, Fault::Hang);
    }
    let worker = rig.start();
    rig.create(&slow);
    rig.create(&fast);
    // Three workers hang on the slow relays; the fourth carries all the others.
    expect_within(WAIT, "the fast relays synced", || rig.all_synced(&fast));
    // Each slow write timed out while zooid answered the others: zooid is slow, not
    // refusing. Nothing counts toward giving up; each is sent again after the backoff.
    expect_within(WAIT, "the slow writes timed out", || {
        rig.fx
            .requests()
            .iter()
            .filter(|r| r.relay_id().is_some_and(|id| id.starts_with("slow")))
            .count()
            == 3
            && rig.fx.max_in_flight("slow0") == 1
    });
    std::thread::sleep(Duration::from_millis(500)); // past the 400 ms timeout
    for id in &slow {
        let relay = rig.store.query.get_relay(id).unwrap().unwrap();
        assert!(!relay.synced && relay.sync_error.is_empty(), "{relay:?}");
        assert_eq!(rig.store.query.count_trailing_sync_failures(id).unwrap(), 0);
    }
    worker.shutdown().unwrap();
}

#[test]
fn misbehaving_answers_are_failures_and_the_relays_converge() {
    let rig = Rig::new(|_| {});
    let huge = format!("{{\"error\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let faults = [
        ("garbage", Fault::Raw(b"\x00\x01 not http at all\r\n\r\n".to_vec()), "failed"),
        ("truncated", Fault::Raw(b"HTTP/1.1 201 Created\r\ncontent-length: 500\r\n\r\n{\"mess".to_vec()), "failed"),
        ("redirect", Fault::Raw(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: 0\r\n\r\n".to_vec()), "with 307"),
        ("wrongtype", Fault::Raw(b"HTTP/1.1 500 Oops\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\r\n<h1>oops</h1>".to_vec()), "with 500: <h1>oops</h1>"),
        ("huge", Fault::Status { status: 500, body: huge }, "bytes in all"),
        ("reset", Fault::Drop, "failed"),
    ];
    for (id, fault, _) in &faults {
        rig.fx.inject_times(id, fault.clone(), 1);
    }
    let worker = rig.start();
    let relays: Vec<String> = faults.iter().map(|(id, _, _)| id.to_string()).collect();
    rig.create(&relays);
    expect_within(WAIT, "every relay synced after its retry", || {
        rig.all_synced(&relays)
    });
    worker.shutdown().unwrap();
    let db = Connection::open(rig.store.query.path()).unwrap();
    for (id, _, expected) in &faults {
        let failures: Vec<String> = db
            .prepare(
                "SELECT detail FROM activity WHERE resource_id = ?1 AND activity_type = 'fail_relay_sync'",
            )
            .unwrap()
            .query_map([id], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // A raw answer is followed by a close that the answer did not announce: the next
        // request on that kept-alive connection may fail too, whichever relay it carries.
        // So a relay may have one failure more than its own fault; its own is among them.
        assert!(
            failures.iter().any(|f| f.contains(expected)),
            "{id}: {failures:?}"
        );
        for failure in &failures {
            assert!(
                failure.len() < 2048,
                "{id}: error of {} bytes",
                failure.len()
            );
        }
        assert_eq!(rig.completions(id), 1, "{id}");
    }
}

#[test]
fn a_long_host_write_transaction_delays_outcomes_but_loses_none() {
    let rig = Rig::new(|_| {});
    let relays = ids("r", 10);
    rig.create(&relays);
    // The host takes the write lock and holds it while every request goes out.
    let host = Connection::open(rig.store.query.path()).unwrap();
    host.execute_batch("BEGIN IMMEDIATE; UPDATE relay SET plan_id = plan_id WHERE id = 'r0';")
        .unwrap();
    let worker = rig.start();
    // Each of the four workers sends its request, then waits on the lock to record it.
    let sent = rig.fx.wait_for_requests(WAIT, |rs| rs.len() >= 4);
    assert!(sent);
    assert!(
        !rig.all_synced(&relays),
        "nothing can be recorded while the host holds the lock"
    );
    host.execute_batch("COMMIT").unwrap();
    expect_within(WAIT, "every outcome recorded", || rig.all_synced(&relays));
    worker.shutdown().unwrap();
    for id in &relays {
        assert_eq!(rig.completions(id), 1, "{id}");
    }
    assert_eq!(rig.fx.requests().len(), 10, "nothing was sent twice");
}

#[test]
fn outcomes_that_cannot_be_written_are_written_again_without_sending_anything_twice() {
    let fx = fixture();
    let (_dir, path) = temp_db();
    let env = env_for(&fx.url());
    let store = Store::open_with(
        &path,
        zooid_sync::StoreOptions {
            busy_timeout: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap();
    let relays = ids("r", 12);
    for id in &relays {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    // The host holds the write lock far longer than the busy timeout.
    let host = Connection::open(&path).unwrap();
    host.execute_batch("BEGIN IMMEDIATE; UPDATE relay SET plan_id = plan_id WHERE id = 'r0';")
        .unwrap();
    let infra = Infra::new(store.query.clone(), store.command.clone(), &env);
    let metrics = infra.metrics();
    let worker = infra.spawn().unwrap();
    assert!(fx.wait_for_requests(WAIT, |rs| rs.len() >= relays.len()));
    expect_within(WAIT, "every outcome waiting to be written", || {
        store.query.write_health().waiting == relays.len()
    });
    let health = store.query.write_health();
    assert!(health.failures >= relays.len() as u64, "{health:?}");
    let (_, error) = health.failing.clone().expect("writes are failing");
    assert!(error.contains("locked"), "{error}");
    let text = metrics.render(&zooid_sync::metrics::Read {
        pending: None,
        writes: Some(health),
    });
    assert!(text.contains("zooid_sync_database_writable 0"), "{text}");
    // Several write retries pass while the lock is held; nothing goes to zooid again.
    let failures = store.query.write_health().failures;
    expect_within(WAIT, "the writes tried again", || {
        store.query.write_health().failures > failures
    });
    assert_eq!(fx.requests().len(), relays.len(), "nothing was sent twice");
    host.execute_batch("COMMIT").unwrap();
    let all_synced = || {
        relays
            .iter()
            .all(|id| store.query.get_relay(id).unwrap().is_some_and(|r| r.synced))
    };
    expect_within(
        WAIT,
        "every relay recorded once the lock is gone",
        all_synced,
    );
    let health = store.query.write_health();
    assert!(
        health.failing.is_none() && health.waiting == 0,
        "{health:?}"
    );
    worker.shutdown().unwrap();
    assert_eq!(fx.requests().len(), relays.len(), "nothing was sent twice");
    let conn = Connection::open(&path).unwrap();
    for id in &relays {
        let (fails, completes): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*) FILTER (WHERE activity_type = 'fail_relay_sync'),
                        COUNT(*) FILTER (WHERE activity_type = 'complete_relay_sync')
                 FROM activity WHERE resource_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (fails, completes),
            (0, 1),
            "{id}: recorded once, as a success"
        );
        assert_eq!(fx.relay(id).unwrap()["schema"], id.as_str());
    }
}

#[test]
fn a_relay_deleted_while_its_sync_is_in_flight_gets_no_outcome() {
    let rig = Rig::new(|_| {});
    rig.create(&ids("d", 1));
    rig.fx
        .inject("d0", Fault::Delay(Duration::from_millis(400)));
    let worker = rig.start();
    assert!(rig.fx.wait_for_requests(WAIT, |rs| !rs.is_empty()));
    let host = Connection::open(rig.store.query.path()).unwrap();
    host.execute("DELETE FROM relay WHERE id = 'd0'", [])
        .unwrap();
    expect_within(WAIT, "zooid answered", || rig.fx.relay("d0").is_some());
    rig.create(&ids("e", 1)); // an outcome after d0's, so d0's was handled
    expect_within(WAIT, "e0 synced", || rig.all_synced(&ids("e", 1)));
    worker.shutdown().unwrap();
    let (outcomes, ownerless): (i64, i64) = host
        .query_row(
            "SELECT COUNT(*) FILTER (WHERE resource_id = 'd0'
                                       AND activity_type LIKE '%_relay_sync'),
                    COUNT(*) FILTER (WHERE tenant_pubkey = '')
             FROM activity",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((outcomes, ownerless), (0, 0));
}

#[test]
fn a_panic_in_one_relays_sync_fails_that_relay_and_the_worker_goes_on() {
    let rig = Rig::new(|_| {});
    let relays = ids("p", 6);
    let infra = Infra::new(rig.store.query.clone(), rig.store.command.clone(), &rig.env);
    infra.inject_panic("p2", 2);
    let metrics = infra.metrics();
    let worker = infra.spawn().unwrap();
    rig.create(&relays);
    expect_within(WAIT, "every relay synced", || rig.all_synced(&relays));
    worker.shutdown().unwrap();
    assert!(
        metrics.dead_threads().is_empty(),
        "{:?}",
        metrics.dead_threads()
    );
    let conn = Connection::open(rig.store.query.path()).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT activity_type, detail FROM activity
             WHERE resource_id = 'p2' AND activity_type LIKE '%_relay_sync' ORDER BY seq",
        )
        .unwrap();
    let history: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        history.len(),
        3,
        "two failures, then a success: {history:?}"
    );
    for (kind, detail) in &history[..2] {
        assert_eq!(kind, "fail_relay_sync");
        assert!(
            detail.starts_with("sending the sync failed unexpectedly (a bug in zooid-sync"),
            "{detail}"
        );
        assert!(detail.contains("injected panic"), "{detail}");
    }
    assert_eq!(history[2].0, "complete_relay_sync");
    for id in relays.iter().filter(|id| *id != "p2") {
        assert_eq!(rig.completions(id), 1, "{id}");
    }
}

#[test]
fn a_database_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = format!("{:#}", Store::open(dir.path()).unwrap_err());
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = format!("{:#}", Store::open(&garbage).unwrap_err());
    assert!(
        err.contains("garbage.db") && err.contains("not a database"),
        "{err}"
    );
}

#[test]
fn each_bad_column_is_named_nothing_is_sent_for_it_and_the_rest_syncs() {
    let rig = Rig::new(|env| {
        env.retry.base = Duration::from_secs(60);
        env.retry.cap = Duration::from_secs(60);
    });
    let host = Connection::open(rig.store.query.path()).unwrap();
    let insert = |id: &str, column: &str, value: &str| {
        host.execute(
            "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, created_at, updated_at)
             VALUES (?1, ?2, 's_' || hex(randomblob(4)), 'd' || lower(hex(randomblob(4))), 0, 0)",
            params![id, OWNER],
        )
        .unwrap();
        if !column.is_empty() {
            host.execute(
                &format!("UPDATE relay SET {column} = {value} WHERE id = ?1"),
                [id],
            )
            .unwrap();
        }
    };
    let cases = [
        (
            "owner-empty",
            "tenant_pubkey",
            "''",
            "is invalid: tenant_pubkey ",
        ),
        (
            "owner-short",
            "tenant_pubkey",
            "'abc'",
            "is invalid: tenant_pubkey ",
        ),
        (
            "owner-long",
            "tenant_pubkey",
            "hex(randomblob(40))",
            "is invalid: tenant_pubkey ",
        ),
        (
            "owner-int",
            "tenant_pubkey",
            "42",
            "tenant_pubkey \"42\" is not a public key",
        ),
        (
            "schema-dash",
            "schema",
            "'with-dash'",
            "is invalid: schema ",
        ),
        (
            "schema-long",
            "schema",
            "'s' || hex(randomblob(40))",
            "is invalid: schema ",
        ),
        ("sub-empty", "subdomain", "''", "subdomain is empty"),
        ("sub-slash", "subdomain", "'a/b'", "is invalid: subdomain "),
        ("status", "status", "'paused'", "unknown status \"paused\""),
        (
            "flag-two",
            "groups_enabled",
            "2",
            "column groups_enabled holds 2",
        ),
        (
            "flag-text",
            "push_enabled",
            "'yes'",
            "column push_enabled holds text",
        ),
        (
            "not-utf8",
            "info_name",
            "CAST(x'c328' AS TEXT)",
            "column info_name is not valid UTF-8",
        ),
        (
            "revision-real",
            "revision",
            "1.5",
            "column revision holds a real number",
        ),
        ("a/b", "", "", "is invalid: id must"),
        ("..", "", "", "is invalid: id must"),
        ("has space", "", "", "is invalid: id must"),
        ("pct%2F", "", "", "is invalid: id must"),
    ];
    for (id, column, value, _) in &cases {
        insert(id, column, value);
    }
    insert("good", "", "");
    let worker = rig.start();
    expect_within(WAIT, "the good relay synced", || {
        rig.all_synced(&["good".to_string()])
    });
    expect_within(WAIT, "every bad relay failed", || {
        cases
            .iter()
            .all(|(id, ..)| rig.store.query.count_trailing_sync_failures(id).unwrap() == 1)
    });
    worker.shutdown().unwrap();
    let conn = Connection::open(rig.store.query.path()).unwrap();
    for (id, _, _, expected) in &cases {
        let detail: String = conn
            .query_row(
                "SELECT detail FROM activity WHERE resource_id = ?1 AND activity_type = 'fail_relay_sync'",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(detail.contains(expected), "{id}: {detail}");
    }
    let sent: Vec<String> = rig.fx.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(sent, ["/relay/good"], "nothing is sent for a bad relay");
}

#[test]
fn every_request_carries_a_fresh_signature_bound_to_it() {
    let rig = Rig::new(|_| {});
    let worker = rig.start();
    rig.create(&ids("r", 3));
    expect_within(WAIT, "three relays synced", || rig.all_synced(&ids("r", 3)));
    let mut s = settings("r0");
    s.info_name = "changed".into();
    rig.store.command.update_relay("r0", &s).unwrap();
    expect_within(WAIT, "the update synced", || rig.all_synced(&ids("r", 3)));
    assert_eq!(rig.fx.requests().len(), 4);
    worker.shutdown().unwrap();
    let requests = rig.fx.requests();
    let mut seen = std::collections::HashSet::new();
    for r in &requests {
        let header = r.authorization.as_deref().unwrap();
        assert!(seen.insert(header.to_string()), "a header was reused");
        let b64 = header.strip_prefix("Nostr ").unwrap();
        let event: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap();
        let tag = |name: &str| {
            event["tags"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t[0] == name)
                .map(|t| t[1].as_str().unwrap().to_string())
        };
        assert_eq!(event["kind"], 27235);
        assert_eq!(tag("u").unwrap(), format!("{}{}", rig.fx.url(), r.path));
        assert_eq!(tag("method").unwrap(), r.method);
        let hash = hex(bitcoin_hashes::sha256::Hash::hash(&r.body).as_byte_array());
        assert_eq!(tag("payload").unwrap(), hash);
        let age = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - event["created_at"].as_i64().unwrap();
        assert!((0..60).contains(&age), "created_at is {age} s old");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
