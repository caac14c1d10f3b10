//! One syncer per database, tried as operators do it: manual syncs while the daemon runs and
//! the host changes the same relays, two daemons on one database, a SIGKILLed daemon with a
//! standby beside it, and `sync --failed` after an outage. Real processes, a real SQLite
//! file, the fixture zooid answering after random delays.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use rusqlite::Connection;
use zooid_sync::fixture::{Fault, FixtureZooid};

const WAIT: Duration = Duration::from_secs(30);

fn health(port: u16) -> Option<String> {
    local_get(port, "/healthz").map(|(_, body)| body)
}

/// Every relay the database marks synced has its latest name at zooid.
fn assert_no_lost_update(fx: &FixtureZooid, db: &std::path::Path, ids: &[String]) {
    let conn = host_connection(db);
    for id in ids {
        let (name, synced) = name_and_synced(&conn, id);
        assert_eq!(synced, 1, "{id} converged");
        assert_eq!(
            fx.relay(id).unwrap()["info"]["name"],
            name,
            "{id} is marked synced but zooid has an older name"
        );
        assert!(
            fx.max_in_flight(id) <= 1,
            "zooid saw {} requests for {id} at once",
            fx.max_in_flight(id)
        );
    }
}

/// Renames relays at random until `stop`, as a busy host would; answers how many.
fn busy_host(db: std::path::PathBuf, ids: Vec<String>, stop: Arc<AtomicBool>) -> usize {
    let conn = host_connection(&db);
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let id = &ids[n * 7 % ids.len()];
        host_renames(&conn, id, &format!("v{n}"));
        n += 1;
        std::thread::sleep(Duration::from_millis(15));
    }
    n
}

