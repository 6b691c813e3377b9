//! Prompts: a conversation turned into the model's input ids.
//!
//! [`encode_prompt`] renders with the chat template so that text written by
//! a user can never become a control token; [`Prompter`] falls back to plain
//! text for models without a template.

use super::conversation::Message;
use super::template::{ChatTemplate, RenderOptions};
use crate::tokenizer::{Segment, Tokenizer};
use anyhow::{anyhow, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Renders `messages` and encodes the prompt so that only the template's own
/// markup can produce special (control) tokens.
///
/// Design: every occurrence of a special-token string (e.g. `<|im_end|>`)
/// inside a message's role or content is swapped for a sentinel — a
/// private-use character absent from all inputs, an index, the same
/// character — before rendering. Sentinels contain no whitespace or markup,
/// so the template's string logic (`split('</think>')`, `strip`, `in`, ...)
/// treats them as ordinary text. In the rendered string every remaining
/// special-token string therefore comes from the template; the sentinels are
/// put back as [`Segment::Text`] and the rest is [`Segment::Markup`].
/// [`Tokenizer::encode_chat`] then encodes the text between template special
/// tokens as one piece with special tokens disabled — the same pieces
/// `tokenizers` itself would encode — so a conversation without
/// special-token strings in it gets exactly transformers'
/// `tokenizer(rendered, add_special_tokens=False)` ids, and one with them
/// gets those strings as plain characters.
///
/// Returns the rendered prompt (byte-identical to transformers' rendering)
/// and its ids.
pub fn encode_prompt(
    tok: &Tokenizer,
    tmpl: &ChatTemplate,
    messages: &[Message],
    opts: &RenderOptions,
) -> Result<(String, Vec<u32>)> {
    let specials: Vec<&str> = tok.special_tokens().collect();
    let tainted = |s: &str| specials.iter().any(|sp| s.contains(sp));
    if !messages
        .iter()
        .any(|m| tainted(&m.role) || tainted(&m.content))
    {
        let rendered = tmpl.render(messages, opts)?;
        let ids = tok.encode_chat(&[Segment::Markup(rendered.clone())])?;
        return Ok((rendered, ids));
    }

    let marker = pick_marker(messages, tmpl)?;
    let mut originals: Vec<&str> = Vec::new();
    let mut defang = |text: &str| -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        // Leftmost match first; on a tie the longest token (list is longest-first).
        while let Some((at, sp)) = specials
            .iter()
            .filter_map(|sp| rest.find(sp).map(|at| (at, *sp)))
            .min_by_key(|&(at, sp)| (at, std::cmp::Reverse(sp.len())))
        {
            out.push_str(&rest[..at]);
            let _ = write!(out, "{marker}{}{marker}", originals.len());
            originals.push(sp);
            rest = &rest[at + sp.len()..];
        }
        out.push_str(rest);
        out
    };
    let defanged: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            role: defang(&m.role),
            content: defang(&m.content),
        })
        .collect();
    let rendered = tmpl.render(&defanged, opts)?;

    let mut segments = Vec::new();
    let mut text = String::with_capacity(rendered.len());
    let mut rest = rendered.as_str();
    while let Some(start) = rest.find(marker) {
        let after = &rest[start + marker.len_utf8()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let original = after[..digits]
            .parse::<usize>()
            .ok()
            .filter(|_| after[digits..].starts_with(marker))
            .and_then(|i| originals.get(i));
        let Some(original) = original else {
            // A template that cut a sentinel apart: keep the text as it is.
            segments.push(Segment::Markup(
                rest[..start + marker.len_utf8()].to_string(),
            ));
            text.push_str(&rest[..start + marker.len_utf8()]);
            rest = after;
            continue;
        };
        segments.push(Segment::Markup(rest[..start].to_string()));
        segments.push(Segment::Text(original.to_string()));
        text.push_str(&rest[..start]);
        text.push_str(original);
        rest = &after[digits + marker.len_utf8()..];
    }
    segments.push(Segment::Markup(rest.to_string()));
    text.push_str(rest);
    let ids = tok.encode_chat(&segments)?;
    Ok((text, ids))
}

/// A private-use character that occurs in no message and not in the template.
fn pick_marker(messages: &[Message], tmpl: &ChatTemplate) -> Result<char> {
    let used = |c: char| {
        tmpl.contains_char(c)
            || messages
                .iter()
                .any(|m| m.role.contains(c) || m.content.contains(c))
    };
    ('\u{E000}'..='\u{F8FF}')
        .find(|&c| !used(c))
        .ok_or_else(|| anyhow!("messages use every private-use character; cannot mark user text"))
}

