//! Sampling (work in progress: full implementation lands shortly).

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub min_p: f64,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 20,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            seed: 42,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
    pub fn from_generation_config(_path: &Path) -> Result<Self> {
        Ok(Self::default())
    }
    pub fn set(&mut self, _key: &str, _value: &str) -> Result<()> {
        bail!("sampling: not yet implemented")
    }
}

pub struct Sampler {
    _params: SamplingParams,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        Ok(Self { _params: params })
    }
    pub fn sample(&mut self, _logits: &candle_core::Tensor, _history: &[u32]) -> Result<u32> {
        bail!("sampling: not yet implemented")
    }
}

pub fn eos_ids_from_generation_config(_path: &Path) -> Result<Vec<u32>> {
    Ok(Vec::new())
}
