//! The interactive chat (`expert chat --model M` without `--prompt`).
//!
//! Each turn re-renders the whole conversation with the chat template and
//! hands it to [`Engine::generate`](crate::generate::Engine::generate), which
//! keeps the longest common prefix of the KV cache: only new tokens are
//! prefilled, and where the template rewrites history (Qwen3 drops the
//! thinking of earlier answers) the cache is cut back to where the texts part.

mod input;

use super::chat::{
    context_window, generation_json, install_interrupt_handler, stats_report, stop_reason_name,
    ChatArgs, PromptOptions, Prompter,
};
use super::Loaded;
use crate::generate::{GenerateOptions, Stats, StopReason};
use crate::sampling::{Sampler, SamplingParams};
use crate::template::Message;
use anyhow::{bail, Result};
use input::{Entry, Input};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

const HELP: &str = "\
Type a message and press Enter. A line ending in \\ continues on the next;
\"\"\" starts and ends a multi-line block.

  /help              this list
  /system [TEXT]     show or set the system prompt (/system - removes it)
  /think, /no_think  turn thinking on or off for the next answers
                     (followed by text, they are sent as a message: Qwen3's soft switches)
  /set KEY VALUE     temperature, top_p, top_k, min_p, repeat_penalty, repeat_last_n,
                     presence_penalty, seed, max_tokens, hide_thinking
  /params            show the generation settings
  /stats             statistics of the last answer
  /reset             forget the conversation (the system prompt stays)
  /undo              drop the last exchange
  /save FILE         save the conversation as JSON messages
  /load FILE         load a conversation saved with /save (or any OpenAI-style message list)
  /exit              quit (also Ctrl-D)

Ctrl-C stops an answer and keeps it, marked as interrupted.";

/// A message of the conversation, with whether its generation was cut short.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Said {
    role: String,
    content: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    interrupted: bool,
}

impl Said {
    fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            interrupted: false,
        }
    }

    fn message(&self) -> Message {
        Message::new(self.role.as_str(), self.content.as_str())
    }
}

