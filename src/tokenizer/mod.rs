//! Tokenizer wrapper (work in progress: full implementation lands shortly).

use anyhow::{bail, Result};
use std::path::Path;

/// A piece of a chat prompt handed to [`Tokenizer::encode_chat`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// User-provided text: special-token strings in it stay plain characters.
    Text(String),
    /// Exactly one special token, by its string (e.g. `<|im_start|>`).
    Special(String),
    /// Template markup: special-token strings in it become special tokens.
    Markup(String),
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self::from_hf(inner))
    }
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }
    pub fn from_hf(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>> {
        bail!("tokenizer: not yet implemented")
    }
    pub fn encode_with_specials(&self, _text: &str) -> Result<Vec<u32>> {
        bail!("tokenizer: not yet implemented")
    }
    pub fn encode_chat(&self, _segments: &[Segment]) -> Result<Vec<u32>> {
        bail!("tokenizer: not yet implemented")
    }
    pub fn decode(&self, _ids: &[u32], _skip_special: bool) -> Result<String> {
        bail!("tokenizer: not yet implemented")
    }
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream { _tok: self }
    }
    pub fn bos_token(&self) -> Option<&str> {
        None
    }
    pub fn eos_token(&self) -> Option<&str> {
        None
    }
    pub fn add_bos(&self) -> bool {
        false
    }
}

pub struct TokenStream<'a> {
    _tok: &'a Tokenizer,
}

impl TokenStream<'_> {
    pub fn push(&mut self, _id: u32) -> Result<Option<String>> {
        bail!("tokenizer: not yet implemented")
    }
    pub fn finish(&mut self) -> Result<String> {
        bail!("tokenizer: not yet implemented")
    }
    pub fn text(&self) -> String {
        String::new()
    }
}
