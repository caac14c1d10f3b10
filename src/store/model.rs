//! The rows zooid-sync reads and writes: [`Relay`] and [`Activity`].
//!
//! A relay row is written by the host, possibly by another program in another language, so
//! nothing about it is trusted: [`Relay::from_row`] checks every column and a bad value becomes
//! an error that names the relay and the column (never a panic, never a silent default).

use std::fmt;

use anyhow::{anyhow, bail, Result};
use rusqlite::types::ValueRef;
use rusqlite::Row;

/// Activity types that zooid-sync reads or writes.
pub mod activity_type {
    /// The host created a relay.
    pub const CREATE_RELAY: &str = "create_relay";
    /// The host changed a relay's settings.
    pub const UPDATE_RELAY: &str = "update_relay";
    /// The host set a relay's status to `active`.
    pub const ACTIVATE_RELAY: &str = "activate_relay";
    /// The host set a relay's status to `inactive`.
    pub const DEACTIVATE_RELAY: &str = "deactivate_relay";
    /// Written by the host in the transaction that deletes the relay's row: zooid-sync then
    /// deletes the relay at zooid.
    pub const DELETE_RELAY: &str = "delete_relay";
    /// zooid-sync recorded a sync (or deletion) zooid took.
    pub const COMPLETE_RELAY_SYNC: &str = "complete_relay_sync";
    /// zooid-sync recorded a failed sync; `detail` holds the error.
    pub const FAIL_RELAY_SYNC: &str = "fail_relay_sync";
}

/// How the `detail` of a `fail_relay_sync` begins when the relay failed because zooid was
/// unavailable, not because zooid refused it. Such failures never count toward giving up.
pub const ZOOID_UNAVAILABLE: &str = "zooid is unavailable";

/// The `resource_type` of activities about relays.
pub const RELAY_RESOURCE: &str = "relay";

/// Whether a relay is served. `inactive` and `delinquent` relays are sent with `inactive: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayStatus {
    #[default]
    /// Served.
    Active,
    /// Not served (the host turned it off).
    Inactive,
    /// Not served (unpaid); sent to zooid as inactive, like `Inactive`.
    Delinquent,
}

impl RelayStatus {
    /// The status as the `relay.status` column holds it.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayStatus::Active => "active",
            RelayStatus::Inactive => "inactive",
            RelayStatus::Delinquent => "delinquent",
        }
    }

    /// Reads the `relay.status` column; anything else is an error naming the value.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "active" => Ok(RelayStatus::Active),
            "inactive" => Ok(RelayStatus::Inactive),
            "delinquent" => Ok(RelayStatus::Delinquent),
            other => bail!(
                "unknown status {} (expected active, inactive or delinquent)",
                crate::quote::host_value(other)
            ),
        }
    }

    /// zooid's `inactive` flag.
    pub fn is_inactive(self) -> bool {
        self != RelayStatus::Active
    }
}

impl fmt::Display for RelayStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host decides about a relay: every column it edits. Deserializable (missing
/// fields default to empty or off) so that seed files can describe relays.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// The owner's public key, 64 hex characters.
    pub tenant_pubkey: String,
    /// The relay's database schema at zooid: `^[a-zA-Z_][a-zA-Z0-9_]*$`, at most 63 bytes,
    /// unique across zooid's relays.
    pub schema: String,
    /// The relay is served at `<subdomain>.<RELAY_DOMAIN>`; a DNS label (or labels).
    pub subdomain: String,
    /// The host's plan for the relay (not sent to zooid).
    pub plan_id: String,
    /// Whether zooid serves the relay.
    pub status: RelayStatus,
    /// NIP-11 `name`.
    pub info_name: String,
    /// NIP-11 `icon` (a URL).
    pub info_icon: String,
    /// NIP-11 `description`.
    pub info_description: String,
    /// Anyone may read.
    pub policy_public_read: bool,
    /// Anyone may write.
    pub policy_public_write: bool,
    /// Anyone may join.
    pub policy_public_join: bool,
    /// Events are served without signatures.
    pub policy_strip_signatures: bool,
    /// NIP-29 groups.
    pub groups_enabled: bool,
    /// NIP-86 relay management.
    pub management_enabled: bool,
    /// Members may invite others.
    pub members_can_invite: bool,
    /// Blossom media storage (needs the `BLOSSOM_S3_*` settings).
    pub blossom_enabled: bool,
    /// LiveKit calls (needs the `LIVEKIT_*` settings).
    pub livekit_enabled: bool,
    /// Push notifications.
    pub push_enabled: bool,
    /// The zooid that serves the relay: a name from `ZOOID_INSTANCES`, or empty for
    /// `ZOOID_API_URL`'s (the `relay.zooid` column, which a relay table may lack: then it is
    /// always empty).
    pub zooid: String,
}

