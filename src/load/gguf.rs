//! GGUF models: metadata → `ModelConfig`, the tensor check, and a
//! `WeightSource` that keeps projections quantized.
//!
//! Names: the model asks for Hugging Face names (`model.layers.3.mlp.up_proj`)
//! and `formats::gguf::gguf_name` maps them to llama.cpp's (`blk.3.ffn_up`).

use super::mapped::{self, Region};
use crate::formats::gguf::{gguf_name, GgufFile, GgufTensor};
use crate::model::config::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use crate::model::weights::{expected_tensors, Weight, WeightSource};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

/// The model's hyper-parameters from `{arch}.*` metadata and tensor shapes.
pub fn config(file: &GgufFile) -> Result<ModelConfig> {
    config_inner(file).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.path.display()))
}

fn config_inner(file: &GgufFile) -> Result<ModelConfig> {
    let (arch_name, architecture) = architecture(file)?;
    let k = |s: &str| format!("{arch_name}.{s}");
    let attn = attention_shape(file, &k)?;
    let max_position_embeddings = file.u64(&k("context_length"))? as usize;
    let theta = file.opt_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0);
    let scaling = rope_scaling(file, &k, max_position_embeddings)?;
    let (vocab_size, intermediate_size) = vocab_and_ffn_sizes(file, &k, attn.hidden_size)?;
    let eps = file
        .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
        .with_context(|| {
            format!(
                "metadata `{}`: missing (expected a number)",
                k("attention.layer_norm_rms_epsilon")
            )
        })?;
    let eos_token_ids = eos_token_ids(file)?;
    let num_hidden_layers = file.u64(&k("block_count"))? as usize;
    // Each layer has at least 9 tensors; a larger count is corrupt (and
    // would make the tensor checks allocate without bound).
    if num_hidden_layers > file.tensors.len() {
        bail!(
            "metadata `{}` = {num_hidden_layers} is absurd: the file has only {} tensors",
            k("block_count"),
            file.tensors.len()
        );
    }
    let cfg = ModelConfig {
        architecture,
        vocab_size,
        hidden_size: attn.hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: attn.num_attention_heads,
        num_key_value_heads: attn.num_key_value_heads,
        head_dim: attn.head_dim,
        rms_norm_eps: eps,
        rope: RopeConfig {
            theta,
            scaling,
            interleaved: architecture == Architecture::Llama,
        },
        max_position_embeddings,
        tie_word_embeddings: !file.has_tensor("output.weight"),
        attention_bias: match architecture {
            Architecture::Qwen2 => true,
            _ => file.has_tensor("blk.0.attn_q.bias"),
        },
        qk_norm: architecture == Architecture::Qwen3,
        bos_token_id: file
            .opt_u64("tokenizer.ggml.bos_token_id")?
            .map(|v| v as u32),
        eos_token_ids,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `general.architecture`: its name (the `{arch}.*` key prefix) and the
/// supported architecture it names.
fn architecture(file: &GgufFile) -> Result<(String, Architecture)> {
    let arch_name = file.architecture()?;
    let architecture = match arch_name.as_str() {
        "qwen3" => Architecture::Qwen3,
        "qwen2" => Architecture::Qwen2,
        "llama" => Architecture::Llama,
        other => bail!(
            "metadata `general.architecture`: `{other}` is not supported (supported: qwen3, qwen2, llama)"
        ),
    };
    Ok((arch_name, architecture))
}

/// Hidden size and attention heads, from `{arch}.*` metadata.
struct AttentionShape {
    hidden_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
}

/// The attention shape; values of a head length other than the keys', and
/// partial rotary embeddings, are refused.
fn attention_shape(file: &GgufFile, k: &impl Fn(&str) -> String) -> Result<AttentionShape> {
    let hidden_size = file.u64(&k("embedding_length"))? as usize;
    let num_attention_heads = file.u64(&k("attention.head_count"))? as usize;
    let num_key_value_heads = file
        .opt_u64(&k("attention.head_count_kv"))?
        .map(|v| v as usize)
        .unwrap_or(num_attention_heads);
    if num_attention_heads == 0 {
        bail!(
            "metadata `{}`: expected a positive integer, got 0",
            k("attention.head_count")
        );
    }
    let head_dim = match file.opt_u64(&k("attention.key_length"))? {
        Some(d) => d as usize,
        None => hidden_size / num_attention_heads,
    };
    if let Some(v) = file.opt_u64(&k("attention.value_length"))? {
        if v as usize != head_dim {
            bail!(
                "metadata `{}` = {v} differs from the key length {head_dim} (not supported)",
                k("attention.value_length")
            );
        }
    }
    if let Some(r) = file.opt_u64(&k("rope.dimension_count"))? {
        if r as usize != head_dim {
            bail!(
                "metadata `{}` = {r}: partial rotary embeddings are not supported (head dim {head_dim})",
                k("rope.dimension_count")
            );
        }
    }
    Ok(AttentionShape {
        hidden_size,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
    })
}

/// `{arch}.rope.scaling.*`; a factor of 1 is no scaling, except for YaRN.
fn rope_scaling(
    file: &GgufFile,
    k: &impl Fn(&str) -> String,
    max_position_embeddings: usize,
) -> Result<RopeScaling> {
    Ok(match file.opt_str(&k("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::None,
        Some(kind) => {
            let factor = file.opt_f64(&k("rope.scaling.factor"))?.unwrap_or(1.0);
            match kind {
                _ if factor == 1.0 && kind != "yarn" => RopeScaling::None,
                "linear" => RopeScaling::Linear { factor },
                "dynamic" => RopeScaling::Dynamic { factor },
                "yarn" => RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: file
                        .opt_u64(&k("rope.scaling.original_context_length"))?
                        .map(|v| v as usize)
                        .unwrap_or(max_position_embeddings),
                    beta_fast: file
                        .opt_f64(&k("rope.scaling.yarn_beta_fast"))?
                        .unwrap_or(32.0),
                    beta_slow: file
                        .opt_f64(&k("rope.scaling.yarn_beta_slow"))?
                        .unwrap_or(1.0),
                    attention_factor: file.opt_f64(&k("rope.scaling.yarn_attn_factor"))?,
                    mscale: None,
                    mscale_all_dim: None,
                    truncate: true,
                },
                other => bail!(
                    "metadata `{}`: `{other}` is not supported (expected none, linear or yarn)",
                    k("rope.scaling.type")
                ),
            }
        }
    })
}

/// The vocabulary size (the embedding's rows) and the feed-forward size
/// (metadata, else the first up projection's rows).
fn vocab_and_ffn_sizes(
    file: &GgufFile,
    k: &impl Fn(&str) -> String,
    hidden_size: usize,
) -> Result<(usize, usize)> {
    let embd = file
        .tensor_info("token_embd.weight")
        .context("missing tensor `token_embd.weight`")?;
    if embd.shape.len() != 2 || embd.shape[1] != hidden_size {
        bail!(
            "tensor `token_embd.weight`: expected shape [vocab, {hidden_size}], found {:?}",
            embd.shape
        );
    }
    let vocab_size = embd.shape[0];
    let intermediate_size = match file.opt_u64(&k("feed_forward_length"))? {
        Some(v) => v as usize,
        None => file
            .tensor_info("blk.0.ffn_up.weight")
            .map(|t| t.shape[0])
            .context(format!("metadata `{}`: missing", k("feed_forward_length")))?,
    };
    Ok((vocab_size, intermediate_size))
}

/// `tokenizer.ggml.{eos,eot}_token_id`, without repeats.
fn eos_token_ids(file: &GgufFile) -> Result<Vec<u32>> {
    let mut eos_token_ids = vec![];
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = file.opt_u64(key)? {
            if !eos_token_ids.contains(&(id as u32)) {
                eos_token_ids.push(id as u32);
            }
        }
    }
    Ok(eos_token_ids)
}

