//! Model hyper-parameters: every config.json field that changes the math.
//!
//! `ModelConfig` is architecture-neutral (Qwen3, Qwen2 and Llama differ only in
//! q/k norms, attention bias and the rotary layout), so the forward pass in
//! `transformer.rs` reads one struct whether the weights came from a Hugging
//! Face directory or a GGUF file.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// How rotary frequencies are stretched beyond the trained context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Dynamic NTK: the base grows with the sequence length once it exceeds
    /// `max_position_embeddings` (transformers' `_compute_dynamic_ntk_parameters`).
    Dynamic {
        factor: f64,
    },
    /// YaRN as transformers computes it (`_compute_yarn_parameters`).
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        /// Multiplies cos/sin; `None` means 0.1·ln(factor)+1.
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// GPT-J style pairs (x0,x1),(x2,x3)… instead of NeoX halves. llama.cpp's
    /// converter permutes Llama q/k rows so that this layout is right for them.
    pub interleaved: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Qwen3,
    Qwen2,
    Llama,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen2 => "qwen2",
            Architecture::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head width. Not hidden/heads in Qwen3 (128 vs 64 for Qwen3-0.6B).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always, Qwen3/Llama when configured).
    pub attention_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = crate::formats::json::read_value(path)?;
        Self::from_json(&value).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .context("expected a JSON object at the top level")?;
        let f = Fields(obj);
        let model_type = f.str("model_type")?;
        let architecture = match model_type.as_str() {
            "qwen3" => Architecture::Qwen3,
            other => bail!(
                "field `model_type`: `{other}` is not supported for safetensors directories \
                 (supported: qwen3; GGUF files also take qwen2 and llama)"
            ),
        };
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads.max(1),
        };
        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                bail!("field `hidden_act`: `{act}` is not implemented (expected `silu`)");
            }
        }
        if f.opt_bool("use_sliding_window")?.unwrap_or(false) {
            bail!("field `use_sliding_window`: sliding-window attention is not implemented (expected false)");
        }
        let (theta, scaling) = parse_rope(obj)?;
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32))
                .collect::<Option<Vec<_>>>()
                .context("field `eos_token_id`: expected an integer or a list of integers")?,
            Some(v) => vec![v
                .as_u64()
                .context("field `eos_token_id`: expected an integer or a list of integers")?
                as u32],
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope: RopeConfig {
                theta,
                scaling,
                interleaved: false,
            },
            max_position_embeddings,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: f.opt_bool("attention_bias")?.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: f.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between dimensions that the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("field `{name}`: expected a positive integer, got 0");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "field `num_key_value_heads`: {} does not divide num_attention_heads {}",
                self.num_key_value_heads,
                self.num_attention_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "field `head_dim`: expected an even number for rotary embeddings, got {}",
                self.head_dim
            );
        }
        if self.rope.theta.is_nan() || self.rope.theta <= 0.0 {
            bail!(
                "field `rope_theta`: expected a positive number, got {}",
                self.rope.theta
            );
        }
        Ok(())
    }

    /// The longest sequence the model accepts. Dynamic NTK exists to run past
    /// max_position_embeddings and, as in transformers, sets no bound; YaRN
    /// stretches the original context by its factor (Qwen3: 32768 × 4).
    pub fn context_length(&self) -> usize {
        match self.rope.scaling {
            RopeScaling::Dynamic { .. } => usize::MAX,
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => self
                .max_position_embeddings
                .max((original_max_position_embeddings as f64 * factor) as usize),
            _ => self.max_position_embeddings,
        }
    }

    /// Parameters of the network (embedding + layers + norm + untied lm_head).
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let norms = 2 * h + if self.qk_norm { 2 * self.head_dim } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * self.intermediate_size;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers * (attn + mlp + norms) + h + head
    }
}

