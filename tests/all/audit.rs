//! The existence audit: relays zooid lost behind zooid-sync's back come back by themselves,
//! and the audit's reads are spread over its interval.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use rusqlite::Connection;
use zooid_sync::fixture::FixtureZooid;

const WAIT: Duration = Duration::from_secs(30);

/// `zooid-sync run` with the audit's interval set.
fn audited_daemon(fx: &FixtureZooid, db: &std::path::Path, interval: &str, port: u16) -> Child {
    let mut cmd = zooid_sync(fx, db);
    cmd.env("RUST_LOG", "info")
        .env("SYNC_AUDIT_INTERVAL", interval)
        .args(["run", "--feed-interval", "10ms"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

fn synced_count(host: &Connection) -> i64 {
    host.query_row("SELECT COUNT(*) FROM relay WHERE synced = 1", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// The value of series `name` (the default zooid's, when it is a zooid's).
fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = local_get(port, "/metrics")?;
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{zooid=\"default\"}").unwrap_or(rest);
        rest.strip_prefix(' ')?.parse().ok()
    })
}

fn writes_for(fx: &FixtureZooid, id: &str) -> usize {
    fx.requests_for(id)
        .iter()
        .filter(|r| r.method != "GET")
        .count()
}

#[test]
fn relays_zooid_lost_come_back_within_one_pass_and_deleted_ones_do_not() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    drop(open_store(&db));
    let host = Connection::open(&db).unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    for id in &ids {
        host_creates(&host, id);
    }
    let port = free_port();
    let mut daemon = audited_daemon(&fx, &db, "3s", port);
    expect_within(WAIT, "every relay synced", || synced_count(&host) == 10);
    let secret = fx.relay("r2").unwrap()["secret"].clone();

    // The host deletes one; zooid loses three others behind zooid-sync's back.
    host_deletes(&host, "r9");
    expect_within(WAIT, "r9 deleted at zooid", || fx.relay("r9").is_none());
    expect_within(WAIT, "the audit under way", || {
        metric(port, "zooid_sync_audit_checks_total").is_some_and(|n| n > 0.0)
    });
    for id in ["r2", "r5", "r7"] {
        fx.remove_relay(id).unwrap();
    }
    let lost_at = Instant::now();
    expect_within(WAIT, "the three lost relays back", || {
        ["r2", "r5", "r7"].iter().all(|id| fx.relay(id).is_some())
    });
    // One pass is 3 s (a step every 1/9 of it, and one to start the next pass); a relay is
    // found at the latest one pass after it was lost, and its sync takes milliseconds (the
    // bound leaves room for a loaded machine, well short of two passes).
    assert!(
        lost_at.elapsed() < Duration::from_millis(5500),
        "back after {:?}",
        lost_at.elapsed()
    );
    assert_ne!(
        fx.relay("r2").unwrap()["secret"],
        secret,
        "created again with a new secret"
    );
    expect_within(WAIT, "all marked synced again", || synced_count(&host) == 9);
    assert_eq!(metric(port, "zooid_sync_audit_missing_total"), Some(3.0));

    // A whole pass later: the deleted relay stays deleted, and relays zooid has got reads,
    // never a write.
    let checks = metric(port, "zooid_sync_audit_checks_total").unwrap();
    expect_within(WAIT, "another full pass", || {
        metric(port, "zooid_sync_audit_checks_total").unwrap() >= checks + 9.0
    });
    assert!(
        fx.relay("r9").is_none(),
        "a deleted relay is not brought back"
    );
    for id in ids
        .iter()
        .filter(|id| !["r2", "r5", "r7", "r9"].contains(&id.as_str()))
    {
        assert_eq!(writes_for(&fx, id), 1, "{id}: its create only");
        assert!(
            fx.requests_for(id).iter().any(|r| r.method == "GET"),
            "{id} audited"
        );
    }
    // The lost relays: their create, then the heal (PATCH answered 404, POST).
    assert_eq!(writes_for(&fx, "r2"), 3);
    terminate(&mut daemon);

    let out = run_cli(&fx, &db, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("audit:"))
        .expect("an audit line");
    assert!(line.contains("last pass ended"), "{line}");
}

#[test]
fn a_fleet_of_1000_is_audited_once_per_pass_spread_over_the_interval() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    drop(open_store(&db));
    let host = Connection::open(&db).unwrap();
    host.execute_batch("BEGIN").unwrap();
    for i in 0..1000 {
        host_creates_in_transaction(&host, &format!("r{i}"));
    }
    host.execute_batch("COMMIT").unwrap();
    // Synced first, with the audit off, so that the pass below counts the whole fleet.
    let port = free_port();
    let mut first = audited_daemon(&fx, &db, "0", port);
    expect_within(WAIT, "the fleet synced", || synced_count(&host) == 1000);
    terminate(&mut first);
    let writes = fx.requests().len();
    assert_eq!(writes, 1000);

    // 10 ms between reads: several times what a read costs this debug build, with its
    // signing, and the fixture's checking, unoptimized.
    let interval = Duration::from_secs(10);
    let mut daemon = audited_daemon(&fx, &db, "10s", free_port());
    let started = Instant::now();
    expect_within(WAIT, "a full pass", || {
        fx.requests()[writes..]
            .iter()
            .filter(|r| r.method == "GET")
            .count()
            >= 1000
    });
    let took = started.elapsed();
    terminate(&mut daemon);
    let reads: Vec<_> = fx.requests()[writes..]
        .iter()
        .filter(|r| r.method == "GET")
        .take(1000)
        .cloned()
        .collect();
    assert_eq!(
        fx.requests()[writes..]
            .iter()
            .filter(|r| r.method != "GET")
            .count(),
        0,
        "no write for relays zooid has"
    );
    let mut audited: Vec<&str> = reads.iter().filter_map(|r| r.relay_id()).collect();
    audited.sort();
    audited.dedup();
    assert_eq!(audited.len(), 1000, "each relay once");
    assert!(
        took >= interval.mul_f64(0.9),
        "one pass takes the interval, not a burst: {took:?}"
    );
    // In one-second windows from the first read: a tenth of the fleet each, no burst.
    let first_read = reads[0].started;
    let mut windows = [0usize; 9];
    for r in &reads {
        let second = r.started.duration_since(first_read).as_secs() as usize;
        if let Some(window) = windows.get_mut(second) {
            *window += 1;
        }
    }
    // Never a burst (at most 40 % over the even share); never stalled (a loaded machine may
    // make each read slower, and the pass longer, but not bunched).
    assert!(
        windows.iter().all(|n| (40..=140).contains(n)),
        "reads per second: {windows:?} (pass took {took:?})"
    );
}
