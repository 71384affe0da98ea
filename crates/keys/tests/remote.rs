//! The signer over its Unix socket: signs for a realm with that realm's active key only, as
//! the in-process signer does, and the client recovers from a restarted signer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keys::{Algorithm, Custody, Error, Kek, KeyPolicy, RemoteSigner, SignService};
use store::{KeyPurpose, Realm, RealmId, RealmKind, SqliteStore, Store};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn realm(store: &Arc<dyn Store>, id: &str) -> RealmId {
    let r = RealmId::new(id).unwrap();
    store
        .create_realm(&Realm {
            id: r.clone(),
            kind: RealmKind::Tenant,
            display_name: id.into(),
            domains: vec![],
            access_token_alg: "EdDSA".into(),
            created_at: 0,
        })
        .unwrap();
    r
}

#[test]
fn signs_over_the_socket_with_the_realms_own_key_only() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let contoso = realm(&store, "contoso");
    let keyless = realm(&store, "keyless");
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    custody.ensure(&contoso, now()).unwrap();
    let dir = std::env::temp_dir().join(format!("keypost-signer-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("signer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let signer = Arc::new(custody.signer());
    let refused: Arc<Mutex<Vec<keys::Refusal>>> = Arc::default();
    let hook: keys::RefusalHook = {
        let refused = refused.clone();
        Arc::new(move |r: &keys::Refusal| refused.lock().unwrap().push(r.clone()))
    };
    std::thread::spawn(move || keys::serve_signer(listener, signer, hook));

    let client = RemoteSigner::new(&path);
    assert!(client.ping());
    let payload = B64.encode(br#"{"sub":"x"}"#);
    let (key, input, sig) = client
        .sign_jws(
            &contoso,
            KeyPurpose::AccessToken,
            Algorithm::EdDSA,
            "at+jwt",
            &payload,
            0,
        )
        .unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(input.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], key.kid.as_str());
    assert_eq!(header["typ"], "at+jwt");
    let verifying = custody.verifying_keys().unwrap();
    let vk = verifying.in_realm(&contoso, key.kid.as_str()).unwrap();
    assert!(
        vk.verify(input.as_bytes(), &sig.0),
        "a signature of what was asked, by the named key"
    );

    // The audit key never signs over the socket: a compromised web process cannot forge a
    // checkpoint or a tombstone.
    assert!(matches!(
        client.sign_raw(
            &contoso,
            KeyPurpose::Audit,
            Algorithm::EdDSA,
            b"checkpoint",
            0
        ),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        client.sign_jws(
            &contoso,
            KeyPurpose::Audit,
            Algorithm::EdDSA,
            "JWT",
            &payload,
            0
        ),
        Err(Error::Refused(_))
    ));

    assert!(matches!(
        client.sign_jws(
            &keyless,
            KeyPurpose::AccessToken,
            Algorithm::EdDSA,
            "at+jwt",
            &payload,
            0
        ),
        Err(Error::NoActiveKey { .. })
    ));

    // Both audit-key asks reached the refusal hook (which the signer process audits); the
    // realm without a key is not a refusal, and neither was the signed request.
    let refused = refused.lock().unwrap();
    let seen: Vec<(&str, &str, &str)> = refused
        .iter()
        .map(|r| (r.op, r.purpose.as_str(), r.reason))
        .collect();
    assert_eq!(
        seen,
        [
            ("raw", "audit", "raw signing is not offered over the socket"),
            ("jws", "audit", "key is for another purpose"),
        ]
    );
    assert!(refused.iter().all(|r| r.realm == "contoso"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_absent_signer_is_unavailable_not_a_panic() {
    let client = RemoteSigner::new(std::path::Path::new("/nonexistent/keypost/signer.sock"));
    assert!(!client.ping());
    let r = RealmId::new("contoso").unwrap();
    assert!(matches!(
        client.sign_raw(&r, KeyPurpose::Audit, Algorithm::EdDSA, b"x", 0),
        Err(Error::Unavailable(_))
    ));
}
