//! The whole life of a relay: a host deletes a relay (its row and a `delete_relay` activity in
//! one transaction) and the daemon deletes it at zooid, whatever else is in flight.

use std::time::Duration;

use crate::common::*;
use rusqlite::{params, Connection};
use zooid_sync::fixture::Fault;

const WAIT: Duration = Duration::from_secs(20);

/// The methods zooid received for relay `id`, in order.
fn methods(fx: &zooid_sync::fixture::FixtureZooid, id: &str) -> Vec<String> {
    fx.requests_for(id).into_iter().map(|r| r.method).collect()
}

/// The `detail` of relay `id`'s newest `complete_relay_sync`, if any.
fn last_completion(conn: &Connection, id: &str) -> Option<String> {
    conn.query_row(
        "SELECT detail FROM activity WHERE resource_id = ?1
           AND activity_type = 'complete_relay_sync' ORDER BY seq DESC LIMIT 1",
        params![id],
        |r| r.get(0),
    )
    .ok()
}

fn status_json(fx: &zooid_sync::fixture::FixtureZooid, db: &std::path::Path) -> serde_json::Value {
    let out = run_cli(fx, db, &["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status_row(
    fx: &zooid_sync::fixture::FixtureZooid,
    db: &std::path::Path,
    id: &str,
) -> Option<serde_json::Value> {
    status_json(fx, db)
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == id)
        .cloned()
}

#[test]
fn a_relay_the_host_deletes_is_deleted_at_zooid_and_recorded() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let host = Connection::open(&db).unwrap();
    host_creates(&host, "beta");
    let mut first = daemon(&fx, &db, None);
    expect_within(WAIT, "both relays at zooid", || fx.relay_ids().len() == 2);

    let deleted_at = std::time::Instant::now();
    host_deletes(&host, "alpha");
    expect_within(WAIT, "alpha deleted at zooid", || {
        fx.relay("alpha").is_none()
    });
    // Within the feed interval (10 ms) plus one request, with room for a loaded machine.
    let delete = fx.requests_for("alpha").pop().unwrap();
    assert_eq!(delete.method, "DELETE");
    let took = delete.started.duration_since(deleted_at);
    assert!(
        took < Duration::from_millis(500),
        "the DELETE left {took:?} after the delete"
    );
    expect_within(WAIT, "the deletion recorded", || {
        last_completion(&host, "alpha").is_some_and(|d| d.starts_with("DELETE"))
    });
    assert_eq!(methods(&fx, "alpha"), ["POST", "DELETE"]);
    assert!(fx.relay("beta").is_some(), "the other relay stays");
    assert!(
        status_row(&fx, &db, "alpha").is_none(),
        "a confirmed deletion is not listed"
    );

    // A restart finds nothing left to do for it.
    terminate(&mut first);
    let mut again = daemon(&fx, &db, None);
    host_creates(&host, "gamma");
    expect_within(WAIT, "the restarted daemon syncs a new relay", || {
        fx.relay("gamma").is_some()
    });
    terminate(&mut again);
    assert_eq!(methods(&fx, "alpha"), ["POST", "DELETE"]);
}

#[test]
fn a_delete_racing_a_create_in_flight_ends_deleted() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    drop(open_store(&db));
    let host = Connection::open(&db).unwrap();
    let mut daemon = daemon(&fx, &db, None);
    // zooid takes its time over the create; the host deletes the relay meanwhile.
    fx.inject_times("alpha", Fault::Delay(Duration::from_millis(800)), 1);
    host_creates(&host, "alpha");
    expect_within(WAIT, "the create in flight", || fx.in_flight("alpha") == 1);
    host_deletes(&host, "alpha");

    expect_within(WAIT, "the deletion recorded", || {
        last_completion(&host, "alpha").is_some_and(|d| d.starts_with("DELETE"))
    });
    terminate(&mut daemon);
    assert_eq!(methods(&fx, "alpha"), ["POST", "DELETE"]);
    assert!(
        fx.relay("alpha").is_none(),
        "the host's final state: deleted"
    );
}

