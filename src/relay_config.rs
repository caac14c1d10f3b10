//! The request body zooid receives for a relay: a pure function of the relay and the settings.
//!
//! [`relay_body`] first checks everything zooid would refuse (and a few things that would make
//! a broken relay), so that a bad row fails its sync with an error naming the field and no
//! request is sent at all. Then it builds the body field by field as `docs/zooid-api.md`
//! specifies; the golden copies under `fixtures/bodies/` pin it down.
//!
//! A `secret` is included only when creating a relay: it is the relay's own Nostr identity,
//! generated fresh for each `POST` and never stored, so an update never rotates it.

use std::fmt;

use serde::Serialize;

use crate::env::Env;
use crate::quote;
use crate::secret::Secret;
use crate::store::Relay;

/// Why a relay cannot be sent to zooid. Names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRelay {
    /// The relay's id.
    pub relay_id: String,
    /// The relay column (or setting) at fault.
    pub field: &'static str,
    /// What is wrong with the field.
    pub problem: String,
}

impl fmt::Display for InvalidRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "relay {} is invalid: {} {}; nothing was sent to zooid",
            quote::host_value(&self.relay_id),
            self.field,
            self.problem
        )
    }
}

impl std::error::Error for InvalidRelay {}

/// The JSON body of `POST /relay/{id}` (with a secret) or `PATCH /relay/{id}` (without).
/// `Debug` never shows the secrets inside.
#[derive(Debug, Serialize)]
pub struct RelayBody<'a> {
    /// `<subdomain>.<RELAY_DOMAIN>`.
    pub host: String,
    /// The relay's database schema at zooid.
    pub schema: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The relay's secret, on `POST` only.
    pub secret: Option<&'a Secret>,
    /// Whether zooid stops serving it (status `inactive` or `delinquent`).
    pub inactive: bool,
    /// The NIP-11 information.
    pub info: Info<'a>,
    /// Who may read, write and join.
    pub policy: Policy,
    /// NIP-29 groups.
    pub groups: Toggle,
    /// NIP-86 management.
    pub management: Toggle,
    /// Blossom media storage, with its S3 settings.
    pub blossom: Blossom<'a>,
    /// LiveKit calls, with its settings.
    pub livekit: Livekit<'a>,
    /// Push notifications.
    pub push: Toggle,
    /// Member roles.
    pub roles: Roles,
}

#[derive(Debug, Serialize)]
pub struct Info<'a> {
    pub name: &'a str,
    pub icon: &'a str,
    pub description: &'a str,
    pub pubkey: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Policy {
    pub public_read: bool,
    pub public_write: bool,
    pub public_join: bool,
    pub strip_signatures: bool,
}

#[derive(Debug, Serialize)]
pub struct Toggle {
    pub enabled: bool,
}

/// `{"enabled": false}`, or enabled with the S3 adapter.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Blossom<'a> {
    Disabled {
        enabled: bool,
    },
    S3 {
        enabled: bool,
        adapter: &'static str,
        s3: S3<'a>,
    },
}

#[derive(Debug, Serialize)]
pub struct S3<'a> {
    pub endpoint: &'a str,
    pub region: &'a str,
    pub bucket: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a Secret,
    pub key_prefix: &'a str,
}

/// Disabled: `{"enabled": false}` with empty `server_url`, `api_key` and `api_secret`.
/// zooid's livekit section has no `enabled` flag and `PATCH` merges key by key, so only
/// blanking the credentials turns LiveKit off at zooid and takes them away from it.
/// Enabled: the LiveKit settings.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Livekit<'a> {
    Disabled {
        enabled: bool,
        server_url: &'static str,
        api_key: &'static str,
        api_secret: &'static str,
    },
    Enabled {
        enabled: bool,
        server_url: &'a str,
        api_key: &'a str,
        api_secret: &'a Secret,
    },
}

#[derive(Debug, Serialize)]
pub struct Roles {
    pub admin: Role,
    pub member: Role,
}

#[derive(Debug, Serialize)]
pub struct Role {
    pub can_invite: bool,
    pub can_manage: bool,
}

