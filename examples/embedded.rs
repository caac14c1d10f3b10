//! zooid-sync inside a plain, non-async host program.
//!
//! The host opens the store, starts the worker on its own threads, and records changes with
//! `Command`; the worker hears them on the bus and syncs them. To stay runnable anywhere this
//! example talks to the fixture zooid; a real host builds its `Env` with `Env::from_env()` (or
//! `Env::new`) pointing at its zooid.
//!
//! Run it with `cargo run --example embedded`.

use std::time::{Duration, Instant};

use zooid_sync::fixture::FixtureZooid;
use zooid_sync::Secret;
use zooid_sync::{Env, Infra, RelaySettings, RelayStatus, RobotKey, Store};

fn main() -> anyhow::Result<()> {
    let robot = RobotKey::parse(Secret::generate(32).expose())?;
    let zooid = FixtureZooid::start(&[robot.public_key().to_hex()])?;
    let dir = std::env::temp_dir().join(format!("zooid-sync-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut env = Env::new(&zooid.url(), "relays.example.com", robot)?;
    env.database_path = dir.join("platform.db");

    // The host's own handles: it keeps `command` to record changes.
    let Store { query, command } = Store::open(&env.database_path)?;
    let worker = Infra::new(query.clone(), command.clone(), &env).spawn()?;

    // A change, recorded the way the platform records every change.
    let settings = RelaySettings {
        tenant_pubkey: "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
        schema: "example".into(),
        subdomain: "example".into(),
        status: RelayStatus::Active,
        info_name: "Example".into(),
        groups_enabled: true,
        ..RelaySettings::default()
    };
    command.create_relay("example", &settings)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    while !query.get_relay("example")?.is_some_and(|r| r.synced) {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not sync in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "zooid now serves: {}",
        zooid.relay("example").unwrap()["host"]
    );

    // Stop intake and let the syncs in flight finish.
    worker.shutdown()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
