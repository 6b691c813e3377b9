//! Next-token selection: penalties, temperature, top-k, top-p, min-p.
//!
//! The order follows transformers' warper chain (and llama.cpp's defaults):
//! repetition/presence penalties on the raw logits → temperature → top-k →
//! top-p → min-p → draw. Temperature 0 is greedy argmax after the penalties.
//!
//! The filters pick a candidate set; candle's [`LogitsProcessor`] then does
//! the temperature softmax over it and the seeded multinomial draw. The
//! filters are done here rather than with candle's `TopKThenTopP` because
//! that one compares the k survivors' cumulative mass with `top_p` without
//! renormalising (transformers and llama.cpp renormalise after top-k), has
//! no min-p, and sorts the whole vocabulary on every token (~15 ms for
//! 152k entries) where a top-k pass and a small sort take well under 1 ms.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Sampling settings. `top_k = 0`, `min_p = 0`, `repeat_penalty = 1`,
/// `presence_penalty = 0` and `repeat_last_n = 0` each switch that stage off;
/// `temperature = 0` means greedy decoding.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    /// Keep the k most likely tokens (ties with the k-th are kept, as in
    /// transformers); 0 = off.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` × the top probability; 0 = off.
    pub min_p: f64,
    /// transformers/llama.cpp repetition penalty: positive logits of recently
    /// seen tokens are divided by it, negative ones multiplied; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens (prompt included) the penalties
    /// look at; 0 = penalties off (llama.cpp's meaning).
    pub repeat_last_n: usize,
    /// Flat amount subtracted from the logit of every token seen in the
    /// window (OpenAI/llama.cpp presence penalty); 0 = off.
    pub presence_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Qwen3's published advice for thinking mode (temperature 0.6, top-p
    /// 0.95, top-k 20, min-p 0), no penalties, a fixed seed so runs repeat.
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 20,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            seed: 299_792_458,
        }
    }
}

/// Names used in messages: CLI flags for `validate`, JSON fields otherwise.
#[derive(Clone, Copy)]
enum Naming {
    Flag,
    Key,
    /// generation_config.json spells the repetition penalty differently.
    GenerationConfig,
}

fn name(naming: Naming, key: &str) -> String {
    match naming {
        Naming::Flag => format!("--{}", key.replace('_', "-")),
        Naming::Key => key.to_string(),
        Naming::GenerationConfig if key == "repeat_penalty" => "repetition_penalty".into(),
        Naming::GenerationConfig => key.to_string(),
    }
}

const KEYS: &str =
    "temperature, top_p, top_k, min_p, repeat_penalty, repeat_last_n, presence_penalty, seed";

