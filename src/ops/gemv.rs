//! f32 weight × a few f32 activation rows (decode), threaded.
//!
//! candle's CPU matmul sends one row to `gemm`'s GEMV on one thread; for a
//! tied lm_head (SmolLM2: 49152 × 576 f32, 113 MB per token) that thread
//! reads everything alone while the others idle. Here output rows are spread
//! over candle's barrier pool and each dot product runs in AVX2+FMA (picked
//! at run time; scalar otherwise). The summation order differs from gemm's,
//! so results differ in the last bits: the tests bound the difference by
//! 1e-6 × Σ|w·x| per output.

/// Which dot product to use; picked once per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Path {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Path::Avx2Fma;
        }
        Path::Scalar
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Path::Scalar => dot_scalar(a, b),
            // SAFETY: chosen only when the CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma => unsafe { dot_avx2(a, b) },
        }
    }
}

/// The reference: four running sums (as the SIMD path keeps lanes), then their total.
fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats below n.
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            let o = i + 8 * j;
            *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *s);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
    let mut total = _mm_cvtss_f32(s);
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// y = x·Wᵀ for `x` (m, k) and `w` (n, k), both row-major f32; returns (m, n).
pub fn matmul(path: Path, w: &[f32], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    assert!(w.len() == n * k && k > 0 && x.len().is_multiple_of(k));
    let m = x.len() / k;
    let mut y = vec![0f32; m * n];
    for (xi, yi) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        super::fill_rows(yi, |r| path.dot(&w[r * k..(r + 1) * k], xi));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Both paths agree with candle's f32 matmul within 1e-6 × Σ|w·x| per
    /// output, on odd shapes (576, 1024, 3072 rows; k not a multiple of 32).
    #[test]
    fn paths_agree_with_candle() {
        for (n, k, m) in [
            (576, 576, 1),
            (3072, 1024, 3),
            (1024, 3072, 2),
            (49152, 64, 1),
            (7, 45, 5),
        ] {
            let w = crate::ops::test_values(n * k, n as u64);
            let x = crate::ops::test_values(m * k, k as u64 + 3);
            let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
            let reference: Vec<f32> = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for path in [Path::Scalar, Path::detect()] {
                let ours = matmul(path, &w, n, k, &x);
                for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                    let (row, col) = (i / n, i % n);
                    let mag: f32 = (0..k)
                        .map(|j| (w[col * k + j] * x[row * k + j]).abs())
                        .sum();
                    assert!(
                        (a - b).abs() <= 1e-6 * mag,
                        "{path:?} ({n},{k})×{m} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
