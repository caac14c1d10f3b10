//! Several zooids: each relay synced to the zooid its row names, one pool, breaker and pacer
//! for each zooid, moves from one zooid to another, and a relay naming a zooid no setting
//! names. Two or three fixture zooids, the real worker and the binary as a process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zooid_sync::fixture::{Fault, FixtureZooid};
use zooid_sync::{Env, Infra, Store, ZooidAddress};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Settings for `id` served by the zooid named `zooid` (`""`: the default one).
fn at(id: &str, zooid: &str) -> zooid_sync::RelaySettings {
    zooid_sync::RelaySettings {
        zooid: zooid.into(),
        ..settings(id)
    }
}

/// `env_for(default)` with `ZOOID_INSTANCES` naming `others`.
fn env_with(default: &FixtureZooid, others: &[(&str, &FixtureZooid)]) -> Env {
    let mut env = env_for(&default.url());
    env.zooid_instances = others
        .iter()
        .map(|(name, fx)| ZooidAddress {
            name: name.to_string(),
            url: fx.url(),
        })
        .collect();
    env
}

/// Two fixture zooids, the default one (`home`) and `eu`, and a fresh database (in a
/// temporary directory, kept while the `TempDir` lives) with the store open on it.
fn two_zooids() -> (
    FixtureZooid,
    FixtureZooid,
    tempfile::TempDir,
    std::path::PathBuf,
    Store,
) {
    let (dir, db) = temp_db();
    let store = open_store(&db);
    (fixture(), fixture(), dir, db, store)
}

/// The real worker over `store`, configured by `env`.
fn start_worker(store: &Store, env: &Env) -> zooid_sync::InfraHandle {
    Infra::new(store.query.clone(), store.command.clone(), env)
        .spawn()
        .unwrap()
}

/// The relays a fixture zooid holds, sorted.
fn held(fx: &FixtureZooid) -> Vec<String> {
    let mut ids = fx.relay_ids();
    ids.sort();
    ids
}

fn synced(store: &Store, id: &str) -> bool {
    store
        .query
        .get_relay(id)
        .unwrap()
        .is_some_and(|r| r.synced && r.sync_error.is_empty())
}

fn sync_error(store: &Store, id: &str) -> String {
    store.query.get_relay(id).unwrap().unwrap().sync_error
}

/// The zooid relay `id` lives at as recorded (`None`: not recorded), its move, if any, done.
fn settled_at(store: &Store, id: &str) -> Option<String> {
    let placed = store.query.relay_placement(id).unwrap()?;
    assert_eq!(placed.leaving, "", "{id} is still leaving a zooid");
    Some(placed.zooid)
}

/// The host moves relay `id` to the zooid named `zooid`, as a platform's code would.
fn host_moves(store: &Store, id: &str, zooid: &str) {
    let mut settings = store.query.get_relay(id).unwrap().unwrap().settings;
    settings.zooid = zooid.into();
    store.command.update_relay(id, &settings).unwrap();
}