impl SamplingParams {
    /// Greedy decoding with penalties off.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            seed: 0,
        }
    }

    /// Checks every field; the error names the CLI flag, e.g.
    /// `--top-p must be in (0, 1], got 1.5`.
    pub fn validate(&self) -> Result<()> {
        self.check(Naming::Flag)
    }

    fn check(&self, n: Naming) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "{} must be >= 0 (0 = greedy), got {}",
                name(n, "temperature"),
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("{} must be in (0, 1], got {}", name(n, "top_p"), self.top_p);
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            bail!(
                "{} must be in [0, 1) (0 = off), got {}",
                name(n, "min_p"),
                self.min_p
            );
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            bail!(
                "{} must be > 0 (1 = off), got {}",
                name(n, "repeat_penalty"),
                self.repeat_penalty
            );
        }
        if !self.presence_penalty.is_finite() {
            bail!(
                "{} must be a finite number (0 = off), got {}",
                name(n, "presence_penalty"),
                self.presence_penalty
            );
        }
        Ok(())
    }

    /// Reads `generation_config.json`: `temperature`, `top_p`, `top_k`,
    /// `min_p`, `repetition_penalty` where present, Qwen3's advice (see
    /// [`Default`]) for the rest. An explicit `"do_sample": false` means
    /// greedy, as in transformers; a missing `do_sample` keeps sampling
    /// (transformers would default to greedy, but model authors who ship
    /// temperatures mean them to be used). A missing file gives
    /// [`SamplingParams::default`]; an unreadable or invalid one is an error.
    pub fn from_generation_config(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let map = crate::formats::json::read_object(path)?;
        let file = path.display();
        let number = |key: &str| -> Result<Option<f64>> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| anyhow!("{file}: {key}: expected a number, got {v}")),
            }
        };
        let mut p = Self::default();
        if let Some(t) = number("temperature")? {
            p.temperature = t;
        }
        if let Some(v) = number("top_p")? {
            p.top_p = v;
        }
        match map.get("top_k") {
            None | Some(Value::Null) => {}
            Some(v) => {
                p.top_k = v
                    .as_u64()
                    .and_then(|k| usize::try_from(k).ok())
                    .ok_or_else(|| {
                        anyhow!("{file}: top_k: expected a non-negative integer, got {v}")
                    })?
            }
        }
        if let Some(v) = number("min_p")? {
            p.min_p = v;
        }
        if let Some(v) = number("repetition_penalty")? {
            p.repeat_penalty = v as f32;
        }
        match map.get("do_sample") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => p.temperature = 0.0,
            Some(v) => bail!("{file}: do_sample: expected true or false, got {v}"),
        }
        p.check(Naming::GenerationConfig)
            .map_err(|e| anyhow!("{file}: {e}"))?;
        Ok(p)
    }

    /// Sets one field from text, for the REPL's `/set KEY VALUE`. Keys:
    /// temperature, top_p, top_k, min_p, repeat_penalty, repeat_last_n,
    /// presence_penalty, seed (`-` may stand for `_`). Nothing changes when
    /// the value is rejected.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.trim().replace('-', "_");
        let value = value.trim();
        let float = || -> Result<f64> {
            value
                .parse::<f64>()
                .map_err(|_| anyhow!("{key}: expected a number, got {value:?}"))
        };
        let int = || -> Result<u64> {
            value
                .parse::<u64>()
                .map_err(|_| anyhow!("{key}: expected a non-negative integer, got {value:?}"))
        };
        let mut next = self.clone();
        match key.as_str() {
            "temperature" | "temp" => next.temperature = float()?,
            "top_p" => next.top_p = float()?,
            "top_k" => {
                next.top_k = usize::try_from(int()?).map_err(|_| anyhow!("{key}: too large"))?
            }
            "min_p" => next.min_p = float()?,
            "repeat_penalty" | "repetition_penalty" => next.repeat_penalty = float()? as f32,
            "repeat_last_n" => {
                next.repeat_last_n =
                    usize::try_from(int()?).map_err(|_| anyhow!("{key}: too large"))?
            }
            "presence_penalty" => next.presence_penalty = float()? as f32,
            "seed" => next.seed = int()?,
            _ => bail!("unknown sampling setting {key:?}; known: {KEYS}"),
        }
        next.check(Naming::Key)?;
        *self = next;
        Ok(())
    }
}

/// `eos_token_id` from `generation_config.json`: an integer or a list of
/// integers; empty when the field is missing or null.
pub fn eos_ids_from_generation_config(path: &Path) -> Result<Vec<u32>> {
    let map = crate::formats::json::read_object(path)?;
    let bad = |v: &Value| {
        anyhow!(
            "{}: eos_token_id: expected a token id or a list of token ids, got {v}",
            path.display()
        )
    };
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| bad(v))
    };
    match map.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

/// Applies the repetition and presence penalties to `logits` in place, over
/// the distinct tokens among the last `repeat_last_n` of `history` (ids
/// outside the vocabulary are ignored). Each token is penalised once, however
/// often it occurs, as in transformers and llama.cpp.
pub fn apply_penalties(logits: &mut [f32], history: &[u32], params: &SamplingParams) {
    let repeat = params.repeat_penalty != 1.0;
    let presence = params.presence_penalty != 0.0;
    if params.repeat_last_n == 0 || !(repeat || presence) {
        return;
    }
    let window = &history[history.len().saturating_sub(params.repeat_last_n)..];
    let mut seen = std::collections::HashSet::with_capacity(window.len());
    for &id in window {
        if !seen.insert(id) {
            continue;
        }
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        if repeat {
            *l = if *l > 0.0 {
                *l / params.repeat_penalty
            } else {
                *l * params.repeat_penalty
            };
        }
        if presence {
            *l -= params.presence_penalty;
        }
    }
}

/// Picks next tokens from logits; owns the seeded RNG, so one `Sampler`
/// per generation stream gives reproducible output for a given seed.
pub struct Sampler {
    params: SamplingParams,
    processor: LogitsProcessor,
}