fn setup(fx: &FixtureZooid, db: &std::path::Path, n: usize) -> Vec<String> {
    let store = open_store(db);
    let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    for id in &ids {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    // zooid is busy: every answer takes tens to hundreds of milliseconds.
    fx.inject(
        "*",
        Fault::DelayBetween(Duration::from_millis(10), Duration::from_millis(260)),
    );
    ids
}

fn wait_all_synced(db: &std::path::Path, ids: &[String]) {
    let conn = host_connection(db);
    expect_within(WAIT, "every relay synced", || {
        ids.iter().all(|id| {
            conn.query_row("SELECT synced FROM relay WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
                == 1
        })
    });
}

#[test]
fn manual_syncs_beside_the_daemon_never_overlap_it_or_lose_an_update() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let ids = setup(&fx, &db, 8);
    let mut run = daemon(&fx, &db, None);
    wait_all_synced(&db, &ids);

    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let (db, ids, stop) = (db.clone(), ids.clone(), stop.clone());
        std::thread::spawn(move || busy_host(db, ids, stop))
    };
    // The operator runs `sync` on the very relays the host is changing, from two shells.
    let codes: Vec<Option<i32>> = std::thread::scope(|scope| {
        let operators: Vec<_> = (0..2)
            .map(|k| {
                let (fx, db, ids) = (&fx, &db, &ids);
                scope.spawn(move || {
                    (0..6)
                        .map(|round| {
                            let id = &ids[(round * 3 + k) % ids.len()];
                            output({
                                let mut c = zooid_sync(fx, db);
                                c.args(["sync", id]);
                                c
                            })
                            .status
                            .code()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        operators
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    stop.store(true, Ordering::Release);
    let renames = host.join().unwrap();
    wait_all_synced(&db, &ids);
    terminate(&mut run);
    println!(
        "{renames} host renames, {} manual syncs (exit codes {codes:?}), {} requests at zooid",
        codes.len(),
        fx.requests().len()
    );
    assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
    assert_no_lost_update(&fx, &db, &ids);
}

#[test]
fn two_daemons_on_one_database_never_overlap_or_lose_an_update() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let ids = setup(&fx, &db, 8);
    let (first_port, second_port) = (free_port(), free_port());
    let mut first = daemon(&fx, &db, Some(first_port));
    expect_within(WAIT, "the first daemon active", || {
        health(first_port).is_some_and(|h| h.starts_with("ok"))
    });
    let mut second = daemon(&fx, &db, Some(second_port));
    expect_within(WAIT, "the second daemon standing by", || {
        health(second_port).is_some_and(|h| h.starts_with("standby"))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let (db, ids, stop) = (db.clone(), ids.clone(), stop.clone());
        std::thread::spawn(move || busy_host(db, ids, stop))
    };
    // A deploy: the old daemon stops while the host keeps changing relays.
    expect_within(WAIT, "some renames synced", || fx.requests().len() > 20);
    terminate(&mut first);
    expect_within(WAIT, "the second daemon took over", || {
        health(second_port).is_some_and(|h| h.starts_with("ok"))
    });
    expect_within(WAIT, "more renames synced", || fx.requests().len() > 40);
    stop.store(true, Ordering::Release);
    let renames = host.join().unwrap();
    wait_all_synced(&db, &ids);
    terminate(&mut second);
    println!(
        "two daemons: {renames} host renames, {} requests at zooid",
        fx.requests().len()
    );
    assert_no_lost_update(&fx, &db, &ids);
}

#[test]
fn a_standby_takes_over_within_3_s_of_a_sigkill() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let (first_port, second_port) = (free_port(), free_port());
    let mut first = daemon(&fx, &db, Some(first_port));
    expect_within(WAIT, "the first daemon active", || {
        health(first_port).is_some_and(|h| h.starts_with("ok"))
    });
    let mut second = daemon(&fx, &db, Some(second_port));
    expect_within(WAIT, "the second daemon standing by", || {
        health(second_port).is_some_and(|h| h.starts_with("standby"))
    });
    expect_within(WAIT, "alpha synced", || fx.relay("alpha").is_some());
    assert_eq!(
        fx.requests().len(),
        1,
        "the standby sent nothing: {:?}",
        fx.requests()
    );

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let changed = Instant::now();
    host_renames(&host_connection(&db), "alpha", "After the crash");
    expect_within(Duration::from_secs(3), "the change at zooid", || {
        fx.relay("alpha")
            .is_some_and(|r| r["info"]["name"] == "After the crash")
    });
    println!(
        "SIGKILL of the active daemon: the change reached zooid {:?} later",
        changed.elapsed()
    );
    terminate(&mut second);
}

#[test]
fn sync_failed_after_an_outage_recovers_and_names_what_still_fails() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    let ids: Vec<String> = (0..12).map(|i| format!("o{i}")).collect();
    for id in &ids {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    store
        .command
        .create_relay("fine", &settings("fine"))
        .unwrap();
    // zooid refused every relay: they all failed (and, with the daemon, would give up).
    fx.inject(
        "*",
        Fault::Status {
            status: 500,
            body: r#"{"error":"restoring from backup"}"#.into(),
        },
    );
    let out = run_cli(&fx, &db, &["sync", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("13 relays: 0 synced, 13 failed"));

    // zooid is back, except for one relay it still refuses.
    fx.clear_faults();
    fx.inject(
        "o3",
        Fault::Status {
            status: 400,
            body: r#"{"error":"schema already used"}"#.into(),
        },
    );
    let mut run = daemon(&fx, &db, None);
    let out = run_cli(&fx, &db, &["sync", "--failed"]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("1 failed") && text.contains("o3: failed"),
        "{text}"
    );
    terminate(&mut run);
    let left: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sync_request", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "answered requests are forgotten once read");

    fx.clear_faults();
    let out = run_cli(&fx, &db, &["sync", "--failed"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("synced, 0 failed"), "{text}");
    for id in ids.iter().chain(["fine".to_string()].iter()) {
        assert!(store.query.get_relay(id).unwrap().unwrap().synced, "{id}");
    }
}

#[test]
fn sync_of_an_unknown_relay_exits_2_with_or_without_a_daemon() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    open_store(&db);
    let out = run_cli(&fx, &db, &["sync", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
    let mut run = daemon(&fx, &db, None);
    let out = run_cli(&fx, &db, &["sync", "nobody"]);
    terminate(&mut run);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("relay nobody: unknown"));
}

#[test]
fn a_foreground_sync_that_reaches_zooid_clears_an_outage_no_daemon_is_watching() {
    let (fx, _dir, db, store) = one_relay("alpha");
    // A daemon recorded an outage and was stopped before zooid came back.
    store
        .command
        .record_zooid_outage("default", 1, "zooid answered 503")
        .unwrap();
    let out = run_cli(&fx, &db, &["sync", "alpha"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(store.query.zooid_outage("default").unwrap().is_none());
}

#[test]
fn a_removed_lock_file_or_a_symlinked_path_never_makes_a_second_syncer() {
    let fx = fixture();
    let (dir, db) = temp_db();
    let ids = setup(&fx, &db, 6);
    let link = dir.path().join("same-database.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let (first_port, second_port, third_port) = (free_port(), free_port(), free_port());
    let mut first = daemon(&fx, &db, Some(first_port));
    expect_within(WAIT, "the first daemon active", || {
        health(first_port).is_some_and(|h| h.starts_with("ok"))
    });
    let mut second = daemon(&fx, &db, Some(second_port));
    let mut third = daemon(&fx, &link, Some(third_port));
    for port in [second_port, third_port] {
        expect_within(WAIT, "the others standing by", || {
            health(port).is_some_and(|h| h.starts_with("standby"))
        });
    }
    // What looks like a stale pidfile goes; the host keeps changing relays.
    std::fs::remove_file(dir.path().join("zooid-sync.db.lock")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let (db, ids, stop) = (db.clone(), ids.clone(), stop.clone());
        std::thread::spawn(move || busy_host(db, ids, stop))
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for port in [second_port, third_port] {
            let h = health(port).unwrap_or_default();
            assert!(h.starts_with("standby"), "a second syncer: {h}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    host.join().unwrap();
    wait_all_synced(&db, &ids);
    // Each change went out once: no relay has more requests than the host made changes.
    for id in &ids {
        let changes: i64 = host_connection(&db)
            .query_row(
                "SELECT COUNT(*) FROM activity WHERE resource_id = ?1
                   AND activity_type IN ('create_relay', 'update_relay')",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        let sent = fx.requests_for(id).len() as i64;
        assert!(
            sent <= changes,
            "{id}: {sent} requests for {changes} changes"
        );
    }
    assert_no_lost_update(&fx, &db, &ids);
    for child in [&mut first, &mut second, &mut third] {
        terminate(child);
    }
}

#[test]
fn a_daemon_whose_database_is_replaced_steps_down() {
    let (fx, dir, db, _store) = one_relay("alpha");
    let port = free_port();
    let mut run = zooid_sync(&fx, &db);
    run.args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut run = run.spawn().unwrap();
    expect_within(WAIT, "the daemon active", || {
        health(port).is_some_and(|h| h.starts_with("ok"))
    });
    // An operator restores last night's copy over the live file.
    let copy = dir.path().join("restored.db");
    std::fs::copy(&db, &copy).unwrap();
    std::fs::rename(&copy, &db).unwrap();
    let status = wait_for_exit(&mut run, WAIT).expect("the daemon stepped down");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("was replaced by another file"), "{stderr}");
}

#[test]
fn a_manual_sync_whose_answer_cannot_be_written_at_first_still_gets_it() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let mut run = daemon(&fx, &db, None);
    expect_within(WAIT, "alpha synced", || fx.relay("alpha").is_some());
    // zooid takes a while with alpha, and meanwhile the host holds the write lock for longer
    // than the daemon's busy timeout (5 s): the answer's first write fails.
    fx.inject("alpha", Fault::Delay(Duration::from_millis(300)));
    let mut sync = {
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "alpha"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    assert!(fx.wait_for_requests(WAIT, |rs| rs.len() >= 2));
    let host = host_connection(&db);
    host.execute_batch("BEGIN IMMEDIATE; UPDATE relay SET plan_id = plan_id WHERE id = 'alpha';")
        .unwrap();
    std::thread::sleep(Duration::from_millis(6500));
    host.execute_batch("COMMIT").unwrap();
    let status = wait_for_exit(&mut sync, WAIT);
    let _ = sync.kill();
    let out = sync.wait_with_output().unwrap();
    terminate(&mut run);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(status.is_some(), "sync never got its answer");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("relay alpha: synced"), "{text}");
}
