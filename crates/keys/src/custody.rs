//! Custody operations over the key table: create, import, rotate (scheduled and manual),
//! revoke, rewrap, list, and the public views (JWKS, verifying keys) of one realm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use aws_lc_rs::signature::ParsedPublicKey;
use store::{KeyOrigin, KeyPurpose, KeyRecord, Kid, RealmId, Store, UnixTime};
use zeroize::Zeroizing;

use crate::material::{Jwk, Jwks, PrivateKey, PublicMaterial};
use crate::{Algorithm, Error, Hsm, Kek, Result, Signer};

/// The rotation schedule, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// A new key takes over signing this long after the previous one did (default 7 days).
    pub rotation_period: i64,
    /// A scheduled key is published in JWKS this long before it signs (default 24 hours), so
    /// relying parties that cache JWKS already know it.
    pub publish_ahead: i64,
    /// The longest lifetime of any token a key signs; a retired key stays published this long
    /// after it stops signing.
    pub max_token_lifetime: i64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            rotation_period: 7 * 86_400,
            publish_ahead: 86_400,
            max_token_lifetime: 3_600,
        }
    }
}

impl KeyPolicy {
    /// The hard expiry of a key that starts signing at `activates_at`: one rotation period of
    /// signing, the publish-ahead slack for its successor, then every token it signed expiring.
    /// Validators refuse the key after this even if rotation stopped, so a stalled rotation
    /// fails loudly instead of leaving an ageing key trusted (Storm-0558 step 1).
    fn expiry(&self, activates_at: UnixTime) -> UnixTime {
        activates_at + self.rotation_period + self.publish_ahead + self.max_token_lifetime
    }
}

/// Where a key is in its life at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Published, not yet signing.
    Pending,
    /// The key that signs new tokens for its realm, purpose and algorithm.
    Active,
    /// Superseded: signs nothing new, still verifies tokens it signed until expiry.
    Retiring,
    /// Past its hard expiry; unpublished and refused.
    Expired,
    /// Revoked; unpublished and refused.
    Revoked,
}

impl KeyState {
    /// Whether tokens signed by a key in this state may verify.
    pub fn verifies(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Retiring)
    }

    /// Whether the key is in the realm's JWKS.
    pub fn published(self) -> bool {
        matches!(
            self,
            KeyState::Pending | KeyState::Active | KeyState::Retiring
        )
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

/// Computes each record's state. A key is superseded once any newer key of the same realm,
/// purpose and algorithm has activated, even if that newer key was later revoked: revoking the
/// active key never silently brings an older one back.
pub(crate) fn states(records: &[KeyRecord], now: UnixTime) -> Vec<KeyState> {
    // Rank: activation time; within one second a live key beats a revoked one (revoke and
    // replace at once) and a later insertion beats an earlier one (import, manual rotation).
    // `records` come in insertion order (`KeyStore::list_keys`), so the index is that order.
    let rank = |i: usize, k: &KeyRecord| (k.activates_at, k.revoked_at.is_none(), i);
    records
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if k.revoked_at.is_some() {
                return KeyState::Revoked;
            }
            if now >= k.expires_at {
                return KeyState::Expired;
            }
            if now < k.activates_at {
                return KeyState::Pending;
            }
            let superseded = records.iter().enumerate().any(|(j, o)| {
                o.realm == k.realm
                    && o.purpose == k.purpose
                    && o.alg == k.alg
                    && o.activates_at <= now
                    && rank(j, o) > rank(i, k)
            });
            if superseded {
                KeyState::Retiring
            } else {
                KeyState::Active
            }
        })
        .collect()
}

/// What `keys list` shows about a key. No private material.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    /// Key id.
    pub kid: Kid,
    /// Realm.
    pub realm: RealmId,
    /// Purpose.
    pub purpose: KeyPurpose,
    /// Algorithm.
    pub alg: String,
    /// State now.
    pub state: KeyState,
    /// Generated or imported.
    pub origin: KeyOrigin,
    /// Created (and published).
    pub created_at: UnixTime,
    /// Starts signing.
    pub activates_at: UnixTime,
    /// Hard expiry.
    pub expires_at: UnixTime,
    /// Revoked at.
    pub revoked_at: Option<UnixTime>,
}

