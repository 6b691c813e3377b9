//! Thinking text: `<think>…</think>` in a model's output.
//!
//! One recogniser of the tags, [`Tags`], works on a stream (a tag split
//! across pieces is held back until it can be told apart). Both readings of
//! the tags are built on it: [`ThinkingParser`] follows a stream as it is
//! generated (a `<think>` inside thinking, or a `</think>` outside it, is
//! plain text), and [`strip_thinking`] applies Qwen3's chat-template rule to
//! a finished answer.

pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

/// A thinking tag, or the text between tags.
#[derive(Debug, PartialEq, Eq)]
enum Tag {
    Open,
    Close,
    Text(String),
}

impl Tag {
    /// The text the tag was read from.
    fn as_str(&self) -> &str {
        match self {
            Tag::Open => OPEN,
            Tag::Close => CLOSE,
            Tag::Text(t) => t,
        }
    }
}

/// Splits streamed text at `<think>` and `</think>`.
#[derive(Debug, Default)]
struct Tags {
    /// Text not yet returned: the end of what was pushed, when it could be
    /// the start of a tag.
    pending: String,
}

impl Tags {
    fn push(&mut self, piece: &str, out: &mut Vec<Tag>) {
        self.pending.push_str(piece);
        loop {
            // Leftmost tag first; the two never overlap (`<` opens both).
            let found = [(OPEN, Tag::Open), (CLOSE, Tag::Close)]
                .into_iter()
                .filter_map(|(s, tag)| self.pending.find(s).map(|at| (at, s.len(), tag)))
                .min_by_key(|&(at, _, _)| at);
            if let Some((at, len, tag)) = found {
                if at > 0 {
                    out.push(Tag::Text(self.pending.drain(..at).collect()));
                }
                self.pending.drain(..len);
                out.push(tag);
                continue;
            }
            // Keep the longest end that a tag could still grow from.
            let keep = [OPEN, CLOSE]
                .iter()
                .filter_map(|tag| {
                    (1..tag.len())
                        .rev()
                        .find(|&n| self.pending.ends_with(&tag[..n]))
                })
                .max()
                .unwrap_or(0);
            let text: String = self.pending.drain(..self.pending.len() - keep).collect();
            if !text.is_empty() {
                out.push(Tag::Text(text));
            }
            return;
        }
    }

    fn finish(&mut self, out: &mut Vec<Tag>) {
        if !self.pending.is_empty() {
            out.push(Tag::Text(std::mem::take(&mut self.pending)));
        }
    }

    fn split(text: &str) -> Vec<Tag> {
        let mut tags = Tags::default();
        let mut out = Vec::new();
        tags.push(text, &mut out);
        tags.finish(&mut out);
        out
    }
}

/// A piece of generated text, as [`ThinkingParser`] reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    /// `<think>`: thinking starts.
    Open,
    Thinking(String),
    /// `</think>`: thinking ends.
    Close,
    Answer(String),
}

/// Follows generated text, telling thinking from the answer.
#[derive(Debug)]
pub struct ThinkingParser {
    tags: Tags,
    inside: bool,
}

impl ThinkingParser {
    /// `starts_inside`: the prompt opened the thinking block (see
    /// [`prompt_opens_thinking`]), so the text starts inside it.
    pub fn new(starts_inside: bool) -> Self {
        Self {
            tags: Tags::default(),
            inside: starts_inside,
        }
    }

    /// The parts of `piece` that can be told apart so far.
    pub fn push(&mut self, piece: &str) -> Vec<Part> {
        let mut tags = Vec::new();
        self.tags.push(piece, &mut tags);
        self.parts(tags)
    }

    /// What is still held back, at the end of the text.
    pub fn finish(&mut self) -> Vec<Part> {
        let mut tags = Vec::new();
        self.tags.finish(&mut tags);
        self.parts(tags)
    }

    fn parts(&mut self, tags: Vec<Tag>) -> Vec<Part> {
        tags.into_iter()
            .map(|tag| match (tag, self.inside) {
                (Tag::Open, false) => {
                    self.inside = true;
                    Part::Open
                }
                (Tag::Close, true) => {
                    self.inside = false;
                    Part::Close
                }
                (tag, true) => Part::Thinking(text_of(tag)),
                (tag, false) => Part::Answer(text_of(tag)),
            })
            .collect()
    }
}

fn text_of(tag: Tag) -> String {
    match tag {
        Tag::Text(t) => t,
        tag => tag.as_str().to_string(),
    }
}

/// Does the generation prompt leave a `<think>` block open (templates that
/// start the reasoning themselves)? Then the answer begins inside it.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

/// Splits a Qwen3-style answer into (reasoning, answer) with the rule of
/// Qwen3's chat template: when `</think>` occurs, the answer is what follows
/// the last `</think>` with leading newlines removed, and the reasoning is
/// what precedes the first `</think>`, after the last `<think>`, with
/// surrounding newlines removed. Without `</think>`: `(None, text)`.
pub fn strip_thinking(text: &str) -> (Option<String>, String) {
    let tags = Tags::split(text);
    let Some(first_close) = tags.iter().position(|t| *t == Tag::Close) else {
        return (None, text.to_string());
    };
    let before = &tags[..first_close];
    let reasoning_from = before
        .iter()
        .rposition(|t| *t == Tag::Open)
        .map_or(0, |at| at + 1);
    let reasoning = concat(&before[reasoning_from..]);
    let last_close = tags.iter().rposition(|t| *t == Tag::Close).unwrap_or(0);
    let answer = concat(&tags[last_close + 1..]);
    (
        Some(reasoning.trim_matches('\n').to_string()),
        answer.trim_start_matches('\n').to_string(),
    )
}

fn concat(tags: &[Tag]) -> String {
    tags.iter().map(Tag::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_thinking_follows_qwen3_rule() {
        assert_eq!(
            strip_thinking("<think>\nstep 1\nstep 2\n</think>\n\nThe answer."),
            (
                Some("step 1\nstep 2".to_string()),
                "The answer.".to_string()
            )
        );
        // Generation prompts with thinking open the block in the prompt, so
        // the output starts inside it.
        assert_eq!(
            strip_thinking("reasoning\n</think>\n\nok"),
            (Some("reasoning".to_string()), "ok".to_string())
        );
        assert_eq!(strip_thinking("plain"), (None, "plain".to_string()));
        assert_eq!(
            strip_thinking("<think>\n\n</think>\n\n"),
            (Some(String::new()), String::new())
        );
    }

    #[test]
    fn strip_thinking_splits_like_the_template_on_repeated_tags() {
        // Python: c.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
        // and c.split('</think>')[-1].lstrip('\n').
        assert_eq!(
            strip_thinking("a<think>b<think>\nc\n</think>x</think>\n<think>y"),
            (Some("c".to_string()), "<think>y".to_string())
        );
        assert_eq!(strip_thinking("<think>open"), (None, "<think>open".into()));
    }

    #[test]
    fn parser_reads_tags_by_state_for_any_split() {
        let text = "a</think><think>b<think></think>c</thi";
        let expected = [
            Part::Answer("a".into()),
            Part::Answer(CLOSE.into()),
            Part::Open,
            Part::Thinking("b".into()),
            Part::Thinking(OPEN.into()),
            Part::Close,
            Part::Answer("c".into()),
            Part::Answer("</thi".into()),
        ];
        for cut in 0..=text.len() {
            let mut p = ThinkingParser::new(false);
            let mut parts = p.push(&text[..cut]);
            parts.extend(p.push(&text[cut..]));
            parts.extend(p.finish());
            assert_eq!(parts, expected, "cut at {cut}");
        }
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
