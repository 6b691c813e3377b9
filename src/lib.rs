//! expert: run Qwen3 (and Llama-family) language models locally on candle.
//!
//! The modules follow the data, bottom to top (imports point downwards):
//!
//! - `formats`: bytes on disk ↔ tensors, metadata, JSON (safetensors, GGUF)
//! - `ops`: the per-token compute (matmul, attention)
//! - `model`: config, weights, layers, the stateless forward pass, KV cache
//! - `tokenizer`: text ↔ ids (tokenizer.json or GGUF vocabularies)
//! - `load`: a model spec → a validated model, tokenizer and eos ids;
//!   `quantize`: the offline GGUF writer beside it
//! - `adapters`: LoRA experts (PEFT adapters, the experts.toml manifest, the router)
//! - `sampling`, `generate`: next-token choice; prefill/decode/stop/stream
//! - `chat`: conversations → prompts (template, messages, thinking text)
//! - `cli`: arguments and printing, one file per subcommand

pub mod adapters;
pub mod chat;
pub mod cli;
pub mod formats;
pub mod generate;
pub mod load;
pub mod model;
pub mod ops;
pub mod quantize;
pub mod sampling;
pub mod tokenizer;

/// The system allocator, plus the file mappings loaded GGUF tensors use
/// in place (`load::mapped`).
#[global_allocator]
static ALLOCATOR: load::mapped::Allocator = load::mapped::Allocator;

#[cfg(test)]
mod test_fixtures;
