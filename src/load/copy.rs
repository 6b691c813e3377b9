//! Copying a float tensor out of a file mapping, on every thread of the
//! pool at once: most of a copy's time is the kernel zeroing each fresh
//! page on first touch, which then runs on every core instead of one.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// A CPU tensor of `dtype` (F32, F16 or BF16) and `shape` from its stored
/// little-endian bytes.
pub fn float_tensor(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if bytes.len() != n * dtype.size_in_bytes() {
        bail!(
            "expected {} bytes for shape {shape:?} of {dtype:?}, found {}",
            n * dtype.size_in_bytes(),
            bytes.len()
        );
    }
    let cpu = &Device::Cpu;
    Ok(match dtype {
        DType::F32 => Tensor::from_vec(parallel_copy::<f32>(bytes), shape, cpu)?,
        DType::F16 => Tensor::from_vec(parallel_copy::<half::f16>(bytes), shape, cpu)?,
        DType::BF16 => Tensor::from_vec(parallel_copy::<half::bf16>(bytes), shape, cpu)?,
        other => bail!("expected a float dtype, found {other:?}"),
    })
}

/// `bytes` (a whole number of little-endian `T`s) as a `Vec<T>`, copied in
/// 1 MiB pieces spread over the pool.
fn parallel_copy<T: Copy>(bytes: &[u8]) -> Vec<T> {
    const PIECE: usize = 1 << 20;
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut v: Vec<T> = Vec::with_capacity(n);
    /// The destination, written by the pool's workers at disjoint pieces.
    struct Dst(*mut u8);
    // SAFETY: each piece index goes to exactly one thread, and pieces are
    // disjoint byte ranges of the allocation.
    unsafe impl Sync for Dst {}
    let dst = Dst(v.as_mut_ptr() as *mut u8);
    let len = n * std::mem::size_of::<T>();
    crate::ops::pool::for_ranges(len.div_ceil(PIECE), |pieces| {
        let dst = &dst;
        for p in pieces {
            let (at, end) = (p * PIECE, ((p + 1) * PIECE).min(len));
            // SAFETY: at..end lies inside both `bytes` and the allocation
            // of `len` bytes; the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr().add(at), dst.0.add(at), end - at)
            };
        }
    });
    // SAFETY: all n values were written above; T is plain data (f32, f16,
    // bf16), valid for any bits, and little-endian like the file (x86).
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's pieces put every byte back in place: sizes below one
    /// piece, exactly one, and several with a partial last piece, for
    /// 2- and 4-byte values.
    #[test]
    fn parallel_copy_keeps_every_value() {
        for len in [6, 1 << 20, (3 << 20) + 12] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let wide: Vec<f32> = parallel_copy(&bytes);
            assert_eq!(wide.len(), len / 4);
            for (i, v) in wide.iter().enumerate() {
                assert_eq!(
                    v.to_le_bytes(),
                    bytes[4 * i..4 * i + 4],
                    "f32 {i} of {len} bytes"
                );
            }
            let half: Vec<half::bf16> = parallel_copy(&bytes);
            assert_eq!(half.len(), len / 2);
            for (i, v) in half.iter().enumerate() {
                assert_eq!(
                    v.to_bits().to_le_bytes(),
                    bytes[2 * i..2 * i + 2],
                    "bf16 {i}"
                );
            }
        }
    }
}
