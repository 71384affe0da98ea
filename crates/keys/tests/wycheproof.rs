//! Project Wycheproof signature vectors through Keypost's own verification path: each group's
//! public JWK is stored as a key of a realm, loaded the way the validator loads keys
//! (`Custody::verifying_keys`), and every test signature checked with `VerifyingKey::verify`
//! and, where the algorithm signs SHA-256, `VerifyingKey::verify_sha256`.
//! Every `invalid` vector must be refused and every `valid` one accepted; `acceptable` ones may
//! go either way. The vectors are in `tests/vectors/wycheproof` (Apache-2.0, see its README).

// A test panicking on a broken vector file is the right outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, SHA384, digest as sha};
use keys::{Custody, Kek, KeyPolicy};
use serde_json::Value;
use store::{KeyOrigin, KeyPurpose, KeyRecord, Kid, Realm, RealmId, RealmKind, SqliteStore, Store};

fn vectors(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/wycheproof")
        .join(file);
    serde_json::from_slice(&std::fs::read(&path).expect("vector file")).expect("vector JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A P-256 JWK from a group that gives the point only as hex coordinates (a few ECDSA groups
/// have no `publicKeyJwk`).
fn ec_jwk(public: &Value) -> Value {
    use base64::Engine;
    let coord = |name: &str| {
        let raw = hex(public[name].as_str().expect("coordinate"));
        let mut fixed = vec![0u8; 32usize.saturating_sub(raw.len())];
        fixed.extend(raw.iter().skip(raw.len().saturating_sub(32)));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fixed)
    };
    serde_json::json!({"kty": "EC", "crv": "P-256", "x": coord("wx"), "y": coord("wy")})
}

/// Runs one vector file; returns how many valid vectors were accepted and invalid ones refused.
fn run(file: &str, alg: &str, jwk_field: &str) -> (usize, usize) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let realm = RealmId::new("vectors").unwrap();
    store
        .create_realm(&Realm {
            id: realm.clone(),
            kind: RealmKind::Tenant,
            display_name: "vectors".into(),
            domains: vec![],
            access_token_alg: alg.into(),
            created_at: 0,
        })
        .unwrap();
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    let v = vectors(file);
    let (mut accepted, mut refused) = (0, 0);
    for (g, group) in v["testGroups"].as_array().unwrap().iter().enumerate() {
        // Stored as Keypost stores every public key: its thumbprint as kid, `use: sig`, the
        // pinned alg.
        let mut jwk = match &group[jwk_field] {
            Value::Null => ec_jwk(&group["publicKey"]),
            j => j.clone(),
        };
        jwk["kid"] = Value::String(format!("group-{g}"));
        jwk["use"] = Value::String("sig".into());
        jwk["alg"] = Value::String(alg.into());
        let parsed: keys::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let kid = Kid::new(parsed.thumbprint()).unwrap();
        jwk["kid"] = Value::String(kid.to_string());
        // Groups that share a public key share its kid: the row is already there.
        let inserted = store.insert_key(&KeyRecord {
            kid: kid.clone(),
            realm: realm.clone(),
            purpose: KeyPurpose::AccessToken,
            alg: alg.into(),
            public_jwk: jwk.to_string(),
            sealed: vec![0],
            origin: KeyOrigin::Imported,
            created_at: 0,
            activates_at: 0,
            expires_at: i64::MAX,
            revoked_at: None,
        });
        match inserted {
            Err(store::Error::Conflict(_)) => {}
            other => other.unwrap(),
        }
        let keys = custody.verifying_keys().unwrap();
        // A public key Keypost cannot parse verifies nothing: then every test must be invalid.
        let key = keys.in_realm(&realm, kid.as_str());
        for t in group["tests"].as_array().unwrap() {
            let (msg, sig) = (
                hex(t["msg"].as_str().unwrap()),
                hex(t["sig"].as_str().unwrap()),
            );
            let ok = key.is_some_and(|k| k.verify(&msg, &sig));
            let id = t["tcId"].as_u64().unwrap();
            // The validator's path for the SHA-256 algorithms (the input hashed once, by the
            // caller) decides exactly as the plain one; Ed25519 has no such path, and a digest
            // of another algorithm verifies nothing.
            let prehashed = key.is_some_and(|k| k.verify_sha256(&sha(&SHA256, &msg), &sig));
            assert_eq!(
                prehashed,
                ok && alg != "EdDSA",
                "{file} tcId {id}: verify_sha256 disagrees with verify"
            );
            assert!(!key.is_some_and(|k| k.verify_sha256(&sha(&SHA384, &msg), &sig)));
            match t["result"].as_str().unwrap() {
                "valid" => {
                    assert!(
                        ok,
                        "{file} tcId {id} ({}) is valid but was refused",
                        t["comment"]
                    );
                    accepted += 1;
                }
                "invalid" => {
                    assert!(
                        !ok,
                        "{file} tcId {id} ({}) is invalid but was accepted",
                        t["comment"]
                    );
                    refused += 1;
                }
                _ => {}
            }
        }
    }
    (accepted, refused)
}

#[test]
fn ecdsa_p256_sha256_in_jose_form() {
    let (valid, invalid) = run(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        "ES256",
        "publicKeyJwk",
    );
    assert!(
        valid > 0 && invalid > 80,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn ed25519() {
    let (valid, invalid) = run("ed25519_test.json", "EdDSA", "publicKeyJwk");
    assert!(
        valid > 0 && invalid > 50,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn rsa_pkcs1_2048_sha256() {
    let (valid, invalid) = run("rsa_signature_2048_sha256_test.json", "RS256", "keyJwk");
    assert!(
        valid > 0 && invalid > 100,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn rsa_pss_2048_sha256() {
    let (valid, invalid) = run(
        "rsa_pss_2048_sha256_mgf1_32_test.json",
        "PS256",
        "publicKeyJwk",
    );
    assert!(
        valid > 0 && invalid > 10,
        "{valid} valid, {invalid} invalid"
    );
}
