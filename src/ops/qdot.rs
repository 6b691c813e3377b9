//! Quantized weights × f32 activations for a few rows (decode): our own
//! kernels for the 32-element block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! candle 0.11 has only scalar dot products for Q4_1/Q5_0/Q5_1 (79 % of
//! SmolLM2 Q4_1 decode time under perf), and its AVX2 Q4_0/Q8_0 ones spend
//! their time in a per-block horizontal sum and a non-inlined f16→f32 call
//! (Qwen3-0.6B Q4_0: 56 % of decode in `vec_dot_q4_0_q8_0`, 7 % in
//! `f16_to_f32`). Here the activations are quantized to 8 bits as candle's
//! `BlockQ8_1::from_float` / `BlockQ8_0::from_float` do; each block's
//! integer dot runs in SIMD and is summed exactly in i32 lanes, scaled by
//! `d_w·d_x` into eight f32 lanes that are reduced once per row.
//!
//! Paths, chosen at run time: AVX-512 VNNI (`vpdpbusd`, 256-bit), AVX2 with
//! FMA and F16C, and a scalar reference that computes exactly what candle's
//! scalar `vec_dot_unopt` computes (bit-identical; the SIMD paths differ
//! from it only in float summation order, tested within 1e-5 of Σ|w·x|).
//! The SIMD paths take eight weight rows per tile (their lanes reduced and
//! scaled together) and prefetch the next tile: one core's hardware
//! prefetcher alone streamed the weights from DRAM at a third of the speed
//! the kernel computes them from cache.
//!
//! Block layouts (ggml, 32 elements each; for the 4/5-bit types element
//! e < 16 is the low nibble of byte e, element e ≥ 16 the high nibble of
//! byte e−16; Q5's fifth bit of element e is bit e of `qh`):
//! - Q4_0 (18 bytes): f16 d, 16 × nibbles; value = (q − 8)·d
//! - Q4_1 (20 bytes): f16 d, f16 m, 16 × nibbles; value = q·d + m
//! - Q5_0 (22 bytes): f16 d, u32 qh, 16 × nibbles; value = (q − 16)·d
//! - Q5_1 (24 bytes): f16 d, f16 m, u32 qh, 16 × nibbles; value = q·d + m
//! - Q8_0 (34 bytes): f16 d, 32 × i8; value = q·d

use super::ReadOrder;
use candle_core::quantized::GgmlDType;
use half::f16;

/// Elements per block.
pub const QK: usize = 32;
/// Weight rows the tile kernels compute together.
const TILE: usize = 8;

/// The weight types these kernels handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Kind {
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_0 => Some(Kind::Q4_0),
            GgmlDType::Q4_1 => Some(Kind::Q4_1),
            GgmlDType::Q5_0 => Some(Kind::Q5_0),
            GgmlDType::Q5_1 => Some(Kind::Q5_1),
            GgmlDType::Q8_0 => Some(Kind::Q8_0),
            _ => None,
        }
    }

    pub const fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
            Kind::Q5_1 => 24,
            Kind::Q8_0 => 34,
        }
    }

    /// Offsets of (qh, quants) in a block; qh is present for Q5 only.
    pub(super) const fn layout(self) -> (Option<usize>, usize) {
        match self {
            Kind::Q4_0 => (None, 2),
            Kind::Q4_1 => (None, 4),
            Kind::Q5_0 => (Some(2), 6),
            Kind::Q5_1 => (Some(4), 8),
            Kind::Q8_0 => (None, 2),
        }
    }

    /// Whether a block carries a minimum `m` (value = q·d + m).
    pub(super) const fn has_min(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1)
    }

    /// What is subtracted from the stored unsigned quant (value = (q − off)·d).
    pub(super) const fn offset(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            _ => 0,
        }
    }

    pub(super) const fn code(self) -> u8 {
        self as u8
    }

    pub(super) const fn from_code(c: u8) -> Self {
        match c {
            0 => Kind::Q4_0,
            1 => Kind::Q4_1,
            2 => Kind::Q5_0,
            3 => Kind::Q5_1,
            _ => Kind::Q8_0,
        }
    }
}

