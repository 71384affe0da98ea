//! Minting throughput with the signer in this process versus in a separate signer process
//! (over its Unix socket), many concurrent minters as under load. Each mint signs an access
//! token and writes its ledger row durably (file-backed SQLite, group commit).
//!
//! `cargo bench -p tokens --bench mint`; BENCHMARKS.md records the ratio.

// A benchmark panicking on a broken setup is the right outcome, like a test.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // Not every bench uses every part of the bed.
mod bed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keys::{RemoteSigner, SignService};
use tokens::Minter;

const MINTERS: u64 = 16;
const TASKS: u64 = 64;

fn bench(c: &mut Criterion) {
    let bed = bed::Bed::new();
    let (store, realm, custody, now) = (&bed.store, &bed.realm, &bed.custody, bed.t);
    custody.ensure(realm, now).unwrap();
    let socket = bed.dir().join("signer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let served = bed::signer_service(custody);
    std::thread::spawn(move || keys::serve_signer(listener, served));
    let signers: [(&str, Arc<dyn SignService>); 2] = [
        ("in_process", Arc::new(custody.signer())),
        ("signer_process", Arc::new(RemoteSigner::new(&socket))),
    ];
    let mut g = c.benchmark_group("mint");
    g.throughput(Throughput::Elements(1));
    for (name, signer) in signers {
        let minter = Minter::new(signer, store.clone(), bed::URL);
        g.bench_function(format!("{name}_{MINTERS}_concurrent"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(MINTERS);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..MINTERS {
                        let (minter, bed) = (&minter, &bed);
                        s.spawn(move || {
                            for _ in 0..per {
                                minter.mint(&bed.request(), now).unwrap();
                            }
                        });
                    }
                });
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * MINTERS) as f64)
            })
        });
    }
    // The same, from async tasks on a two-thread runtime (as the token endpoint mints): the
    // signature and the ledger write are awaited, so waiting parks no thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let async_signers: [(&str, Arc<dyn SignService>); 2] = [
        ("in_process", Arc::new(custody.signer())),
        ("signer_process", Arc::new(RemoteSigner::new(&socket))),
    ];
    for (name, signer) in async_signers {
        let minter = Arc::new(Minter::new(signer, store.clone(), bed::URL));
        g.bench_function(format!("{name}_{TASKS}_async_tasks"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(TASKS);
                let start = Instant::now();
                rt.block_on(async {
                    let mut all = Vec::new();
                    for _ in 0..TASKS {
                        let (minter, req) = (minter.clone(), bed.request());
                        all.push(tokio::spawn(async move {
                            for _ in 0..per {
                                minter.mint_async(&req, now, |_| Vec::new()).await.unwrap();
                            }
                        }));
                    }
                    for h in all {
                        h.await.unwrap();
                    }
                });
                start.elapsed().mul_f64(iters as f64 / (per * TASKS) as f64)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(8)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
