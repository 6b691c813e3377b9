//! `ops::qdot` against the scalar reference, candle and the dequantized
//! product, on every path this CPU has.

use super::*;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

const KINDS: [GgmlDType; 5] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
];

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// x·Wᵀ by candle's own per-row `vec_dot` (SIMD where candle has it),
/// W quantized by candle's `from_float`.
fn candle_vec_dot(t: GgmlDType, w: &Tensor, x: &[f32]) -> Vec<f32> {
    use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ8_0, GgmlType};
    fn typed<T: GgmlType>(w: &Tensor, x: &[f32]) -> Vec<f32> {
        let (n, k) = w.dims2().unwrap();
        let wv = values(w);
        let mut wq = vec![T::zeros(); n * k / T::BLCK_SIZE];
        T::from_float(&wv, &mut wq);
        let mut xq = vec![T::VecDotType::zeros(); k / T::BLCK_SIZE];
        let mut y = Vec::new();
        for xi in x.chunks_exact(k) {
            T::VecDotType::from_float(xi, &mut xq);
            for row in wq.chunks_exact(k / T::BLCK_SIZE) {
                y.push(T::vec_dot(k, row, &xq));
            }
        }
        y
    }
    match t {
        GgmlDType::Q4_0 => typed::<BlockQ4_0>(w, x),
        _ => typed::<BlockQ8_0>(w, x),
    }
}

/// The scalar path equals candle's scalar kernels bit for bit (Q4_1,
/// Q5_0, Q5_1: candle has no other) and candle's SIMD ones within float
/// order (Q4_0, Q8_0); every SIMD path equals the scalar one within
/// 1e-5·Σ|w·x| (float summation order only: the integer block dots are
/// exact); all are within the 8-bit activation rounding of the f32
/// product on the dequantized weight. Odd shapes: SmolLM2's 576-wide
/// rows, 1024, 3072, a 151,936-row head, 579 and 37 rows (partial tiles),
/// 19 blocks a row (Q8_0's pairs of blocks and one left); 1, 3, 16 and
/// 128 activation rows.
#[test]
fn paths_equal_the_scalar_reference_candle_and_the_dequantized_product() {
    for t in KINDS {
        let kind = Kind::of(t).unwrap();
        for (n, k, m) in [
            (579, 576, 1),
            (1024, 1024, 3),
            (3072, 576, 16),
            (576, 3072, 2),
            (151936, 64, 1),
            (96, 1024, 128),
            (37, 608, 3),
        ] {
            let wf = Tensor::from_vec(
                crate::ops::test_values(n * k, n as u64),
                (n, k),
                &Device::Cpu,
            )
            .unwrap();
            let q = QTensor::quantize(&wf, t).unwrap();
            let x = crate::ops::test_values(m * k, k as u64 + 7);
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
            let qmm = QMatMul::from_qtensor(QTensor::quantize(&wf, t).unwrap()).unwrap();
            let candle = values(&qmm.forward(&xt).unwrap());
            let w = q.dequantize(&Device::Cpu).unwrap();
            let dense = values(&xt.matmul(&w.t().unwrap()).unwrap());
            let mag = values(
                &xt.abs()
                    .unwrap()
                    .matmul(&w.abs().unwrap().t().unwrap())
                    .unwrap(),
            );
            let bytes = q.data().unwrap();
            let scalar = matmul(Path::Scalar, ReadOrder::Interleaved, kind, &bytes, n, k, &x);
            let close = |a: &[f32], b: &[f32], what: &str| {
                for (i, ((a, b), mag)) in a.iter().zip(b).zip(&mag).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * mag,
                        "{t:?} ({n}, {k}) × {m} [{i}] {what}: {a} vs {b} (Σ|w·x| {mag})"
                    );
                }
            };
            if matches!(kind, Kind::Q4_0 | Kind::Q8_0) {
                // candle's matmul may run its repacked VNNI tiles, which
                // quantize activations their own way: compare with its
                // per-row `vec_dot` instead.
                let rows = candle_vec_dot(t, &wf, &x);
                close(&scalar, &rows, "scalar vs candle vec_dot");
            } else {
                assert_eq!(scalar, candle, "{t:?} ({n}, {k}) × {m}: scalar vs candle");
            }
            for path in Path::available() {
                for order in [ReadOrder::Sequential, ReadOrder::Interleaved] {
                    let ours = matmul(path, order, kind, &bytes, n, k, &x);
                    close(&ours, &scalar, &format!("{path:?} {order:?} vs scalar"));
                    let worst = ours
                        .iter()
                        .zip(&dense)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    // |x| < 1, 8-bit activations: error ≲ √k · |w| · |x| / 254.
                    assert!(worst < 0.02 * (k as f32).sqrt(), "{t:?} {path:?}: {worst}");
                }
            }
        }
    }
}

