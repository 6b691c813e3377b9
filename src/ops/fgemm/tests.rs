//! `fgemm` against scalar references in f64: the f32 product, and for bf16
//! the product with the activations split into two bf16 terms by `half`.

use super::*;
use crate::ops::test_values;
use half::bf16;

/// The scalar split: hi = bf16(x), lo = bf16(x − hi), as f32.
fn split_scalar(v: f32) -> (f32, f32) {
    let hi = bf16::from_f32(v);
    let lo = bf16::from_f32(v - hi.to_f32());
    (hi.to_f32(), lo.to_f32())
}

/// (y, Σ|w·x|) in f64 for x (m, k), w (n, k).
fn reference(x: &[f32], w: &[f32], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let m = x.len() / k;
    let mut y = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for t in 0..k {
                let p = x[i * k + t] as f64 * w[j * k + t] as f64;
                y[i * n + j] += p;
                mag[i * n + j] += p.abs();
            }
        }
    }
    (y, mag)
}

fn check(what: &str, got: &[f32], want: &[f64], mag: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (e, ((&g, &r), &s)) in got.iter().zip(want).zip(mag).enumerate() {
        assert!(
            (g as f64 - r).abs() <= tol * s + 1e-30,
            "{what}: element {e}: {g} against {r} (Σ|w·x| = {s})"
        );
    }
}

/// Shapes with partial tiles at both ends, k not a multiple of the vector
/// width, and the widths of Qwen3-0.6B and SmolLM2.
const SHAPES: [Shape; 6] = [
    (1, 5, 37),
    (3, 7, 576),
    (16, 9, 1024),
    (5, 13, 3072),
    (128, 6, 1024),
    (17, 576, 64),
];

#[test]
fn f32_and_f16_weights_equal_the_f64_product_on_every_path() {
    let paths = Path::detect().and_narrower();
    if paths.is_empty() {
        eprintln!("no AVX-512 on this CPU: fgemm has no path to test");
        assert!(matmul(
            Path::None,
            Rows::F32(&[1.0]),
            1,
            1,
            &[1.0],
            Activations::Exact
        )
        .is_none());
    }
    for path in paths {
        for (m, n, k) in SHAPES {
            let x = test_values(m * k, 1 + k as u64);
            let w = test_values(n * k, 7 + n as u64);
            let got = matmul(path, Rows::F32(&w), n, k, &x, Activations::Exact)
                .expect("f32 on this path");
            let (want, mag) = reference(&x, &w, n, k);
            check(
                &format!("{path:?} f32 {m}×{n}×{k}"),
                &got,
                &want,
                &mag,
                1e-6,
            );
            // f16 weights: the product on their exact f32 widening.
            let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            let wide: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
            let got = matmul(path, Rows::F16(&wh), n, k, &x, Activations::Exact)
                .expect("f16 on this path");
            let (want, mag) = reference(&x, &wide, n, k);
            check(
                &format!("{path:?} f16 {m}×{n}×{k}"),
                &got,
                &want,
                &mag,
                1e-6,
            );
        }
    }
}

/// Shapes the AMX tiles take whole (n a multiple of 16, k of 32), with
/// prompt rows that fill one, two, three and eight 16-row blocks.
#[cfg(target_arch = "x86_64")]
const AMX_SHAPES: [Shape; 6] = [
    (1, 16, 32),
    (3, 48, 576),
    (16, 80, 96),
    (33, 16, 64),
    (37, 32, 1024),
    (128, 64, 3072),
];

/// (m, n, k): prompt rows, weight rows, width.
type Shape = (usize, usize, usize);

/// The paths that run bf16 weights, with the shapes to test them on.
fn bf16_paths() -> Vec<(Path, Vec<Shape>)> {
    let mut out = vec![];
    for path in Path::detect().and_narrower() {
        #[cfg(target_arch = "x86_64")]
        match path {
            // Amx takes the shapes that do not fit its tiles on AVX-512 BF16.
            Path::Amx | Path::Avx512Bf16 => {
                out.push((path, [&SHAPES[..], &AMX_SHAPES[..]].concat()))
            }
            _ => {}
        }
    }
    out
}

