//! The x86 kernels of `ops::qdot`: AVX2 (with FMA and F16C) and AVX-512
//! VNNI block dot products, tiles and the sequential row reader.

use super::{BlockQ8, Kind, HIGH_BITS, QK};
use std::arch::x86_64::*;

/// One block's 32 weight quants in x's element order: unsigned (0..32)
/// for the 4/5-bit kinds, the stored i8 for Q8_0.
///
/// SAFETY: `b` is one whole block of `kind` (the loads stay inside it).
#[inline(always)]
pub(in crate::ops) unsafe fn weights(kind: Kind, b: *const u8) -> __m256i {
    let (qh_off, qs_off) = kind.layout();
    let p = b.add(qs_off);
    if kind == Kind::Q8_0 {
        return _mm256_loadu_si256(p as *const __m256i);
    }
    // The 16 bytes in both lanes; low nibbles (elements 0..16) kept in
    // the low lane, high nibbles (16..32) shifted down in the high one.
    let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let shifted = _mm256_srlv_epi64(raw, _mm256_set_epi64x(4, 4, 0, 0));
    let mut w = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
    if let Some(at) = qh_off {
        let qh = (b.add(at) as *const u32).read_unaligned();
        let h = qh.to_le_bytes().map(|v| HIGH_BITS[v as usize] as i64);
        w = _mm256_or_si256(w, _mm256_set_epi64x(h[3], h[2], h[1], h[0]));
    }
    w
}

/// Eight i32 lanes summing to Σ q_w·q_x over one block, before the
/// offset (`offset::<VNNI>`) is taken off. AVX2: `maddubs` (u8 × i8
/// pairs → i16, no saturation at these magnitudes) then pairs → i32;
/// Q8_0's signed weights as |w| × (x with w's sign). VNNI: `vpdpbusd`
/// (u8 × i8, four products summed into each i32 lane); Q8_0's weights
/// shifted by 128 to unsigned, the shift taken back by the offset.
#[inline(always)]
unsafe fn raw_lanes<const VNNI: bool>(kind: Kind, b: *const u8, x: __m256i) -> __m256i {
    let w = weights(kind, b);
    if VNNI {
        let w = if kind == Kind::Q8_0 {
            _mm256_xor_si256(w, _mm256_set1_epi8(-128))
        } else {
            w
        };
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
    }
    let p16 = if kind == Kind::Q8_0 {
        _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
    } else {
        _mm256_maddubs_epi16(w, x)
    };
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// What `raw_lanes` counts per unit of Σq_x beyond the true dot.
#[inline(always)]
const fn offset<const VNNI: bool>(kind: Kind) -> i32 {
    if VNNI && matches!(kind, Kind::Q8_0) {
        128
    } else {
        kind.offset()
    }
}

/// Eight i32 lanes summing to one block's exact integer dot
/// Σ (q_w − offset)·q_x.
#[inline(always)]
unsafe fn block_lanes<const VNNI: bool>(kind: Kind, b: *const u8, xb: &BlockQ8) -> __m256i {
    let x = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
    let lanes = raw_lanes::<VNNI>(kind, b, x);
    match offset::<VNNI>(kind) {
        0 => lanes,
        off => _mm256_sub_epi32(
            lanes,
            _mm256_zextsi128_si256(_mm_cvtsi32_si128(off * xb.qsum)),
        ),
    }
}

/// One block of 32 activations as `super::quantize_block` quantizes
/// it: (largest |x|, quants, their sum), every element computed as the
/// scalar code does (the same products, the same half-away rounding).
///
/// SAFETY: the CPU has AVX2; `xs` holds at least 32 elements.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_block(xs: &[f32]) -> (f32, [i8; QK], i32) {
    debug_assert!(xs.len() >= QK);
    let p = xs.as_ptr();
    // Plain loops over arrays, no closures: a closure would not inherit
    // the target features, and every intrinsic would become a call.
    let mut v = [_mm256_setzero_ps(); 4];
    for (j, vj) in v.iter_mut().enumerate() {
        *vj = _mm256_loadu_ps(p.add(8 * j));
    }
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    // max(|v|, acc) keeps acc where |v| is NaN, as `f32::max` does.
    let mut m = _mm256_setzero_ps();
    for vi in v {
        m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let id = _mm256_set1_ps(super::inverse_scale(amax));
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let one = _mm256_set1_epi32(1);
    let mut q = [_mm256_setzero_si256(); 4];
    for (qj, vj) in q.iter_mut().zip(v) {
        // round_away: truncate, then step away from zero on |frac| ≥ ½.
        let y = _mm256_mul_ps(vj, id);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        let frac = _mm256_sub_ps(y, t);
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, neg_half));
        // NaN (from a NaN or infinite input) converts to 0 in scalar
        // (`as i32`), to i32::MIN here: masked to 0.
        let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
        let ti = _mm256_and_si256(_mm256_cvttps_epi32(t), ordered);
        let ti = _mm256_sub_epi32(ti, _mm256_and_si256(down, one));
        *qj = _mm256_add_epi32(ti, _mm256_and_si256(up, one));
    }
    let sum = lanes_sum(_mm256_add_epi32(
        _mm256_add_epi32(q[0], q[1]),
        _mm256_add_epi32(q[2], q[3]),
    ));
    // i32 → i16 → i8 packs interleave 128-bit lanes; put them back.
    let w = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; QK];
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, w);
    (amax, qs, sum)
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One weight row · one quantized activation row: per block, the exact
/// integer lanes scaled by d_w·d_x into eight f32 accumulators (and
/// m_w·s_x into a scalar one for Q4_1/Q5_1), reduced once at the end.
#[inline(always)]
unsafe fn row_dot<const K: u8, const VNNI: bool>(w: &[u8], x: &[BlockQ8]) -> f32 {
    let kind = Kind::from_code(K);
    let bytes = kind.block_bytes();
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, xb) in x.iter().enumerate() {
        let b = w[i * bytes..(i + 1) * bytes].as_ptr();
        let lanes = block_lanes::<VNNI>(kind, b, xb);
        // d (and m): the block's first two f16 values, widened by F16C.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
        let d = _mm_cvtss_f32(dm);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(d * xb.d), acc);
        if kind.has_min() {
            mins += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * xb.s;
        }
    }
    hsum(acc) + mins
}

