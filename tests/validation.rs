//! Broken checkpoints fail before anything runs, with a one-line error that
//! names the tensor or field.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use std::collections::HashMap;
use std::path::Path;

/// Copies the `tiny` fixture into a temp dir, letting `edit` change its
/// tensors and config.
fn broken(
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut config = read_json(&src.join("config.json"));
    edit(&mut tensors, &mut config);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match expert::load::dir_model(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// The CLI prints exactly one `error:` line and exits 1.
fn cli_err(dir: &Path) -> String {
    let text = root().join("tests/fixtures/text/english.txt");
    let o = expert(&[
        "perplexity",
        "--model",
        dir.to_str().unwrap(),
        "--file",
        text.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn missing_tensor_is_named() {
    let d = broken(|t, _| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
    assert!(cli_err(d.path()).contains("model.layers.1.mlp.up_proj.weight"));
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let d = broken(|t, _| {
        let w = Tensor::zeros((16, 32), DType::BF16, &Device::Cpu).unwrap();
        t.insert("model.layers.0.self_attn.k_proj.weight".into(), w);
    });
    let e = load_err(d.path());
    assert!(
        e.contains("tensor `model.layers.0.self_attn.k_proj.weight`: expected shape [32, 32], found [16, 32]"),
        "{e}"
    );
    cli_err(d.path());
}

#[test]
fn untied_without_lm_head_is_refused() {
    let d = broken(|_, c| c["tie_word_embeddings"] = false.into());
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor `lm_head.weight`") && e.contains("tie_word_embeddings is false"),
        "{e}"
    );
    cli_err(d.path());
}

#[test]
fn bad_config_field_is_named() {
    let d = broken(|_, c| c["num_key_value_heads"] = 3.into());
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("`num_key_value_heads`"),
        "{e}"
    );
    let d = broken(|_, c| c["hidden_size"] = "wide".into());
    let e = cli_err(d.path());
    assert!(e.contains("`hidden_size`"), "{e}");
}

#[test]
fn inspect_reports_the_verdict() {
    let o = expert(&[
        "inspect",
        "--model",
        fixture("sharded").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["lm_head"], "tied_stored_copy");
    let files: std::collections::BTreeSet<&str> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    let cfg = read_json(&fixture("sharded").join("config.json"));
    let n_layers = cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    // 11 tensors per Qwen3 layer, + embedding, final norm, lm_head copy.
    assert_eq!(v["tensors"].as_array().unwrap().len(), 11 * n_layers + 3);
    assert_eq!(v["lora_targets"].as_array().unwrap().len(), 7);

    let d = broken(|t, _| {
        t.remove("model.norm.weight");
    });
    let o = expert(&["inspect", "--model", d.path().to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0], "missing tensor `model.norm.weight`");
}

/// scripts/check_safetensors_keys.py gives the same verdicts as `expert inspect`.
#[test]
fn python_checker_agrees_with_inspect() {
    let cases = vec![
        broken(|_, _| {}),
        broken(|t, _| {
            t.remove("model.layers.0.self_attn.q_norm.weight");
        }),
        broken(|t, _| {
            let w = Tensor::zeros((16, 32), DType::BF16, &Device::Cpu).unwrap();
            t.insert("model.layers.1.mlp.down_proj.weight".into(), w);
        }),
        broken(|_, c| c["tie_word_embeddings"] = false.into()),
        broken(|t, _| {
            let e = t["model.embed_tokens.weight"].clone();
            t.insert("lm_head.weight".into(), e);
            t.insert(
                "model.rotary_emb.inv_freq".into(),
                Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
            );
        }),
    ];
    for d in &cases {
        let dir = d.path().to_str().unwrap();
        let ours = expert(&["inspect", "--model", dir, "--json"]);
        let ours: serde_json::Value = serde_json::from_str(&stdout(&ours)).unwrap();
        let py = std::process::Command::new("python3")
            .args([
                root()
                    .join("scripts/check_safetensors_keys.py")
                    .to_str()
                    .unwrap(),
                dir,
                "--json",
            ])
            .output()
            .expect("python3");
        let py: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
        for key in ["valid", "lm_head", "problems", "unused"] {
            assert_eq!(ours[key], py[key], "{key} differs for {dir}");
        }
        let names = |v: &serde_json::Value| -> Vec<String> {
            v["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&ours), names(&py));
    }
}

/// f16 storage loads too (the fixtures cover bf16 and f32): bf16 values of
/// this size are exact in f16, so the result equals transformers' golden.
#[test]
fn f16_storage_loads() {
    let d = broken(|t, c| {
        for v in t.values_mut() {
            *v = v.to_dtype(DType::F16).unwrap();
        }
        c["torch_dtype"] = "float16".into();
    });
    let g = golden("tiny");
    let seq = &g["sequences"][0];
    let ids = ids(&seq["ids"]);
    let model = expert::load::dir_model(d.path(), DType::F32, &Device::Cpu).unwrap();
    let score = expert::cli::perplexity::perplexity(&model, &ids, ids.len(), false).unwrap();
    let nll = seq["nll"].as_f64().unwrap();
    assert!(
        (score.nll - nll).abs() / nll < 1e-5,
        "{} vs {nll}",
        score.nll
    );
}
