//! The matrix products of a projection: dense (our threaded GEMV for decode
//! rows; for prompts our `fgemm` on f32, f16 and bf16 weights where the CPU
//! has AVX-512, else the `gemm` crate's f32 GEMM, bf16/f16 widened into a
//! reused scratch) and quantized (our `qdot`/`kquant`/`vecdot` kernels for
//! decode rows; for prompts, `qgemm` under `Precision::TwoTerm` or an f32
//! GEMM on the dequantized weight under `Precision::Exact`). Every
//! projection of the model goes through [`crate::model::linear::Linear`],
//! which calls these: this is the one place a faster kernel plugs in.

use candle_core::quantized::{ggml_file, QTensor};
use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;

/// Rows (tokens × batch) from which a quantized projection on the CPU is
/// computed as a float GEMM on the dequantized weight under
/// `Precision::Exact` (fewer rows run our integer kernels either way).
///
/// candle's CPU quantized matmul runs one quantized dot product per row and
/// weight row (re-reading the weights for every token) and first quantizes
/// the activations to 8 bits (Q8_0/Q8_1/Q8_K). For a prompt, dequantizing
/// the weight once and running an f32 GEMM is faster from about 16 rows on
/// (SmolLM2 Q4_1, 128-token prefill: 28 → 340 tok/s on 2 cores) and exact:
/// the prompt is processed with the weights' true values, as transformers
/// does with the dequantized model. Decoding (one row) keeps the quantized
/// kernels, whose cost is bounded by reading the quantized weights.
pub const DEQUANT_MIN_ROWS: usize = 16;
/// Largest weight block dequantized at once (f32 elements): big output
/// projections are dequantized in chunks of rows.
const DEQUANT_CHUNK: usize = 1 << 24;

/// A dense projection's forward pass: x (…, in) → (…, out), in x's dtype.
///
/// On the CPU, decode rows use `ops::gemv` through [`matmul_many`]
/// (threaded; f32, bf16 and f16 weights), prompt rows `dense_prompt` (a
/// GEMM as `p` says; a bf16/f16 weight is held as stored). Other devices
/// use candle's matmul.
pub fn dense_forward(
    l: &candle_nn::Linear,
    x: &Tensor,
    p: Precision,
) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    let w = l.weight();
    let y = if let Some(mut ys) = matmul_many(&[WeightRef::Dense(w)], x, p)? {
        ys.pop().expect("one output per weight")
    } else if let Some(y) = dense_prompt(w, x, p)? {
        y
    } else {
        return l.forward(x);
    };
    let y = match l.bias() {
        Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => y,
    };
    y.to_dtype(x.dtype())
}

/// How prompt rows (from `DEQUANT_MIN_ROWS` on) are computed on the CPU.
/// f32 and f16 weights are computed in f32 either way except on AMX, and so
/// is every row of a weight type no fast kernel covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The f32 product on the dequantized (or widened bf16) weight: exactly
    /// the model transformers computes in float32. `expert perplexity`,
    /// `Model::forward` and the router use this.
    Exact,
    /// Each activation carried as two terms, multiplied in a narrower type:
    /// - quantized weights, 32-element block types: two 8-bit terms (about
    ///   15 bits: a block's 8-bit rounding and the rounding of its
    ///   remainder) in integer SIMD (`qgemm`). Within ~1e-5 of `Exact`
    ///   (tested), where one 8-bit term (llama.cpp's prompts, and our
    ///   decode rows) moves SmolLM2's logits by ~0.1 and flips its first
    ///   answer token. 2–3× faster than `Exact`.
    /// - quantized weights, k-quants (Q4_K, Q5_K, Q6_K): one 8-bit term per
    ///   32 elements, finer than the Q8_K of their decode rows and of
    ///   llama.cpp: per-token log-probabilities within 2.3e-3 nats of
    ///   `Exact` on the trained fixture (decode: 3.4e-3; tested in
    ///   tests/quant_trained.rs), for 1.4–1.6× the two-term kernel's speed.
    /// - bf16 weights: two bf16 terms (about 16 bits) in `vdpbf16ps`
    ///   (`fgemm`, AVX-512 BF16) or AMX tiles; faster than `Exact`'s
    ///   widened f32.
    /// - f16 and f32 weights on AMX: the same two terms, each weight split
    ///   exactly into two (f16) or three (f32; the third against the hi
    ///   activation term only) bf16 terms; other CPUs run the exact f32
    ///   product.
    ///
    /// What generation's prefill uses.
    TwoTerm,
}

