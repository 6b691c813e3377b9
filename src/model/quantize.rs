//! Quantization of safetensors models: at load time (`--quantize TYPE`) and
//! to a GGUF file (`expert quantize`).
//!
//! Projections (q/k/v/o, gate/up/down) and an untied output projection are
//! quantized; the embedding and every norm stay in float, and a tied model's
//! output projection is that float embedding (no second copy). Both paths use
//! [`quantize_weight`], so a written GGUF read back gives exactly the layers
//! (and logits) that quantize-at-load gives.
//!
//! Block sizes: legacy types (q4_0 … q8_0) quantize rows in blocks of 32,
//! k-quants in blocks of 256. A row length that is not a multiple of the block
//! gets llama.cpp's fallback (`llama_tensor_get_type`): q4_k → q5_0,
//! q5_k → q5_1, q6_k → q8_0, q2_k/q3_k → q4_0 (llama.cpp uses iq4_nl, which
//! candle lacks; q4_0 has the same size), and F16 when even 32 does not
//! divide the row. Every fallback is reported.

use super::config::{ModelConfig, RopeScaling};
use super::gguf::{self, gguf_name, projection_from_qtensor, type_name, Array, Value};
use super::layers::Projection;
use super::weights::{expected_tensors, SafetensorsSource, WeightSource};
use super::Model;
use anyhow::{bail, Context, Result};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The `--quantize` / `--type` names, in llama.cpp's spelling (lower case).
pub const TYPES: [(&str, GgmlDType); 10] = [
    ("q8_0", GgmlDType::Q8_0),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q2_k", GgmlDType::Q2K),
    ("q3_k", GgmlDType::Q3K),
    ("q4_k", GgmlDType::Q4K),
    ("q5_k", GgmlDType::Q5K),
    ("q6_k", GgmlDType::Q6K),
];

