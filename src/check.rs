//! `zooid-sync check`: verifies a deployment end to end, from this machine, before the daemon
//! is trusted with it: the settings, the database and its contract, and zooid (reachable, its
//! TLS trusted, its API answering on this host name, the robot accepted).
//!
//! Each finding is one line: `ok` or `FAIL`, what was checked, and for a failure the likely
//! cause and what to do. It only reads: the database is opened read-only, the one request to
//! zooid's API is the breaker's probe (`GET /relay/zooid-sync-probe/members`), which changes
//! nothing there, and it asks zooid for up to three relays' NIP-11 documents as a relay user
//! would, to say how catch-ups will be paced.

use std::path::Path;

use std::time::Duration;

use crate::env::{Env, PacingSignal, SecretSource};
use crate::store::{schema, Query};
use crate::zooid::{ProbeFailure, ZooidClient, ZooidError};

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether it passed (a warning passes).
    pub ok: bool,
    /// Whether it passed with a warning.
    pub warning: bool,
    /// What was checked and what was found.
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = match (self.ok, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "WARN",
            (true, false) => "ok  ",
        };
        write!(f, "{mark} {}", self.what)
    }
}

fn ok(what: String) -> Finding {
    Finding {
        ok: true,
        warning: false,
        what,
    }
}

fn warn(what: String) -> Finding {
    Finding {
        ok: true,
        warning: true,
        what,
    }
}

fn fail(what: String) -> Finding {
    Finding {
        ok: false,
        warning: false,
        what,
    }
}

/// Runs every check that the settings allow; `vars` answers an environment variable.
pub fn run(vars: impl Fn(&str) -> Option<String>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let env = match Env::from_vars(&vars) {
        Ok(env) => {
            let (hex, npub) = env.robot.public_key_names();
            findings.push(ok(format!(
                "settings: zooid at {}, relays at *.{}, robot {hex} ({npub})",
                env.zooid_api_url, env.relay_domain
            )));
            Some(env)
        }
        Err(e) => {
            findings.push(fail(format!("settings: {e:#}")));
            None
        }
    };
    findings.extend(check_secret_sources(&vars));
    let database = vars("DATABASE_PATH")
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "zooid-sync.db".into());
    findings.push(check_database(Path::new(&database)));
    if let Some(env) = env {
        findings.extend(check_zooid_column(&env, Path::new(&database)));
        // Every zooid, the default one first; relay users are asked at the default one.
        for (n, zooid) in env.zooids().into_iter().enumerate() {
            let Some(settings) = env.for_zooid(&zooid.name) else {
                continue;
            };
            let found = check_zooid(&settings, &zooid.name);
            let answers = found.ok;
            findings.push(found);
            if answers && n == 0 {
                findings.extend(check_relay_users(&env, Path::new(&database)));
            }
        }
    }
    findings
}

