//! The gate: what every Keypost resource server (userinfo today; JMAP, IMAP, SMTP and the web
//! app as they land) calls to turn a bearer token into a [`Principal`]. It wires the one
//! validation policy to the store, the key set and the verified-token cache, and audits every
//! refusal as `TokenRejected` with its reason and what the token presented. Protocol crates map
//! a [`GateError`] to their own wire form (401 + `WWW-Authenticate`, IMAP `NO`, SMTP `535`).

use std::sync::Arc;

use audit::{AuditLog, Event, Operation, Source};
use keys::Custody;
use store::{RealmId, Store, UnixTime};

use crate::claims::{Audience, issuer_for};
use crate::validate::{Expectation, Principal, Rejection};
use crate::{LedgerCache, StoreLedger, Validator};

/// Why the gate did not let a request through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The token was refused (and the refusal audited). Clients learn only RFC 6750's codes.
    #[error("token refused: {}", .0.name())]
    Rejected(Rejection),
    /// Validation could not run (storage or audit failure): nothing was let through.
    #[error("token validation unavailable: {0}")]
    Unavailable(String),
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
        }
    }

    /// Shares `cache` with the [`crate::Minter`] that fills it, so tokens minted in this
    /// process are checked against the ledger without a read.
    pub fn with_ledger_cache(mut self, cache: Arc<LedgerCache>) -> Self {
        self.ledger_cache = cache;
        self
    }

    /// Validates `token` for a resource of `realm` served as `audience`, requiring `scope` if
    /// given. Refusals are audited before this returns.
    pub fn authorize(
        &self,
        realm: &RealmId,
        token: &str,
        audience: Audience,
        scope: Option<&str>,
        source: &Source,
        now: UnixTime,
    ) -> Result<Principal, GateError> {
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
        let (name, code) = rej.reason.code();
        let p = &rej.presented;
        let mut ev = Event::failure(Operation::TokenRejected)
            .realm(realm)
            .source(source)
            .detail("token_type", "access_token")
            .detail("reason", name)
            .detail("code", code)
            .detail("audience", aud.clone())
            .detail("critical", rej.reason.suggests_key_compromise());
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
        self.audit.record(ev, now).map_err(|e| unavailable(&e))?;
        if rej.reason.suggests_key_compromise() {
            tracing::warn!(target: "keypost::security", reason = name, %realm, kid = ?p.kid,
                "token refused: signing key may be compromised");
        }
        Err(GateError::Rejected(rej.reason))
    }
}
