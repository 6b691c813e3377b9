//! `expert inspect`: config summary, parameter count, tie status, every
//! tensor, the validation verdict and the LoRA target modules.

use super::ModelArgs;
use crate::formats::gguf::{type_name, GgufFile, MetaValue};
use crate::load::safetensors::SafetensorsSource;
use crate::model::weights::PROJECTIONS;
use crate::model::ModelConfig;
use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print everything as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Show a PEFT LoRA adapter instead: modules, rank, alpha, scale,
    /// parameters, and whether it fits this base.
    #[arg(long, value_name = "PATH")]
    pub adapter: Option<std::path::PathBuf>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let dir = args.model.resolve()?;
    if let Some(adapter) = &args.adapter {
        return inspect_adapter(&dir, adapter, args.json);
    }
    if crate::formats::gguf::is_gguf(&dir) {
        return inspect_gguf(&dir, args.json);
    }
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
            "lora_targets": PROJECTIONS,
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
        PROJECTIONS.join(", ")
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
fn verdict(dir: &Path, v: &crate::model::weights::Validation) -> Result<()> {
    match v.problems.first() {
        None => Ok(()),
        Some(p) => anyhow::bail!(
            "{}: checkpoint does not match config.json: {p}",
            dir.display()
        ),
    }
}

/// `expert inspect --model FILE.gguf`: metadata (long arrays shown by their
/// length), every tensor with its GGML type and shape (outermost first, as
/// for safetensors), the config it implies and the verdict.
fn inspect_gguf(path: &Path, json: bool) -> Result<()> {
    let report = GgufReport::gather(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(path))?);
    } else {
        report.print(path);
    }
    let GgufReport { cfg, problems, .. } = report;
    cfg?;
    match problems.first() {
        None => Ok(()),
        Some(p) => anyhow::bail!("{}: {p}", path.display()),
    }
}

/// What `inspect` reports on a GGUF file; a config error is reported as a
/// problem (and fails the command after the report).
struct GgufReport {
    file: GgufFile,
    cfg: Result<ModelConfig>,
    problems: Vec<String>,
    /// Tensor count by GGML type name.
    types: BTreeMap<&'static str, usize>,
}

impl GgufReport {
    fn gather(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let cfg = crate::load::gguf::config(&file);
        let problems = match &cfg {
            Ok(c) => crate::load::gguf::problems(&file, c),
            Err(e) => vec![format!("{e:#}")],
        };
        let mut types = BTreeMap::<&str, usize>::new();
        for t in &file.tensors {
            *types.entry(type_name(t.dtype)).or_default() += 1;
        }
        Ok(Self {
            file,
            cfg,
            problems,
            types,
        })
    }

    /// The `--json` object.
    fn to_json(&self, path: &Path) -> serde_json::Value {
        let file = &self.file;
        let config = self.cfg.as_ref().ok().map(|c| {
            serde_json::json!({
                "architecture": c.architecture.name(),
                "vocab_size": c.vocab_size,
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_key_value_heads,
                "head_dim": c.head_dim,
                "rms_norm_eps": c.rms_norm_eps,
                "rope_theta": c.rope.theta,
                "rope_scaling": format!("{:?}", c.rope.scaling),
                "rope_interleaved": c.rope.interleaved,
                "max_position_embeddings": c.max_position_embeddings,
                "tie_word_embeddings": c.tie_word_embeddings,
                "attention_bias": c.attention_bias,
                "qk_norm": c.qk_norm,
            })
        });
        let tensors: Vec<_> = file
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": type_name(t.dtype), "shape": t.shape, "bytes": t.size}))
            .collect();
        serde_json::json!({
            "path": path,
            "format": "gguf",
            "version": file.version,
            "file_size": file.file_size,
            "config": config,
            "parameters": self.cfg.as_ref().ok().map(|c| c.parameter_count()),
            "tensor_types": self.types,
            "valid": self.problems.is_empty(),
            "problems": self.problems,
            "metadata": file.metadata_json(16),
            "tensors": tensors,
        })
    }

