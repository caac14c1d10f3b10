//! The `zooid-sync` binary: parses the command line and wires the library together.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zooid_sync::daemon::{self, DaemonOptions};
use zooid_sync::manual::{self, Selection};
use zooid_sync::{database_path, parse_duration};
use zooid_sync::{dev, status, Env, Store};

/// Keeps a fleet of hosted Nostr relays configured on zooid.
///
/// Configuration comes from the environment (see below). Logs go to standard error, filtered
/// by RUST_LOG. Exit status: 0 success; 1 the work failed (a relay did not sync, a check
/// failed, zooid refused or did not answer); 2 bad usage, configuration or input (a setting
/// missing or out of range, no database, an unknown relay).
#[derive(Parser)]
#[command(name = "zooid-sync", version = VERSION, after_long_help = SETTINGS)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: sync every change until SIGTERM or SIGINT.
    Run {
        /// How often to look for activity written by other processes while it flows, 1ms to
        /// 1m (e.g. 20ms, 1s); once quiet, it waits for the database's files to be written.
        #[arg(long, default_value = "20ms", value_parser = feed_interval)]
        feed_interval: std::time::Duration,
        /// Serve /healthz and /metrics (Prometheus) on this HOST:PORT, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "HOST:PORT", value_parser = host_port)]
        listen: Option<String>,
    },
    /// Sync relays now. Through the running daemon when there is one (never beside its own
    /// sync of the same relay); otherwise here. Exit status 0: synced; 1: failed; 2: bad
    /// configuration or unknown relay.
    #[command(override_usage = "zooid-sync sync <ID>... | --failed | --all [--timeout <TIMEOUT>]")]
    Sync {
        /// The relays' ids (or --failed, or --all).
        #[arg(required_unless_present_any = ["failed", "all"], value_name = "ID")]
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
    /// Print the manual page (roff) on standard output, for packagers.
    #[command(hide = true)]
    Man,
    /// Print the completion script for `shell` on standard output, for packagers.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
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
                database: database_path(|name| std::env::var(name).ok()),
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
            let store = open_existing(&database_path(|name| std::env::var(name).ok()))?;
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
                        "{}: {} synced, {} failed",
                        zooid_sync::plural(report.answers.len() as u64, "relay", "relays"),
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
            let recorded = query.worker_settings()?;
            let basis = status::basis(&recorded, var)?;
            let rows = status::report(&query, basis.relay_domain.as_deref(), &basis.retry)?;
            let catch_up = status::catch_up_lines(&recorded, &query.count_pending_by_zooid()?);
            let audit = status::audit_line(&recorded);
            let zooid = status::zooid_lines(&query)?
                .into_iter()
                .chain(catch_up)
                .chain(audit);
            if json {
                // Standard output stays one JSON document; the outage goes beside it.
                for line in zooid {
                    eprintln!("{line}");
                }
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for line in zooid {
                    println!("{line}");
                }
                print!("{}", status::render_table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Members { id } => {
            let env = Env::from_env()?;
            // With several zooids, the database says which one the relay lives at.
            let query = match env.zooid_instances.is_empty() {
                true => None,
                false => Some(zooid_sync::Query::open_read_only(database_path(|name| {
                    std::env::var(name).ok()
                }))?),
            };
            let client = zooid_sync::ZooidClient::for_relay(&env, query.as_ref(), &id)?;
            match client.list_relay_members(&id) {
                Ok(members) if members.is_empty() => eprintln!("relay {id} has no members"),
                Ok(members) => {
                    for member in members {
                        println!("{member}");
                    }
                }
                Err(e) => {
                    eprintln!("zooid-sync: {e:#}");
                    // An unknown or unsafe relay id is bad input (2); zooid failing is a
                    // failure (1).
                    let bad_input = e.downcast_ref::<zooid_sync::ZooidError>().is_some_and(|z| {
                        matches!(z, zooid_sync::ZooidError::UnsafePath { .. })
                            || (z.status() == Some(404) && client.robot_refusal(z).is_none())
                    });
                    return Ok(ExitCode::from(if bad_input { 2 } else { 1 }));
                }
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
        Cmd::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "zooid-sync", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")?;
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
                n => println!("{} failed", zooid_sync::plural(n as u64, "check", "checks")),
            }
            Ok(ExitCode::from(u8::from(failed > 0)))
        }
        Cmd::Pubkey => {
            let robot = Env::robot_from_env()?;
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

/// `--feed-interval`: a duration from 1 ms (a zero interval would poll without a pause) to a
/// minute (a change waits at most ten intervals when quiet).
fn feed_interval(value: &str) -> Result<std::time::Duration> {
    let interval = parse_duration(value)?;
    zooid_sync::within(
        "--feed-interval",
        interval,
        std::time::Duration::from_millis(1),
        std::time::Duration::from_secs(60),
    )?;
    Ok(interval)
}

/// `--listen`: `HOST:PORT` (a name or an address, and a port number).
fn host_port(value: &str) -> Result<String> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(value.to_string())
        }
        _ => anyhow::bail!("expected HOST:PORT, such as 127.0.0.1:9464"),
    }
}

/// Every setting, for `--help`: an installed binary has no README beside it.
/// `--version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ZOOID_SYNC_COMMIT"),
    ")"
);

