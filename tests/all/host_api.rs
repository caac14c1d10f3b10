//! The library as a host meets it: only the documented API (what `cargo doc` shows), the
//! fixture zooid standing in for zooid. Open, spawn, create, wait for the outcome without
//! polling, update, delete, shut down; and the errors a host matches on.

use std::time::Duration;

use zooid_sync::fixture::FixtureZooid;
use zooid_sync::{
    Env, HostError, Infra, OutcomeKind, RelaySettings, RelayStatus, RobotKey, Secret, Store,
    WaitError,
};

const WAIT: Duration = Duration::from_secs(20);

fn settings(name: &str) -> RelaySettings {
    RelaySettings {
        tenant_pubkey: "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
        schema: name.into(),
        subdomain: name.into(),
        status: RelayStatus::Active,
        info_name: name.into(),
        ..RelaySettings::default()
    }
}

#[test]
fn a_host_creates_updates_and_deletes_and_hears_each_outcome(
) -> Result<(), Box<dyn std::error::Error>> {
    let robot = RobotKey::parse(Secret::generate(32).expose())?;
    let zooid = FixtureZooid::start(&[robot.public_key().to_hex()])?;
    let mut env = Env::new(&zooid.url(), "relays.example.com", robot)?;
    env.sync_max_rate = 0.0;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("platform.db"))?;
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env).spawn()?;
    let outcomes = store.command.outcomes();

    store.command.create_relay("alpha", &settings("alpha"))?;
    let created = outcomes.wait_for("alpha", WAIT)?;
    assert_eq!(created.kind, OutcomeKind::Synced);
    assert!(store.query.get_relay("alpha")?.unwrap().synced);
    assert_eq!(zooid.relay("alpha").unwrap()["info"]["name"], "alpha");

    // The errors a host acts on, each with nothing written.
    match store.command.create_relay("alpha", &settings("alpha")) {
        Err(HostError::RelayExists { id }) => assert_eq!(id, "alpha"),
        other => panic!("a second create: {other:?}"),
    }
    let mut bad = settings("beta");
    bad.schema = "bad schema!".into();
    match store.command.create_relay("beta", &bad) {
        Err(HostError::InvalidField { field, .. }) => assert_eq!(field, "schema"),
        other => panic!("a bad schema: {other:?}"),
    }
    bad = settings("beta");
    bad.tenant_pubkey = "not-hex".into();
    let refused = store.command.create_relay("beta", &bad).unwrap_err();
    assert!(matches!(
        refused,
        HostError::InvalidField {
            field: "tenant_pubkey",
            ..
        }
    ));
    assert!(refused.to_string().contains("tenant_pubkey"), "{refused}");
    assert!(store.query.get_relay("beta")?.is_none(), "nothing written");
    assert!(matches!(
        store.command.update_relay("gamma", &settings("gamma")),
        Err(HostError::UnknownRelay { .. })
    ));
    assert!(matches!(
        store.command.delete_relay("gamma"),
        Err(HostError::UnknownRelay { .. })
    ));
    // `?` takes them into any error type.
    let as_boxed: Box<dyn std::error::Error> = refused.into();
    assert!(!as_boxed.to_string().is_empty());

    let mut renamed = settings("alpha");
    renamed.info_name = "Alpha, renamed".into();
    store.command.update_relay("alpha", &renamed)?;
    assert_eq!(outcomes.wait_for("alpha", WAIT)?.kind, OutcomeKind::Synced);
    assert_eq!(
        zooid.relay("alpha").unwrap()["info"]["name"],
        "Alpha, renamed"
    );

    store.command.deactivate_relay("alpha")?;
    assert_eq!(outcomes.wait_for("alpha", WAIT)?.kind, OutcomeKind::Synced);
    assert_eq!(zooid.relay("alpha").unwrap()["inactive"], true);

    store.command.delete_relay("alpha")?;
    assert_eq!(outcomes.wait_for("alpha", WAIT)?.kind, OutcomeKind::Deleted);
    assert!(zooid.relay("alpha").is_none());
    assert!(store.query.list_pending_deletions()?.is_empty());

    // Nothing more is coming for alpha: a bounded wait says so.
    assert_eq!(
        outcomes
            .wait_for("alpha", Duration::from_millis(200))
            .unwrap_err(),
        WaitError::TimedOut
    );
    worker.shutdown()?;
    Ok(())
}

#[test]
fn a_failed_sync_is_an_outcome_too() -> Result<(), Box<dyn std::error::Error>> {
    let robot = RobotKey::parse(Secret::generate(32).expose())?;
    let zooid = FixtureZooid::start(&[robot.public_key().to_hex()])?;
    zooid.inject(
        "alpha",
        zooid_sync::fixture::Fault::Status {
            status: 400,
            body: r#"{"error":"schema is reserved"}"#.into(),
        },
    );
    let mut env = Env::new(&zooid.url(), "relays.example.com", robot)?;
    env.sync_max_rate = 0.0;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("platform.db"))?;
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env).spawn()?;
    let outcomes = store.command.outcomes();
    store.command.create_relay("alpha", &settings("alpha"))?;
    match outcomes.wait_for("alpha", WAIT)?.kind {
        OutcomeKind::Failed { error } => assert!(error.contains("schema is reserved"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !worker.wait_timeout(Duration::from_millis(10)),
        "still running"
    );
    worker.shutdown()?;
    Ok(())
}
