//! Signing keys.

use super::*;

pub fn key_changes_bump_the_generation(new: &NewStore) {
    let s = new();
    s.create_realm(&realm("contoso", &[])).unwrap();
    let g0 = s.key_generation().unwrap();
    let k = KeyRecord {
        kid: Kid::new("k1").unwrap(),
        realm: RealmId::new("contoso").unwrap(),
        purpose: KeyPurpose::AccessToken,
        alg: "EdDSA".into(),
        public_jwk: "{}".into(),
        sealed: vec![0; 8],
        origin: KeyOrigin::Generated,
        created_at: 1,
        activates_at: 1,
        expires_at: 100,
        revoked_at: None,
    };
    s.insert_key(&k).unwrap();
    let g1 = s.key_generation().unwrap();
    assert!(g1 > g0);
    assert!(s.revoke_key(&k.kid, 5).unwrap());
    assert!(!s.revoke_key(&k.kid, 6).unwrap());
    assert!(s.key_generation().unwrap() > g1);
}
