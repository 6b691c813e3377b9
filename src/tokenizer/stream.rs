//! Incremental detokenization for streaming output.
//!
//! Same idea as `tokenizers::DecodeStream` (and text-generation-inference):
//! decode a small window of recent ids with one token of left context and
//! emit what the newest id added, holding back while the text ends in an
//! incomplete UTF-8 sequence (U+FFFD). The left context matters for decoders
//! such as Metaspace that treat the first token of a decode differently.
//! Unlike `DecodeStream`, this one can flush the held-back tail and reports
//! what it has emitted.

use super::Tokenizer;
use anyhow::Result;

/// Held-back ids beyond this are emitted anyway: UTF-8 needs at most 4
/// bytes, so a longer wait means the model is producing invalid bytes,
/// and re-decoding an ever-growing window would cost O(n²).
const MAX_PENDING: usize = 16;

pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the context window (ids already emitted, kept for context).
    prefix_offset: usize,
    /// Ids before this have been emitted.
    read_offset: usize,
    /// decode(ids[prefix_offset..read_offset])
    prefix_text: String,
    emitted: String,
}

impl<'a> TokenStream<'a> {
    pub(super) fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        Self {
            tok,
            skip_special,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            prefix_text: String::new(),
            emitted: String::new(),
        }
    }
}

impl TokenStream<'_> {
    /// Adds one id; returns the text it completed, if any. A character split
    /// across tokens comes out once its last byte arrives.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self
            .tok
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        let pending = self.ids.len() - self.read_offset;
        let complete = !text.ends_with('\u{FFFD}') || pending > MAX_PENDING;
        let Some(new) = text.strip_prefix(self.prefix_text.as_str()) else {
            // The decoder rewrote earlier text; leave it to `finish`.
            return Ok(None);
        };
        if new.is_empty() || !complete {
            return Ok(None);
        }
        let new = new.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.prefix_text = self.tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        self.emitted.push_str(&new);
        Ok(Some(new))
    }

    /// Ends the stream and returns the text still held back (an incomplete
    /// character comes out as U+FFFD, as `decode` renders it). Afterwards
    /// `text()` equals `decode(all ids)`.
    pub fn finish(&mut self) -> Result<String> {
        let full = self.tok.decode(&self.ids, self.skip_special)?;
        let rest = match full.strip_prefix(self.emitted.as_str()) {
            Some(rest) => rest.to_string(),
            // Only after forced emission of invalid bytes: fall back to the window.
            None => {
                let window = self
                    .tok
                    .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
                window
                    .strip_prefix(self.prefix_text.as_str())
                    .unwrap_or_default()
                    .to_string()
            }
        };
        self.emitted.push_str(&rest);
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        self.prefix_text.clear();
        Ok(rest)
    }

    /// Everything emitted so far.
    pub fn text(&self) -> String {
        self.emitted.clone()
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::qwen;

    fn stream_all(ids: &[u32]) -> (Vec<Option<String>>, String) {
        let t = qwen();
        let mut s = t.stream();
        let pieces: Vec<Option<String>> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
        let tail = s.finish().unwrap();
        let joined: String = pieces.iter().flatten().cloned().collect::<String>() + &tail;
        assert_eq!(s.text(), joined);
        (pieces, joined)
    }

    #[test]
    fn concatenation_equals_decode_on_multilingual_text() {
        let t = qwen();
        for text in [
            "Família 👨\u{200d}👩\u{200d}👧\u{200d}👦 em São Paulo: ação, coração, pão.",
            "我们今天去北京吃烤鸭，好吗？🦆🔥",
            "Flags 🇧🇷🇵🇹🇯🇵, skin tones 👍🏽👋🏿, keycaps 1️⃣, math ∑∫√, Ελληνικά, русский, العربية, 日本語のテキスト",
            "<think>\nraciocínio\n</think>\n\nResposta: 42 ✅<|im_end|>",
        ] {
            let ids = t.encode_with_specials(text).unwrap();
            let (pieces, joined) = stream_all(&ids);
            assert_eq!(joined, t.decode(&ids, false).unwrap());
            assert_eq!(joined, text);
            // A valid text never shows a replacement character mid-stream.
            assert!(pieces.iter().flatten().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        }
    }

    #[test]
    fn character_split_across_byte_tokens_comes_out_once_complete() {
        // Byte-level tokens for the bytes of 😀 (F0 9F 98 80) and 中 (E4 B8 AD),
        // from the tokenizer.json byte alphabet.
        let ids = [172, 253, 246, 222, 160, 116, 255];
        let (pieces, joined) = stream_all(&ids);
        assert_eq!(
            pieces,
            [
                None,
                None,
                None,
                Some("😀".to_string()),
                None,
                None,
                Some("中".to_string())
            ]
        );
        assert_eq!(joined, "😀中");
    }

    #[test]
    fn incomplete_tail_is_flushed_like_decode() {
        let t = qwen();
        // "a" then the first two bytes of 😀.
        let ids = [64, 172, 253];
        let mut s = t.stream();
        assert_eq!(s.push(64).unwrap().as_deref(), Some("a"));
        assert_eq!(s.push(172).unwrap(), None);
        assert_eq!(s.push(253).unwrap(), None);
        assert_eq!(s.finish().unwrap(), "\u{FFFD}");
        assert_eq!(s.text(), t.decode(&ids, false).unwrap());
    }

    #[test]
    fn skip_special_stream_matches_skip_special_decode() {
        let t = qwen();
        let ids = t
            .encode_with_specials("Olá<|im_end|>\n<|im_start|>mundo")
            .unwrap();
        let mut s = t.stream_with(true);
        let mut out = String::new();
        for &id in &ids {
            out.extend(s.push(id).unwrap());
        }
        out += &s.finish().unwrap();
        assert_eq!(out, t.decode(&ids, true).unwrap());
        assert_eq!(out, "Olá\nmundo");
    }
}
