//! The AVX-512 tiles of `fgemm` and the bf16 activation split.

use super::{SplitBf16, RM, RM16, RN, RN16};
use crate::ops::Lines;
use std::arch::x86_64::*;

/// The rows `r0..r0+N` clamped to `len − 1`: a tile past the end repeats
/// the last row (its results are not stored).
#[inline(always)]
fn rows<const N: usize>(r0: usize, len: usize) -> [usize; N] {
    std::array::from_fn(|i| (r0 + i).min(len - 1))
}

/// Sums each accumulator's 16 lanes into `out`.
#[inline(always)]
unsafe fn store_sums<const TM: usize, const TN: usize>(
    acc: &[[__m512; TN]; TM],
    out: &mut [[f32; TN]; TM],
) {
    for (a, o) in acc.iter().zip(out.iter_mut()) {
        for (v, s) in a.iter().zip(o.iter_mut()) {
            *s = _mm512_reduce_add_ps(*v);
        }
    }
}

/// out[i][j] = x row (r0+i) · w row (c0+j), f32 weights (x is (m, k), w
/// is (n, k)).
///
/// # Safety
/// AVX-512F, BW and VL must be present; r0 < m, c0 < n, x.len() ≥ m·k,
/// w.len() ≥ n·k.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_f32(
    x: &[f32],
    w: &[f32],
    k: usize,
    r0: usize,
    c0: usize,
    m: usize,
    n: usize,
    out: &mut [[f32; RN]; RM],
) {
    let load = |p: *const f32, mask: __mmask16| _mm512_maskz_loadu_ps(mask, p);
    tile_widened(x, w, k, r0, c0, m, n, out, load)
}

/// `tile_f32` on f16 weights (bits), widened exactly to f32 as loaded.
///
/// # Safety
/// AVX-512F, BW and VL must be present; as `tile_f32` otherwise.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_f16(
    x: &[f32],
    w: &[u16],
    k: usize,
    r0: usize,
    c0: usize,
    m: usize,
    n: usize,
    out: &mut [[f32; RN]; RM],
) {
    let load = |p: *const u16, mask: __mmask16| {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16))
    };
    tile_widened(x, w, k, r0, c0, m, n, out, load)
}

/// The f32 tile on weights of type `T`, each 16 of them widened to f32 by
/// `load` (masked-off lanes zero). With the callers' target features, so
/// that it inlines into them and its intrinsics stay instructions.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_widened<T>(
    x: &[f32],
    w: &[T],
    k: usize,
    r0: usize,
    c0: usize,
    m: usize,
    n: usize,
    out: &mut [[f32; RN]; RM],
    load: impl Fn(*const T, __mmask16) -> __m512,
) {
    let xp: [*const f32; RM] = rows::<RM>(r0, m).map(|r| x.as_ptr().add(r * k));
    let wp: [*const T; RN] = rows::<RN>(c0, n).map(|r| w.as_ptr().add(r * k));
    let mut acc = [[_mm512_setzero_ps(); RN]; RM];
    let full = k / 16 * 16;
    // The activations stay in registers and the weight rows are loaded one
    // at a time: RM·RN accumulators + RM activations + 1 weight.
    let mut step = |at: usize, mask: __mmask16| {
        let a: [__m512; RM] = std::array::from_fn(|i| _mm512_maskz_loadu_ps(mask, xp[i].add(at)));
        for j in 0..RN {
            let wv = load(wp[j].add(at), mask);
            for i in 0..RM {
                acc[i][j] = _mm512_fmadd_ps(a[i], wv, acc[i][j]);
            }
        }
    };
    let mut at = 0;
    while at < full {
        step(at, 0xffff);
        at += 16;
    }
    if full < k {
        step(full, (1u32 << (k - full)) as u16 - 1);
    }
    store_sums(&acc, out);
}

