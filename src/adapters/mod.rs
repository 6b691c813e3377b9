//! Experts: LoRA adapters over one shared base model.
//!
//! - `peft`: PEFT adapter directories → `model::Lora`, checked against the base
//! - `manifest`: `experts.toml` (names, adapter paths, descriptions, example prompts)
//! - `router`: picks an expert for a prompt from the base model's own
//!   representation of it, with a cache beside the manifest
//!
//! Which adapter a conversation uses is its own state (`generate::Engine`);
//! the model and the adapters are shared.

pub mod manifest;
pub mod peft;
pub mod router;
