//! `expert quantize`: a safetensors model → a quantized GGUF file in
//! llama.cpp's layout. Also the loaders behind `--model FILE.gguf` and
//! `--quantize TYPE` for every subcommand.

use super::Loaded;
use crate::model::{gguf, quantize};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face directory (or Hub repo id) with safetensors weights.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Quantization type: q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k or q6_k.
    #[arg(long = "type", short = 't')]
    pub qtype: String,
    /// The GGUF file to write.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Use only the local Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let qtype = quantize::parse_type(&args.qtype).map_err(|e| anyhow::anyhow!("--type: {e}"))?;
    let opts = crate::hub::HubOptions {
        revision: args.revision.clone(),
        offline: args.offline,
    };
    let dir = crate::hub::resolve(&args.model, &opts)?;
    if gguf::is_gguf(&dir) {
        bail!(
            "{}: already a GGUF file; expert quantize reads safetensors directories",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("{}: not a model directory", dir.display());
    }
    let start = std::time::Instant::now();
    let report = quantize::write_gguf(&dir, qtype, &args.out)?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    println!(
        "wrote {} ({} tensors, {:.1} MB) in {:.1}s: {}",
        args.out.display(),
        report.tensors,
        report.bytes as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        report.quant.summary()
    );
    Ok(())
}

/// `--model FILE.gguf`: weights, embedded tokenizer and end-of-generation ids.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Loaded> {
    let (model, file) = gguf::load(path, dtype, device)?;
    let tokenizer = crate::tokenizer::gguf::load(&file)?;
    let mut eos_ids = crate::tokenizer::gguf::eog_ids(&file);
    if eos_ids.is_empty() {
        eos_ids = model.config.eos_token_ids.clone();
    }
    Ok(Loaded {
        engine: crate::generate::Engine::new(model),
        tokenizer,
        path: path.to_path_buf(),
        eos_ids,
        chat_template: crate::tokenizer::gguf::chat_template(&file),
    })
}

/// `--quantize TYPE` on a safetensors directory; prints what was quantized
/// (and every fallback) on stderr.
pub fn load_dir_quantized(
    dir: &Path,
    qtype: &str,
    dtype: DType,
    device: &Device,
) -> Result<crate::model::Model> {
    let t = quantize::parse_type(qtype).map_err(|e| anyhow::anyhow!("--quantize: {e}"))?;
    let (model, report) = quantize::load_dir_quantized(dir, t, dtype, device)?;
    eprintln!(
        "--quantize {}: {}",
        qtype.to_ascii_lowercase(),
        report.summary()
    );
    Ok(model)
}
