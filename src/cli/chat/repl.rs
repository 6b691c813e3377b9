//! The interactive chat (`expert chat --model M` without `--prompt`).
//!
//! Each turn re-renders the whole conversation with the chat template and
//! hands it to [`Engine::generate`](crate::generate::Engine::generate), which
//! keeps the longest common prefix of the KV cache: only new tokens are
//! prefilled, and where the template rewrites history (Qwen3 drops the
//! thinking of earlier answers) the cache is cut back to where the texts part.

pub(super) mod commands;
mod experts;

use super::answer::{self, answer_budget, stats_line, AnswerFormat};
use super::input::{Entry, Input};
use super::terminal::TypeAhead;
use super::{context_window, interrupt, ChatArgs};
use crate::chat::conversation::{Conversation, Fitted, Turn};
use crate::chat::prompt::Prompter;
use crate::chat::template::RenderOptions;
use crate::cli::adapters::Experts;
use crate::generate::{Engine, GenerateOptions, Stats, StopReason};
use crate::load::LoadedModel;
use crate::sampling::{Sampler, SamplingParams};
use anyhow::Result;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

struct Repl {
    loaded: LoadedModel,
    /// This conversation's generation state over `loaded.model`.
    engine: Engine,
    /// The resident experts (LoRA adapters) and which one answers.
    experts: Experts,
    prompter: Prompter,
    conversation: Conversation,
    params: SamplingParams,
    sampler: Sampler,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    think: Option<bool>,
    hide_thinking: bool,
    context: usize,
    last: Option<Stats>,
    session: Option<PathBuf>,
    json: bool,
    show_stats: bool,
    terminal: bool,
}

enum Flow {
    Continue,
    Exit,
}

pub(super) fn run(args: ChatArgs) -> Result<()> {
    let path = args.model.resolve()?;
    let params = args.sampling.resolve(&path)?;
    // A session that exists must be readable before anything else happens.
    let resumed = match &args.session {
        Some(file) if file.exists() => Some(Conversation::load(file)?),
        _ => None,
    };
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // The line editor, then the signal handler: on a terminal the editor
    // installs a SIGINT handler of its own when created, which ours must
    // replace. Both before loading, so a signal while loading exits cleanly.
    let mut input = Input::from_stdin(terminal)?;
    interrupt::install_handler();
    eprintln!("loading {} ...", path.display());
    let mut loaded = args.local_model(&path).load()?;
    let experts = args.adapters.load(&mut loaded)?;
    let prompter = Prompter::load(&path, loaded.chat_template.as_deref(), &loaded.tokenizer)?;
    if !prompter.has_template() {
        eprintln!("{}", prompter.warning());
    }
    let context = context_window(args.context, &loaded.model.config)?;
    let mut repl = Repl {
        sampler: Sampler::new(params.clone())?,
        params,
        engine: Engine::new(loaded.model.clone()),
        experts,
        loaded,
        prompter,
        conversation: Conversation::default(),
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        think: args.enable_thinking(),
        hide_thinking: args.hide_thinking,
        context,
        last: None,
        session: args.session.clone(),
        json: args.json,
        show_stats: args.stats,
        terminal,
    };
    if let Some(conversation) = resumed {
        repl.conversation = conversation;
        eprintln!(
            "resumed session {} ({} messages{})",
            args.session.as_deref().unwrap_or(Path::new("")).display(),
            repl.conversation.message_count(),
            match repl.conversation.turns.last() {
                Some(t) if t.role == "user" => "; the last message has no answer yet",
                _ => "",
            }
        );
    }
    if let Some(system) = &args.system {
        repl.conversation.system = Some(system.clone());
    }
    if input.is_terminal() {
        println!(
            "expert chat · {} · /help for commands, Ctrl-D or /exit to quit",
            path.display()
        );
    }
    let mut ctrl_c = false;
    loop {
        let entry = input.read()?;
        let text = match entry {
            Entry::Eof => break,
            Entry::Interrupted => {
                if ctrl_c {
                    break;
                }
                ctrl_c = true;
                eprintln!("(Ctrl-C again, Ctrl-D or /exit to quit)");
                continue;
            }
            Entry::Invalid(why) => {
                eprintln!("error: {why}");
                continue;
            }
            Entry::Text(t) => t,
        };
        ctrl_c = false;
        if text.trim().is_empty() {
            continue;
        }
        // From here until the answer is saved, a signal waits for the work
        // (see `interrupt`); keys typed meanwhile are kept for the next turn.
        let busy = interrupt::Busy::start();
        let typing = TypeAhead::start(input.is_terminal());
        let flow = if text.starts_with('/') && !text.contains('\n') {
            match repl.command(text.trim()) {
                Ok(flow) => flow,
                Err(e) => {
                    repl.error(&e);
                    Flow::Continue
                }
            }
        } else {
            if let Err(e) = repl.turn(&text) {
                repl.error(&e);
            }
            Flow::Continue
        };
        input.type_ahead(&typing.finish());
        busy.finish(|sig| repl.signal_exit(sig));
        if let Flow::Exit = flow {
            break;
        }
    }
    if input.is_terminal() {
        println!();
    }
    Ok(())
}