/// With `ZOOID_INSTANCES` set, the relay table needs its `zooid` column.
fn check_zooid_column(env: &Env, database: &Path) -> Option<Finding> {
    if env.zooid_instances.is_empty() {
        return None;
    }
    let query = Query::open_read_only(database).ok()?;
    Some(match query.has_zooid_column() {
        true => ok(format!(
            "zooids: {}; the relay table's zooid column assigns relays to them",
            env.zooids()
                .iter()
                .map(|z| z.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        false => fail(
            "zooids: ZOOID_INSTANCES names zooids, but the relay table has no zooid column \
             to assign relays to them: add it (ALTER TABLE relay ADD COLUMN zooid TEXT NOT \
             NULL DEFAULT '') or unset ZOOID_INSTANCES"
                .into(),
        ),
    })
}

/// Whether zooid answers relay users at its API's address, which catch-ups are paced by
/// (`SYNC_PACING=users`): asked about up to three relays the database says zooid serves. A
/// zooid that does not is a warning (it passes): catch-ups are then paced by its answers
/// alone.
fn check_relay_users(env: &Env, database: &Path) -> Option<Finding> {
    if env.sync_zooid_share == 0.0 {
        return Some(ok("pacing: off (SYNC_ZOOID_SHARE=0)".into()));
    }
    if env.sync_pacing == PacingSignal::Answers {
        return Some(ok(
            "pacing: by zooid's answers alone (SYNC_PACING=answers)".into()
        ));
    }
    let query = Query::open_read_only(database).ok()?;
    let hosts: Vec<String> = query
        .served_subdomains(3)
        .ok()?
        .into_iter()
        .map(|sub| format!("{sub}.{}", env.relay_domain))
        .collect();
    let client = ZooidClient::new(env).ok()?;
    let mut refused = Vec::new();
    for host in &hosts {
        match client.ask_as_user(host) {
            Ok(wait) => {
                return Some(ok(format!(
                    "relay users: zooid answers {host}'s NIP-11 document at its API's address \
                     in {}: catch-ups are paced by what its users feel",
                    crate::words::show_duration(wait.max(Duration::from_micros(100)))
                )))
            }
            Err(Some(why)) => refused.push(format!("{host}: {why}")),
            Err(None) => {
                return Some(warn(format!(
                    "relay users: no answer to {host}'s NIP-11 request at zooid's API address; \
                     the daemon asks again at its start"
                )))
            }
        }
    }
    Some(match refused.is_empty() {
        true => ok(
            "relay users: no active relay is synced yet; the daemon asks zooid as one's user at \
             its first catch-up"
                .into(),
        ),
        false => warn(format!(
            "relay users: zooid does not answer a relay user's NIP-11 request at its API's \
             address ({}): catch-ups will be paced by zooid's answers alone, which do not show \
             the work zooid does after answering. A proxy in front of zooid may route relay \
             hosts elsewhere; SYNC_PACING=answers stops the asking",
            refused.join("; ")
        )),
    })
}

/// Where each secret comes from, never its value: one line each that is given, a warning
/// (it passes) for one still in the environment under systemd. Problems of the sources
/// themselves are the settings' line.
fn check_secret_sources(vars: &impl Fn(&str) -> Option<String>) -> Vec<Finding> {
    let under_systemd = crate::env::under_systemd(vars);
    crate::env::secret_sources(vars)
        .into_iter()
        .filter_map(|(name, source)| match source {
            Ok(Some(SecretSource::Variable(_))) if under_systemd => Some(warn(format!(
                "secrets: {}",
                crate::env::move_to_credential(name)
            ))),
            Ok(Some(source)) => Some(ok(format!("secrets: {name} from {source}"))),
            Ok(None) | Err(_) => None,
        })
        .collect()
}

/// The database exists, can be read, is at the current schema and holds the contract.
fn check_database(path: &Path) -> Finding {
    if !path.exists() {
        return fail(format!(
            "database: there is no database at {} (DATABASE_PATH; `zooid-sync init` creates a \
             new one)",
            path.display()
        ));
    }
    let opened = Query::open_read_only(path).and_then(|query| {
        query.with_connection(schema::check_contract)?;
        Ok((query.count_relays()?, query.count_pending()?))
    });
    match opened {
        Ok((relays, pending)) => ok(format!(
            "database: {} holds the contract; {}, {pending} pending",
            path.display(),
            crate::words::plural(relays, "relay", "relays")
        )),
        Err(e) => fail(format!("database: {e:#}")),
    }
}

/// The zooid named `name` (at `env.zooid_api_url`) answers the probe on this host name and
/// accepts the robot. Its line begins `zooid:` for the default zooid, `zooid <name>:` for
/// another.
fn check_zooid(env: &Env, name: &str) -> Finding {
    let zooid = match name == crate::env::DEFAULT_ZOOID {
        true => "zooid".to_string(),
        false => format!("zooid {name}"),
    };
    let client = match ZooidClient::new(env) {
        Ok(client) => client,
        Err(e) => return fail(format!("{zooid}: {e:#}")),
    };
    let url = &env.zooid_api_url;
    match client.probe() {
        Ok(()) => ok(format!(
            "{zooid}: {url} answers as zooid's API and accepts the robot"
        )),
        Err(ProbeFailure::RobotRefused(why)) => fail(format!("{zooid}: {why}")),
        Err(ProbeFailure::Unavailable(e)) => fail(format!("{zooid}: {}", unavailable(env, &e))),
    }
}

/// What an unavailability error likely means, and what to do.
fn unavailable(env: &Env, error: &ZooidError) -> String {
    let url = &env.zooid_api_url;
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
        match &env.zooid_ca_file {
            Some(file) => format!(
                "zooid's TLS certificate is not trusted by {}: is it the CA that signed \
                 zooid's certificate, and does the certificate name this host?",
                file.display()
            ),
            None => "zooid's TLS certificate is not signed by a public CA this machine trusts: \
                     set ZOOID_CA_FILE to the CA bundle that signed it"
                .to_string(),
        }
    } else if lower.contains("refused") {
        "nothing listens there: is zooid running, and are ZOOID_API_URL's host and port right?"
            .to_string()
    } else if lower.contains("timed out") || lower.contains("timeout") {
        format!(
            "no answer within ZOOID_TIMEOUT ({}): a firewall, a wrong address, or zooid is \
             overloaded",
            crate::words::show_duration(env.zooid_timeout)
        )
    } else if lower.contains("dns") || lower.contains("resolve") || lower.contains("lookup") {
        "its host name does not resolve from this machine".to_string()
    } else {
        "zooid is unavailable from this machine".to_string()
    };
    format!("cannot reach {url}: {hint} ({text})")
}
