//! The identity service: realms, accounts, clients, sign-in and the OAuth grants, as plain
//! synchronous functions. The HTTP layer ([`crate::router`]) parses requests and calls these on
//! a blocking thread; the CLI calls them directly.
//!
//! This module owns the [`Identity`] type, its settings, its construction and what its parts
//! share (the scopes, the grant's decisions before minting); each child owns one part of what
//! it does: `directory` (realms, users, clients, bootstrap), `sign_in` (passwords, throttling,
//! sessions), `authorize` (the authorization endpoint), `grants` (the token endpoint's grants
//! and issuing), `refresh` (the refresh grant and its refusals), `resource` (tokens presented
//! back, revocation, logout). None of them knows HTTP.

use std::sync::Arc;

use audit::{AuditLog, Event, Operation, Source};
use aws_lc_rs::{digest, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::{Algorithm, Custody};
use store::{
    Account, Client, ClientId, Jti, Realm, RealmId, Role, Session, SessionId, Store, UnixTime,
};
use subtle::ConstantTimeEq;
use tokens::{MintRequest, Minter, issuer_for};
use zeroize::Zeroizing;

use crate::attempts::InFlight;
use crate::{Error, OAuthError};

mod authorize;
mod directory;
mod grants;
mod refresh;
mod resource;
mod sign_in;

pub(crate) use authorize::{AuthorizeError, AuthorizeParams};
pub(crate) use resource::LogoutOutcome;

/// Scopes Keypost understands.
pub const SCOPES: [&str; 6] = [
    "openid",
    "profile",
    "email",
    "offline_access",
    "mail",
    "audit",
];
const DEFAULT_SCOPE: &str = "openid profile email mail";
/// How long a sign-in waits for others on the same account or source to finish before it is
/// counted as one too many.
const SIGN_IN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
/// An account's failures from every network together, as a multiple of its per-network limit,
/// past which networks it never signed in from are slowed down too.
const ACCOUNT_WIDE_FACTOR: u64 = 4;
/// How long a successful sign-in makes its network familiar to the account (seconds).
const FAMILIAR_FOR: i64 = 30 * 86_400;
/// What a client that is not first-party may be granted unless it was registered for more:
/// who the user is, and staying signed in. Reading mail (`mail`) and the audit log (`audit`)
/// are grants an administrator makes at registration (`--scope`), never a default: otherwise
/// any application users sign in to could read their mailbox.
const THIRD_PARTY_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// The first-party client every realm has, for Keypost's own CLI and apps.
pub const CLI_CLIENT: &str = "keypost-cli";

/// Settings of the identity service (from `keypost.toml`).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Base URL issuers are built from.
    pub public_url: String,
    /// Mail domain of the consumer realm.
    pub consumer_domain: String,
    /// Access-token lifetime, seconds.
    pub access_ttl: i64,
    /// ID-token lifetime, seconds.
    pub id_ttl: i64,
    /// Refresh-token lifetime, seconds.
    pub refresh_ttl: i64,
    /// Sign-in session lifetime, seconds.
    pub session_ttl: i64,
    /// Authorization-code lifetime, seconds.
    pub code_ttl: i64,
    /// Clock skew tolerated on token times, seconds.
    pub leeway: i64,
    /// Failed sign-ins per account within the window before sign-in is refused.
    pub max_failures_per_account: u64,
    /// Failed sign-ins per source address within the window before sign-in is refused.
    pub max_failures_per_source: u64,
    /// The throttling window, seconds.
    pub throttle_window: i64,
    /// The IPv6 prefix length that counts as one source for throttling (IPv4: one address).
    pub ipv6_prefix: u8,
    /// Proxies whose `X-Forwarded-For` names the client (audit and throttling).
    pub trusted_proxies: audit::TrustedProxies,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            consumer_domain: "keypost.test".into(),
            access_ttl: 600,
            id_ttl: 600,
            refresh_ttl: 30 * 86_400,
            session_ttl: 30 * 86_400,
            code_ttl: 60,
            leeway: 30,
            max_failures_per_account: 5,
            max_failures_per_source: 20,
            throttle_window: 900,
            ipv6_prefix: audit::DEFAULT_V6_PREFIX,
            trusted_proxies: audit::TrustedProxies::default(),
        }
    }
}

/// A client to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Realm.
    pub realm: RealmId,
    /// Client id.
    pub client_id: ClientId,
    /// Display name.
    pub name: String,
    /// Confidential (gets a secret) or public.
    pub confidential: bool,
    /// First-party: may use the password grant.
    pub first_party: bool,
    /// Redirect URIs (exact match).
    pub redirect_uris: Vec<String>,
    /// Grant types; empty means the defaults for the client kind.
    pub grant_types: Vec<String>,
    /// ID-token algorithm, if not RS256.
    pub id_token_alg: Option<Algorithm>,
    /// The scopes it may be granted; `None`: any for a first-party client, else
    /// `openid profile email offline_access`.
    pub scopes: Option<Vec<String>>,
}

