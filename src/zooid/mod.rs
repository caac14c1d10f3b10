//! The client for zooid's management API.
//!
//! One [`ZooidClient`] holds one `ureq::Agent`, shared by every worker thread, so connections to
//! zooid are kept alive and reused. Every request is signed with NIP-98 (see
//! [`crate::nip98::make_auth`]) and bounded by one overall timeout (5 s by default). Redirects are
//! not followed: zooid never sends one, and a signed request must not wander to another URL.
//!
//! [`ZooidClient::request`] answers the response on 2xx and a [`ZooidError`] otherwise; the
//! error keeps the status so the sync logic can tell "already exists" (409) and "not found"
//! (404) from the rest, and quotes at most 1 KiB of zooid's body, cleaned by
//! [`crate::quote::remote`]. Every path is checked before anything is sent: each segment must
//! be a safe URL path segment, so no relay id can lead a request elsewhere, whoever calls.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

use crate::env::Env;
use crate::nip98::{make_auth, RobotKey};
use crate::pace::{Pace, Pacer, Signal};
use crate::quote;
use crate::rate::RateLimit;
use crate::relay_config::RelayBody;
use crate::rules::is_safe_path_segment;

mod transport;

/// The relay id of [`ZooidClient::probe`]'s request; no relay is expected to have it.
pub const PROBE_ID: &str = "zooid-sync-probe";

/// The size of each connection's input and output buffer.
const IO_BUFFER_BYTES: usize = 16 * 1024;

/// The most of a response body that zooid-sync reads.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// A 2xx answer from zooid.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body, cut to 64 KiB.
    pub body: String,
}

/// A request to zooid that did not end in 2xx.
#[derive(Debug, Clone)]
pub enum ZooidError {
    /// zooid answered with a non-2xx status.
    Status {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// The status zooid answered.
        status: u16,
        /// zooid's body, cut to 1 KiB.
        body: String,
        /// What zooid's `Retry-After` header asked for (whole seconds), if it sent one.
        retry_after: Option<Duration>,
    },
    /// No usable answer: connection refused or reset, timeout, malformed HTTP, TLS failure.
    Transport {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The path holds a segment that is not a safe URL path segment (a relay id like `..`,
    /// `a?x=1` or `a#frag`); nothing was sent.
    UnsafePath {
        /// The request's method.
        method: &'static str,
        /// The path refused.
        path: String,
    },
}

/// How an error begins when zooid refuses this robot as a whole (see
/// [`ZooidClient::robot_refusal`]).
pub const ROBOT_REFUSED: &str = "zooid refuses zooid-sync";

/// Why a probe found zooid unfit for relay syncs.
#[derive(Debug, Clone)]
pub enum ProbeFailure {
    /// No usable answer, or 429/502/503/504.
    Unavailable(ZooidError),
    /// zooid answers, but refuses this robot; what to do (starts with [`ROBOT_REFUSED`]).
    RobotRefused(String),
}

impl ProbeFailure {
    /// What `Retry-After` asked for, if anything.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProbeFailure::Unavailable(e) => e.retry_after(),
            ProbeFailure::RobotRefused(_) => None,
        }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Unavailable(e) => write!(f, "{e}"),
            ProbeFailure::RobotRefused(why) => f.write_str(why),
        }
    }
}

/// Whether `body` is zooid's own error JSON (`{"error": "..."}`).
fn is_zooid_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(|e| e.is_string()))
}

