//! zooid-sync inside a plain, non-async host program.
//!
//! The host opens the store, starts the worker on its own threads, records a change with
//! `Command`, and waits for its outcome. With `ZOOID_API_URL`, `RELAY_DOMAIN` and
//! `ROBOT_SECRET` set it talks to that zooid (and `DATABASE_PATH`, default `platform.db`);
//! without them it starts the fixture zooid on loopback and a database in a temporary
//! directory, so that it runs anywhere:
//!
//! ```sh
//! cargo run --example embedded
//! ZOOID_API_URL=https://zooid.example.com RELAY_DOMAIN=relays.example.com \
//!     ROBOT_SECRET=... cargo run --example embedded
//! ```
//!
//! Where the daemon (`zooid-sync run`) syncs the database, a host only records its changes and
//! waits for the outcomes the daemon records, which its store's feed brings to it:
//!
//! ```sh
//! DATABASE_PATH=/var/lib/zooid-sync/platform.db cargo run --example embedded -- --record-only
//! ```
//!
//! A host copies `run` as it is; `main` only chooses the zooid, or none.

use std::path::Path;
use std::time::Duration;

use zooid_sync::{Env, HostError, Infra, OutcomeKind, RelaySettings, RelayStatus, Store};

/// What a host does: open, start the worker (unless a daemon syncs the database: `env` is
/// `None`), record a change, wait for its outcome, stop.
fn run(env: Option<&Env>, database: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(database)?;
    let worker = match env {
        Some(env) => Some(Infra::new(store.query.clone(), store.command.clone(), env).spawn()?),
        None => None,
    };

    // Subscribe before the change, so that its outcome cannot be missed.
    let outcomes = store.command.outcomes();
    let settings = RelaySettings {
        tenant_pubkey: "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
        schema: "example".into(),
        subdomain: "example".into(),
        status: RelayStatus::Active,
        info_name: "Example".into(),
        groups_enabled: true,
        ..RelaySettings::default()
    };
    match store.command.create_relay("example", &settings) {
        Ok(_) => println!("created relay example"),
        // Run twice against one database: the relay is there already.
        Err(HostError::RelayExists { .. }) => {
            store.command.update_relay("example", &settings)?;
            println!("updated relay example");
        }
        Err(e) => return Err(e.into()),
    }
    let outcome = outcomes.wait_for("example", Duration::from_secs(30))?;
    match &outcome.kind {
        OutcomeKind::Synced => println!("zooid serves relay example"),
        OutcomeKind::Failed { error } => println!("the sync failed, retried later: {error}"),
        other => println!("relay example: {other:?}"),
    }

    // Stop intake and let the syncs in flight finish.
    if let Some(worker) = worker {
        worker.shutdown()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database = std::env::var_os("DATABASE_PATH").unwrap_or("platform.db".into());
    if std::env::args().any(|a| a == "--record-only") {
        return run(None, Path::new(&database));
    }
    if std::env::var_os("ZOOID_API_URL").is_some() {
        return run(Some(&Env::from_env()?), Path::new(&database));
    }
    // No zooid given: the fixture zooid, a fresh robot and a temporary database.
    let robot = zooid_sync::RobotKey::parse(zooid_sync::Secret::generate(32).expose())?;
    let zooid = zooid_sync::fixture::FixtureZooid::start(&[robot.public_key().to_hex()])?;
    let env = Env::new(&zooid.url(), "relays.example.com", robot)?;
    let dir = std::env::temp_dir().join(format!("zooid-sync-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(Some(&env), &dir.join("platform.db"));
    println!(
        "the fixture zooid holds: {}",
        zooid
            .relay("example")
            .map_or("nothing".into(), |r| r["host"].to_string())
    );
    std::fs::remove_dir_all(&dir)?;
    result
}
