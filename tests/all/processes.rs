//! One database, many processes: a worker embedded in a host sees what another process writes
//! through SQL; a host that only records changes learns the outcomes the daemon records; three
//! host processes beside a daemon lose nothing. Each "other process" is this test binary run
//! again as [`helper`], or the daemon binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use zooid_sync::fixture::Fault;
use zooid_sync::{Infra, OutcomeKind, Store, StoreOptions};

const WAIT: Duration = Duration::from_secs(30);

/// A store whose feed looks every 10 ms while activity flows, as the daemon's does in the
/// tests.
fn store_with_feed(path: &std::path::Path) -> Store {
    let options = StoreOptions {
        feed_interval: Duration::from_millis(10),
        ..StoreOptions::default()
    };
    Store::open_with(path, options).unwrap()
}

/// Runs this test binary again as [`helper`] playing `role`, with `vars`; waits for it and
/// answers whether it succeeded, with what it printed.
fn run_helper(role: &str, db: &std::path::Path, vars: &[(&str, String)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "processes::helper", "--ignored", "--nocapture"])
        .env("ZS_HELPER", role)
        .env("ZS_DB", db)
        .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("HELPER done"), text)
}

/// Another process of the platform, run by the tests of this file (and doing nothing when run
/// by hand): `sql-writer` creates the relays `ZS_IDS` through SQL, as a script in another
/// language would; `recording-host` opens a store, records the creation of `ZS_IDS` and an
/// update of `ZS_SHARED` through `Command`, and waits for the outcome of each of its changes.
#[test]
#[ignore = "a helper process for the tests of this file"]
fn helper() {
    let Ok(role) = std::env::var("ZS_HELPER") else {
        return;
    };
    let db = std::path::PathBuf::from(std::env::var("ZS_DB").unwrap());
    let ids: Vec<String> = std::env::var("ZS_IDS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    match role.as_str() {
        "sql-writer" => {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            for id in &ids {
                host_creates(&conn, id);
            }
        }
        "recording-host" => {
            let store = store_with_feed(&db);
            let outcomes = store.command.outcomes();
            for id in &ids {
                store.command.create_relay(id, &settings(id)).unwrap();
            }
            let shared = std::env::var("ZS_SHARED").unwrap();
            let mut relay = settings(&shared);
            relay.info_name = format!("by {}", std::process::id());
            store.command.update_relay(&shared, &relay).unwrap();
            let mine = store.query.get_relay(&shared).unwrap().unwrap().revision;
            // Outcomes come in the order they were committed, others' among them: collect
            // until each own relay is synced and one outcome covers the shared relay's change.
            let deadline = Instant::now() + WAIT;
            let mut waiting: std::collections::HashSet<&String> = ids.iter().collect();
            let mut shared_done = false;
            while !waiting.is_empty() || !shared_done {
                let outcome = outcomes.recv_deadline(deadline).unwrap();
                if outcome.kind == OutcomeKind::Synced {
                    waiting.remove(&outcome.relay_id);
                }
                if outcome.relay_id == shared {
                    let now = store.query.get_relay(&shared).unwrap().unwrap();
                    shared_done |= now.synced && now.revision >= mine;
                }
            }
        }
        other => panic!("no helper role {other}"),
    }
    println!("HELPER done");
}

#[test]
fn an_embedded_worker_syncs_what_another_process_writes_and_its_host_sees_the_outcome() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = store_with_feed(&db);
    let env = env_for(&fx.url());
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env)
        .spawn()
        .unwrap();
    let outcomes = store.command.outcomes();
    for round in 0..3 {
        let id = format!("elsewhere{round}");
        let (ok, said) = run_helper("sql-writer", &db, &[("ZS_IDS", id.clone())]);
        assert!(ok, "{said}");
        let written = Instant::now();
        let outcome = outcomes.wait_for(&id, WAIT).unwrap();
        let took = written.elapsed();
        assert_eq!(outcome.kind, OutcomeKind::Synced);
        assert!(fx.relay(&id).is_some(), "zooid has {id}");
        let answer = fx.requests_for(&id)[0].finished - fx.requests_for(&id)[0].started;
        println!("round {round}: written by another process, synced and seen in {took:?} (zooid answered in {answer:?})");
        // The feed's interval (10 ms; a lone change after a quiet spell waits one more for
        // the write to finish), one answer, the outcome's commit: well under a second.
        assert!(took < Duration::from_secs(1), "{took:?}");
        std::thread::sleep(Duration::from_millis(if round == 0 { 0 } else { 1500 }));
    }
    worker.shutdown().unwrap();
}

#[test]
fn a_host_that_only_records_learns_synced_failed_and_deleted_from_the_daemon() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = store_with_feed(&db);
    let mut daemon = daemon(&fx, &db, None);
    let outcomes = store.command.outcomes();
    fx.inject(
        "bad",
        Fault::Status {
            status: 422,
            body: r#"{"error":"refused"}"#.into(),
        },
    );
    let changed = Instant::now();
    store
        .command
        .create_relay("good", &settings("good"))
        .unwrap();
    let synced = outcomes.wait_for("good", WAIT).unwrap();
    let to_synced = changed.elapsed();
    assert_eq!(synced.kind, OutcomeKind::Synced);
    store.command.create_relay("bad", &settings("bad")).unwrap();
    let failed = outcomes.wait_for("bad", WAIT).unwrap();
    match &failed.kind {
        OutcomeKind::Failed { error } => assert!(error.contains("422"), "{error}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let changed = Instant::now();
    store.command.delete_relay("good").unwrap();
    let deleted = outcomes.wait_for("good", WAIT).unwrap();
    let to_deleted = changed.elapsed();
    assert_eq!(deleted.kind, OutcomeKind::Deleted);
    assert!(fx.relay("good").is_none(), "gone at zooid");
    terminate(&mut daemon);
    println!("the daemon's outcomes reached the host: synced in {to_synced:?}, deleted in {to_deleted:?}");
    assert!(to_synced < Duration::from_secs(2) && to_deleted < Duration::from_secs(2));
}

#[test]
fn three_host_processes_beside_a_daemon_lose_nothing_and_each_sees_its_own_outcomes() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    store
        .command
        .create_relay("shared", &settings("shared"))
        .unwrap();
    let mut daemon = daemon(&fx, &db, None);
    expect_within(WAIT, "shared synced", || fx.relay("shared").is_some());
    let results: Vec<(bool, String)> = std::thread::scope(|scope| {
        let hosts: Vec<_> = (0..3)
            .map(|k| {
                let db = &db;
                scope.spawn(move || {
                    let ids: Vec<String> = (0..5).map(|i| format!("h{k}_{i}")).collect();
                    run_helper(
                        "recording-host",
                        db,
                        &[("ZS_IDS", ids.join(",")), ("ZS_SHARED", "shared".into())],
                    )
                })
            })
            .collect();
        hosts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (ok, said) in &results {
        assert!(ok, "a host did not see its outcomes: {said}");
    }
    expect_within(WAIT, "everything synced", || {
        store
            .query
            .list_relays()
            .unwrap()
            .into_iter()
            .all(|r| r.unwrap().synced)
    });
    terminate(&mut daemon);
    for k in 0..3 {
        for i in 0..5 {
            assert!(fx.relay(&format!("h{k}_{i}")).is_some(), "h{k}-{i} lost");
        }
    }
    let name = store
        .query
        .get_relay("shared")
        .unwrap()
        .unwrap()
        .settings
        .info_name;
    assert_eq!(
        fx.relay("shared").unwrap()["info"]["name"],
        name,
        "the last change won"
    );
}
