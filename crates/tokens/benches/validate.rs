//! Validation cost against the raw signature verification it contains, per algorithm.
//!
//! `cargo bench -p tokens --bench validate`. The full policy (shape, header, key lookup,
//! signature, claims, ledger read from SQLite, session and account checks) should cost at most
//! a few percent over the signature check alone; BENCHMARKS.md records the figures.

// A benchmark panicking on a broken setup is the right outcome, like a test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keys::{Algorithm, Custody, Kek, KeyPolicy, KeyPurpose};
use store::{
    Account, AccountId, Client, ClientId, Realm, RealmId, RealmKind, Role, SqliteStore, Store,
};
use tokens::{Expectation, MintRequest, Minter, StoreLedger, issuer_for, validate};

const URL: &str = "https://keypost.test";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("keypost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A file-backed database, as in production (WAL, synchronous=FULL).
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("bench.db")).unwrap());
    let t = now();
    let realm = RealmId::new("contoso").unwrap();
    store
        .create_realm(&Realm {
            id: realm.clone(),
            kind: RealmKind::Tenant,
            display_name: "c".into(),
            domains: vec![],
            access_token_alg: "EdDSA".into(),
            created_at: t,
        })
        .unwrap();
    store
        .create_client(&Client {
            realm: realm.clone(),
            client_id: ClientId::new("app").unwrap(),
            name: "app".into(),
            secret_hash: None,
            redirect_uris: vec![],
            grant_types: vec![],
            first_party: false,
            id_token_alg: None,
            created_at: t,
        })
        .unwrap();
    let user = AccountId::new("u1").unwrap();
    store
        .create_account(&Account {
            id: user.clone(),
            realm: realm.clone(),
            email: "a@c.test".into(),
            display_name: "a".into(),
            password_hash: "x".into(),
            must_change_password: false,
            disabled: false,
            role: Role::User,
            created_at: t,
        })
        .unwrap();
    let custody = Custody::new(
        store.clone(),
        Arc::new(Kek::generate().unwrap()),
        KeyPolicy::default(),
    );
    let minter = Minter::new(Arc::new(custody.signer()), store.clone(), URL);
    let issuer = issuer_for(URL, &realm);
    let aud = format!("{URL}/mail");

    let mut g = c.benchmark_group("validate");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        store.set_access_token_alg(&realm, alg.as_str()).unwrap();
        custody
            .generate(&realm, KeyPurpose::AccessToken, alg, t, t)
            .unwrap();
        let issued = minter
            .mint(
                &MintRequest {
                    realm: realm.clone(),
                    access_alg: alg,
                    subject: user.to_string(),
                    client_id: ClientId::new("app").unwrap(),
                    scope: "mail".into(),
                    audience: vec![aud.clone()],
                    session: None,
                    access_ttl: 600,
                    id_token: None,
                    refresh: None,
                    rotates: None,
                },
                t,
            )
            .unwrap();
        let token = issued.access_token;
        let keys = custody.verifying_keys().unwrap();
        let key = keys.in_realm(&realm, issued.kid.as_str()).unwrap().clone();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let ledger = StoreLedger(store.clone());
        let expect = Expectation {
            realm: &realm,
            issuer: &issuer,
            audience: &aud,
            max_lifetime: 600,
            leeway: 30,
            required_scope: Some("mail"),
        };
        assert!(validate(&token, &expect, t, &keys, &ledger).is_ok());

        g.bench_function(format!("raw_verify/{alg}"), |b| {
            b.iter(|| assert!(key.verify(input.as_bytes(), &sig)))
        });
        // What a resource server does per request: one read of both generation counters,
        // the key set for that generation, then the full policy with the ledger read.
        g.bench_function(format!("full_policy_with_ledger/{alg}"), |b| {
            b.iter(|| {
                let gens = store.generations().unwrap();
                let keys = custody.verifying_keys_at(gens.keys).unwrap();
                validate(&token, &expect, t, &keys, &ledger).unwrap()
            })
        });
        // Where the difference goes: strict JOSE parsing, and the one ledger read.
        g.bench_function(format!("breakdown_parse/{alg}"), |b| {
            b.iter(|| tokens::fuzzing::parse_compact(&token).unwrap())
        });
        let (jti, client) = (issued.access_jti.clone(), ClientId::new("app").unwrap());
        g.bench_function(format!("breakdown_ledger_view/{alg}"), |b| {
            b.iter(|| store.ledger_view(&jti, &realm, &client).unwrap())
        });
        g.bench_function(format!("breakdown_generations/{alg}"), |b| {
            b.iter(|| store.generations().unwrap())
        });
        // The same token again: served from the verified-token cache after the generation read.
        let validator = tokens::Validator::default();
        g.bench_function(format!("repeated_token_cached/{alg}"), |b| {
            b.iter(|| {
                let gens = store.generations().unwrap();
                let keys = custody.verifying_keys_at(gens.keys).unwrap();
                validator
                    .validate(&token, &expect, t, &keys, gens, &ledger)
                    .unwrap()
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
