//! The gate: the one authenticated edge of every Keypost resource server (JMAP, userinfo and
//! the admin API today; SMTP and IMAP AUTH next). [`Gate::authenticate`] takes a credential as
//! its protocol framed it ([`Presentation`]) and what the request is for ([`Access`]), takes the
//! token out of its framing, finds the realm whose keys may be consulted, runs the one
//! validation policy against the store, the key set and the verified-token cache, and audits
//! every refusal as `TokenRejected` with its reason and what the token presented — including
//! tokens too broken to name a realm. Protocols map a [`GateError`] to their own wire form in
//! one place each (401 + `WWW-Authenticate`, IMAP `NO`, SMTP `535`) and never read a bearer
//! token themselves.

use std::sync::Arc;

use audit::{AuditLog, Event, Operation, Source};
use keys::Custody;
use store::{RealmId, Store, UnixTime};

use crate::claims::{Audience, issuer_for, realm_hint};
use crate::credential::{CredentialError, Presentation};
use crate::refusal_budget::{self, Admit, RefusalBudget, Summary};
use crate::validate::{Expectation, Presented, Principal, Rejection};
use crate::{LedgerCache, StoreLedger, Validator};

/// Why the gate did not let a request through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// Nothing presented (or another scheme than bearer): the client should be asked for a
    /// token (RFC 6750 §3: a challenge without an error code). Not audited: no token was
    /// refused.
    #[error("no bearer token presented")]
    NoCredential,
    /// The token was refused (and the refusal audited). Clients learn only RFC 6750's codes.
    #[error("token refused: {}", .0.name())]
    Rejected(Rejection),
    /// Validation could not run (storage or audit failure): nothing was let through.
    #[error("token validation unavailable: {0}")]
    Unavailable(String),
}

/// Which realm's resource a request is for.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A resource of this realm: the request names it (userinfo's URL).
    Realm(&'a RealmId),
    /// A resource that does not name its realm (a JMAP session, IMAP or SMTP AUTH, the admin
    /// API): the token's `iss` chooses *which realm's key set* is checked — never the `kid`,
    /// never a union of key sets — and the protocol must keep the principal to that realm.
    OfIssuer,
}

/// What a request asks of the gate.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// Whose resource.
    pub resource: Resource<'a>,
    /// The service.
    pub audience: Audience,
    /// The scope the request needs, if any.
    pub scope: Option<&'a str>,
    /// Where the request came from (for the audit).
    pub source: &'a Source,
    /// The time.
    pub now: UnixTime,
}

/// A request the gate let through.
#[derive(Debug)]
pub struct Authenticated<'p> {
    /// Who.
    pub principal: Principal,
    /// The user the credential's framing named (SASL's authorization identity, XOAUTH2's
    /// `user=`): the protocol must refuse it unless it is the principal's own address.
    pub named_user: Option<&'p str>,
}

