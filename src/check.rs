//! `zooid-sync check`: verifies a deployment end to end, from this machine, before the daemon
//! is trusted with it: the settings, the database and its contract, and zooid (reachable, its
//! TLS trusted, its API answering on this host name, the robot accepted).
//!
//! Each finding is one line: `ok` or `FAIL`, what was checked, and for a failure the likely
//! cause and what to do. It only reads: the database is opened read-only and the one request
//! to zooid is the breaker's probe (`GET /relay/zooid-sync-probe/members`), which changes
//! nothing there.

use std::path::Path;

use crate::env::{Env, SecretSource};
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
        findings.push(check_zooid(&env));
    }
    findings
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

/// zooid answers the probe on this host name and accepts the robot.
fn check_zooid(env: &Env) -> Finding {
    let client = match ZooidClient::new(env) {
        Ok(client) => client,
        Err(e) => return fail(format!("zooid: {e:#}")),
    };
    let url = &env.zooid_api_url;
    match client.probe() {
        Ok(()) => ok(format!(
            "zooid: {url} answers as zooid's API and accepts the robot"
        )),
        Err(ProbeFailure::RobotRefused(why)) => fail(format!("zooid: {why}")),
        Err(ProbeFailure::Unavailable(e)) => fail(format!("zooid: {}", unavailable(env, &e))),
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