/// One block of 8-bit activations, as candle's `BlockQ8_1` (and `BlockQ8_0`,
/// whose `d` and `qs` are the same numbers).
#[derive(Clone, Copy)]
pub struct BlockQ8 {
    /// candle's f16 `d` and `s` (= d·Σq), widened once here instead of for
    /// every weight row.
    pub(super) d: f32,
    pub(super) s: f32,
    /// Σq, for the offsets of Q4_0/Q5_0 (and of Q8_0 on the VNNI path).
    pub(super) qsum: i32,
    pub(super) qs: [i8; QK],
}

impl BlockQ8 {
    /// A block of zeros (padding rows of `qgemm`).
    pub(super) const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qsum: 0,
        qs: [0; QK],
    };
}

/// Quantizes one row of activations (a multiple of 32) as candle's
/// `quantize_row_q8_1` does.
pub fn quantize_row(x: &[f32], out: &mut Vec<BlockQ8>) {
    out.clear();
    out.resize(x.len() / QK, BlockQ8::ZERO);
    quantize_into(x, out);
}

/// `quantize_row` into `out` (one block per 32 elements of `x`): the
/// elements in AVX2 where the CPU has it (bit-identical to the scalar
/// reference, `quantize_block`; 0.4 ms of a q8_0 token was spent here in
/// scalar code), each block's scales in scalar.
pub(super) fn quantize_into(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if Path::detect() != Path::Scalar {
        for (xs, o) in x.chunks_exact(QK).zip(out) {
            // SAFETY: Avx2/Vnni paths are only detected with AVX2 and FMA;
            // `xs` is one whole block.
            let (amax, qs, sum) = unsafe { x86::quantize_block(xs) };
            *o = block_from(amax, qs, sum);
        }
        return;
    }
    for (xs, o) in x.chunks_exact(QK).zip(out) {
        *o = quantize_block(xs);
    }
}

/// The scalar reference for one block of 32 activations.
fn quantize_block(xs: &[f32]) -> BlockQ8 {
    let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let id = inverse_scale(amax);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = round_away(v * id) as i8;
    }
    let sum = qs.iter().map(|&q| q as i32).sum::<i32>();
    block_from(amax, qs, sum)
}

/// 1/d for the block's scale d = amax/127 (0 for an all-zero block).
fn inverse_scale(amax: f32) -> f32 {
    let d = amax / 127.0;
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// A block from its largest |x|, quants and their sum: d and s rounded
/// through f16 as candle's `BlockQ8_1` stores them.
fn block_from(amax: f32, qs: [i8; QK], sum: i32) -> BlockQ8 {
    let dh = f16::from_f32(amax / 127.0);
    BlockQ8 {
        d: dh.to_f32(),
        s: (f16::from_f32(sum as f32) * dh).to_f32(),
        qsum: sum,
        qs,
    }
}

/// `f32::round` (half away from zero) for |v| ≤ 128, without the libm call
/// `round` compiles to on baseline x86-64: the truncation is exact, and so
/// is `v − t`.
#[inline(always)]
pub(super) fn round_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn qh_at(b: &[u8], at: Option<usize>) -> u32 {
    at.map_or(0, |i| {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    })
}

/// Σ q_w·q_x over one block's quants (`qs` from the quant offset), scalar:
/// the reference every SIMD path is tested against. Unsigned q_w for the
/// 4/5-bit kinds (0..16, or 0..32 with the fifth bits), signed for Q8_0.
fn block_sumi_scalar(kind: Kind, qs: &[u8], qh: u32, x: &[i8; QK]) -> i32 {
    if kind == Kind::Q8_0 {
        return qs[..QK]
            .iter()
            .zip(x)
            .map(|(&w, &x)| w as i8 as i32 * x as i32)
            .sum();
    }
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        let v0 = (qs[j] & 0x0F) as i32 | (((qh >> j) & 1) << 4) as i32;
        let v1 = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
        sumi += v0 * x[j] as i32 + v1 * x[j + QK / 2] as i32;
    }
    sumi
}

fn row_dot_scalar(kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
    let (qh_off, qs_off) = kind.layout();
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(kind.block_bytes()).zip(x) {
        let sumi = block_sumi_scalar(kind, &b[qs_off..], qh_at(b, qh_off), &xb.qs);
        let d = f16_at(b, 0);
        // candle's float order, block by block.
        sumf += if kind.has_min() {
            sumi as f32 * d * xb.d + f16_at(b, 2) * xb.s
        } else {
            (sumi - kind.offset() * xb.qsum) as f32 * d * xb.d
        };
    }
    sumf
}

