//! Project Wycheproof's JWS vectors (`json_web_signature_test.json`: alg none, key confusion,
//! embedded keys, modified and truncated parts, malleable encodings) against Keypost's JWS
//! path: the strict compact parser, the algorithm pinned to the key, the refusal of keys in the
//! header, and the signature check with the realm's verifying key. Every `invalid` vector must
//! be refused. Valid vectors whose algorithm Keypost supports must verify at the signature
//! step (so the harness is not refusing everything), though Keypost's full policy still refuses
//! them later (no `typ: at+jwt`, no Keypost claims).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::{Custody, KeyPolicy};
use serde_json::Value;
use store::{KeyOrigin, KeyPurpose, KeyRecord, Kid, Realm, RealmId, RealmKind, SqliteStore, Store};

const SUPPORTED: [&str; 3] = ["ES256", "RS256", "PS256"];

/// The public half of a vector's key, as Keypost stores a key.
fn public_jwk(jwk: &Value, kid: &Kid, alg: &str) -> String {
    let mut public = serde_json::Map::new();
    for k in ["kty", "crv", "x", "y", "n", "e"] {
        if let Some(x) = jwk.get(k) {
            public.insert(k.into(), x.clone());
        }
    }
    public.insert("kid".into(), kid.to_string().into());
    public.insert("use".into(), "sig".into());
    public.insert("alg".into(), alg.into());
    Value::Object(public).to_string()
}

fn header_alg(jws: &str) -> Option<String> {
    let header = B64.decode(jws.split('.').next()?).ok()?;
    let header: Value = serde_json::from_slice(&header).ok()?;
    header["alg"].as_str().map(str::to_owned)
}

#[test]
fn every_invalid_jws_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/wycheproof/json_web_signature_test.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let realm = RealmId::new("vectors").unwrap();
    store
        .create_realm(&Realm {
            id: realm.clone(),
            kind: RealmKind::Tenant,
            display_name: "v".into(),
            domains: vec![],
            access_token_alg: "ES256".into(),
            created_at: 0,
        })
        .unwrap();
    let custody = Custody::public(store.clone(), KeyPolicy::default());
    let (mut refused, mut verified_valid) = (0, 0);
    for (g, group) in v["testGroups"].as_array().unwrap().iter().enumerate() {
        let jwk = group
            .get("public")
            .or_else(|| group.get("private"))
            .cloned()
            .unwrap_or(Value::Null);
        let alg = jwk["alg"].as_str().unwrap_or("").to_owned();
        // Keypost's kid is the key's RFC 7638 thumbprint (a row whose kid is not is ignored).
        let kid =
            serde_json::from_str::<keys::Jwk>(&public_jwk(&jwk, &Kid::new("x").unwrap(), &alg))
                .map(|j| Kid::new(j.thumbprint()).unwrap())
                .unwrap_or_else(|_| Kid::new(format!("group-{g}")).unwrap());
        // A key is pinned to one algorithm: a group that uses a key another group stored
        // under a different algorithm has no key of its own here.
        let mut pinned_elsewhere = false;
        if SUPPORTED.contains(&alg.as_str()) {
            // Groups that share a key share its kid: the row may be there already.
            let inserted = store.insert_key(&KeyRecord {
                kid: kid.clone(),
                realm: realm.clone(),
                purpose: KeyPurpose::AccessToken,
                alg: alg.clone(),
                public_jwk: public_jwk(&jwk, &kid, &alg),
                sealed: vec![0],
                origin: KeyOrigin::Imported,
                created_at: 0,
                activates_at: 0,
                expires_at: i64::MAX,
                revoked_at: None,
            });
            match inserted {
                Err(store::Error::Conflict(_)) => {
                    pinned_elsewhere = store.get_key(&kid).unwrap().unwrap().alg != alg;
                }
                other => other.unwrap(),
            }
        }
        let keys = custody.verifying_keys().unwrap();
        let key = keys
            .in_realm(&realm, kid.as_str())
            .filter(|_| !pinned_elsewhere);
        for t in group["tests"].as_array().unwrap() {
            let Some(jws) = t["jws"].as_str() else {
                // A JSON-serialised JWS: Keypost takes compact tokens only, so it is refused.
                refused += usize::from(t["result"] == "invalid");
                continue;
            };
            // Keypost's decision up to the signature: strict parse, pinned algorithm, no key
            // material from the header, signature by the realm's key.
            let accepted =
                tokens::fuzzing::parse_compact(jws, &mut Vec::new()).is_ok_and(|parsed| {
                    let forbidden = parsed.header.key_material || parsed.header.crit;
                    parsed.header.alg.as_str() == Some(alg.as_str())
                        && !forbidden
                        && key.is_some_and(|k| {
                            k.verify(parsed.signing_input.as_bytes(), parsed.signature)
                        })
                });
            match t["result"].as_str().unwrap() {
                "invalid" => {
                    assert!(
                        !accepted,
                        "tcId {} ({}) is invalid but was accepted",
                        t["tcId"], t["comment"]
                    );
                    refused += 1;
                }
                // A valid vector signed with the key's own algorithm must verify.
                "valid" if key.is_some() && header_alg(jws).as_deref() == Some(alg.as_str()) => {
                    let (input, sig) = jws.rsplit_once('.').unwrap();
                    let ok = B64
                        .decode(sig)
                        .is_ok_and(|sig| key.is_some_and(|k| k.verify(input.as_bytes(), &sig)));
                    assert!(ok, "tcId {} is valid and should verify", t["tcId"]);
                    verified_valid += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        refused > 300 && verified_valid > 5,
        "{refused} refused, {verified_valid} valid verified"
    );
}
