//! `expert perplexity`: mean NLL of a text under the model.

use super::adapters::AdapterArgs;
use super::ModelArgs;
use crate::model::Lora;
use crate::model::{Model, Precision};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// UTF-8 text file to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Window length in tokens (default: the whole text when it fits the context).
    #[arg(long)]
    pub context: Option<usize>,
    /// Print {"tokens", "nll", "ppl"} as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the f32 logits of the first window (positions × vocab) and
    /// its token ids to this safetensors file, for comparison tools.
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Score {
    /// Tokens scored (every token after the first of each window).
    pub tokens: usize,
    /// Mean negative log-likelihood in nats.
    pub nll: f64,
    pub ppl: f64,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    args.adapters.precheck()?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut loaded = args.model.load()?;
    let experts = args.adapters.load(&mut loaded)?;
    let adapter = experts.fixed()?;
    if let Some(a) = &adapter {
        eprintln!("expert: {}", a.name);
    } else if let Some(m) = &experts.merged {
        eprintln!("expert: {m} (merged)");
    }
    let ids = loaded.tokenizer.encode_with_specials(&text)?;
    let model = &loaded.model;
    let max = model.config.context_length();
    let window = args.context.unwrap_or(max.min(ids.len().max(2)));
    if window < 2 || window > max {
        bail!(
            "--context: expected a window between 2 and the model's context of {max}, got {window}"
        );
    }
    let score = perplexity_with(model, adapter.as_deref(), &ids, window, !args.json)?;
    if let Some(out) = &args.logits_out {
        let first = &ids[..window.min(ids.len())];
        let hidden = model.forward_hidden_with(
            first,
            &mut model.new_cache(),
            adapter.as_deref(),
            Precision::Exact,
        )?;
        let logits = model.logits(&hidden)?;
        let ids_t = Tensor::new(first, &candle_core::Device::Cpu)?;
        let tensors = std::collections::HashMap::from([
            (
                "logits".to_string(),
                logits.to_device(&candle_core::Device::Cpu)?,
            ),
            ("ids".to_string(), ids_t),
        ]);
        candle_core::safetensors::save(&tensors, out)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        println!(
            "{}: {} tokens scored, mean NLL {:.6}, perplexity {:.4}",
            args.file.display(),
            score.tokens,
            score.nll,
            score.ppl
        );
    }
    Ok(())
}

/// Scores `ids` in consecutive windows of `window` tokens; within a window
/// every token after the first is predicted from the ones before it. For a
/// text that fits one window this is transformers' `model(ids, labels=ids).loss`.
pub fn perplexity(model: &Model, ids: &[u32], window: usize, progress: bool) -> Result<Score> {
    perplexity_with(model, None, ids, window, progress)
}

/// `perplexity` with a LoRA adapter applied unmerged.
pub fn perplexity_with(
    model: &Model,
    lora: Option<&Lora>,
    ids: &[u32],
    window: usize,
    progress: bool,
) -> Result<Score> {
    if ids.len() < 2 {
        bail!(
            "the text has {} token(s); at least 2 are needed to score",
            ids.len()
        );
    }
    let windows: Vec<&[u32]> = ids.chunks(window).filter(|w| w.len() >= 2).collect();
    let bar = if progress && windows.len() > 1 {
        indicatif::ProgressBar::new(windows.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut total, mut count) = (0f64, 0usize);
    for w in windows {
        // Each window is its own sequence.
        let hidden =
            model.forward_hidden_with(w, &mut model.new_cache(), lora, Precision::Exact)?;
        // The lm_head runs in slices: full-vocabulary logits for a long
        // window would not fit in memory at once.
        let n = w.len() - 1;
        let mut start = 0;
        while start < n {
            let len = (n - start).min(256);
            let logits = model.logits(&hidden.narrow(0, start, len)?)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let targets = Tensor::new(&w[start + 1..start + 1 + len], logp.device())?;
            let picked = logp
                .gather(&targets.unsqueeze(1)?, 1)?
                .to_dtype(DType::F64)?;
            total -= picked.sum_all()?.to_scalar::<f64>()?;
            start += len;
        }
        count += n;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let nll = total / count as f64;
    Ok(Score {
        tokens: count,
        nll,
        ppl: nll.exp(),
    })
}
