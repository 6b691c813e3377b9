//! GGUF files: a bounded header reader, metadata → `ModelConfig`, and a
//! `WeightSource` that keeps projections quantized (candle `QMatMul`).
//!
//! The header is parsed here rather than by candle's `gguf_file::Content`:
//! every count and length read from the file is checked against the bytes
//! that remain before anything is allocated, arrays are stored compactly
//! (a `Vec<u8>` rather than one enum per byte), tensor shapes are checked for
//! overflow and every tensor's data range is checked against the file size.
//! A malformed file therefore fails with one error line naming the file and
//! the problem, never with a panic or a huge allocation. Tensor bytes are
//! read on demand and handed to candle's `qtensor_from_ggml`.
//!
//! Names: the model asks for Hugging Face names (`model.layers.3.mlp.up_proj`)
//! and [`gguf_name`] maps them to llama.cpp's (`blk.3.ffn_up`).
//!
//! Rotary layout: llama.cpp's converter permutes the rows of Llama q/k weights
//! so that rotary pairs are adjacent (x[2i], x[2i+1]); Llama GGUFs are
//! therefore run with the interleaved rotation (`rope.interleaved`), Qwen2 and
//! Qwen3 GGUFs with the NeoX half split, like their safetensors.

use super::config::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use super::layers::{Projection, ProjectionWeight};
use super::weights::{expected_tensors, WeightSource};
use super::Model;
use anyhow::{bail, Context, Result};
use candle_core::quantized::{ggml_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest metadata string accepted (chat templates and embedded
/// tokenizer.json files are far smaller).
const MAX_STRING: u64 = 64 << 20;
/// Most elements in one metadata array (vocabularies have < 1M tokens).
const MAX_ARRAY: u64 = 1 << 24;
/// Most tensors / metadata entries in one file.
const MAX_ENTRIES: u64 = 1 << 20;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
const MAX_DEPTH: usize = 8;

/// A metadata value. Arrays are typed and compact.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

/// GGUF value type ids.
pub mod vtype {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

fn vtype_name(t: u32) -> &'static str {
    match t {
        vtype::U8 => "u8",
        vtype::I8 => "i8",
        vtype::U16 => "u16",
        vtype::I16 => "i16",
        vtype::U32 => "u32",
        vtype::I32 => "i32",
        vtype::F32 => "f32",
        vtype::BOOL => "bool",
        vtype::STRING => "string",
        vtype::ARRAY => "array",
        vtype::U64 => "u64",
        vtype::I64 => "i64",
        vtype::F64 => "f64",
        _ => "unknown",
    }
}

impl Value {
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => vtype::U8,
            Value::I8(_) => vtype::I8,
            Value::U16(_) => vtype::U16,
            Value::I16(_) => vtype::I16,
            Value::U32(_) => vtype::U32,
            Value::I32(_) => vtype::I32,
            Value::U64(_) => vtype::U64,
            Value::I64(_) => vtype::I64,
            Value::F32(_) => vtype::F32,
            Value::F64(_) => vtype::F64,
            Value::Bool(_) => vtype::BOOL,
            Value::String(_) => vtype::STRING,
            Value::Array(_) => vtype::ARRAY,
        }
    }

    /// Any integer type (or bool) that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => self.as_u64().filter(|&v| v <= 1).map(|v| v == 1),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A readable type name (`u32`, `array[string; 49152]`).
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array[{}; {}]", vtype_name(a.elem_type()), a.len()),
            v => vtype_name(v.type_id()).to_string(),
        }
    }

    /// JSON for `inspect`; arrays longer than `max_array` are summarised.
    pub fn to_json(&self, max_array: usize) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::U8(v) => json!(v),
            Value::I8(v) => json!(v),
            Value::U16(v) => json!(v),
            Value::I16(v) => json!(v),
            Value::U32(v) => json!(v),
            Value::I32(v) => json!(v),
            Value::U64(v) => json!(v),
            Value::I64(v) => json!(v),
            Value::F32(v) => json!(v),
            Value::F64(v) => json!(v),
            Value::Bool(v) => json!(v),
            Value::String(s) => json!(s),
            Value::Array(a) => a.to_json(max_array),
        }
    }
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> u32 {
        match self {
            Array::U8(_) => vtype::U8,
            Array::I8(_) => vtype::I8,
            Array::U16(_) => vtype::U16,
            Array::I16(_) => vtype::I16,
            Array::U32(_) => vtype::U32,
            Array::I32(_) => vtype::I32,
            Array::U64(_) => vtype::U64,
            Array::I64(_) => vtype::I64,
            Array::F32(_) => vtype::F32,
            Array::F64(_) => vtype::F64,
            Array::Bool(_) => vtype::BOOL,
            Array::String(_) => vtype::STRING,
            Array::Array(_) => vtype::ARRAY,
        }
    }

    pub fn strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// Integer elements as i64 (any integer element type).
    pub fn ints(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I64(v) => v.clone(),
            _ => return None,
        })
    }

    pub fn to_json(&self, max_array: usize) -> serde_json::Value {
        use serde_json::json;
        if self.len() > max_array {
            return json!({ "type": vtype_name(self.elem_type()), "len": self.len() });
        }
        match self {
            Array::U8(v) => json!(v),
            Array::I8(v) => json!(v),
            Array::U16(v) => json!(v),
            Array::I16(v) => json!(v),
            Array::U32(v) => json!(v),
            Array::I32(v) => json!(v),
            Array::U64(v) => json!(v),
            Array::I64(v) => json!(v),
            Array::F32(v) => json!(v),
            Array::F64(v) => json!(v),
            Array::Bool(v) => json!(v),
            Array::String(v) => json!(v),
            Array::Array(v) => {
                serde_json::Value::Array(v.iter().map(|a| a.to_json(max_array)).collect())
            }
        }
    }
}

