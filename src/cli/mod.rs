//! Command-line interface: one file per subcommand.

pub mod bench;
pub mod chat;
pub mod inspect;
pub mod perplexity;
pub mod quantize;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "expert",
    version,
    about = "Run Qwen3 language models locally and chat with them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Chat with a model: one-shot with --prompt, interactive without.
    Chat(chat::ChatArgs),
    /// Score a text file: mean negative log-likelihood and perplexity.
    Perplexity(perplexity::PerplexityArgs),
    /// Show a model's config, tensors and validation verdict.
    Inspect(inspect::InspectArgs),
    /// Measure prefill and decode throughput.
    Bench(bench::BenchArgs),
    /// Quantize a safetensors model into a GGUF file (llama.cpp layout).
    Quantize(quantize::QuantizeArgs),
}

/// Where the model comes from and how it is computed.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A local Hugging Face directory, a .gguf file, or a Hub repo id (e.g. Qwen/Qwen3-0.6B).
    #[arg(long, short = 'm')]
    pub model: String,
    /// Compute dtype: auto (f32 on CPU, bf16 on CUDA), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// cpu, cuda or auto (the first CUDA GPU when built with --features cuda, else CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Quantize a safetensors model's projections at load time: q8_0, q4_0,
    /// q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k or q6_k (embedding and norms stay float).
    #[arg(long, value_name = "TYPE")]
    pub quantize: Option<String>,
}

/// A model ready to generate: weights, tokenizer and the model's own
/// generation settings.
pub struct Loaded {
    pub engine: crate::generate::Engine,
    pub tokenizer: crate::tokenizer::Tokenizer,
    /// The model directory or file the weights came from.
    pub path: std::path::PathBuf,
    /// eos ids: generation_config.json's list, else config.json's.
    pub eos_ids: Vec<u32>,
    /// The chat template embedded in the model file (GGUF `tokenizer.chat_template`);
    /// None for directories, whose template is read from the directory.
    pub chat_template: Option<String>,
}

impl ModelArgs {
    /// The local directory or file `--model` names (fetched from the Hub if needed).
    pub fn resolve(&self) -> anyhow::Result<std::path::PathBuf> {
        let opts = crate::hub::HubOptions {
            revision: self.revision.clone(),
            offline: self.offline,
        };
        crate::hub::resolve(&self.model, &opts)
    }

    pub fn load(&self) -> anyhow::Result<Loaded> {
        let path = self.resolve()?;
        let device = crate::model::select_device(&self.device)?;
        let dtype = crate::model::select_dtype(&self.dtype, &device)?;
        if crate::model::gguf::is_gguf(&path) {
            if self.quantize.is_some() {
                anyhow::bail!(
                    "--quantize applies to safetensors models; {} is a GGUF file, already quantized",
                    path.display()
                );
            }
            return quantize::load_gguf(&path, dtype, &device);
        }
        let model = match &self.quantize {
            Some(q) => quantize::load_dir_quantized(&path, q, dtype, &device)?,
            None => crate::model::load_dir(&path, dtype, &device)?,
        };
        let tokenizer = crate::tokenizer::Tokenizer::from_dir(&path)?;
        let gen_cfg = path.join("generation_config.json");
        let mut eos_ids = if gen_cfg.is_file() {
            crate::sampling::eos_ids_from_generation_config(&gen_cfg)?
        } else {
            vec![]
        };
        if eos_ids.is_empty() {
            eos_ids = model.config.eos_token_ids.clone();
        }
        Ok(Loaded {
            engine: crate::generate::Engine::new(model),
            tokenizer,
            path,
            eos_ids,
            chat_template: None,
        })
    }
}

/// Runs the CLI and returns the process exit code. Every error is printed as
/// a single `error:` line.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(a) => chat::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            1
        }
    }
}