/// Checks every tensor the config needs: present with the right shape.
pub fn problems(file: &GgufFile, cfg: &ModelConfig) -> Vec<String> {
    let mut out = vec![];
    for (hf, shape) in expected_tensors(cfg) {
        let Some(name) = gguf_name(&hf) else {
            out.push(format!("no GGUF name for `{hf}`"));
            continue;
        };
        match file.tensor_info(&name) {
            None => out.push(format!("missing tensor `{name}`")),
            Some(t) if t.shape != shape => out.push(format!(
                "tensor `{name}`: expected shape {shape:?}, found {:?}",
                t.shape
            )),
            Some(_) => {}
        }
    }
    out
}

/// Weights from a GGUF file.
pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
    dtype: DType,
    device: Device,
    /// Dequantize every projection to a dense float matrix (reference runs).
    dequantize: bool,
    /// The file mapped for tensors used in place (CPU; `load::mapped`).
    region: Option<Region>,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a GgufFile, dtype: DType, device: &Device) -> Self {
        let region = if device.is_cpu() && mapped::enabled() {
            Region::map(file.handle())
        } else {
            None
        };
        Self {
            file,
            dtype,
            device: device.clone(),
            dequantize: false,
            region,
        }
    }

    /// The mapping the tensors use in place, to be moved into memory of
    /// their own (`Region::settle`) once the model is built.
    pub fn take_region(&mut self) -> Option<Region> {
        self.region.take()
    }

    /// Every projection dequantized to a dense matrix in the compute dtype:
    /// the float model transformers builds from the same file.
    pub fn dequantized(mut self) -> Self {
        self.dequantize = true;
        self
    }

    /// The GGUF tensor behind a Hugging Face name; a tied model's output
    /// projection is the embedding, as in llama.cpp.
    fn resolve(&self, hf: &str) -> Result<String> {
        let g = self.name(hf)?;
        if g == "output.weight" && !self.file.has_tensor(&g) {
            return Ok("token_embd.weight".into());
        }
        Ok(g)
    }

    fn name(&self, hf: &str) -> Result<String> {
        gguf_name(hf).with_context(|| format!("no GGUF tensor corresponds to `{hf}`"))
    }

    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let info = self
            .file
            .tensor_info(name)
            .with_context(|| format!("{}: missing tensor `{name}`", self.file.path.display()))?;
        if info.shape != shape {
            bail!(
                "{}: tensor `{name}`: expected shape {shape:?}, found {:?}",
                self.file.path.display(),
                info.shape
            );
        }
        Ok(())
    }
}

