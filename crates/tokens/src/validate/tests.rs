//! One test per rejection of THREAT-MODEL.md, against real keys, a real signer and a real
//! (in-memory SQLite) ledger.

use std::sync::Arc;

use keys::{Algorithm, Custody, Kek, KeyPolicy};
use serde_json::json;
use store::{
    Account, AccountId, Client, ClientId, KeyPurpose, Realm, RealmId, RealmKind, Role, SqliteStore,
    Store,
};

use super::*;
use crate::jose::b64;
use crate::{MintRequest, Minter, StoreLedger, issuer_for};

const URL: &str = "https://keypost.test";
const NOW: i64 = 1_800_000_000;

struct Fx {
    store: Arc<dyn Store>,
    custody: Custody,
    minter: Minter,
    user: AccountId,
}

fn rid(s: &str) -> RealmId {
    RealmId::new(s).unwrap()
}

/// An enabled user of contoso.
fn account(id: &AccountId, name: &str) -> Account {
    Account {
        id: id.clone(),
        realm: rid("contoso"),
        email: format!("{name}@contoso.test"),
        display_name: name.into(),
        password_hash: "x".into(),
        must_change_password: false,
        credential_epoch: 0,
        disabled: false,
        role: Role::User,
        created_at: NOW,
    }
}

fn fx() -> Fx {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    for (id, kind) in [
        ("consumers", RealmKind::Consumer),
        ("contoso", RealmKind::Tenant),
        ("fabrikam", RealmKind::Tenant),
    ] {
        store
            .create_realm(&Realm {
                id: rid(id),
                kind,
                display_name: id.into(),
                domains: vec![],
                access_token_alg: "EdDSA".into(),
                created_at: NOW,
            })
            .unwrap();
        store
            .create_client(&Client {
                realm: rid(id),
                client_id: ClientId::new("app").unwrap(),
                name: "app".into(),
                secret_hash: None,
                redirect_uris: vec![],
                grant_types: vec![],
                first_party: false,
                id_token_alg: None,
                created_at: NOW,
                scopes: None,
            })
            .unwrap();
    }
    let user = AccountId::new("u-alice").unwrap();
    store.create_account(&account(&user, "alice")).unwrap();
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    for r in ["consumers", "contoso", "fabrikam"] {
        custody.ensure(&rid(r), NOW).unwrap();
    }
    let minter = Minter::new(Arc::new(custody.signer()), store.clone(), URL);
    Fx {
        store,
        custody,
        minter,
        user,
    }
}

impl Fx {
    fn mint(&self, realm: &str) -> crate::Issued {
        self.mint_for(realm, self.user.as_str(), "openid mail")
    }

    fn mint_for(&self, realm: &str, subject: &str, scope: &str) -> crate::Issued {
        self.minter
            .mint(
                &MintRequest {
                    realm: rid(realm),
                    access_alg: Algorithm::EdDSA,
                    subject: subject.into(),
                    client_id: ClientId::new("app").unwrap(),
                    scope: scope.into(),
                    audience: vec![format!("{URL}/mail")],
                    session: None,
                    access_ttl: 600,
                    id_token: None,
                    refresh: None,
                    family: None,
                    rotates: None,
                },
                NOW,
            )
            .unwrap()
    }

    /// An access and a refresh token of contoso's refresh family `family-1`, rotating
    /// `rotates` if given.
    fn refresh_request(&self, rotates: Option<store::Jti>) -> MintRequest {
        MintRequest {
            realm: rid("contoso"),
            access_alg: Algorithm::EdDSA,
            subject: self.user.as_str().into(),
            client_id: ClientId::new("app").unwrap(),
            scope: "mail offline_access".into(),
            audience: vec![format!("{URL}/mail")],
            session: None,
            access_ttl: 600,
            id_token: None,
            refresh: Some(3600),
            family: Some("family-1".into()),
            rotates,
        }
    }

