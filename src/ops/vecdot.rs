//! Decode rows on the k-quant types (Q2_K … Q6_K, Q8_K): candle's per-row
//! SIMD `vec_dot` (AVX2 where the CPU has it, chosen by candle at run time),
//! run on our pool with the next row prefetched. The 32-element block types
//! have our own kernels (`qdot`).
//!
//! candle's own quantized matmul computes the same dot products (so the
//! results are the same up to candle's fused 4-row variants) but on its
//! barrier pool, which stalls whenever a worker is descheduled (see
//! `ops::pool`). The activations are quantized once per row here, as there.

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::GgmlDType;

/// y = x·Wᵀ for `x` (m, k) f32 and `w` the raw blocks of an (n, k) weight of
/// type `t`; None when `t` is not supported or the bytes do not fit.
/// (The tests' single-weight entry point.)
#[cfg(test)]
pub fn matmul(t: GgmlDType, w: &[u8], n: usize, k: usize, x: &[f32]) -> Option<Vec<f32>> {
    matmul_many(t, &[(w, n)], k, x)?.pop()
}

/// `matmul` for several weights of type `t` that read the same `x`: each
/// activation row is quantized once, and all weights' rows run in one pool
/// job. Returns each (m, n_i).
pub fn matmul_many(
    t: GgmlDType,
    ws: &[(&[u8], usize)],
    k: usize,
    x: &[f32],
) -> Option<Vec<Vec<f32>>> {
    use GgmlDType::*;
    match t {
        Q2K => typed::<k_quants::BlockQ2K>(ws, k, x),
        Q3K => typed::<k_quants::BlockQ3K>(ws, k, x),
        Q4K => typed::<k_quants::BlockQ4K>(ws, k, x),
        Q5K => typed::<k_quants::BlockQ5K>(ws, k, x),
        Q6K => typed::<k_quants::BlockQ6K>(ws, k, x),
        Q8K => typed::<k_quants::BlockQ8K>(ws, k, x),
        _ => None,
    }
}

/// The blocks of one weight, if the bytes are exactly (n, k) of them.
fn blocks<T: GgmlType>(w: &[u8], n: usize, k: usize) -> Option<&[T]> {
    let per_row = k / T::BLCK_SIZE;
    let fits = k.is_multiple_of(T::BLCK_SIZE)
        && w.len() == n * per_row * std::mem::size_of::<T>()
        && (w.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
    // SAFETY: length and alignment checked; the bytes are a QTensor's
    // storage of exactly these blocks (candle stores them as a Vec<T>).
    fits.then(|| unsafe { std::slice::from_raw_parts(w.as_ptr() as *const T, n * per_row) })
}

fn typed<T: GgmlType>(ws: &[(&[u8], usize)], k: usize, x: &[f32]) -> Option<Vec<Vec<f32>>> {
    if k == 0 || !x.len().is_multiple_of(k) {
        return None;
    }
    let bs: Vec<&[T]> = ws
        .iter()
        .map(|&(w, n)| blocks::<T>(w, n, k))
        .collect::<Option<_>>()?;
    let per_row = k / T::BLCK_SIZE;
    let ns: Vec<usize> = ws.iter().map(|&(_, n)| n).collect();
    Some(super::matmul_rows(
        &ns,
        k,
        x,
        |xi| {
            let mut xq = vec![T::VecDotType::zeros(); per_row];
            T::VecDotType::from_float(xi, &mut xq);
            xq
        },
        |xq, w, r| {
            let blocks = &bs[w];
            let next = ((r + 1) * per_row).min(blocks.len());
            prefetch_ahead(&blocks[next..(next + per_row).min(blocks.len())]);
            T::vec_dot(k, &blocks[r * per_row..(r + 1) * per_row], xq)
        },
    ))
}

/// Asks for the next row's weights (`next`) ahead of its dot product: a
/// core's hardware prefetcher alone streams weights from DRAM at a fraction
/// of the speed the dot products consume them (see `qdot`).
#[inline(always)]
fn prefetch_ahead<T>(next: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(next);
        let start = next.as_ptr() as *const i8;
        for at in (0..bytes).step_by(64) {
            // SAFETY: inside `next`; prefetching never faults anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(at)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// Same results as candle's quantized matmul (which runs the same dot
    /// products) within 1e-5 relative, on odd row counts and 1, 3 and 16
    /// activation rows; and within the 8-bit activation error of the
    /// dequantized f32 product.
    #[test]
    fn agrees_with_candle_and_the_dequantized_product() {
        use GgmlDType::*;
        for (t, n, k) in [
            (Q2K, 577, 512),
            (Q3K, 1024, 1024),
            (Q4K, 33, 3072),
            (Q6K, 3072, 256),
            (Q5K, 7, 512),
        ] {
            for m in [1, 3, 16] {
                let wf = Tensor::from_vec(crate::ops::test_values(n * k, 3), (n, k), &Device::Cpu)
                    .unwrap();
                let x = crate::ops::test_values(m * k, 4);
                let q = QTensor::quantize(&wf, t).unwrap();
                let ours = matmul(t, &q.data().unwrap(), n, k, &x).unwrap();
                let deq = q.dequantize(&Device::Cpu).unwrap();
                let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
                let exact: Vec<f32> = xt
                    .matmul(&deq.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let theirs: Vec<f32> = QMatMul::from_qtensor(q)
                    .unwrap()
                    .forward(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
                for i in 0..m * n {
                    assert!(
                        (ours[i] - theirs[i]).abs() <= 1e-5 * scale,
                        "{t:?} m={m} [{i}]: {} vs candle {}",
                        ours[i],
                        theirs[i]
                    );
                    assert!(
                        (ours[i] - exact[i]).abs() <= 2e-2 * scale,
                        "{t:?} m={m} [{i}]: {} vs f32 {}",
                        ours[i],
                        exact[i]
                    );
                }
            }
        }
    }
}
