//! Identifier newtypes. A `RealmId` is not a `String`: each is validated once, at the edge, so
//! code further in never has to ask whether a realm name could contain a slash.

use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    kind: &'static str,
    reason: &'static str,
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(&s).map_err(|reason| IdError { kind: $kind, reason })?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `s` is a valid identifier (what [`Self::new`] checks, without a copy).
            pub fn is_valid(s: &str) -> bool {
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(s).is_ok()
            }
        }

        // Maps keyed by an identifier can be searched with text, without building one; the
        // identifier hashes and compares as its text.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

/// Opaque identifiers we generate ourselves: URL-safe, bounded.
fn opaque(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 128 {
        return Err("length must be 1..=128");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("only A-Z a-z 0-9 - _ . allowed");
    }
    Ok(())
}

string_id!(
    /// A realm: `consumers`, or a tenant's slug. Lowercase letters, digits and inner hyphens,
    /// 2 to 63 characters, so it is safe in URLs, issuers and file names.
    RealmId,
    "realm",
    |s| {
        if s.len() < 2 || s.len() > 63 {
            return Err("length must be 2..=63");
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("only a-z 0-9 and - allowed");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err("must not start or end with -");
        }
        Ok(())
    }
);
string_id!(
    /// A signing key's id: its RFC 7638 JWK thumbprint, so one key has one kid everywhere.
    Kid,
    "kid",
    opaque
);
/// Appends the first 12 characters of a jti Keypost mints at `unix_ms`: the time in
/// milliseconds, in lowercase hex. Jtis sort by when they were minted, so the ledger's key is
/// also its issue order (inserts of one commit share b-tree pages; old rows are found by a
/// key range, `LedgerStore::prune_ledger`).
pub fn push_jti_time_prefix(out: &mut String, unix_ms: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // By hand: `format!` was a tenth of planning a token (perf, token endpoint).
    out.extend(
        (0..12)
            .rev()
            .map(|i| char::from(HEX[((unix_ms >> (4 * i)) & 0xf) as usize])),
    );
}

string_id!(
    /// A token's unique id (`jti`), the issuance ledger's primary key.
    Jti,
    "jti",
    opaque
);
string_id!(
    /// An account's stable subject identifier (`sub`). Never an email address, which can change.
    AccountId,
    "account id",
    opaque
);
string_id!(
    /// An OAuth client identifier, unique within a realm.
    ClientId,
    "client id",
    |s| {
        if s.is_empty() || s.len() > 128 {
            return Err("length must be 1..=128");
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("only printable ASCII without spaces allowed");
        }
        Ok(())
    }
);
string_id!(
    /// A sign-in session; tokens carry it as `sid` and die with it.
    SessionId,
    "session id",
    opaque
);

string_id!(
    /// A mailbox, unique across Keypost (JMAP `Id`).
    MailboxId,
    "mailbox id",
    opaque
);
string_id!(
    /// An email, unique across Keypost (JMAP `Id`).
    EmailId,
    "email id",
    opaque
);
string_id!(
    /// A conversation thread (JMAP `Id`).
    ThreadId,
    "thread id",
    opaque
);
string_id!(
    /// An identity an account sends as (JMAP `Id`).
    IdentityId,
    "identity id",
    opaque
);

string_id!(
    /// A record of one sending (JMAP `EmailSubmission` id).
    SubmissionId,
    "submission id",
    opaque
);

string_id!(
    /// A blob: the lowercase hex SHA-256 of its bytes, so equal content is stored once.
    BlobId,
    "blob id",
    |s| {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(())
        } else {
            Err("must be 64 lowercase hex digits")
        }
    }
);

impl RealmId {
    /// The one consumer realm.
    pub const CONSUMERS: &'static str = "consumers";

    /// The consumer realm's id.
    pub fn consumers() -> Self {
        Self(Self::CONSUMERS.to_owned())
    }

    /// Whether this is the consumer realm.
    pub fn is_consumers(&self) -> bool {
        self.0 == Self::CONSUMERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_ids_are_url_safe() {
        assert!(RealmId::new("contoso").is_ok());
        assert!(RealmId::new("a-1").is_ok());
        for bad in [
            "", "a", "Contoso", "con/toso", "-x", "x-", "ünï", "con toso", "../etc",
        ] {
            assert!(RealmId::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn kid_rejects_injection_strings() {
        for bad in ["../../etc/passwd", "x' OR '1'='1", "a b", ""] {
            assert!(Kid::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serde_validates() {
        let r: Result<RealmId, _> = serde_json::from_str("\"Bad Realm\"");
        assert!(r.is_err());
    }
}
