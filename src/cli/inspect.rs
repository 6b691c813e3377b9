//! `expert inspect`: config summary, parameter count, tie status, every
//! tensor, the validation verdict and the LoRA target modules.

use super::ModelArgs;
use crate::model::weights::{SafetensorsSource, LORA_TARGETS};
use crate::model::ModelConfig;
use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print everything as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let dir = args.model.resolve()?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    // Only headers are read: no tensor data is loaded.
    let src = SafetensorsSource::open(&dir, DType::F32, &Device::Cpu)?;
    let v = src.validate(&cfg);
    if args.json {
        let out = serde_json::json!({
            "path": dir,
            "config": {
                "architecture": cfg.architecture.name(),
                "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.hidden_size,
                "intermediate_size": cfg.intermediate_size,
                "num_hidden_layers": cfg.num_hidden_layers,
                "num_attention_heads": cfg.num_attention_heads,
                "num_key_value_heads": cfg.num_key_value_heads,
                "head_dim": cfg.head_dim,
                "rms_norm_eps": cfg.rms_norm_eps,
                "rope_theta": cfg.rope.theta,
                "rope_scaling": format!("{:?}", cfg.rope.scaling),
                "max_position_embeddings": cfg.max_position_embeddings,
                "tie_word_embeddings": cfg.tie_word_embeddings,
                "attention_bias": cfg.attention_bias,
            },
            "parameters": cfg.parameter_count(),
            "lm_head": v.lm_head,
            "valid": v.is_ok(),
            "problems": v.problems,
            "unused": v.unused,
            "tensors": v.tensors,
            "lora_targets": LORA_TARGETS,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return verdict(&dir, &v);
    }
    println!("model        {}", dir.display());
    println!(
        "architecture {}  layers {}  hidden {}  intermediate {}  vocab {}",
        cfg.architecture.name(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.vocab_size
    );
    println!(
        "attention    {} heads, {} kv heads, head_dim {}{}",
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        if cfg.qk_norm { ", q/k RMSNorm" } else { "" }
    );
    println!(
        "rope         theta {}  scaling {:?}  context {}",
        cfg.rope.theta, cfg.rope.scaling, cfg.max_position_embeddings
    );
    println!(
        "parameters   {} ({:.1}M)",
        cfg.parameter_count(),
        cfg.parameter_count() as f64 / 1e6
    );
    let head = match v.lm_head {
        Some(crate::model::weights::LmHead::Tied) => "tied to the embedding",
        Some(crate::model::weights::LmHead::TiedStoredCopy) => "tied, stored copy used",
        Some(crate::model::weights::LmHead::Untied) => "separate lm_head.weight",
        None => "MISSING",
    };
    println!("lm_head      {head}");
    println!(
        "lora targets {} (norms are never adapted)",
        LORA_TARGETS.join(", ")
    );
    println!("tensors      {}", v.tensors.len());
    for t in &v.tensors {
        println!("  {:<55} {:<5} {:?}  {}", t.name, t.dtype, t.shape, t.file);
    }
    for u in &v.unused {
        println!("unused       {u}");
    }
    if v.is_ok() {
        println!("verdict      OK");
    } else {
        for p in &v.problems {
            println!("problem      {p}");
        }
        println!("verdict      INVALID ({} problems)", v.problems.len());
    }
    verdict(&dir, &v)
}

/// An invalid checkpoint makes the command fail (after the report).
fn verdict(dir: &std::path::Path, v: &crate::model::weights::Validation) -> Result<()> {
    match v.problems.first() {
        None => Ok(()),
        Some(p) => anyhow::bail!(
            "{}: checkpoint does not match config.json: {p}",
            dir.display()
        ),
    }
}
