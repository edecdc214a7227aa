//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through every fuzz target, then
//! mutates it for a bounded time per target (`KINDLING_FUZZ_SECS`, default 1 s): the same
//! targets the libFuzzer harness under `fuzz/` runs, on the stable toolchain. An input that
//! fails is written to `target/fuzz-failures/<target>/` to be added to the corpus once fixed.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kindling_worker::fuzz::TARGETS;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus at {}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("corpus file"))
        })
        .collect();
    out.sort();
    out
}

/// Runs one input; on a panic, saves it and fails naming it.
fn run(target: &str, f: fn(&[u8]), input: &[u8], origin: &str) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/fuzz-failures")
            .join(target);
        std::fs::create_dir_all(&dir).expect("failure directory");
        let path = dir.join(format!("{:016x}", fnv(input)));
        std::fs::write(&path, input).expect("failure file");
        panic!(
            "{target} failed on {origin}; input saved at {}",
            path.display()
        );
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A small deterministic generator (xorshift64*), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to these formats: separators, digits, tar type flags, PEP 508 operators.
const INTERESTING: &[u8] = b"\0\n\r\t /\\.@:#;=<>!~[],\"'{}-+0123456789xgLKS5";

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if !data.is_empty() => {
                let end = (at + rng.below(64)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + rng.below(256)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            4 if !data.is_empty() => {
                let from = rng.below(data.len());
                let end = (from + rng.below(64)).min(data.len());
                let piece: Vec<u8> = data[from..end].to_vec();
                for _ in 0..rng.below(16) {
                    data.splice(
                        at.min(data.len())..at.min(data.len()),
                        piece.iter().copied(),
                    );
                }
            }
            _ => {
                if data.len() >= 8 {
                    let i = rng.below(data.len() - 7);
                    let v = [
                        0u64,
                        1,
                        0x7f,
                        0xff,
                        512,
                        4096,
                        4097,
                        u32::MAX as u64,
                        u64::MAX,
                    ][rng.below(9)];
                    data[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    data.truncate(1 << 20);
    data
}

#[test]
fn corpus_replays_and_mutations_hold() {
    let secs: f64 = std::env::var("KINDLING_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    for (target, f) in TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "the {target} corpus is empty");
        for (name, input) in &seeds {
            run(target, f, input, &format!("corpus file {name}"));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fnv(target.as_bytes()));
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let (_, seed) = &seeds[rng.below(seeds.len())];
            let (_, other) = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed, other);
            run(target, f, &input, &format!("mutation {runs}"));
            runs += 1;
        }
        println!("{target}: {} corpus inputs, {runs} mutations", seeds.len());
    }
}
