//! Tests of `qgemm` against the f64 product on the dequantized weight.

use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Every format on every SIMD kernel the CPU has (AVX2 on 8-row tiles,
/// AVX-512 VNNI on 32-row ones), several weights at once: the kernels
/// equal bit for bit, and each
/// output equals, within 1e-5·Σ|w·x̂|, the f64 dot of the dequantized
/// weight row with x̂, the two 8-bit terms `quantize_pair` makes (the
/// one term of `quantize_one` on the k-quants; the integer dots, scales,
/// minimums and offsets are exact; only float order differs); and the
/// f64 dot with the f32 activations within their remaining rounding
/// (Σ|w|·d₂/2 per block, d₂ the last term's step). Partial tiles (579,
/// 13, 33, 56 rows), 256- to 3072-wide rows, 1 to 128 prompt rows.
#[cfg(target_arch = "x86_64")]
#[test]
fn every_format_equals_the_dequantized_dot_within_the_two_term_rounding() {
    for t in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let fmt = Format::of(t).unwrap();
        let mut shapes = vec![
            (vec![579, 13], 256, 5),
            (vec![64], 3072, 16),
            (vec![40, 24], 1024, 1),
            (vec![32], 512, 128),
            // A last tile of 24 rows: half of its second 16-row vector.
            (vec![56], 256, 3),
        ];
        if fmt.block_len() == QK {
            // An odd block count (19).
            shapes.push((vec![33], 608, 3));
        }
        for (ns, k, m) in shapes {
            let x = crate::ops::test_values(m * k, 3 + m as u64);
            let mut deq = Vec::new();
            let mut data = Vec::new();
            for (i, &n) in ns.iter().enumerate() {
                let w = Tensor::from_vec(
                    crate::ops::test_values(n * k, 50 + i as u64),
                    (n, k),
                    &Device::Cpu,
                )
                .unwrap();
                let q = QTensor::quantize(&w, t).unwrap();
                let d: Vec<f32> = q
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                deq.push(d);
                data.push(q.data().unwrap().to_vec());
            }
            let ws: Vec<(&[u8], usize)> = data.iter().zip(&ns).map(|(d, &n)| (&d[..], n)).collect();
            // x̂ and each block's last rounding step d₂ (the residual's,
            // or the one term's on the k-quants), per prompt row.
            let (mut main, mut resid) = (vec![BlockQ8::ZERO; k / QK], vec![BlockQ8::ZERO; k / QK]);
            let mut one = vec![BlockQ8H::ZERO; k / QK];
            let (mut xh, mut d2) = (Vec::new(), Vec::new());
            for xi in x.chunks_exact(k) {
                if fmt.one_term() {
                    quantize_one(xi, &mut one);
                    for b in &one {
                        xh.extend(b.qs.iter().map(|&q| b.d as f64 * q as f64));
                        d2.push(b.d as f64);
                    }
                    continue;
                }
                quantize_pair(xi, &mut main, &mut resid);
                for (a, b) in main.iter().zip(&resid) {
                    for (qa, qb) in a.qs.iter().zip(&b.qs) {
                        xh.push(a.d as f64 * (RATIO as f64 * *qa as f64 + *qb as f64));
                    }
                    d2.push(a.d as f64);
                }
            }
            assert!(matmul_many(Path::Scalar, fmt, &ws, k, &x).is_none());
            let mut first: Option<Vec<Vec<f32>>> = None;
            for kernel in Path::available().into_iter().filter(|&p| p != Path::Scalar) {
                let got = tiled(kernel, fmt, &ws, k, &x);
                // Every kernel: the same integers and float steps per lane.
                match &first {
                    None => first = Some(got.clone()),
                    Some(f) => {
                        for (a, b) in f.iter().zip(&got) {
                            let (a, b): (Vec<u32>, Vec<u32>) = (
                                a.iter().map(|v| v.to_bits()).collect(),
                                b.iter().map(|v| v.to_bits()).collect(),
                            );
                            assert!(
                                a == b,
                                "{t:?} {kernel:?} n={ns:?} k={k} m={m}: not bit for bit"
                            );
                        }
                    }
                }
                for (wi, &n) in ns.iter().enumerate() {
                    for i in 0..m {
                        for r in 0..n {
                            let wr = &deq[wi][r * k..(r + 1) * k];
                            let xr = &xh[i * k..(i + 1) * k];
                            let xf = &x[i * k..(i + 1) * k];
                            let y = got[wi][i * n + r] as f64;
                            let what = format!("{t:?} {kernel:?} n={n} k={k} m={m} ({i}, {r})");
                            let dot: f64 = wr.iter().zip(xr).map(|(&w, x)| w as f64 * x).sum();
                            let mag: f64 =
                                wr.iter().zip(xr).map(|(&w, x)| (w as f64 * x).abs()).sum();
                            assert!((y - dot).abs() <= 1e-5 * mag + 1e-6, "{what}: {y} vs {dot}");
                            let exact: f64 =
                                wr.iter().zip(xf).map(|(&w, &x)| w as f64 * x as f64).sum();
                            let step: f64 = wr
                                .chunks_exact(QK)
                                .zip(&d2[i * k / QK..])
                                .map(|(ws, d)| {
                                    ws.iter().map(|w| (*w as f64).abs()).sum::<f64>() * d / 2.0
                                })
                                .sum();
                            assert!(
                                (y - exact).abs() <= 1.01 * step + 1e-5 * mag + 1e-6,
                                "{what}: {y} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The two terms carry ~15 bits: per block, |x − x̂| ≤ d/2 (+ float
/// rounding) with d = max|x|/(127·254); the one term is the pair's main
/// term with its half sums; the AVX2 quantizers are the scalar ones bit
/// for bit, on ordinary, tiny, zero and huge blocks.
#[test]
fn quantizers_keep_their_bits_and_avx2_equals_scalar() {
    let mut x = crate::ops::test_values(4096, 9);
    x[64..96].iter_mut().for_each(|v| *v = 0.0);
    x[96..128].iter_mut().for_each(|v| *v *= 1e-30);
    x[128..160].iter_mut().for_each(|v| *v *= 3e30);
    x[160] = 0.5;
    let (mut a, mut b) = (vec![BlockQ8::ZERO; 128], vec![BlockQ8::ZERO; 128]);
    quantize_pair(&x, &mut a, &mut b);
    let mut one = vec![BlockQ8H::ZERO; 128];
    quantize_one(&x, &mut one);
    for (j, xs) in x.chunks_exact(QK).enumerate() {
        // The one term: q₁ (the pair's main term), its step d = 254·d_pair.
        assert_eq!(one[j].qs, a[j].qs, "block {j}");
        let half = |r: std::ops::Range<usize>| one[j].qs[r].iter().map(|&q| q as i32).sum::<i32>();
        assert_eq!(one[j].h, [half(0..16), half(16..32)]);
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (e, &v) in xs.iter().enumerate() {
            let q = RATIO as f64 * a[j].qs[e] as f64 + b[j].qs[e] as f64;
            let xh = a[j].d as f64 * q;
            let bound = amax as f64 / (127.0 * 254.0) * 0.5 * 1.01;
            assert!((v as f64 - xh).abs() <= bound, "block {j}: {v} vs {xh}");
        }
        let s1: i32 = a[j].qs.iter().map(|&q| q as i32).sum();
        let s2: i32 = b[j].qs.iter().map(|&q| q as i32).sum();
        assert_eq!(a[j].qsum, RATIO * s1 + s2);
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        let (mut a2, mut b2) = (vec![BlockQ8::ZERO; 128], vec![BlockQ8::ZERO; 128]);
        // SAFETY: the CPU has AVX2.
        unsafe { super::x86::quantize_pair_avx2(&x, &mut a2, &mut b2) };
        let mut one2 = vec![BlockQ8H::ZERO; 128];
        // SAFETY: the CPU has AVX2.
        unsafe { super::x86::quantize_one_avx2(&x, &mut one2) };
        for (p, q) in one.iter().zip(&one2) {
            assert_eq!((p.qs, p.h), (q.qs, q.h));
            assert_eq!(
                (p.d.to_bits(), p.s.to_bits()),
                (q.d.to_bits(), q.s.to_bits())
            );
        }
        for j in 0..128 {
            for (p, q) in [(&a[j], &a2[j]), (&b[j], &b2[j])] {
                assert_eq!(p.qs, q.qs, "block {j}");
                assert_eq!(p.qsum, q.qsum, "block {j}");
                assert_eq!(p.d.to_bits(), q.d.to_bits(), "block {j}");
                assert_eq!(p.s.to_bits(), q.s.to_bits(), "block {j}");
            }
        }
    }
}
