//! The identity service: realms, accounts, clients, sign-in and the OAuth grants, as plain
//! synchronous functions. The HTTP layer ([`crate::router`]) parses requests and calls these on
//! a blocking thread; the CLI calls them directly.

use std::sync::Arc;

use audit::{AuditLog, Event, Operation, Source};
use aws_lc_rs::{digest, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::{Algorithm, Custody};
use serde_json::{Value, json};
use store::{
    Account, AccountId, AccountState, AuditQuery, AuthCode, Client, ClientId, Jti, Realm, RealmId,
    RealmKind, Role, Session, SessionId, SessionState, Store, TokenKind, UnixTime,
};
use subtle::ConstantTimeEq;
use tokens::{Audience, IdTokenRequest, MintRequest, Minter, Principal, RefreshToken, issuer_for};
use zeroize::Zeroizing;

use crate::attempts::InFlight;
use crate::{Error, OAuthError, password};

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
/// in, or from the [`AccountState`] a refresh read (which has no password hash to go stale).
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

    // ---- provisioning ---------------------------------------------------------------------

    fn add_cli_client(&self, realm: &RealmId, now: UnixTime) -> Result<(), Error> {
        self.store.create_client(&Client {
            realm: realm.clone(),
            client_id: ClientId::new(CLI_CLIENT).map_err(|e| Error::Invalid(e.to_string()))?,
            name: "Keypost CLI and apps".into(),
            secret_hash: None,
            redirect_uris: vec![],
            grant_types: vec!["password".into(), "refresh_token".into()],
            first_party: true,
            id_token_alg: None,
            created_at: now,
            scopes: None,
        })?;
        Ok(())
    }

    /// Creates the consumer realm (and its keys) if it does not exist yet. Idempotent.
    pub fn ensure_consumers(&self, now: UnixTime) -> Result<(), Error> {
        let id = RealmId::consumers();
        if self.store.get_realm(&id)?.is_none() {
            self.store.create_realm(&Realm {
                id: id.clone(),
                kind: RealmKind::Consumer,
                display_name: "Keypost".into(),
                domains: vec![self.cfg.consumer_domain.to_ascii_lowercase()],
                access_token_alg: Algorithm::EdDSA.as_str().into(),
                created_at: now,
            })?;
            self.add_cli_client(&id, now)?;
        }
        self.ensure_keys(&id, now)?;
        Ok(())
    }

    /// Creates a tenant's enterprise realm with its domains, built-in client and keys.
    pub fn create_tenant(
        &self,
        slug: &str,
        name: Option<&str>,
        domains: &[String],
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<Realm, Error> {
        let id = RealmId::new(slug).map_err(|e| Error::Invalid(e.to_string()))?;
        if id.is_consumers() {
            return Err(Error::Invalid(
                "\"consumers\" is the consumer realm, not a tenant".into(),
            ));
        }
        if domains.is_empty() {
            return Err(Error::Invalid(
                "a tenant needs at least one mail domain (--domain)".into(),
            ));
        }
        let domains = domains
            .iter()
            .map(|d| normalise_domain(d))
            .collect::<Result<Vec<_>, _>>()?;
        if domains.contains(&self.cfg.consumer_domain.to_ascii_lowercase()) {
            return Err(Error::Conflict(format!(
                "domain {} (the consumer domain)",
                self.cfg.consumer_domain
            )));
        }
        let realm = Realm {
            id: id.clone(),
            kind: RealmKind::Tenant,
            display_name: name.unwrap_or(slug).to_owned(),
            domains,
            access_token_alg: alg.as_str().into(),
            created_at: now,
        };
        self.store.create_realm(&realm)?;
        self.add_cli_client(&id, now)?;
        self.ensure_keys(&id, now)?;
        self.audit.record(
            Event::success(Operation::TenantCreated)
                .realm(&id)
                .actor("cli")
                .target(slug),
            now,
        )?;
        Ok(realm)
    }

    /// The realm an address belongs to, by its domain.
    pub fn realm_of_email(&self, email: &str) -> Result<RealmId, Error> {
        let (_, domain) = email
            .rsplit_once('@')
            .ok_or_else(|| Error::Invalid(format!("{email:?} is not an email address")))?;
        self.store
            .realm_for_domain(&domain.to_ascii_lowercase())?
            .ok_or_else(|| Error::NotFound(format!("realm for domain {domain}")))
    }

    /// Creates an account; the realm follows from the address's domain.
    pub fn create_user(
        &self,
        email: &str,
        name: Option<&str>,
        pw: &str,
        role: Role,
        temporary: bool,
        now: UnixTime,
    ) -> Result<Account, Error> {
        let email = normalise_email(email)?;
        let realm = self.realm_of_email(&email)?;
        if role == Role::ProviderAdmin && !realm.is_consumers() {
            return Err(Error::Invalid(
                "provider admins live in the consumers realm".into(),
            ));
        }
        password::check_policy(pw)?;
        let account = Account {
            id: AccountId::new(random_b64(16)?).map_err(|e| Error::Invalid(e.to_string()))?,
            realm: realm.clone(),
            display_name: name
                .map(str::to_owned)
                .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned()),
            email: email.clone(),
            password_hash: password::hash(pw)?,
            disabled: false,
            role,
            created_at: now,
            must_change_password: temporary,
            credential_epoch: 0,
        };
        self.store.create_account(&account).map_err(|e| match e {
            store::Error::Conflict(_) => Error::Conflict(format!("account {email}")),
            other => other.into(),
        })?;
        self.audit.record(
            Event::success(Operation::AccountCreated)
                .realm(&realm)
                .actor("cli")
                .target(&email)
                .detail("role", role.as_str()),
            now,
        )?;
        Ok(account)
    }

    /// An account by email.
    pub fn user(&self, email: &str) -> Result<Account, Error> {
        let email = normalise_email(email)?;
        self.store
            .find_account_by_email(&email)?
            .ok_or_else(|| Error::NotFound(format!("account {email}")))
    }

    /// Accounts, optionally of one realm.
    pub fn users(&self, realm: Option<&RealmId>) -> Result<Vec<Account>, Error> {
        Ok(self.store.list_accounts(realm)?)
    }

    /// Disables an account: it cannot sign in and its tokens stop validating at once.
    pub fn disable_user(&self, email: &str, now: UnixTime) -> Result<Account, Error> {
        let a = self.user(email)?;
        self.store.set_account_disabled(&a.id, true)?;
        self.audit.record(
            Event::success(Operation::AccountDisabled)
                .realm(&a.realm)
                .actor("cli")
                .target(&a.email),
            now,
        )?;
        Ok(Account {
            disabled: true,
            ..a
        })
    }

    /// Replaces an account's password. A `temporary` one must be changed by the user at the
    /// next sign-in, before any token is issued.
    pub fn set_password(
        &self,
        email: &str,
        pw: &str,
        temporary: bool,
        now: UnixTime,
    ) -> Result<(), Error> {
        let a = self.user(email)?;
        password::check_policy(pw)?;
        // The store ends every session and token of the account in the same transaction:
        // whoever held the old password (the reason for an administrator's reset, often) may
        // hold them too, and a sign-in that checked the old password just before gets nothing.
        let change = self
            .store
            .set_password_hash(&a.id, &password::hash(pw)?, temporary, now)?;
        self.audit.record(
            Event::success(Operation::PasswordChanged)
                .realm(&a.realm)
                .actor("cli")
                .target(&a.email)
                .detail("sessions_revoked", change.sessions)
                .detail("tokens_revoked", change.tokens),
            now,
        )?;
        Ok(())
    }

    /// Registers a client. Confidential clients get a 256-bit secret, returned once.
    pub fn create_client(&self, new: NewClient, now: UnixTime) -> Result<CreatedClient, Error> {
        if self.store.get_realm(&new.realm)?.is_none() {
            return Err(Error::NotFound(format!("realm {}", new.realm)));
        }
        for u in &new.redirect_uris {
            check_redirect_uri(u)?;
        }
        let mut grants = new.grant_types.clone();
        if grants.is_empty() {
            grants = vec!["authorization_code".into(), "refresh_token".into()];
        }
        for g in &grants {
            if !GRANTS.contains(&g.as_str()) {
                return Err(Error::Invalid(format!(
                    "unknown grant type {g:?} (one of {})",
                    GRANTS.join(", ")
                )));
            }
        }
        if grants.iter().any(|g| g == "client_credentials") && !new.confidential {
            return Err(Error::Invalid(
                "client_credentials needs a confidential client (--confidential)".into(),
            ));
        }
        if grants.iter().any(|g| g == "password") && !new.first_party {
            return Err(Error::Invalid(
                "the password grant is only for first-party clients (--first-party)".into(),
            ));
        }
        if grants.iter().any(|g| g == "authorization_code") && new.redirect_uris.is_empty() {
            return Err(Error::Invalid(
                "authorization_code needs at least one --redirect-uri".into(),
            ));
        }
        let scopes = match new.scopes {
            Some(list) => Some(
                known_scopes(list.iter().flat_map(|s| s.split_ascii_whitespace()))
                    .map_err(|s| {
                        Error::Invalid(format!(
                            "unknown scope {s:?} (one of {})",
                            SCOPES.join(", ")
                        ))
                    })?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            None if new.first_party => None,
            // A backend acting as itself has no user scope to fall back on: what it may read
            // is its registration's to say.
            None if grants.iter().any(|g| g == "client_credentials") => {
                return Err(Error::Invalid(
                    "a client_credentials client needs its scopes registered (--scope mail, --scope audit)".into(),
                ));
            }
            None => Some(THIRD_PARTY_SCOPES.map(String::from).to_vec()),
        };
        let secret = if new.confidential {
            Some(Zeroizing::new(format!("kps_{}", random_b64(32)?)))
        } else {
            None
        };
        let client = Client {
            realm: new.realm.clone(),
            client_id: new.client_id.clone(),
            name: new.name,
            secret_hash: secret.as_ref().map(|s| sha256(s.as_bytes())),
            redirect_uris: new.redirect_uris,
            grant_types: grants,
            first_party: new.first_party,
            id_token_alg: new.id_token_alg.map(|a| a.as_str().to_owned()),
            created_at: now,
            scopes,
        };
        self.store.create_client(&client).map_err(|e| match e {
            store::Error::Conflict(_) => {
                Error::Conflict(format!("client {} in realm {}", new.client_id, new.realm))
            }
            other => other.into(),
        })?;
        // A client that registered another ID-token algorithm needs a key for it now.
        self.ensure_keys(&new.realm, now)?;
        self.audit.record(
            Event::success(Operation::ClientCreated)
                .realm(&new.realm)
                .actor("cli")
                .target(new.client_id.as_str()),
            now,
        )?;
        Ok(CreatedClient { client, secret })
    }

    /// On an empty installation, creates the provider admin `admin@{consumer_domain}` with a
    /// random password and returns both, to be shown once. `None` if a provider admin exists.
    pub fn bootstrap(&self, now: UnixTime) -> Result<Option<(String, Zeroizing<String>)>, Error> {
        self.ensure_consumers(now)?;
        if self.store.count_accounts_with_role(Role::ProviderAdmin)? > 0 {
            return Ok(None);
        }
        let email = format!("admin@{}", self.cfg.consumer_domain.to_ascii_lowercase());
        let pw = Zeroizing::new(random_b64(18)?);
        self.create_user(
            &email,
            Some("Provider admin"),
            &pw,
            Role::ProviderAdmin,
            true,
            now,
        )?;
        Ok(Some((email, pw)))
    }

    // ---- sign-in --------------------------------------------------------------------------

    /// Checks a username and password for `realm`, with throttling per account and per source.
    /// Every outcome is audited. The error text is safe to show.
    pub(crate) fn sign_in(
        &self,
        realm: &RealmId,
        username: &str,
        pw: &str,
        client: &ClientId,
        source: &Source,
        now: UnixTime,
    ) -> Result<Account, OAuthError> {
        let email = username.trim().to_ascii_lowercase();
        // A source counts as its network: an IPv4 address, an IPv6 prefix (a /64 unless
        // configured otherwise), within which an attacker picks new addresses at will.
        let network = source.ip.as_deref().map(|ip| {
            audit::network_key(ip, self.cfg.ipv6_prefix).unwrap_or_else(|| ip.to_owned())
        });
        // This attempt counts against the limits from now until it is recorded (or dropped):
        // the account's from this network, and the network's.
        let keys = vec![
            format!(
                "account:{email} network:{}",
                network.as_deref().unwrap_or("")
            ),
            format!("network:{}", network.as_deref().unwrap_or("")),
            format!("account:{email}"),
        ];
        let since = now - self.cfg.throttle_window;
        let failed = |actor: Option<&str>, net: Option<&str>| AuditQuery {
            operation: Some("SignInFailed".into()),
            since: Some(since),
            actor: actor.map(str::to_owned),
            source_network: net.map(str::to_owned),
            ..Default::default()
        };
        let recorded = || -> Result<[u64; 3], Error> {
            let here = self
                .audit
                .count(&failed(Some(&email), network.as_deref()))?;
            let source = match &network {
                Some(n) => self.audit.count(&failed(None, Some(n)))?,
                None => 0,
            };
            let everywhere = self.audit.count(&failed(Some(&email), None))?;
            Ok([here, source, everywhere])
        };
        let account_wide = self
            .cfg
            .max_failures_per_account
            .saturating_mul(ACCOUNT_WIDE_FACTOR);
        let limits = [
            self.cfg.max_failures_per_account,
            self.cfg.max_failures_per_source,
            account_wide,
        ];
        // While the attempts in progress could still use up what the limits allow, this one
        // waits for them (a short while) and reads the failures again: guesses sent at once
        // are checked no faster than in turn, and correct passwords sent at once are only
        // delayed, not refused.
        let patience = std::time::Instant::now();
        let (_attempt, [per_account, per_source, everywhere], running) = loop {
            // Registered before the failures are read: an attempt that ends in between has
            // recorded its failure by then (it records, then ends), so nothing is missed.
            let (attempt, running) = self.signing_in.begin(keys.clone());
            let recorded = recorded().map_err(OAuthError::from)?;
            let exhausted = (0..keys.len()).any(|i| recorded[i] >= limits[i]);
            let room = (0..keys.len()).all(|i| recorded[i] + running[i] < limits[i]);
            if exhausted || room || patience.elapsed() >= SIGN_IN_PATIENCE {
                let counted = [0, 1, 2].map(|i| recorded[i] + running[i]);
                break (attempt, counted, running);
            }
            drop(attempt);
            self.signing_in.wait(SIGN_IN_PATIENCE / 20);
        };
        let ev = |op| {
            let mut e = Event::failure(op)
                .realm(realm)
                .actor(email.clone())
                .source(source)
                .client(client.as_str());
            if let Some(n) = &network {
                e = e.detail("source_network", n.clone());
            }
            e
        };
        let throttled = |retry_in: Option<i64>| -> Result<Account, OAuthError> {
            self.audit
                .record(
                    ev(Operation::SignInThrottled)
                        .detail("account_failures", per_account)
                        .detail("source_failures", per_source)
                        .detail("retry_in", retry_in),
                    now,
                )
                .map_err(Error::from)?;
            Err(OAuthError::invalid_grant(match retry_in {
                Some(s) => format!("too many failed sign-in attempts; try again in {s} s"),
                None => "too many failed sign-in attempts; try again later".to_owned(),
            }))
        };
        // A network that guessed too often is refused outright for the window.
        if per_source >= self.cfg.max_failures_per_source {
            return throttled(None);
        }
        // An account is never locked for everyone: past its limit, this network may try again
        // only after a delay that doubles with each further failure from it (one attempt at a
        // time), while its owner signs in from their own network as usual.
        let backoff = |count: u64, limit: u64, others: u64, net: Option<&str>| {
            let excess = count - limit;
            let delay = (1i64 << excess.min(20)).min(self.cfg.throttle_window);
            let last = self
                .store
                .latest_audit_time(&failed(Some(&email), net))
                .map_err(Error::from)?
                .unwrap_or(since);
            Ok::<_, OAuthError>(
                (others > 0 || now < last + delay).then(|| (last + delay - now).max(1)),
            )
        };
        if per_account >= self.cfg.max_failures_per_account
            && let Some(wait) = backoff(
                per_account,
                self.cfg.max_failures_per_account,
                running[0],
                network.as_deref(),
            )?
        {
            return throttled(Some(wait));
        }
        // Guesses spread over many networks meet a limit of the account's as a whole, but
        // only where the account has not signed in before: from a network it knows, its owner
        // keeps only that network's own limit.
        if everywhere >= account_wide
            && !self.familiar(&email, network.as_deref(), now)?
            && let Some(wait) = backoff(everywhere, account_wide, running[2], None)?
        {
            return throttled(Some(wait));
        }
        let account = self
            .store
            .find_account_by_email(&email)
            .map_err(Error::from)?;
        let reason = match &account {
            None => {
                password::verify_dummy(pw);
                "unknown account"
            }
            Some(a) if &a.realm != realm => {
                password::verify_dummy(pw);
                "account belongs to another realm"
            }
            Some(a) if !password::verify(pw, &a.password_hash) => "wrong password",
            Some(a) if a.disabled => "account disabled",
            Some(a) => {
                let mut succeeded = Event::success(Operation::SignInSucceeded)
                    .realm(realm)
                    .actor(email.clone())
                    .source(source)
                    .client(client.as_str())
                    .target(a.id.as_str());
                if let Some(n) = &network {
                    succeeded = succeeded.detail("source_network", n.clone());
                }
                self.audit.record(succeeded, now).map_err(Error::from)?;
                return Ok(a.clone());
            }
        };
        self.audit
            .record(ev(Operation::SignInFailed).detail("reason", reason), now)
            .map_err(Error::from)?;
        Err(OAuthError::invalid_grant("invalid username or password"))
    }

    /// Whether `email` signed in successfully from `network` within [`FAMILIAR_FOR`].
    fn familiar(
        &self,
        email: &str,
        network: Option<&str>,
        now: UnixTime,
    ) -> Result<bool, OAuthError> {
        let Some(network) = network else {
            return Ok(false);
        };
        Ok(self
            .store
            .audit_exists(&AuditQuery {
                operation: Some("SignInSucceeded".into()),
                actor: Some(email.to_owned()),
                source_network: Some(network.to_owned()),
                since: Some(now - FAMILIAR_FOR),
                ..Default::default()
            })
            .map_err(Error::from)?)
    }

    /// Replaces a password at sign-in (a temporary one, or by the user's choice): checks the
    /// current password with the usual throttling, then the new one against the policy.
    #[allow(clippy::too_many_arguments)] // The form's fields plus the request context.
    pub(crate) fn change_password_at_sign_in(
        &self,
        realm: &RealmId,
        username: &str,
        current: &str,
        new: &str,
        confirm: &str,
        client: &ClientId,
        source: &Source,
        now: UnixTime,
    ) -> Result<Account, OAuthError> {
        let account = self.sign_in(realm, username, current, client, source, now)?;
        if new != confirm {
            return Err(OAuthError::invalid_request(
                "the new passwords do not match",
            ));
        }
        if new == current {
            return Err(OAuthError::invalid_request(
                "choose a password different from the current one",
            ));
        }
        password::check_policy(new).map_err(|e| OAuthError::invalid_request(e.to_string()))?;
        let change = self
            .store
            .set_password_hash(&account.id, &password::hash(new)?, false, now)
            .map_err(Error::from)?;
        self.audit
            .record(
                Event::success(Operation::PasswordChanged)
                    .realm(realm)
                    .detail("sessions_revoked", change.sessions)
                    .detail("tokens_revoked", change.tokens)
                    .actor(account.email.clone())
                    .target(account.email.clone())
                    .source(source)
                    .detail("at_sign_in", true),
                now,
            )
            .map_err(Error::from)?;
        Ok(Account {
            must_change_password: false,
            credential_epoch: change.epoch,
            ..account
        })
    }

    /// A new sign-in session for `account` as its sign-in found it, and the cookie that
    /// proves it to a browser. Refused ([`store::Error::CredentialsChanged`]) if the
    /// account's password changed or it was disabled since.
    pub(crate) fn new_session(
        &self,
        realm: &RealmId,
        account: &Account,
        now: UnixTime,
    ) -> Result<(Session, SessionCookie), Error> {
        // 256 bits of secret, in the cookie only.
        let secret = Zeroizing::new(random_b64(32)?);
        let id = session_id_of(&secret).ok_or_else(|| Error::Invalid("session id".into()))?;
        let s = Session {
            id,
            realm: realm.clone(),
            account: account.id.clone(),
            auth_time: now,
            expires_at: now + self.cfg.session_ttl,
            revoked_at: None,
            credential_epoch: account.credential_epoch,
        };
        self.store.create_session(&s)?;
        Ok((s, SessionCookie(secret)))
    }

    /// The live session of `realm` whose browser cookie holds `cookie`.
    pub(crate) fn live_session(
        &self,
        realm: &RealmId,
        cookie: &str,
        now: UnixTime,
    ) -> Option<(Session, Account)> {
        let sid = session_id_of(cookie)?;
        let s = self.store.get_session(&sid).ok()??;
        if &s.realm != realm || s.revoked_at.is_some() || s.expires_at <= now {
            return None;
        }
        let a = self.store.get_account(&s.account).ok()??;
        // A temporary password set since the session began must be replaced first; a
        // session from before the account's last credential change vouches for nothing.
        (!a.disabled && !a.must_change_password && a.credential_epoch == s.credential_epoch)
            .then_some((s, a))
    }

    // ---- clients --------------------------------------------------------------------------

    /// A client of a realm.
    pub(crate) fn client(&self, realm: &RealmId, id: &str) -> Option<Client> {
        let id = ClientId::new(id).ok()?;
        self.store.get_client(realm, &id).ok()?
    }

    /// Authenticates a client at the token or revocation endpoint. Public clients present only
    /// their id; confidential ones must present their secret.
    pub(crate) fn authenticate_client(
        &self,
        realm: &RealmId,
        id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        let fail = || OAuthError::invalid_client(realm.as_str());
        let client = id.and_then(|id| self.client(realm, id)).ok_or_else(fail)?;
        match (&client.secret_hash, secret) {
            (None, None) => Ok(client),
            (Some(h), Some(s)) if ct_eq(h, &sha256(s.as_bytes())) => Ok(client),
            _ => Err(fail()),
        }
    }

    // ---- grants ---------------------------------------------------------------------------

    /// The scope `client` asked for, checked: scopes Keypost knows, each registered for the
    /// client. Asking for none gets the default, as far as the client is registered for it.
    fn scope(&self, client: &Client, requested: Option<&str>) -> Result<String, OAuthError> {
        let Some(requested) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            let default: Vec<&str> = DEFAULT_SCOPE
                .split(' ')
                .filter(|s| client.may_have(s))
                .collect();
            return Ok(default.join(" "));
        };
        let out = known_scopes(requested.split_ascii_whitespace())
            .map_err(|s| OAuthError::invalid_scope(format!("unknown scope {s:?}")))?;
        if let Some(s) = out.iter().find(|s| !client.may_have(s)) {
            return Err(OAuthError::invalid_scope(format!(
                "the client is not registered for the scope {s:?}"
            )));
        }
        Ok(out.join(" "))
    }

    /// RFC 8707: `resource` values choose the audience; none means the mail service and
    /// userinfo (the admin API must be asked for by name).
    fn audience(&self, resources: &[String]) -> Result<Vec<String>, OAuthError> {
        if resources.is_empty() {
            return Ok(Audience::DEFAULT
                .iter()
                .map(|a| a.uri(&self.cfg.public_url))
                .collect());
        }
        resources
            .iter()
            .map(|r| {
                Audience::from_uri(&self.cfg.public_url, r)
                    .map(|a| a.uri(&self.cfg.public_url))
                    .ok_or_else(|| OAuthError::invalid_target(format!("unknown resource {r:?}")))
            })
            .collect()
    }

    fn realm_alg(&self, realm: &RealmId) -> Result<Algorithm, OAuthError> {
        let r = self
            .store
            .get_realm(realm)
            .map_err(Error::from)?
            .ok_or_else(OAuthError::unknown_realm)?;
        r.access_token_alg
            .parse::<Algorithm>()
            .map_err(|e| Error::from(e).into())
    }

    #[allow(clippy::too_many_arguments)] // One grant's full context; a struct would only rename it.
    fn issue(
        &self,
        realm: &RealmId,
        client: &Client,
        account: Option<Grantee<'_>>,
        session: Option<SignedIn<'_>>,
        scope: String,
        audience: Vec<String>,
        nonce: Option<String>,
        family: Option<String>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        let has = |s: &str| scope.split(' ').any(|x| x == s);
        // Reading the audit log is for admins only: a tenant admin (their tenant) or a
        // provider admin (all).
        if has("audit")
            && !account
                .as_ref()
                .is_some_and(|a| matches!(a.role, Role::TenantAdmin | Role::ProviderAdmin))
        {
            return Err(OAuthError::invalid_scope(
                "the audit scope is for admin accounts".to_owned(),
            ));
        }
        let wants_refresh = account.is_some()
            && has("offline_access")
            && client.grant_types.iter().any(|g| g == "refresh_token");
        let id_token = match &account {
            Some(a) if has("openid") => Some(IdTokenRequest {
                alg: client
                    .id_token_alg
                    .as_deref()
                    .and_then(Algorithm::from_jose)
                    .unwrap_or(Algorithm::RS256),
                ttl: self.cfg.id_ttl,
                auth_time: session.as_ref().map_or(now, |s| s.auth_time),
                nonce,
                email: has("email").then(|| a.email.to_owned()),
                name: has("profile").then(|| a.display_name.to_owned()),
            }),
            _ => None,
        };
        let req = MintRequest {
            realm: realm.clone(),
            access_alg: self.realm_alg(realm)?,
            subject: account
                .as_ref()
                .map_or_else(|| client.client_id.to_string(), |a| a.id.to_owned()),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            audience,
            session: session.map(|s| s.id.clone()),
            access_ttl: self.cfg.access_ttl,
            id_token,
            refresh: wants_refresh.then_some(self.cfg.refresh_ttl),
            family,
            rotates: None,
        };
        let actor = account.map_or_else(|| client.client_id.to_string(), |a| a.email.to_owned());
        let event = Event::success(Operation::TokenIssued)
            .realm(realm)
            .actor(actor)
            .source(source)
            .client(client.client_id.as_str())
            .detail("scope", scope.clone());
        Ok(Issue {
            req,
            event,
            scope,
            now,
            source: source.clone(),
            rotates: None,
        })
    }

    /// Mints what a grant decided ([`Issue`]): the signatures and the durable ledger write
    /// are awaited, so no thread is parked on the signer process or the commit. The ledger
    /// rows and the `TokenIssued` record commit together, before the response exists.
    ///
    /// A refresh runs to its end on a task of its own, even if the client goes away: its
    /// write may find the presented token consumed by a racing use, and that reuse must be
    /// answered (family revoked, audited) whether or not anyone still waits for the response.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        issue: Issue,
    ) -> Result<TokenResponse, OAuthError> {
        if issue.rotates.is_none() {
            return self.mint_issue(issue).await;
        }
        let this = self.clone();
        tokio::spawn(async move { this.mint_issue(issue).await })
            .await
            .unwrap_or_else(|e| Err(e.into()))
    }

    async fn mint_issue(self: &Arc<Self>, issue: Issue) -> Result<TokenResponse, OAuthError> {
        let Issue {
            req,
            event,
            scope,
            now,
            source,
            rotates,
        } = issue;
        let audit = |issued: &tokens::Issued| {
            let event = event
                .jti(issued.access_jti.as_str())
                .kid(issued.kid.as_str())
                .detail("refresh", issued.refresh_token.is_some())
                .detail("id_token", issued.id_token.is_some());
            vec![AuditLog::prepare(event, now)]
        };
        let issued = match (self.minter.mint_async(&req, now, audit).await, rotates) {
            (Ok(issued), _) => issued,
            (Err(tokens::Error::Ledger(store::Error::Consumed(_))), Some(rotation)) => {
                // The refresh token was used between the grant's read and this write: a
                // concurrent second use, handled like any other reuse.
                let refusal = RefreshRefusal {
                    realm: req.realm,
                    client: req.client_id,
                    source: rotation.source.clone(),
                    jti: Some(rotation.jti.clone()),
                    reason: "RefreshTokenReused",
                    reused: Some(rotation),
                    now,
                };
                return Err(self.refuse_refresh(Box::new(refusal)).await);
            }
            (Err(tokens::Error::Ledger(store::Error::FamilyRevoked(_))), rotates) => {
                // The family was revoked after the grant was decided (a reuse raced this
                // refresh, an operator revoked the grant): nothing was issued.
                let Some(rotation) = rotates else {
                    // Without a rotation, only a code exchange issues into a family that
                    // exists already (the code's): a replay of the code revoked it meanwhile.
                    let this = self.clone();
                    let answer = tokio::task::spawn_blocking(move || {
                        let ev = refused_grant_event(
                            &req.realm,
                            &req.client_id,
                            &source,
                            "authorization_code",
                            "TokenRevoked",
                        );
                        match this.audit.record(ev.target(req.subject), now) {
                            Ok(_) => OAuthError::invalid_grant("the grant has been revoked"),
                            Err(e) => Error::from(e).into(),
                        }
                    })
                    .await;
                    return Err(answer.unwrap_or_else(OAuthError::from));
                };
                let refusal = RefreshRefusal {
                    realm: req.realm,
                    client: req.client_id,
                    source: rotation.source,
                    jti: Some(rotation.jti),
                    reason: "TokenRevoked",
                    reused: None,
                    now,
                };
                return Err(self.refuse_refresh(Box::new(refusal)).await);
            }
            (Err(e), _) => {
                tracing::error!(error = %e, realm = %req.realm, "minting failed; nothing was issued");
                return Err(OAuthError::unavailable());
            }
        };
        Ok(TokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer",
            expires_in: issued.expires_in,
            scope,
            refresh_token: issued.refresh_token,
            id_token: issued.id_token,
        })
    }

    fn require_grant(client: &Client, grant: &str) -> Result<(), OAuthError> {
        if client.grant_types.iter().any(|g| g == grant) {
            Ok(())
        } else {
            Err(OAuthError::unauthorized_client(format!(
                "client may not use the {grant} grant"
            )))
        }
    }

    /// The password grant, for first-party clients only.
    #[allow(clippy::too_many_arguments)] // The grant's parameters, as RFC 6749 §4.3.2 names them.
    pub(crate) fn grant_password(
        &self,
        realm: &RealmId,
        client: &Client,
        username: &str,
        pw: &str,
        scope: Option<&str>,
        resources: &[String],
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        if !client.first_party {
            return Err(OAuthError::unauthorized_client(
                "the password grant is only for first-party clients",
            ));
        }
        Self::require_grant(client, "password")?;
        let scope = self.scope(client, scope)?;
        let audience = self.audience(resources)?;
        let account = self.sign_in(realm, username, pw, &client.client_id, source, now)?;
        if account.must_change_password {
            return Err(OAuthError::invalid_grant(
                "the password is temporary and must be changed first: sign in through the browser",
            ));
        }
        // No browser here: the session's cookie is never handed out.
        let (session, _) = self.new_session(realm, &account, now)?;
        self.issue(
            realm,
            client,
            Some((&account).into()),
            Some((&session).into()),
            scope,
            audience,
            None,
            None,
            source,
            now,
        )
    }

    /// The client-credentials grant, for confidential clients acting for themselves.
    pub(crate) fn grant_client_credentials(
        &self,
        realm: &RealmId,
        client: &Client,
        scope: Option<&str>,
        resources: &[String],
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        if client.secret_hash.is_none() {
            return Err(OAuthError::unauthorized_client(
                "client_credentials needs a confidential client",
            ));
        }
        Self::require_grant(client, "client_credentials")?;
        let scope = self.scope(client, Some(scope.unwrap_or("mail")))?;
        if scope
            .split(' ')
            .any(|s| matches!(s, "openid" | "offline_access" | "profile" | "email"))
        {
            return Err(OAuthError::invalid_scope(
                "user scopes are not available without a user",
            ));
        }
        let audience = self.audience(resources)?;
        self.issue(
            realm, client, None, None, scope, audience, None, None, source, now,
        )
    }

    /// Validates an authorization request (the parts that decide whether we may redirect at
    /// all come first: an unknown client or redirect URI is shown as a page, never redirected).
    pub(crate) fn check_authorize(
        &self,
        realm: &RealmId,
        p: &crate::http::AuthorizeParams,
    ) -> Result<AuthRequest, AuthorizeError> {
        let client = p
            .client_id
            .as_deref()
            .and_then(|c| self.client(realm, c))
            .ok_or(AuthorizeError::Page("unknown client"))?;
        let redirect_uri = p
            .redirect_uri
            .clone()
            .ok_or(AuthorizeError::Page("redirect_uri is required"))?;
        if !client.redirect_uris.iter().any(|u| u == &redirect_uri) {
            return Err(AuthorizeError::Page(
                "redirect_uri is not registered for this client",
            ));
        }
        let redirect = |code: &'static str, d: &str| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            error: code,
            description: d.to_owned(),
            state: p.state.clone(),
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(redirect(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        if !client.grant_types.iter().any(|g| g == "authorization_code") {
            return Err(redirect(
                "unauthorized_client",
                "client may not use the authorization code flow",
            ));
        }
        match (
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        ) {
            (None, _) if client.secret_hash.is_none() => {
                return Err(redirect(
                    "invalid_request",
                    "PKCE (code_challenge, S256) is required for public clients",
                ));
            }
            (Some(_), m) if m != Some("S256") => {
                return Err(redirect(
                    "invalid_request",
                    "code_challenge_method must be S256",
                ));
            }
            (Some(c), _) if c.len() != 43 || B64.decode(c).is_err() => {
                return Err(redirect(
                    "invalid_request",
                    "code_challenge must be a base64url SHA-256",
                ));
            }
            _ => {}
        }
        let scope = self
            .scope(&client, p.scope.as_deref())
            .map_err(|e| redirect("invalid_scope", &e.description))?;
        self.audience(&p.resource)
            .map_err(|e| redirect("invalid_target", &e.description))?;
        Ok(AuthRequest {
            realm: realm.clone(),
            client,
            redirect_uri,
            scope,
            state: p.state.clone(),
            nonce: p.nonce.clone(),
            code_challenge: p.code_challenge.clone(),
            resource: p.resource.clone(),
        })
    }

    /// Issues an authorization code for a signed-in session; returns the code.
    pub(crate) fn issue_code(
        &self,
        req: &AuthRequest,
        session: &Session,
        now: UnixTime,
    ) -> Result<String, Error> {
        let code = random_b64(32)?;
        self.store.create_auth_code(&AuthCode {
            code_hash: sha256(code.as_bytes()),
            realm: req.realm.clone(),
            client_id: req.client.client_id.clone(),
            account: session.account.clone(),
            session_id: session.id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            scope: req.scope.clone(),
            nonce: req.nonce.clone(),
            code_challenge: req.code_challenge.clone(),
            resource: req.resource.clone(),
            created_at: now,
            expires_at: now + self.cfg.code_ttl,
            used_at: None,
            family_id: None,
        })?;
        Ok(code)
    }

    /// The authorization-code grant, with PKCE and code-replay detection.
    #[allow(clippy::too_many_arguments)] // The grant's parameters, as RFC 6749 §4.1.3 names them.
    pub(crate) fn grant_code(
        &self,
        realm: &RealmId,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Issue, OAuthError> {
        Self::require_grant(client, "authorization_code")?;
        let bad =
            || OAuthError::invalid_grant("invalid, expired or already used authorization code");
        // Every refusal is audited with its reason, as a refused refresh token is; the client
        // is told only `invalid_grant` and what it can mend (PKCE, redirect_uri).
        let refuse = |reason: &'static str, account: Option<&AccountId>, answer: OAuthError| {
            let mut ev = refused_grant_event(
                realm,
                &client.client_id,
                source,
                "authorization_code",
                reason,
            );
            if let Some(account) = account {
                ev = ev.target(account.as_str());
            }
            match self.audit.record(ev, now) {
                Ok(_) => answer,
                Err(e) => Error::from(e).into(),
            }
        };
        // RFC 6749 §4.1.2: a replayed code revokes what it issued, wherever it is presented:
        // whoever presents it holds a copy. Through another tenant, the code's own client is
        // named (not the presenter), and the presenter learns only that the code is unknown.
        let replayed = |c: &AuthCode| -> OAuthError {
            let elsewhere = &c.realm != realm;
            if let Some(f) = &c.family_id
                && let Err(e) = self.store.revoke_family(f, now)
            {
                return Error::from(e).into();
            }
            let named = if elsewhere {
                &c.client_id
            } else {
                &client.client_id
            };
            let ev = Event::failure(Operation::AuthCodeReused)
                .realm(&c.realm)
                .client(named.as_str())
                .source(source)
                .target(c.account.as_str())
                .detail("presented_elsewhere", elsewhere);
            if let Err(e) = self.audit.record(ev, now) {
                return Error::from(e).into();
            }
            if elsewhere {
                refuse("CodeUnknown", None, bad())
            } else {
                bad()
            }
        };
        let hash = sha256(code.as_bytes());
        // Read, not used up: a code whose client or PKCE check fails stays good for the
        // client it was issued to (whoever holds a copy must not be able to burn it).
        let Some(c) = self.store.get_auth_code(&hash).map_err(Error::from)? else {
            return Err(refuse("CodeUnknown", None, bad()));
        };
        // Another realm's code is, to this realm, no code at all: refused as unknown here,
        // naming nobody. What it means is recorded in the realm whose user it was, under the
        // code's own client (the presenter's belongs to another tenant).
        let elsewhere = &c.realm != realm;
        if c.used_at.is_some() {
            return Err(replayed(&c));
        }
        if elsewhere {
            let ev = refused_grant_event(
                &c.realm,
                &c.client_id,
                source,
                "authorization_code",
                "CodeRealmMismatch",
            );
            self.audit
                .record(ev.target(c.account.as_str()), now)
                .map_err(Error::from)?;
            return Err(refuse("CodeUnknown", None, bad()));
        }
        let account = Some(&c.account);
        if c.client_id != client.client_id {
            return Err(refuse("CodeClientMismatch", account, bad()));
        }
        if c.expires_at <= now {
            return Err(refuse("CodeExpired", account, bad()));
        }
        if redirect_uri != Some(c.redirect_uri.as_str()) {
            let answer =
                OAuthError::invalid_grant("redirect_uri does not match the authorization request");
            return Err(refuse("RedirectUriMismatch", account, answer));
        }
        match (&c.code_challenge, verifier) {
            (Some(challenge), Some(v)) => {
                let ok_shape = (43..=128).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok_shape
                    || !ct_eq(
                        challenge.as_bytes(),
                        B64.encode(sha256(v.as_bytes())).as_bytes(),
                    )
                {
                    let answer = OAuthError::invalid_grant("PKCE verification failed");
                    return Err(refuse("PkceFailed", account, answer));
                }
            }
            (Some(_), None) => {
                let answer = OAuthError::invalid_grant("code_verifier is required");
                return Err(refuse("PkceVerifierMissing", account, answer));
            }
            // A verifier without a challenge is a downgrade attempt (RFC 9700 §2.1.1).
            (None, Some(_)) => {
                let answer = OAuthError::invalid_grant("no code_challenge was sent for this code");
                return Err(refuse("PkceDowngrade", account, answer));
            }
            (None, None) => {}
        }
        let Some(session) = self
            .store
            .get_session(&c.session_id)
            .map_err(Error::from)?
            .filter(|s| s.revoked_at.is_none() && s.expires_at > now)
        else {
            return Err(refuse("SessionRevoked", account, bad()));
        };
        let Some(account) = self
            .store
            .get_account(&c.account)
            .map_err(Error::from)?
            .filter(|a| !a.disabled)
        else {
            return Err(refuse("AccountDisabled", account, bad()));
        };
        let audience = self.audience(&c.resource)?;
        // Used up now, with the family its tokens will join recorded in the same write: a
        // replay from here on revokes that family, and a replay that won the race makes this
        // exchange the replay.
        let family = random_b64(16).map_err(OAuthError::from)?;
        if !self
            .store
            .consume_auth_code(&hash, now, &family)
            .map_err(Error::from)?
        {
            let c = self
                .store
                .get_auth_code(&hash)
                .map_err(Error::from)?
                .unwrap_or(c);
            return Err(replayed(&c));
        }
        self.issue(
            realm,
            client,
            Some((&account).into()),
            Some((&session).into()),
            c.scope,
            audience,
            c.nonce,
            Some(family),
            source,
            now,
        )
    }

    /// Checks a presented refresh token; reads only. The inner error names why it was refused
    /// (for the audit log; the client only ever sees `invalid_grant`) and, for a token used
    /// before, the rotation whose family [`Identity::refuse_refresh`] revokes.
    #[allow(clippy::type_complexity)] // Outer: the service failed; inner: the token was refused.
    fn check_refresh(
        &self,
        realm: &RealmId,
        client: &Client,
        token: &str,
        source: &Source,
        now: UnixTime,
    ) -> Result<
        Result<
            (store::LedgerEntry, Option<SessionState>, AccountState),
            (&'static str, Option<Rotation>),
        >,
        OAuthError,
    > {
        let refused = |reason| Ok(Err((reason, None)));
        let Some(rt) = RefreshToken::parse(token) else {
            return refused("Malformed");
        };
        let view = self
            .minter
            .cache()
            .refresh_view(&*self.store, &rt.jti, realm, &client.client_id)
            .map_err(Error::from)?;
        let Some(e) = view.entry else {
            return refused("NotIssued");
        };
        if !ct_eq(&e.token_hash, &tokens::token_hash(token)) || e.kind != TokenKind::Refresh {
            return refused("LedgerMismatch");
        }
        if &e.realm != realm {
            return refused("TenantMismatch");
        }
        if e.client_id != client.client_id {
            return refused("ClientMismatch");
        }
        if e.revoked_at.is_some() {
            return refused("TokenRevoked");
        }
        if e.expires_at <= now {
            return refused("Expired");
        }
        // Rotation marks it used in the same write as its successors (a second use that
        // races this one is caught there, in `finish`).
        if e.used_at.is_some() {
            let rotation = Rotation {
                jti: rt.jti.clone(),
                family: e.family_id.clone(),
                subject: e.subject.clone(),
                source: source.clone(),
            };
            return Ok(Err(("RefreshTokenReused", Some(rotation))));
        }
        let session = match (&e.session_id, view.session) {
            (None, _) => None,
            (Some(_), Some(s))
                if &s.realm == realm && s.revoked_at.is_none() && s.expires_at > now =>
            {
                Some(s)
            }
            (Some(_), _) => return refused("SessionRevoked"),
        };
        match view.account {
            Some(a) if !a.disabled && &a.realm == realm => Ok(Ok((e, session, a))),
            _ => refused("AccountDisabled"),
        }
    }

    /// The refresh-token grant: rotation, and reuse detection that revokes the whole family.
    /// Reads only: a refused token comes back as a [`Decision::RefuseRefresh`], whose writes
    /// are [`Identity::refuse_refresh`]'s.
    pub(crate) fn grant_refresh(
        &self,
        realm: &RealmId,
        client: &Client,
        token: &str,
        scope: Option<&str>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Decision, OAuthError> {
        Self::require_grant(client, "refresh_token")?;
        let (e, session, account) = match self.check_refresh(realm, client, token, source, now)? {
            Ok(ok) => ok,
            Err((reason, reused)) => {
                return Ok(Decision::RefuseRefresh(Box::new(RefreshRefusal {
                    realm: realm.clone(),
                    client: client.client_id.clone(),
                    source: source.clone(),
                    jti: RefreshToken::parse(token).map(|rt| rt.jti),
                    reason,
                    reused,
                    now,
                })));
            }
        };
        // A refresh may narrow the scope, never widen it.
        let granted: Vec<&str> = e.scope.split(' ').collect();
        let scope = match scope {
            Some(s) if !s.trim().is_empty() => {
                let s = self.scope(client, Some(s))?;
                if s.split(' ').any(|x| !granted.contains(&x)) {
                    return Err(OAuthError::invalid_scope("a refresh cannot add scopes"));
                }
                s
            }
            _ => e.scope.clone(),
        };
        let audience = e.audience.split(' ').map(str::to_owned).collect();
        let grantee = Grantee {
            id: &e.subject,
            email: &account.email,
            display_name: &account.display_name,
            role: account.role,
        };
        let signed_in = match (&e.session_id, &session) {
            (Some(id), Some(s)) => Some(SignedIn {
                id,
                auth_time: s.auth_time,
            }),
            _ => None,
        };
        let mut issue = self.issue(
            realm,
            client,
            Some(grantee),
            signed_in,
            scope,
            audience,
            None,
            e.family_id.clone(),
            source,
            now,
        )?;
        issue.req.rotates = Some(e.jti.clone());
        issue.rotates = Some(Rotation {
            jti: e.jti,
            family: e.family_id,
            subject: e.subject,
            source: source.clone(),
        });
        Ok(Decision::Issue(Box::new(issue)))
    }

    /// Writes what a refused refresh token leaves behind — for a reused token its family's
    /// revocation (audited as `RefreshTokenReused`), then the `TokenRejected` record with its
    /// reason — on the blocking pool (durable writes), and returns what the client is told.
    pub(crate) async fn refuse_refresh(self: &Arc<Self>, r: Box<RefreshRefusal>) -> OAuthError {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_refusal(r))
            .await
            .unwrap_or_else(OAuthError::from)
    }

    fn write_refusal(&self, r: Box<RefreshRefusal>) -> OAuthError {
        let written = r
            .reused
            .as_ref()
            .map_or(Ok(()), |used| {
                self.refresh_reused(&r.realm, &r.client, used, r.now)
            })
            .and_then(|()| {
                self.refresh_refused(
                    &r.realm,
                    &r.client,
                    &r.source,
                    r.jti.as_ref(),
                    r.reason,
                    r.now,
                )
            });
        written.err().unwrap_or_else(refresh_refused_error)
    }

    /// A refresh token presented a second time: the client or a thief holds a copy, so its
    /// whole family is revoked (audited as `RefreshTokenReused`).
    fn refresh_reused(
        &self,
        realm: &RealmId,
        client: &ClientId,
        used: &Rotation,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        let revoked = match &used.family {
            Some(f) => self.store.revoke_family(f, now).map_err(Error::from)?,
            None => false,
        };
        self.audit
            .record(
                Event::failure(Operation::RefreshTokenReused)
                    .realm(realm)
                    .client(client.as_str())
                    .source(&used.source)
                    .jti(used.jti.as_str())
                    .target(used.subject.clone())
                    .detail("family", used.family.clone())
                    .detail("family_newly_revoked", revoked),
                now,
            )
            .map_err(Error::from)?;
        Ok(())
    }

    /// Audits a refused refresh token with its reason, as every refused token is.
    fn refresh_refused(
        &self,
        realm: &RealmId,
        client: &ClientId,
        source: &Source,
        jti: Option<&Jti>,
        reason: &str,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        let mut ev = refused_grant_event(realm, client, source, "refresh_token", reason);
        if let Some(jti) = jti {
            ev = ev.jti(jti.as_str());
        }
        self.audit.record(ev, now).map_err(Error::from)?;
        Ok(())
    }

    // ---- resource side --------------------------------------------------------------------

    /// Writes the summaries of refused-token windows that ended ([`tokens::Gate`]).
    pub fn flush_refusal_summaries(&self, now: UnixTime) -> Result<usize, tokens::GateError> {
        self.gate.flush_refusal_summaries(now)
    }

    /// Writes every refused-token summary, ended or not (at shutdown).
    pub fn flush_all_refusal_summaries(&self, now: UnixTime) -> Result<usize, tokens::GateError> {
        self.gate.flush_all_refusal_summaries(now)
    }

    /// The one token edge ([`tokens::Gate::authenticate`], which audits every refusal), in
    /// OAuth's error form: `challenge` names the protected resource in `WWW-Authenticate`.
    pub(crate) fn authenticate(
        &self,
        presented: tokens::Presentation<'_>,
        access: &tokens::Access<'_>,
        challenge: &str,
    ) -> Result<Principal, OAuthError> {
        match self.gate.authenticate(presented, access) {
            Ok(a) => Ok(a.principal),
            Err(tokens::GateError::NoCredential) => Err(OAuthError::no_token(challenge)),
            Err(tokens::GateError::Rejected(tokens::Rejection::InsufficientScope)) => Err(
                OAuthError::insufficient_scope(challenge, access.scope.unwrap_or_default()),
            ),
            Err(tokens::GateError::Rejected(_)) => Err(OAuthError::invalid_token(challenge)),
            Err(other) => {
                tracing::error!(error = %other, "bearer validation unavailable");
                Err(OAuthError::unavailable())
            }
        }
    }

    /// OIDC userinfo for a validated principal.
    pub(crate) fn userinfo(&self, p: &Principal) -> Result<Value, OAuthError> {
        let mut out = json!({"sub": p.subject()});
        if let Some(id) = p.account() {
            let a = self
                .store
                .get_account(&id)
                .map_err(Error::from)?
                .ok_or_else(|| OAuthError::invalid_token(p.realm().as_str()))?;
            if p.has_scope("email") {
                out["email"] = json!(a.email);
                out["email_verified"] = json!(true);
            }
            if p.has_scope("profile") {
                out["name"] = json!(a.display_name);
                out["preferred_username"] = json!(a.email);
            }
        }
        Ok(out)
    }

    /// RFC 7009 revocation. Unknown or foreign tokens are ignored (the response is the same).
    pub(crate) fn revoke(
        &self,
        realm: &RealmId,
        client: &Client,
        token: &str,
        source: &Source,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        let jti = match RefreshToken::parse(token) {
            Some(rt) => Some(rt.jti),
            // An access or ID token: find its jti without trusting anything else in it; the
            // ledger hash comparison below decides whether it is really ours.
            None => tokens::fuzzing::parse_compact(token, &mut Vec::new())
                .ok()
                .and_then(|j| j.claims.jti.as_str().and_then(|s| Jti::new(s).ok())),
        };
        let Some(jti) = jti else { return Ok(()) };
        let Some(e) = self.store.get_token(&jti).map_err(Error::from)? else {
            return Ok(());
        };
        if !ct_eq(&e.token_hash, &tokens::token_hash(token))
            || &e.realm != realm
            || e.client_id != client.client_id
        {
            return Ok(());
        }
        // Revoking a refresh token ends the grant: its family's access tokens go too.
        match (&e.kind, &e.family_id) {
            (TokenKind::Refresh, Some(f)) => {
                self.store.revoke_family(f, now).map_err(Error::from)?;
            }
            _ => {
                self.store.revoke_token(&jti, now).map_err(Error::from)?;
            }
        }
        self.audit
            .record(
                Event::success(Operation::TokenRevoked)
                    .realm(realm)
                    .client(client.client_id.as_str())
                    .jti(jti.as_str())
                    .source(source)
                    .detail("kind", e.kind.as_str()),
                now,
            )
            .map_err(Error::from)?;
        Ok(())
    }

    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) for the browser holding
    /// `cookie`: its session ends if the user `confirmed` (our own form, CSRF-checked), or if
    /// a valid `id_token_hint` names that very session (the application the user signs out of,
    /// in the same browser). Anything else would let whoever holds a user's ID token, or any
    /// site linking here, sign them out of everything: the browser is asked to confirm
    /// instead, and a hinted session other than the browser's own is never ended here.
    pub(crate) fn logout(
        &self,
        realm: &RealmId,
        cookie: Option<&str>,
        id_token_hint: Option<&str>,
        confirmed: bool,
        source: &Source,
        now: UnixTime,
    ) -> Result<Logout, OAuthError> {
        let mut hinted_session = None;
        let mut client = None;
        if let Some(hint) = id_token_hint
            && let Ok(j) = tokens::fuzzing::parse_compact(hint, &mut Vec::new())
        {
            let jti = j.claims.jti.as_str().and_then(|s| Jti::new(s).ok());
            if let Some(e) = jti.and_then(|jti| self.store.get_token(&jti).ok().flatten())
                && ct_eq(&e.token_hash, &tokens::token_hash(hint))
                && e.kind == TokenKind::Id
                && &e.realm == realm
            {
                hinted_session = e.session_id.clone();
                client = self.store.get_client(realm, &e.client_id).ok().flatten();
            }
        }
        let browser = cookie
            .and_then(session_id_of)
            .and_then(|sid| self.store.get_session(&sid).ok().flatten())
            .filter(|s| &s.realm == realm && s.revoked_at.is_none() && s.expires_at > now);
        let Some(session) = browser else {
            return Ok(Logout {
                client,
                outcome: LogoutOutcome::NothingToEnd,
            });
        };
        if !confirmed && hinted_session.as_ref() != Some(&session.id) {
            return Ok(Logout {
                client,
                outcome: LogoutOutcome::AskFirst,
            });
        }
        // The application's own session too, if the hint names another of the same user
        // (one this browser signed in to before a fresh sign-in replaced its cookie).
        let hinted_too = hinted_session
            .filter(|h| h != &session.id)
            .and_then(|h| self.store.get_session(&h).ok().flatten())
            .filter(|h| &h.realm == realm && h.account == session.account);
        for s in std::iter::once(&session).chain(hinted_too.as_ref()) {
            if self.store.revoke_session(&s.id, now).map_err(Error::from)? {
                self.audit
                    .record(
                        Event::success(Operation::SessionEnded)
                            .realm(realm)
                            .target(s.account.as_str())
                            .source(source),
                        now,
                    )
                    .map_err(Error::from)?;
            }
        }
        Ok(Logout {
            client,
            outcome: LogoutOutcome::Ended,
        })
    }
}

/// What a logout request did.
#[derive(Debug)]
pub(crate) struct Logout {
    /// The client the ID token hint names, if it was one of ours.
    pub client: Option<Client>,
    pub outcome: LogoutOutcome,
}

/// See [`Identity::logout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogoutOutcome {
    /// The browser's session ended.
    Ended,
    /// The browser has a session, but nothing shows the user wants it ended: ask them.
    AskFirst,
    /// The browser has no live session here.
    NothingToEnd,
}

