//! Validation cost against the raw signature verification it contains, per algorithm.
//!
//! `cargo bench -p tokens --bench validate`. The full policy (shape, header, key lookup,
//! signature, claims, ledger read from SQLite, session and account checks) should cost at most
//! a few percent over the signature check alone; BENCHMARKS.md records the figures.

// A benchmark panicking on a broken setup is the right outcome, like a test.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // Not every bench uses every part of the bed.
mod bed;

use criterion::{Criterion, criterion_group, criterion_main};
use keys::Algorithm;
use store::ClientId;
use tokens::{StoreLedger, validate};

fn bench(c: &mut Criterion) {
    let bed = bed::Bed::new();
    let (store, custody, realm, t) = (&bed.store, &bed.custody, &bed.realm, bed.t);
    let expect = bed.expect();
    let mut g = c.benchmark_group("validate");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let bed::Case {
            token,
            jti,
            key,
            input,
            sig,
        } = bed.mint(alg);
        let keys = custody.verifying_keys().unwrap();
        let ledger = StoreLedger(store.clone());
        assert!(validate(&token, &expect, t, &keys, &ledger).is_ok());
        let minter = &bed.minter;

        g.bench_function(format!("raw_verify/{alg}"), |b| {
            b.iter(|| assert!(key.verify(input.as_bytes(), &sig)))
        });
        // What a resource server does per request: the generation counters (shared, read
        // from the store at most every 25 ms), the key set for that generation, then the full
        // policy with the ledger check — answered by the ledger cache for a token this
        // process minted (the first validation taught it the client's and account's state)...
        let cache = minter.ledger_cache();
        let revocations = store.generations().unwrap().revocations;
        assert!(
            validate(
                &token,
                &expect,
                t,
                &keys,
                &cache.ledger(&ledger, revocations)
            )
            .is_ok()
        );
        g.bench_function(format!("full_policy_ledger_in_memory/{alg}"), |b| {
            let hits = cache.hits();
            b.iter(|| {
                let gens = store.generations().unwrap();
                let keys = custody.verifying_keys_at(gens.keys).unwrap();
                let ledger = cache.ledger(&ledger, gens.revocations);
                validate(&token, &expect, t, &keys, &ledger).unwrap()
            });
            assert!(
                cache.hits() > hits,
                "the in-memory case was answered from memory"
            );
        });
        // ...and by one read of the store for a token minted elsewhere (another node, or
        // before a restart).
        g.bench_function(format!("full_policy_ledger_from_store/{alg}"), |b| {
            b.iter(|| {
                let gens = store.generations().unwrap();
                let keys = custody.verifying_keys_at(gens.keys).unwrap();
                validate(&token, &expect, t, &keys, &ledger).unwrap()
            })
        });
        // Where the difference goes: strict JOSE parsing, the token's SHA-256 (for ES256 and
        // RS256 its signing-input part is shared with the signature check), and the one
        // ledger read.
        g.bench_function(format!("breakdown_parse/{alg}"), |b| {
            let mut buf = Vec::new();
            b.iter(|| {
                tokens::fuzzing::parse_compact(&token, &mut buf).unwrap();
            })
        });
        g.bench_function(format!("breakdown_token_hash/{alg}"), |b| {
            b.iter(|| tokens::token_hash(&token))
        });
        let client = ClientId::new("app").unwrap();
        g.bench_function(format!("breakdown_ledger_view/{alg}"), |b| {
            b.iter(|| store.ledger_view(&jti, realm, &client).unwrap())
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
