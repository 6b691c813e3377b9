//! `expert chat`: one-shot generation with --prompt.

use super::ModelArgs;
use crate::generate::GenerateOptions;
use crate::sampling::{Sampler, SamplingParams};
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user's message (one-shot). Without it, an interactive chat starts.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Feed the prompt as-is, with no chat template (plain completion).
    #[arg(long)]
    pub raw: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub min_p: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Print text, token ids and stats as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let Some(prompt) = args.prompt.clone() else {
        bail!("interactive chat is not available yet: pass --prompt");
    };
    if !args.raw {
        bail!("chat templates are not available yet: pass --raw");
    }
    let mut loaded = args.model.load()?;
    let gen_cfg = loaded.path.join("generation_config.json");
    let mut params = if gen_cfg.is_file() {
        SamplingParams::from_generation_config(&gen_cfg)?
    } else {
        SamplingParams::from_generation_config(std::path::Path::new(""))?
    };
    if let Some(t) = args.temperature {
        params.temperature = t;
    }
    if let Some(v) = args.top_p {
        params.top_p = v;
    }
    if let Some(v) = args.top_k {
        params.top_k = v;
    }
    if let Some(v) = args.min_p {
        params.min_p = v;
    }
    if let Some(v) = args.seed {
        params.seed = v;
    }
    params.validate()?;
    let mut sampler = Sampler::new(params)?;
    let ids = loaded.tokenizer.encode(&prompt)?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        eos_ids: loaded.eos_ids.clone(),
        stop_strings: vec![],
    };
    let json = args.json;
    let mut stdout = std::io::stdout();
    let gen = loaded.engine.generate(
        &ids,
        &loaded.tokenizer,
        &mut sampler,
        &opts,
        None,
        &mut |t| {
            if !json {
                stdout.write_all(t.as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        },
    )?;
    if json {
        let out = serde_json::json!({
            "text": gen.text,
            "token_ids": gen.token_ids,
            "prompt_tokens": gen.stats.prompt_tokens,
            "stop_reason": gen.stats.stop_reason,
            "stats": gen.stats,
        });
        println!("{out}");
    } else {
        println!();
    }
    Ok(())
}
