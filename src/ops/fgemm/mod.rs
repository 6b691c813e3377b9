//! Prompt rows on float weights: our own GEMM for f32, f16 and bf16 weights
//! on AVX-512 (and AMX), y = x·Wᵀ with x (m, k) f32 and W (n, k) as held.
//!
//! Dot-product form: W's rows and x's rows are both contiguous along k, so a
//! tile of `RM` prompt rows × `RN` weight rows keeps `RM·RN` vector
//! accumulators and, per step along k, holds its `RM` activation vectors in
//! registers and loads the `RN` weight vectors one at a time, for `RM·RN`
//! multiply-adds; each accumulator's lanes are summed once at the end.
//! Each thread takes a range of weight tiles and runs them against the
//! prompt's rows in chunks small enough to stay in L2, so W is read from
//! memory once per chunk of rows and never copied or widened.
//!
//! - f32 and f16 weights (AVX-512F, BW, VL; f16 widened exactly by
//!   `vcvtph2ps` as loaded): `vfmadd231ps`, 16 products per instruction,
//!   4 × 4 tiles (4 × 6, 5 × 5 and 3 × 8 measured slower). Tiles on AVX2 (3 × 3 of 8 lanes, for 16 registers) measured
//!   level with the `gemm` crate and were not kept.
//! - bf16 weights (AVX-512 BF16): `vdpbf16ps` multiplies pairs of bf16 and
//!   adds them in f32. Each activation is carried as two bf16 terms,
//!   x = hi + lo with hi = bf16(x) and lo = bf16(x − hi), about 16
//!   significant bits: every product w·hi and w·lo is exact in f32, so the
//!   result is the f32 product on the widened weight up to x's rounding
//!   (≤ 2⁻¹⁷ relative) and the summation order. llama.cpp rounds the
//!   activations to one bf16 (8 bits), twice as fast and ~2⁻⁹ off. 3 × 7
//!   tiles (21 accumulators, 6 activation vectors): ~10 % above 4 × 4 with
//!   the weights held instead (3 × 8, 4 × 5 and 2 × 10 measured level or
//!   slower).
//!
//! - AMX (`amx`, Sapphire Rapids and later): in generation
//!   (`Activations::TwoBf16`), bf16 weights and f16/f32 weights split
//!   exactly into two/three bf16 terms run on `tdpbf16ps` tiles with the
//!   same two activation terms, where the shape fills whole tiles.
//!
//! Other CPUs, and bf16 weights without AVX-512 BF16, return None: the
//! caller keeps the `gemm` crate's f32 GEMM (`ops::matmul`).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::gemv::Rows;
use super::pool;
use super::Lines;

/// Prompt rows × weight rows per f32 tile (of 32 vector registers: 16
/// accumulators, 4 activation vectors, a weight vector).
const RM: usize = 4;
const RN: usize = 4;
/// Prompt rows × weight rows per bf16 tile (21 accumulators, 3 × 2
/// activation vectors, a weight vector).
const RM16: usize = 3;
const RN16: usize = 7;
/// Bytes of activations one chunk of prompt rows may take (kept in L2).
const CHUNK_BYTES: usize = 256 << 10;

/// Which kernels this CPU runs; picked once per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    /// No kernel here: the caller's f32 GEMM.
    None,
    /// AVX-512F, BW and VL: f32 and f16 weights.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512F, BW, VL and BF16: f32, f16 and bf16 weights.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// As `Avx512Bf16`, with bf16 weights (and, under
    /// `Activations::TwoBf16`, f16 and f32 ones) on AMX tiles (`amx`) where
    /// the shape fits them.
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Path {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::simd_cap() == super::SimdCap::Native
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            return if is_x86_feature_detected!("avx512bf16") {
                if amx::available() {
                    Path::Amx
                } else {
                    Path::Avx512Bf16
                }
            } else {
                Path::Avx512
            };
        }
        Path::None
    }

    /// This path and the narrower ones this CPU also runs (for the tests).
    #[cfg(test)]
    fn and_narrower(self) -> Vec<Path> {
        match self {
            Path::None => vec![],
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => vec![Path::Avx512],
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16 => vec![Path::Avx512Bf16, Path::Avx512],
            #[cfg(target_arch = "x86_64")]
            Path::Amx => vec![Path::Amx, Path::Avx512Bf16, Path::Avx512],
        }
    }
}

/// The activations of a bf16 product, as two bf16 terms per element
/// (and, for AMX, the same packed into its tiles).
#[derive(Default)]
struct SplitBf16 {
    pub hi: Vec<u16>,
    pub lo: Vec<u16>,
    /// On whole cache lines: each 64-byte tile row is then one line.
    pub packed_hi: Lines,
    pub packed_lo: Lines,
}

thread_local! {
    /// Kept per thread between calls: fresh pages for every projection
    /// cost more than the split itself.
    static SPLIT: std::cell::RefCell<SplitBf16> = std::cell::RefCell::new(SplitBf16::default());
}

/// The output's base, shared by the threads that write disjoint columns.
struct Out(*mut f32);
// SAFETY: each range of weight rows (output columns) is handed to exactly
// one thread, so no two threads write the same element.
unsafe impl Sync for Out {}

/// How a product may carry its f32 activations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Activations {
    /// As they are: f32 and f16 weights only (bf16 ones return None; the
    /// caller widens them to f32).
    Exact,
    /// As two bf16 terms (about 16 bits) where that is faster: bf16 weights
    /// on AVX-512 BF16 and AMX, f16 and f32 weights on AMX (split into two
    /// and three bf16 terms, exactly).
    TwoBf16,
}