const SETTINGS: &str = "\
Settings (environment variables):
  ZOOID_API_URL          zooid's API, http(s)://host:port, exactly as zooid's API_HOST (required
                         for run, sync, members, check): the default zooid
  ZOOID_INSTANCES        more zooids, name=url pairs separated by commas (eu=https://zooid-eu...);
                         the relay table's zooid column names a relay's zooid ('' the default)
  RELAY_DOMAIN           relays are served at <subdomain>.<RELAY_DOMAIN> (required)
  ROBOT_SECRET           the robot's Nostr secret key, hex or nsec; its public key (zooid-sync
                         pubkey) must be in zooid's API_WHITELIST (required)
  DATABASE_PATH          the SQLite database (default zooid-sync.db; zooid-sync init creates it)
  BLOSSOM_S3_ENDPOINT, BLOSSOM_S3_REGION, BLOSSOM_S3_BUCKET, BLOSSOM_S3_ACCESS_KEY,
  BLOSSOM_S3_SECRET_KEY  S3 for relays with blossom (unset: such relays fail, naming it)
  LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET
                         LiveKit for relays with livekit
  SYNC_WORKERS           threads making requests to zooid, 1 to 64 (default 4)
  SYNC_RETRY_BASE        first retry delay, 1ms to 1h (default 30s)
  SYNC_RETRY_CAP         longest retry delay, base to 24h (default 15m)
  SYNC_RETRY_MAX_ATTEMPTS
                         retries before giving up, at most 100 (default 6)
  ZOOID_TIMEOUT          per-request timeout, 100ms to 10m (default 5s)
  SYNC_MAX_RATE          most requests a second to zooid, 0 (no ceiling) or 0.01 to 100000
                         (default 100)
  SYNC_ZOOID_SHARE       the most of zooid's time a catch-up's writes may take, 0.01 to 1, 0 for
                         no pacing (default 0.25)
  SYNC_PACING            users (learn what writes cost zooid from its relay users' NIP-11
                         requests too) or answers (from zooid's answers alone) (default users)
  SYNC_USER_DELAY        the most a catch-up may add to a relay user's median wait, 1ms to 10s
                         (default 1ms)
  SYNC_AUDIT_INTERVAL    how long one pass of the existence audit takes (every synced relay
                         asked about once, spread evenly), 1s to 365d, 0 for off (default 1d)
  ZOOID_CA_FILE          PEM CA bundle to trust for https to zooid
  ZOOID_ALLOW_PLAIN_HTTP 1 to allow http:// to a zooid on another machine
  ZOOID_PROXY            proxy to reach zooid through (http:// or socks5://)
  RUST_LOG               log filter (default info)
  SYNC_LOG_FORMAT        text, journal (journald's priorities, no timestamps) or json (one
                         object a line); default journal under systemd, text otherwise
Durations are written 250ms, 30s, 15m, 2h, 1d or 90d.
The secrets (ROBOT_SECRET, BLOSSOM_S3_SECRET_KEY, LIVEKIT_API_SECRET) can also be given as
<NAME>_FILE, a file that holds it (mode 0640 at most), or as the systemd credential named like
the variable in lower case (robot_secret, ...; LoadCredential=); one way each.";

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
