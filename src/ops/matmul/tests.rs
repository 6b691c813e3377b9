//! `ops::matmul` against candle and the dequantized product.

use super::*;
use candle_core::quantized::GgmlDType;
use candle_core::Module;

/// After `refine_top`, the largest outputs equal the dequantized f32
/// product (within 1e-6 × Σ|w·x|), and so does the argmax, on Q8_0 and
/// Q6_K tables (the types of tied embeddings in llama.cpp's files).
#[test]
fn refined_top_equals_the_dequantized_product() {
    for (t, n, k) in [(GgmlDType::Q8_0, 4099, 576), (GgmlDType::Q6K, 3001, 1024)] {
        let wv = crate::ops::test_values(n * k, 11);
        let x = crate::ops::test_values(k, 12);
        let wf = Tensor::from_vec(wv, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wf, t).unwrap();
        let deq: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let exact: Vec<f32> = (0..n)
            .map(|r| {
                deq[r * k..(r + 1) * k]
                    .iter()
                    .zip(&x)
                    .map(|(w, x)| w * x)
                    .sum()
            })
            .collect();
        let xt = Tensor::from_slice(&x, (1, k), &Device::Cpu).unwrap();
        let mut y: Vec<f32> = candle_core::quantized::QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let q = QTensor::quantize(&wf, t).unwrap();
        // The 8-bit activations do move the outputs.
        assert!(y.iter().zip(&exact).any(|(a, b)| (a - b).abs() > 1e-4));
        refine_top(&q, &x, &mut y).unwrap();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]));
        for &r in &order[..REFINE_TOP / 2] {
            let mag: f32 = (0..k).map(|j| (deq[r * k + j] * x[j]).abs()).sum();
            assert!(
                (y[r] - exact[r]).abs() <= 1e-6 * mag,
                "{t:?} row {r}: {} vs {}",
                y[r],
                exact[r]
            );
        }
        let argmax = |v: &[f32]| (0..n).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(argmax(&y), argmax(&exact));
    }
}

/// `matmul_many` (one prepared input, one pool job) gives exactly what
/// each projection alone gives, for every kernel family: f32 and bf16
/// (gemv), Q4_1 and Q8_0 (qdot), Q4_K (vecdot); q/k/v-like shapes.
#[test]
fn matmul_many_equals_one_by_one() {
    let k = 256;
    let ns = [512, 128, 128];
    let x = Tensor::from_vec(crate::ops::test_values(3 * k, 9), (1, 3, k), &Device::Cpu).unwrap();
    let ws: Vec<Tensor> = ns
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            Tensor::from_vec(
                crate::ops::test_values(n * k, i as u64),
                (n, k),
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    for dtype in [DType::F32, DType::BF16] {
        let ws: Vec<Tensor> = ws.iter().map(|w| w.to_dtype(dtype).unwrap()).collect();
        let refs: Vec<WeightRef> = ws.iter().map(WeightRef::Dense).collect();
        let many = matmul_many(&refs, &x, Precision::Exact).unwrap().unwrap();
        for (w, y) in ws.iter().zip(&many) {
            let one = dense_forward(
                &candle_nn::Linear::new(w.clone(), None),
                &x,
                Precision::Exact,
            )
            .unwrap();
            assert_eq!(values(y), values(&one), "{dtype:?}");
            assert_eq!(y.dims(), one.dims());
        }
    }
    for t in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
        let qs: Vec<QTensor> = ws
            .iter()
            .map(|w| QTensor::quantize(w, t).unwrap())
            .collect();
        let refs: Vec<WeightRef> = qs.iter().map(WeightRef::Quantized).collect();
        let many = matmul_many(&refs, &x, Precision::Exact).unwrap().unwrap();
        for (w, y) in ws.iter().zip(&many) {
            let q = candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(w, t).unwrap())
                .unwrap();
            let one = qmatmul_forward(&q, &x, Precision::Exact).unwrap();
            assert_eq!(values(y), values(&one), "{t:?}");
        }
    }
    // Mixed kinds are left to the caller.
    let q = QTensor::quantize(&ws[1], GgmlDType::Q8_0).unwrap();
    assert!(matmul_many(
        &[WeightRef::Dense(&ws[0]), WeightRef::Quantized(&q)],
        &x,
        Precision::Exact
    )
    .unwrap()
    .is_none());
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Prompt rows on float weights (f32, bf16, f16; whole and in chunks
/// of 3 rows, the last one short) equal candle's f32 matmul on the
/// weight widened to f32, within 1e-5 × Σ|w·x|.
#[test]
fn dense_prompt_equals_candle_on_the_widened_weight() {
    let (n, k, m) = (37, 64, 17);
    let w = Tensor::from_vec(crate::ops::test_values(n * k, 21), (n, k), &Device::Cpu).unwrap();
    let x = Tensor::from_vec(crate::ops::test_values(m * k, 22), (m, k), &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let wd = w.to_dtype(dtype).unwrap();
        let wide = wd.to_dtype(DType::F32).unwrap();
        let want = values(&x.matmul(&wide.t().unwrap()).unwrap());
        let wv = values(&wide);
        let xv = values(&x);
        // Ours where this CPU has it, and the `gemm` crate whole and in chunks.
        let ours = crate::ops::fgemm::Path::detect();
        let none = crate::ops::fgemm::Path::None;
        for (chunk, path, p) in [
            (DEQUANT_CHUNK, ours, Precision::TwoTerm),
            (DEQUANT_CHUNK, ours, Precision::Exact),
            (3 * k, ours, Precision::Exact),
            (DEQUANT_CHUNK, none, Precision::Exact),
            (3 * k, none, Precision::Exact),
        ] {
            let got = dense_prompt_in_chunks(&wd, &x, p, chunk, path);
            let got = values(&got.unwrap().unwrap());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let (r, c) = (i / n, i % n);
                let mag: f32 = (0..k).map(|j| (wv[c * k + j] * xv[r * k + j]).abs()).sum();
                assert!(
                    (a - b).abs() <= 1e-5 * mag,
                    "{dtype:?} chunk {chunk} {path:?} {p:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}
