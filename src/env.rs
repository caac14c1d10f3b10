//! Configuration, read once from the environment.
//!
//! [`Env`] is built by [`Env::from_env`] (or [`Env::from_vars`] with any lookup function, which
//! is what the tests use). Every variable is checked up front: a missing or malformed required
//! setting is an error that names the variable, so the binary stops at start with one clear
//! line instead of failing on the first sync. Secrets are held as [`Secret`] or [`RobotKey`],
//! whose `Debug` never shows them.
//!
//! [`Env::make_auth`] is the seed's name for [`crate::nip98::make_auth`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nostr::types::Url;

pub use crate::nip98::RobotKey;
pub use crate::pace::Signal as PacingSignal;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::words::show_duration;

/// S3 settings for relays with blossom enabled. Each is optional here; a relay that enables
/// blossom while one is missing fails its sync with an error naming the variable.
#[derive(Debug, Clone, Default)]
pub struct BlossomS3 {
    /// The S3 endpoint URL (`BLOSSOM_S3_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The S3 region (`BLOSSOM_S3_REGION`).
    pub region: Option<String>,
    /// The S3 bucket (`BLOSSOM_S3_BUCKET`).
    pub bucket: Option<String>,
    /// The S3 access key id (`BLOSSOM_S3_ACCESS_KEY`).
    pub access_key: Option<String>,
    /// The S3 secret key (`BLOSSOM_S3_SECRET_KEY`); never printed.
    pub secret_key: Option<Secret>,
}

/// LiveKit settings for relays with livekit enabled; checked per relay like [`BlossomS3`].
#[derive(Debug, Clone, Default)]
pub struct Livekit {
    /// The LiveKit server's URL (`LIVEKIT_URL`).
    pub url: Option<String>,
    /// The LiveKit API key (`LIVEKIT_API_KEY`).
    pub api_key: Option<String>,
    /// The LiveKit API secret (`LIVEKIT_API_SECRET`); never printed.
    pub api_secret: Option<Secret>,
}

/// The name of the zooid at `ZOOID_API_URL`, for relays whose `zooid` column is empty.
pub const DEFAULT_ZOOID: &str = "default";

/// A zooid server zooid-sync syncs relays to: its name (a relay's `zooid` column names it)
/// and the base URL of its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooidAddress {
    /// `default` for `ZOOID_API_URL`, else a name from `ZOOID_INSTANCES`.
    pub name: String,
    /// The base URL of its API, without a trailing slash.
    pub url: String,
}

/// Everything zooid-sync needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct Env {
    /// Base URL of zooid's API, without a trailing slash (`http://…` or `https://…`): the
    /// default zooid, for relays whose `zooid` column is empty (or absent).
    pub zooid_api_url: String,
    /// The other zooids (`ZOOID_INSTANCES`), for relays whose `zooid` column names one. Every
    /// other setting applies to each zooid on its own.
    pub zooid_instances: Vec<ZooidAddress>,
    /// Relays are served at `<subdomain>.<relay_domain>`.
    pub relay_domain: String,
    /// Signs every request to zooid.
    pub robot: RobotKey,
    /// S3 settings for relays with blossom enabled.
    pub blossom: BlossomS3,
    /// LiveKit settings for relays with livekit enabled.
    pub livekit: Livekit,
    /// Threads making requests to zooid.
    pub sync_workers: usize,
    /// When failed syncs are retried, and when they are given up.
    pub retry: RetryPolicy,
    /// Per-request timeout (connect, send and receive together).
    pub zooid_timeout: Duration,
    /// A PEM bundle of extra trusted CA certificates for https to zooid.
    pub zooid_ca_file: Option<PathBuf>,
    /// Allow `http://` to a zooid that is not on this machine (`ZOOID_ALLOW_PLAIN_HTTP`).
    /// Every `POST` carries a relay secret and the S3 and LiveKit secrets, so cleartext is
    /// refused unless this is set.
    pub allow_plain_http: bool,
    /// The most of zooid's time a catch-up's writes may take (`SYNC_ZOOID_SHARE`, 0 to 1;
    /// 0: no pacing), see `src/pace/mod.rs`.
    pub sync_zooid_share: f64,
    /// Where the pacer learns what a write costs zooid (`SYNC_PACING`): from zooid's relay
    /// users too (the default), or from zooid's answers alone.
    pub sync_pacing: PacingSignal,
    /// The most a catch-up may add to what a relay user waits for zooid (median;
    /// `SYNC_USER_DELAY`), when the pacer asks relay users.
    pub sync_user_delay: Duration,
    /// The ceiling on requests to zooid per second, all of them together (`SYNC_MAX_RATE`);
    /// `0` for none. Bursts of up to one second's worth pass at once.
    pub sync_max_rate: f64,
    /// The proxy to reach zooid through (`ZOOID_PROXY`, e.g. `http://proxy:3128` or
    /// `socks5://proxy:1080`). `HTTP_PROXY` and its kin are not read: a proxy sees every
    /// request, so it is used only when named here.
    pub zooid_proxy: Option<String>,
    /// How long one pass of the existence audit takes (`SYNC_AUDIT_INTERVAL`): every synced
    /// relay is asked about once per interval, the requests spread evenly over it. Zero turns
    /// the audit off. See `src/infra/audit.rs`.
    pub sync_audit_interval: Duration,
}

