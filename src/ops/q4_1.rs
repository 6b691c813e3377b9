//! Q4_1 weights × f32 activations for a few rows (decode): our own kernel.
//!
//! candle 0.11's Q4_1 dot product is scalar (`BlockQ4_1::vec_dot_unopt`); on
//! SmolLM2-135M Q4_1 it was 79 % of decode time (perf). This kernel computes
//! the same thing as candle — activations quantized to Q8_1 exactly as
//! `BlockQ8_1::from_float`, then per block `sumi·d_w·d_x + m_w·s_x` summed in
//! block order — so results are bit-identical to candle's; only the integer
//! dot of each block runs in SIMD (AVX2, chosen at run time), and output rows
//! are spread over candle's persistent barrier pool, the same threads candle's
//! own kernels use (a second pool would spin against it on 2 cores).
//!
//! Block layouts (ggml): Q4_1 = f16 d, f16 m, 16 bytes of nibbles (low nibbles
//! are elements 0..16, high nibbles 16..32), value = q·d + m.
//! Q8_1 = f16 d, f16 s (= d·Σq), 32 × i8.

use half::f16;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes of one Q4_1 block.
pub const BLOCK_BYTES: usize = 20;

/// One activation block, as candle's `BlockQ8_1`.
#[derive(Clone, Copy)]
pub struct BlockQ8_1 {
    /// candle's f16 `d` and `s`, widened once here instead of for every weight row.
    d: f32,
    s: f32,
    qs: [i8; QK],
}

/// Quantizes one row of `k` activations (k a multiple of 32) to Q8_1, as
/// candle's `quantize_row_q8_1` does.
pub fn quantize_row_q8_1(x: &[f32], out: &mut Vec<BlockQ8_1>) {
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
        out.push(BlockQ8_1 {
            d: dh.to_f32(),
            s: (f16::from_f32(sum as f32) * dh).to_f32(),
            qs,
        });
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Σ q_w·q_x over one block, scalar (the reference every SIMD path is tested against).
fn block_sumi_scalar(qs: &[u8], x: &[i8; QK]) -> i32 {
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        let v0 = (qs[j] & 0x0F) as i32;
        let v1 = (qs[j] >> 4) as i32;
        sumi += v0 * x[j] as i32 + v1 * x[j + QK / 2] as i32;
    }
    sumi
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_sumi_avx2(qs: &[u8], x: &[i8; QK]) -> i32 {
    use std::arch::x86_64::*;
    debug_assert!(qs.len() >= QK / 2);
    // SAFETY: qs has 16 bytes and x 32 (checked by the callers' slicing);
    // unaligned loads.
    let raw = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    // Weights 0..16 in the low lane, 16..32 in the high lane: x's order.
    let w = _mm256_set_m128i(hi, lo);
    let a = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
    // u8 × i8 pairs → i16 (|15·127·2| fits), then pairs → i32.
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
    fn block_sumi(self, qs: &[u8], x: &[i8; QK]) -> i32 {
        match self {
            Path::Scalar => block_sumi_scalar(qs, x),
            // SAFETY: Avx2 is only chosen when the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { block_sumi_avx2(qs, x) },
        }
    }
}

/// One weight row (k/32 Q4_1 blocks) · one quantized activation row.
fn row_dot(path: Path, w: &[u8], x: &[BlockQ8_1]) -> f32 {
    match path {
        Path::Scalar => row_dot_scalar(w, x),
        // SAFETY: Avx2 is only chosen when the CPU has AVX2 and F16C.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { row_dot_avx2(w, x) },
    }
}

fn row_dot_scalar(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let sumi = block_sumi_scalar(&b[4..BLOCK_BYTES], &xb.qs);
        // The same float operations, in the same order, as candle's scalar dot.
        sumf += sumi as f32 * f16_at(b, 0) * xb.d + f16_at(b, 2) * xb.s;
    }
    sumf
}

