//! Quantized weights × f32 activations for a few rows (decode): our own
//! kernels for the 32-element block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! candle 0.11 has only scalar dot products for Q4_1/Q5_0/Q5_1 (79 % of
//! SmolLM2 Q4_1 decode time under perf), and its AVX2 Q4_0/Q8_0 ones spend
//! their time in a per-block horizontal sum and a non-inlined f16→f32 call
//! (Qwen3-0.6B Q4_0: 56 % of decode in `vec_dot_q4_0_q8_0`, 7 % in
//! `f16_to_f32`). Here the activations are quantized to 8 bits as candle's
//! `BlockQ8_1::from_float` / `BlockQ8_0::from_float` do; each block's
//! integer dot runs in SIMD and is summed exactly in i32 lanes, scaled by
//! `d_w·d_x` into eight f32 lanes that are reduced once per row.
//!
//! Paths, chosen at run time: AVX-512 VNNI (`vpdpbusd`, 256-bit), AVX2 with
//! FMA and F16C, and a scalar reference that computes exactly what candle's
//! scalar `vec_dot_unopt` computes (bit-identical; the SIMD paths differ
//! from it only in float summation order, tested within 1e-5 of Σ|w·x|).
//! The SIMD paths take eight weight rows per tile (their lanes reduced and
//! scaled together) and prefetch the next tile: one core's hardware
//! prefetcher alone streamed the weights from DRAM at a third of the speed
//! the kernel computes them from cache.
//!
//! Block layouts (ggml, 32 elements each; for the 4/5-bit types element
//! e < 16 is the low nibble of byte e, element e ≥ 16 the high nibble of
//! byte e−16; Q5's fifth bit of element e is bit e of `qh`):
//! - Q4_0 (18 bytes): f16 d, 16 × nibbles; value = (q − 8)·d
//! - Q4_1 (20 bytes): f16 d, f16 m, 16 × nibbles; value = q·d + m
//! - Q5_0 (22 bytes): f16 d, u32 qh, 16 × nibbles; value = (q − 16)·d
//! - Q5_1 (24 bytes): f16 d, f16 m, u32 qh, 16 × nibbles; value = q·d + m
//! - Q8_0 (34 bytes): f16 d, 32 × i8; value = q·d

use super::ReadOrder;
use candle_core::quantized::GgmlDType;
use half::f16;

/// Elements per block.
pub const QK: usize = 32;
/// Weight rows the tile kernels compute together.
const TILE: usize = 8;

/// The weight types these kernels handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Kind {
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_0 => Some(Kind::Q4_0),
            GgmlDType::Q4_1 => Some(Kind::Q4_1),
            GgmlDType::Q5_0 => Some(Kind::Q5_0),
            GgmlDType::Q5_1 => Some(Kind::Q5_1),
            GgmlDType::Q8_0 => Some(Kind::Q8_0),
            _ => None,
        }
    }

    pub const fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
            Kind::Q5_1 => 24,
            Kind::Q8_0 => 34,
        }
    }

    /// Offsets of (qh, quants) in a block; qh is present for Q5 only.
    pub(super) const fn layout(self) -> (Option<usize>, usize) {
        match self {
            Kind::Q4_0 => (None, 2),
            Kind::Q4_1 => (None, 4),
            Kind::Q5_0 => (Some(2), 6),
            Kind::Q5_1 => (Some(4), 8),
            Kind::Q8_0 => (None, 2),
        }
    }

    /// Whether a block carries a minimum `m` (value = q·d + m).
    pub(super) const fn has_min(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1)
    }

    /// What is subtracted from the stored unsigned quant (value = (q − off)·d).
    pub(super) const fn offset(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            _ => 0,
        }
    }

    pub(super) const fn code(self) -> u8 {
        self as u8
    }

    pub(super) const fn from_code(c: u8) -> Self {
        match c {
            0 => Kind::Q4_0,
            1 => Kind::Q4_1,
            2 => Kind::Q5_0,
            3 => Kind::Q5_1,
            _ => Kind::Q8_0,
        }
    }
}