/// The secrets, by the variable that names each.
#[cfg(feature = "cli")]
pub(crate) const SECRETS: [&str; 3] = [
    "ROBOT_SECRET",
    "BLOSSOM_S3_SECRET_KEY",
    "LIVEKIT_API_SECRET",
];

/// Where a secret was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// The variable itself, in the environment.
    Variable(&'static str),
    /// `<NAME>_FILE`, naming a file.
    File(String, PathBuf),
    /// A systemd credential in `$CREDENTIALS_DIRECTORY`, named like the variable in lower case.
    Credential(String, PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Variable(name) => write!(f, "the variable {name}"),
            SecretSource::File(var, path) => write!(f, "{var} ({})", path.display()),
            SecretSource::Credential(name, path) => {
                write!(f, "credential {name} ({})", path.display())
            }
        }
    }
}

/// The ways to give secret `name`, for an error that says none was.
fn not_given(name: &str) -> String {
    format!(
        "{name} is not set (give it as {name}, as {name}_FILE naming a file that holds it, or as \
         the systemd credential {})",
        name.to_lowercase()
    )
}

/// Secret `name` and where it was given, read through `var`: the variable itself,
/// `<NAME>_FILE` naming a file, or (when `CREDENTIALS_DIRECTORY` is set) the systemd
/// credential named like the variable in lower case. `None` when none gives it; an error, with
/// no value in it, when two do or a file is refused ([`Secret::from_file`]). An empty
/// credential is none for a secret that is not `required` (the unit's `SetCredential=` default
/// for a file an operator has not made).
pub(crate) fn find_secret(
    name: &'static str,
    var: &impl Fn(&str) -> Option<String>,
    required: bool,
) -> Result<Option<(String, SecretSource)>> {
    let given = |n: &str| var(n).filter(|v| !v.trim().is_empty());
    let mut sources = Vec::new();
    if given(name).is_some() {
        sources.push(SecretSource::Variable(name));
    }
    let file_var = format!("{name}_FILE");
    if let Some(path) = given(&file_var) {
        sources.push(SecretSource::File(file_var, PathBuf::from(path)));
    }
    if let Some(dir) = given("CREDENTIALS_DIRECTORY") {
        let credential = name.to_lowercase();
        let path = Path::new(&dir).join(&credential);
        let empty = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0);
        if path.symlink_metadata().is_ok() && (required || !empty) {
            sources.push(SecretSource::Credential(credential, path));
        }
    }
    match sources.as_slice() {
        [] => Ok(None),
        [SecretSource::Variable(_)] => Ok(given(name).map(|v| (v, sources[0].clone()))),
        [SecretSource::File(var, path) | SecretSource::Credential(var, path)] => {
            let value = crate::secret::read_secret_file(path).with_context(|| var.clone())?;
            Ok(Some((value, sources[0].clone())))
        }
        [first, second, ..] => {
            bail!("{name} is given twice, by {first} and by {second}: keep one (nothing was read)")
        }
    }
}

/// Whether the process runs under systemd (`INVOCATION_ID` set, as `var` reads it), where a
/// secret belongs in a credential: in the environment every process of the user reads it in
/// `/proc/<pid>/environ`, and `systemctl show` prints it.
#[cfg(feature = "cli")]
pub(crate) fn under_systemd(var: &impl Fn(&str) -> Option<String>) -> bool {
    var("INVOCATION_ID").is_some_and(|v| !v.is_empty())
}

/// What to do about secret `name` given in the environment under systemd: what `check` warns
/// and the daemon logs at start.
#[cfg(feature = "cli")]
pub(crate) fn move_to_credential(name: &str) -> String {
    format!(
        "{name} comes from the environment under systemd: move it to the credential file the \
         unit loads (/etc/zooid-sync/{}, mode 600) and out of /etc/zooid-sync/env",
        name.to_lowercase()
    )
}

/// Where each secret that is given comes from, read through `var` as [`Env::from_vars`]
/// reads them; what `zooid-sync check` reports.
#[cfg(feature = "cli")]
pub(crate) fn secret_sources(
    var: &impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, Result<Option<SecretSource>>)> {
    SECRETS
        .iter()
        .map(|name| {
            let required = *name == "ROBOT_SECRET";
            let found = find_secret(name, var, required).map(|f| f.map(|(_, source)| source));
            (*name, found)
        })
        .collect()
}

