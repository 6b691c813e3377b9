//! Printing an answer, for one-shot chat and the REPL alike: the text as it
//! streams (thinking dimmed, plain or hidden), its end (`[interrupted]`),
//! the `--json` object and the statistics.

use super::interrupt;
use crate::adapters::router::Ranking;
use crate::chat::thinking::{prompt_opens_thinking, Part, ThinkingParser, CLOSE, OPEN};
use crate::generate::{Engine, GenerateOptions, Generation, Stats, StopReason};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::io::{IsTerminal, Write};

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// How an answer is printed.
#[derive(Clone, Copy, Debug)]
pub(super) struct AnswerFormat {
    /// `--hide-thinking`: only the answer, not the thinking before it.
    pub hide_thinking: bool,
    /// `--json`: one object when the answer is complete, nothing streamed.
    pub json: bool,
}

/// The most tokens an answer may have: `max_tokens`, never past the end of
/// the context window.
pub(super) fn answer_budget(max_tokens: Option<usize>, window: usize, prompt_len: usize) -> usize {
    max_tokens.unwrap_or(usize::MAX).min(window - prompt_len)
}

/// A generated answer, streamed to stdout unless printed as JSON.
pub(super) struct Answer {
    pub gen: Generation,
    /// What the thinking filter still held back when generation ended.
    tail: String,
    /// The prompt left a `<think>` block open.
    opens_thinking: bool,
    format: AnswerFormat,
    /// The router's ranking when `--expert auto` chose the expert (in `--json`).
    pub routing: Option<Ranking>,
}

