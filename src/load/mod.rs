//! Loading: a model spec (directory, .gguf file or Hub repo id; dtype,
//! device, quantization) → a validated model with its tokenizer, eos ids and
//! chat template. [`load`] is the one way in; every command uses it.
//!
//! - `hub`: `--model` → local files (hf-hub cache, offline-aware)
//! - `safetensors`, `gguf`: the two file formats as `WeightSource`s
//! - `quantizing`: quantize-at-load, a wrapper over any source
//! - `mapped`: GGUF tensors used in place from the file's mapping, then
//!   moved into memory of their own (and the global allocator that frees them)
//! - `copy`: float tensors copied out of a file mapping on every core

pub mod copy;
pub mod gguf;
pub mod hub;
pub mod mapped;
pub mod memory;
pub mod quantizing;
pub mod safetensors;

use crate::formats::gguf::{is_gguf, GgufFile};
use crate::model::{Model, ModelConfig};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use quantizing::{QuantReport, QuantizingSource};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to load and how to compute with it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// A local Hugging Face directory, a .gguf file or a Hub repo id.
    pub model: String,
    pub hub: hub::HubOptions,
    pub device: Device,
    pub dtype: DType,
    /// Quantize a safetensors model's projections as they load.
    pub quantize: Option<GgmlDType>,
}

/// A model ready to generate: weights, tokenizer and the model's own
/// generation settings.
pub struct LoadedModel {
    /// Shared by every conversation (`generate::Engine`) over it.
    pub model: Arc<Model>,
    pub tokenizer: Tokenizer,
    /// The model directory or file the weights came from.
    pub path: PathBuf,
    /// End-of-generation ids: generation_config.json's (directories) or the
    /// GGUF's end-of-generation tokens, else config's eos ids.
    pub eos_ids: Vec<u32>,
    /// The chat template embedded in the model file (GGUF `tokenizer.chat_template`);
    /// None for directories, whose template is read from the directory.
    pub chat_template: Option<String>,
    /// What `--quantize` did (None without it).
    pub quant_report: Option<QuantReport>,
}

/// The result of a loading thread; a panic there is passed on as it was.
fn join<T>(r: std::thread::Result<Result<T>>) -> Result<T> {
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Resolves, validates and loads everything a command needs; the weights
/// and the tokenizer load on two threads at once.
pub fn load(spec: &ModelSpec) -> Result<LoadedModel> {
    let path = hub::resolve(&spec.model, &spec.hub)?;
    if is_gguf(&path) {
        if spec.quantize.is_some() {
            bail!(
                "--quantize applies to safetensors models; {} is a GGUF file, already quantized",
                path.display()
            );
        }
        let file = GgufFile::open(&path)?;
        if spec.device.is_cpu() {
            let mapped = std::fs::metadata(&path).map_or(0, |m| m.len());
            memory::check_fits(
                &path,
                memory::gguf_need(&file, spec.dtype),
                mapped,
                spec.dtype,
            )?;
        }
        // The tokenizer is built on a second thread while the weights load
        // (a third of a GGUF's load time is building its 151k-token BPE).
        let (model, tokenizer) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| crate::tokenizer::gguf::load(&file));
            let model = gguf_model_in_place(&file, spec.dtype, &spec.device);
            (model, tokenizer.join())
        });
        let (model, region) = model?;
        let tokenizer = join(tokenizer)?;
        // Decode streams every weight once per token: onto huge pages, on
        // a thread of their own once loading is done (`ops::huge_pages`).
        // The mapped weights move only now: moving them beside the
        // tokenizer's build slowed it by a third (q8_0 0.55 → 0.75 s).
        settle(region, &model);
        crate::ops::huge_pages::collapse(model.weight_spans());
        let eos_ids = crate::tokenizer::gguf::eog_ids(&file);
        return Ok(LoadedModel {
            eos_ids: or_config_eos(eos_ids, &model.config),
            chat_template: crate::tokenizer::gguf::chat_template(&file),
            model: Arc::new(model),
            tokenizer,
            path,
            quant_report: None,
        });
    }
    if spec.device.is_cpu() && spec.quantize.is_none() {
        // Before the files are mapped: a header that promises more than
        // the machine has fails here, saying how much it needs.
        if let Ok(files) = crate::formats::safetensors::files(&path) {
            if let Some(need) = memory::safetensors_need(&files, spec.dtype) {
                let mapped = files
                    .iter()
                    .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
                    .sum();
                memory::check_fits(&path, need, mapped, spec.dtype)?;
            }
        }
    }
    let (model, tokenizer) = std::thread::scope(|s| {
        let tokenizer = s.spawn(|| Tokenizer::from_dir(&path));
        let model = match spec.quantize {
            Some(q) => dir_model_quantized_in_place(&path, q, spec.dtype, &spec.device)
                .map(|(m, r, regions)| (m, Some(r), regions)),
            None => dir_model_in_place(&path, spec.dtype, &spec.device)
                .map(|(m, regions)| (m, None, regions)),
        };
        (model, tokenizer.join())
    });
    let (model, quant_report, regions) = model?;
    let tokenizer = join(tokenizer)?;
    // Decode streams every weight once per token: onto huge pages, on a
    // thread of their own once loading is done (`ops::huge_pages`); the
    // mapped weights move only now, as for a GGUF.
    settle(regions, &model);
    crate::ops::huge_pages::collapse(model.weight_spans());
    let gen_cfg = path.join("generation_config.json");
    let eos_ids = if gen_cfg.is_file() {
        eos_ids_from_generation_config(&gen_cfg)?
    } else {
        vec![]
    };
    Ok(LoadedModel {
        eos_ids: or_config_eos(eos_ids, &model.config),
        model: Arc::new(model),
        tokenizer,
        path,
        chat_template: None,
        quant_report,
    })
}

