//! Hugging Face safetensors checkpoints as a `WeightSource`.

use crate::formats::safetensors::Checkpoint;
use crate::model::weights::{
    held_dtype, natural_key, validate, TensorInfo, Validation, Weight, WeightSource,
};
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

pub struct SafetensorsSource {
    ckpt: Checkpoint,
    dtype: DType,
    device: Device,
}

impl SafetensorsSource {
    /// Maps the checkpoint of `dir`; tensors are read (and converted to
    /// `dtype` on `device`) only when asked for.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            ckpt: Checkpoint::open(dir)?,
            dtype,
            device: device.clone(),
        })
    }

    /// Every tensor's header entry, in natural order (`layers.10` after `layers.9`).
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        let mut tensors: Vec<TensorInfo> = self
            .ckpt
            .st
            .tensors()
            .into_iter()
            .map(|(name, view)| TensorInfo {
                file: self.ckpt.file_name(&name),
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
                name,
            })
            .collect();
        tensors.sort_by_key(|t| natural_key(&t.name));
        tensors
    }

    /// Checks the checkpoint against `cfg` (headers only, no tensor data read).
    pub fn validate(&self, cfg: &ModelConfig) -> Validation {
        validate(cfg, self.tensor_infos())
    }

    /// `name` in the compute dtype, or with `held`, as [`held_dtype`] keeps it.
    fn load(&self, name: &str, shape: &[usize], held: bool) -> Result<Tensor> {
        let view = self
            .ckpt
            .st
            .get(name)
            .with_context(|| format!("missing tensor `{name}`"))?;
        // Float tensors on the CPU: copied on every core (`load::copy`).
        let float = match view.dtype() {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        };
        let t = match float {
            Some(dtype) if self.device.is_cpu() => {
                super::copy::float_tensor(view.data(), dtype, view.shape())
                    .with_context(|| format!("{}: tensor `{name}`", self.ckpt.file_name(name)))?
            }
            _ => self
                .ckpt
                .st
                .load(name, &self.device)
                .with_context(|| format!("missing tensor `{name}`"))?,
        };
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}`: expected shape {shape:?}, found {:?}",
                self.ckpt.file_name(name),
                t.dims()
            );
        }
        self.ckpt.release(name);
        let dtype = if held {
            held_dtype(t.dtype(), self.dtype, &self.device)
        } else {
            self.dtype
        };
        Ok(t.to_dtype(dtype)?)
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape, false)
    }

    fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        Ok(Weight::Dense(self.load(name, shape, true)?))
    }

    fn embedding(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.weight(name, shape)
    }

    fn contains(&self, name: &str) -> bool {
        self.ckpt.files.contains_key(name)
    }
}
