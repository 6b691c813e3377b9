//! Atomic file writes, for every file expert writes (conversations, GGUF).

use anyhow::{anyhow, Result};
use std::path::Path;

/// Writes a file atomically: `fill` writes a temporary file in the same
/// directory, which is then renamed over `path`, so a crash or a full disk
/// never leaves half a file (or a half-overwritten old one).
pub fn write_file_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let file = path.display();
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{file}: not a file path"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        drop(w);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {file}: {e}")
    })
}
