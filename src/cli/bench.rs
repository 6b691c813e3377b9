//! `expert bench`: prefill and decode throughput on a fixed workload.
//!
//! The prompt is `--prompt-tokens` ids cycled from a fixed English text, so
//! every run (and the transformers peer in scripts/bench_transformers.py)
//! sees the same ids. Decoding is greedy and ignores eos so every run
//! generates exactly `--gen-tokens` tokens.

use super::adapters::AdapterArgs;
use super::ModelArgs;
use anyhow::{bail, Result};
use candle_core::Tensor;
use clap::Args;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Measured runs (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub const BENCH_TEXT: &str = "The lighthouse keeper wrote down every ship that passed, the wind, \
the colour of the water and the hour the fog rolled in. ";

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub runs: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub time_to_first_token_s: f64,
    pub load_s: f64,
    pub dtype: String,
    pub device: String,
    /// The adapter in use (", merged" when folded in), if any.
    pub expert: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 || args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--runs, --prompt-tokens and --gen-tokens must be positive");
    }
    let t0 = Instant::now();
    args.adapters.precheck()?;
    let mut loaded = args.model.load()?;
    let experts = args.adapters.load(&mut loaded)?;
    let load_s = t0.elapsed().as_secs_f64();
    let base = loaded.tokenizer.encode(BENCH_TEXT)?;
    let prompt: Vec<u32> = base
        .iter()
        .copied()
        .cycle()
        .take(args.prompt_tokens)
        .collect();
    let mut engine = crate::generate::Engine::new(loaded.model.clone());
    engine.set_adapter(experts.fixed()?);
    engine.set_merged(experts.merged.clone());
    let (mut prefill, mut decode, mut ttft) = (vec![], vec![], vec![]);
    for run in 0..=args.runs {
        engine.reset();
        let start = Instant::now();
        let (mut logits, _) = engine.prefill(&prompt)?;
        let mut id = argmax(&logits)?;
        let prefill_s = start.elapsed().as_secs_f64();
        let d0 = Instant::now();
        for _ in 1..args.gen_tokens {
            logits = engine.decode_step(id)?;
            id = argmax(&logits)?;
        }
        let decode_s = d0.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(args.prompt_tokens as f64 / prefill_s);
            decode.push((args.gen_tokens - 1) as f64 / decode_s.max(1e-9));
            ttft.push(prefill_s);
        }
    }
    let r = BenchResult {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        runs: args.runs,
        prefill_tokens_per_s: median(prefill),
        decode_tokens_per_s: median(decode),
        time_to_first_token_s: median(ttft),
        load_s,
        dtype: format!("{:?}", engine.model.dtype()).to_lowercase(),
        device: if engine.model.device().is_cpu() {
            "cpu".into()
        } else {
            "cuda".into()
        },
        expert: engine.expert_name(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: {} on {}, prompt {} tokens, {} generated, median of {} runs",
            loaded.path.display(),
            r.dtype,
            r.device,
            r.prompt_tokens,
            r.gen_tokens,
            r.runs
        );
        if let Some(e) = &r.expert {
            println!("  expert          {e}");
        }
        println!("  load            {:>10.2} s", r.load_s);
        println!("  prefill         {:>10.1} tok/s", r.prefill_tokens_per_s);
        println!("  first token     {:>10.3} s", r.time_to_first_token_s);
        println!("  decode          {:>10.1} tok/s", r.decode_tokens_per_s);
    }
    Ok(())
}

fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.argmax(0)?.to_scalar::<u32>()?)
}