/// Generates the answer to `ids` (the encoding of `prompt`), streaming it to
/// stdout (thinking dimmed or hidden) unless printing JSON; Ctrl-C stops it.
pub(super) fn stream(
    engine: &mut Engine,
    tokenizer: &Tokenizer,
    prompt: &str,
    ids: &[u32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    format: AnswerFormat,
) -> Result<Answer> {
    let opens_thinking = prompt_opens_thinking(prompt);
    let display = ThinkingDisplay::for_stdout(format.hide_thinking);
    let mut filter = ThinkFilter::new(display, opens_thinking);
    // On a terminal, what the model emits is shown, never obeyed.
    let mut escaper = ControlEscaper::new(std::io::stdout().is_terminal());
    let mut stdout = std::io::stdout();
    let mut out_error: Option<std::io::Error> = None;
    let _guard = interrupt::Generating::start();
    let gen = engine.generate(
        ids,
        tokenizer,
        sampler,
        opts,
        Some(interrupt::flag()),
        &mut |piece| {
            if !format.json && out_error.is_none() {
                let shown = filter.push(&escaper.push(piece));
                if let Err(e) = stdout
                    .write_all(shown.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    // Nobody reads the answer any more (a closed pipe or
                    // terminal): stop it; what was generated is kept.
                    out_error = Some(e);
                    interrupt::flag().store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            Ok(())
        },
    )?;
    if let Some(e) = out_error {
        eprintln!("warning: cannot write the answer ({e}); it was stopped");
    }
    let tail = if format.json {
        String::new()
    } else {
        let rest = escaper.finish();
        let mut tail = filter.push(&rest);
        tail.push_str(&filter.finish());
        tail
    };
    Ok(Answer {
        gen,
        tail,
        opens_thinking,
        format,
        routing: None,
    })
}

impl Answer {
    pub(super) fn interrupted(&self) -> bool {
        self.gen.stats.stop_reason == StopReason::Interrupted
    }

    /// Ends the answer: the rest of the streamed text, ` [interrupted]` when
    /// cut short, a newline and, with `blank_line`, an empty line. With
    /// `--json` the whole answer as one JSON line instead.
    pub(super) fn print_end(&self, blank_line: bool) -> Result<()> {
        if self.format.json {
            let text = if self.format.hide_thinking {
                hide_thinking(&self.gen.text, self.opens_thinking)
            } else {
                self.gen.text.clone()
            };
            let mut v = generation_json(&self.gen, &text);
            v["expert"] = serde_json::json!(self.gen.stats.expert);
            if let Some(r) = &self.routing {
                v["routing"] = serde_json::json!(r);
            }
            println!("{v}");
            return Ok(());
        }
        let mut end = self.tail.clone();
        if self.interrupted() {
            end.push_str(" [interrupted]");
        }
        end.push('\n');
        if blank_line {
            end.push('\n');
        }
        let mut stdout = std::io::stdout();
        stdout.write_all(end.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Control characters

/// Makes the control characters in a model's output visible instead of
/// letting the terminal act on them: an escape sequence could move the
/// cursor, recolour or retitle the terminal, or hide text. C0 controls and
/// DEL in caret notation (`^[`, `^G`, `^?`), C1 controls and bidirectional
/// overrides as `\u{..}`; newline, tab and CR LF pass. Off (identity) when
/// stdout is not a terminal: a pipe gets the text exactly as generated.
pub(super) struct ControlEscaper {
    active: bool,
    /// A CR at the end of the last piece, waiting to see whether LF follows.
    cr: bool,
}

impl ControlEscaper {
    pub(super) fn new(active: bool) -> Self {
        Self { active, cr: false }
    }

    pub(super) fn push(&mut self, text: &str) -> String {
        if !self.active {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if std::mem::take(&mut self.cr) {
                out.push_str(if c == '\n' { "\r" } else { "^M" });
            }
            match c {
                '\r' => self.cr = true,
                '\n' | '\t' => out.push(c),
                c if (c as u32) < 0x20 => {
                    out.push('^');
                    out.push(char::from(c as u8 + 0x40));
                }
                '\x7f' => out.push_str("^?"),
                '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        out
    }

    pub(super) fn finish(&mut self) -> String {
        if std::mem::take(&mut self.cr) {
            "^M".into()
        } else {
            String::new()
        }
    }
}

/// The one-shot `--json` object (also one line per answer in the REPL).
fn generation_json(gen: &Generation, text: &str) -> serde_json::Value {
    serde_json::json!({
        "text": text,
        "token_ids": gen.token_ids,
        "prompt_tokens": gen.stats.prompt_tokens,
        "stop_reason": gen.stats.stop_reason,
        "stats": gen.stats,
    })
}

// ---------------------------------------------------------------------------
// Thinking text

/// How `<think>…</think>` text is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ThinkingDisplay {
    /// As generated (stdout is not a terminal).
    Plain,
    /// Dimmed with ANSI escapes (a terminal).
    Dim,
    /// Not at all (`--hide-thinking`); the blank lines after it are dropped too.
    Hide,
}

impl ThinkingDisplay {
    fn for_stdout(hide: bool) -> Self {
        if hide {
            Self::Hide
        } else if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Self::Dim
        } else {
            Self::Plain
        }
    }
}

/// The answer without its thinking, as `--hide-thinking` shows it.
fn hide_thinking(text: &str, starts_inside: bool) -> String {
    let mut f = ThinkFilter::new(ThinkingDisplay::Hide, starts_inside);
    let mut out = f.push(text);
    out += &f.finish();
    out
}

/// Streams text while styling or hiding thinking blocks.
struct ThinkFilter {
    display: ThinkingDisplay,
    parser: ThinkingParser,
    /// The dim escape is active.
    styled: bool,
    /// Hide mode: drop the newlines that follow `</think>`.
    skip_newlines: bool,
}

impl ThinkFilter {
    fn new(display: ThinkingDisplay, starts_inside: bool) -> Self {
        Self {
            display,
            parser: ThinkingParser::new(starts_inside),
            styled: false,
            skip_newlines: false,
        }
    }

    fn push(&mut self, piece: &str) -> String {
        let parts = self.parser.push(piece);
        self.show(parts)
    }

    fn finish(&mut self) -> String {
        let parts = self.parser.finish();
        let mut out = self.show(parts);
        if self.styled {
            out.push_str(RESET);
            self.styled = false;
        }
        out
    }

    fn show(&mut self, parts: Vec<Part>) -> String {
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Open => self.tag(&mut out, true),
                Part::Close => self.tag(&mut out, false),
                Part::Thinking(text) => self.thinking(&mut out, &text),
                Part::Answer(text) => self.answer(&mut out, &text),
            }
        }
        out
    }

    fn tag(&mut self, out: &mut String, opening: bool) {
        match self.display {
            ThinkingDisplay::Plain => out.push_str(if opening { OPEN } else { CLOSE }),
            ThinkingDisplay::Hide => self.skip_newlines = !opening,
            ThinkingDisplay::Dim => {
                if !self.styled {
                    out.push_str(DIM);
                }
                if opening {
                    out.push_str(OPEN);
                    self.styled = true;
                } else {
                    out.push_str(CLOSE);
                    out.push_str(RESET);
                    self.styled = false;
                }
            }
        }
    }

    fn thinking(&mut self, out: &mut String, text: &str) {
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
    }

    fn answer(&mut self, out: &mut String, text: &str) {
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
// Statistics

/// `--stats` / `/stats`: one statistic a line.
pub(super) fn stats_report(s: &Stats) -> String {
    format!(
        "prompt tokens:       {} ({} prefilled, {} reused from the KV cache)\n\
         time to first token: {:.3} s\n\
         prefill speed:       {:.1} tok/s\n\
         decode speed:        {:.1} tok/s\n\
         generated tokens:    {}\n\
         stop reason:         {}\n\
         expert:              {}\n",
        s.prompt_tokens,
        s.prefill_tokens,
        s.prompt_tokens - s.prefill_tokens,
        s.time_to_first_token_s,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.generated_tokens,
        stop_reason_name(s),
        s.expert.as_deref().unwrap_or("none (base model)"),
    )
}

/// `--stats` in the REPL: the statistics of an answer on one line.
pub(super) fn stats_line(s: &Stats) -> String {
    format!(
        "[{} prompt tokens, {} prefilled, {} from cache · first token {:.3} s · prefill {:.1} tok/s · decode {:.1} tok/s · {} tokens · {} · expert {}]",
        s.prompt_tokens,
        s.prefill_tokens,
        s.prompt_tokens - s.prefill_tokens,
        s.time_to_first_token_s,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.generated_tokens,
        stop_reason_name(s),
        s.expert.as_deref().unwrap_or("none")
    )
}

fn stop_reason_name(s: &Stats) -> String {
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
    fn control_characters_are_shown_not_obeyed_on_a_terminal() {
        let text = "a\x1b[2J\x1b]0;pwned\x07b\r\nc\rd\te\x7f\u{9b}31m\u{202e}f\r";
        let want = "a^[[2J^[]0;pwned^Gb\r\nc^Md\te^?\\u{9b}31m\\u{202e}f^M";
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let mut e = ControlEscaper::new(true);
            let out = e.push(&text[..cut]) + &e.push(&text[cut..]) + &e.finish();
            assert_eq!(out, want, "cut at {cut}");
            assert!(!out
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r'));
        }
        let mut plain = ControlEscaper::new(false);
        assert_eq!(plain.push(text) + &plain.finish(), text);
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
}