/// The AVX2 block quantizer equals the scalar reference bit for bit:
/// random blocks at magnitudes from 1e-30 to 1e30, blocks whose scaled
/// values are exact halves (±k.5 with largest |x| = 127: d = 1), zeros,
/// and blocks with a NaN (ignored by the largest |x|, as in scalar) and
/// an infinity.
#[cfg(target_arch = "x86_64")]
#[test]
fn simd_quantize_equals_scalar() {
    if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
        return;
    }
    let mut blocks: Vec<[f32; QK]> = Vec::new();
    for (i, scale) in [1e-30f32, 1e-3, 0.5, 1.0, 7.3, 127.0, 1e4, 1e30]
        .iter()
        .enumerate()
    {
        for seed in 0..200u64 {
            let v = crate::ops::test_values(QK, seed * 8 + i as u64);
            blocks.push(std::array::from_fn(|j| v[j] * scale));
        }
    }
    let mut halves: [f32; QK] = std::array::from_fn(|j| j as f32 - 15.5);
    halves[0] = 127.0;
    blocks.push(halves);
    blocks.push(halves.map(|v| -v));
    blocks.push([0.0; QK]);
    let mut nan = [0.25f32; QK];
    nan[3] = f32::NAN;
    nan[7] = -2.0;
    let mut inf = nan;
    inf[3] = f32::INFINITY;
    for b in blocks.iter().chain([&nan, &inf]) {
        let want = quantize_block(b);
        // SAFETY: AVX2 and FMA checked above; 32 elements.
        let (amax, qs, sum) = unsafe { x86::quantize_block(b) };
        let got = block_from(amax, qs, sum);
        let what = format!("{b:?}");
        assert_eq!(got.qs, want.qs, "{what}");
        assert_eq!(got.d.to_bits(), want.d.to_bits(), "{what}");
        assert_eq!(got.s.to_bits(), want.s.to_bits(), "{what}");
        assert_eq!(got.qsum, want.qsum, "{what}");
    }
}

/// `round_away` is `f32::round` over the range activations reach
/// (every 1/4096 step of ±128, and the floats either side of each half).
#[test]
fn round_away_equals_round() {
    for i in -(128 * 4096)..=(128 * 4096) {
        let v = i as f32 / 4096.0;
        for v in [
            v,
            f32::from_bits(v.to_bits() + 1),
            f32::from_bits(v.to_bits().max(1) - 1),
        ] {
            if v.abs() <= 128.0 {
                assert_eq!(round_away(v), v.round() as i32, "{v}");
            }
        }
    }
}

fn block_q8(qs: [i8; QK]) -> BlockQ8 {
    BlockQ8 {
        d: 1.0,
        s: 0.0,
        qsum: qs.iter().map(|&q| q as i32).sum(),
        qs,
    }
}

/// Each SIMD path's exact integer block dot equals the scalar one on
/// 3000 random blocks per kind and on the extremes (largest weights
/// against ±127 and −128; Q8_0's −128 weights). Activations are never
/// −128 against Q8_0 weights: `quantize_row` rounds into −127..=127, and
/// the AVX2 sign trick could not negate −128.
#[test]
fn simd_block_equals_scalar_block() {
    let mut seed = 1u64;
    for t in KINDS {
        let kind = Kind::of(t).unwrap();
        let mut cases: Vec<(Vec<u8>, BlockQ8)> = Vec::new();
        for _ in 0..3000 {
            let bytes: Vec<u8> = crate::ops::test_values(kind.block_bytes(), seed)
                .iter()
                .map(|v| (v * 127.0 + 128.0) as u8)
                .collect();
            let mut x = [0i8; QK];
            for (xi, v) in x.iter_mut().zip(crate::ops::test_values(QK, seed + 1)) {
                let lowest = if kind == Kind::Q8_0 { -127.0 } else { -128.0 };
                *xi = (v * 128.0).clamp(lowest, 127.0) as i8;
            }
            cases.push((bytes, block_q8(x)));
            seed += 2;
        }
        for w in [0xFFu8, 0x80, 0x7F, 0x00] {
            for v in [127i8, -128, -127] {
                if kind == Kind::Q8_0 && v == -128 {
                    continue;
                }
                cases.push((vec![w; kind.block_bytes()], block_q8([v; QK])));
            }
        }
        for (bytes, xb) in &cases {
            let reference = Path::Scalar.block_sumi(kind, bytes, xb);
            for path in Path::available() {
                assert_eq!(
                    path.block_sumi(kind, bytes, xb),
                    reference,
                    "{t:?} {path:?}"
                );
            }
        }
    }
}
