//! Prompt rows on the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) and the k-quants of Q4_K_M and Q5_K_M files (Q4_K, Q5_K, Q6_K): a
//! quantized GEMM that reads each weight tile once for all the prompt's
//! rows.
//!
//! Activations: each prompt row is quantized once per call, per 32-element
//! block. On the 32-element block types, into two 8-bit terms
//! (`quantize_pair`, about 15 bits) joined into one 16-bit integer per
//! element (q = 254·q₁ + q₂): one 8-bit term moves SmolLM2's (Q4_1)
//! logits by ~0.1 and flips its first answer token. On the k-quants, into
//! one 8-bit term (`quantize_one`): still finer than the Q8_K (one scale
//! per 256 elements) their decode rows and llama.cpp use, and half the
//! integer work (tests/quant_trained.rs measures both against the exact
//! product).
//!
//! Weights: per tile of R rows (8 on AVX2, 32 on AVX-512), the blocks are
//! unpacked once into a scratch buffer, laid out for the SIMD units so
//! that one instruction adds a vector's products to every row's i32 lane:
//! - 16-bit tiles (block types): signed values, the format's offset taken
//!   off; per block sixteen groups, group g holding elements 2g, 2g+1 of
//!   every row, multiplied by activation pair g broadcast (`vpmaddwd` on
//!   AVX2, `vpdpwssd` on AVX-512 VNNI);
//! - byte tiles (k-quants): the unsigned quants as stored; per block eight
//!   groups, group g holding elements 4g..4g + 4 of every row, against
//!   activation quad g (`vpmaddubsw` + `vpmaddwd` on AVX2, `vpdpbusd` on
//!   AVX-512 VNNI); Q6_K's offset of 32 comes off through the activations'
//!   half-block sums.
//!
//! After a block, lane r holds row r's exact integer block dot, with no
//! horizontal sums. The rows' `d`s then scale the lanes in f32, block by
//! block, and the minimum terms (Q4_1, Q5_1, Q4_K, Q5_K) are summed into
//! the same accumulators.
//!
//! Every kernel computes the same integers and the same float steps per
//! lane, so the AVX2 and AVX-512 outputs are equal bit for bit (tested).
//! It is not the exact f32 product on the dequantized weight
//! (`ops::matmul`'s `Precision::Exact`, what `expert perplexity` uses).

use super::kquant::QK_K;
#[cfg(test)]
use super::qdot::round_away;
use super::qdot::{BlockQ8, Kind, Path, QK};
use super::Lines;
use candle_core::quantized::GgmlDType;

/// Prompt rows padded to a multiple of every kernel's pass (4).
const GROUP: usize = 4;

/// Weight rows per tile on `path` (the SIMD ones), one i32 lane each: 8 in
/// an AVX2 register (`vpmaddwd`), 32 in two of AVX-512's (`vpdpwssd`: a
/// 512-bit one does twice the products of a 256-bit one, 131 → 244 G
/// multiply-adds/s on one Xeon core; each activation broadcast serves both
/// registers). Both take 4 prompt rows a pass.
#[cfg(target_arch = "x86_64")]
fn tile_rows(path: Path) -> usize {
    if path == Path::Vnni {
        32
    } else {
        8
    }
}

/// The weight types this GEMM takes: `qdot`'s 32-element block kinds, and
/// the k-quants of llama.cpp's Q4_K_M and Q5_K_M files, unpacked per 32
/// elements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Block(Kind),
    /// Per 32 elements: unsigned nibbles, d·sc and −dmin·m (as Q4_1's d, m).
    Q4K,
    /// Q4_K with a fifth bit per element (0..31).
    Q5K,
    /// Per 32 elements: signed q − 32, and a scale per 16 elements.
    Q6K,
}

impl Format {
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4K => Some(Format::Q4K),
            GgmlDType::Q5K => Some(Format::Q5K),
            GgmlDType::Q6K => Some(Format::Q6K),
            t => Kind::of(t).map(Format::Block),
        }
    }

    /// Elements per stored block.
    const fn block_len(self) -> usize {
        match self {
            Format::Block(_) => QK,
            Format::Q4K | Format::Q5K | Format::Q6K => QK_K,
        }
    }

    const fn block_bytes(self) -> usize {
        match self {
            Format::Block(kind) => kind.block_bytes(),
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Format::Block(kind) => kind.code(),
            Format::Q4K => 5,
            Format::Q5K => 7,
            Format::Q6K => 6,
        }
    }

    const fn from_code(c: u8) -> Self {
        match c {
            5 => Format::Q4K,
            7 => Format::Q5K,
            6 => Format::Q6K,
            c => Format::Block(Kind::from_code(c)),
        }
    }

    /// Whether prompt rows go in as one 8-bit term against byte tiles (the
    /// k-quants) rather than as 16-bit integers.
    const fn one_term(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// Whether a 32-element block carries a minimum (value = q·d + m).
    const fn has_min(self) -> bool {
        match self {
            Format::Block(kind) => kind.has_min(),
            Format::Q4K | Format::Q5K => true,
            Format::Q6K => false,
        }
    }
}

