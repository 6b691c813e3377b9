//! Float weight (f32, bf16 or f16) × a few f32 activation rows (decode), threaded.
//!
//! candle's CPU matmul sends one row to `gemm`'s GEMV on one thread; for a
//! tied lm_head (SmolLM2: 49152 × 576 f32, 113 MB per token) that thread
//! reads everything alone while the others idle, and a bf16 weight is first
//! widened to f32 whole, on every call. Here output rows are spread over
//! candle's barrier pool and each dot product runs in AVX2+FMA (picked at run
//! time; scalar otherwise); bf16 and f16 weights are widened to f32 eight at a
//! time in registers, so a bf16 checkpoint is read at 2 bytes a weight and
//! computed exactly as its f32 widening would be. The summation order differs
//! from gemm's, so results differ in the last bits: the tests bound the
//! difference by 1e-6 × Σ|w·x| per output.

use half::{bf16, f16};

/// A weight matrix's rows, row-major (n, k), in the precision it is held in.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::F32(w) => w.len(),
            Rows::Bf16(w) => w.len(),
            Rows::F16(w) => w.len(),
        }
    }
}

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
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Path::Avx2Fma;
        }
        Path::Scalar
    }

    /// Row `r` of `w` (k wide) · `x`.
    fn dot(self, w: Rows, r: usize, k: usize, x: &[f32]) -> f32 {
        let range = r * k..(r + 1) * k;
        match (self, w) {
            (Path::Scalar, Rows::F32(w)) => dot_scalar(&w[range], x, |v| v),
            (Path::Scalar, Rows::Bf16(w)) => dot_scalar(&w[range], x, bf16::to_f32),
            (Path::Scalar, Rows::F16(w)) => dot_scalar(&w[range], x, f16::to_f32),
            // SAFETY (all three): chosen only when the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2Fma, Rows::F32(w)) => unsafe { avx2::dot_f32(&w[range], x) },
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2Fma, Rows::Bf16(w)) => unsafe { avx2::dot_bf16(&w[range], x) },
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2Fma, Rows::F16(w)) => unsafe { avx2::dot_f16(&w[range], x) },
        }
    }
}

/// a·b for two f32 slices on `path` (the attention kernel's dot product).
pub fn dot_f32(path: Path, a: &[f32], b: &[f32]) -> f32 {
    path.dot(Rows::F32(a), 0, a.len().min(b.len()), b)
}

/// y += a·x over two f32 slices on `path` (the attention kernel's weighted
/// sum of values).
pub fn axpy_f32(path: Path, a: f32, x: &[f32], y: &mut [f32]) {
    match path {
        // SAFETY: chosen only when the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2Fma => unsafe { avx2::axpy_f32(a, x, y) },
        Path::Scalar => y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x),
    }
}

/// The reference: each weight widened to f32, products summed in order.
fn dot_scalar<T: Copy>(w: &[T], x: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    w.iter().zip(x).map(|(&w, x)| widen(w) * x).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Σ w·x with 4 × 8 running sums; `load(i)` gives 8 widened weights at i.
    #[inline(always)]
    unsafe fn dot(
        n: usize,
        load: impl Fn(usize) -> __m256,
        x: &[f32],
        tail: impl Fn(usize) -> f32,
    ) -> f32 {
        let px = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 elements below n.
        while i + 32 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *s = _mm256_fmadd_ps(load(o), _mm256_loadu_ps(px.add(o)), *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(px.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        let mut total = _mm_cvtss_f32(s);
        while i < n {
            total += tail(i) * x[i];
            i += 1;
        }
        total
    }

    /// y += a·x, eight lanes at a time (each element a·x + y rounded once:
    /// FMA, where the scalar path rounds the product too).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        // SAFETY: every access is below n.
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        let (n, p) = (w.len().min(x.len()), w.as_ptr());
        dot(n, |i| _mm256_loadu_ps(p.add(i)), x, |i| w[i])
    }

    /// bf16 is the top half of an f32: widen by shifting 16 bits left.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        let (n, p) = (w.len().min(x.len()), w.as_ptr());
        let load = |i: usize| {
            let h = _mm_loadu_si128(p.add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        };
        dot(n, load, x, |i| w[i].to_f32())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let (n, p) = (w.len().min(x.len()), w.as_ptr());
        let load = |i: usize| _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i));
        dot(n, load, x, |i| w[i].to_f32())
    }
}

/// y = x·Wᵀ for `x` (m, k) f32 and `w` (n, k); returns (m, n).
/// (The tests' single-weight entry point.)
#[cfg(test)]
pub fn matmul(path: Path, w: Rows, n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    matmul_many(path, &[(w, n)], k, x).pop().unwrap_or_default()
}

/// `matmul` for several weights (n_i, k) that read the same `x`, their rows
/// in one pool job per activation row; returns each (m, n_i).
pub fn matmul_many(path: Path, ws: &[(Rows, usize)], k: usize, x: &[f32]) -> Vec<Vec<f32>> {
    assert!(k > 0 && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * k));
    let m = x.len() / k;
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    let mut row: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; *n]).collect();
    for (i, xi) in x.chunks_exact(k).enumerate() {
        super::fill_split(&mut row, |w, r| path.dot(ws[w].0, r, k, xi));
        for ((y, r), (_, n)) in ys.iter_mut().zip(&row).zip(ws) {
            y[i * n..(i + 1) * n].copy_from_slice(r);
        }
    }
    ys
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
                let ours = matmul(path, Rows::F32(&w), n, k, &x);
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

    /// bf16 and f16 weights: both paths agree with candle's f32 matmul on
    /// the weights widened to f32 (the values our kernels compute with),
    /// within the same 1e-6 × Σ|w·x|; the scalar path is the reference.
    #[test]
    fn half_weights_agree_with_widened_f32() {
        for (n, k, m) in [(576, 576, 1), (1024, 3072, 3), (151936, 16, 1), (9, 37, 16)] {
            let w32 = crate::ops::test_values(n * k, n as u64 + 1);
            let x = crate::ops::test_values(m * k, k as u64 + 5);
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let cases: [(Rows, Vec<f32>); 2] = [
                (Rows::Bf16(&wb), wb.iter().map(|v| v.to_f32()).collect()),
                (Rows::F16(&wh), wh.iter().map(|v| v.to_f32()).collect()),
            ];
            for (rows, widened) in cases {
                let wt = Tensor::from_slice(&widened, (n, k), &Device::Cpu).unwrap();
                let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
                let reference: Vec<f32> = xt
                    .matmul(&wt.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for path in [Path::Scalar, Path::detect()] {
                    let ours = matmul(path, rows, n, k, &x);
                    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                        let (row, col) = (i / n, i % n);
                        let mag: f32 = (0..k)
                            .map(|j| (widened[col * k + j] * x[row * k + j]).abs())
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

    /// `axpy_f32` on every path equals the scalar y + a·x within one
    /// rounding of each element (FMA rounds once), lengths 1 to 131.
    #[test]
    fn axpy_paths_agree_with_scalar() {
        for n in [1, 7, 8, 9, 128, 131] {
            let x = crate::ops::test_values(n, 3);
            let y0 = crate::ops::test_values(n, 4);
            let mut want = y0.clone();
            axpy_f32(Path::Scalar, 0.37, &x, &mut want);
            for path in [Path::Scalar, Path::detect()] {
                let mut got = y0.clone();
                axpy_f32(path, 0.37, &x, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 2.0 * f32::EPSILON * w.abs().max(1.0),
                        "{path:?} {n}"
                    );
                }
            }
        }
    }
}