/// One block of 8-bit activations, as candle's `BlockQ8_1` (and `BlockQ8_0`,
/// whose `d` and `qs` are the same numbers).
#[derive(Clone, Copy)]
pub struct BlockQ8 {
    /// candle's f16 `d` and `s` (= d·Σq), widened once here instead of for
    /// every weight row.
    pub(super) d: f32,
    pub(super) s: f32,
    /// Σq, for the offsets of Q4_0/Q5_0 (and of Q8_0 on the VNNI path).
    pub(super) qsum: i32,
    pub(super) qs: [i8; QK],
}

impl BlockQ8 {
    /// A block of zeros (padding rows of `qgemm`).
    pub(super) const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qsum: 0,
        qs: [0; QK],
    };
}

/// Quantizes one row of activations (a multiple of 32) as candle's
/// `quantize_row_q8_1` does.
pub fn quantize_row(x: &[f32], out: &mut Vec<BlockQ8>) {
    out.clear();
    out.resize(x.len() / QK, BlockQ8::ZERO);
    quantize_into(x, out);
}

/// `quantize_row` into `out` (one block per 32 elements of `x`): the
/// elements in AVX2 where the CPU has it (bit-identical to the scalar
/// reference, `quantize_block`; 0.4 ms of a q8_0 token was spent here in
/// scalar code), each block's scales in scalar.
pub(super) fn quantize_into(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if Path::detect() != Path::Scalar {
        for (xs, o) in x.chunks_exact(QK).zip(out) {
            // SAFETY: Avx2/Vnni paths are only detected with AVX2 and FMA;
            // `xs` is one whole block.
            let (amax, qs, sum) = unsafe { x86::quantize_block(xs) };
            *o = block_from(amax, qs, sum);
        }
        return;
    }
    for (xs, o) in x.chunks_exact(QK).zip(out) {
        *o = quantize_block(xs);
    }
}

/// The scalar reference for one block of 32 activations.
fn quantize_block(xs: &[f32]) -> BlockQ8 {
    let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let id = inverse_scale(amax);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = round_away(v * id) as i8;
    }
    let sum = qs.iter().map(|&q| q as i32).sum::<i32>();
    block_from(amax, qs, sum)
}

/// 1/d for the block's scale d = amax/127 (0 for an all-zero block).
fn inverse_scale(amax: f32) -> f32 {
    let d = amax / 127.0;
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// A block from its largest |x|, quants and their sum: d and s rounded
/// through f16 as candle's `BlockQ8_1` stores them.
fn block_from(amax: f32, qs: [i8; QK], sum: i32) -> BlockQ8 {
    let dh = f16::from_f32(amax / 127.0);
    BlockQ8 {
        d: dh.to_f32(),
        s: (f16::from_f32(sum as f32) * dh).to_f32(),
        qsum: sum,
        qs,
    }
}

/// `f32::round` (half away from zero) for |v| ≤ 128, without the libm call
/// `round` compiles to on baseline x86-64: the truncation is exact, and so
/// is `v − t`.
#[inline(always)]
pub(super) fn round_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn qh_at(b: &[u8], at: Option<usize>) -> u32 {
    at.map_or(0, |i| {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    })
}

/// Σ q_w·q_x over one block's quants (`qs` from the quant offset), scalar:
/// the reference every SIMD path is tested against. Unsigned q_w for the
/// 4/5-bit kinds (0..16, or 0..32 with the fifth bits), signed for Q8_0.
fn block_sumi_scalar(kind: Kind, qs: &[u8], qh: u32, x: &[i8; QK]) -> i32 {
    if kind == Kind::Q8_0 {
        return qs[..QK]
            .iter()
            .zip(x)
            .map(|(&w, &x)| w as i8 as i32 * x as i32)
            .sum();
    }
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        let v0 = (qs[j] & 0x0F) as i32 | (((qh >> j) & 1) << 4) as i32;
        let v1 = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
        sumi += v0 * x[j] as i32 + v1 * x[j + QK / 2] as i32;
    }
    sumi
}

