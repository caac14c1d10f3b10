//! Crash safety: `zooid-sync run` is killed with SIGKILL at arbitrary moments while it syncs a
//! burst of 1 000 relays and the host keeps changing them, then restarted, several times over.
//! In the end every relay is at its latest revision at zooid and marked synced, and no
//! outcome was recorded for a request that never completed.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use rusqlite::{params, Connection};

const RELAYS: usize = 1000;
const ROUNDS: usize = 5;

fn daemon(zooid_url: &str, db: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zooid-sync"))
        .args(["run", "--feed-interval", "5ms"])
        .env_clear()
        .env("ZOOID_API_URL", zooid_url)
        .env("RELAY_DOMAIN", "relays.example.com")
        .env("ROBOT_SECRET", ROBOT_SECRET)
        .env("DATABASE_PATH", db)
        .env("SYNC_RETRY_BASE", "20ms")
        .env("SYNC_RETRY_CAP", "100ms")
        .env("SYNC_MAX_RATE", "0")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A host in another process renaming relay `i`: row and activity in one transaction.
fn host_update(conn: &Connection, i: usize, round: usize, n: u64) {
    let id = format!("r{i:04}");
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.execute(
        "UPDATE relay SET info_name = ?2, synced = 0, revision = revision + 1 WHERE id = ?1",
        params![id, format!("{id} round {round}")],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO activity (id, created_at, activity_type, resource_type, resource_id)
         VALUES (?1, 0, 'update_relay', 'relay', ?2)",
        params![format!("u-{n}"), id],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

fn pseudo_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn sigkill_during_a_burst_loses_nothing() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    {
        let store = open_store(&db);
        for i in 0..RELAYS {
            let id = format!("r{i:04}");
            store.command.create_relay(&id, &settings(&id)).unwrap();
        }
    }
    let host = Connection::open(&db).unwrap();
    host.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;

    for round in 0..ROUNDS {
        let mut child = daemon(&fx.url(), &db);
        // The host changes 50 relays during the round.
        for _ in 0..50 {
            let n = pseudo_random(&mut seed);
            host_update(&host, n as usize % RELAYS, round, n);
        }
        // Kill it after an arbitrary number of further requests reached zooid.
        let target = fx.requests().len() + 20 + (pseudo_random(&mut seed) % 200) as usize;
        let reached = fx.wait_for_requests(Duration::from_secs(60), |rs| rs.len() >= target);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(reached, "round {round}: the daemon made no progress");
    }

    // A last, undisturbed run settles everything.
    let mut child = daemon(&fx.url(), &db);
    let settled = wait_until(Duration::from_secs(120), || {
        host.query_row("SELECT COUNT(*) FROM relay WHERE synced = 0", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            == 0
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(settled, "relays still pending after the last run");
    assert!(status.success(), "{status:?}");

    // Every relay is at its latest configuration at zooid.
    let mut stmt = host.prepare("SELECT id, info_name FROM relay").unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), RELAYS);
    for (id, name) in &rows {
        let stored = fx
            .relay(id)
            .unwrap_or_else(|| panic!("{id} missing at zooid"));
        assert_eq!(stored["info"]["name"], name.as_str(), "{id}");
    }

    // No outcome without a completed request: completions <= 2xx answers, per relay.
    let mut answered: HashMap<String, i64> = HashMap::new();
    // (Requests for no relay are the pacer's questions as a relay user, `GET /`.)
    for r in fx.requests() {
        if let Some(id) = r.relay_id().filter(|_| (200..300).contains(&r.status)) {
            *answered.entry(id.to_string()).or_default() += 1;
        }
    }
    let mut stmt = host
        .prepare(
            "SELECT resource_id, COUNT(*) FROM activity
             WHERE activity_type = 'complete_relay_sync' GROUP BY resource_id",
        )
        .unwrap();
    let completions: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(completions.len(), RELAYS);
    for (id, n) in completions {
        let ok = answered.get(&id).copied().unwrap_or(0);
        assert!(
            n <= ok,
            "{id}: {n} completions recorded for {ok} accepted requests"
        );
    }
    eprintln!(
        "crash test: {ROUNDS} SIGKILLs, {} requests in all, {RELAYS} relays, 0 lost",
        fx.requests().len()
    );
}

#[test]
fn restarts_neither_reset_nor_hasten_a_failing_relays_retries() {
    let (fx, _dir, db, _store) = one_relay("r");
    fx.inject(
        "r",
        zooid_sync::fixture::Fault::Status {
            status: 500,
            body: r#"{"error":"disk trouble"}"#.into(),
        },
    );
    let start = || {
        let mut cmd = zooid_sync(&fx, &db);
        cmd.env("RUST_LOG", "info")
            .env("SYNC_RETRY_BASE", "1s")
            .env("SYNC_RETRY_CAP", "8s")
            .env("SYNC_RETRY_MAX_ATTEMPTS", "10")
            .args(["run", "--feed-interval", "10ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().unwrap()
    };
    let mut run = start();
    // Failures at about 0 s, 1 s and 3 s: the next retry is due 4 s after the third.
    assert!(fx.wait_for_requests(Duration::from_secs(20), |rs| rs.len() >= 3));
    let third = fx.requests_for("r")[2].started;
    // Deploys every 0.7 s, five times, while that retry waits.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        terminate(&mut run);
        run = start();
    }
    assert!(fx.wait_for_requests(Duration::from_secs(20), |rs| rs.len() >= 4));
    terminate(&mut run);
    let fourth = fx.requests_for("r")[3].started;
    let waited = fourth - third;
    println!("retry 3 came {waited:?} after failure 3, across five restarts");
    assert!(
        waited >= Duration::from_millis(3000),
        "hastened by the restarts: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(6000),
        "started over at each restart: {waited:?}"
    );
}

#[test]
fn a_frozen_daemon_starves_the_watchdog_and_sync_says_so_within_its_bound() {
    use std::os::unix::net::UnixDatagram;
    let (fx, dir, db, _store) = one_relay("alpha");
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    let mut cmd = zooid_sync(&fx, &db);
    cmd.env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000") // WatchdogSec=200ms: a ping every 100 ms
        .args(["run", "--feed-interval", "10ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut run = cmd.spawn().unwrap();
    let received = |timeout: Duration| -> Option<String> {
        systemd.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let mut heard = Vec::new();
    while !(heard.iter().any(|m: &String| m.contains("READY=1"))
        && heard.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        heard.push(received(Duration::from_secs(20)).expect("systemd was notified"));
    }
    assert!(
        heard.iter().any(|m| m.contains("STATUS=syncing")),
        "{heard:?}"
    );

    Command::new("kill")
        .args(["-STOP", &run.id().to_string()])
        .status()
        .unwrap();
    // A ping sent just before the stop may still be in the socket.
    while received(Duration::from_millis(150)).is_some() {}
    assert_eq!(
        received(Duration::from_secs(1)),
        None,
        "a frozen daemon fed the watchdog"
    );

    // `sync` hands its relay to the frozen holder and gives up on it within its bound.
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "alpha", "--timeout", "1s"]);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("no answer from the worker of pid {}", run.id())),
        "{text}"
    );
    assert!(text.contains("--timeout"), "says what to do: {text}");

    Command::new("kill")
        .args(["-CONT", &run.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(
        received(Duration::from_secs(5)).as_deref(),
        Some("WATCHDOG=1"),
        "fed again once it moves"
    );
    terminate(&mut run);
}
