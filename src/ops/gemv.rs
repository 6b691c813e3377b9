//! Float weight (f32, bf16 or f16) × a few f32 activation rows (decode), threaded.
//!
//! candle's CPU matmul sends one row to `gemm`'s GEMV on one thread; for a
//! tied lm_head (SmolLM2: 49152 × 576 f32, 113 MB per token) that thread
//! reads everything alone while the others idle, and a bf16 weight is first
//! widened to f32 whole, on every call. Here output rows are spread over our
//! pool in groups of four, each thread reading its share of the weight as
//! one sequential stream with its cache lines prefetched 2 KB ahead; bf16
//! and f16 in AVX-512, f32 (and everything without AVX-512) in AVX2+FMA
//! (picked at run time; scalar otherwise); bf16 and f16 weights are widened
//! to f32 in registers, so a bf16 checkpoint is read at 2 bytes a weight and
//! computed exactly as its f32 widening would be. The summation order differs
//! from gemm's, so results differ in the last bits: the tests bound the
//! difference by 1e-6 × Σ|w·x| per output.

use super::ReadOrder;
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

    /// Where the elements lie in memory: (address, bytes).
    pub fn span(&self) -> (usize, usize) {
        match self {
            Rows::F32(w) => (w.as_ptr() as usize, std::mem::size_of_val(*w)),
            Rows::Bf16(w) => (w.as_ptr() as usize, std::mem::size_of_val(*w)),
            Rows::F16(w) => (w.as_ptr() as usize, std::mem::size_of_val(*w)),
        }
    }
}

/// Which dot product to use; picked once per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX2+FMA, with decode's bf16 and f16 groups of rows (`dots`) in
    /// AVX-512F/BW/VL: half the instructions per weight, which they need to
    /// keep up with memory.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let cap = super::simd_cap();
        #[cfg(target_arch = "x86_64")]
        if cap >= super::SimdCap::Avx2
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return if cap == super::SimdCap::Native
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                Path::Avx512
            } else {
                Path::Avx2Fma
            };
        }
        Path::Scalar
    }

    /// This path and the narrower ones this CPU also runs (for the tests).
    #[cfg(test)]
    fn and_narrower(self) -> Vec<Path> {
        match self {
            Path::Scalar => vec![Path::Scalar],
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma => vec![Path::Avx2Fma, Path::Scalar],
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => vec![Path::Avx512, Path::Avx2Fma, Path::Scalar],
        }
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
            (Path::Avx2Fma | Path::Avx512, Rows::F32(w)) => unsafe { avx2::dot_f32(&w[range], x) },
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2Fma | Path::Avx512, Rows::Bf16(w)) => unsafe {
                avx2::dot_bf16(&w[range], x)
            },
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2Fma | Path::Avx512, Rows::F16(w)) => unsafe { avx2::dot_f16(&w[range], x) },
        }
    }
}

/// Rows per work unit and per kernel call. The kernels read them one after
/// the other: four rows at once (four streams) kept more reads in flight
/// on 4 KiB pages, but with weights on 2 MiB pages one prefetched stream
/// is faster (bf16 decode 19.8–20.1 → 23.4–23.5 tok/s, f32 11.6 → 12.5,
/// AVX2 bf16 15.7 → 23.0; 2-core Xeon).
const ROWS_AT_ONCE: usize = 4;

