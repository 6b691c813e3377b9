//! expert: run Qwen3 (and Llama-family) language models locally on candle.
//!
//! Layout: `model/` is the network and its weights, `tokenizer` turns text
//! into ids, `chat/` turns conversations into prompts (chat template,
//! messages, thinking text), `sampling` picks the next id, `generate` drives
//! prefill/decode/stop/stream, `cli/` holds one file per subcommand.

pub mod chat;
pub mod cli;
pub mod formats;
pub mod generate;
pub mod hub;
pub mod model;
pub mod sampling;
pub mod tokenizer;

#[cfg(test)]
mod test_fixtures;
