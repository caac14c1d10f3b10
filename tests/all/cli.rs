//! The `zooid-sync` binary, run as a process: `run` picks up rows another process writes and
//! stops cleanly on SIGTERM; `sync`, `status`, `members` and `dev` do what they say; a missing
//! setting stops it with a line naming the variable.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use rusqlite::Connection;
use zooid_sync::fixture::Fault;

const WAIT: Duration = Duration::from_secs(20);

fn synced(conn: &Connection, id: &str) -> bool {
    conn.query_row("SELECT synced FROM relay WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .map(|s| s == 1)
    .unwrap_or(false)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    expect_within(WAIT, "the process to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn run_syncs_rows_written_by_another_process_and_exits_0_on_sigterm() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    open_store(&db); // the host created the schema
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = zooid_sync(&fx, &db)
        .args(["run", "--feed-interval", "10ms", "--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let host = Connection::open(&db).unwrap();
    host.busy_timeout(Duration::from_secs(5)).unwrap();
    // Once this one is synced the daemon is past its startup reconcile.
    host_creates(&host, "ready");
    expect_within(WAIT, "the daemon to start", || synced(&host, "ready"));
    for id in ["alpha", "beta", "gamma"] {
        host_creates(&host, id);
    }
    expect_within(WAIT, "the relays synced", || {
        ["alpha", "beta", "gamma"]
            .iter()
            .all(|id| synced(&host, id))
    });
    // Each activity was dispatched once: one POST per relay.
    for id in ["alpha", "beta", "gamma"] {
        assert_eq!(fx.requests_for(id).len(), 1, "{id}");
    }
    // An update from the host is picked up too.
    host.execute(
        "UPDATE relay SET info_name = 'Changed', synced = 0, revision = 2 WHERE id = 'alpha'",
        [],
    )
    .unwrap();
    host.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type, resource_id)
         VALUES ('host-upd', ?1, 0, 'update_relay', 'relay', 'alpha')",
        [OWNER],
    )
    .unwrap();
    expect_within(WAIT, "the update synced", || synced(&host, "alpha"));
    assert_eq!(fx.relay("alpha").unwrap()["info"]["name"], "Changed");

    let health = ureq::get(&format!("http://{listen}/healthz"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert_eq!(health, "ok\nzooid: up\n");
    let metrics = ureq::get(&format!("http://{listen}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    // "ready" may have synced twice if it landed during startup; the others once each.
    let synced: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("zooid_sync_syncs_total{zooid=\"default\",outcome=\"synced\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(synced >= 5, "{metrics}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_exit(&mut child);
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("zooid-sync stopped"), "{logs}");
    assert!(
        !logs.contains(ROBOT_SECRET),
        "the robot key reached the log"
    );
}

#[test]
fn sync_runs_one_relay_and_its_exit_status_says_how_it_went() {
    let (fx, _dir, db, store) = one_relay("alpha");
    fx.inject_times(
        "alpha",
        Fault::Status {
            status: 502,
            body: "{\"error\":\"bad gateway\"}".into(),
        },
        1,
    );

    let failed = run_cli(&fx, &db, &["sync", "alpha"]);
    assert_eq!(failed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&failed.stdout);
    assert!(
        text.contains("relay alpha: failed") && text.contains("502"),
        "{text}"
    );

    let ok = run_cli(&fx, &db, &["sync", "alpha"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("relay alpha: synced (POST 201)"));
    assert!(store.query.get_relay("alpha").unwrap().unwrap().synced);
}

#[test]
fn status_shows_attempts_next_retry_and_give_up() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    for id in ["done", "failing", "stuck", "waiting"] {
        store.command.create_relay(id, &settings(id)).unwrap();
    }
    store.command.complete_relay_sync("done", 1).unwrap();
    store
        .command
        .fail_relay_sync("failing", "zooid answered 503")
        .unwrap();
    for _ in 0..7 {
        store
            .command
            .fail_relay_sync("stuck", "zooid answered 400: bad")
            .unwrap();
    }
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["status", "--json"])
            .env("SYNC_RETRY_BASE", "30s")
            .env("SYNC_RETRY_CAP", "15m");
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(row("done")["synced"], true);
    assert_eq!(row("done")["host"], "done.relays.example.com");
    assert_eq!(row("failing")["attempts"], 1);
    let next = row("failing")["next_retry"].as_str().unwrap().to_string();
    assert!(next.starts_with("in ") && next.ends_with('s'), "{next}");
    assert_eq!(row("stuck")["next_retry"], "gave up");
    assert_eq!(row("stuck")["attempts"], 7);
    assert_eq!(row("waiting")["next_retry"], "pending");

    let table = output({
        let mut c = zooid_sync(&fx, &db);
        c.arg("status");
        c
    });
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().next().unwrap().starts_with("ID"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("stuck") && l.contains("gave up")),
        "{text}"
    );
}

#[test]
fn members_lists_what_zooid_knows() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    fx.put_relay("alpha", serde_json::json!({"host": "a", "schema": "alpha"}));
    fx.set_members("alpha", &[OWNER]);
    let out = run_cli(&fx, &db, &["members", "alpha"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), OWNER);
    let missing = run_cli(&fx, &db, &["members", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not know relay \"nope\""));
    fx.put_relay("empty", serde_json::json!({"host": "e", "schema": "empty"}));
    let empty = run_cli(&fx, &db, &["members", "empty"]);
    assert!(empty.status.success());
    assert!(
        empty.stdout.is_empty(),
        "standard output stays one member a line"
    );
    assert!(String::from_utf8_lossy(&empty.stderr).contains("relay empty has no members"));
    // zooid failing is a failure (1), not bad configuration (2).
    fx.set_api_host(Some("zooid.example.test"));
    let refused = run_cli(&fx, &db, &["members", "alpha"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("API_HOST"));
    fx.set_api_host(None);
    let down = output({
        let mut c = zooid_sync(&fx, &db);
        c.env("ZOOID_API_URL", format!("http://127.0.0.1:{}", free_port()))
            .args(["members", "alpha"]);
        c
    });
    assert_eq!(down.status.code(), Some(1));
}

#[test]
fn a_missing_setting_stops_it_with_the_variable_named() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    for var in ["ZOOID_API_URL", "RELAY_DOMAIN", "ROBOT_SECRET"] {
        let out = output({
            let mut c = zooid_sync(&fx, &db);
            c.arg("run").env_remove(var);
            c
        });
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.lines().count() == 1, "{err}");
    }
}

#[test]
fn status_and_sync_refuse_a_database_that_does_not_exist() {
    let fx = fixture();
    let (_dir, db) = temp_db(); // never created
    for args in [vec!["status"], vec!["sync", "alpha"]] {
        let out = output({
            let mut c = zooid_sync(&fx, &db);
            c.args(&args);
            c
        });
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("DATABASE_PATH: there is no database at"),
            "{err}"
        );
        assert!(!db.exists(), "{args:?} created the database");
    }
}

#[test]
fn dev_runs_to_completion() {
    let out = Command::new(env!("CARGO_BIN_EXE_zooid-sync"))
        .arg("dev")
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Settled: every relay is synced"), "{text}");
    assert_eq!(
        text.matches("fail_relay_sync      gamma").count(),
        2,
        "{text}"
    );
    assert!(text.contains("PATCH  /relay/alpha"), "{text}");
}

#[test]
fn no_secret_reaches_the_log_even_at_trace() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    let mut s = settings("alpha");
    s.blossom_enabled = true;
    s.livekit_enabled = true;
    store.command.create_relay("alpha", &s).unwrap();
    let (s3, lk) = ("s3-secret-0123456789abcdef", "lk-secret-0123456789abcdef");
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "alpha"])
            .env("RUST_LOG", "trace")
            .env("BLOSSOM_S3_ENDPOINT", "https://s3.example.com")
            .env("BLOSSOM_S3_REGION", "r")
            .env("BLOSSOM_S3_BUCKET", "b")
            .env("BLOSSOM_S3_ACCESS_KEY", "a")
            .env("BLOSSOM_S3_SECRET_KEY", s3)
            .env("LIVEKIT_URL", "wss://lk.example.com")
            .env("LIVEKIT_API_KEY", "k")
            .env("LIVEKIT_API_SECRET", lk);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relay_secret = fx.relay("alpha").unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fx.relay("alpha").unwrap()["blossom"]["s3"]["secret_key"],
        s3
    );
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(logs.contains("POST 201"), "the log is there: {logs}");
    // Any 8-character piece would betray a secret logged in fragments (hex dumps).
    for secret in [ROBOT_SECRET, s3, lk, relay_secret.as_str()] {
        for piece in secret.as_bytes().chunks(8) {
            let piece = std::str::from_utf8(piece).unwrap();
            assert!(
                !logs.contains(piece) || piece.len() < 8,
                "{piece} of a secret is in the log"
            );
        }
    }
}

