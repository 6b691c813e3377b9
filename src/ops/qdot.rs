//! Q4_1, Q5_0 and Q5_1 weights × f32 activations for a few rows (decode):
//! our own kernels for the types candle 0.11 has only scalar dot products for.
//!
//! On SmolLM2-135M Q4_1, candle's scalar `BlockQ4_1::vec_dot_unopt` was 79 %
//! of decode time (perf). These kernels compute exactly what candle computes —
//! activations quantized to 8 bits as `BlockQ8_1::from_float` /
//! `BlockQ8_0::from_float` do, then per block `sumi·d_w·d_x (+ m_w·s_x)` summed
//! in block order — so results are bit-identical to candle's. Only each block's
//! integer dot runs in SIMD (AVX2 + F16C, chosen at run time, scalar
//! otherwise), and output rows are spread over candle's persistent barrier
//! pool, the threads candle's own kernels use (a second pool would spin
//! against it on 2 cores).
//!
//! Block layouts (ggml, 32 elements each; element e < 16 is the low nibble of
//! byte e, element e ≥ 16 the high nibble of byte e−16; Q5's fifth bit of
//! element e is bit e of `qh`):
//! - Q4_1 (20 bytes): f16 d, f16 m, 16 × nibbles; value = q·d + m
//! - Q5_0 (22 bytes): f16 d, u32 qh, 16 × nibbles; value = (q − 16)·d
//! - Q5_1 (24 bytes): f16 d, f16 m, u32 qh, 16 × nibbles; value = q·d + m

use candle_core::quantized::GgmlDType;
use half::f16;

/// Elements per block.
pub const QK: usize = 32;

/// The weight types these kernels handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Q4_1,
    Q5_0,
    Q5_1,
}

impl Kind {
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_1 => Some(Kind::Q4_1),
            GgmlDType::Q5_0 => Some(Kind::Q5_0),
            GgmlDType::Q5_1 => Some(Kind::Q5_1),
            _ => None,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
            Kind::Q5_1 => 24,
        }
    }

    /// Offsets of (qh, nibbles) in a block; qh is absent for Q4_1.
    fn layout(self) -> (Option<usize>, usize) {
        match self {
            Kind::Q4_1 => (None, 4),
            Kind::Q5_0 => (Some(2), 6),
            Kind::Q5_1 => (Some(4), 8),
        }
    }

    /// Whether a block carries a minimum `m` (value = q·d + m).
    fn has_min(self) -> bool {
        self != Kind::Q5_0
    }
}

/// One block of 8-bit activations, as candle's `BlockQ8_1` (and `BlockQ8_0`,
/// whose `d` and `qs` are the same numbers).
#[derive(Clone, Copy)]
pub struct BlockQ8 {
    /// candle's f16 `d` and `s` (= d·Σq), widened once here instead of for
    /// every weight row.
    d: f32,
    s: f32,
    /// Σq, for Q5_0's −16 offset.
    qsum: i32,
    qs: [i8; QK],
}

/// Quantizes one row of activations (a multiple of 32) as candle's
/// `quantize_row_q8_1` does.
pub fn quantize_row(x: &[f32], out: &mut Vec<BlockQ8>) {
    out.clear();
    for xs in x.chunks_exact(QK) {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let dh = f16::from_f32(d);
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            qs[j] = f32::round(xs[j] * id) as i8;
            qs[j + QK / 2] = f32::round(xs[j + QK / 2] * id) as i8;
            sum += qs[j] as i32 + qs[j + QK / 2] as i32;
        }
        out.push(BlockQ8 {
            d: dh.to_f32(),
            s: (f16::from_f32(sum as f32) * dh).to_f32(),
            qsum: sum,
            qs,
        });
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

/// Σ q_w·q_x over one block with q_w unsigned (0..16, or 0..32 with the
/// fifth bits), scalar: the reference every SIMD path is tested against.
fn block_sumi_scalar(qs: &[u8], qh: u32, x: &[i8; QK]) -> i32 {
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        let v0 = (qs[j] & 0x0F) as i32 | (((qh >> j) & 1) << 4) as i32;
        let v1 = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
        sumi += v0 * x[j] as i32 + v1 * x[j + QK / 2] as i32;
    }
    sumi
}

/// The dot of one block given its unsigned-weight integer dot, in candle's
/// float order.
#[inline(always)]
fn block_value(kind: Kind, sumi_unsigned: i32, d: f32, m: f32, xb: &BlockQ8) -> f32 {
    match kind {
        Kind::Q5_0 => (sumi_unsigned - 16 * xb.qsum) as f32 * d * xb.d,
        _ => sumi_unsigned as f32 * d * xb.d + m * xb.s,
    }
}

