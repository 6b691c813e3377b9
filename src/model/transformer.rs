//! The decoder-only transformer, top to bottom:
//! embedding → N × (RMSNorm → attention → residual → RMSNorm → SwiGLU →
//! residual) → final RMSNorm → lm_head.
//!
//! The model holds only weights: a sequence's keys and values live in the
//! `KvCache` its caller owns, so one loaded model serves any number of
//! conversations.

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::layers::{DecoderLayer, Embedding, RmsNorm};
use super::linear::Linear;
use super::lora::Lora;
use super::rope::Rope;
use super::weights::WeightSource;
use crate::ops::matmul::Precision;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

pub struct Model {
    pub config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl Model {
    /// Builds the network from any weight source. The caller has validated
    /// the tensors against `config` (see `crate::load`).
    pub fn load(
        config: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embedding = Embedding::new(src.embedding("model.embed_tokens.weight", &[v, h])?);
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(src, i, &config))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(src, "model.norm", h, config.rms_norm_eps)?;
        // A stored lm_head is used even when tied (some checkpoints store the
        // copy); otherwise a tied model shares the embedding matrix (no copy),
        // as it is held: float, bf16 or quantized.
        let lm_head = if src.contains("lm_head.weight") || !config.tie_word_embeddings {
            Linear::load(src, "lm_head", v, h, false)?
        } else {
            embedding.as_linear()?
        };
        let rope = Rope::new(
            &config.rope,
            config.head_dim,
            config.max_position_embeddings,
            device,
        )?;
        Ok(Self {
            embed_tokens: embedding,
            layers,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            dtype,
            config,
        })
    }

    /// Where the projection weights (the lm_head included) lie in memory,
    /// as (address, bytes): what decode streams on every token.
    pub fn weight_spans(&self) -> Vec<(usize, usize)> {
        (self.layers.iter())
            .flat_map(DecoderLayer::projections)
            .chain([&self.lm_head])
            .filter_map(Linear::weight_span)
            .collect()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How the projection weights are held in memory, over all layers: the
    /// types, most common first, joined by "+" ("bf16", "q4_k+q6_k").
    pub fn weight_format(&self) -> String {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for f in self.layers.iter().flat_map(DecoderLayer::weight_formats) {
            *counts.entry(f).or_default() += 1;
        }
        let mut types: Vec<_> = counts.into_iter().collect();
        types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        types.into_iter().map(|t| t.0).collect::<Vec<_>>().join("+")
    }

    /// An empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Runs `ids` (appended after the positions `cache` holds) through the
    /// decoder and returns the final-normed hidden states, (L, hidden),
    /// computed exactly (`Precision::Exact`).
    pub fn forward_hidden(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_hidden_with(ids, cache, None, Precision::Exact)
    }

    /// `forward_hidden` with a LoRA adapter applied unmerged, and prompt
    /// rows on quantized weights computed as `p` says. The cache must have
    /// been filled under the same adapter (its keys and values depend on it).
    pub fn forward_hidden_with(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        lora: Option<&Lora>,
        p: Precision,
    ) -> Result<Tensor> {
        if let Some(l) = lora {
            if l.num_layers() != self.layers.len() {
                bail!(
                    "adapter {} has {} layers, the model {}",
                    l.name,
                    l.num_layers(),
                    self.layers.len()
                );
            }
        }
        if ids.is_empty() {
            bail!("cannot run the model on an empty token sequence");
        }
        if cache.num_layers() != self.layers.len() {
            bail!(
                "KV cache has {} layers, the model {}",
                cache.num_layers(),
                self.layers.len()
            );
        }
        let start = cache.len();
        let end = start + ids.len();
        if end > self.config.context_length() {
            bail!(
                "sequence of {end} tokens exceeds the model's context of {} tokens",
                self.config.context_length()
            );
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            bail!(
                "token id {bad} is out of range for vocab_size {}",
                self.config.vocab_size
            );
        }
        // (1, L) ids → (1, L, hidden)
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let mut x = self.embed_tokens.forward(&input)?.to_dtype(self.dtype)?;
        let rope = self.rope.tables(start, ids.len(), self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &rope, cache.layer(i), lora.and_then(|l| l.layer(i)), p)?;
        }
        Ok(self.norm.forward(&x)?.squeeze(0)?)
    }

    /// f32 logits for the given hidden states, (L, vocab).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// f32 logits for every position of `ids`, (L, vocab).
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids, cache)?;
        self.logits(&hidden)
    }

    /// f32 logits of the last position only, (vocab,): prefill's and each
    /// decode step's output. Prompt rows on quantized weights are computed
    /// as decode computes a token (`Precision::TwoTerm`), the largest logits
    /// exactly (`Linear::forward_refined`).
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_last_with(ids, cache, None)
    }

    /// `forward_last` with a LoRA adapter applied unmerged.
    pub fn forward_last_with(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        lora: Option<&Lora>,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden_with(ids, cache, lora, Precision::TwoTerm)?;
        let last = hidden.narrow(0, ids.len() - 1, 1)?;
        let logits = self.lm_head.forward_refined(&last)?.to_dtype(DType::F32)?;
        Ok(logits.squeeze(0)?)
    }

    /// Folds `lora` into the float projection weights (`--merge`): the model
    /// then computes base + adapter at the base's speed, with no adapter passed.
    pub fn merge(&mut self, lora: &Lora) -> Result<()> {
        if lora.num_layers() != self.layers.len() {
            bail!(
                "adapter {} has {} layers, the model {}",
                lora.name,
                lora.num_layers(),
                self.layers.len()
            );
        }
        for (l, p, pair) in lora.pairs() {
            self.layers[l]
                .projection_mut(p)
                .merge(&pair.delta_weight()?)?;
        }
        Ok(())
    }
}
