//! `expert quantize`: a safetensors model → a quantized GGUF file in
//! llama.cpp's layout.

use crate::formats::gguf::{is_gguf, parse_quant_type};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

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
    /// Threads (default: the number of physical cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let qtype = parse_quant_type(&args.qtype).map_err(|e| anyhow::anyhow!("--type: {e}"))?;
    let opts = crate::load::hub::HubOptions {
        revision: args.revision.clone(),
        offline: args.offline,
    };
    let dir = crate::load::hub::resolve(&args.model, &opts)?;
    if is_gguf(&dir) {
        bail!(
            "{}: already a GGUF file; expert quantize reads safetensors directories",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("{}: not a model directory", dir.display());
    }
    let start = std::time::Instant::now();
    let report = crate::quantize::write_gguf(&dir, qtype, &args.out)?;
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
