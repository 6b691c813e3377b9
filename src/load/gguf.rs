//! GGUF models: metadata → `ModelConfig`, the tensor check, and a
//! `WeightSource` that keeps projections quantized.
//!
//! Names: the model asks for Hugging Face names (`model.layers.3.mlp.up_proj`)
//! and `formats::gguf::gguf_name` maps them to llama.cpp's (`blk.3.ffn_up`).

use crate::formats::gguf::{gguf_name, GgufFile};
use crate::model::config::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use crate::model::weights::{expected_tensors, Weight, WeightSource};
use anyhow::{bail, Context, Result};
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
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a GgufFile, dtype: DType, device: &Device) -> Self {
        Self {
            file,
            dtype,
            device: device.clone(),
            dequantize: false,
        }
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
    /// A float tensor as stored, copied out of the mapping by every thread
    /// of the pool at once on the CPU (`load::copy`).
    fn float_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        if !self.device.is_cpu() {
            return self.file.float_tensor(name, &self.device);
        }
        self.file.float_tensor_with(name, |bytes, dtype, shape| {
            super::copy::float_tensor(bytes, dtype, shape)
        })
    }
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let g = self.resolve(name)?;
        self.check_shape(&g, shape)?;
        let t = match self.float_tensor(&g)? {
            Some(t) => t,
            None => self
                .file
                .qtensor(&g, &self.device)?
                .dequantize(&self.device)?,
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
            None => Weight::from_qtensor(self.file.qtensor(&g, &self.device)?, self.dtype),
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