    fn check(
        &self,
        realm: &str,
        token: &str,
        now: i64,
    ) -> std::result::Result<Principal, Rejection> {
        let keys = self.custody.verifying_keys().unwrap();
        let store = StoreLedger(self.store.clone());
        expecting(realm, |expect| {
            let from_store = validate(token, expect, now, &keys, &store).map_err(|r| r.reason);
            // The minter's ledger cache must agree with the store: on its first look (which
            // may read the store and learn) and on its second (which may answer from memory).
            let generation = self.store.generations().unwrap().revocations;
            let cache = self.minter.ledger_cache();
            for look in ["first", "second"] {
                let cached = validate(token, expect, now, &keys, &cache.ledger(&store, generation))
                    .map_err(|r| r.reason);
                assert_eq!(
                    cached.as_ref().map(Principal::jti),
                    from_store.as_ref().map(Principal::jti),
                    "the ledger cache's {look} look disagrees with the store"
                );
            }
            // And as a resource server asks, through a verified-token cache seeing the token
            // for the first time (it hashes the token itself and hands the hash on).
            let generations = self.store.generations().unwrap();
            let gate = crate::Validator::new(16)
                .validate(
                    token,
                    expect,
                    now,
                    &keys,
                    generations,
                    &cache.ledger(&store, generation),
                )
                .map_err(|r| r.reason);
            assert_eq!(
                gate.as_ref().map(Principal::jti),
                from_store.as_ref().map(Principal::jti),
                "the verified-token cache's path disagrees with the store"
            );
            from_store
        })
    }

