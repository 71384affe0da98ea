//! A cache of verified tokens, so a client presenting the same access token on every request
//! pays for the signature and ledger checks once.
//!
//! Keyed by the SHA-256 of the exact token string. A hit is served only while the store's key
//! and revocation generations are unchanged since the token was verified (any key change,
//! revoked token, family or session, or account change empties it in effect), the token and
//! its key are unexpired, and the expectation is the same. Rejections are never cached: each
//! one must be audited.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest;
use keys::VerifyingKeys;
use store::{Generations, RealmId, UnixTime};

use crate::jose::MAX_TOKEN_LEN;
use crate::ledger::Ledger;
use crate::validate::{Expectation, Principal, Rejected, validate, validate_hashed};

struct Cached {
    principal: Principal,
    generations: Generations,
    valid_until: UnixTime,
    realm: RealmId,
    issuer: String,
    audience: String,
    max_lifetime: i64,
    leeway: i64,
}

/// [`validate`] with a verified-token cache in front.
pub struct Validator {
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    capacity: usize,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl Validator {
    /// A validator caching at most `capacity` verified tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Validates `raw` as [`validate`] does. `keys` must be the key set of `generations.keys`,
    /// and `generations` read from the store for this request.
    pub fn validate(
        &self,
        raw: &str,
        expect: &Expectation<'_>,
        now: UnixTime,
        keys: &VerifyingKeys,
        generations: Generations,
        ledger: &dyn Ledger,
    ) -> Result<Principal, Rejected> {
        if raw.len() > MAX_TOKEN_LEN {
            // Refused unhashed and uncached, as every refusal is uncached.
            return validate(raw, expect, now, keys, ledger);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest::digest(&digest::SHA256, raw.as_bytes()).as_ref());
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&hash)
                && c.generations == generations
                && now <= c.valid_until
                && &c.realm == expect.realm
                && c.issuer == expect.issuer
                && c.audience == expect.audience
                && c.max_lifetime == expect.max_lifetime
                && c.leeway == expect.leeway
                && expect
                    .required_scope
                    .is_none_or(|s| c.principal.has_scope(s))
            {
                return Ok(c.principal.clone());
            }
        }
        // The ledger's check reuses the key's hash of the token.
        let principal = validate_hashed(raw, hash, expect, now, keys, ledger)?;
        let key_expiry = keys
            .in_realm(expect.realm, principal.kid().as_str())
            .map(|k| k.expires_at() - 1)
            .unwrap_or(now);
        let entry = Cached {
            principal: principal.clone(),
            generations,
            valid_until: (principal.expires_at() + expect.leeway).min(key_expiry),
            realm: expect.realm.clone(),
            issuer: expect.issuer.to_owned(),
            audience: expect.audience.to_owned(),
            max_lifetime: expect.max_lifetime,
            leeway: expect.leeway,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.capacity {
            cache.retain(|_, c| c.valid_until >= now && c.generations == generations);
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        cache.insert(hash, entry);
        Ok(principal)
    }
}
