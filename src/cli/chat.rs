//! `expert chat`: a one-shot answer with `--prompt` / `--messages`, the
//! interactive REPL (`repl.rs`) without them.
//!
//! This file also holds what both share: the sampling flags, prompt
//! building (chat template, injection-safe encoding, plain-text fallback,
//! `--raw`), the display of thinking text, Ctrl-C handling and statistics.

use super::ModelArgs;
use crate::generate::{GenerateOptions, Generation, Stats};
use crate::model::ModelConfig;
use crate::sampling::{Sampler, SamplingParams};
use crate::template::{self, ChatTemplate, Message, RenderOptions};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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
    pub(crate) fn precheck(&self) -> Result<()> {
        let mut p = SamplingParams::greedy();
        self.apply(&mut p);
        p.validate()?;
        self.check_top_k(p.temperature)
    }

    /// The model's defaults (generation_config.json next to the weights,
    /// else Qwen3's advice) with the flags on top, validated.
    pub(crate) fn resolve(&self, model_path: &Path) -> Result<SamplingParams> {
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
    pub(crate) fn check(&self) -> Result<()> {
        self.sampling.precheck()?;
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

    pub(crate) fn enable_thinking(&self) -> Option<bool> {
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
    pub(crate) fn local_model(&self, path: &Path) -> ModelArgs {
        ModelArgs {
            model: path.to_string_lossy().into_owned(),
            ..self.model.clone()
        }
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    args.check()?;
    if args.prompt.is_none() && args.messages.is_none() {
        return super::repl::run(args);
    }
    one_shot(args)
}

fn one_shot(args: ChatArgs) -> Result<()> {
    let messages = if args.raw {
        Vec::new()
    } else {
        one_shot_messages(&args)?
    };
    let path = args.model.resolve()?;
    let params = args.sampling.resolve(&path)?;
    let add_generation_prompt =
        !args.no_generation_prompt && messages.last().is_none_or(|m| m.role != "assistant");
    if !add_generation_prompt && !args.dry_run {
        bail!(
            "{}: the conversation ends with an assistant message; add a user message (e.g. with --prompt) to get an answer",
            args.messages.as_deref().unwrap_or(Path::new("--messages")).display()
        );
    }
    let opts = PromptOptions {
        add_generation_prompt,
        enable_thinking: args.enable_thinking(),
    };

    // A dry run of a model directory needs only its tokenizer and template.
    if args.dry_run && path.is_dir() {
        let tok = Tokenizer::from_dir(&path)?;
        let prompter = Prompter::load(&path, None, &tok)?;
        let (text, ids) = build_prompt(&args, &prompter, &tok, &messages, &opts)?;
        return print_dry_run(&text, &ids, args.json);
    }

    let loaded = args.local_model(&path).load()?;
    let mut engine = crate::generate::Engine::new(loaded.model.clone());
    let prompter = Prompter::load(&path, loaded.chat_template.as_deref(), &loaded.tokenizer)?;
    let (text, ids) = build_prompt(&args, &prompter, &loaded.tokenizer, &messages, &opts)?;
    if args.dry_run {
        return print_dry_run(&text, &ids, args.json);
    }

    let context = context_window(args.context, &loaded.model.config)?;
    if ids.len() >= context {
        bail!(
            "the prompt has {} tokens and the context window holds {context}; shorten it{}",
            ids.len(),
            if args.context.is_some() {
                " or raise --context"
            } else {
                ""
            }
        );
    }
    let gen_opts = GenerateOptions {
        max_tokens: args
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(context - ids.len()),
        eos_ids: loaded.eos_ids.clone(),
        stop_strings: args.stop.clone(),
    };
    let mut sampler = Sampler::new(params)?;
    install_interrupt_handler();
    let json = args.json;
    let opens = prompt_opens_thinking(&text);
    let (gen, tail) = stream_answer(
        &loaded,
        &mut engine,
        &ids,
        opens,
        &mut sampler,
        &gen_opts,
        args.hide_thinking,
        json,
    )?;
    let mut stdout = std::io::stdout();
    let interrupted = gen.stats.stop_reason == crate::generate::StopReason::Interrupted;
    if json {
        let text = if args.hide_thinking {
            hide_thinking(&gen.text, opens)
        } else {
            gen.text.clone()
        };
        println!("{}", generation_json(&gen, &text));
    } else {
        stdout.write_all(tail.as_bytes())?;
        if interrupted {
            stdout.write_all(b" [interrupted]")?;
        }
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    if args.stats {
        eprint!("{}", stats_report(&gen.stats));
    }
    if interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// --messages, then --system (replacing a leading system message), then --prompt.
fn one_shot_messages(args: &ChatArgs) -> Result<Vec<Message>> {
    let mut messages = match &args.messages {
        Some(file) => read_messages(file)?,
        None => Vec::new(),
    };
    if let Some(system) = &args.system {
        set_system(&mut messages, system);
    }
    if let Some(prompt) = &args.prompt {
        messages.push(Message::new("user", prompt.as_str()));
    }
    if messages.is_empty() {
        bail!(
            "{}: no messages to answer",
            args.messages.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    Ok(messages)
}

/// Roles a chat template knows.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// An OpenAI-style message file, with its roles checked.
pub(crate) fn read_messages(file: &Path) -> Result<Vec<Message>> {
    let messages = template::load_messages(file)?;
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            bail!(
                "{}: [{i}].role: expected system, user, assistant or tool, got {:?}",
                file.display(),
                m.role
            );
        }
    }
    Ok(messages)
}

/// Replaces the leading system message, or inserts one.
pub(crate) fn set_system(messages: &mut Vec<Message>, system: &str) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => m.content = system.to_string(),
        _ => messages.insert(0, Message::new("system", system)),
    }
}

fn print_dry_run(text: &str, ids: &[u32], json: bool) -> Result<()> {
    let mut out = std::io::stdout();
    if json {
        let v = serde_json::json!({"prompt": text, "prompt_ids": ids});
        writeln!(out, "{v}")?;
    } else {
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The one-shot `--json` object (also one line per answer in the REPL).
pub(crate) fn generation_json(gen: &Generation, text: &str) -> serde_json::Value {
    serde_json::json!({
        "text": text,
        "token_ids": gen.token_ids,
        "prompt_tokens": gen.stats.prompt_tokens,
        "stop_reason": gen.stats.stop_reason,
        "stats": gen.stats,
    })
}

/// The context window: `--context` when given (at most the model's), else
/// the model's own (max_position_embeddings for dynamic NTK scaling, which
/// sets no bound of its own).
pub(crate) fn context_window(flag: Option<usize>, config: &ModelConfig) -> Result<usize> {
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

// ---------------------------------------------------------------------------
// Prompts

#[derive(Clone, Copy, Debug)]
pub(crate) struct PromptOptions {
    pub add_generation_prompt: bool,
    pub enable_thinking: Option<bool>,
}

/// Turns a conversation into prompt ids with the model's chat template, or
/// as plain text when the model has none.
pub(crate) struct Prompter {
    template: Option<ChatTemplate>,
    /// Where the template was looked for, for the fallback warning.
    origin: PathBuf,
}

impl Prompter {
    /// The template embedded in the model file (GGUF), else the model
    /// directory's (chat_template.jinja, tokenizer_config.json, chat_template.json).
    pub(crate) fn load(path: &Path, embedded: Option<&str>, tok: &Tokenizer) -> Result<Self> {
        let template = match embedded {
            Some(src) => Some(
                ChatTemplate::from_source(
                    src,
                    tok.bos_token().map(str::to_string),
                    tok.eos_token().map(str::to_string),
                )
                .map_err(|e| anyhow!("{}: tokenizer.chat_template: {e}", path.display()))?,
            ),
            None if path.is_dir() => ChatTemplate::from_dir(path)?,
            None => None,
        };
        Ok(Self {
            template,
            origin: path.to_path_buf(),
        })
    }

    pub(crate) fn has_template(&self) -> bool {
        self.template.is_some()
    }

    pub(crate) fn warning(&self) -> String {
        format!(
            "warning: {} has no chat template; falling back to plain text (messages joined by blank lines, no chat markup)",
            self.origin.display()
        )
    }

    /// Rendered prompt and its ids. With a template only the template's own
    /// markup can become control tokens ([`template::encode_prompt`]).
    pub(crate) fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        opts: &PromptOptions,
    ) -> Result<(String, Vec<u32>)> {
        match &self.template {
            Some(t) => template::encode_prompt(
                tok,
                t,
                messages,
                &RenderOptions {
                    add_generation_prompt: opts.add_generation_prompt,
                    enable_thinking: opts.enable_thinking,
                },
            ),
            None => {
                let text = messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n");
                let ids = plain_ids(tok, &text)?;
                Ok((text, ids))
            }
        }
    }
}

/// Text as the model's input with no template: BOS when the tokenizer wants
/// one, then the text with special-token strings kept as plain characters.
fn plain_ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    if tok.add_bos() {
        if let Some(bos) = tok.bos_token().and_then(|b| tok.token_id(b)) {
            ids.push(bos);
        }
    }
    ids.extend(tok.encode(text)?);
    Ok(ids)
}

fn build_prompt(
    args: &ChatArgs,
    prompter: &Prompter,
    tok: &Tokenizer,
    messages: &[Message],
    opts: &PromptOptions,
) -> Result<(String, Vec<u32>)> {
    if args.raw {
        let text = args.prompt.clone().unwrap_or_default();
        let ids = plain_ids(tok, &text)?;
        return Ok((text, ids));
    }
    if !prompter.has_template() {
        eprintln!("{}", prompter.warning());
    }
    prompter.encode(tok, messages, opts)
}

// ---------------------------------------------------------------------------
// Thinking text

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// How `<think>…</think>` text is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThinkingDisplay {
    /// As generated (stdout is not a terminal).
    Plain,
    /// Dimmed with ANSI escapes (a terminal).
    Dim,
    /// Not at all (`--hide-thinking`); the blank lines after it are dropped too.
    Hide,
}

impl ThinkingDisplay {
    pub(crate) fn for_stdout(hide: bool) -> Self {
        if hide {
            Self::Hide
        } else if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Self::Dim
        } else {
            Self::Plain
        }
    }
}

/// Generates an answer for `ids`, streaming it to stdout (thinking dimmed or
/// hidden) unless `json`; Ctrl-C stops it. Returns the generation and the
/// text the thinking filter still held back (empty with `json`).
pub(crate) fn stream_answer(
    loaded: &super::Loaded,
    engine: &mut crate::generate::Engine,
    ids: &[u32],
    opens_thinking: bool,
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    hide_thinking: bool,
    json: bool,
) -> Result<(Generation, String)> {
    let mut filter = ThinkFilter::new(ThinkingDisplay::for_stdout(hide_thinking), opens_thinking);
    let mut stdout = std::io::stdout();
    let _guard = Generating::start();
    let gen = engine.generate(
        ids,
        &loaded.tokenizer,
        sampler,
        opts,
        Some(interrupt_flag()),
        &mut |piece| {
            if !json {
                stdout.write_all(filter.push(piece).as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        },
    )?;
    let tail = if json { String::new() } else { filter.finish() };
    Ok((gen, tail))
}

/// Does the generation prompt leave a `<think>` block open (templates that
/// start the reasoning themselves)? Then the answer begins inside it.
pub(crate) fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(THINK_OPEN)
}

/// The answer without its thinking, as `--hide-thinking` shows it.
pub(crate) fn hide_thinking(text: &str, starts_inside: bool) -> String {
    let mut f = ThinkFilter::new(ThinkingDisplay::Hide, starts_inside);
    let mut out = f.push(text);
    out += &f.finish();
    out
}

/// Streams text while styling or hiding thinking blocks. Tags split across
/// pieces are held back until they can be recognised.
pub(crate) struct ThinkFilter {
    display: ThinkingDisplay,
    inside: bool,
    pending: String,
    /// The dim escape is active.
    styled: bool,
    /// Hide mode: drop the newlines that follow `</think>`.
    skip_newlines: bool,
}

impl ThinkFilter {
    pub(crate) fn new(display: ThinkingDisplay, starts_inside: bool) -> Self {
        Self {
            display,
            inside: starts_inside,
            pending: String::new(),
            styled: false,
            skip_newlines: false,
        }
    }

    pub(crate) fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut out = String::new();
        loop {
            let tag = if self.inside { THINK_CLOSE } else { THINK_OPEN };
            if let Some(at) = self.pending.find(tag) {
                let before: String = self.pending.drain(..at).collect();
                self.emit(&mut out, &before);
                self.pending.drain(..tag.len());
                self.tag(&mut out);
                continue;
            }
            let keep = (1..tag.len())
                .rev()
                .find(|&n| self.pending.ends_with(&tag[..n]))
                .unwrap_or(0);
            let text: String = self.pending.drain(..self.pending.len() - keep).collect();
            self.emit(&mut out, &text);
            return out;
        }
    }

    pub(crate) fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        let mut out = String::new();
        self.emit(&mut out, &rest);
        if self.styled {
            out.push_str(RESET);
            self.styled = false;
        }
        out
    }

    fn tag(&mut self, out: &mut String) {
        let opening = !self.inside;
        self.inside = opening;
        match self.display {
            ThinkingDisplay::Plain => out.push_str(if opening { THINK_OPEN } else { THINK_CLOSE }),
            ThinkingDisplay::Hide => self.skip_newlines = !opening,
            ThinkingDisplay::Dim => {
                if !self.styled {
                    out.push_str(DIM);
                }
                if opening {
                    out.push_str(THINK_OPEN);
                    self.styled = true;
                } else {
                    out.push_str(THINK_CLOSE);
                    out.push_str(RESET);
                    self.styled = false;
                }
            }
        }
    }

    fn emit(&mut self, out: &mut String, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.inside {
            match self.display {
                ThinkingDisplay::Hide => {}
                ThinkingDisplay::Plain => out.push_str(text),
                ThinkingDisplay::Dim => {
                    if !self.styled {
                        out.push_str(DIM);
                        self.styled = true;
                    }
                    out.push_str(text);
                }
            }
            return;
        }
        let text = if self.skip_newlines {
            let t = text.trim_start_matches('\n');
            if !t.is_empty() {
                self.skip_newlines = false;
            }
            t
        } else {
            text
        };
        out.push_str(text);
    }
}

// ---------------------------------------------------------------------------
// Ctrl-C

static INTERRUPT: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);

