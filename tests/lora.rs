//! LoRA adapters (PEFT format) over the tiny Qwen3 fixture, against PEFT's
//! float32 goldens (scripts/fixtures/lora.py): unmerged and merged, scale 0,
//! switching, two conversations with different adapters over one model, and
//! the refusals of adapters that do not fit.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use expert::adapters::peft;
use expert::cli::perplexity::perplexity_with;
use expert::generate::Engine;
use expert::model::{Lora, Model, Precision};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ADAPTERS: [&str; 2] = ["r8-all", "rslora-sub"];

fn adapter_dir(name: &str) -> PathBuf {
    root().join("tests/fixtures/lora").join(name)
}

fn lora_golden(name: &str) -> Value {
    read_json(&adapter_dir(name).join("golden.json"))
}

fn base() -> Model {
    expert::load::dir_model(&fixture("tiny"), DType::F32, &Device::Cpu).unwrap()
}

fn adapter(model: &Model, name: &str, scale: f64) -> Lora {
    peft::load(
        name,
        &adapter_dir(name),
        &model.config,
        DType::F32,
        &Device::Cpu,
        scale,
    )
    .unwrap()
    .lora
}

fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

fn logits(model: &Model, ids: &[u32], lora: Option<&Lora>) -> Vec<Vec<f32>> {
    let h = model
        .forward_hidden_with(ids, &mut model.new_cache(), lora, Precision::Exact)
        .unwrap();
    model.logits(&h).unwrap().to_vec2::<f32>().unwrap()
}

/// Greedy decoding through an Engine (prefill + KV-cached steps); the logits
/// of every step are returned too.
fn greedy(engine: &mut Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    engine.reset();
    let (mut l, _) = engine.prefill(prompt).unwrap();
    let (mut ids, mut rows) = (vec![], vec![l.to_vec1::<f32>().unwrap()]);
    for _ in 0..n {
        let id = argmax(&l);
        ids.push(id);
        l = engine.decode_step(id).unwrap();
        rows.push(l.to_vec1::<f32>().unwrap());
    }
    (ids, rows)
}

fn bits(rows: &[Vec<f32>]) -> Vec<u32> {
    rows.iter().flatten().map(|x| x.to_bits()).collect()
}

#[test]
fn unmerged_adapters_match_peft() {
    let model = base();
    for name in ADAPTERS {
        let g = lora_golden(name);
        let lora = adapter(&model, name, 1.0);
        assert_eq!(
            lora.pairs().next().unwrap().2.scale(),
            g["scale"].as_f64().unwrap()
        );
        let mut worst_nll = 0f64;
        for t in g["texts"].as_array().unwrap() {
            let ids = ids(&t["ids"]);
            let s = perplexity_with(&model, Some(&lora), &ids, ids.len(), false).unwrap();
            let want = t["nll"].as_f64().unwrap();
            let rel = (s.nll - want).abs() / want.abs();
            worst_nll = worst_nll.max(rel);
            assert!(rel <= 1e-5, "{name}: text NLL {} vs PEFT {want}", s.nll);
            // The adapter changes the answer: a test that ignored it would fail.
            let base_nll = t["base_nll"].as_f64().unwrap();
            assert!((want - base_nll).abs() > 1e-2, "{name}: adapter too weak");
        }
        let mut worst_logit = 0f64;
        for s in g["sequences"].as_array().unwrap() {
            let ids = ids(&s["ids"]);
            let sc = perplexity_with(&model, Some(&lora), &ids, ids.len(), false).unwrap();
            let want = s["nll"].as_f64().unwrap();
            let rel = (sc.nll - want).abs() / want.abs();
            worst_nll = worst_nll.max(rel);
            assert!(
                rel <= 1e-5,
                "{name}: sequence NLL {} vs PEFT {want}",
                sc.nll
            );
            let ours = logits(&model, &ids, Some(&lora));
            let cols = s["cols"].as_u64().unwrap() as usize;
            for (p, row) in s["positions"]
                .as_array()
                .unwrap()
                .iter()
                .zip(s["logits"].as_array().unwrap())
            {
                let p = p.as_u64().unwrap() as usize;
                for (a, b) in ours[p][..cols].iter().zip(floats(row)) {
                    worst_logit = worst_logit.max((*a as f64 - b).abs());
                }
            }
        }
        assert!(worst_logit < 1e-4, "{name}: logits differ by {worst_logit}");
        let mut engine = Engine::new(Arc::new(base()));
        engine.set_adapter(Some(Arc::new(adapter(&model, name, 1.0))));
        for c in g["greedy"].as_array().unwrap() {
            let want = ids(&c["new_ids"]);
            let (got, _) = greedy(&mut engine, &ids(&c["prompt_ids"]), want.len());
            assert_eq!(got, want, "{name}: greedy ids");
        }
        println!("{name}: worst relative NLL error {worst_nll:.2e}, worst logit |diff| {worst_logit:.2e}");
    }
}