/// Prompt rows on a float weight on the CPU: our `fgemm` (f32, f16 and bf16
/// weights on AVX-512 and AMX), else an f32 GEMM (the `gemm` crate candle uses, on
/// rayon) on the weight as it is (f32), or widened in chunks of rows into a
/// scratch buffer kept between calls (bf16, f16; widened on our pool).
/// x (…, k) → (…, n) f32; None for other devices, dtypes or layouts.
fn dense_prompt(w: &Tensor, x: &Tensor, p: Precision) -> candle_core::Result<Option<Tensor>> {
    dense_prompt_in_chunks(w, x, p, DEQUANT_CHUNK, super::fgemm::Path::detect())
}

/// `dense_prompt` on `ours` (`fgemm`'s kernels), else with the `gemm`
/// crate in chunks of at most `chunk` elements (the tests' probes).
fn dense_prompt_in_chunks(
    w: &Tensor,
    x: &Tensor,
    p: Precision,
    chunk: usize,
    ours: super::fgemm::Path,
) -> candle_core::Result<Option<Tensor>> {
    use super::gemv::Rows;
    use candle_core::{CpuStorage, Storage};
    let (n, k) = w.dims2()?;
    if !x.device().is_cpu() || !w.device().is_cpu() {
        return Ok(None);
    }
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let xs: Vec<f32> = x32.flatten_all()?.to_vec1()?;
    let m = xs.len() / k.max(1);
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("x has a last dimension") = n;
    // Activations in two bf16 terms only when `p` allows; exactly, bf16
    // weights are widened below.
    let acts = match p {
        Precision::Exact => super::fgemm::Activations::Exact,
        Precision::TwoTerm => super::fgemm::Activations::TwoBf16,
    };
    let direct = |rows: Rows| super::fgemm::matmul(ours, rows, n, k, &xs, acts);
    if let Some(y) = dense_rows(w, direct) {
        return Ok(Some(Tensor::from_vec(y, shape, &Device::Cpu)?));
    }
    let (storage, layout) = w.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let mut y = vec![0f32; m * n];
    // Rows [start, start + len) of W (f32, len × k) into columns
    // start.. of y: y[:, start..start+len] = x · chunkᵀ.
    let gemm_into = |y: &mut [f32], chunk: &[f32], start: usize, len: usize| {
        let exact = super::fgemm::Activations::Exact;
        if let Some(part) = super::fgemm::matmul(ours, Rows::F32(chunk), len, k, &xs, exact) {
            for (dst, src) in y.chunks_mut(n).zip(part.chunks(len)) {
                dst[start..start + len].copy_from_slice(src);
            }
            return;
        }
        // SAFETY: the pointers cover m×k (x), len×k (chunk) and m×n (y)
        // with the strides given; y's columns start..start+len are inside.
        unsafe {
            gemm::gemm(
                m,
                len,
                k,
                y.as_mut_ptr().add(start),
                1,
                n as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                chunk.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(super::threads()),
            )
        }
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(d)) => gemm_into(&mut y, &d[a..b], 0, n),
        // `half`'s slice conversions (F16C where the CPU has it): its
        // per-value `to_f32` checks the CPU on every call, which left the
        // f16 rows' prompts 0.86× llama.cpp's on the AVX2 paths.
        Storage::Cpu(CpuStorage::BF16(d)) => {
            let f = |c: &[f32], s, l| gemm_into(&mut y, c, s, l);
            widened_chunks(&d[a..b], n, k, chunk, f, |s, o| s.convert_to_f32_slice(o))
        }
        Storage::Cpu(CpuStorage::F16(d)) => {
            let f = |c: &[f32], s, l| gemm_into(&mut y, c, s, l);
            widened_chunks(&d[a..b], n, k, chunk, f, |s, o| s.convert_to_f32_slice(o))
        }
        _ => return Ok(None),
    }
    Ok(Some(Tensor::from_vec(y, shape, &Device::Cpu)?))
}

