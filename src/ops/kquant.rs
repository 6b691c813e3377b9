//! Q4_K and Q6_K weights × f32 activations for a few rows (decode): our own
//! kernels for the two k-quant types llama.cpp's Q4_K_M files are made of
//! (Q6_K also holds the tied output table of its Q4_0 files).
//!
//! Activations are quantized per 256 elements to 8 bits as candle's
//! `BlockQ8K::from_float` does (d = max/−127, sums of 16-element groups).
//! A block's dot product is summed exactly in i32 lanes (sub-block scales
//! applied as i16 multipliers, the Q6_K offset and the Q4_K minimums
//! through the group sums), then scaled by the f16 `d` into f32 lanes that
//! are reduced once per row. The next row is prefetched block by block (one
//! core's hardware prefetcher alone left the weights streaming from DRAM
//! well below the kernel's speed; see `qdot`). Paths: AVX2 (+FMA, F16C)
//! chosen at run time, and a scalar reference; they differ only in float
//! summation order (tested within 1e-5 of Σ|w·x|).
//!
//! Block layouts (ggml, 256 elements):
//! - Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales and mins
//!   for eight 32-element sub-blocks, 128 bytes of nibbles (per 64
//!   elements: 32 bytes, low nibbles first); value = d·sc·q − dmin·m
//! - Q6_K (210 bytes): 128 bytes of low nibbles `ql`, 64 bytes of high
//!   2-bit pairs `qh`, 16 × i8 scales (one per 16 elements), f16 d;
//!   value = d·sc·(q − 32)

use candle_core::quantized::GgmlDType;
use half::f16;

/// Elements per block.
pub const QK_K: usize = 256;

/// The weight types these kernels handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Q4K,
    Q6K,
}

impl Kind {
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4K => Some(Kind::Q4K),
            GgmlDType::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Kind::Q4K => 144,
            Kind::Q6K => 210,
        }
    }
}

/// One block of 8-bit activations, as candle's `BlockQ8K`.
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    d: f32,
    qs: [i8; QK_K],
    /// Σ q over each 16 elements.
    bsums: [i16; QK_K / 16],
    /// Σ q over each 32 elements (Q4_K's sub-blocks).
    bsum32: [i16; QK_K / 32],
}

/// Quantizes one row of activations (a multiple of 256) as candle's
/// `BlockQ8K::from_float` does.
pub fn quantize_row(x: &[f32], out: &mut Vec<BlockQ8K>) {
    out.clear();
    for xs in x.chunks_exact(QK_K) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            bsum32: [0; QK_K / 32],
        };
        if amax != 0.0 {
            let iscale = -127f32 / max;
            for (q, &v) in b.qs.iter_mut().zip(xs) {
                *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
            }
            for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = g.iter().map(|&q| q as i32).sum::<i32>() as i16;
            }
            for (s, g) in b.bsum32.iter_mut().zip(b.bsums.chunks_exact(2)) {
                // |Σ| ≤ 32·128: fits i16.
                *s = g[0] + g[1];
            }
            b.d = 1.0 / iscale;
        }
        out.push(b);
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K's eight 6-bit (scale, min) pairs from its 12 packed bytes
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(super) fn q4k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// Σ_j m_j·Σ x over Q4_K's eight 32-element sub-blocks.
fn q4k_mins(m: &[u8; 8], x: &BlockQ8K) -> i32 {
    m.iter()
        .zip(x.bsums.chunks_exact(2))
        .map(|(&m, s)| m as i32 * (s[0] as i32 + s[1] as i32))
        .sum()
}

/// `q4k_scales` without a loop (ggml's bit shuffle): 16 bytes, the eight
/// scales then the eight mins, as four little-endian words.
#[inline(always)]
fn q4k_scales_packed(s: &[u8]) -> [u32; 4] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (u0, u1, u2) = (w(0), w(4), w(8));
    [
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ]
}

/// One Q4_K block's exact integer parts: (Σ_j sc_j·Σ q·x, Σ_j m_j·Σ x).
fn q4k_block_scalar(b: &[u8], x: &BlockQ8K) -> (i32, i32) {
    let (sc, m) = q4k_scales(&b[4..16]);
    let qs = &b[16..144];
    let mut dot = 0i32;
    for (j, (q, xs)) in qs.chunks_exact(32).zip(x.qs.chunks_exact(64)).enumerate() {
        let (mut lo, mut hi) = (0i32, 0i32);
        for (l, &q) in q.iter().enumerate() {
            lo += (q & 0xF) as i32 * xs[l] as i32;
            hi += (q >> 4) as i32 * xs[32 + l] as i32;
        }
        dot += sc[2 * j] as i32 * lo + sc[2 * j + 1] as i32 * hi;
    }
    (dot, q4k_mins(&m, x))
}