impl Env {
    /// The robot's key alone, from wherever the environment gives it (`zooid-sync pubkey`).
    #[doc(hidden)]
    pub fn robot_from_env() -> Result<RobotKey> {
        let var = |name: &str| std::env::var(name).ok();
        let (robot, _) = find_secret("ROBOT_SECRET", &var, true)?
            .ok_or_else(|| anyhow!("{}", not_given("ROBOT_SECRET")))?;
        RobotKey::parse(&robot).context("ROBOT_SECRET")
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Env> {
        Env::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `var`, which answers a variable's value or `None`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let required = |name: &str| get(name).ok_or_else(|| anyhow!("{name} is not set"));

        let zooid_api_url = parse_api_url(&required("ZOOID_API_URL")?)
            .context("ZOOID_API_URL is not a usable URL")?;
        let relay_domain = parse_relay_domain(&required("RELAY_DOMAIN")?)?;
        let (robot, _) = find_secret("ROBOT_SECRET", &var, true)?
            .ok_or_else(|| anyhow!("{}", not_given("ROBOT_SECRET")))?;
        let robot = RobotKey::parse(&robot).context("ROBOT_SECRET")?;

        let sync_workers = whole_number(get, "SYNC_WORKERS", 4)?;
        let retry = retry_policy_from_vars(&var)?;
        let zooid_timeout = duration(get, "ZOOID_TIMEOUT", Duration::from_secs(5))?;

        let env = Env {
            zooid_api_url,
            zooid_instances: match get("ZOOID_INSTANCES") {
                Some(value) => parse_instances(&value)?,
                None => Vec::new(),
            },
            relay_domain,
            robot,
            blossom: BlossomS3 {
                endpoint: get("BLOSSOM_S3_ENDPOINT"),
                region: get("BLOSSOM_S3_REGION"),
                bucket: get("BLOSSOM_S3_BUCKET"),
                access_key: get("BLOSSOM_S3_ACCESS_KEY"),
                secret_key: find_secret("BLOSSOM_S3_SECRET_KEY", &var, false)?
                    .map(|(value, _)| Secret::new(value)),
            },
            livekit: Livekit {
                url: get("LIVEKIT_URL"),
                api_key: get("LIVEKIT_API_KEY"),
                api_secret: find_secret("LIVEKIT_API_SECRET", &var, false)?
                    .map(|(value, _)| Secret::new(value)),
            },
            sync_workers: sync_workers as usize,
            retry,
            zooid_timeout,
            zooid_ca_file: get("ZOOID_CA_FILE").map(PathBuf::from),
            allow_plain_http: flag(get, "ZOOID_ALLOW_PLAIN_HTTP")?,
            sync_max_rate: rate(get, "SYNC_MAX_RATE", DEFAULT_MAX_RATE)?,
            sync_zooid_share: share(get, "SYNC_ZOOID_SHARE", DEFAULT_ZOOID_SHARE)?,
            sync_pacing: pacing(get)?,
            sync_user_delay: duration(get, "SYNC_USER_DELAY", DEFAULT_USER_DELAY)?,
            zooid_proxy: get("ZOOID_PROXY"),
            sync_audit_interval: match get("SYNC_AUDIT_INTERVAL") {
                Some(v) if v.trim() == "0" => Duration::ZERO,
                _ => duration(get, "SYNC_AUDIT_INTERVAL", DEFAULT_AUDIT_INTERVAL)?,
            },
        };
        env.check_transport()?;
        env.check_limits()?;
        Ok(env)
    }

    /// Refuses numbers that would busy-loop, overflow a clock or panic a thread: the same
    /// ranges [`Env::from_env`] enforces, for hosts that build an `Env` in code.
    /// [`ZooidClient::new`](crate::ZooidClient::new) checks this too.
    pub fn check_limits(&self) -> Result<()> {
        let workers = u32::try_from(self.sync_workers).unwrap_or(u32::MAX);
        if !(1..=MAX_WORKERS).contains(&workers) {
            bail!("SYNC_WORKERS is out of range: {workers}; it must be 1 to {MAX_WORKERS}");
        }
        within(
            "ZOOID_TIMEOUT",
            self.zooid_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        check_retry(&self.retry)?;
        if !self.sync_audit_interval.is_zero() {
            within(
                "SYNC_AUDIT_INTERVAL",
                self.sync_audit_interval,
                Duration::from_secs(1),
                Duration::from_secs(365 * 86_400),
            )?;
        }
        within(
            "SYNC_USER_DELAY",
            self.sync_user_delay,
            Duration::from_millis(1),
            Duration::from_secs(10),
        )?;
        let share = self.sync_zooid_share;
        if !(share == 0.0 || (0.01..=1.0).contains(&share)) {
            bail!("SYNC_ZOOID_SHARE is out of range: {share}; it must be 0 or 0.01 to 1");
        }
        let rate = self.sync_max_rate;
        if !(rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate)) {
            bail!(
                "SYNC_MAX_RATE is out of range: {rate}; it must be 0 (no ceiling) or \
                 {MIN_RATE} to {MAX_RATE} requests a second"
            );
        }
        Ok(())
    }

    /// Refuses settings that would send secrets where they should not go: `http://` to a
    /// zooid that is not on this machine (unless [`allow_plain_http`](Self::allow_plain_http)),
    /// and a CA bundle with `http://`, which would be silently ignored.
    /// [`ZooidClient::new`](crate::ZooidClient::new) checks this too, so hosts that build
    /// an `Env` in code are held to the same rule.
    pub fn check_transport(&self) -> Result<()> {
        for zooid in self.zooids() {
            let setting = match zooid.name == DEFAULT_ZOOID {
                true => "ZOOID_API_URL".to_string(),
                false => format!("ZOOID_INSTANCES ({})", zooid.name),
            };
            self.check_url(&setting, &zooid.url)?;
        }
        Ok(())
    }

    /// [`check_transport`](Self::check_transport) for one zooid's URL, given by `setting`.
    fn check_url(&self, setting: &str, url: &str) -> Result<()> {
        let url = Url::parse(url).map_err(|e| anyhow!("{setting} is not a usable URL: {e}"))?;
        if url.scheme() != "http" {
            return Ok(());
        }
        if self.zooid_ca_file.is_some() {
            bail!(
                "ZOOID_CA_FILE is set but {setting} is http://, where no certificate is \
                 checked; use https:// or unset ZOOID_CA_FILE"
            );
        }
        if !is_loopback(&url) && !self.allow_plain_http {
            bail!(
                "{setting} is http:// to {}, which is not this machine: every request \
                 would carry relay, S3 and LiveKit secrets in cleartext. Use https://, or set \
                 ZOOID_ALLOW_PLAIN_HTTP=1 if the network to zooid is private",
                url.host_str().unwrap_or("?")
            );
        }
        Ok(())
    }

    /// Every zooid: the default one (`ZOOID_API_URL`, named `default`) first, then those of
    /// `ZOOID_INSTANCES` in their order.
    pub fn zooids(&self) -> Vec<ZooidAddress> {
        std::iter::once(ZooidAddress {
            name: DEFAULT_ZOOID.to_string(),
            url: self.zooid_api_url.clone(),
        })
        .chain(self.zooid_instances.iter().cloned())
        .collect()
    }

    /// These settings for the zooid named `name` (`""` or `default`: `ZOOID_API_URL`):
    /// `zooid_api_url` is its URL. `None` for a name no setting gives.
    pub fn for_zooid(&self, name: &str) -> Option<Env> {
        let name = zooid_named_by(name);
        let zooid = self.zooids().into_iter().find(|z| z.name == name)?;
        Some(Env {
            zooid_api_url: zooid.url,
            ..self.clone()
        })
    }

    /// A minimal configuration for the given zooid and robot; everything else at its default.
    /// Hosts that configure zooid-sync in code start here and set what they need.
    pub fn new(zooid_api_url: &str, relay_domain: &str, robot: RobotKey) -> Result<Env> {
        Ok(Env {
            zooid_api_url: parse_api_url(zooid_api_url)?,
            zooid_instances: Vec::new(),
            relay_domain: parse_relay_domain(relay_domain)?,
            robot,
            blossom: BlossomS3::default(),
            livekit: Livekit::default(),
            sync_workers: 4,
            retry: RetryPolicy::default(),
            zooid_timeout: Duration::from_secs(5),
            zooid_ca_file: None,
            allow_plain_http: false,
            sync_max_rate: DEFAULT_MAX_RATE,
            sync_zooid_share: DEFAULT_ZOOID_SHARE,
            sync_pacing: PacingSignal::Users,
            sync_user_delay: DEFAULT_USER_DELAY,
            zooid_proxy: None,
            sync_audit_interval: DEFAULT_AUDIT_INTERVAL,
        })
    }

    /// The `Authorization` header value for a request: `Nostr <base64 of a signed event>`.
    ///
    /// The event is kind 27235 with tags `u` (the absolute `url`), `method`, and `payload` (hex
    /// SHA-256 of `body`) whenever there is a body; `created_at` is now, so every request gets
    /// a fresh one.
    #[doc(hidden)]
    pub fn make_auth(&self, method: &str, url: &str, body: Option<&[u8]>) -> Result<String> {
        crate::nip98::make_auth(&self.robot, method, url, body)
    }
}

/// The backoff settings alone (`SYNC_RETRY_BASE`, `SYNC_RETRY_CAP`,
/// `SYNC_RETRY_MAX_ATTEMPTS`), for commands that need no zooid.
pub fn retry_policy_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<RetryPolicy> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let defaults = RetryPolicy::default();
    let retry = RetryPolicy {
        base: duration(get, "SYNC_RETRY_BASE", defaults.base)?,
        cap: duration(get, "SYNC_RETRY_CAP", defaults.cap)?,
        max_attempts: whole_number(get, "SYNC_RETRY_MAX_ATTEMPTS", defaults.max_attempts)?,
        jitter: defaults.jitter,
    };
    check_retry(&retry)?;
    Ok(retry)
}