/// One entry of a realm's key history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyHistory {
    /// What `keys list` shows.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// When a successor took over signing, if one has.
    pub retired_at: Option<UnixTime>,
    /// The public key.
    pub public_jwk: serde_json::Value,
}

/// A public key that may verify tokens of one realm, parsed once.
pub struct VerifyingKey {
    record: KeyRecord,
    alg: Algorithm,
    parsed: ParsedPublicKey,
    /// For an access-token key: the protected header (base64url) Keypost's access tokens
    /// signed with it carry.
    access_header: Option<Box<str>>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.record.kid)
            .field("realm", &self.record.realm)
            .finish()
    }
}

impl VerifyingKey {
    /// Key id.
    pub fn kid(&self) -> &Kid {
        &self.record.kid
    }
    /// The realm the key is bound to.
    pub fn realm(&self) -> &RealmId {
        &self.record.realm
    }
    /// The algorithm the key is pinned to.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
    /// What the key signs.
    pub fn purpose(&self) -> KeyPurpose {
        self.record.purpose
    }
    /// When it starts signing.
    pub fn activates_at(&self) -> UnixTime {
        self.record.activates_at
    }
    /// Hard expiry.
    pub fn expires_at(&self) -> UnixTime {
        self.record.expires_at
    }
    /// When it was revoked.
    pub fn revoked_at(&self) -> Option<UnixTime> {
        self.record.revoked_at
    }
    /// For an access-token key, the protected header (base64url, exactly as written) of the
    /// access tokens Keypost signs with it: `{"alg":…,"typ":"at+jwt","kid":…}`.
    pub fn access_header(&self) -> Option<&str> {
        self.access_header.as_deref()
    }
    /// Verifies a signature over `input` (constant-time library code).
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(input, signature).is_ok()
    }
    /// Whether the algorithm signs the SHA-256 of its input (ES256, RS256, PS256; Ed25519
    /// hashes inside the scheme), so a caller that hashes the input anyway can verify with
    /// [`Self::verify_sha256`] rather than have it hashed twice.
    pub fn signs_sha256(&self) -> bool {
        match self.alg {
            Algorithm::ES256 | Algorithm::RS256 | Algorithm::PS256 => true,
            Algorithm::EdDSA => false,
        }
    }
    /// Verifies a signature over the input whose SHA-256 is `input_digest`. False for a key
    /// that does not [sign SHA-256](Self::signs_sha256) and for a digest of another algorithm.
    pub fn verify_sha256(&self, input_digest: &digest::Digest, signature: &[u8]) -> bool {
        self.signs_sha256()
            && input_digest.algorithm() == &digest::SHA256
            && self
                .parsed
                .verify_digest_sig(input_digest, signature)
                .is_ok()
    }
}

/// The parsed public key of `jwk` for `alg`.
pub(crate) fn verifying_from(alg: Algorithm, jwk: &Jwk) -> Option<ParsedPublicKey> {
    match jwk.verification_material()? {
        PublicMaterial::Raw(bytes) => ParsedPublicKey::new(alg.verification(), bytes).ok(),
        PublicMaterial::Rsa { n, e } => {
            let params = match alg {
                Algorithm::PS256 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
                _ => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            };
            aws_lc_rs::rsa::PublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok()
        }
    }
}

fn parse_verifying(record: KeyRecord) -> Option<VerifyingKey> {
    let alg = Algorithm::from_jose(&record.alg)?;
    let jwk: Jwk = serde_json::from_str(&record.public_jwk).ok()?;
    // The kid is the key's thumbprint: a row whose public key was swapped for another (by
    // someone who can write the database) names a kid that key does not have.
    if crate::material::thumbprint(&jwk) != record.kid.as_str() {
        tracing::error!(target: "keypost::security", kid = %record.kid, "stored public key does not match its kid; ignoring it");
        return None;
    }
    let parsed = verifying_from(alg, &jwk)?;
    let access_header = (record.purpose == KeyPurpose::AccessToken)
        .then(|| crate::remote::jws_header(alg, &record.kid, "at+jwt").into());
    Some(VerifyingKey {
        record,
        alg,
        parsed,
        access_header,
    })
}

