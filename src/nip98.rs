//! NIP-98: the robot's key and the `Authorization` header it signs for every request.
//!
//! zooid authenticates each request with a signed Nostr event of kind 27235 in
//! `Authorization: Nostr <base64>` (`docs/zooid-api.md`, "Authentication"). [`make_auth`]
//! builds one: a fresh event bound to the URL (`u`), the method, and, when there is a body,
//! its SHA-256 (`payload`), signed by the [`RobotKey`]. zooid's pubkey whitelist must hold the
//! robot's public key.

use std::fmt;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bitcoin_hashes::sha256;
use nostr::key::{Keys, PublicKey};
use nostr::types::Url;
use secp256k1::{Secp256k1, SignOnly};

use crate::secret::{hex, Secret};

/// The robot's Nostr key pair. `Debug` shows only the public key.
#[derive(Clone)]
pub struct RobotKey(Arc<Robot>);

struct Robot {
    keys: Keys,
    /// The public key as hex, as every signed event carries it.
    pubkey_hex: String,
    secp: Secp256k1<SignOnly>,
}

impl RobotKey {
    /// Parses a secret key given as 64 hex characters or as `nsec1…`.
    /// The error never repeats the input.
    pub fn parse(secret: &str) -> Result<Self> {
        let keys = Keys::parse(secret.trim()).map_err(|_| {
            anyhow!("not a valid Nostr secret key (expected 64 hex characters or nsec1...)")
        })?;
        // Every spelling of the key, so that none of them survives in text quoted from outside.
        crate::secret::remember(secret.trim());
        crate::secret::remember(&keys.secret_key().to_secret_hex());
        let Ok(nsec) = nostr::nips::nip19::ToBech32::to_bech32(keys.secret_key());
        crate::secret::remember(&nsec);
        Ok(RobotKey(Arc::new(Robot {
            pubkey_hex: keys.public_key().to_hex(),
            keys,
            secp: Secp256k1::signing_only(),
        })))
    }

    /// Reads the secret key kept in the file at `path` (as [`Secret::from_file`] reads a
    /// secret: checked first, one trailing newline ignored) and parses it. Errors name the
    /// file, never the key.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let secret = crate::secret::read_secret_file(path)?;
        RobotKey::parse(&secret).with_context(|| path.display().to_string())
    }

    /// The robot's public key; zooid's `API_WHITELIST` must contain it.
    /// The public key as zooid's `API_WHITELIST` lists it (hex) and as Nostr clients show it
    /// (`npub1…`).
    pub fn public_key_names(&self) -> (String, String) {
        let key = self.public_key();
        let npub = nostr::nips::nip19::ToBech32::to_bech32(&key).unwrap_or_default();
        (key.to_hex(), npub)
    }

    pub fn public_key(&self) -> PublicKey {
        self.0.keys.public_key()
    }

    /// The secret key as hex, wrapped so that it does not print; for handing the key to
    /// another process of zooid-sync.
    pub fn to_secret(&self) -> Secret {
        Secret::new(self.0.keys.secret_key().to_secret_hex())
    }
}

impl fmt::Debug for RobotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RobotKey({})", self.0.pubkey_hex)
    }
}

/// The `Authorization` header value for a request: `Nostr <base64 of a signed event>`.
///
/// The event is kind 27235 with tags `u` (the absolute `url`), `method`, and `payload` (hex
/// SHA-256 of `body`) whenever there is a body; `created_at` is now, so every request gets
/// a fresh one.
///
/// The event is built and signed here rather than through nostr's event builder, which
/// verifies every signature it makes; that verification doubled the cost of each request.
/// The tests check the result with nostr's own NIP-98 verifier.
pub fn make_auth(robot: &RobotKey, method: &str, url: &str, body: Option<&[u8]>) -> Result<String> {
    let method = match method {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" => method,
        other => bail!("NIP-98 cannot sign HTTP method {other}"),
    };
    let url = Url::parse(url).with_context(|| format!("cannot sign request: bad URL {url:?}"))?;
    let mut tags = vec![["u", url.as_str()], ["method", method]];
    let payload = body.map(|b| hex(sha256::Hash::hash(b).as_byte_array()));
    if let Some(payload) = &payload {
        tags.push(["payload", payload]);
    }
    let robot = &robot.0;
    let created_at = crate::time::now_unix();
    // NIP-01: the id is the SHA-256 of [0, pubkey, created_at, kind, tags, content].
    let canonical =
        serde_json::to_vec(&(0, &robot.pubkey_hex, created_at, HTTP_AUTH_KIND, &tags, ""))?;
    let id = sha256::Hash::hash(&canonical).to_byte_array();
    let mut aux = [0u8; 32];
    crate::secret::fill_random(&mut aux);
    let sig = robot.keys.sign_schnorr_with_aux_rand(&robot.secp, id, &aux);
    let id = hex(&id);
    let sig = sig.to_hex();
    let event = Event {
        id: &id,
        pubkey: &robot.pubkey_hex,
        created_at,
        kind: HTTP_AUTH_KIND,
        tags: &tags,
        content: "",
        sig: &sig,
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&event)?);
    Ok(format!("Nostr {encoded}"))
}

/// A signed event as NIP-01 spells it, serialized straight from borrowed parts.
#[derive(serde::Serialize)]
struct Event<'a> {
    id: &'a str,
    pubkey: &'a str,
    created_at: i64,
    kind: u16,
    tags: &'a [[&'a str; 2]],
    content: &'a str,
    sig: &'a str,
}

/// NIP-98's event kind.
const HTTP_AUTH_KIND: u16 = 27235;

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5c0c523f52a5b6fad39ed2403092df8cebc36318b39383bca6c00808626fab3a";

    #[test]
    fn nsec_and_hex_are_the_same_key() {
        let hex = RobotKey::parse(KEY).unwrap();
        let nsec = nostr::nips::nip19::ToBech32::to_bech32(hex.0.keys.secret_key()).unwrap();
        assert_eq!(
            RobotKey::parse(&nsec).unwrap().public_key(),
            hex.public_key()
        );
    }

    use nostr::nips::nip98::HttpMethod;

    #[test]
    fn auth_header_is_signed_and_bound_to_request() {
        let robot = RobotKey::parse(KEY).unwrap();
        let url = "http://127.0.0.1:3334/relay/alpha";
        let body = br#"{"host":"a"}"#;
        let header = make_auth(&robot, "POST", url, Some(body)).unwrap();
        let now = nostr::types::Timestamp::now();
        let pk = nostr::nips::nip98::verify_auth_header(
            &header,
            &Url::parse(url).unwrap(),
            HttpMethod::POST,
            now,
            Some(body),
        )
        .unwrap();
        assert_eq!(pk, robot.public_key());
        // Bound to the method and the body.
        let wrong_method = nostr::nips::nip98::verify_auth_header(
            &header,
            &Url::parse(url).unwrap(),
            HttpMethod::PATCH,
            now,
            Some(body),
        );
        assert!(wrong_method.is_err());
        let wrong_body = nostr::nips::nip98::verify_auth_header(
            &header,
            &Url::parse(url).unwrap(),
            HttpMethod::POST,
            now,
            Some(b"{}"),
        );
        assert!(wrong_body.is_err());
    }
}
