//! Prompt rows on the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0): a quantized GEMM that computes every prompt row exactly as a
//! decode step would (`qdot`), reading each weight tile once for all rows.
//!
//! Per tile of eight weight rows, the blocks are unpacked once into a
//! scratch buffer laid out for the SIMD units: for each block, eight
//! vectors of 32 bytes, vector g holding quants 4g..4g+4 of rows 0..8 (one
//! i32 lane per row). One `vpdpbusd` (VNNI) or `maddubs`+`madd` (AVX2) of
//! such a vector with activation bytes 4g..4g+4 broadcast adds four
//! products to each row's lane, so after eight of them lane r holds row
//! r's exact integer block dot, with no horizontal sums. The tile is then
//! run against the prompt's rows four at a time; the rows' `d`s scale the
//! lanes as in `qdot`'s tile kernel.
//!
//! Same arithmetic as decode: the activations quantized by
//! `qdot::quantize_row`, the same exact integer block dots and the same
//! float operations in the same order, so a prompt row's outputs are bit
//! for bit those of `qdot::matmul_many` on the same path (tested). It is
//! not the exact f32 product on the dequantized weight (`ops::matmul`'s
//! `Precision::Exact`, what `expert perplexity` uses): the activations are
//! rounded to 8 bits per block, as llama.cpp also does for prompts.

use super::kquant::QK_K;
#[cfg(test)]
use super::qdot::round_away;
use super::qdot::{BlockQ8, Kind, Path, QK};
use candle_core::quantized::GgmlDType;

/// Weight rows per tile: one i32 lane each.
const TILE: usize = 8;
/// GEMM rows (two per prompt row) padded to a multiple of the widest pass.
const GROUP: usize = 8;
/// Quant bytes of one unpacked block of a tile.
const TILE_BLOCK: usize = TILE * QK;

/// The weight types this GEMM takes: `qdot`'s 32-element block kinds, and
/// the two k-quants of llama.cpp's Q4_K_M files, unpacked per 32 elements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Block(Kind),
    /// Per 32 elements: unsigned nibbles, d·sc and −dmin·m (as Q4_1's d, m).
    Q4K,
    /// Per 32 elements: signed q − 32, and a scale per 16 elements.
    Q6K,
}

impl Format {
    pub fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4K => Some(Format::Q4K),
            GgmlDType::Q6K => Some(Format::Q6K),
            t => Kind::of(t).map(Format::Block),
        }
    }

    /// Elements per stored block.
    const fn block_len(self) -> usize {
        match self {
            Format::Block(_) => QK,
            Format::Q4K | Format::Q6K => QK_K,
        }
    }

    const fn block_bytes(self) -> usize {
        match self {
            Format::Block(kind) => kind.block_bytes(),
            Format::Q4K => 144,
            Format::Q6K => 210,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Format::Block(kind) => kind.code(),
            Format::Q4K => 5,
            Format::Q6K => 6,
        }
    }

    const fn from_code(c: u8) -> Self {
        match c {
            5 => Format::Q4K,
            6 => Format::Q6K,
            c => Format::Block(Kind::from_code(c)),
        }
    }

    /// Whether a 32-element block carries a minimum (value = q·d + m).
    const fn has_min(self) -> bool {
        match self {
            Format::Block(kind) => kind.has_min(),
            Format::Q4K => true,
            Format::Q6K => false,
        }
    }
}

/// One unpacked tile, per 32-element block: the interleaved quants
/// (unsigned for the 4/5-bit kinds and Q4_K; Q8_0's offset by 128 on VNNI,
/// |w| on AVX2 with the signed weights kept in `signs`; Q6_K's signed), and
/// the eight rows' `d`, second `d` (Q6_K's second 16 elements), `m`, and
/// Q6_K's corrections 128·Σw per 16 elements (its activations are offset
/// by 128 to go in unsigned).
struct Tile {
    quants: Vec<u8>,
    signs: Vec<u8>,
    d: Vec<f32>,
    d2: Vec<f32>,
    m: Vec<f32>,
    corr: Vec<i32>,
}

