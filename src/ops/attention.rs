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

/// Every query row over the cache positions it may see, spread over our
/// pool by (batch, query row, kv head): (B, L, H, D) queries at positions
/// offset..offset+L, (B, S, Hkv, D) keys/values → (B, H, L, D). The query
/// heads of one kv head run together, reading each key and value once for
/// all of them; nothing is repeated or copied out of the f32 cache, and
/// the causal mask is the loop bound. Scores, softmax and the weighted sum
/// are f32 (exact `exp`), as candle's matmul path. The output is computed
/// as (B, L, H, D), where a kv head's query heads are adjacent, and
/// returned as a (B, H, L, D) view of it (the caller merges the heads back).
fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    let dtype = q.dtype();
    let (b, l, nh, d) = q.dims4()?;
    let (_, s, nkv, _) = k.dims4()?;
    let nkv = nkv.max(1);
    let groups = nh / nkv;
    let f32c = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let (q, k, v) = (f32c(q)?, f32c(k)?, f32c(v)?);
    let (qs, ks, vs) = (
        super::f32_slice(&q)?,
        super::f32_slice(&k)?,
        super::f32_slice(&v)?,
    );
    let path = super::gemv::Path::detect();
    // Two query heads × four keys per pass of the scores, two heads × 32
    // dimensions of the output per pass over the values.
    let fast = path != super::gemv::Path::Scalar && d.is_multiple_of(32);
    let mut out = vec![0f32; b * l * nh * d];
    super::fill_chunks(&mut out, groups * d, |i, o| {
        // Chunk i of (B, L, H, D): batch bi, query row li, kv head g, and
        // its query heads g·groups.. (q rows likewise adjacent).
        let (bi, li, g) = (i / (l * nkv), i / nkv % l, i % nkv);
        let qrows = &qs[i * groups * d..][..groups * d];
        let visible = (offset + li + 1).min(s);
        // Key/value row p of kv head g is at (bi·s + p)·nkv + g rows.
        let (first, stride) = (((bi * s) * nkv + g) * d, nkv * d);
        let mut scores = vec![0f32; groups * visible];
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: AVX2+FMA (the gemv path has them); `visible` rows of
            // d at `stride` from `first` lie inside the cache.
            unsafe { x86::scores(qrows, d, ks[first..].as_ptr(), stride, &mut scores) };
        }
        if !fast {
            for (j, sj) in scores.chunks_exact_mut(visible).enumerate() {
                for (p, x) in sj.iter_mut().enumerate() {
                    let key = &ks[first + p * stride..][..d];
                    *x = super::gemv::dot_f32(path, &qrows[j * d..][..d], key);
                }
            }
        }
        for sj in scores.chunks_exact_mut(visible) {
            sj.iter_mut().for_each(|x| *x *= scale as f32);
            let max = sj.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let mut total = 0f32;
            for x in sj.iter_mut() {
                *x = (*x - max).exp();
                total += *x;
            }
            sj.iter_mut().for_each(|x| *x /= total);
        }
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: as above; d is a multiple of 32.
            unsafe { x86::weighted_sum(&scores, visible, vs[first..].as_ptr(), stride, o) };
            return;
        }
        o.iter_mut().for_each(|x| *x = 0.0);
        for (sj, oj) in scores.chunks_exact(visible).zip(o.chunks_exact_mut(d)) {
            for (p, w) in sj.iter().enumerate() {
                super::gemv::axpy_f32(path, *w, &vs[first + p * stride..][..d], oj);
            }
        }
    });
    Tensor::from_vec(out, (b, l, nh, d), q.device())?
        .transpose(1, 2)?
        .to_dtype(dtype)
}