/// `f` on a contiguous CPU f32, bf16 or f16 matrix's elements; None for other
/// tensors or when `f` returns None.
pub(crate) fn dense_rows<T>(
    w: &Tensor,
    f: impl FnOnce(super::gemv::Rows) -> Option<T>,
) -> Option<T> {
    let (storage, layout) = w.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    f(cpu_rows(&storage, a, b)?)
}

/// Elements a..b of a CPU f32, bf16 or f16 storage as weight rows.
fn cpu_rows(storage: &candle_core::Storage, a: usize, b: usize) -> Option<super::gemv::Rows<'_>> {
    use super::gemv::Rows;
    use candle_core::{CpuStorage, Storage};
    match storage {
        Storage::Cpu(CpuStorage::F32(d)) => Some(Rows::F32(&d[a..b])),
        Storage::Cpu(CpuStorage::BF16(d)) => Some(Rows::Bf16(&d[a..b])),
        Storage::Cpu(CpuStorage::F16(d)) => Some(Rows::F16(&d[a..b])),
        _ => None,
    }
}

/// Calls `f(chunk, start, len)` for chunks of at most `max` (whole rows,
/// at least one) elements of the (n, k) weight `w`, each widened to f32 (on our pool)
/// into one scratch buffer kept per thread between calls: no allocation
/// and no fresh pages per projection.
fn widened_chunks<T: Copy + Sync>(
    w: &[T],
    n: usize,
    k: usize,
    max: usize,
    mut f: impl FnMut(&[f32], usize, usize),
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let rows = (max / k.max(1)).clamp(1, n.max(1));
    SCRATCH.with_borrow_mut(|scratch| {
        for start in (0..n).step_by(rows.max(1)) {
            let len = rows.min(n - start);
            scratch.resize(len * k, 0.0);
            let src = &w[start * k..(start + len) * k];
            super::fill_chunks(&mut scratch[..len * k], k, |r, out| {
                widen(&src[r * k..(r + 1) * k], out)
            });
            f(&scratch[..len * k], start, len);
        }
    });
}

/// A quantized projection's forward pass: x (…, in) f32 → (…, out) f32.
pub fn qmatmul_forward(
    q: &candle_core::quantized::QMatMul,
    x: &Tensor,
    p: Precision,
) -> candle_core::Result<Tensor> {
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    let x = x.to_dtype(DType::F32)?;
    if let QMatMul::QTensor(w) = q {
        if let Some(mut ys) = matmul_many(&[WeightRef::Quantized(w)], &x, p)? {
            return Ok(ys.pop().expect("one output per weight"));
        }
        if x.device().is_cpu() && w.device().is_cpu() {
            return dequantized_matmul(w, &x);
        }
    }
    q.forward(&x)
}