impl Path {
    /// out[j] = row `r0 + j` of `w` · `x` for j < out.len() (≤ ROWS_AT_ONCE).
    fn dots(self, order: ReadOrder, w: Rows, r0: usize, k: usize, x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self != Path::Scalar && out.len() == ROWS_AT_ONCE {
            let range = r0 * k..(r0 + ROWS_AT_ONCE) * k;
            // SAFETY (all six): chosen only when the CPU has AVX2, FMA and
            // F16C (and AVX-512F/BW/VL for Avx512); the range holds ROWS_AT_ONCE
            // rows of k.
            let sums = unsafe {
                match (self, w) {
                    (Path::Avx512, Rows::F32(w)) if order == ReadOrder::Interleaved => {
                        avx512::dot4_f32(&w[range], k, x)
                    }
                    (Path::Avx512, Rows::Bf16(w)) => avx512::dot4_bf16(order, &w[range], k, x),
                    (Path::Avx512, Rows::F16(w)) => avx512::dot4_f16(order, &w[range], k, x),
                    (_, Rows::F32(w)) => avx2::dot4_f32(order, &w[range], k, x),
                    (_, Rows::Bf16(w)) => avx2::dot4_bf16(order, &w[range], k, x),
                    (_, Rows::F16(w)) => avx2::dot4_f16(order, &w[range], k, x),
                }
            };
            out.copy_from_slice(&sums);
            return;
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.dot(w, r0 + j, k, x);
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
        Path::Avx2Fma | Path::Avx512 => unsafe { avx2::axpy_f32(a, x, y) },
        Path::Scalar => y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x),
    }
}