struct Repl {
    loaded: Loaded,
    /// This conversation's generation state over `loaded.model`.
    engine: crate::generate::Engine,
    prompter: Prompter,
    system: Option<String>,
    /// The conversation after the system prompt.
    said: Vec<Said>,
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

pub fn run(args: ChatArgs) -> Result<()> {
    let path = args.model.resolve()?;
    let params = args.sampling.resolve(&path)?;
    // A session that exists must be readable before anything else happens.
    let resumed = match &args.session {
        Some(file) if file.exists() => Some(load_conversation(file)?),
        _ => None,
    };
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    eprintln!("loading {} ...", path.display());
    let loaded = args.local_model(&path).load()?;
    let prompter = Prompter::load(&path, loaded.chat_template.as_deref(), &loaded.tokenizer)?;
    if !prompter.has_template() {
        eprintln!("{}", prompter.warning());
    }
    let context = context_window(args.context, &loaded.model.config)?;
    let mut repl = Repl {
        sampler: Sampler::new(params.clone())?,
        params,
        engine: crate::generate::Engine::new(loaded.model.clone()),
        loaded,
        prompter,
        system: None,
        said: Vec::new(),
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
    if let Some((system, said)) = resumed {
        repl.system = system;
        repl.said = said;
        eprintln!(
            "resumed session {} ({} messages{})",
            args.session.as_deref().unwrap_or(Path::new("")).display(),
            repl.said.len() + usize::from(repl.system.is_some()),
            match repl.said.last() {
                Some(s) if s.role == "user" => "; the last message has no answer yet",
                _ => "",
            }
        );
    }
    if let Some(system) = &args.system {
        repl.system = Some(system.clone());
    }
    // The line editor first: on a terminal it installs its own SIGINT
    // handler, which ours must replace (see `install_interrupt_handler`).
    let mut input = Input::from_stdin(terminal)?;
    install_interrupt_handler();
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
            Entry::Text(t) => t,
        };
        ctrl_c = false;
        if text.trim().is_empty() {
            continue;
        }
        if text.starts_with('/') && !text.contains('\n') {
            match repl.command(text.trim()) {
                Ok(Flow::Exit) => break,
                Ok(Flow::Continue) => {}
                Err(e) => repl.error(&e),
            }
            continue;
        }
        if let Err(e) = repl.turn(&text) {
            repl.error(&e);
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

    fn messages(&self) -> Vec<Message> {
        let mut m: Vec<Message> = self
            .system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .collect();
        m.extend(self.said.iter().map(Said::message));
        m
    }

    fn autosave(&self) {
        if let Some(file) = &self.session {
            if let Err(e) = save_conversation(file, self.system.as_deref(), &self.said) {
                eprintln!("warning: session not saved: {e:#}");
            }
        }
    }

    fn command(&mut self, line: &str) -> Result<Flow> {
        let (name, rest) = match line.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => (line, ""),
        };
        match name {
            "/help" | "/?" => self.say(HELP),
            "/exit" | "/quit" | "/bye" => return Ok(Flow::Exit),
            "/system" => match rest {
                "" => match &self.system {
                    Some(s) => self.say(s),
                    None => self.say("(no system prompt)"),
                },
                "-" => {
                    self.system = None;
                    self.autosave();
                    self.say("system prompt removed");
                }
                text => {
                    self.system = Some(text.to_string());
                    self.autosave();
                    self.say("system prompt set");
                }
            },
            "/think" | "/no_think" if !rest.is_empty() => {
                // A soft switch inside a message: it goes to the model as typed.
                self.turn(line)?;
            }
            "/think" => {
                self.think = Some(true);
                self.say("thinking on");
            }
            "/no_think" => {
                self.think = Some(false);
                self.say("thinking off");
            }
            "/set" => {
                let Some((key, value)) = rest.split_once(char::is_whitespace) else {
                    bail!("usage: /set KEY VALUE (see /params for the keys)");
                };
                self.set(key.trim(), value.trim())?;
            }
            "/params" => self.say(&self.params_report()),
            "/stats" => match &self.last {
                Some(s) => {
                    let mut r = stats_report(s);
                    r.push_str(&format!(
                        "conversation:        {} messages, {} tokens in the KV cache, context window {}",
                        self.said.len() + usize::from(self.system.is_some()),
                        self.engine.cached_ids().len(),
                        self.context
                    ));
                    self.say(&r);
                }
                None => self.say("no answer yet"),
            },
            "/reset" | "/clear" => {
                self.said.clear();
                self.autosave();
                self.say("conversation cleared (the system prompt stays)");
            }
            "/undo" => {
                // The last user message and everything after it.
                match self.said.iter().rposition(|s| s.role == "user") {
                    Some(at) => {
                        self.said.truncate(at);
                        self.autosave();
                        self.say(&format!(
                            "last exchange removed ({} messages left)",
                            self.said.len()
                        ));
                    }
                    None if !self.said.is_empty() => {
                        self.said.clear();
                        self.autosave();
                        self.say("last exchange removed (0 messages left)");
                    }
                    None => self.say("nothing to undo"),
                }
            }
            "/save" => {
                if rest.is_empty() {
                    bail!("usage: /save FILE");
                }
                save_conversation(Path::new(rest), self.system.as_deref(), &self.said)?;
                self.say(&format!(
                    "saved {} messages to {rest}",
                    self.said.len() + usize::from(self.system.is_some())
                ));
            }
            "/load" => {
                if rest.is_empty() {
                    bail!("usage: /load FILE");
                }
                let (system, said) = load_conversation(Path::new(rest))?;
                self.system = system;
                self.said = said;
                self.autosave();
                self.say(&format!(
                    "loaded {} messages from {rest}",
                    self.said.len() + usize::from(self.system.is_some())
                ));
            }
            _ => eprintln!("unknown command {name}; type /help for the list of commands"),
        }
        Ok(Flow::Continue)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key.replace('-', "_").as_str() {
            "max_tokens" => {
                self.max_tokens = match value {
                    "none" | "off" => None,
                    v => match v.parse::<usize>() {
                        Ok(n) if n > 0 => Some(n),
                        _ => bail!("max_tokens: expected a positive integer or `none`, got {v:?}"),
                    },
                };
            }
            "hide_thinking" => {
                self.hide_thinking = match value {
                    "true" | "on" | "1" | "yes" => true,
                    "false" | "off" | "0" | "no" => false,
                    v => bail!("hide_thinking: expected true or false, got {v:?}"),
                };
            }
            k => {
                if (k == "top_k") && value.trim() == "0" && self.params.temperature > 0.0 {
                    bail!(
                        "top_k must be >= 1 when sampling (temperature {} > 0), got 0",
                        self.params.temperature
                    );
                }
                let mut next = self.params.clone();
                next.set(key, value)?;
                self.sampler = Sampler::new(next.clone())?;
                self.params = next;
            }
        }
        self.say(&format!("{key} = {value}"));
        Ok(())
    }

    fn params_report(&self) -> String {
        let p = &self.params;
        let max = match self.max_tokens {
            Some(n) => n.to_string(),
            None => "none (until end of sequence or the context window)".into(),
        };
        let think = match self.think {
            Some(true) => "on",
            Some(false) => "off",
            None => "template default",
        };
        let stop = if self.stop.is_empty() {
            "(none)".to_string()
        } else {
            format!("{:?}", self.stop)
        };
        format!(
            "temperature       {}\n\
             top_p             {}\n\
             top_k             {}\n\
             min_p             {}\n\
             repeat_penalty    {}\n\
             repeat_last_n     {}\n\
             presence_penalty  {}\n\
             seed              {}\n\
             max_tokens        {max}\n\
             stop              {stop}\n\
             thinking          {think}\n\
             hide_thinking     {}\n\
             context           {} tokens",
            p.temperature,
            p.top_p,
            p.top_k,
            p.min_p,
            p.repeat_penalty,
            p.repeat_last_n,
            p.presence_penalty,
            p.seed,
            self.hide_thinking,
            self.context
        )
    }

    /// Sends a user message and streams the answer.
    fn turn(&mut self, text: &str) -> Result<()> {
        self.said.push(Said::new("user", text));
        self.autosave();
        let (rendered, ids) = match self.fit_prompt() {
            Ok(p) => p,
            Err(e) => {
                self.said.pop();
                self.autosave();
                return Err(e);
            }
        };
        let opts = GenerateOptions {
            max_tokens: self
                .max_tokens
                .unwrap_or(usize::MAX)
                .min(self.context - ids.len()),
            eos_ids: self.loaded.eos_ids.clone(),
            stop_strings: self.stop.clone(),
        };
        let opens = super::chat::prompt_opens_thinking(&rendered);
        let json = self.json;
        let result = super::chat::stream_answer(
            &self.loaded,
            &mut self.engine,
            &ids,
            opens,
            &mut self.sampler,
            &opts,
            self.hide_thinking,
            json,
        );
        let (gen, mut tail) = match result {
            Ok(g) => g,
            Err(e) => {
                if !json {
                    println!();
                }
                self.said.pop();
                self.autosave();
                return Err(e);
            }
        };
        let interrupted = gen.stats.stop_reason == StopReason::Interrupted;
        let mut answer = Said::new("assistant", &gen.text);
        answer.interrupted = interrupted;
        self.said.push(answer);
        self.autosave();
        if json {
            let shown = if self.hide_thinking {
                super::chat::hide_thinking(&gen.text, opens)
            } else {
                gen.text.clone()
            };
            println!("{}", generation_json(&gen, &shown));
        } else {
            if interrupted {
                tail.push_str(" [interrupted]");
            }
            tail.push('\n');
            if self.terminal {
                tail.push('\n');
            }
            let mut stdout = std::io::stdout();
            stdout.write_all(tail.as_bytes())?;
            stdout.flush()?;
        }
        if interrupted {
            eprintln!("(answer interrupted; it stays in the conversation, marked as interrupted)");
        } else if gen.stats.stop_reason == StopReason::Length
            && opts.max_tokens < self.max_tokens.unwrap_or(usize::MAX)
        {
            eprintln!("(the answer reached the end of the context window)");
        }
        if self.show_stats {
            let s = &gen.stats;
            eprintln!(
                "[{} prompt tokens, {} prefilled, {} from cache · first token {:.3} s · prefill {:.1} tok/s · decode {:.1} tok/s · {} tokens · {}]",
                s.prompt_tokens,
                s.prefill_tokens,
                s.prompt_tokens - s.prefill_tokens,
                s.time_to_first_token_s,
                s.prefill_tokens_per_s,
                s.decode_tokens_per_s,
                s.generated_tokens,
                stop_reason_name(s)
            );
        }
        self.last = Some(gen.stats);
        Ok(())
    }

    /// Renders the conversation, dropping the oldest exchanges (never the
    /// system prompt, never the new message) until it leaves room to answer.
    fn fit_prompt(&mut self) -> Result<(String, Vec<u32>)> {
        let reserve = self
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(self.context / 4)
            .max(1);
        let mut dropped = 0;
        loop {
            let opts = PromptOptions {
                add_generation_prompt: true,
                enable_thinking: self.think,
            };
            let (rendered, ids) =
                self.prompter
                    .encode(&self.loaded.tokenizer, &self.messages(), &opts)?;
            if ids.len() + reserve <= self.context {
                if dropped > 0 {
                    self.autosave();
                    eprintln!(
                        "note: the conversation outgrew the context window ({} tokens); dropped the oldest {dropped} message{}",
                        self.context,
                        if dropped == 1 { "" } else { "s" }
                    );
                }
                return Ok((rendered, ids));
            }
            // The oldest exchange: up to the next user message, keeping the last one.
            let next_user = self.said.iter().skip(1).position(|s| s.role == "user");
            match next_user {
                Some(i) if i + 1 < self.said.len() => {
                    self.said.drain(..i + 1);
                    dropped += i + 1;
                }
                _ if ids.len() < self.context => {
                    if dropped > 0 {
                        self.autosave();
                        eprintln!(
                            "note: the conversation outgrew the context window ({} tokens); dropped the oldest {dropped} messages",
                            self.context
                        );
                    }
                    return Ok((rendered, ids));
                }
                _ => {
                    if dropped > 0 {
                        self.autosave();
                    }
                    bail!(
                        "the message does not fit the context window: the prompt has {} tokens, the window {}",
                        ids.len(),
                        self.context
                    )
                }
            }
        }
    }
}

/// Writes the conversation as a JSON list of {"role", "content"} (plus
/// `"interrupted": true` on answers cut short), atomically.
fn save_conversation(path: &Path, system: Option<&str>, said: &[Said]) -> Result<()> {
    let mut all: Vec<Said> = system.map(|s| Said::new("system", s)).into_iter().collect();
    all.extend(said.iter().cloned());
    crate::formats::json::write_atomic(path, &all)
}

/// Reads a conversation: the leading system message (if any) and the rest.
fn load_conversation(path: &Path) -> Result<(Option<String>, Vec<Said>)> {
    let messages = super::chat::read_messages(path)?;
    // load_messages validated the shape; read the `interrupted` marks.
    let json = crate::formats::json::read_value(path)?;
    let list = match &json {
        Value::Array(l) => l.clone(),
        Value::Object(o) => o
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut said: Vec<Said> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Said {
            role: m.role.clone(),
            content: m.content.clone(),
            interrupted: list
                .get(i)
                .and_then(|v| v.get("interrupted"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
        .collect();
    let system = match said.first() {
        Some(s) if s.role == "system" => Some(said.remove(0).content),
        _ => None,
    };
    Ok((system, said))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_roundtrip_keeps_system_and_interrupted_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conv.json");
        let mut said = vec![
            Said::new("user", "Olá <|im_end|>"),
            Said::new("assistant", "partial"),
        ];
        said[1].interrupted = true;
        save_conversation(&path, Some("Be brief."), &said).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Still an OpenAI-style list that load_messages reads.
        assert_eq!(crate::template::load_messages(&path).unwrap().len(), 3);
        assert_eq!(text.matches("interrupted").count(), 1);
        let (system, back) = load_conversation(&path).unwrap();
        assert_eq!(system.as_deref(), Some("Be brief."));
        assert_eq!(back, said);
        let e = load_conversation(&dir.path().join("missing.json")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.json"));
    }

    #[test]
    fn save_failure_names_the_file() {
        let e = save_conversation(Path::new("/no/such/dir/c.json"), None, &[]).unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/dir"), "{e:#}");
    }
}