/// As `row_dot_scalar`, with the block's integer dot in AVX2 and its two
/// f16 scales widened by F16C, all inlined into one loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn row_dot_avx2(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let sumi = block_sumi_avx2(&b[4..BLOCK_BYTES], &xb.qs);
        // d and m: the block's first two f16 values.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
            b[0], b[1], b[2], b[3],
        ])));
        let d = _mm_cvtss_f32(dm);
        let m = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 0b01));
        sumf += sumi as f32 * d * xb.d + m * xb.s;
    }
    sumf
}

/// A row of the output, written by the pool's workers at disjoint indices.
struct OutRow(*mut f32);
// SAFETY: workers write disjoint elements (see `matmul`).
unsafe impl Sync for OutRow {}
impl OutRow {
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// y = x·Wᵀ for `x` (m, k) row-major f32 and `w` the raw Q4_1 bytes of an
/// (n, k) weight; returns (m, n) row-major.
pub fn matmul(path: Path, w: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    // Invariants of a loaded Q4_1 weight (GGUF and quantize-at-load check row lengths).
    assert!(
        k.is_multiple_of(QK) && w.len() == n * k / QK * BLOCK_BYTES && x.len().is_multiple_of(k)
    );
    let m = x.len() / k;
    let row_bytes = k / QK * BLOCK_BYTES;
    let mut xq = Vec::with_capacity(k / QK);
    let mut y = vec![0f32; m * n];
    for (xi, yi) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        quantize_row_q8_1(xi, &mut xq);
        let xq = &xq;
        let out = OutRow(yi.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(n, |rows| {
            for r in rows {
                let v = row_dot(path, &w[r * row_bytes..(r + 1) * row_bytes], xq);
                // SAFETY: r < n = yi.len(), and each row index is handed to exactly
                // one worker, so no two writes alias.
                unsafe { *out.at(r) = v };
            }
        });
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every path equals candle's Q4_1 matmul bit for bit (same quantized
    /// activations, same float order), and candle's f32 matmul on the
    /// dequantized weight within the 8-bit activation rounding, on odd
    /// shapes (SmolLM2's 576-wide rows, 1536, a 49152-row head).
    #[test]
    fn paths_equal_candle_and_the_dequantized_product() {
        let paths = [Path::Scalar, Path::detect()];
        for (n, k, m) in [
            (576, 576, 1),
            (1536, 576, 3),
            (576, 1536, 2),
            (49152, 64, 1),
        ] {
            let wf = Tensor::from_vec(random(n * k, n as u64), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&wf, GgmlDType::Q4_1).unwrap();
            let x = random(m * k, k as u64 + 7);
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
            let candle: Vec<f32> = candle_core::quantized::QMatMul::from_qtensor(
                QTensor::quantize(&wf, GgmlDType::Q4_1).unwrap(),
            )
            .unwrap()
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
            let dense: Vec<f32> = xt
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let bytes = q.data().unwrap();
            for path in paths {
                let ours = matmul(path, &bytes, n, k, &x);
                assert_eq!(ours, candle, "{path:?} ({n}, {k}) × {m} rows vs candle");
                let worst = ours
                    .iter()
                    .zip(&dense)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // |x| < 1, 8-bit activations: error ≲ k · |w| · |x|/254.
                assert!(worst < 0.02 * (k as f32).sqrt(), "{path:?}: {worst}");
            }
        }
    }

    #[test]
    fn simd_block_equals_scalar_block() {
        let path = Path::detect();
        let mut seed = 1u64;
        for _ in 0..1000 {
            let bytes: Vec<u8> = random(16, seed)
                .iter()
                .map(|v| (v * 127.0 + 128.0) as u8)
                .collect();
            let mut x = [0i8; QK];
            for (xi, v) in x.iter_mut().zip(random(QK, seed + 1)) {
                *xi = (v * 127.0) as i8;
            }
            assert_eq!(path.block_sumi(&bytes, &x), block_sumi_scalar(&bytes, &x));
            seed += 2;
        }
        // Extremes: all 15s against ±127 and -128.
        let bytes = [0xFFu8; 16];
        for v in [127i8, -128] {
            let x = [v; QK];
            assert_eq!(path.block_sumi(&bytes, &x), block_sumi_scalar(&bytes, &x));
        }
    }
}