/// Every key Keypost knows, indexed by realm, for validation. Revoked and expired keys are kept
/// so the validator can name the reason; [`VerifyingKeys::in_realm`] is the only lookup that
/// may find a key to verify with.
#[derive(Debug, Default)]
pub struct VerifyingKeys {
    /// A realm's few keys are searched in turn. foldhash, not SipHash, finds the realm (every
    /// validation does): only the store's realms go in, none a request chooses.
    by_realm: HashMap<RealmId, Vec<Arc<VerifyingKey>>, foldhash::fast::RandomState>,
}

impl VerifyingKeys {
    /// Looks `kid` up in `realm`'s keys and nowhere else.
    pub fn in_realm(&self, realm: &RealmId, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_realm
            .get(realm)?
            .iter()
            .find(|k| k.kid().as_str() == kid)
    }

    /// The key of `realm` whose access tokens carry exactly the protected header `header`
    /// (base64url, as presented), if one does: a validator that finds one knows what the
    /// header says without decoding it.
    pub fn by_access_header(&self, realm: &RealmId, header: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_realm
            .get(realm)?
            .iter()
            .find(|k| k.access_header() == Some(header))
    }

    /// The realm a kid belongs to, if any. For diagnostics (the audit reason) only: never use
    /// the answer to choose a key.
    pub fn owner_of(&self, kid: &str) -> Option<&RealmId> {
        self.by_realm
            .iter()
            .find(|(_, keys)| keys.iter().any(|k| k.kid().as_str() == kid))
            .map(|(r, _)| r)
    }
}

/// Key custody over a [`Store`] and, where private keys are handled, a [`Kek`].
pub struct Custody {
    store: Arc<dyn Store>,
    /// `None` in a process that must never touch a private key (the web-facing `serve`):
    /// it can publish and verify, and creating, importing or signing is refused.
    kek: Option<Arc<Kek>>,
    /// Where the token-signing keys of some realms are made and kept instead of being sealed.
    hsm: Option<Arc<Hsm>>,
    policy: KeyPolicy,
    verifying: Mutex<Option<(i64, Arc<VerifyingKeys>)>>,
}

impl std::fmt::Debug for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custody")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What a new key row says about the key, besides its key material.
struct NewKey<'a> {
    realm: &'a RealmId,
    purpose: KeyPurpose,
    alg: Algorithm,
    origin: KeyOrigin,
    activates_at: UnixTime,
}

pub(crate) fn aad(kid: &Kid, realm: &RealmId, purpose: KeyPurpose, alg: &str) -> Vec<u8> {
    format!("keypost-key-v1|{kid}|{realm}|{purpose}|{alg}").into_bytes()
}

impl Custody {
    /// Custody over `store`, sealing with `kek`.
    pub fn new(store: Arc<dyn Store>, kek: Arc<Kek>, policy: KeyPolicy) -> Self {
        Self {
            store,
            kek: Some(kek),
            hsm: None,
            policy,
            verifying: Mutex::new(None),
        }
    }

    /// Custody of public keys only, for a process that must hold no private key and no
    /// key-encryption key: JWKS, key history and verification work; everything that needs a
    /// private key is refused (signing goes to the signer process).
    pub fn public(store: Arc<dyn Store>, policy: KeyPolicy) -> Self {
        Self {
            store,
            kek: None,
            hsm: None,
            policy,
            verifying: Mutex::new(None),
        }
    }

    /// Makes and uses the token-signing keys of the realms `hsm` holds inside it. Keys made
    /// before (sealed) keep working until they rotate out.
    pub fn with_hsm(mut self, hsm: Arc<Hsm>) -> Self {
        self.hsm = Some(hsm);
        self
    }

    /// Whether this custody can create and unseal private keys.
    pub fn holds_private_keys(&self) -> bool {
        self.kek.is_some()
    }