fn row_dot_scalar(kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
    let (qh_off, qs_off) = kind.layout();
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(kind.block_bytes()).zip(x) {
        let sumi = block_sumi_scalar(&b[qs_off..qs_off + 16], qh_at(b, qh_off), &xb.qs);
        let m = if kind.has_min() { f16_at(b, 2) } else { 0.0 };
        sumf += block_value(kind, sumi, f16_at(b, 0), m, xb);
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
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_sumi_avx2(qs: &[u8], qh: Option<u32>, x: &[i8; QK]) -> i32 {
    use std::arch::x86_64::*;
    // SAFETY (loads): qs has 16 bytes and x 32 (the callers slice them); unaligned loads.
    let raw = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    // Weights 0..16 in the low lane, 16..32 in the high lane: x's order.
    let mut w = _mm256_set_m128i(hi, lo);
    if let Some(qh) = qh {
        let h = qh.to_le_bytes().map(|b| HIGH_BITS[b as usize] as i64);
        w = _mm256_or_si256(w, _mm256_set_epi64x(h[3], h[2], h[1], h[0]));
    }
    let a = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
    // u8 × i8 pairs → i16 (|31·128·2| fits), then pairs → i32.
    let p16 = _mm256_maddubs_epi16(w, a);
    let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(p32),
        _mm256_extracti128_si256(p32, 1),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// As `row_dot_scalar`, with each block's integer dot in AVX2 and its f16
/// scales widened by F16C, inlined into one loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn row_dot_avx2(kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
    use std::arch::x86_64::*;
    let (qh_off, qs_off) = kind.layout();
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(kind.block_bytes()).zip(x) {
        let qh = qh_off.map(|_| qh_at(b, qh_off));
        let sumi = block_sumi_avx2(&b[qs_off..qs_off + 16], qh, &xb.qs);
        // d and (for Q4_1/Q5_1) m: the block's first two f16 values.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
            b[0], b[1], b[2], b[3],
        ])));
        let d = _mm_cvtss_f32(dm);
        let m = if kind.has_min() {
            _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 0b01))
        } else {
            0.0
        };
        sumf += block_value(kind, sumi, d, m, xb);
    }
    sumf
}

/// Which integer dot product to use; picked once per call.
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
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
            return Path::Avx2;
        }
        Path::Scalar
    }

    /// One block's integer dot on this path (the SIMD-vs-scalar unit test's probe).
    #[cfg(test)]
    fn block_sumi(self, qs: &[u8], qh: Option<u32>, x: &[i8; QK]) -> i32 {
        match self {
            Path::Scalar => block_sumi_scalar(qs, qh.unwrap_or(0), x),
            // SAFETY: Avx2 is only chosen when the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { block_sumi_avx2(qs, qh, x) },
        }
    }

    /// One weight row · one quantized activation row.
    fn row_dot(self, kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
        match self {
            Path::Scalar => row_dot_scalar(kind, w, x),
            // SAFETY: Avx2 is only chosen when the CPU has AVX2 and F16C.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { row_dot_avx2(kind, w, x) },
        }
    }
}

/// y = x·Wᵀ for `x` (m, k) row-major f32 and `w` the raw bytes of an (n, k)
/// weight of `kind`; returns (m, n) row-major.
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
    let row_bytes = k / QK * kind.block_bytes();
    // Invariants of a loaded weight (GGUF and quantize-at-load check row lengths).
    assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * row_bytes));
    let m = x.len() / k;
    let mut xq = Vec::with_capacity(k / QK);
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    let mut row: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; *n]).collect();
    for (i, xi) in x.chunks_exact(k).enumerate() {
        quantize_row(xi, &mut xq);
        let xq = &xq;
        super::fill_split(&mut row, |w, r| {
            path.row_dot(kind, &ws[w].0[r * row_bytes..(r + 1) * row_bytes], xq)
        });
        for ((y, r), (_, n)) in ys.iter_mut().zip(&row).zip(ws) {
            y[i * n..(i + 1) * n].copy_from_slice(r);
        }
    }
    ys
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Every path equals candle's quantized matmul bit for bit (same 8-bit
    /// activations, same float order), and candle's f32 matmul on the
    /// dequantized weight within the 8-bit activation rounding, on odd shapes
    /// (SmolLM2's 576-wide rows, 1536, a 49152-row head).
    #[test]
    fn paths_equal_candle_and_the_dequantized_product() {
        let paths = [Path::Scalar, Path::detect()];
        for t in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
            let kind = Kind::of(t).unwrap();
            for (n, k, m) in [
                (576, 576, 1),
                (1536, 576, 3),
                (576, 1536, 2),
                (49152, 64, 1),
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
                let bytes = q.data().unwrap();
                for path in paths {
                    let ours = matmul(path, kind, &bytes, n, k, &x);
                    assert_eq!(ours, candle, "{t:?} {path:?} ({n}, {k}) × {m} vs candle");
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

    #[test]
    fn simd_block_equals_scalar_block() {
        let path = Path::detect();
        let mut seed = 1u64;
        for i in 0..3000 {
            let bytes: Vec<u8> = crate::ops::test_values(16, seed)
                .iter()
                .map(|v| (v * 127.0 + 128.0) as u8)
                .collect();
            let qh = (crate::ops::test_values(1, seed + 5)[0].to_bits()).rotate_left(i % 32);
            let mut x = [0i8; QK];
            for (xi, v) in x.iter_mut().zip(crate::ops::test_values(QK, seed + 1)) {
                *xi = (v * 127.0) as i8;
            }
            for h in [None, Some(qh)] {
                let reference = block_sumi_scalar(&bytes, h.unwrap_or(0), &x);
                assert_eq!(path.block_sumi(&bytes, h, &x), reference, "{h:?}");
            }
            seed += 2;
        }
        // Extremes: all weights 31 against ±127 and −128.
        for v in [127i8, -128] {
            let x = [v; QK];
            let r = block_sumi_scalar(&[0xFF; 16], u32::MAX, &x);
            assert_eq!(path.block_sumi(&[0xFF; 16], Some(u32::MAX), &x), r);
        }
    }
}
