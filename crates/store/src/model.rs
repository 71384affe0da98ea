//! The rows Keypost stores. Plain data: meaning and policy live in the crates that use them.

use crate::ids::{AccountId, BlobId, ClientId, Jti, Kid, RealmId, SessionId};
use serde::{Deserialize, Serialize};

/// Unix time in seconds. Injected by callers; the store never reads a clock.
pub type UnixTime = i64;

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The stored and printed form.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, crate::Error> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(crate::Error::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " {:?}"), other))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Whether a realm is the consumer realm or a tenant's enterprise realm.
    RealmKind { Consumer = "consumer", Tenant = "tenant" }
);
text_enum!(
    /// What an account may administer. Nobody's role lets them read another's mail.
    Role { User = "user", TenantAdmin = "tenant-admin", ProviderAdmin = "provider-admin" }
);
text_enum!(
    /// What a signing key is for. A key signs one kind of token only.
    KeyPurpose { AccessToken = "access-token", IdToken = "id-token", Audit = "audit" }
);
text_enum!(
    /// How bad an alert is.
    Severity { Low = "low", Medium = "medium", High = "high", Critical = "critical" }
);
text_enum!(
    /// Where an alert is in its handling.
    AlertStatus { Open = "open", Acknowledged = "acknowledged", Resolved = "resolved" }
);
text_enum!(
    /// Where a key came from.
    KeyOrigin { Generated = "generated", Imported = "imported", Hsm = "hsm" }
);
text_enum!(
    /// The kinds of token in the issuance ledger.
    TokenKind { Access = "access", Id = "id", Refresh = "refresh" }
);

/// A realm: an OIDC issuer with its own keys, accounts and clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Realm {
    /// `consumers` or the tenant slug.
    pub id: RealmId,
    /// Consumer or tenant.
    pub kind: RealmKind,
    /// Human name shown on the login page.
    pub display_name: String,
    /// Mail domains whose accounts live in this realm (lowercase).
    pub domains: Vec<String>,
    /// JOSE algorithm of this realm's access tokens (`EdDSA`, `ES256`, `RS256`, `PS256`).
    pub access_token_alg: String,
    /// When the realm was created.
    pub created_at: UnixTime,
}

/// A user or admin account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Stable subject id (`sub`).
    pub id: AccountId,
    /// The realm the account belongs to.
    pub realm: RealmId,
    /// Lowercased email address, unique across Keypost.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Argon2id hash in PHC string form.
    #[serde(skip_serializing)]
    pub password_hash: String,
    /// A disabled account cannot sign in and its tokens stop validating.
    pub disabled: bool,
    /// What the account may administer.
    pub role: Role,
    /// When the account was created.
    pub created_at: UnixTime,
    /// The password was set by someone else (first start, an admin): the user must choose a
    /// new one at the next sign-in, before any token is issued.
    #[serde(default)]
    pub must_change_password: bool,
    /// Moves on whenever the account's password changes. A session remembers the epoch its
    /// sign-in checked, and nothing is
    /// created or issued under a session whose epoch is no longer the account's — decided in
    /// the very transaction that writes it, so a sign-in that checked the old password just
    /// before a reset cannot slip its session in just after.
    #[serde(skip)]
    pub credential_epoch: u64,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not a secret in the strict sense, but it never belongs in a log.
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("realm", &self.realm)
            .field("email", &self.email)
            .field("disabled", &self.disabled)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// An OAuth client registered in one realm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// The realm the client is registered in.
    pub realm: RealmId,
    /// The client id.
    pub client_id: ClientId,
    /// Human name.
    pub name: String,
    /// SHA-256 of the client secret; `None` for a public client. Secrets are 256-bit random
    /// values we generate, so a fast hash is enough (a password hash would only slow grants).
    #[serde(skip_serializing)]
    pub secret_hash: Option<Vec<u8>>,
    /// Exact redirect URIs allowed for the authorization code flow.
    pub redirect_uris: Vec<String>,
    /// Grant types the client may use (`authorization_code`, `refresh_token`, ...).
    pub grant_types: Vec<String>,
    /// First-party clients (Keypost's own) may use the password grant.
    pub first_party: bool,
    /// The ID token algorithm the client registered; `None` means RS256.
    pub id_token_alg: Option<String>,
    /// When the client was registered.
    pub created_at: UnixTime,
    /// The scopes it may be granted; `None`: any (first-party clients, and clients registered
    /// before scopes were set per client).
    pub scopes: Option<Vec<String>>,
}