#[test]
fn bf16_weights_equal_the_two_term_product_and_nearly_the_f32_one() {
    let paths = bf16_paths();
    if paths.is_empty() {
        eprintln!("no AVX-512 BF16 on this CPU: the bf16 kernels are not tested here");
        let path = Path::detect();
        assert!(matmul(
            path,
            Rows::Bf16(&[bf16::ONE]),
            1,
            1,
            &[1.0],
            Activations::TwoBf16
        )
        .is_none());
        return;
    }
    for (path, shapes) in paths {
        for (m, n, k) in shapes {
            // Activations over several orders of magnitude, as hidden states are.
            let x: Vec<f32> = test_values(m * k, 3 + k as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| v * [1.0, 37.5, 0.01, 1e-3][i % 4])
                .collect();
            let wb: Vec<bf16> = test_values(n * k, 11 + n as u64)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let w: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let got = matmul(path, Rows::Bf16(&wb), n, k, &x, Activations::TwoBf16)
                .expect("bf16 on this path");
            // The scalar reference: the same two terms, summed in f64.
            let split: Vec<f32> = x
                .iter()
                .map(|&v| {
                    let (h, l) = split_scalar(v);
                    h + l
                })
                .collect();
            let (want, mag) = reference(&split, &w, n, k);
            check(
                &format!("{path:?} bf16 two-term {m}×{n}×{k}"),
                &got,
                &want,
                &mag,
                1e-6,
            );
            // And the f32 activations themselves: the split keeps ~16 bits.
            let (exact, mag) = reference(&x, &w, n, k);
            check(
                &format!("{path:?} bf16 vs f32 x {m}×{n}×{k}"),
                &got,
                &exact,
                &mag,
                2e-5,
            );
            // f16 and f32 weights on AMX: each split exactly into two (three)
            // bf16 terms, so the same two-term product on the weight (f32's
            // third term without the lo activation term: at most 2⁻²⁴ of
            // |w·x|); with fewer prompt rows than pay for the split, the
            // exact tiles.
            #[cfg(target_arch = "x86_64")]
            if path == Path::Amx && amx::fits(n, k) {
                let wh: Vec<half::f16> = test_values(n * k, 13 + n as u64)
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| half::f16::from_f32(v * [1.0, 3e-5, 200.0][i % 3]))
                    .collect();
                let wide: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
                let w32: Vec<f32> = test_values(n * k, 17 + n as u64)
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v * [1.0, 3e-5, 200.0, 1.0 / 3.0][i % 4])
                    .collect();
                for (name, rows, as_f32) in [
                    ("f16", Rows::F16(&wh), &wide),
                    ("f32", Rows::F32(&w32), &w32),
                ] {
                    let what = format!("{path:?} {name} two-term {m}×{n}×{k}");
                    let got = matmul(path, rows, n, k, &x, Activations::TwoBf16).expect(&what);
                    if m < amx::MIN_ROWS_TO_SPLIT {
                        let exact = matmul(path, rows, n, k, &x, Activations::Exact);
                        assert_eq!(Some(got), exact, "{what}: the exact tiles");
                        continue;
                    }
                    let (want, mag) = reference(&split, as_f32, n, k);
                    check(&what, &got, &want, &mag, 1e-6);
                }
            }
        }
    }
}

/// The AMX packing puts each pair where the tile expects it: block (b, j),
/// row kk, column r holds x[16b + r][32j + 2kk .. +2]; padding rows are 0.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_packing_puts_each_pair_in_its_tile_row() {
    let (m, k) = (19, 96);
    let x: Vec<u16> = (0..m * k).map(|i| i as u16).collect();
    let mut lines = crate::ops::Lines::default();
    lines.resized::<u32>(3).fill(7);
    amx::pack(&x, m, k, &mut lines);
    let p = lines.get::<u32>();
    assert_eq!(p.len(), amx::padded_rows(m) * k / 2);
    let steps = k / amx::K_STEP;
    for b in 0..amx::padded_rows(m) / 16 {
        for j in 0..steps {
            for kk in 0..16 {
                for r in 0..16 {
                    let got = p[((b * steps + j) * 16 + kk) * 16 + r];
                    let row = b * 16 + r;
                    let want = if row < m {
                        let at = row * k + j * 32 + 2 * kk;
                        x[at] as u32 | (x[at + 1] as u32) << 16
                    } else {
                        0
                    };
                    assert_eq!(got, want, "block ({b}, {j}) row {kk} column {r}");
                }
            }
        }
    }
}

#[test]
fn the_simd_split_equals_halfs_rounding() {
    if !matches!(Path::detect(), Path::Avx512Bf16 | Path::Amx) {
        return;
    }
    let mut x = test_values(1000, 5);
    x.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        3.0e38,
        1e-30,
        65504.0,
        1.0 + 1.0 / 256.0,
    ]);
    let mut s = SplitBf16 {
        hi: vec![7; 3],
        ..SplitBf16::default()
    };
    // SAFETY: the path says AVX-512 BF16 is present.
    unsafe { x86::split_bf16(&x, &mut s) };
    assert_eq!((s.hi.len(), s.lo.len()), (x.len(), x.len()));
    for (i, &v) in x.iter().enumerate() {
        let (h, l) = split_scalar(v);
        assert_eq!(bf16::from_bits(s.hi[i]).to_f32(), h, "hi of {v}");
        assert_eq!(bf16::from_bits(s.lo[i]).to_f32(), l, "lo of {v}");
    }
}