    /// The text report.
    fn print(&self, path: &Path) {
        let file = &self.file;
        println!(
            "model        {} (GGUF v{}, {:.1} MB)",
            path.display(),
            file.version,
            file.file_size as f64 / 1e6
        );
        if let Ok(c) = &self.cfg {
            print_gguf_config(c);
        }
        let summary: Vec<String> = self.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        println!("metadata     {} entries", file.metadata.len());
        for (k, v) in &file.metadata {
            println!("  {k:<45} {:<22} {}", v.type_name(), shown(v));
        }
        println!(
            "tensors      {} ({})",
            file.tensors.len(),
            summary.join(", ")
        );
        for t in &file.tensors {
            println!("  {:<40} {:<5} {:?}", t.name, type_name(t.dtype), t.shape);
        }
        if self.problems.is_empty() {
            println!("verdict      OK");
        } else {
            for p in &self.problems {
                println!("problem      {p}");
            }
            println!("verdict      INVALID ({} problems)", self.problems.len());
        }
    }
}

/// The config lines of the GGUF text report.
fn print_gguf_config(c: &ModelConfig) {
    println!(
        "architecture {}  layers {}  hidden {}  intermediate {}  vocab {}",
        c.architecture.name(),
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size
    );
    println!(
        "attention    {} heads, {} kv heads, head_dim {}{}{}",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        if c.qk_norm { ", q/k RMSNorm" } else { "" },
        if c.attention_bias { ", q/k/v bias" } else { "" }
    );
    println!(
        "rope         theta {}  scaling {:?}  {}  context {}",
        c.rope.theta,
        c.rope.scaling,
        if c.rope.interleaved {
            "interleaved pairs"
        } else {
            "half split"
        },
        c.max_position_embeddings
    );
    println!(
        "parameters   {} ({:.1}M)",
        c.parameter_count(),
        c.parameter_count() as f64 / 1e6
    );
    println!(
        "lm_head      {}",
        if c.tie_word_embeddings {
            "tied to the embedding"
        } else {
            "separate output.weight"
        }
    );
}

/// A metadata value as the text report shows it: long arrays by their
/// length, long or multi-line strings by their start and size.
fn shown(v: &MetaValue) -> String {
    match v {
        MetaValue::Array(a) if a.len() > 16 => format!("({} entries)", a.len()),
        MetaValue::String(s) if s.len() > 80 || s.contains('\n') => {
            let first: String = s.chars().take(60).collect();
            format!("{first:?}… ({} bytes)", s.len())
        }
        v => v.to_json(16).to_string(),
    }
}

/// `inspect --adapter`: the adapter checked against the base's config (no
/// base weights are read). A mismatch is the error.
fn inspect_adapter(base: &Path, adapter: &Path, json: bool) -> Result<()> {
    let cfg = if crate::formats::gguf::is_gguf(base) {
        crate::load::gguf::config(&GgufFile::open(base)?)?
    } else {
        ModelConfig::from_file(&base.join("config.json"))?
    };
    let name = adapter
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let a = crate::adapters::peft::load(&name, adapter, &cfg, DType::F32, &Device::Cpu, 1.0)?;
    let i = &a.info;
    if json {
        let mut v = serde_json::json!(i);
        v["fits"] = serde_json::json!(true);
        v["base"] = serde_json::json!(base);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let modules: Vec<String> = i.modules.iter().map(|(m, n)| format!("{m} ×{n}")).collect();
    println!("adapter      {}", i.path.display());
    println!("modules      {}", modules.join(", "));
    println!("targets      {}", i.target_modules);
    println!(
        "rank         {}  alpha {}  scale {}{}",
        i.r,
        i.alpha,
        i.scale,
        if i.use_rslora {
            " (rsLoRA: alpha/sqrt(r))"
        } else {
            " (alpha/r)"
        }
    );
    println!(
        "parameters   {} in {} layers ({}, {} bytes on disk)",
        i.parameters, i.layers, i.dtype, i.bytes
    );
    println!(
        "fits         yes: every A/B pair matches {} ({} layers, hidden {})",
        base.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size
    );
    Ok(())
}
