//! The network and its weights.
//!
//! - `config`: hyper-parameters from config.json (or GGUF metadata)
//! - `weights`: safetensors loading and validation against the config
//! - `rope`, `kv_cache`, `layers`: the pieces of a decoder layer
//! - `transformer`: the whole forward pass

pub mod config;
pub mod gguf;
pub mod kv_cache;
pub mod layers;
pub mod quantize;
pub mod rope;
pub mod transformer;
pub mod weights;

pub use config::ModelConfig;
pub use transformer::Model;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

/// `--device cpu|cuda|auto`.
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context(
            "--device cuda: no usable CUDA device (was expert built with --features cuda?)",
        ),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        other => bail!("--device: expected cpu, cuda or auto, got `{other}`"),
    }
}

/// `--dtype auto|f32|bf16|f16`. auto is f32 on CPU (candle's CPU bf16 matmul
/// widens to f32 on every call, so it is slower) and bf16 on GPUs.
pub fn select_dtype(name: &str, device: &Device) -> Result<DType> {
    match name {
        "auto" => Ok(if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }),
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("--dtype: expected auto, f32, bf16 or f16, got `{other}`"),
    }
}

/// Loads a Hugging Face directory: config.json + safetensors, validated
/// before any tensor is read.
pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Model> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let src = weights::SafetensorsSource::open(dir, dtype, device)?;
    let v = src.validate(&config);
    if let Some(p) = v.problems.first() {
        let more = if v.problems.len() > 1 {
            format!(
                " (and {} more problems; `expert inspect` lists them)",
                v.problems.len() - 1
            )
        } else {
            String::new()
        };
        bail!("{}: {p}{more}", dir.display());
    }
    Model::load(config, &src, dtype, device)
}
