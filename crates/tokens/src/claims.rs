//! The claims Keypost issues, and the issuer and audience names they carry.

use serde::{Deserialize, Serialize};
use store::RealmId;

/// The issuer of a realm: `{public_url}/realms/{realm}`.
pub fn issuer_for(public_url: &str, realm: &RealmId) -> String {
    format!("{}/realms/{}", public_url.trim_end_matches('/'), realm)
}

/// The realm whose key set a token asks to be checked against, read from its unverified `iss`.
///
/// Only for requests that do not name the realm of their resource (a JMAP session, an IMAP or
/// SMTP AUTH): THREAT-MODEL.md allows `iss` to choose *which realm's key set* is consulted —
/// never the `kid`, never a union — and everything the resulting principal touches must belong
/// to that realm. Refused as `Malformed` if the token does not parse, `MissingClaim` without an
/// `iss`, `IssuerMismatch` unless `iss` is exactly one of Keypost's issuers.
pub fn realm_hint(token: &str, public_url: &str) -> Result<RealmId, crate::Rejection> {
    let mut buf = Vec::new();
    let jws =
        crate::jose::parse_compact(token, &mut buf).map_err(|_| crate::Rejection::Malformed)?;
    let iss = jws
        .claims
        .iss
        .as_str()
        .ok_or(crate::Rejection::MissingClaim)?;
    let prefix = format!("{}/realms/", public_url.trim_end_matches('/'));
    iss.strip_prefix(&prefix)
        .and_then(|r| RealmId::new(r).ok())
        .ok_or(crate::Rejection::IssuerMismatch)
}

/// The Keypost services a token can be for. `aud` carries their URIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The mail service (JMAP, IMAP, SMTP submission, webmail).
    Mail,
    /// The OIDC userinfo endpoint of the token's realm.
    Userinfo,
    /// The admin API (audit log, alerts): only when asked for with RFC 8707 `resource`.
    Admin,
}

impl Audience {
    /// Every service a token can name.
    pub const ALL: [Audience; 3] = [Audience::Mail, Audience::Userinfo, Audience::Admin];
    /// The audience of an access token that names no `resource`: never the admin API.
    pub const DEFAULT: [Audience; 2] = [Audience::Mail, Audience::Userinfo];

    /// The audience URI of this service.
    pub fn uri(self, public_url: &str) -> String {
        let base = public_url.trim_end_matches('/');
        match self {
            Audience::Mail => format!("{base}/mail"),
            Audience::Userinfo => format!("{base}/userinfo"),
            Audience::Admin => format!("{base}/admin"),
        }
    }

    /// The service an RFC 8707 `resource` value names, if any.
    pub fn from_uri(public_url: &str, uri: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.uri(public_url) == uri)
    }
}

/// Claims of a Keypost access token (RFC 9068).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the realm's issuer URL.
    pub iss: String,
    /// Subject: account id, or client id for client credentials.
    pub sub: String,
    /// Audience URIs.
    pub aud: Vec<String>,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id: the ledger key.
    pub jti: String,
    /// Client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Tenant (realm) id.
    pub tid: String,
    /// Session id, when issued under a sign-in session.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sid: Option<String>,
}
