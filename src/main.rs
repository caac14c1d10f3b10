//! The `zooid-sync` binary: parses the command line and wires the library together.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zooid_sync::daemon::{self, DaemonOptions};
use zooid_sync::manual::{self, Selection};
use zooid_sync::parse_duration;
use zooid_sync::{dev, status, Env, Store};

/// Keeps a fleet of hosted Nostr relays configured on zooid.
///
/// Configuration comes from the environment (ZOOID_API_URL, RELAY_DOMAIN, ROBOT_SECRET,
/// DATABASE_PATH, ...; see README.md). Logs go to standard error, filtered by RUST_LOG.
#[derive(Parser)]
#[command(name = "zooid-sync", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: sync every change until SIGTERM or SIGINT.
    Run {
        /// How often to look for activity written by other processes (e.g. 20ms, 1s).
        #[arg(long, default_value = "20ms", value_parser = parse_duration)]
        feed_interval: std::time::Duration,
        /// Serve /healthz and /metrics (Prometheus) on this address, e.g. 127.0.0.1:9464.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Sync relays now. Through the running daemon when there is one (never beside its own
    /// sync of the same relay); otherwise here. Exit status 0: synced; 1: failed; 2: bad
    /// configuration or unknown relay.
    Sync {
        /// The relays' ids.
        #[arg(required_unless_present_any = ["failed", "all"])]
        ids: Vec<String>,
        /// Every unsynced relay whose last sync failed (waiting on its backoff or given up).
        #[arg(long, conflicts_with_all = ["ids", "all"])]
        failed: bool,
        /// Every relay: a full re-push, paced by the workers and SYNC_MAX_RATE.
        #[arg(long, conflicts_with_all = ["ids", "failed"])]
        all: bool,
        /// Through a running daemon: how long to wait for its next answer before the relays
        /// still unanswered fail, naming the daemon that did not answer (e.g. 30s, 10m).
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show every relay: host, status, synced, attempts, next retry, last error.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List a relay's members, as zooid knows them.
    Members {
        /// The relay's id.
        id: String,
    },
    /// Delete activity older than an age that zooid-sync no longer needs (each relay's last
    /// completed sync and everything after it are kept). Safe beside the daemon.
    Prune {
        /// How old activity must be to go, e.g. 90d (at least 1h).
        #[arg(long, value_parser = parse_duration)]
        older_than: std::time::Duration,
    },
    /// Check the deployment from this machine: the settings, the database and its contract,
    /// zooid reachable (TLS), its API on this host name, the robot accepted. One line per
    /// finding, with what to do; exit status 0 only when every check passes.
    Check,
    /// Print the robot's public key (hex, as zooid's API_WHITELIST lists it, and npub).
    Pubkey,
    /// Create the database (DATABASE_PATH) with zooid-sync's tables, for a new platform;
    /// `run` refuses a database that does not exist. Bring an existing one up to date.
    Init,
    /// A self-contained demonstration: fixture zooid, fresh database, the real worker.
    Dev,
}

fn main() -> ExitCode {
    zooid_sync::logging::init();
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zooid-sync: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Run {
            feed_interval,
            listen,
        } => {
            let env = Env::from_env()?;
            let stop = stop_on_signal()?;
            let options = DaemonOptions {
                feed_interval,
                listen,
            };
            daemon::run(&env, &options, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync {
            ids,
            failed,
            all,
            timeout,
        } => {
            let env = Env::from_env()?;
            let store = open_existing(&env.database_path)?;
            let selection = match (failed, all) {
                (true, _) => Selection::Failed,
                (_, true) => Selection::All,
                _ => Selection::Ids(ids),
            };
            let report = manual::run(&env, &store, &selection, timeout)?;
            match &selection {
                Selection::Ids(_) => {
                    for a in &report.answers {
                        match a.outcome.as_str() {
                            "synced" => println!("relay {}: synced ({})", a.relay, a.detail),
                            outcome => println!("relay {}: {outcome}: {}", a.relay, a.detail),
                        }
                    }
                }
                _ => {
                    let failures: Vec<_> = report.failures().collect();
                    println!(
                        "{} relays: {} synced, {} failed",
                        report.answers.len(),
                        report.answers.len() - failures.len(),
                        failures.len()
                    );
                    for a in failures {
                        println!("  {}: {}: {}", a.relay, a.outcome, a.detail);
                    }
                }
            }
            Ok(ExitCode::from(report.exit_code(&selection)))
        }
        Cmd::Status { json } => {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let path = var("DATABASE_PATH").unwrap_or_else(|| "zooid-sync.db".into());
            let query = zooid_sync::Query::open_read_only(&path).context("DATABASE_PATH")?;
            let basis = status::basis(&query.worker_settings()?, var)?;
            let rows = status::report(&query, basis.relay_domain.as_deref(), &basis.retry)?;
            let zooid = status::zooid_line(&query)?;
            if json {
                // Standard output stays one JSON document; the outage goes beside it.
                if let Some(line) = zooid {
                    eprintln!("{line}");
                }
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                if let Some(line) = zooid {
                    println!("{line}");
                }
                print!("{}", status::render_table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Members { id } => {
            let env = Env::from_env()?;
            let client = zooid_sync::ZooidClient::new(&env)?;
            for member in client.list_relay_members(&id)? {
                println!("{member}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Prune { older_than } => {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let path = var("DATABASE_PATH").unwrap_or_else(|| "zooid-sync.db".into());
            let store = open_existing(std::path::Path::new(&path))?;
            let pruned = zooid_sync::prune::prune(&store, older_than)?;
            println!(
                "deleted {} activity rows older than {} in {:.1} s; {} left. The file keeps its \
                 size and reuses the freed pages (VACUUM gives them back to the disk).",
                pruned.deleted,
                zooid_sync::show_duration(older_than),
                pruned.took.as_secs_f64(),
                pruned.left
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check => {
            let findings = zooid_sync::check::run(|name| std::env::var(name).ok());
            for finding in &findings {
                println!("{finding}");
            }
            let failed = findings.iter().filter(|f| !f.ok).count();
            match failed {
                0 => println!("every check passed"),
                n => println!(
                    "{} failed",
                    zooid_sync::status::plural(n as u64, "check", "checks")
                ),
            }
            Ok(ExitCode::from(u8::from(failed > 0)))
        }
        Cmd::Pubkey => {
            let secret = std::env::var("ROBOT_SECRET").unwrap_or_default();
            if secret.trim().is_empty() {
                anyhow::bail!("ROBOT_SECRET is not set");
            }
            let robot = zooid_sync::RobotKey::parse(secret.trim()).context("ROBOT_SECRET")?;
            let (hex, npub) = robot.public_key_names();
            println!("{hex}\n{npub}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Init => {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let path = var("DATABASE_PATH").unwrap_or_else(|| "zooid-sync.db".into());
            let existed = std::path::Path::new(&path).exists();
            Store::open(&path).context("DATABASE_PATH")?;
            match existed {
                true => println!(
                    "{path}: the database exists; its schema is current (version {})",
                    zooid_sync::SCHEMA_VERSION
                ),
                false => println!(
                    "{path}: created, schema version {}",
                    zooid_sync::SCHEMA_VERSION
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dev => {
            dev::run()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens a database that must already exist: `status` and `sync` on a mistyped path should
/// say so, not report on a new, empty database.
fn open_existing(path: &std::path::Path) -> Result<Store> {
    if !path.exists() {
        anyhow::bail!(
            "DATABASE_PATH: there is no database at {} (run `zooid-sync run` or the host to create it)",
            path.display()
        );
    }
    Store::open(path)
}

/// A channel that receives once SIGTERM or SIGINT arrives. A second one ends the process at
/// once, without waiting for the requests in flight (their relays stay pending and are synced
/// at the next start).
fn stop_on_signal() -> Result<crossbeam_channel::Receiver<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).context("cannot handle signals")?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("zooid-sync-signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if let Some(signal) = received.next() {
                log::info!(
                    "received signal {signal}; stopping once the requests in flight are \
                     answered (a second signal stops at once)"
                );
                let _ = tx.send(());
            }
            if let Some(signal) = received.next() {
                log::warn!(
                    "received signal {signal} again; stopping now (relays whose sync was in \
                     flight are synced at the next start)"
                );
                std::process::exit(128 + signal);
            }
        })?;
    Ok(rx)
}