/// One Q6_K block's exact integer dot Σ_g sc_g·Σ (q − 32)·x.
fn q6k_block_scalar(b: &[u8], x: &BlockQ8K) -> i32 {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let mut dot = 0i32;
    for h in 0..2 {
        let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
        for l in 0..32 {
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (c, &q) in q.iter().enumerate() {
                let e = 128 * h + 32 * c + l;
                dot += sc[e / 16] as i8 as i32 * (q as i32 - 32) * x.qs[e] as i32;
            }
        }
    }
    dot
}

fn row_dot_scalar(kind: Kind, w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(kind.block_bytes()).zip(x) {
        sumf += match kind {
            Kind::Q4K => {
                let (dot, mins) = q4k_block_scalar(b, xb);
                xb.d * (f16_at(b, 0) * dot as f32 - f16_at(b, 2) * mins as f32)
            }
            Kind::Q6K => xb.d * f16_at(b, 208) * q6k_block_scalar(b, xb) as f32,
        };
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{q4k_scales_packed, BlockQ8K, Kind};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (p as *const u16).read_unaligned() as i32,
        )))
    }

    /// `pshufb` controls: all sixteen i16 lanes = lane `i` of [v0..8 | v0..8].
    static BROADCAST_LANE: [[u8; 32]; 8] = {
        let mut t = [[0u8; 32]; 8];
        let mut i = 0;
        while i < 8 {
            let mut j = 0;
            while j < 16 {
                t[i][2 * j] = 2 * i as u8;
                t[i][2 * j + 1] = 2 * i as u8 + 1;
                j += 1;
            }
            i += 1;
        }
        t
    };

    #[inline(always)]
    unsafe fn broadcast_lane(v: __m256i, i: usize) -> __m256i {
        _mm256_shuffle_epi8(
            v,
            _mm256_loadu_si256(BROADCAST_LANE[i].as_ptr() as *const __m256i),
        )
    }

    /// One Q4_K block: Σ_j sc_j·Σ q·x in eight i32 lanes, and
    /// Σ_j m_j·Σ x in four.
    #[inline(always)]
    unsafe fn q4k_lanes(b: *const u8, x: &BlockQ8K) -> (__m256i, __m128i) {
        let u = q4k_scales_packed(std::slice::from_raw_parts(b.add(4), 12));
        let sm = _mm_setr_epi32(u[0] as i32, u[1] as i32, u[2] as i32, u[3] as i32);
        let mins = _mm_madd_epi16(
            _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)),
            _mm_loadu_si128(x.bsum32.as_ptr() as *const __m128i),
        );
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_si256();
        for j in 0..4 {
            let q = _mm256_loadu_si256(b.add(16 + 32 * j) as *const __m256i);
            let xl = _mm256_loadu_si256(x.qs.as_ptr().add(64 * j) as *const __m256i);
            let xh = _mm256_loadu_si256(x.qs.as_ptr().add(64 * j + 32) as *const __m256i);
            let lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), xl);
            let hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), xh);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(lo, broadcast_lane(sc, 2 * j)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(hi, broadcast_lane(sc, 2 * j + 1)));
        }
        (acc, mins)
    }

    /// For 32 elements 2c, 2c+1 of a half: scale 2c in the low lane's
    /// eight i16, 2c+1 in the high lane's (a shuffle of [sc0..8 | sc0..8]).
    #[inline(always)]
    unsafe fn pick(c: i8) -> __m256i {
        let (a, b) = (4 * c, 4 * c + 2);
        _mm256_setr_epi8(
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1, //
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
        )
    }

    /// Σ_g sc_g·Σ (q − 32)·x of one Q6_K block in eight i32 lanes.
    #[inline(always)]
    unsafe fn q6k_lanes(b: *const u8, x: &BlockQ8K) -> __m256i {
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        // The 16 scales as i16: [sc0..8 | sc8..16].
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
        let picks = [pick(0), pick(1), pick(2), pick(3)];
        let mut acc = _mm256_setzero_si256();
        for h in 0..2 {
            let half_sc = if h == 0 {
                _mm256_permute4x64_epi64(sc16, 0b01_00_01_00)
            } else {
                _mm256_permute4x64_epi64(sc16, 0b11_10_11_10)
            };
            let ql0 = _mm256_loadu_si256(b.add(64 * h) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.add(64 * h + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    _mm256_and_si256(qh, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                ),
            ];
            for c in 0..4 {
                let xv = _mm256_loadu_si256(x.qs.as_ptr().add(128 * h + 32 * c) as *const __m256i);
                let p16 = _mm256_maddubs_epi16(q[c], xv);
                let sv = _mm256_shuffle_epi8(half_sc, picks[c]);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sv));
            }
        }
        // The −32 offset: 32·Σ_g sc_g·bsum_g.
        let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
        _mm256_sub_epi32(acc, _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5))
    }

    /// One weight row · one activation row, the next row prefetched.
    ///
    /// SAFETY: the CPU has AVX2, FMA and F16C; `w` holds `x.len()` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_dot(kind: Kind, w: &[u8], x: &[BlockQ8K]) -> f32 {
        let bytes = kind.block_bytes();
        let lines_per_block = bytes.div_ceil(64);
        let next = w.as_ptr().wrapping_add(2 * w.len());
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm_setzero_ps();
        for (i, xb) in x.iter().enumerate() {
            for l in 0..lines_per_block {
                // Prefetches never fault, so running past the weight is harmless.
                let at = next.wrapping_add((i * lines_per_block + l) * 64);
                _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
            }
            let b = w.as_ptr().add(i * bytes);
            match kind {
                Kind::Q4K => {
                    let (lanes, m) = q4k_lanes(b, xb);
                    acc = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(lanes),
                        _mm256_set1_ps(f16(b) * xb.d),
                        acc,
                    );
                    mins =
                        _mm_fmadd_ps(_mm_cvtepi32_ps(m), _mm_set1_ps(f16(b.add(2)) * xb.d), mins);
                }
                Kind::Q6K => {
                    acc = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(q6k_lanes(b, xb)),
                        _mm256_set1_ps(f16(b.add(208)) * xb.d),
                        acc,
                    );
                }
            }
        }
        hsum(acc) - hsum(_mm256_zextps128_ps256(mins))
    }

    /// One block's exact integer parts (dot, Q4_K's mins term), for the
    /// unit tests.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block_dot(kind: Kind, b: &[u8], x: &BlockQ8K) -> (i32, i32) {
        let (v, m) = match kind {
            Kind::Q4K => q4k_lanes(b.as_ptr(), x),
            Kind::Q6K => (q6k_lanes(b.as_ptr(), x), _mm_setzero_si128()),
        };
        let sum4 = |s: __m128i| {
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            _mm_cvtsi128_si32(s)
        };
        let v = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        (sum4(v), sum4(m))
    }
}

