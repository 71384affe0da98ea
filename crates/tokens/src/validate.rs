//! The validation policy (THREAT-MODEL.md, "The validation policy"): one function, all checks,
//! in order, with a typed result.

use std::borrow::Cow;
use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;
use keys::{Algorithm, VerifyingKey, VerifyingKeys};
use store::{
    AccountId, ClientId, Jti, KeyPurpose, Kid, LedgerEntry, RealmId, SessionId, TokenKind, UnixTime,
};

use crate::jose::{CompactJws, Header, MAX_TOKEN_LEN, Member, parse_compact_knowing};
use crate::ledger::{Ledger, LedgerFacts, LedgerVerdict};

/// Why a token was refused. Variants are alphabetical; each has a stable code for the audit
/// log ([`Rejection::code`]). Clients only ever see RFC 6750's `invalid_token` or
/// `insufficient_scope`, never which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The subject's account is disabled or gone.
    AccountDisabled,
    /// `alg` differs from the algorithm the key is pinned to.
    AlgorithmMismatch,
    /// `alg` is not one Keypost accepts (`none`, `HS256`, ...).
    AlgorithmNotAllowed,
    /// `aud` does not name this service.
    AudienceMismatch,
    /// `client_id` is not registered in the realm.
    ClientUnknown,
    /// The header has a `crit` parameter (Keypost understands no extensions).
    CritUnsupported,
    /// Past `exp`.
    Expired,
    /// The header carries `jku`, `jwk`, `x5u` or `x5c`: keys are never taken from a token.
    HeaderKeyForbidden,
    /// The token lacks a scope the operation needs.
    InsufficientScope,
    /// `iat` is in the future.
    IssuedInFuture,
    /// `iss` is not the expected realm's issuer.
    IssuerMismatch,
    /// The signing key is past its hard expiry.
    KeyExpired,
    /// The `kid` names a key of another realm (the Storm-0558 forgery).
    KeyNotInRealm,
    /// The signing key is published but not yet active.
    KeyNotYetActive,
    /// The signing key is revoked.
    KeyRevoked,
    /// The header has no `kid`.
    KidMissing,
    /// The ledger has the jti, but for a different token, realm, subject, client, scope, key
    /// or kind.
    LedgerMismatch,
    /// `exp - iat` exceeds what the realm issues.
    LifetimeExceedsPolicy,
    /// Not a well-formed compact JWS with strict JSON.
    Malformed,
    /// A required claim is missing or has the wrong type.
    MissingClaim,
    /// The signature verifies but Keypost never issued this token: a stolen signing key.
    NotIssued,
    /// Before `nbf`.
    NotYetValid,
    /// The token's session was revoked or ended.
    SessionRevoked,
    /// The signature does not verify with the realm's key.
    SignatureInvalid,
    /// `tid` is not the expected realm.
    TenantMismatch,
    /// The token itself (or its refresh family) was revoked.
    TokenRevoked,
    /// `typ` is not `at+jwt` (an ID token or other JWT presented as an access token).
    TypeMismatch,
    /// No key of any realm has this `kid`.
    UnknownKid,
    /// The key signs another kind of token (an ID-token key).
    WrongKeyPurpose,
}

impl Rejection {
    /// Stable name and code, for audit records and alerts.
    pub fn code(self) -> (&'static str, &'static str) {
        use Rejection::*;
        match self {
            AccountDisabled => ("AccountDisabled", "TK0001"),
            AlgorithmMismatch => ("AlgorithmMismatch", "TK0002"),
            AlgorithmNotAllowed => ("AlgorithmNotAllowed", "TK0003"),
            AudienceMismatch => ("AudienceMismatch", "TK0004"),
            ClientUnknown => ("ClientUnknown", "TK0005"),
            CritUnsupported => ("CritUnsupported", "TK0006"),
            Expired => ("Expired", "TK0007"),
            HeaderKeyForbidden => ("HeaderKeyForbidden", "TK0008"),
            InsufficientScope => ("InsufficientScope", "TK0009"),
            IssuedInFuture => ("IssuedInFuture", "TK0010"),
            IssuerMismatch => ("IssuerMismatch", "TK0011"),
            KeyExpired => ("KeyExpired", "TK0012"),
            KeyNotInRealm => ("KeyNotInRealm", "TK0013"),
            KeyNotYetActive => ("KeyNotYetActive", "TK0014"),
            KeyRevoked => ("KeyRevoked", "TK0015"),
            KidMissing => ("KidMissing", "TK0016"),
            LedgerMismatch => ("LedgerMismatch", "TK0017"),
            LifetimeExceedsPolicy => ("LifetimeExceedsPolicy", "TK0018"),
            Malformed => ("Malformed", "TK0019"),
            MissingClaim => ("MissingClaim", "TK0020"),
            NotIssued => ("NotIssued", "TK0021"),
            NotYetValid => ("NotYetValid", "TK0022"),
            SessionRevoked => ("SessionRevoked", "TK0023"),
            SignatureInvalid => ("SignatureInvalid", "TK0024"),
            TenantMismatch => ("TenantMismatch", "TK0025"),
            TokenRevoked => ("TokenRevoked", "TK0026"),
            TypeMismatch => ("TypeMismatch", "TK0027"),
            UnknownKid => ("UnknownKid", "TK0028"),
            WrongKeyPurpose => ("WrongKeyPurpose", "TK0029"),
        }
    }

