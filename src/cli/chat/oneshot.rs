//! One-shot chat: `--prompt` and/or `--messages` answered once (or, with
//! `--dry-run`, the prompt printed instead).

use super::answer::{self, answer_budget, stats_report, AnswerFormat};
use super::{context_window, interrupt, ChatArgs};
use crate::chat::conversation::{load_checked_messages, set_system, Message};
use crate::chat::prompt::{plain_ids, Prompter};
use crate::chat::template::RenderOptions;
use crate::generate::{Engine, GenerateOptions};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::io::Write;
use std::path::Path;

pub(super) fn run(args: ChatArgs) -> Result<()> {
    // Before loading: a signal while the model loads exits cleanly too.
    interrupt::install_handler();
    let messages = if args.raw {
        Vec::new()
    } else {
        messages(&args)?
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
    let opts = RenderOptions {
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

    let mut loaded = args.local_model(&path).load()?;
    let mut experts = args.adapters.load(&mut loaded)?;
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
        max_tokens: answer_budget(args.max_tokens, context, ids.len()),
        eos_ids: loaded.eos_ids.clone(),
        stop_strings: args.stop.clone(),
    };
    let mut sampler = Sampler::new(params)?;
    let format = AnswerFormat {
        hide_thinking: args.hide_thinking,
        json: args.json,
    };
    let mut engine = Engine::new(loaded.model.clone());
    // The router reads the user's last message (or the raw prompt).
    let route_text = match messages.iter().rev().find(|m| m.role == "user") {
        Some(m) if !args.raw => m.content.clone(),
        _ => args.prompt.clone().unwrap_or_default(),
    };
    let routing = experts.select(&mut engine, &loaded, &route_text)?;
    let busy = interrupt::Busy::start();
    let mut answer = answer::stream(
        &mut engine,
        &loaded.tokenizer,
        &text,
        &ids,
        &mut sampler,
        &gen_opts,
        format,
    )?;
    answer.routing = routing;
    answer.print_end(false)?;
    if args.stats {
        eprint!("{}", stats_report(&answer.gen.stats));
    }
    busy.finish(|sig| {
        let _ = writeln!(
            std::io::stderr(),
            "({} received; exiting)",
            interrupt::signal_name(sig)
        );
    });
    if answer.interrupted() {
        std::process::exit(130);
    }
    Ok(())
}

/// --messages, then --system (replacing a leading system message), then --prompt.
fn messages(args: &ChatArgs) -> Result<Vec<Message>> {
    let mut messages = match &args.messages {
        Some(file) => load_checked_messages(file)?,
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

/// The prompt and its ids: `--raw` text as it is, else the conversation
/// rendered (plain text, with a warning, for a model without a template).
fn build_prompt(
    args: &ChatArgs,
    prompter: &Prompter,
    tok: &Tokenizer,
    messages: &[Message],
    opts: &RenderOptions,
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