/// The reference: each weight widened to f32, products summed in order.
fn dot_scalar<T: Copy>(w: &[T], x: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    w.iter().zip(x).map(|(&w, x)| widen(w) * x).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::ReadOrder;
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

    /// Σ w·x for 4 rows at once (row r at `load(r, i)`), 2 × 8 running
    /// sums each, sharing each load of x (`ReadOrder::Interleaved`).
    #[inline(always)]
    unsafe fn dot4_across(
        k: usize,
        load: impl Fn(usize, usize) -> __m256,
        x: &[f32],
        tail: impl Fn(usize, usize) -> f32,
    ) -> [f32; 4] {
        let px = x.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        // SAFETY: every load reads 8 elements below k.
        while i + 16 <= k {
            let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(load(r, i), x0, a[0]);
                a[1] = _mm256_fmadd_ps(load(r, i + 8), x1, a[1]);
            }
            i += 16;
        }
        if i + 8 <= k {
            let x0 = _mm256_loadu_ps(px.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(load(r, i), x0, a[0]);
            }
            i += 8;
        }
        std::array::from_fn(|r| {
            let s = _mm256_add_ps(acc[r][0], acc[r][1]);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
            let mut total = _mm_cvtss_f32(s);
            for (t, xt) in x.iter().enumerate().take(k).skip(i) {
                total += tail(r, t) * xt;
            }
            total
        })
    }

    /// Bytes ahead of the loads that `dot4_along` asks for the weight's
    /// cache lines (`prefetcht0`), as the AVX-512 kernel's.
    const PREFETCH_BYTES: usize = 2048;

    /// Σ w·x for 4 consecutive rows of 2-byte weights (row r at
    /// `load(r, i)`, 8 widened weights), one row after the other so that
    /// they are read as one sequential stream, 4 × 8 running sums per row.
    /// Also the f32 kernel on AVX-512 machines: its 512-bit version of this
    /// was 8 % slower on f32 (12.5 vs 11.6 tok/s).
    #[inline(always)]
    unsafe fn dot4_along<const BYTES: usize>(
        k: usize,
        p: *const u8,
        load: impl Fn(usize, usize) -> __m256,
        x: &[f32],
        tail: impl Fn(usize, usize) -> f32,
    ) -> [f32; 4] {
        let px = x.as_ptr();
        let mut sums = [0f32; 4];
        for (r, sum) in sums.iter_mut().enumerate() {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            // SAFETY: every load reads 8 elements below k.
            while i + 32 <= k {
                // 32 weights are BYTES / 2 cache lines. A hint only: an
                // address past the weight does not fault.
                for l in 0..BYTES / 2 {
                    let at = p.wrapping_add((r * k + i) * BYTES + l * 64 + PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * j;
                    *a = _mm256_fmadd_ps(load(r, o), _mm256_loadu_ps(px.add(o)), *a);
                }
                i += 32;
            }
            while i + 8 <= k {
                acc[0] = _mm256_fmadd_ps(load(r, i), _mm256_loadu_ps(px.add(i)), acc[0]);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
            *sum = _mm_cvtss_f32(s);
            for (t, xt) in x.iter().enumerate().take(k).skip(i) {
                *sum += tail(r, t) * xt;
            }
        }
        sums
    }

    /// 4 rows of `w` (4·k elements) · x, read in `order`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_f32(order: ReadOrder, w: &[f32], k: usize, x: &[f32]) -> [f32; 4] {
        let p = w.as_ptr();
        let load = |r: usize, i: usize| _mm256_loadu_ps(p.add(r * k + i));
        let tail = |r: usize, i: usize| w[r * k + i];
        match order {
            ReadOrder::Sequential => dot4_along::<4>(k, p as *const u8, load, x, tail),
            ReadOrder::Interleaved => dot4_across(k, load, x, tail),
        }
    }

    /// 4 rows of `w` (4·k elements) · x, read in `order`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_bf16(order: ReadOrder, w: &[bf16], k: usize, x: &[f32]) -> [f32; 4] {
        let p = w.as_ptr();
        let load = |r: usize, i: usize| {
            let h = _mm_loadu_si128(p.add(r * k + i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        };
        let tail = |r: usize, i: usize| w[r * k + i].to_f32();
        match order {
            ReadOrder::Sequential => dot4_along::<2>(k, p as *const u8, load, x, tail),
            ReadOrder::Interleaved => dot4_across(k, load, x, tail),
        }
    }

    /// 4 rows of `w` (4·k elements) · x, read in `order`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_f16(order: ReadOrder, w: &[f16], k: usize, x: &[f32]) -> [f32; 4] {
        let p = w.as_ptr();
        let load = |r: usize, i: usize| {
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(r * k + i) as *const __m128i))
        };
        let tail = |r: usize, i: usize| w[r * k + i].to_f32();
        match order {
            ReadOrder::Sequential => dot4_along::<2>(k, p as *const u8, load, x, tail),
            ReadOrder::Interleaved => dot4_across(k, load, x, tail),
        }
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::ReadOrder;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Bytes ahead of the loads that the weight's cache lines are asked
    /// for (`prefetcht0`): rows read one after the other with 2 KB ahead
    /// streamed a bf16 weight at 33–34 GB/s where four rows at once (four
    /// streams, 768 bytes ahead) reached 27–29 (2-core Xeon, 2 MiB pages,
    /// a 32 GB/s machine; 512 B: 33, 4 KB: slower, as was `prefetcht1`).
    const PREFETCH_BYTES: usize = 2048;

    /// Σ w·x for 4 consecutive rows (row r at `load(r, i)`, 16 widened
    /// weights of `BYTES` bytes each, at `p + (r·k + i)·BYTES`), one row
    /// after the other so that they are read as one sequential stream; four
    /// 16-lane running sums per row; the last k mod 16 elements masked.
    #[inline(always)]
    unsafe fn dot4_along<const BYTES: usize>(
        k: usize,
        p: *const u8,
        load: impl Fn(usize, usize, __mmask16) -> __m512,
        x: &[f32],
    ) -> [f32; 4] {
        let px = x.as_ptr();
        let full = k / 16 * 16;
        let mut sums = [0f32; 4];
        // A plain loop, not `array::from_fn`: a closure would not inherit
        // the target features, and every intrinsic would become a call.
        for (r, sum) in sums.iter_mut().enumerate() {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= full {
                // 64 elements are BYTES cache lines. A hint only: an address
                // past the weight does not fault.
                for l in 0..BYTES {
                    let at = p.wrapping_add((r * k + i) * BYTES + l * 64 + PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let o = i + 16 * j;
                    *a = _mm512_fmadd_ps(load(r, o, 0xffff), _mm512_loadu_ps(px.add(o)), *a);
                }
                i += 64;
            }
            while i < full {
                acc[0] = _mm512_fmadd_ps(load(r, i, 0xffff), _mm512_loadu_ps(px.add(i)), acc[0]);
                i += 16;
            }
            if full < k {
                // Masked-off lanes load as 0 and add nothing.
                let mask = (1u32 << (k - full)) as u16 - 1;
                let xv = _mm512_maskz_loadu_ps(mask, px.add(full));
                acc[1] = _mm512_fmadd_ps(load(r, full, mask), xv, acc[1]);
            }
            let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            *sum = _mm512_reduce_add_ps(s);
        }
        sums
    }

    /// Bytes ahead of the loads that each row's next cache line is asked
    /// for in `dot4_across` (`prefetcht0`; 4 KiB pages): a bf16 weight
    /// streamed at 19 GB/s without, 23 with 512 bytes ahead, 25 with
    /// 768–1024, 22 with 1536 (2-core Xeon).
    const ACROSS_PREFETCH_BYTES: usize = 768;

    /// Σ w·x for 4 rows at once (row r at `load(r, i)`, 16 widened
    /// weights of `BYTES` bytes each, at `p + (r·k + i)·BYTES`), one 16-lane
    /// running sum each, sharing each load of x; the last k mod 16 elements
    /// masked (`ReadOrder::Interleaved`).
    #[inline(always)]
    unsafe fn dot4_across<const BYTES: usize>(
        k: usize,
        p: *const u8,
        load: impl Fn(usize, usize, __mmask16) -> __m512,
        x: &[f32],
    ) -> [f32; 4] {
        let px = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut step = |i: usize, mask: __mmask16| {
            let xv = _mm512_maskz_loadu_ps(mask, px.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(load(r, i, mask), xv, *a);
            }
        };
        // Elements per 64-byte cache line: one prefetch per row per line.
        let line = 64 / BYTES;
        let full = k / 16 * 16;
        let mut i = 0;
        while i + line <= full {
            for r in 0..4 {
                // A hint only: an address past the weight does not fault.
                let at = p.wrapping_add((r * k + i) * BYTES + ACROSS_PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
            }
            for s in (0..line).step_by(16) {
                step(i + s, 0xffff);
            }
            i += line;
        }
        while i < full {
            step(i, 0xffff);
            i += 16;
        }
        if full < k {
            // Masked-off lanes load as 0 and add nothing.
            step(full, (1u32 << (k - full)) as u16 - 1);
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// 4 rows of `w` (4·k elements) · x, several rows at once (on huge
    /// pages f32 reads faster through `avx2::dot4_f32`'s sequential order).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4_f32(w: &[f32], k: usize, x: &[f32]) -> [f32; 4] {
        let p = w.as_ptr();
        let load = |r: usize, i: usize, m: __mmask16| _mm512_maskz_loadu_ps(m, p.add(r * k + i));
        dot4_across::<4>(k, p as *const u8, load, x)
    }

    /// 4 rows of `w` (4·k elements) · x, read in `order`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot4_bf16(order: ReadOrder, w: &[bf16], k: usize, x: &[f32]) -> [f32; 4] {
        let p = w.as_ptr() as *const i16;
        let load = |r: usize, i: usize, m: __mmask16| {
            let h = _mm256_maskz_loadu_epi16(m, p.add(r * k + i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        };
        match order {
            ReadOrder::Sequential => dot4_along::<2>(k, p as *const u8, load, x),
            ReadOrder::Interleaved => dot4_across::<2>(k, p as *const u8, load, x),
        }
    }

    /// 4 rows of `w` (4·k elements) · x, read in `order`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot4_f16(order: ReadOrder, w: &[f16], k: usize, x: &[f32]) -> [f32; 4] {
        let p = w.as_ptr() as *const i16;
        let load = |r: usize, i: usize, m: __mmask16| {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(r * k + i)))
        };
        match order {
            ReadOrder::Sequential => dot4_along::<2>(k, p as *const u8, load, x),
            ReadOrder::Interleaved => dot4_across::<2>(k, p as *const u8, load, x),
        }
    }
}

