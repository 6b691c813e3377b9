//! `expert route`: the router's ranking of a manifest's experts for a
//! prompt, what `--expert auto` would choose, without generating.

use super::ModelArgs;
use crate::adapters::manifest::Manifest;
use crate::adapters::router::Router;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// experts.toml: names, adapter paths, descriptions and example prompts.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// The prompt to route. Repeatable: one ranking each.
    #[arg(long, short = 'p', value_name = "TEXT", required = true)]
    pub prompt: Vec<String>,
    /// Print one JSON object per prompt: {"prompt", "chosen", "threshold", "ranking"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: RouteArgs) -> Result<()> {
    if args.prompt.iter().any(|p| p.trim().is_empty()) {
        bail!("--prompt: cannot route an empty prompt");
    }
    // Only the base is needed: the router uses the base model's own
    // representation, and the adapters are not loaded.
    let manifest = Manifest::read(&args.manifest)?;
    let loaded = args.model.load()?;
    let router = Router::new(&manifest, &loaded.model, &loaded.tokenizer)?;
    eprintln!(
        "router: {} experts; {}",
        manifest.experts.len(),
        router.cache_note
    );
    for prompt in &args.prompt {
        let r = router.rank(&loaded.model, &loaded.tokenizer, prompt)?;
        if args.json {
            let mut v = serde_json::json!(r);
            v["prompt"] = serde_json::json!(prompt);
            println!("{v}");
            continue;
        }
        println!("prompt: {prompt:?}");
        for (i, s) in r.ranking.iter().enumerate() {
            let mark = if r.chosen.as_deref() == Some(s.expert.as_str()) {
                "  <- chosen"
            } else {
                ""
            };
            println!("  {}. {:<16} {:>7.3}{mark}", i + 1, s.expert, s.score);
        }
        match &r.chosen {
            Some(_) => println!("  threshold {:.3}", r.threshold),
            None => println!(
                "  threshold {:.3}: no expert reaches it; the base model answers",
                r.threshold
            ),
        }
    }
    Ok(())
}