/// The bearer-token gate for resource servers.
pub struct Gate {
    store: Arc<dyn Store>,
    custody: Arc<Custody>,
    validator: Validator,
    ledger: StoreLedger,
    ledger_cache: Arc<LedgerCache>,
    audit: AuditLog,
    public_url: String,
    access_ttl: i64,
    leeway: i64,
    budget: RefusalBudget,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate over `store` and `custody`. `access_ttl` is the longest access-token lifetime the
    /// realms issue; `leeway` the tolerated clock skew (seconds).
    pub fn new(
        store: Arc<dyn Store>,
        custody: Arc<Custody>,
        public_url: &str,
        access_ttl: i64,
        leeway: i64,
    ) -> Self {
        Self {
            audit: AuditLog::new(store.clone()),
            ledger: StoreLedger(store.clone()),
            ledger_cache: Arc::default(),
            store,
            custody,
            validator: Validator::default(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            access_ttl,
            leeway,
            budget: RefusalBudget::default(),
        }
    }

    /// Writes the summaries of the refused-token windows that ended by `now` (garbage past
    /// each source's budget, counted rather than written one by one); returns how many. The
    /// server calls it now and then, so a flood that stopped is still summarised.
    pub fn flush_refusal_summaries(&self, now: UnixTime) -> Result<usize, GateError> {
        self.flush_summaries(now, now)
    }

    /// [`Gate::flush_refusal_summaries`] for every window, ended or not: for a server that
    /// stops, so what it counted is not lost with it.
    pub fn flush_all_refusal_summaries(&self, now: UnixTime) -> Result<usize, GateError> {
        self.flush_summaries(UnixTime::MAX, now)
    }

    fn flush_summaries(&self, ended_by: UnixTime, now: UnixTime) -> Result<usize, GateError> {
        let due = self.budget.due(ended_by);
        let n = due.len();
        for s in due {
            self.write_summary(&s, now)?;
        }
        Ok(n)
    }

    fn write_summary(&self, s: &Summary, now: UnixTime) -> Result<(), GateError> {
        let (realm, network) = &s.key;
        let mut ev = Event::failure(Operation::TokenRejected)
            .source(&Source {
                ip: Some(network.clone()),
                user_agent: None,
            })
            .detail("token_type", "access_token")
            .detail("reason", "Summarized")
            .detail("summarized", s.total())
            .detail("reasons", serde_json::json!(s.reasons))
            .detail("kids", s.kids.clone())
            .detail("from", s.from)
            .detail("until", s.until);
        if let Some(realm) = realm {
            ev = ev.realm(realm);
        }
        self.audit
            .record(ev, now)
            .map(|_| ())
            .map_err(|e| GateError::Unavailable(e.to_string()))
    }

    /// Shares `cache` with the [`crate::Minter`] that fills it, so tokens minted in this
    /// process are checked against the ledger without a read.
    pub fn with_ledger_cache(mut self, cache: Arc<LedgerCache>) -> Self {
        self.ledger_cache = cache;
        self
    }

    /// The one edge: the bearer token in `presented`, validated for `access`. Every refusal
    /// is audited before this returns (a missing credential is not a refusal).
    pub fn authenticate<'p>(
        &self,
        presented: Presentation<'p>,
        access: &Access<'_>,
    ) -> Result<Authenticated<'p>, GateError> {
        let known_realm = match access.resource {
            Resource::Realm(r) => Some(r),
            Resource::OfIssuer => None,
        };
        let bearer = match presented.bearer() {
            Ok(b) => b,
            Err(CredentialError::Missing | CredentialError::NotBearer) => {
                return Err(GateError::NoCredential);
            }
            Err(CredentialError::Malformed) => {
                return Err(self.refuse(
                    known_realm,
                    Rejection::Malformed,
                    &Presented::default(),
                    access,
                ));
            }
        };
        let realm = match access.resource {
            Resource::Realm(r) => r.clone(),
            // Not a token, or not one of our issuers: no realm's keys could even be consulted.
            Resource::OfIssuer => match realm_hint(bearer.token, &self.public_url) {
                Ok(r) if self.realm_exists(&r)? => r,
                // The shape of one of our issuers naming a realm there is not: refused like
                // any foreign issuer, and recorded with no realm (a made-up name must not
                // become an audit chain, a tenant's alerts, anything of its own).
                Ok(_) => {
                    let presented = Presented::of(bearer.token);
                    return Err(self.refuse(None, Rejection::IssuerMismatch, &presented, access));
                }
                Err(rej) => {
                    let presented = Presented::of(bearer.token);
                    return Err(self.refuse(None, rej, &presented, access));
                }
            },
        };
        let principal = self.authorize(&realm, bearer.token, access)?;
        Ok(Authenticated {
            principal,
            named_user: bearer.user,
        })
    }

    fn realm_exists(&self, realm: &RealmId) -> Result<bool, GateError> {
        self.store
            .get_realm(realm)
            .map(|r| r.is_some())
            .map_err(|e| GateError::Unavailable(e.to_string()))
    }

    /// Validates `token` for a resource of `realm`. Refusals are audited before this returns.
    fn authorize(
        &self,
        realm: &RealmId,
        token: &str,
        access: &Access<'_>,
    ) -> Result<Principal, GateError> {
        let (audience, scope, now) = (access.audience, access.scope, access.now);
        let unavailable = |e: &dyn std::fmt::Display| GateError::Unavailable(e.to_string());
        let issuer = issuer_for(&self.public_url, realm);
        let aud = audience.uri(&self.public_url);
        let expect = Expectation {
            realm,
            issuer: &issuer,
            audience: &aud,
            max_lifetime: self.access_ttl,
            leeway: self.leeway,
            required_scope: scope,
        };
        // One read for both counters, so the key set and the cache agree on what they saw.
        let generations = self.store.generations().map_err(|e| unavailable(&e))?;
        let keys = self
            .custody
            .verifying_keys_at(generations.keys)
            .map_err(|e| unavailable(&e))?;
        let ledger = self
            .ledger_cache
            .ledger(&self.ledger, generations.revocations);
        let rej = match self
            .validator
            .validate(token, &expect, now, &keys, generations, &ledger)
        {
            Ok(p) => return Ok(p),
            Err(rej) => rej,
        };
        Err(self.refuse(Some(realm), rej.reason, &rej.presented, access))
    }

    /// Audits a refusal and returns the error to answer with (unavailable if the audit write
    /// failed: nothing is let through, and nothing is refused unrecorded).
    fn refuse(
        &self,
        realm: Option<&RealmId>,
        reason: Rejection,
        p: &Presented,
        access: &Access<'_>,
    ) -> GateError {
        // Refusals past their source's budget are counted, not written one by one.
        if refusal_budget::budget_of(reason).is_some()
            && let Some(ip) = &access.source.ip
        {
            let network =
                audit::network_key(ip, audit::DEFAULT_V6_PREFIX).unwrap_or_else(|| ip.clone());
            let (admit, ended) = self.budget.admit(
                (realm.cloned(), network),
                reason,
                p.kid.as_deref(),
                access.now,
            );
            if let Some(summary) = ended
                && let Err(e) = self.write_summary(&summary, access.now)
            {
                return e;
            }
            if admit == Admit::Counted {
                return GateError::Rejected(reason);
            }
        }
        let (name, code) = reason.code();
        let mut ev = Event::failure(Operation::TokenRejected)
            .source(access.source)
            .detail("token_type", "access_token")
            .detail("reason", name)
            .detail("code", code)
            .detail("audience", access.audience.uri(&self.public_url))
            .detail("critical", reason.suggests_key_compromise());
        if let Some(realm) = realm {
            ev = ev.realm(realm);
        }
        if let Some(k) = &p.kid {
            ev = ev.kid(k.clone());
        }
        if let Some(j) = &p.jti {
            ev = ev.jti(j.clone());
        }
        if let Some(c) = &p.client_id {
            ev = ev.client(c.clone());
        }
        for (k, v) in [("iss", &p.iss), ("sub", &p.sub), ("alg", &p.alg)] {
            if let Some(v) = v {
                ev = ev.detail(k, v.clone());
            }
        }
        if let Some(s) = &p.sub {
            ev = ev.actor(s.clone());
        }
        if let Err(e) = self.audit.record(ev, access.now) {
            return GateError::Unavailable(e.to_string());
        }
        if reason.suggests_key_compromise() {
            tracing::warn!(target: "keypost::security", reason = name, realm = ?realm.map(RealmId::as_str),
                kid = ?p.kid, "token refused: signing key may be compromised");
        }
        GateError::Rejected(reason)
    }
}