    /// Signs arbitrary header and claims with `signing_realm`'s active access-token key, the
    /// way an attacker holding that key would. Nothing is written to the ledger.
    fn forge(
        &self,
        signing_realm: &str,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> String {
        let signer = self.custody.signer();
        let key = signer
            .current(
                &rid(signing_realm),
                KeyPurpose::AccessToken,
                Algorithm::EdDSA,
                NOW,
            )
            .unwrap();
        let mut header = header;
        if header.get("kid").is_none() {
            header["kid"] = json!(key.kid.as_str());
        }
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        let sig = signer
            .sign(
                &rid(signing_realm),
                KeyPurpose::AccessToken,
                &key.kid,
                input.as_bytes(),
                NOW,
            )
            .unwrap();
        format!("{input}.{}", b64(&sig.0))
    }

    fn claims_for(&self, realm: &str) -> serde_json::Value {
        json!({
            "iss": issuer_for(URL, &rid(realm)), "sub": self.user.as_str(), "aud": [format!("{URL}/mail")],
            "exp": NOW + 600, "iat": NOW, "nbf": NOW, "jti": "forged-1", "client_id": "app",
            "scope": "openid mail", "tid": realm,
        })
    }
}

fn header() -> serde_json::Value {
    json!({"alg": "EdDSA", "typ": "at+jwt"})
}

#[test]
fn a_minted_token_validates() {
    let f = fx();
    let t = f.mint("contoso");
    let p = f.check("contoso", &t.access_token, NOW + 1).unwrap();
    assert_eq!(p.realm().as_str(), "contoso");
    assert_eq!(p.account(), Some(f.user.clone()));
    assert_eq!(p.jti(), &t.access_jti);
    assert!(p.has_scope("mail"));
}

#[test]
fn storm_0558_consumer_key_forging_for_a_tenant_is_key_not_in_realm() {
    let f = fx();
    let forged = f.forge("consumers", header(), f.claims_for("contoso"));
    assert_eq!(
        f.check("contoso", &forged, NOW).unwrap_err(),
        Rejection::KeyNotInRealm
    );
    // A token the consumers realm really issued, its header exactly as Keypost writes it, is
    // not recognised by a tenant realm's key set either.
    let genuine = f.mint_for("consumers", "app", "mail").access_token;
    assert!(f.check("consumers", &genuine, NOW).is_ok());
    assert_eq!(
        f.check("contoso", &genuine, NOW).unwrap_err(),
        Rejection::KeyNotInRealm
    );
}

#[test]
fn tenant_a_key_forging_for_tenant_b_is_key_not_in_realm() {
    let f = fx();
    let forged = f.forge("fabrikam", header(), f.claims_for("contoso"));
    assert_eq!(
        f.check("contoso", &forged, NOW).unwrap_err(),
        Rejection::KeyNotInRealm
    );
    // And a genuine fabrikam token is no good for a contoso resource either.
    let genuine = f.mint("fabrikam");
    assert_eq!(
        f.check("contoso", &genuine.access_token, NOW).unwrap_err(),
        Rejection::KeyNotInRealm
    );
}

#[test]
fn stolen_key_of_the_right_realm_mints_nothing_usable() {
    let f = fx();
    let forged = f.forge("contoso", header(), f.claims_for("contoso"));
    assert_eq!(
        f.check("contoso", &forged, NOW).unwrap_err(),
        Rejection::NotIssued
    );
}

#[test]
fn reusing_a_ledger_jti_in_a_forged_token_is_a_mismatch() {
    let f = fx();
    let real = f.mint("contoso");
    let mut c = f.claims_for("contoso");
    c["jti"] = json!(real.access_jti.as_str());
    c["scope"] = json!("openid mail admin");
    let forged = f.forge("contoso", header(), c);
    assert_eq!(
        f.check("contoso", &forged, NOW).unwrap_err(),
        Rejection::LedgerMismatch
    );
}

#[test]
fn revoked_key_is_refused_at_once() {
    let f = fx();
    let t = f.mint("contoso");
    f.custody.revoke(&t.kid, NOW + 1).unwrap();
    assert_eq!(
        f.check("contoso", &t.access_token, NOW + 2).unwrap_err(),
        Rejection::KeyRevoked
    );
}

#[test]
fn revoked_token_session_and_disabled_account_are_refused() {
    let f = fx();
    let t = f.mint("contoso");
    assert!(f.check("contoso", &t.access_token, NOW).is_ok());
    f.store.revoke_token(&t.access_jti, NOW).unwrap();
    assert_eq!(
        f.check("contoso", &t.access_token, NOW).unwrap_err(),
        Rejection::TokenRevoked
    );

    let t = f.mint("contoso");
    assert!(f.check("contoso", &t.access_token, NOW).is_ok());
    f.store.set_account_disabled(&f.user, true).unwrap();
    assert_eq!(
        f.check("contoso", &t.access_token, NOW).unwrap_err(),
        Rejection::AccountDisabled
    );
}

/// The ledger cache answers a token minted here from memory — and stops the moment anything
/// is revoked, answering from the store again (which refuses) until it has relearned.
#[test]
fn the_ledger_cache_answers_from_memory_only_until_a_revocation() {
    let f = fx();
    let cache = f.minter.ledger_cache();
    // The first validation learns the client's and the account's state from the store.
    let first = f.mint("contoso");
    assert!(f.check("contoso", &first.access_token, NOW).is_ok());
    let hits = cache.hits();
    let t = f.mint("contoso");
    assert!(f.check("contoso", &t.access_token, NOW).is_ok());
    assert_eq!(
        cache.hits(),
        hits + 3,
        "all three looks at a fresh token (two direct, one through a verified-token cache) \
         answered from memory"
    );

    f.store.revoke_token(&t.access_jti, NOW).unwrap();
    let hits = cache.hits();
    assert_eq!(
        f.check("contoso", &t.access_token, NOW).unwrap_err(),
        Rejection::TokenRevoked
    );
    assert_eq!(
        cache.hits(),
        hits,
        "a revoked token is never answered from memory"
    );

    // A validation that read an older generation than the cache has seen is answered by the
    // store, and teaches the cache nothing.
    let old = f.store.generations().unwrap().revocations;
    let t = f.mint("contoso");
    f.store.revoke_token(&first.access_jti, NOW).unwrap();
    assert!(f.check("contoso", &t.access_token, NOW).is_ok());
    let hits = cache.hits();
    let store = StoreLedger(f.store.clone());
    let keys = f.custody.verifying_keys().unwrap();
    expecting("contoso", |expect| {
        assert!(
            validate(
                &t.access_token,
                expect,
                NOW,
                &keys,
                &cache.ledger(&store, old)
            )
            .is_ok()
        );
    });
    assert_eq!(cache.hits(), hits);

    // A client's own token: the cache learns that its subject is no account, and forgets
    // that when an account of that name appears (here a fabrikam one, which the store then
    // reads as an account of another realm: refused).
    let own = f.mint_for("contoso", "app", "mail");
    assert!(f.check("contoso", &own.access_token, NOW).is_ok());
    let hits = cache.hits();
    assert!(f.check("contoso", &own.access_token, NOW).is_ok());
    assert!(cache.hits() > hits, "answered from memory");
    let mut other = account(&AccountId::new("app").unwrap(), "app");
    other.realm = rid("fabrikam");
    f.store.create_account(&other).unwrap();
    assert_eq!(
        f.check("contoso", &own.access_token, NOW).unwrap_err(),
        Rejection::AccountDisabled
    );
}

/// Nothing is minted into a refresh family revoked before the tokens' durable write (a
/// reuse raced the rotation): were it written, the minter would cache it as live. Its tokens
/// issued before are refused, from memory or not.
#[test]
fn nothing_is_minted_into_a_revoked_family() {
    let f = fx();
    let request = f.refresh_request(None);
    let first = f.minter.mint(&request, NOW).unwrap();
    assert!(f.check("contoso", &first.access_token, NOW).is_ok());
    assert!(f.store.revoke_family("family-1", NOW).unwrap());
    assert!(!f.store.revoke_family("family-1", NOW).unwrap(), "once");
    assert!(matches!(
        f.minter.mint(&request, NOW),
        Err(crate::Error::Ledger(store::Error::FamilyRevoked(_)))
    ));
    assert_eq!(
        f.check("contoso", &first.access_token, NOW).unwrap_err(),
        Rejection::TokenRevoked
    );
}

#[test]
fn time_checks() {
    let f = fx();
    let t = f.mint("contoso");
    assert_eq!(
        f.check("contoso", &t.access_token, NOW + 601 + 30)
            .unwrap_err(),
        Rejection::Expired
    );
    assert_eq!(
        f.check("contoso", &t.access_token, NOW - 100).unwrap_err(),
        Rejection::KeyNotYetActive
    );
    let mut c = f.claims_for("contoso");
    c["nbf"] = json!(NOW + 300);
    assert_eq!(
        f.check("contoso", &f.forge("contoso", header(), c), NOW)
            .unwrap_err(),
        Rejection::NotYetValid
    );
    let mut c = f.claims_for("contoso");
    c["iat"] = json!(NOW + 3600);
    c["nbf"] = json!(NOW);
    assert_eq!(
        f.check("contoso", &f.forge("contoso", header(), c), NOW)
            .unwrap_err(),
        Rejection::IssuedInFuture
    );
    let mut c = f.claims_for("contoso");
    c["exp"] = json!(NOW + 86_400);
    assert_eq!(
        f.check("contoso", &f.forge("contoso", header(), c), NOW)
            .unwrap_err(),
        Rejection::LifetimeExceedsPolicy
    );
    let mut c = f.claims_for("contoso");
    c["exp"] = json!(format!("{}", NOW + 600));
    assert_eq!(
        f.check("contoso", &f.forge("contoso", header(), c), NOW)
            .unwrap_err(),
        Rejection::MissingClaim,
        "string exp (CVE-2026-25537)"
    );
}

#[test]
fn claim_checks() {
    let f = fx();
    let cases: Vec<(&str, serde_json::Value, Rejection)> = vec![
        (
            "iss",
            json!("https://keypost.test/realms/contoso/"),
            Rejection::IssuerMismatch,
        ),
        (
            "iss",
            json!("https://keypost.test/realms/consumers"),
            Rejection::IssuerMismatch,
        ),
        ("tid", json!("consumers"), Rejection::TenantMismatch),
        (
            "aud",
            json!("https://keypost.test/userinfo"),
            Rejection::AudienceMismatch,
        ),
        ("client_id", json!("nobody"), Rejection::ClientUnknown),
        // Not even an id: a jti or client no ledger could hold.
        ("jti", json!("forged/1"), Rejection::MissingClaim),
        ("client_id", json!("no body"), Rejection::MissingClaim),
        // Never issued: a forgery first, whatever scope it claims.
        ("scope", json!("openid"), Rejection::NotIssued),
    ];
    for (claim, value, want) in cases {
        let mut c = f.claims_for("contoso");
        c[claim] = value;
        assert_eq!(
            f.check("contoso", &f.forge("contoso", header(), c), NOW)
                .unwrap_err(),
            want,
            "{claim}"
        );
    }
    // A genuine token without the scope is refused for the scope alone.
    let genuine = f.mint_for("contoso", f.user.as_str(), "openid");
    assert_eq!(
        f.check("contoso", &genuine.access_token, NOW).unwrap_err(),
        Rejection::InsufficientScope
    );
    let mut c = f.claims_for("contoso");
    c.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        f.check("contoso", &f.forge("contoso", header(), c), NOW)
            .unwrap_err(),
        Rejection::MissingClaim
    );
}