impl Tile {
    fn new(blocks: usize) -> Self {
        Self {
            quants: vec![0; blocks * TILE_BLOCK],
            signs: vec![0; blocks * TILE_BLOCK],
            d: vec![0.0; blocks * TILE],
            d2: vec![0.0; blocks * TILE],
            m: vec![0.0; blocks * TILE],
            corr: vec![0; blocks * 2 * TILE],
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ8, Format, Kind, Tile, QK, TILE, TILE_BLOCK};
    use crate::ops::kquant::q4k_scales;
    use crate::ops::qdot::x86::weights;
    use half::f16;
    use std::arch::x86_64::*;

    fn f16_at(p: *const u8) -> f32 {
        // SAFETY (callers): p points at two bytes of a weight block.
        f16::from_bits(unsafe { (p as *const u16).read_unaligned() }).to_f32()
    }

    /// Stores block `b` of the tile from its eight rows' 32 quants each
    /// (dword g of `r[i]` = quants 4g..4g+4 of row i), transposed so that
    /// vector g holds dword g of every row; applies the format's storage
    /// (Q8_0's shift or |w| and signs, Q6_K's corrections).
    #[inline(always)]
    unsafe fn store_transposed<const F: u8, const VNNI: bool>(
        r: &[__m256i; TILE],
        t: &mut Tile,
        b: usize,
    ) {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        let g = [
            _mm256_permute2x128_si256(u0, u4, 0x20),
            _mm256_permute2x128_si256(u1, u5, 0x20),
            _mm256_permute2x128_si256(u2, u6, 0x20),
            _mm256_permute2x128_si256(u3, u7, 0x20),
            _mm256_permute2x128_si256(u0, u4, 0x31),
            _mm256_permute2x128_si256(u1, u5, 0x31),
            _mm256_permute2x128_si256(u2, u6, 0x31),
            _mm256_permute2x128_si256(u3, u7, 0x31),
        ];
        let fmt = Format::from_code(F);
        let q = t.quants.as_mut_ptr().add(b * TILE_BLOCK);
        let s = t.signs.as_mut_ptr().add(b * TILE_BLOCK);
        let mut corr = [_mm256_setzero_si256(); 2];
        for (j, v) in g.into_iter().enumerate() {
            let v = match (fmt, VNNI) {
                (Format::Block(Kind::Q8_0), true) => _mm256_xor_si256(v, _mm256_set1_epi8(-128)),
                (Format::Block(Kind::Q8_0), false) => {
                    _mm256_storeu_si256(s.add(j * QK) as *mut __m256i, v);
                    _mm256_sign_epi8(v, v)
                }
                (Format::Q6K, _) => {
                    // Σw of each row's 4 quants, exact in i32 lanes.
                    let sum = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_set1_epi8(1), v),
                        _mm256_set1_epi16(1),
                    );
                    corr[j / 4] = _mm256_add_epi32(corr[j / 4], sum);
                    v
                }
                _ => v,
            };
            _mm256_storeu_si256(q.add(j * QK) as *mut __m256i, v);
        }
        if fmt == Format::Q6K {
            let c = t.corr.as_mut_ptr().add(b * 2 * TILE);
            // 128·Σw for each of the two terms, in units of the pair's d:
            // 128·(254 + 1)·Σw.
            let k = _mm256_set1_epi32(128 * (super::RATIO + 1));
            _mm256_storeu_si256(c as *mut __m256i, _mm256_mullo_epi32(corr[0], k));
            _mm256_storeu_si256(c.add(TILE) as *mut __m256i, _mm256_mullo_epi32(corr[1], k));
        }
    }

    /// Unpacks `rows` (≤ 8) weight rows at `w` (`row_bytes` apart) into
    /// `t`; missing rows are zeros.
    ///
    /// SAFETY: `w` holds `rows` whole rows of `t`'s block count.
    #[inline(always)]
    unsafe fn unpack<const F: u8, const VNNI: bool>(
        w: *const u8,
        rows: usize,
        row_bytes: usize,
        t: &mut Tile,
    ) {
        let fmt = Format::from_code(F);
        let bytes = fmt.block_bytes();
        // Per stored block: its 32-element blocks' quants, by row.
        let mut v = [[_mm256_setzero_si256(); TILE]; 8];
        for sb in 0..row_bytes / bytes {
            let per = fmt.block_len() / QK;
            for i in 0..TILE {
                for j in 0..per {
                    let b = (sb * per + j) * TILE + i;
                    (t.d[b], t.d2[b], t.m[b]) = (0.0, 0.0, 0.0);
                }
                if i >= rows {
                    for vj in v.iter_mut().take(per) {
                        vj[i] = _mm256_setzero_si256();
                    }
                    continue;
                }
                let p = w.add(i * row_bytes + sb * bytes);
                let at = |j: usize| (sb * per + j) * TILE + i;
                match fmt {
                    Format::Block(kind) => {
                        v[0][i] = weights(kind, p);
                        t.d[at(0)] = f16_at(p);
                        if kind.has_min() {
                            t.m[at(0)] = f16_at(p.add(2));
                        }
                    }
                    Format::Q4K => {
                        let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
                        let (sc, mn) = q4k_scales(std::slice::from_raw_parts(p.add(4), 12));
                        let m4 = _mm256_set1_epi8(0x0F);
                        for c in 0..4 {
                            let raw = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                            v[2 * c][i] = _mm256_and_si256(raw, m4);
                            v[2 * c + 1][i] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                        }
                        for j in 0..8 {
                            t.d[at(j)] = d * sc[j] as f32;
                            t.m[at(j)] = -(dmin * mn[j] as f32);
                        }
                    }
                    Format::Q6K => {
                        let d = f16_at(p.add(208));
                        let sc = p.add(192) as *const i8;
                        let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
                        let c32 = _mm256_set1_epi8(32);
                        for h in 0..2 {
                            let a = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
                            let b = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
                            let hb = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                            // The high 2-bit pairs of the four 32-element blocks, as bits 4..6.
                            let h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4);
                            let h1 = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hb, 2), m3),
                                4,
                            );
                            let h2 = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hb, 4), m3),
                                4,
                            );
                            let h3 = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hb, 6), m3),
                                4,
                            );
                            let lo_a = _mm256_and_si256(a, m4);
                            let lo_b = _mm256_and_si256(b, m4);
                            let hi_a = _mm256_and_si256(_mm256_srli_epi16(a, 4), m4);
                            let hi_b = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
                            v[4 * h][i] = _mm256_sub_epi8(_mm256_or_si256(lo_a, h0), c32);
                            v[4 * h + 1][i] = _mm256_sub_epi8(_mm256_or_si256(lo_b, h1), c32);
                            v[4 * h + 2][i] = _mm256_sub_epi8(_mm256_or_si256(hi_a, h2), c32);
                            v[4 * h + 3][i] = _mm256_sub_epi8(_mm256_or_si256(hi_b, h3), c32);
                        }
                        for j in 0..8 {
                            t.d[at(j)] = d * *sc.add(2 * j) as f32;
                            t.d2[at(j)] = d * *sc.add(2 * j + 1) as f32;
                        }
                    }
                }
            }
            for (j, vj) in v.iter().enumerate().take(fmt.block_len() / QK) {
                store_transposed::<F, VNNI>(vj, t, sb * (fmt.block_len() / QK) + j);
            }
        }
    }

    /// Activation bytes 4g..4g+4 of `x`, in every lane.
    #[inline(always)]
    unsafe fn bcast(x: &BlockQ8, g: usize) -> __m256i {
        _mm256_set1_epi32((x.qs.as_ptr().add(4 * g) as *const i32).read_unaligned())
    }

    /// `acc` plus the four products per lane of quant vector `w` (signs at
    /// `s`) with activation bytes 4g..4g+4 of `x`. Q6_K's weights are the
    /// signed operand, its activations (offset by 128) the unsigned one.
    #[inline(always)]
    unsafe fn dot4<const F: u8, const VNNI: bool>(
        acc: __m256i,
        w: __m256i,
        s: *const u8,
        x: &BlockQ8,
        g: usize,
    ) -> __m256i {
        let fmt = Format::from_code(F);
        let xv = bcast(x, g);
        let (a, b) = if fmt == Format::Q6K { (xv, w) } else { (w, xv) };
        if VNNI {
            return _mm256_dpbusd_epi32(acc, a, b);
        }
        let b = if fmt == Format::Block(Kind::Q8_0) {
            _mm256_sign_epi8(b, _mm256_loadu_si256(s as *const __m256i))
        } else {
            b
        };
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }

    /// What the integer lanes count per unit of Σq_x beyond the true dot.
    #[inline(always)]
    const fn offset<const VNNI: bool>(fmt: Format) -> i32 {
        match fmt {
            Format::Block(Kind::Q8_0) if VNNI => 128,
            Format::Block(kind) => kind.offset(),
            Format::Q4K | Format::Q6K => 0,
        }
    }

    /// A prompt row's integer block dot from its two terms' lanes, in units
    /// of its `d`: 254·main + residual (`quantize_pair`).
    #[inline(always)]
    unsafe fn combine(main: __m256i, resid: __m256i) -> __m256i {
        _mm256_add_epi32(
            _mm256_mullo_epi32(main, _mm256_set1_epi32(super::RATIO)),
            resid,
        )
    }

    /// `acc` + f32(sumi)·(d_w·d_x): `qdot`'s tile kernel's float step.
    #[inline(always)]
    unsafe fn scale_add(acc: __m256, sumi: __m256i, d: __m256, xd: f32) -> __m256 {
        _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(sumi),
            _mm256_mul_ps(d, _mm256_set1_ps(xd)),
            acc,
        )
    }

    /// `G` GEMM rows (G/2 prompt rows, each its main term then its
    /// residual; at `x`, `blocks` apart) · the unpacked tile: each prompt
    /// row's eight outputs, its two terms summed, into `out`.
    // Index loops over the accumulators keep them in registers (fully
    // unrolled) with nothing between the intrinsics and the target features.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn group_dot<const F: u8, const VNNI: bool, const G: usize>(
        t: &Tile,
        x: *const BlockQ8,
        blocks: usize,
        out: &mut [__m256; 4],
    ) {
        let fmt = Format::from_code(F);
        let off = offset::<VNNI>(fmt);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [_mm256_setzero_ps(); 4];
        for b in 0..blocks {
            let q = t.quants.as_ptr().add(b * TILE_BLOCK);
            let s = t.signs.as_ptr().add(b * TILE_BLOCK);
            let mut sumi = [_mm256_setzero_si256(); G];
            let d = _mm256_loadu_ps(t.d.as_ptr().add(b * TILE));
            let corr = t.corr.as_ptr().add(b * 2 * TILE) as *const __m256i;
            for g in 0..TILE {
                if fmt == Format::Q6K && g == TILE / 2 {
                    // The first 16 elements, under their own scale.
                    let c = _mm256_loadu_si256(corr);
                    for p in 0..G / 2 {
                        let xm = &*x.add(2 * p * blocks + b);
                        let si = _mm256_sub_epi32(combine(sumi[2 * p], sumi[2 * p + 1]), c);
                        acc[p] = scale_add(acc[p], si, d, xm.d);
                    }
                    sumi = [_mm256_setzero_si256(); G];
                }
                let w = _mm256_loadu_si256(q.add(g * QK) as *const __m256i);
                let sg = s.add(g * QK);
                for r in 0..G {
                    sumi[r] = dot4::<F, VNNI>(sumi[r], w, sg, &*x.add(r * blocks + b), g);
                }
            }
            let (d, c) = if fmt == Format::Q6K {
                (
                    _mm256_loadu_ps(t.d2.as_ptr().add(b * TILE)),
                    _mm256_loadu_si256(corr.add(1)),
                )
            } else {
                (d, _mm256_setzero_si256())
            };
            let m = _mm256_loadu_ps(t.m.as_ptr().add(b * TILE));
            for p in 0..G / 2 {
                let xm = &*x.add(2 * p * blocks + b);
                let mut si = combine(sumi[2 * p], sumi[2 * p + 1]);
                if off != 0 {
                    si = _mm256_sub_epi32(si, _mm256_set1_epi32(off * xm.qsum));
                }
                if fmt == Format::Q6K {
                    si = _mm256_sub_epi32(si, c);
                }
                acc[p] = scale_add(acc[p], si, d, xm.d);
                if fmt.has_min() {
                    mins[p] = _mm256_fmadd_ps(m, _mm256_set1_ps(xm.s), mins[p]);
                }
            }
        }
        for p in 0..G / 2 {
            out[p] = _mm256_add_ps(acc[p], mins[p]);
        }
    }

    /// One tile (`rows` ≤ 8 weight rows at `w`) against every GEMM row of
    /// `x` (whole groups of `G`, `blocks` each): prompt row c's outputs go
    /// to `y` + c·n (while c < m), this tile's `rows` columns only.
    ///
    /// SAFETY: `y` holds m rows of n, with the tile's columns inside a row.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const F: u8, const VNNI: bool, const G: usize>(
        w: &[u8],
        rows: usize,
        row_bytes: usize,
        x: &[BlockQ8],
        t: &mut Tile,
        y: *mut f32,
        n: usize,
        m: usize,
    ) {
        unpack::<F, VNNI>(w.as_ptr(), rows, row_bytes, t);
        let blocks = t.d.len() / TILE;
        let mut ys = [_mm256_setzero_ps(); 4];
        for (pass, xs) in x.chunks_exact(G * blocks).enumerate() {
            group_dot::<F, VNNI, G>(t, xs.as_ptr(), blocks, &mut ys);
            for (p, v) in ys.iter().take(G / 2).enumerate() {
                let c = pass * G / 2 + p;
                if c >= m {
                    break;
                }
                let dst = y.add(c * n);
                if rows == TILE {
                    _mm256_storeu_ps(dst, *v);
                } else {
                    let mut tmp = [0f32; TILE];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, rows);
                }
            }
        }
    }

    macro_rules! entry {
        ($name:ident, $vnni:expr, $g:expr, $features:literal) => {
            /// SAFETY: the CPU has the target features; `w` holds `rows`
            /// rows of `row_bytes`, whole blocks of `fmt`; `x` is whole
            /// groups of GEMM rows (`GROUP`) of `t`'s 32-element block
            /// count; `y` holds m rows of n with the tile's columns inside.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                fmt: Format,
                w: &[u8],
                rows: usize,
                row_bytes: usize,
                x: &[BlockQ8],
                t: &mut Tile,
                y: *mut f32,
                n: usize,
                m: usize,
            ) {
                const F0: u8 = Format::Block(Kind::Q4_0).code();
                const F1: u8 = Format::Block(Kind::Q4_1).code();
                const F2: u8 = Format::Block(Kind::Q5_0).code();
                const F3: u8 = Format::Block(Kind::Q5_1).code();
                const F4: u8 = Format::Block(Kind::Q8_0).code();
                const F5: u8 = Format::Q4K.code();
                const F6: u8 = Format::Q6K.code();
                match fmt.code() {
                    F0 => tile::<F0, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                    F1 => tile::<F1, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                    F2 => tile::<F2, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                    F3 => tile::<F3, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                    F4 => tile::<F4, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                    F5 => tile::<F5, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                    _ => tile::<F6, $vnni, $g>(w, rows, row_bytes, x, t, y, n, m),
                }
            }
        };
    }
    // AVX2 has 16 vector registers: 4 GEMM rows a pass; AVX-512VL's 32
    // hold 8, halving the tile's loads per product.
    entry!(tile_avx2, false, 4, "avx2,fma,f16c");
    entry!(tile_vnni, true, 8, "avx2,fma,f16c,avx512vnni,avx512vl");
}

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