/// `eos_token_id` from `generation_config.json`: an integer or a list of
/// integers; empty when the field is missing or null.
pub fn eos_ids_from_generation_config(path: &Path) -> Result<Vec<u32>> {
    let map = crate::formats::json::read_object(path)?;
    let bad = |v: &serde_json::Value| {
        anyhow::anyhow!(
            "{}: eos_token_id: expected a token id or a list of token ids, got {v}",
            path.display()
        )
    };
    let id = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| bad(v))
    };
    match map.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

fn or_config_eos(ids: Vec<u32>, config: &ModelConfig) -> Vec<u32> {
    if ids.is_empty() {
        config.eos_token_ids.clone()
    } else {
        ids
    }
}

/// The weights of a Hugging Face directory (config.json + safetensors),
/// validated before any tensor is read. No tokenizer needed.
pub fn dir_model(dir: &Path, dtype: DType, device: &Device) -> Result<Model> {
    let (model, regions) = dir_model_in_place(dir, dtype, device)?;
    settle(regions, &model);
    Ok(model)
}

/// `dir_model`, with the mappings its weights use in place still to be
/// moved ([`settle`]).
fn dir_model_in_place(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(Model, Vec<mapped::Region>)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let src = safetensors::SafetensorsSource::open(dir, dtype, device)?;
    check(dir, &src.validate(&config).problems)?;
    let model = Model::load(config, &src, dtype, device)?;
    Ok((model, src.take_regions()))
}

/// A Hugging Face directory with its projections quantized to `qtype` as
/// they load. Quantization starts from the stored values (read as f32).
pub fn dir_model_quantized(
    dir: &Path,
    qtype: GgmlDType,
    dtype: DType,
    device: &Device,
) -> Result<(Model, QuantReport)> {
    let (model, report, regions) = dir_model_quantized_in_place(dir, qtype, dtype, device)?;
    settle(regions, &model);
    Ok((model, report))
}

/// `dir_model_quantized`, with the mappings its float weights use in
/// place still to be moved ([`settle`]).
fn dir_model_quantized_in_place(
    dir: &Path,
    qtype: GgmlDType,
    dtype: DType,
    device: &Device,
) -> Result<(Model, QuantReport, Vec<mapped::Region>)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let src = QuantizingSource::open(dir, qtype, dtype, device)?;
    check(dir, &src.inner().validate(&config).problems)?;
    let model = Model::load(config, &src, dtype, device)?;
    let regions = src.inner().take_regions();
    Ok((model, src.report(), regions))
}

/// The weights of an open GGUF file, projections kept quantized. On the
/// CPU they are the file's mapping, moved into memory of their own on a
/// thread of their own once the model is built (`load::mapped`).
pub fn gguf_model(file: &GgufFile, dtype: DType, device: &Device) -> Result<Model> {
    let (model, region) = gguf_model_in_place(file, dtype, device)?;
    settle(region, &model);
    Ok(model)
}

/// `gguf_model`, with the mapping its weights use in place still to be
/// moved ([`settle`]).
fn gguf_model_in_place(
    file: &GgufFile,
    dtype: DType,
    device: &Device,
) -> Result<(Model, Option<mapped::Region>)> {
    let config = gguf::config(file)?;
    check(&file.path, &gguf::problems(file, &config))?;
    let mut src = gguf::GgufSource::new(file, dtype, device);
    let model = Model::load(config, &src, dtype, device)?;
    Ok((model, src.take_region()))
}

/// Starts moving a model's mapped weights into memory of their own: onto
/// huge pages exactly when `ops::huge_pages::collapse` decides so for the
/// same weights (the read order follows that decision).
fn settle(regions: impl IntoIterator<Item = mapped::Region>, model: &Model) {
    let total = model.weight_spans().iter().map(|s| s.1).sum();
    let huge = crate::ops::huge_pages::wanted(total);
    for region in regions {
        region.settle(huge);
    }
}

/// The one validation verdict: the first problem as an error naming the
/// file, with how many more there are.
pub fn check(path: &Path, problems: &[String]) -> Result<()> {
    let Some(p) = problems.first() else {
        return Ok(());
    };
    let more = if problems.len() > 1 {
        format!(
            " (and {} more problems; `expert inspect` lists them)",
            problems.len() - 1
        )
    } else {
        String::new()
    };
    bail!("{}: {p}{more}", path.display())
}

/// `--device cpu|cuda|auto`.
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context(
            "--device cuda: no usable CUDA device (was expert built with --features cuda?)",
        ),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        other => bail!("--device: expected cpu, cuda or auto, got `{other}`"),
    }
}

/// `--dtype auto|f32|bf16|f16`. auto is f32 on CPU (candle's CPU bf16 matmul
/// widens to f32 on every call, so it is slower) and bf16 on GPUs.
pub fn select_dtype(name: &str, device: &Device) -> Result<DType> {
    match name {
        "auto" => Ok(if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }),
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("--dtype: expected auto, f32, bf16 or f16, got `{other}`"),
    }
}
