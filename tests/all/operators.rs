//! What an operator sees: `/healthz` and `/metrics` while the worker runs, against the
//! fixture zooid over HTTP.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use zooid_sync::fixture::Fault;
use zooid_sync::{endpoint, Infra, Store};

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut r = agent.get(&format!("http://{addr}{path}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn value(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
}

#[test]
fn health_and_metrics_follow_the_worker() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let env = env_for(&fx.url());
    let Store { query, command } = Store::open(&db).unwrap();
    fx.inject(
        "bad",
        Fault::Status {
            status: 503,
            body: "{}".into(),
        },
    );
    let infra = Infra::new(query.clone(), command.clone(), &env);
    let m = infra.metrics();
    let worker = infra.spawn().unwrap();
    let server = endpoint::serve(
        "127.0.0.1:0",
        vec!["default".into()],
        m,
        query.clone(),
        worker.alive(),
        endpoint::Limits::public(),
    )
    .unwrap();

    for id in ["a1", "a2", "a3", "bad"] {
        command.create_relay(id, &settings(id)).unwrap();
    }
    expect_within(
        Duration::from_secs(10),
        "three synced, bad given up",
        || {
            let (_, text) = get(server.addr(), "/metrics");
            value(&text, "zooid_sync_syncs_total{zooid=\"default\",outcome=\"synced\"}") == 3.0
                && value(&text, "zooid_sync_relays_given_up_total") == 1.0
                // The pending count is reused for up to a second.
                && value(&text, "zooid_sync_relays_pending") == 1.0
        },
    );
    let (status, text) = get(server.addr(), "/metrics");
    assert_eq!(status, 200);
    // max_attempts is 3 in tests: 4 failures, 3 retries, then the give-up.
    assert_eq!(
        value(
            &text,
            "zooid_sync_syncs_total{zooid=\"default\",outcome=\"failed\"}"
        ),
        4.0
    );
    assert_eq!(value(&text, "zooid_sync_retries_scheduled_total"), 3.0);
    assert_eq!(value(&text, "zooid_sync_relays_pending"), 1.0);
    assert_eq!(value(&text, "zooid_sync_requests_in_flight"), 0.0);
    assert_eq!(
        value(&text, "zooid_sync_request_duration_seconds_count"),
        7.0
    );
    assert_eq!(
        value(
            &text,
            "zooid_sync_request_duration_seconds_bucket{zooid=\"default\",le=\"+Inf\"}"
        ),
        7.0
    );

    assert_eq!(
        get(server.addr(), "/healthz"),
        (200, "ok\nzooid: up\n".into())
    );
    assert_eq!(get(server.addr(), "/nope").0, 404);
    worker.shutdown().unwrap();
    let (status, body) = get(server.addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
}

#[test]
fn health_is_503_when_the_worker_is_gone() {
    let (_dir, db) = temp_db();
    let store = Store::open(&db).unwrap();
    let alive = Arc::new(AtomicBool::new(false));
    let server = endpoint::serve(
        "127.0.0.1:0",
        vec!["default".into()],
        Arc::default(),
        store.query,
        alive,
        endpoint::Limits::public(),
    )
    .unwrap();
    let (status, body) = get(server.addr(), "/healthz");
    assert_eq!((status, body.as_str()), (503, "the worker has stopped\n"));
}

#[test]
fn an_address_in_use_is_a_named_error() {
    let (_dir, db) = temp_db();
    let store = Store::open(&db).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = endpoint::serve(
        &addr,
        vec!["default".into()],
        Arc::default(),
        store.query,
        Arc::default(),
        endpoint::Limits::public(),
    )
    .err()
    .expect("the port is taken");
    assert!(format!("{err:#}").contains(&format!("--listen: cannot listen on {addr}")));
}
