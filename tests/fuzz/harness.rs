//! A small mutation fuzzer on stable Rust: each target starts from a
//! committed seed corpus (`tests/fuzz/corpus/<target>/`, made from the real
//! fixtures) and its regressions (`tests/fuzz/regressions/<target>/`), and
//! runs mutated inputs (bit flips, interesting integers, cut, copied and
//! spliced ranges, dictionary tokens) for a time budget. A panic saves the
//! input under `target/fuzz-failures/<target>/` and fails the test; an
//! input that takes longer than `HANG` fails it as a hang.
//!
//! - `EXPERT_FUZZ_SECS` (default 1): seconds per target; the suite's smoke.
//! - `EXPERT_FUZZ_SEED` (default 1): the random seed; a run is replayable.
//!
//! Structured targets read their inputs with `arbitrary::Unstructured`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One input may take at most this long (a hang otherwise).
const HANG: Duration = Duration::from_secs(10);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

pub struct Target<'a> {
    pub name: &'a str,
    /// Tokens a mutation may insert (field names, numbers, markup).
    pub dict: &'a [&'a [u8]],
    /// Mutations land in the first `hot` bytes 9 times out of 10 (headers).
    pub hot: usize,
}

impl Target<'_> {
    pub fn corpus(&self) -> Vec<Vec<u8>> {
        let corpus = files_in(&root().join("tests/fuzz/corpus").join(self.name));
        assert!(!corpus.is_empty(), "no seed corpus for {}", self.name);
        corpus
    }

    /// Runs the seeds and regressions as they are, then mutations for the
    /// time budget. `check` panics on a bug and returns normally otherwise.
    pub fn run(&self, check: impl Fn(&[u8])) {
        let secs: f64 = std::env::var("EXPERT_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        let seed: u64 = std::env::var("EXPERT_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let corpus = self.corpus();
        let regressions = files_in(&root().join("tests/fuzz/regressions").join(self.name));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut execs = 0u64;
        for input in corpus.iter().chain(&regressions) {
            self.one(&check, input, seed, execs);
            execs += 1;
        }
        // The budget counts mutated inputs only (the seeds pay for any
        // one-time setup, such as loading a tokenizer); at least 100 run.
        let start = Instant::now();
        let budget = Duration::from_secs_f64(secs);
        let seeds = execs;
        while start.elapsed() < budget || execs < seeds + 100 {
            let mut input = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..=4) {
                self.mutate(&mut rng, &mut input, &corpus);
            }
            self.one(&check, &input, seed, execs);
            execs += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "fuzz {}: {} mutated executions in {secs:.1} s (seed {seed}, {} seeds, {} regressions)",
            self.name,
            execs - seeds,
            corpus.len(),
            regressions.len()
        );
        assert!(
            execs > (corpus.len() + regressions.len()) as u64,
            "no mutation ran"
        );
    }

    fn one(&self, check: &impl Fn(&[u8]), input: &[u8], seed: u64, exec: u64) {
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| check(input)));
        let took = t.elapsed();
        let failure = match r {
            Err(_) => Some("panicked".to_string()),
            Ok(()) if took > HANG => Some(format!("took {:.1} s (a hang)", took.as_secs_f64())),
            Ok(()) => None,
        };
        if let Some(what) = failure {
            let dir = root().join("target/fuzz-failures").join(self.name);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("seed{seed}-exec{exec}.bin"));
            std::fs::write(&file, input).unwrap();
            panic!(
                "fuzz {}: input {what}; saved to {} (copy it to tests/fuzz/regressions/{}/ once fixed)",
                self.name,
                file.display(),
                self.name
            );
        }
    }

    fn mutate(&self, rng: &mut StdRng, b: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let pos = |rng: &mut StdRng, len: usize| -> usize {
            if len == 0 {
                0
            } else if rng.random_ratio(9, 10) {
                rng.random_range(0..len.min(self.hot.max(1)))
            } else {
                rng.random_range(0..len)
            }
        };
        const INTERESTING: [u64; 14] = [
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0xffff,
            0x7fff_ffff,
            0xffff_ffff,
            1 << 32,
            1 << 40,
            i64::MAX as u64,
            u64::MAX,
        ];
        match rng.random_range(0..9) {
            0 if !b.is_empty() => {
                let i = pos(rng, b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = pos(rng, b.len());
                b[i] = rng.random();
            }
            2 if !b.is_empty() => {
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
                let i = pos(rng, b.len());
                let bytes = v.to_le_bytes();
                let n = width.min(b.len() - i);
                b[i..i + n].copy_from_slice(&bytes[..n]);
            }
            3 if !b.is_empty() => {
                // Delete a range.
                let i = pos(rng, b.len());
                let n = rng.random_range(1..=16.min(b.len() - i));
                b.drain(i..i + n);
            }
            4 if !b.is_empty() => {
                // Copy a range elsewhere.
                let i = pos(rng, b.len());
                let n = rng.random_range(1..=32.min(b.len() - i));
                let chunk = b[i..i + n].to_vec();
                let at = pos(rng, b.len());
                b.splice(at..at, chunk);
            }
            5 if !self.dict.is_empty() => {
                let word = self.dict[rng.random_range(0..self.dict.len())];
                let at = pos(rng, b.len());
                if rng.random() && at + word.len() <= b.len() {
                    b[at..at + word.len()].copy_from_slice(word);
                } else {
                    b.splice(at..at, word.iter().copied());
                }
            }
            6 if !b.is_empty() => {
                let at = rng.random_range(0..b.len());
                b.truncate(at);
            }
            7 => {
                // Splice: the head of this input, the tail of another.
                let other = &corpus[rng.random_range(0..corpus.len())];
                let at = pos(rng, b.len());
                let from = pos(rng, other.len());
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = pos(rng, b.len());
                let n = rng.random_range(1..=8);
                let v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(i..i, v);
            }
        }
    }
}