/// One unpacked tile of `rows` weight rows, per 32-element block: the
/// quants interleaved for the SIMD units (one i32 lane per row; 16-bit
/// values two to a lane, or bytes four to a lane, as the module header
/// says); and the rows' `d`, second `d` (Q6_K's second 16 elements) and
/// `m`. The quants start on a cache line (they are read as whole 512-bit
/// vectors).
struct Tile {
    rows: usize,
    quants: Lines,
    d: Vec<f32>,
    d2: Vec<f32>,
    m: Vec<f32>,
}

impl Tile {
    /// A tile of `quant_bytes` (2 or 1) per quant.
    fn new(blocks: usize, rows: usize, quant_bytes: usize) -> Self {
        let mut quants = Lines::default();
        quants.zeroed::<u8>(blocks * rows * quant_bytes * QK);
        Self {
            rows,
            quants,
            d: vec![0.0; blocks * rows],
            d2: vec![0.0; blocks * rows],
            m: vec![0.0; blocks * rows],
        }
    }

    /// 32-element blocks per row.
    fn blocks(&self) -> usize {
        self.d.len() / self.rows
    }
}

/// One block of a prompt row's activations as 16-bit integers: the two
/// 8-bit terms of `quantize_pair` joined, q = 254·q₁ + q₂ (|q| ≤ 32385),
/// so x ≈ d·q; s = d·Σq (the minimum terms' factor).
#[derive(Clone, Copy)]
struct BlockQ16 {
    d: f32,
    s: f32,
    qs: [i16; QK],
}

impl BlockQ16 {
    /// A block of zeros (padding rows).
    const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };
}

/// One block of a prompt row's activations as one 8-bit term (the
/// k-quants' prompt rows): x ≈ d·q, s = d·Σq (the minimum terms' factor)
/// and the sums of its two 16-element halves (Q6_K's offset).
#[derive(Clone, Copy)]
struct BlockQ8H {
    d: f32,
    s: f32,
    h: [i32; 2],
    qs: [i8; QK],
}

impl BlockQ8H {
    /// A block of zeros (padding rows).
    const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        h: [0; 2],
        qs: [0; QK],
    };
}

