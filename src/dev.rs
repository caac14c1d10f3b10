//! `zooid-sync dev`: the whole system on one machine with nothing installed.
//!
//! It starts the fixture zooid on loopback and a fresh database in a temporary directory,
//! seeds it with the relays of `fixtures/dev-relays.json` the way a host would (one
//! `create_relay` each), runs the real worker with short retry delays while zooid refuses one
//! relay twice, then changes two relays, lists members, prints what zooid received and the
//! status table, and exits once everything has settled.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::env::{BlossomS3, Env, Livekit, RobotKey};
use crate::fixture::{Fault, FixtureZooid};
use crate::infra::Infra;
use crate::retry::RetryPolicy;
use crate::secret::{random_hex, Secret};
use crate::status;
use crate::store::{Query, RelaySettings, Store};

/// The relays the demonstration starts with.
const SEED: &str = include_str!("../fixtures/dev-relays.json");

#[derive(Deserialize)]
struct SeedRelay {
    id: String,
    settings: RelaySettings,
}

/// Runs the demonstration, narrating on standard output.
pub fn run() -> Result<()> {
    let seed: Vec<SeedRelay> = serde_json::from_str(SEED).context("fixtures/dev-relays.json")?;
    let dir = private_temp_dir()?;
    let result = demonstrate(&seed, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A fresh directory under the temporary directory, with a random name, that only this user
/// can enter. Creating it fails rather than reuse one that exists, so nobody can prepare it.
fn private_temp_dir() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("zooid-sync-dev-{}", random_hex(8)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn demonstrate(seed: &[SeedRelay], dir: &std::path::Path) -> Result<()> {
    let robot = RobotKey::parse(&random_hex(32))?;
    let zooid = FixtureZooid::start(&[robot.public_key().to_hex()])?;
    let mut env = Env::new(&zooid.url(), "relays.example.com", robot)?;
    let database = dir.join("zooid-sync.db");
    env.retry = RetryPolicy {
        base: Duration::from_millis(250),
        cap: Duration::from_secs(2),
        max_attempts: 6,
        jitter: false,
    };
    env.blossom = BlossomS3 {
        endpoint: Some("https://s3.example.com".into()),
        region: Some("us-east-1".into()),
        bucket: Some("relay-media".into()),
        access_key: Some("DEMOACCESSKEY".into()),
        secret_key: Some(Secret::new("demo-s3-secret")),
    };
    env.livekit = Livekit {
        url: Some("wss://livekit.example.com".into()),
        api_key: Some("demo-key".into()),
        api_secret: Some(Secret::new("demo-livekit-secret")),
    };
    println!("zooid-sync dev");
    println!("  fixture zooid:  {}", zooid.url());
    println!("  database:       {}", database.display());
    println!(
        "  retries:        {:?} doubling, zooid will answer 503 twice for gamma\n",
        env.retry.base
    );

    zooid.inject_times(
        "gamma",
        Fault::Status {
            status: 503,
            body: r#"{"error":"zooid is restarting"}"#.into(),
        },
        2,
    );
    let store = Store::open(&database)?;
    let started = Instant::now();
    let printer = {
        let activities = store.command.notify.subscribe();
        std::thread::spawn(move || {
            let mut count = 0;
            while let Ok(a) = activities.recv() {
                let detail = if a.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.detail)
                };
                let ms = started.elapsed().as_millis();
                println!(
                    "  {ms:>6} ms  {:<20} {}{detail}",
                    a.activity_type, a.resource_id
                );
                count += 1;
            }
            count
        })
    };
    let worker = Infra::new(store.query.clone(), store.command.clone(), &env).spawn()?;

    println!("The host creates {} relays:", seed.len());
    for relay in seed {
        store.command.create_relay(&relay.id, &relay.settings)?;
    }
    settle(&store.query, Duration::from_secs(60))?;

    println!("\nThe host renames alpha and reactivates delta:");
    let mut alpha = seed[0].settings.clone();
    alpha.info_name = "Alpha (renamed)".into();
    store.command.update_relay("alpha", &alpha)?;
    store.command.activate_relay("delta")?;
    settle(&store.query, Duration::from_secs(60))?;

    zooid.set_members("alpha", &[seed[0].settings.tenant_pubkey.as_str()]);
    let members =
        Infra::new(store.query.clone(), store.command.clone(), &env).list_relay_members("alpha")?;
    worker.shutdown()?;
    let query = store.query.clone();
    drop(store);
    let events = printer.join().unwrap_or(0);

    println!("\nMembers of alpha at zooid: {members:?}");
    println!("\nRequests zooid received ({events} activities recorded):");
    for r in zooid.requests() {
        println!("  {:<6} {:<22} {}", r.method, r.path, r.status);
    }
    println!("\nzooid-sync status:");
    let rows = status::report(&query, Some(&env.relay_domain), &env.retry)?;
    print!("{}", status::render_table(&rows));
    println!("\nSettled: every relay is synced and zooid holds the latest configuration.");
    Ok(())
}

/// Waits until no relay is pending.
fn settle(query: &Query, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while query.count_pending()? > 0 {
        if Instant::now() > deadline {
            bail!("relays still pending after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::private_temp_dir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_temp_dir_is_fresh_and_private() {
        let (a, b) = (private_temp_dir().unwrap(), private_temp_dir().unwrap());
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir(&a).unwrap();
        std::fs::remove_dir(&b).unwrap();
    }
}