/// Eight consecutive weight rows (`w`, 8 × `row_bytes`) · one quantized
/// activation row, into `out`: per block index, the eight rows' lanes
/// are reduced together into one vector (one lane per row) and scaled by
/// their eight `d`s at once, so the per-block float work is shared.
#[inline(always)]
unsafe fn tile_dot<const K: u8, const VNNI: bool>(
    w: &[u8],
    row_bytes: usize,
    x: &[BlockQ8],
    out: &mut [f32],
) {
    let kind = Kind::from_code(K);
    let bytes = kind.block_bytes();
    debug_assert!(w.len() == 8 * row_bytes && out.len() == 8 && x.len() * bytes == row_bytes);
    let base = w.as_ptr();
    // Per 128-bit lane of eight (d, m) f16 pairs: the d's, then the m's.
    let pick = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    let mut acc = _mm256_setzero_ps();
    let mut mins = _mm256_setzero_ps();
    // The next tile (the following 8 rows, usually this thread's next),
    // fetched a few cache lines per block: the hardware prefetcher alone
    // left one core streaming weights from DRAM at a third of the speed
    // it computes them from cache.
    let lines_per_block = (8 * row_bytes).div_ceil(64 * x.len().max(1));
    let next = base.wrapping_add(8 * row_bytes);
    for (i, xb) in x.iter().enumerate() {
        for l in 0..lines_per_block {
            // Prefetches never fault, so running past the weight is harmless.
            let at = next.wrapping_add((i * lines_per_block + l) * 64) as *const i8;
            // Q8_0's 8.7 KB tiles go to L2 (into L1 they slowed it 25 %
            // on 2 threads); the 4/5-bit kinds' 4.6–6.1 KB ones to L1.
            if kind == Kind::Q8_0 {
                _mm_prefetch::<_MM_HINT_T1>(at);
            } else {
                _mm_prefetch::<_MM_HINT_T0>(at);
            }
        }
        let b0 = base.add(i * bytes);
        let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        // No closures or arrays here: they would not inherit the target
        // features, and every intrinsic would become a call.
        let l = (
            raw_lanes::<VNNI>(kind, b0, xv),
            raw_lanes::<VNNI>(kind, b0.add(row_bytes), xv),
            raw_lanes::<VNNI>(kind, b0.add(2 * row_bytes), xv),
            raw_lanes::<VNNI>(kind, b0.add(3 * row_bytes), xv),
            raw_lanes::<VNNI>(kind, b0.add(4 * row_bytes), xv),
            raw_lanes::<VNNI>(kind, b0.add(5 * row_bytes), xv),
            raw_lanes::<VNNI>(kind, b0.add(6 * row_bytes), xv),
            raw_lanes::<VNNI>(kind, b0.add(7 * row_bytes), xv),
        );
        // Lanes of rows 0..8 → one lane per row (two half-sums, added).
        let q0 = _mm256_hadd_epi32(_mm256_hadd_epi32(l.0, l.1), _mm256_hadd_epi32(l.2, l.3));
        let q1 = _mm256_hadd_epi32(_mm256_hadd_epi32(l.4, l.5), _mm256_hadd_epi32(l.6, l.7));
        let mut sumi = _mm256_add_epi32(
            _mm256_permute2x128_si256(q0, q1, 0x20),
            _mm256_permute2x128_si256(q0, q1, 0x31),
        );
        let off = offset::<VNNI>(kind);
        if off != 0 {
            sumi = _mm256_sub_epi32(sumi, _mm256_set1_epi32(off * xb.qsum));
        }
        // The eight rows' (d, m) pairs → d's in the low half, m's in the high.
        let dm_at = |r: usize| (b0.add(r * row_bytes) as *const i32).read_unaligned();
        let dm = _mm256_setr_epi32(
            dm_at(0),
            dm_at(1),
            dm_at(2),
            dm_at(3),
            dm_at(4),
            dm_at(5),
            dm_at(6),
            dm_at(7),
        );
        let dm = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(dm, pick), 0b11_01_10_00);
        let d = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
        acc = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(sumi),
            _mm256_mul_ps(d, _mm256_set1_ps(xb.d)),
            acc,
        );
        if kind.has_min() {
            let m = _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1));
            mins = _mm256_fmadd_ps(m, _mm256_set1_ps(xb.s), mins);
        }
    }
    _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, mins));
}