/// Quantizes one row of activations (a multiple of 32) to one 8-bit term
/// per element: per 32-element block q = x rounded in steps of d =
/// max|x|/127 (the main term of `quantize_pair`). The scalar reference of
/// `quantize_one_avx2`.
#[cfg(test)]
fn quantize_one(x: &[f32], out: &mut [BlockQ8H]) {
    for (xs, o) in x.chunks_exact(QK).zip(out) {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK];
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = round_away(v * id).clamp(-127, 127) as i8;
        }
        let half = |r: std::ops::Range<usize>| qs[r].iter().map(|&q| q as i32).sum::<i32>();
        let h = [half(0..16), half(16..32)];
        *o = BlockQ8H {
            d,
            s: d * (h[0] + h[1]) as f32,
            h,
            qs,
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

/// Residual steps per main step: a block's activations are carried as
/// d·(RATIO·q₁ + q₂), two 8-bit terms summed in integers.
const RATIO: i32 = 254;

/// Splits one row of activations (a multiple of 32) into two 8-bit rows
/// whose combination carries about 15 bits: per 32-element block, q₁ = x
/// rounded in steps of d₁ = max|x|/127, and q₂ = the remainder x − d₁·q₁
/// rounded in steps of d₁/254 (it is at most d₁/2, so |q₂| ≤ 127); x ≈
/// d·(254·q₁ + q₂) with d = d₁/254. `main` gets q₁ and, for the pair, d,
/// Σ(254·q₁ + q₂) and s = d·that Σ (the minimum terms' factor); `resid`
/// gets q₂ only. The scalar reference of `quantize_pair_avx2`.
#[cfg(test)]
fn quantize_pair(x: &[f32], main: &mut [BlockQ8], resid: &mut [BlockQ8]) {
    for ((xs, a), b) in x.chunks_exact(QK).zip(main).zip(resid) {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d1 = amax / 127.0;
        let id1 = if d1 != 0.0 { 1.0 / d1 } else { 0.0 };
        let id2 = RATIO as f32 * id1;
        let (mut q1, mut q2) = ([0i8; QK], [0i8; QK]);
        for ((&v, q1), q2) in xs.iter().zip(&mut q1).zip(&mut q2) {
            let q = round_away(v * id1).clamp(-127, 127);
            let r = v - d1 * q as f32;
            *q1 = q as i8;
            *q2 = round_away(r * id2).clamp(-127, 127) as i8;
        }
        let sum = |q: &[i8; QK]| q.iter().map(|&q| q as i32).sum::<i32>();
        let qsum = RATIO * sum(&q1) + sum(&q2);
        let d = d1 / RATIO as f32;
        *a = BlockQ8 {
            d,
            s: d * qsum as f32,
            qsum,
            qs: q1,
        };
        *b = BlockQ8 {
            d: 0.0,
            s: 0.0,
            qsum: 0,
            qs: q2,
        };
    }
}

/// y = x·Wᵀ for several weights of one format that read the same `x`
/// (m, k) f32 rows, quantized as the module header says; returns each
/// (m, n_i).
/// None on the scalar path (the caller then computes in f32).
pub fn matmul_many(
    path: Path,
    fmt: Format,
    ws: &[(&[u8], usize)],
    k: usize,
    x: &[f32],
) -> Option<Vec<Vec<f32>>> {
    #[cfg(target_arch = "x86_64")]
    if path != Path::Scalar {
        return Some(tiled(path, fmt, ws, k, x));
    }
    let _ = (path, fmt, ws, k, x);
    None
}

#[cfg(target_arch = "x86_64")]
/// `matmul_many` on a SIMD path (AVX2 or AVX-512 VNNI): the k-quants with
/// one 8-bit term per activation on byte tiles, the block types with two.
fn tiled(path: Path, fmt: Format, ws: &[(&[u8], usize)], k: usize, x: &[f32]) -> Vec<Vec<f32>> {
    if fmt.one_term() {
        tiled_as::<BlockQ8H>(path, fmt, ws, k, x)
    } else {
        tiled_as::<BlockQ16>(path, fmt, ws, k, x)
    }
}

#[cfg(target_arch = "x86_64")]
/// `tiled` with the prompt rows quantized as `A`.
fn tiled_as<A: x86::Acts>(
    path: Path,
    fmt: Format,
    ws: &[(&[u8], usize)],
    k: usize,
    x: &[f32],
) -> Vec<Vec<f32>> {
    let blocks = k / QK;
    let row_bytes = k / fmt.block_len() * fmt.block_bytes();
    // Invariants of a loaded weight (GGUF and quantize-at-load check row
    // lengths): every row holds whole blocks.
    assert!(k.is_multiple_of(fmt.block_len()) && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * row_bytes));
    let m = x.len() / k;
    // Every prompt row quantized once, spread over the pool; padded with
    // zero rows to whole passes.
    let padded = m.div_ceil(GROUP) * GROUP;
    let mut xq = vec![A::ZERO; padded * blocks];
    {
        struct Rows<A>(*mut A);
        // SAFETY: each row index goes to exactly one thread, and its rows
        // are a disjoint chunk of `xq`.
        unsafe impl<A> Sync for Rows<A> {}
        let rows = Rows(xq.as_mut_ptr());
        super::pool::for_ranges(m, |range| {
            let rows = &rows;
            // SAFETY: range.end ≤ m ≤ padded: the rows lie inside `xq`;
            // `tiled` runs on the SIMD paths only, which have AVX2.
            unsafe {
                let out = std::slice::from_raw_parts_mut(
                    rows.0.add(range.start * blocks),
                    range.len() * blocks,
                );
                A::quantize(&x[range.start * k..range.end * k], k, out);
            }
        });
    }
    let width = tile_rows(path);
    let tiles: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(wi, &(_, n))| (0..n).step_by(width).map(move |r| (wi, r)))
        .collect();
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    /// The outputs, written by the pool's workers at disjoint columns.
    struct Out(Vec<*mut f32>);
    // SAFETY: each tile writes only its own columns r..r+width of its weight's
    // output, and each tile index goes to exactly one thread.
    unsafe impl Sync for Out {}
    let out = Out(ys.iter_mut().map(|y| y.as_mut_ptr()).collect());
    // A tile's rows, as bytes of its weight.
    let tile_bytes = |(wi, r): (usize, usize)| {
        let (w, n) = ws[wi];
        &w[r * row_bytes..(r + width.min(n - r)) * row_bytes]
    };
    super::pool::for_ranges(tiles.len(), |range| {
        let out = &out;
        let mut t = Tile::new(blocks, width, if A::BYTES { 1 } else { 2 });
        let mine = &tiles[range];
        for (i, &(wi, r)) in mine.iter().enumerate() {
            // The next tile's weights are requested now and arrive while
            // this one runs against the prompt's rows: unpacking otherwise
            // waited on DRAM (7 % of the kernel's time on q4_0; 3 % after).
            if let Some(&next) = mine.get(i + 1) {
                x86::prefetch(tile_bytes(next));
            }
            let n = ws[wi].1;
            let rows = width.min(n - r);
            let w = tile_bytes((wi, r));
            // SAFETY: Avx2/Vnni are only chosen when the CPU has their
            // features; the asserts above give whole blocks and rows, and
            // `xq` whole passes; the tile writes only its own columns
            // r..r+rows of output wi.
            unsafe {
                let y = out.0[wi].add(r);
                match path {
                    Path::Vnni => x86::tile_vnni(fmt, w, rows, row_bytes, &xq, &mut t, y, n, m),
                    _ => x86::tile_avx2(fmt, w, rows, row_bytes, &xq, &mut t, y, n, m),
                }
            }
        }
    });
    ys
}

#[cfg(test)]
mod tests;
