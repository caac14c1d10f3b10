//! The request body zooid receives for a relay: a pure function of the relay and the settings.
//!
//! [`relay_body`] first checks everything zooid would refuse (and a few things that would make
//! a broken relay), so that a bad row fails its sync with an error naming the field and no
//! request is sent at all. Then it builds the body field by field as `docs/zooid-api.md`
//! specifies; the golden copies under `fixtures/bodies/` pin it down.
//!
//! A `secret` is included only when creating a relay: it is the relay's own Nostr identity,
//! generated fresh for each `POST` and never stored, so an update never rotates it.

use serde::Serialize;

use crate::env::Env;
use crate::rules::InvalidRelay;
use crate::secret::Secret;
use crate::store::Relay;

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

fn validate(relay: &Relay) -> Result<(), InvalidRelay> {
    relay.settings.check(&relay.id)
}
