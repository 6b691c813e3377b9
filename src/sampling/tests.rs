use super::*;
use crate::load::eos_ids_from_generation_config;
use rand::{Rng, SeedableRng};

fn qwen_dir() -> std::path::PathBuf {
    crate::test_fixtures::qwen3_tokenizer_dir()
}

fn params(temperature: f64, top_p: f64, top_k: usize, min_p: f64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        top_k,
        min_p,
        ..SamplingParams::greedy()
    }
}

fn tensor(v: &[f32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn random_logits(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-10.0f32..10.0)).collect()
}

#[test]
fn greedy_matches_tensor_argmax_and_prefers_lowest_id_on_ties() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    for _ in 0..50 {
        let v = random_logits(&mut rng, 1000);
        let reference: u32 = tensor(&v).argmax(0).unwrap().to_scalar().unwrap();
        assert_eq!(s.sample(&tensor(&v), &[]).unwrap(), reference);
    }
    // torch.argmax returns the first maximal index.
    assert_eq!(s.sample(&tensor(&[1.0, 3.0, 0.0, 3.0]), &[]).unwrap(), 1);
}

#[test]
fn top_k_1_and_tiny_top_p_are_greedy() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut k1 = Sampler::new(params(1.5, 1.0, 1, 0.0)).unwrap();
    let mut p0 = Sampler::new(params(1.5, 1e-9, 0, 0.0)).unwrap();
    for _ in 0..200 {
        let v = random_logits(&mut rng, 500);
        let reference: u32 = tensor(&v).argmax(0).unwrap().to_scalar().unwrap();
        assert_eq!(k1.sample(&tensor(&v), &[]).unwrap(), reference);
        assert_eq!(p0.sample(&tensor(&v), &[]).unwrap(), reference);
    }
}

#[test]
fn accepts_bf16_and_a_leading_unit_dimension() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    let t = Tensor::new(&[[0.5f32, 2.0, -1.0]], &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(s.sample(&t, &[]).unwrap(), 1);
    let bad = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(s.sample(&bad, &[]).is_err());
    let nan = tensor(&[0.0, f32::NAN]);
    assert!(s.sample(&nan, &[]).unwrap_err().to_string().contains("NaN"));
}

#[test]
fn top_k_keeps_exactly_the_k_best() {
    let v = [1.0f32, 5.0, 3.0, 4.0, 2.0];
    let mut s = Sampler::new(params(10.0, 1.0, 2, 0.0)).unwrap();
    let mut seen = [0usize; 5];
    for _ in 0..2000 {
        seen[s.sample(&tensor(&v), &[]).unwrap() as usize] += 1;
    }
    assert_eq!((seen[0], seen[2], seen[4]), (0, 0, 0), "{seen:?}");
    assert!(seen[1] > 0 && seen[3] > 0, "{seen:?}");
}

#[test]
fn top_p_renormalises_after_top_k_like_transformers() {
    // p = [0.4, 0.3, 0.2, 0.1]; top_k = 3 renormalises to [4/9, 3/9, 2/9].
    // top_p = 0.75: 4/9 + 3/9 = 0.78 >= 0.75, so transformers and
    // llama.cpp keep {0, 1}. Without renormalising (candle's
    // TopKThenTopP) 0.4 + 0.3 = 0.7 < 0.75 would also keep token 2.
    let v: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
    let draw = |top_p: f64| {
        let mut s = Sampler::new(params(1.0, top_p, 3, 0.0)).unwrap();
        let mut seen = [0usize; 4];
        for _ in 0..3000 {
            seen[s.sample(&tensor(&v), &[]).unwrap() as usize] += 1;
        }
        seen
    };
    let seen = draw(0.75);
    assert!(
        seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0,
        "{seen:?}"
    );
    // top_p = 0.8 > 0.78 needs token 2 too; token 3 is gone by top-k.
    let seen = draw(0.8);
    assert!(seen[2] > 0 && seen[3] == 0, "{seen:?}");
}