/// Refuses a backoff that would busy-loop or overflow a clock.
fn check_retry(retry: &RetryPolicy) -> Result<()> {
    within(
        "SYNC_RETRY_BASE",
        retry.base,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    )?;
    within(
        "SYNC_RETRY_CAP",
        retry.cap,
        Duration::from_millis(1),
        Duration::from_secs(24 * 3600),
    )?;
    if retry.cap < retry.base {
        bail!(
            "SYNC_RETRY_CAP ({}) is shorter than SYNC_RETRY_BASE ({}); the cap must be at \
             least the base",
            show_duration(retry.cap),
            show_duration(retry.base)
        );
    }
    if retry.max_attempts > MAX_ATTEMPTS {
        bail!(
            "SYNC_RETRY_MAX_ATTEMPTS is out of range: {}; it must be 0 to {MAX_ATTEMPTS}",
            retry.max_attempts
        );
    }
    Ok(())
}

/// The most worker threads: each holds a connection to zooid, and zooid is one process.
const MAX_WORKERS: u32 = 64;
/// The most retries before giving up: past ~20 the capped delay repeats anyway.
const MAX_ATTEMPTS: u32 = 100;
/// The range of a non-zero `SYNC_MAX_RATE`: one request every 100 s to 100 000 a second.
const MIN_RATE: f64 = 0.01;
const MAX_RATE: f64 = 100_000.0;