/// `quantize_pair` in AVX2, bit for bit (the same float operations, in
/// the same order, lane by lane).
///
/// SAFETY: the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_pair_avx2(x: &[f32], main: &mut [BlockQ8], resid: &mut [BlockQ8]) {
    use std::arch::x86_64::*;
    /// `round_away` on eight lanes, clamped to ±127.
    #[inline(always)]
    unsafe fn round8(t: __m256) -> __m256i {
        let ti = _mm256_cvttps_epi32(t);
        let frac = _mm256_sub_ps(t, _mm256_cvtepi32_ps(ti));
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5)));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5)));
        let q = _mm256_add_epi32(_mm256_sub_epi32(ti, up), down);
        _mm256_max_epi32(
            _mm256_min_epi32(q, _mm256_set1_epi32(127)),
            _mm256_set1_epi32(-127),
        )
    }
    /// 32 i32 lanes (four vectors, in order) → 32 i8 at `out`.
    #[inline(always)]
    unsafe fn pack(q: [__m256i; 4], out: *mut i8) {
        let ab = _mm256_packs_epi32(q[0], q[1]);
        let cd = _mm256_packs_epi32(q[2], q[3]);
        let v = _mm256_packs_epi16(ab, cd);
        let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out as *mut __m256i, v);
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for ((xs, a), b) in x.chunks_exact(QK).zip(main).zip(resid) {
        let p = xs.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
            _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d1 = amax / 127.0;
        let id1 = if d1 != 0.0 { 1.0 / d1 } else { 0.0 };
        let id2 = RATIO as f32 * id1;
        let (vd1, vid1, vid2) = (_mm256_set1_ps(d1), _mm256_set1_ps(id1), _mm256_set1_ps(id2));
        let mut q1 = [_mm256_setzero_si256(); 4];
        let mut q2 = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            q1[i] = round8(_mm256_mul_ps(v[i], vid1));
            let r = _mm256_sub_ps(v[i], _mm256_mul_ps(vd1, _mm256_cvtepi32_ps(q1[i])));
            q2[i] = round8(_mm256_mul_ps(r, vid2));
        }
        let s1 = hsum(_mm256_add_epi32(
            _mm256_add_epi32(q1[0], q1[1]),
            _mm256_add_epi32(q1[2], q1[3]),
        ));
        let s2 = hsum(_mm256_add_epi32(
            _mm256_add_epi32(q2[0], q2[1]),
            _mm256_add_epi32(q2[2], q2[3]),
        ));
        pack(q1, a.qs.as_mut_ptr());
        pack(q2, b.qs.as_mut_ptr());
        let qsum = RATIO * s1 + s2;
        let d = d1 / RATIO as f32;
        (a.d, a.s, a.qsum) = (d, d * qsum as f32, qsum);
        (b.d, b.s, b.qsum) = (0.0, 0.0, 0);
    }
}

