//! The building blocks of a decoder layer: RMSNorm, the SwiGLU MLP and
//! grouped-query attention with optional per-head q/k norms. Stateless: the
//! caller passes each layer its slice of the KV cache.

use super::config::ModelConfig;
use super::kv_cache::LayerKv;
use super::linear::Linear;
use super::lora::{pick, LayerLora};
use super::rope::RopeTables;
use super::weights::WeightSource;
use candle_core::{Result, Tensor};

pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(src: &dyn WeightSource, name: &str, size: usize, eps: f64) -> anyhow::Result<Self> {
        Ok(Self {
            weight: src.tensor(&format!("{name}.weight"), &[size])?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    pub fn load(src: &dyn WeightSource, prefix: &str, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(src, &format!("{prefix}.gate_proj"), i, h, false)?,
            up_proj: Linear::load(src, &format!("{prefix}.up_proj"), i, h, false)?,
            down_proj: Linear::load(src, &format!("{prefix}.down_proj"), h, i, false)?,
        })
    }

    /// SwiGLU: down(silu(gate(x)) * up(x)), each projection with the
    /// layer's LoRA delta when `lora` has one.
    pub fn forward(&self, x: &Tensor, lora: Option<&LayerLora>) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward_with(x, pick(lora, 4))?)?;
        let up = self.up_proj.forward_with(x, pick(lora, 5))?;
        self.down_proj.forward_with(&(gate * up)?, pick(lora, 6))
    }
}

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn load(src: &dyn WeightSource, prefix: &str, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias;
        let norm = |n: &str| -> anyhow::Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                let name = format!("{prefix}.{n}");
                Ok(Some(RmsNorm::load(src, &name, d, cfg.rms_norm_eps)?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q_proj: Linear::load(src, &format!("{prefix}.q_proj"), nh * d, h, bias)?,
            k_proj: Linear::load(src, &format!("{prefix}.k_proj"), nkv * d, h, bias)?,
            v_proj: Linear::load(src, &format!("{prefix}.v_proj"), nkv * d, h, bias)?,
            o_proj: Linear::load(src, &format!("{prefix}.o_proj"), h, nh * d, false)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    /// x: (B, L, hidden) for positions `kv.len()..kv.len()+L`; returns
    /// (B, L, hidden) and appends this chunk's keys/values to `kv`.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        kv: &mut LayerKv,
        lora: Option<&LayerLora>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let offset = kv.len();
        let heads = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim));

        // 1. Project to per-head queries, keys and values: (B, L, H, D).
        let mut q = heads(self.q_proj.forward_with(x, pick(lora, 0))?, self.num_heads)?;
        let mut k = heads(
            self.k_proj.forward_with(x, pick(lora, 1))?,
            self.num_kv_heads,
        )?;
        let v = heads(
            self.v_proj.forward_with(x, pick(lora, 2))?,
            self.num_kv_heads,
        )?;

        // 2. Qwen3 normalises each head's q and k before the rotation.
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }

        // 3. Rotate q and k by their positions (rope works on (B, H, L, D)).
        let (q, k) = rope.apply(&q.transpose(1, 2)?, &k.transpose(1, 2)?)?;
        let (q, k) = (q.transpose(1, 2)?, k.transpose(1, 2)?);

        // 4. Append to the cache; attend over everything cached so far.
        let (k, v) = kv.append(&k, &v)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ctx = crate::ops::attention::attention(&q, &k, &v, scale, offset)?;

        // 5. Merge the heads, (B, H, L, D) → (B, L, H·D), and project back.
        let ctx = ctx
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.head_dim))?;
        self.o_proj.forward_with(&ctx, pick(lora, 3))
    }
}

pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(src: &dyn WeightSource, i: usize, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let p = format!("model.layers.{i}");
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::load(src, &format!("{p}.input_layernorm"), h, eps)?,
            self_attn: Attention::load(src, &format!("{p}.self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                src,
                &format!("{p}.post_attention_layernorm"),
                h,
                eps,
            )?,
            mlp: Mlp::load(src, &format!("{p}.mlp"), cfg)?,
        })
    }

    /// Pre-norm residual blocks: x + attn(norm(x)), then + mlp(norm(x)).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        kv: &mut LayerKv,
        lora: Option<&LayerLora>,
    ) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, rope, kv, lora)?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?, lora)?;
        x + h
    }

    /// The projection `PROJECTIONS[i]` (q, k, v, o, gate, up, down), for `--merge`.
    pub fn projection_mut(&mut self, i: usize) -> &mut Linear {
        match i {
            0 => &mut self.self_attn.q_proj,
            1 => &mut self.self_attn.k_proj,
            2 => &mut self.self_attn.v_proj,
            3 => &mut self.self_attn.o_proj,
            4 => &mut self.mlp.gate_proj,
            5 => &mut self.mlp.up_proj,
            _ => &mut self.mlp.down_proj,
        }
    }
}
