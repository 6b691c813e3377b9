//! Chat templates (work in progress: full implementation lands shortly).

use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    pub enable_thinking: Option<bool>,
}

pub struct ChatTemplate {
    _source: String,
}

impl ChatTemplate {
    pub fn from_source(source: &str, _bos: Option<String>, _eos: Option<String>) -> Result<Self> {
        Ok(Self {
            _source: source.to_string(),
        })
    }
    pub fn from_dir(_dir: &Path) -> Result<Option<Self>> {
        Ok(None)
    }
    pub fn render(&self, _messages: &[Message], _opts: &RenderOptions) -> Result<String> {
        bail!("chat template: not yet implemented")
    }
}

pub fn encode_prompt(
    _tok: &Tokenizer,
    _tmpl: &ChatTemplate,
    _messages: &[Message],
    _opts: &RenderOptions,
) -> Result<(String, Vec<u32>)> {
    bail!("chat template: not yet implemented")
}

pub fn load_messages(_path: &Path) -> Result<Vec<Message>> {
    bail!("chat template: not yet implemented")
}

pub fn save_messages(_path: &Path, _m: &[Message]) -> Result<()> {
    bail!("chat template: not yet implemented")
}

pub fn strip_thinking(text: &str) -> (Option<String>, String) {
    (None, text.to_string())
}
