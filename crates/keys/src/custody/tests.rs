use super::*;
use store::{Realm, RealmKind, SqliteStore};

const DAY: i64 = 86_400;
const T0: i64 = 1_700_000_000;

fn setup() -> (Arc<dyn Store>, Custody) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    for (id, kind) in [
        ("consumers", RealmKind::Consumer),
        ("contoso", RealmKind::Tenant),
    ] {
        store
            .create_realm(&Realm {
                id: RealmId::new(id).unwrap(),
                kind,
                display_name: id.into(),
                domains: vec![],
                access_token_alg: "EdDSA".into(),
                created_at: T0,
            })
            .unwrap();
    }
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    (store, custody)
}

fn realm(s: &str) -> RealmId {
    RealmId::new(s).unwrap()
}

fn active_access_kid(c: &Custody, r: &RealmId, now: i64) -> Kid {
    c.signer()
        .current(r, KeyPurpose::AccessToken, Algorithm::EdDSA, now)
        .unwrap()
        .kid
}

#[test]
fn scheduled_rotation_timeline() {
    let (_s, c) = setup();
    let r = realm("contoso");
    // Day 0: no keys, so an access-token, an ID-token and an audit key, active at once.
    assert_eq!(c.ensure(&r, T0).unwrap().len(), 3);
    assert!(c.ensure(&r, T0 + 60).unwrap().is_empty(), "idempotent");
    let first = active_access_kid(&c, &r, T0);
    // Day 6: the successor is published 24 h ahead of taking over.
    let created = c.ensure(&r, T0 + 6 * DAY).unwrap();
    assert_eq!(created.len(), 3);
    let jwks = c.jwks(&r, T0 + 6 * DAY).unwrap();
    assert!(
        jwks.keys.iter().any(|k| k.kid == created[0].as_str()),
        "published ahead"
    );
    assert_eq!(
        active_access_kid(&c, &r, T0 + 6 * DAY),
        first,
        "but not signing yet"
    );
    // Day 7: the successor signs; the first key retires but stays published.
    let second = active_access_kid(&c, &r, T0 + 7 * DAY);
    assert_ne!(second, first);
    let states: HashMap<String, KeyState> = c
        .list(Some(&r), T0 + 7 * DAY)
        .unwrap()
        .into_iter()
        .map(|k| (k.kid.to_string(), k.state))
        .collect();
    assert_eq!(states[first.as_str()], KeyState::Retiring);
    assert!(
        c.jwks(&r, T0 + 7 * DAY)
            .unwrap()
            .keys
            .iter()
            .any(|k| k.kid == first.as_str())
    );
    // After its hard expiry the first key is gone from JWKS and refused.
    let later = T0 + 9 * DAY;
    c.ensure(&r, later).unwrap();
    assert!(
        !c.jwks(&r, later)
            .unwrap()
            .keys
            .iter()
            .any(|k| k.kid == first.as_str())
    );
}

#[test]
fn jwks_never_mixes_realms() {
    let (_s, c) = setup();
    c.ensure(&realm("consumers"), T0).unwrap();
    c.ensure(&realm("contoso"), T0).unwrap();
    let consumer: Vec<String> = c
        .jwks(&realm("consumers"), T0)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    let tenant: Vec<String> = c
        .jwks(&realm("contoso"), T0)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(consumer.len(), 2);
    assert_eq!(tenant.len(), 2);
    assert!(consumer.iter().all(|k| !tenant.contains(k)));
    let vk = c.verifying_keys().unwrap();
    assert!(vk.in_realm(&realm("contoso"), &consumer[0]).is_none());
    assert_eq!(vk.owner_of(&consumer[0]), Some(&realm("consumers")));
}

#[test]
fn signer_refuses_other_realms_and_revoked_keys() {
    let (_s, c) = setup();
    c.ensure(&realm("consumers"), T0).unwrap();
    let kid = active_access_kid(&c, &realm("consumers"), T0);
    let signer = c.signer();
    assert!(
        signer
            .sign(&realm("consumers"), KeyPurpose::AccessToken, &kid, b"x", T0)
            .is_ok()
    );
    assert!(matches!(
        signer.sign(&realm("contoso"), KeyPurpose::AccessToken, &kid, b"x", T0),
        Err(Error::Refused("key is bound to another realm"))
    ));
    assert!(matches!(
        signer.sign(&realm("consumers"), KeyPurpose::IdToken, &kid, b"x", T0),
        Err(Error::Refused("key is for another purpose"))
    ));
    let (_, replacements) = c.revoke(&kid, T0 + 1).unwrap().unwrap();
    assert!(matches!(
        signer.sign(
            &realm("consumers"),
            KeyPurpose::AccessToken,
            &kid,
            b"x",
            T0 + 1
        ),
        Err(Error::Refused("key is revoked"))
    ));
    assert_eq!(
        replacements.len(),
        1,
        "a replacement access-token key is created at once"
    );
    assert_eq!(
        active_access_kid(&c, &realm("consumers"), T0 + 1),
        replacements[0]
    );
    assert!(
        !c.jwks(&realm("consumers"), T0 + 1)
            .unwrap()
            .keys
            .iter()
            .any(|k| k.kid == kid.as_str())
    );
}

