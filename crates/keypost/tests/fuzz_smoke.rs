//! The bounded fuzz run of the test suite: the entry points of `fuzz/` (token parsing, message
//! ingestion, the JMAP request, the signer's frames) over every input of their corpus (what
//! coverage-guided runs found, replayed on every test run) and a fixed number of deterministic
//! mutations spread over it. Any panic fails the test; long runs use `fuzz/run.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// Mutations per target, spread over its corpus (at least 64 per input): the run's length
/// does not grow with the corpus beyond replaying it.
const MUTATIONS: usize = 20_000;

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation: flip, insert, delete, duplicate a span, or splice an interesting byte.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"\x00\xff\"\\{}[]:,.=-\r\n<>@;%~/*";
    let at = rng.below(input.len() + 1);
    match rng.below(5) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
        2 if at < input.len() => {
            let end = (at + 1 + rng.below(16)).min(input.len());
            input.drain(at..end);
        }
        3 if at < input.len() => {
            let end = (at + 1 + rng.below(64)).min(input.len());
            let span: Vec<u8> = input[at..end].to_vec();
            let to = rng.below(input.len() + 1);
            input.splice(to..to, span);
        }
        _ => input.insert(at, rng.next() as u8),
    }
}

fn run(target: &str, f: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let mut rng = Rng(0x6b65_7970_6f73_7421);
    let rounds = (MUTATIONS / seeds.len()).max(64);
    for seed in &seeds {
        f(seed);
        let mut input = seed.clone();
        for round in 0..rounds {
            mutate(&mut rng, &mut input);
            f(&input);
            if round % 64 == 63 {
                input = seed.clone();
            }
        }
    }
}

#[test]
fn token_parsing_survives_mutation() {
    run("token", |data| {
        tokens::fuzzing::token(&String::from_utf8_lossy(data));
    });
}

#[test]
fn message_ingestion_survives_mutation() {
    run("mime", mail::fuzzing::ingest);
}

#[test]
fn jmap_requests_survive_mutation() {
    run("jmap_request", jmap::fuzzing::request);
}

#[test]
fn signer_frames_survive_mutation() {
    run("signer_frames", keys::fuzzing::signer_frames);
}