fn row_dot_scalar(kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
    let (qh_off, qs_off) = kind.layout();
    let mut sumf = 0f32;
    for (b, xb) in w.chunks_exact(kind.block_bytes()).zip(x) {
        let sumi = block_sumi_scalar(kind, &b[qs_off..], qh_at(b, qh_off), &xb.qs);
        let d = f16_at(b, 0);
        // candle's float order, block by block.
        sumf += if kind.has_min() {
            sumi as f32 * d * xb.d + f16_at(b, 2) * xb.s
        } else {
            (sumi - kind.offset() * xb.qsum) as f32 * d * xb.d
        };
    }
    sumf
}

/// For each byte value, the 8 bytes 0x10 or 0 its bits select: the Q5 fifth
/// bits of 8 elements, ready to OR onto their nibbles.
#[cfg(target_arch = "x86_64")]
static HIGH_BITS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut bit = 0;
        while bit < 8 {
            if (b >> bit) & 1 == 1 {
                t[b] |= 0x10u64 << (8 * bit);
            }
            bit += 1;
        }
        b += 1;
    }
    t
};

#[cfg(target_arch = "x86_64")]
pub(super) mod x86;

/// Which kernels to use; picked once per call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Path {
    /// The fastest path this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let cap = super::simd_cap();
        #[cfg(target_arch = "x86_64")]
        if cap >= super::SimdCap::Avx2
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if cap == super::SimdCap::Native
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
            {
                return Path::Vnni;
            }
            return Path::Avx2;
        }
        Path::Scalar
    }

    /// Every path this CPU can run, scalar first (for the tests).
    #[cfg(test)]
    pub fn available() -> Vec<Self> {
        let mut v = vec![Path::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(Path::detect(), Path::Avx2 | Path::Vnni) {
                v.push(Path::Avx2);
            }
            if Path::detect() == Path::Vnni {
                v.push(Path::Vnni);
            }
        }
        v
    }

    /// One block's exact integer dot Σ (q_w − offset)·q_x on this path
    /// (the SIMD-vs-scalar unit test's probe).
    #[cfg(test)]
    fn block_sumi(self, kind: Kind, b: &[u8], xb: &BlockQ8) -> i32 {
        let (qh_off, qs_off) = kind.layout();
        match self {
            Path::Scalar => {
                block_sumi_scalar(kind, &b[qs_off..], qh_at(b, qh_off), &xb.qs)
                    - kind.offset() * xb.qsum
            }
            // SAFETY: these paths are only listed when the CPU has them.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::block_sumi_avx2(kind, b, xb) },
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { x86::block_sumi_vnni(kind, b, xb) },
        }
    }

    /// `out.len()` consecutive weight rows (`w`, `row_bytes` each) · one
    /// quantized activation row: Q8_0 in `ReadOrder::Sequential` as one
    /// stream, everything else eight rows at a time where the path has a
    /// tile kernel, the rows past the last whole tile one by one.
    fn rows_dot(
        self,
        order: ReadOrder,
        kind: Kind,
        w: &[u8],
        row_bytes: usize,
        x: &[BlockQ8],
        out: &mut [f32],
    ) {
        // SAFETY (all four): as in `row_dot`; w is out.len() whole rows (the
        // caller's slice), 8 per tile.
        #[cfg(target_arch = "x86_64")]
        if kind == Kind::Q8_0 && order == ReadOrder::Sequential {
            match self {
                Path::Avx2 => return unsafe { x86::seq_dot_q8_0_avx2(w, row_bytes, x, out) },
                Path::Vnni => return unsafe { x86::seq_dot_q8_0_vnni(w, row_bytes, x, out) },
                Path::Scalar => {}
            }
        }
        // Rows the tile kernels computed (all whole tiles, on a SIMD path).
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if self != Path::Scalar {
            for (i, y) in out.chunks_exact_mut(TILE).enumerate() {
                let w = &w[i * TILE * row_bytes..(i + 1) * TILE * row_bytes];
                match self {
                    Path::Avx2 => unsafe { x86::tile_dot_avx2(kind, w, row_bytes, x, y) },
                    Path::Vnni => unsafe { x86::tile_dot_vnni(kind, w, row_bytes, x, y) },
                    Path::Scalar => {}
                }
                done += TILE;
            }
        }
        for (r, y) in out.iter_mut().enumerate().skip(done) {
            *y = self.row_dot(kind, &w[r * row_bytes..(r + 1) * row_bytes], x);
        }
    }

    /// One weight row · one quantized activation row.
    fn row_dot(self, kind: Kind, w: &[u8], x: &[BlockQ8]) -> f32 {
        match self {
            Path::Scalar => row_dot_scalar(kind, w, x),
            // SAFETY: Avx2/Vnni are only chosen when the CPU has their
            // features; `matmul_many` checked the row holds x.len() blocks.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::row_dot_avx2(kind, w, x) },
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { x86::row_dot_vnni(kind, w, x) },
        }
    }
}