#[test]
fn an_imported_key_is_bound_to_exactly_one_realm() {
    let (s, c) = setup();
    let (key, der) = PrivateKey::generate(Algorithm::ES256).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
    let (kid, alg) = c
        .import(
            &realm("consumers"),
            KeyPurpose::AccessToken,
            pem.as_bytes(),
            Algorithm::RS256,
            T0,
        )
        .unwrap();
    assert_eq!(alg, Algorithm::ES256);
    assert_eq!(kid.as_str(), key.public_jwk().kid);
    assert_eq!(
        s.get_realm(&realm("consumers"))
            .unwrap()
            .unwrap()
            .access_token_alg,
        "ES256"
    );
    assert!(matches!(
        c.import(
            &realm("contoso"),
            KeyPurpose::AccessToken,
            pem.as_bytes(),
            Algorithm::RS256,
            T0
        ),
        Err(Error::DuplicateKey(_))
    ));
    assert_eq!(
        c.signer()
            .current(
                &realm("consumers"),
                KeyPurpose::AccessToken,
                Algorithm::ES256,
                T0
            )
            .unwrap()
            .kid,
        kid
    );
}

#[test]
fn private_keys_are_sealed_at_rest_and_rewrap_keeps_them_usable() {
    let (s, c) = setup();
    let (_key, der) = PrivateKey::generate(Algorithm::EdDSA).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
    let (kid, _) = c
        .import(
            &realm("contoso"),
            KeyPurpose::AccessToken,
            pem.as_bytes(),
            Algorithm::RS256,
            T0,
        )
        .unwrap();
    let record = s.get_key(&kid).unwrap().unwrap();
    // The 32-byte seed is the last 32 bytes of an Ed25519 PKCS#8 v1 document.
    let seed = &der[der.len() - 32..];
    assert!(!record.sealed.windows(32).any(|w| w == seed));
    assert!(!record.public_jwk.contains("\"d\""));

    let new_kek = Kek::generate().unwrap();
    assert_eq!(c.rewrap(&new_kek).unwrap(), 1);
    assert_eq!(c.rewrap(&new_kek).unwrap(), 0, "repeatable");
    let c2 = Custody::new(s.clone(), Arc::new(new_kek), KeyPolicy::default());
    assert!(
        c2.signer()
            .sign(&realm("contoso"), KeyPurpose::AccessToken, &kid, b"x", T0)
            .is_ok()
    );
    assert!(
        c.signer()
            .sign(&realm("contoso"), KeyPurpose::AccessToken, &kid, b"x", T0)
            .is_err(),
        "old KEK no longer opens it"
    );
}

#[test]
fn a_replacement_made_in_the_same_second_as_the_revoked_key_is_active() {
    // Import and revoke within one second, several times, so kid order cannot hide the tie.
    for _ in 0..8 {
        let (_s, c) = setup();
        let r = realm("contoso");
        c.ensure(&r, T0).unwrap();
        let (_key, der) = PrivateKey::generate(Algorithm::EdDSA).unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
        let (kid, _) = c
            .import(
                &r,
                KeyPurpose::AccessToken,
                pem.as_bytes(),
                Algorithm::RS256,
                T0 + 5,
            )
            .unwrap();
        assert_eq!(active_access_kid(&c, &r, T0 + 5), kid);
        let (_, replacements) = c.revoke(&kid, T0 + 5).unwrap().unwrap();
        assert_eq!(replacements.len(), 1);
        assert_eq!(active_access_kid(&c, &r, T0 + 5), replacements[0]);
    }
}

#[test]
fn the_latest_import_in_one_second_is_the_active_key() {
    let (_s, c) = setup();
    let r = realm("contoso");
    c.ensure(&r, T0).unwrap();
    for _ in 0..6 {
        let (_key, der) = PrivateKey::generate(Algorithm::EdDSA).unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
        let (kid, _) = c
            .import(
                &r,
                KeyPurpose::AccessToken,
                pem.as_bytes(),
                Algorithm::RS256,
                T0,
            )
            .unwrap();
        assert_eq!(active_access_kid(&c, &r, T0), kid);
    }
}

#[test]
fn a_key_row_whose_public_key_was_swapped_is_not_trusted() {
    let (s, c) = setup();
    c.ensure(&realm("contoso"), T0).unwrap();
    let kid = active_access_kid(&c, &realm("contoso"), T0);
    let mut row = s.get_key(&kid).unwrap().unwrap();
    // Someone with write access to the database plants their own public key under a new row
    // that claims a kid it does not have.
    let (attacker, _) = PrivateKey::generate(Algorithm::EdDSA).unwrap();
    row.kid = Kid::new("planted-kid").unwrap();
    row.public_jwk = serde_json::to_string(&attacker.public_jwk()).unwrap();
    s.insert_key(&row).unwrap();
    let keys = c.verifying_keys().unwrap();
    assert!(keys.in_realm(&realm("contoso"), "planted-kid").is_none());
    assert!(keys.in_realm(&realm("contoso"), kid.as_str()).is_some());
}
