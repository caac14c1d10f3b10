//! `zooid-sync run`: the daemon's lifecycle, so that `main` only parses and wires signals.
//!
//! Order matters. The lease comes first: a standby reads nothing and sends nothing. Then the
//! feed reads its cursor, then the worker subscribes to the bus and reconciles: whatever the
//! host writes after the cursor is either published by the feed after the subscription, or
//! already visible to the reconcile. Nothing falls between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use crossbeam_channel::{select, Receiver};

use crate::endpoint;
use crate::env::Env;
use crate::infra::Infra;
use crate::lease::{Holder, Lease};
use crate::notify::{watchdog_interval, Notifier, Watchdog};
use crate::store::{Store, StoreOptions};
use crate::zooid::ZooidClient;

/// Settings of the daemon that are not part of [`Env`].
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The database (`DATABASE_PATH`).
    pub database: std::path::PathBuf,
    /// How often the feed looks for activity written by other processes.
    pub feed_interval: Duration,
    /// Where to serve `/healthz` and `/metrics` (off when `None`).
    pub listen: Option<String>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            database: "zooid-sync.db".into(),
            feed_interval: Duration::from_millis(20),
            listen: None,
        }
    }
}

/// Runs until `stop` receives (or disconnects), then lets the syncs in flight finish. While
/// another process holds the database's lease it stands by (sending nothing, answering
/// `/healthz` with `standby`) and takes over when that process stops or dies.
pub fn run(env: &Env, options: &DaemonOptions, stop: Receiver<()>) -> Result<()> {
    let database = &options.database;
    if !database.exists() {
        anyhow::bail!(
            "DATABASE_PATH: there is no database at {} (a typo? `zooid-sync init` creates a \
             new one); nothing was created",
            database.display()
        );
    }
    warn_of_secrets_in_the_environment();
    crate::memory::limit_arenas();
    ZooidClient::new(env)?; // a bad CA bundle is an error now, not in the worker thread
    let store = Store::open_with(
        database,
        StoreOptions {
            feed_interval: options.feed_interval,
            ..StoreOptions::default()
        },
    )?;
    let infra = Infra::new(store.query.clone(), store.command.clone(), env);
    // A hidden hook for the tests of the liveness check (`Infra::inject_stall`).
    if let Ok(id) = std::env::var("ZOOID_SYNC_INJECT_STALL") {
        infra.inject_stall(&id);
    }
    let metrics = infra.metrics();
    let alive = Arc::new(AtomicBool::new(true));
    let _endpoint = match &options.listen {
        Some(addr) => {
            let server = endpoint::serve(
                addr,
                env.zooids().into_iter().map(|z| z.name).collect(),
                metrics.clone(),
                store.query.clone(),
                alive.clone(),
                endpoint::Limits::public(),
            )?;
            log::info!("serving /healthz and /metrics on {}", server.addr());
            Some(server)
        }
        None => None,
    };
    let notifier = Notifier::from_env().map(Arc::new);
    let notify = |state: &str| {
        if let Some(n) = &notifier {
            n.notify(state)
        }
    };
    let _watchdog = match (&notifier, watchdog_interval()) {
        (Some(n), Some(interval)) => Some(Watchdog::start(n.clone(), interval, metrics.clone())?),
        _ => None,
    };
    let shown = database.display();
    let standing_by = |holder: &Holder| {
        log::info!("standing by: {holder} syncs {shown}; taking over when it stops");
        notify(&format!(
            "READY=1\nSTATUS=standing by: {holder} syncs the database"
        ));
    };
    let Some(lease) = Lease::wait(database, &stop, standing_by)? else {
        notify("STOPPING=1");
        return Ok(()); // stopped while standing by
    };
    // The worker follows other processes' writes through the store's feed; `store` keeps the
    // bus open until the daemon stops.
    let worker = infra.with_lease(lease).spawn()?;
    notify("READY=1\nSTATUS=syncing");
    select! {
        recv(stop) -> _ => {}
        recv(worker.finished()) -> _ => {}
    }
    notify("STOPPING=1");
    alive.store(false, Ordering::Release);
    let stopped = worker.shutdown();
    drop(store);
    stopped
}

/// Under systemd, one WARN for each secret still given in the environment.
fn warn_of_secrets_in_the_environment() {
    let var = |name: &str| std::env::var(name).ok();
    if !crate::env::under_systemd(&var) {
        return;
    }
    for (name, source) in crate::env::secret_sources(&var) {
        if let Ok(Some(crate::env::SecretSource::Variable(_))) = source {
            log::warn!("{}", crate::env::move_to_credential(name));
        }
    }
}
