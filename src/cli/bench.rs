//! `expert bench`: prefill and decode throughput, llama-bench-compatible.
//!
//! The flags and tests are llama-bench's, so the two compare line by line:
//! every `-p N` is a prefill test (N prompt tokens in one pass), every `-n N`
//! a decode test (N tokens, one at a time), each after `-d D` tokens of
//! context, for every `-t` thread count, repeated `-r` times after one
//! warm-up run. Prompt ids are cycled from a fixed English text, so every run
//! sees the same ids; decoding is greedy and ignores eos.
//!
//! Thread pools keep their size for the life of a process, so a list of
//! thread counts runs one child process per count (same flags, the count in
//! `EXPERT_BENCH_THREADS`), and the parent prints their results together.

use super::adapters::AdapterArgs;
use super::sysinfo::{cpu_info, peak_rss_bytes, CpuInfo};
use super::ModelArgs;
use crate::sampling::{Sampler, SamplingParams};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Prompt lengths to prefill (comma list; 0 skips the prefill tests).
    #[arg(
        short = 'p',
        long = "prompt-tokens",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub prompt_tokens: Vec<usize>,
    /// Token counts to decode (comma list; 0 skips the decode tests).
    #[arg(
        short = 'n',
        long = "gen-tokens",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub gen_tokens: Vec<usize>,
    /// Tokens of context already in the KV cache before each test (comma list).
    #[arg(
        short = 'd',
        long = "depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depth: Vec<usize>,
    /// Measured repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub repetitions: usize,
    /// Print one JSON object per test (a JSON array).
    #[arg(long)]
    pub json: bool,
}

pub const BENCH_TEXT: &str = "The lighthouse keeper wrote down every ship that passed, the wind, \
the colour of the water and the hour the fog rolled in. ";

/// Set in the child processes of a thread-count list.
const CHILD_THREADS: &str = "EXPERT_BENCH_THREADS";

/// One test's figures: the `--json` interface (field names are kept stable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestResult {
    pub model: String,
    /// The projection weights as held in memory: f32, bf16, q8_0, q4_k+q6_k…
    pub format: String,
    /// The compute dtype of activations.
    pub dtype: String,
    pub device: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub depth: usize,
    pub repetitions: usize,
    /// Prefill tokens per second (mean over repetitions); None for decode tests.
    pub prefill_tok_s: Option<f64>,
    pub prefill_tok_s_stddev: Option<f64>,
    /// Decode tokens per second (mean over repetitions); None for prefill tests.
    pub decode_tok_s: Option<f64>,
    pub decode_tok_s_stddev: Option<f64>,
    /// Every repetition's tokens per second.
    pub samples_tok_s: Vec<f64>,
    /// The adapter (expert) in use (", merged" when folded in), if any.
    pub expert: Option<String>,
    pub load_s: f64,
    /// Seconds waited after loading for the weights' move onto huge pages
    /// (`ops::huge_pages`; runs behind the first prompt in a chat).
    pub huge_pages_s: f64,
    /// The process's peak RSS after this test.
    pub peak_rss_bytes: u64,
    pub cpu: CpuInfo,
}

/// The thread count this process runs with: the one `-t` value, or the
/// child's, or None (the default) when a list spawns children.
pub fn process_threads(args: &BenchArgs) -> Result<Option<usize>> {
    if let Ok(t) = std::env::var(CHILD_THREADS) {
        return Ok(Some(t.parse().context(CHILD_THREADS)?));
    }
    if args.model.threads.contains(&0) {
        bail!("--threads: expected positive numbers of threads, got 0");
    }
    Ok(match args.model.threads.as_slice() {
        [n] => Some(*n),
        _ => None,
    })
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions: expected at least 1");
    }
    if args
        .prompt_tokens
        .iter()
        .chain(&args.gen_tokens)
        .all(|&n| n == 0)
    {
        bail!("--prompt-tokens and --gen-tokens: expected at least one test (a value above 0)");
    }
    let child = std::env::var_os(CHILD_THREADS).is_some();
    let results = if args.model.threads.len() > 1 && !child {
        let mut all = Vec::new();
        for &t in &args.model.threads {
            all.extend(run_child(t)?);
        }
        all
    } else {
        run_tests(&args)?
    };
    if args.json || child {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_table(&results);
    }
    Ok(())
}

/// Runs this same command with one thread count in a child process.
fn run_child(threads: usize) -> Result<Vec<TestResult>> {
    let exe = std::env::current_exe().context("cannot find the expert executable")?;
    let out = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_THREADS, threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the benchmark's child process")?;
    if !out.status.success() {
        bail!("the benchmark with {threads} threads failed");
    }
    serde_json::from_slice(&out.stdout).context("the child benchmark's output")
}

