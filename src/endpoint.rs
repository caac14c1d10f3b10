//! The `/healthz` and `/metrics` endpoint of `zooid-sync run --listen`.
//!
//! `/healthz` is 200 while the worker runs and the database answers (`ok` and zooid's state,
//! or `standby` while another process holds the lease), 503 otherwise; `/metrics` is
//! [`Metrics::render`]. It runs on `HttpServer` within [`Limits`]: anyone who can reach the
//! port can connect, so connections, time, head size and database reads are all bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use crate::http_server::Limits;
use crate::http_server::{HttpRequest, HttpServer, Reply};
use crate::metrics::Metrics;
use crate::store::Query;
use crate::zooid::ROBOT_REFUSED;

/// The running `/healthz` and `/metrics` endpoint. Stops when dropped.
pub struct MetricsServer {
    server: HttpServer,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// How many connections it has open now.
    pub fn open_connections(&self) -> usize {
        self.server.open_connections()
    }
}

/// How long a count of pending relays is reused. Counting reads the whole relay table, and
/// scrapers may be many.
const PENDING_TTL: Duration = Duration::from_secs(1);

/// The number of pending relays, counted at most once per [`PENDING_TTL`] however many
/// scrapers ask at once: the first counts while holding the lock, the others wait for it and
/// share its answer. So `/metrics` costs the same for one scraper or a hundred.
struct PendingCount {
    query: Query,
    last: Mutex<Option<(Instant, Option<u64>)>>,
}

impl PendingCount {
    fn get(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap();
        if let Some((at, count)) = *last {
            if at.elapsed() < PENDING_TTL {
                return count;
            }
        }
        let count = self.query.count_pending().ok();
        *last = Some((Instant::now(), count));
        count
    }
}

/// `/healthz`'s body while the worker runs: `ok`, then a line for each zooid: `zooid: up`
/// (`zooid eu: up` for a zooid other than the default one), or since when it is unavailable
/// or refuses zooid-sync, from `outages` (name, since, last error) as recorded.
fn health_lines(zooids: &[String], outages: &[(String, i64, String)]) -> String {
    let mut body = String::from("ok\n");
    for zooid in zooids {
        let named = match zooid == crate::env::DEFAULT_ZOOID {
            true => "zooid".to_string(),
            false => format!("zooid {zooid}"),
        };
        let line = match outages.iter().find(|(name, ..)| name == zooid) {
            None => "up".to_string(),
            Some((_, since, error)) if error.starts_with(ROBOT_REFUSED) => format!(
                "refuses zooid-sync since {}{}; relay syncs wait for the fix",
                crate::time::format_unix(*since),
                error
                    .trim_start_matches(ROBOT_REFUSED)
                    .trim_end_matches('.')
            ),
            Some((_, since, error)) => format!(
                "unavailable since {} ({error}); relay syncs wait for it",
                crate::time::format_unix(*since)
            ),
        };
        body.push_str(&format!("{named}: {line}\n"));
    }
    body
}

/// Serves `/healthz` and `/metrics` on `addr`, within `limits` ([`Limits::public`] for the
/// daemon). `alive` is cleared when the worker stops. Only `GET` without a body is served.
/// `/healthz` is 200 while the worker runs and the database answers, whether zooid is up or
/// not (each zooid's state is in the body, a line for each of `zooids`), and 503 otherwise.
pub fn serve(
    addr: &str,
    zooids: Vec<String>,
    metrics: Arc<Metrics>,
    query: Query,
    alive: Arc<AtomicBool>,
    limits: Limits,
) -> Result<MetricsServer> {
    let pending = PendingCount {
        query: query.clone(),
        last: Mutex::new(None),
    };
    let handler = move |req: &HttpRequest| {
        let text = |status: u16, body: String| Reply::Body {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        };
        match (req.method.as_str(), req.path()) {
            ("GET", "/healthz") if alive.load(Ordering::Acquire) && !metrics.active() => text(
                200,
                "standby\nanother process holds the database's lease\n".into(),
            ),
            ("GET", "/healthz") if metrics.trouble().is_some() => {
                text(503, format!("{}\n", metrics.trouble().unwrap_or_default()))
            }
            ("GET", "/healthz") if query.write_health().failing.is_some() => {
                let health = query.write_health();
                let (since, error) = health.failing.unwrap_or_default();
                text(
                    503,
                    format!(
                        "the database refuses writes since {} ({error}); {} sync outcomes \
                         wait to be recorded\n",
                        crate::time::format_unix(since),
                        health.waiting
                    ),
                )
            }
            ("GET", "/healthz") => match (alive.load(Ordering::Acquire), query.zooid_outages()) {
                // zooid being down is zooid's trouble, not the worker's: still 200, so that
                // a supervisor does not restart a worker that is doing the right thing.
                (true, Ok(outages)) => text(200, health_lines(&zooids, &outages)),
                (false, _) => text(503, "the worker has stopped\n".into()),
                (true, Err(e)) => text(503, format!("the database does not answer: {e:#}\n")),
            },
            ("GET", "/metrics") => {
                let read = crate::metrics::Read {
                    pending: pending.get(),
                    writes: Some(query.write_health()),
                };
                metrics.set_feed_bad_rows(query.bad_activity_rows());
                Reply::Body {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: metrics.render(&read) + &crate::process::render(),
                }
            }
            (_, "/healthz" | "/metrics") => text(405, "only GET is served here\n".into()),
            _ => text(404, "not found: try /healthz or /metrics\n".into()),
        }
    };
    let server = HttpServer::start("zooid-sync-http", addr, handler, None, limits)
        .with_context(|| format!("--listen: cannot listen on {addr}"))?;
    Ok(MetricsServer { server })
}
