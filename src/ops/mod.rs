//! Per-token compute: the kernels the model calls for every token.
//!
//! - `matmul`: projections (dense and quantized weights)
//! - `gemv`: our threaded f32 × f32 kernel for decode rows (AVX2+FMA or scalar)
//! - `fgemm`: prompt rows on f32, f16 and bf16 weights (AVX-512; bf16 activations as two bf16 terms)
//! - `qdot`: our Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 × f32 kernels for decode (AVX-512 VNNI, AVX2 or
//!   scalar, chosen at run time; eight weight rows per tile, weights prefetched)
//! - `qgemm`: prompt rows on Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K: each weight tile (8 rows on
//!   AVX2, 32 on AVX-512) unpacked once and run against all the prompt's rows; activations as two
//!   8-bit terms (~15 bits) joined into one 16-bit integer, or one 8-bit term on the k-quants
//! - `kquant`: our Q4_K/Q6_K × f32 kernels for decode (AVX2 or scalar)
//! - `vecdot`: the other k-quants for decode (candle's SIMD dot products on our pool)
//! - `pool`: the one persistent thread pool all of these run on
//! - `huge_pages`: loaded weights moved onto 2 MiB pages (decode streams them every token)
//! - `activation`: SwiGLU's silu(gate)·up in one pass (AVX2 exponential)
//! - `attention`: causal grouped-query attention over the KV cache (prompt and decode rows)
//! - `Lines`: scratch buffers on whole cache lines (what 512-bit and AMX tile loads read)
//!
//! Own SIMD kernels go here, behind the same functions, each tested against
//! a scalar reference.

pub mod activation;
pub mod attention;
pub mod fgemm;
pub mod gemv;
pub mod huge_pages;
pub mod kquant;
pub mod matmul;
pub mod pool;
pub mod qdot;
pub mod qgemm;
pub mod vecdot;

/// One 64-byte cache line. Scratch buffers built of these start on a line,
/// so that no 512-bit or AMX tile-row load straddles two (a split load
/// costs two: aligning `qgemm`'s unpacked tiles took a 3072 × 1024 Q4_0
/// GEMM of 128 rows from 1655 to 1434 µs).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The plain number types a `Lines` buffer hands out.
///
/// # Safety
/// Every bit pattern is a valid value, and the alignment is at most 64.
pub unsafe trait Plain: Copy {}
// SAFETY: plain integers and floats, aligned to at most 4.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}

/// Scratch memory on whole cache lines, kept between calls.
#[derive(Default)]
pub struct Lines {
    buf: Vec<Line>,
    bytes: usize,
}

impl Lines {
    /// `len` values, zeroed.
    pub fn zeroed<T: Plain>(&mut self, len: usize) -> &mut [T] {
        self.buf.clear();
        self.resized(len)
    }

    /// `len` values, with whatever the buffer held before (zeros past it).
    pub fn resized<T: Plain>(&mut self, len: usize) -> &mut [T] {
        self.bytes = len * std::mem::size_of::<T>();
        self.buf.resize(self.bytes.div_ceil(64), Line([0; 64]));
        // SAFETY: the buffer holds at least `bytes` initialized bytes,
        // aligned to 64 (≥ T's alignment), and any bytes are a valid T
        // (`Plain`).
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut T, len) }
    }

    /// The values of the last `zeroed` or `resized`, to write.
    pub fn get_mut<T: Plain>(&mut self) -> &mut [T] {
        let len = self.bytes / std::mem::size_of::<T>();
        // SAFETY: as in `resized`.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut T, len) }
    }

    /// The values of the last `zeroed` or `resized`.
    pub fn get<T: Plain>(&self) -> &[T] {
        let len = self.bytes / std::mem::size_of::<T>();
        // SAFETY: as in `resized`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const T, len) }
    }
}

/// Sets the number of threads for all per-token work: candle's barrier pool
/// (which our kernels share) and its rayon pool. Both are created on first
/// use and keep their size, so this runs before any model work; the CLI
/// calls it first thing. `None` keeps candle's default, the number of
/// physical cores (or `RAYON_NUM_THREADS`).
pub fn set_threads(n: Option<usize>) {
    if let Some(n) = n.filter(|&n| n > 0) {
        // Single-threaded here: nothing has started a pool yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
}

/// The widest SIMD our kernels may use. `EXPERT_SIMD=avx2` keeps every
/// kernel to its AVX2 path (what an AVX2-only CPU such as AMD Zen 3 runs:
/// the way to test and measure that path on an AVX-512 machine), `scalar`
/// to the scalar references; unset or `native`, whatever the CPU has.
/// candle's own kernels (the `gemm` crate, the k-quants without a kernel
/// here) keep their own choice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum SimdCap {
    Scalar,
    Avx2,
    Native,
}

