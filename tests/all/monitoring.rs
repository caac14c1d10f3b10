//! The monitoring kit in `docs/monitoring/` against a live daemon: every metric an alert or a
//! dashboard panel uses is served, and (where `PROMTOOL` names Prometheus's `promtool`, as in
//! CI) the rules pass `promtool check rules` and `promtool test rules`, and the live
//! `/metrics` passes `promtool check metrics`.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring");

/// The metric names in Prometheus text format (histogram series under their own names).
fn served_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `zooid_sync_*` and `process_*` name in `text`.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["zooid_sync_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let mut end = start + prefix.len();
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end] == b'_'
                    || bytes[end].is_ascii_digit())
            {
                end += 1;
            }
            let preceded =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if !preceded {
                used.insert(text[start..end].to_string());
            }
            from = end;
        }
    }
    used
}

fn promtool() -> Option<String> {
    std::env::var("PROMTOOL").ok().filter(|p| !p.is_empty())
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_served() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let port = free_port();
    let mut daemon = daemon(&fx, &db, Some(port));
    expect_within(Duration::from_secs(20), "the endpoint", || {
        local_get(port, "/metrics").is_some_and(|(s, body)| {
            s == 200
                && body.contains("zooid_sync_syncs_total{zooid=\"default\",outcome=\"synced\"} 1")
        })
    });
    let (_, metrics) = local_get(port, "/metrics").unwrap();
    terminate(&mut daemon);
    let served = served_names(&metrics);
    assert!(served.contains("zooid_sync_build_info"), "{served:?}");
    assert!(
        served.contains("process_resident_memory_bytes"),
        "{served:?}"
    );

    let mut checked = 0;
    for file in ["alerts.yml", "alerts.test.yml", "dashboard.json"] {
        let text = std::fs::read_to_string(format!("{MONITORING}/{file}")).unwrap();
        for name in names_used(&text) {
            assert!(
                served.contains(&name),
                "{file} uses {name}, which /metrics does not serve"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "the kit uses the metrics: {checked}");

    let Some(promtool) = promtool() else {
        eprintln!("PROMTOOL is not set: promtool's checks are left to CI");
        return;
    };
    let run = |args: &[&str], input: Option<&str>| {
        let mut child = Command::new(&promtool)
            .args(args)
            .current_dir(MONITORING)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["check", "rules", "alerts.yml"], None);
    run(&["test", "rules", "alerts.test.yml"], None);
    run(&["check", "metrics"], Some(&metrics));
}

#[test]
fn healthz_is_plain_text_and_metrics_are_prometheus_text() {
    let (fx, _dir, db, _store) = one_relay("alpha");
    let port = free_port();
    let mut daemon = daemon(&fx, &db, Some(port));
    let content_type = |path: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let r = agent
            .get(&format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()?;
        Some(r.headers().get("content-type")?.to_str().ok()?.to_string())
    };
    expect_within(Duration::from_secs(20), "the endpoint", || {
        content_type("/healthz").is_some()
    });
    assert_eq!(
        content_type("/healthz").unwrap(),
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        content_type("/metrics").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    terminate(&mut daemon);
}

/// A daemon run with `vars` until relay `alpha` is synced; its standard error, line by line,
/// and the relay's secret at zooid.
fn daemon_log(vars: &[(&str, &str)]) -> (Vec<String>, String) {
    let (fx, dir, db, _store) = one_relay("alpha");
    let log = dir.path().join("stderr.log");
    let mut cmd = zooid_sync(&fx, &db);
    cmd.env("RUST_LOG", "info")
        .env("BLOSSOM_S3_SECRET_KEY", "s3-secret-that-must-not-print")
        .envs(vars.iter().copied())
        .args(["run", "--feed-interval", "10ms"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut daemon = cmd.spawn().unwrap();
    expect_within(Duration::from_secs(20), "alpha synced", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("relay alpha: POST 201"))
    });
    terminate(&mut daemon);
    let secret = fx.relay("alpha").unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&log).unwrap();
    for forbidden in [
        ROBOT_SECRET,
        secret.as_str(),
        "s3-secret-that-must-not-print",
    ] {
        assert!(
            !text.contains(forbidden),
            "a secret reached the log:\n{text}"
        );
    }
    (text.lines().map(str::to_string).collect(), secret)
}

#[test]
fn json_logs_are_one_object_a_line_with_the_relay() {
    let (lines, _) = daemon_log(&[("SYNC_LOG_FORMAT", "json")]);
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(objects.len() >= 3, "{lines:?}");
    for o in &objects {
        for field in ["time", "level", "target", "message"] {
            assert!(o[field].is_string(), "{field} in {o}");
        }
        assert!(o["time"].as_str().unwrap().ends_with('Z'), "{o}");
    }
    let synced = objects
        .iter()
        .find(|o| {
            o["message"]
                .as_str()
                .unwrap()
                .starts_with("relay alpha: POST 201")
        })
        .expect("the sync's line");
    assert_eq!(synced["relay"], "alpha");
    assert_eq!(synced["level"], "INFO");
    assert!(objects.iter().any(|o| o["message"]
        .as_str()
        .unwrap()
        .starts_with("zooid-sync started")));
}

#[test]
fn under_systemd_logs_carry_journald_priorities_and_no_time() {
    let (lines, _) = daemon_log(&[("JOURNAL_STREAM", "8:12345")]);
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let (priority, rest) = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("no priority: {line}"));
        assert!(["3", "4", "6", "7"].contains(&priority), "{line}");
        assert!(
            rest.starts_with("zooid_sync"),
            "the target, no timestamp: {line}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("<6>zooid_sync::infra::sync: relay alpha: POST 201")));
}