impl Client {
    /// Whether the client may be granted `scope`.
    pub fn may_have(&self, scope: &str) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|s| s == scope))
    }
}

/// A signing key's public half, sealed private half and lifecycle timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint.
    pub kid: Kid,
    /// The one realm this key signs for.
    pub realm: RealmId,
    /// What the key signs.
    pub purpose: KeyPurpose,
    /// The one JOSE algorithm this key is pinned to.
    pub alg: String,
    /// The public JWK, as JSON.
    pub public_jwk: String,
    /// The private key, sealed by `keys` (envelope-encrypted); opaque here. Empty for a key
    /// held in an HSM.
    pub sealed: Vec<u8>,
    /// Generated here or imported.
    pub origin: KeyOrigin,
    /// When the key was created and first published.
    pub created_at: UnixTime,
    /// When the key starts signing.
    pub activates_at: UnixTime,
    /// Hard expiry: after this nothing signs with or accepts the key.
    pub expires_at: UnixTime,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// One row of the issuance ledger: a token Keypost minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Token id.
    pub jti: Jti,
    /// Realm that issued it.
    pub realm: RealmId,
    /// Access, ID or refresh token.
    pub kind: TokenKind,
    /// The `sub` claim: an account id, or a client id for client credentials.
    pub subject: String,
    /// The client the token was issued to.
    pub client_id: ClientId,
    /// The signing key (none for opaque refresh tokens).
    pub kid: Option<Kid>,
    /// The sign-in session, if any.
    pub session_id: Option<SessionId>,
    /// Refresh-token family (all refresh tokens descended from one grant).
    pub family_id: Option<String>,
    /// Granted scope, space separated.
    pub scope: String,
    /// Audience, space separated.
    pub audience: String,
    /// Issued at.
    pub issued_at: UnixTime,
    /// Expires at.
    pub expires_at: UnixTime,
    /// SHA-256 of the exact token string returned to the client.
    pub token_hash: Vec<u8>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
    /// For refresh tokens: when it was exchanged (a second use is reuse).
    pub used_at: Option<UnixTime>,
}

/// A sign-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session id (`sid`).
    pub id: SessionId,
    /// Realm.
    pub realm: RealmId,
    /// Signed-in account.
    pub account: AccountId,
    /// When the user authenticated.
    pub auth_time: UnixTime,
    /// When the session ends on its own.
    pub expires_at: UnixTime,
    /// When it was revoked (sign-out, admin action), if it was.
    pub revoked_at: Option<UnixTime>,
    /// The account's [`Account::credential_epoch`] when the user authenticated.
    pub credential_epoch: u64,
}

/// What a password change did, in its one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialChange {
    /// The account's new credential epoch.
    pub epoch: u64,
    /// Sessions it ended.
    pub sessions: u64,
    /// Tokens it revoked.
    pub tokens: u64,
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCode {
    /// SHA-256 of the code.
    pub code_hash: Vec<u8>,
    /// Realm.
    pub realm: RealmId,
    /// Client the code was issued to.
    pub client_id: ClientId,
    /// Account that authorised it.
    pub account: AccountId,
    /// Session it was issued under.
    pub session_id: SessionId,
    /// Redirect URI that must be repeated at the token endpoint.
    pub redirect_uri: String,
    /// Granted scope.
    pub scope: String,
    /// OIDC nonce to echo in the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// RFC 8707 resource indicators requested at the authorization endpoint.
    pub resource: Vec<String>,
    /// Issued at.
    pub created_at: UnixTime,
    /// Expires at.
    pub expires_at: UnixTime,
    /// Set when exchanged; a second exchange is an attack.
    pub used_at: Option<UnixTime>,
    /// Refresh-token family started by the exchange (to revoke it if the code is replayed).
    pub family_id: Option<String>,
}