/// Builds the body for `relay`. `secret` is `Some` for a create (`POST`), `None` for an update.
pub fn relay_body<'a>(
    relay: &'a Relay,
    env: &'a Env,
    secret: Option<&'a Secret>,
) -> Result<RelayBody<'a>, InvalidRelay> {
    validate(relay)?;
    let s = &relay.settings;
    let invalid = |field, problem: &str| InvalidRelay {
        relay_id: relay.id.clone(),
        field,
        problem: problem.to_string(),
    };

    let blossom = if s.blossom_enabled {
        let b = &env.blossom;
        let need = |value: &'a Option<String>, var: &'static str| {
            value
                .as_deref()
                .ok_or_else(|| invalid("blossom_enabled", &format!("is set but {var} is not")))
        };
        Blossom::S3 {
            enabled: true,
            adapter: "s3",
            s3: S3 {
                endpoint: need(&b.endpoint, "BLOSSOM_S3_ENDPOINT")?,
                region: need(&b.region, "BLOSSOM_S3_REGION")?,
                bucket: need(&b.bucket, "BLOSSOM_S3_BUCKET")?,
                access_key: need(&b.access_key, "BLOSSOM_S3_ACCESS_KEY")?,
                secret_key: b.secret_key.as_ref().ok_or_else(|| {
                    invalid("blossom_enabled", "is set but BLOSSOM_S3_SECRET_KEY is not")
                })?,
                key_prefix: &s.schema,
            },
        }
    } else {
        Blossom::Disabled { enabled: false }
    };

    let livekit = if s.livekit_enabled {
        let l = &env.livekit;
        let need = |value: &'a Option<String>, var: &'static str| {
            value
                .as_deref()
                .ok_or_else(|| invalid("livekit_enabled", &format!("is set but {var} is not")))
        };
        Livekit::Enabled {
            enabled: true,
            server_url: need(&l.url, "LIVEKIT_URL")?,
            api_key: need(&l.api_key, "LIVEKIT_API_KEY")?,
            api_secret: l.api_secret.as_ref().ok_or_else(|| {
                invalid("livekit_enabled", "is set but LIVEKIT_API_SECRET is not")
            })?,
        }
    } else {
        Livekit::Disabled {
            enabled: false,
            server_url: "",
            api_key: "",
            api_secret: "",
        }
    };

    Ok(RelayBody {
        host: host(relay, env),
        schema: &s.schema,
        secret,
        inactive: s.status.is_inactive(),
        info: Info {
            name: &s.info_name,
            icon: &s.info_icon,
            description: &s.info_description,
            pubkey: &s.tenant_pubkey,
        },
        policy: Policy {
            public_read: s.policy_public_read,
            public_write: s.policy_public_write,
            public_join: s.policy_public_join,
            strip_signatures: s.policy_strip_signatures,
        },
        groups: Toggle {
            enabled: s.groups_enabled,
        },
        management: Toggle {
            enabled: s.management_enabled,
        },
        blossom,
        livekit,
        push: Toggle {
            enabled: s.push_enabled,
        },
        roles: Roles {
            admin: Role {
                can_invite: true,
                can_manage: true,
            },
            member: Role {
                can_invite: s.members_can_invite,
                can_manage: false,
            },
        },
    })
}

/// `<subdomain>.<relay_domain>`.
pub fn host(relay: &Relay, env: &Env) -> String {
    format!("{}.{}", relay.settings.subdomain, env.relay_domain)
}

/// zooid's schema rule `^[a-zA-Z_][a-zA-Z0-9_]*$`, and PostgreSQL's 63-byte identifier limit.
fn is_valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && schema.len() <= 63
}

/// One or more DNS labels: letters, digits and inner hyphens, 63 bytes a label at most.
fn is_valid_subdomain(subdomain: &str) -> bool {
    !subdomain.is_empty()
        && subdomain.len() <= 200
        && subdomain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn validate(relay: &Relay) -> Result<(), InvalidRelay> {
    validate_settings(&relay.id, &relay.settings)
}

/// The checks a relay passes before it is sent, and before a host's write of it is taken
/// ([`crate::Command::create_relay`], [`crate::Command::update_relay`]).
pub(crate) fn validate_settings(
    id: &str,
    s: &crate::store::RelaySettings,
) -> Result<(), InvalidRelay> {
    let fail = |field, problem: String| {
        Err(InvalidRelay {
            relay_id: id.to_string(),
            field,
            problem,
        })
    };
    if !crate::zooid::is_safe_path_segment(id) {
        return fail(
            "id",
            "must be 1 to 128 of A-Z a-z 0-9 - _ . ~ (and not . or ..), to be a URL path segment"
                .into(),
        );
    }
    if !is_valid_schema(&s.schema) {
        return fail(
            "schema",
            format!(
                "{} must match ^[a-zA-Z_][a-zA-Z0-9_]*$ and be at most 63 bytes",
                quote::host_value(&s.schema)
            ),
        );
    }
    if s.subdomain.is_empty() {
        return fail("subdomain", "is empty".into());
    }
    if !is_valid_subdomain(&s.subdomain) {
        return fail(
            "subdomain",
            format!(
                "{} is not a valid DNS name (letters, digits, inner hyphens)",
                quote::host_value(&s.subdomain)
            ),
        );
    }
    let is_hex64 =
        s.tenant_pubkey.len() == 64 && s.tenant_pubkey.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex64
        || nostr::key::PublicKey::from_hex(&s.tenant_pubkey)
            .and_then(|pk| pk.xonly())
            .is_err()
    {
        return fail(
            "tenant_pubkey",
            format!(
                "{} is not a public key of 64 hex characters",
                quote::host_value(&s.tenant_pubkey)
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas() {
        for ok in ["alpha", "_x", "A_1", &"a".repeat(63)] {
            assert!(is_valid_schema(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "ä", &"a".repeat(64)] {
            assert!(!is_valid_schema(bad), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        for ok in ["alpha", "a-b", "a.b", "x1"] {
            assert!(is_valid_subdomain(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "a/b", "a_b", &"a".repeat(64)] {
            assert!(!is_valid_subdomain(bad), "{bad}");
        }
    }
}
