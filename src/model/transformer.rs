//! The decoder-only transformer, top to bottom:
//! embedding → N × (RMSNorm → attention → residual → RMSNorm → SwiGLU →
//! residual) → final RMSNorm → lm_head.

use super::config::ModelConfig;
use super::layers::{DecoderLayer, Projection, RmsNorm};
use super::rope::Rope;
use super::weights::WeightSource;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor};

pub struct Model {
    pub config: ModelConfig,
    embed_tokens: candle_nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Projection,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl Model {
    /// Builds the network from any weight source. The caller has validated
    /// the tensors against `config` (see `weights::SafetensorsSource::validate`).
    pub fn load(
        config: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embedding = src.tensor("model.embed_tokens.weight", &[v, h])?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(src, i, &config))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(src, "model.norm", h, config.rms_norm_eps)?;
        // A stored lm_head is used even when tied (some checkpoints store the
        // copy); otherwise a tied model shares the embedding matrix (no copy).
        let lm_head = if src.contains("lm_head.weight") || !config.tie_word_embeddings {
            src.projection("lm_head", v, h, false)?
        } else {
            Projection::dense(embedding.clone(), None)
        };
        let rope = Rope::new(
            &config.rope,
            config.head_dim,
            config.max_position_embeddings,
            device,
        )?;
        Ok(Self {
            embed_tokens: candle_nn::Embedding::new(embedding, h),
            layers,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            dtype,
            config,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Positions held in the KV cache.
    pub fn cache_len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.self_attn.kv_cache.len())
    }

    /// Rewinds the KV cache to its first `len` positions.
    pub fn truncate_cache(&mut self, len: usize) {
        for l in &mut self.layers {
            l.self_attn.kv_cache.truncate(len);
        }
    }

    pub fn reset_cache(&mut self) {
        for l in &mut self.layers {
            l.self_attn.kv_cache.reset();
        }
    }

    /// Runs `ids` (appended after the cached positions) through the decoder
    /// and returns the final-normed hidden states, (L, hidden).
    pub fn forward_hidden(&mut self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            bail!("cannot run the model on an empty token sequence");
        }
        let end = self.cache_len() + ids.len();
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
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let mut x = self.embed_tokens.forward(&input)?;
        let rope = self.rope.tables(self.cache_len(), ids.len(), self.dtype)?;
        for layer in &mut self.layers {
            x = layer.forward(&x, &rope)?;
        }
        Ok(self.norm.forward(&x)?.squeeze(0)?)
    }

    /// f32 logits for the given hidden states, (L, vocab).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// f32 logits for every position of `ids`, (L, vocab).
    pub fn forward(&mut self, ids: &[u32]) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids)?;
        self.logits(&hidden)
    }

    /// f32 logits of the last position only, (vocab,): the decode step.
    pub fn forward_last(&mut self, ids: &[u32]) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids)?;
        let last = hidden.narrow(0, ids.len() - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(0)?)
    }
}