/// The attention row kernels in AVX2+FMA.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// out[j·P + p] = q_j·k_p for the query rows q_j (`d` each, P =
    /// out.len() / q_j count) and the keys at `keys` + p·stride: two query
    /// rows × four keys per pass, so that each load of a key serves both
    /// rows and each load of a query four keys.
    ///
    /// SAFETY: the CPU has AVX2 and FMA; P keys of d lie at `keys`; d is a
    /// multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn scores(q: &[f32], d: usize, keys: *const f32, stride: usize, out: &mut [f32]) {
        let rows = q.len() / d;
        let keys_n = out.len() / rows;
        /// The four sums of `a`, in order.
        #[inline(always)]
        unsafe fn sum4(a: [__m256; 4]) -> __m128 {
            // Pairs, then quads, then the two 128-bit halves.
            let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
        }
        let mut j = 0;
        while j < rows {
            // Two query rows, or the last one alone (its twin repeats it).
            let two = j + 1 < rows;
            let (q0, q1) = (
                q.as_ptr().add(j * d),
                q.as_ptr().add((j + two as usize) * d),
            );
            let mut p = 0;
            while p + 4 <= keys_n {
                let k = [0, 1, 2, 3].map(|t| keys.add((p + t) * stride));
                let mut a = [[_mm256_setzero_ps(); 4]; 2];
                for i in (0..d).step_by(8) {
                    let (x0, x1) = (_mm256_loadu_ps(q0.add(i)), _mm256_loadu_ps(q1.add(i)));
                    for t in 0..4 {
                        let kv = _mm256_loadu_ps(k[t].add(i));
                        a[0][t] = _mm256_fmadd_ps(x0, kv, a[0][t]);
                        a[1][t] = _mm256_fmadd_ps(x1, kv, a[1][t]);
                    }
                }
                _mm_storeu_ps(out.as_mut_ptr().add(j * keys_n + p), sum4(a[0]));
                if two {
                    _mm_storeu_ps(out.as_mut_ptr().add((j + 1) * keys_n + p), sum4(a[1]));
                }
                p += 4;
            }
            for r in j..j + 1 + two as usize {
                let qr = q.as_ptr().add(r * d);
                for p in p..keys_n {
                    let k = keys.add(p * stride);
                    let mut a = _mm256_setzero_ps();
                    for i in (0..d).step_by(8) {
                        a = _mm256_fmadd_ps(
                            _mm256_loadu_ps(qr.add(i)),
                            _mm256_loadu_ps(k.add(i)),
                            a,
                        );
                    }
                    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                    out[r * keys_n + p] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
                }
            }
            j += 2;
        }
    }

    /// o_j = Σ_p w[j·P + p]·v_p for each query row j (P = `keys_n`
    /// weights each) and the values at `vals` + p·stride (d = o.len() /
    /// rows each): two rows × 32 dimensions in registers per pass over the
    /// values, so that each load of a value serves both rows.
    ///
    /// SAFETY: the CPU has AVX2 and FMA; P values lie at `vals`; d is a
    /// multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn weighted_sum(
        w: &[f32],
        keys_n: usize,
        vals: *const f32,
        stride: usize,
        o: &mut [f32],
    ) {
        let rows = w.len() / keys_n;
        let d = o.len() / rows;
        let mut j = 0;
        while j < rows {
            let two = j + 1 < rows;
            let (w0, w1) = (
                &w[j * keys_n..][..keys_n],
                &w[(j + two as usize) * keys_n..][..keys_n],
            );
            for c in (0..d).step_by(32) {
                let mut a = [[_mm256_setzero_ps(); 4]; 2];
                for p in 0..keys_n {
                    let v = vals.add(p * stride + c);
                    let (x0, x1) = (_mm256_set1_ps(w0[p]), _mm256_set1_ps(w1[p]));
                    for t in 0..4 {
                        let vv = _mm256_loadu_ps(v.add(8 * t));
                        a[0][t] = _mm256_fmadd_ps(x0, vv, a[0][t]);
                        a[1][t] = _mm256_fmadd_ps(x1, vv, a[1][t]);
                    }
                }
                for t in 0..4 {
                    _mm256_storeu_ps(o.as_mut_ptr().add(j * d + c + 8 * t), a[0][t]);
                    if two {
                        _mm256_storeu_ps(o.as_mut_ptr().add((j + 1) * d + c + 8 * t), a[1][t]);
                    }
                }
            }
            j += 2;
        }
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
    /// 2 kv heads (groups of 2 and 8), 9 over 3 (a lone last head in each
    /// pair of the AVX2 kernels) and 4 over 4, batch 2; head sizes 128 and
    /// 64 (the AVX2 kernels, key counts not multiples of four) and 80 (the
    /// per-key path).
    #[test]
    fn cpu_attention_matches_matmul_attention() -> Result<()> {
        let dev = Device::Cpu;
        for (nh, nkv, l, offset, hd) in [
            (16, 8, 1, 0, 128),
            (16, 2, 1, 36, 128),
            (4, 4, 1, 299, 128),
            (16, 8, 40, 0, 128),
            (16, 2, 3, 17, 128),
            (4, 4, 9, 5, 128),
            (9, 3, 7, 2, 64),
            (9, 3, 1, 6, 64),
            (4, 2, 5, 3, 80),
        ] {
            let s = offset + l;
            let q = Tensor::randn(0f32, 1., (2, l, nh, hd), &dev)?;
            let k = Tensor::randn(0f32, 1., (2, s, nkv, hd), &dev)?;
            let v = Tensor::randn(0f32, 1., (2, s, nkv, hd), &dev)?;
            let a = cpu_attention(&q, &k, &v, 0.088, offset)?;
            let b = matmul_attention(&q, &k, &v, 0.088, offset)?;
            let diff = (a - b)?
                .abs()?
                .flatten_all()?
                .max(D::Minus1)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "({nh},{nkv},{l},{offset},{hd}): {diff}");
        }
        Ok(())
    }
}