    /// The name, e.g. `KeyNotInRealm`.
    pub fn name(self) -> &'static str {
        self.code().0
    }

    /// Whether this rejection means somebody holds a signing key they should not (critical).
    pub fn suggests_key_compromise(self) -> bool {
        matches!(
            self,
            Rejection::KeyNotInRealm
                | Rejection::NotIssued
                | Rejection::LedgerMismatch
                | Rejection::KeyRevoked
        )
    }
}

/// What the token claimed, as far as it could be read; recorded with a rejection. These are
/// attacker-controlled strings, bounded in length, never trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Presented {
    /// Header `kid`.
    pub kid: Option<String>,
    /// Header `alg`.
    pub alg: Option<String>,
    /// `iss`.
    pub iss: Option<String>,
    /// `sub`.
    pub sub: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `jti`.
    pub jti: Option<String>,
}

/// A refused token: the reason and what it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub reason: Rejection,
    /// What it claimed.
    pub presented: Box<Presented>,
}

/// What the resource server expects of a token.
#[derive(Debug, Clone)]
pub struct Expectation<'a> {
    /// The realm that owns the resource. The token's key must be one of *this* realm's.
    pub realm: &'a RealmId,
    /// This realm's issuer URL.
    pub issuer: &'a str,
    /// This service's audience URI.
    pub audience: &'a str,
    /// Longest access-token lifetime the realm issues, seconds.
    pub max_lifetime: i64,
    /// Allowed clock skew, seconds.
    pub leeway: i64,
    /// A scope the operation needs, if any.
    pub required_scope: Option<&'a str>,
}

/// Proof that the signature verified; only this module can make one.
#[derive(Debug, Clone, Copy)]
struct SignatureValid(());
/// Proof that the ledger has this exact token; only this module can make one.
#[derive(Debug, Clone, Copy)]
struct LedgerHit(());

/// A validated access token. Only [`validate`] constructs one, so holding a `Principal` means
/// every check passed.
#[derive(Clone)]
pub struct Principal {
    /// The key that signed it: of the expected realm, so its realm and kid are the token's.
    key: Arc<VerifyingKey>,
    /// The token's ledger row, whose jti, subject, client, scope and session the ledger checks
    /// found to be the token's (shared: no copy of them per validation).
    row: Arc<LedgerEntry>,
    expires_at: UnixTime,
    _proofs: (SignatureValid, LedgerHit),
}

/// What the token says, not the rest of its ledger row (its hash, family, audience).
impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("realm", self.realm())
            .field("kid", self.kid())
            .field("subject", &self.subject())
            .field("client_id", self.client_id())
            .field("scope", &self.row.scope)
            .field("jti", self.jti())
            .field("session", &self.session())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Principal {
    /// The realm the token belongs to (always the expected realm).
    pub fn realm(&self) -> &RealmId {
        self.key.realm()
    }
    /// `sub`.
    pub fn subject(&self) -> &str {
        &self.row.subject
    }
    /// The account, unless this is a client acting for itself.
    pub fn account(&self) -> Option<AccountId> {
        AccountId::new(self.subject())
            .ok()
            .filter(|_| self.subject() != self.client_id().as_str())
    }
    /// The client.
    pub fn client_id(&self) -> &ClientId {
        &self.row.client_id
    }
    /// Granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.row.scope.split_ascii_whitespace()
    }
    /// Whether a scope was granted.
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes().any(|x| x == s)
    }
    /// Token id.
    pub fn jti(&self) -> &Jti {
        &self.row.jti
    }
    /// Signing key.
    pub fn kid(&self) -> &Kid {
        self.key.kid()
    }
    /// Session, if any.
    pub fn session(&self) -> Option<&SessionId> {
        self.row.session_id.as_ref()
    }
    /// Expiry.
    pub fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
}

