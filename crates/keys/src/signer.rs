//! The signer: the one component that holds unsealed private keys, and the policy it signs
//! under. It signs only with a key that is bound to the realm the request names, is active, and
//! is for the requested purpose; everything else is refused and logged on the security target.
//!
//! In `keypost serve` it runs in the signer process (`keypost signer`, see [`crate::RemoteSigner`]
//! for the socket protocol); operator verbs run it in-process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::hsm::HsmKey;
use store::{KeyOrigin, KeyPurpose, KeyRecord, Kid, RealmId, Store, UnixTime};

use crate::custody::{KeyState, aad, states};
use crate::material::PrivateKey;
use crate::{Algorithm, Error, Hsm, Kek, Result};

/// The key that currently signs for a realm and purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// Key id, for the JWS header.
    pub kid: Kid,
    /// Algorithm, for the JWS header.
    pub alg: Algorithm,
}

/// A signature in JOSE encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(pub Vec<u8>);

/// Keys of one realm, purpose and algorithm, in insertion order: the unit key states are
/// computed over, so a mint never walks other realms' keys.
type Group = Vec<KeyRecord>;
type GroupKey = (RealmId, KeyPurpose, String);

struct Loaded {
    generation: i64,
    /// When it was read.
    read_at: std::time::Instant,
    /// A key that is not revoked has no private half here: its HSM object was not found (a
    /// key another process made a moment ago may not be visible yet) or its sealed half did
    /// not open. Such a table is read again now and then, not only on the next key change.
    missing: bool,
    groups: HashMap<GroupKey, Group>,
    /// Where each kid sits: its group and its index there.
    by_kid: HashMap<Kid, (GroupKey, usize)>,
    keys: HashMap<Kid, Usable>,
}

/// A private key the signer can use: unsealed in this process, or an object in the HSM.
enum Usable {
    Software(PrivateKey),
    Hsm(Arc<Hsm>, HsmKey),
}

/// How often a key table with a key missing its private half is read again.
const RETRY_MISSING: std::time::Duration = std::time::Duration::from_secs(1);
/// How many times, and how far apart, a signing request that finds no usable key while one is
/// missing looks again before it fails.
const MISSING_RETRIES: usize = 5;
const MISSING_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Signs for realms with their own keys only.
pub struct Signer {
    store: Arc<dyn Store>,
    /// `None`: a signer of a public-only custody, which has no key to sign with.
    kek: Option<Arc<Kek>>,
    hsm: Option<Arc<Hsm>>,
    loaded: Mutex<Option<Arc<Loaded>>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub(crate) fn new(store: Arc<dyn Store>, kek: Option<Arc<Kek>>, hsm: Option<Arc<Hsm>>) -> Self {
        Self {
            store,
            kek,
            hsm,
            loaded: Mutex::new(None),
        }
    }

    /// The current key table, unsealing keys again only if it changed. Every key change bumps
    /// the generation this compares: one made through this process is seen on the next call,
    /// one made by another (the CLI) within `store::GENERATIONS_STALE_AFTER`, which that
    /// command waits out before it returns.
    fn loaded(&self) -> Result<Arc<Loaded>> {
        self.loaded_unless(|_| false)
    }

    /// [`Self::loaded`], read again if the table it would give satisfies `stale`.
    fn loaded_unless(&self, stale: impl Fn(&Loaded) -> bool) -> Result<Arc<Loaded>> {
        // The shared copy of the counters (read at most every 25 ms; a revocation through this
        // process is seen at once, one by the CLI before that command returns), not a read
        // per signature.
        let generation = self.store.generations()?.keys;
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.as_ref()
            && l.generation == generation
            && !(l.missing && l.read_at.elapsed() >= RETRY_MISSING)
            && !stale(l)
        {
            return Ok(l.clone());
        }
        let read_at = std::time::Instant::now();
        let mut missing = false;
        let records = self.store.list_keys(None)?;
        let mut keys = HashMap::new();
        for k in &records {
            if k.revoked_at.is_some() {
                continue;
            }
            let Some(alg) = Algorithm::from_jose(&k.alg) else {
                continue;
            };
            let Some(kek) = self.kek.as_deref() else {
                break;
            };
            if k.origin == KeyOrigin::Hsm {
                let binding = crate::hsm::binding(&k.realm, k.purpose, &k.alg);
                // One unreachable key must not stop every other realm from signing.
                let found = match &self.hsm {
                    Some(hsm) => match hsm.find(&k.kid, &binding, alg) {
                        Ok(h) => h.map(|h| (hsm.clone(), h)),
                        Err(e) => {
                            tracing::error!(target: "keypost::security", kid = %k.kid, error = %e, "HSM lookup failed");
                            None
                        }
                    },
                    None => None,
                };
                match found {
                    Some((hsm, key)) => {
                        keys.insert(k.kid.clone(), Usable::Hsm(hsm, key));
                    }
                    None => {
                        missing = true;
                        tracing::error!(target: "keypost::security", kid = %k.kid, "key is held in an HSM this signer does not reach (or the token lost it)")
                    }
                }
                continue;
            }
            let Some(pkcs8) = kek.open(&k.sealed, &aad(&k.kid, &k.realm, k.purpose, &k.alg)) else {
                missing = true;
                tracing::error!(target: "keypost::security", kid = %k.kid, "sealed key does not open: wrong key-encryption key or tampered row");
                continue;
            };
            keys.insert(
                k.kid.clone(),
                Usable::Software(PrivateKey::from_pkcs8(&pkcs8, alg)?),
            );
        }
        let mut groups: HashMap<GroupKey, Group> = HashMap::new();
        let mut by_kid = HashMap::new();
        for k in records {
            let gk = (k.realm.clone(), k.purpose, k.alg.clone());
            let group = groups.entry(gk.clone()).or_default();
            by_kid.insert(k.kid.clone(), (gk, group.len()));
            group.push(k);
        }
        let l = Arc::new(Loaded {
            generation,
            read_at,
            missing,
            groups,
            by_kid,
            keys,
        });
        *slot = Some(l.clone());
        Ok(l)
    }