impl GgufSource<'_> {
    /// A float tensor as stored: on the CPU used in place from the mapping
    /// (`load::mapped`), else copied out of it by every thread of the pool
    /// at once (`load::copy`).
    fn float_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        if !self.device.is_cpu() {
            return self.file.float_tensor(name, &self.device);
        }
        if let Some(t) = self.in_place(name, |r, at, bytes, info| {
            let shape = info.shape.as_slice();
            // SAFETY: floats are plain data.
            let t = unsafe {
                match info.dtype {
                    GgmlDType::F32 => {
                        Tensor::from_vec(r.vec::<f32>(at, bytes)?, shape, &Device::Cpu)
                    }
                    GgmlDType::F16 => {
                        Tensor::from_vec(r.vec::<half::f16>(at, bytes)?, shape, &Device::Cpu)
                    }
                    GgmlDType::BF16 => {
                        Tensor::from_vec(r.vec::<half::bf16>(at, bytes)?, shape, &Device::Cpu)
                    }
                    _ => return None,
                }
            };
            t.ok()
        }) {
            return Ok(Some(t));
        }
        self.file.float_tensor_with(name, |bytes, dtype, shape| {
            super::copy::float_tensor(bytes, dtype, shape)
        })
    }

    /// A quantized tensor: on the CPU used in place from the mapping, else
    /// read out of the file.
    fn qtensor(&self, name: &str) -> Result<QTensor> {
        if self.device.is_cpu() {
            if let Some(q) = self.in_place(name, mapped_qtensor) {
                return Ok(q);
            }
        }
        self.file.qtensor(name, &self.device)
    }

    /// `make(region, offset in the file, bytes, info)` for a tensor the
    /// mapping holds; None without a mapping or where `make` declines.
    fn in_place<T>(
        &self,
        name: &str,
        make: impl FnOnce(&Region, usize, usize, &GgufTensor) -> Option<T>,
    ) -> Option<T> {
        let region = self.region.as_ref()?;
        let info = self.file.tensor_info(name)?;
        let at = usize::try_from(self.file.data_offset.checked_add(info.offset)?).ok()?;
        make(region, at, usize::try_from(info.size).ok()?, info)
    }
}

