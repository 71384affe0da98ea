//! What the separate signer process costs minting, as a ratio measured so that this
//! machine's speed drift cancels out: each round mints a batch through a signer in this
//! process and, right beside it, a batch through a signer behind its Unix socket (served by a
//! thread of this process, so both share the two cores), alternating which goes first; the
//! result is the median of the per-round costs. Each mint signs an EdDSA access token and
//! writes its ledger row durably (file-backed SQLite, group commit), from async tasks on a
//! two-thread runtime, as the token endpoint mints.
//!
//! Twice: with 64 tasks, where neither setup keeps the two cores busy (each token waits for a
//! commit's fsync, and the signer's round trip adds to that wait), and with 256, enough to
//! keep them busy — throughput proper, where what the signer process costs is its CPU.
//!
//! `cargo bench -p tokens --bench mint_ratio` (`ROUNDS`, default 20). criterion's `mint` bench
//! times the two one after the other, minutes apart.

// A benchmark panicking on a broken setup is the right outcome, like a test.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // Not every bench uses every part of the bed.
mod bed;

use std::sync::Arc;
use std::time::Instant;

use keys::{RemoteSigner, SignService};
use tokens::Minter;

/// Concurrent minters: fewer than the cores can serve, then enough.
const TASKS: [usize; 2] = [64, 256];
/// Mints per task per batch: a batch takes a few hundred milliseconds.
const PER_TASK: usize = 60;

fn main() {
    let rounds = bed::rounds(20);
    let bed = bed::Bed::new();
    bed.custody.ensure(&bed.realm, bed.t).unwrap();
    let socket = bed.dir().join("signer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let served = bed::signer_service(&bed.custody);
    std::thread::spawn(move || keys::serve_signer(listener, served));
    let minter =
        |signer: Arc<dyn SignService>| Arc::new(Minter::new(signer, bed.store.clone(), bed::URL));
    let in_process = minter(Arc::new(bed.custody.signer()));
    let remote = minter(Arc::new(RemoteSigner::new(&socket)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Mints per second of one batch through `minter` by `tasks` tasks.
    let batch = |minter: &Arc<Minter>, tasks: usize| {
        let start = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..tasks)
                .map(|_| {
                    let (minter, req, t) = (minter.clone(), bed.request(), bed.t);
                    tokio::spawn(async move {
                        for _ in 0..PER_TASK {
                            minter.mint_async(&req, t, |_| Vec::new()).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        (tasks * PER_TASK) as f64 / start.elapsed().as_secs_f64()
    };
    for tasks in TASKS {
        batch(&in_process, tasks);
        batch(&remote, tasks);
        let (mut local, mut other, mut costs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (l, r) = if round % 2 == 0 {
                let l = batch(&in_process, tasks);
                (l, batch(&remote, tasks))
            } else {
                let r = batch(&remote, tasks);
                (batch(&in_process, tasks), r)
            };
            local.push(l);
            other.push(r);
            costs.push(100.0 * (1.0 - r / l));
        }
        for v in [&mut local, &mut other, &mut costs] {
            v.sort_by(f64::total_cmp);
        }
        let q = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "{tasks} tasks, {rounds} rounds of {} mints: in-process signer {:.0}/s, signer process {:.0}/s (medians)",
            tasks * PER_TASK,
            q(&local, 0.5),
            q(&other, 0.5)
        );
        println!(
            "  the signer process costs {:.1} % of minting throughput (median of rounds; 10th–90th percentile {:.1} to {:.1} %)",
            q(&costs, 0.5),
            q(&costs, 0.1),
            q(&costs, 0.9)
        );
    }
}