impl Rejected {
    /// Not a token at all: nothing it presented can be read.
    fn malformed() -> Self {
        Rejected {
            reason: Rejection::Malformed,
            presented: Box::default(),
        }
    }
}

fn bounded(v: &Member) -> Option<String> {
    v.as_str().map(|s| s.chars().take(256).collect())
}

/// Validates an access token for a resource of `expect.realm`. Every check of the policy runs
/// in order; the first failure is the result.
pub fn validate(
    raw: &str,
    expect: &Expectation<'_>,
    now: UnixTime,
    keys: &VerifyingKeys,
    ledger: &dyn Ledger,
) -> Result<Principal, Rejected> {
    if raw.len() > MAX_TOKEN_LEN {
        // Refused before anything is hashed (`parse_compact` would refuse it too).
        return Err(Rejected::malformed());
    }
    validate_digested(raw, &Digests::of(raw), expect, now, keys, ledger)
}

/// The two SHA-256s a validation needs: of the token's signing input (what ES256, RS256 and
/// PS256 sign) and of the whole token (what the ledger row holds, and the verified-token
/// cache's key).
struct Digests {
    input: digest::Digest,
    /// The signing input's length: it ends at the token's last dot.
    input_len: usize,
    token: [u8; 32],
}

impl Digests {
    /// Both, from one pass over `raw`.
    fn of(raw: &str) -> Self {
        let bytes = raw.as_bytes();
        let input_len = signing_input_len(bytes);
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(&bytes[..input_len]);
        let input = context.clone().finish();
        context.update(&bytes[input_len..]);
        let mut token = [0u8; 32];
        token.copy_from_slice(context.finish().as_ref());
        Self {
            input,
            input_len,
            token,
        }
    }

    /// Both, given the token's: only the signing input is hashed.
    fn with_token(raw: &str, token: [u8; 32]) -> Self {
        let bytes = raw.as_bytes();
        let input_len = signing_input_len(bytes);
        Self {
            input: digest::digest(&digest::SHA256, &bytes[..input_len]),
            input_len,
            token,
        }
    }
}

/// Where a token's signing input ends: at its last dot. (A well-formed token has exactly two,
/// as parsing checks; for any other, the split is never used.)
fn signing_input_len(token: &[u8]) -> usize {
    memchr::memrchr(b'.', token).unwrap_or(token.len())
}

/// [`validate`] for a caller that has hashed the whole token already: `token_sha256` must be
/// the SHA-256 of `raw` (the ledger compares it with the row's). The signing input is hashed
/// here, from `raw` itself. (The verified-token cache hashes the token for its key before it
/// knows whether it will hit: one pass for both there would cost every repeat of a token, the
/// common case, more than this second pass costs its first sight.)
pub(crate) fn validate_hashed(
    raw: &str,
    token_sha256: [u8; 32],
    expect: &Expectation<'_>,
    now: UnixTime,
    keys: &VerifyingKeys,
    ledger: &dyn Ledger,
) -> Result<Principal, Rejected> {
    debug_assert_eq!(
        token_sha256.as_slice(),
        digest::digest(&digest::SHA256, raw.as_bytes()).as_ref(),
        "the hash of another token"
    );
    let digests = Digests::with_token(raw, token_sha256);
    validate_digested(raw, &digests, expect, now, keys, ledger)
}

/// [`validate`], given the token's [`Digests`] (made from `raw`, here only).
fn validate_digested(
    raw: &str,
    digests: &Digests,
    expect: &Expectation<'_>,
    now: UnixTime,
    keys: &VerifyingKeys,
    ledger: &dyn Ledger,
) -> Result<Principal, Rejected> {
    // 1. Shape. The header Keypost writes for one of the realm's access-token keys is known
    // by its bytes; any other is decoded and read.
    let mut buf = Vec::with_capacity(raw.len());
    let parsed = parse_compact_knowing(raw, &mut buf, |header| {
        keys.by_access_header(expect.realm, header)
            .map(|key| written_header(key))
    });
    let Ok(jws) = parsed else {
        return Err(Rejected::malformed());
    };
    // What the token presented is only gathered for a refusal's audit record.
    checks(&jws, digests, expect, now, keys, ledger).map_err(|reason| Rejected {
        reason,
        presented: Box::new(Presented::of_jws(&jws)),
    })
}