/// Parses a quantization type name (`q4_k`, `Q4_K`, `q8_0`).
pub fn parse_type(s: &str) -> Result<GgmlDType> {
    let l = s.to_ascii_lowercase();
    TYPES
        .iter()
        .find(|(n, _)| *n == l)
        .map(|(_, t)| *t)
        .with_context(|| {
            format!(
                "unknown quantization type `{s}` (expected one of: {})",
                TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })
}

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
    if gguf::is_float(t) || threads <= 1 || data.len() < (1 << 18) {
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

/// Rows (tokens × batch) from which a quantized projection on the CPU is
/// computed as a float GEMM on the dequantized weight.
///
/// candle's CPU quantized matmul runs one quantized dot product per row and
/// weight row (re-reading the weights for every token) and first quantizes
/// the activations to 8 bits (Q8_0/Q8_1/Q8_K). For a prompt, dequantizing
/// the weight once and running an f32 GEMM is faster from about 16 rows on
/// (SmolLM2 Q4_1, 128-token prefill: 28 → 340 tok/s on 2 cores) and exact:
/// the prompt is processed with the weights' true values, as transformers
/// does with the dequantized model. Decoding (one row) keeps the quantized
/// kernels, whose cost is bounded by reading the quantized weights.
pub const DEQUANT_MIN_ROWS: usize = 16;
/// Largest weight block dequantized at once (f32 elements): big output
/// projections are dequantized in chunks of rows.
const DEQUANT_CHUNK: usize = 1 << 24;

/// A quantized projection's forward pass: x (…, in) f32 → (…, out) f32.
pub fn qmatmul_forward(
    q: &candle_core::quantized::QMatMul,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    let x = x.to_dtype(DType::F32)?;
    if let QMatMul::QTensor(w) = q {
        let k = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / k.max(1);
        if x.device().is_cpu() && w.device().is_cpu() && rows >= DEQUANT_MIN_ROWS {
            return dequantized_matmul(w, &x);
        }
    }
    q.forward(&x)
}

fn dequantized_matmul(w: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let mut out_shape = x.dims().to_vec();
    let rows = x.elem_count() / k;
    *out_shape.last_mut().unwrap() = n;
    let x2 = x.reshape((rows, k))?.contiguous()?;
    let y = if n * k <= DEQUANT_CHUNK {
        x2.matmul(&w.dequantize(&Device::Cpu)?.t()?)?
    } else {
        let t = w.dtype();
        let row_bytes = k / t.block_size() * t.type_size();
        let data = w.data()?;
        let chunk_rows = (DEQUANT_CHUNK / k).max(1);
        let mut parts = Vec::with_capacity(n.div_ceil(chunk_rows));
        for start in (0..n).step_by(chunk_rows) {
            let len = chunk_rows.min(n - start);
            let bytes = &data[start * row_bytes..(start + len) * row_bytes];
            let part = ggml_file::qtensor_from_ggml(t, bytes, vec![len, k], &Device::Cpu)?;
            parts.push(x2.matmul(&part.dequantize(&Device::Cpu)?.t()?)?);
        }
        Tensor::cat(&parts, 1)?
    };
    y.reshape(out_shape)
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

    /// The quantized weight of projection `name` (`lm_head` of a tied model
    /// is the embedding matrix).
    pub fn quantized(&self, name: &str, out: usize, inp: usize) -> Result<QTensor> {
        let mut wname = format!("{name}.weight");
        if name == "lm_head" && !self.inner.contains(&wname) {
            wname = "model.embed_tokens.weight".into();
        }
        let w = self.inner.tensor(&wname, &[out, inp])?;
        let q = quantize_weight(&w, self.requested, &self.device)?;
        self.report
            .borrow_mut()
            .tensors
            .push((format!("{name}.weight"), inp, q.dtype()));
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

    fn projection(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Projection> {
        let q = self.quantized(name, out, inp)?;
        let b = if bias {
            Some(self.tensor(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        projection_from_qtensor(q, b, self.dtype)
    }

    fn contains(&self, name: &str) -> bool {
        // A tied model's output projection is the float embedding (shared,
        // as in transformers); only a stored lm_head is quantized.
        self.inner.contains(name)
    }
}

/// Loads a Hugging Face directory with its projections quantized to `qtype`.
pub fn load_dir_quantized(
    dir: &Path,
    qtype: GgmlDType,
    dtype: DType,
    device: &Device,
) -> Result<(Model, QuantReport)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let src = QuantizingSource::open(dir, qtype, dtype, device)?;
    let v = src.inner().validate(&config);
    if let Some(p) = v.problems.first() {
        bail!("{}: {p}", dir.display());
    }
    let model = Model::load(config, &src, dtype, device)?;
    Ok((model, src.report()))
}

/// llama.cpp's `general.file_type` (llama_ftype) for an all-`t` file.
fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11, // Q3_K_S: every tensor Q3_K
        GgmlDType::Q4K => 14, // Q4_K_S
        GgmlDType::Q5K => 16, // Q5_K_S
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        GgmlDType::Q8_1 | GgmlDType::Q8K => 7,
    }
}

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
    if let Some(p) = v.problems.first() {
        bail!("{}: {p}", dir.display());
    }
    let dtypes: BTreeMap<&str, &str> = v
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype.as_str()))
        .collect();
    let mut notes = vec![];
    let mut meta = model_metadata(&config, dir, qtype)?;
    match tokenizer_metadata(dir, &config)? {
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
        let q = if let Some(base) = projection_base(&hf) {
            src.quantized(base, shape[0], shape[1])?
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
    if v.lm_head == Some(super::weights::LmHead::TiedStoredCopy) {
        // A tied checkpoint that also stores lm_head.weight: the model uses
        // the stored copy (quantized at load), so the file keeps it too.
        tensors.push((
            "output.weight".into(),
            src.quantized("lm_head", config.vocab_size, h)?,
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

/// `model.layers.N.self_attn.q_proj.weight` → `model.layers.N.self_attn.q_proj`
/// for the quantized projections; None for norms, biases and the embedding.
fn projection_base(hf: &str) -> Option<&str> {
    let base = hf.strip_suffix(".weight")?;
    let last = base.rsplit('.').next()?;
    (super::weights::LORA_TARGETS.contains(&last) || base == "lm_head").then_some(base)
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn model_metadata(cfg: &ModelConfig, dir: &Path, qtype: GgmlDType) -> Result<Vec<(String, Value)>> {
    let arch = cfg.architecture.name();
    let k = |n: &str| format!("{arch}.{n}");
    let u = |v: usize| Value::U32(v as u32);
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut m = vec![
        ("general.architecture".to_string(), s(arch)),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(&name)),
        ("general.file_type".into(), Value::U32(file_type(qtype))),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (k("rope.freq_base"), Value::F32(cfg.rope.theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (k("vocab_size"), u(cfg.vocab_size)),
    ];
    match &cfg.rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), s("linear")));
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
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
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            m.push((k("rope.scaling.original_context_length"), u(*original_max_position_embeddings)));
            m.push((k("rope.scaling.yarn_beta_fast"), Value::F32(*beta_fast as f32)));
            m.push((k("rope.scaling.yarn_beta_slow"), Value::F32(*beta_slow as f32)));
            if let Some(a) = attention_factor {
                m.push((k("rope.scaling.yarn_attn_factor"), Value::F32(*a as f32)));
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

/// tokenizer.ggml.* and tokenizer.chat_template from a Hugging Face
/// tokenizer.json / tokenizer_config.json, as llama.cpp's converter writes
/// them (`get_vocab_base`, `SpecialVocab`). None without a tokenizer.json.
pub fn tokenizer_metadata(dir: &Path, cfg: &ModelConfig) -> Result<Option<Vec<(String, Value)>>> {
    use crate::tokenizer::gguf::{
        QWEN2_SPLIT, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED,
    };
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(None);
    }
    let read = |p: &Path| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))
    };
    let tj = read(&path)?;
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        bail!(
            "{}: only byte-level BPE tokenizers can be written to GGUF",
            path.display()
        );
    }
    let vocab = model["vocab"]
        .as_object()
        .with_context(|| format!("{}: model.vocab: expected an object", path.display()))?;
    let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .with_context(|| format!("{}: vocab entry {t:?}: bad id", path.display()))?;
        by_id.insert(id as usize, t.clone());
    }
    let mut added_special: BTreeMap<usize, bool> = BTreeMap::new();
    for a in tj["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            continue;
        };
        by_id.insert(id as usize, content.to_string());
        added_special.insert(id as usize, a["special"].as_bool().unwrap_or(false));
    }
    let n = cfg
        .vocab_size
        .max(by_id.keys().next_back().map_or(0, |m| m + 1));
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(TOKEN_UNUSED as i32);
            }
            Some(t) => {
                let ty = match added_special.get(&i) {
                    None => TOKEN_NORMAL,
                    Some(true) => TOKEN_CONTROL,
                    // llama.cpp's does_token_look_special: `<|…|>` is control.
                    Some(false) if t.starts_with("<|") && t.ends_with("|>") => TOKEN_CONTROL,
                    Some(false) => TOKEN_USER_DEFINED,
                };
                tokens.push(t.clone());
                types.push(ty as i32);
            }
        }
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => bail!(
                "{}: merge {other}: expected \"a b\" or [a, b]",
                path.display()
            ),
        })
        .collect::<Result<_>>()?;
    // The pre-tokenizer, by the split regex it uses.
    let pre_json = tj["pre_tokenizer"].to_string();
    let pre = if pre_json.contains(&serde_json::to_string(QWEN2_SPLIT)?) {
        "qwen2"
    } else if tj["pre_tokenizer"]["type"] == "ByteLevel" {
        "gpt2"
    } else {
        bail!(
            "{}: this pre-tokenizer has no llama.cpp name (expected Qwen2's split regex or GPT-2 byte-level)",
            path.display()
        );
    };
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(pre)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens.clone())),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(merges)),
        ),
    ];
    // Special ids: tokenizer_config.json's strings, else config.json's ids.
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read(&tc_path)?
    } else {
        serde_json::Value::Null
    };
    let id_of = |field: &str| -> Option<u32> {
        let v = &tc[field];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        tokens.iter().position(|t| t == text).map(|i| i as u32)
    };
    let bos = id_of("bos_token").or(cfg.bos_token_id);
    let eos = id_of("eos_token").or(cfg.eos_token_ids.first().copied());
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.unknown_token_id", id_of("unk_token")),
        ("tokenizer.ggml.padding_token_id", id_of("pad_token")),
    ] {
        if let Some(id) = id {
            m.push((key.to_string(), Value::U32(id)));
        }
    }
    for (field, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(b) = tc[field].as_bool() {
            m.push((key.to_string(), Value::Bool(b)));
        }
    }
    let jinja = dir.join("chat_template.jinja");
    let template = if jinja.is_file() {
        Some(
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?,
        )
    } else {
        tc["chat_template"].as_str().map(str::to_string)
    };
    if let Some(t) = template {
        m.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(Some(m))
}

