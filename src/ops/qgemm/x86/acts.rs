//! Prompt rows for `qgemm`'s kernels: the `Acts` each tile runs against
//! (16-bit integers or one 8-bit term per element) and their AVX2
//! quantizers, bit for bit the scalar ones in `qgemm`.

use super::super::{BlockQ16, BlockQ8, BlockQ8H, QK, RATIO};
use super::Lanes;
use crate::ops::qdot::x86::lanes_sum;
use std::arch::x86_64::*;

/// Prompt rows as the kernels take them: 16-bit integers (`BlockQ16`,
/// two 8-bit terms joined) against 16-bit unpacked tiles, or one 8-bit
/// term (`BlockQ8H`) against byte tiles.
pub(in crate::ops::qgemm) trait Acts: Copy + Send + Sync {
    /// Whether tiles hold one byte per quant (else signed 16-bit).
    const BYTES: bool;
    /// A block of zeros (padding rows).
    const ZERO: Self;
    /// Quantizes whole rows of `x` (`k` each) into `out`, `k`/32 blocks
    /// per row.
    ///
    /// SAFETY: the CPU has AVX2.
    unsafe fn quantize(x: &[f32], k: usize, out: &mut [Self]);
    /// The block's scale d (x ≈ d·q) and s = d·Σq (the minimum terms').
    fn d(&self) -> f32;
    fn s(&self) -> f32;
    /// What the integer dot of 16-element half `h` needs added for Q6_K:
    /// byte tiles keep its quants unsigned (q, not q − 32), so −32·Σx.
    fn q6k_offset(&self, h: usize) -> i32;
    /// Activation group g (the elements one lane takes per instruction)
    /// in every lane.
    unsafe fn group<L: Lanes>(&self, g: usize) -> L::I;
    /// `acc` plus each lane's products of one group of `w` and `x`.
    unsafe fn dot<L: Lanes>(acc: L::I, w: L::I, x: L::I) -> L::I;
}

impl Acts for BlockQ16 {
    const BYTES: bool = false;
    const ZERO: Self = BlockQ16::ZERO;
    #[inline(always)]
    unsafe fn quantize(x: &[f32], k: usize, out: &mut [Self]) {
        let blocks = k / QK;
        let (mut main, mut resid) = (vec![BlockQ8::ZERO; blocks], vec![BlockQ8::ZERO; blocks]);
        for (x, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(blocks)) {
            quantize_pair_avx2(x, &mut main, &mut resid);
            join_pair(&main, &resid, out);
        }
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn s(&self) -> f32 {
        self.s
    }
    #[inline(always)]
    fn q6k_offset(&self, _h: usize) -> i32 {
        0
    }
    /// Pair g: elements 2g, 2g + 1.
    #[inline(always)]
    unsafe fn group<L: Lanes>(&self, g: usize) -> L::I {
        L::set1_i((self.qs.as_ptr().add(2 * g) as *const i32).read_unaligned())
    }
    #[inline(always)]
    unsafe fn dot<L: Lanes>(acc: L::I, w: L::I, x: L::I) -> L::I {
        L::dot2(acc, w, x)
    }
}

impl Acts for BlockQ8H {
    const BYTES: bool = true;
    const ZERO: Self = BlockQ8H::ZERO;
    #[inline(always)]
    unsafe fn quantize(x: &[f32], _k: usize, out: &mut [Self]) {
        quantize_one_avx2(x, out);
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn s(&self) -> f32 {
        self.s
    }
    #[inline(always)]
    fn q6k_offset(&self, h: usize) -> i32 {
        -32 * self.h[h]
    }
    /// Quad g: elements 4g..4g + 4.
    #[inline(always)]
    unsafe fn group<L: Lanes>(&self, g: usize) -> L::I {
        L::set1_i((self.qs.as_ptr().add(4 * g) as *const i32).read_unaligned())
    }
    #[inline(always)]
    unsafe fn dot<L: Lanes>(acc: L::I, w: L::I, x: L::I) -> L::I {
        L::dot4(acc, w, x)
    }
}

/// Each block of a prompt row's two 8-bit terms (`quantize_pair`) as one
/// 16-bit row: q = 254·q₁ + q₂ (|q| ≤ 32385), with the pair's d and s.
///
/// SAFETY: the CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn join_pair(main: &[BlockQ8], resid: &[BlockQ8], out: &mut [BlockQ16]) {
    let ratio = _mm256_set1_epi16(RATIO as i16);
    for ((a, b), o) in main.iter().zip(resid).zip(out) {
        for h in 0..2 {
            let q1 =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(a.qs.as_ptr().add(16 * h) as *const __m128i));
            let q2 =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr().add(16 * h) as *const __m128i));
            let q = _mm256_add_epi16(_mm256_mullo_epi16(q1, ratio), q2);
            _mm256_storeu_si256(o.qs.as_mut_ptr().add(16 * h) as *mut __m256i, q);
        }
        (o.d, o.s) = (a.d, a.s);
    }
}

