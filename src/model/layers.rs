//! The building blocks of a decoder layer: RMSNorm, the SwiGLU MLP and
//! grouped-query attention with optional per-head q/k norms. Stateless: the
//! caller passes each layer its slice of the KV cache.

use super::config::ModelConfig;
use super::kv_cache::LayerKv;
use super::linear::Linear;
use super::lora::{pick, LayerLora};
use super::rope::RopeTables;
use super::weights::{Weight, WeightSource};
use crate::ops::matmul::Precision;
use candle_core::quantized::{ggml_file, QTensor};
use candle_core::{Module, Result, Tensor};

/// The token embedding table, held as its source gives it: float (f32,
/// bf16, f16) or quantized (a GGUF's table, whose rows are dequantized as
/// they are looked up, so no float copy of the whole table is made).
pub enum Embedding {
    Dense(Tensor),
    Quantized(std::sync::Arc<QTensor>),
}

impl Embedding {
    pub fn new(w: Weight) -> Self {
        match w {
            Weight::Dense(t) => Embedding::Dense(t),
            Weight::Quantized(q) => Embedding::Quantized(std::sync::Arc::new(q)),
        }
    }

    /// The same matrix as a tied lm_head (shared, not copied).
    pub fn as_linear(&self) -> Result<Linear> {
        match self {
            Embedding::Dense(t) => Linear::new(Weight::Dense(t.clone()), None),
            Embedding::Quantized(q) => Linear::shared_quantized(q.clone()),
        }
    }

    /// ids (…) → (…, hidden), in the dtype the table is held in (f32 for a
    /// quantized one).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => {
                let h = t.dim(1)?;
                candle_nn::Embedding::new(t.clone(), h).forward(ids)
            }
            Embedding::Quantized(q) => {
                let (_, h) = q.shape().dims2()?;
                let t = q.dtype();
                let row_bytes = h / t.block_size() * t.type_size();
                let data = q.data()?;
                let ids_v = ids.flatten_all()?.to_vec1::<u32>()?;
                let rows = ids_v
                    .iter()
                    .map(|&id| {
                        let start = id as usize * row_bytes;
                        let bytes = data.get(start..start + row_bytes).ok_or_else(|| {
                            candle_core::Error::Msg(format!("token id {id} outside the embedding"))
                        })?;
                        ggml_file::qtensor_from_ggml(t, bytes, vec![1, h], &q.device())?
                            .dequantize(&q.device())
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut shape = ids.dims().to_vec();
                shape.push(h);
                Tensor::cat(&rows, 0)?.reshape(shape)
            }
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
    pub fn forward(&self, x: &Tensor, lora: Option<&LayerLora>, p: Precision) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = Linear::forward_many(
            &[
                (&self.gate_proj, pick(lora, 4)),
                (&self.up_proj, pick(lora, 5)),
            ],
            x,
            p,
        )?
        .try_into()
        .map_err(|_| candle_core::Error::Msg("gate/up projections".into()))?;
        self.down_proj.forward_with(
            &crate::ops::activation::swiglu(&gate, &up)?,
            pick(lora, 6),
            p,
        )
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
        p: Precision,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let offset = kv.len();
        let heads = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim));

        // 1. Project to per-head queries, keys and values: (B, L, H, D).
        let [q, k, v]: [Tensor; 3] = Linear::forward_many(
            &[
                (&self.q_proj, pick(lora, 0)),
                (&self.k_proj, pick(lora, 1)),
                (&self.v_proj, pick(lora, 2)),
            ],
            x,
            p,
        )?
        .try_into()
        .map_err(|_| candle_core::Error::Msg("q/k/v projections".into()))?;
        let mut q = heads(q, self.num_heads)?;
        let mut k = heads(k, self.num_kv_heads)?;
        let v = heads(v, self.num_kv_heads)?;

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
        self.o_proj.forward_with(&ctx, pick(lora, 3), p)
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

    /// How the projection weights are held: "f32", "bf16", "q4_k"… (the
    /// types of all seven, most common first, joined by "+").
    pub fn weight_formats(&self) -> Vec<String> {
        self.projections().iter().map(|l| l.format()).collect()
    }

    /// The seven projections: q, k, v, o, gate, up, down.
    pub fn projections(&self) -> [&Linear; 7] {
        let a = &self.self_attn;
        let m = &self.mlp;
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// Pre-norm residual blocks: x + attn(norm(x)), then + mlp(norm(x)).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        kv: &mut LayerKv,
        lora: Option<&LayerLora>,
        p: Precision,
    ) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, rope, kv, lora, p)?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?, lora, p)?;
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