#[test]
fn relays_land_on_their_own_zooid_and_nowhere_else() {
    let (home, eu, us) = (fixture(), fixture(), fixture());
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    for (id, zooid) in [
        ("h1", ""),
        ("h2", ""),
        ("e1", "eu"),
        ("e2", "eu"),
        ("u1", "us"),
    ] {
        store.command.create_relay(id, &at(id, zooid)).unwrap();
    }
    let env = env_with(&home, &[("eu", &eu), ("us", &us)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "every relay synced", || {
        ["h1", "h2", "e1", "e2", "u1"]
            .iter()
            .all(|id| synced(&store, id))
    });
    // Changes after the start go to the relay's own zooid too.
    let conn = host_connection(&db);
    host_renames(&conn, "e1", "Renamed at eu");
    expect_within(WAIT, "the rename at eu", || {
        eu.relay("e1")
            .is_some_and(|r| r["info"]["name"] == "Renamed at eu")
    });
    worker.shutdown().unwrap();
    assert_eq!(held(&home), ["h1", "h2"]);
    assert_eq!(held(&eu), ["e1", "e2"]);
    assert_eq!(held(&us), ["u1"]);
    for fx in [&home, &eu, &us] {
        for r in fx.requests() {
            if let Some(id) = r.relay_id() {
                assert!(
                    fx.relay(id).is_some(),
                    "{id} asked at the wrong zooid: {r:?}"
                );
            }
        }
    }
    // Where each relay lives is recorded, for deletions and moves; the default zooid's
    // relays need no record.
    assert_eq!(settled_at(&store, "e1").as_deref(), Some("eu"));
    assert_eq!(settled_at(&store, "u1").as_deref(), Some("us"));
    assert_eq!(settled_at(&store, "h1"), None);
}

#[test]
fn a_deletion_goes_to_the_zooid_the_relay_was_synced_to() {
    let (home, eu, _dir, _db, store) = two_zooids();
    store
        .command
        .create_relay("gone", &at("gone", "eu"))
        .unwrap();
    let env = env_with(&home, &[("eu", &eu)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "synced at eu", || eu.relay("gone").is_some());
    store.command.delete_relay("gone").unwrap();
    expect_within(WAIT, "deleted at eu", || eu.relay("gone").is_none());
    expect_within(WAIT, "the deletion recorded", || {
        store.query.list_pending_deletions().unwrap().is_empty()
    });
    worker.shutdown().unwrap();
    assert!(home.requests().iter().all(|r| r.relay_id() != Some("gone")));
    assert_eq!(settled_at(&store, "gone"), None);
}

#[test]
fn a_relay_naming_an_unknown_zooid_fails_naming_it_and_syncs_once_a_restart_knows_it() {
    let (home, mars) = (fixture(), fixture());
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    store
        .command
        .create_relay("far", &at("far", "mars"))
        .unwrap();
    store.command.create_relay("near", &at("near", "")).unwrap();
    let env = env_for(&home.url());
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "near synced", || synced(&store, "near"));
    expect_within(WAIT, "far's failure recorded", || {
        !sync_error(&store, "far").is_empty()
    });
    worker.shutdown().unwrap();
    let error = sync_error(&store, "far");
    assert!(
        error.contains("\"mars\"") && error.contains("ZOOID_INSTANCES"),
        "{error}"
    );
    assert!(home.requests().iter().all(|r| r.relay_id() != Some("far")));
    assert!(mars.requests().is_empty(), "nothing was sent anywhere");
    // Not given up: the next start that knows the zooid syncs it, at once.
    let env = env_with(&home, &[("mars", &mars)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "far synced at mars", || synced(&store, "far"));
    worker.shutdown().unwrap();
    assert_eq!(held(&mars), ["far"]);
}

/// One zooid down for longer than the retry schedule, or refusing the robot: the other's
/// relays keep syncing within an answer or so of each change; the first's wait, give up
/// nothing, and sync once it is back.
fn one_zooid_unfit_holds_up_only_its_relays(
    break_it: impl Fn(&FixtureZooid),
    mend: impl Fn(&FixtureZooid),
) {
    let (home, eu, _dir, db, store) = two_zooids();
    for (id, zooid) in [("h1", ""), ("h2", ""), ("e1", "eu"), ("e2", "eu")] {
        store.command.create_relay(id, &at(id, zooid)).unwrap();
    }
    let env = env_with(&home, &[("eu", &eu)]);
    let retries_end = env.retry.cap * env.retry.max_attempts;
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "every relay synced", || {
        ["h1", "h2", "e1", "e2"].iter().all(|id| synced(&store, id))
    });
    break_it(&eu);
    let conn = host_connection(&db);
    host_renames(&conn, "e1", "while eu is down");
    host_renames(&conn, "e2", "while eu is down");
    // Past the whole retry schedule, the default zooid's relays keep syncing at once.
    let until = Instant::now() + retries_end * 3;
    let mut n = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until || n < 5 {
        n += 1;
        let name = format!("home change {n}");
        let changed = Instant::now();
        host_renames(&conn, "h1", &name);
        expect_within(
            Duration::from_secs(3),
            "the change at the default zooid",
            || {
                home.relay("h1")
                    .is_some_and(|r| r["info"]["name"] == name.as_str())
            },
        );
        slowest = slowest.max(changed.elapsed());
    }
    // The feed looks every 20 ms while busy; the fixture answers in a millisecond or two.
    println!("{n} changes at the default zooid while eu is unfit, the slowest in {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a change took {slowest:?} while eu is unfit"
    );
    assert!(!synced(&store, "e1") && !synced(&store, "e2"));
    assert!(
        sync_error(&store, "e1").starts_with(zooid_sync::ZOOID_UNAVAILABLE),
        "{}",
        sync_error(&store, "e1")
    );
    mend(&eu);
    expect_within(WAIT, "eu's relays synced once it is back", || {
        synced(&store, "e1") && synced(&store, "e2")
    });
    worker.shutdown().unwrap();
    assert!(eu
        .relay("e1")
        .is_some_and(|r| r["info"]["name"] == "while eu is down"));
    assert_eq!(held(&home), ["h1", "h2"]);
}

#[test]
fn one_zooid_down_holds_up_only_its_relays() {
    one_zooid_unfit_holds_up_only_its_relays(
        |fx| fx.refuse_connections(),
        |fx| fx.accept_connections().unwrap(),
    );
}

#[test]
fn one_zooid_refusing_the_robot_holds_up_only_its_relays() {
    one_zooid_unfit_holds_up_only_its_relays(
        |fx| fx.set_whitelist(&[]),
        |fx| fx.set_whitelist(&[robot().public_key().to_hex()]),
    );
}

#[test]
fn a_moved_relay_is_created_at_its_new_zooid_then_deleted_at_the_old() {
    let (home, eu, _dir, _db, store) = two_zooids();
    store
        .command
        .create_relay("mover", &at("mover", ""))
        .unwrap();
    let env = env_with(&home, &[("eu", &eu)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "synced at home", || synced(&store, "mover"));
    let first_secret = home.relay("mover").unwrap()["secret"].clone();
    host_moves(&store, "mover", "eu");
    expect_within(WAIT, "moved", || {
        synced(&store, "mover") && home.relay("mover").is_none() && eu.relay("mover").is_some()
    });
    worker.shutdown().unwrap();
    let at_eu: Vec<_> = eu
        .requests_for("mover")
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(at_eu, ["POST"], "created at its new zooid as a new relay");
    let at_home: Vec<_> = home
        .requests_for("mover")
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(at_home, ["POST", "DELETE"]);
    assert_ne!(
        eu.relay("mover").unwrap()["secret"],
        first_secret,
        "a fresh secret"
    );
    assert_eq!(settled_at(&store, "mover").as_deref(), Some("eu"));
}

/// `zooid-sync run` against `home`, with `ZOOID_INSTANCES` naming `eu`.
fn daemon_with(
    home: &FixtureZooid,
    eu: &FixtureZooid,
    db: &std::path::Path,
) -> std::process::Child {
    zooid_sync(home, db)
        .env("ZOOID_INSTANCES", format!("eu={}", eu.url()))
        .env("RUST_LOG", "info")
        .args(["run", "--feed-interval", "10ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_move_killed_between_the_create_and_the_delete_ends_at_the_new_zooid_only() {
    let (home, eu, _dir, db, store) = two_zooids();
    store
        .command
        .create_relay("mover", &at("mover", ""))
        .unwrap();
    let mut daemon = daemon_with(&home, &eu, &db);
    expect_within(WAIT, "synced at home", || synced(&store, "mover"));
    // The old zooid does not answer the move's DELETE: the daemon dies while it waits.
    home.inject("mover", Fault::Hang);
    host_moves(&store, "mover", "eu");
    // (The fixture has taken the DELETE and holds its answer back.)
    expect_within(WAIT, "created at eu, the DELETE at home in flight", || {
        eu.relay("mover").is_some()
            && home
                .requests_for("mover")
                .iter()
                .any(|r| r.method == "DELETE")
    });
    let _ = Command::new("kill")
        .args(["-KILL", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    home.clear_faults();
    assert!(
        !synced(&store, "mover"),
        "not synced before both halves are done"
    );
    let mut daemon = daemon_with(&home, &eu, &db);
    expect_within(WAIT, "the move finished", || {
        synced(&store, "mover") && home.relay("mover").is_none()
    });
    terminate(&mut daemon);
    assert!(eu.relay("mover").is_some());
    assert_eq!(settled_at(&store, "mover").as_deref(), Some("eu"));
}

#[test]
fn zooid_instances_without_the_zooid_column_stop_the_start_naming_both() {
    let eu = fixture();
    let home = fixture();
    let (_dir, db) = temp_db();
    {
        // A host's own relay table, made before the column existed.
        let conn = rusqlite::Connection::open(&db).unwrap();
        let schema =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/schema.sql"))
                .unwrap()
                .replace(
                    "updated_at              INTEGER NOT NULL,",
                    "updated_at              INTEGER NOT NULL",
                )
                .replace("    zooid                   TEXT NOT NULL DEFAULT ''\n", "");
        conn.execute_batch(&schema).unwrap();
    }
    let store = open_store(&db);
    assert!(!store.query.has_zooid_column());
    let out = output({
        let mut c = zooid_sync(&home, &db);
        c.env("ZOOID_INSTANCES", format!("eu={}", eu.url()))
            .arg("run");
        c
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ZOOID_INSTANCES") && stderr.contains("ADD COLUMN zooid"),
        "{stderr}"
    );
    // And a host cannot name a zooid where the table has no column for it.
    let err = store
        .command
        .create_relay("x", &at("x", "eu"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("zooid column"), "{err}");
}

#[test]
fn check_healthz_metrics_and_status_name_each_zooid() {
    let (home, eu, _dir, db, store) = two_zooids();
    store.command.create_relay("e1", &at("e1", "eu")).unwrap();
    let checked = output({
        let mut c = zooid_sync(&home, &db);
        c.env("ZOOID_INSTANCES", format!("eu={}", eu.url()))
            .arg("check");
        c
    });
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{report}");
    assert!(report.contains("ok   zooids: default, eu"), "{report}");
    assert!(
        report.contains(&format!("ok   zooid: {} answers", home.url())),
        "{report}"
    );
    assert!(
        report.contains(&format!("ok   zooid eu: {} answers", eu.url())),
        "{report}"
    );
    // A zooid that does not answer fails the check, named.
    eu.refuse_connections();
    let checked = output({
        let mut c = zooid_sync(&home, &db);
        c.env("ZOOID_INSTANCES", format!("eu={}", eu.url()))
            .arg("check");
        c
    });
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{report}");
    assert!(report.contains("FAIL zooid eu: cannot reach"), "{report}");

    // The daemon's /healthz has a line for each zooid, eu's saying it is unavailable.
    let port = free_port();
    let mut daemon = zooid_sync(&home, &db)
        .env("ZOOID_INSTANCES", format!("eu={}", eu.url()))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    expect_within(WAIT, "eu's outage in /healthz", || {
        local_get(port, "/healthz").is_some_and(|(status, body)| {
            status == 200 && body.starts_with("ok\nzooid: up\nzooid eu: unavailable since")
        })
    });
    // And /metrics says which zooid is down, each zooid-facing series labelled.
    let (_, metrics) = local_get(port, "/metrics").unwrap();
    for line in [
        "zooid_sync_zooid_up{zooid=\"default\"} 1",
        "zooid_sync_zooid_up{zooid=\"eu\"} 0",
        "zooid_sync_breaker_opened_total{zooid=\"eu\"} 1",
        "zooid_sync_breaker_opened_total{zooid=\"default\"} 0",
        "zooid_sync_requests_in_flight{zooid=\"eu\"} 0",
    ] {
        assert!(
            metrics.contains(&format!("\n{line}\n")),
            "{line}\n{metrics}"
        );
    }
    let status = run_cli(&home, &db, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.starts_with("zooid eu unreachable since"), "{text}");
    let header = text.lines().find(|l| l.starts_with("ID")).unwrap();
    assert!(
        header.starts_with("ID  HOST") && header.contains("  ZOOID  STATUS"),
        "{header}"
    );
    let row = text.lines().find(|l| l.starts_with("e1 ")).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("eu"), "{row}");
    let json = run_cli(&home, &db, &["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["id"], "e1");
    assert_eq!(rows[0]["zooid"], "eu");
    // members asks the relay's own zooid.
    eu.accept_connections().unwrap();
    eu.put_relay(
        "e1",
        serde_json::json!({"host": "e1.relays.example.com", "schema": "e1"}),
    );
    eu.set_members("e1", &[OWNER]);
    let members = output({
        let mut c = zooid_sync(&home, &db);
        c.env("ZOOID_INSTANCES", format!("eu={}", eu.url()))
            .args(["members", "e1"]);
        c
    });
    assert!(members.status.success(), "{members:?}");
    assert_eq!(String::from_utf8_lossy(&members.stdout).trim(), OWNER);
    terminate(&mut daemon);
}

#[test]
fn a_slow_zooid_slows_only_its_own_catch_up() {
    use zooid_sync::fixture::CostModel;
    let (home, eu) = (fixture(), fixture());
    // eu's writes cost its core 60 ms before they answer and 30 ms after.
    eu.set_cost(Some(
        CostModel::writes_of(Duration::from_millis(60)).with_after(Duration::from_millis(30)),
    ));
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    let (home_ids, eu_ids): (Vec<String>, Vec<String>) = (
        (0..100).map(|n| format!("home{n:03}")).collect(),
        (0..100).map(|n| format!("eu{n:03}")).collect(),
    );
    for id in &home_ids {
        store.command.create_relay(id, &at(id, "")).unwrap();
    }
    for id in &eu_ids {
        store.command.create_relay(id, &at(id, "eu")).unwrap();
    }
    let mut env = env_with(&home, &[("eu", &eu)]);
    env.sync_zooid_share = zooid_sync::DEFAULT_ZOOID_SHARE; // both catch-ups paced
    let started = Instant::now();
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "the default zooid's catch-up", || {
        home_ids.iter().all(|id| synced(&store, id))
    });
    let home_took = started.elapsed();
    let eu_done = eu_ids.iter().filter(|id| synced(&store, id)).count();
    // eu's catch-up is recorded under its own names, and status says so, naming eu.
    let recorded = store.query.worker_settings().unwrap();
    assert!(
        recorded.iter().any(|(name, _)| name == "catch_up_since:eu"),
        "{recorded:?}"
    );
    let lines = zooid_sync::status::catch_up_lines(
        &recorded,
        &store.query.count_pending_by_zooid().unwrap(),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("catch-up at zooid eu since")),
        "{lines:?}"
    );
    worker.shutdown().unwrap();
    // At a quarter of a core and 90 ms a write, eu's 100 relays take about 36 s: when the
    // default zooid's are all synced, most of eu's still wait.
    assert!(
        eu_done < eu_ids.len() / 2,
        "eu synced {eu_done} in {home_took:?}: its pace is not its own"
    );
    // The default zooid's catch-up kept its own pace: its fixture costs nothing, and writes
    // went at the pool's speed, not eu's.
    assert!(
        home_took < Duration::from_secs(10),
        "the default zooid's 100 relays took {home_took:?} beside a slow zooid"
    );
    assert_eq!(held(&home).len(), 100);
}

#[test]
fn a_relay_deleted_while_its_create_is_in_flight_is_deleted_where_it_was_created() {
    let (home, eu, _dir, _db, store) = two_zooids();
    // eu takes its time with the create: the host deletes the relay meanwhile.
    eu.inject_times("brief", Fault::Delay(Duration::from_millis(300)), 1);
    store
        .command
        .create_relay("brief", &at("brief", "eu"))
        .unwrap();
    let env = env_with(&home, &[("eu", &eu)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "the create in flight at eu", || {
        eu.in_flight("brief") == 1
    });
    store.command.delete_relay("brief").unwrap();
    expect_within(WAIT, "the deletion recorded", || {
        store.query.list_pending_deletions().unwrap().is_empty()
    });
    worker.shutdown().unwrap();
    assert!(eu.relay("brief").is_none(), "deleted where it was created");
    let at_eu: Vec<_> = eu
        .requests_for("brief")
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(at_eu, ["POST", "DELETE"]);
    assert!(
        home.requests_for("brief").is_empty(),
        "nothing sent to the default zooid"
    );
    assert_eq!(settled_at(&store, "brief"), None);
}

#[test]
fn a_move_whose_delete_fails_is_finished_by_its_next_sync_and_a_deletion_reaches_both() {
    let (home, eu, _dir, _db, store) = two_zooids();
    for id in ["m1", "m2"] {
        store.command.create_relay(id, &at(id, "")).unwrap();
    }
    let env = env_with(&home, &[("eu", &eu)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "synced at home", || {
        synced(&store, "m1") && synced(&store, "m2")
    });
    // The old zooid refuses the moves' deletions for a while.
    let refuse = Fault::Status {
        status: 500,
        body: r#"{"error":"disk trouble"}"#.into(),
    };
    home.inject("m1", refuse.clone());
    home.inject("m2", refuse);
    host_moves(&store, "m1", "eu");
    host_moves(&store, "m2", "eu");
    expect_within(WAIT, "the moves half done", || {
        ["m1", "m2"].iter().all(|id| {
            store.query.relay_placement(id).unwrap()
                == Some(zooid_sync::Placement {
                    zooid: "eu".into(),
                    leaving: "default".into(),
                })
        })
    });
    assert!(eu.relay("m1").is_some() && home.relay("m1").is_some());
    // m2 is deleted by the host while half moved: it goes from both zooids.
    store.command.delete_relay("m2").unwrap();
    home.clear_faults();
    expect_within(WAIT, "m1 moved and m2 deleted", || {
        synced(&store, "m1") && store.query.list_pending_deletions().unwrap().is_empty()
    });
    worker.shutdown().unwrap();
    assert_eq!(settled_at(&store, "m1").as_deref(), Some("eu"));
    assert!(home.relay("m1").is_none() && eu.relay("m1").is_some());
    assert!(home.relay("m2").is_none() && eu.relay("m2").is_none());
}

#[test]
fn a_move_away_from_a_zooid_that_is_down_waits_for_it_without_asking_it() {
    let (home, eu, _dir, db, store) = two_zooids();
    store.command.create_relay("m", &at("m", "")).unwrap();
    let env = env_with(&home, &[("eu", &eu)]);
    let worker = start_worker(&store, &env);
    expect_within(WAIT, "synced at home", || synced(&store, "m"));
    // home answers everything, probes included, with 503: it is down.
    home.inject(
        "*",
        Fault::Status {
            status: 503,
            body: r#"{"error":"restarting"}"#.into(),
        },
    );
    host_moves(&store, "m", "eu");
    expect_within(WAIT, "half moved, waiting for home", || {
        store.query.zooid_outage("default").unwrap().is_some()
            && sync_error(&store, "m").starts_with(zooid_sync::ZOOID_UNAVAILABLE)
    });
    assert!(eu.relay("m").is_some());
    let deletes = || {
        home.requests_for("m")
            .iter()
            .filter(|r| r.method == "DELETE")
            .count()
    };
    let asked = deletes();
    let conn = host_connection(&db);
    let failures = || -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM activity WHERE resource_id = 'm'
               AND activity_type = 'fail_relay_sync'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let failed = failures();
    // A change while home is down: synced at eu, and home, its breaker open, is not asked.
    host_renames(&conn, "m", "while home is down");
    expect_within(WAIT, "the change at eu", || {
        eu.relay("m")
            .is_some_and(|r| r["info"]["name"] == "while home is down")
    });
    expect_within(WAIT, "its failure recorded", || failures() > failed);
    assert!(
        sync_error(&store, "m").contains("is moved when zooid default answers again"),
        "{}",
        sync_error(&store, "m")
    );
    assert_eq!(
        deletes(),
        asked,
        "no DELETE sent to a zooid whose breaker is open"
    );
    home.clear_faults();
    expect_within(WAIT, "moved once home answers", || {
        synced(&store, "m") && home.relay("m").is_none()
    });
    worker.shutdown().unwrap();
    assert_eq!(settled_at(&store, "m").as_deref(), Some("eu"));
}
