//! The network: hyper-parameters, weights in, logits out.
//!
//! - `config`: hyper-parameters from config.json (or GGUF metadata, via `load`)
//! - `weights`: what the model asks of a weight source; checkpoint validation
//! - `linear`, `rope`, `layers`: the pieces of a decoder layer
//! - `lora`: LoRA deltas added unmerged to a projection's output
//! - `kv_cache`: a sequence's keys and values, owned by the caller
//! - `transformer`: the whole forward pass (stateless)

pub mod config;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod lora;
pub mod rope;
pub mod transformer;
pub mod weights;

pub use crate::ops::matmul::Precision;
pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use lora::Lora;
pub use transformer::Model;