/// Reads `rope_theta` + `rope_scaling` (transformers 4.x layout) or
/// `rope_parameters` (transformers 5 layout).
fn parse_rope(obj: &Map<String, Value>) -> Result<(f64, RopeScaling)> {
    let params = obj.get("rope_parameters").filter(|v| !v.is_null());
    let scaling = obj.get("rope_scaling").filter(|v| !v.is_null()).or(params);
    let theta = match obj.get("rope_theta") {
        Some(v) if !v.is_null() => v
            .as_f64()
            .context("field `rope_theta`: expected a number")?,
        _ => params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0),
    };
    let Some(scaling) = scaling else {
        return Ok((theta, RopeScaling::None));
    };
    let s = scaling
        .as_object()
        .context("field `rope_scaling`: expected an object or null")?;
    let f = Fields(s);
    let kind = match f.opt_str("rope_type")? {
        Some(t) => t,
        None => f.opt_str("type")?.unwrap_or_else(|| "default".into()),
    };
    if let Some(p) = f.opt_f64("partial_rotary_factor")? {
        if p != 1.0 {
            bail!("field `rope_scaling.partial_rotary_factor`: only 1.0 is implemented, got {p}");
        }
    }
    let factor = |name: &str| -> Result<f64> {
        let v = f
            .f64("factor")
            .map_err(|e| anyhow::anyhow!("rope_scaling: {e}"))?;
        if v.is_nan() || v < 1.0 {
            bail!("field `rope_scaling.factor`: expected a number >= 1 for `{name}`, got {v}");
        }
        Ok(v)
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor("linear")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor("dynamic")?,
        },
        "yarn" => {
            let factor = factor("yarn")?;
            let max_pos = obj
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .context("field `max_position_embeddings`: expected a positive integer")?
                as usize;
            // transformers 5 uses the explicit factor; 4.5x replaced it with
            // max_position_embeddings / original, which turns Qwen3's
            // recommended {factor 4, original 32768} into 1.25.
            let original = f
                .opt_usize("original_max_position_embeddings")?
                .filter(|&o| o > 0)
                .unwrap_or(max_pos);
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: f.opt_f64("beta_fast")?.unwrap_or(32.0),
                beta_slow: f.opt_f64("beta_slow")?.unwrap_or(1.0),
                attention_factor: f.opt_f64("attention_factor")?,
                mscale: f.opt_f64("mscale")?,
                mscale_all_dim: f.opt_f64("mscale_all_dim")?,
                truncate: f.opt_bool("truncate")?.unwrap_or(true),
            }
        }
        other => bail!(
            "field `rope_scaling.rope_type`: `{other}` is not implemented \
             (expected one of: default, linear, dynamic, yarn)"
        ),
    };
    Ok((theta, scaling))
}

/// Typed access to JSON fields with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .with_context(|| format!("field `{k}`: missing (expected a positive integer)"))
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .with_context(|| format!("field `{k}`: expected a non-negative integer, got {v}")),
        }
    }
    fn f64(&self, k: &str) -> Result<f64> {
        self.opt_f64(k)?
            .with_context(|| format!("field `{k}`: missing (expected a number)"))
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .with_context(|| format!("field `{k}`: expected a number, got {v}")),
        }
    }
    fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .with_context(|| format!("field `{k}`: expected true or false, got {v}")),
        }
    }
    fn str(&self, k: &str) -> Result<String> {
        self.opt_str(k)?
            .with_context(|| format!("field `{k}`: missing (expected a string)"))
    }
    fn opt_str(&self, k: &str) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .with_context(|| format!("field `{k}`: expected a string, got {v}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3_0_6b() -> Value {
        let p = crate::test_fixtures::qwen3_0_6b_dir().join("config.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn parses_qwen3_0_6b() {
        let c = ModelConfig::from_json(&qwen3_0_6b()).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.hidden_size / c.num_attention_heads, 64);
        assert_eq!(c.num_key_value_heads, 8);
        assert!(c.tie_word_embeddings && c.qk_norm);
        assert_eq!(c.rope.theta, 1_000_000.0);
        assert_eq!(c.rope.scaling, RopeScaling::None);
        assert_eq!(c.eos_token_ids, vec![151645]);
        // Qwen3-0.6B: 596M parameters without the tied head, 440M without embeddings.
        assert_eq!(c.parameter_count(), 596_049_920);
    }

    #[test]
    fn refuses_sliding_window_and_unknown_rope() {
        let mut v = qwen3_0_6b();
        v["use_sliding_window"] = Value::Bool(true);
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
        let mut v = qwen3_0_6b();
        v["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 2.0});
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("longrope"), "{e}");
    }

    #[test]
    fn yarn_factor_follows_transformers() {
        // Qwen3's model-card recipe: max_position_embeddings stays 40960.
        let mut v = qwen3_0_6b();
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 32768});
        let c = ModelConfig::from_json(&v).unwrap();
        match c.rope.scaling {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => {
                assert_eq!(factor, 4.0);
                assert_eq!(original_max_position_embeddings, 32768);
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(c.context_length(), 131072);
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = qwen3_0_6b();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("`hidden_size`"), "{e}");
    }
}
