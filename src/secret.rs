//! A string that must never be shown.
//!
//! The robot key, the S3 and LiveKit secrets and every generated relay secret travel through
//! the program as [`Secret`]. Its `Debug` and `Display` print `<redacted>`, so a secret cannot
//! reach a log line, an error message or a `{:?}` by accident; code that really needs the value
//! (building a request body) calls [`Secret::expose`], which is easy to grep for.
//!
//! Formatting is not the only way out: a zooid (or a proxy) that echoes a request quotes the
//! secrets it carried. So every secret the process holds is also remembered here, and
//! [`redact`] replaces each of them in text from outside before it is stored or logged. The
//! configured secrets are remembered for the life of the process; generated relay secrets
//! ([`Secret::generate`]) only the newest [`RECENT_GENERATED`], since an echo quotes the
//! request it answers.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

/// How many generated relay secrets [`redact`] keeps looking for.
pub const RECENT_GENERATED: usize = 1024;

/// Secrets shorter than this are not looked for: replacing every `a` in a text would
/// destroy it and hide nothing.
const MIN_REDACTED_LEN: usize = 6;

/// Every secret this process knows, for [`redact`].
#[derive(Default)]
struct Known {
    configured: HashSet<String>,
    generated: VecDeque<String>,
}

static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(Mutex::default);

/// Remembers a configured secret (robot key, S3 or LiveKit secret) for [`redact`].
pub(crate) fn remember(value: &str) {
    if value.len() < MIN_REDACTED_LEN {
        return;
    }
    let mut known = KNOWN.lock().unwrap();
    if !known.configured.contains(value) {
        known.configured.insert(value.to_string());
    }
}

/// `text` with every secret this process knows replaced by `<redacted>`.
pub fn redact(text: &str) -> String {
    let known = KNOWN.lock().unwrap();
    let mut out = text.to_string();
    for secret in known.configured.iter().chain(&known.generated) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

/// A secret value whose formatting never reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret kept in the file at `path` (a Docker or Kubernetes secret, a systemd
    /// credential): its contents without one trailing newline. Refused, naming the file and
    /// never its contents, when it is not a regular file, is empty, or can be read or written
    /// by others than its owner and group (mode beyond `0640`).
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Secret> {
        read_secret_file(path.as_ref()).map(Secret::new)
    }

    /// Wraps a configured secret value (a key from the environment, say), and remembers it
    /// for `redact` for the life of the process. Secrets made per request use
    /// [`Secret::generate`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Secret(value)
    }

    /// A fresh secret of `bytes` random bytes, hex encoded: a relay's identity for one
    /// `POST`. Remembered for `redact` among the newest `RECENT_GENERATED`.
    pub fn generate(bytes: usize) -> Self {
        let value = random_hex(bytes);
        let mut known = KNOWN.lock().unwrap();
        if known.generated.len() == RECENT_GENERATED {
            known.generated.pop_front();
        }
        known.generated.push_back(value.clone());
        Secret(value)
    }

    /// The secret itself. Only for the places that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret serializes as its value: it is how a request body carries it to zooid. Only the
/// request body serializes secrets.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

/// Fills a fresh string of `bytes` random bytes, hex encoded, from the operating system.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    let text = hex(&buf);
    buf.fill(0);
    text
}

/// How many bytes of the operating system's randomness each thread draws at once.
const RESERVE: usize = 512;

