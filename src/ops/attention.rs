//! Scaled dot-product attention with a causal mask and grouped-query heads.
//! Inputs are (B, L, H, D) queries and (B, S, Hkv, D) cached keys/values.

use candle_core::{DType, Result, Tensor};
use candle_nn::attention::{flash_attn, AttnMask};

/// softmax(q·kᵀ·scale + causal mask)·v, output (B, H, L, D): candle's fused
/// kernel on the CPU, plain matmuls elsewhere.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    if q.device().is_cpu() {
        fused_cpu_attention(q, k, v, scale, offset)
    } else {
        matmul_attention(q, k, v, scale, offset)
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