    fn kek(&self) -> Result<&Kek> {
        self.kek
            .as_deref()
            .ok_or_else(|| Error::Kek("no key-encryption key in this process".into()))
    }

    /// The rotation policy.
    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    /// A signer over the same keys. The signer is the only holder of unsealed private keys.
    pub fn signer(&self) -> Signer {
        Signer::new(self.store.clone(), self.kek.clone(), self.hsm.clone())
    }

    /// Seals a software key under the key-encryption key and stores it.
    fn seal_and_store(
        &self,
        row: NewKey<'_>,
        key: &PrivateKey,
        pkcs8: &Zeroizing<Vec<u8>>,
        now: UnixTime,
    ) -> Result<Kid> {
        let jwk = key.public_jwk();
        let kid = Kid::new(jwk.kid.clone()).map_err(|_| Error::Crypto)?;
        let sealed = self
            .kek()?
            .seal(pkcs8, &aad(&kid, row.realm, row.purpose, row.alg.as_str()))?;
        self.store_key(row, &jwk, sealed, now)
    }

    fn store_key(&self, key: NewKey<'_>, jwk: &Jwk, sealed: Vec<u8>, now: UnixTime) -> Result<Kid> {
        let kid = Kid::new(jwk.kid.clone()).map_err(|_| Error::Crypto)?;
        let (realm, purpose, alg) = (key.realm, key.purpose, key.alg.as_str());
        let record = KeyRecord {
            kid: kid.clone(),
            realm: realm.clone(),
            purpose,
            alg: alg.to_owned(),
            public_jwk: serde_json::to_string(jwk).map_err(|_| Error::Crypto)?,
            sealed,
            origin: key.origin,
            created_at: now,
            activates_at: key.activates_at,
            expires_at: self.policy.expiry(key.activates_at),
            revoked_at: None,
        };
        match self.store.insert_key(&record) {
            Err(store::Error::Conflict(_)) => return Err(Error::DuplicateKey(kid.to_string())),
            other => other?,
        }
        tracing::info!(target: "keypost::security", %kid, %realm, %purpose, alg, origin = %key.origin, activates_at = key.activates_at, "key created");
        Ok(kid)
    }

    /// Generates a key for `realm` that starts signing at `activates_at`: inside the HSM if
    /// the realm's token-signing keys live there, else in software, sealed at once.
    pub fn generate(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        alg: Algorithm,
        activates_at: UnixTime,
        now: UnixTime,
    ) -> Result<Kid> {
        self.require_realm(realm)?;
        // Only a custody that may hold private keys makes them, wherever they are kept.
        self.kek()?;
        if let Some(hsm) = self.hsm.as_deref()
            && purpose != KeyPurpose::Audit
            && hsm.holds(realm)
        {
            let jwk = hsm.generate(alg, &crate::hsm::binding(realm, purpose, alg.as_str()))?;
            let row = NewKey {
                realm,
                purpose,
                alg,
                origin: KeyOrigin::Hsm,
                activates_at,
            };
            let stored = self.store_key(row, &jwk, Vec::new(), now);
            if stored.is_err()
                && let Ok(kid) = Kid::new(jwk.kid.clone())
            {
                // A key no row names would sit in the token for ever.
                let _ = hsm.destroy(&kid);
            }
            return stored;
        }
        let (key, pkcs8) = PrivateKey::generate(alg)?;
        let row = NewKey {
            realm,
            purpose,
            alg,
            origin: KeyOrigin::Generated,
            activates_at,
        };
        self.seal_and_store(row, &key, &pkcs8, now)
    }

