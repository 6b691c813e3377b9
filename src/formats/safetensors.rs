//! Safetensors checkpoints: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped.

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SINGLE: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";

/// The shard file names an index lists (`weight_map` values), sorted and
/// deduplicated, with the tensor each was first named for.
pub fn index_shards(index: &Path) -> Result<Vec<(String, String)>> {
    let v = super::json::read_object(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| {
            format!(
                "{}: field `weight_map`: expected an object of tensor name -> file",
                index.display()
            )
        })?;
    let mut shards: Vec<(String, String)> = Vec::new();
    for (name, f) in map {
        let f = f.as_str().with_context(|| {
            format!(
                "{}: field `weight_map.{name}`: expected a file name",
                index.display()
            )
        })?;
        if !shards.iter().any(|(s, _)| s == f) {
            shards.push((f.to_string(), name.clone()));
        }
    }
    shards.sort();
    Ok(shards)
}

/// The safetensors files of a Hugging Face directory: `model.safetensors`, or
/// the shards listed in `model.safetensors.index.json`.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX);
    if index.is_file() {
        let mut files = Vec::new();
        for (f, name) in index_shards(&index)? {
            let p = dir.join(&f);
            if !p.is_file() {
                bail!(
                    "{}: shard `{f}` (holding `{name}`) does not exist",
                    index.display()
                );
            }
            files.push(p);
        }
        return Ok(files);
    }
    bail!("{}: no {SINGLE} or {INDEX} found", dir.display())
}

/// A safetensors file's header, read without mapping the file (8 bytes of
/// length, then JSON): the tensors' entries (without `__metadata__`), where
/// the data section starts, and the file's size. None when it cannot be
/// read that way; opening the file for real then says what is wrong.
fn read_header(path: &Path) -> Option<(serde_json::Map<String, serde_json::Value>, u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).ok()?;
    let n = u64::from_le_bytes(n);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let serde_json::Value::Object(mut entries) = serde_json::from_slice(&header).ok()? else {
        return None;
    };
    entries.remove("__metadata__");
    Some((entries, 8 + n, size))
}

/// The tensors a safetensors file's header declares: (name, dtype, shape),
/// from the header alone (`read_header`).
pub fn header_tensors(path: &Path) -> Option<Vec<(String, String, Vec<u64>)>> {
    let (entries, _, _) = read_header(path)?;
    let mut out = Vec::new();
    for (name, t) in &entries {
        let dtype = t.get("dtype")?.as_str()?.to_string();
        let shape = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<Vec<u64>>>()?;
        out.push((name.clone(), dtype, shape));
    }
    Some(out)
}

/// Where each tensor's bytes lie in a safetensors file: name → (start,
/// end) as absolute file offsets (the header's `data_offsets` count from
/// the end of the header). None when the header cannot be read.
pub fn data_ranges(path: &Path) -> Option<HashMap<String, (u64, u64)>> {
    let (entries, base, size) = read_header(path)?;
    let mut out = HashMap::new();
    for (name, t) in entries {
        let o = t.get("data_offsets")?.as_array()?;
        let (a, b) = (o.first()?.as_u64()?, o.get(1)?.as_u64()?);
        let (a, b) = (base.checked_add(a)?, base.checked_add(b)?);
        if a > b || b > size {
            return None;
        }
        out.insert(name, (a, b));
    }
    Some(out)
}

/// A checkpoint's files, memory-mapped, and which file holds each tensor.
pub struct Checkpoint {
    pub st: MmapedSafetensors,
    /// tensor name -> file it lives in (for messages and `inspect`).
    pub files: HashMap<String, PathBuf>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = files(dir)?;
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
        Ok(Self { st, files })
    }

    /// Drops `name`'s mapped pages from this process's resident set once it
    /// has been copied out: the page cache keeps them, but peak RSS stays at
    /// the weights held plus one tensor instead of twice the checkpoint.
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Ok(view) = self.st.get(name) {
            let data = view.data();
            let page = 4096usize;
            let start = (data.as_ptr() as usize).div_ceil(page) * page;
            let end = (data.as_ptr() as usize + data.len()) / page * page;
            if end > start {
                // SAFETY: whole pages inside a read-only private file mapping
                // that nothing borrows any more; MADV_DONTNEED only makes
                // the next access fault the page back in from the file.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
    }

    /// The file name holding `name` (empty if none).
    pub fn file_name(&self, name: &str) -> String {
        self.files
            .get(name)
            .and_then(|p| p.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