impl SimdCap {
    fn parse(v: &str) -> Option<Self> {
        match v {
            "native" | "" => Some(SimdCap::Native),
            "avx2" => Some(SimdCap::Avx2),
            "scalar" => Some(SimdCap::Scalar),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SimdCap::Native => "native",
            SimdCap::Avx2 => "avx2",
            SimdCap::Scalar => "scalar",
        }
    }
}

/// `EXPERT_SIMD`'s cap, read once (`check_simd_env` reports a bad value
/// first; one that slips past it means no cap).
pub fn simd_cap() -> SimdCap {
    static CAP: std::sync::OnceLock<SimdCap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let v = std::env::var("EXPERT_SIMD").unwrap_or_default();
        SimdCap::parse(&v).unwrap_or(SimdCap::Native)
    })
}

/// A one-line error for an `EXPERT_SIMD` value that is not a cap.
pub fn check_simd_env() -> Result<(), String> {
    match std::env::var("EXPERT_SIMD") {
        Ok(v) if SimdCap::parse(&v).is_none() => Err(format!(
            "EXPERT_SIMD: expected native, avx2 or scalar, got `{v}`"
        )),
        _ => Ok(()),
    }
}

/// The number of threads per-token work runs on.
pub fn threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(candle_core::utils::get_num_threads)
}

/// How the decode kernels read a weight's rows. Which is faster depends on
/// the pages the weight lies on (2-core Xeon VM, same-run A/B, decode):
/// on 2 MiB pages one prefetched stream per thread (bf16 19.8–20.1 →
/// 23.4–23.5 tok/s, q8_0 34.3–34.4 → 41.3–41.5, f32 11.6 → 12.5); on
/// 4 KiB pages, where every 4 KiB is a TLB miss, several rows at once (bf16
/// 16.0 → 17.3, q8_0 26.7 → 29.9).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadOrder {
    /// Each thread reads a few long runs of rows, one row after the other,
    /// prefetching ahead (`pool::for_streams`).
    Sequential,
    /// Each thread reads several rows side by side, in many shorter runs
    /// (`pool::for_ranges`).
    Interleaved,
}

impl ReadOrder {
    /// Sequential when the weights are (being moved) on huge pages, else
    /// interleaved: decided from the system's settings when the model is
    /// loaded, so that results never depend on how far the move has got.
    pub fn current() -> Self {
        if huge_pages::weights_on_huge_pages() {
            ReadOrder::Sequential
        } else {
            ReadOrder::Interleaved
        }
    }

    /// Calls `f` on disjoint ranges covering 0..n over the pool, in the
    /// runs this order reads in.
    pub fn for_ranges(self, n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
        match self {
            ReadOrder::Sequential => pool::for_streams(n, f),
            ReadOrder::Interleaved => pool::for_ranges(n, f),
        }
    }
}

/// For several outputs at once (the projections that read one input):
/// sets `outs[w][r] = f(w, r)` for every output `w` and row `r`, all rows of
/// all outputs in one pool job, written in place.
pub(crate) fn fill_split(outs: &mut [&mut [f32]], f: impl Fn(usize, usize) -> f32 + Sync) {
    /// An output, written by the pool's workers at disjoint rows.
    struct Out(*mut f32);
    // SAFETY: each (output, row) is handed to exactly one thread (for_ranges
    // splits 0..total into disjoint ranges), so no two writes alias.
    unsafe impl Sync for Out {}
    let mut starts = Vec::with_capacity(outs.len());
    let mut total = 0;
    for o in outs.iter() {
        starts.push(total);
        total += o.len();
    }
    let outs: Vec<Out> = outs.iter_mut().map(|o| Out(o.as_mut_ptr())).collect();
    // The per-row kernels (`kquant`, `vecdot`) read a row at a time either
    // way; the order sets the runs (q4_k_m decode on 2 MiB pages: 46.2–46.8
    // → 49.0–50.3 tok/s in long runs).
    ReadOrder::current().for_ranges(total, |items| {
        let mut w = 0;
        for i in items {
            // Past the outputs that end at or before i (empty ones too).
            while w + 1 < starts.len() && starts[w + 1] <= i {
                w += 1;
            }
            let r = i - starts[w];
            // SAFETY: r < outs[w]'s length (starts[w + 1] > i), and this
            // (output, row) is written by this thread only.
            unsafe { *outs[w].0.add(r) = f(w, r) };
        }
    });
}

