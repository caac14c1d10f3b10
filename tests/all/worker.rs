//! The real worker (`Infra`: dispatcher, timer wheel, pool) against the fixture zooid over
//! HTTP, with a real SQLite file and retry delays in milliseconds. Waits are on conditions with
//! deadlines; the few "nothing more happens" checks wait a bounded time for something that
//! must not come.

use std::time::{Duration, Instant};

use crate::common::*;
use rusqlite::Connection;
use serde_json::Value;
use zooid_sync::fixture::{Fault, FixtureZooid, RecordedRequest};
use zooid_sync::manual::{self, Selection};
use zooid_sync::{Activity, HostError, StoreOptions};
use zooid_sync::{Env, Infra, InfraHandle, Store};

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    fx: FixtureZooid,
    _dir: tempfile::TempDir,
    env: Env,
    store: Store,
    worker: Option<InfraHandle>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(|_| {}, StoreOptions::default())
    }

    fn with(tune: impl FnOnce(&mut Env), options: StoreOptions) -> Harness {
        let fx = fixture();
        let (dir, path) = temp_db();
        let mut env = env_for(&fx.url());
        tune(&mut env);
        let store = Store::open_with(&path, options).unwrap();
        Harness {
            fx,
            _dir: dir,
            env,
            store,
            worker: None,
        }
    }

    fn start(&mut self) {
        let infra = Infra::new(
            self.store.query.clone(),
            self.store.command.clone(),
            &self.env,
        );
        self.worker = Some(infra.spawn().unwrap());
    }

    fn stop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().unwrap();
        }
    }

    fn create(&self, id: &str) {
        self.store.command.create_relay(id, &settings(id)).unwrap();
    }

    fn relay(&self, id: &str) -> zooid_sync::Relay {
        self.store.query.get_relay(id).unwrap().unwrap()
    }

    fn wait_synced(&self, id: &str) {
        expect_within(WAIT, &format!("relay {id} synced"), || {
            self.store
                .query
                .get_relay(id)
                .unwrap()
                .is_some_and(|r| r.synced)
        });
    }

    fn wait_requests(&self, id: &str, n: usize) -> Vec<RecordedRequest> {
        let ok = self.fx.wait_for_requests(WAIT, |rs| {
            rs.iter().filter(|r| r.relay_id() == Some(id)).count() >= n
        });
        assert!(
            ok,
            "relay {id}: expected {n} requests, got {:?}",
            methods(&self.fx.requests_for(id))
        );
        self.fx.requests_for(id)
    }

    fn failures(&self, id: &str) -> u32 {
        self.store.query.count_trailing_sync_failures(id).unwrap()
    }

    fn host(&self) -> Connection {
        Connection::open(self.store.query.path()).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every retry waits exactly `ms`.
fn fixed_backoff(ms: u64) -> impl FnOnce(&mut Env) {
    move |env| {
        env.retry.base = Duration::from_millis(ms);
        env.retry.cap = Duration::from_millis(ms);
    }
}

/// An activity as a host would publish it on the bus.
fn bus_activity(resource_type: &str, activity_type: &str, resource_id: &str) -> Activity {
    Activity {
        seq: 0,
        id: format!("{resource_type}-{activity_type}-{resource_id}"),
        tenant_pubkey: OWNER.into(),
        created_at: 0,
        activity_type: activity_type.into(),
        resource_type: resource_type.into(),
        resource_id: resource_id.into(),
        detail: String::new(),
    }
}

fn methods(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.status))
        .collect()
}