#[test]
fn header_checks() {
    let f = fx();
    let cases: Vec<(serde_json::Value, Rejection)> = vec![
        (
            json!({"alg": "none", "typ": "at+jwt"}),
            Rejection::AlgorithmNotAllowed,
        ),
        (
            json!({"alg": "NoNe", "typ": "at+jwt"}),
            Rejection::AlgorithmNotAllowed,
        ),
        (
            json!({"alg": "HS256", "typ": "at+jwt"}),
            Rejection::AlgorithmNotAllowed,
        ),
        (
            json!({"alg": "ES256", "typ": "at+jwt"}),
            Rejection::AlgorithmMismatch,
        ),
        (
            json!({"alg": "EdDSA", "typ": "JWT"}),
            Rejection::TypeMismatch,
        ),
        (json!({"alg": "EdDSA"}), Rejection::TypeMismatch),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "crit": ["exp"]}),
            Rejection::CritUnsupported,
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "jku": "https://evil.test/jwks"}),
            Rejection::HeaderKeyForbidden,
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "jwk": {"kty": "OKP"}}),
            Rejection::HeaderKeyForbidden,
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "x5u": "https://evil.test"}),
            Rejection::HeaderKeyForbidden,
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "x5c": ["AAAA"]}),
            Rejection::HeaderKeyForbidden,
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "../../etc/passwd"}),
            Rejection::UnknownKid,
        ),
        (
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "' OR 1=1 --"}),
            Rejection::UnknownKid,
        ),
    ];
    for (h, want) in cases {
        let t = f.forge("contoso", h.clone(), f.claims_for("contoso"));
        assert_eq!(f.check("contoso", &t, NOW).unwrap_err(), want, "{h}");
    }
    // kid absent altogether.
    let c = f.claims_for("contoso");
    let t = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"EdDSA","typ":"at+jwt"}"#),
        b64(&serde_json::to_vec(&c).unwrap()),
        b64(&[0; 64])
    );
    assert_eq!(
        f.check("contoso", &t, NOW).unwrap_err(),
        Rejection::KidMissing
    );
}

