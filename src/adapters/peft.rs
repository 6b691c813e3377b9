//! PEFT LoRA adapters as `save_pretrained` writes them: a directory with
//! `adapter_config.json` and `adapter_model.safetensors`, checked against a
//! base model's config before anything runs.
//!
//! Supported: `r`, `lora_alpha`, `target_modules` (a list of names, a regex
//! string, or "all-linear"), `use_rslora`, `fan_in_fan_out` (PEFT itself
//! resets it to false for `nn.Linear`, and the stored A/B do not depend on
//! it), `bias: "none"`; `lora_dropout` is a training setting and ignored.
//! Refused, each with one line saying which: DoRA, `modules_to_save`,
//! embedding or lm_head targets, a bias, rank/alpha patterns.

use crate::formats::json::{kind, read_object};
use crate::model::lora::{Lora, LoraPair};
use crate::model::weights::{expected_tensors, PROJECTIONS};
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Which modules an adapter says it targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Module names; a module matches when its name is one of them or ends in ".{name}".
    Names(Vec<String>),
    /// A regular expression the whole module name must match (Python's `re.fullmatch`).
    Regex(String),
    /// Every linear layer but the output layer: the seven projections.
    AllLinear,
}

impl Targets {
    fn matches(&self, module: &str, re: Option<&regex::Regex>) -> bool {
        match self {
            Targets::Names(names) => names
                .iter()
                .any(|n| module == n || module.ends_with(&format!(".{n}"))),
            Targets::Regex(_) => re.is_some_and(|r| r.is_match(module)),
            Targets::AllLinear => PROJECTIONS
                .iter()
                .any(|p| module.ends_with(&format!(".{p}"))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Targets::Names(n) => n.join(", "),
            Targets::Regex(r) => format!("regex {r}"),
            Targets::AllLinear => "all-linear".into(),
        }
    }
}

/// `adapter_config.json`, the parts inference needs.
#[derive(Debug, Clone)]
pub struct PeftConfig {
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub targets: Targets,
    pub base_model: Option<String>,
}

impl PeftConfig {
    /// PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let obj = read_object(path)?;
        Self::from_object(&obj).with_context(|| path.display().to_string())
    }