#[test]
fn merged_equals_unmerged() {
    for name in ADAPTERS {
        let model = base();
        let lora = adapter(&model, name, 1.0);
        let mut merged = base();
        merged.merge(&lora).unwrap();
        let g = lora_golden(name);
        let mut worst = 0f64;
        for t in g["texts"].as_array().unwrap() {
            let ids = ids(&t["ids"]);
            let a = logits(&model, &ids, Some(&lora));
            let b = logits(&merged, &ids, None);
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                worst = worst.max((x - y).abs() as f64);
            }
            let s = perplexity_with(&merged, None, &ids, ids.len(), false).unwrap();
            let want = t["nll"].as_f64().unwrap();
            assert!((s.nll - want).abs() / want <= 1e-5, "{name} merged NLL");
        }
        assert!(
            worst < 1e-4,
            "{name}: merged vs unmerged logits differ by {worst}"
        );
        println!("{name}: merged vs unmerged worst logit |diff| {worst:.2e}");
    }
}

#[test]
fn scale_zero_is_the_base_bit_for_bit() {
    let model = base();
    let zero = adapter(&model, "r8-all", 0.0);
    for s in lora_golden("r8-all")["sequences"].as_array().unwrap() {
        let ids = ids(&s["ids"]);
        assert_eq!(
            bits(&logits(&model, &ids, Some(&zero))),
            bits(&logits(&model, &ids, None))
        );
    }
    // And a non-zero scale is not.
    let one = adapter(&model, "r8-all", 1.0);
    let ids = ids(&lora_golden("r8-all")["sequences"][0]["ids"]);
    assert_ne!(
        bits(&logits(&model, &ids, Some(&one))),
        bits(&logits(&model, &ids, None))
    );
}

#[test]
fn switching_a_b_a_equals_each_alone() {
    let g = lora_golden("r8-all");
    let prompt = ids(&g["greedy"][0]["prompt_ids"]);
    // Each adapter alone: a model with only that adapter resident.
    let alone = |name: &str| {
        let model = Arc::new(base());
        let a = Arc::new(adapter(&model, name, 1.0));
        let mut e = Engine::new(model);
        e.set_adapter(Some(a));
        greedy(&mut e, &prompt, 8)
    };
    let (ids_a, rows_a) = alone("r8-all");
    let (ids_b, rows_b) = alone("rslora-sub");
    assert_ne!(bits(&rows_a), bits(&rows_b));
    // Both resident, one conversation switching A → B → A.
    let model = Arc::new(base());
    let a = Arc::new(adapter(&model, "r8-all", 1.0));
    let b = Arc::new(adapter(&model, "rslora-sub", 1.0));
    let mut e = Engine::new(model);
    for (lora, want_ids, want_rows) in [
        (&a, &ids_a, &rows_a),
        (&b, &ids_b, &rows_b),
        (&a, &ids_a, &rows_a),
    ] {
        e.set_adapter(Some(lora.clone()));
        let (got, rows) = greedy(&mut e, &prompt, 8);
        assert_eq!(&got, want_ids);
        assert_eq!(bits(&rows), bits(want_rows), "{}", lora.name);
    }
    // Switching keeps nothing from the other adapter's KV cache.
    e.set_adapter(Some(a.clone()));
    e.prefill(&prompt).unwrap();
    e.set_adapter(Some(b.clone()));
    assert!(e.cached_ids().is_empty());
    e.prefill(&prompt).unwrap();
    e.set_adapter(Some(b));
    assert_eq!(e.cached_ids(), &prompt[..]);
}

