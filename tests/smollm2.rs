//! SmolLM2-135M-Instruct Q4_1 (a real, trained Llama-architecture model
//! shipped as GGUF) against transformers' float32 references in
//! tests/fixtures/smollm2/golden.json. The GGUF is fetched by
//! scripts/fetch_test_model.sh; without it these tests print why and pass.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use expert::cli::perplexity::perplexity;
use expert::model::gguf;
use serde_json::Value;
use std::path::PathBuf;

const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cached GGUF, or None (with a note) when it has not been fetched.
fn model_path() -> Option<PathBuf> {
    let root = match std::env::var_os("EXPERT_TEST_MODELS") {
        Some(r) => PathBuf::from(r),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/expert-test-models"),
    };
    let p = root.join("smollm2").join(GGUF);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} not found; run scripts/fetch_test_model.sh", p.display());
        None
    }
}

fn golden() -> Value {
    read_json(&root().join("tests/fixtures/smollm2/golden.json"))
}

fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

#[test]
fn perplexity_within_two_percent_of_float32_reference() {
    let Some(path) = model_path() else { return };
    let g = golden();
    let p = &g["perplexity_english"];
    let ids = ids(&p["ids"]);
    let (mut model, _) = gguf::load(&path, DType::F32, &Device::Cpu).unwrap();
    let score = perplexity(&mut model, &ids, ids.len(), false).unwrap();
    let reference = p["ppl"].as_f64().unwrap();
    let rel = (score.ppl - reference) / reference;
    eprintln!(
        "smollm2 Q4_1: ppl {:.4} (nll {:.6}) vs transformers dequantized f32 {reference:.4} (nll {:.6}): {:+.3}%",
        score.ppl,
        score.nll,
        p["mean_nll"].as_f64().unwrap(),
        rel * 100.0
    );
    assert_eq!(score.tokens, p["n_predicted"].as_u64().unwrap() as usize);
    assert!(rel.abs() < 0.02, "perplexity {} vs {reference}", score.ppl);
}