/// A registered client, and its secret (shown once, never stored).
pub struct CreatedClient {
    /// The client.
    pub client: Client,
    /// The secret, for confidential clients.
    pub secret: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for CreatedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedClient")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

const GRANTS: [&str; 4] = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
];

pub(crate) fn random_b64(bytes: usize) -> Result<String, Error> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rand::fill(&mut buf).map_err(|_| Error::Keys(keys::Error::Crypto))?;
    Ok(B64.encode(&buf[..]))
}

pub(crate) fn sha256(s: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, s).as_ref().to_vec()
}

/// What a browser holds for its sign-in session: the secret in its cookie. The session's id is
/// this secret's SHA-256 ([`session_id_of`]), so the id — which tokens carry as `sid`, and the
/// audit log and admin API show — does not sign anyone in if replayed as the cookie.
pub(crate) struct SessionCookie(Zeroizing<String>);

impl SessionCookie {
    /// The cookie's value.
    pub(crate) fn value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCookie(..)")
    }
}

/// `scopes` without repeats, if each is one Keypost knows; else the first that is not.
fn known_scopes<'a>(scopes: impl Iterator<Item = &'a str>) -> Result<Vec<&'a str>, &'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in scopes {
        if !SCOPES.contains(&s) {
            return Err(s);
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// The id of the session whose cookie holds `secret`.
fn session_id_of(secret: &str) -> Option<SessionId> {
    SessionId::new(B64.encode(sha256(secret.as_bytes()))).ok()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// What a grant decided to issue, not yet minted: [`Identity::finish`] signs, records and
/// answers. Nothing in it is a token yet.
#[derive(Debug)]
pub(crate) struct Issue {
    req: MintRequest,
    /// The `TokenIssued` record, completed with the jti and kid once minted.
    event: Event,
    scope: String,
    now: UnixTime,
    /// Where the request came from, for a refusal the write may still decide.
    source: Source,
    /// For a refresh: the token it rotates (consumed in the same durable write as the new
    /// tokens), should that write find it used already.
    rotates: Option<Rotation>,
}

/// The refresh token a refresh grant presented, as the ledger had it.
#[derive(Debug)]
struct Rotation {
    jti: Jti,
    family: Option<String>,
    subject: String,
    source: Source,
}

/// Who a grant's tokens are for, as issuing them needs it: from the [`Account`] that signed
/// in, or from the [`AccountState`](store::AccountState) a refresh read (which has no password
/// hash to go stale).
struct Grantee<'a> {
    id: &'a str,
    email: &'a str,
    display_name: &'a str,
    role: Role,
}

impl<'a> From<&'a Account> for Grantee<'a> {
    fn from(a: &'a Account) -> Self {
        Self {
            id: a.id.as_str(),
            email: &a.email,
            display_name: &a.display_name,
            role: a.role,
        }
    }
}

/// The sign-in session a grant's tokens belong to.
struct SignedIn<'a> {
    id: &'a SessionId,
    auth_time: UnixTime,
}

impl<'a> From<&'a Session> for SignedIn<'a> {
    fn from(s: &'a Session) -> Self {
        Self {
            id: &s.id,
            auth_time: s.auth_time,
        }
    }
}

/// The audit record of a refresh token or authorization code refused at the token endpoint:
/// `TokenRejected`, its `reason`, and which kind of grant it was (`token_type`).
fn refused_grant_event(
    realm: &RealmId,
    client: &ClientId,
    source: &Source,
    token_type: &'static str,
    reason: &str,
) -> Event {
    Event::failure(Operation::TokenRejected)
        .realm(realm)
        .client(client.as_str())
        .source(source)
        .detail("reason", reason)
        .detail("token_type", token_type)
}

/// What a client is told of any refused refresh token (the reason goes to the audit log only).
fn refresh_refused_error() -> OAuthError {
    OAuthError::invalid_grant("invalid, expired or revoked refresh token")
}

/// What a token request decided: tokens to mint, or a refresh token refused.
#[derive(Debug)]
pub(crate) enum Decision {
    Issue(Box<Issue>),
    /// Decided without writing anything, so that the refresh grant can be decided on the
    /// request's own task; the refusal's writes are [`Identity::refuse_refresh`]'s.
    RefuseRefresh(Box<RefreshRefusal>),
}