#[test]
fn two_conversations_use_different_adapters_at_once() {
    let model = Arc::new(base());
    let a = Arc::new(adapter(&model, "r8-all", 1.0));
    let b = Arc::new(adapter(&model, "rslora-sub", 1.0));
    let ga = lora_golden("r8-all");
    let gb = lora_golden("rslora-sub");
    let (pa, wa) = (
        ids(&ga["greedy"][0]["prompt_ids"]),
        ids(&ga["greedy"][0]["new_ids"]),
    );
    let (pb, wb) = (
        ids(&gb["greedy"][1]["prompt_ids"]),
        ids(&gb["greedy"][1]["new_ids"]),
    );
    let mut ea = Engine::new(model.clone());
    let mut eb = Engine::new(model.clone());
    ea.set_adapter(Some(a));
    eb.set_adapter(Some(b));
    let (mut la, _) = ea.prefill(&pa).unwrap();
    let (mut lb, _) = eb.prefill(&pb).unwrap();
    let (mut got_a, mut got_b) = (vec![], vec![]);
    for _ in 0..wa.len().max(wb.len()) {
        if got_a.len() < wa.len() {
            got_a.push(argmax(&la));
            la = ea.decode_step(*got_a.last().unwrap()).unwrap();
        }
        if got_b.len() < wb.len() {
            got_b.push(argmax(&lb));
            lb = eb.decode_step(*got_b.last().unwrap()).unwrap();
        }
    }
    assert_eq!(got_a, wa, "conversation A (r8-all) vs PEFT");
    assert_eq!(got_b, wb, "conversation B (rslora-sub) vs PEFT");
}

// ---------------------------------------------------------------------------
// The command line

fn tiny() -> String {
    fixture("tiny").to_string_lossy().into_owned()
}

fn english() -> String {
    root()
        .join("tests/fixtures/text/english.txt")
        .to_string_lossy()
        .into_owned()
}

fn arg(name: &str) -> String {
    format!("{name}={}", adapter_dir(name).display())
}