fn run_tests(args: &BenchArgs) -> Result<Vec<TestResult>> {
    let t0 = Instant::now();
    args.adapters.precheck()?;
    let mut loaded = args.model.load()?;
    let experts = args.adapters.load(&mut loaded)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Measure the steady state: the weights' move onto huge pages, which
    // runs behind a chat's first prompt, finishes first.
    let t1 = Instant::now();
    crate::ops::huge_pages::wait();
    let huge_pages_s = t1.elapsed().as_secs_f64();
    let format = loaded.model.weight_format();
    let base = loaded.tokenizer.encode(BENCH_TEXT)?;
    let ids = |n: usize| -> Vec<u32> { base.iter().copied().cycle().take(n).collect() };
    let mut engine = crate::generate::Engine::new(loaded.model.clone());
    engine.set_adapter(experts.fixed()?);
    engine.set_merged(experts.merged.clone());
    let cpu = cpu_info();
    let threads = crate::ops::threads();
    let mut results = Vec::new();
    let mut tests = Vec::new();
    for &d in &args.depth {
        tests.extend(
            args.prompt_tokens
                .iter()
                .filter(|&&p| p > 0)
                .map(|&p| (p, 0, d)),
        );
        tests.extend(
            args.gen_tokens
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (0, n, d)),
        );
    }
    for (p, n, depth) in tests {
        let context = ids(depth + p);
        let mut samples = Vec::with_capacity(args.repetitions);
        for rep in 0..=args.repetitions {
            engine.reset();
            if depth > 0 {
                engine.prefill(&context[..depth])?;
            }
            let secs = if p > 0 {
                let start = Instant::now();
                // Prefill past the depth: cached ids differ from a plain
                // prefix only in length, so the cache is reused as is.
                engine.prefill(&context)?;
                start.elapsed().as_secs_f64()
            } else {
                let mut id = base[depth % base.len()];
                // The chat's greedy pick (no penalties): what a token costs there.
                let mut greedy = Sampler::new(SamplingParams::greedy())?;
                let start = Instant::now();
                for _ in 0..n {
                    id = greedy.sample(&engine.decode_step(id)?, &[])?;
                }
                start.elapsed().as_secs_f64()
            };
            if rep > 0 {
                samples.push((p + n) as f64 / secs.max(1e-9));
            }
        }
        let (mean, sd) = mean_stddev(&samples);
        let (prefill, decode) = if p > 0 {
            ((Some(mean), Some(sd)), (None, None))
        } else {
            ((None, None), (Some(mean), Some(sd)))
        };
        results.push(TestResult {
            model: loaded.path.display().to_string(),
            format: format.clone(),
            dtype: format!("{:?}", engine.model.dtype()).to_lowercase(),
            device: if engine.model.device().is_cpu() {
                "cpu".into()
            } else {
                "cuda".into()
            },
            threads,
            prompt_tokens: p,
            gen_tokens: n,
            depth,
            repetitions: args.repetitions,
            prefill_tok_s: prefill.0,
            prefill_tok_s_stddev: prefill.1,
            decode_tok_s: decode.0,
            decode_tok_s_stddev: decode.1,
            samples_tok_s: samples,
            expert: engine.expert_name(),
            load_s,
            huge_pages_s,
            peak_rss_bytes: peak_rss_bytes(),
            cpu: cpu.clone(),
        });
    }
    Ok(results)
}

fn mean_stddev(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// llama-bench's markdown table: one line per test.
fn print_table(results: &[TestResult]) {
    if let Some(r) = results.first() {
        println!("{} ({}, {} on {})", r.model, r.format, r.dtype, r.device);
        if let Some(e) = &r.expert {
            println!("expert: {e}");
        }
        let cap = match r.cpu.simd.as_str() {
            "native" | "" => String::new(),
            s => format!(", kernels capped at {s} (EXPERT_SIMD)"),
        };
        println!(
            "CPU: {} [{}]{cap}, load {:.2} s",
            r.cpu.model,
            r.cpu.flags.join(" "),
            r.load_s
        );
    }
    println!("| threads | test | t/s | peak RSS |");
    println!("| ---: | ---: | ---: | ---: |");
    for r in results {
        let (name, mean, sd) = match (r.prefill_tok_s, r.decode_tok_s) {
            (Some(m), _) => (format!("pp{}", r.prompt_tokens), m, r.prefill_tok_s_stddev),
            (_, Some(m)) => (format!("tg{}", r.gen_tokens), m, r.decode_tok_s_stddev),
            _ => continue,
        };
        let at = if r.depth > 0 {
            format!(" @ d{}", r.depth)
        } else {
            String::new()
        };
        println!(
            "| {} | {name}{at} | {mean:.2} ± {:.2} | {:.0} MiB |",
            r.threads,
            sd.unwrap_or(0.0),
            r.peak_rss_bytes as f64 / (1 << 20) as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_stddev() {
        let (m, s) = mean_stddev(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.2909944487358056).abs() < 1e-12);
        assert_eq!(mean_stddev(&[7.0]), (7.0, 0.0));
    }
}
