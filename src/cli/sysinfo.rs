//! What a benchmark records about the machine and the process: the CPU's
//! model and SIMD flags (machines here differ, so every figure carries
//! them), the thread count, and the peak resident set size.

use serde::Serialize;

/// The CPU as /proc/cpuinfo names it, and the flags our kernels care about.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CpuInfo {
    pub model: String,
    /// SIMD flags relevant to the kernels (avx2, fma, f16c, avx512*, vnni, amx…).
    pub flags: Vec<String>,
    /// The widest SIMD our kernels were allowed (`EXPERT_SIMD`): "native",
    /// "avx2" or "scalar".
    #[serde(default)]
    pub simd: String,
}

/// Flags worth recording: the ones that change which kernel path runs.
fn relevant(flag: &str) -> bool {
    flag.starts_with("avx") || flag.starts_with("amx") || matches!(flag, "fma" | "f16c" | "sse4_2")
}

pub fn cpu_info() -> CpuInfo {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags")
        .map(|f| {
            f.split_whitespace()
                .filter(|f| relevant(f))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let simd = crate::ops::simd_cap().name().to_string();
    CpuInfo { model, flags, simd }
}

/// The process's peak resident set size in bytes (VmHWM), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let cpu = cpu_info();
        assert!(!cpu.model.is_empty());
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert_eq!(
            cpu.flags.iter().any(|f| f == "avx2"),
            is_x86_feature_detected!("avx2")
        );
        #[cfg(target_os = "linux")]
        assert!(peak_rss_bytes() > 0);
    }
}