#[test]
fn status_only_reads_even_while_the_host_holds_the_write_lock() {
    let (fx, dir, db, store) = one_relay("alpha");
    store
        .command
        .fail_relay_sync("alpha", "zooid answered 500")
        .unwrap();
    drop(store); // the last connection closes: no -wal or -shm file is left
    assert!(!dir.path().join("zooid-sync.db-wal").exists());
    let before = std::fs::read(&db).unwrap();
    let out = run_cli(&fx, &db, &["status"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("alpha"));
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "status wrote to the database"
    );

    // The host holds the write lock: a command that took it would wait 5 s and fail.
    let host = rusqlite::Connection::open(&db).unwrap();
    host.execute_batch("BEGIN IMMEDIATE; UPDATE relay SET plan_id = 'pro' WHERE id = 'alpha';")
        .unwrap();
    let started = std::time::Instant::now();
    let out = run_cli(&fx, &db, &["status", "--json"]);
    let took = started.elapsed();
    host.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("zooid answered 500"));
    assert!(
        took < std::time::Duration::from_secs(4),
        "status waited {took:?} for the lock"
    );
}

#[test]
fn run_refuses_a_database_that_does_not_exist_and_creates_nothing() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("platfrom.db");
    let out = run_cli(&fx, &typo, &["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("there is no database at") && err.contains("platfrom.db"),
        "{err}"
    );
    assert!(err.contains("zooid-sync init"), "says what to do: {err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "created {left:?}");

    let out = run_cli(&fx, &typo, &["init"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));
    let out = run_cli(&fx, &typo, &["init"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema is current"));
}

#[test]
fn a_host_table_without_a_contract_column_is_refused_at_start_by_name() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE relay (id TEXT PRIMARY KEY NOT NULL, tenant_pubkey TEXT NOT NULL,
            schema TEXT NOT NULL, subdomain TEXT NOT NULL, plan_id TEXT, status TEXT,
            sync_error TEXT, synced INTEGER, info_name TEXT, info_icon TEXT,
            info_description TEXT, policy_public_read INTEGER, policy_public_write INTEGER,
            policy_public_join INTEGER, policy_strip_signatures INTEGER, groups_enabled INTEGER,
            management_enabled INTEGER, members_can_invite INTEGER, blossom_enabled INTEGER,
            livekit_enabled INTEGER, push_enabled INTEGER, created_at INTEGER,
            updated_at INTEGER);",
    )
    .unwrap();
    let out = run_cli(&fx, &db, &["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("relay.revision"), "{err}");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0, "no version stamped on the host's tables");
}

/// `zooid-sync check` against `fx`: its exit status and output.
fn check(fx: &zooid_sync::fixture::FixtureZooid, db: &std::path::Path, url: &str) -> (i32, String) {
    let out = output({
        let mut c = zooid_sync(fx, db);
        c.env("ZOOID_API_URL", url).arg("check");
        c
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_names_each_cause_on_one_line() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let (code, text) = check(&fx, &db, &fx.url());
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok   zooid:") && text.contains("every check passed"),
        "{text}"
    );
    assert!(
        text.contains(&robot().public_key().to_hex()),
        "names the robot: {text}"
    );
    assert!(
        text.contains("holds the contract; 1 relay, 1 pending"),
        "{text}"
    );

    fx.set_api_host(Some("zooid.example.test"));
    let (code, text) = check(&fx, &db, &fx.url());
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL zooid: zooid refuses zooid-sync:") && text.contains("API_HOST"),
        "{text}"
    );
    fx.set_api_host(None);

    fx.set_whitelist(&[]);
    let (code, text) = check(&fx, &db, &fx.url());
    assert_eq!(code, 1, "{text}");
    let hex = robot().public_key().to_hex();
    assert!(text.contains(&format!("Add {hex} to it")), "{text}");
    fx.set_whitelist(&[hex]);

    let down = format!("http://127.0.0.1:{}", free_port());
    let (code, text) = check(&fx, &db, &down);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("nothing listens there: is zooid running"),
        "{text}"
    );

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls");
    let tls = zooid_sync::fixture::FixtureZooid::start_with(zooid_sync::fixture::FixtureOptions {
        whitelist: vec![robot().public_key().to_hex()],
        strict: true,
        tls: Some(zooid_sync::fixture::TlsIdentity {
            cert_chain_pem: std::fs::read(format!("{dir}/server.pem")).unwrap(),
            key_pem: std::fs::read(format!("{dir}/server.key")).unwrap(),
        }),
    })
    .unwrap();
    let (code, text) = check(&tls, &db, &tls.url());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("set ZOOID_CA_FILE"), "{text}");

    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.env("DATABASE_PATH", "/nonexistent/platfrom.db")
            .arg("check");
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL database: there is no database at /nonexistent/platfrom.db"),
        "{text}"
    );
    for line in text.lines() {
        assert!(
            line.starts_with("ok   ") || line.starts_with("FAIL ") || line.ends_with("failed"),
            "one finding a line: {line}"
        );
    }
}

