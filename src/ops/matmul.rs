//! The matrix products of a projection: dense (our threaded GEMV for decode
//! rows on f32, candle's GEMM otherwise) and quantized (our `qdot` kernels or
//! candle's for decode rows, a float GEMM on the dequantized weight for
//! prompts). Every projection of the model goes
//! through [`crate::model::linear::Linear`], which calls these: this is the
//! one place a faster kernel plugs in.

use candle_core::quantized::{ggml_file, QTensor};
use candle_core::{DType, Device, Tensor};

/// Rows (tokens × batch) from which a quantized projection on the CPU is
/// computed as a float GEMM on the dequantized weight.
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
/// Decode rows on an f32 CPU weight use `ops::gemv` (threaded); the rest
/// candle's matmul.
pub fn dense_forward(l: &candle_nn::Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    use candle_core::{CpuStorage, Module, Storage};
    let w = l.weight();
    let (n, k) = w.dims2()?;
    let rows = x.elem_count() / k.max(1);
    let f32_cpu = x.device().is_cpu() && w.dtype() == DType::F32 && x.dtype() == DType::F32;
    if f32_cpu && rows < DEQUANT_MIN_ROWS && l.bias().is_none() {
        let (storage, layout) = w.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            let path = super::gemv::Path::detect();
            return on_rows(x, n, |xs| super::gemv::matmul(path, &data[a..b], n, k, xs));
        }
    }
    l.forward(x)
}

/// A quantized projection's forward pass: x (…, in) f32 → (…, out) f32.
pub fn qmatmul_forward(
    q: &candle_core::quantized::QMatMul,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    let x = x.to_dtype(DType::F32)?;
    if let QMatMul::QTensor(w) = q {
        let k = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / k.max(1);
        if x.device().is_cpu() && w.device().is_cpu() {
            if rows >= DEQUANT_MIN_ROWS {
                return dequantized_matmul(w, &x);
            }
            if let Some(kind) = super::qdot::Kind::of(w.dtype()) {
                return qdot_matmul(kind, w, &x);
            }
        }
    }
    q.forward(&x)
}

/// Decode rows on Q4_1/Q5_0/Q5_1 weights: `ops::qdot` (bit-identical to
/// candle's scalar kernels, SIMD where the CPU has it).
fn qdot_matmul(kind: super::qdot::Kind, w: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let (path, data) = (super::qdot::Path::detect(), w.data()?);
    on_rows(x, n, |xs| super::qdot::matmul(path, kind, &data, n, k, xs))
}

/// Runs one of our kernels on x's rows: x (…, k) f32 on the CPU → (…, n).
fn on_rows(
    x: &Tensor,
    n: usize,
    kernel: impl FnOnce(&[f32]) -> Vec<f32>,
) -> candle_core::Result<Tensor> {
    let mut out_shape = x.dims().to_vec();
    if let Some(last) = out_shape.last_mut() {
        *last = n;
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    Tensor::from_vec(kernel(&xs), out_shape, &Device::Cpu)
}

fn dequantized_matmul(w: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let mut out_shape = x.dims().to_vec();
    let rows = x.elem_count() / k;
    *out_shape.last_mut().unwrap() = n;
    let x2 = x.reshape((rows, k))?.contiguous()?;
    let y = if n * k <= DEQUANT_CHUNK {
        x2.matmul(&w.dequantize(&Device::Cpu)?.t()?)?
    } else {
        let t = w.dtype();
        let row_bytes = k / t.block_size() * t.type_size();
        let data = w.data()?;
        let chunk_rows = (DEQUANT_CHUNK / k).max(1);
        let mut parts = Vec::with_capacity(n.div_ceil(chunk_rows));
        for start in (0..n).step_by(chunk_rows) {
            let len = chunk_rows.min(n - start);
            let bytes = &data[start * row_bytes..(start + len) * row_bytes];
            let part = ggml_file::qtensor_from_ggml(t, bytes, vec![len, k], &Device::Cpu)?;
            parts.push(x2.matmul(&part.dequantize(&Device::Cpu)?.t()?)?);
        }
        Tensor::cat(&parts, 1)?
    };
    y.reshape(out_shape)
}