fn secret_of(r: &RecordedRequest) -> Option<String> {
    r.json
        .as_ref()
        .and_then(|j| j.get("secret"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[test]
fn startup_syncs_pending_relays_at_once_and_failed_ones_after_their_backoff() {
    let mut h = Harness::with(fixed_backoff(1000), StoreOptions::default());
    h.create("fresh");
    h.create("failed");
    h.store
        .command
        .fail_relay_sync("failed", "zooid answered 503")
        .unwrap();
    let started = Instant::now();
    h.start();
    h.wait_synced("fresh");
    h.wait_synced("failed");
    let fresh = &h.fx.requests_for("fresh")[0];
    let failed = &h.fx.requests_for("failed")[0];
    assert!(
        fresh.started - started < Duration::from_millis(1000),
        "synced at once"
    );
    assert!(
        failed.started - started >= Duration::from_millis(1000),
        "waited for retry 1's backoff"
    );
    assert_eq!(methods(&h.fx.requests()), ["POST 201", "POST 201"]);
}

#[test]
fn only_relay_changes_and_failures_are_acted_on() {
    let mut h = Harness::with(|env| env.sync_workers = 1, StoreOptions::default());
    h.start();
    h.create("alpha");
    h.wait_synced("alpha");
    for (resource, kind) in [
        ("tenant", "update_relay"),
        ("relay", "complete_relay_sync"),
        ("relay", "rename_relay"),
        ("plan", "fail_relay_sync"),
    ] {
        h.store
            .command
            .notify
            .send(bus_activity(resource, kind, "alpha"));
    }
    // With one worker and an in-order dispatcher, a job for alpha would run before this one.
    h.create("sentinel");
    h.wait_synced("sentinel");
    assert_eq!(
        h.fx.requests_for("alpha").len(),
        1,
        "{:?}",
        methods(&h.fx.requests_for("alpha"))
    );
}

#[test]
fn new_relays_are_created_and_known_ones_patched_without_a_secret() {
    let mut h = Harness::new();
    h.start();
    h.create("alpha");
    h.wait_synced("alpha");
    let mut s = settings("alpha");
    s.info_name = "Renamed".into();
    h.store.command.update_relay("alpha", &s).unwrap();
    h.wait_synced("alpha");
    let requests = h.wait_requests("alpha", 2);
    assert_eq!(methods(&requests), ["POST 201", "PATCH 200"]);
    let secret = secret_of(&requests[0]).unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret_of(&requests[1]).is_none());
    let stored = h.fx.relay("alpha").unwrap();
    assert_eq!(stored["info"]["name"], "Renamed");
    assert_eq!(stored["secret"], secret.as_str());
    // The secret is never stored in the database.
    let dump: String = h
        .host()
        .query_row(
            "SELECT group_concat(detail) || group_concat(id) FROM activity",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!dump.contains(&secret));
}

#[test]
fn the_body_sent_is_the_relay_body_with_every_section() {
    let mut h = Harness::new();
    h.start();
    let mut s = settings("beta");
    s.blossom_enabled = true;
    s.livekit_enabled = true;
    s.members_can_invite = true;
    s.push_enabled = true;
    s.policy_public_read = true;
    h.store.command.create_relay("beta", &s).unwrap();
    h.wait_synced("beta");
    let sent = h.fx.requests_for("beta")[0].json.clone().unwrap();
    let relay = h.relay("beta");
    let secret = zooid_sync::Secret::new(secret_of(&h.fx.requests_for("beta")[0]).unwrap());
    let expected =
        serde_json::to_value(zooid_sync::relay_body(&relay, &h.env, Some(&secret)).unwrap())
            .unwrap();
    assert_eq!(sent, expected);
    assert_eq!(sent["blossom"]["s3"]["key_prefix"], "beta");
    assert_eq!(sent["livekit"]["server_url"], "wss://livekit.example.com");
    assert_eq!(sent["roles"]["member"]["can_invite"], true);
    assert_eq!(sent["host"], "beta.relays.example.com");
}

#[test]
fn inactive_and_delinquent_relays_are_sent_inactive() {
    let mut h = Harness::new();
    h.start();
    h.create("alpha");
    h.wait_synced("alpha");
    h.store.command.deactivate_relay("alpha").unwrap();
    h.wait_synced("alpha");
    assert_eq!(h.fx.relay("alpha").unwrap()["inactive"], true);
    h.store.command.activate_relay("alpha").unwrap();
    h.wait_synced("alpha");
    assert_eq!(h.fx.relay("alpha").unwrap()["inactive"], false);
    let mut s = settings("alpha");
    s.status = zooid_sync::RelayStatus::Delinquent;
    h.store.command.update_relay("alpha", &s).unwrap();
    h.wait_synced("alpha");
    assert_eq!(h.fx.relay("alpha").unwrap()["inactive"], true);
    assert_eq!(
        methods(&h.fx.requests_for("alpha")),
        ["POST 201", "PATCH 200", "PATCH 200", "PATCH 200"]
    );
}

#[test]
fn failures_are_recorded_and_retried_with_doubling_capped_backoff_then_given_up() {
    let mut h = Harness::with(
        |env| {
            env.retry.base = Duration::from_millis(60);
            env.retry.cap = Duration::from_millis(150);
            env.retry.max_attempts = 4;
        },
        StoreOptions::default(),
    );
    h.fx.inject(
        "alpha",
        Fault::Status {
            status: 503,
            body: "{\"error\":\"zooid is down\"}".into(),
        },
    );
    h.start();
    h.create("alpha");
    let requests = h.wait_requests("alpha", 5);
    expect_within(WAIT, "five failures recorded", || h.failures("alpha") == 5);
    let relay = h.relay("alpha");
    assert!(!relay.synced);
    assert!(
        relay.sync_error.contains("503") && relay.sync_error.contains("zooid is down"),
        "{}",
        relay.sync_error
    );
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|w| w[1].started - w[0].finished)
        .collect();
    for (gap, expected) in gaps.iter().zip([60u64, 120, 150, 150]) {
        assert!(*gap >= Duration::from_millis(expected), "gaps {gaps:?}");
        assert!(
            *gap < Duration::from_millis(expected + 1000),
            "gaps {gaps:?}"
        );
    }
    // Given up: no sixth request.
    assert!(!h.fx.wait_for_requests(Duration::from_millis(600), |rs| {
        rs.iter().filter(|r| r.relay_id() == Some("alpha")).count() > 5
    }));

    // A manual sync (what `zooid-sync sync alpha` does) brings it back once zooid recovers.
    h.fx.clear_faults();
    let alpha = Selection::Ids(vec!["alpha".into()]);
    let report = manual::run(&h.env, &h.store, &alpha, manual::DEFAULT_ANSWER_TIMEOUT).unwrap();
    assert_eq!(report.answers[0].outcome, "synced", "{report:?}");
    assert_eq!(report.answers[0].detail, "POST 201");
    assert_eq!(h.failures("alpha"), 0);
    assert!(h.relay("alpha").sync_error.is_empty());
}

#[test]
fn a_relay_deleted_before_its_retry_is_left_alone() {
    let mut h = Harness::with(fixed_backoff(300), StoreOptions::default());
    h.fx.inject_times(
        "alpha",
        Fault::Status {
            status: 500,
            body: "{}".into(),
        },
        1,
    );
    h.start();
    h.create("alpha");
    expect_within(WAIT, "the failure recorded", || h.failures("alpha") == 1);
    h.host()
        .execute("DELETE FROM relay WHERE id = 'alpha'", [])
        .unwrap();
    assert!(!h
        .fx
        .wait_for_requests(Duration::from_millis(900), |rs| rs.len() > 1));
    // The worker is still alive and well.
    h.create("beta");
    h.wait_synced("beta");
}

#[test]
fn a_lagging_dispatcher_reconciles_from_the_database() {
    let mut h = Harness::with(
        |_| {},
        StoreOptions {
            bus_capacity: 1,
            ..StoreOptions::default()
        },
    );
    h.start();
    h.create("first");
    h.wait_synced("first");
    // Relays written by the host without any activity reaching the bus...
    let host = h.host();
    for i in 0..10 {
        host.execute(
            "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, created_at, updated_at) VALUES (?1, ?2, ?1, ?1, 0, 0)",
            rusqlite::params![format!("quiet{i}"), OWNER],
        )
        .unwrap();
    }
    // ...are found only by a reconcile, which a lag must trigger (updates of a relay that does
    // not exist fill the tiny queue).
    for _ in 0..2000 {
        h.store
            .command
            .notify
            .send(bus_activity("relay", "update_relay", "ghost"));
    }
    for i in 0..10 {
        h.wait_synced(&format!("quiet{i}"));
    }
}

#[test]
fn start_returns_when_the_bus_closes() {
    let fx = fixture();
    let (_dir, path) = temp_db();
    let env = env_for(&fx.url());
    let Store { query, command } = Store::open(&path).unwrap();
    command.create_relay("alpha", &settings("alpha")).unwrap();
    let infra = Infra::new(query.clone(), command.clone(), &env);
    let worker = std::thread::spawn(move || infra.start());
    expect_within(WAIT, "alpha synced", || {
        query.get_relay("alpha").unwrap().unwrap().synced
    });
    drop(command);
    expect_within(WAIT, "start to return", || worker.is_finished());
    worker.join().unwrap().unwrap();
}

#[test]
fn a_burst_costs_at_most_two_requests_and_never_two_in_flight() {
    let mut h = Harness::new();
    h.fx.inject_times("alpha", Fault::Delay(Duration::from_millis(300)), 1);
    h.start();
    h.create("alpha");
    expect_within(WAIT, "a request in flight", || {
        h.fx.max_in_flight("alpha") == 1
    });
    let mut s = settings("alpha");
    for n in 0..20 {
        s.info_name = format!("name {n}");
        h.store.command.update_relay("alpha", &s).unwrap();
    }
    h.wait_synced("alpha");
    assert_eq!(
        methods(&h.fx.requests_for("alpha")),
        ["POST 201", "PATCH 200"]
    );
    assert_eq!(h.fx.max_in_flight("alpha"), 1);
    assert_eq!(h.fx.relay("alpha").unwrap()["info"]["name"], "name 19");
    assert_eq!(h.relay("alpha").revision, 21);
}

#[test]
fn an_update_during_a_sync_survives_a_crash_after_the_stale_completion() {
    let mut h = Harness::new();
    h.create("alpha");
    // A manual sync of revision 1 is in flight (slow zooid) when the host changes the relay.
    h.fx.inject_times("alpha", Fault::Delay(Duration::from_millis(200)), 1);
    let env = h.env.clone();
    let database = h.store.query.path().to_path_buf();
    let in_flight = std::thread::spawn(move || {
        let store = zooid_sync::Store::open(&database).unwrap();
        manual::run(
            &env,
            &store,
            &Selection::Ids(vec!["alpha".into()]),
            manual::DEFAULT_ANSWER_TIMEOUT,
        )
        .unwrap()
    });
    expect_within(WAIT, "a request in flight", || {
        h.fx.max_in_flight("alpha") == 1
    });
    let mut s = settings("alpha");
    s.info_name = "Newer".into();
    h.store.command.update_relay("alpha", &s).unwrap();
    let report = in_flight.join().unwrap();
    let answer = &report.answers[0];
    assert_eq!(answer.outcome, "synced", "{answer:?}");
    assert!(answer.detail.contains("still pending"), "{answer:?}");
    assert!(!h.relay("alpha").synced, "revision 2 was never sent");
    // The process "dies" here: nothing re-syncs. The next start finds the relay pending.
    h.start();
    h.wait_synced("alpha");
    assert_eq!(
        methods(&h.fx.requests_for("alpha")),
        ["POST 201", "PATCH 200"]
    );
    assert_eq!(h.fx.relay("alpha").unwrap()["info"]["name"], "Newer");
}

#[test]
fn post_409_heals_to_patch_and_patch_404_heals_to_post() {
    let mut h = Harness::new();
    // zooid already has alpha (a create whose success was never recorded).
    h.create("alpha");
    let old_secret = "b".repeat(63) + "1";
    let mut existing =
        serde_json::to_value(zooid_sync::relay_body(&h.relay("alpha"), &h.env, None).unwrap())
            .unwrap();
    existing["secret"] = Value::String(old_secret.clone());
    h.fx.put_relay("alpha", existing);
    h.start();
    h.wait_synced("alpha");
    assert_eq!(
        methods(&h.fx.requests_for("alpha")),
        ["POST 409", "PATCH 200"]
    );
    assert_eq!(
        h.fx.relay("alpha").unwrap()["secret"],
        old_secret.as_str(),
        "identity kept"
    );

    // zooid loses it; the next update recreates it with a new secret.
    h.fx.remove_relay("alpha");
    h.store
        .command
        .update_relay("alpha", &settings("alpha"))
        .unwrap();
    h.wait_synced("alpha");
    let requests = h.fx.requests_for("alpha");
    assert_eq!(methods(&requests[2..]), ["PATCH 404", "POST 201"]);
    let new_secret = secret_of(&requests[3]).unwrap();
    assert_ne!(new_secret, old_secret);
    assert_eq!(h.fx.relay("alpha").unwrap()["secret"], new_secret.as_str());
}

#[test]
fn a_schema_conflict_stays_a_failure_with_the_original_error() {
    let mut h = Harness::new();
    let mut taken = serde_json::to_value(
        zooid_sync::relay_body(
            &zooid_sync::Relay {
                id: "other".into(),
                settings: settings("alpha"),
                sync_error: String::new(),
                synced: true,
                revision: 1,
                created_at: 0,
                updated_at: 0,
            },
            &h.env,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    taken["host"] = Value::String("other.relays.example.com".into());
    taken["secret"] = Value::String("c".repeat(63) + "1");
    h.fx.put_relay("other", taken);
    h.start();
    h.create("alpha");
    expect_within(WAIT, "the failure recorded", || h.failures("alpha") >= 1);
    assert_eq!(
        methods(&h.fx.requests_for("alpha")[..2]),
        ["POST 409", "PATCH 404"]
    );
    let error = h.relay("alpha").sync_error;
    assert!(
        error.contains("POST /relay/alpha with 409") && error.contains("schema already in use"),
        "{error}"
    );
}

#[test]
fn an_invalid_relay_fails_with_a_named_error_and_sends_nothing() {
    let mut h = Harness::new();
    h.start();
    let mut s = settings("alpha");
    s.schema = "bad-schema".into();
    // The library refuses it; a host in another language may still write it.
    let refused = h.store.command.create_relay("alpha", &s).unwrap_err();
    assert!(
        matches!(
            &refused,
            HostError::InvalidField {
                field: "schema",
                ..
            }
        ),
        "{refused:?}"
    );
    h.host()
        .execute_batch(&format!(
            "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, created_at, updated_at)
             VALUES ('alpha', '{OWNER}', 'bad-schema', 'alpha', 0, 0);"
        ))
        .unwrap();
    h.store
        .command
        .notify
        .send(bus_activity("relay", "create_relay", "alpha"));
    expect_within(WAIT, "the failure recorded", || h.failures("alpha") >= 1);
    let error = h.relay("alpha").sync_error;
    assert!(
        error.contains("schema") && error.contains("nothing was sent"),
        "{error}"
    );
    h.create("beta");
    h.wait_synced("beta");
    assert!(h.fx.requests_for("alpha").is_empty());
}

#[test]
fn a_malformed_row_fails_its_sync_with_the_column_named() {
    let mut h = Harness::new();
    h.start();
    h.host()
        .execute_batch(&format!(
            "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, status, created_at, updated_at)
             VALUES ('alpha', '{OWNER}', 'alpha', 'alpha', 'paused', 0, 0);"
        ))
        .unwrap();
    h.store
        .command
        .notify
        .send(bus_activity("relay", "create_relay", "alpha"));
    expect_within(WAIT, "the failure recorded", || h.failures("alpha") >= 1);
    let detail = h
        .store
        .query
        .trailing_sync_failure("alpha")
        .unwrap()
        .unwrap()
        .detail;
    assert!(detail.contains("unknown status \"paused\""), "{detail}");
    assert!(h.fx.requests_for("alpha").is_empty());
}

#[test]
fn members_come_from_zooid() {
    let mut h = Harness::new();
    h.start();
    h.create("alpha");
    h.wait_synced("alpha");
    h.fx.set_members("alpha", &[OWNER]);
    let infra = Infra::new(h.store.query.clone(), h.store.command.clone(), &h.env);
    assert_eq!(infra.list_relay_members("alpha").unwrap(), [OWNER]);
    let err = infra.list_relay_members("nope").unwrap_err().to_string();
    assert!(err.contains("does not know relay \"nope\""), "{err}");
}
