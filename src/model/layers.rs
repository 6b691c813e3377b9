//! The building blocks of a decoder layer: projections, RMSNorm, SwiGLU MLP
//! and grouped-query attention with optional per-head q/k norms.

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::rope::RopeTables;
use super::weights::WeightSource;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::attention::{flash_attn, AttnMask};

/// The weight of a projection, dense or kept quantized in memory.
pub enum ProjectionWeight {
    Dense(candle_nn::Linear),
    Quantized(QMatMul),
}

/// One of the seven adaptable projections (q, k, v, o, gate, up, down) or the
/// lm_head. This is the single place a LoRA delta is added to the output;
/// norms are never adapted.
pub struct Projection {
    pub weight: ProjectionWeight,
    pub bias: Option<Tensor>,
}

impl Projection {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: ProjectionWeight::Dense(candle_nn::Linear::new(weight, None)),
            bias,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            ProjectionWeight::Dense(l) => l.forward(x)?,
            ProjectionWeight::Quantized(q) => {
                // Quantized matmuls take f32 activations on CPU; prompts run
                // as f32 GEMMs on the dequantized weight (see quantize.rs).
                let dtype = x.dtype();
                crate::model::quantize::qmatmul_forward(q, x)?.to_dtype(dtype)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

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
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Mlp {
    pub fn load(src: &dyn WeightSource, prefix: &str, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: src.projection(&format!("{prefix}.gate_proj"), i, h, false)?,
            up_proj: src.projection(&format!("{prefix}.up_proj"), i, h, false)?,
            down_proj: src.projection(&format!("{prefix}.down_proj"), h, i, false)?,
        })
    }

    /// SwiGLU: down(silu(gate(x)) * up(x)).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

pub struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    pub kv_cache: KvCache,
}

impl Attention {
    pub fn load(src: &dyn WeightSource, prefix: &str, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias;
        let norm = |n: &str| -> anyhow::Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::load(
                    src,
                    &format!("{prefix}.{n}"),
                    d,
                    cfg.rms_norm_eps,
                )?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q_proj: src.projection(&format!("{prefix}.q_proj"), nh * d, h, bias)?,
            k_proj: src.projection(&format!("{prefix}.k_proj"), nkv * d, h, bias)?,
            v_proj: src.projection(&format!("{prefix}.v_proj"), nkv * d, h, bias)?,
            o_proj: src.projection(&format!("{prefix}.o_proj"), h, nh * d, false)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            kv_cache: KvCache::default(),
        })
    }

    /// x: (B, L, hidden) for positions `offset..offset+L`, where `offset`
    /// equals the number of cached positions.
    pub fn forward(&mut self, x: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let offset = self.kv_cache.len();
        let heads = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim));
        let mut q = heads(self.q_proj.forward(x)?, self.num_heads)?;
        let mut k = heads(self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = heads(self.v_proj.forward(x)?, self.num_kv_heads)?;
        // Qwen3 normalises each head's q and k before the rotation.
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        let (q, k) = rope.apply(&q.transpose(1, 2)?, &k.transpose(1, 2)?)?;
        // Back to (B, L, H, D), the cache and kernel layout.
        let (k, v) = self.kv_cache.append(&k.transpose(1, 2)?, &v)?;
        let q = q.transpose(1, 2)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ctx = if x.device().is_cpu() {
            fused_cpu_attention(&q, &k, &v, scale, offset)?
        } else {
            matmul_attention(&q, &k, &v, scale, offset)?
        };
        // ctx: (B, H, L, D) -> (B, L, H*D)
        let ctx = ctx
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&ctx)
    }
}

/// candle's fused CPU attention (online softmax, causal bound by loop, GQA
/// without materialising repeated k/v). It computes in f32.
fn fused_cpu_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    offset: usize,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let ctx = flash_attn::<f32>(
        &f32(q)?,
        &f32(k)?,
        &f32(v)?,
        scale as f32,
        AttnMask::causal_with_offset(offset),
        None,
        None,
    )?;
    ctx.to_dtype(dtype)
}

/// Plain softmax(q·kᵀ·scale + mask)·v for any device. Inputs (B, L, H, D),
/// output (B, H, L, D).
pub fn matmul_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    offset: usize,
) -> Result<Tensor> {
    let (b, l, nh, d) = q.dims4()?;
    let (_, s, nkv, _) = k.dims4()?;
    let groups = nh / nkv;
    // Grouped-query attention: query head h reads kv head h / groups.
    let expand = |t: &Tensor| -> Result<Tensor> {
        let t = t.transpose(1, 2)?; // (B, Hkv, S, D)
        if groups == 1 {
            return t.contiguous();
        }
        t.unsqueeze(2)?
            .broadcast_as((b, nkv, groups, s, d))?
            .reshape((b, nh, s, d))
    };
    let (k, v) = (expand(k)?, expand(v)?);
    let q = q.transpose(1, 2)?.contiguous()?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = if l > 1 {
        let mask: Vec<f32> = (0..l)
            .flat_map(|i| {
                (0..s).map(move |j| {
                    if j > i + offset {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (l, s), q.device())?.to_dtype(scores.dtype())?;
        scores.broadcast_add(&mask)?
    } else {
        scores
    };
    let probs =
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
    probs.matmul(&v)
}

pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    pub self_attn: Attention,
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

    pub fn forward(&mut self, x: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, rope)?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The fused CPU kernel and the portable matmul path agree, with GQA and
    /// a cache offset.
    #[test]
    fn fused_attention_matches_matmul_attention() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 3, 4, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (1, 5, 2, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (1, 5, 2, 8), &dev)?;
        let a = fused_cpu_attention(&q, &k, &v, 0.35, 2)?;
        let b = matmul_attention(&q, &k, &v, 0.35, 2)?;
        let diff = (a - b)?
            .abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