// ---- GGUF writer (version 3, little-endian, 32-byte alignment) ----

const ALIGN: u64 = 32;

fn w_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn w_array(w: &mut impl Write, a: &Array) -> std::io::Result<()> {
    w.write_all(&a.elem_type().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
        };
    }
    match a {
        Array::U8(v) => w.write_all(v)?,
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => {
            for &b in v {
                w.write_all(&[b as u8])?;
            }
        }
        Array::String(v) => {
            for x in v {
                w_str(w, x)?;
            }
        }
        Array::Array(v) => {
            for x in v {
                w_array(w, x)?;
            }
        }
    }
    Ok(())
}

fn w_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(x) => w_str(w, x),
        Value::Array(a) => w_array(w, a),
    }
}

fn pad(w: &mut impl Write, pos: u64) -> std::io::Result<u64> {
    let padded = pos.div_ceil(ALIGN) * ALIGN;
    w.write_all(&vec![0u8; (padded - pos) as usize])?;
    Ok(padded)
}

/// Writes a GGUF v3 file (atomically: a temporary file renamed into place).
/// Returns its size in bytes.
pub fn write_file(
    out: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<u64> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> Result<u64> {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = CountingWriter {
            w: std::io::BufWriter::with_capacity(1 << 20, f),
            pos: 0,
        };
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (k, v) in metadata {
            w_str(&mut w, k)?;
            w.write_all(&v.type_id().to_le_bytes())?;
            w_value(&mut w, v)?;
        }
        let mut offset = 0u64;
        let mut datas = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            w_str(&mut w, name)?;
            let dims = t.shape().dims();
            w.write_all(&(dims.len() as u32).to_le_bytes())?;
            for &d in dims.iter().rev() {
                w.write_all(&(d as u64).to_le_bytes())?;
            }
            w.write_all(&gguf::ggml_type_id(t.dtype()).to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            let data = t.data()?;
            offset = (offset + data.len() as u64).div_ceil(ALIGN) * ALIGN;
            datas.push(data);
        }
        let pos = w.pos;
        pad(&mut w, pos)?;
        for data in datas {
            w.write_all(&data)?;
            let pos = w.pos;
            pad(&mut w, pos)?;
        }
        let size = w.pos;
        let f = w.w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(size)
    })();
    match result {
        Ok(size) => {
            std::fs::rename(&tmp, out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!("cannot write {}", out.display())))
        }
    }
}

struct CountingWriter<W: Write> {
    w: W,
    pos: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
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
        assert_eq!(parse_type("Q4_K").unwrap(), GgmlDType::Q4K);
        assert!(parse_type("q4_k_m")
            .unwrap_err()
            .to_string()
            .contains("q6_k"));
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