/// Which kernels to use; picked once per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Path {
    /// The fastest path this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::simd_cap() >= super::SimdCap::Avx2
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Path::Avx2;
        }
        Path::Scalar
    }

    fn row_dot(self, kind: Kind, w: &[u8], x: &[BlockQ8K]) -> f32 {
        match self {
            Path::Scalar => row_dot_scalar(kind, w, x),
            // SAFETY: Avx2 is only chosen when the CPU has it; `matmul_many`
            // checked each row holds x.len() blocks.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::row_dot(kind, w, x) },
        }
    }
}

/// y = x·Wᵀ for `x` (m, k) row-major f32 and `w` the raw bytes of an (n, k)
/// weight of `kind`; returns (m, n) row-major.
/// (The tests' single-weight entry point.)
#[cfg(test)]
pub fn matmul(path: Path, kind: Kind, w: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    matmul_many(path, kind, &[(w, n)], k, x)
        .pop()
        .unwrap_or_default()
}

/// `matmul` for several weights of one kind that read the same `x`: each
/// activation row is quantized once, and all weights' rows run in one pool
/// job. Returns each (m, n_i).
pub fn matmul_many(
    path: Path,
    kind: Kind,
    ws: &[(&[u8], usize)],
    k: usize,
    x: &[f32],
) -> Vec<Vec<f32>> {
    let row_bytes = k / QK_K * kind.block_bytes();
    // Invariants of a loaded weight (GGUF and quantize-at-load check row
    // lengths); the SIMD path relies on every row holding k/256 whole blocks.
    assert!(k.is_multiple_of(QK_K) && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * row_bytes));
    let ns: Vec<usize> = ws.iter().map(|&(_, n)| n).collect();
    super::matmul_rows(
        &ns,
        k,
        x,
        |xi| {
            let mut xq = Vec::with_capacity(k / QK_K);
            quantize_row(xi, &mut xq);
            xq
        },
        |xq, w, r| path.row_dot(kind, &ws[w].0[r * row_bytes..(r + 1) * row_bytes], xq),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{self, GgmlType};
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn paths() -> Vec<Path> {
        let mut v = vec![Path::Scalar];
        if Path::detect() != Path::Scalar {
            v.push(Path::detect());
        }
        v
    }

    /// x·Wᵀ by candle's own per-row `vec_dot` (its SIMD kernels), W and x
    /// quantized by candle.
    fn candle_vec_dot<T: GgmlType>(w: &[f32], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
        let mut wq = vec![T::zeros(); n * k / T::BLCK_SIZE];
        T::from_float(w, &mut wq);
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

    /// Every path equals the scalar reference and candle's own `vec_dot`
    /// within 1e-5·Σ|w·x| (the integer block dots are exact; float order
    /// differs), and the f32 product on the dequantized weight within the
    /// 8-bit activation rounding, on odd shapes: 1024, 3072 and 151,936 rows
    /// (a tied table's), 1, 3 and 16 activation rows.
    #[test]
    fn paths_equal_the_scalar_reference_candle_and_the_dequantized_product() {
        for t in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let kind = Kind::of(t).unwrap();
            for (n, k, m) in [
                (1024, 1024, 1),
                (3072, 1024, 3),
                (1027, 3072, 16),
                (151936, 256, 1),
            ] {
                let wv = crate::ops::test_values(n * k, n as u64 + 3);
                let wf = Tensor::from_vec(wv.clone(), (n, k), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&wf, t).unwrap();
                let x = crate::ops::test_values(m * k, k as u64 + 7);
                let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
                let deq = q.dequantize(&Device::Cpu).unwrap();
                let dense = values(&xt.matmul(&deq.t().unwrap()).unwrap());
                let mag = values(
                    &xt.abs()
                        .unwrap()
                        .matmul(&deq.abs().unwrap().t().unwrap())
                        .unwrap(),
                );
                let candle = match kind {
                    Kind::Q4K => candle_vec_dot::<k_quants::BlockQ4K>(&wv, n, k, &x),
                    Kind::Q6K => candle_vec_dot::<k_quants::BlockQ6K>(&wv, n, k, &x),
                };
                let bytes = q.data().unwrap();
                let scalar = matmul(Path::Scalar, kind, &bytes, n, k, &x);
                let close = |a: &[f32], b: &[f32], what: &str| {
                    for (i, ((a, b), mag)) in a.iter().zip(b).zip(&mag).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * mag,
                            "{t:?} ({n}, {k}) × {m} [{i}] {what}: {a} vs {b} (Σ|w·x| {mag})"
                        );
                    }
                };
                close(&scalar, &candle, "scalar vs candle vec_dot");
                for path in paths() {
                    let ours = matmul(path, kind, &bytes, n, k, &x);
                    close(&ours, &scalar, &format!("{path:?} vs scalar"));
                    let worst = ours
                        .iter()
                        .zip(&dense)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < 0.02 * (k as f32).sqrt(), "{t:?} {path:?}: {worst}");
                }
            }
        }
    }

    /// The SIMD integer block dot (and Q4_K's mins term, from the packed
    /// scale decoding) equals the scalar one on random blocks (every scale,
    /// nibble and high-bit pattern) and on the extremes.
    #[test]
    fn simd_block_equals_scalar_block() {
        #[cfg(target_arch = "x86_64")]
        if Path::detect() == Path::Avx2 {
            let mut seed = 5u64;
            for kind in [Kind::Q4K, Kind::Q6K] {
                let mut cases = Vec::new();
                for _ in 0..1000 {
                    let b: Vec<u8> = crate::ops::test_values(kind.block_bytes(), seed)
                        .iter()
                        .map(|v| (v * 127.0 + 128.0) as u8)
                        .collect();
                    let xs = crate::ops::test_values(QK_K, seed + 1);
                    let mut xq = Vec::new();
                    quantize_row(&xs, &mut xq);
                    cases.push((b, xq[0]));
                    seed += 2;
                }
                for w in [0xFFu8, 0x80, 0x7F, 0x00] {
                    for v in [127f32, -127.0] {
                        let mut xq = Vec::new();
                        quantize_row(&[v; QK_K], &mut xq);
                        cases.push((vec![w; kind.block_bytes()], xq[0]));
                    }
                }
                for (b, xb) in &cases {
                    let reference = match kind {
                        Kind::Q4K => q4k_block_scalar(b, xb),
                        Kind::Q6K => (q6k_block_scalar(b, xb), 0),
                    };
                    // SAFETY: the CPU has AVX2 (checked above).
                    let simd = unsafe { x86::block_dot(kind, b, xb) };
                    assert_eq!(simd, reference, "{kind:?}");
                }
            }
        }
    }
}
