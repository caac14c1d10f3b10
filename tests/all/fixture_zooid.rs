//! The fixture zooid keeps zooid's contract (`docs/zooid-api.md`), so that the worker's
//! tests can trust it: NIP-98 checks, routes and status codes, merge, validation, uniqueness,
//! body limit, members, and the faults it injects.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use serde_json::{json, Value};
use zooid_sync::fixture::{Fault, FixtureOptions, FixtureZooid};
use zooid_sync::nip98::make_auth;
use zooid_sync::RobotKey;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent()
}

/// Sends a request with the given Authorization header; answers status and JSON body.
fn send(
    fx: &FixtureZooid,
    method: &str,
    path: &str,
    auth: Option<String>,
    body: Option<&[u8]>,
) -> (u16, Value) {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", fx.url()));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let agent = agent();
    let mut resp = match body {
        Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends a correctly signed request.
fn signed(fx: &FixtureZooid, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    let auth = make_auth(
        &robot(),
        method,
        &format!("{}{path}", fx.url()),
        bytes.as_deref(),
    )
    .unwrap();
    send(fx, method, path, Some(auth), bytes.as_deref())
}

fn config(schema: &str) -> Value {
    json!({
        "host": format!("{schema}.relays.example.com"),
        "schema": schema,
        "secret": "a".repeat(63) + "1",
        "inactive": false,
        "info": {"name": schema, "pubkey": OWNER},
        "policy": {"public_join": true},
        "roles": {"member": {"can_invite": false, "can_manage": false}},
    })
}

#[test]
fn nip98_failures_answer_401_and_unknown_keys_403() {
    let fx = fixture();
    let url = format!("{}/relay/alpha", fx.url());
    let body = serde_json::to_vec(&config("alpha")).unwrap();
    let good = make_auth(&robot(), "POST", &url, Some(&body)).unwrap();

    let decode = |h: &str| -> Value {
        let b64 = h.split_once(' ').unwrap().1;
        serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let encode = |v: &Value| {
        format!(
            "Nostr {}",
            base64::engine::general_purpose::STANDARD.encode(v.to_string())
        )
    };
    let mut tampered = decode(&good);
    tampered["content"] = json!("changed");

    let other_key = RobotKey::parse(&"1".repeat(64)).unwrap();
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "missing authorization"),
        (Some(good.replacen("Nostr", "Bearer", 1)), 401, "scheme"),
        (Some("Nostr !!!notbase64".into()), 401, "base64"),
        (Some(encode(&json!({"kind": 1}))), 401, "event json"),
        (Some(encode(&tampered)), 401, "signature"),
        (
            Some(
                make_auth(
                    &robot(),
                    "POST",
                    &format!("{}/relay/beta", fx.url()),
                    Some(&body),
                )
                .unwrap(),
            ),
            401,
            "url mismatch",
        ),
        (
            Some(make_auth(&robot(), "PATCH", &url, Some(&body)).unwrap()),
            401,
            "method mismatch",
        ),
        (
            Some(make_auth(&robot(), "POST", &url, Some(b"{}")).unwrap()),
            401,
            "payload mismatch",
        ),
        (
            Some(make_auth(&other_key, "POST", &url, Some(&body)).unwrap()),
            403,
            "whitelist",
        ),
    ];
    for (auth, status, message) in cases {
        let (got, answer) = send(&fx, "POST", "/relay/alpha", auth, Some(&body));
        assert_eq!(got, status, "{message}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{message}: {answer}"
        );
    }
    assert!(
        fx.relay("alpha").is_none(),
        "no refused request may create the relay"
    );

    // The scheme word is case-insensitive.
    let (status, _) = send(
        &fx,
        "POST",
        "/relay/alpha",
        Some(good.replacen("Nostr", "nOsTr", 1)),
        Some(&body),
    );
    assert_eq!(status, 201);
}

#[test]
fn strict_mode_checks_freshness_and_lenient_mode_does_not() {
    use nostr::event::{EventBuilder, FinalizeEvent, Kind, Tag};
    use nostr::types::Timestamp;
    let keys = nostr::key::Keys::parse(ROBOT_SECRET).unwrap();
    let whitelist = vec![keys.public_key().to_hex()];
    for strict in [true, false] {
        let fx = FixtureZooid::start_with(FixtureOptions {
            whitelist: whitelist.clone(),
            strict,
            tls: None,
        })
        .unwrap();
        let url = format!("{}/relay/alpha/members", fx.url());
        fx.put_relay("alpha", config("alpha"));
        let stale = EventBuilder::new(Kind::HttpAuth, "")
            .tags([
                Tag::parse(["u", url.as_str()]).unwrap(),
                Tag::parse(["method", "GET"]).unwrap(),
            ])
            .custom_created_at(Timestamp::from_secs(Timestamp::now().as_secs() - 3600))
            .finalize(&keys)
            .unwrap();
        let auth = format!(
            "Nostr {}",
            base64::engine::general_purpose::STANDARD.encode(stale.as_json())
        );
        let (status, _) = send(&fx, "GET", "/relay/alpha/members", Some(auth), None);
        assert_eq!(status, if strict { 401 } else { 200 }, "strict={strict}");
    }
}

#[test]
fn routes_and_status_codes_follow_zooid() {
    let fx = fixture();
    let alpha = config("alpha");
    assert_eq!(
        signed(
            &fx,
            "PATCH",
            "/relay/alpha",
            Some(&json!({"inactive": true}))
        )
        .0,
        404
    );
    assert_eq!(signed(&fx, "PUT", "/relay/alpha", Some(&alpha)).0, 404);
    let (status, answer) = signed(&fx, "POST", "/relay/alpha", Some(&alpha));
    assert_eq!(
        (status, answer),
        (201, json!({"message": "relay created successfully"}))
    );
    assert_eq!(signed(&fx, "POST", "/relay/alpha", Some(&alpha)).0, 409);
    let (status, answer) = signed(&fx, "PUT", "/relay/alpha", Some(&alpha));
    assert_eq!(
        (status, answer),
        (200, json!({"message": "relay updated successfully"}))
    );
    let (status, answer) = signed(
        &fx,
        "PATCH",
        "/relay/alpha",
        Some(&json!({"inactive": true})),
    );
    assert_eq!(
        (status, answer),
        (200, json!({"message": "relay patched successfully"}))
    );
    assert_eq!(signed(&fx, "GET", "/relay/alpha", None).0, 405);
    assert_eq!(
        signed(&fx, "POST", "/relay/alpha/members", Some(&json!({}))).0,
        405
    );
    assert_eq!(signed(&fx, "GET", "/relay/beta/members", None).0, 404);
    assert_eq!(signed(&fx, "GET", "/relays", None).0, 404);
    assert_eq!(signed(&fx, "GET", "/relay/alpha/other", None).0, 404);
    assert_eq!(signed(&fx, "POST", "/relay/", Some(&alpha)).0, 400);

    fx.set_members("alpha", &["bb", "aa"]);
    let (status, answer) = signed(&fx, "GET", "/relay/alpha/members", None);
    assert_eq!((status, answer), (200, json!({"members": ["aa", "bb"]})));
    let recorded = fx.requests();
    assert!(recorded.iter().all(|r| r.authorization.is_some()));
    assert_eq!(recorded.last().unwrap().status, 200);
}

#[test]
fn patch_merges_deeply_and_keeps_the_secret() {
    let fx = fixture();
    signed(&fx, "POST", "/relay/alpha", Some(&config("alpha")));
    let patch = json!({"info": {"name": "New"}, "policy": null, "inactive": true});
    assert_eq!(signed(&fx, "PATCH", "/relay/alpha", Some(&patch)).0, 200);
    let stored = fx.relay("alpha").unwrap();
    assert_eq!(stored["info"], json!({"name": "New", "pubkey": OWNER}));
    assert_eq!(stored["secret"], config("alpha")["secret"]);
    assert!(stored.get("policy").is_none());
    assert_eq!(stored["inactive"], json!(true));

    // A patch whose result is invalid is refused and changes nothing.
    assert_eq!(
        signed(
            &fx,
            "PATCH",
            "/relay/alpha",
            Some(&json!({"schema": "bad-schema"}))
        )
        .0,
        400
    );
    assert_eq!(fx.relay("alpha").unwrap()["schema"], "alpha");
}

#[test]
fn invalid_configs_answer_400() {
    let fx = fixture();
    let mut cases = vec![];
    for (pointer, value) in [
        ("/host", json!("")),
        ("/schema", json!("1abc")),
        ("/schema", json!("a-b")),
        ("/secret", json!("abc")),
        ("/secret", json!("zz".repeat(32))),
        ("/info/pubkey", json!("00".repeat(32))),
        ("/inactive", json!("yes")),
        ("/policy/public_join", json!(1)),
        ("/roles/member/can_invite", json!("true")),
    ] {
        let mut c = config("alpha");
        *c.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}")) = value;
        cases.push((pointer, c));
    }
    let mut no_host = config("alpha");
    no_host.as_object_mut().unwrap().remove("host");
    cases.push(("no host", no_host));
    for (what, body) in cases {
        let (status, answer) = signed(&fx, "POST", "/relay/alpha", Some(&body));
        assert_eq!(status, 400, "{what}: {answer}");
    }
    let url = format!("{}/relay/alpha", fx.url());
    let auth = make_auth(&robot(), "POST", &url, Some(b"{not json")).unwrap();
    assert_eq!(
        send(&fx, "POST", "/relay/alpha", Some(auth), Some(b"{not json")).0,
        400
    );
    // Unknown keys are ignored, as zooid's decoder does.
    let mut extra = config("alpha");
    extra["blossom"] = json!({"enabled": false, "adapter": "s3", "future": {"x": 1}});
    assert_eq!(signed(&fx, "POST", "/relay/alpha", Some(&extra)).0, 201);
}

