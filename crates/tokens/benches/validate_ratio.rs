//! Validation cost over raw signature verification, as a ratio measured so that this
//! machine's speed drift cancels out: each round times a batch of raw verifications and,
//! right beside it, a batch of full validations of the same token, and the result is the
//! median of the per-round ratios (criterion's `validate` bench measures them minutes apart).
//!
//! `cargo bench -p tokens --bench validate_ratio` (`ROUNDS`, default 40; `ALGS`, a
//! comma-separated subset of EdDSA, ES256 and RS256, default all three). "Full" is what a
//! resource server does per request: the generation counters, the key set, and the whole
//! policy with the ledger check — answered from memory for a token this process minted, and
//! from one store read for a token minted elsewhere.

// A benchmark panicking on a broken setup is the right outcome, like a test.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // Not every bench uses every part of the bed.
mod bed;

use std::hint::black_box;
use std::time::Instant;

use keys::Algorithm;
use tokens::{StoreLedger, validate};

/// Validations per timed batch: tens of milliseconds, shorter than the drift.
const BATCH: u32 = 400;

fn main() {
    let rounds = bed::rounds(40);
    let bed = bed::Bed::new();
    let expect = bed.expect();
    let store = StoreLedger(bed.store.clone());
    let cache = bed.minter.ledger_cache();
    println!(
        "algorithm  raw verify   full, ledger in memory   full, ledger from store   ({rounds} rounds of {BATCH})"
    );
    // `ALGS=RS256,EdDSA` narrows the run (e.g. to profile one algorithm).
    let only = std::env::var("ALGS").ok();
    const MEASURED: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];
    for name in only.iter().flat_map(|o| o.split(',')) {
        assert!(
            MEASURED.iter().any(|a| a.as_str() == name),
            "ALGS: {name} is not one of EdDSA, ES256, RS256"
        );
    }
    for alg in MEASURED {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|a| a == alg.as_str()))
        {
            continue;
        }
        let case = bed.mint(alg);
        let time = |mode: Mode| {
            let start = Instant::now();
            for _ in 0..BATCH {
                if mode == Mode::Raw {
                    assert!(case.key.verify(black_box(case.input.as_bytes()), &case.sig));
                    continue;
                }
                let gens = bed.store.generations().unwrap();
                let keys = bed.custody.verifying_keys_at(gens.keys).unwrap();
                let token = black_box(&case.token);
                black_box(if mode == Mode::InMemory {
                    validate(
                        token,
                        &expect,
                        bed.t,
                        &keys,
                        &cache.ledger(&store, gens.revocations),
                    )
                } else {
                    validate(token, &expect, bed.t, &keys, &store)
                })
                .unwrap();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH)
        };
        // The first validation teaches the cache the client's and the account's state.
        time(Mode::InMemory);
        let hits = cache.hits();
        let (mut raw, mut mem, mut st) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate the order, so neither side always runs first.
            let (r, m, s) = if round % 2 == 0 {
                let r = time(Mode::Raw);
                (r, time(Mode::InMemory), time(Mode::FromStore))
            } else {
                let s = time(Mode::FromStore);
                let m = time(Mode::InMemory);
                (time(Mode::Raw), m, s)
            };
            raw.push(r);
            mem.push(m / r);
            st.push(s / r);
        }
        assert!(
            cache.hits() > hits,
            "the in-memory case was answered from memory"
        );
        let r = median(&mut raw);
        println!(
            "{alg:<9}  {r:>7.1} µs   {:>5.3}x ({:.3}–{:.3})     {:>5.3}x ({:.3}–{:.3})",
            median(&mut mem),
            quantile(&mem, 0.1),
            quantile(&mem, 0.9),
            median(&mut st),
            quantile(&st, 0.1),
            quantile(&st, 0.9),
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    InMemory,
    FromStore,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(v, 0.5)
}

/// `q` of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}