/// transformers' TopK → TopP → MinP warpers, written out literally
/// (full sorts, renormalised softmax at each stage) in f64.
fn reference_kept(logits: &[f32], t: f64, top_k: usize, top_p: f64, min_p: f64) -> Vec<u32> {
    let mut scores: Vec<f64> = logits.iter().map(|&l| f64::from(l) / t).collect();
    let n = scores.len();
    if top_k > 0 && top_k < n {
        let mut sorted = scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        for s in scores.iter_mut().filter(|s| **s < kth) {
            *s = f64::NEG_INFINITY;
        }
    }
    let softmax = |scores: &[f64]| -> Vec<f64> {
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    if top_p < 1.0 {
        let probs = softmax(&scores);
        let mut asc: Vec<usize> = (0..n).collect();
        asc.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
        let mut cum = 0.0;
        let mut remove = vec![false; n];
        for &i in &asc {
            cum += probs[i];
            remove[i] = cum <= 1.0 - top_p;
        }
        remove[*asc.last().unwrap()] = false;
        for i in 0..n {
            if remove[i] {
                scores[i] = f64::NEG_INFINITY;
            }
        }
    }
    if min_p > 0.0 {
        let probs = softmax(&scores);
        let top = probs.iter().copied().fold(0.0, f64::max);
        for i in 0..n {
            if probs[i] < min_p * top {
                scores[i] = f64::NEG_INFINITY;
            }
        }
    }
    (0..n as u32)
        .filter(|&i| scores[i as usize] > f64::NEG_INFINITY)
        .collect()
}

#[test]
fn filters_keep_the_same_tokens_as_transformers_warpers() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for case in 0..400 {
        let n = rng.random_range(2..400);
        let scale = rng.random_range(0.5f32..8.0);
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        let t = rng.random_range(0.2..1.5);
        let top_k = [0, 1, 5, 20, 50][case % 5];
        let top_p = [1.0, 0.95, 0.5, 0.8][case / 5 % 4];
        let min_p = [0.0, 0.05, 0.3][case / 20 % 3];
        let s = Sampler::new(params(t, top_p, top_k, min_p)).unwrap();
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(
            s.candidates(&v, max),
            reference_kept(&v, t, top_k, top_p, min_p),
            "case {case}: t={t} top_k={top_k} top_p={top_p} min_p={min_p}"
        );
    }
}

#[test]
fn min_p_masks_tokens_below_fraction_of_top() {
    // p = [0.5, 0.3, 0.15, 0.05], min_p = 0.2 → floor 0.1: only token 3
    // goes; token 2 (0.15) stays.
    let v: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let mut s = Sampler::new(params(1.0, 1.0, 0, 0.2)).unwrap();
    let mut seen = [0usize; 4];
    for _ in 0..20_000 {
        seen[s.sample(&tensor(&v), &[]).unwrap() as usize] += 1;
    }
    assert_eq!(seen[3], 0, "{seen:?}");
    assert!(seen[2] > 2000, "{seen:?}");
    // min-p applies to the temperature-scaled distribution: at T=0.5,
    // p ∝ [0.25, 0.09, 0.0225, ...] so 0.0225/0.25 = 0.09 < 0.2 masks token 2.
    let mut s = Sampler::new(params(0.5, 1.0, 0, 0.2)).unwrap();
    for _ in 0..5000 {
        let id = s.sample(&tensor(&v), &[]).unwrap();
        assert!(id < 2, "token {id} should be masked");
    }
}

#[test]
fn penalties_change_logits_as_defined() {
    let p = SamplingParams {
        repeat_penalty: 2.0,
        presence_penalty: 0.5,
        repeat_last_n: 64,
        ..SamplingParams::greedy()
    };
    let mut l = vec![2.0f32, -1.0, 0.5, 3.0];
    // token 1 twice (penalised once), token 9 outside the vocabulary.
    apply_penalties(&mut l, &[0, 1, 1, 9], &p);
    // 2.0 / 2 - 0.5 and -1.0 * 2 - 0.5
    assert_eq!(l, vec![0.5, -2.5, 0.5, 3.0]);

    // Only the last two history tokens count.
    let mut l = vec![2.0f32, -1.0, 0.5, 3.0];
    apply_penalties(
        &mut l,
        &[0, 3, 2],
        &SamplingParams {
            repeat_last_n: 2,
            ..p.clone()
        },
    );
    assert_eq!(l, vec![2.0, -1.0, 0.25 - 0.5, 1.5 - 0.5]);

    // repeat_last_n = 0 switches penalties off.
    let mut l = vec![2.0f32, -1.0];
    apply_penalties(
        &mut l,
        &[0, 1],
        &SamplingParams {
            repeat_last_n: 0,
            ..p
        },
    );
    assert_eq!(l, vec![2.0, -1.0]);
}

#[test]
fn penalties_apply_in_greedy_mode() {
    let p = SamplingParams {
        repeat_penalty: 4.0,
        ..SamplingParams::greedy()
    };
    let mut s = Sampler::new(p).unwrap();
    // 3.0/4 = 0.75 < 1.0
    assert_eq!(s.sample(&tensor(&[1.0, 3.0]), &[1]).unwrap(), 0);
}