/// The decode driver of the per-row kernels (`kquant`, `vecdot`): each
/// activation row of `x` (`k` wide) is prepared once (quantized), then row
/// `r` of output `w` is `dot(&prepared, w, r)`, every weight's rows in one
/// pool job. `ns` are the weights' row counts; returns each (m, n_i).
pub(crate) fn matmul_rows<P: Sync>(
    ns: &[usize],
    k: usize,
    x: &[f32],
    mut prepare: impl FnMut(&[f32]) -> P,
    dot: impl Fn(&P, usize, usize) -> f32 + Sync,
) -> Vec<Vec<f32>> {
    let m = x.len() / k.max(1);
    let mut ys: Vec<Vec<f32>> = ns.iter().map(|n| vec![0f32; m * n]).collect();
    for (i, xi) in x.chunks_exact(k.max(1)).enumerate() {
        let p = prepare(xi);
        let mut rows: Vec<&mut [f32]> = (ys.iter_mut().zip(ns))
            .map(|(y, &n)| &mut y[i * n..(i + 1) * n])
            .collect();
        fill_split(&mut rows, |w, r| dot(&p, w, r));
    }
    ys
}

/// A contiguous f32 CPU tensor's elements.
pub(crate) fn f32_slice(t: &candle_core::Tensor) -> candle_core::Result<&[f32]> {
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous tensor".into()))?;
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
            // SAFETY: the storage outlives the guard only as long as `t`
            // lives; the caller keeps `t` alive while using the slice, and
            // nothing writes to it meanwhile.
            Ok(unsafe { std::slice::from_raw_parts(data[a..b].as_ptr(), b - a) })
        }
        _ => candle_core::bail!("expected f32 CPU storage"),
    }
}

/// Calls `f(i, chunk_i)` for each `width`-long chunk of `out`, the chunks
/// spread over the pool.
pub(crate) fn fill_chunks(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    struct Out(*mut f32);
    // SAFETY: each chunk index is handed to exactly one thread, and chunks
    // are disjoint, so no two writes alias.
    unsafe impl Sync for Out {}
    let n = out.len() / width.max(1);
    let out = Out(out.as_mut_ptr());
    pool::for_ranges(n, |items| {
        let out = &out;
        for i in items {
            // SAFETY: i < n, so the chunk lies inside `out`; only this thread has it.
            let chunk = unsafe { std::slice::from_raw_parts_mut(out.0.add(i * width), width) };
            f(i, chunk);
        }
    });
}

/// Deterministic values in [-1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::Lines;

    /// Every row of every output (empty ones and long ones spread over
    /// several pool chunks included) gets its own value, in place.
    #[test]
    fn fill_split_writes_every_row_of_every_output() {
        let lens = [3usize, 0, 5000, 1, 0, 77];
        let mut bufs: Vec<Vec<f32>> = lens.iter().map(|&n| vec![-1.0; n]).collect();
        let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        super::fill_split(&mut outs, |w, r| (w * 10_000 + r) as f32);
        for (w, b) in bufs.iter().enumerate() {
            assert!(b
                .iter()
                .enumerate()
                .all(|(r, &v)| v == (w * 10_000 + r) as f32));
        }
    }

    /// Every buffer starts on a cache line; `resized` keeps what was
    /// there, `zeroed` clears it, `get` and `get_mut` give the last
    /// length.
    #[test]
    fn lines_start_on_a_cache_line_and_zero_only_when_asked() {
        let mut l = Lines::default();
        let a = l.resized::<u16>(100);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        a.fill(5);
        assert!(l.resized::<u16>(50).iter().all(|&v| v == 5));
        assert_eq!(l.get::<u16>().len(), 50);
        let c = l.zeroed::<u32>(70);
        assert_eq!(c.as_ptr() as usize % 64, 0);
        assert!(c.iter().all(|&v| v == 0));
        assert_eq!(l.get::<u32>().len(), 70);
        l.get_mut::<u32>()[3] = 9;
        assert_eq!(l.get::<u32>()[3], 9);
        assert_eq!(l.get::<u8>().len(), 280);
    }
}