/// Refuses a duration outside `min..=max`, naming the setting: a zero or enormous one would
/// busy-loop or overflow a clock.
pub fn within(name: &str, value: Duration, min: Duration, max: Duration) -> Result<()> {
    if value < min || value > max {
        bail!(
            "{name} is out of range: {}; it must be between {} and {}",
            show_duration(value),
            show_duration(min),
            show_duration(max)
        );
    }
    Ok(())
}

fn duration(
    get: impl Fn(&str) -> Option<String>,
    name: &str,
    default: Duration,
) -> Result<Duration> {
    match get(name) {
        Some(v) => parse_duration(&v).with_context(|| format!("{name} is malformed")),
        None => Ok(default),
    }
}

/// The database the binary opens: `DATABASE_PATH`, or `zooid-sync.db`. Not part of [`Env`]:
/// a host opens its [`crate::Store`] itself, and the worker (its lease included) follows the
/// store's path, the one source of truth.
#[cfg(feature = "cli")]
pub fn database_path(var: impl Fn(&str) -> Option<String>) -> PathBuf {
    var("DATABASE_PATH")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "zooid-sync.db".into())
        .into()
}

/// `SYNC_AUDIT_INTERVAL`'s default: each synced relay is asked about once a day. At 1 000
/// relays that is a read every 86 s (~1 ms of zooid's time each); a relay zooid lost is back
/// within a day without anyone asking. See README.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(86_400);

/// `SYNC_ZOOID_SHARE`'s default: a catch-up's writes take at most a quarter of zooid's
/// time, so zooid spends three quarters on its users. See README for why.
pub const DEFAULT_ZOOID_SHARE: f64 = 0.25;

/// A share of zooid's time: 0 (no pacing) or 0.01 to 1.
fn share(get: impl Fn(&str) -> Option<String>, name: &str, default: f64) -> Result<f64> {
    match get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s == 0.0 || (0.01..=1.0).contains(&s) => Ok(s),
            _ => bail!(
                "{name} is malformed: expected a share of zooid's time, 0.01 to 1 (0 for no \
                 pacing), got {v:?}"
            ),
        },
    }
}

/// `SYNC_USER_DELAY`'s default: a catch-up may add a millisecond to what a relay user waits
/// for zooid (median). A millisecond is nothing a person notices beside the tens of
/// milliseconds a relay's user is away over the Internet, three times what the real zooid
/// takes to answer idle (0.3 ms), and above the jitter of a request on loopback (~0.2 ms), so
/// noise alone does not slow a catch-up.
pub const DEFAULT_USER_DELAY: Duration = Duration::from_millis(1);

/// The zooid a relay's `zooid` column names: [`DEFAULT_ZOOID`] for `''`, else the column.
pub fn zooid_named_by(column: &str) -> &str {
    match column {
        "" => DEFAULT_ZOOID,
        name => name,
    }
}

