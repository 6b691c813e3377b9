//! Will the weights fit? Before anything is mapped or allocated, the
//! tensors a file's header declares are added up as they will be held (f32
//! tensors in the compute dtype; bf16/f16 ones as stored on the CPU, see
//! `model::weights::held_dtype`; quantized ones as stored) and compared
//! with the memory this process may use: the system's available memory
//! (MemAvailable + free swap), the address-space limit (`ulimit -v`) less
//! what is already mapped, and a cgroup memory limit. A model that cannot
//! fit fails with one line that says how much it needs and what is there.
//!
//! The estimate is a lower bound (activations and the KV cache come on
//! top), so it never refuses a model that would load.

use crate::formats::gguf::{is_float, GgufFile};
use crate::model::weights::held_dtype;
use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use std::path::Path;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes the float tensors of a safetensors checkpoint take in `dtype`
/// (other dtypes as stored); None when a header cannot be read up front.
pub fn safetensors_need(files: &[std::path::PathBuf], dtype: DType) -> Option<u64> {
    let mut total = 0u64;
    for f in files {
        for (_, st_dtype, shape) in crate::formats::safetensors::header_tensors(f)? {
            let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
            let each = match st_dtype.as_str() {
                "F16" => held_dtype(DType::F16, dtype, &Device::Cpu).size_in_bytes() as u64,
                "BF16" => held_dtype(DType::BF16, dtype, &Device::Cpu).size_in_bytes() as u64,
                "F32" | "F64" => dtype.size_in_bytes() as u64,
                "I64" | "U64" => 8,
                "I32" | "U32" => 4,
                "I16" | "U16" => 2,
                _ => 1,
            };
            total = total.checked_add(n.checked_mul(each)?)?;
        }
    }
    Some(total)
}

/// Bytes the tensors of a GGUF file take loaded: float tensors in `dtype`,
/// quantized ones as stored.
pub fn gguf_need(file: &GgufFile, dtype: DType) -> u64 {
    file.tensors
        .iter()
        .map(|t| {
            if is_float(t.dtype) {
                let held = match t.dtype {
                    GgmlDType::F16 => held_dtype(DType::F16, dtype, &Device::Cpu),
                    GgmlDType::BF16 => held_dtype(DType::BF16, dtype, &Device::Cpu),
                    _ => dtype,
                };
                (t.elem_count() as u64).saturating_mul(held.size_in_bytes() as u64)
            } else {
                t.size
            }
        })
        .fold(0u64, u64::saturating_add)
}

/// The tightest limit on the memory this process can still use, and its
/// name; None where nothing can be read (not Linux).
pub fn available() -> Option<(u64, &'static str)> {
    let mut limits: Vec<(u64, &'static str)> = Vec::new();
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let field = |k: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(k))?;
            let kib: u64 = line[k.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        if let Some(avail) = field("MemAvailable:") {
            limits.push((avail + field("SwapFree:").unwrap_or(0), "available memory"));
        }
    }
    #[cfg(unix)]
    {
        // SAFETY: getrlimit fills a plain C struct.
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rl) } == 0
            && rl.rlim_cur != libc::RLIM_INFINITY
        {
            let used = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    let l = s.lines().find(|l| l.starts_with("VmSize:"))?;
                    l[7..]
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
                * 1024;
            limits.push(((rl.rlim_cur as u64).saturating_sub(used), "ulimit -v"));
        }
    }
    let cgroup = |f: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let Some(max) = cgroup("memory.max") {
        let used = cgroup("memory.current").unwrap_or(0);
        limits.push((max.saturating_sub(used), "the cgroup memory limit"));
    }
    limits.into_iter().min_by_key(|&(b, _)| b)
}

/// Fails when `need` bytes of weights cannot fit in what is available.
/// `mapped`: bytes the file maps into the address space as well.
pub fn check_fits(path: &Path, need: u64, mapped: u64, dtype: DType) -> Result<()> {
    check_against(path, need, mapped, dtype, available())
}

fn check_against(
    path: &Path,
    need: u64,
    mapped: u64,
    dtype: DType,
    available: Option<(u64, &'static str)>,
) -> Result<()> {
    let Some((have, what)) = available else {
        return Ok(());
    };
    // The address-space limit also counts the mapped file.
    let need_here = if what == "ulimit -v" {
        need.saturating_add(mapped)
    } else {
        need
    };
    if need_here > have {
        bail!(
            "{}: loading needs at least {:.1} GiB of memory (the weights, {} compute{}) and {:.1} GiB is available ({what}); \
             use a smaller --dtype, --quantize q4_k, a quantized GGUF or a smaller model",
            path.display(),
            need_here as f64 / GIB,
            format!("{dtype:?}").to_lowercase(),
            if need_here > need { ", plus the mapped file" } else { "" },
            have as f64 / GIB,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_what_cannot_fit_and_says_how_much() {
        let p = Path::new("m.gguf");
        let gib = 1u64 << 30;
        assert!(check_against(p, gib, 0, DType::F32, Some((2 * gib, "available memory"))).is_ok());
        assert!(check_against(p, gib, 0, DType::F32, None).is_ok());
        let e = check_against(
            p,
            3 * gib,
            0,
            DType::F32,
            Some((2 * gib, "available memory")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("m.gguf: loading needs at least 3.0 GiB")
                && e.contains("2.0 GiB is available (available memory)"),
            "{e}"
        );
        // Under ulimit -v the mapped file counts too.
        let e = check_against(p, gib, 2 * gib, DType::F32, Some((2 * gib, "ulimit -v")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3.0 GiB") && e.contains("ulimit -v"), "{e}");
        assert!(available().is_none_or(|(b, _)| b > 0));
    }
}
