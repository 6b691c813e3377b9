//! Hugging Face safetensors checkpoints as a `WeightSource`.

use super::mapped::{self, Region};
use crate::formats::safetensors::Checkpoint;
use crate::model::weights::{
    held_dtype, natural_key, validate, TensorInfo, Validation, Weight, WeightSource,
};
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub struct SafetensorsSource {
    ckpt: Checkpoint,
    dtype: DType,
    device: Device,
    /// On the CPU: each file mapped for tensors used in place
    /// (`load::mapped`), and where every tensor lies in its file.
    in_place: Mutex<Vec<Region>>,
    ranges: HashMap<String, (usize, u64, u64)>,
}

impl SafetensorsSource {
    /// Maps the checkpoint of `dir`; tensors are read (and converted to
    /// `dtype` on `device`) only when asked for.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::open(dir)?;
        let mut regions = Vec::new();
        let mut ranges = HashMap::new();
        if device.is_cpu() && mapped::enabled() {
            for path in crate::formats::safetensors::files(dir)? {
                let (Some(found), Ok(file)) = (
                    crate::formats::safetensors::data_ranges(&path),
                    std::fs::File::open(&path),
                ) else {
                    continue;
                };
                let Some(region) = Region::map(&file) else {
                    continue;
                };
                for (name, (a, b)) in found {
                    ranges.insert(name, (regions.len(), a, b));
                }
                regions.push(region);
            }
        }
        Ok(Self {
            ckpt,
            dtype,
            device: device.clone(),
            in_place: Mutex::new(regions),
            ranges,
        })
    }

    /// The mappings the tensors use in place, to be moved into memory of
    /// their own (`Region::settle`) once the model is built.
    pub fn take_regions(&self) -> Vec<Region> {
        std::mem::take(&mut *self.in_place.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A float tensor whose memory is the file's mapping; None where it
    /// cannot be (no mapping, a misaligned or odd-sized tensor).
    fn mapped_float(&self, name: &str, dtype: DType, shape: &[usize]) -> Option<Tensor> {
        let &(i, a, b) = self.ranges.get(name)?;
        let regions = self.in_place.lock().unwrap_or_else(|e| e.into_inner());
        let r = regions.get(i)?;
        let (at, bytes) = (usize::try_from(a).ok()?, usize::try_from(b - a).ok()?);
        let cpu = &Device::Cpu;
        // SAFETY: floats are plain data.
        let t = unsafe {
            match dtype {
                DType::F32 => Tensor::from_vec(r.vec::<f32>(at, bytes)?, shape, cpu),
                DType::F16 => Tensor::from_vec(r.vec::<half::f16>(at, bytes)?, shape, cpu),
                DType::BF16 => Tensor::from_vec(r.vec::<half::bf16>(at, bytes)?, shape, cpu),
                _ => return None,
            }
        };
        t.ok()
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
        // Float tensors on the CPU: used in place from the mapping
        // (`load::mapped`), else copied on every core (`load::copy`).
        let float = match view.dtype() {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        };
        let in_place = match float {
            Some(dtype) if self.device.is_cpu() => self.mapped_float(name, dtype, view.shape()),
            _ => None,
        };
        let t = match (in_place, float) {
            (Some(t), _) => t,
            (None, Some(dtype)) if self.device.is_cpu() => {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tensor of a checkpoint (the tiny fixture, and the sharded one
    /// over three files) is used in place from its file's mapping and holds
    /// what candle's own reader gives.
    #[test]
    fn tensors_are_used_in_place_and_equal_candles() {
        for fixture in ["tiny", "sharded"] {
            let dir = crate::test_fixtures::qwen3_tokenizer_dir()
                .parent()
                .unwrap()
                .join(fixture);
            let src = SafetensorsSource::open(&dir, DType::F32, &Device::Cpu).unwrap();
            let mapping = cfg!(all(target_os = "linux", target_env = "gnu")) && mapped::enabled();
            for info in src.tensor_infos() {
                let shape: Vec<usize> = info.shape.clone();
                let t = src.load(&info.name, &shape, true).unwrap();
                let want = src.ckpt.st.load(&info.name, &Device::Cpu).unwrap();
                assert_eq!(t.dtype(), want.dtype(), "{fixture} {}", info.name);
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    t.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap(),
                    want.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap(),
                );
                assert_eq!(a, b, "{fixture} {}", info.name);
                if !mapping {
                    continue;
                }
                let (addr, bytes) = crate::ops::matmul::dense_rows(&t, |r| Some(r.span()))
                    .expect("a CPU float tensor");
                let regions = src.in_place.lock().unwrap();
                assert!(
                    regions.iter().any(|r| r.holds(addr, bytes)),
                    "{fixture} {} is used in place",
                    info.name
                );
            }
        }
    }
}