#[test]
fn same_seed_same_ids_different_seed_different_ids() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let logits: Vec<Vec<f32>> = (0..100).map(|_| random_logits(&mut rng, 300)).collect();
    let run = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(SamplingParams {
            seed,
            temperature: 1.0,
            top_p: 0.9,
            top_k: 50,
            min_p: 0.01,
            ..SamplingParams::greedy()
        })
        .unwrap();
        logits
            .iter()
            .map(|v| s.sample(&tensor(v), &[]).unwrap())
            .collect()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn temperature_sampling_fits_softmax_chi_square() {
    let logits = [1.0f32, 0.5, -0.3, 2.0, 0.0];
    let t = 0.8f64;
    let n = 20_000usize;
    let mut s = Sampler::new(params(t, 1.0, 0, 0.0)).unwrap();
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&tensor(&logits), &[]).unwrap() as usize] += 1;
    }
    let w: Vec<f64> = logits.iter().map(|&l| (l as f64 / t).exp()).collect();
    let z: f64 = w.iter().sum();
    let chi2: f64 = counts
        .iter()
        .zip(&w)
        .map(|(&c, &wi)| {
            let e = n as f64 * wi / z;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    // χ² critical value for 4 degrees of freedom at p = 0.001.
    assert!(chi2 < 18.467, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn validation_messages_name_the_flag() {
    let msg = |p: SamplingParams| p.validate().unwrap_err().to_string();
    let d = SamplingParams::default();
    assert_eq!(
        msg(SamplingParams {
            top_p: 1.5,
            ..d.clone()
        }),
        "--top-p must be in (0, 1], got 1.5"
    );
    assert_eq!(
        msg(SamplingParams {
            top_p: 0.0,
            ..d.clone()
        }),
        "--top-p must be in (0, 1], got 0"
    );
    assert_eq!(
        msg(SamplingParams {
            temperature: -1.0,
            ..d.clone()
        }),
        "--temperature must be >= 0 (0 = greedy), got -1"
    );
    assert_eq!(
        msg(SamplingParams {
            min_p: 1.0,
            ..d.clone()
        }),
        "--min-p must be in [0, 1) (0 = off), got 1"
    );
    assert_eq!(
        msg(SamplingParams {
            repeat_penalty: 0.0,
            ..d.clone()
        }),
        "--repeat-penalty must be > 0 (1 = off), got 0"
    );
    assert!(SamplingParams {
        top_k: 0,
        ..d.clone()
    }
    .validate()
    .is_ok());
    assert!(Sampler::new(SamplingParams { top_p: 2.0, ..d }).is_err());
}

#[test]
fn set_parses_validates_and_leaves_params_alone_on_error() {
    let mut p = SamplingParams::default();
    p.set("top-p", "0.5").unwrap();
    p.set("top_k", "0").unwrap();
    p.set("seed", "12").unwrap();
    p.set("repeat_penalty", "1.1").unwrap();
    assert_eq!(
        (p.top_p, p.top_k, p.seed, p.repeat_penalty),
        (0.5, 0, 12, 1.1)
    );
    let before = p.clone();
    assert_eq!(
        p.set("top_p", "1.5").unwrap_err().to_string(),
        "top_p must be in (0, 1], got 1.5"
    );
    assert!(p
        .set("top_k", "-1")
        .unwrap_err()
        .to_string()
        .contains("top_k"));
    assert!(p.set("temperature", "hot").is_err());
    assert!(p
        .set("nucleus", "0.5")
        .unwrap_err()
        .to_string()
        .contains("unknown"));
    assert_eq!(p, before);
}

#[test]
fn reads_qwen3_generation_config() {
    let path = qwen_dir().join("generation_config.json");
    let p = SamplingParams::from_generation_config(&path).unwrap();
    assert_eq!(
        (p.temperature, p.top_p, p.top_k, p.min_p),
        (0.6, 0.95, 20, 0.0)
    );
    assert_eq!(
        eos_ids_from_generation_config(&path).unwrap(),
        vec![151645, 151643]
    );
}

#[test]
fn generation_config_edge_cases_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generation_config.json");
    let write = |s: &str| std::fs::write(&path, s).unwrap();

    write(
        r#"{"do_sample": false, "temperature": 0.7, "eos_token_id": 2, "repetition_penalty": 1.05}"#,
    );
    let p = SamplingParams::from_generation_config(&path).unwrap();
    assert_eq!((p.temperature, p.repeat_penalty), (0.0, 1.05));
    assert_eq!(eos_ids_from_generation_config(&path).unwrap(), vec![2]);

    write(r#"{"bos_token_id": 1}"#);
    assert_eq!(
        SamplingParams::from_generation_config(&path).unwrap(),
        SamplingParams::default()
    );
    assert!(eos_ids_from_generation_config(&path).unwrap().is_empty());

    write(r#"{"top_p": "high", "eos_token_id": [1, "x"]}"#);
    let e = SamplingParams::from_generation_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("generation_config.json") && e.contains("top_p"),
        "{e}"
    );
    let e = eos_ids_from_generation_config(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eos_token_id"), "{e}");

    write(r#"{"top_p": 1.5}"#);
    let e = SamplingParams::from_generation_config(&path)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("top_p must be in (0, 1], got 1.5"), "{e}");

    write("[1, 2");
    let e = SamplingParams::from_generation_config(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid JSON"), "{e}");

    // No file: the defaults. A directory in its place is an error.
    assert_eq!(
        SamplingParams::from_generation_config(&dir.path().join("missing.json")).unwrap(),
        SamplingParams::default()
    );
    let e = SamplingParams::from_generation_config(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
}