#[test]
fn an_id_token_is_not_an_access_token() {
    let f = fx();
    let signer = f.custody.signer();
    let key = signer
        .current(&rid("contoso"), KeyPurpose::IdToken, Algorithm::RS256, NOW)
        .unwrap();
    let h = json!({"alg": "RS256", "typ": "at+jwt", "kid": key.kid.as_str()});
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&h).unwrap()),
        b64(&serde_json::to_vec(&f.claims_for("contoso")).unwrap())
    );
    let sig = signer
        .sign(
            &rid("contoso"),
            KeyPurpose::IdToken,
            &key.kid,
            input.as_bytes(),
            NOW,
        )
        .unwrap();
    let t = format!("{input}.{}", b64(&sig.0));
    assert_eq!(
        f.check("contoso", &t, NOW).unwrap_err(),
        Rejection::WrongKeyPurpose
    );
    // Only a token that key signed is refused for its purpose (and alerted on as one signed
    // with a real key); naming the published kid with any other signature is not enough.
    let forged = format!("{input}.{}", b64(&[7; 256]));
    assert_eq!(
        f.check("contoso", &forged, NOW).unwrap_err(),
        Rejection::SignatureInvalid
    );
}

/// Every algorithm a realm may pick for access tokens validates its own tokens (for the
/// SHA-256 ones, through the path that hashes the signing input once for both the signature
/// and the ledger's token hash) and refuses a tampered one.
#[test]
fn every_access_token_algorithm_validates_its_tokens_and_refuses_tampering() {
    let f = fx();
    let realm = rid("contoso");
    for alg in Algorithm::ALL {
        f.store.set_access_token_alg(&realm, alg.as_str()).unwrap();
        f.custody
            .generate(&realm, KeyPurpose::AccessToken, alg, NOW, NOW)
            .unwrap();
        let mint = || {
            let mut request = f.refresh_request(None);
            (request.access_alg, request.refresh, request.family) = (alg, None, None);
            f.minter.mint(&request, NOW).unwrap().access_token
        };
        let (t, other) = (mint(), mint());
        let p = f.check("contoso", &t, NOW + 1);
        assert!(p.is_ok(), "{alg}: {p:?}");
        // The header Keypost wrote is recognised by its key, and reads as it would parse.
        let keys = f.custody.verifying_keys().unwrap();
        let segment = t.split('.').next().unwrap();
        let key = keys.by_access_header(&realm, segment).expect("recognised");
        let mut buf = Vec::new();
        let parsed = crate::jose::parse_compact(&t, &mut buf).unwrap();
        assert_eq!(parsed.header, written_header(key), "{alg}");
        let (input, _) = t.rsplit_once('.').unwrap();
        let swapped = format!("{input}.{}", other.rsplit('.').next().unwrap());
        assert_eq!(
            f.check("contoso", &swapped, NOW + 1).unwrap_err(),
            Rejection::SignatureInvalid,
            "{alg}"
        );
    }
}

