//! The `expert` binary end to end on the `tiny` fixture (real Qwen3
//! tokenizer, random weights), against transformers' goldens.

mod common;

use common::*;

fn tiny() -> String {
    fixture("tiny").to_str().unwrap().to_string()
}

#[test]
fn perplexity_json_matches_transformers_loss() {
    let g = golden("tiny");
    for t in g["texts"].as_array().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("text.txt");
        std::fs::write(&file, t["text"].as_str().unwrap()).unwrap();
        let o = expert(&[
            "perplexity",
            "--model",
            &tiny(),
            "--file",
            file.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        let n = t["ids"].as_array().unwrap().len() as u64;
        assert_eq!(v["tokens"].as_u64().unwrap(), n - 1);
        let (ours, theirs) = (v["nll"].as_f64().unwrap(), t["nll"].as_f64().unwrap());
        assert!(
            (ours - theirs).abs() / theirs <= 1e-5,
            "nll {ours} vs {theirs}"
        );
        assert!((v["ppl"].as_f64().unwrap() - ours.exp()).abs() < 1e-9 * ours.exp());
    }
}

/// `--context W` scores the text in windows of W tokens, each an independent
/// sequence: the token count and the NLL equal the reference computed per
/// window (tests/fixtures/qwen3/tiny/windowed.json, scripts/fixtures/windowed.py).
#[test]
fn perplexity_windows_match_the_windowed_reference() {
    let reference = read_json(&fixture("tiny").join("windowed.json"));
    let text = root().join(reference["text_file"].as_str().unwrap());
    let n = reference["ids"].as_u64().unwrap() as usize;
    for case in reference["cases"].as_array().unwrap() {
        let window = case["context"].as_u64().unwrap() as usize;
        let o = expert(&[
            "perplexity",
            "--model",
            &tiny(),
            "--file",
            text.to_str().unwrap(),
            "--json",
            "--context",
            &window.to_string(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        // ceil(n/W) windows, each loses its first token.
        let tokens = v["tokens"].as_u64().unwrap() as usize;
        assert_eq!(tokens, n - n.div_ceil(window), "--context {window}");
        assert_eq!(tokens as u64, case["tokens"].as_u64().unwrap());
        let (ours, theirs) = (v["nll"].as_f64().unwrap(), case["nll"].as_f64().unwrap());
        let rel = (ours - theirs).abs() / theirs;
        eprintln!("--context {window}: nll {ours:.8} vs reference {theirs:.8} (rel {rel:.1e})");
        assert!(rel <= 1e-5, "--context {window}: nll {ours} vs {theirs}");
    }
    let o = expert(&[
        "perplexity",
        "--model",
        &tiny(),
        "--file",
        text.to_str().unwrap(),
        "--context",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--context"), "{}", stderr(&o));
}

#[test]
fn raw_greedy_generation_matches_transformers() {
    let g = golden("tiny");
    let tok = tokenizers::Tokenizer::from_file(fixture("tiny").join("tokenizer.json")).unwrap();
    for case in g["greedy"].as_array().unwrap() {
        let prompt_ids = ids(&case["prompt_ids"]);
        let expected = ids(&case["new_ids"]);
        let prompt = tok.decode(&prompt_ids, false).unwrap();
        let n = expected.len().to_string();
        let o = expert(&[
            "chat",
            "--model",
            &tiny(),
            "--prompt",
            &prompt,
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            &n,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(
            ids(&v["token_ids"]),
            expected,
            "greedy continuation of {prompt:?}"
        );
        assert_eq!(
            v["prompt_tokens"].as_u64().unwrap() as usize,
            prompt_ids.len()
        );
        assert_eq!(v["stop_reason"], "length");
        assert_eq!(
            v["text"].as_str().unwrap(),
            tok.decode(&expected, false).unwrap()
        );
    }
}

#[test]
fn errors_are_one_line() {
    let o = expert(&[
        "perplexity",
        "--model",
        &tiny(),
        "--file",
        "/no/such/file.txt",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("error: cannot read /no/such/file.txt"), "{e}");
    let o = expert(&[
        "chat",
        "--model",
        &tiny(),
        "--prompt",
        "x",
        "--raw",
        "--dtype",
        "f64",
    ]);
    assert_eq!(
        stderr(&o).trim(),
        "error: --dtype: expected auto, f32, bf16 or f16, got `f64`"
    );
}

/// Every --dtype and --device value: f32 is the reference, bf16/f16 stay
/// close, `auto` is f32 on this CPU-only build, and CUDA is a clear error.
#[test]
fn dtype_and_device_values() {
    let g = golden("tiny");
    let t = &g["texts"][2];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, t["text"].as_str().unwrap()).unwrap();
    let model = tiny();
    let nll = |extra: &[&str], simd: &str| -> f64 {
        let mut args = vec![
            "perplexity",
            "--model",
            &model,
            "--file",
            file.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = expert_env(&args, &[("EXPERT_SIMD", simd)]);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        v["nll"].as_f64().unwrap()
    };
    let reference = t["nll"].as_f64().unwrap();
    // Every kernel path this CPU has (`EXPERT_SIMD`) scores the reference.
    for (args, simd, tol) in [
        (&["--dtype", "f32"][..], "native", 1e-5),
        (&["--dtype", "f32"][..], "avx2", 1e-5),
        (&["--dtype", "f32"][..], "scalar", 1e-5),
        (&["--dtype", "auto", "--device", "auto"][..], "native", 1e-5),
        (&["--device", "cpu"][..], "native", 1e-5),
        (&["--dtype", "bf16"][..], "native", 1e-2),
        (&["--dtype", "f16"][..], "native", 1e-2),
    ] {
        let ours = nll(args, simd);
        let rel = (ours - reference).abs() / reference;
        assert!(
            rel <= tol,
            "{args:?} {simd}: nll {ours} vs {reference} (rel {rel:e})"
        );
    }
    if !cfg!(feature = "cuda") {
        let o = expert(&[
            "perplexity",
            "--model",
            &model,
            "--file",
            file.to_str().unwrap(),
            "--device",
            "cuda",
        ]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("error: --device cuda"), "{e}");
    }
    let o = expert(&[
        "perplexity",
        "--model",
        &model,
        "--file",
        file.to_str().unwrap(),
        "--device",
        "tpu",
    ]);
    assert_eq!(
        stderr(&o).trim(),
        "error: --device: expected cpu, cuda or auto, got `tpu`"
    );
}