/// y = x·Wᵀ for `x` (m, k) row-major f32 and `w` the raw bytes of an (n, k)
/// weight of `kind`; returns (m, n) row-major.
/// (The tests' single-weight entry point.)
#[cfg(test)]
pub fn matmul(
    path: Path,
    order: ReadOrder,
    kind: Kind,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Vec<f32> {
    matmul_many(path, order, kind, &[(w, n)], k, x)
        .pop()
        .unwrap_or_default()
}

/// `matmul` for several weights of one kind that read the same `x`: each
/// activation row is quantized once, and all weights' rows run in one pool
/// job, read in `order`. Returns each (m, n_i).
pub fn matmul_many(
    path: Path,
    order: ReadOrder,
    kind: Kind,
    ws: &[(&[u8], usize)],
    k: usize,
    x: &[f32],
) -> Vec<Vec<f32>> {
    let row_bytes = k / QK * kind.block_bytes();
    // Invariants of a loaded weight (GGUF and quantize-at-load check row
    // lengths); the SIMD paths rely on every row holding k/32 whole blocks.
    assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * row_bytes));
    let m = x.len() / k;
    // Work items: tiles of up to 8 rows, numbered weight after weight;
    // weight w's tiles start at `starts[w]`. Each tile writes its rows of
    // the output straight into that weight's output (no staging buffer:
    // the lm_head's 151,936 rows made one, and a table of its tiles, on
    // every token).
    let mut starts = Vec::with_capacity(ws.len());
    let mut total = 0;
    for &(_, n) in ws {
        starts.push(total);
        total += n.div_ceil(TILE);
    }
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    let mut xq = Vec::with_capacity(k / QK);
    /// One output row, written by the pool's workers at disjoint tiles.
    struct Out(*mut f32);
    // SAFETY: every tile covers its own rows of one output, and each tile
    // index goes to exactly one thread.
    unsafe impl Sync for Out {}
    for (i, xi) in x.chunks_exact(k).enumerate() {
        quantize_row(xi, &mut xq);
        let xq = &xq;
        let outs: Vec<Out> = (ys.iter_mut().zip(ws))
            .map(|(y, &(_, n))| Out(y[i * n..(i + 1) * n].as_mut_ptr()))
            .collect();
        order.for_ranges(total, |range| {
            let (mut wi, mut t) = (0, range.start);
            // The range's tiles weight by weight: one call per weight's run.
            while t < range.end {
                while wi + 1 < starts.len() && starts[wi + 1] <= t {
                    wi += 1;
                }
                let end = starts.get(wi + 1).map_or(range.end, |&s| s.min(range.end));
                let (w, n) = ws[wi];
                let r = (t - starts[wi]) * TILE;
                let r_end = ((end - starts[wi]) * TILE).min(n);
                // SAFETY: r < r_end ≤ n, the length of this output row; these
                // tiles' rows only.
                let y = unsafe { std::slice::from_raw_parts_mut(outs[wi].0.add(r), r_end - r) };
                let rows = &w[r * row_bytes..r_end * row_bytes];
                path.rows_dot(order, kind, rows, row_bytes, xq, y);
                t = end;
            }
        });
    }
    ys
}

#[cfg(test)]
mod tests;
