//! `expert chat`: a one-shot answer with `--prompt` / `--messages`
//! (`oneshot.rs`), the interactive REPL (`repl.rs`) without them.
//!
//! Both print their answers through `answer.rs`; the chat logic itself
//! (templates, prompts, conversations, thinking) is in [`crate::chat`].
//! This file holds the flags and what they resolve to.

mod answer;
mod input;
mod interrupt;
mod oneshot;
mod repl;
#[cfg(unix)]
mod terminal;
#[cfg(not(unix))]
#[path = "terminal_stub.rs"]
mod terminal;

use super::adapters::AdapterArgs;
use super::ModelArgs;
use crate::model::ModelConfig;
use crate::sampling::SamplingParams;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// The user's message (one-shot). Without --prompt and --messages, an
    /// interactive chat starts.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// System prompt (replaces a system message at the start of --messages / --session).
    #[arg(long, short = 's', value_name = "TEXT")]
    pub system: Option<String>,
    /// Continue a conversation in one shot: a JSON list of {"role", "content"}
    /// messages (OpenAI style); --prompt, when given, is appended as a user message.
    #[arg(long, value_name = "FILE")]
    pub messages: Option<PathBuf>,
    /// Feed --prompt as-is, with no chat template (plain completion for base models).
    #[arg(long)]
    pub raw: bool,
    /// Print the exact prompt the model would see and exit (with --json:
    /// {"prompt", "prompt_ids"}).
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: render without the assistant header that asks for an
    /// answer (add_generation_prompt = false). A conversation that ends with
    /// an assistant message is always rendered that way.
    #[arg(long, requires = "dry_run")]
    pub no_generation_prompt: bool,
    /// Ask for thinking (enable_thinking = true in the chat template).
    #[arg(long, conflicts_with = "no_think")]
    pub think: bool,
    /// Ask for no thinking (enable_thinking = false in the chat template).
    #[arg(long)]
    pub no_think: bool,
    /// Do not show the thinking text (<think>…</think>); only the answer.
    #[arg(long)]
    pub hide_thinking: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Maximum number of tokens to generate (default: until an end-of-sequence
    /// token or the end of the context window).
    #[arg(long, short = 'n', value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Stop when the text contains this string (not printed). Repeatable.
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,
    /// Context window in tokens (default: the model's). The interactive chat
    /// drops its oldest exchanges to stay within it.
    #[arg(long, value_name = "TOKENS")]
    pub context: Option<usize>,
    /// Print prompt tokens, time to first token, prefill and decode speed,
    /// tokens generated and the stop reason on stderr.
    #[arg(long)]
    pub stats: bool,
    /// One-shot: print text, token ids and stats as one JSON object.
    /// Interactive: one such object per answer (a line each).
    #[arg(long)]
    pub json: bool,
    /// Interactive: keep the conversation in this JSON file, saved after
    /// every turn and resumed on start.
    #[arg(long, value_name = "FILE")]
    pub session: Option<PathBuf>,
}

/// The sampling flags, shared by one-shot and interactive chat. Unset flags
/// take the model's generation_config.json value, else Qwen3's advice.
#[derive(Args, Debug, Clone, Default)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (argmax).
    #[arg(long, short = 't', value_name = "T", allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P, in (0, 1].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Keep the K most likely tokens (K >= 1 when sampling).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Drop tokens less likely than P × the most likely one, in [0, 1).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub min_p: Option<f64>,
    /// Repetition penalty on tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens (prompt included) the penalties look at (0 = off).
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<usize>,
    /// Flat amount subtracted from the logit of every recently seen token (0 = off).
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub presence_penalty: Option<f32>,
    /// Random seed: the same seed and settings give the same text.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    fn apply(&self, p: &mut SamplingParams) {
        if let Some(v) = self.temperature {
            p.temperature = v;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.top_k {
            p.top_k = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            p.repeat_penalty = v;
        }
        if let Some(v) = self.repeat_last_n {
            p.repeat_last_n = v;
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = self.seed {
            p.seed = v;
        }
    }

    /// `--top-k 0` means "no top-k" to llama.cpp and "greedy" to nobody:
    /// while sampling it is rejected rather than guessed at.
    fn check_top_k(&self, temperature: f64) -> Result<()> {
        if self.top_k == Some(0) && temperature > 0.0 {
            bail!("--top-k must be >= 1 when sampling (temperature {temperature} > 0), got 0");
        }
        Ok(())
    }

    /// Checks the flags on their own, before anything is read from disk.
    pub(super) fn precheck(&self) -> Result<()> {
        let mut p = SamplingParams::greedy();
        self.apply(&mut p);
        p.validate()?;
        self.check_top_k(p.temperature)
    }

    /// The model's defaults (generation_config.json next to the weights,
    /// else Qwen3's advice) with the flags on top, validated.
    pub(super) fn resolve(&self, model_path: &Path) -> Result<SamplingParams> {
        let mut p = if model_path.is_dir() {
            SamplingParams::from_generation_config(&model_path.join("generation_config.json"))?
        } else {
            SamplingParams::default()
        };
        self.apply(&mut p);
        p.validate()?;
        self.check_top_k(p.temperature)?;
        Ok(p)
    }
}