/// How far ahead of its loads `seq_dot` asks for the weight's cache
/// lines (`prefetcht0`). Q8_0 decode, 2-core Xeon, same run: 2 KB
/// 37.5 tok/s, 3 KB 38.2 (1 KB 33.8; eight-row tiles 35.3).
const SEQ_PREFETCH_BYTES: usize = 3072;

/// One Q8_0 block of `seq_dot`'s row, prefetching `SEQ_PREFETCH_BYTES`
/// ahead: its exact integer lanes scaled by d_w·d_x into `acc`.
#[inline(always)]
unsafe fn seq_block<const VNNI: bool>(b: *const u8, xb: &BlockQ8, acc: __m256) -> __m256 {
    // A hint only: an address past the weight does not fault.
    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(SEQ_PREFETCH_BYTES) as *const i8);
    let lanes = block_lanes::<VNNI>(Kind::Q8_0, b, xb);
    let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        (b as *const u16).read_unaligned() as i32,
    )));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(d * xb.d), acc)
}

/// `out.len()` consecutive Q8_0 weight rows · one quantized activation
/// row, one row after the other so that the weight is one sequential
/// stream, asked for `SEQ_PREFETCH_BYTES` ahead. Q8_0's decode kernel:
/// its 34-byte blocks leave little work per byte to share across rows,
/// where the 4/5-bit kinds' eight-row tiles share their unpacking and
/// gain nothing from this (q4_0, SmolLM2 Q4_1: within noise or slower).
#[inline(always)]
unsafe fn seq_dot<const VNNI: bool>(w: &[u8], row_bytes: usize, x: &[BlockQ8], out: &mut [f32]) {
    let bytes = Kind::Q8_0.block_bytes();
    debug_assert!(w.len() == out.len() * row_bytes && x.len() * bytes == row_bytes);
    let mut b = w.as_ptr();
    // The run's first lines, which the loop's prefetches never ask for.
    for at in (0..SEQ_PREFETCH_BYTES.min(w.len())).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(at) as *const i8);
    }
    for y in out.iter_mut() {
        // Two running sums (even and odd blocks) for the FMA latency.
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut pairs = x.chunks_exact(2);
        for xp in &mut pairs {
            a0 = seq_block::<VNNI>(b, &xp[0], a0);
            a1 = seq_block::<VNNI>(b.add(bytes), &xp[1], a1);
            b = b.add(2 * bytes);
        }
        if let [xb] = pairs.remainder() {
            a0 = seq_block::<VNNI>(b, xb, a0);
            b = b.add(bytes);
        }
        *y = hsum(_mm256_add_ps(a0, a1));
    }
}

