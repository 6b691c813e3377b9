//! Text generation: prefill the prompt in one pass (reusing whatever prefix
//! the KV cache already holds), then decode one token at a time until an eos
//! id, a stop string, the token budget or an interrupt.

use crate::model::{KvCache, Lora, Model};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence id was sampled.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// A stop string appeared in the text.
    Stop,
    /// The user interrupted (Ctrl-C).
    Interrupted,
}

pub struct GenerateOptions {
    pub max_tokens: usize,
    pub eos_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens actually run (the rest came from the KV cache).
    pub prefill_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub stop_reason: StopReason,
    /// The LoRA adapter (expert) that answered; None for the base model.
    pub expert: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, the eos id included when generation ended on one.
    pub token_ids: Vec<u32>,
    /// Generated text, without eos and stop strings.
    pub text: String,
    pub stats: Stats,
}

/// One sequence's generation state over a shared model: its KV cache, the
/// ids whose keys/values the cache holds and the LoRA adapter (expert) it
/// runs with. Two engines over the same `Arc<Model>` are two independent
/// conversations, each with its own adapter.
pub struct Engine {
    pub model: Arc<Model>,
    cache: KvCache,
    cached: Vec<u32>,
    adapter: Option<Arc<Lora>>,
    /// Named in the stats when the model itself has an adapter merged in.
    merged: Option<String>,
}

impl Engine {
    pub fn new(model: impl Into<Arc<Model>>) -> Self {
        let model = model.into();
        Self {
            cache: model.new_cache(),
            model,
            cached: Vec::new(),
            adapter: None,
            merged: None,
        }
    }