/// Below this temperature `logits / T` can overflow f32; such a temperature
/// is greedy in all but name.
const MIN_TEMPERATURE: f64 = 1e-7;

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let processor = LogitsProcessor::from_sampling(
            params.seed,
            Sampling::All {
                temperature: params.temperature.max(MIN_TEMPERATURE),
            },
        );
        Ok(Self { params, processor })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits`: one row over the vocabulary (leading
    /// dimensions of size 1 are accepted), any float dtype, any device.
    /// `history`: prompt plus generated ids, used only by the penalties.
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let dims = logits.dims();
        let Some(&vocab) = dims.last() else {
            bail!("sampler: expected a 1-D logits tensor, got a scalar");
        };
        if dims.iter().rev().skip(1).any(|&d| d != 1) || vocab == 0 {
            bail!("sampler: expected one row of logits, got shape {dims:?}");
        }
        let mut logits: Vec<f32> = logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()
            .context("sampler: cannot read logits")?;
        if logits.iter().any(|l| l.is_nan()) {
            bail!("sampler: the model produced NaN logits");
        }
        apply_penalties(&mut logits, history, &self.params);

        let best = argmax(&logits);
        let max = logits[best];
        if max == f32::NEG_INFINITY {
            bail!("sampler: every token has probability zero (all logits are -inf)");
        }
        if self.params.temperature < MIN_TEMPERATURE || max == f32::INFINITY {
            return Ok(best as u32);
        }

        let candidates = self.candidates(&logits, max);
        if let [only] = candidates[..] {
            return Ok(only);
        }
        let cand_logits: Vec<f32> = candidates.iter().map(|&i| logits[i as usize]).collect();
        let n = cand_logits.len();
        let pick = self
            .processor
            .sample(&Tensor::from_vec(cand_logits, n, &Device::Cpu)?)?;
        candidates
            .get(pick as usize)
            .copied()
            .ok_or_else(|| anyhow!("sampler: drew index {pick} out of {n} candidates"))
    }

    /// Ids that survive top-k, then top-p over the renormalised top-k set,
    /// then min-p, in id order (transformers' `TopK`, `TopP` and `MinP`
    /// warpers). Never empty: the most likely token survives every filter.
    fn candidates(&self, logits: &[f32], max: f32) -> Vec<u32> {
        let p = &self.params;
        let floor = match p.top_k {
            // Ties with the k-th value survive, as in transformers.
            k if k > 0 && k < logits.len() => kth_largest(logits, k),
            _ => f32::NEG_INFINITY,
        };
        let mut cands: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| {
                let l = logits[i as usize];
                l >= floor && l > f32::NEG_INFINITY
            })
            .collect();
        if p.top_p >= 1.0 && p.min_p <= 0.0 {
            return cands;
        }
        // Probabilities relative to the top one: w = p_i / p_max.
        let t = p.temperature;
        let weight = |i: u32| ((f64::from(logits[i as usize]) - f64::from(max)) / t).exp();
        if p.min_p > 0.0 {
            // transformers: drop p_i < min_p · p_max.
            cands.retain(|&i| weight(i) >= p.min_p);
        }
        if p.top_p < 1.0 {
            // Min-p only removes a tail, so cutting it first leaves the
            // nucleus as transformers computes it (top-p before min-p).
            let weights: Vec<f64> = cands.iter().map(|&i| weight(i)).collect();
            let total: f64 = match p.min_p > 0.0 {
                // The nucleus is measured against the top-k mass, not the min-p one.
                true => (0..logits.len() as u32)
                    .filter(|&i| logits[i as usize] >= floor)
                    .map(weight)
                    .sum(),
                false => weights.iter().sum(),
            };
            let target = p.top_p * total;
            // Only tokens above some weight can be in the nucleus: if the
            // tokens at or above `cut` already hold `target`, the nucleus is
            // among them, and sorting just those is enough.
            let cut = [1e-1, 1e-2, 1e-4, 1e-8, 0.0]
                .into_iter()
                .find(|&cut| weights.iter().filter(|&&w| w >= cut).sum::<f64>() >= target)
                .unwrap_or(0.0);
            let mut order: Vec<usize> = (0..cands.len()).filter(|&j| weights[j] >= cut).collect();
            // Stable: equal weights keep id order, like candle's and torch's sorts.
            order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
            let mut cum = 0.0;
            let mut kept = Vec::new();
            for j in order {
                if cum >= target {
                    break;
                }
                cum += weights[j];
                kept.push(cands[j]);
            }
            kept.sort_unstable();
            cands = kept;
        }
        cands
    }
}

/// The k-th largest value (k ≥ 1). A small sorted buffer handles the usual
/// k of 20–100 in one cheap pass; larger k uses quickselect.
fn kth_largest(values: &[f32], k: usize) -> f32 {
    if k > 128 {
        let mut scratch = values.to_vec();
        let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        return *kth;
    }
    // Ascending; top[0] is the current k-th largest.
    let mut top: Vec<f32> = Vec::with_capacity(k + 1);
    for &v in values {
        if top.len() == k {
            if v <= top[0] {
                continue;
            }
            top.remove(0);
        }
        let at = top.partition_point(|&x| x < v);
        top.insert(at, v);
    }
    top[0]
}

/// Index of the largest value; the lowest index wins ties (torch.argmax).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
