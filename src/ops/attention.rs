//! Scaled dot-product attention with a causal mask and grouped-query heads.
//! Inputs are (B, L, H, D) queries and (B, S, Hkv, D) cached keys/values.

use candle_core::{DType, Result, Tensor};
use candle_nn::attention::{flash_attn, AttnMask};

/// softmax(q·kᵀ·scale + causal mask)·v, output (B, H, L, D): candle's fused
/// kernel on the CPU, plain matmuls elsewhere.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    if q.device().is_cpu() && q.dim(1)? == 1 {
        decode_attention_cpu(q, k, v, scale)
    } else if q.device().is_cpu() {
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

/// One new position attending over the whole cache (decode), heads spread
/// over our pool: (B, 1, H, D) queries, (B, S, Hkv, D) keys/values →
/// (B, H, 1, D). No mask is needed (every cached position is visible), and
/// nothing is copied: the cache's f32 storage is read in place.
fn decode_attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    let (b, _, nh, d) = q.dims4()?;
    let (_, s, nkv, _) = k.dims4()?;
    let groups = nh / nkv.max(1);
    let f32c = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let (q, k, v) = (f32c(q)?, f32c(k)?, f32c(v)?);
    let (qs, ks, vs) = (slice(&q)?, slice(&k)?, slice(&v)?);
    let path = super::gemv::Path::detect();
    let mut out = vec![0f32; b * nh * d];
    super::fill_chunks(&mut out, d, |i, o| {
        let (bi, h) = (i / nh, i % nh);
        let g = h / groups;
        let qrow = &qs[(bi * nh + h) * d..][..d];
        let row = |pos: usize| -> std::ops::Range<usize> {
            let start = ((bi * s + pos) * nkv + g) * d;
            start..start + d
        };
        let mut scores: Vec<f32> = (0..s)
            .map(|p| super::gemv::dot_f32(path, qrow, &ks[row(p)]) * scale as f32)
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut total = 0f32;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            total += *x;
        }
        o.iter_mut().for_each(|x| *x = 0.0);
        for (p, w) in scores.iter().enumerate() {
            let w = w / total;
            for (o, v) in o.iter_mut().zip(&vs[row(p)]) {
                *o += w * v;
            }
        }
    });
    Tensor::from_vec(out, (b, nh, 1, d), q.device())?.to_dtype(dtype)
}

/// A contiguous f32 CPU tensor's elements.
fn slice(t: &Tensor) -> Result<&[f32]> {
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("attention: tensor not contiguous".into()))?;
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
            // SAFETY: the storage outlives the guard only as long as `t`
            // lives; the caller keeps `t` alive while using the slice, and
            // nothing writes to it meanwhile.
            Ok(unsafe { std::slice::from_raw_parts(data[a..b].as_ptr(), b - a) })
        }
        _ => candle_core::bail!("attention: expected f32 CPU storage"),
    }
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

    /// The decode kernel (one query position over the whole cache) agrees
    /// with the matmul path, with GQA (16 heads over 8 and 2 kv heads),
    /// batch 2 and caches of 1 to 300 positions.
    #[test]
    fn decode_attention_matches_matmul_attention() -> Result<()> {
        let dev = Device::Cpu;
        for (nh, nkv, s) in [(16, 8, 1), (16, 2, 37), (4, 4, 300)] {
            let q = Tensor::randn(0f32, 1., (2, 1, nh, 128), &dev)?;
            let k = Tensor::randn(0f32, 1., (2, s, nkv, 128), &dev)?;
            let v = Tensor::randn(0f32, 1., (2, s, nkv, 128), &dev)?;
            let a = decode_attention_cpu(&q, &k, &v, 0.088)?;
            let b = matmul_attention(&q, &k, &v, 0.088, s - 1)?;
            let diff = (a - b)?
                .abs()?
                .flatten_all()?
                .max(D::Minus1)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "({nh},{nkv},{s}): {diff}");
        }
        Ok(())
    }
}