impl From<Error> for AuthorizeError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "authorization request failed");
        AuthorizeError::Page("the server could not process this request")
    }
}

/// How an authorization request fails: shown as a page (when we cannot trust the redirect
/// URI), or redirected back to the client with an error code.
#[derive(Debug, Clone)]
pub(crate) enum AuthorizeError {
    Page(&'static str),
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

fn normalise_email(email: &str) -> Result<String, Error> {
    let e = email.trim().to_ascii_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !d.contains('@') && d.contains('.')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(Error::Invalid(format!("{email:?} is not an email address")));
    }
    Ok(e)
}

fn normalise_domain(d: &str) -> Result<String, Error> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(Error::Invalid(format!("{d:?} is not a domain name")));
    }
    Ok(d)
}

fn check_redirect_uri(u: &str) -> Result<(), Error> {
    let ok = (u.starts_with("https://") || is_loopback_http(u))
        && !u.contains('#')
        && !u.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(Error::Invalid(format!(
            "redirect URI {u:?} must be https (or http on a loopback address) without a fragment"
        )));
    }
    Ok(())
}

/// Whether `u` is plain http to this machine (RFC 8252 §7.3): its host exactly `127.0.0.1`,
/// `[::1]` or `localhost`, a port of digits at most, no user information — not merely a URI
/// that starts like one (`http://localhost.example.net/`, `http://127.0.0.1@example.net/`).
fn is_loopback_http(u: &str) -> bool {
    let Some(rest) = u.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]` holds colons of its own; a port follows its closing bracket.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests;
