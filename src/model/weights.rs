//! What the model asks of its weights, and the check that a checkpoint fits
//! the config before anything runs.
//!
//! The model asks a [`WeightSource`] for tensors by their Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`), so the forward pass is the same
//! for a safetensors directory, a GGUF file and quantize-at-load. Sources
//! return plain weights; the model builds its layers from them.

use super::config::ModelConfig;
use anyhow::Result;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// A projection's weight matrix (out, in) as a source provides it.
pub enum Weight {
    /// Float: in the compute dtype, or bf16/f16 as stored (see [`held_dtype`]).
    Dense(Tensor),
    /// Kept quantized in memory.
    Quantized(QTensor),
}

/// The dtype a float weight of `stored` dtype is held in for `compute`.
///
/// On the CPU with f32 compute, bf16 and f16 weights stay as stored: our
/// kernels (`ops::gemv`, `ops::matmul`) widen them to f32 as they read them,
/// so the results are those of the f32 widening, with half the memory and
/// half the bytes read per token. Everywhere else: the compute dtype.
pub fn held_dtype(stored: DType, compute: DType, device: &candle_core::Device) -> DType {
    let half = matches!(stored, DType::BF16 | DType::F16);
    if device.is_cpu() && half && matches!(compute, DType::F32 | DType::BF16 | DType::F16) {
        stored
    } else {
        compute
    }
}

impl Weight {
    /// A float tensor, in its stored dtype, as a projection weight: held as
    /// [`held_dtype`] says (what `from_qtensor` builds from the same data,
    /// without the detour through a `QTensor`).
    pub fn from_float(t: Tensor, dtype: DType) -> Result<Self> {
        let held = held_dtype(t.dtype(), dtype, t.device());
        Ok(Weight::Dense(t.to_dtype(held)?))
    }

    /// A (possibly quantized) tensor as a projection weight: float types are
    /// dequantized to `dtype`, quantized ones stay quantized. The GGUF and
    /// quantize-at-load sources both use this, so that both build exactly the
    /// same layer from the same `QTensor`.
    ///
    /// candle's CPU dot products for Q4_1, Q5_0 and Q5_1 assert (in debug
    /// builds) an even number of 32-blocks per row; such rare weights (rows of
    /// 32, 96, …) are dequantized instead.
    pub fn from_qtensor(q: QTensor, dtype: DType) -> Result<Self> {
        let cols = q.shape().dims().last().copied().unwrap_or(0);
        let odd_blocks = matches!(
            q.dtype(),
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        ) && (cols / q.dtype().block_size()) % 2 == 1;
        let float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let device = q.device();
        let held = match q.dtype() {
            GgmlDType::BF16 => held_dtype(DType::BF16, dtype, &device),
            GgmlDType::F16 => held_dtype(DType::F16, dtype, &device),
            _ => dtype,
        };
        if float && held != dtype {
            // Kept as stored: the raw bytes are the tensor.
            let data = q.data()?;
            let t = Tensor::from_raw_buffer(&data, held, q.shape().dims(), &device)?;
            Ok(Weight::Dense(t))
        } else if float || odd_blocks {
            Ok(Weight::Dense(q.dequantize(&device)?.to_dtype(dtype)?))
        } else {
            Ok(Weight::Quantized(q))
        }
    }
}

pub trait WeightSource {
    /// A float tensor (embedding, norm, bias) by its full name, in the
    /// compute dtype.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A projection's weight `name` (ending in `.weight`), shape (out, in).
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight>;
    /// The token embedding (vocab, hidden), held like a projection's weight
    /// (bf16 stays bf16 on the CPU; a GGUF's quantized table stays
    /// quantized): a tied lm_head multiplies by it. Default: float, in the
    /// compute dtype.
    fn embedding(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        Ok(Weight::Dense(self.tensor(name, shape)?))
    }
    fn contains(&self, name: &str) -> bool;
}