    pub fn from_object(obj: &Map<String, Value>) -> Result<Self> {
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        if let Some(t) = get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                bail!(
                    "peft_type: expected \"LORA\", got \"{t}\" (only LoRA adapters are supported)"
                );
            }
        }
        if get("use_dora").and_then(Value::as_bool) == Some(true) {
            bail!("use_dora: DoRA adapters are not supported (only plain LoRA)");
        }
        if let Some(m) = get("modules_to_save") {
            if m.as_array().is_none_or(|a| !a.is_empty()) {
                bail!("modules_to_save: fully trained modules ({m}) are not supported (only LoRA pairs)");
            }
        }
        match get("bias").map(|b| b.as_str()) {
            None | Some(Some("none")) => {}
            Some(Some(b)) => {
                bail!("bias: expected \"none\", got \"{b}\" (trained biases are not supported)")
            }
            Some(None) => bail!("bias: expected the string \"none\""),
        }
        if get("lora_bias").and_then(Value::as_bool) == Some(true) {
            bail!("lora_bias: a bias on lora_B is not supported");
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if get(k)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                bail!("{k}: per-module ranks or alphas are not supported (one r and lora_alpha for all)");
            }
        }
        let r = match get("r").and_then(Value::as_u64) {
            Some(r) if r > 0 => r as usize,
            _ => bail!(
                "r: expected a positive integer, got {}",
                get("r").map_or("nothing".into(), |v| v.to_string())
            ),
        };
        let alpha = match get("lora_alpha").and_then(Value::as_f64) {
            Some(a) if a.is_finite() => a,
            _ => bail!(
                "lora_alpha: expected a number, got {}",
                get("lora_alpha").map_or("nothing".into(), |v| v.to_string())
            ),
        };
        let use_rslora = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let targets = match get("target_modules") {
            Some(Value::String(s)) if s == "all-linear" => Targets::AllLinear,
            Some(Value::String(s)) => Targets::Regex(s.clone()),
            Some(Value::Array(a)) => {
                let names = a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .context("target_modules: expected a list of module names")?;
                Targets::Names(names)
            }
            Some(v) => bail!(
                "target_modules: expected a list of names, a regex string or \"all-linear\", got {}",
                kind(v)
            ),
            None => bail!("target_modules: missing"),
        };
        if let Targets::Names(names) = &targets {
            for n in names {
                let last = n.rsplit('.').next().unwrap_or(n);
                if matches!(last, "embed_tokens" | "lm_head") {
                    bail!("target_modules: {n}: embedding and lm_head targets are not supported (only q/k/v/o/gate/up/down_proj)");
                }
            }
        }
        Ok(Self {
            r,
            alpha,
            use_rslora,
            targets,
            base_model: get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// What `inspect --adapter` and the loader report about one adapter.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    pub name: String,
    pub path: PathBuf,
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    /// PEFT's scaling times `--adapter-scale`.
    pub scale: f64,
    pub target_modules: String,
    /// Projection names with how many layers each adapts.
    pub modules: BTreeMap<String, usize>,
    pub layers: usize,
    pub parameters: usize,
    /// Storage dtype(s) of the A/B tensors.
    pub dtype: String,
    pub bytes: u64,
}

/// A loaded adapter: its pairs (for the model) and its description.
pub struct LoadedAdapter {
    pub lora: Lora,
    pub info: AdapterInfo,
}

/// A tensor with its name in the file, once seen.
type Named = Option<(String, Tensor)>;

/// A tensor name of the file, split: (module, "A" | "B").
fn split_name(name: &str) -> Result<(String, char)> {
    let short = name.strip_prefix("base_model.model.").unwrap_or(name);
    if short.contains("lora_magnitude_vector") {
        bail!("{name}: DoRA magnitude vectors are not supported (only plain LoRA)");
    }
    if short.contains("lora_embedding_") {
        bail!("{name}: embedding targets are not supported (only q/k/v/o/gate/up/down_proj)");
    }
    for (suffix, which) in [(".lora_A.weight", 'A'), (".lora_B.weight", 'B')] {
        if let Some(module) = short.strip_suffix(suffix) {
            return Ok((module.to_string(), which));
        }
    }
    if short.ends_with(".bias") && short.contains(".lora_") {
        bail!("{name}: LoRA biases are not supported (bias must be \"none\")");
    }
    bail!("{name}: not a LoRA A/B weight (modules_to_save and other trained tensors are not supported)")
}

/// Loads the adapter in `dir` for a base with config `cfg`, in `dtype` on
/// `device`, its scale multiplied by `scale`. Every mismatch with the base
/// is one error naming the tensor and both shapes.
pub fn load(
    name: &str,
    dir: &Path,
    cfg: &ModelConfig,
    dtype: DType,
    device: &Device,
    scale: f64,
) -> Result<LoadedAdapter> {
    if !dir.is_dir() {
        bail!(
            "{}: not a directory (expected a PEFT adapter: {CONFIG_FILE} + {WEIGHTS_FILE})",
            dir.display()
        );
    }
    let config = PeftConfig::read(&dir.join(CONFIG_FILE))?;
    let file = dir.join(WEIGHTS_FILE);
    let fname = file.display().to_string();
    if !file.is_file() {
        bail!("{fname}: missing (PEFT writes the adapter weights there)");
    }
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("{fname}: cannot read"))?;
    let re = match &config.targets {
        Targets::Regex(r) => Some(regex::Regex::new(&format!("^(?:{r})$")).with_context(|| {
            format!(
                "{}: target_modules: invalid regex",
                dir.join(CONFIG_FILE).display()
            )
        })?),
        _ => None,
    };
    let shapes: HashMap<String, Vec<usize>> = expected_tensors(cfg).into_iter().collect();
    let prefix = "model.layers.";
    // module → (A, B)
    let mut pairs: BTreeMap<String, (Named, Named)> = BTreeMap::new();
    let mut dtypes = BTreeSet::new();
    for (tname, t) in tensors {
        let (module, which) = split_name(&tname).with_context(|| fname.clone())?;
        let last = module.rsplit('.').next().unwrap_or("");
        if matches!(last, "embed_tokens" | "lm_head") {
            bail!("{fname}: {tname}: embedding and lm_head targets are not supported (only q/k/v/o/gate/up/down_proj)");
        }
        if !config.targets.matches(&module, re.as_ref()) {
            bail!(
                "{fname}: {tname}: module {module} is not among target_modules ({})",
                config.targets.describe()
            );
        }
        dtypes.insert(format!("{:?}", t.dtype()).to_lowercase());
        let e = pairs.entry(module).or_default();
        if which == 'A' {
            e.0 = Some((tname, t));
        } else {
            e.1 = Some((tname, t));
        }
    }
    if pairs.is_empty() {
        bail!("{fname}: no LoRA tensors (lora_A / lora_B weights) found");
    }
    let layers = cfg.num_hidden_layers;
    let mut lora = Lora::new(name, layers);
    let mut modules: BTreeMap<String, usize> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    let scale_total = config.scale() * scale;
    for (module, (a, b)) in pairs {
        let (Some((an, a)), Some((bn, b))) = (a, b) else {
            bail!("{fname}: module {module} has only one of lora_A / lora_B");
        };
        let base_name = format!("{module}.weight");
        let unknown = || {
            anyhow::anyhow!(
                "{fname}: {an}: module {module} is not a projection of this base ({layers} layers; targets are q/k/v/o/gate/up/down_proj)"
            )
        };
        let rest = module.strip_prefix(prefix).ok_or_else(unknown)?;
        let (layer, _) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let proj_name = module.rsplit('.').next().unwrap_or("");
        let proj = PROJECTIONS
            .iter()
            .position(|p| *p == proj_name)
            .ok_or_else(unknown)?;
        let base = shapes.get(&base_name).ok_or_else(unknown)?;
        let (out, inp) = (base[0], base[1]);
        let want_a = [config.r, inp];
        let want_b = [out, config.r];
        if a.dims() != want_a {
            bail!(
                "{fname}: {an} has shape {:?}, expected {:?} (r {} × the base {base_name} {:?}'s input)",
                a.dims(),
                want_a,
                config.r,
                base
            );
        }
        if b.dims() != want_b {
            bail!(
                "{fname}: {bn} has shape {:?}, expected {:?} (the base {base_name} {:?}'s output × r {})",
                b.dims(),
                want_b,
                base,
                config.r
            );
        }
        let a = a.to_dtype(dtype)?.to_device(device)?;
        let b = match proj_name {
            // A Llama GGUF keeps llama.cpp's q/k row order (rotary pairs
            // adjacent); the adapter's rows, in Hugging Face order, follow it.
            "q_proj" if cfg.rope.interleaved => gguf_row_order(&b, cfg.num_attention_heads)?,
            "k_proj" if cfg.rope.interleaved => gguf_row_order(&b, cfg.num_key_value_heads)?,
            _ => b,
        };
        let b = b.to_dtype(dtype)?.to_device(device)?;
        lora.set(layer, proj, LoraPair::new(a, b, scale_total));
        *modules.entry(proj_name.to_string()).or_default() += 1;
        touched.insert(layer);
    }
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let info = AdapterInfo {
        name: name.to_string(),
        path: dir.to_path_buf(),
        r: config.r,
        alpha: config.alpha,
        use_rslora: config.use_rslora,
        scale: scale_total,
        target_modules: config.targets.describe(),
        modules,
        layers: touched.len(),
        parameters: lora.parameter_count(),
        dtype: dtypes.into_iter().collect::<Vec<_>>().join("+"),
        bytes,
    };
    Ok(LoadedAdapter { lora, info })
}

