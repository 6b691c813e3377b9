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
mod tests;