/// The seven projections of every decoder layer: the matrices that are
/// quantized (`--quantize`, `expert quantize`) and that a LoRA adapter may
/// adapt. Norms, the embedding and biases are never among them.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Every tensor the config implies, with its shape, in checkpoint order.
/// `lm_head.weight` is listed only for untied models.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut push = |n: &str, s: Vec<usize>| out.push((format!("{p}.{n}"), s));
        push("input_layernorm.weight", vec![h]);
        push("self_attn.q_proj.weight", vec![q, h]);
        push("self_attn.k_proj.weight", vec![kv, h]);
        push("self_attn.v_proj.weight", vec![kv, h]);
        if cfg.attention_bias {
            push("self_attn.q_proj.bias", vec![q]);
            push("self_attn.k_proj.bias", vec![kv]);
            push("self_attn.v_proj.bias", vec![kv]);
        }
        push("self_attn.o_proj.weight", vec![h, q]);
        if cfg.qk_norm {
            push("self_attn.q_norm.weight", vec![d]);
            push("self_attn.k_norm.weight", vec![d]);
        }
        push("post_attention_layernorm.weight", vec![h]);
        push("mlp.gate_proj.weight", vec![i, h]);
        push("mlp.up_proj.weight", vec![i, h]);
        push("mlp.down_proj.weight", vec![h, i]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub file: String,
}

/// How the output projection is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LmHead {
    /// Shares the embedding matrix (tie_word_embeddings, no copy stored).
    Tied,
    /// Tied, but the checkpoint also stores a copy, which is used.
    TiedStoredCopy,
    /// A separate lm_head.weight.
    Untied,
}

/// The result of checking a checkpoint against its config.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub tensors: Vec<TensorInfo>,
    pub lm_head: Option<LmHead>,
    /// One line per problem; empty means the checkpoint is usable.
    pub problems: Vec<String>,
    /// Tensors the model does not use (reported, not an error).
    pub unused: Vec<String>,
}

impl Validation {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every tensor the config needs against what a checkpoint holds:
/// present, right shape, a float dtype we can load.
pub fn validate(cfg: &ModelConfig, mut tensors: Vec<TensorInfo>) -> Validation {
    tensors.sort_by_key(|t| natural_key(&t.name));
    let by_name: BTreeMap<&str, &TensorInfo> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = vec![];
    let mut expected = expected_tensors(cfg);
    let has_head = by_name.contains_key("lm_head.weight");
    let lm_head = match (cfg.tie_word_embeddings, has_head) {
        (true, false) => Some(LmHead::Tied),
        (true, true) => {
            expected.push((
                "lm_head.weight".into(),
                vec![cfg.vocab_size, cfg.hidden_size],
            ));
            Some(LmHead::TiedStoredCopy)
        }
        (false, true) => Some(LmHead::Untied),
        (false, false) => None,
    };
    for (name, shape) in &expected {
        match by_name.get(name.as_str()) {
            None if name == "lm_head.weight" => problems.push(
                "missing tensor `lm_head.weight` (tie_word_embeddings is false, so the checkpoint must store it)"
                    .to_string(),
            ),
            None => problems.push(format!("missing tensor `{name}`")),
            Some(t) if &t.shape != shape => problems.push(format!(
                "{}: tensor `{name}`: expected shape {shape:?}, found {:?}",
                t.file, t.shape
            )),
            Some(t) if !matches!(t.dtype.as_str(), "BF16" | "F16" | "F32") => problems.push(format!(
                "{}: tensor `{name}`: dtype {} is not supported (expected BF16, F16 or F32)",
                t.file, t.dtype
            )),
            Some(_) => {}
        }
    }
    let wanted: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unused = tensors
        .iter()
        .filter(|t| !wanted.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    Validation {
        tensors,
        lm_head,
        problems,
        unused,
    }
}

/// Sort key that orders `layers.10` after `layers.9`.
pub fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}