#[test]
fn pubkey_prints_the_robots_key_as_hex_and_npub() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let out = run_cli(&fx, &db, &["pubkey"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], robot().public_key().to_hex());
    assert!(lines[1].starts_with("npub1"), "{text}");
}

#[test]
fn status_in_an_empty_environment_shows_what_the_daemon_does() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    fx.inject(
        "alpha",
        zooid_sync::fixture::Fault::Status {
            status: 500,
            body: r#"{"error":"disk trouble"}"#.into(),
        },
    );
    // The daemon gives up after the first retry; the shell's defaults would say 6.
    let mut run = {
        let mut c = zooid_sync(&fx, &db);
        c.env("SYNC_RETRY_MAX_ATTEMPTS", "1")
            .args(["run", "--feed-interval", "10ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().unwrap()
    };
    assert!(fx.wait_for_requests(Duration::from_secs(20), |rs| rs.len() >= 2));
    terminate(&mut run);
    let out = Command::new(env!("CARGO_BIN_EXE_zooid-sync"))
        .env_clear()
        .env("DATABASE_PATH", &db)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["host"], "alpha.relays.example.com", "{rows}");
    assert_eq!(rows[0]["next_retry"], "gave up", "{rows}");
}

#[test]
fn flags_out_of_bounds_are_refused_with_what_to_write() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let cases: [(&[&str], &str); 4] = [
        (&["run", "--feed-interval", "0ms"], "between 1ms and 1m"),
        (
            &["run", "--listen", "9464"],
            "expected HOST:PORT, such as 127.0.0.1:9464",
        ),
        (&["sync"], "--failed | --all"),
        (&["prune", "--older-than", "10m"], "at least 1h"),
    ];
    for (args, says) in cases {
        let out = run_cli(&fx, &db, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let help = run_cli(&fx, &db, &["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for setting in [
        "SYNC_MAX_RATE",
        "ZOOID_PROXY",
        "LIVEKIT_API_SECRET",
        "SYNC_RETRY_CAP",
    ] {
        assert!(text.contains(setting), "--help lists {setting}");
    }
}
