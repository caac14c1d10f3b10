//! ZooidClient against the fixture zooid over HTTP: signed create, patch and members; errors
//! that carry method, path, status and at most 1 KiB of body; timeouts and broken answers.

use std::time::{Duration, Instant};

use crate::common::*;
use zooid_sync::fixture::Fault;
use zooid_sync::relay_body;
use zooid_sync::Secret;
use zooid_sync::ZooidError;
use zooid_sync::{Relay, ZooidClient};

fn relay(id: &str) -> Relay {
    Relay {
        id: id.into(),
        settings: settings(id),
        sync_error: String::new(),
        synced: false,
        revision: 1,
        created_at: 0,
        updated_at: 0,
    }
}

/// A fixture zooid and a client for it (the database path in the Env is never opened).
fn setup() -> (
    zooid_sync::fixture::FixtureZooid,
    zooid_sync::Env,
    ZooidClient,
) {
    let fx = fixture();
    let env = env_for(&fx.url());
    let client = ZooidClient::new(&env).unwrap();
    (fx, env, client)
}

#[test]
fn create_then_patch_reaches_zooid_signed() {
    let (fx, env, client) = setup();
    let r = relay("alpha");
    let secret = Secret::generate(32);
    let created = client
        .create_relay("alpha", &relay_body(&r, &env, Some(&secret)).unwrap())
        .unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(fx.relay("alpha").unwrap()["secret"], secret.expose());

    let mut changed = relay("alpha");
    changed.settings.info_name = "Changed".into();
    let patched = client
        .patch_relay("alpha", &relay_body(&changed, &env, None).unwrap())
        .unwrap();
    assert_eq!(patched.status, 200);
    let stored = fx.relay("alpha").unwrap();
    assert_eq!(stored["info"]["name"], "Changed");
    assert_eq!(
        stored["secret"],
        secret.expose(),
        "a patch never rotates the secret"
    );
    let methods: Vec<_> = fx.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["POST", "PATCH"]);
}

#[test]
fn a_body_larger_than_the_connection_buffers_is_sent_whole() {
    let (fx, env, client) = setup();
    let mut r = relay("long");
    // 100 KiB, several times the client's 16 KiB output buffer.
    r.settings.info_description = "d".repeat(100 * 1024);
    let secret = Secret::generate(32);
    let created = client
        .create_relay("long", &relay_body(&r, &env, Some(&secret)).unwrap())
        .unwrap();
    assert_eq!(created.status, 201);
    let stored = fx.relay("long").unwrap();
    assert_eq!(
        stored["info"]["description"].as_str().map(str::len),
        Some(100 * 1024)
    );
    // And the connection is still good for the next request.
    r.settings.info_name = "After".into();
    let patched = client
        .patch_relay("long", &relay_body(&r, &env, None).unwrap())
        .unwrap();
    assert_eq!(patched.status, 200);
}

#[test]
fn errors_carry_status_and_a_cut_body() {
    let (fx, _env, client) = setup();
    let huge = format!("{{\"error\":\"{}\"}}", "x".repeat(5000));
    fx.inject(
        "alpha",
        Fault::Status {
            status: 500,
            body: huge,
        },
    );
    let err = client
        .request("GET", "/relay/alpha/members", None)
        .unwrap_err();
    assert_eq!(err.status(), Some(500));
    let text = err.to_string();
    assert!(
        text.starts_with("zooid answered GET /relay/alpha/members with 500: {\"error\":\"xxx"),
        "{text}"
    );
    assert!(text.len() < 1200, "{} bytes", text.len());
    assert!(text.contains("bytes in all"));
}

#[test]
fn members_are_listed_and_an_unknown_relay_says_so() {
    let (fx, env, client) = setup();
    let err = client.list_relay_members("alpha").unwrap_err().to_string();
    assert!(err.contains("zooid does not know relay \"alpha\""), "{err}");

    client
        .create_relay(
            "alpha",
            &relay_body(&relay("alpha"), &env, Some(&Secret::generate(32))).unwrap(),
        )
        .unwrap();
    fx.set_members("alpha", &[OWNER]);
    assert_eq!(client.list_relay_members("alpha").unwrap(), [OWNER]);

    fx.inject(
        "alpha",
        Fault::Status {
            status: 200,
            body: "<html>oops</html>".into(),
        },
    );
    let err = client.list_relay_members("alpha").unwrap_err().to_string();
    assert!(
        err.contains("not {\"members\": [...]}") && err.contains("<html>oops"),
        "{err}"
    );
}