/// x·Wᵀ for `x` (m, k) row-major f32 and `w` (n, k): (m, n) row-major, or
/// None when `path` has no kernel for `w`'s type under `acts`.
pub fn matmul(
    path: Path,
    w: Rows,
    n: usize,
    k: usize,
    x: &[f32],
    acts: Activations,
) -> Option<Vec<f32>> {
    let m = x.len() / k.max(1);
    if k == 0 || n == 0 || m == 0 {
        return None;
    }
    if acts == Activations::Exact && matches!(w, Rows::Bf16(_)) {
        return None;
    }
    let mut y = vec![0f32; m * n];
    match (path, w) {
        #[cfg(target_arch = "x86_64")]
        (Path::Amx, _)
            if amx::fits(n, k)
                && acts == Activations::TwoBf16
                && (matches!(w, Rows::Bf16(_)) || m >= amx::MIN_ROWS_TO_SPLIT) =>
        {
            let w = match w {
                Rows::F32(w) => amx::Weights::F32(w),
                Rows::F16(w) => amx::Weights::F16(half_bits(w)),
                Rows::Bf16(w) => amx::Weights::Bf16(half_bits(w)),
            };
            SPLIT.with_borrow_mut(|s| {
                // SAFETY: AVX-512 BF16 is present (the path).
                unsafe { x86::split_bf16(x, s) };
                amx::pack(&s.hi, m, k, &mut s.packed_hi);
                amx::pack(&s.lo, m, k, &mut s.packed_lo);
                let out = Out(y.as_mut_ptr());
                let (hi, lo) = (s.packed_hi.get::<u32>(), s.packed_lo.get::<u32>());
                pool::for_ranges(n.div_ceil(2 * amx::BLOCK), |blocks| {
                    let out = &out;
                    // SAFETY: AMX and AVX-512 BF16 are available (the
                    // path) and the shape fits; hi and lo are packed from
                    // (m, k); each range of weight blocks (output columns)
                    // is this thread's alone.
                    unsafe { amx::run_blocks(hi, lo, w, n, k, m, blocks, out.0) }
                })
            })
        }
        #[cfg(target_arch = "x86_64")]
        (Path::Avx512 | Path::Avx512Bf16 | Path::Amx, Rows::F32(w)) => {
            tiles::<RM, RN>(&mut y, m, n, k, 4, |r0, c0, out| {
                // SAFETY: AVX-512F, BW and VL are present (the path); the row indices
                // are < m and < n, so every row lies inside x and w.
                unsafe { x86::tile_f32(x, w, k, r0, c0, m, n, out) }
            })
        }
        #[cfg(target_arch = "x86_64")]
        (Path::Avx512 | Path::Avx512Bf16 | Path::Amx, Rows::F16(w)) => {
            let w = half_bits(w);
            tiles::<RM, RN>(&mut y, m, n, k, 4, |r0, c0, out| {
                // SAFETY: AVX-512F, BW and VL are present (the path); rows
                // as above.
                unsafe { x86::tile_f16(x, w, k, r0, c0, m, n, out) }
            })
        }
        #[cfg(target_arch = "x86_64")]
        (Path::Avx512Bf16 | Path::Amx, Rows::Bf16(w)) => {
            let w = half_bits(w);
            SPLIT.with_borrow_mut(|s| {
                // SAFETY: AVX-512 BF16 is present (the path).
                unsafe { x86::split_bf16(x, s) };
                let s = &*s;
                tiles::<RM16, RN16>(&mut y, m, n, k, 4, |r0, c0, out| {
                    // SAFETY: as above, with AVX-512 BF16.
                    unsafe { x86::tile_bf16(s, w, k, r0, c0, m, n, out) }
                })
            })
        }
        _ => return None,
    }
    Some(y)
}

/// The bits of a bf16 or f16 slice.
fn half_bits<T: HalfBits>(w: &[T]) -> &[u16] {
    // SAFETY: both types are transparent u16s (`HalfBits`).
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u16, w.len()) }
}

/// The 16-bit float types, `#[repr(transparent)]` over u16.
trait HalfBits {}
impl HalfBits for half::bf16 {}
impl HalfBits for half::f16 {}

/// Runs `tile(r0, c0, out)` (out[i][j] = row r0+i of x · row c0+j of W,
/// rows past the end clamped to the last one) over the whole (m, n) output:
/// ranges of weight tiles on the pool, each against the prompt's rows in
/// chunks of about `CHUNK_BYTES` of activations (`bytes` per element of the
/// activations as the tile reads them: 4 for f32, 2 + 2 for two bf16 terms).
fn tiles<const TM: usize, const TN: usize>(
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    bytes: usize,
    tile: impl Fn(usize, usize, &mut [[f32; TN]; TM]) + Sync,
) {
    let out = Out(y.as_mut_ptr());
    let chunk = (CHUNK_BYTES / (k * bytes)).max(1).div_ceil(TM) * TM;
    pool::for_ranges(n.div_ceil(TN), |cols| {
        let out = &out;
        for r_start in (0..m).step_by(chunk) {
            for c in cols.clone() {
                let c0 = c * TN;
                for r0 in (r_start..(r_start + chunk).min(m)).step_by(TM) {
                    let mut acc = [[0f32; TN]; TM];
                    tile(r0, c0, &mut acc);
                    for (i, row) in acc.iter().enumerate().take(m - r0) {
                        for (j, &v) in row.iter().enumerate().take(n - c0) {
                            // SAFETY: r0+i < m and c0+j < n; the column is
                            // this thread's alone.
                            unsafe { *out.0.add((r0 + i) * n + c0 + j) = v };
                        }
                    }
                }
            }
        }
    });
}
