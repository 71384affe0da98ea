//! The audit log: what happened, to whom, from where, with which token and key.
//!
//! `audit` owns the shape of audit events, their append to the store, and the proof that
//! nobody edited them since: per-tenant hash chains ([`store::chain`], linked by the store as
//! records are appended), checkpoints signed with each realm's audit key, and [`chain::verify`].
//! It must never update or delete a record: the store has no such operation, and the SQLite
//! schema refuses them with triggers.
//!
//! ```text
//!   identity / tokens / keys events ──Event──> AuditLog::record ──> AuditStore::append_audit
//!                                                                   (links the tenant's chain)
//!   every minute: chain::checkpoint ──sign(head, realm's audit key)──> audit_checkpoints
//!   keypost audit verify: chain::verify ──recompute links, check checkpoints──> ChainReport
//! ```
#![forbid(unsafe_code)]

pub mod chain;
pub mod export;
pub mod investigate;
mod network;
mod proxies;
pub mod published;
pub mod signed_heads;

pub use network::{DEFAULT_V6_PREFIX, network_key, network_of};
pub use proxies::TrustedProxies;

use std::sync::Arc;

use serde_json::Value;
use store::{AuditQuery, AuditRecord, RealmId, Store, UnixTime};

/// What happened. The names are the `operation` field of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// An account was created.
    AccountCreated,
    /// A detection rule raised an alert (or counted a repeat of an open one).
    AlertRaised,
    /// An alert was acknowledged or resolved.
    AlertUpdated,
    /// An account was disabled.
    AccountDisabled,
    /// The signer would not checkpoint an audit chain: it no longer extends the last head the
    /// signer signed for it, or a checkpoint it signed is gone (`details.problem`). Someone
    /// rewrote the log in the database.
    AuditChainRefused,
    /// An authorization code was presented a second time (its tokens are revoked).
    AuthCodeReused,
    /// An OAuth client was registered.
    ClientCreated,
    /// A signing key was created (generated, scheduled or rotated).
    KeyCreated,
    /// A key was imported and bound to a realm.
    KeyImported,
    /// A key was revoked.
    KeyRevoked,
    /// Mail was imported into an account by an operator.
    MailImported,
    /// Mail items were read: `details.items` lists them (headers, bodies or blobs).
    MailItemsAccessed,
    /// A mailbox was listed or searched: ids only, no content.
    MailboxQueried,
    /// Mail items were changed (keywords, mailboxes) or destroyed: `details.items` lists them.
    MailItemsUpdated,
    /// A user sent a message (`details.recipients`).
    MailSent,
    /// A message was delivered into an account.
    MailDelivered,
    /// A submission was refused (`details.reason`: a spoofed From, an unknown identity, ...);
    /// nothing was sent.
    MailSubmissionRefused,
    /// An account's password was changed.
    PasswordChanged,
    /// A refresh token was used twice: the family is revoked.
    RefreshTokenReused,
    /// A session was ended (sign-out).
    SessionEnded,
    /// An operator revoked every session and token of an account, tenant or client.
    SessionsRevoked,
    /// A mailbox setting changed (identities, vacation response, quota): attackers who get in
    /// often add a sender identity or an auto-reply, so these are evidence too.
    SettingsChanged,
    /// The signer process refused a signing request (`details.reason`): only a compromised
    /// or broken web process asks for what the signer will not sign.
    SigningRefused,
    /// A sign-in failed.
    SignInFailed,
    /// A sign-in was refused because of too many failures.
    SignInThrottled,
    /// A sign-in succeeded.
    SignInSucceeded,
    /// A tenant (enterprise realm) was created.
    TenantCreated,
    /// Tokens were issued.
    TokenIssued,
    /// A presented token was refused; `details.reason` says why.
    TokenRejected,
    /// A token was revoked (RFC 7009).
    TokenRevoked,
}

impl Operation {
    /// The record's `operation` string.
    pub fn as_str(self) -> &'static str {
        use Operation::*;
        match self {
            AccountCreated => "AccountCreated",
            AlertRaised => "AlertRaised",
            AlertUpdated => "AlertUpdated",
            AccountDisabled => "AccountDisabled",
            AuthCodeReused => "AuthCodeReused",
            ClientCreated => "ClientCreated",
            KeyCreated => "KeyCreated",
            KeyImported => "KeyImported",
            KeyRevoked => "KeyRevoked",
            MailImported => "MailImported",
            MailItemsAccessed => "MailItemsAccessed",
            MailboxQueried => "MailboxQueried",
            MailItemsUpdated => "MailItemsUpdated",
            MailSent => "MailSent",
            MailDelivered => "MailDelivered",
            MailSubmissionRefused => "MailSubmissionRefused",
            PasswordChanged => "PasswordChanged",
            RefreshTokenReused => "RefreshTokenReused",
            SessionEnded => "SessionEnded",
            SessionsRevoked => "SessionsRevoked",
            SettingsChanged => "SettingsChanged",
            SigningRefused => "SigningRefused",
            AuditChainRefused => "AuditChainRefused",
            SignInFailed => "SignInFailed",
            SignInThrottled => "SignInThrottled",
            SignInSucceeded => "SignInSucceeded",
            TenantCreated => "TenantCreated",
            TokenIssued => "TokenIssued",
            TokenRejected => "TokenRejected",
            TokenRevoked => "TokenRevoked",
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// Peer address.
    pub ip: Option<String>,
    /// User agent, truncated.
    pub user_agent: Option<String>,
}

/// An event under construction.
#[derive(Debug, Clone)]
#[must_use = "an event does nothing until recorded"]
pub struct Event(AuditRecord);

impl Event {
    /// A successful `op`.
    pub fn success(op: Operation) -> Self {
        Self::new(op, "success")
    }