/// One tensor's header entry. `shape` is in candle order (outermost first:
/// a projection is (out, in)), the reverse of GGUF's `ne`.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dtype: GgmlDType,
    pub shape: Vec<usize>,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl GgufTensor {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// GGML tensor type id → candle's type, or a message naming the type.
pub fn ggml_dtype(id: u32) -> std::result::Result<GgmlDType, String> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => {
            let name = match other {
                4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                29 => "IQ1_M",
                34 => "TQ1_0",
                35 => "TQ2_0",
                39 => "MXFP4",
                _ => "unknown",
            };
            return Err(format!(
                "type {name} (id {other}) is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
            ));
        }
    })
}

/// GGML type id of a candle type (for writing).
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// llama.cpp's spelling of a type (`Q4_K`, `Q8_0`, `F16`).
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

pub fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// An opened GGUF file: parsed, validated header; tensor data read on demand.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub file_size: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    file: Mutex<std::fs::File>,
}

/// Counts bytes consumed and refuses to read past the end of the file.
struct Reader<R> {
    r: R,
    pos: u64,
    size: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.remaining() {
            bail!(
                "truncated file: {what} needs {n} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            );
        }
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .with_context(|| format!("read error at offset {}", self.pos))?;
        self.pos += n;
        Ok(buf)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        if (N as u64) > self.remaining() {
            bail!("truncated file: {what} at offset {} is cut off", self.pos);
        }
        let mut buf = [0u8; N];
        self.r
            .read_exact(&mut buf)
            .with_context(|| format!("read error at offset {}", self.pos))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.fixed::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.fixed(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            bail!("{what}: string length {len} is absurd (limit {MAX_STRING} bytes)");
        }
        if len > self.remaining() {
            bail!(
                "truncated file: {what}: string of {len} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            );
        }
        let mut bytes = self.bytes(len, what)?;
        // Some writers NUL-terminate strings.
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn value(&mut self, t: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match t {
            vtype::U8 => Value::U8(self.u8(what)?),
            vtype::I8 => Value::I8(self.u8(what)? as i8),
            vtype::U16 => Value::U16(self.u16(what)?),
            vtype::I16 => Value::I16(self.u16(what)? as i16),
            vtype::U32 => Value::U32(self.u32(what)?),
            vtype::I32 => Value::I32(self.u32(what)? as i32),
            vtype::U64 => Value::U64(self.u64(what)?),
            vtype::I64 => Value::I64(self.u64(what)? as i64),
            vtype::F32 => Value::F32(f32::from_bits(self.u32(what)?)),
            vtype::F64 => Value::F64(f64::from_bits(self.u64(what)?)),
            vtype::BOOL => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("{what}: invalid bool byte {b}"),
            },
            vtype::STRING => Value::String(self.string(what)?),
            vtype::ARRAY => Value::Array(self.array(what, depth + 1)?),
            other => bail!("{what}: unknown value type {other}"),
        })
    }

