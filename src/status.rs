//! `zooid-sync status`: where every relay stands, derived from the database alone.
//!
//! Nothing here asks the running daemon: the attempt number is the relay's trailing
//! `fail_relay_sync` count, and the next retry is the last failure's time plus the backoff of
//! that attempt (jitter aside), exactly as the worker computes it.

use anyhow::Result;
use serde::Serialize;

use crate::quote;
use crate::retry::RetryPolicy;
use crate::store::Query;
use crate::time::format_unix;
use crate::time::now_unix;
use crate::words::plural;
use crate::zooid::ROBOT_REFUSED;

/// One relay's line in the status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayReport {
    pub id: String,
    pub host: String,
    /// The zooid it lives at (`default` for `ZOOID_API_URL`'s); for a deletion, the one it
    /// was last synced to.
    pub zooid: String,
    pub status: String,
    pub synced: bool,
    /// Consecutive failed syncs since the last other activity.
    pub attempts: u32,
    pub last_error: String,
    /// `""` when synced; `"pending"`, `"in 12s"`, `"due"` or `"gave up"` otherwise.
    pub next_retry: String,
    /// Unix time of the next retry, when one is scheduled.
    pub next_retry_at: Option<i64>,
}

/// The settings a report is made by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Basis {
    /// Relays are served at `<subdomain>.<relay_domain>`; `None`: hosts show the subdomain.
    pub relay_domain: Option<String>,
    pub retry: RetryPolicy,
    /// Whether these are the settings the worker recorded (rather than this environment's).
    pub from_worker: bool,
}

