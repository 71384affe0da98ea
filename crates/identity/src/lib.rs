//! Identity: realms, tenants, accounts, clients and sessions, and the OAuth 2 / OpenID Connect
//! endpoints every realm serves as its own issuer.
//!
//! `identity` owns who may sign in and how: password verification (Argon2id) with throttling,
//! the authorization-code flow with PKCE and its login page, the token endpoint's grants,
//! userinfo, revocation and end-session. It must never skip the ledger when minting: every
//! token goes through [`tokens::Minter`], which records it durably before returning it.
//!
//! ```text
//!   /realms/{realm}/.well-known/openid-configuration   discovery (one issuer per realm)
//!   /realms/{realm}/jwks                               that realm's public keys only
//!   /realms/{realm}/authorize  ── login page ──> /realms/{realm}/login ──303──> redirect_uri?code
//!   /realms/{realm}/token      authorization_code | refresh_token | client_credentials | password
//!   /realms/{realm}/userinfo   /revoke   /logout
//! ```
//!
//! [`Identity`] is the domain service (used by the CLI and the HTTP layer alike); [`router`]
//! is the HTTP surface over it.
#![forbid(unsafe_code)]

mod admin;
mod attempts;
mod error;
mod html;
mod http;
mod password;
mod service;

pub use error::{Error, OAuthError};
pub use http::router;
pub use service::{CLI_CLIENT, CreatedClient, Identity, IdentityConfig, NewClient, SCOPES};

/// Seconds since the Unix epoch ([`store::clock::now`]): what the identity service's entry
/// points read; every function below takes the time as an argument so tests can control it.
pub fn now() -> i64 {
    store::clock::now()
}