impl Repl {
    fn error(&self, e: &anyhow::Error) {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
    }

    /// Command output: stdout, unless stdout carries JSON lines.
    fn say(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    /// The last words when SIGTERM or SIGHUP ended a turn.
    fn signal_exit(&self, sig: i32) {
        let saved = match &self.session {
            Some(f) => format!("; the conversation is saved in {}", f.display()),
            None => String::new(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "({} received{saved}; exiting)",
            interrupt::signal_name(sig)
        );
    }

    fn autosave(&self) {
        if let Some(file) = &self.session {
            if let Err(e) = self.conversation.save(file) {
                eprintln!("warning: session not saved: {e:#}");
            }
        }
    }

    /// Sends a user message and streams the answer.
    fn turn(&mut self, text: &str) -> Result<()> {
        self.conversation.turns.push(Turn::new("user", text));
        self.autosave();
        let Fitted { prompt, ids, .. } = match self.fit_prompt() {
            Ok(p) => p,
            Err(e) => {
                self.conversation.turns.pop();
                self.autosave();
                return Err(e);
            }
        };
        let opts = GenerateOptions {
            max_tokens: answer_budget(self.max_tokens, self.context, ids.len()),
            eos_ids: self.loaded.eos_ids.clone(),
            stop_strings: self.stop.clone(),
        };
        let format = AnswerFormat {
            hide_thinking: self.hide_thinking,
            json: self.json,
        };
        let routing = match self.experts.select(&mut self.engine, &self.loaded, text) {
            Ok(r) => r,
            Err(e) => {
                self.conversation.turns.pop();
                self.autosave();
                return Err(e);
            }
        };
        let result = answer::stream(
            &mut self.engine,
            &self.loaded.tokenizer,
            &prompt,
            &ids,
            &mut self.sampler,
            &opts,
            format,
        );
        let mut answer = match result {
            Ok(a) => a,
            Err(e) => {
                if !self.json {
                    println!();
                }
                self.conversation.turns.pop();
                self.autosave();
                return Err(e);
            }
        };
        answer.routing = routing;
        let interrupted = answer.interrupted();
        let mut turn = Turn::new("assistant", &answer.gen.text);
        turn.interrupted = interrupted;
        self.conversation.turns.push(turn);
        // Saved before the end of the answer is printed: whoever sees the
        // answer end finds it in the session file.
        self.autosave();
        answer.print_end(self.terminal)?;
        let stats = answer.gen.stats;
        if interrupted {
            eprintln!("(answer interrupted; it stays in the conversation, marked as interrupted)");
        } else if stats.stop_reason == StopReason::Length
            && opts.max_tokens < self.max_tokens.unwrap_or(usize::MAX)
        {
            eprintln!("(the answer reached the end of the context window)");
        }
        if self.show_stats {
            eprintln!("{}", stats_line(&stats));
        }
        self.last = Some(stats);
        Ok(())
    }

    /// The conversation encoded for the next answer, the oldest exchanges
    /// dropped when it outgrows the context window.
    fn fit_prompt(&mut self) -> Result<Fitted> {
        let opts = RenderOptions {
            add_generation_prompt: true,
            enable_thinking: self.think,
        };
        let (prompter, tokenizer) = (&self.prompter, &self.loaded.tokenizer);
        let fitted = self
            .conversation
            .fit(self.context, self.max_tokens, |messages| {
                prompter.encode(tokenizer, messages, &opts)
            })?;
        if fitted.dropped > 0 {
            self.autosave();
            // Output kept as it was: the note for a prompt short of its
            // reserve has always used the plural.
            let plural = fitted.dropped != 1 || fitted.short_of_reserve;
            eprintln!(
                "note: the conversation outgrew the context window ({} tokens); dropped the oldest {} message{}",
                self.context,
                fitted.dropped,
                if plural { "s" } else { "" }
            );
        }
        Ok(fitted)
    }
}
