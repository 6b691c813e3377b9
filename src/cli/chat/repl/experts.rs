//! The REPL's expert commands: `/experts`, `/expert NAME`, `/expert auto`,
//! `/expert off`. The choice takes effect at the next turn (with `auto`, the
//! router picks per user turn); the KV cache is kept only while the expert
//! stays the same.

use super::{Flow, Repl};
use crate::cli::adapters::Choice;
use anyhow::{bail, Result};

pub(super) const HELP: &str =
    "  /experts           list the loaded experts (LoRA adapters) and which one answers
  /expert NAME|auto|off  answer with an expert, let the router choose per turn, or use the base";

impl Repl {
    /// Handles `/experts` and `/expert …`; None for any other command.
    pub(super) fn expert_command(&mut self, line: &str) -> Result<Option<Flow>> {
        let (name, rest) = match line.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => (line, ""),
        };
        match (name, rest) {
            ("/experts", _) => self.say(&self.experts_report()),
            ("/expert", "") => bail!("usage: /expert NAME|auto|off (see /experts)"),
            ("/expert", arg) => {
                if let Some(m) = &self.experts.merged {
                    bail!("{m} is merged into the weights (--merge); restart without --merge to switch experts");
                }
                let choice = match arg {
                    "off" | "none" | "base" => Choice::Base,
                    "auto" => {
                        self.experts.router(&self.loaded)?;
                        Choice::Auto
                    }
                    n if self.experts.find(n).is_some() => Choice::Named(n.to_string()),
                    n => bail!("no expert named {n} (loaded: {})", self.experts.names()),
                };
                self.experts.choice = choice;
                self.say(&match arg {
                    "off" | "none" | "base" => "expert off: the base model answers".to_string(),
                    "auto" => "expert auto: the router chooses for each message".to_string(),
                    n => format!("expert {n} answers from the next message"),
                });
            }
            _ => return Ok(None),
        }
        Ok(Some(Flow::Continue))
    }

    fn experts_report(&self) -> String {
        let e = &self.experts;
        let mode = match &e.choice {
            Choice::Base => "off (base model)".to_string(),
            Choice::Named(n) => n.clone(),
            Choice::Auto => "auto (router)".to_string(),
        };
        let mut out = format!("expert: {mode}");
        if let Some(m) = &e.merged {
            out.push_str(&format!(" · {m} merged into the weights"));
        }
        if e.list.is_empty() {
            out.push_str(
                "\n(no adapters loaded: start with --adapter NAME=PATH or --manifest FILE)",
            );
        }
        for x in &e.list {
            let i = &x.info;
            let active = self.engine.adapter().is_some_and(|a| a.name == i.name);
            out.push_str(&format!(
                "\n{} {:<14} r {:<3} scale {:<6.3} {:>9} params  {}",
                if active { "*" } else { " " },
                i.name,
                i.r,
                i.scale,
                i.parameters,
                if x.description.is_empty() {
                    i.path.display().to_string()
                } else {
                    x.description.clone()
                }
            ));
        }
        out
    }
}