/// llama.cpp's `permute` of q/k rows (convert_hf_to_gguf.py): per head, the
/// two halves of the rotary dimensions interleaved.
fn gguf_row_order(b: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, r) = b.dims2()?;
    let half = out / heads / 2;
    Ok(b.reshape((heads, 2, half, r))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, r))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<PeftConfig> {
        PeftConfig::from_object(v.as_object().unwrap())
    }

    #[test]
    fn gguf_row_order_interleaves_the_halves_of_each_head() {
        // 2 heads of 4 rows: [0 1 2 3 | 4 5 6 7] → [0 2 1 3 | 4 6 5 7]
        let b = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p = gguf_row_order(&b, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn scale_is_alpha_over_r_or_sqrt_r() {
        let c = cfg(json!({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})).unwrap();
        assert_eq!(c.scale(), 2.0);
        let c = cfg(
            json!({"r": 4, "lora_alpha": 8, "use_rslora": true, "target_modules": "all-linear"}),
        )
        .unwrap();
        assert_eq!(c.scale(), 4.0);
        assert_eq!(c.targets, Targets::AllLinear);
    }

    #[test]
    fn refusals_say_which() {
        let base = json!({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]});
        let with = |k: &str, v: Value| {
            let mut o = base.clone();
            o[k] = v;
            format!("{:#}", cfg(o).unwrap_err())
        };
        assert!(with("use_dora", json!(true)).contains("DoRA"));
        assert!(with("modules_to_save", json!(["lm_head"])).contains("modules_to_save"));
        assert!(with("bias", json!("all")).contains("bias: expected \"none\""));
        assert!(with("target_modules", json!(["q_proj", "embed_tokens"])).contains("embedding"));
        assert!(with("rank_pattern", json!({"q_proj": 4})).contains("rank_pattern"));
        assert!(with("r", json!(0)).contains("r: expected a positive integer"));
        assert!(with("peft_type", json!("IA3")).contains("peft_type"));
        // Accepted and ignored at inference.
        let mut o = base.clone();
        o["lora_dropout"] = json!(0.1);
        o["fan_in_fan_out"] = json!(true);
        o["modules_to_save"] = Value::Null;
        assert!(cfg(o).is_ok());
    }

    #[test]
    fn target_matching_follows_peft() {
        let names = Targets::Names(vec!["q_proj".into(), "mlp.down_proj".into()]);
        assert!(names.matches("model.layers.0.self_attn.q_proj", None));
        assert!(names.matches("model.layers.3.mlp.down_proj", None));
        assert!(!names.matches("model.layers.0.self_attn.k_proj", None));
        let re = regex::Regex::new(r"^(?:.*\.1\.self_attn\.q_proj)$").unwrap();
        let t = Targets::Regex(String::new());
        assert!(t.matches("model.layers.1.self_attn.q_proj", Some(&re)));
        assert!(!t.matches("model.layers.11.self_attn.q_proj.x", Some(&re)));
        assert!(Targets::AllLinear.matches("model.layers.0.mlp.up_proj", None));
        assert!(!Targets::AllLinear.matches("lm_head", None));
    }

    #[test]
    fn tensor_names_split_into_module_and_side() {
        let (m, s) =
            split_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
        assert_eq!((m.as_str(), s), ("model.layers.0.self_attn.q_proj", 'A'));
        assert!(split_name(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
        )
        .unwrap_err()
        .to_string()
        .contains("DoRA"));
        assert!(split_name("base_model.model.lm_head.weight")
            .unwrap_err()
            .to_string()
            .contains("modules_to_save"));
    }
}