#[test]
fn perplexity_cli_with_an_adapter_matches_peft() {
    let g = lora_golden("r8-all");
    let want = g["texts"][2]["nll"].as_f64().unwrap(); // english.txt
    let o = expert(&[
        "perplexity",
        "-m",
        &tiny(),
        "--file",
        &english(),
        "--json",
        "--adapter",
        &arg("r8-all"),
        "--adapter",
        &arg("rslora-sub"),
        "--expert",
        "r8-all",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let nll = v["nll"].as_f64().unwrap();
    assert!((nll - want).abs() / want <= 1e-5, "{nll} vs {want}");
    assert!(stderr(&o).contains("expert: r8-all"));
    // --merge gives the same figure.
    let o = expert(&[
        "perplexity",
        "-m",
        &tiny(),
        "--file",
        &english(),
        "--json",
        "--adapter",
        &arg("r8-all"),
        "--merge",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!((v["nll"].as_f64().unwrap() - want).abs() / want <= 1e-5);
    assert!(stderr(&o).contains("r8-all (merged)"));
}

#[test]
fn chat_json_and_stats_name_the_expert() {
    let o = expert(&[
        "chat",
        "-m",
        &tiny(),
        "--prompt",
        "Hi",
        "--raw",
        "-n",
        "4",
        "--temperature",
        "0",
        "--json",
        "--adapter",
        &arg("rslora-sub"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["expert"], "rslora-sub");
    assert_eq!(v["stats"]["expert"], "rslora-sub");
    let o = expert(&[
        "chat",
        "-m",
        &tiny(),
        "--prompt",
        "Hi",
        "--raw",
        "-n",
        "4",
        "--temperature",
        "0",
        "--stats",
        "--adapter",
        &arg("rslora-sub"),
        "--expert",
        "none",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expert:              none (base model)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn inspect_adapter_reports_and_checks_fit() {
    let o = expert(&[
        "inspect",
        "-m",
        &tiny(),
        "--adapter",
        adapter_dir("rslora-sub").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "q_proj ×1",
        "v_proj ×1",
        "down_proj ×1",
        "rank         4  alpha 8  scale 4 (rsLoRA",
        "fits         yes",
    ] {
        assert!(out.contains(want), "{want} not in {out}");
    }
    let o = expert(&[
        "inspect",
        "-m",
        &tiny(),
        "--adapter",
        adapter_dir("r8-all").to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    // 2 layers × (8·(32+64) + 8·(32+32)·2 + 8·(64+32) + 8·(32+64)·2 + 8·(64+32))
    assert_eq!(v["parameters"], 2 * 8 * (96 + 64 * 2 + 96 + 96 * 2 + 96));
    assert_eq!(v["modules"].as_object().unwrap().len(), 7);
    // Another base: one error line naming the tensor and both shapes.
    let other = fixture("untied-f32");
    let o = expert(&[
        "inspect",
        "-m",
        other.to_str().unwrap(),
        "--adapter",
        adapter_dir("r8-all").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ")
            && err.contains("down_proj.lora_A.weight has shape [8, 64], expected [8, 96]"),
        "{err}"
    );
}

/// A copy of r8-all with its config and tensors edited.
fn edited(dir: &Path, cfg: impl Fn(&mut Value), tensors: impl Fn(&mut Vec<(String, Tensor)>)) {
    let src = adapter_dir("r8-all");
    let mut c: Value = read_json(&src.join("adapter_config.json"));
    cfg(&mut c);
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    let mut t: Vec<(String, Tensor)> =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    tensors(&mut t);
    let map: std::collections::HashMap<String, Tensor> = t.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn bad_adapters_are_refused_in_one_line() {
    let q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    type CfgEdit = Box<dyn Fn(&mut Value)>;
    type TEdit = Box<dyn Fn(&mut Vec<(String, Tensor)>)>;
    let cases: Vec<(&str, CfgEdit, TEdit, &str)> = vec![
        (
            "dora",
            Box::new(|c| c["use_dora"] = true.into()),
            Box::new(|_| {}),
            "use_dora: DoRA adapters are not supported",
        ),
        (
            "save",
            Box::new(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])),
            Box::new(|_| {}),
            "modules_to_save",
        ),
        (
            "bias",
            Box::new(|c| c["bias"] = "lora_only".into()),
            Box::new(|_| {}),
            "bias: expected \"none\", got \"lora_only\"",
        ),
        (
            "embed",
            Box::new(|c| c["target_modules"] = serde_json::json!(["embed_tokens", "q_proj"])),
            Box::new(|_| {}),
            "embedding and lm_head targets",
        ),
        (
            "rank",
            Box::new(|_| {}),
            Box::new(move |t| {
                let i = t.iter().position(|(n, _)| n == q_a).unwrap();
                t[i].1 = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap();
            }),
            "q_proj.lora_A.weight has shape [4, 32], expected [8, 32]",
        ),
        (
            "layer",
            Box::new(|_| {}),
            Box::new(|t| {
                let extra: Vec<(String, Tensor)> = t
                    .iter()
                    .filter(|(n, _)| n.contains("layers.1.self_attn.q_proj"))
                    .map(|(n, x)| (n.replace("layers.1.", "layers.7."), x.clone()))
                    .collect();
                t.extend(extra);
            }),
            "module model.layers.7.self_attn.q_proj is not a projection of this base (2 layers",
        ),
        (
            "half",
            Box::new(|_| {}),
            Box::new(move |t| t.retain(|(n, _)| n != q_a)),
            "has only one of lora_A / lora_B",
        ),
        (
            "target",
            Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj"])),
            Box::new(|_| {}),
            "is not among target_modules (q_proj)",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, c, t, want) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        edited(&dir, c, t);
        let o = expert(&[
            "perplexity",
            "-m",
            &tiny(),
            "--file",
            &english(),
            "--adapter",
            &format!("x={}", dir.display()),
        ]);
        assert!(!o.status.success(), "{name}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("error: adapter x: "), "{name}: {err}");
        assert!(err.contains(want), "{name}: {want:?} not in {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // Flags that cannot work are refused before loading.
    for (args, want) in [
        (vec!["--expert", "auto"], "--expert auto needs --manifest"),
        (vec!["--adapter", "auto=x"], "reserved"),
        (
            vec!["--adapter-scale", "r8=x"],
            "--adapter-scale r8=x: expected a number",
        ),
        (vec!["--merge"], "--merge needs an --adapter"),
    ] {
        let mut a = vec!["perplexity", "-m", "/nonexistent", "--file", "/nonexistent"];
        a.extend(args);
        let o = expert(&a);
        assert!(stderr(&o).contains(want), "{want:?} not in {}", stderr(&o));
    }
}
