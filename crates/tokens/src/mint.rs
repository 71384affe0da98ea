//! Minting: claims → JWS signed by the realm's active key → ledger row written durably →
//! token returned. A token is never returned before its ledger row is on disk.

use std::sync::Arc;

use aws_lc_rs::{digest, rand};
use keys::{Algorithm, SignService};
use serde_json::json;
use store::{
    AuditRecord, ClientId, Jti, KeyPurpose, LedgerEntry, RealmId, SessionId, Store, TokenKind,
    UnixTime,
};
use zeroize::Zeroizing;

use crate::Error;
use crate::claims::{AccessClaims, issuer_for};
use crate::jose::b64;
use crate::ledger::LedgerCache;

/// SHA-256 of a token string, as the ledger stores it.
pub fn token_hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn random_id(bytes: usize) -> Result<String, Error> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rand::fill(&mut buf).map_err(|_| Error::Keys(keys::Error::Crypto))?;
    Ok(b64(&buf))
}

/// A token id: the current time in milliseconds (12 hex digits) and 80 random bits. Unique
/// by the random part; the time prefix is for the ledger's and the audit log's jti indexes,
/// where fully random ids would land every insert of a group commit on a different b-tree
/// page (each page rewritten to the WAL in every commit). The id is not a secret: the
/// ledger matches a token by its hash, not by its jti alone.
fn new_jti() -> Result<Jti, Error> {
    let ms = store::clock::now_millis();
    let mut id = String::with_capacity(12 + 14);
    store::push_jti_time_prefix(&mut id, ms);
    id.push_str(&random_id(10)?);
    Jti::new(id).map_err(|e| Error::Encoding(e.to_string()))
}

/// What to mint for one grant.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// Realm issuing.
    pub realm: RealmId,
    /// The realm's access-token algorithm.
    pub access_alg: Algorithm,
    /// Subject (account id or client id).
    pub subject: String,
    /// Client.
    pub client_id: ClientId,
    /// Granted scope (space-separated).
    pub scope: String,
    /// Audience URIs.
    pub audience: Vec<String>,
    /// Sign-in session.
    pub session: Option<SessionId>,
    /// Access-token lifetime, seconds.
    pub access_ttl: i64,
    /// An ID token too, if the grant is an OIDC one.
    pub id_token: Option<IdTokenRequest>,
    /// A refresh token too, with this lifetime (seconds).
    pub refresh: Option<i64>,
    /// The refresh family every token of this grant belongs to — a rotated refresh token's, an
    /// authorization code's — with or without a refresh token this time, so that revoking the
    /// family reaches them all. `None` with `refresh` starts a new family.
    pub family: Option<String>,
    /// The refresh token this grant rotates: marked used in the same durable write as the
    /// new tokens. If it was used already nothing is issued and minting fails with
    /// [`store::Error::Consumed`] (inside [`Error::Ledger`]): a reuse. (Nothing is issued
    /// into a revoked family either: [`store::Error::FamilyRevoked`].)
    pub rotates: Option<Jti>,
}

/// ID-token contents beyond the access token's.
#[derive(Debug, Clone)]
pub struct IdTokenRequest {
    /// Algorithm (RS256 unless the client registered another).
    pub alg: Algorithm,
    /// Lifetime, seconds.
    pub ttl: i64,
    /// When the user authenticated.
    pub auth_time: UnixTime,
    /// The nonce from the authorization request.
    pub nonce: Option<String>,
    /// `email` claim.
    pub email: Option<String>,
    /// `name` claim.
    pub name: Option<String>,
}

/// Tokens minted for one grant, already in the ledger.
#[derive(Clone)]
pub struct Issued {
    /// The access token.
    pub access_token: String,
    /// Its jti.
    pub access_jti: Jti,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The ID token, if requested.
    pub id_token: Option<String>,
    /// The refresh token, if requested.
    pub refresh_token: Option<String>,
    /// The refresh family, if any.
    pub family: Option<String>,
    /// Key that signed the access token.
    pub kid: store::Kid,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_jti", &self.access_jti)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// An opaque refresh token: `kpr1.{jti}.{secret}`. Only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// The ledger id inside it.
    pub jti: Jti,
}

impl RefreshToken {
    /// Extracts the jti of a presented refresh token, if it has the right shape.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix("kpr1.")?;
        let (jti, secret) = rest.split_once('.')?;
        if secret.len() != 43 || token.len() > 256 {
            return None;
        }
        Some(Self {
            jti: Jti::new(jti).ok()?,
        })
    }
}

/// Mints tokens for every realm, each with that realm's own keys.
pub struct Minter {
    signer: Arc<dyn SignService>,
    store: Arc<dyn Store>,
    public_url: String,
    ledger_cache: Arc<LedgerCache>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter signing through `signer` and recording in `store`'s ledger.
    pub fn new(
        signer: Arc<dyn SignService>,
        store: Arc<dyn Store>,
        public_url: impl Into<String>,
    ) -> Self {
        Self {
            signer,
            store,
            public_url: public_url.into(),
            ledger_cache: Arc::default(),
        }
    }

