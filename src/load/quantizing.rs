//! Quantize-at-load (`--quantize TYPE`): a `WeightSource` wrapper that
//! quantizes projections as they load. `expert quantize` writes the same
//! tensors to a GGUF file, so a written file read back gives exactly the
//! layers (and logits) that quantize-at-load gives.
//!
//! Projections (q/k/v/o, gate/up/down) and an untied output projection are
//! quantized; the embedding and every norm stay in float, and a tied model's
//! output projection is that float embedding (no second copy).
//!
//! Block sizes: legacy types (q4_0 … q8_0) quantize rows in blocks of 32,
//! k-quants in blocks of 256. A row length that is not a multiple of the block
//! gets llama.cpp's fallback (`llama_tensor_get_type`): q4_k → q5_0,
//! q5_k → q5_1, q6_k → q8_0, q2_k/q3_k → q4_0 (llama.cpp uses iq4_nl, which
//! candle lacks; q4_0 has the same size), and F16 when even 32 does not
//! divide the row. Every fallback is reported.

use super::safetensors::SafetensorsSource;
use crate::formats::gguf::{is_float, type_name};
use crate::model::weights::{Weight, WeightSource};
use anyhow::Result;
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

/// The type a row of `ncols` values gets when `requested` is asked for.
pub fn effective_type(requested: GgmlDType, ncols: usize) -> GgmlDType {
    let mut t = requested;
    if !ncols.is_multiple_of(t.block_size()) {
        t = match t {
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
            _ => GgmlDType::F16,
        };
    }
    if !ncols.is_multiple_of(t.block_size()) {
        t = GgmlDType::F16;
    }
    t
}

/// Which type each quantized tensor got.
#[derive(Debug, Clone, Default)]
pub struct QuantReport {
    pub requested: Option<GgmlDType>,
    /// (tensor name, row length, type used)
    pub tensors: Vec<(String, usize, GgmlDType)>,
}

impl QuantReport {
    pub fn fallbacks(&self) -> Vec<&(String, usize, GgmlDType)> {
        self.tensors
            .iter()
            .filter(|(_, _, t)| Some(*t) != self.requested)
            .collect()
    }