/// For each byte value, the 8 bytes 0x10 or 0 its bits select: the Q5 fifth
/// bits of 8 elements, ready to OR onto their nibbles.
#[cfg(target_arch = "x86_64")]
static HIGH_BITS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut bit = 0;
        while bit < 8 {
            if (b >> bit) & 1 == 1 {
                t[b] |= 0x10u64 << (8 * bit);
            }
            bit += 1;
        }
        b += 1;
    }
    t
};

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
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
    unsafe fn seq_dot<const VNNI: bool>(
        w: &[u8],
        row_bytes: usize,
        x: &[BlockQ8],
        out: &mut [f32],
    ) {
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
}

/// Which kernels to use; picked once per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Path {
    /// The fastest path this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let cap = super::simd_cap();
        #[cfg(target_arch = "x86_64")]
        if cap >= super::SimdCap::Avx2
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if cap == super::SimdCap::Native
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
            {
                return Path::Vnni;
            }
            return Path::Avx2;
        }
        Path::Scalar
    }

    /// Every path this CPU can run, scalar first (for the tests).
    #[cfg(test)]
    pub fn available() -> Vec<Self> {
        let mut v = vec![Path::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(Path::detect(), Path::Avx2 | Path::Vnni) {
                v.push(Path::Avx2);
            }
            if Path::detect() == Path::Vnni {
                v.push(Path::Vnni);
            }
        }
        v
    }

    /// One block's exact integer dot Σ (q_w − offset)·q_x on this path
    /// (the SIMD-vs-scalar unit test's probe).
    #[cfg(test)]
    fn block_sumi(self, kind: Kind, b: &[u8], xb: &BlockQ8) -> i32 {
        let (qh_off, qs_off) = kind.layout();
        match self {
            Path::Scalar => {
                block_sumi_scalar(kind, &b[qs_off..], qh_at(b, qh_off), &xb.qs)
                    - kind.offset() * xb.qsum
            }
            // SAFETY: these paths are only listed when the CPU has them.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::block_sumi_avx2(kind, b, xb) },
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { x86::block_sumi_vnni(kind, b, xb) },
        }
    }

    /// `out.len()` consecutive weight rows (`w`, `row_bytes` each) · one
    /// quantized activation row: Q8_0 in `ReadOrder::Sequential` as one
    /// stream, everything else eight rows at a time where the path has a
    /// tile kernel, the rows past the last whole tile one by one.
    fn rows_dot(
        self,
        order: ReadOrder,
        kind: Kind,
        w: &[u8],
        row_bytes: usize,
        x: &[BlockQ8],
        out: &mut [f32],
    ) {
        // SAFETY (all four): as in `row_dot`; w is out.len() whole rows (the
        // caller's slice), 8 per tile.
        #[cfg(target_arch = "x86_64")]
        if kind == Kind::Q8_0 && order == ReadOrder::Sequential {
            match self {
                Path::Avx2 => return unsafe { x86::seq_dot_q8_0_avx2(w, row_bytes, x, out) },
                Path::Vnni => return unsafe { x86::seq_dot_q8_0_vnni(w, row_bytes, x, out) },
                Path::Scalar => {}
            }
        }
        // Rows the tile kernels computed (all whole tiles, on a SIMD path).
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if self != Path::Scalar {
            for (i, y) in out.chunks_exact_mut(TILE).enumerate() {
                let w = &w[i * TILE * row_bytes..(i + 1) * TILE * row_bytes];
                match self {
                    Path::Avx2 => unsafe { x86::tile_dot_avx2(kind, w, row_bytes, x, y) },
                    Path::Vnni => unsafe { x86::tile_dot_vnni(kind, w, row_bytes, x, y) },
                    Path::Scalar => {}
                }
                done += TILE;
            }
        }
        for (r, y) in out.iter_mut().enumerate().skip(done) {
            *y = self.row_dot(kind, &w[r * row_bytes..(r + 1) * row_bytes], x);
        }
    }

    /// One weight row · one quantized activation row.
    fn row_dot(self, kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
        match self {
            Path::Scalar => row_dot_scalar(kind, w, x),
            // SAFETY: Avx2/Vnni are only chosen when the CPU has their
            // features; `matmul_many` checked the row holds x.len() blocks.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::row_dot_avx2(kind, w, x) },
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { x86::row_dot_vnni(kind, w, x) },
        }
    }
}

