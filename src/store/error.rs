//! The errors of the host's writes ([`Command::create_relay`](super::Command::create_relay) and
//! its kin), typed so that a host can act on each: a relay that exists already, one that does
//! not, a field zooid would refuse, a database that is busy or unusable.

use std::fmt;

use crate::quote;
use crate::rules::InvalidRelay;

/// Why a host's write did not happen. Nothing was written in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// `create_relay`: a relay with this id exists already.
    RelayExists {
        /// The relay's id.
        id: String,
    },
    /// `update_relay`, `activate_relay`, `deactivate_relay`, `delete_relay`: there is no relay
    /// with this id.
    UnknownRelay {
        /// The relay's id.
        id: String,
    },
    /// A field of the relay would be refused by zooid (or could not be sent to it at all).
    /// The same rules are checked again before every sync.
    InvalidField {
        /// The relay's id.
        id: String,
        /// The field at fault (`id`, `schema`, `subdomain`, `tenant_pubkey`).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Another connection held the database's write lock past the busy timeout (5 s): try
    /// again.
    DatabaseBusy,
    /// The database could not be read or written (full, read-only, corrupt, gone); the text
    /// says why.
    Database(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::RelayExists { id } => write!(
                f,
                "relay {} exists already: update it with update_relay, or delete it first",
                quote::host_value(id)
            ),
            HostError::UnknownRelay { id } => write!(
                f,
                "there is no relay {}: create it with create_relay first",
                quote::host_value(id)
            ),
            HostError::InvalidField { id, field, problem } => write!(
                f,
                "relay {}: {field} {problem}; nothing was written",
                quote::host_value(id)
            ),
            HostError::DatabaseBusy => f.write_str(
                "the database is locked by another connection (longer than the 5 s busy \
                 timeout); nothing was written: try again",
            ),
            HostError::Database(e) => write!(f, "the database failed: {e}; nothing was written"),
        }
    }
}

impl std::error::Error for HostError {}

impl From<InvalidRelay> for HostError {
    fn from(e: InvalidRelay) -> HostError {
        HostError::InvalidField {
            id: e.relay_id,
            field: e.field,
            problem: e.problem,
        }
    }
}

/// The marker of a write about a relay that does not exist, inside the store's `anyhow`
/// errors, so that it can be told apart from the database failing.
#[derive(Debug)]
pub(crate) struct NoSuchRelay(pub String);

impl fmt::Display for NoSuchRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "there is no relay {:?}", self.0)
    }
}

impl std::error::Error for NoSuchRelay {}

impl HostError {
    /// What a failed host write's `anyhow` error means for the host.
    pub(crate) fn classify(id: &str, error: anyhow::Error) -> HostError {
        if error.downcast_ref::<NoSuchRelay>().is_some() {
            return HostError::UnknownRelay { id: id.to_string() };
        }
        let sqlite = error
            .chain()
            .find_map(|e| e.downcast_ref::<rusqlite::Error>());
        if let Some(rusqlite::Error::SqliteFailure(failure, _)) = sqlite {
            use rusqlite::ffi;
            match failure.extended_code {
                ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => {
                    return HostError::RelayExists { id: id.to_string() }
                }
                _ => {}
            }
            if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) {
                return HostError::DatabaseBusy;
            }
        }
        HostError::Database(format!("{error:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let exists = HostError::RelayExists { id: "a".into() }.to_string();
        assert!(exists.contains("exists already") && exists.contains("update_relay"));
        let unknown = HostError::UnknownRelay { id: "a".into() }.to_string();
        assert!(unknown.contains("create_relay first"), "{unknown}");
        assert!(HostError::DatabaseBusy.to_string().contains("try again"));
        let invalid = HostError::from(InvalidRelay {
            relay_id: "a".into(),
            field: "schema",
            problem: "must match".into(),
        });
        assert_eq!(
            invalid,
            HostError::InvalidField {
                id: "a".into(),
                field: "schema",
                problem: "must match".into()
            }
        );
    }

    #[test]
    fn store_failures_are_classified() {
        let no_relay = anyhow::Error::new(NoSuchRelay("a".into())).context("updating relay");
        assert_eq!(
            HostError::classify("a", no_relay),
            HostError::UnknownRelay { id: "a".into() }
        );
        let failure = |code, extended| {
            anyhow::Error::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code,
                    extended_code: extended,
                },
                None,
            ))
            .context("creating relay")
        };
        use rusqlite::ffi;
        assert_eq!(
            HostError::classify(
                "a",
                failure(
                    rusqlite::ErrorCode::ConstraintViolation,
                    ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                )
            ),
            HostError::RelayExists { id: "a".into() }
        );
        assert_eq!(
            HostError::classify(
                "a",
                failure(rusqlite::ErrorCode::DatabaseBusy, ffi::SQLITE_BUSY)
            ),
            HostError::DatabaseBusy
        );
        assert!(matches!(
            HostError::classify(
                "a",
                failure(rusqlite::ErrorCode::DiskFull, ffi::SQLITE_FULL)
            ),
            HostError::Database(_)
        ));
    }
}