/// The host-edited columns, in the order [`RelaySettings::from_row`] reads them.
pub(crate) const SETTINGS_COLUMNS: [&str; 18] = [
    "tenant_pubkey",
    "schema",
    "subdomain",
    "plan_id",
    "status",
    "info_name",
    "info_icon",
    "info_description",
    "policy_public_read",
    "policy_public_write",
    "policy_public_join",
    "policy_strip_signatures",
    "groups_enabled",
    "management_enabled",
    "members_can_invite",
    "blossom_enabled",
    "livekit_enabled",
    "push_enabled",
];

impl RelaySettings {
    /// Checks relay `id` with these settings by what zooid accepts ([`crate::rules`]): what a
    /// host's write and a sync check before anything is written or sent.
    pub(crate) fn check(&self, id: &str) -> Result<(), crate::rules::InvalidRelay> {
        crate::rules::check_relay(id, &self.schema, &self.subdomain, &self.tenant_pubkey)
    }

    /// The values of [`SETTINGS_COLUMNS`], in order, and `zooid`'s after them if
    /// `zooid_column`, for an INSERT or UPDATE.
    pub(crate) fn to_values(&self, zooid_column: bool) -> Vec<rusqlite::types::Value> {
        use rusqlite::types::Value;
        let text = |s: &str| Value::Text(s.to_string());
        let flag = |b: bool| Value::Integer(b as i64);
        vec![
            text(&self.tenant_pubkey),
            text(&self.schema),
            text(&self.subdomain),
            text(&self.plan_id),
            text(self.status.as_str()),
            text(&self.info_name),
            text(&self.info_icon),
            text(&self.info_description),
            flag(self.policy_public_read),
            flag(self.policy_public_write),
            flag(self.policy_public_join),
            flag(self.policy_strip_signatures),
            flag(self.groups_enabled),
            flag(self.management_enabled),
            flag(self.members_can_invite),
            flag(self.blossom_enabled),
            flag(self.livekit_enabled),
            flag(self.push_enabled),
        ]
        .into_iter()
        .chain(zooid_column.then(|| text(&self.zooid)))
        .collect()
    }

    fn from_row(row: &Row, first: usize) -> Result<Self> {
        let c = Columns { row, first };
        Ok(RelaySettings {
            tenant_pubkey: c.text(0)?,
            schema: c.text(1)?,
            subdomain: c.text(2)?,
            plan_id: c.text(3)?,
            status: RelayStatus::parse(&c.text(4)?).map_err(|e| anyhow!("column status: {e}"))?,
            info_name: c.text(5)?,
            info_icon: c.text(6)?,
            info_description: c.text(7)?,
            policy_public_read: c.flag(8)?,
            policy_public_write: c.flag(9)?,
            policy_public_join: c.flag(10)?,
            policy_strip_signatures: c.flag(11)?,
            groups_enabled: c.flag(12)?,
            management_enabled: c.flag(13)?,
            members_can_invite: c.flag(14)?,
            blossom_enabled: c.flag(15)?,
            livekit_enabled: c.flag(16)?,
            push_enabled: c.flag(17)?,
            zooid: String::new(),
        })
    }
}

/// A relay row: the host's settings and zooid-sync's record of its syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The relay's id (the URL path segment at zooid).
    pub id: String,
    /// What the host set.
    pub settings: RelaySettings,
    /// The last sync's error; empty when the last sync succeeded or none failed yet.
    pub sync_error: String,
    /// True once zooid has the relay's current revision.
    pub synced: bool,
    /// Bumped by every change; a sync completes only the revision it read.
    pub revision: i64,
    /// When the host created it (unix seconds).
    pub created_at: i64,
    /// When the host last changed it (unix seconds).
    pub updated_at: i64,
}

/// The SELECT list that [`Relay::from_row`] reads ([`RELAY_WIDTH`] columns), for a relay
/// table with or without the `zooid` column.
pub(crate) fn relay_select_list(zooid_column: bool) -> String {
    format!(
        "id, sync_error, synced, revision, created_at, updated_at, {}, {}",
        SETTINGS_COLUMNS.join(", "),
        match zooid_column {
            true => "zooid",
            false => "'' AS zooid",
        }
    )
}

/// How many columns [`relay_select_list`] selects.
pub(crate) const RELAY_WIDTH: usize = 7 + SETTINGS_COLUMNS.len();

