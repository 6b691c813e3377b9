//! expert: run Qwen3 (and Llama-family) language models locally on candle.
//!
//! Layout: `model/` is the network and its weights, `tokenizer`/`template`
//! turn text into ids, `sampling` picks the next id, `generate` drives
//! prefill/decode/stop/stream, `cli/` holds one file per subcommand.

pub mod chat;
pub mod cli;
pub mod formats;
pub mod generate;
pub mod hub;
pub mod model;
pub mod sampling;
pub mod template;
pub mod tokenizer;

#[cfg(test)]
mod test_fixtures;
