//! Where tensors come from, and the check that they fit the config before
//! anything runs.
//!
//! The model asks a `WeightSource` for tensors by their Hugging Face names
//! (`model.layers.3.self_attn.q_proj`), so the forward pass is the same for a
//! safetensors directory and a GGUF file.

use super::config::ModelConfig;
use super::layers::Projection;
use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub trait WeightSource {
    /// A float tensor (embedding, norm) by its full name, in the compute dtype.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A projection `name.weight` of shape (out, inp), with `name.bias` when
    /// `bias` is set.
    fn projection(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Projection>;
    fn contains(&self, name: &str) -> bool;
}

/// The 2-D weights every layer has that LoRA may adapt (norms excluded).
pub const LORA_TARGETS: [&str; 7] = [
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

pub struct SafetensorsSource {
    st: MmapedSafetensors,
    /// tensor name -> file it lives in (for messages and `inspect`).
    files: HashMap<String, PathBuf>,
    dtype: DType,
    device: Device,
}

/// The safetensors files of a Hugging Face directory: `model.safetensors`, or
/// the shards listed in `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| {
                format!(
                    "{}: field `weight_map`: expected an object of tensor name -> file",
                    index.display()
                )
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().with_context(|| {
                format!(
                    "{}: field `weight_map.{name}`: expected a file name",
                    index.display()
                )
            })?;
            let p = dir.join(f);
            if !files.contains(&p) {
                if !p.is_file() {
                    bail!(
                        "{}: shard `{f}` (holding `{name}`) does not exist",
                        index.display()
                    );
                }
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json found",
        dir.display()
    )
}

impl SafetensorsSource {
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let paths = safetensors_files(dir)?;
        let mut files = HashMap::new();
        for p in &paths {
            // SAFETY: the files are memory-mapped read-only; like every
            // safetensors reader we rely on them not being truncated while open.
            let one = unsafe { MmapedSafetensors::new(p) }
                .with_context(|| format!("{}: not a valid safetensors file", p.display()))?;
            for (name, _) in one.tensors() {
                files.insert(name, p.clone());
            }
        }
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::multi(&paths) }
            .with_context(|| format!("{}: cannot map the safetensors files", dir.display()))?;
        Ok(Self {
            st,
            files,
            dtype,
            device: device.clone(),
        })
    }

    /// Checks every tensor the config needs: present, right shape, a float
    /// dtype we can load.
    pub fn validate(&self, cfg: &ModelConfig) -> Validation {
        let mut tensors: Vec<TensorInfo> = self
            .st
            .tensors()
            .into_iter()
            .map(|(name, view)| TensorInfo {
                file: self.file_name(&name),
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
                name,
            })
            .collect();
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
        let wanted: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
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

    fn file_name(&self, name: &str) -> String {
        self.files
            .get(name)
            .and_then(|p| p.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .st
            .load(name, &self.device)
            .with_context(|| format!("missing tensor `{name}`"))?;
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}`: expected shape {shape:?}, found {:?}",
                self.file_name(name),
                t.dims()
            );
        }
        Ok(t.to_dtype(self.dtype)?)
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape)
    }

    fn projection(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Projection> {
        let w = self.load(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.load(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Projection::dense(w, b))
    }

    fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }
}

/// Sort key that orders `layers.10` after `layers.9`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}