/// One audit record. Append-only: no store API updates or deletes these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, assigned on append.
    pub id: i64,
    /// When it happened.
    pub time: UnixTime,
    /// Realm (tenant) the event belongs to; `None` for provider-level events.
    pub realm: Option<RealmId>,
    /// Who acted (email, client id, `cli`), if known.
    pub actor: Option<String>,
    /// What happened (`SignInSucceeded`, `TokenRejected`, ...).
    pub operation: String,
    /// What it happened to.
    pub target: Option<String>,
    /// `success` or `failure`.
    pub result: String,
    /// Source address.
    pub source_ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Client id.
    pub client_id: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// Key id.
    pub kid: Option<String>,
    /// Operation-specific details.
    pub details: serde_json::Value,
}

/// A filter over the audit log. Every field narrows; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Realm.
    pub realm: Option<RealmId>,
    /// Operation name.
    pub operation: Option<String>,
    /// Any of these operations (when not empty).
    pub operations: Vec<String>,
    /// Actor.
    pub actor: Option<String>,
    /// Result (`success`/`failure`).
    pub result: Option<String>,
    /// Source address.
    pub source_ip: Option<String>,
    /// Source addresses starting with this (a network, e.g. `192.0.2.`).
    pub source_prefix: Option<String>,
    /// Records whose `details.source_network` is this (the network a sign-in's source counts
    /// as for throttling: an IPv4 address, an IPv6 prefix).
    pub source_network: Option<String>,
    /// Key id.
    pub kid: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// Client id.
    pub client_id: Option<String>,
    /// At or after.
    pub since: Option<UnixTime>,
    /// Before.
    pub until: Option<UnixTime>,
    /// Records with an id greater than this (paging).
    pub after_id: Option<i64>,
    /// Records with an id less than this (history before a given record).
    pub before_id: Option<i64>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// What `keypost sessions revoke` cuts off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeScope {
    /// One account: its sessions and tokens.
    Account(AccountId),
    /// A whole tenant: every session and token of the realm.
    Realm(RealmId),
    /// Every token issued to one client of a realm (sessions are the user's, not the client's).
    Client(RealmId, crate::ClientId),
}

/// The generation counters caches compare (see [`crate::LedgerStore::generations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Generations {
    /// Bumped by every key change.
    pub keys: i64,
    /// Bumped by every revocation of a token, family or session, and account state change.
    pub revocations: i64,
    /// Bumped by every change to a realm, its domains or a client.
    pub directory: i64,
}

/// A session's liveness, as the validator and the refresh grant see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Realm of the session.
    pub realm: RealmId,
    /// When it was revoked.
    pub revoked_at: Option<UnixTime>,
    /// When it ends.
    pub expires_at: UnixTime,
    /// When the user authenticated (an ID token's `auth_time`). Like the realm, never
    /// changed once the session exists; the other two bump the revocation generation.
    pub auth_time: UnixTime,
}

/// An account's state, as the validator and the refresh grant see it: nothing that
/// authenticates anyone (no password hash), so a remembered copy cannot be misused for that.
/// Every field's change bumps the revocation generation (migrations 2, 15 and 17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Realm of the account.
    pub realm: RealmId,
    /// Disabled accounts' tokens stop validating.
    pub disabled: bool,
    /// Email address (ID-token claim, audit actor).
    pub email: String,
    /// Display name (ID-token claim).
    pub display_name: String,
    /// What the account may administer.
    pub role: Role,
}

/// What the ledger knows about one presented jti.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerView {
    /// The ledger row, if Keypost issued this jti.
    pub entry: Option<LedgerEntry>,
    /// Whether the presented client is registered in the expected realm.
    pub client_known: bool,
    /// The row's session, if it has one and it exists.
    pub session: Option<SessionState>,
    /// The account named by the row's subject, if it is an account.
    pub account: Option<AccountState>,
}

/// A mailbox (JMAP Mailbox / IMAP folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Id.
    pub id: crate::MailboxId,
    /// Owning account.
    pub account: AccountId,
    /// Name (unique among siblings).
    pub name: String,
    /// JMAP role (`inbox`, `sent`, `drafts`, `trash`, `junk`, `archive`), unique per account.
    pub role: Option<String>,
    /// Parent mailbox.
    pub parent: Option<crate::MailboxId>,
    /// Display order.
    pub sort_order: u32,
}