impl Presented {
    fn of_jws(jws: &CompactJws<'_>) -> Self {
        Presented {
            kid: bounded(&jws.header.kid),
            alg: bounded(&jws.header.alg),
            iss: bounded(&jws.claims.iss),
            sub: bounded(&jws.claims.sub),
            client_id: bounded(&jws.claims.client_id),
            jti: bounded(&jws.claims.jti),
        }
    }

    /// What `token` presents, as far as it parses (nothing if it does not): for refusals
    /// made before any realm's policy could run (an issuer Keypost does not have).
    pub fn of(token: &str) -> Self {
        let mut buf = Vec::new();
        crate::jose::parse_compact(token, &mut buf)
            .map(|jws| Self::of_jws(&jws))
            .unwrap_or_default()
    }
}

/// What the access-token header Keypost writes for `key` reads as: the same members the
/// JSON reading of it fills in (a test holds them to that).
fn written_header(key: &VerifyingKey) -> Header<'_> {
    Header {
        alg: Member::Str(Cow::Borrowed(key.alg().as_str())),
        typ: Member::Str(Cow::Borrowed("at+jwt")),
        kid: Member::Str(Cow::Borrowed(key.kid().as_str())),
        crit: false,
        key_material: false,
    }
}

/// Steps 2 to 7 of the policy on a well-formed token.
fn checks(
    jws: &CompactJws<'_>,
    digests: &Digests,
    expect: &Expectation<'_>,
    now: UnixTime,
    keys: &VerifyingKeys,
    ledger: &dyn Ledger,
) -> Result<Principal, Rejection> {
    macro_rules! reject {
        ($r:expr) => {
            return Err($r)
        };
    }
    let (header, claims) = (&jws.header, &jws.claims);

    // 2. Header. Header-supplied keys are refused by presence, before anything else is read.
    if header.key_material {
        reject!(Rejection::HeaderKeyForbidden);
    }
    let Some(alg) = header.alg.as_str().and_then(Algorithm::from_jose) else {
        reject!(Rejection::AlgorithmNotAllowed)
    };
    // RFC 9068 §4: `typ` is "at+jwt" or "application/at+jwt"; media types compare case-insensitively.
    let typ_ok = header.typ.as_str().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        reject!(Rejection::TypeMismatch);
    }
    if header.crit {
        reject!(Rejection::CritUnsupported);
    }
    let Some(kid) = header.kid.as_str() else {
        reject!(Rejection::KidMissing)
    };

    // 3. Key: only the expected realm's key set is consulted.
    let Some(key) = keys.in_realm(expect.realm, kid) else {
        if keys.owner_of(kid).is_some() {
            reject!(Rejection::KeyNotInRealm);
        }
        reject!(Rejection::UnknownKid);
    };
    if key.revoked_at().is_some() {
        reject!(Rejection::KeyRevoked);
    }
    if now < key.activates_at() {
        reject!(Rejection::KeyNotYetActive);
    }
    if now >= key.expires_at() {
        reject!(Rejection::KeyExpired);
    }
    if key.alg() != alg {
        reject!(Rejection::AlgorithmMismatch);
    }

    // 4. Signature. Where the algorithm signs the input's SHA-256 (ES256, RS256, PS256), it
    // is among the digests (see `Digests`), made from this very token.
    let input = jws.signing_input.as_bytes();
    if digests.input_len != input.len() {
        // Cannot happen (both end at the second and last dot); refused rather than trusted.
        reject!(Rejection::Malformed);
    }
    let verified = if key.signs_sha256() {
        key.verify_sha256(&digests.input, jws.signature)
    } else {
        key.verify(input, jws.signature)
    };
    if !verified {
        reject!(Rejection::SignatureInvalid);
    }
    let signature_valid = SignatureValid(());
    // After the signature, like the claims below: a token refused for its key's purpose was
    // signed by that key (an ID-token key signing an access token, which Keypost never does),
    // so the refusal is evidence of a key in the wrong hands and is alerted on. Before it,
    // anyone could have it refused so by naming a published ID-token kid.
    if key.purpose() != KeyPurpose::AccessToken {
        reject!(Rejection::WrongKeyPurpose);
    }

    // 5. Claims.
    if claims.iss.as_str() != Some(expect.issuer) {
        reject!(Rejection::IssuerMismatch);
    }
    if claims.tid.as_str() != Some(expect.realm.as_str()) {
        reject!(Rejection::TenantMismatch);
    }
    let aud_ok = match &claims.aud {
        Member::Str(a) => a == expect.audience,
        Member::List(a) => a.iter().any(|v| v == expect.audience),
        _ => false,
    };
    if !aud_ok {
        reject!(Rejection::AudienceMismatch);
    }
    let (Some(exp), Some(nbf), Some(iat)) = (
        claims.exp.as_i64(),
        claims.nbf.as_i64(),
        claims.iat.as_i64(),
    ) else {
        reject!(Rejection::MissingClaim)
    };
    let (Some(jti), Some(sub), Some(client_id), Some(scope)) = (
        claims.jti.as_str(),
        claims.sub.as_str(),
        claims.client_id.as_str(),
        claims.scope.as_str(),
    ) else {
        reject!(Rejection::MissingClaim)
    };
    if now > exp.saturating_add(expect.leeway) {
        reject!(Rejection::Expired);
    }
    if nbf > now.saturating_add(expect.leeway) {
        reject!(Rejection::NotYetValid);
    }
    if iat > now.saturating_add(expect.leeway) {
        reject!(Rejection::IssuedInFuture);
    }
    if exp.saturating_sub(iat) > expect.max_lifetime {
        reject!(Rejection::LifetimeExceedsPolicy);
    }
    if !ClientId::is_valid(client_id) {
        reject!(Rejection::MissingClaim)
    }
    // One consultation of the ledger serves the client check here and every step of 6.
    let claimed = Claimed {
        sub,
        client_id,
        scope,
        kid,
    };
    let row = ledger
        .consult(jti, expect.realm, client_id, &mut |facts| {
            ledger_checks(facts, &digests.token, &claimed, expect, now)
        })
        // A jti that is not one cannot be in the ledger: asked about only when the ledger
        // does not have it (checking every token's first cost more than the lookup).
        .map_err(|r| {
            if Jti::is_valid(jti) {
                r
            } else {
                Rejection::MissingClaim
            }
        })?;
    let ledger_hit = LedgerHit(());

    // 7. Authorization, last: a token that is not genuine is refused as a forgery (and
    // alerted on) whatever scope it claims, never as merely lacking one.
    if let Some(needed) = expect.required_scope
        && !scope.split_ascii_whitespace().any(|s| s == needed)
    {
        reject!(Rejection::InsufficientScope);
    }

    Ok(Principal {
        key: key.clone(),
        row,
        expires_at: exp,
        _proofs: (signature_valid, ledger_hit),
    })
}