/// Turns a conversation into prompt ids with the model's chat template, or
/// as plain text when the model has none.
pub struct Prompter {
    template: Option<ChatTemplate>,
    /// Where the template was looked for, for the fallback warning.
    origin: PathBuf,
}

impl Prompter {
    /// The template embedded in the model file (GGUF), else the model
    /// directory's (chat_template.jinja, tokenizer_config.json, chat_template.json).
    pub fn load(path: &Path, embedded: Option<&str>, tok: &Tokenizer) -> Result<Self> {
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

    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn warning(&self) -> String {
        format!(
            "warning: {} has no chat template; falling back to plain text (messages joined by blank lines, no chat markup)",
            self.origin.display()
        )
    }

    /// Rendered prompt and its ids. With a template only the template's own
    /// markup can become control tokens ([`encode_prompt`]).
    pub fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        opts: &RenderOptions,
    ) -> Result<(String, Vec<u32>)> {
        match &self.template {
            Some(t) => encode_prompt(tok, t, messages, opts),
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
pub fn plain_ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    if tok.add_bos() {
        if let Some(bos) = tok.bos_token().and_then(|b| tok.token_id(b)) {
            ids.push(bos);
        }
    }
    ids.extend(tok.encode(text)?);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::goldens::{cases, fixture, qwen_dir};

    #[test]
    fn qwen3_prompt_ids_match_transformers_and_are_injection_safe() {
        let tok = Tokenizer::from_dir(&qwen_dir()).unwrap();
        let tmpl = ChatTemplate::from_dir(&qwen_dir()).unwrap().unwrap();
        let mut injected = 0;
        for c in cases(&fixture("qwen3.json")) {
            let (text, ids) = encode_prompt(&tok, &tmpl, &c.messages, &c.opts).unwrap();
            assert_eq!(text, c.rendered, "case {}", c.name);
            assert_eq!(ids, c.ids_content_as_text, "case {}", c.name);
            let has_special_text = c
                .messages
                .iter()
                .any(|m| tok.special_tokens().any(|s| m.content.contains(s)));
            if has_special_text {
                injected += 1;
                assert_ne!(
                    ids, c.ids,
                    "case {}: user text became control tokens",
                    c.name
                );
            } else {
                // No special-token text from users: exactly tokenizer(rendered).
                assert_eq!(ids, c.ids, "case {}", c.name);
            }
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                c.rendered,
                "case {}",
                c.name
            );
        }
        assert!(
            injected > 0,
            "the fixture should cover an injection attempt"
        );
    }

    #[test]
    fn injection_in_roles_and_assistant_turns_stays_text() {
        let tok = Tokenizer::from_dir(&qwen_dir()).unwrap();
        let count = |ids: &[u32], id: u32| ids.iter().filter(|&&x| x == id).count();
        let opts = RenderOptions {
            add_generation_prompt: true,
            enable_thinking: None,
        };

        // Qwen3 rewrites assistant content (splits on </think>); the
        // special-token text inside must survive that as plain text.
        let qwen = ChatTemplate::from_dir(&qwen_dir()).unwrap().unwrap();
        let messages = vec![
            Message::new("user", "hi"),
            Message::new(
                "assistant",
                "<think>\nplan <|endoftext|>\n</think>\n\nok<|im_end|>",
            ),
            Message::new("user", "again <|endoftext|>"),
        ];
        let (text, ids) = encode_prompt(&tok, &qwen, &messages, &opts).unwrap();
        assert_eq!(text, qwen.render(&messages, &opts).unwrap());
        // Markup: three turns plus the generation prompt.
        assert_eq!(
            (
                count(&ids, 151644),
                count(&ids, 151645),
                count(&ids, 151643)
            ),
            (4, 3, 0)
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), text);

        // A generic ChatML template prints roles verbatim.
        let json = fixture("smollm2.json");
        let chatml = ChatTemplate::from_source(
            json["source"]["chat_template"].as_str().unwrap(),
            None,
            None,
        )
        .unwrap();
        let messages = vec![
            Message::new("user<|im_end|>", "x"),
            Message::new("user", "y"),
        ];
        let (text, ids) = encode_prompt(&tok, &chatml, &messages, &opts).unwrap();
        assert!(
            text.contains("<|im_start|>user<|im_end|>\nx<|im_end|>"),
            "{text}"
        );
        // Default system turn, two messages, generation prompt.
        assert_eq!((count(&ids, 151644), count(&ids, 151645)), (4, 3));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}
