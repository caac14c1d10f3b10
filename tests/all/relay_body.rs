//! The request body, field by field, against the golden copies in `fixtures/bodies/`, and the
//! validation that keeps a bad relay from ever being sent.
//!
//! Run with `UPDATE_GOLDEN=1` to rewrite the golden files after an intended change, then read
//! the diff.

use crate::common::*;
use serde_json::Value;
use zooid_sync::relay_body;
use zooid_sync::Secret;
use zooid_sync::{Relay, RelaySettings, RelayStatus};

fn relay(id: &str, settings: RelaySettings) -> Relay {
    Relay {
        id: id.into(),
        settings,
        sync_error: String::new(),
        synced: false,
        revision: 1,
        created_at: 0,
        updated_at: 0,
    }
}

fn golden(name: &str, body: &Value) {
    let path = format!("{}/fixtures/bodies/{name}.json", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(body).unwrap() + "\n").unwrap();
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(body, &expected, "{name} differs from {path}");
}

/// The body as JSON with the secret replaced by a placeholder after checking its shape.
fn body_json(relay: &Relay, secret: Option<&Secret>) -> Value {
    let env = env_for("http://127.0.0.1:1");
    let mut json = serde_json::to_value(relay_body(relay, &env, secret).unwrap()).unwrap();
    if let Some(s) = json.get_mut("secret") {
        assert_eq!(s.as_str(), secret.map(Secret::expose));
        *s = Value::String("<64 hex, generated for each POST>".into());
    }
    json
}

fn fresh_secret() -> Secret {
    Secret::generate(32)
}

#[test]
fn create_active_with_everything_off() {
    let mut s = settings("alpha");
    s.groups_enabled = false;
    s.management_enabled = false;
    golden(
        "create_active_plain",
        &body_json(&relay("alpha", s), Some(&fresh_secret())),
    );
}

#[test]
fn create_with_blossom_and_livekit() {
    let mut s = settings("beta");
    s.blossom_enabled = true;
    s.livekit_enabled = true;
    s.members_can_invite = true;
    s.push_enabled = true;
    golden(
        "create_blossom_livekit",
        &body_json(&relay("beta", s), Some(&fresh_secret())),
    );
}

#[test]
fn update_inactive_has_no_secret() {
    let mut s = settings("gamma");
    s.status = RelayStatus::Inactive;
    s.blossom_enabled = true;
    let body = body_json(&relay("gamma", s), None);
    assert!(body.get("secret").is_none());
    golden("update_inactive_blossom", &body);
}

#[test]
fn update_delinquent_is_inactive() {
    let mut s = settings("delta");
    s.status = RelayStatus::Delinquent;
    s.livekit_enabled = true;
    s.policy_public_read = true;
    s.policy_public_write = true;
    s.policy_strip_signatures = true;
    golden(
        "update_delinquent_livekit",
        &body_json(&relay("delta", s), None),
    );
}

#[test]
fn debug_of_a_body_shows_no_secret() {
    let env = env_for("http://127.0.0.1:1");
    let mut s = settings("beta");
    s.blossom_enabled = true;
    s.livekit_enabled = true;
    let r = relay("beta", s);
    let secret = fresh_secret();
    let shown = format!("{:?}", relay_body(&r, &env, Some(&secret)).unwrap());
    for hidden in [secret.expose(), "s3-secret-value", "lk-secret-value"] {
        assert!(!shown.contains(hidden), "{shown}");
    }
}

#[test]
fn invalid_relays_name_the_field() {
    let full = env_for("http://127.0.0.1:1");
    let mut bare = full.clone();
    bare.blossom.bucket = None;
    bare.livekit.api_secret = None;

    type Edit = fn(&mut Relay);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("id", |r| r.id = "a/b".into(), "is invalid: id must"),
        ("id", |r| r.id = "..".into(), "is invalid: id must"),
        ("id", |r| r.id = "has space".into(), "is invalid: id must"),
        ("id", |r| r.id = "pct%2F".into(), "is invalid: id must"),
        ("id", |r| r.id = String::new(), "is invalid: id must"),
        (
            "schema",
            |r| r.settings.schema = "9lives".into(),
            "is invalid: schema ",
        ),
        (
            "schema",
            |r| r.settings.schema = "with-dash".into(),
            "is invalid: schema ",
        ),
        (
            "schema",
            |r| r.settings.schema = "x".repeat(64),
            "is invalid: schema ",
        ),
        (
            "subdomain",
            |r| r.settings.subdomain = String::new(),
            "subdomain is empty",
        ),
        (
            "subdomain",
            |r| r.settings.subdomain = "a/b".into(),
            "is invalid: subdomain ",
        ),
        (
            "owner",
            |r| r.settings.tenant_pubkey = "abc".into(),
            "is invalid: tenant_pubkey ",
        ),
        (
            "owner",
            |r| r.settings.tenant_pubkey = "0".repeat(64),
            "is invalid: tenant_pubkey ",
        ),
        (
            "blossom",
            |r| r.settings.blossom_enabled = true,
            "BLOSSOM_S3_BUCKET",
        ),
        (
            "livekit",
            |r| r.settings.livekit_enabled = true,
            "LIVEKIT_API_SECRET",
        ),
    ];
    for (what, edit, expected) in cases {
        let mut r = relay("alpha", settings("alpha"));
        edit(&mut r);
        let err = relay_body(&r, &bare, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(expected), "{what}: {text}");
        assert!(text.contains("nothing was sent"), "{text}");
    }
    // The same relays are fine where the settings exist.
    let mut r = relay("alpha", settings("alpha"));
    r.settings.blossom_enabled = true;
    r.settings.livekit_enabled = true;
    assert!(relay_body(&r, &full, None).is_ok());
}