/// y = x·Wᵀ for several weights of one format that read the same `x`
/// (m, k) f32 rows, each row as two 8-bit terms; returns each (m, n_i).
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
    let _ = (fmt, ws, k, x);
    None
}

#[cfg(target_arch = "x86_64")]
fn tiled(path: Path, fmt: Format, ws: &[(&[u8], usize)], k: usize, x: &[f32]) -> Vec<Vec<f32>> {
    let blocks = k / QK;
    let row_bytes = k / fmt.block_len() * fmt.block_bytes();
    // Invariants of a loaded weight (GGUF and quantize-at-load check row
    // lengths): every row holds whole blocks.
    assert!(k.is_multiple_of(fmt.block_len()) && x.len().is_multiple_of(k));
    assert!(ws.iter().all(|(w, n)| w.len() == n * row_bytes));
    let m = x.len() / k;
    // Every prompt row as two 8-bit rows (`quantize_pair`: row 2i its
    // main term, 2i + 1 the residual), quantized once, spread over the
    // pool; padded with zero rows to groups of 4.
    let padded = (2 * m).div_ceil(GROUP) * GROUP;
    let mut xq = vec![BlockQ8::ZERO; padded * blocks];
    {
        struct Rows(*mut BlockQ8);
        // SAFETY: each row index goes to exactly one thread, and its two
        // rows are disjoint `blocks`-long chunks of `xq`.
        unsafe impl Sync for Rows {}
        let rows = Rows(xq.as_mut_ptr());
        super::pool::for_ranges(m, |range| {
            let rows = &rows;
            for i in range {
                // SAFETY: 2i + 1 < 2m ≤ padded: both rows lie inside `xq`.
                let (main, resid) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(rows.0.add(2 * i * blocks), blocks),
                        std::slice::from_raw_parts_mut(rows.0.add((2 * i + 1) * blocks), blocks),
                    )
                };
                // SAFETY: `tiled` runs on the SIMD paths only, which have AVX2.
                unsafe { quantize_pair_avx2(&x[i * k..(i + 1) * k], main, resid) };
                if fmt == Format::Q6K {
                    // Q6_K's activations go in as the unsigned operand.
                    for b in main.iter_mut().chain(resid.iter_mut()) {
                        b.qs.iter_mut().for_each(|q| *q ^= i8::MIN);
                    }
                }
            }
        });
    }
    let tiles: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(wi, &(_, n))| (0..n).step_by(TILE).map(move |r| (wi, r)))
        .collect();
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    /// The outputs, written by the pool's workers at disjoint columns.
    struct Out(Vec<*mut f32>);
    // SAFETY: each tile writes only its own columns r..r+8 of its weight's
    // output, and each tile index goes to exactly one thread.
    unsafe impl Sync for Out {}
    let out = Out(ys.iter_mut().map(|y| y.as_mut_ptr()).collect());
    super::pool::for_ranges(tiles.len(), |range| {
        let out = &out;
        let mut t = Tile::new(blocks);
        for &(wi, r) in &tiles[range] {
            let (w, n) = ws[wi];
            let rows = TILE.min(n - r);
            let w = &w[r * row_bytes..(r + rows) * row_bytes];
            // SAFETY: Avx2/Vnni are only chosen when the CPU has their
            // features; the asserts above give whole blocks and rows; the
            // tile writes only its own columns r..r+rows of output wi.
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
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Every format on every SIMD path, several weights at once: each
    /// output equals, within 1e-5·Σ|w·x̂|, the f64 dot of the dequantized
    /// weight row with x̂, the two 8-bit terms `quantize_pair` makes (the
    /// integer dots, scales, minimums and offsets are exact; only float
    /// order differs); and the f64 dot with the f32 activations within
    /// their remaining rounding (Σ|w|·d₂/2 per block). Partial tiles (579,
    /// 13 rows), 256- to 3072-wide rows, 1 to 128 prompt rows.
    #[test]
    fn every_format_equals_the_dequantized_dot_within_the_two_term_rounding() {
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let fmt = Format::of(t).unwrap();
            for (ns, k, m) in [
                (vec![579, 13], 256, 5),
                (vec![64], 3072, 16),
                (vec![40, 24], 1024, 1),
                (vec![32], 512, 128),
            ] {
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
                let ws: Vec<(&[u8], usize)> =
                    data.iter().zip(&ns).map(|(d, &n)| (&d[..], n)).collect();
                // x̂ and each block's residual step d₂, per prompt row.
                let (mut main, mut resid) =
                    (vec![BlockQ8::ZERO; k / QK], vec![BlockQ8::ZERO; k / QK]);
                let (mut xh, mut d2) = (Vec::new(), Vec::new());
                for xi in x.chunks_exact(k) {
                    quantize_pair(xi, &mut main, &mut resid);
                    for (a, b) in main.iter().zip(&resid) {
                        for (qa, qb) in a.qs.iter().zip(&b.qs) {
                            xh.push(a.d as f64 * (RATIO as f64 * *qa as f64 + *qb as f64));
                        }
                        d2.push(a.d as f64);
                    }
                }
                for path in Path::available() {
                    let Some(got) = matmul_many(path, fmt, &ws, k, &x) else {
                        assert_eq!(path, Path::Scalar);
                        continue;
                    };
                    for (wi, &n) in ns.iter().enumerate() {
                        for i in 0..m {
                            for r in 0..n {
                                let wr = &deq[wi][r * k..(r + 1) * k];
                                let xr = &xh[i * k..(i + 1) * k];
                                let xf = &x[i * k..(i + 1) * k];
                                let y = got[wi][i * n + r] as f64;
                                let what = format!("{t:?} {path:?} n={n} k={k} m={m} ({i}, {r})");
                                let dot: f64 = wr.iter().zip(xr).map(|(&w, x)| w as f64 * x).sum();
                                let mag: f64 =
                                    wr.iter().zip(xr).map(|(&w, x)| (w as f64 * x).abs()).sum();
                                assert!(
                                    (y - dot).abs() <= 1e-5 * mag + 1e-6,
                                    "{what}: {y} vs {dot}"
                                );
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
    /// rounding) with d = max|x|/(127·254); the AVX2 quantizer is the
    /// scalar one bit for bit, on ordinary, tiny, zero and huge blocks.
    #[test]
    fn quantize_pair_keeps_fifteen_bits_and_avx2_equals_scalar() {
        let mut x = crate::ops::test_values(4096, 9);
        x[64..96].iter_mut().for_each(|v| *v = 0.0);
        x[96..128].iter_mut().for_each(|v| *v *= 1e-30);
        x[128..160].iter_mut().for_each(|v| *v *= 3e30);
        x[160] = 0.5;
        let (mut a, mut b) = (vec![BlockQ8::ZERO; 128], vec![BlockQ8::ZERO; 128]);
        quantize_pair(&x, &mut a, &mut b);
        for (j, xs) in x.chunks_exact(QK).enumerate() {
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
            unsafe { quantize_pair_avx2(&x, &mut a2, &mut b2) };
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
}