/// Whether `name` can name a zooid: 1 to 32 of `a-z`, `0-9` and `-`.
pub fn is_zooid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `ZOOID_INSTANCES`: `name=url` pairs separated by commas. Names are 1 to 32 of `a-z`,
/// `0-9` and `-`, each once, and not `default` (the name of `ZOOID_API_URL`).
fn parse_instances(value: &str) -> Result<Vec<ZooidAddress>> {
    let malformed = |entry: usize, why: String| {
        anyhow!(
            "ZOOID_INSTANCES is malformed: entry {entry}: {why}; expected name=url pairs \
             separated by commas, like eu=https://zooid-eu.example.com,us=https://zooid-us.example.com"
        )
    };
    let mut zooids: Vec<ZooidAddress> = Vec::new();
    for (k, entry) in value.split(',').map(str::trim).enumerate() {
        let n = k + 1;
        let Some((name, url)) = entry.split_once('=') else {
            return Err(malformed(n, format!("{entry:?} has no '='")));
        };
        let name = name.trim();
        if !is_zooid_name(name) {
            return Err(malformed(
                n,
                format!("the name {name:?} must be 1 to 32 of a-z, 0-9 and -"),
            ));
        }
        if name == DEFAULT_ZOOID {
            return Err(malformed(
                n,
                format!("{DEFAULT_ZOOID:?} is ZOOID_API_URL's name; give this zooid another"),
            ));
        }
        if zooids.iter().any(|z| z.name == name) {
            return Err(malformed(n, format!("the name {name:?} is given twice")));
        }
        let url = parse_api_url(url.trim()).map_err(|e| malformed(n, format!("{name}: {e}")))?;
        zooids.push(ZooidAddress {
            name: name.to_string(),
            url,
        });
    }
    Ok(zooids)
}

/// `SYNC_PACING`: `users` (the default) or `answers`.
fn pacing(get: impl Fn(&str) -> Option<String>) -> Result<PacingSignal> {
    match get("SYNC_PACING")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("users") => Ok(PacingSignal::Users),
        Some("answers") => Ok(PacingSignal::Answers),
        Some(other) => bail!(
            "SYNC_PACING is malformed: expected users (learn from zooid's relay users and its \
             answers) or answers (from zooid's answers alone), got {other:?}"
        ),
    }
}

/// `SYNC_MAX_RATE`'s default: requests per second to zooid. See README for why.
pub const DEFAULT_MAX_RATE: f64 = 100.0;

/// A rate in requests per second: a number, at least 0.
fn rate(get: impl Fn(&str) -> Option<String>, name: &str, default: f64) -> Result<f64> {
    match get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(r) if r == 0.0 || (MIN_RATE..=MAX_RATE).contains(&r) => Ok(r),
            _ => bail!(
                "{name} is malformed: expected requests per second, 0 (no ceiling) or \
                 {MIN_RATE} to {MAX_RATE}, got {v:?}"
            ),
        },
    }
}

/// A yes/no setting: `1`, `true` or `yes` for yes; `0`, `false`, `no` or unset for no.
fn flag(get: impl Fn(&str) -> Option<String>, name: &str) -> Result<bool> {
    match get(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(other) => bail!("{name} is malformed: expected 1 or 0, got {other:?}"),
    }
}

/// Whether the URL's host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(nostr::types::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(nostr::types::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(nostr::types::url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn whole_number(get: impl Fn(&str) -> Option<String>, name: &str, default: u32) -> Result<u32> {
    match get(name) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name} is malformed: expected a whole number, got {v:?}")),
        None => Ok(default),
    }
}