    /// Binds an externally generated key (PKCS#8 PEM or private JWK) to exactly one realm and
    /// makes it that realm's active key for `purpose`. For access-token keys the realm's
    /// access-token algorithm follows the key. Returns the kid and algorithm.
    pub fn import(
        &self,
        realm: &RealmId,
        purpose: KeyPurpose,
        bytes: &[u8],
        rsa_alg: Algorithm,
        now: UnixTime,
    ) -> Result<(Kid, Algorithm)> {
        self.require_realm(realm)?;
        if purpose == KeyPurpose::Audit {
            // Generated inside only: an imported audit key would let whoever else holds it
            // sign checkpoints over a rewritten log.
            return Err(Error::KeyRejected("audit keys cannot be imported".into()));
        }
        let (key, pkcs8) = PrivateKey::import(bytes, rsa_alg)?;
        let alg = key.alg();
        let row = NewKey {
            realm,
            purpose,
            alg,
            origin: KeyOrigin::Imported,
            activates_at: now,
        };
        let kid = self.seal_and_store(row, &key, &pkcs8, now)?;
        if purpose == KeyPurpose::AccessToken {
            self.store.set_access_token_alg(realm, alg.as_str())?;
        }
        Ok((kid, alg))
    }

    fn require_realm(&self, realm: &RealmId) -> Result<store::Realm> {
        self.store
            .get_realm(realm)?
            .ok_or_else(|| Error::UnknownRealm(realm.to_string()))
    }

    /// The (purpose, algorithm) pairs a realm must always have an active key for: its
    /// access-token algorithm, RS256 ID tokens, every ID-token algorithm a client registered,
    /// and an Ed25519 key that signs the realm's audit checkpoints.
    pub fn needs(&self, realm: &RealmId) -> Result<Vec<(KeyPurpose, Algorithm)>> {
        let r = self.require_realm(realm)?;
        let mut needs = vec![
            (KeyPurpose::AccessToken, r.access_token_alg.parse()?),
            (KeyPurpose::IdToken, Algorithm::RS256),
            (KeyPurpose::Audit, Algorithm::EdDSA),
        ];
        for c in self.store.list_clients(realm)? {
            if let Some(a) = c.id_token_alg.as_deref().and_then(Algorithm::from_jose)
                && !needs.contains(&(KeyPurpose::IdToken, a))
            {
                needs.push((KeyPurpose::IdToken, a));
            }
        }
        Ok(needs)
    }

    /// One step of the automatic schedule for one realm: creates an immediately active key
    /// where none is active, and publishes the successor `publish_ahead` before the active key
    /// has served its rotation period. Idempotent; returns the kids it created.
    pub fn ensure(&self, realm: &RealmId, now: UnixTime) -> Result<Vec<Kid>> {
        let mut created = Vec::new();
        for (purpose, alg) in self.needs(realm)? {
            let records: Vec<KeyRecord> = self
                .store
                .list_keys(Some(realm))?
                .into_iter()
                .filter(|k| k.purpose == purpose && k.alg == alg.as_str())
                .collect();
            let st = states(&records, now);
            let active = records
                .iter()
                .zip(&st)
                .find(|(_, s)| **s == KeyState::Active)
                .map(|(k, _)| k);
            let pending = st.contains(&KeyState::Pending);
            match active {
                None if !pending => created.push(self.generate(realm, purpose, alg, now, now)?),
                None => {}
                Some(current) => {
                    let due = current.activates_at + self.policy.rotation_period;
                    if !pending && now >= due - self.policy.publish_ahead {
                        // Normally `due`; later if we are late (the server was down), but never
                        // after the current key stops being usable.
                        let at = due
                            .max(now + self.policy.publish_ahead)
                            .min(current.expires_at - self.policy.max_token_lifetime)
                            .max(now);
                        created.push(self.generate(realm, purpose, alg, at, now)?);
                    }
                }
            }
        }
        Ok(created)
    }

    /// Manual rotation: a new key for each of the realm's needs, active at once. The previous
    /// keys retire (they stay published until every token they signed has expired).
    pub fn rotate(&self, realm: &RealmId, now: UnixTime) -> Result<Vec<Kid>> {
        self.needs(realm)?
            .into_iter()
            .map(|(purpose, alg)| self.generate(realm, purpose, alg, now, now))
            .collect()
    }