/// A quantized tensor whose blocks are the mapping's bytes (what candle's
/// `qtensor_from_ggml` builds by copying them).
fn mapped_qtensor(r: &Region, at: usize, bytes: usize, info: &GgufTensor) -> Option<QTensor> {
    use candle_core::quantized::{k_quants as k, QStorage};
    let block = info.dtype.block_size();
    let elems: usize = info.shape.iter().product();
    if !elems.is_multiple_of(block) {
        return None;
    }
    let need = elems / block * info.dtype.type_size();
    if need > bytes {
        return None;
    }
    fn boxed<B: k::GgmlType + Send + Sync + 'static>(
        r: &Region,
        at: usize,
        need: usize,
    ) -> Option<QStorage> {
        // SAFETY: ggml blocks are plain data (f16 scales, byte arrays).
        Some(QStorage::Cpu(Box::new(unsafe { r.vec::<B>(at, need)? })))
    }
    let storage = match info.dtype {
        GgmlDType::Q4_0 => boxed::<k::BlockQ4_0>(r, at, need)?,
        GgmlDType::Q4_1 => boxed::<k::BlockQ4_1>(r, at, need)?,
        GgmlDType::Q5_0 => boxed::<k::BlockQ5_0>(r, at, need)?,
        GgmlDType::Q5_1 => boxed::<k::BlockQ5_1>(r, at, need)?,
        GgmlDType::Q8_0 => boxed::<k::BlockQ8_0>(r, at, need)?,
        GgmlDType::Q2K => boxed::<k::BlockQ2K>(r, at, need)?,
        GgmlDType::Q3K => boxed::<k::BlockQ3K>(r, at, need)?,
        GgmlDType::Q4K => boxed::<k::BlockQ4K>(r, at, need)?,
        GgmlDType::Q5K => boxed::<k::BlockQ5K>(r, at, need)?,
        GgmlDType::Q6K => boxed::<k::BlockQ6K>(r, at, need)?,
        _ => return None,
    };
    QTensor::new(storage, info.shape.as_slice()).ok()
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let g = self.resolve(name)?;
        self.check_shape(&g, shape)?;
        let t = match self.float_tensor(&g)? {
            Some(t) => t,
            None => self.qtensor(&g)?.dequantize(&self.device)?,
        };
        Ok(t.to_dtype(self.dtype)?)
    }

    fn embedding(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.weight(name, shape)
    }

    fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        if self.dequantize {
            return Ok(Weight::Dense(self.tensor(name, shape)?));
        }
        // Tied output: llama.cpp multiplies by the (quantized) embedding.
        let g = self.resolve(name)?;
        self.check_shape(&g, shape)?;
        match self.float_tensor(&g)? {
            Some(t) => Weight::from_float(t, self.dtype),
            None => Weight::from_qtensor(self.qtensor(&g)?, self.dtype),
        }
    }

    fn contains(&self, name: &str) -> bool {
        if name == "lm_head.weight" {
            // Tied (no output.weight): the model multiplies by the embedding
            // table it already holds, quantized as stored (as llama.cpp does).
            return self.file.has_tensor("output.weight");
        }
        gguf_name(name).is_some_and(|g| self.file.has_tensor(&g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::{write_file, MetaValue};

    /// Every tensor type a GGUF holds is used in place from the mapping
    /// (its data inside the mapped region) and holds exactly the values the
    /// copying reader gives, in a file whose tensors sit at offsets that are
    /// not multiples of a page.
    #[test]
    fn tensors_are_used_in_place_and_equal_the_copied_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let values = |rows: usize, cols: usize| {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
        };
        let types = [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        let tensors: Vec<(String, QTensor)> = types
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let q = QTensor::quantize(&values(3 + i % 2, 256), t).unwrap();
                (format!("t{i}"), q)
            })
            .collect();
        let meta = [(
            "general.architecture".to_string(),
            MetaValue::String("qwen3".into()),
        )];
        write_file(&path, &meta, &tensors).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let src = GgufSource::new(&file, DType::F32, &Device::Cpu);
        let region = src.region.as_ref();
        if cfg!(all(target_os = "linux", target_env = "gnu")) && mapped::enabled() {
            assert!(region.is_some(), "the file is mapped");
        }
        for (i, &t) in types.iter().enumerate() {
            let name = format!("t{i}");
            let copied = file.qtensor(&name, &Device::Cpu).unwrap();
            let (addr, bytes) = match src.float_tensor(&name).unwrap() {
                Some(f) => {
                    let (addr, _) = crate::ops::matmul::dense_rows(&f, |r| Some(r.span()))
                        .expect("a CPU float tensor");
                    let stored = f.flatten_all().unwrap();
                    let want = copied
                        .dequantize(&Device::Cpu)
                        .unwrap()
                        .flatten_all()
                        .unwrap();
                    let (a, b): (Vec<f32>, Vec<f32>) = (
                        stored.to_dtype(DType::F32).unwrap().to_vec1().unwrap(),
                        want.to_vec1().unwrap(),
                    );
                    assert_eq!(a, b, "{name} {t:?}");
                    (addr, copied.data().unwrap().to_vec())
                }
                None => {
                    let q = src.qtensor(&name).unwrap();
                    assert_eq!(q.dtype(), t);
                    assert_eq!(q.shape(), copied.shape());
                    let data = q.data().unwrap();
                    assert_eq!(data[..], copied.data().unwrap()[..], "{name} {t:?}");
                    (data.as_ptr() as usize, data.to_vec())
                }
            };
            if let Some(r) = region {
                assert!(r.holds(addr, bytes.len()), "{name} {t:?} is used in place");
            }
        }
    }
}