fn parse_api_url(value: &str) -> Result<String> {
    let url = Url::parse(value.trim()).map_err(|e| anyhow!("{e} in {value:?}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!("{value:?} must start with http:// or https://");
    }
    if url.host_str().is_none() {
        bail!("{value:?} has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("{value:?} must not carry a query or fragment");
    }
    // Url normalises (lower-case host, default port dropped), which keeps the NIP-98 `u` tag
    // equal to what zooid reconstructs from the Host header.
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn parse_relay_domain(value: &str) -> Result<String> {
    let domain = value.trim().trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if !valid {
        bail!(
            "RELAY_DOMAIN is malformed: expected a domain like relays.example.com, got {value:?}"
        );
    }
    Ok(domain.to_ascii_lowercase())
}

/// Parses a duration written as a number and a unit: `250ms`, `30s`, `15m`, `1h` or `90d`.
pub fn parse_duration(value: &str) -> Result<Duration> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| anyhow!("{value:?} has no unit; write it like 250ms, 30s, 15m or 1h"))?;
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow!("{value:?} does not start with a whole number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => bail!("{value:?} has an unknown unit {unit:?}; use ms, s, m, h or d"),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_at_their_edges() {
        let ok = |tune: &dyn Fn(&mut Env)| {
            let mut env = Env::from_vars(vars(&base())).unwrap();
            tune(&mut env);
            env.check_limits().map_err(|e| format!("{e:#}"))
        };
        let ms = Duration::from_millis;
        assert!(ok(&|e| e.sync_workers = 64).is_ok());
        assert!(ok(&|e| e.sync_workers = 65)
            .unwrap_err()
            .contains("SYNC_WORKERS"));
        assert!(ok(&|e| e.sync_workers = 0).is_err());
        assert!(ok(&|e| e.zooid_timeout = ms(100)).is_ok());
        assert!(ok(&|e| e.zooid_timeout = ms(99))
            .unwrap_err()
            .contains("ZOOID_TIMEOUT"));
        assert!(ok(&|e| e.zooid_timeout = ms(600_000)).is_ok());
        assert!(ok(&|e| e.zooid_timeout = ms(600_001)).is_err());
        assert!(ok(&|e| e.retry.base = ms(1)).is_ok());
        assert!(ok(&|e| e.retry.cap = Duration::from_secs(24 * 3600)).is_ok());
        let over = ok(&|e| e.retry.cap = Duration::from_secs(24 * 3600) + ms(1)).unwrap_err();
        assert!(over.contains("SYNC_RETRY_CAP is out of range"), "{over}");
        assert!(ok(&|e| e.retry.cap = e.retry.base).is_ok(), "cap = base");
        let short = ok(&|e| e.retry.cap = e.retry.base - ms(1)).unwrap_err();
        assert!(short.contains("shorter than SYNC_RETRY_BASE"), "{short}");
        assert!(ok(&|e| e.retry.max_attempts = 100).is_ok());
        assert!(ok(&|e| e.retry.max_attempts = 101).is_err());
        for rate in [0.0, 0.01, 100_000.0] {
            assert!(ok(&|e| e.sync_max_rate = rate).is_ok(), "{rate}");
        }
        for rate in [0.009, 100_001.0, f64::NAN, -1.0] {
            let e = ok(&|e| e.sync_max_rate = rate).unwrap_err();
            assert!(e.contains("SYNC_MAX_RATE"), "{rate}: {e}");
        }
        for share in [0.0, 0.01, 1.0] {
            assert!(ok(&|e| e.sync_zooid_share = share).is_ok(), "{share}");
        }
        for share in [0.009, 1.01] {
            assert!(ok(&|e| e.sync_zooid_share = share).is_err(), "{share}");
        }
    }

    #[test]
    fn rates_in_range_are_read() {
        for (value, read) in [
            ("0", 0.0),
            ("0.01", 0.01),
            ("100000", 100_000.0),
            (" 5 ", 5.0),
        ] {
            let mut pairs = base();
            pairs.push(("SYNC_MAX_RATE", value));
            assert_eq!(Env::from_vars(vars(&pairs)).unwrap().sync_max_rate, read);
        }
    }
    use std::collections::HashMap;

    const KEY: &str = "5c0c523f52a5b6fad39ed2403092df8cebc36318b39383bca6c00808626fab3a";

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn zooid_instances_are_name_url_pairs_and_each_zooid_gets_every_other_setting() {
        let with = |value: &str| {
            let mut pairs = base();
            pairs.push(("ZOOID_INSTANCES", value));
            pairs.push(("ZOOID_ALLOW_PLAIN_HTTP", "1"));
            Env::from_vars(vars(&pairs))
        };
        let env = with(" eu=http://10.0.0.2:3334/ , us-2=https://zooid-us.example.com").unwrap();
        let names: Vec<_> = env.zooids().into_iter().map(|z| (z.name, z.url)).collect();
        assert_eq!(
            names,
            [
                ("default".to_string(), "http://127.0.0.1:3334".to_string()),
                ("eu".to_string(), "http://10.0.0.2:3334".to_string()),
                (
                    "us-2".to_string(),
                    "https://zooid-us.example.com".to_string()
                ),
            ]
        );
        let eu = env.for_zooid("eu").unwrap();
        assert_eq!(eu.zooid_api_url, "http://10.0.0.2:3334");
        assert_eq!(eu.zooid_timeout, env.zooid_timeout);
        assert_eq!(env.for_zooid("").unwrap().zooid_api_url, env.zooid_api_url);
        assert_eq!(
            env.for_zooid("default").unwrap().zooid_api_url,
            env.zooid_api_url
        );
        assert!(env.for_zooid("mars").is_none());
        let long = format!("{}=https://a.example.com", "a".repeat(33));
        for (bad, says) in [
            ("eu", "has no '='"),
            ("EU=https://a.example.com", "must be 1 to 32 of a-z"),
            (&long, "must be 1 to 32 of a-z"),
            ("=https://a.example.com", "must be 1 to 32 of a-z"),
            ("default=https://a.example.com", "ZOOID_API_URL's name"),
            (
                "eu=https://a.example.com,eu=https://b.example.com",
                "given twice",
            ),
            ("eu=ftp://a.example.com", "eu:"),
            ("eu=https://a.example.com,", "entry 2"),
        ] {
            let err = format!("{:#}", with(bad).unwrap_err());
            assert!(
                err.starts_with("ZOOID_INSTANCES is malformed"),
                "{bad}: {err}"
            );
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(zooid_named_by(""), "default");
        assert_eq!(zooid_named_by("eu"), "eu");
        assert!(is_zooid_name(&"a".repeat(32)) && is_zooid_name("0-9"));
        assert!(!is_zooid_name("") && !is_zooid_name("a_b") && !is_zooid_name("a.b"));
        // Plain http to another machine is refused for every zooid, naming it.
        let mut pairs = base();
        pairs.push(("ZOOID_INSTANCES", "eu=http://10.0.0.2:3334"));
        let err = format!("{:#}", Env::from_vars(vars(&pairs)).unwrap_err());
        assert!(err.contains("ZOOID_INSTANCES (eu) is http://"), "{err}");
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("ZOOID_API_URL", "http://127.0.0.1:3334/"),
            ("RELAY_DOMAIN", "relays.example.com"),
            ("ROBOT_SECRET", KEY),
        ]
    }

    #[test]
    fn defaults_apply_when_only_required_are_set() {
        let env = Env::from_vars(vars(&base())).unwrap();
        assert_eq!(env.zooid_api_url, "http://127.0.0.1:3334");
        assert_eq!(env.sync_workers, 4);
        assert_eq!(env.retry.base, Duration::from_secs(30));
        assert_eq!(env.retry.cap, Duration::from_secs(900));
        assert_eq!(env.retry.max_attempts, 6);
        assert_eq!(env.zooid_timeout, Duration::from_secs(5));
    }

    #[test]
    #[cfg(feature = "cli")]
    fn the_binary_reads_its_database_path_beside_env() {
        assert_eq!(database_path(vars(&base())), PathBuf::from("zooid-sync.db"));
        assert_eq!(
            database_path(|n: &str| (n == "DATABASE_PATH").then(|| "/srv/p.db".to_string())),
            PathBuf::from("/srv/p.db")
        );
    }

    #[test]
    fn each_missing_required_variable_is_named() {
        for missing in ["ZOOID_API_URL", "RELAY_DOMAIN", "ROBOT_SECRET"] {
            let pairs: Vec<_> = base().into_iter().filter(|(k, _)| *k != missing).collect();
            let err = Env::from_vars(vars(&pairs)).unwrap_err();
            assert!(format!("{err:#}").contains(missing), "{err:#}");
        }
    }

    #[test]
    fn malformed_values_are_named_and_secrets_not_echoed() {
        let cases = [
            ("ZOOID_API_URL", "ftp://zooid"),
            ("ZOOID_API_URL", "not a url"),
            ("RELAY_DOMAIN", "https://x/y"),
            ("ROBOT_SECRET", "deadbeef-not-a-key"),
            ("SYNC_WORKERS", "four"),
            ("SYNC_WORKERS", "0"),
            ("SYNC_RETRY_BASE", "30"),
            ("SYNC_RETRY_CAP", "10parsecs"),
            ("SYNC_RETRY_MAX_ATTEMPTS", "-1"),
            ("ZOOID_TIMEOUT", "0s"),
            // Values that would busy-loop, overflow a clock or panic a worker.
            ("SYNC_WORKERS", "100000"),
            ("SYNC_RETRY_BASE", "0ms"),
            ("SYNC_RETRY_CAP", "99999999999h"),
            ("SYNC_RETRY_MAX_ATTEMPTS", "4000000000"),
            ("ZOOID_TIMEOUT", "1000000h"),
            ("SYNC_MAX_RATE", "1e-300"),
            ("SYNC_MAX_RATE", "1e300"),
            ("SYNC_MAX_RATE", "NaN"),
            ("SYNC_MAX_RATE", "-1"),
        ];
        for (name, value) in cases {
            let mut pairs = base();
            pairs.retain(|(k, _)| *k != name);
            pairs.push((name, value));
            let err = format!("{:#}", Env::from_vars(vars(&pairs)).unwrap_err());
            assert!(err.contains(name), "{name}={value}: {err}");
            if name == "ROBOT_SECRET" {
                assert!(!err.contains(value), "the secret was echoed: {err}");
            }
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut pairs = base();
        pairs.push(("BLOSSOM_S3_SECRET_KEY", "s3-very-secret"));
        pairs.push(("LIVEKIT_API_SECRET", "lk-very-secret"));
        let env = Env::from_vars(vars(&pairs)).unwrap();
        let shown = format!("{env:?} {env:#?}");
        for secret in [KEY, "s3-very-secret", "lk-very-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let keys = nostr::key::Keys::parse(KEY).unwrap();
        let nsec = nostr::nips::nip19::ToBech32::to_bech32(keys.secret_key()).unwrap();
        assert!(!shown.contains(&nsec));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration(" 1h ").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5 s").is_err());
    }
}