impl ChatArgs {
    /// Flag combinations that cannot work, rejected before any loading.
    pub(super) fn check(&self) -> Result<()> {
        self.sampling.precheck()?;
        self.adapters.precheck()?;
        if self.max_tokens == Some(0) {
            bail!("--max-tokens must be >= 1, got 0");
        }
        if let Some(c) = self.context {
            if c < 2 {
                bail!("--context must be >= 2 tokens, got {c}");
            }
        }
        let one_shot = self.prompt.is_some() || self.messages.is_some();
        if self.raw {
            if self.prompt.is_none() {
                bail!("--raw needs --prompt (the text to continue)");
            }
            for (set, flag) in [
                (self.messages.is_some(), "--messages"),
                (self.system.is_some(), "--system"),
                (self.think, "--think"),
                (self.no_think, "--no-think"),
            ] {
                if set {
                    bail!("--raw uses no chat template, so {flag} cannot apply");
                }
            }
        }
        if self.dry_run && !one_shot {
            bail!("--dry-run needs --prompt or --messages (the conversation to render)");
        }
        if self.session.is_some() && one_shot {
            bail!("--session is for the interactive chat; leave out --prompt and --messages");
        }
        Ok(())
    }

    pub(super) fn enable_thinking(&self) -> Option<bool> {
        if self.think {
            Some(true)
        } else if self.no_think {
            Some(false)
        } else {
            None
        }
    }

    /// The same model flags with `--model` replaced by an already resolved
    /// local path, so loading does not consult the Hub a second time.
    pub(super) fn local_model(&self, path: &Path) -> ModelArgs {
        ModelArgs {
            model: path.to_string_lossy().into_owned(),
            ..self.model.clone()
        }
    }
}

/// The REPL's input handling as plain functions, for `tests/fuzz`: bytes as
/// stdin → the entries read (`Ok` text or `Err` why skipped), each command
/// line parsed; keys typed during an answer → lines.
#[doc(hidden)]
pub mod fuzzing {
    use super::input::{typed_lines, Entry, Input};

    /// Reads `bytes` as piped stdin; returns each entry and, for a command,
    /// its parse (`/…` lines), as the REPL would see them.
    pub fn repl_input(bytes: &[u8]) -> Vec<Result<String, String>> {
        let mut input = Input::lines(Box::new(std::io::Cursor::new(bytes.to_vec())));
        let mut out = Vec::new();
        loop {
            match input.read() {
                Ok(Entry::Eof) => return out,
                Ok(Entry::Interrupted) => out.push(Err("interrupted".into())),
                Ok(Entry::Invalid(why)) => out.push(Err(why)),
                Ok(Entry::Text(t)) => {
                    if t.starts_with('/') && !t.contains('\n') {
                        let parsed = super::repl::commands::describe(t.trim());
                        out.push(parsed.map_err(|e| e.to_string()));
                    }
                    out.push(Ok(t));
                }
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    /// Keys typed while an answer streams → complete lines and the rest.
    pub fn type_ahead(bytes: &[u8]) -> (Vec<Result<String, String>>, String) {
        typed_lines(bytes)
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    args.check()?;
    if args.prompt.is_none() && args.messages.is_none() {
        return repl::run(args);
    }
    oneshot::run(args)
}

/// The context window: `--context` when given (at most the model's), else
/// the model's own (max_position_embeddings for dynamic NTK scaling, which
/// sets no bound of its own).
pub(super) fn context_window(flag: Option<usize>, config: &ModelConfig) -> Result<usize> {
    let model = match config.context_length() {
        usize::MAX => config.max_position_embeddings,
        n => n,
    };
    match flag {
        Some(n) if n > model && config.context_length() != usize::MAX => {
            bail!("--context {n} is larger than the model's context length ({model} tokens)")
        }
        Some(n) => Ok(n),
        None => Ok(model),
    }
}