    /// Revokes a key: from now on nothing signs with it or accepts it. If it was the active key
    /// a replacement is created at once, so sign-ins keep working. Returns the revoked record
    /// (`None` if the kid is unknown) and the replacements.
    pub fn revoke(&self, kid: &Kid, now: UnixTime) -> Result<Option<(KeyRecord, Vec<Kid>)>> {
        let Some(record) = self.store.get_key(kid)? else {
            return Ok(None);
        };
        self.store.revoke_key(kid, now)?;
        tracing::warn!(target: "keypost::security", %kid, realm = %record.realm, "key revoked");
        if record.origin == KeyOrigin::Hsm {
            // Revoked keys are refused by policy already; destroying the object means no
            // one with the PIN can sign with it either.
            match self.hsm.as_deref().map(|h| h.destroy(kid)) {
                Some(Ok(true)) => {
                    tracing::warn!(target: "keypost::security", %kid, "revoked key destroyed in the HSM")
                }
                Some(Ok(false)) => {}
                Some(Err(e)) => {
                    tracing::error!(target: "keypost::security", %kid, error = %e, "revoked key could not be destroyed in the HSM")
                }
                None => {
                    tracing::error!(target: "keypost::security", %kid, "revoked key is still in the HSM: this process has no HSM configured")
                }
            }
        }
        let replacements = self.ensure(&record.realm, now)?;
        Ok(self.store.get_key(kid)?.map(|r| (r, replacements)))
    }

