//! `expert quantize`, offline: a safetensors model → a GGUF file in
//! llama.cpp's layout, projections quantized with the same code as
//! quantize-at-load (`load::quantizing`), the tokenizer written as
//! `tokenizer.ggml.*` metadata.

use crate::formats::gguf::{file_type, gguf_name, write_file, MetaValue};
use crate::load::quantizing::{QuantReport, QuantizingSource};
use crate::model::config::{ModelConfig, RopeScaling};
use crate::model::weights::{expected_tensors, LmHead, WeightSource, PROJECTIONS};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::Path;

/// What `expert quantize` wrote.
#[derive(Debug, Clone)]
pub struct WriteReport {
    pub quant: QuantReport,
    pub tensors: usize,
    pub bytes: u64,
    /// Notes for the user (missing tokenizer, features GGUF cannot express).
    pub notes: Vec<String>,
}

/// Writes `dir` (a Qwen3 safetensors directory) as a GGUF file in llama.cpp's
/// layout, projections quantized to `qtype`.
pub fn write_gguf(dir: &Path, qtype: GgmlDType, out: &Path) -> Result<WriteReport> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let src = QuantizingSource::open(dir, qtype, DType::F32, &Device::Cpu)?;
    let v = src.inner().validate(&config);
    crate::load::check(dir, &v.problems)?;
    let dtypes: BTreeMap<&str, &str> = v
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype.as_str()))
        .collect();
    let mut notes = vec![];
    let mut meta = model_metadata(&config, dir, qtype)?;
    let tokenizer = crate::tokenizer::gguf::tokenizer_metadata(
        dir,
        config.bos_token_id,
        config.eos_token_ids.first().copied(),
        config.vocab_size,
    )?;
    match tokenizer {
        Some(t) => meta.extend(t),
        None => notes.push(format!(
            "{}: no tokenizer.json, so the GGUF has no tokenizer (expert can score ids with it, not chat)",
            dir.display()
        )),
    }

    let mut tensors: Vec<(String, QTensor)> = vec![];
    let h = config.hidden_size;
    for (hf, shape) in expected_tensors(&config) {
        let name = gguf_name(&hf).with_context(|| format!("no GGUF name for `{hf}`"))?;
        let q = if is_projection(&hf) {
            src.quantized(&hf, &shape)?
        } else if hf == "model.embed_tokens.weight" {
            // Stored as it is in the checkpoint: quantize-at-load keeps it in float too.
            let t = match dtypes.get(hf.as_str()).copied() {
                Some("BF16") => GgmlDType::BF16,
                Some("F16") => GgmlDType::F16,
                _ => GgmlDType::F32,
            };
            QTensor::quantize(&src.inner().tensor(&hf, &shape)?, t)?
        } else {
            // Norms (and biases) in f32, as llama.cpp keeps them.
            QTensor::quantize(&src.inner().tensor(&hf, &shape)?, GgmlDType::F32)?
        };
        tensors.push((name, q));
    }
    if v.lm_head == Some(LmHead::TiedStoredCopy) {
        // A tied checkpoint that also stores lm_head.weight: the model uses
        // the stored copy (quantized at load), so the file keeps it too.
        tensors.push((
            "output.weight".into(),
            src.quantized("lm_head.weight", &[config.vocab_size, h])?,
        ));
    }
    if config.rope.scaling != RopeScaling::None {
        if let RopeScaling::Yarn {
            mscale,
            mscale_all_dim,
            truncate,
            ..
        } = config.rope.scaling
        {
            if mscale.is_some() || mscale_all_dim.is_some() || !truncate {
                notes.push("rope_scaling: yarn mscale/mscale_all_dim/truncate have no GGUF keys and were dropped".into());
            }
        }
    }
    let bytes = write_file(out, &meta, &tensors)?;
    Ok(WriteReport {
        quant: src.report(),
        tensors: tensors.len(),
        bytes,
        notes,
    })
}

/// The weights that get quantized: the seven projections and an untied
/// lm_head; not norms, biases or the embedding.
fn is_projection(hf: &str) -> bool {
    let Some(base) = hf.strip_suffix(".weight") else {
        return false;
    };
    base == "lm_head"
        || base
            .rsplit('.')
            .next()
            .is_some_and(|m| PROJECTIONS.contains(&m))
}

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.to_string())
}

fn model_metadata(
    cfg: &ModelConfig,
    dir: &Path,
    qtype: GgmlDType,
) -> Result<Vec<(String, MetaValue)>> {
    let arch = cfg.architecture.name();
    let k = |n: &str| format!("{arch}.{n}");
    let u = |v: usize| MetaValue::U32(v as u32);
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut m = vec![
        ("general.architecture".to_string(), s(arch)),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(&name)),
        ("general.file_type".into(), MetaValue::U32(file_type(qtype))),
        ("general.quantization_version".into(), MetaValue::U32(2)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope.theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_norm_eps as f32),
        ),
        (k("vocab_size"), u(cfg.vocab_size)),
    ];
    match &cfg.rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), s("linear")));
            m.push((k("rope.scaling.factor"), MetaValue::F32(*factor as f32)));
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            ..
        } => {
            m.push((k("rope.scaling.type"), s("yarn")));
            m.push((k("rope.scaling.factor"), MetaValue::F32(*factor as f32)));
            m.push((k("rope.scaling.original_context_length"), u(*original_max_position_embeddings)));
            m.push((k("rope.scaling.yarn_beta_fast"), MetaValue::F32(*beta_fast as f32)));
            m.push((k("rope.scaling.yarn_beta_slow"), MetaValue::F32(*beta_slow as f32)));
            if let Some(a) = attention_factor {
                m.push((k("rope.scaling.yarn_attn_factor"), MetaValue::F32(*a as f32)));
            }
        }
        RopeScaling::Dynamic { .. } => bail!(
            "{}: rope_scaling `dynamic` (dynamic NTK) has no GGUF representation (llama.cpp supports none, linear and yarn); \
             use --quantize at load time instead",
            dir.display()
        ),
    }
    Ok(m)
}
