//! Scaled dot-product attention with a causal mask and grouped-query heads.
//! Inputs are (B, L, H, D) queries and (B, S, Hkv, D) cached keys/values.

use candle_core::{DType, Result, Tensor};

/// softmax(q·kᵀ·scale + causal mask)·v, output (B, H, L, D): our pool's
/// kernel on the CPU, plain matmuls elsewhere.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    if q.device().is_cpu() {
        cpu_attention(q, k, v, scale, offset)
    } else {
        matmul_attention(q, k, v, scale, offset)
    }
}

/// Every query row over the cache positions it may see, (head, row) pairs
/// spread over our pool: (B, L, H, D) queries at positions offset..offset+L,
/// (B, S, Hkv, D) keys/values → (B, H, L, D). Grouped-query heads read
/// their kv head in place: nothing is repeated or copied out of the f32
/// cache, and the causal mask is the loop bound. Scores, softmax and the
/// weighted sum are f32 (exact `exp`), as candle's matmul path.
fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    let dtype = q.dtype();
    let (b, l, nh, d) = q.dims4()?;
    let (_, s, nkv, _) = k.dims4()?;
    let groups = nh / nkv.max(1);
    let f32c = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let (q, k, v) = (f32c(q)?, f32c(k)?, f32c(v)?);
    let (qs, ks, vs) = (slice(&q)?, slice(&k)?, slice(&v)?);
    let path = super::gemv::Path::detect();
    let mut out = vec![0f32; b * nh * l * d];
    super::fill_chunks(&mut out, d, |i, o| {
        // Output row i of (B, H, L, D): batch bi, head h, query row li.
        let (bi, h, li) = (i / (nh * l), i / l % nh, i % l);
        let g = h / groups;
        let qrow = &qs[((bi * l + li) * nh + h) * d..][..d];
        let row = |pos: usize| -> &[f32] { &ks[((bi * s + pos) * nkv + g) * d..][..d] };
        let visible = (offset + li + 1).min(s);
        let mut scores: Vec<f32> = (0..visible)
            .map(|p| super::gemv::dot_f32(path, qrow, row(p)) * scale as f32)
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let mut total = 0f32;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            total += *x;
        }
        o.iter_mut().for_each(|x| *x = 0.0);
        for (p, w) in scores.iter().enumerate() {
            let vrow = &vs[((bi * s + p) * nkv + g) * d..][..d];
            super::gemv::axpy_f32(path, w / total, vrow, o);
        }
    });
    Tensor::from_vec(out, (b, nh, l, d), q.device())?.to_dtype(dtype)
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

    /// The CPU kernel agrees with the matmul path within 1e-5: decode (one
    /// query row over caches of 1 to 300 positions) and prompts (3 to 40
    /// rows, after 0 to 17 cached positions); GQA with 16 heads over 8 and
    /// 2 kv heads, batch 2.
    #[test]
    fn cpu_attention_matches_matmul_attention() -> Result<()> {
        let dev = Device::Cpu;
        for (nh, nkv, l, offset) in [
            (16, 8, 1, 0),
            (16, 2, 1, 36),
            (4, 4, 1, 299),
            (16, 8, 40, 0),
            (16, 2, 3, 17),
            (4, 4, 9, 5),
        ] {
            let s = offset + l;
            let q = Tensor::randn(0f32, 1., (2, l, nh, 128), &dev)?;
            let k = Tensor::randn(0f32, 1., (2, s, nkv, 128), &dev)?;
            let v = Tensor::randn(0f32, 1., (2, s, nkv, 128), &dev)?;
            let a = cpu_attention(&q, &k, &v, 0.088, offset)?;
            let b = matmul_attention(&q, &k, &v, 0.088, offset)?;
            let diff = (a - b)?
                .abs()?
                .flatten_all()?
                .max(D::Minus1)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "({nh},{nkv},{l},{offset}): {diff}");
        }
        Ok(())
    }
}