/// y = x·Wᵀ for `x` (m, k) row-major f32 and `w` the raw bytes of an (n, k)
/// weight of `kind`; returns (m, n) row-major.
/// (The tests' single-weight entry point.)
#[cfg(test)]
pub fn matmul(
    path: Path,
    order: ReadOrder,
    kind: Kind,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Vec<f32> {
    matmul_many(path, order, kind, &[(w, n)], k, x)
        .pop()
        .unwrap_or_default()
}

/// `matmul` for several weights of one kind that read the same `x`: each
/// activation row is quantized once, and all weights' rows run in one pool
/// job, read in `order`. Returns each (m, n_i).
pub fn matmul_many(
    path: Path,
    order: ReadOrder,
    kind: Kind,
    ws: &[(&[u8], usize)],
    k: usize,
    x: &[f32],
) -> Vec<Vec<f32>> {
    let row_bytes = k / QK * kind.block_bytes();
    // Invariants of a loaded weight (GGUF and quantize-at-load check row
    // lengths); the SIMD paths rely on every row holding k/32 whole blocks.
    assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * row_bytes));
    let m = x.len() / k;
    // Work items: tiles of up to 8 rows, numbered weight after weight;
    // weight w's tiles start at `starts[w]`. Each tile writes its rows of
    // the output straight into that weight's output (no staging buffer:
    // the lm_head's 151,936 rows made one, and a table of its tiles, on
    // every token).
    let mut starts = Vec::with_capacity(ws.len());
    let mut total = 0;
    for &(_, n) in ws {
        starts.push(total);
        total += n.div_ceil(TILE);
    }
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    let mut xq = Vec::with_capacity(k / QK);
    /// One output row, written by the pool's workers at disjoint tiles.
    struct Out(*mut f32);
    // SAFETY: every tile covers its own rows of one output, and each tile
    // index goes to exactly one thread.
    unsafe impl Sync for Out {}
    for (i, xi) in x.chunks_exact(k).enumerate() {
        quantize_row(xi, &mut xq);
        let xq = &xq;
        let outs: Vec<Out> = (ys.iter_mut().zip(ws))
            .map(|(y, &(_, n))| Out(y[i * n..(i + 1) * n].as_mut_ptr()))
            .collect();
        order.for_ranges(total, |range| {
            let (mut wi, mut t) = (0, range.start);
            // The range's tiles weight by weight: one call per weight's run.
            while t < range.end {
                while wi + 1 < starts.len() && starts[wi + 1] <= t {
                    wi += 1;
                }
                let end = starts.get(wi + 1).map_or(range.end, |&s| s.min(range.end));
                let (w, n) = ws[wi];
                let r = (t - starts[wi]) * TILE;
                let r_end = ((end - starts[wi]) * TILE).min(n);
                // SAFETY: r < r_end ≤ n, the length of this output row; these
                // tiles' rows only.
                let y = unsafe { std::slice::from_raw_parts_mut(outs[wi].0.add(r), r_end - r) };
                let rows = &w[r * row_bytes..r_end * row_bytes];
                path.rows_dot(order, kind, rows, row_bytes, xq, y);
                t = end;
            }
        });
    }
    ys
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    const KINDS: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// x·Wᵀ by candle's own per-row `vec_dot` (SIMD where candle has it),
    /// W quantized by candle's `from_float`.
    fn candle_vec_dot(t: GgmlDType, w: &Tensor, x: &[f32]) -> Vec<f32> {
        use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ8_0, GgmlType};
        fn typed<T: GgmlType>(w: &Tensor, x: &[f32]) -> Vec<f32> {
            let (n, k) = w.dims2().unwrap();
            let wv = values(w);
            let mut wq = vec![T::zeros(); n * k / T::BLCK_SIZE];
            T::from_float(&wv, &mut wq);
            let mut xq = vec![T::VecDotType::zeros(); k / T::BLCK_SIZE];
            let mut y = Vec::new();
            for xi in x.chunks_exact(k) {
                T::VecDotType::from_float(xi, &mut xq);
                for row in wq.chunks_exact(k / T::BLCK_SIZE) {
                    y.push(T::vec_dot(k, row, &xq));
                }
            }
            y
        }
        match t {
            GgmlDType::Q4_0 => typed::<BlockQ4_0>(w, x),
            _ => typed::<BlockQ8_0>(w, x),
        }
    }

    /// The scalar path equals candle's scalar kernels bit for bit (Q4_1,
    /// Q5_0, Q5_1: candle has no other) and candle's SIMD ones within float
    /// order (Q4_0, Q8_0); every SIMD path equals the scalar one within
    /// 1e-5·Σ|w·x| (float summation order only: the integer block dots are
    /// exact); all are within the 8-bit activation rounding of the f32
    /// product on the dequantized weight. Odd shapes: SmolLM2's 576-wide
    /// rows, 1024, 3072, a 151,936-row head, 579 and 37 rows (partial tiles),
    /// 19 blocks a row (Q8_0's pairs of blocks and one left); 1, 3, 16 and
    /// 128 activation rows.
    #[test]
    fn paths_equal_the_scalar_reference_candle_and_the_dequantized_product() {
        for t in KINDS {
            let kind = Kind::of(t).unwrap();
            for (n, k, m) in [
                (579, 576, 1),
                (1024, 1024, 3),
                (3072, 576, 16),
                (576, 3072, 2),
                (151936, 64, 1),
                (96, 1024, 128),
                (37, 608, 3),
            ] {
                let wf = Tensor::from_vec(
                    crate::ops::test_values(n * k, n as u64),
                    (n, k),
                    &Device::Cpu,
                )
                .unwrap();
                let q = QTensor::quantize(&wf, t).unwrap();
                let x = crate::ops::test_values(m * k, k as u64 + 7);
                let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
                let qmm = QMatMul::from_qtensor(QTensor::quantize(&wf, t).unwrap()).unwrap();
                let candle = values(&qmm.forward(&xt).unwrap());
                let w = q.dequantize(&Device::Cpu).unwrap();
                let dense = values(&xt.matmul(&w.t().unwrap()).unwrap());
                let mag = values(
                    &xt.abs()
                        .unwrap()
                        .matmul(&w.abs().unwrap().t().unwrap())
                        .unwrap(),
                );
                let bytes = q.data().unwrap();
                let scalar = matmul(Path::Scalar, ReadOrder::Interleaved, kind, &bytes, n, k, &x);
                let close = |a: &[f32], b: &[f32], what: &str| {
                    for (i, ((a, b), mag)) in a.iter().zip(b).zip(&mag).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * mag,
                            "{t:?} ({n}, {k}) × {m} [{i}] {what}: {a} vs {b} (Σ|w·x| {mag})"
                        );
                    }
                };
                if matches!(kind, Kind::Q4_0 | Kind::Q8_0) {
                    // candle's matmul may run its repacked VNNI tiles, which
                    // quantize activations their own way: compare with its
                    // per-row `vec_dot` instead.
                    let rows = candle_vec_dot(t, &wf, &x);
                    close(&scalar, &rows, "scalar vs candle vec_dot");
                } else {
                    assert_eq!(scalar, candle, "{t:?} ({n}, {k}) × {m}: scalar vs candle");
                }
                for path in Path::available() {
                    for order in [ReadOrder::Sequential, ReadOrder::Interleaved] {
                        let ours = matmul(path, order, kind, &bytes, n, k, &x);
                        close(&ours, &scalar, &format!("{path:?} {order:?} vs scalar"));
                        let worst = ours
                            .iter()
                            .zip(&dense)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        // |x| < 1, 8-bit activations: error ≲ √k · |w| · |x| / 254.
                        assert!(worst < 0.02 * (k as f32).sqrt(), "{t:?} {path:?}: {worst}");
                    }
                }
            }
        }
    }

    /// The AVX2 block quantizer equals the scalar reference bit for bit:
    /// random blocks at magnitudes from 1e-30 to 1e30, blocks whose scaled
    /// values are exact halves (±k.5 with largest |x| = 127: d = 1), zeros,
    /// and blocks with a NaN (ignored by the largest |x|, as in scalar) and
    /// an infinity.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_quantize_equals_scalar() {
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
            return;
        }
        let mut blocks: Vec<[f32; QK]> = Vec::new();
        for (i, scale) in [1e-30f32, 1e-3, 0.5, 1.0, 7.3, 127.0, 1e4, 1e30]
            .iter()
            .enumerate()
        {
            for seed in 0..200u64 {
                let v = crate::ops::test_values(QK, seed * 8 + i as u64);
                blocks.push(std::array::from_fn(|j| v[j] * scale));
            }
        }
        let mut halves: [f32; QK] = std::array::from_fn(|j| j as f32 - 15.5);
        halves[0] = 127.0;
        blocks.push(halves);
        blocks.push(halves.map(|v| -v));
        blocks.push([0.0; QK]);
        let mut nan = [0.25f32; QK];
        nan[3] = f32::NAN;
        nan[7] = -2.0;
        let mut inf = nan;
        inf[3] = f32::INFINITY;
        for b in blocks.iter().chain([&nan, &inf]) {
            let want = quantize_block(b);
            // SAFETY: AVX2 and FMA checked above; 32 elements.
            let (amax, qs, sum) = unsafe { x86::quantize_block(b) };
            let got = block_from(amax, qs, sum);
            let what = format!("{b:?}");
            assert_eq!(got.qs, want.qs, "{what}");
            assert_eq!(got.d.to_bits(), want.d.to_bits(), "{what}");
            assert_eq!(got.s.to_bits(), want.s.to_bits(), "{what}");
            assert_eq!(got.qsum, want.qsum, "{what}");
        }
    }

    /// `round_away` is `f32::round` over the range activations reach
    /// (every 1/4096 step of ±128, and the floats either side of each half).
    #[test]
    fn round_away_equals_round() {
        for i in -(128 * 4096)..=(128 * 4096) {
            let v = i as f32 / 4096.0;
            for v in [
                v,
                f32::from_bits(v.to_bits() + 1),
                f32::from_bits(v.to_bits().max(1) - 1),
            ] {
                if v.abs() <= 128.0 {
                    assert_eq!(round_away(v), v.round() as i32, "{v}");
                }
            }
        }
    }

    fn block_q8(qs: [i8; QK]) -> BlockQ8 {
        BlockQ8 {
            d: 1.0,
            s: 0.0,
            qsum: qs.iter().map(|&q| q as i32).sum(),
            qs,
        }
    }

    /// Each SIMD path's exact integer block dot equals the scalar one on
    /// 3000 random blocks per kind and on the extremes (largest weights
    /// against ±127 and −128; Q8_0's −128 weights). Activations are never
    /// −128 against Q8_0 weights: `quantize_row` rounds into −127..=127, and
    /// the AVX2 sign trick could not negate −128.
    #[test]
    fn simd_block_equals_scalar_block() {
        let mut seed = 1u64;
        for t in KINDS {
            let kind = Kind::of(t).unwrap();
            let mut cases: Vec<(Vec<u8>, BlockQ8)> = Vec::new();
            for _ in 0..3000 {
                let bytes: Vec<u8> = crate::ops::test_values(kind.block_bytes(), seed)
                    .iter()
                    .map(|v| (v * 127.0 + 128.0) as u8)
                    .collect();
                let mut x = [0i8; QK];
                for (xi, v) in x.iter_mut().zip(crate::ops::test_values(QK, seed + 1)) {
                    let lowest = if kind == Kind::Q8_0 { -127.0 } else { -128.0 };
                    *xi = (v * 128.0).clamp(lowest, 127.0) as i8;
                }
                cases.push((bytes, block_q8(x)));
                seed += 2;
            }
            for w in [0xFFu8, 0x80, 0x7F, 0x00] {
                for v in [127i8, -128, -127] {
                    if kind == Kind::Q8_0 && v == -128 {
                        continue;
                    }
                    cases.push((vec![w; kind.block_bytes()], block_q8([v; QK])));
                }
            }
            for (bytes, xb) in &cases {
                let reference = Path::Scalar.block_sumi(kind, bytes, xb);
                for path in Path::available() {
                    assert_eq!(
                        path.block_sumi(kind, bytes, xb),
                        reference,
                        "{t:?} {path:?}"
                    );
                }
            }
        }
    }
}