/// Whether the host's row of relay `id` is marked synced.
fn synced(host: &Connection, id: &str) -> bool {
    host.query_row("SELECT synced FROM relay WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok_and(|s| s == 1)
}

#[test]
fn a_relay_deleted_then_created_again_ends_created() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let host = Connection::open(&db).unwrap();
    host_creates(&host, "beta");
    let mut daemon = daemon(&fx, &db, None);
    expect_within(WAIT, "alpha and beta synced", || {
        synced(&host, "alpha") && synced(&host, "beta")
    });

    // Deleted and created again before the daemon acted: zooid ends with the new relay's
    // settings (the daemon may never send the DELETE; the create then heals its 409).
    host_deletes(&host, "alpha");
    host_creates(&host, "alpha");
    expect_within(WAIT, "the new alpha synced", || synced(&host, "alpha"));
    assert_eq!(fx.relay("alpha").unwrap()["info"]["name"], "Made elsewhere");

    // Deleted, and created again while the DELETE is in flight: deleted, then created with
    // a new secret. (beta changed once, so no other sync of it can be in flight.)
    let secret = fx.relay("beta").unwrap()["secret"].clone();
    fx.inject_times("beta", Fault::Delay(Duration::from_millis(800)), 1);
    let before = fx.requests_for("beta").len();
    host_deletes(&host, "beta");
    expect_within(WAIT, "the deletion in flight", || fx.in_flight("beta") == 1);
    host_creates(&host, "beta");
    expect_within(WAIT, "the new beta synced", || synced(&host, "beta"));
    terminate(&mut daemon);
    let sent = methods(&fx, "beta");
    assert_eq!(sent[before..], ["DELETE", "POST"], "{sent:?}");
    let now = fx.relay("beta").expect("the host's final state: it exists");
    assert_ne!(now["secret"], secret, "a new relay, a new secret");
}

#[test]
fn a_deletion_survives_sigkill_before_zooid_answers() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let host = Connection::open(&db).unwrap();
    let mut first = daemon(&fx, &db, None);
    expect_within(WAIT, "alpha synced", || synced(&host, "alpha"));

    fx.inject_times("alpha", Fault::Delay(Duration::from_millis(1500)), 1);
    host_deletes(&host, "alpha");
    expect_within(WAIT, "the deletion in flight", || {
        fx.in_flight("alpha") == 1
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        last_completion(&host, "alpha").as_deref(),
        Some("revision 1")
    );
    let row = status_row(&fx, &db, "alpha").expect("the pending deletion is listed");
    assert!(
        row["status"].as_str().unwrap().starts_with("deleted at"),
        "{row}"
    );
    assert_eq!(row["next_retry"], "pending");

    let mut second = daemon(&fx, &db, None);
    expect_within(WAIT, "the deletion recorded after the restart", || {
        last_completion(&host, "alpha").is_some_and(|d| d.starts_with("DELETE"))
    });
    terminate(&mut second);
    assert!(fx.relay("alpha").is_none());
    assert!(status_row(&fx, &db, "alpha").is_none());
}

#[test]
fn a_refused_deletion_follows_the_retry_schedule_and_shows_in_status() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let host = Connection::open(&db).unwrap();
    let mut daemon = {
        let mut cmd = zooid_sync(&fx, &db);
        cmd.env("SYNC_RETRY_MAX_ATTEMPTS", "3")
            .args(["run", "--feed-interval", "10ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().unwrap()
    };
    expect_within(WAIT, "alpha synced", || synced(&host, "alpha"));

    fx.inject(
        "alpha",
        Fault::Status {
            status: 500,
            body: r#"{"error":"disk full"}"#.into(),
        },
    );
    host_deletes(&host, "alpha");
    expect_within(
        WAIT,
        "four refused deletions (three retries), then giving up",
        || status_row(&fx, &db, "alpha").is_some_and(|row| row["next_retry"] == "gave up"),
    );
    let row = status_row(&fx, &db, "alpha").unwrap();
    assert_eq!(row["attempts"], 4, "{row}");
    assert!(
        row["last_error"].as_str().unwrap().contains("disk full"),
        "{row}"
    );
    assert!(
        row["status"].as_str().unwrap().starts_with("deleted at"),
        "{row}"
    );
    let sent = fx.requests_for("alpha");
    let deletes: Vec<_> = sent.iter().filter(|r| r.method == "DELETE").collect();
    assert_eq!(
        deletes.len(),
        4,
        "one request per attempt, none after giving up"
    );
    // The backoff grows: 50 ms, then 100 ms, then the 200 ms cap (each less its jitter).
    let gaps: Vec<Duration> = deletes
        .windows(2)
        .map(|w| w[1].started.duration_since(w[0].finished))
        .collect();
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(90), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(180), "{gaps:?}");
    assert!(fx.relay("alpha").is_some(), "still at zooid");

    // The operator repairs it once zooid takes it.
    fx.clear_faults();
    let out = run_cli(&fx, &db, &["sync", "--failed"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fx.relay("alpha").is_none());
    assert!(status_row(&fx, &db, "alpha").is_none());
    terminate(&mut daemon);
}