#[test]
fn schema_and_host_are_unique_across_relays() {
    let fx = fixture();
    assert_eq!(
        signed(&fx, "POST", "/relay/alpha", Some(&config("alpha"))).0,
        201
    );
    let mut same_schema = config("beta");
    same_schema["schema"] = json!("alpha");
    assert_eq!(
        signed(&fx, "POST", "/relay/beta", Some(&same_schema)).0,
        409
    );
    let mut same_host = config("beta");
    same_host["host"] = json!("alpha.relays.example.com");
    assert_eq!(signed(&fx, "POST", "/relay/beta", Some(&same_host)).0, 409);
    assert_eq!(
        signed(&fx, "POST", "/relay/beta", Some(&config("beta"))).0,
        201
    );
    assert_eq!(
        signed(
            &fx,
            "PATCH",
            "/relay/beta",
            Some(&json!({"schema": "alpha"}))
        )
        .0,
        409
    );
    assert_eq!(fx.relay_ids(), ["alpha", "beta"]);
}

#[test]
fn bodies_over_one_mebibyte_are_refused() {
    let fx = fixture();
    let mut big = config("alpha");
    big["info"]["description"] = json!("x".repeat(zooid_sync::fixture::MAX_BODY));
    let (status, answer) = signed(&fx, "POST", "/relay/alpha", Some(&big));
    assert_eq!(status, 400, "{answer}");
    assert!(fx.relay("alpha").is_none());
}

