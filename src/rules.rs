//! What zooid accepts, as plain rules: relay ids that are one URL path segment, schemas,
//! subdomains, and owners' keys. The lowest room of the house: the store checks a host's write
//! by them, the request body checks a relay before it is built, and the HTTP client checks
//! every path segment before anything is sent; none of those needs the others for it.

use std::fmt;

use crate::quote;

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

/// Whether `id` can stand alone as one segment of a URL path, unescaped.
pub(crate) fn is_safe_path_segment(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
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

/// The checks a relay passes before it is sent, and before a host's write of it is taken
/// (`Command::create_relay`, `Command::update_relay`): its id, schema, subdomain and owner's
/// key as zooid accepts them. Names the first field at fault.
pub(crate) fn check_relay(
    id: &str,
    schema: &str,
    subdomain: &str,
    tenant_pubkey: &str,
) -> Result<(), InvalidRelay> {
    let fail = |field, problem: String| {
        Err(InvalidRelay {
            relay_id: id.to_string(),
            field,
            problem,
        })
    };
    if !is_safe_path_segment(id) {
        return fail(
            "id",
            "must be 1 to 128 of A-Z a-z 0-9 - _ . ~ (and not . or ..), to be a URL path segment"
                .into(),
        );
    }
    if !is_valid_schema(schema) {
        return fail(
            "schema",
            format!(
                "{} must match ^[a-zA-Z_][a-zA-Z0-9_]*$ and be at most 63 bytes",
                quote::host_value(schema)
            ),
        );
    }
    if subdomain.is_empty() {
        return fail("subdomain", "is empty".into());
    }
    if !is_valid_subdomain(subdomain) {
        return fail(
            "subdomain",
            format!(
                "{} is not a valid DNS name (letters, digits, inner hyphens)",
                quote::host_value(subdomain)
            ),
        );
    }
    let is_hex64 =
        tenant_pubkey.len() == 64 && tenant_pubkey.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex64
        || nostr::key::PublicKey::from_hex(tenant_pubkey)
            .and_then(|pk| pk.xonly())
            .is_err()
    {
        return fail(
            "tenant_pubkey",
            format!(
                "{} is not a public key of 64 hex characters",
                quote::host_value(tenant_pubkey)
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

    #[test]
    fn path_segments() {
        for ok in ["alpha", "a-b_c.d~e", "0", "A1"] {
            assert!(is_safe_path_segment(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a%20",
            "a?b",
            "a#b",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(!is_safe_path_segment(bad), "{bad}");
        }
    }
}
