//! The GGUF reader: a bounded header parser, metadata getters, tensor data
//! read on demand.
//!
//! The header is parsed here rather than by candle's `gguf_file::Content`:
//! every count and length read from the file is checked against the bytes
//! that remain before anything is allocated, arrays are stored compactly
//! (a `Vec<u8>` rather than one enum per byte), tensor shapes are checked for
//! overflow and every tensor's data range is checked against the file size.
//! A malformed file therefore fails with one error line naming the file and
//! the problem, never with a panic or a huge allocation. Tensor bytes are
//! read on demand and handed to candle's `qtensor_from_ggml`.

use super::types::{ggml_dtype, type_name};
use super::value::{vtype, vtype_name, MetaArray, MetaValue};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

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

/// An opened GGUF file: parsed, validated header; tensor data read on demand.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub file_size: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    file: std::fs::File,
    /// The whole file, mapped read-only on the first tensor read (after
    /// the loader's memory check); tensors are copied out of it.
    map: std::sync::OnceLock<memmap2::Mmap>,
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

    fn value(&mut self, t: u32, what: &str, depth: usize) -> Result<MetaValue> {
        Ok(match t {
            vtype::U8 => MetaValue::U8(self.u8(what)?),
            vtype::I8 => MetaValue::I8(self.u8(what)? as i8),
            vtype::U16 => MetaValue::U16(self.u16(what)?),
            vtype::I16 => MetaValue::I16(self.u16(what)? as i16),
            vtype::U32 => MetaValue::U32(self.u32(what)?),
            vtype::I32 => MetaValue::I32(self.u32(what)? as i32),
            vtype::U64 => MetaValue::U64(self.u64(what)?),
            vtype::I64 => MetaValue::I64(self.u64(what)? as i64),
            vtype::F32 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            vtype::F64 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            vtype::BOOL => match self.u8(what)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => bail!("{what}: invalid bool byte {b}"),
            },
            vtype::STRING => MetaValue::String(self.string(what)?),
            vtype::ARRAY => MetaValue::Array(self.array(what, depth + 1)?),
            other => bail!("{what}: unknown value type {other}"),
        })
    }

    fn array(&mut self, what: &str, depth: usize) -> Result<MetaArray> {
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
                MetaArray::$variant(
                    raw.chunks_exact($size)
                        .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match t {
            vtype::U8 => MetaArray::U8(self.bytes(len, what)?),
            vtype::I8 => MetaArray::I8(
                self.bytes(len, what)?
                    .into_iter()
                    .map(|b| b as i8)
                    .collect(),
            ),
            vtype::BOOL => MetaArray::Bool(
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
                MetaArray::String(v)
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(what, depth + 1)?);
                }
                MetaArray::Array(v)
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
        let (version, n_tensors, n_kv) = read_header(&mut r)?;
        let (metadata, meta_index) = read_metadata(&mut r, n_kv)?;
        let alignment = alignment(&metadata, &meta_index)?;
        let infos = read_tensor_infos(&mut r, n_tensors)?;
        // The data section starts at the next aligned offset after the header.
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let (tensors, tensor_index) = check_tensors(infos, data_offset, alignment, file_size)?;
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
            file,
            map: std::sync::OnceLock::new(),
        })
    }

    /// The open file (for a loader that maps it itself).
    pub fn handle(&self) -> &std::fs::File {
        &self.file
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
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
        let t = self.info_of(name)?;
        let q = ggml_file::qtensor_from_ggml(t.dtype, self.bytes(t)?, t.shape.clone(), device)
            .with_context(|| format!("{}: tensor `{name}`", self.path.display()));
        self.release(t);
        q
    }

    /// Reads an F32, F16 or BF16 tensor as a dense tensor of its stored
    /// dtype, copied once from the mapping; None for other types.
    pub fn float_tensor(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        self.float_tensor_with(name, |bytes, dtype, shape| {
            Ok(Tensor::from_raw_buffer(bytes, dtype, shape, device)?)
        })
    }

    /// `float_tensor` with the copy out of the mapping done by `copy`
    /// (given the bytes, stored dtype and shape); the mapped pages are
    /// released after it.
    pub fn float_tensor_with(
        &self,
        name: &str,
        copy: impl FnOnce(&[u8], DType, &[usize]) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        let t = self.info_of(name)?;
        let dtype = match t.dtype {
            GgmlDType::F32 => DType::F32,
            GgmlDType::F16 => DType::F16,
            GgmlDType::BF16 => DType::BF16,
            _ => return Ok(None),
        };
        let x = copy(self.bytes(t)?, dtype, &t.shape)
            .with_context(|| format!("{}: tensor `{name}`", self.path.display()));
        self.release(t);
        x.map(Some)
    }

    fn info_of(&self, name: &str) -> Result<&GgufTensor> {
        self.tensor_info(name)
            .with_context(|| format!("{}: missing tensor `{name}`", self.path.display()))
    }

    /// A tensor's bytes in the mapping (inside the file: `check_tensors`).
    fn bytes(&self, t: &GgufTensor) -> Result<&[u8]> {
        let map = match self.map.get() {
            Some(m) => m,
            None => {
                // SAFETY: a read-only private mapping. Like every mmap-based
                // loader (candle's safetensors, llama.cpp) this assumes the
                // file is not truncated while open; its size was checked
                // against every tensor.
                let m = unsafe { memmap2::Mmap::map(&self.file) }
                    .with_context(|| format!("{}: cannot map the file", self.path.display()))?;
                self.map.get_or_init(|| m)
            }
        };
        let start = (self.data_offset + t.offset) as usize;
        Ok(&map[start..start + t.size as usize])
    }

    /// Drops a copied-out tensor's mapped pages from this process's
    /// resident set (the page cache keeps them): peak RSS stays at the
    /// weights held plus one tensor, not twice the file.
    fn release(&self, t: &GgufTensor) {
        #[cfg(unix)]
        {
            let page = 4096usize;
            let Ok(data) = self.bytes(t) else { return };
            let start = (data.as_ptr() as usize).div_ceil(page) * page;
            let end = (data.as_ptr() as usize + data.len()) / page * page;
            if end > start {
                // SAFETY: whole pages inside our read-only private file
                // mapping, borrowed by nothing now; MADV_DONTNEED only makes
                // the next access fault the page back in from the file.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
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

/// Magic, version and the two entry counts, each count checked against the
/// bytes the file has left.
fn read_header(r: &mut Reader<impl Read>) -> Result<(u32, u64, u64)> {
    let file_size = r.size;
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
    Ok((version, n_tensors, n_kv))
}

type Metadata = (Vec<(String, MetaValue)>, HashMap<String, usize>);

/// The key/value pairs, in file order, with an index by key.
fn read_metadata(r: &mut Reader<impl Read>, n_kv: u64) -> Result<Metadata> {
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
    Ok((metadata, meta_index))
}

/// `general.alignment` (default 32): a power of two.
fn alignment(metadata: &[(String, MetaValue)], index: &HashMap<String, usize>) -> Result<u64> {
    let Some(&i) = index.get("general.alignment") else {
        return Ok(32);
    };
    let a = metadata[i].1.as_u64().unwrap_or(0);
    if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
        bail!(
            "metadata `general.alignment`: expected a power of two, got {:?}",
            metadata[i].1
        );
    }
    Ok(a)
}

/// A tensor's header entry as the file states it, before any check.
struct RawTensorInfo {
    name: String,
    /// GGUF order: innermost dimension first.
    ne: Vec<u64>,
    type_id: u32,
    offset: u64,
}

fn read_tensor_infos(r: &mut Reader<impl Read>, n_tensors: u64) -> Result<Vec<RawTensorInfo>> {
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
        infos.push(RawTensorInfo {
            name,
            ne,
            type_id,
            offset,
        });
    }
    Ok(infos)
}

/// Checks each tensor's type, shape and data range against the file, and
/// turns it into a `GgufTensor` (shape in candle order).
fn check_tensors(
    infos: Vec<RawTensorInfo>,
    data_offset: u64,
    alignment: u64,
    file_size: u64,
) -> Result<(Vec<GgufTensor>, HashMap<String, usize>)> {
    let mut tensors = Vec::with_capacity(infos.len());
    let mut tensor_index = HashMap::new();
    for RawTensorInfo {
        name,
        ne,
        type_id,
        offset,
    } in infos
    {
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
    Ok((tensors, tensor_index))
}