/// A projection weight, for [`matmul_many`].
pub enum WeightRef<'a> {
    Dense(&'a Tensor),
    Quantized(&'a QTensor),
}

/// Several projections that read the same rows (q/k/v; gate/up) on our CPU
/// kernels: the activations are prepared (quantized) once, and all the
/// weights' rows run in one pool job. Decode rows (fewer than
/// `DEQUANT_MIN_ROWS`) on dense weights and every quantized type; with
/// `Precision::TwoTerm`, prompt rows too on the types `qgemm` takes (the
/// 32-element block types and the k-quants). x (…, k) → each (…, n_i) f32. None when the weights are not
/// all of one kind these kernels handle for these rows: the caller then
/// runs them one by one.
pub fn matmul_many(
    ws: &[WeightRef],
    x: &Tensor,
    p: Precision,
) -> candle_core::Result<Option<Vec<Tensor>>> {
    use super::gemv::Rows;
    let k = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    let qgemm_kind = |w: &WeightRef| match w {
        WeightRef::Quantized(q) => super::qgemm::Format::of(q.dtype()).is_some(),
        WeightRef::Dense(_) => false,
    };
    let int8_prompt = p == Precision::TwoTerm && ws.iter().all(qgemm_kind);
    if ws.is_empty() || !x.device().is_cpu() || (rows >= DEQUANT_MIN_ROWS && !int8_prompt) {
        return Ok(None);
    }
    let x32: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let shape = |n: usize| {
        let mut s = x.dims().to_vec();
        *s.last_mut().unwrap() = n;
        s
    };
    let outs = match ws[0] {
        WeightRef::Dense(first) => {
            let dtype = first.dtype();
            let mut guards = Vec::with_capacity(ws.len());
            for w in ws {
                let WeightRef::Dense(t) = w else {
                    return Ok(None);
                };
                let (n, kk) = t.dims2()?;
                if t.dtype() != dtype || kk != k || !t.device().is_cpu() {
                    return Ok(None);
                }
                let (storage, layout) = t.storage_and_layout();
                let Some((a, b)) = layout.contiguous_offsets() else {
                    return Ok(None);
                };
                guards.push((storage, a, b, n));
            }
            let mut rows_of = Vec::with_capacity(ws.len());
            for (storage, a, b, n) in &guards {
                let r = match cpu_rows(storage, *a, *b) {
                    Some(Rows::F32(_)) if x.dtype() != DType::F32 => return Ok(None),
                    Some(r) => r,
                    None => return Ok(None),
                };
                rows_of.push((r, *n));
            }
            super::gemv::matmul_many(
                super::gemv::Path::detect(),
                super::ReadOrder::current(),
                &rows_of,
                k,
                &x32,
            )
        }
        WeightRef::Quantized(first) => {
            let t = first.dtype();
            let mut parts = Vec::with_capacity(ws.len());
            for w in ws {
                let WeightRef::Quantized(q) = w else {
                    return Ok(None);
                };
                let (n, kk) = q.shape().dims2()?;
                if q.dtype() != t || kk != k || !q.device().is_cpu() {
                    return Ok(None);
                }
                parts.push((q.data()?, n));
            }
            let refs: Vec<(&[u8], usize)> = parts.iter().map(|(d, n)| (&d[..], *n)).collect();
            // Several rows: the tiled GEMM where it takes the type (from
            // `DEQUANT_MIN_ROWS` rows on only with `TwoTerm`, checked above);
            // decode rows: the row kernels (prefetching, no padding).
            let tiled = match super::qgemm::Format::of(t) {
                Some(fmt) if rows > 1 => {
                    super::qgemm::matmul_many(super::qdot::Path::detect(), fmt, &refs, k, &x32)
                }
                _ => None,
            };
            if let Some(ys) = tiled {
                ys
            } else if rows >= DEQUANT_MIN_ROWS {
                return Ok(None);
            } else if let Some(kind) = super::qdot::Kind::of(t) {
                let (path, order) = (super::qdot::Path::detect(), super::ReadOrder::current());
                super::qdot::matmul_many(path, order, kind, &refs, k, &x32)
            } else if let Some(kind) = super::kquant::Kind::of(t) {
                super::kquant::matmul_many(super::kquant::Path::detect(), kind, &refs, k, &x32)
            } else if let Some(ys) = super::vecdot::matmul_many(t, &refs, k, &x32) {
                ys
            } else {
                return Ok(None);
            }
        }
    };
    let tensors = outs
        .into_iter()
        .zip(ws)
        .map(|(y, w)| {
            let n = match w {
                WeightRef::Dense(t) => t.dim(0)?,
                WeightRef::Quantized(q) => q.shape().dims2()?.0,
            };
            Tensor::from_vec(y, shape(n), &Device::Cpu)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(tensors))
}

/// Output entries recomputed exactly by [`refine_top`].
pub const REFINE_TOP: usize = 64;

/// Recomputes the `REFINE_TOP` largest entries of `y` (one row of x·Wᵀ by
/// a quantized kernel, whose activations were rounded to 8 bits) exactly: the
/// weight rows dequantized, dotted with the f32 activations.
///
/// For a quantized tied lm_head this keeps the tokens that can win, and the
/// margins between them, those of the dequantized model (what transformers
/// computes), at the cost of 64 rows instead of 151,936: 8-bit activations
/// alone move SmolLM2's logits by up to ~0.1, enough to flip a close first
/// answer token (llama.cpp answers "L'Étoile…" where the float model says
/// "The capital of France is Paris.").
pub fn refine_top(w: &QTensor, x: &[f32], y: &mut [f32]) -> candle_core::Result<()> {
    let (n, k) = w.shape().dims2()?;
    if !w.device().is_cpu() || y.len() != n || x.len() != k {
        return Ok(());
    }
    let t = w.dtype();
    let row_bytes = k / t.block_size() * t.type_size();
    let data = w.data()?;
    // The `REFINE_TOP` largest in one pass: a min-heap of the best so far,
    // which almost every entry fails to enter with one comparison (with a
    // select over all 151,936 indices, this function took 0.48 ms a token).
    let top = REFINE_TOP.min(n);
    let mut best = std::collections::BinaryHeap::with_capacity(top + 1);
    for (i, &v) in y.iter().enumerate() {
        if best.len() < top {
            best.push(Smallest(v, i as u32));
        } else if best
            .peek()
            .is_some_and(|s: &Smallest| v.total_cmp(&s.0).is_gt())
        {
            best.pop();
            best.push(Smallest(v, i as u32));
        }
    }
    let idx: Vec<u32> = best.into_iter().map(|s| s.1).collect();
    for &r in &idx {
        let r = r as usize;
        let bytes = &data[r * row_bytes..(r + 1) * row_bytes];
        let row: Vec<f32> = ggml_file::qtensor_from_ggml(t, bytes, vec![k], &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .to_vec1()?;
        y[r] = row.iter().zip(x).map(|(w, x)| w * x).sum();
    }
    Ok(())
}

/// A logit and its index, ordered so that `BinaryHeap` keeps the smallest
/// logit on top.
struct Smallest(f32, u32);

impl PartialEq for Smallest {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Smallest {}
impl PartialOrd for Smallest {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Smallest {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.total_cmp(&self.0)
    }
}

/// Prompt rows on a quantized weight: an f32 GEMM (`fgemm` on AVX-512,
/// else candle's matmul) on the weight dequantized in chunks of rows.
fn dequantized_matmul(w: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    if n * k <= DEQUANT_CHUNK {
        let wf = w.dequantize(&Device::Cpu)?;
        return chunked_matmul(x, n, k, |_, _| Ok(wf.clone()));
    }
    let t = w.dtype();
    let row_bytes = k / t.block_size() * t.type_size();
    let data = w.data()?;
    chunked_matmul(x, n, k, |start, len| {
        let bytes = &data[start * row_bytes..(start + len) * row_bytes];
        ggml_file::qtensor_from_ggml(t, bytes, vec![len, k], &Device::Cpu)?.dequantize(&Device::Cpu)
    })
}

/// x (…, k) f32 · Wᵀ → (…, n), with W given as f32 chunks of at most
/// `DEQUANT_CHUNK` elements: `chunk(start, len)` is rows start..start+len.
fn chunked_matmul(
    x: &Tensor,
    n: usize,
    k: usize,
    chunk: impl Fn(usize, usize) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let mut out_shape = x.dims().to_vec();
    let rows = x.elem_count() / k;
    *out_shape.last_mut().unwrap() = n;
    let x2 = x.reshape((rows, k))?.contiguous()?;
    let chunk_rows = if n * k <= DEQUANT_CHUNK {
        n
    } else {
        (DEQUANT_CHUNK / k).max(1)
    };
    let ours = super::fgemm::Path::detect();
    let xs: Vec<f32> = match ours {
        super::fgemm::Path::None => Vec::new(),
        _ => x2.flatten_all()?.to_vec1()?,
    };
    let mut parts = Vec::with_capacity(n.div_ceil(chunk_rows));
    for start in (0..n).step_by(chunk_rows) {
        let len = chunk_rows.min(n - start);
        let w = chunk(start, len)?;
        let exact = super::fgemm::Activations::Exact;
        let y = match dense_rows(&w, |rows| {
            super::fgemm::matmul(ours, rows, len, k, &xs, exact)
        }) {
            Some(y) => Tensor::from_vec(y, (rows, len), &Device::Cpu)?,
            None => x2.matmul(&w.t()?)?,
        };
        parts.push(y);
    }
    let y = if parts.len() == 1 {
        parts.pop().unwrap()
    } else {
        Tensor::cat(&parts, 1)?
    };
    y.reshape(out_shape)
}

#[cfg(test)]
mod tests;
