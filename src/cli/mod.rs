//! Command-line interface: one file per subcommand.

pub mod adapters;
pub mod bench;
pub mod chat;
pub mod inspect;
pub mod perplexity;
pub mod quantize;
pub mod route;
pub mod sysinfo;

use crate::load::{LoadedModel, ModelSpec};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Rank the experts of a manifest for a prompt (what --expert auto would pick), without generating.
    Route(route::RouteArgs),
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
    /// Threads for the per-token work (default: the number of physical
    /// cores). `expert bench` also takes a comma list (`-t 1,2`).
    #[arg(long, value_name = "N", value_delimiter = ',')]
    pub threads: Vec<usize>,
}

impl ModelArgs {
    /// The one `--threads` value of a command that is not `bench`.
    pub fn single_threads(&self) -> anyhow::Result<Option<usize>> {
        match self.threads.as_slice() {
            [] => Ok(None),
            [0, ..] => anyhow::bail!("--threads: expected a positive number of threads, got 0"),
            [n] => Ok(Some(*n)),
            _ => {
                anyhow::bail!("--threads: expected one number here (lists are for `expert bench`)")
            }
        }
    }

    /// What to load: the flags parsed and checked before any weight is read.
    pub fn spec(&self) -> anyhow::Result<ModelSpec> {
        let device = crate::load::select_device(&self.device)?;
        let dtype = crate::load::select_dtype(&self.dtype, &device)?;
        let quantize = match &self.quantize {
            Some(q) => Some(
                crate::formats::gguf::parse_quant_type(q)
                    .map_err(|e| anyhow::anyhow!("--quantize: {e}"))?,
            ),
            None => None,
        };
        Ok(ModelSpec {
            model: self.model.clone(),
            hub: crate::load::hub::HubOptions {
                revision: self.revision.clone(),
                offline: self.offline,
            },
            device,
            dtype,
            quantize,
        })
    }

    /// The local directory or file `--model` names (fetched from the Hub if needed).
    pub fn resolve(&self) -> anyhow::Result<std::path::PathBuf> {
        let opts = crate::load::hub::HubOptions {
            revision: self.revision.clone(),
            offline: self.offline,
        };
        crate::load::hub::resolve(&self.model, &opts)
    }

    /// Loads the model; says on stderr what `--quantize` did.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let loaded = crate::load::load(&self.spec()?)?;
        if let (Some(q), Some(report)) = (&self.quantize, &loaded.quant_report) {
            eprintln!(
                "--quantize {}: {}",
                q.to_ascii_lowercase(),
                report.summary()
            );
        }
        Ok(loaded)
    }
}

/// Runs the CLI and returns the process exit code. Every error is printed as
/// a single `error:` line.
pub fn main() -> i32 {
    // `bench` takes llama-bench's `-t` for its thread list; elsewhere `-t`
    // is --temperature (chat) or --type (quantize).
    let command =
        Cli::command().mut_subcommand("bench", |c| c.mut_arg("threads", |a| a.short('t')));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = crate::ops::check_simd_env()
        .map_err(anyhow::Error::msg)
        .and_then(|()| set_threads(&cli.command))
        .and_then(|()| run(cli.command));
    match result {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            1
        }
    }
}

/// Sizes the thread pools from `--threads` before any model work starts.
fn set_threads(command: &Command) -> anyhow::Result<()> {
    let threads = match command {
        Command::Chat(a) => a.model.single_threads()?,
        Command::Perplexity(a) => a.model.single_threads()?,
        Command::Inspect(a) => a.model.single_threads()?,
        Command::Bench(a) => bench::process_threads(a)?,
        Command::Quantize(a) => a.threads.filter(|&n| n > 0),
        Command::Route(a) => a.model.single_threads()?,
    };
    crate::ops::set_threads(threads);
    Ok(())
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Chat(a) => chat::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Route(a) => route::run(a),
    }
}
