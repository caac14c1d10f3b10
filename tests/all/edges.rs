//! The fault suite, at the edges: what an operator, a careless host or an attacker can throw
//! at zooid-sync. The `--listen` endpoint under floods and slow clients (measured on the real
//! binary: file descriptors, threads, RSS), host rows that cannot be read, zooid answers that
//! quote secrets or terminal escapes, huge host values, unsafe settings, unsafe ids, files.
//! Each test prints the figures it measured (`cargo test --test all edges -- --nocapture`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use rusqlite::{params, Connection};
use zooid_sync::endpoint::{self, Limits};
use zooid_sync::fixture::{Fault, FixtureZooid};
use zooid_sync::ZooidError;
use zooid_sync::{HostError, Infra, Store, ZooidClient};

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The binary, and what /proc says about it.

/// `zooid-sync run --listen` as a process, its log collected as it goes.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(fx: &FixtureZooid, db: &std::path::Path) -> Daemon {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if !db.exists() {
            open_store(db); // `zooid-sync init`: run refuses a database that does not exist
        }
        let mut child = zooid_sync(fx, db)
            .args([
                "run",
                "--feed-interval",
                "10ms",
                "--listen",
                &addr.to_string(),
            ])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let daemon = Daemon { child, addr, log };
        // 200 comes as soon as it listens; "ok" once it holds the lease and syncs.
        expect_within(WAIT, "the daemon to answer /healthz with ok", || {
            http_get(daemon.addr, "/healthz")
                .is_some_and(|(s, body)| s == 200 && body.starts_with("ok"))
        });
        daemon
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn metric(&self, line_start: &str) -> f64 {
        let (_, text) = http_get(self.addr, "/metrics").expect("/metrics answers");
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET` on a fresh connection that asks to be closed: the status and the body, or
/// `None` when the server closed without an answer.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// What a health probe like `curl` does: one request, read the answer, close.
fn probe_like_curl(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer is small: read until its body ("ok\nzooid: up\n") has arrived, then hang up.
    while !seen.ends_with(b"zooid: up\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The process's open sockets.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn threads(pid: u32) -> u64 {
    proc_status(pid, "Threads:")
}

fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// Sockets on `port` in state CLOSE_WAIT: the peer hung up and we never closed our end.
fn close_wait(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(String::from).collect::<Vec<_>>())
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3
                && cols[1].rsplit(':').next() == Some(&format!("{port:04X}"))
                && cols[3] == "08"
        })
        .count()
}

/// The process's file descriptors open on the database file itself (one per connection).
fn database_connections(pid: u32, db: &std::path::Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == db)
        .count()
}

/// Whether the server has closed this connection: past whatever it answered, a read sees
/// the end or a reset.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

// ---------------------------------------------------------------------------------------------
// The --listen endpoint.

#[test]
fn listen_closes_every_connection_it_served() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let daemon = Daemon::start(&fx, &db);
    let pid = daemon.pid();
    let (fds_before, sockets_before, threads_before) = (fds(pid), sockets(pid), threads(pid));
    for _ in 0..100 {
        probe_like_curl(daemon.addr);
    }
    expect_within(WAIT, "every probe's socket closed", || {
        sockets(pid) <= sockets_before && close_wait(daemon.addr.port()) == 0
    });
    expect_within(WAIT, "every connection thread gone", || {
        threads(pid) <= threads_before
    });
    println!(
        "100 probes: sockets {sockets_before} -> {}, fds {fds_before} -> {}, threads \
         {threads_before} -> {}, CLOSE_WAIT {}",
        sockets(pid),
        fds(pid),
        threads(pid),
        close_wait(daemon.addr.port())
    );
}

#[test]
fn listen_holds_no_more_than_its_cap_of_connections_under_a_flood() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let daemon = Daemon::start(&fx, &db);
    let pid = daemon.pid();
    let cap = Limits::public().max_connections;
    let (fds_before, threads_before, rss_before) = (fds(pid), threads(pid), rss_kib(pid));
    let sockets_before = sockets(pid);
    // 300 clients that start a request and never finish it.
    let mut clients: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(daemon.addr).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost");
            s
        })
        .collect();
    let (mut max_threads, mut max_fds) = (0, 0);
    expect_within(
        WAIT,
        "the server to close every client beyond its cap (the longest waiting first)",
        || {
            max_threads = max_threads.max(threads(pid));
            max_fds = max_fds.max(fds(pid));
            clients
                .iter_mut()
                .map(closed_by_server)
                .filter(|&closed| closed)
                .count()
                >= 300 - cap
        },
    );
    let rss_during = rss_kib(pid);
    println!(
        "300 half-sent requests: threads {threads_before} -> at most {max_threads}, fds \
         {fds_before} -> at most {max_fds}, RSS {rss_before} -> {rss_during} KiB"
    );
    // A connection thread that has just unregistered may not have exited yet: a little slack.
    assert!(
        max_threads <= threads_before + cap as u64 + 4,
        "{max_threads}"
    );
    // Each served connection holds its socket and two handles on it; a newcomer that displaces
    // an idle connection is held (one socket) until that connection's thread has ended.
    assert!(max_fds <= fds_before + 3 * cap + 1, "{max_fds}");
    assert!(rss_during < rss_before + 16 * 1024, "{rss_during} KiB");
    drop(clients);
    expect_within(WAIT, "sockets and threads back where they were", || {
        sockets(pid) <= sockets_before && threads(pid) <= threads_before
    });
    assert_eq!(
        http_get(daemon.addr, "/healthz").map(|(s, _)| s),
        Some(200),
        "still serving"
    );
}

#[test]
fn one_client_holding_every_connection_cannot_keep_a_health_check_out() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let daemon = Daemon::start(&fx, &db);
    let addr = daemon.addr;
    let cap = Limits::public().max_connections;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One peer keeps more idle connections than the cap open, reopening each as it closes.
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            let mut opened = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                held.retain_mut(|s| !closed_by_server(s));
                while held.len() < cap + 8 {
                    held.push(TcpStream::connect(addr).unwrap());
                    opened += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            opened
        })
    };
    let answers: Vec<Option<u16>> = (0..24)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            http_get(addr, "/healthz").map(|(status, _)| status)
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let opened = flood.join().unwrap();
    println!("{opened} connections opened by the flood; health checks: {answers:?}");
    assert!(opened > cap, "the flood held every connection");
    assert!(answers.iter().all(|a| *a == Some(200)), "{answers:?}");
}

#[test]
fn listen_refuses_a_head_over_8_kib_without_reading_the_rest() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let daemon = Daemon::start(&fx, &db);
    let pid = daemon.pid();
    let rss_before = rss_kib(pid);
    // A header line of up to 64 MiB with no newline.
    let mut s = TcpStream::connect(daemon.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Long: ").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let rss_after = rss_kib(pid);
    println!(
        "a header line without end: the server hung up after {} KiB; RSS {rss_before} -> \
         {rss_after} KiB",
        sent / 1024
    );
    assert!(sent < 64 * 1024 * 1024, "the server read all {sent} bytes");
    assert!(rss_after < rss_before + 8 * 1024, "{rss_after} KiB");
}

#[test]
fn listen_refuses_a_body_before_reading_it() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let daemon = Daemon::start(&fx, &db);
    let pid = daemon.pid();
    let (sockets_before, rss_before) = (sockets(pid), rss_kib(pid));
    // 200 clients that declare 1 MiB and send one byte, all open at once.
    let mut clients: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(daemon.addr).unwrap();
            let _ = s.write_all(
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\nx",
            );
            s
        })
        .collect();
    expect_within(WAIT, "every client refused", || {
        clients.iter_mut().all(closed_by_server)
    });
    let rss_after = rss_kib(pid);
    println!("200 declared 1 MiB bodies: RSS {rss_before} -> {rss_after} KiB");
    assert!(rss_after < rss_before + 8 * 1024, "{rss_after} KiB");
    drop(clients);
    expect_within(WAIT, "sockets back where they were", || {
        sockets(pid) <= sockets_before
    });
    let mut s = TcpStream::connect(daemon.addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn parallel_scrapes_share_one_count_and_a_bounded_set_of_database_connections() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    {
        // 100 000 relays, all synced: the pending count reads every one of them.
        let store = open_store(&db);
        drop(store);
        let conn = Connection::open(&db).unwrap();
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO relay (id, tenant_pubkey, schema, subdomain, synced, created_at, updated_at)
             SELECT 'r' || i, ?1, 's' || i, 'd' || i, 1, 0, 0 FROM n",
            [OWNER],
        )
        .unwrap();
    }
    let daemon = Daemon::start(&fx, &db);
    let pid = daemon.pid();
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid));
    let addr = daemon.addr;
    let scrapers: Vec<_> = (0..150)
        .map(|_| {
            std::thread::spawn(move || {
                // A scraper closed at the cap tries again, as Prometheus would next time.
                wait_until(WAIT, || {
                    http_get(addr, "/metrics").is_some_and(|(s, body)| {
                        s == 200 && body.contains("zooid_sync_relays_pending 0")
                    })
                })
            })
        })
        .collect();
    let mut max_db = 0;
    while !scrapers.iter().all(|t| t.is_finished()) {
        max_db = max_db.max(database_connections(pid, &db));
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in scrapers {
        assert!(t.join().unwrap(), "a scraper never got an answer");
    }
    let (fds_after, rss_after) = (fds(pid), rss_kib(pid));
    println!(
        "150 parallel scrapes of 100 000 relays: database connections at most {max_db}, fds \
         {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB"
    );
    // One writer, the feed's own, and at most eight pooled readers.
    assert!(max_db <= 10, "{max_db} connections to the database");
    assert!(fds_after <= fds_before + 2 * 8, "{fds_after}");
    assert!(rss_after < rss_before + 32 * 1024, "{rss_after} KiB");
}

#[test]
fn listen_deadline_closes_a_trickling_or_idle_client() {
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    let limits = Limits {
        head_timeout: Some(Duration::from_millis(300)),
        idle_timeout: Some(Duration::from_millis(300)),
        ..Limits::public()
    };
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = endpoint::serve(
        "127.0.0.1:0",
        vec!["default".into()],
        Arc::default(),
        store.query,
        alive,
        limits,
    )
    .unwrap();

    // One byte every 20 ms keeps a per-read timeout from ever firing; a deadline does not
    // care.
    let mut trickle = TcpStream::connect(server.addr()).unwrap();
    let started = Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
    let mut bytes = request.iter().chain(std::iter::repeat(&b'a'));
    expect_within(WAIT, "the trickling client to be closed", || {
        let _ = trickle.write_all(&[*bytes.next().unwrap()]);
        std::thread::sleep(Duration::from_millis(20));
        closed_by_server(&mut trickle)
    });
    println!(
        "a client sending a byte every 20 ms was closed after {:?}",
        started.elapsed()
    );

    // A kept-alive connection that asks nothing more is closed once idle.
    let mut idle = TcpStream::connect(server.addr()).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    expect_within(WAIT, "the idle connection to be closed", || {
        closed_by_server(&mut idle)
    });
    expect_within(WAIT, "no connection left open", || {
        server.open_connections() == 0
    });
}

// ---------------------------------------------------------------------------------------------
// Host rows that cannot be read.

#[test]
fn an_activity_row_with_a_text_created_at_is_skipped_and_the_feed_goes_on() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    drop(open_store(&db));
    let daemon = Daemon::start(&fx, &db);
    let conn = Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type, resource_id)
         VALUES ('bad-one', ?1, datetime('now'), 'update_relay', 'relay', 'nobody')",
        [OWNER],
    )
    .unwrap();
    let bad_seq = conn.last_insert_rowid();
    let later: Vec<String> = (0..5).map(|i| format!("later{i}")).collect();
    for id in &later {
        host_creates(&conn, id);
    }
    expect_within(WAIT, "every later relay synced", || {
        later.iter().all(|id| fx.relay(id).is_some())
    });
    expect_within(WAIT, "the bad row counted", || {
        daemon.metric("zooid_sync_bad_rows_total{table=\"activity\"}") == 1.0
    });
    let log = daemon.log();
    let mentions = log
        .lines()
        .filter(|l| l.contains(&format!("seq {bad_seq}")))
        .count();
    println!("a text created_at: 1 bad row, logged {mentions} time(s), 5 later relays synced");
    assert_eq!(mentions, 1, "{log}");
    assert!(log.contains("created_at"), "the column is named: {log}");
}

#[test]
fn relay_rows_with_a_blob_or_non_utf8_id_are_skipped_and_the_rest_syncs() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let env = env_for(&fx.url());
    let store = open_store(&db);
    let conn = Connection::open(&db).unwrap();
    for (id, schema) in [("X'00FF'", "blobby"), ("CAST(X'C328' AS TEXT)", "mangled")] {
        conn.execute(
            &format!(
                "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, synced, created_at,
                                    updated_at) VALUES ({id}, ?1, ?2, ?2, 0, 0, 0)"
            ),
            params![OWNER, schema],
        )
        .unwrap();
    }
    let good: Vec<String> = (0..10).map(|i| format!("good{i}")).collect();
    for id in &good {
        host_creates(&conn, id);
    }
    let infra = Infra::new(store.query.clone(), store.command.clone(), &env);
    let metrics = infra.metrics();
    let worker = infra.spawn().unwrap();
    expect_within(WAIT, "the ten good relays synced", || {
        good.iter()
            .all(|id| store.query.get_relay(id).unwrap().is_some_and(|r| r.synced))
    });
    worker.shutdown().unwrap();
    let text = metrics.render(&Default::default());
    println!("pending list of 12: 2 bad rows skipped, 10 synced");
    assert!(
        text.contains("zooid_sync_bad_rows_total{table=\"relay\"} 2"),
        "{text}"
    );
    assert_eq!(fx.relay_ids().len(), 10);
}

// ---------------------------------------------------------------------------------------------
// Text from zooid and from the host.

fn all_detail(db: &std::path::Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT detail FROM activity UNION ALL SELECT sync_error FROM relay")
        .unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn a_zooid_that_echoes_the_request_leaves_no_secret_in_the_database_or_the_log() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    let mut s = settings("echo");
    s.blossom_enabled = true;
    s.livekit_enabled = true;
    store.command.create_relay("echo", &s).unwrap();
    fx.inject("echo", Fault::Echo(500));
    let (s3, lk) = ("s3-secret-0123456789abcdef", "lk-secret-0123456789abcdef");
    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "echo"])
            .env("BLOSSOM_S3_ENDPOINT", "https://s3.example.com")
            .env("BLOSSOM_S3_REGION", "r")
            .env("BLOSSOM_S3_BUCKET", "b")
            .env("BLOSSOM_S3_ACCESS_KEY", "a")
            .env("BLOSSOM_S3_SECRET_KEY", s3)
            .env("LIVEKIT_URL", "wss://lk.example.com")
            .env("LIVEKIT_API_KEY", "k")
            .env("LIVEKIT_API_SECRET", lk);
        let out = output(c);
        assert_eq!(out.status.code(), Some(1));
        runs.push(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let relay_secrets: Vec<String> = fx
        .requests_for("echo")
        .iter()
        .filter_map(|r| r.json.as_ref()?["secret"].as_str().map(String::from))
        .collect();
    assert_eq!(
        relay_secrets.len(),
        4,
        "four POSTs, each with its own secret"
    );
    let stored = all_detail(&db);
    let logs = runs.join("\n");
    assert!(
        stored.iter().any(|d| d.contains("<redacted>")),
        "zooid's echo is quoted: {stored:?}"
    );
    for secret in relay_secrets
        .iter()
        .map(String::as_str)
        .chain([s3, lk, ROBOT_SECRET])
    {
        for text in stored.iter().chain([&logs]) {
            assert!(!text.contains(secret), "a secret survived in {text}");
        }
    }
    let longest = stored.iter().map(String::len).max().unwrap();
    println!(
        "an echoing zooid: 4 relay secrets, the S3 and LiveKit secrets redacted; longest \
         stored text {longest} bytes"
    );
}

#[test]
fn terminal_escapes_from_zooid_never_reach_status_or_the_log() {
    let (fx, _dir, db, _store) = one_relay("ansi");
    fx.inject(
        "ansi",
        Fault::Status {
            status: 500,
            body: "\u{1b}[2J\u{1b}[31mboom\u{1b}[0m\u{7}".into(),
        },
    );
    let sync = run_cli(&fx, &db, &["sync", "ansi"]);
    assert_eq!(sync.status.code(), Some(1));
    let status = run_cli(&fx, &db, &["status"]);
    for out in [&sync.stdout, &sync.stderr, &status.stdout] {
        let text = String::from_utf8_lossy(out);
        assert!(text.contains("boom"), "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
    }
    assert!(all_detail(&db).iter().all(|d| !d.contains('\u{1b}')));
}

#[test]
fn a_5_mb_host_value_is_quoted_by_its_first_bytes() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let env = env_for(&fx.url());
    let store = open_store(&db);
    let mut s = settings("huge");
    s.schema = "x-".repeat(2_500_000);
    // The library refuses it; a host in another language may still write it.
    let refused = store.command.create_relay("huge", &s).unwrap_err();
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
    assert!(refused.to_string().len() < 512, "quoted short: {refused}");
    let host = rusqlite::Connection::open(&db).unwrap();
    host_creates(&host, "huge");
    host.execute(
        "UPDATE relay SET schema = ?1 WHERE id = 'huge'",
        [&s.schema],
    )
    .unwrap();
    let size_before = std::fs::metadata(&db).unwrap().len();
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env)
        .spawn()
        .unwrap();
    // max_attempts is 3 in tests: the first try and three retries.
    expect_within(WAIT, "four failures recorded", || {
        store.query.count_trailing_sync_failures("huge").unwrap() == 4
    });
    worker.shutdown().unwrap();
    let stored = all_detail(&db);
    let longest = stored.iter().map(String::len).max().unwrap();
    println!(
        "a 5 000 000-byte schema: 4 failures, longest stored text {longest} bytes; database \
         {size_before} bytes before the failures"
    );
    assert!(longest < 512, "{longest} bytes stored");
    assert!(
        stored.iter().any(|d| d.contains("(5000000 bytes)")),
        "{stored:?}"
    );
    assert!(fx.requests().is_empty(), "nothing was sent");
}

// ---------------------------------------------------------------------------------------------
// Settings.

#[test]
fn cleartext_to_a_remote_zooid_is_refused_at_start_by_name() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        // A documentation address: nothing is sent there, the refusal comes first.
        c.args(["run"]).env("ZOOID_API_URL", "http://203.0.113.5:9");
        c
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ZOOID_API_URL") && err.contains("ZOOID_ALLOW_PLAIN_HTTP"),
        "{err}"
    );
    assert!(!db.exists(), "refused before anything was touched");

    let vars = |extra: &[(&str, &str)]| {
        let map: std::collections::HashMap<String, String> = [
            ("ZOOID_API_URL", "http://203.0.113.5:9"),
            ("RELAY_DOMAIN", "relays.example.com"),
            ("ROBOT_SECRET", ROBOT_SECRET),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        move |k: &str| map.get(k).cloned()
    };
    // The opt-in is explicit, and loopback needs none.
    assert!(zooid_sync::Env::from_vars(vars(&[("ZOOID_ALLOW_PLAIN_HTTP", "1")])).is_ok());
    assert!(zooid_sync::Env::from_vars(vars(&[("ZOOID_API_URL", "http://localhost:9")])).is_ok());
    let err = zooid_sync::Env::from_vars(vars(&[("ZOOID_ALLOW_PLAIN_HTTP", "maybe")])).unwrap_err();
    assert!(format!("{err:#}").contains("ZOOID_ALLOW_PLAIN_HTTP"));
}

#[test]
fn a_ca_file_with_http_is_an_error() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "alpha"]).env(
            "ZOOID_CA_FILE",
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls/ca.pem"),
        );
        c
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ZOOID_CA_FILE"), "{err}");
    assert!(fx.requests().is_empty());
}

#[test]
fn proxies_are_used_only_when_named_in_zooid_proxy() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "alpha"]);
        for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
            c.env(var, &proxy_url);
        }
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(proxy.accept().is_err(), "HTTP_PROXY was used");

    // Named in ZOOID_PROXY, it is used: the request goes to it (and fails there).
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["members", "alpha"])
            .env("ZOOID_PROXY", &proxy_url)
            .env("ZOOID_TIMEOUT", "300ms");
        c
    });
    assert!(!out.status.success());
    assert!(proxy.accept().is_ok(), "ZOOID_PROXY was not used");
}

#[test]
fn no_authorization_header_reaches_the_log_even_at_trace() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let out = output({
        let mut c = zooid_sync(&fx, &db);
        c.args(["sync", "alpha"])
            .env("RUST_LOG", "trace,ureq_proto=trace,ureq_proto::util=trace");
        c
    });
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("TRACE"), "trace is on: {log}");
    let auth = fx.requests()[0].authorization.clone().unwrap();
    let event = auth.strip_prefix("Nostr ").unwrap();
    for piece in event.as_bytes().chunks(12) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            piece.len() < 12 || !log.contains(piece),
            "{piece} of the Authorization header is in the log"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Ids and files.

#[test]
fn unsafe_ids_never_reach_the_url() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let env = env_for(&fx.url());
    let client = ZooidClient::new(&env).unwrap();
    for id in ["../../admin", "a?x=1", "a#frag", "..", "a/b", "a%2e", ""] {
        let err = client.list_relay_members(id).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ZooidError>(),
                Some(ZooidError::UnsafePath { .. })
            ),
            "{id}: {err:#}"
        );
    }
    // Whoever calls `request` directly is held to the same rule, segment by segment.
    for path in [
        "/relay/../admin",
        "/relay/a?x=1",
        "/relay/a#f",
        "relay/a",
        "/relay//x",
    ] {
        let err = client.request("PATCH", path, Some(b"{}")).unwrap_err();
        assert!(
            matches!(err, ZooidError::UnsafePath { .. }),
            "{path}: {err}"
        );
    }
    let out = run_cli(&fx, &db, &["members", "../../admin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was sent"));
    assert!(fx.requests().is_empty(), "{:?}", fx.requests());
}

#[test]
fn a_database_zooid_sync_creates_is_not_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    store
        .command
        .create_relay("alpha", &settings("alpha"))
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        println!("{path}: {:o}", mode & 0o777);
        assert_eq!(mode & 0o007, 0, "{path} is open to others: {:o}", mode);
        assert_eq!(mode & 0o600, 0o600, "{path} is the owner's");
    }
}

#[test]
fn a_database_with_an_unknown_schema_version_is_refused_by_name() {
    let (_dir, db) = temp_db();
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", -1)
        .unwrap();
    let err = format!("{:#}", Store::open(&db).unwrap_err());
    assert!(err.contains("schema version -1"), "{err}");
    let tables: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0, "nothing was created");
}

#[test]
fn turning_livekit_off_takes_the_credentials_away_from_zooid() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let env = env_for(&fx.url());
    let store = open_store(&db);
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env)
        .spawn()
        .unwrap();
    let mut s = settings("live");
    s.livekit_enabled = true;
    store.command.create_relay("live", &s).unwrap();
    expect_within(WAIT, "LiveKit configured at zooid", || {
        fx.relay("live")
            .is_some_and(|r| r["livekit"]["api_secret"] == "lk-secret-value")
    });
    s.livekit_enabled = false;
    store.command.update_relay("live", &s).unwrap();
    expect_within(WAIT, "LiveKit taken away at zooid", || {
        fx.relay("live").is_some_and(|r| {
            r["livekit"]["server_url"] == ""
                && r["livekit"]["api_key"] == ""
                && r["livekit"]["api_secret"] == ""
        })
    });
    worker.shutdown().unwrap();
}