    /// Destroys in the HSM every revoked key that is still there — revoked by a process
    /// that had no HSM configured (the admin API, an operator verb elsewhere). Run by the
    /// signer with the key schedule; returns how many it destroyed.
    pub fn purge_revoked_hsm_keys(&self) -> Result<usize> {
        let Some(hsm) = self.hsm.as_deref() else {
            return Ok(0);
        };
        let mut n = 0;
        for k in self.store.list_keys(None)? {
            if k.origin == KeyOrigin::Hsm && k.revoked_at.is_some() && hsm.contains(&k.kid)? {
                hsm.destroy(&k.kid)?;
                tracing::warn!(target: "keypost::security", kid = %k.kid, "revoked key destroyed in the HSM");
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every key the realm ever had, oldest first, with its life (created, activated, retired
    /// when a successor took over, revoked, expires), its state now and its public JWK: the
    /// realm's published key history, so relying parties and auditors can see every key that
    /// was ever valid.
    pub fn history(&self, realm: &RealmId, now: UnixTime) -> Result<Vec<KeyHistory>> {
        let records = self.store.list_keys(Some(realm))?;
        let infos = self.list(Some(realm), now)?;
        let mut out = Vec::with_capacity(records.len());
        for (i, (record, info)) in records.iter().zip(infos).enumerate() {
            // Retired when the next key of its kind (later activation, or same second and
            // inserted later) started signing.
            let retired_at = records
                .iter()
                .enumerate()
                .filter(|(j, o)| {
                    *j != i
                        && o.purpose == record.purpose
                        && o.alg == record.alg
                        && o.activates_at <= now
                        && (o.activates_at, *j) > (record.activates_at, i)
                })
                .map(|(_, o)| o.activates_at)
                .min();
            out.push(KeyHistory {
                public_jwk: serde_json::from_str(&record.public_jwk)
                    .map_err(|e| store::Error::Corrupt(e.to_string()))?,
                retired_at,
                info,
            });
        }
        Ok(out)
    }

    /// Keys with their state now, optionally of one realm.
    pub fn list(&self, realm: Option<&RealmId>, now: UnixTime) -> Result<Vec<KeyInfo>> {
        let records = self.store.list_keys(realm)?;
        let st = states(&records, now);
        Ok(records
            .into_iter()
            .zip(st)
            .map(|(k, state)| KeyInfo {
                kid: k.kid,
                realm: k.realm,
                purpose: k.purpose,
                alg: k.alg,
                state,
                origin: k.origin,
                created_at: k.created_at,
                activates_at: k.activates_at,
                expires_at: k.expires_at,
                revoked_at: k.revoked_at,
            })
            .collect())
    }

    /// The realm's JWKS: its pending, active and retiring token keys, and nothing of any other
    /// realm. Audit keys sign no token, so relying parties never see them.
    pub fn jwks(&self, realm: &RealmId, now: UnixTime) -> Result<Jwks> {
        let records = self.store.list_keys(Some(realm))?;
        let st = states(&records, now);
        let mut keys = Vec::new();
        for (k, s) in records.iter().zip(st) {
            if s.published() && &k.realm == realm && k.purpose != KeyPurpose::Audit {
                keys.push(
                    serde_json::from_str(&k.public_jwk)
                        .map_err(|e| store::Error::Corrupt(e.to_string()))?,
                );
            }
        }
        Ok(Jwks { keys })
    }

    /// All keys as parsed verifying keys, reloaded only when the key table changed.
    pub fn verifying_keys(&self) -> Result<Arc<VerifyingKeys>> {
        self.verifying_keys_at(self.store.key_generation()?)
    }

    /// The verifying keys of key-table `generation` (read by the caller, e.g. together with the
    /// revocation generation), reloading only if it differs from the cached set's.
    pub fn verifying_keys_at(&self, generation: i64) -> Result<Arc<VerifyingKeys>> {
        let mut cache = self.verifying.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, keys)) = cache.as_ref()
            && *g == generation
        {
            return Ok(keys.clone());
        }
        let mut keys = VerifyingKeys::default();
        for record in self.store.list_keys(None)? {
            let kid = record.kid.clone();
            let realm = record.realm.clone();
            match parse_verifying(record) {
                Some(vk) => keys.by_realm.entry(realm).or_default().push(Arc::new(vk)),
                None => tracing::error!(%kid, "stored public key does not parse; ignoring it"),
            }
        }
        let keys = Arc::new(keys);
        *cache = Some((generation, keys.clone()));
        Ok(keys)
    }

    /// An audit key's verifying key as its sealed private half proves it: unsealed under the
    /// key-encryption key and its public key derived again, so a public key added or swapped
    /// in the database by someone without the KEK is never trusted to vouch for the audit log.
    /// `None` unless `kid` is an audit key of `realm` that opens and matches.
    pub fn sealed_audit_key(&self, realm: &RealmId, kid: &str) -> Result<Option<VerifyingKey>> {
        let Ok(kid) = Kid::new(kid) else {
            return Ok(None);
        };
        let Some(record) = self.store.get_key(&kid)? else {
            return Ok(None);
        };
        if &record.realm != realm || record.purpose != KeyPurpose::Audit {
            return Ok(None);
        }
        let alg = Algorithm::from_jose(&record.alg).ok_or(Error::Crypto)?;
        let aad = aad(&record.kid, &record.realm, record.purpose, &record.alg);
        let Some(pkcs8) = self.kek()?.open(&record.sealed, &aad) else {
            return Ok(None);
        };
        let derived = PrivateKey::from_pkcs8(&pkcs8, alg)?.public_jwk();
        if derived.kid != record.kid.as_str() {
            return Ok(None);
        }
        let public_jwk = serde_json::to_string(&derived).map_err(|_| Error::Crypto)?;
        Ok(parse_verifying(KeyRecord {
            public_jwk,
            ..record
        }))
    }

    /// Re-seals every private key under `new_kek`. Each key is rewritten in its own
    /// transaction; a key already under `new_kek` is skipped, so an interrupted run can simply
    /// be repeated. Returns how many keys were rewrapped.
    pub fn rewrap(&self, new_kek: &Kek) -> Result<usize> {
        let mut n = 0;
        for k in self.store.list_keys(None)? {
            if k.origin == KeyOrigin::Hsm {
                // Nothing sealed: the private half never left the HSM.
                continue;
            }
            let aad = aad(&k.kid, &k.realm, k.purpose, &k.alg);
            if new_kek.open(&k.sealed, &aad).is_some() {
                continue;
            }
            let plain = self
                .kek()?
                .open(&k.sealed, &aad)
                .ok_or_else(|| Error::Unseal(k.kid.to_string()))?;
            self.store
                .replace_sealed(&k.kid, &new_kek.seal(&plain, &aad)?)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
