//! The REPL's commands: `/help`, `/system`, `/think`, `/set`, `/params`,
//! `/stats`, `/reset`, `/undo`, `/save`, `/load`, `/exit`.

use super::{Flow, Repl};
use crate::chat::conversation::Conversation;
use crate::cli::chat::answer::stats_report;
use crate::sampling::Sampler;
use anyhow::{bail, Result};
use std::path::Path;

pub(super) const HELP: &str = "\
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

/// A command line, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Help,
    Exit,
    ShowSystem,
    RemoveSystem,
    SetSystem(&'a str),
    /// `/think TEXT`, `/no_think TEXT`: Qwen3's soft switches inside a
    /// message, which goes to the model as typed.
    Message(&'a str),
    Thinking(bool),
    Set {
        key: &'a str,
        value: &'a str,
    },
    Params,
    Stats,
    Reset,
    Undo,
    Save(&'a str),
    Load(&'a str),
    Unknown(&'a str),
}

/// A command line parsed, as text (for tests/fuzz: the parser never panics).
pub(in crate::cli::chat) fn describe(line: &str) -> Result<String> {
    parse(line).map(|c| format!("{c:?}"))
}

fn parse(line: &str) -> Result<Command<'_>> {
    let (name, rest) = match line.split_once(char::is_whitespace) {
        Some((n, r)) => (n, r.trim()),
        None => (line, ""),
    };
    Ok(match name {
        "/help" | "/?" => Command::Help,
        "/exit" | "/quit" | "/bye" => Command::Exit,
        "/system" => match rest {
            "" => Command::ShowSystem,
            "-" => Command::RemoveSystem,
            text => Command::SetSystem(text),
        },
        "/think" | "/no_think" if !rest.is_empty() => Command::Message(line),
        "/think" => Command::Thinking(true),
        "/no_think" => Command::Thinking(false),
        "/set" => {
            let Some((key, value)) = rest.split_once(char::is_whitespace) else {
                bail!("usage: /set KEY VALUE (see /params for the keys)");
            };
            Command::Set {
                key: key.trim(),
                value: value.trim(),
            }
        }
        "/params" => Command::Params,
        "/stats" => Command::Stats,
        "/reset" | "/clear" => Command::Reset,
        "/undo" => Command::Undo,
        "/save" | "/load" if rest.is_empty() => bail!("usage: {name} FILE"),
        "/save" => Command::Save(rest),
        "/load" => Command::Load(rest),
        _ => Command::Unknown(name),
    })
}

impl Repl {
    /// Runs a command line (one that starts with `/`).
    pub(super) fn command(&mut self, line: &str) -> Result<Flow> {
        if let Some(flow) = self.expert_command(line)? {
            return Ok(flow);
        }
        match parse(line)? {
            Command::Help => self.say(&HELP.replacen(
                "  /exit ",
                &format!("{}\n  /exit ", super::experts::HELP),
                1,
            )),
            Command::Exit => return Ok(Flow::Exit),
            Command::ShowSystem => match &self.conversation.system {
                Some(s) => self.say(s),
                None => self.say("(no system prompt)"),
            },
            Command::RemoveSystem => {
                self.conversation.system = None;
                self.autosave();
                self.say("system prompt removed");
            }
            Command::SetSystem(text) => {
                self.conversation.system = Some(text.to_string());
                self.autosave();
                self.say("system prompt set");
            }
            Command::Message(text) => self.turn(text)?,
            Command::Thinking(on) => {
                self.think = Some(on);
                self.say(if on { "thinking on" } else { "thinking off" });
            }
            Command::Set { key, value } => self.set(key, value)?,
            Command::Params => self.say(&self.params_report()),
            Command::Stats => self.say(&self.last_answer_stats()),
            Command::Reset => {
                self.conversation.turns.clear();
                self.autosave();
                self.say("conversation cleared (the system prompt stays)");
            }
            Command::Undo => {
                if self.conversation.undo() {
                    self.autosave();
                    self.say(&format!(
                        "last exchange removed ({} messages left)",
                        self.conversation.turns.len()
                    ));
                } else {
                    self.say("nothing to undo");
                }
            }
            Command::Save(file) => {
                self.conversation.save(Path::new(file))?;
                self.say(&format!(
                    "saved {} messages to {file}",
                    self.conversation.message_count()
                ));
            }
            Command::Load(file) => {
                self.conversation = Conversation::load(Path::new(file))?;
                self.autosave();
                self.say(&format!(
                    "loaded {} messages from {file}",
                    self.conversation.message_count()
                ));
            }
            Command::Unknown(name) => {
                eprintln!("unknown command {name}; type /help for the list of commands")
            }
        }
        Ok(Flow::Continue)
    }

    fn last_answer_stats(&self) -> String {
        let Some(s) = &self.last else {
            return "no answer yet".to_string();
        };
        let mut r = stats_report(s);
        r.push_str(&format!(
            "conversation:        {} messages, {} tokens in the KV cache, context window {}",
            self.conversation.message_count(),
            self.engine.cached_ids().len(),
            self.context
        ));
        r
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("/?").unwrap(), Command::Help);
        assert_eq!(
            parse("/system  Be brief.").unwrap(),
            Command::SetSystem("Be brief.")
        );
        assert_eq!(parse("/system -").unwrap(), Command::RemoveSystem);
        assert_eq!(parse("/think").unwrap(), Command::Thinking(true));
        assert_eq!(
            parse("/no_think why?").unwrap(),
            Command::Message("/no_think why?")
        );
        assert_eq!(
            parse("/set top_p  0.9").unwrap(),
            Command::Set {
                key: "top_p",
                value: "0.9"
            }
        );
        assert_eq!(parse("/save a b.json").unwrap(), Command::Save("a b.json"));
        assert_eq!(parse("/nope x").unwrap(), Command::Unknown("/nope"));
        for (line, usage) in [
            ("/set top_p", "/set KEY VALUE"),
            ("/load", "/load FILE"),
            ("/save", "/save FILE"),
        ] {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.starts_with(&format!("usage: {usage}")), "{e}");
        }
    }
}