/// Fills `out` with random bytes from the operating system, served from a per-thread
/// reserve drawn [`RESERVE`] bytes at a time: one system call for a few dozen secrets and
/// signatures instead of one each. Every byte is served once and wiped from the reserve as
/// it is; a request larger than the reserve goes to the operating system directly.
pub fn fill_random(out: &mut [u8]) {
    thread_local! {
        /// The bytes drawn, and where the unused ones begin.
        static DRAWN: std::cell::RefCell<([u8; RESERVE], usize)> =
            const { std::cell::RefCell::new(([0; RESERVE], RESERVE)) };
    }
    if out.len() > RESERVE {
        getrandom::fill(out).expect("the operating system's random source failed");
        return;
    }
    DRAWN.with_borrow_mut(|(bytes, next)| {
        if RESERVE - *next < out.len() {
            getrandom::fill(bytes).expect("the operating system's random source failed");
            *next = 0;
        }
        let served = &mut bytes[*next..*next + out.len()];
        out.copy_from_slice(served);
        served.fill(0);
        *next += out.len();
    });
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// The most of a secret file's mode that is allowed: read and write for its owner, read for
/// its group.
const SECRET_FILE_MODE: u32 = 0o640;

/// Reads the secret kept in the file at `path`, checked as [`Secret::from_file`] says.
pub(crate) fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    use anyhow::{bail, Context};
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        let kind = match meta.is_dir() {
            true => "a directory",
            false => "not a regular file",
        };
        bail!("{shown} is {kind}; a secret is kept in a regular file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & !SECRET_FILE_MODE != 0 {
            bail!(
                "{shown} has mode {mode:04o}: others than its owner and its group can read or \
                 write it, or it is executable; `chmod 600 {shown}` (or 640 for its group to \
                 read it)"
            );
        }
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {shown}"))?;
    let Ok(mut text) = String::from_utf8(bytes) else {
        bail!("{shown} is not text (UTF-8)");
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.trim().is_empty() {
        bail!("{shown} is empty");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redact_replaces_configured_and_generated_secrets() {
        let configured = Secret::new("configured-secret-42");
        let generated = Secret::generate(32);
        let text = format!("echo {} and {}", configured.expose(), generated.expose());
        assert_eq!(redact(&text), "echo <redacted> and <redacted>");
        assert_eq!(redact("nothing here"), "nothing here");
    }

    #[test]
    fn random_bytes_are_served_once() {
        let mut seen = std::collections::HashSet::new();
        // Several reserves' worth, in pieces that do not divide it: each piece is new.
        for _ in 0..100 {
            let mut piece = [0u8; 24];
            fill_random(&mut piece);
            assert!(seen.insert(piece), "a piece served twice");
        }
        let mut large = vec![0u8; RESERVE + 1];
        fill_random(&mut large);
        assert!(large.iter().any(|b| *b != 0));
    }

    #[test]
    fn random_hex_is_fresh_and_sized() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_is_read_without_its_newline_and_checked_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let ok = file("ok", "s3cr3t\n", 0o600);
        assert_eq!(Secret::from_file(&ok).unwrap().expose(), "s3cr3t");
        let crlf = file("crlf", "s3cr3t\r\n", 0o640);
        assert_eq!(read_secret_file(&crlf).unwrap(), "s3cr3t");
        let two = file("two", "s3cr3t\n\n", 0o400);
        assert_eq!(
            read_secret_file(&two).unwrap(),
            "s3cr3t\n",
            "one newline only"
        );
        let open = file("open", "s3cr3t", 0o644);
        let err = format!("{:#}", read_secret_file(&open).unwrap_err());
        assert!(
            err.contains("has mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "the error quotes no secret: {err}");
        for mode in [0o660, 0o700, 0o604] {
            let path = file("m", "s3cr3t", mode);
            assert!(read_secret_file(&path).is_err(), "{mode:o}");
        }
        let empty = file("empty", "\n", 0o600);
        let err = format!("{:#}", read_secret_file(&empty).unwrap_err());
        assert!(err.ends_with("is empty"), "{err}");
        let err = format!("{:#}", read_secret_file(dir.path()).unwrap_err());
        assert!(err.contains("is a directory"), "{err}");
        let err = format!(
            "{:#}",
            read_secret_file(&dir.path().join("none")).unwrap_err()
        );
        assert!(err.contains("cannot read") && err.contains("none"), "{err}");
    }
}