/// Only the very token issued passes the ledger check. The same header and claims under
/// another valid signature — made by anyone holding the key (ES256 and PS256 sign with fresh
/// randomness), or from an ES256 signature by anyone at all (`s` and `n - s` both verify) —
/// are refused, whether the ledger answers from this process's memory or from the store.
#[test]
fn another_valid_signature_over_issued_claims_is_not_the_issued_token() {
    let f = fx();
    let realm = rid("contoso");
    let signer = f.custody.signer();
    for alg in [Algorithm::ES256, Algorithm::PS256] {
        f.store.set_access_token_alg(&realm, alg.as_str()).unwrap();
        f.custody
            .generate(&realm, KeyPurpose::AccessToken, alg, NOW, NOW)
            .unwrap();
        let mut request = f.refresh_request(None);
        (request.access_alg, request.refresh, request.family) = (alg, None, None);
        let issued = f.minter.mint(&request, NOW).unwrap().access_token;
        let (input, _) = issued.rsplit_once('.').unwrap();
        let key = signer
            .current(&realm, KeyPurpose::AccessToken, alg, NOW)
            .unwrap();
        let again = signer
            .sign(
                &realm,
                KeyPurpose::AccessToken,
                &key.kid,
                input.as_bytes(),
                NOW,
            )
            .unwrap();
        let resigned = format!("{input}.{}", b64(&again.0));
        assert_ne!(resigned, issued, "{alg}: a fresh signature");
        assert_eq!(
            f.check("contoso", &resigned, NOW + 1).unwrap_err(),
            Rejection::LedgerMismatch,
            "{alg}"
        );
        assert!(f.check("contoso", &issued, NOW + 1).is_ok(), "{alg}");

        if alg == Algorithm::ES256 {
            let sig = base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                issued.rsplit('.').next().unwrap(),
            )
            .unwrap();
            let (r, s) = sig.split_at(32);
            let flipped = [r, &p256_order_minus(s)].concat();
            let keys = f.custody.verifying_keys().unwrap();
            let verifying = keys.in_realm(&realm, key.kid.as_str()).unwrap();
            assert!(
                verifying.verify(input.as_bytes(), &flipped),
                "n - s verifies"
            );
            let malleated = format!("{input}.{}", b64(&flipped));
            assert_eq!(
                f.check("contoso", &malleated, NOW + 1).unwrap_err(),
                Rejection::LedgerMismatch
            );
        }
    }
}

/// `n - s` for P-256's group order `n`, big-endian.
fn p256_order_minus(s: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + (borrow << 8)) as u8;
    }
    out
}