/// SAFETY (both): the CPU has the target features; `w` is `out.len()`
/// Q8_0 rows of `row_bytes`, each `x.len()` whole blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn seq_dot_q8_0_avx2(w: &[u8], row_bytes: usize, x: &[BlockQ8], out: &mut [f32]) {
    seq_dot::<false>(w, row_bytes, x, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn seq_dot_q8_0_vnni(w: &[u8], row_bytes: usize, x: &[BlockQ8], out: &mut [f32]) {
    seq_dot::<true>(w, row_bytes, x, out)
}

macro_rules! entry {
    ($name:ident, $vnni:expr, $features:literal) => {
        /// SAFETY: the CPU has the target features; `w` holds `x.len()`
        /// whole blocks of `kind`.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
            match kind {
                Kind::Q4_0 => row_dot::<{ Kind::Q4_0.code() }, $vnni>(w, x),
                Kind::Q4_1 => row_dot::<{ Kind::Q4_1.code() }, $vnni>(w, x),
                Kind::Q5_0 => row_dot::<{ Kind::Q5_0.code() }, $vnni>(w, x),
                Kind::Q5_1 => row_dot::<{ Kind::Q5_1.code() }, $vnni>(w, x),
                Kind::Q8_0 => row_dot::<{ Kind::Q8_0.code() }, $vnni>(w, x),
            }
        }
    };
}
entry!(row_dot_avx2, false, "avx2,fma,f16c");
entry!(row_dot_vnni, true, "avx2,fma,f16c,avx512vnni,avx512vl");

macro_rules! tile_entry {
    ($name:ident, $vnni:expr, $features:literal) => {
        /// SAFETY: the CPU has the target features; `w` is 8 rows of
        /// `row_bytes`, each `x.len()` whole blocks of `kind`; `out` has 8.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            kind: Kind,
            w: &[u8],
            row_bytes: usize,
            x: &[BlockQ8],
            out: &mut [f32],
        ) {
            match kind {
                Kind::Q4_0 => tile_dot::<{ Kind::Q4_0.code() }, $vnni>(w, row_bytes, x, out),
                Kind::Q4_1 => tile_dot::<{ Kind::Q4_1.code() }, $vnni>(w, row_bytes, x, out),
                Kind::Q5_0 => tile_dot::<{ Kind::Q5_0.code() }, $vnni>(w, row_bytes, x, out),
                Kind::Q5_1 => tile_dot::<{ Kind::Q5_1.code() }, $vnni>(w, row_bytes, x, out),
                Kind::Q8_0 => tile_dot::<{ Kind::Q8_0.code() }, $vnni>(w, row_bytes, x, out),
            }
        }
    };
}
tile_entry!(tile_dot_avx2, false, "avx2,fma,f16c");
tile_entry!(tile_dot_vnni, true, "avx2,fma,f16c,avx512vnni,avx512vl");

/// The sum of eight i32 lanes.
#[inline(always)]
pub(in crate::ops) unsafe fn lanes_sum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// One block's integer dot (Σ of the lanes), for the unit tests.
#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn block_sumi_avx2(kind: Kind, b: &[u8], xb: &BlockQ8) -> i32 {
    lanes_sum(block_lanes::<false>(kind, b.as_ptr(), xb))
}

#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn block_sumi_vnni(kind: Kind, b: &[u8], xb: &BlockQ8) -> i32 {
    lanes_sum(block_lanes::<true>(kind, b.as_ptr(), xb))
}