impl ZooidError {
    /// The HTTP status, when zooid answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ZooidError::Status { status, .. } => Some(*status),
            ZooidError::Transport { .. } | ZooidError::UnsafePath { .. } => None,
        }
    }

    /// Whether this says that zooid itself is unavailable, rather than that it refused the
    /// request: no usable answer at all (connection refused or reset, timeout, DNS or TLS
    /// failure, malformed HTTP), or 429, 502, 503 or 504. Every other answer is zooid's
    /// word about this request. A path refused before sending is neither: it is a refusal.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ZooidError::Transport { .. } => true,
            ZooidError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            ZooidError::UnsafePath { .. } => false,
        }
    }

    /// Whether the request ran into the timeout (zooid did not answer in time).
    pub fn timed_out(&self) -> bool {
        match self {
            ZooidError::Transport { message, .. } => {
                let message = message.to_ascii_lowercase();
                message.contains("timeout") || message.contains("timed out")
            }
            _ => false,
        }
    }

    /// How long zooid asked to be left alone (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ZooidError::Status {
                status: 429 | 503,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for ZooidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZooidError::Status {
                method,
                path,
                status,
                body,
                ..
            } => write!(f, "zooid answered {method} {path} with {status}: {body}"),
            ZooidError::Transport {
                method,
                path,
                message,
            } => write!(f, "{method} {path} to zooid failed: {message}"),
            ZooidError::UnsafePath { method, path } => write!(
                f,
                "{method} {}: every segment of a path to zooid must be 1 to 128 of \
                 A-Z a-z 0-9 - _ . ~ (and not . or ..); nothing was sent",
                quote::host_value(path)
            ),
        }
    }
}

impl std::error::Error for ZooidError {}

/// A blocking, signing client for zooid's API.
#[derive(Clone)]
pub struct ZooidClient {
    agent: ureq::Agent,
    base_url: String,
    /// `GET /` at zooid's address: where a relay user asks for a relay's NIP-11 document.
    user_url: String,
    robot: RobotKey,
    /// Every request, from every clone of this client, takes a token here first.
    rate: Arc<RateLimit>,
    /// Learns what zooid's writes cost from every request's latency; the pool paces
    /// catch-ups by it.
    pacer: Arc<Pacer>,
}

impl fmt::Debug for ZooidClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooidClient")
            .field("base_url", &self.base_url)
            .field("robot", &self.robot)
            .finish()
    }
}

impl ZooidClient {
    /// A client for `env.zooid_api_url`, signing as `env.robot`, with `env.zooid_timeout`.
    /// With `env.zooid_ca_file`, https trusts exactly the certificates in that PEM bundle.
    /// The pacer every request of this client (and its clones) feeds.
    pub(crate) fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// A client of the zooid relay `id` lives at: the one its row names in `query` (or where
    /// it was last synced, for a deleted relay) when `env` names several zooids, else the
    /// default one. A name no setting gives is an error naming it.
    pub fn for_relay(
        env: &Env,
        query: Option<&crate::store::Query>,
        id: &str,
    ) -> Result<ZooidClient> {
        let name = match (env.zooid_instances.is_empty(), query) {
            (false, Some(query)) if query.has_zooid_column() => query.relay_zooid(id)?,
            _ => String::new(),
        };
        let settings = env.for_zooid(&name).ok_or_else(|| {
            anyhow::anyhow!(
                "relay {id} lives at zooid {name:?}, which ZOOID_INSTANCES does not name: add \
                 {name}=<its API URL> to it"
            )
        })?;
        ZooidClient::new(&settings)
    }