#[test]
fn faults_are_injected_per_relay_and_counted() {
    let fx = fixture();
    fx.inject_times(
        "alpha",
        Fault::Status {
            status: 503,
            body: "{\"error\":\"down\"}".into(),
        },
        2,
    );
    for _ in 0..2 {
        assert_eq!(
            signed(&fx, "POST", "/relay/alpha", Some(&config("alpha"))).0,
            503
        );
    }
    assert_eq!(
        signed(&fx, "POST", "/relay/beta", Some(&config("beta"))).0,
        201
    );
    assert_eq!(
        signed(&fx, "POST", "/relay/alpha", Some(&config("alpha"))).0,
        201
    );

    fx.inject(
        "*",
        Fault::Status {
            status: 502,
            body: "{}".into(),
        },
    );
    assert_eq!(signed(&fx, "GET", "/relay/alpha/members", None).0, 502);
    fx.clear_faults();
    assert_eq!(signed(&fx, "GET", "/relay/alpha/members", None).0, 200);

    // A dropped connection and garbage are transport failures for a client.
    let url = format!("{}/relay/alpha/members", fx.url());
    for fault in [Fault::Drop, Fault::Raw(b"NOT HTTP AT ALL\r\n\r\n".to_vec())] {
        fx.inject_times("alpha", fault.clone(), 1);
        let auth = make_auth(&robot(), "GET", &url, None).unwrap();
        let req = ureq::http::Request::builder()
            .uri(&url)
            .header("authorization", auth)
            .body(())
            .unwrap();
        assert!(agent().run(req).is_err(), "{fault:?}");
    }
    assert_eq!(fx.requests_for("alpha").len(), 7);
}