/// Ctrl-C while generating stops the answer (a second one quits); at any
/// other time it quits with status 130, as without a handler. (While the
/// line editor reads, the terminal is in raw mode and Ctrl-C is a key.)
pub(crate) fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let r = ctrlc::set_handler(|| {
            if GENERATING.load(Ordering::SeqCst) && !INTERRUPT.swap(true, Ordering::SeqCst) {
                return;
            }
            let _ = std::io::stdout().flush();
            eprintln!();
            std::process::exit(130);
        });
        if let Err(e) = r {
            eprintln!("warning: cannot handle Ctrl-C: {e}");
        }
    });
}

pub(crate) fn interrupt_flag() -> &'static AtomicBool {
    &INTERRUPT
}

/// Marks a generation in progress (Ctrl-C then stops it instead of quitting).
pub(crate) struct Generating;

impl Generating {
    pub(crate) fn start() -> Self {
        INTERRUPT.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        Self
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        GENERATING.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Statistics

/// `--stats` / `/stats`: one statistic a line.
pub(crate) fn stats_report(s: &Stats) -> String {
    format!(
        "prompt tokens:       {} ({} prefilled, {} reused from the KV cache)\n\
         time to first token: {:.3} s\n\
         prefill speed:       {:.1} tok/s\n\
         decode speed:        {:.1} tok/s\n\
         generated tokens:    {}\n\
         stop reason:         {}\n",
        s.prompt_tokens,
        s.prefill_tokens,
        s.prompt_tokens - s.prefill_tokens,
        s.time_to_first_token_s,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.generated_tokens,
        stop_reason_name(s),
    )
}

pub(crate) fn stop_reason_name(s: &Stats) -> String {
    serde_json::to_value(s.stop_reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(display: ThinkingDisplay, inside: bool, pieces: &[&str]) -> String {
        let mut f = ThinkFilter::new(display, inside);
        let mut out: String = pieces.iter().map(|p| f.push(p)).collect();
        out += &f.finish();
        out
    }

    #[test]
    fn think_filter_plain_is_identity_for_any_split() {
        let text = "<think>\nplan a <b>\n</think>\n\nThe answer </thin";
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let out = run(ThinkingDisplay::Plain, false, &[&text[..cut], &text[cut..]]);
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn think_filter_hides_thinking_and_the_blank_lines_after_it() {
        let text = "<think>\nsecret\n</think>\n\nVisible\n\nanswer.";
        for cut in 0..=text.len() {
            let out = run(ThinkingDisplay::Hide, false, &[&text[..cut], &text[cut..]]);
            assert_eq!(out, "Visible\n\nanswer.", "cut at {cut}");
        }
        // The prompt opened the block: the output starts inside it.
        assert_eq!(
            run(ThinkingDisplay::Hide, true, &["a\n", "</think>\n\nb"]),
            "b"
        );
        // Interrupted while thinking: nothing shown.
        assert_eq!(
            run(ThinkingDisplay::Hide, false, &["<think>\nstill going"]),
            ""
        );
        assert_eq!(hide_thinking("no thinking here", false), "no thinking here");
    }

    #[test]
    fn think_filter_dims_thinking() {
        assert_eq!(
            run(
                ThinkingDisplay::Dim,
                false,
                &["<think>", "\nx\n", "</think>", "\n\nok"]
            ),
            format!("{DIM}<think>\nx\n</think>{RESET}\n\nok")
        );
        assert_eq!(
            run(ThinkingDisplay::Dim, true, &["x", "</think>", "ok"]),
            format!("{DIM}x</think>{RESET}ok")
        );
        assert_eq!(
            run(ThinkingDisplay::Dim, false, &["<think>", "cut"]),
            format!("{DIM}<think>cut{RESET}")
        );
    }

    #[test]
    fn prompt_opening_thinking_is_detected() {
        assert!(prompt_opens_thinking("<|im_start|>assistant\n<think>\n"));
        assert!(!prompt_opens_thinking(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n"));
    }
}