    fn array(&mut self, what: &str, depth: usize) -> Result<Array> {
        if depth > MAX_DEPTH {
            bail!("{what}: arrays nested more than {MAX_DEPTH} deep");
        }
        let t = self.u32(what)?;
        let len = self.u64(what)?;
        let min = match t {
            vtype::U8 | vtype::I8 | vtype::BOOL => 1,
            vtype::U16 | vtype::I16 => 2,
            vtype::U32 | vtype::I32 | vtype::F32 => 4,
            vtype::U64 | vtype::I64 | vtype::F64 | vtype::STRING => 8,
            vtype::ARRAY => 12,
            other => bail!("{what}: unknown array element type {other}"),
        };
        if len > MAX_ARRAY {
            bail!("{what}: array length {len} is absurd (limit {MAX_ARRAY})");
        }
        if len.saturating_mul(min) > self.remaining() {
            bail!(
                "truncated file: {what}: array of {len} {} needs at least {} bytes, only {} remain",
                vtype_name(t),
                len.saturating_mul(min),
                self.remaining()
            );
        }
        let n = len as usize;
        macro_rules! prim {
            ($variant:ident, $ty:ty, $size:expr) => {{
                let raw = self.bytes(len * $size, what)?;
                Array::$variant(
                    raw.chunks_exact($size)
                        .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match t {
            vtype::U8 => Array::U8(self.bytes(len, what)?),
            vtype::I8 => Array::I8(
                self.bytes(len, what)?
                    .into_iter()
                    .map(|b| b as i8)
                    .collect(),
            ),
            vtype::BOOL => Array::Bool(
                self.bytes(len, what)?
                    .into_iter()
                    .map(|b| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        b => Err(anyhow::anyhow!("{what}: invalid bool byte {b}")),
                    })
                    .collect::<Result<_>>()?,
            ),
            vtype::U16 => prim!(U16, u16, 2),
            vtype::I16 => prim!(I16, i16, 2),
            vtype::U32 => prim!(U32, u32, 4),
            vtype::I32 => prim!(I32, i32, 4),
            vtype::F32 => prim!(F32, f32, 4),
            vtype::U64 => prim!(U64, u64, 8),
            vtype::I64 => prim!(I64, i64, 8),
            vtype::F64 => prim!(F64, f64, 8),
            vtype::STRING => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                Array::String(v)
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(what, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file. Errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).context("cannot open")?;
        let file_size = file.metadata().context("cannot stat")?.len();
        let mut r = Reader {
            r: BufReader::with_capacity(1 << 16, file.try_clone().context("cannot open")?),
            pos: 0,
            size: file_size,
        };
        if file_size < 4 {
            bail!("not a GGUF file: only {file_size} bytes");
        }
        let magic = r.fixed::<4>("magic")?;
        if &magic != b"GGUF" {
            bail!(
                "not a GGUF file: bad magic {:02x} {:02x} {:02x} {:02x} (expected \"GGUF\")",
                magic[0],
                magic[1],
                magic[2],
                magic[3]
            );
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => bail!("GGUF version 1 is not supported (expected 2 or 3; re-convert the model with a current llama.cpp)"),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                bail!("big-endian GGUF files are not supported")
            }
            v => bail!("unsupported GGUF version {v} (expected 2 or 3)"),
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes,
        // a tensor entry 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
        for (n, what, min) in [
            (n_tensors, "tensor count", 24u64),
            (n_kv, "metadata entry count", 13),
        ] {
            if n > MAX_ENTRIES || n.saturating_mul(min) > r.remaining() {
                bail!("{what} {n} is absurd for a file of {file_size} bytes (corrupt or truncated header)");
            }
        }
        if (n_tensors * 24).saturating_add(n_kv * 13) > r.remaining() {
            bail!("header declares {n_tensors} tensors and {n_kv} metadata entries, more than a file of {file_size} bytes can hold (truncated or corrupt)");
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let t = r.u32(&format!("metadata `{key}` type"))?;
            let value = r.value(t, &format!("metadata `{key}`"), 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                bail!("duplicate metadata key `{key}`");
            }
            metadata.push((key, value));
        }
        let alignment = match meta_index.get("general.alignment") {
            None => 32,
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    bail!(
                        "metadata `general.alignment`: expected a power of two, got {:?}",
                        metadata[i].1
                    );
                }
                a
            }
        };
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor #{i} name"))?;
            let n_dims = r.u32(&format!("tensor `{name}` dimension count"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                bail!("tensor `{name}`: {n_dims} dimensions (expected 1 to {MAX_DIMS})");
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64(&format!("tensor `{name}` shape"))?);
            }
            let type_id = r.u32(&format!("tensor `{name}` type"))?;
            let offset = r.u64(&format!("tensor `{name}` offset"))?;
            infos.push((name, ne, type_id, offset));
        }
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = HashMap::new();
        for (name, ne, type_id, offset) in infos {
            let dtype = ggml_dtype(type_id).map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))?;
            let mut elems: u64 = 1;
            for &d in &ne {
                if d == 0 {
                    bail!("tensor `{name}`: zero-sized dimension in shape {ne:?}");
                }
                elems = elems
                    .checked_mul(d)
                    .filter(|&e| e <= 1 << 40)
                    .with_context(|| format!("tensor `{name}`: absurd shape {ne:?}"))?;
            }
            let block = dtype.block_size() as u64;
            if ne[0] % block != 0 {
                bail!(
                    "tensor `{name}`: row length {} is not a multiple of the {} block size {block}",
                    ne[0],
                    type_name(dtype)
                );
            }
            let size = elems / block * dtype.type_size() as u64;
            if offset % alignment != 0 {
                bail!("tensor `{name}`: data offset {offset} is not aligned to {alignment} bytes");
            }
            let end = data_offset
                .checked_add(offset)
                .and_then(|s| s.checked_add(size));
            match end {
                Some(end) if end <= file_size => {}
                _ => bail!(
                    "tensor `{name}`: data ({size} bytes at offset {}) lies past the end of the file ({file_size} bytes; truncated?)",
                    data_offset.saturating_add(offset)
                ),
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                bail!("duplicate tensor `{name}`");
            }
            let shape: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
            tensors.push(GgufTensor {
                name,
                dtype,
                shape,
                offset,
                size,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size,
            meta_index,
            tensor_index,
            file: Mutex::new(file),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    pub fn architecture(&self) -> Result<String> {
        Ok(self.str("general.architecture")?.to_string())
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?
            .with_context(|| format!("metadata `{key}`: missing (expected a string)"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).with_context(|| {
                format!(
                    "metadata `{key}`: expected a string, found {}",
                    v.type_name()
                )
            }),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?
            .with_context(|| format!("metadata `{key}`: missing (expected an integer)"))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).with_context(|| {
                format!(
                    "metadata `{key}`: expected a non-negative integer, found {}",
                    v.type_name()
                )
            }),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).with_context(|| {
                format!(
                    "metadata `{key}`: expected a number, found {}",
                    v.type_name()
                )
            }),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).with_context(|| {
                format!("metadata `{key}`: expected a bool, found {}", v.type_name())
            }),
        }
    }