    /// Refuses what [`Env::check_transport`] refuses. Goes through a proxy only when
    /// `env.zooid_proxy` names one; the `HTTP_PROXY` family is ignored.
    pub fn new(env: &Env) -> Result<ZooidClient> {
        env.check_transport()?;
        env.check_limits()?;
        let proxy = match &env.zooid_proxy {
            Some(p) => Some(
                // The value may hold a password: the error does not repeat it.
                ureq::Proxy::new(p).map_err(|_| {
                    anyhow!(
                        "ZOOID_PROXY is malformed: expected a URL like http://proxy:3128 or \
                         socks5://proxy:1080"
                    )
                })?,
            ),
            None => None,
        };
        let mut config = ureq::Agent::config_builder()
            .proxy(proxy)
            .timeout_global(Some(env.zooid_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(env.sync_workers.max(1) * 2)
            .max_idle_age(Duration::from_secs(30))
            // Every kept-alive connection holds both buffers, zero-filled (128 KiB each by
            // default: 1 MiB resident with four workers). zooid's answers and the requests
            // zooid-sync sends are a few KiB; a longer body streams through in pieces.
            .input_buffer_size(IO_BUFFER_BYTES)
            .output_buffer_size(IO_BUFFER_BYTES)
            .user_agent(concat!("zooid-sync/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &env.zooid_ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("ZOOID_CA_FILE: cannot read {}", path.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(cert) =
                    item.with_context(|| format!("ZOOID_CA_FILE: {} is not PEM", path.display()))?
                {
                    certs.push(cert);
                }
            }
            if certs.is_empty() {
                return Err(anyhow!(
                    "ZOOID_CA_FILE: {} holds no certificate",
                    path.display()
                ));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let agent = ureq::Agent::with_parts(
            config.build(),
            transport::connector(),
            transport::CachingResolver::default(),
        );
        let pace = Pace::new(env.sync_zooid_share, env.sync_workers);
        let pace = match env.sync_pacing {
            Signal::Users if env.sync_zooid_share > 0.0 => pace.with_users(env.sync_user_delay),
            _ => pace,
        };
        let api = ureq::http::Uri::try_from(env.zooid_api_url.as_str())
            .map_err(|e| anyhow!("ZOOID_API_URL is not a usable URL: {e}"))?;
        Ok(ZooidClient {
            agent,
            base_url: env.zooid_api_url.clone(),
            user_url: format!(
                "{}://{}/",
                api.scheme_str().unwrap_or("http"),
                api.authority().map_or("", |a| a.as_str())
            ),
            robot: env.robot.clone(),
            pacer: Arc::new(Pacer::with_pace(pace, env.zooid_timeout)),
            rate: Arc::new(RateLimit::per_second(env.sync_max_rate)),
        })
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends a signed request; the response on 2xx, an error otherwise.
    /// `method` is one of `GET`, `POST`, `PUT`, `PATCH`.
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ZooidError> {
        self.send(self.sign(method, path, body.map(<[u8]>::to_vec))?)
    }

    /// Checks `path` and signs the request, without sending it: the half of
    /// [`request`](Self::request) that can be done ahead, while another request is in flight.
    pub(crate) fn sign(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<SignedRequest, ZooidError> {
        let segments = path.strip_prefix('/').map(|p| p.split('/'));
        if !segments.is_some_and(|mut s| s.all(is_safe_path_segment)) {
            return Err(ZooidError::UnsafePath {
                method,
                path: path.to_string(),
            });
        }
        let url = self.url(path);
        let auth = make_auth(&self.robot, method, &url, body.as_deref())
            .map_err(|e| transport(method, path, e.to_string()))?;
        Ok(SignedRequest {
            method,
            path: path.to_string(),
            url,
            body,
            auth,
            signed_at: Instant::now(),
        })
    }

    /// Sends a request [`sign`](Self::sign) made, once the rate limit allows; signs it again
    /// first if its signature is older than [`RESIGN_AFTER`].
    pub(crate) fn send(&self, signed: SignedRequest) -> Result<Response, ZooidError> {
        self.rate.acquire();
        let write = matches!(signed.method, "POST" | "PUT" | "PATCH" | "DELETE");
        if write {
            self.pacer.write_sent();
        }
        let started = std::time::Instant::now();
        let result = self.send_now(signed);
        // Only an answer says what zooid's work costs: a failure without one (zooid down, a
        // refused connection) would teach the pacer a cost zooid never had. A write that timed
        // out while zooid answers others is charged by the sync that judges it slow. A write
        // zooid refused (400, 404, 409) cost it a check, not a write: only accepted writes
        // say what a write costs; any answer to a read (the probe's 404) says what a read does.
        let answered = match &result {
            Ok(_) => true,
            Err(ZooidError::Status { .. }) => !write,
            Err(_) => false,
        };
        self.pacer
            .request_ended(write, answered.then(|| started.elapsed()));
        result
    }

    /// [`send`](Self::send), once the rate limit let it go.
    fn send_now(&self, mut signed: SignedRequest) -> Result<Response, ZooidError> {
        let refreshed = signed.refresh(&self.robot);
        let (method, path) = (signed.method, signed.path.as_str());
        let transport = |message: String| transport(method, path, message);
        refreshed.map_err(|e| transport(e.to_string()))?;
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&signed.url)
            .header("authorization", &signed.auth)
            .header("accept", "application/json");
        let sent = match &signed.body {
            Some(body) => {
                let request = request
                    .header("content-type", "application/json")
                    .body(&body[..])
                    .map_err(|e| transport(e.to_string()))?;
                self.agent.run(request)
            }
            None => {
                let request = request.body(()).map_err(|e| transport(e.to_string()))?;
                self.agent.run(request)
            }
        };
        let mut response = sent.map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read at most MAX_RESPONSE_BYTES; a longer body is cut, not an error, so that a huge
        // error page still shows its beginning.
        let mut bytes = Vec::new();
        let read = std::io::Read::read_to_end(
            &mut std::io::Read::take(response.body_mut().as_reader(), MAX_RESPONSE_BYTES),
            &mut bytes,
        );
        let text = match read {
            Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
            // A 2xx whose body cannot be read is no success: the outcome is unknown.
            Err(e) if (200..300).contains(&status) => {
                return Err(transport(format!(
                    "reading the {status} answer failed: {e}"
                )))
            }
            Err(e) => format!("<body unreadable: {e}>"),
        };
        if (200..300).contains(&status) {
            Ok(Response { status, body: text })
        } else {
            Err(ZooidError::Status {
                method,
                path: signed.path,
                status,
                body: quote::remote(&text, quote::REMOTE_MAX),
                retry_after,
            })
        }
    }

    /// Asks zooid, as one of its relays' users would, for the NIP-11 document of the relay
    /// served at `host`: `GET /` at zooid's address with that `Host` and `Accept:
    /// application/nostr+json`, unsigned, and outside `SYNC_MAX_RATE` (it is not a request
    /// to the API; its sampler bounds its own rate). Answers how long the answer took;
    /// `Err(Some(why))` when the answer is not a relay's NIP-11 document (a proxy that routes
    /// relay hosts elsewhere, a relay zooid no longer serves), `Err(None)` when no answer
    /// came (zooid down, a timeout), which says nothing about relay users.
    pub(crate) fn ask_as_user(&self, host: &str) -> Result<Duration, Option<String>> {
        let request = ureq::http::Request::builder()
            .method("GET")
            .uri(&self.user_url)
            .header("host", host)
            .header("accept", "application/nostr+json")
            .body(())
            .map_err(|e| Some(e.to_string()))?;
        let started = Instant::now();
        let mut response = self.agent.run(request).map_err(|_| None)?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(response.body_mut().as_reader(), 64 * 1024),
            &mut bytes,
        )
        .map_err(|_| None)?;
        let took = started.elapsed();
        let document = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .filter(serde_json::Value::is_object);
        match (status, document) {
            (200, Some(_)) => Ok(took),
            (200, None) => Err(Some("200 with a body that is not a JSON document".into())),
            (status, _) => Err(Some(format!(
                "{status}: {}",
                quote::remote(&String::from_utf8_lossy(&bytes), 80)
            ))),
        }
    }

    /// `POST /relay/{id}` with the full body, secret included.
    pub fn create_relay(&self, id: &str, body: &RelayBody) -> Result<Response, ZooidError> {
        self.send_json("POST", id, body)
    }

    /// `PATCH /relay/{id}` with the body, no secret.
    pub fn patch_relay(&self, id: &str, body: &RelayBody) -> Result<Response, ZooidError> {
        self.send_json("PATCH", id, body)
    }

    fn send_json(
        &self,
        method: &'static str,
        id: &str,
        body: &RelayBody,
    ) -> Result<Response, ZooidError> {
        self.send(self.sign_relay(method, id, body)?)
    }

    /// `method` (`POST` or `PATCH`) of `body` to `/relay/{id}`, signed, not sent yet.
    pub(crate) fn sign_relay(
        &self,
        method: &'static str,
        id: &str,
        body: &RelayBody,
    ) -> Result<SignedRequest, ZooidError> {
        let path = relay_path(method, id, "")?;
        let json = serde_json::to_vec(body).expect("a relay body always serializes");
        self.sign(method, &path, Some(json))
    }

    /// `DELETE /relay/{id}`, signed, not sent yet.
    pub(crate) fn sign_delete(&self, id: &str) -> Result<SignedRequest, ZooidError> {
        self.sign("DELETE", &relay_path("DELETE", id, "")?, None)
    }

    /// Asks whether zooid is there, with a signed request that depends on no relay:
    /// `GET /relay/zooid-sync-probe/members`. Any answer that is not unavailability (404, the
    /// usual one, included) means zooid is up; the error says why it is not.
    pub fn probe(&self) -> Result<(), ProbeFailure> {
        match self.request("GET", &format!("/relay/{PROBE_ID}/members"), None) {
            Err(e) if e.is_unavailable() => Err(ProbeFailure::Unavailable(e)),
            Err(e) => match self.robot_refusal(&e) {
                Some(why) => Err(ProbeFailure::RobotRefused(why)),
                None => Ok(()),
            },
            Ok(_) => Ok(()),
        }
    }

    /// When `error` is zooid refusing this robot as a whole rather than one request, what is
    /// wrong and what to do, starting with [`ROBOT_REFUSED`]: a `401` (the signature: clock,
    /// URL scheme, host), a `403` (the robot's key is not in `API_WHITELIST`), or a `404` that
    /// is not zooid's JSON (zooid serves its API only on its `API_HOST`, and answers any other
    /// host name with a plain `Not Found`). None of them says anything about a relay.
    pub fn robot_refusal(&self, error: &ZooidError) -> Option<String> {
        let ZooidError::Status { status, body, .. } = error else {
            return None;
        };
        let why = match status {
            401 => format!(
                "it rejects the robot's signature (401: {body}). Check this machine's clock, \
                 that ZOOID_API_URL's scheme is what zooid sees (behind a TLS proxy zooid needs \
                 X-Forwarded-Proto: https) and that its host and port are zooid's API_HOST"
            ),
            403 => format!(
                "the robot's key is not in zooid's API_WHITELIST (403: {body}). Add {} to it \
                 and restart zooid",
                self.robot.public_key().to_hex()
            ),
            404 if !is_zooid_error(body) => format!(
                "{} is not zooid's API (a 404 that is not zooid's JSON: {body}). \
                 ZOOID_API_URL must name zooid exactly as its API_HOST (host and port), and a \
                 proxy must pass the Host header unchanged",
                self.base_url
            ),
            _ => return None,
        };
        Some(format!("{ROBOT_REFUSED}: {why}"))
    }

    /// `GET /relay/{id}/members`: the relay's member pubkeys. An unknown relay is an error
    /// that says so.
    pub fn list_relay_members(&self, id: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Members {
            members: Vec<String>,
        }
        let path = relay_path("GET", id, "/members")?;
        let response = self.request("GET", &path, None).map_err(|e| {
            match (self.robot_refusal(&e), e.status()) {
                (Some(why), _) => anyhow::Error::new(e).context(why),
                (None, Some(404)) => {
                    let unknown = format!("zooid does not know relay {id:?}");
                    anyhow::Error::new(e).context(unknown)
                }
                _ => anyhow!(e),
            }
        })?;
        let members: Members = serde_json::from_str(&response.body).map_err(|e| {
            anyhow!(
                "zooid answered GET {path} with a body that is not {{\"members\": [...]}}: {e}: {}",
                quote::remote(&response.body, quote::REMOTE_MAX)
            )
        })?;
        Ok(members.members)
    }
}

/// A request checked and signed by [`ZooidClient::sign`], not sent yet. Its body may hold a
/// relay secret and its header a signature, so it has no `Debug` that shows them.
pub(crate) struct SignedRequest {
    method: &'static str,
    path: String,
    url: String,
    body: Option<Vec<u8>>,
    auth: String,
    signed_at: Instant,
}

impl SignedRequest {
    /// The request's method: `GET`, `POST`, `PUT` or `PATCH`.
    pub(crate) fn method(&self) -> &'static str {
        self.method
    }

    /// Signs the request again if its signature is older than [`RESIGN_AFTER`].
    fn refresh(&mut self, robot: &RobotKey) -> Result<()> {
        if self.signed_at.elapsed() > RESIGN_AFTER {
            self.auth = make_auth(robot, self.method, &self.url, self.body.as_deref())?;
            self.signed_at = Instant::now();
        }
        Ok(())
    }
}

impl fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignedRequest({} {})", self.method, self.path)
    }
}

/// How old a signature may be when its request is sent. zooid accepts events up to 60 s from
/// its clock; a request signed ahead that waited longer than this (for the rate limit, say)
/// is signed again, which leaves the rest of the window for clock skew.
const RESIGN_AFTER: Duration = Duration::from_secs(10);

/// An error for a request that got no usable answer.
fn transport(method: &'static str, path: &str, message: String) -> ZooidError {
    ZooidError::Transport {
        method,
        path: path.to_string(),
        message: quote::remote(&message, quote::REMOTE_MAX),
    }
}

/// `/relay/{id}{rest}`, when `id` is one safe path segment (`a/b` would be two).
fn relay_path(method: &'static str, id: &str, rest: &str) -> Result<String, ZooidError> {
    if !is_safe_path_segment(id) {
        return Err(ZooidError::UnsafePath {
            method,
            path: format!("/relay/{id}{rest}"),
        });
    }
    Ok(format!("/relay/{id}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_the_robot_are_told_apart_from_answers_about_a_request() {
        let robot = RobotKey::parse(&"7".repeat(64)).unwrap();
        let hex = robot.public_key().to_hex();
        let env = Env::new("http://127.0.0.1:3334", "relays.example.com", robot).unwrap();
        let client = ZooidClient::new(&env).unwrap();
        let answer = |status: u16, body: &str| ZooidError::Status {
            method: "PATCH",
            path: "/relay/a".into(),
            status,
            body: body.into(),
            retry_after: None,
        };
        let refusal = |status, body| client.robot_refusal(&answer(status, body));
        let forbidden = refusal(403, r#"{"error":"pubkey not in whitelist"}"#).unwrap();
        assert!(forbidden.starts_with(ROBOT_REFUSED), "{forbidden}");
        assert!(
            forbidden.contains(&format!("Add {hex} to it")),
            "{forbidden}"
        );
        let unsigned = refusal(401, r#"{"error":"invalid signature"}"#).unwrap();
        assert!(unsigned.contains("clock"), "{unsigned}");
        for not_the_api in ["Not Found", "<html>404</html>", "", "{}", r#"{"error":7}"#] {
            let why = refusal(404, not_the_api).expect(not_the_api);
            assert!(why.contains("API_HOST"), "{why}");
        }
        // zooid's own JSON 404 is about the relay; the rest are about the request.
        assert_eq!(refusal(404, r#"{"error":"relay not found"}"#), None);
        for status in [400, 409, 500, 503] {
            assert_eq!(refusal(status, "Not Found"), None, "{status}");
        }
        let transport = ZooidError::Transport {
            method: "GET",
            path: "/".into(),
            message: "refused".into(),
        };
        assert_eq!(client.robot_refusal(&transport), None);
    }

    /// Only answers teach the pacer what zooid's writes cost: a write that ran into the timeout
    /// (zooid down, or hung) leaves it as it was.
    #[cfg(feature = "fixture")]
    #[test]
    fn only_answers_reach_the_pacer() {
        let robot = RobotKey::parse(&"7".repeat(64)).unwrap();
        let zooid = crate::fixture::FixtureZooid::start(&[robot.public_key().to_hex()]).unwrap();
        let mut env = Env::new(&zooid.url(), "relays.example.com", robot).unwrap();
        env.zooid_timeout = Duration::from_millis(200);
        let client = ZooidClient::new(&env).unwrap();
        zooid.inject("hung", crate::fixture::Fault::Hang);
        let hung = client.request("PATCH", "/relay/hung", Some(b"{}"));
        assert!(hung.is_err_and(|e| e.timed_out()));
        assert_eq!(
            client.pacer().state().write_latency,
            None,
            "no answer, nothing learned"
        );
        let refused = client.request("PATCH", "/relay/nobody", Some(b"{}"));
        assert_eq!(refused.unwrap_err().status(), Some(404));
        assert_eq!(
            client.pacer().state().write_latency,
            None,
            "a refused write cost zooid a check, not a write"
        );
        zooid.put_relay(
            "alpha",
            serde_json::json!({"host": "alpha.relays.example.com", "schema": "alpha",
                               "secret": "1".repeat(64),
                               "info": {"name": "Alpha", "pubkey": "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"}}),
        );
        let accepted = client.request("PATCH", "/relay/alpha", Some(br#"{"inactive":true}"#));
        assert_eq!(accepted.unwrap().status, 200);
        assert!(
            client.pacer().state().write_latency.is_some(),
            "an accepted write is learned from"
        );
    }

    /// Through `send`, to the fixture zooid: what zooid receives is the header signed when
    /// the request was made while it is fresh, and a new one once it waited too long.
    #[cfg(feature = "fixture")]
    #[test]
    fn a_request_that_waited_is_signed_again_before_it_is_sent() {
        let robot = RobotKey::parse(&"7".repeat(64)).unwrap();
        let zooid = crate::fixture::FixtureZooid::start(&[robot.public_key().to_hex()]).unwrap();
        let env = Env::new(&zooid.url(), "relays.example.com", robot).unwrap();
        let client = ZooidClient::new(&env).unwrap();
        let signed = |client: &ZooidClient| {
            client
                .sign("PATCH", "/relay/alpha", Some(b"{}".to_vec()))
                .unwrap()
        };

        let fresh = signed(&client);
        let made = fresh.auth.clone();
        let _ = client.send(fresh);
        let received = &zooid.requests()[0];
        assert_eq!(received.authorization.as_deref(), Some(made.as_str()));

        let Some(long_ago) = Instant::now().checked_sub(RESIGN_AFTER + Duration::from_secs(1))
        else {
            return; // the clock started less than that ago: nothing can be that old
        };
        let mut waited = signed(&client);
        let made = waited.auth.clone();
        waited.signed_at = long_ago;
        let _ = client.send(waited);
        let received = &zooid.requests()[1];
        let sent = received.authorization.as_deref().unwrap();
        assert_ne!(sent, made, "an old signature is made again");
        assert_ne!(received.status, 401, "and zooid accepts the new one");
    }

    #[test]
    fn a_signed_request_does_not_print_its_header_or_body() {
        let robot = RobotKey::parse(&"7".repeat(64)).unwrap();
        let env = Env::new("http://127.0.0.1:9", "relays.example.com", robot).unwrap();
        let request = ZooidClient::new(&env)
            .unwrap()
            .sign(
                "POST",
                "/relay/alpha",
                Some(b"{\"secret\":\"s3cr3t\"}".to_vec()),
            )
            .unwrap();
        let printed = format!("{request:?}");
        assert_eq!(printed, "SignedRequest(POST /relay/alpha)");
    }
}
