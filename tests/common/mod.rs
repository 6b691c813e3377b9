//! Shared helpers for the integration tests: fixture paths, goldens, and
//! running the `expert` binary.
#![allow(dead_code)]

pub mod process;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SmolLM2-135M-Instruct Q4_1, the real model `scripts/fetch_test_model.sh`
/// fetches: $EXPERT_SMOLLM2_GGUF (set by scripts/test.sh), else the fetch
/// script's cache. None (with a note) when it has not been fetched, unless
/// $EXPERT_REQUIRE_TEST_MODEL=1, which makes its absence a failure.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let p = match std::env::var_os("EXPERT_SMOLLM2_GGUF") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let root = match std::env::var_os("EXPERT_TEST_MODELS") {
                Some(r) => PathBuf::from(r),
                None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/expert-test-models"),
            };
            root.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("EXPERT_REQUIRE_TEST_MODEL").is_ok_and(|v| v == "1") {
        panic!(
            "{} not found and EXPERT_REQUIRE_TEST_MODEL=1; run scripts/fetch_test_model.sh",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found; run scripts/fetch_test_model.sh",
        p.display()
    );
    None
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/qwen3").join(name)
}

pub fn golden(name: &str) -> Value {
    read_json(&fixture(name).join("golden.json"))
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("list of ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("list of numbers")
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Every Qwen3 fixture directory.
pub const FIXTURES: [&str; 7] = [
    "tiny",
    "untied-f32",
    "sharded",
    "yarn",
    "linear",
    "dynamic",
    "trained",
];

/// Runs the expert binary with `args`.
pub fn expert(args: &[&str]) -> Output {
    expert_env(args, &[])
}

/// `expert` with extra environment variables.
pub fn expert_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_expert"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run expert")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A GGUF model as `expert` loads it (projections kept quantized), with its file.
pub fn load_gguf(path: &Path) -> (expert::model::Model, expert::formats::gguf::GgufFile) {
    let file = expert::formats::gguf::GgufFile::open(path).unwrap();
    let model = expert::load::gguf_model(&file, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    (model, file)
}