/// A refused refresh token and what its refusal must still write: the audit record every
/// refused token gets and, for a token used a second time, its family's revocation.
#[derive(Debug)]
pub(crate) struct RefreshRefusal {
    realm: RealmId,
    client: ClientId,
    source: Source,
    jti: Option<Jti>,
    reason: &'static str,
    reused: Option<Rotation>,
    now: UnixTime,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone, serde::Serialize)]
pub(crate) struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

/// A validated authorization request, ready for sign-in.
#[derive(Debug, Clone)]
pub(crate) struct AuthRequest {
    pub(crate) realm: RealmId,
    pub(crate) client: Client,
    pub(crate) redirect_uri: String,
    pub(crate) scope: String,
    pub(crate) state: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) code_challenge: Option<String>,
    pub(crate) resource: Vec<String>,
}

/// The identity service.
pub struct Identity {
    store: Arc<dyn Store>,
    custody: Arc<Custody>,
    minter: Minter,
    audit: AuditLog,
    gate: tokens::Gate,
    cfg: IdentityConfig,
    /// Sign-ins being checked right now, which the throttle counts with recorded failures.
    signing_in: InFlight,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The service over a store and key custody, signing through `signer` (in this process,
    /// or the signer process).
    pub fn new(
        store: Arc<dyn Store>,
        custody: Arc<Custody>,
        signer: Arc<dyn keys::SignService>,
        cfg: IdentityConfig,
    ) -> Self {
        let minter = Minter::new(signer, store.clone(), cfg.public_url.clone());
        let audit = AuditLog::new(store.clone());
        let gate = tokens::Gate::new(
            store.clone(),
            custody.clone(),
            &cfg.public_url,
            cfg.access_ttl,
            cfg.leeway,
        )
        .with_ledger_cache(minter.ledger_cache());
        Self {
            store,
            custody,
            minter,
            audit,
            gate,
            cfg,
            signing_in: InFlight::default(),
        }
    }

    /// Settings.
    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Creates the keys a realm needs, where this process holds private keys; elsewhere (the
    /// web-facing `serve`) the signer process creates them.
    fn ensure_keys(&self, realm: &RealmId, now: UnixTime) -> Result<Vec<store::Kid>, keys::Error> {
        if self.custody.holds_private_keys() {
            self.custody.ensure(realm, now)
        } else {
            Ok(Vec::new())
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Key custody.
    pub fn custody(&self) -> &Custody {
        &self.custody
    }

    /// The ledger cache this service's minter fills: a resource server's gate in the same
    /// process shares it ([`tokens::Gate::with_ledger_cache`]).
    pub fn ledger_cache(&self) -> Arc<tokens::LedgerCache> {
        self.minter.ledger_cache()
    }

    /// Deletes the issuance ledger's rows no token needs any more
    /// (`LedgerStore::prune_ledger`): those of tokens that expired more than `retention` (plus
    /// the clock leeway) ago and were minted longer ago than the longest lifetime — token or
    /// sign-in session, for logout by ID-token hint — plus `retention`. Returns how many rows
    /// went. `serve` runs it every few minutes.
    ///
    /// Deleting a row costs the single writer about what inserting one does, so the pass takes
    /// small transactions and rests four times as long as each took: it never holds more than
    /// about a fifth of the writer's time, and token requests wait on none for long
    /// (BENCHMARKS.md, "Ledger pruning").
    pub fn prune_ledger(&self, retention: i64, now: UnixTime) -> Result<u64, Error> {
        /// Rows per transaction.
        const BATCH: u32 = 500;
        let c = &self.cfg;
        let longest = [c.access_ttl, c.id_ttl, c.refresh_ttl, c.session_ttl]
            .into_iter()
            .max()
            .unwrap_or(0);
        let expired_before = now.saturating_sub(retention).saturating_sub(c.leeway);
        let minted_before = expired_before.saturating_sub(longest);
        let mut pruned = 0;
        loop {
            let started = std::time::Instant::now();
            let n = self
                .store
                .prune_ledger(minted_before, expired_before, BATCH)?;
            pruned += n;
            if n < u64::from(BATCH) {
                return Ok(pruned);
            }
            store::clock::sleep(started.elapsed() * 4);
        }
    }

    /// A realm's issuer URL.
    pub fn issuer(&self, realm: &RealmId) -> String {
        issuer_for(&self.cfg.public_url, realm)
    }

    /// A realm, if it exists.
    pub fn realm(&self, id: &RealmId) -> Result<Option<Realm>, Error> {
        Ok(self.store.get_realm(id)?)
    }

    /// All realms.
    pub fn realms(&self) -> Result<Vec<Realm>, Error> {
        Ok(self.store.list_realms()?)
    }
}

#[cfg(test)]
mod tests;
