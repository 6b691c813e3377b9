//! Our forward pass against transformers' float32 goldens, for every
//! fixture (see tests/fixtures/README.md and scripts/make_fixtures.py).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use expert::cli::perplexity::perplexity;
use expert::generate::Engine;
use expert::load::dir_model;
use expert::model::Model;

fn load(name: &str, dtype: DType) -> Model {
    dir_model(&fixture(name), dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn logits_match_transformers() {
    for name in FIXTURES {
        let g = golden(name);
        let model = load(name, DType::F32);
        let mut worst = 0f64;
        for seq in g["sequences"].as_array().unwrap() {
            let ids = ids(&seq["ids"]);
            let mut cache = model.new_cache();
            let logits = model.forward(&ids, &mut cache).unwrap();
            let slice = &seq["logits"];
            let start = slice["start"].as_u64().unwrap() as usize;
            for (pos, expected) in slice["positions"]
                .as_array()
                .unwrap()
                .iter()
                .zip(slice["values"].as_array().unwrap())
            {
                let expected = floats(expected);
                let row: Vec<f32> = logits
                    .get(pos.as_u64().unwrap() as usize)
                    .unwrap()
                    .narrow(0, start, expected.len())
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let d = max_abs_diff(&row, &expected);
                worst = worst.max(d);
                assert!(d <= 1e-4, "{name}: position {pos}: max |Δlogit| {d:e}");
            }
            // The 20 largest logits at the last position, in order.
            let last = logits.get(ids.len() - 1).unwrap();
            let top_ids = common::ids(&seq["last_top"]["ids"]);
            let top_vals = floats(&seq["last_top"]["values"]);
            let last_v: Vec<f32> = last.to_vec1().unwrap();
            for (i, (&id, &v)) in top_ids.iter().zip(&top_vals).enumerate() {
                let d = (last_v[id as usize] as f64 - v).abs();
                assert!(
                    d <= 1e-4,
                    "{name}: top-{i} id {id}: {} vs {v}",
                    last_v[id as usize]
                );
            }
        }
        eprintln!("{name}: max |Δlogit| = {worst:e}");
    }
}

#[test]
fn mean_nll_matches_transformers() {
    for name in FIXTURES {
        let g = golden(name);
        let model = load(name, DType::F32);
        let mut cases: Vec<(Vec<u32>, f64)> = g["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (ids(&s["ids"]), s["nll"].as_f64().unwrap()))
            .collect();
        if let Some(texts) = g["texts"].as_array() {
            cases.extend(
                texts
                    .iter()
                    .map(|t| (ids(&t["ids"]), t["nll"].as_f64().unwrap())),
            );
        }
        for (ids, nll) in cases {
            let score = perplexity(&model, &ids, ids.len(), false).unwrap();
            let rel = (score.nll - nll).abs() / nll;
            eprintln!(
                "{name}: {} tokens, nll {:.8} vs {nll:.8}, rel {rel:e}",
                ids.len(),
                score.nll
            );
            assert!(
                rel <= 1e-5,
                "{name}: nll {} vs transformers {nll} (rel {rel:e})",
                score.nll
            );
            assert_eq!(score.tokens, ids.len() - 1);
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        let g = golden(name);
        let mut engine = Engine::new(load(name, DType::F32));
        for case in g["greedy"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let expected = ids(&case["new_ids"]);
            engine.reset();
            let (mut logits, _) = engine.prefill(&prompt).unwrap();
            let mut got = vec![];
            for _ in 0..expected.len() {
                let id = argmax(&logits);
                got.push(id);
                logits = engine.decode_step(id).unwrap();
            }
            assert_eq!(got, expected, "{name}: greedy continuation of {prompt:?}");
        }
    }
}

/// Decoding with the KV cache gives the logits of recomputing the whole
/// sequence, and a one-pass prefill equals feeding the prompt token by token.
/// (Not for dynamic NTK past its trained length: there the frequencies depend
/// on the sequence length, so cached keys keep an older rotation, exactly as
/// in transformers.)
#[test]
fn kv_cache_equals_full_recompute() {
    for name in ["tiny", "untied-f32", "sharded", "yarn", "linear"] {
        let g = golden(name);
        let ids = ids(&g["sequences"][0]["ids"]);
        let model = load(name, DType::F32);
        let full = model.forward(&ids, &mut model.new_cache()).unwrap();
        let mut cache = model.new_cache();
        let mut worst = 0f32;
        for (i, &id) in ids.iter().enumerate() {
            let step = model.forward_last(&[id], &mut cache).unwrap();
            let d = (step - full.get(i).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            worst = worst.max(d);
        }
        assert!(
            worst <= 1e-4,
            "{name}: token-by-token vs one pass: {worst:e}"
        );
        // Split prefill: half in one pass, the rest in a second pass.
        let mut cache = model.new_cache();
        let half = ids.len() / 2;
        model.forward(&ids[..half], &mut cache).unwrap();
        let rest = model.forward(&ids[half..], &mut cache).unwrap();
        let d = (rest - full.narrow(0, half, ids.len() - half).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-4, "{name}: two-part prefill: {d:e}");
    }
}

/// Rolling the cache back to a position and continuing equals a fresh run.
#[test]
fn truncated_cache_equals_fresh_prefill() {
    let g = golden("tiny");
    let ids = ids(&g["sequences"][0]["ids"]);
    let mut engine = Engine::new(load("tiny", DType::F32));
    let (fresh, n) = engine.prefill(&ids).unwrap();
    assert_eq!(n, ids.len());
    // A different continuation after a shared prefix: only the new part runs.
    let mut other = ids[..ids.len() / 2].to_vec();
    other.extend([11, 12, 13]);
    let (_, n) = engine.prefill(&other).unwrap();
    assert_eq!(n, 3);
    let (again, n) = engine.prefill(&ids).unwrap();
    assert_eq!(n, ids.len() - ids.len() / 2);
    let d = (fresh - again)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d <= 1e-4, "{d:e}");
}

#[test]
fn bf16_compute_stays_close() {
    for name in ["tiny", "sharded"] {
        let g = golden(name);
        let model = load(name, DType::BF16);
        for s in g["sequences"].as_array().unwrap() {
            let ids = ids(&s["ids"]);
            let nll = s["nll"].as_f64().unwrap();
            let score = perplexity(&model, &ids, ids.len(), false).unwrap();
            let rel = (score.nll - nll).abs() / nll;
            eprintln!("{name} bf16: nll {:.6} vs {nll:.6}, rel {rel:e}", score.nll);
            assert!(
                rel <= 1e-2,
                "{name}: bf16 nll {} vs {nll} (rel {rel:e})",
                score.nll
            );
        }
    }
}

#[test]
fn sequence_longer_than_context_is_an_error() {
    for name in ["yarn", "linear"] {
        let model = load(name, DType::F32);
        assert_eq!(model.config.context_length(), 128);
        let e = model
            .forward(&[1; 129], &mut model.new_cache())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("129 tokens exceeds the model's context of 128"),
            "{e}"
        );
        // Nothing half-done stays behind: the full context still works.
        let mut cache = model.new_cache();
        model.forward(&[1; 128], &mut cache).unwrap();
    }
}

/// The model is stateless: two conversations over one loaded model,
/// interleaved token by token, each give exactly (bit for bit) the logits of
/// running it alone, and the transformers greedy continuation.
#[test]
fn interleaved_conversations_share_one_model() {
    for name in ["tiny", "untied-f32", "yarn"] {
        let g = golden(name);
        let cases: Vec<(Vec<u32>, Vec<u32>)> = g["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (ids(&c["prompt_ids"]), ids(&c["new_ids"])))
            .collect();
        assert!(cases.len() >= 2, "{name}: needs two greedy cases");
        let model = std::sync::Arc::new(load(name, DType::F32));
        // Alone: one engine per case, run to the end.
        let alone: Vec<Vec<Vec<f32>>> = cases
            .iter()
            .map(|(prompt, expected)| {
                let mut e = Engine::new(model.clone());
                let (mut logits, _) = e.prefill(prompt).unwrap();
                let mut rows = vec![logits.to_vec1::<f32>().unwrap()];
                for _ in 0..expected.len() {
                    logits = e.decode_step(argmax(&logits)).unwrap();
                    rows.push(logits.to_vec1::<f32>().unwrap());
                }
                rows
            })
            .collect();
        // Interleaved: both engines alive at once, one step each in turn.
        let (a, b) = (&cases[0], &cases[1]);
        let mut ea = Engine::new(model.clone());
        let mut eb = Engine::new(model.clone());
        let (mut la, _) = ea.prefill(&a.0).unwrap();
        let (mut lb, _) = eb.prefill(&b.0).unwrap();
        let (mut got_a, mut got_b) = (vec![], vec![]);
        let (mut rows_a, mut rows_b) = (
            vec![la.to_vec1::<f32>().unwrap()],
            vec![lb.to_vec1::<f32>().unwrap()],
        );
        for step in 0..a.1.len().max(b.1.len()) {
            if step < a.1.len() {
                let id = argmax(&la);
                got_a.push(id);
                la = ea.decode_step(id).unwrap();
                rows_a.push(la.to_vec1::<f32>().unwrap());
            }
            if step < b.1.len() {
                let id = argmax(&lb);
                got_b.push(id);
                lb = eb.decode_step(id).unwrap();
                rows_b.push(lb.to_vec1::<f32>().unwrap());
            }
        }
        assert_eq!(got_a, a.1, "{name}: conversation A vs transformers");
        assert_eq!(got_b, b.1, "{name}: conversation B vs transformers");
        assert!(
            rows_a == alone[0],
            "{name}: A interleaved differs from A alone"
        );
        assert!(
            rows_b == alone[1],
            "{name}: B interleaved differs from B alone"
        );
    }
}

/// Generation's prefill (`forward_last`: bf16 prompt rows in two bf16 terms
/// on CPUs with AVX-512 BF16, `Precision::TwoTerm`) keeps the last
/// position's largest logits near transformers' float32 ones and in their
/// order: the bf16 fixtures, prompts of 37 to 80 tokens.
#[test]
fn generation_prefill_keeps_the_top_logits() {
    let mut worst = 0f64;
    for name in ["tiny", "sharded", "yarn", "linear"] {
        let g = golden(name);
        let model = load(name, DType::F32);
        for seq in g["sequences"].as_array().unwrap() {
            let ids = ids(&seq["ids"]);
            if ids.len() < 16 {
                continue; // decode rows: exact either way
            }
            let logits = model.forward_last(&ids, &mut model.new_cache()).unwrap();
            let last: Vec<f32> = logits.to_vec1().unwrap();
            let top_ids = common::ids(&seq["last_top"]["ids"]);
            let top_vals = floats(&seq["last_top"]["values"]);
            for (i, (&id, &v)) in top_ids.iter().zip(&top_vals).enumerate() {
                let d = (last[id as usize] as f64 - v).abs();
                worst = worst.max(d);
                assert!(
                    d <= 2e-4,
                    "{name}: top-{i} id {id}: {} vs {v}",
                    last[id as usize]
                );
            }
            assert_eq!(argmax(&logits), top_ids[0], "{name}: greedy token");
        }
    }
    eprintln!("generation prefill: worst |Δ| on the top-20 logits {worst:e}");
}