/// y = x·Wᵀ for `x` (m, k) f32 and `w` (n, k); returns (m, n).
/// (The tests' single-weight entry point.)
#[cfg(test)]
pub fn matmul(path: Path, order: ReadOrder, w: Rows, n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    matmul_many(path, order, &[(w, n)], k, x)
        .pop()
        .unwrap_or_default()
}

/// `matmul` for several weights (n_i, k) that read the same `x`, their rows
/// in one pool job per activation row, read in `order`; returns each (m, n_i).
pub fn matmul_many(
    path: Path,
    order: ReadOrder,
    ws: &[(Rows, usize)],
    k: usize,
    x: &[f32],
) -> Vec<Vec<f32>> {
    assert!(k > 0 && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * k));
    let m = x.len() / k;
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    // Work units: groups of ROWS_AT_ONCE rows of one weight (the last of
    // each weight shorter), all weights' groups in one pool job.
    let starts: Vec<usize> = ws
        .iter()
        .scan(0, |acc, (_, n)| {
            let s = *acc;
            *acc += n.div_ceil(ROWS_AT_ONCE);
            Some(s)
        })
        .collect();
    let units: usize = ws.iter().map(|(_, n)| n.div_ceil(ROWS_AT_ONCE)).sum();
    /// The outputs' bases, written by the pool's workers at disjoint rows.
    struct Outs(Vec<*mut f32>);
    // SAFETY: each unit (a group of rows of one output) is handed to exactly
    // one thread, so no two writes alias.
    unsafe impl Sync for Outs {}
    let outs = Outs(ys.iter_mut().map(|y| y.as_mut_ptr()).collect());
    for (i, xi) in x.chunks_exact(k).enumerate() {
        let go = |range: std::ops::Range<usize>| {
            let outs = &outs;
            for u in range {
                let w = starts.partition_point(|&s| s <= u) - 1;
                let (rows, n) = ws[w];
                let r0 = (u - starts[w]) * ROWS_AT_ONCE;
                let len = ROWS_AT_ONCE.min(n - r0);
                // SAFETY: rows r0..r0+len of output row i lie inside ys[w]
                // (m·n long), and this unit is this worker's alone.
                let out = unsafe { std::slice::from_raw_parts_mut(outs.0[w].add(i * n + r0), len) };
                path.dots(order, rows, r0, k, xi, out);
            }
        };
        order.for_ranges(units, go);
    }
    ys
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Every path this CPU runs, with both read orders.
    fn paths_and_orders() -> Vec<(Path, ReadOrder)> {
        let orders = [ReadOrder::Sequential, ReadOrder::Interleaved];
        let paths = Path::detect().and_narrower();
        paths
            .into_iter()
            .flat_map(|p| orders.map(|o| (p, o)))
            .collect()
    }

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
            (13, 100, 2),
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
            for (path, order) in paths_and_orders() {
                let ours = matmul(path, order, Rows::F32(&w), n, k, &x);
                for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                    let (row, col) = (i / n, i % n);
                    let mag: f32 = (0..k)
                        .map(|j| (w[col * k + j] * x[row * k + j]).abs())
                        .sum();
                    assert!(
                        (a - b).abs() <= 1e-6 * mag,
                        "{path:?} {order:?} ({n},{k})×{m} [{i}]: {a} vs {b}"
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
        for (n, k, m) in [
            (576, 576, 1),
            (1024, 3072, 3),
            (151936, 16, 1),
            (9, 37, 16),
            (13, 100, 2),
        ] {
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
                for (path, order) in paths_and_orders() {
                    let ours = matmul(path, order, rows, n, k, &x);
                    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                        let (row, col) = (i / n, i % n);
                        let mag: f32 = (0..k)
                            .map(|j| (widened[col * k + j] * x[row * k + j]).abs())
                            .sum();
                        assert!(
                            (a - b).abs() <= 1e-6 * mag,
                            "{path:?} {order:?} ({n},{k})×{m} [{i}]: {a} vs {b}"
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
            for path in Path::detect().and_narrower() {
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