    /// The cache this minter records its durable access tokens in, for the
    /// [`crate::Gate`]s of this process ([`crate::Gate::with_ledger_cache`]).
    pub fn ledger_cache(&self) -> Arc<LedgerCache> {
        self.ledger_cache.clone()
    }

    /// The same cache, borrowed (the refresh grant reads through it).
    pub fn cache(&self) -> &LedgerCache {
        &self.ledger_cache
    }

    /// Mints what `req` asks for, records every token in the ledger in one durable write, and
    /// only then returns them.
    pub fn mint(&self, req: &MintRequest, now: UnixTime) -> Result<Issued, Error> {
        self.mint_audited(req, now, |_| Vec::new())
    }

    /// Like [`Minter::mint`], and writes the audit records `audit` makes of the issued tokens
    /// in the same transaction as their ledger rows: issued and audited, or neither.
    pub fn mint_audited(
        &self,
        req: &MintRequest,
        now: UnixTime,
        audit: impl FnOnce(&Issued) -> Vec<AuditRecord>,
    ) -> Result<Issued, Error> {
        let plan = Plan::new(&self.public_url, req, now)?;
        let access = self.signer.sign_jws(
            &req.realm,
            KeyPurpose::AccessToken,
            req.access_alg,
            "at+jwt",
            &plan.access_payload,
            now,
        )?;
        let id = match &plan.id {
            Some((_, alg, payload)) => Some(self.signer.sign_jws(
                &req.realm,
                KeyPurpose::IdToken,
                *alg,
                "JWT",
                payload,
                now,
            )?),
            None => None,
        };
        let (issued, durable) = self.queue(plan, req, now, access, id, audit);
        durable.completion.wait()?;
        self.remember(req, durable.entries, durable.generation);
        Ok(issued)
    }

    /// [`Minter::mint_audited`] for async callers: the signatures and the durable ledger
    /// write are awaited, so no thread is parked on the signer process or the commit.
    pub async fn mint_async(
        &self,
        req: &MintRequest,
        now: UnixTime,
        audit: impl FnOnce(&Issued) -> Vec<AuditRecord>,
    ) -> Result<Issued, Error> {
        let plan = Plan::new(&self.public_url, req, now)?;
        let access = self
            .signer
            .sign_jws_async(
                &req.realm,
                KeyPurpose::AccessToken,
                req.access_alg,
                "at+jwt",
                &plan.access_payload,
                now,
            )
            .await?;
        let id = match &plan.id {
            Some((_, alg, payload)) => Some(
                self.signer
                    .sign_jws_async(&req.realm, KeyPurpose::IdToken, *alg, "JWT", payload, now)
                    .await?,
            ),
            None => None,
        };
        let (issued, durable) = self.queue(plan, req, now, access, id, audit);
        durable.completion.await?;
        self.remember(req, durable.entries, durable.generation);
        Ok(issued)
    }

    /// Records durable tokens in the ledger cache — unless the revocation generation moved
    /// while they were written (something may have revoked them since: only the store can
    /// say). The refresh token this issuance rotated is forgotten either way.
    fn remember(&self, req: &MintRequest, entries: Vec<LedgerEntry>, before: i64) {
        if let Some(rotated) = &req.rotates {
            self.ledger_cache.consumed(rotated);
        }
        let after = self.store.generations().map_or(-1, |g| g.revocations);
        if before >= 0 && after == before {
            self.ledger_cache.issued(entries, before);
        }
    }

    /// Assembles the signed tokens and queues their ledger rows (with `audit`'s records).
    /// The tokens must not leave before the returned completion says the rows are durable.
    fn queue(
        &self,
        plan: Plan,
        req: &MintRequest,
        now: UnixTime,
        access: Signed,
        id: Option<Signed>,
        audit: impl FnOnce(&Issued) -> Vec<AuditRecord>,
    ) -> (Issued, Durable) {
        let entry = |jti: &Jti, kind, kid: Option<store::Kid>, exp, token: &str| LedgerEntry {
            jti: jti.clone(),
            realm: req.realm.clone(),
            kind,
            subject: req.subject.clone(),
            client_id: req.client_id.clone(),
            kid,
            session_id: req.session.clone(),
            family_id: plan.family.clone(),
            scope: req.scope.clone(),
            audience: req.audience.join(" "),
            issued_at: now,
            expires_at: exp,
            token_hash: token_hash(token),
            revoked_at: None,
            used_at: None,
        };
        let mut entries = Vec::with_capacity(3);
        let (access_token, kid) = compact(access);
        entries.push(entry(
            &plan.access_jti,
            TokenKind::Access,
            Some(kid.clone()),
            now + req.access_ttl,
            &access_token,
        ));
        let id_token = match (id, &plan.id, &req.id_token) {
            (Some(signed), Some((jti, _, _)), Some(idr)) => {
                let (tok, id_kid) = compact(signed);
                entries.push(entry(jti, TokenKind::Id, Some(id_kid), now + idr.ttl, &tok));
                Some(tok)
            }
            _ => None,
        };
        let refresh_token = match (&plan.refresh, &req.refresh) {
            (Some((jti, tok)), Some(ttl)) => {
                entries.push(entry(jti, TokenKind::Refresh, None, now + ttl, tok));
                Some(tok.to_string())
            }
            _ => None,
        };
        // The durable write that makes these tokens real. Nothing is returned if it fails.
        let issued = Issued {
            access_token,
            access_jti: plan.access_jti,
            expires_in: req.access_ttl,
            id_token,
            refresh_token,
            family: plan.family,
            kid,
        };
        // Read before the write: see `LedgerCache::issued`. A read error only means the
        // token is not cached (generation -1 matches nothing).
        let generation = self.store.generations().map_or(-1, |g| g.revocations);
        let completion = self.store.submit_issuance(
            &entries,
            &audit(&issued),
            req.rotates.as_ref().map(|jti| (jti, now)),
        );
        (
            issued,
            Durable {
                completion,
                entries,
                generation,
            },
        )
    }
}