    /// One line: how many tensors got the requested type, and the fallbacks
    /// grouped by row length (llama.cpp prints one line per tensor).
    pub fn summary(&self) -> String {
        let Some(req) = self.requested else {
            return String::new();
        };
        let total = self.tensors.len();
        let fb = self.fallbacks();
        let mut s = format!(
            "quantized {} of {total} projections to {}",
            total - fb.len(),
            type_name(req)
        );
        if !fb.is_empty() {
            let mut groups: BTreeMap<(usize, &'static str), usize> = BTreeMap::new();
            for (_, cols, t) in &fb {
                *groups.entry((*cols, type_name(*t))).or_default() += 1;
            }
            let parts: Vec<String> = groups
                .iter()
                .map(|((cols, t), n)| format!("{n} with rows of {cols} -> {t}"))
                .collect();
            s.push_str(&format!(
                "; fallback for rows not a multiple of {} ({}): {}",
                req.block_size(),
                type_name(req),
                parts.join(", ")
            ));
        }
        s.push_str("; embedding and norms kept in float");
        s
    }
}

/// Quantizes a 2-D float weight (any device) to `requested` (or its
/// fallback), on `device`. Rows are quantized in parallel chunks; blocks never
/// span rows, so the result equals a single-threaded quantization.
pub fn quantize_weight(w: &Tensor, requested: GgmlDType, device: &Device) -> Result<QTensor> {
    let (rows, cols) = w.dims2()?;
    let t = effective_type(requested, cols);
    // A fresh buffer: candle's CPU quantizer reads the whole storage and
    // ignores a view's offset.
    let data: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    if is_float(t) || threads <= 1 || data.len() < (1 << 18) {
        let w = Tensor::from_vec(data, (rows, cols), &Device::Cpu)?;
        return Ok(QTensor::quantize_onto(&w, t, device)?);
    }
    let chunk_rows = rows.div_ceil(threads);
    let data = &data;
    let chunks: Vec<Vec<u8>> = std::thread::scope(|s| -> Result<Vec<Vec<u8>>> {
        let handles: Vec<_> = (0..rows)
            .step_by(chunk_rows)
            .map(|start| {
                let len = chunk_rows.min(rows - start);
                s.spawn(move || -> Result<Vec<u8>> {
                    let part = &data[start * cols..(start + len) * cols];
                    let part = Tensor::from_slice(part, (len, cols), &Device::Cpu)?;
                    Ok(QTensor::quantize(&part, t)?.data()?.into_owned())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("quantization thread panicked"))?
            })
            .collect()
    })?;
    Ok(ggml_file::qtensor_from_ggml(
        t,
        &chunks.concat(),
        vec![rows, cols],
        device,
    )?)
}

/// Weights whose projections are quantized as they load. The inner source
/// should read in f32 on the CPU, so that quantization starts from the
/// stored values.
pub struct QuantizingSource<S: WeightSource> {
    inner: S,
    requested: GgmlDType,
    dtype: DType,
    device: Device,
    report: RefCell<QuantReport>,
}

impl QuantizingSource<SafetensorsSource> {
    /// A safetensors directory, quantized at load.
    pub fn open(dir: &Path, requested: GgmlDType, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::new(
            SafetensorsSource::open(dir, DType::F32, &Device::Cpu)?,
            requested,
            dtype,
            device,
        ))
    }
}

impl<S: WeightSource> QuantizingSource<S> {
    pub fn new(inner: S, requested: GgmlDType, dtype: DType, device: &Device) -> Self {
        Self {
            inner,
            requested,
            dtype,
            device: device.clone(),
            report: RefCell::new(QuantReport {
                requested: Some(requested),
                tensors: vec![],
            }),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn report(&self) -> QuantReport {
        self.report.borrow().clone()
    }

    /// The quantized weight `name` (…`.weight`, shape (out, in));
    /// `lm_head.weight` of a tied model is the embedding matrix.
    pub fn quantized(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let stored = if name == "lm_head.weight" && !self.inner.contains(name) {
            "model.embed_tokens.weight"
        } else {
            name
        };
        let w = self.inner.tensor(stored, shape)?;
        let q = quantize_weight(&w, self.requested, &self.device)?;
        let inp = shape.get(1).copied().unwrap_or(0);
        self.report
            .borrow_mut()
            .tensors
            .push((name.to_string(), inp, q.dtype()));
        Ok(q)
    }
}

impl<S: WeightSource> WeightSource for QuantizingSource<S> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .inner
            .tensor(name, shape)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?)
    }

    fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        Weight::from_qtensor(self.quantized(name, shape)?, self.dtype)
    }

    /// The embedding stays float, held as the unquantized model holds it
    /// (bf16/f16 as stored on the CPU) and as the GGUF written from this
    /// source holds it, so all three compute a tied lm_head alike.
    fn embedding(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        match self.inner.embedding(name, shape)? {
            Weight::Dense(t) => Weight::from_float(t.to_device(&self.device)?, self.dtype),
            q => Ok(q),
        }
    }

    fn contains(&self, name: &str) -> bool {
        // A tied model's output projection is the float embedding (shared,
        // as in transformers); only a stored lm_head is quantized.
        self.inner.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(effective_type(GgmlDType::Q4K, 1024), GgmlDType::Q4K);
        assert_eq!(effective_type(GgmlDType::Q4K, 576), GgmlDType::Q5_0);
        assert_eq!(effective_type(GgmlDType::Q5K, 64), GgmlDType::Q5_1);
        assert_eq!(effective_type(GgmlDType::Q6K, 32), GgmlDType::Q8_0);
        assert_eq!(effective_type(GgmlDType::Q3K, 96), GgmlDType::Q4_0);
        assert_eq!(effective_type(GgmlDType::Q4K, 48), GgmlDType::F16);
        assert_eq!(effective_type(GgmlDType::Q8_0, 48), GgmlDType::F16);
        assert_eq!(effective_type(GgmlDType::Q8_0, 64), GgmlDType::Q8_0);
    }

    #[test]
    fn parallel_quantization_equals_single_threaded() {
        let w = Tensor::randn(0f32, 1.0, (600, 512), &Device::Cpu).unwrap();
        for t in [GgmlDType::Q4K, GgmlDType::Q8_0, GgmlDType::Q5_1] {
            let a = quantize_weight(&w, t, &Device::Cpu).unwrap();
            let b = QTensor::quantize(&w, t).unwrap();
            assert_eq!(a.data().unwrap(), b.data().unwrap(), "{t:?}");
        }
    }
}