    /// The active key for `realm`, `purpose` and `alg` at `now`.
    pub fn current(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<SigningKey> {
        let l = self.loaded()?;
        Self::current_in(&l, realm, purpose, alg, now)
    }

    /// Picks the active key and signs what `input` builds for it (the JWS header names the
    /// key), reading the key table once.
    pub fn sign_current(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        now: UnixTime,
        input: impl FnOnce(&SigningKey) -> Vec<u8>,
    ) -> Result<(SigningKey, Vec<u8>, Signature)> {
        let mut l = self.loaded()?;
        let mut key = Self::current_in(&l, realm, purpose, alg, now);
        // No usable key while one is missing its private half: a key another process has just
        // made in the HSM may not be visible to this process's session yet. Looked for again
        // a few times (a short, bounded wait) before the request fails.
        for _ in 0..MISSING_RETRIES {
            if !(key.is_err() && l.missing) {
                break;
            }
            store::clock::sleep(MISSING_RETRY_PAUSE);
            l = self.loaded_unless(|_| true)?;
            key = Self::current_in(&l, realm, purpose, alg, now);
        }
        let key = key?;
        let bytes = input(&key);
        let sig = Self::sign_in(&l, realm, purpose, &key.kid, &bytes, now)?;
        Ok((key, bytes, sig))
    }

    fn current_in(
        l: &Loaded,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<SigningKey> {
        let no_key = || Error::NoActiveKey {
            realm: realm.to_string(),
            purpose: purpose.to_string(),
        };
        let group = l
            .groups
            .get(&(realm.clone(), purpose, alg.as_str().to_owned()))
            .ok_or_else(no_key)?;
        group
            .iter()
            .zip(states(group, now))
            .find(|(k, s)| *s == KeyState::Active && l.keys.contains_key(&k.kid))
            .map(|(k, _)| SigningKey {
                kid: k.kid.clone(),
                alg,
            })
            .ok_or_else(no_key)
    }

    /// Signs `input` with `kid` on behalf of `realm` for `purpose`. Refuses a key bound to any
    /// other realm or purpose, and any key that is not active at `now`.
    pub fn sign(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        kid: &Kid,
        input: &[u8],
        now: UnixTime,
    ) -> Result<Signature> {
        let l = self.loaded()?;
        Self::sign_in(&l, realm, purpose, kid, input, now)
    }

    fn sign_in(
        l: &Loaded,
        realm: &RealmId,
        purpose: KeyPurpose,
        kid: &Kid,
        input: &[u8],
        now: UnixTime,
    ) -> Result<Signature> {
        let refuse = |why: &'static str| {
            tracing::warn!(target: "keypost::security", %kid, %realm, reason = why, "signer refused");
            Err(Error::Refused(why))
        };
        let Some((gk, idx)) = l.by_kid.get(kid) else {
            return refuse("unknown key");
        };
        let Some(group) = l.groups.get(gk) else {
            return refuse("unknown key");
        };
        let Some(record) = group.get(*idx) else {
            return refuse("unknown key");
        };
        if &record.realm != realm {
            return refuse("key is bound to another realm");
        }
        if record.purpose != purpose {
            return refuse("key is for another purpose");
        }
        match states(group, now).get(*idx) {
            Some(KeyState::Active) => {}
            Some(KeyState::Revoked) => return refuse("key is revoked"),
            Some(KeyState::Pending) => return refuse("key is not active yet"),
            _ => return refuse("key is retired or expired"),
        }
        let Some(key) = l.keys.get(kid) else {
            return refuse("key is not loaded");
        };
        Ok(Signature(match key {
            Usable::Software(key) => key.sign(input)?,
            Usable::Hsm(hsm, key) => hsm.sign(key, input)?,
        }))
    }
}