#[test]
fn timeouts_and_broken_answers_are_transport_errors() {
    let fx = fixture();
    let mut env = env_for(&fx.url());
    env.zooid_timeout = Duration::from_millis(300);
    let client = ZooidClient::new(&env).unwrap();
    let faults = [
        Fault::Hang,
        Fault::Delay(Duration::from_millis(1500)),
        Fault::Drop,
        Fault::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"trunc".to_vec()),
        Fault::Raw(b"garbage garbage\r\n\r\n".to_vec()),
    ];
    for fault in faults {
        fx.inject("alpha", fault.clone());
        let started = Instant::now();
        let err = client
            .request("GET", "/relay/alpha/members", None)
            .unwrap_err();
        assert!(
            matches!(err, ZooidError::Transport { .. }),
            "{fault:?}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("GET /relay/alpha/members to zooid failed"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{fault:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn redirects_are_not_followed() {
    let (fx, _env, client) = setup();
    fx.inject_times(
        "alpha",
        Fault::Raw(format!("HTTP/1.1 302 Found\r\nlocation: {}/relay/beta/members\r\ncontent-length: 0\r\n\r\n", fx.url()).into_bytes()),
        1,
    );
    let err = client
        .request("GET", "/relay/alpha/members", None)
        .unwrap_err();
    assert_eq!(err.status(), Some(302), "{err}");
    assert!(fx.requests_for("beta").is_empty());
}

#[test]
fn a_refused_connection_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = env_for(&format!("http://127.0.0.1:{port}"));
    let err = ZooidClient::new(&env)
        .unwrap()
        .request("GET", "/relay/a/members", None)
        .unwrap_err();
    assert!(matches!(err, ZooidError::Transport { .. }), "{err}");
}

fn tls_fixture() -> zooid_sync::fixture::FixtureZooid {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls");
    zooid_sync::fixture::FixtureZooid::start_with(zooid_sync::fixture::FixtureOptions {
        whitelist: vec![robot().public_key().to_hex()],
        strict: true,
        tls: Some(zooid_sync::fixture::TlsIdentity {
            cert_chain_pem: std::fs::read(format!("{dir}/server.pem")).unwrap(),
            key_pem: std::fs::read(format!("{dir}/server.key")).unwrap(),
        }),
    })
    .unwrap()
}

#[test]
fn https_works_with_a_configured_ca_bundle_and_refuses_an_unknown_issuer() {
    let fx = tls_fixture();
    assert!(fx.url().starts_with("https://localhost:"));
    let mut env = env_for(&fx.url());

    // The public roots do not know the test CA.
    let err = ZooidClient::new(&env)
        .unwrap()
        .request("GET", "/relay/alpha/members", None)
        .unwrap_err();
    assert!(matches!(err, ZooidError::Transport { .. }), "{err}");
    assert!(fx.requests().is_empty());

    env.zooid_ca_file = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls/ca.pem").into());
    let client = ZooidClient::new(&env).unwrap();
    let secret = Secret::generate(32);
    let created = client
        .create_relay(
            "alpha",
            &relay_body(&relay("alpha"), &env, Some(&secret)).unwrap(),
        )
        .unwrap();
    assert_eq!(created.status, 201);
    // The NIP-98 `u` tag said https, or the fixture would have answered 401.
    assert_eq!(fx.requests()[0].status, 201);
}

#[test]
fn a_bad_ca_bundle_is_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_for("https://localhost:1");
    env.zooid_ca_file = Some(dir.path().join("missing.pem"));
    let err = format!("{:#}", ZooidClient::new(&env).unwrap_err());
    assert!(
        err.contains("ZOOID_CA_FILE") && err.contains("missing.pem"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    env.zooid_ca_file = Some(garbage);
    let err = format!("{:#}", ZooidClient::new(&env).unwrap_err());
    assert!(
        err.contains("ZOOID_CA_FILE") && err.contains("no certificate"),
        "{err}"
    );
}