    /// Reads one tensor's data into a `QTensor` on `device`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self
            .tensor_info(name)
            .with_context(|| format!("{}: missing tensor `{name}`", self.path.display()))?;
        let mut raw = vec![0u8; t.size as usize];
        {
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            f.seek(SeekFrom::Start(self.data_offset + t.offset))?;
            f.read_exact(&mut raw).with_context(|| {
                format!(
                    "{}: tensor `{name}`: cannot read its data",
                    self.path.display()
                )
            })?;
        }
        ggml_file::qtensor_from_ggml(t.dtype, &raw, t.shape.clone(), device)
            .with_context(|| format!("{}: tensor `{name}`", self.path.display()))
    }

    /// The model's hyper-parameters from `{arch}.*` metadata and tensor shapes.
    pub fn config(&self) -> Result<ModelConfig> {
        self.config_inner()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", self.path.display()))
    }

    fn config_inner(&self) -> Result<ModelConfig> {
        let arch_name = self.architecture()?;
        let architecture = match arch_name.as_str() {
            "qwen3" => Architecture::Qwen3,
            "qwen2" => Architecture::Qwen2,
            "llama" => Architecture::Llama,
            other => bail!(
                "metadata `general.architecture`: `{other}` is not supported (supported: qwen3, qwen2, llama)"
            ),
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let hidden_size = self.u64(&k("embedding_length"))? as usize;
        let num_attention_heads = self.u64(&k("attention.head_count"))? as usize;
        let num_key_value_heads = self
            .opt_u64(&k("attention.head_count_kv"))?
            .map(|v| v as usize)
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 {
            bail!(
                "metadata `{}`: expected a positive integer, got 0",
                k("attention.head_count")
            );
        }
        let head_dim = match self.opt_u64(&k("attention.key_length"))? {
            Some(d) => d as usize,
            None => hidden_size / num_attention_heads,
        };
        if let Some(v) = self.opt_u64(&k("attention.value_length"))? {
            if v as usize != head_dim {
                bail!(
                    "metadata `{}` = {v} differs from the key length {head_dim} (not supported)",
                    k("attention.value_length")
                );
            }
        }
        if let Some(r) = self.opt_u64(&k("rope.dimension_count"))? {
            if r as usize != head_dim {
                bail!(
                    "metadata `{}` = {r}: partial rotary embeddings are not supported (head dim {head_dim})",
                    k("rope.dimension_count")
                );
            }
        }
        let max_position_embeddings = self.u64(&k("context_length"))? as usize;
        let theta = self.opt_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0);
        let scaling = match self.opt_str(&k("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::None,
            Some(kind) => {
                let factor = self.opt_f64(&k("rope.scaling.factor"))?.unwrap_or(1.0);
                match kind {
                    _ if factor == 1.0 && kind != "yarn" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor },
                    "dynamic" => RopeScaling::Dynamic { factor },
                    "yarn" => RopeScaling::Yarn {
                        factor,
                        original_max_position_embeddings: self
                            .opt_u64(&k("rope.scaling.original_context_length"))?
                            .map(|v| v as usize)
                            .unwrap_or(max_position_embeddings),
                        beta_fast: self
                            .opt_f64(&k("rope.scaling.yarn_beta_fast"))?
                            .unwrap_or(32.0),
                        beta_slow: self
                            .opt_f64(&k("rope.scaling.yarn_beta_slow"))?
                            .unwrap_or(1.0),
                        attention_factor: self.opt_f64(&k("rope.scaling.yarn_attn_factor"))?,
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
        };
        let embd = self
            .tensor_info("token_embd.weight")
            .context("missing tensor `token_embd.weight`")?;
        if embd.shape.len() != 2 || embd.shape[1] != hidden_size {
            bail!(
                "tensor `token_embd.weight`: expected shape [vocab, {hidden_size}], found {:?}",
                embd.shape
            );
        }
        let vocab_size = embd.shape[0];
        let intermediate_size = match self.opt_u64(&k("feed_forward_length"))? {
            Some(v) => v as usize,
            None => self
                .tensor_info("blk.0.ffn_up.weight")
                .map(|t| t.shape[0])
                .context(format!("metadata `{}`: missing", k("feed_forward_length")))?,
        };
        let eps = self
            .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
            .with_context(|| {
                format!(
                    "metadata `{}`: missing (expected a number)",
                    k("attention.layer_norm_rms_epsilon")
                )
            })?;
        let mut eos_token_ids = vec![];
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = self.opt_u64(key)? {
                if !eos_token_ids.contains(&(id as u32)) {
                    eos_token_ids.push(id as u32);
                }
            }
        }
        let num_hidden_layers = self.u64(&k("block_count"))? as usize;
        // Each layer has at least 9 tensors; a larger count is corrupt (and
        // would make the tensor checks allocate without bound).
        if num_hidden_layers > self.tensors.len() {
            bail!(
                "metadata `{}` = {num_hidden_layers} is absurd: the file has only {} tensors",
                k("block_count"),
                self.tensors.len()
            );
        }
        let cfg = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: eps,
            rope: RopeConfig {
                theta,
                scaling,
                interleaved: architecture == Architecture::Llama,
            },
            max_position_embeddings,
            tie_word_embeddings: !self.has_tensor("output.weight"),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                _ => self.has_tensor("blk.0.attn_q.bias"),
            },
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: self
                .opt_u64("tokenizer.ggml.bos_token_id")?
                .map(|v| v as u32),
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every tensor the config needs: present with the right shape.
    pub fn problems(&self, cfg: &ModelConfig) -> Vec<String> {
        let mut out = vec![];
        for (hf, shape) in expected_tensors(cfg) {
            let Some(name) = gguf_name(&hf) else {
                out.push(format!("no GGUF name for `{hf}`"));
                continue;
            };
            match self.tensor_info(&name) {
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

    /// Metadata as JSON, long arrays summarised by type and length.
    pub fn metadata_json(&self, max_array: usize) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.metadata {
            m.insert(k.clone(), v.to_json(max_array));
        }
        serde_json::Value::Object(m)
    }
}

/// Hugging Face tensor name → llama.cpp GGUF name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// A projection from a (possibly quantized) tensor: float types become a
/// dense `Linear` in the compute dtype, quantized ones stay quantized.
/// Shared by the GGUF and quantize-at-load sources so that both build
/// exactly the same layer from the same `QTensor`.
///
/// candle's CPU dot products for Q4_1, Q5_0 and Q5_1 assert (in debug
/// builds) an even number of 32-blocks per row; such rare weights (rows of
/// 32, 96, …) are dequantized instead.
pub fn projection_from_qtensor(
    q: QTensor,
    bias: Option<Tensor>,
    dtype: DType,
) -> Result<Projection> {
    let cols = q.shape().dims().last().copied().unwrap_or(0);
    let odd_blocks = matches!(
        q.dtype(),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
    ) && (cols / q.dtype().block_size()) % 2 == 1;
    let weight = if is_float(q.dtype()) || odd_blocks {
        let w = q.dequantize(&q.device())?.to_dtype(dtype)?;
        ProjectionWeight::Dense(candle_nn::Linear::new(w, None))
    } else {
        ProjectionWeight::Quantized(QMatMul::from_qtensor(q)?)
    };
    Ok(Projection { weight, bias })
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

    fn checked(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
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
        self.file.qtensor(name, &self.device)
    }
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let g = self.resolve(name)?;
        let q = self.checked(&g, shape)?;
        Ok(q.dequantize(&self.device)?.to_dtype(self.dtype)?)
    }

    fn projection(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Projection> {
        let b = if bias {
            Some(self.tensor(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        let wname = format!("{name}.weight");
        if self.dequantize {
            return Ok(Projection::dense(self.tensor(&wname, &[out, inp])?, b));
        }
        // Tied output: llama.cpp multiplies by the (quantized) embedding.
        let w = self.checked(&self.resolve(&wname)?, &[out, inp])?;
        projection_from_qtensor(w, b, self.dtype)
    }

    fn contains(&self, name: &str) -> bool {
        if name == "lm_head.weight" {
            // Tied (no output.weight): the model multiplies by the float
            // embedding it already holds, as transformers does; no quantized
            // second copy (llama.cpp keeps the embedding quantized and uses
            // that instead).
            return self.file.has_tensor("output.weight");
        }
        gguf_name(name).is_some_and(|g| self.file.has_tensor(&g))
    }
}

/// Opens, validates and loads a GGUF model.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<(Model, GgufFile)> {
    let file = GgufFile::open(path)?;
    let config = file.config()?;
    let problems = file.problems(&config);
    if let Some(p) = problems.first() {
        let more = if problems.len() > 1 {
            format!(
                " (and {} more problems; `expert inspect` lists them)",
                problems.len() - 1
            )
        } else {
            String::new()
        };
        bail!("{}: {p}{more}", path.display());
    }
    let model = Model::load(
        config,
        &GgufSource::new(&file, dtype, device),
        dtype,
        device,
    )?;
    Ok((model, file))
}

/// True when `path` names a GGUF file (by extension or magic).
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_for_a_layer() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").unwrap(),
            "blk.12.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias").unwrap(),
            "blk.0.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_norm.weight").unwrap(),
            "blk.3.attn_k_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.3.post_attention_layernorm.weight").unwrap(),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.x.mlp.up_proj.weight").is_none());
    }

    #[test]
    fn unsupported_types_are_named() {
        let e = ggml_dtype(16).unwrap_err();
        assert!(e.contains("IQ2_XXS"), "{e}");
        assert_eq!(ggml_dtype(12).unwrap(), GgmlDType::Q4K);
        for t in [
            GgmlDType::F32,
            GgmlDType::BF16,
            GgmlDType::Q6K,
            GgmlDType::Q5_1,
        ] {
            assert_eq!(ggml_dtype(ggml_type_id(t)).unwrap(), t);
        }
    }
}
