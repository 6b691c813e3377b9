//! File formats: bytes on disk ↔ named tensors, metadata and JSON values.
//!
//! Nothing here knows about the network: this folder imports nothing else
//! from the crate, and everything above it (model, load, tokenizer, chat)
//! reads and writes files through it.

pub mod atomic;
pub mod gguf;
pub mod json;
pub mod safetensors;
