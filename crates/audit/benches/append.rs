//! Audit append throughput, durable (file-backed SQLite, WAL, synchronous=FULL) and linked
//! into the tenant's hash chain: one writer at a time, and many at once sharing group commits.
//!
//! `cargo bench -p audit --bench append`; BENCHMARKS.md records the figures.

// A benchmark panicking on a broken setup is the right outcome, like a test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{AuditLog, Event, Operation, Source};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use store::{RealmId, SqliteStore, Store};

fn event(realm: &RealmId, n: u64) -> Event {
    Event::success(Operation::MailItemsAccessed)
        .realm(realm)
        .actor("alice@contoso.test")
        .source(&Source {
            ip: Some("192.0.2.7".into()),
            user_agent: Some("bench/1".into()),
        })
        .detail("operation", "Email/get")
        .detail("items", vec![format!("M{n}"), format!("M{}", n + 1)])
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("keypost-audit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("bench.db")).unwrap());
    let log = AuditLog::new(store);
    let realms: Vec<RealmId> = ["contoso", "fabrikam", "northwind", "consumers"]
        .iter()
        .map(|r| RealmId::new(*r).unwrap())
        .collect();
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_writer", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            log.record(event(&realms[0], n), 1).unwrap()
        })
    });
    for writers in [16usize, 64] {
        g.bench_function(format!("{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers as u64);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for w in 0..writers {
                        let (log, realm) = (&log, &realms[w % realms.len()]);
                        s.spawn(move || {
                            for n in 0..per {
                                log.record(event(realm, n), 1).unwrap();
                            }
                        });
                    }
                });
                // Report the time per event actually written.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * writers as u64) as f64)
            })
        });
    }
    // The same appends from async tasks, as request handlers make them: each task awaits its
    // record's durability on a two-thread runtime, so waiting costs a task, not a thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let log = Arc::new(log);
    for tasks in [64usize, 256] {
        g.bench_function(format!("{tasks}_async_tasks"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(tasks as u64);
                let start = Instant::now();
                rt.block_on(async {
                    let mut all = Vec::with_capacity(tasks);
                    for t in 0..tasks {
                        let (log, realm) = (log.clone(), realms[t % realms.len()].clone());
                        all.push(tokio::spawn(async move {
                            for n in 0..per {
                                log.record_all(vec![(event(&realm, n), 1)]).await.unwrap();
                            }
                        }));
                    }
                    for h in all {
                        h.await.unwrap();
                    }
                });
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * tasks as u64) as f64)
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