    /// A failed or refused `op`.
    pub fn failure(op: Operation) -> Self {
        Self::new(op, "failure")
    }

    fn new(op: Operation, result: &str) -> Self {
        Event(AuditRecord {
            id: 0,
            time: 0,
            realm: None,
            actor: None,
            operation: op.as_str().to_owned(),
            target: None,
            result: result.to_owned(),
            source_ip: None,
            user_agent: None,
            client_id: None,
            jti: None,
            kid: None,
            details: Value::Object(Default::default()),
        })
    }

    /// The realm (tenant) the event belongs to.
    pub fn realm(mut self, r: &RealmId) -> Self {
        self.0.realm = Some(r.clone());
        self
    }
    /// Who acted.
    pub fn actor(mut self, a: impl Into<String>) -> Self {
        self.0.actor = Some(bounded(a.into()));
        self
    }
    /// What was acted on.
    pub fn target(mut self, t: impl Into<String>) -> Self {
        self.0.target = Some(bounded(t.into()));
        self
    }
    /// Where the request came from.
    pub fn source(mut self, s: &Source) -> Self {
        self.0.source_ip = s.ip.clone();
        self.0.user_agent = s.user_agent.clone();
        self
    }
    /// Client id.
    pub fn client(mut self, c: impl Into<String>) -> Self {
        self.0.client_id = Some(bounded(c.into()));
        self
    }
    /// Token id.
    pub fn jti(mut self, j: impl Into<String>) -> Self {
        self.0.jti = Some(bounded(j.into()));
        self
    }
    /// Key id.
    pub fn kid(mut self, k: impl Into<String>) -> Self {
        self.0.kid = Some(bounded(k.into()));
        self
    }
    /// Adds a detail.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(m) = &mut self.0.details {
            m.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// Attacker-supplied strings (presented kids, user agents) are bounded before storage.
fn bounded(s: String) -> String {
    if s.len() <= 512 {
        s
    } else {
        s.chars().take(512).collect()
    }
}

/// The audit log.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// An audit write failed.
#[derive(Debug, thiserror::Error)]
#[error("audit log write failed: {0}")]
pub struct Error(#[from] store::Error);

impl AuditLog {
    /// The log over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Appends an event at `now` and returns its record id.
    pub fn record(&self, event: Event, now: UnixTime) -> Result<i64, Error> {
        let rec = Self::prepare(event, now);
        let ids = self.store.append_audit(std::slice::from_ref(&rec))?;
        Ok(ids.first().copied().unwrap_or_default())
    }

    /// Queues events (each with its time) as one write and returns its completion, which
    /// answers with their record ids once they are durable. The write happens whether or not
    /// anyone waits for the answer.
    pub fn submit_all(&self, events: Vec<(Event, UnixTime)>) -> store::Completion {
        let records: Vec<AuditRecord> = events
            .into_iter()
            .map(|(e, at)| Self::prepare(e, at))
            .collect();
        self.store.submit_audit(&records)
    }

    /// [`AuditLog::submit_all`], awaited: for async request handlers, the wait costs a task,
    /// not a parked thread, and the committer batches every handler's records into a shared
    /// commit.
    pub async fn record_all(&self, events: Vec<(Event, UnixTime)>) -> Result<Vec<i64>, Error> {
        Ok(self.submit_all(events).await?)
    }

    /// The record an event becomes at `now`, for callers that write it together with other
    /// data in one transaction (token issuance writes the ledger and its audit record atomically).
    pub fn prepare(event: Event, now: UnixTime) -> AuditRecord {
        let mut rec = event.0;
        rec.time = now;
        tracing::info!(target: "keypost::audit", operation = %rec.operation, result = %rec.result,
            realm = ?rec.realm.as_ref().map(RealmId::as_str), actor = ?rec.actor, "audit");
        rec
    }

    /// Records matching a query.
    pub fn search(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, Error> {
        Ok(self.store.search_audit(q)?)
    }

    /// How many records match a query.
    pub fn count(&self, q: &AuditQuery) -> Result<u64, Error> {
        Ok(self.store.count_audit(q)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_recorded_with_their_fields() {
        let store: Arc<dyn Store> = Arc::new(store::SqliteStore::in_memory().unwrap());
        let log = AuditLog::new(store);
        let realm = RealmId::new("contoso").unwrap();
        let id = log
            .record(
                Event::failure(Operation::TokenRejected)
                    .realm(&realm)
                    .kid("k".repeat(2000))
                    .source(&Source {
                        ip: Some("127.0.0.1".into()),
                        user_agent: Some("curl".into()),
                    })
                    .detail("reason", "KeyNotInRealm"),
                42,
            )
            .unwrap();
        let got = log
            .search(&AuditQuery {
                operation: Some("TokenRejected".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert_eq!(got[0].time, 42);
        assert_eq!(got[0].kid.as_ref().unwrap().len(), 512);
        assert_eq!(got[0].details["reason"], "KeyNotInRealm");
        assert_eq!(got[0].source_ip.as_deref(), Some("127.0.0.1"));
    }
}