/// What `status` reports by: the settings the worker that holds (or last held) the lease
/// recorded when it started, so that the report shows what that worker does; the caller's
/// environment (`var`) only for what no worker recorded.
pub fn basis(recorded: &[(String, String)], var: impl Fn(&str) -> Option<String>) -> Result<Basis> {
    let get = |name: &str| {
        recorded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let ms = |name: &str| {
        get(name)
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    };
    let recorded_retry = match (
        ms("retry_base_ms"),
        ms("retry_cap_ms"),
        get("retry_max_attempts").and_then(|v| v.parse().ok()),
    ) {
        (Some(base), Some(cap), Some(max_attempts)) => Some(RetryPolicy {
            base,
            cap,
            max_attempts,
            ..RetryPolicy::default()
        }),
        _ => None,
    };
    let from_worker = recorded_retry.is_some();
    let retry = match recorded_retry {
        Some(retry) => retry,
        None => crate::env::retry_policy_from_vars(&var)?,
    };
    let relay_domain = get("relay_domain")
        .map(str::to_string)
        .or_else(|| var("RELAY_DOMAIN").filter(|v| !v.is_empty()));
    Ok(Basis {
        relay_domain,
        retry,
        from_worker,
    })
}

/// Every relay, in id order, and every relay the host deleted that zooid has not confirmed
/// deleting (its status `deleted at <time>`). A malformed row is reported with its error
/// instead of hiding.
pub fn report(
    query: &Query,
    relay_domain: Option<&str>,
    retry: &RetryPolicy,
) -> Result<Vec<RelayReport>> {
    let mut out = Vec::new();
    for relay in query.list_relays()? {
        let relay = match relay {
            Ok(relay) => relay,
            Err(e) => {
                out.push(RelayReport {
                    id: "?".into(),
                    host: "?".into(),
                    zooid: "?".into(),
                    status: "malformed".into(),
                    synced: false,
                    attempts: 0,
                    last_error: format!("{e:#}"),
                    next_retry: String::new(),
                    next_retry_at: None,
                });
                continue;
            }
        };
        // A relay whose newest outcome was a success has an empty `sync_error` (a failure
        // always sets it), so no failure trails it: no query needed, which keeps `status`
        // fast on a large, healthy fleet.
        let attempts = match relay.sync_error.is_empty() {
            true => 0,
            false => query.count_trailing_sync_failures(&relay.id)?,
        };
        let (next_retry, next_retry_at) =
            next_retry(query, &relay.id, relay.synced, attempts, retry);
        let s = &relay.settings;
        out.push(RelayReport {
            host: match relay_domain {
                Some(domain) => format!("{}.{domain}", s.subdomain),
                None => s.subdomain.clone(),
            },
            zooid: crate::env::zooid_named_by(&s.zooid).to_string(),
            status: s.status.to_string(),
            synced: relay.synced,
            attempts,
            // Anyone may have written it: shown without control characters or known secrets.
            last_error: quote::remote(&relay.sync_error, quote::REMOTE_MAX),
            next_retry,
            next_retry_at,
            id: relay.id,
        });
    }
    // Relays the host deleted whose deletion zooid has not confirmed: their rows are gone,
    // their state is in the log.
    for deletion in query.list_pending_deletions()? {
        let attempts = match deletion.sync_error.is_empty() {
            true => 0,
            false => query.count_trailing_sync_failures(&deletion.id)?,
        };
        let (next_retry, next_retry_at) = next_retry(query, &deletion.id, false, attempts, retry);
        let zooid = query
            .relay_placement(&deletion.id)?
            .map(|p| p.zooid)
            .unwrap_or_default();
        out.push(RelayReport {
            host: String::new(),
            zooid: crate::env::zooid_named_by(&zooid).to_string(),
            status: format!("deleted at {}", format_unix(deletion.requested_at)),
            synced: false,
            attempts,
            last_error: quote::remote(&deletion.sync_error, quote::REMOTE_MAX),
            next_retry,
            next_retry_at,
            id: deletion.id,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// When relay `id` is synced next: `""` when it is synced, `"pending"` before any failure,
/// `"gave up"`, or the time of its next retry (`"in 12s"`, `"due"`) with its unix time.
fn next_retry(
    query: &Query,
    id: &str,
    synced: bool,
    attempts: u32,
    retry: &RetryPolicy,
) -> (String, Option<i64>) {
    if synced {
        (String::new(), None)
    } else if attempts == 0 {
        ("pending".to_string(), None)
    } else if retry.gave_up(attempts) {
        ("gave up".to_string(), None)
    } else {
        let now = now_unix();
        // A failure row the host mangled does not hide the relay: count from now.
        let failed_at = query
            .trailing_sync_failure(id)
            .ok()
            .flatten()
            .map_or(now, |a| a.created_at);
        let delay = retry.backoff(attempts).unwrap_or_default();
        let at = failed_at + delay.as_secs_f64().ceil() as i64;
        let text = if at > now {
            format!("in {}s", at - now)
        } else {
            "due".to_string()
        };
        (text, Some(at))
    }
}

/// One line for each zooid whose breaker is open, the first lines of `zooid-sync status`:
/// `zooid unreachable since <time> (<last error>); N relays waiting`, or, when zooid refuses
/// the robot, `zooid refuses zooid-sync since <time>: <what to do>; N relays waiting`. A
/// zooid other than the default one is named: `zooid eu unreachable since ...`.
pub fn zooid_lines(query: &Query) -> Result<Vec<String>> {
    let outages = query.zooid_outages()?;
    if outages.is_empty() {
        return Ok(Vec::new());
    }
    let pending = query.count_pending_by_zooid()?;
    Ok(outages
        .into_iter()
        .map(|(zooid, since, error)| {
            // Its own relays wait (by the name their `zooid` column holds).
            let waiting = pending
                .iter()
                .filter(|(column, _)| crate::env::zooid_named_by(column) == zooid)
                .map(|(_, n)| n)
                .sum::<u64>();
            let waiting = plural(waiting, "relay", "relays");
            let error = quote::remote(&error, quote::REMOTE_MAX);
            let since = format_unix(since);
            let named = match zooid == crate::env::DEFAULT_ZOOID {
                true => "zooid".to_string(),
                false => format!("zooid {zooid}"),
            };
            match error.strip_prefix(ROBOT_REFUSED) {
                Some(why) => format!(
                    "{named} refuses zooid-sync since {since}{why}; {waiting} waiting",
                    why = why.trim_end_matches('.')
                ),
                None => format!("{named} unreachable since {since} ({error}); {waiting} waiting"),
            }
        })
        .collect())
}

/// The existence audit's line: when its last pass ended and what it found, and how far the
/// pass in progress is, from what the worker recorded
/// (`AUDIT_STATE` in `src/infra/audit.rs`); `None` before any was recorded.
pub fn audit_line(recorded: &[(String, String)]) -> Option<String> {
    use crate::infra::audit::{Pass, AUDIT_STATE};
    let get = |name: &str| {
        recorded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let last = match (
        get(AUDIT_STATE[4]).and_then(|v| v.parse::<i64>().ok()),
        number(AUDIT_STATE[5]),
        number(AUDIT_STATE[6]),
    ) {
        (Some(ended), Some(checked), Some(missing)) => Some(format!(
            "last pass ended {}: {} checked, {missing} missing at zooid{}",
            format_unix(ended),
            plural(checked, "relay", "relays"),
            match get(AUDIT_STATE[7]).unwrap_or("") {
                "" => String::new(),
                ids => format!(" ({}, created again)", ids.replace(' ', ", ")),
            }
        )),
        _ => None,
    };
    let current = Pass::from_recorded(recorded).map(|pass| {
        format!(
            "this pass since {}: {} checked, {} missing",
            format_unix(pass.started),
            plural(pass.checked, "relay", "relays"),
            pass.missing
        )
    });
    let parts: Vec<String> = last.into_iter().chain(current).collect();
    (!parts.is_empty()).then(|| format!("audit: {}", parts.join("; ")))
}

/// One line for each zooid whose catch-up is in progress: since when, how many relays are
/// left and, once the pace is known, about how long they take, from what the worker recorded
/// (`catch_up_keys` in `src/infra/pool.rs`) and the relays pending now at each zooid
/// (`pending`: by the name the `zooid` column holds, `""` for the default one).
pub fn catch_up_lines(recorded: &[(String, String)], pending: &[(String, u64)]) -> Vec<String> {
    let mut zooids: Vec<&str> = recorded
        .iter()
        .filter_map(|(name, _)| match name.strip_prefix("catch_up_since") {
            Some("") => Some(crate::env::DEFAULT_ZOOID),
            Some(rest) => rest.strip_prefix(':'),
            None => None,
        })
        .collect();
    zooids.sort_by_key(|z| (*z != crate::env::DEFAULT_ZOOID, *z));
    zooids
        .into_iter()
        .filter_map(|zooid| {
            let column = match zooid == crate::env::DEFAULT_ZOOID {
                true => "",
                false => zooid,
            };
            let left = pending
                .iter()
                .find(|(name, _)| name == column)
                .map_or(0, |(_, n)| *n);
            catch_up_line(recorded, zooid, left)
        })
        .collect()
}

/// The catch-up line of the zooid named `zooid`, with `pending` of its relays left.
fn catch_up_line(recorded: &[(String, String)], zooid: &str, pending: u64) -> Option<String> {
    let keys = crate::infra::pool::catch_up_keys(zooid);
    let get = |name: &str| {
        recorded
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse::<i64>().ok())
    };
    let since = get(&keys[0])?;
    let relays = get(&keys[1]).unwrap_or(0);
    let eta = match get(&keys[2]).filter(|ms| *ms > 0) {
        Some(ms) => format!(
            ", about {} at the current pace",
            crate::words::show_duration(std::time::Duration::from_secs(
                (ms as u64 * pending).div_ceil(1000)
            ))
        ),
        None => String::new(),
    };
    let at = match zooid == crate::env::DEFAULT_ZOOID {
        true => String::new(),
        false => format!(" at zooid {zooid}"),
    };
    Some(format!(
        "catch-up{at} since {}: {pending} of {relays} relays left{eta}",
        format_unix(since)
    ))
}

/// The report as an aligned text table; long errors are shortened to keep one line a relay.
pub fn render_table(rows: &[RelayReport]) -> String {
    let header = [
        "ID",
        "HOST",
        "ZOOID",
        "STATUS",
        "SYNCED",
        "ATTEMPTS",
        "NEXT RETRY",
        "LAST ERROR",
    ];
    let mut table: Vec<[String; 8]> = vec![header.map(String::from)];
    for r in rows {
        let error: String = r.last_error.chars().take(80).collect();
        table.push([
            r.id.clone(),
            r.host.clone(),
            r.zooid.clone(),
            r.status.clone(),
            if r.synced { "yes" } else { "no" }.to_string(),
            r.attempts.to_string(),
            if r.next_retry.is_empty() {
                "-".into()
            } else {
                r.next_retry.clone()
            },
            if error.is_empty() { "-".into() } else { error },
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_line_shows_the_last_pass_and_the_one_in_progress() {
        let rows = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(audit_line(&[]), None, "nothing recorded yet");
        let current = [
            ("audit_pass_started", "1700000000"),
            ("audit_cursor", "m"),
            ("audit_checked", "450"),
            ("audit_missing", "0"),
        ];
        assert_eq!(
            audit_line(&rows(&current)).unwrap(),
            "audit: this pass since 2023-11-14 22:13:20 UTC: 450 relays checked, 0 missing"
        );
        let mut both = current.to_vec();
        both.extend([
            ("audit_last_ended", "1699990000"),
            ("audit_last_checked", "1000"),
            ("audit_last_missing", "2"),
            ("audit_last_missing_ids", "alpha beta"),
        ]);
        assert_eq!(
            audit_line(&rows(&both)).unwrap(),
            "audit: last pass ended 2023-11-14 19:26:40 UTC: 1000 relays checked, 2 missing at \
             zooid (alpha, beta, created again); this pass since 2023-11-14 22:13:20 UTC: 450 \
             relays checked, 0 missing"
        );
        let last_only = &both[4..];
        assert!(audit_line(&rows(last_only))
            .unwrap()
            .ends_with("2 missing at zooid (alpha, beta, created again)"));
    }

    #[test]
    fn the_basis_is_what_the_worker_recorded() {
        let recorded: Vec<(String, String)> = [
            ("retry_base_ms", "45000"),
            ("retry_cap_ms", "600000"),
            ("retry_max_attempts", "7"),
            ("relay_domain", "relays.example.org"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let recorded = basis(&recorded, |_| None).unwrap();
        assert!(recorded.from_worker);
        assert_eq!(recorded.retry.base, std::time::Duration::from_secs(45));
        assert_eq!(recorded.retry.cap, std::time::Duration::from_secs(600));
        assert_eq!(recorded.retry.max_attempts, 7);
        assert_eq!(recorded.relay_domain.as_deref(), Some("relays.example.org"));
        // Nothing recorded: this environment's, an empty RELAY_DOMAIN none.
        let var = |domain: &'static str| {
            move |name: &str| (name == "RELAY_DOMAIN").then(|| domain.to_string())
        };
        let own = basis(&[], var("relays.example.net")).unwrap();
        assert!(!own.from_worker);
        assert_eq!(own.relay_domain.as_deref(), Some("relays.example.net"));
        assert_eq!(basis(&[], var("")).unwrap().relay_domain, None);
    }

    #[test]
    fn a_catch_up_is_shown_with_what_is_left_and_when_it_ends() {
        let recorded = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let pending = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        assert_eq!(
            catch_up_lines(
                &recorded(&[("retry_base_ms", "30000")]),
                &pending(&[("", 5)])
            ),
            Vec::<String>::new()
        );
        let lines = catch_up_lines(
            &recorded(&[
                ("catch_up_since:eu", "1795745139"),
                ("catch_up_relays:eu", "300"),
                ("catch_up_since", "1795745139"),
                ("catch_up_relays", "1000"),
                ("catch_up_spacing_ms", "240"),
            ]),
            &pending(&[("", 500), ("eu", 30), ("us", 9)]),
        );
        assert_eq!(
            lines,
            [
                "catch-up since 2026-11-27 02:05:39 UTC: 500 of 1000 relays left, about 2m at \
                 the current pace",
                "catch-up at zooid eu since 2026-11-27 02:05:39 UTC: 30 of 300 relays left",
            ]
        );
        let unpaced = catch_up_lines(
            &recorded(&[("catch_up_since", "0"), ("catch_up_spacing_ms", "0")]),
            &pending(&[("", 3)]),
        );
        assert!(unpaced[0].ends_with("3 of 0 relays left"), "{unpaced:?}");
    }
}