impl Relay {
    /// Reads a row selected with [`relay_select_list`]. Errors name the relay and the column.
    pub(crate) fn from_row(row: &Row) -> Result<Self> {
        let id = match row.get_ref(0)? {
            ValueRef::Text(t) => crate::quote::host_value(&String::from_utf8_lossy(t)),
            other => format!("<{}>", kind(other)),
        };
        let read = || -> Result<Relay> {
            let c = Columns { row, first: 0 };
            Ok(Relay {
                id: c.text(0)?,
                sync_error: c.text(1)?,
                synced: c.flag(2)?,
                revision: c.int(3)?,
                created_at: c.int(4)?,
                updated_at: c.int(5)?,
                settings: RelaySettings {
                    zooid: c.text(RELAY_WIDTH - 1)?,
                    ..RelaySettings::from_row(row, 6)?
                },
            })
        };
        read().map_err(|e| anyhow!("relay {id} has a malformed row: {e}"))
    }
}

/// Typed access to a row's columns, with errors that name the column.
struct Columns<'a, 'r> {
    row: &'a Row<'r>,
    first: usize,
}

impl Columns<'_, '_> {
    fn name(&self, i: usize) -> &str {
        self.row.as_ref().column_name(self.first + i).unwrap_or("?")
    }

    fn text(&self, i: usize) -> Result<String> {
        match self.row.get_ref(self.first + i)? {
            ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
                .map_err(|_| anyhow!("column {} is not valid UTF-8", self.name(i))),
            ValueRef::Null => bail!("column {} is NULL", self.name(i)),
            other => bail!(
                "column {} holds {}, expected text",
                self.name(i),
                kind(other)
            ),
        }
    }

    fn int(&self, i: usize) -> Result<i64> {
        match self.row.get_ref(self.first + i)? {
            ValueRef::Integer(n) => Ok(n),
            other => bail!(
                "column {} holds {}, expected an integer",
                self.name(i),
                kind(other)
            ),
        }
    }

    fn flag(&self, i: usize) -> Result<bool> {
        match self.row.get_ref(self.first + i)? {
            ValueRef::Integer(0) => Ok(false),
            ValueRef::Integer(1) => Ok(true),
            ValueRef::Integer(n) => bail!("column {} holds {n}, expected 0 or 1", self.name(i)),
            other => bail!(
                "column {} holds {}, expected 0 or 1",
                self.name(i),
                kind(other)
            ),
        }
    }
}

fn kind(v: ValueRef) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

/// One row of the activity log; also what travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// Position in the log; the feed's cursor.
    pub seq: i64,
    /// Its unique id.
    pub id: String,
    /// The owner of the resource it is about.
    pub tenant_pubkey: String,
    /// When it was written (unix seconds).
    pub created_at: i64,
    /// What happened ([`activity_type`]).
    pub activity_type: String,
    /// What kind of resource it is about ([`RELAY_RESOURCE`] for relays).
    pub resource_type: String,
    /// The resource's id (the relay's id).
    pub resource_id: String,
    /// For `fail_relay_sync`, the error.
    pub detail: String,
}

pub(crate) const ACTIVITY_SELECT_LIST: &str =
    "seq, id, tenant_pubkey, created_at, activity_type, resource_type, resource_id, detail";

impl Activity {
    /// Reads a row selected with [`ACTIVITY_SELECT_LIST`]. A row the host wrote badly is a
    /// [`BadRow`] naming its `seq` and the column.
    pub(crate) fn from_row(row: &Row) -> Result<Self, BadRow> {
        let seq: i64 = row.get(0).unwrap_or(-1);
        let read = || -> Result<Activity> {
            let c = Columns { row, first: 0 };
            Ok(Activity {
                seq: c.int(0)?,
                id: c.text(1)?,
                tenant_pubkey: c.text(2)?,
                created_at: c.int(3)?,
                activity_type: c.text(4)?,
                resource_type: c.text(5)?,
                resource_id: c.text(6)?,
                detail: c.text(7)?,
            })
        };
        read().map_err(|e| BadRow {
            table: "activity",
            key: seq,
            error: format!("{e:#}"),
        })
    }
}

/// A row the host wrote that cannot be read. It is skipped, logged and counted; it never
/// keeps another row from being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// `relay` or `activity`.
    pub table: &'static str,
    /// The row's `rowid` (for `activity`, its `seq`).
    pub key: i64,
    /// What is wrong with it, naming the column.
    pub error: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.table == "activity" {
            "seq"
        } else {
            "rowid"
        };
        write!(
            f,
            "skipped the malformed {} row with {key} {}: {}",
            self.table, self.key, self.error
        )
    }
}

impl std::error::Error for BadRow {}