    /// Switches the adapter this conversation runs with (None: the base).
    /// The KV cache holds keys and values computed under the previous
    /// adapter, so it is reused only while the adapter stays the same.
    pub fn set_adapter(&mut self, adapter: Option<Arc<Lora>>) {
        let same = match (&self.adapter, &adapter) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.reset();
        }
        self.adapter = adapter;
    }

    pub fn adapter(&self) -> Option<&Arc<Lora>> {
        self.adapter.as_ref()
    }

    /// Records that the model has adapter `name` merged into its weights
    /// (`--merge`), so the stats name it.
    pub fn set_merged(&mut self, name: Option<String>) {
        self.merged = name;
    }

    /// The expert that answers: the adapter in use, else a merged one.
    pub fn expert_name(&self) -> Option<String> {
        match (&self.adapter, &self.merged) {
            (Some(a), _) => Some(a.name.clone()),
            (None, Some(m)) => Some(format!("{m} (merged)")),
            (None, None) => None,
        }
    }

    /// Ids currently represented in the KV cache.
    pub fn cached_ids(&self) -> &[u32] {
        &self.cached
    }

    pub fn reset(&mut self) {
        self.cache.reset();
        self.cached.clear();
    }

    /// Runs the prompt through the model and returns the last position's
    /// logits and how many tokens were actually computed. The cache is cut
    /// back to the longest common prefix with what it holds, so a chat turn
    /// only prefills what is new.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Tensor, usize)> {
        anyhow::ensure!(
            !prompt.is_empty(),
            "the prompt is empty: nothing to generate from"
        );
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token must run to produce logits.
        let keep = common.min(prompt.len() - 1);
        self.cache.truncate(keep);
        self.cached.truncate(keep);
        let logits =
            self.model
                .forward_last_with(&prompt[keep..], &mut self.cache, self.adapter.as_deref());
        // On error the cache may hold a partial step: forget it entirely.
        let logits = logits.inspect_err(|_| self.reset())?;
        self.cached.extend_from_slice(&prompt[keep..]);
        Ok((logits, prompt.len() - keep))
    }

    /// Appends one token and returns the next logits.
    pub fn decode_step(&mut self, id: u32) -> Result<Tensor> {
        let logits = self
            .model
            .forward_last_with(&[id], &mut self.cache, self.adapter.as_deref())
            .inspect_err(|_| self.reset())?;
        self.cached.push(id);
        Ok(logits)
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each
    /// completed piece of text as it becomes final.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        tokenizer: &Tokenizer,
        sampler: &mut Sampler,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Generation> {
        let start = Instant::now();
        let (mut logits, prefill_tokens) = self.prefill(prompt)?;
        let prefill_s = start.elapsed().as_secs_f64();
        let mut history: Vec<u32> = prompt.to_vec();
        let mut ids = Vec::new();
        let mut stream = tokenizer.stream();
        let mut stop = StopStrings::new(&opts.stop_strings);
        let mut ttft = None;
        let mut decode_start = Instant::now();
        let mut reason = StopReason::Length;
        while ids.len() < opts.max_tokens {
            if interrupt.is_some_and(|i| i.load(Ordering::Relaxed)) {
                reason = StopReason::Interrupted;
                break;
            }
            let id = sampler.sample(&logits, &history)?;
            if ttft.is_none() {
                ttft = Some(start.elapsed().as_secs_f64());
                decode_start = Instant::now();
            }
            ids.push(id);
            history.push(id);
            if opts.eos_ids.contains(&id) {
                reason = StopReason::Eos;
                break;
            }
            if let Some(piece) = stream.push(id)? {
                let (emit, hit) = stop.push(&piece);
                if !emit.is_empty() {
                    on_text(&emit)?;
                }
                if hit {
                    reason = StopReason::Stop;
                    break;
                }
            }
            if ids.len() == opts.max_tokens {
                break;
            }
            logits = self.decode_step(id)?;
        }
        if reason != StopReason::Stop {
            let tail = stream.finish()?;
            let (emit, hit) = stop.push(&tail);
            let emit = if hit { emit } else { emit + &stop.flush() };
            if !emit.is_empty() {
                on_text(&emit)?;
            }
            if hit {
                reason = StopReason::Stop;
            }
        }
        let decode_s = decode_start.elapsed().as_secs_f64();
        let generated = ids.len();
        let stats = Stats {
            prompt_tokens: prompt.len(),
            prefill_tokens,
            generated_tokens: generated,
            time_to_first_token_s: ttft.unwrap_or(prefill_s),
            prefill_tokens_per_s: prefill_tokens as f64 / prefill_s.max(1e-9),
            decode_tokens_per_s: if generated > 1 {
                (generated - 1) as f64 / decode_s.max(1e-9)
            } else {
                0.0
            },
            stop_reason: reason,
            expert: self.expert_name(),
        };
        Ok(Generation {
            token_ids: ids,
            text: stop.text,
            stats,
        })
    }
}

/// Holds back text that might be the start of a stop string, so a stop
/// string is never printed.
struct StopStrings<'a> {
    stops: &'a [String],
    pending: String,
    /// Everything released so far.
    text: String,
}

impl<'a> StopStrings<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            pending: String::new(),
            text: String::new(),
        }
    }

    /// Adds text; returns what may be shown now and whether a stop string
    /// was found (everything from it on is dropped).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.text.push_str(&out);
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| s.is_char_boundary(n) && self.pending.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out: String = self.pending.drain(..cut).collect();
        self.text.push_str(&out);
        (out, false)
    }

    fn flush(&mut self) -> String {
        let out = std::mem::take(&mut self.pending);
        self.text.push_str(&out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_never_shown() {
        let stops = vec!["</s>".to_string(), "STOP".to_string()];
        let mut s = StopStrings::new(&stops);
        let mut shown = String::new();
        for piece in ["Hello <", "/", "s", "> world"] {
            let (out, hit) = s.push(piece);
            shown += &out;
            if hit {
                break;
            }
        }
        assert_eq!(shown, "Hello ");
        assert_eq!(s.text, "Hello ");
    }

    #[test]
    fn partial_stop_prefix_is_released_when_it_diverges() {
        let stops = vec!["STOP".to_string()];
        let mut s = StopStrings::new(&stops);
        assert_eq!(s.push("a ST"), ("a ".to_string(), false));
        assert_eq!(s.push("ART"), ("START".to_string(), false));
        assert_eq!(s.flush(), "");
        assert_eq!(s.text, "a START");
    }
}