/// What the token claims that its ledger row must say too (the principal is made from the row).
struct Claimed<'a> {
    sub: &'a str,
    client_id: &'a str,
    scope: &'a str,
    kid: &'a str,
}

/// Steps 5 (client) and 6 of the policy, on what the ledger knows: this exact token was
/// issued, for this subject, client, key and realm, and nothing it depends on was revoked.
fn ledger_checks(
    facts: LedgerFacts<'_>,
    token_sha256: &[u8; 32],
    claimed: &Claimed<'_>,
    expect: &Expectation<'_>,
    now: UnixTime,
) -> LedgerVerdict {
    if !facts.client_known {
        return Err(Rejection::ClientUnknown);
    }
    let Some(entry) = facts.entry else {
        return Err(Rejection::NotIssued);
    };
    let same_token = verify_slices_are_equal(&entry.token_hash, token_sha256).is_ok();
    if !same_token
        || entry.kind != TokenKind::Access
        || &entry.realm != expect.realm
        || entry.subject != claimed.sub
        || entry.client_id.as_str() != claimed.client_id
        || entry.scope != claimed.scope
        || entry.kid.as_ref().map(Kid::as_str) != Some(claimed.kid)
    {
        return Err(Rejection::LedgerMismatch);
    }
    if entry.revoked_at.is_some() {
        return Err(Rejection::TokenRevoked);
    }
    if entry.session_id.is_some() {
        let live = facts.session.is_some_and(|s| {
            &s.realm == expect.realm && s.revoked_at.is_none() && s.expires_at > now
        });
        if !live {
            return Err(Rejection::SessionRevoked);
        }
    }
    // The subject is an enabled account of this realm, or the client itself (client credentials).
    let subject_live = match facts.account {
        Some(a) => &a.realm == expect.realm && !a.disabled,
        None => claimed.sub == claimed.client_id,
    };
    if !subject_live {
        return Err(Rejection::AccountDisabled);
    }
    Ok(entry.clone())
}

#[cfg(test)]
mod tests;