/// `round_away` on eight lanes, clamped to ±127.
#[inline(always)]
unsafe fn round8(t: __m256) -> __m256i {
    let ti = _mm256_cvttps_epi32(t);
    let frac = _mm256_sub_ps(t, _mm256_cvtepi32_ps(ti));
    let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5)));
    let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5)));
    let q = _mm256_add_epi32(_mm256_sub_epi32(ti, up), down);
    _mm256_max_epi32(
        _mm256_min_epi32(q, _mm256_set1_epi32(127)),
        _mm256_set1_epi32(-127),
    )
}

/// 32 i32 lanes (four vectors, in order) → 32 i8 at `out`.
#[inline(always)]
unsafe fn pack(q: [__m256i; 4], out: *mut i8) {
    let ab = _mm256_packs_epi32(q[0], q[1]);
    let cd = _mm256_packs_epi32(q[2], q[3]);
    let v = _mm256_packs_epi16(ab, cd);
    let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out as *mut __m256i, v);
}

/// `quantize_pair` in AVX2, bit for bit (the same float operations, in
/// the same order, lane by lane).
///
/// SAFETY: the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(in crate::ops::qgemm) unsafe fn quantize_pair_avx2(
    x: &[f32],
    main: &mut [BlockQ8],
    resid: &mut [BlockQ8],
) {
    for ((xs, a), b) in x.chunks_exact(QK).zip(main).zip(resid) {
        let p = xs.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let amax = amax32(&v);
        let d1 = amax / 127.0;
        let id1 = if d1 != 0.0 { 1.0 / d1 } else { 0.0 };
        let id2 = RATIO as f32 * id1;
        let (vd1, vid1, vid2) = (_mm256_set1_ps(d1), _mm256_set1_ps(id1), _mm256_set1_ps(id2));
        let mut q1 = [_mm256_setzero_si256(); 4];
        let mut q2 = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            q1[i] = round8(_mm256_mul_ps(v[i], vid1));
            let r = _mm256_sub_ps(v[i], _mm256_mul_ps(vd1, _mm256_cvtepi32_ps(q1[i])));
            q2[i] = round8(_mm256_mul_ps(r, vid2));
        }
        let s1 = lanes_sum(_mm256_add_epi32(
            _mm256_add_epi32(q1[0], q1[1]),
            _mm256_add_epi32(q1[2], q1[3]),
        ));
        let s2 = lanes_sum(_mm256_add_epi32(
            _mm256_add_epi32(q2[0], q2[1]),
            _mm256_add_epi32(q2[2], q2[3]),
        ));
        pack(q1, a.qs.as_mut_ptr());
        pack(q2, b.qs.as_mut_ptr());
        let qsum = RATIO * s1 + s2;
        let d = d1 / RATIO as f32;
        (a.d, a.s, a.qsum) = (d, d * qsum as f32, qsum);
        (b.d, b.s, b.qsum) = (0.0, 0.0, 0);
    }
}

/// The largest |x| of 32 values (four vectors).
#[inline(always)]
unsafe fn amax32(v: &[__m256; 4]) -> f32 {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
        _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
    );
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// `quantize_one` in AVX2, bit for bit.
///
/// SAFETY: the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(in crate::ops::qgemm) unsafe fn quantize_one_avx2(x: &[f32], out: &mut [BlockQ8H]) {
    for (xs, o) in x.chunks_exact(QK).zip(out) {
        let p = xs.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let d = amax32(&v) / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let mut q = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            q[i] = round8(_mm256_mul_ps(v[i], id));
        }
        let h0 = lanes_sum(_mm256_add_epi32(q[0], q[1]));
        let h1 = lanes_sum(_mm256_add_epi32(q[2], q[3]));
        pack(q, o.qs.as_mut_ptr());
        (o.d, o.s, o.h) = (d, d * (h0 + h1) as f32, [h0, h1]);
    }
}