#[test]
fn delays_and_hangs_hold_the_answer() {
    let fx = fixture();
    fx.put_relay("alpha", config("alpha"));
    fx.inject_times("alpha", Fault::Delay(Duration::from_millis(150)), 1);
    let (status, _) = signed(&fx, "GET", "/relay/alpha/members", None);
    assert_eq!(status, 200);
    let r = &fx.requests_for("alpha")[0];
    assert!(r.finished - r.started >= Duration::from_millis(150));

    fx.inject("alpha", Fault::Hang);
    let url = format!("{}/relay/alpha/members", fx.url());
    let auth = make_auth(&robot(), "GET", &url, None).unwrap();
    let short = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(200)))
        .build()
        .new_agent();
    let req = ureq::http::Request::builder()
        .uri(&url)
        .header("authorization", auth)
        .body(())
        .unwrap();
    let err = short.run(req).unwrap_err();
    assert!(matches!(err, ureq::Error::Timeout(_)), "{err:?}");
    fx.stop(); // closes the hanging connection
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn with_a_cost_model_writes_share_one_core_with_relay_users() {
    let fx = fixture();
    // Slices of 10 ms: a user behind four writes waits tens of milliseconds, far above what
    // a loaded test machine adds to an idle request.
    fx.set_cost(Some(zooid_sync::fixture::CostModel {
        slice: Duration::from_millis(10),
        ..zooid_sync::fixture::CostModel::writes_of(Duration::from_millis(60))
    }));
    let (status, _) = signed(&fx, "POST", "/relay/alpha", Some(&config("alpha")));
    assert_eq!(status, 201);
    let host = "alpha.relays.example.com";
    let user = || fx.user_request(host).unwrap();
    assert_eq!(user().1, 200, "a relay's user gets its NIP-11 document");
    fx.set_api_host(Some("zooid.example.test"));
    assert_eq!(fx.user_request("nobody.example.com").unwrap().1, 404);
    fx.set_api_host(None);
    for _ in 0..5 {
        user(); // the first connections of a process are slower
    }
    let idle = median((0..15).map(|_| user().0).collect());

    // Four writes at once, back to back, as an unpaced catch-up sends them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paths: Vec<String> = (0..4)
        .map(|k| {
            let path = format!("/relay/w{k}");
            let (s, _) = signed(&fx, "POST", &path, Some(&config(&format!("w{k}"))));
            assert_eq!(s, 201);
            path
        })
        .collect();
    let busy: Vec<Duration> = std::thread::scope(|scope| {
        for path in &paths {
            let (fx, stop) = (&fx, &stop);
            scope.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    signed(fx, "PATCH", path, Some(&json!({"info": {"name": "x"}})));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        let samples = (0..15).map(|_| user().0).collect();
        stop.store(true, std::sync::atomic::Ordering::Release);
        samples
    });
    let busy = median(busy);
    println!("a relay user's median wait: idle {idle:?}, during four writes {busy:?}");
    assert!(
        busy > idle + Duration::from_millis(15),
        "{idle:?} -> {busy:?}"
    );
    let writes: Vec<_> = fx
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    let slowest = writes.iter().map(|r| r.finished - r.started).max().unwrap();
    assert!(
        slowest >= Duration::from_millis(60),
        "a write costs its 60 ms: {slowest:?}"
    );
}

/// zooid reloads a relay once it has answered its write: work the client never waits for, on
/// the core its users need. The fixture's cost model has it: the write answers after its own
/// cost, the reload follows on the same core, and a relay user who asks right after the
/// answer waits behind it.
#[test]
fn a_write_leaves_work_on_the_core_after_its_answer_that_users_wait_behind() {
    use zooid_sync::fixture::{CostModel, Work};
    let fx = fixture();
    let (status, _) = signed(&fx, "POST", "/relay/alpha", Some(&config("alpha")));
    assert_eq!(status, 201);
    let host = "alpha.relays.example.com";
    fx.set_cost(Some(CostModel {
        slice: Duration::from_millis(10),
        ..CostModel::writes_of(Duration::from_millis(20)).with_after(Duration::from_millis(200))
    }));
    for _ in 0..5 {
        fx.user_request(host).unwrap(); // the first connections of a process are slower
    }
    let idle = median((0..15).map(|_| fx.user_request(host).unwrap().0).collect());

    let asked = std::time::Instant::now();
    let (status, _) = signed(
        &fx,
        "PATCH",
        "/relay/alpha",
        Some(&json!({"inactive": true})),
    );
    let answered = asked.elapsed();
    assert_eq!(status, 200);
    let (waited, user_status) = fx.user_request(host).unwrap();
    assert_eq!(user_status, 200);
    println!(
        "a write answered in {answered:?}; a user asking then waited {waited:?} (idle {idle:?})"
    );
    assert!(
        answered < Duration::from_millis(200),
        "the write answers before its reload: {answered:?}"
    );
    assert!(
        waited >= idle + Duration::from_millis(5),
        "the user waits behind the reload: {waited:?}, idle {idle:?}"
    );
    expect_within(Duration::from_secs(10), "the reload ran", || {
        fx.core_busy_of(&[Work::AfterWrite]) == Duration::from_millis(200)
    });
    assert_eq!(fx.core_busy_of(&[Work::Write]), Duration::from_millis(20));
    assert!(fx.core_busy_of(&[Work::User]) >= Duration::from_micros(300 * 21));

    // A write zooid refuses changes no file: nothing is reloaded.
    let (status, _) = signed(
        &fx,
        "PATCH",
        "/relay/nobody",
        Some(&json!({"inactive": true})),
    );
    assert_eq!(status, 404);
    assert_eq!(
        fx.core_busy_of(&[Work::AfterWrite]),
        Duration::from_millis(200)
    );
}