/// An address as parsed from a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    /// Display name.
    pub name: Option<String>,
    /// Address.
    pub email: String,
}

/// An email's stored metadata; the message itself is the blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRecord {
    /// Id.
    pub id: crate::EmailId,
    /// Owning account.
    pub account: AccountId,
    /// The raw RFC 5322 message.
    pub blob_id: crate::BlobId,
    /// Conversation.
    pub thread_id: crate::ThreadId,
    /// `Message-ID` without angle brackets.
    pub message_id: Option<String>,
    /// Subject.
    pub subject: String,
    /// From.
    pub from: Vec<EmailAddress>,
    /// To.
    pub to: Vec<EmailAddress>,
    /// Cc.
    pub cc: Vec<EmailAddress>,
    /// `Date` header.
    pub sent_at: Option<UnixTime>,
    /// When Keypost received it.
    pub received_at: UnixTime,
    /// Size in bytes.
    pub size: u64,
    /// Start of the text body.
    pub preview: String,
    /// Whether it has attachments.
    pub has_attachment: bool,
    /// JMAP keywords (`$seen`, `$flagged`, ...).
    pub keywords: Vec<String>,
}

/// What changed since a modseq (JMAP `/changes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<T> {
    /// Created since (and not destroyed).
    pub created: Vec<T>,
    /// Updated since (created before).
    pub updated: Vec<T>,
    /// Destroyed since (created before).
    pub destroyed: Vec<T>,
    /// The modseq this answer reaches: the current one, or less if `has_more`.
    pub new_modseq: i64,
    /// More changes remain past `new_modseq`.
    pub has_more: bool,
}

impl<T> Changes<T> {
    /// No changes yet, reaching `new_modseq`.
    pub fn empty(new_modseq: i64, has_more: bool) -> Self {
        Self {
            created: Vec::new(),
            updated: Vec::new(),
            destroyed: Vec::new(),
            new_modseq,
            has_more,
        }
    }
}

/// The text of an email that full-text search indexes (the subject comes from the record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchText {
    /// From addresses and names.
    pub from: String,
    /// To and Cc addresses and names.
    pub to: String,
    /// The text of the body (HTML converted to text), bounded.
    pub body: String,
}

/// An alert a detection rule raised (or a repeat of one still open).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Id.
    pub id: i64,
    /// The tenant it concerns; `None` for provider-level alerts.
    pub realm: Option<RealmId>,
    /// The rule that raised it.
    pub rule: String,
    /// How bad.
    pub severity: Severity,
    /// One line for humans.
    pub title: String,
    /// Repeats with the same rule, realm and key while the alert is not resolved (and keeps
    /// being seen: see [`crate::AlertStore::raise_alert`]) are counted on it instead of raising
    /// new alerts.
    pub dedup_key: String,
    /// When it was first and last seen.
    pub first_seen: UnixTime,
    /// Last seen.
    pub last_seen: UnixTime,
    /// How many times it was seen.
    pub count: u64,
    /// Audit record ids that show it (the first ones, bounded).
    pub evidence: Vec<i64>,
    /// What the rule observed.
    pub details: serde_json::Value,
    /// Handling status.
    pub status: AlertStatus,
    /// Who last changed the status.
    pub status_by: Option<String>,
}

/// Audit record ids an alert keeps as evidence: the first ones, where an investigator starts.
pub const ALERT_EVIDENCE: usize = 50;
/// Distinct values an alert keeps in each list of its details (the kids a source presented,
/// the reasons it was refused for): the first ones. The count says how many attempts there were.
pub const ALERT_DETAIL_VALUES: usize = 20;

impl Alert {
    /// Counts `repeat`, a later sighting of the same alert, on this one: its count added, the
    /// last sighting moved on, its evidence appended and its details merged (both bounded, see
    /// [`merge_alert_details`]). What was first observed stays.
    pub fn absorb(&mut self, repeat: &Alert) {
        self.count = self.count.saturating_add(repeat.count.max(1));
        self.last_seen = self.last_seen.max(repeat.last_seen);
        merge_evidence(&mut self.evidence, &repeat.evidence);
        merge_alert_details(&mut self.details, &repeat.details);
    }
}

