//! `zooid-sync status`: where every relay stands, derived from the database alone.
//!
//! Nothing here asks the running daemon: the attempt number is the relay's trailing
//! `fail_relay_sync` count, and the next retry is the last failure's time plus the backoff of
//! that attempt (jitter aside), exactly as the worker computes it.

use anyhow::Result;
use serde::Serialize;

use crate::infra::retry::RetryPolicy;
use crate::quote;
use crate::store::{now_unix, Query};

/// One relay's line in the status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayReport {
    pub id: String,
    pub host: String,
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

/// Every relay, in id order. A malformed row is reported with its error instead of hiding.
pub fn report(
    query: &Query,
    relay_domain: Option<&str>,
    retry: &RetryPolicy,
) -> Result<Vec<RelayReport>> {
    let now = now_unix();
    let mut out = Vec::new();
    for relay in query.list_relays()? {
        let relay = match relay {
            Ok(relay) => relay,
            Err(e) => {
                out.push(RelayReport {
                    id: "?".into(),
                    host: "?".into(),
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
        let attempts = query.count_trailing_sync_failures(&relay.id)?;
        let (next_retry, next_retry_at) = if relay.synced {
            (String::new(), None)
        } else if attempts == 0 {
            ("pending".to_string(), None)
        } else if retry.gave_up(attempts) {
            ("gave up".to_string(), None)
        } else {
            // A failure row the host mangled does not hide the relay: count from now.
            let failed_at = query
                .trailing_sync_failure(&relay.id)
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
        };
        let s = &relay.settings;
        out.push(RelayReport {
            host: match relay_domain {
                Some(domain) => format!("{}.{domain}", s.subdomain),
                None => s.subdomain.clone(),
            },
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
    Ok(out)
}

/// While the breaker is open: `zooid unreachable since <time> (<last error>); N relays
/// waiting`, for the first line of `zooid-sync status`.
pub fn zooid_line(query: &Query) -> Result<Option<String>> {
    let Some((since, error)) = query.zooid_outage()? else {
        return Ok(None);
    };
    let waiting = query.count_pending()?;
    Ok(Some(format!(
        "zooid unreachable since {} ({}); {waiting} relays waiting",
        format_unix(since),
        quote::remote(&error, quote::REMOTE_MAX)
    )))
}

/// The report as an aligned text table; long errors are shortened to keep one line a relay.
pub fn render_table(rows: &[RelayReport]) -> String {
    let header = [
        "ID",
        "HOST",
        "STATUS",
        "SYNCED",
        "ATTEMPTS",
        "NEXT RETRY",
        "LAST ERROR",
    ];
    let mut table: Vec<[String; 7]> = vec![header.map(String::from)];
    for r in rows {
        let error: String = r.last_error.chars().take(80).collect();
        table.push([
            r.id.clone(),
            r.host.clone(),
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
    let widths: Vec<usize> = (0..7)
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

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::format_unix;

    #[test]
    fn unix_times_read_as_utc() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix(1_795_745_139), "2026-11-27 02:05:39 UTC");
    }
}