/// A queued issuance: its completion, and what to cache once it completes.
struct Durable {
    completion: store::Completion,
    entries: Vec<LedgerEntry>,
    generation: i64,
}

/// A signer's answer: the key, the signing input, the signature.
type Signed = (keys::SigningKey, String, keys::Signature);

fn compact((key, input, sig): Signed) -> (String, store::Kid) {
    (format!("{input}.{}", b64(&sig.0)), key.kid)
}

/// Everything about a mint decided before anything is signed: ids, claims, the refresh
/// token and its family.
struct Plan {
    access_jti: Jti,
    /// The access token's claims, base64url-encoded JSON.
    access_payload: String,
    /// The ID token's jti, algorithm and encoded claims.
    id: Option<(Jti, Algorithm, String)>,
    /// The refresh token's jti and the token itself.
    refresh: Option<(Jti, Zeroizing<String>)>,
    family: Option<String>,
}

impl Plan {
    fn new(public_url: &str, req: &MintRequest, now: UnixTime) -> Result<Plan, Error> {
        let enc = |v: &serde_json::Value| {
            serde_json::to_vec(v)
                .map(|b| b64(&b))
                .map_err(|e| Error::Encoding(e.to_string()))
        };
        let iss = issuer_for(public_url, &req.realm);
        let family = match (&req.family, &req.refresh) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(_)) => Some(random_id(16)?),
            (None, None) => None,
        };
        let access_jti = new_jti()?;
        let claims = AccessClaims {
            iss: iss.clone(),
            sub: req.subject.clone(),
            aud: req.audience.clone(),
            exp: now + req.access_ttl,
            iat: now,
            nbf: now,
            jti: access_jti.to_string(),
            client_id: req.client_id.to_string(),
            scope: req.scope.clone(),
            tid: req.realm.to_string(),
            sid: req.session.as_ref().map(|s| s.to_string()),
        };
        // Straight to bytes: no `serde_json::Value` map built and sorted on the way.
        let access_payload = serde_json::to_vec(&claims)
            .map(|b| b64(&b))
            .map_err(|e| Error::Encoding(e.to_string()))?;
        let id = match &req.id_token {
            None => None,
            Some(idr) => {
                let jti = new_jti()?;
                let mut c = json!({
                    "iss": iss, "sub": req.subject, "aud": req.client_id.as_str(), "azp": req.client_id.as_str(),
                    "exp": now + idr.ttl, "iat": now, "auth_time": idr.auth_time, "jti": jti.as_str(),
                });
                if let Some(obj) = c.as_object_mut() {
                    let mut put = |k: &str, v: &Option<String>| {
                        if let Some(v) = v {
                            obj.insert(k.into(), v.clone().into());
                        }
                    };
                    put("nonce", &idr.nonce);
                    put("email", &idr.email);
                    put("name", &idr.name);
                    put("sid", &req.session.as_ref().map(|s| s.to_string()));
                }
                Some((jti, idr.alg, enc(&c)?))
            }
        };
        let refresh = match &req.refresh {
            None => None,
            Some(_) => {
                let jti = new_jti()?;
                let secret = Zeroizing::new(random_id(32)?);
                let tok = Zeroizing::new(format!("kpr1.{jti}.{}", secret.as_str()));
                Some((jti, tok))
            }
        };
        Ok(Plan {
            access_jti,
            access_payload,
            id,
            refresh,
            family,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    #[test]
    fn a_jti_is_the_time_in_hex_then_80_random_bits() {
        let before = u128::from(store::clock::now_millis());
        let (a, b) = (new_jti().unwrap(), new_jti().unwrap());
        let after = u128::from(store::clock::now_millis());
        for jti in [&a, &b] {
            let (time, random) = jti.as_str().split_at(12);
            assert!(
                time.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            let ms = u128::from_str_radix(time, 16).unwrap();
            assert!(
                (before..=after).contains(&ms),
                "{time} is the time of minting"
            );
            assert_eq!(B64.decode(random).unwrap().len(), 10);
        }
        assert_ne!(a, b);
    }
}