/// Appends to `evidence` the ids of `more` it lacks, up to [`ALERT_EVIDENCE`].
pub fn merge_evidence(evidence: &mut Vec<i64>, more: &[i64]) {
    for e in more {
        if evidence.len() >= ALERT_EVIDENCE {
            break;
        }
        if !evidence.contains(e) {
            evidence.push(*e);
        }
    }
}

/// Merges the details of a repeat into an alert's: each list is a set (the values `more`
/// adds are appended, up to [`ALERT_DETAIL_VALUES`]); every other member keeps its first
/// value, and members only `more` has are added. Bounded whatever the repeats hold, so an
/// attacker who varies what it presents grows a list to its bound, never the alert beyond.
pub fn merge_alert_details(details: &mut serde_json::Value, more: &serde_json::Value) {
    use serde_json::Value;
    let (Value::Object(into), Value::Object(from)) = (details, more) else {
        return;
    };
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Array(have)), Value::Array(add)) => {
                for x in add {
                    if have.len() >= ALERT_DETAIL_VALUES {
                        break;
                    }
                    if !have.contains(x) {
                        have.push(x.clone());
                    }
                }
            }
            (Some(_), _) => {}
            (None, v) => {
                let mut v = v.clone();
                if let Value::Array(a) = &mut v {
                    a.truncate(ALERT_DETAIL_VALUES);
                }
                into.insert(k.clone(), v);
            }
        }
    }
}

/// An account's storage limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaSetting {
    /// The configured default applies.
    #[default]
    Default,
    /// No limit.
    Unlimited,
    /// At most this many bytes of mail.
    Limit(u64),
}

/// Who an account sends as (JMAP Identity, RFC 8621 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Id.
    pub id: crate::IdentityId,
    /// Owning account.
    pub account: AccountId,
    /// Display name for From.
    pub name: String,
    /// The From address; always one the account may send as.
    pub email: String,
    /// Default Reply-To.
    pub reply_to: Option<Vec<EmailAddress>>,
    /// Default Bcc.
    pub bcc: Option<Vec<EmailAddress>>,
    /// Plain-text signature.
    pub text_signature: String,
    /// HTML signature.
    pub html_signature: String,
    /// The account's own identity: cannot be destroyed.
    pub is_primary: bool,
}

/// How the delivery to one recipient went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The recipient address.
    pub rcpt: String,
    /// The SMTP reply for this recipient (`250 2.1.5 ...`, `552 5.2.2 ...`).
    pub smtp_reply: String,
    /// `yes`, `no` or `queued` (JMAP `delivered`).
    pub delivered: String,
}

/// One sending of an email (JMAP EmailSubmission, RFC 8621 §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// Id.
    pub id: crate::SubmissionId,
    /// Owning account.
    pub account: AccountId,
    /// Sent as.
    pub identity: crate::IdentityId,
    /// The email sent.
    pub email: crate::EmailId,
    /// Its thread.
    pub thread: crate::ThreadId,
    /// SMTP MAIL FROM.
    pub mail_from: String,
    /// SMTP RCPT TO.
    pub rcpt_to: Vec<String>,
    /// When it was sent.
    pub send_at: UnixTime,
    /// Per-recipient outcome.
    pub delivery: Vec<Delivery>,
}

/// An upload no email of its account is stored as yet (RFC 8620 §6.1's unreferenced blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The blob uploaded.
    pub blob: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was (last) uploaded.
    pub created_at: UnixTime,
}

/// An account's vacation response (JMAP VacationResponse, RFC 8621 §8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vacation {
    /// Whether replies are sent.
    pub enabled: bool,
    /// Not before this time.
    pub from_date: Option<UnixTime>,
    /// Not after this time.
    pub to_date: Option<UnixTime>,
    /// Subject of the reply (default: "Auto: " + the original subject).
    pub subject: Option<String>,
    /// Plain-text body.
    pub text_body: Option<String>,
    /// HTML body.
    pub html_body: Option<String>,
}