#[test]
fn tampering_breaks_the_signature() {
    let f = fx();
    let t = f.mint("contoso").access_token;
    let parts: Vec<&str> = t.split('.').collect();
    // Claims edited after signing.
    let mut c: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap();
    c["scope"] = json!("openid mail admin");
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    assert_eq!(
        f.check("contoso", &edited, NOW).unwrap_err(),
        Rejection::SignatureInvalid
    );
    // Signature swapped from another token.
    let other = f.mint("contoso").access_token;
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        other.rsplit('.').next().unwrap()
    );
    assert_eq!(
        f.check("contoso", &swapped, NOW).unwrap_err(),
        Rejection::SignatureInvalid
    );
    // Signature stripped.
    assert_eq!(
        f.check("contoso", &format!("{}.{}.", parts[0], parts[1]), NOW)
            .unwrap_err(),
        Rejection::Malformed
    );
    // Zero signature.
    let zero = format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 64]));
    assert_eq!(
        f.check("contoso", &zero, NOW).unwrap_err(),
        Rejection::SignatureInvalid
    );
}

#[test]
fn rejections_carry_what_was_presented() {
    let f = fx();
    let forged = f.forge("consumers", header(), f.claims_for("contoso"));
    let r = f.custody.verifying_keys().unwrap();
    let iss = issuer_for(URL, &rid("contoso"));
    let aud = format!("{URL}/mail");
    let contoso = rid("contoso");
    let expect = Expectation {
        realm: &contoso,
        issuer: &iss,
        audience: &aud,
        max_lifetime: 600,
        leeway: 30,
        required_scope: None,
    };
    let err = validate(&forged, &expect, NOW, &r, &StoreLedger(f.store.clone())).unwrap_err();
    assert_eq!(err.presented.iss.as_deref(), Some(iss.as_str()));
    assert_eq!(err.presented.jti.as_deref(), Some("forged-1"));
    assert_eq!(
        err.presented.kid.as_deref(),
        r.owner_of(err.presented.kid.as_deref().unwrap())
            .map(|_| err.presented.kid.as_deref().unwrap())
    );
    assert!(err.reason.suggests_key_compromise());
}

impl Fx {
    fn check_cached(
        &self,
        v: &crate::Validator,
        realm: &str,
        token: &str,
        now: i64,
    ) -> std::result::Result<Principal, Rejection> {
        let g = self.store.generations().unwrap();
        let keys = self.custody.verifying_keys_at(g.keys).unwrap();
        expecting(realm, |expect| {
            v.validate(
                token,
                expect,
                now,
                &keys,
                g,
                &StoreLedger(self.store.clone()),
            )
            .map_err(|r| r.reason)
        })
    }
}

/// Runs `f` with what a mail resource of `realm` expects of a token.
fn expecting<T>(realm: &str, f: impl FnOnce(&Expectation<'_>) -> T) -> T {
    let r = rid(realm);
    let iss = issuer_for(URL, &r);
    let aud = format!("{URL}/mail");
    f(&Expectation {
        realm: &r,
        issuer: &iss,
        audience: &aud,
        max_lifetime: 600,
        leeway: 30,
        required_scope: Some("mail"),
    })
}

#[test]
fn the_cache_never_outlives_a_revocation_or_an_expiry() {
    let f = fx();
    let v = crate::Validator::new(16);
    let t = f.mint("contoso");
    assert!(f.check_cached(&v, "contoso", &t.access_token, NOW).is_ok());
    assert!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 1)
            .is_ok(),
        "hit"
    );
    assert_eq!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 700)
            .unwrap_err(),
        Rejection::Expired
    );
    // Another realm's expectation never gets the cached principal.
    assert_eq!(
        f.check_cached(&v, "fabrikam", &t.access_token, NOW + 1)
            .unwrap_err(),
        Rejection::KeyNotInRealm
    );

    f.store.revoke_token(&t.access_jti, NOW + 2).unwrap();
    assert_eq!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 2)
            .unwrap_err(),
        Rejection::TokenRevoked
    );

    let t = f.mint("contoso");
    assert!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 3)
            .is_ok()
    );
    f.store.set_account_disabled(&f.user, true).unwrap();
    assert_eq!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 3)
            .unwrap_err(),
        Rejection::AccountDisabled
    );
    f.store.set_account_disabled(&f.user, false).unwrap();

    let t = f.mint("contoso");
    assert!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 4)
            .is_ok()
    );
    f.custody.revoke(&t.kid, NOW + 5).unwrap();
    assert_eq!(
        f.check_cached(&v, "contoso", &t.access_token, NOW + 5)
            .unwrap_err(),
        Rejection::KeyRevoked
    );
}