/// out[i][j] = x row (r0+i) · w row (c0+j), bf16 weights (bits), x as its
/// two bf16 terms (each (m, k)).
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be present; r0 < m, c0 < n,
/// x.hi/x.lo hold m·k and w n·k elements.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_bf16(
    x: &SplitBf16,
    w: &[u16],
    k: usize,
    r0: usize,
    c0: usize,
    m: usize,
    n: usize,
    out: &mut [[f32; RN16]; RM16],
) {
    let rs = rows::<RM16>(r0, m);
    let hp: [*const u16; RM16] = rs.map(|r| x.hi.as_ptr().add(r * k));
    let lp: [*const u16; RM16] = rs.map(|r| x.lo.as_ptr().add(r * k));
    let wp: [*const u16; RN16] = rows::<RN16>(c0, n).map(|r| w.as_ptr().add(r * k));
    let mut acc = [[_mm512_setzero_ps(); RN16]; RM16];
    let full = k / 32 * 32;
    let load = |p: *const u16, mask: __mmask32| -> __m512bh {
        // Masked-off elements load as +0.0, adding nothing.
        std::mem::transmute(_mm512_maskz_loadu_epi16(mask, p as *const i16))
    };
    // The activations stay in registers and the weight rows are loaded one
    // at a time: RM16·RN16 accumulators + 2·RM16 activations + 1 weight.
    let mut step = |at: usize, mask: __mmask32| {
        let h: [__m512bh; RM16] = std::array::from_fn(|i| load(hp[i].add(at), mask));
        let l: [__m512bh; RM16] = std::array::from_fn(|i| load(lp[i].add(at), mask));
        for j in 0..RN16 {
            let wv = load(wp[j].add(at), mask);
            for i in 0..RM16 {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], h[i], wv);
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], l[i], wv);
            }
        }
    };
    let mut at = 0;
    while at < full {
        step(at, u32::MAX);
        at += 32;
    }
    if full < k {
        step(full, (1u64 << (k - full)) as u32 - 1);
    }
    store_sums(&acc, out);
}

/// Splits f32 activations into two bf16 terms, hi = bf16(x) and
/// lo = bf16(x − hi), both rounded to nearest even (denormals flushed to
/// zero, as `vdpbf16ps` also treats them), into `s` (resized to x's length).
///
/// # Safety
/// AVX-512F, BW, VL and BF16 must be present.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub unsafe fn split_bf16(x: &[f32], s: &mut SplitBf16) {
    s.hi.resize(x.len(), 0);
    s.lo.resize(x.len(), 0);
    let (hi, lo) = (s.hi.as_mut_ptr() as *mut i16, s.lo.as_mut_ptr() as *mut i16);
    let full = x.len() / 16 * 16;
    let split = |at: usize, mask: __mmask16| {
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(at));
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        let hw = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
        let l: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_sub_ps(
            v,
            _mm512_castsi512_ps(hw),
        )));
        _mm256_mask_storeu_epi16(hi.add(at), mask, h);
        _mm256_mask_storeu_epi16(lo.add(at), mask, l);
    };
    let mut at = 0;
    while at < full {
        split(at, 0xffff);
        at += 16;
    }
    if full < x.len() {
        split(full, (1u32 << (x.len() - full)) as u16 - 1);
    }
}

/// Splits n weights into `T` bf16 terms each, t0 = bf16(w), t1 =
/// bf16(w − t0), … (each difference exact in f32): `out` holds T runs of
/// n, term by term. `load(i, mask)` gives 16 weights at i as f32, exactly.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[inline]
unsafe fn split_terms<const T: usize>(
    n: usize,
    load: impl Fn(usize, __mmask16) -> __m512,
    out: &mut Lines,
) {
    let o = out.resized::<u16>(T * n).as_mut_ptr() as *mut i16;
    let full = n / 16 * 16;
    let split = |at: usize, mask: __mmask16| {
        let mut v = load(at, mask);
        for t in 0..T {
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(o.add(t * n + at), mask, h);
            let hw = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
            v = _mm512_sub_ps(v, _mm512_castsi512_ps(hw));
        }
    };
    let mut at = 0;
    while at < full {
        split(at, 0xffff);
        at += 16;
    }
    if full < n {
        split(full, (1u32 << (n - full)) as u16 - 1);
    }
}

/// f32 weights as three bf16 terms (24 significant bits in 8 + 8 + 8:
/// their sum is the weight but for parts below bf16's smallest normal).
///
/// # Safety
/// AVX-512F, BW, VL and BF16 must be present.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub unsafe fn split_f32_in_3(w: &[f32], out: &mut Lines) {
    let p = w.as_ptr();
    split_terms::<3>(w.len(), |i, m| _mm512_maskz_loadu_ps(m, p.add(i)), out)
}

/// f16 weights (bits) as two bf16 terms, exactly (11 significant bits in
/// 8 + 8; every f16 is inside bf16's normal range).
///
/// # Safety
/// AVX-512F, BW, VL and BF16 must be present.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub unsafe fn split_f16_in_2(w: &[u16], out: &mut Lines) {
    let p = w.as_ptr() as *const i16;
    let load = |i: usize, m: __mmask16| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(i)));
    split_terms::<2>(w.len(), load, out)
}