#[test]
fn a_client_credentials_token_needs_the_subject_to_be_the_client() {
    let f = fx();
    let mint = |subject: &str| f.mint_for("contoso", subject, "mail").access_token;
    assert!(f.check("contoso", &mint("app"), NOW).is_ok());
    assert_eq!(
        f.check("contoso", &mint("someone-else"), NOW).unwrap_err(),
        Rejection::AccountDisabled
    );
}

/// THREAT-MODEL step 5: a refresh token rotates once. A second rotation of the same token —
/// as when a thief's refresh raced the owner's and read the ledger before it changed — fails
/// in the write that would have issued its tokens, so none of them exists.
#[test]
fn a_refresh_token_rotates_once() {
    let fx = fx();
    let request = |rotates: Option<store::Jti>| fx.refresh_request(rotates);
    let first = fx.minter.mint(&request(None), NOW).unwrap();
    let used = crate::RefreshToken::parse(first.refresh_token.as_deref().unwrap())
        .unwrap()
        .jti;
    let second = fx.minter.mint(&request(Some(used.clone())), NOW).unwrap();
    assert!(fx.check("contoso", &second.access_token, NOW).is_ok());
    assert_eq!(
        fx.store.get_token(&used).unwrap().unwrap().used_at,
        Some(NOW)
    );

    let raced = fx.minter.mint(&request(Some(used)), NOW);
    assert!(
        matches!(raced, Err(crate::Error::Ledger(store::Error::Consumed(_)))),
        "{raced:?}"
    );
    // The family lives on: the refused rotation revoked nothing (its caller revokes it).
    assert!(fx.check("contoso", &second.access_token, NOW).is_ok());
    assert!(fx.store.revoke_family("family-1", NOW).unwrap());
    assert_eq!(
        fx.check("contoso", &second.access_token, NOW).unwrap_err(),
        Rejection::TokenRevoked
    );
}

#[test]
fn a_refresh_token_minted_here_is_read_from_memory_until_rotated_or_revoked() {
    let fx = fx();
    let cache = fx.minter.ledger_cache();
    let (contoso, app) = (rid("contoso"), ClientId::new("app").unwrap());
    let view = |jti: &store::Jti| cache.refresh_view(&*fx.store, jti, &contoso, &app).unwrap();
    let jti_of = |issued: &crate::Issued| {
        crate::RefreshToken::parse(issued.refresh_token.as_deref().unwrap())
            .unwrap()
            .jti
    };

    // The first refresh reads the client and the account from the store, and learns them.
    let first = jti_of(&fx.minter.mint(&fx.refresh_request(None), NOW).unwrap());
    let hits = cache.hits();
    let v = view(&first);
    assert_eq!(cache.hits(), hits, "nothing known yet of the client");
    assert_eq!(v.entry.as_ref().map(|e| e.used_at), Some(None));
    assert_eq!(
        v.account.map(|a| a.email),
        Some("alice@contoso.test".into())
    );

    // Its successor, minted here, is read from memory, exactly as the store has it.
    let request = fx.refresh_request(Some(first.clone()));
    let second = jti_of(&fx.minter.mint(&request, NOW).unwrap());
    let hits = cache.hits();
    let remembered = view(&second);
    assert_eq!(cache.hits(), hits + 1, "answered from memory");
    assert_eq!(
        remembered,
        fx.store.ledger_view(&second, &contoso, &app).unwrap()
    );

    // The token rotated here is forgotten: the store answers, and has it used.
    let hits = cache.hits();
    assert_eq!(view(&first).entry.unwrap().used_at, Some(NOW));
    assert_eq!(cache.hits(), hits);

    // Any revocation moves the generation: the store answers, and has it revoked.
    fx.store.revoke_family("family-1", NOW).unwrap();
    let hits = cache.hits();
    assert_eq!(view(&second).entry.unwrap().revoked_at, Some(NOW));
    assert_eq!(cache.hits(), hits);
}
