//! The SIMD kernels of `qgemm` (AVX2, AVX-512 VNNI): unpacking a tile,
//! the GEMM passes, and the activation quantizer.

use super::{BlockQ8, Format, Kind, Tile, QK};
use crate::ops::kquant::q4k_scales;
use crate::ops::qdot::x86::{lanes_sum, weights};
use std::arch::x86_64::*;

/// Requests `bytes` into L2, one cache line at a time.
pub fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch never faults; the address is inside `bytes`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) };
    }
}

/// The f16 at `p`, widened with F16C in line (`half`'s conversion is a
/// call per value, 4 % of a prompt's time).
///
/// SAFETY: p points at two bytes of a weight block; the caller has F16C.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned() as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// Stores rows 8h..8h+8 of block `b` of the tile from their 32 quants
/// each (dword g of `r[i]` = quants 4g..4g+4 of row 8h + i), transposed so
/// that vector g (4·width bytes) holds dword g of every row; applies the
/// format's storage (Q8_0's shift or |w| and signs, Q6_K's corrections).
#[inline(always)]
unsafe fn store_transposed<const F: u8, const VNNI: bool>(
    r: &[__m256i],
    t: &mut Tile,
    b: usize,
    h: usize,
) {
    let width = t.rows;
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
    let q = t.quants.as_mut_ptr().add(b * width * QK + 32 * h);
    let s = t.signs.as_mut_ptr().add(b * width * QK + 32 * h);
    let mut corr = [_mm256_setzero_si256(); 2];
    for (j, v) in g.into_iter().enumerate() {
        let v = match (fmt, VNNI) {
            (Format::Block(Kind::Q8_0), true) => _mm256_xor_si256(v, _mm256_set1_epi8(-128)),
            (Format::Block(Kind::Q8_0), false) => {
                _mm256_storeu_si256(s.add(j * 4 * width) as *mut __m256i, v);
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
        _mm256_storeu_si256(q.add(j * 4 * width) as *mut __m256i, v);
    }
    if fmt == Format::Q6K {
        let c = t.corr.as_mut_ptr().add(b * 2 * width + 8 * h);
        // 128·Σw for each of the two terms, in units of the pair's d:
        // 128·(254 + 1)·Σw.
        let k = _mm256_set1_epi32(128 * (super::RATIO + 1));
        _mm256_storeu_si256(c as *mut __m256i, _mm256_mullo_epi32(corr[0], k));
        _mm256_storeu_si256(c.add(width) as *mut __m256i, _mm256_mullo_epi32(corr[1], k));
    }
}

/// Unpacks `rows` (≤ `t`'s width, 8 or 16) weight rows at `w`
/// (`row_bytes` apart) into `t`; missing rows are zeros.
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
    let width = t.rows;
    // Per stored block: its 32-element blocks' quants, by row.
    let mut v = [[_mm256_setzero_si256(); 16]; 8];
    for sb in 0..row_bytes / bytes {
        let per = fmt.block_len() / QK;
        for i in 0..width {
            if i >= rows {
                // Missing rows: zeros (their outputs are not stored).
                for j in 0..per {
                    let b = (sb * per + j) * width + i;
                    (t.d[b], t.d2[b], t.m[b]) = (0.0, 0.0, 0.0);
                }
                for vj in v.iter_mut().take(per) {
                    vj[i] = _mm256_setzero_si256();
                }
                continue;
            }
            let p = w.add(i * row_bytes + sb * bytes);
            let at = |j: usize| (sb * per + j) * width + i;
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
                        let h1 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4);
                        let h2 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4);
                        let h3 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4);
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
            for h in 0..width / 8 {
                let blk = sb * (fmt.block_len() / QK) + j;
                store_transposed::<F, VNNI>(&vj[8 * h..8 * h + 8], t, blk, h);
            }
        }
    }
}

/// The vector operations of one tile width: R weight rows, one i32 or
/// f32 lane each. `Ymm` (8 rows, AVX2) and `Zmm` (16 rows, AVX-512) run
/// the same per-lane arithmetic, so they give the same outputs bit for
/// bit.
trait Lanes {
    const R: usize;
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    unsafe fn load_i(p: *const u8) -> Self::I;
    unsafe fn load_f(p: *const f32) -> Self::F;
    unsafe fn set1_i(v: i32) -> Self::I;
    unsafe fn set1_f(v: f32) -> Self::F;
    unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub_i(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn mullo_i(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn cvt(a: Self::I) -> Self::F;
    unsafe fn mul_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn add_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `acc` plus the four products per lane of unsigned `a` and signed
    /// `b`; without VNNI (`Ymm` only) through `maddubs`, with `b`'s signs
    /// taken from `s` first for Q8_0 (|w| is stored).
    unsafe fn dot4<const VNNI: bool, const SIGNS: bool>(
        acc: Self::I,
        a: Self::I,
        b: Self::I,
        s: *const u8,
    ) -> Self::I;
    /// The first `rows` lanes of `v` to `dst`.
    unsafe fn store_f(dst: *mut f32, v: Self::F, rows: usize);
}

struct Ymm;
struct Zmm;

impl Lanes for Ymm {
    const R: usize = 8;
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn set1_i(v: i32) -> __m256i {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn set1_f(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn add_f(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn dot4<const VNNI: bool, const SIGNS: bool>(
        acc: __m256i,
        a: __m256i,
        b: __m256i,
        s: *const u8,
    ) -> __m256i {
        if VNNI {
            return _mm256_dpbusd_epi32(acc, a, b);
        }
        let b = if SIGNS {
            _mm256_sign_epi8(b, _mm256_loadu_si256(s as *const __m256i))
        } else {
            b
        };
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }
    #[inline(always)]
    unsafe fn store_f(dst: *mut f32, v: __m256, rows: usize) {
        if rows == 8 {
            _mm256_storeu_ps(dst, v);
        } else {
            let mut tmp = [0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, rows);
        }
    }
}

impl Lanes for Zmm {
    const R: usize = 16;
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const __m512i)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn set1_i(v: i32) -> __m512i {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn set1_f(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn add_f(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn dot4<const VNNI: bool, const SIGNS: bool>(
        acc: __m512i,
        a: __m512i,
        b: __m512i,
        _s: *const u8,
    ) -> __m512i {
        // Only the VNNI entry instantiates 16-row tiles.
        debug_assert!(VNNI);
        _mm512_dpbusd_epi32(acc, a, b)
    }
    #[inline(always)]
    unsafe fn store_f(dst: *mut f32, v: __m512, rows: usize) {
        _mm512_mask_storeu_ps(dst, ((1u32 << rows) - 1) as __mmask16, v);
    }
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
unsafe fn combine<L: Lanes>(main: L::I, resid: L::I) -> L::I {
    L::add_i(L::mullo_i(main, L::set1_i(super::RATIO)), resid)
}

/// `acc` + f32(sumi)·(d_w·d_x): `qdot`'s tile kernel's float step.
#[inline(always)]
unsafe fn scale_add<L: Lanes>(acc: L::F, sumi: L::I, d: L::F, xd: f32) -> L::F {
    L::fmadd(L::cvt(sumi), L::mul_f(d, L::set1_f(xd)), acc)
}

/// One prompt row's block into its outputs: its two terms' integer lanes
/// combined, the format's offset (`off`·Σq_x) and correction (`corr`)
/// removed, scaled by d_w·d_x into `acc`; the minimum term m_w·s_x into
/// `mins`. The float steps of `qdot`'s tile kernel, in its order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn add_block<const F: u8, const VNNI: bool, L: Lanes>(
    acc: &mut L::F,
    mins: &mut L::F,
    main: L::I,
    resid: L::I,
    corr: Option<L::I>,
    d: L::F,
    m: L::F,
    xm: &BlockQ8,
) {
    let fmt = Format::from_code(F);
    let off = offset::<VNNI>(fmt);
    let mut si = combine::<L>(main, resid);
    if off != 0 {
        si = L::sub_i(si, L::set1_i(off * xm.qsum));
    }
    if let Some(c) = corr {
        si = L::sub_i(si, c);
    }
    *acc = scale_add::<L>(*acc, si, d, xm.d);
    if fmt.has_min() {
        *mins = L::fmadd(m, L::set1_f(xm.s), *mins);
    }
}

/// `G` GEMM rows (G/2 prompt rows, each its main term then its
/// residual; at `x`, `blocks` apart) · the unpacked tile: each prompt
/// row's R outputs, its two terms summed, into `out`.
// Index loops over the accumulators keep them in registers (fully
// unrolled) with nothing between the intrinsics and the target features.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn group_dot<const F: u8, const VNNI: bool, const G: usize, L: Lanes>(
    t: &Tile,
    x: *const BlockQ8,
    blocks: usize,
    out: &mut [L::F; 4],
) {
    let fmt = Format::from_code(F);
    let signs = fmt == Format::Block(Kind::Q8_0) && !VNNI;
    let r = L::R;
    let mut acc = [L::zero_f(); 4];
    let mut mins = [L::zero_f(); 4];
    for b in 0..blocks {
        let q = t.quants.as_ptr().add(b * r * QK);
        let s = t.signs.as_ptr().add(b * r * QK);
        let mut sumi = [L::zero_i(); G];
        let d = L::load_f(t.d.as_ptr().add(b * r));
        let m = L::load_f(t.m.as_ptr().add(b * r));
        let corr = t.corr.as_ptr().add(b * 2 * r) as *const u8;
        for g in 0..QK / 4 {
            if fmt == Format::Q6K && g == QK / 8 {
                // The first 16 elements, under their own scale.
                let c = Some(L::load_i(corr));
                for p in 0..G / 2 {
                    let xm = &*x.add(2 * p * blocks + b);
                    let (main, resid) = (sumi[2 * p], sumi[2 * p + 1]);
                    add_block::<F, VNNI, L>(&mut acc[p], &mut mins[p], main, resid, c, d, m, xm);
                }
                sumi = [L::zero_i(); G];
            }
            let w = L::load_i(q.add(g * 4 * r));
            let sg = s.add(g * 4 * r);
            for i in 0..G {
                // Activation bytes 4g..4g+4 of GEMM row i, in every lane.
                let xq = &(*x.add(i * blocks + b)).qs;
                let xv = L::set1_i((xq.as_ptr().add(4 * g) as *const i32).read_unaligned());
                // Q6_K's weights are the signed operand, its activations
                // (offset by 128) the unsigned one.
                sumi[i] = if fmt == Format::Q6K {
                    L::dot4::<VNNI, false>(sumi[i], xv, w, sg)
                } else if signs {
                    L::dot4::<VNNI, true>(sumi[i], w, xv, sg)
                } else {
                    L::dot4::<VNNI, false>(sumi[i], w, xv, sg)
                };
            }
        }
        let (d, c) = if fmt == Format::Q6K {
            (
                L::load_f(t.d2.as_ptr().add(b * r)),
                Some(L::load_i(corr.add(4 * r))),
            )
        } else {
            (d, None)
        };
        for p in 0..G / 2 {
            let xm = &*x.add(2 * p * blocks + b);
            let (main, resid) = (sumi[2 * p], sumi[2 * p + 1]);
            add_block::<F, VNNI, L>(&mut acc[p], &mut mins[p], main, resid, c, d, m, xm);
        }
    }
    for p in 0..G / 2 {
        out[p] = L::add_f(acc[p], mins[p]);
    }
}

/// One tile (`rows` ≤ R weight rows at `w`) against every GEMM row of
/// `x` (whole groups of `G`, `blocks` each): prompt row c's outputs go
/// to `y` + c·n (while c < m), this tile's `rows` columns only.
///
/// SAFETY: `y` holds m rows of n, with the tile's columns inside a row;
/// `t` is R rows wide.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const F: u8, const VNNI: bool, const G: usize, L: Lanes>(
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    x: &[BlockQ8],
    t: &mut Tile,
    y: *mut f32,
    n: usize,
    m: usize,
) {
    debug_assert_eq!(t.rows, L::R);
    unpack::<F, VNNI>(w.as_ptr(), rows, row_bytes, t);
    let blocks = t.blocks();
    let mut ys = [L::zero_f(); 4];
    for (pass, xs) in x.chunks_exact(G * blocks).enumerate() {
        group_dot::<F, VNNI, G, L>(t, xs.as_ptr(), blocks, &mut ys);
        for (p, v) in ys.iter().take(G / 2).enumerate() {
            let c = pass * G / 2 + p;
            if c >= m {
                break;
            }
            L::store_f(y.add(c * n), *v, rows);
        }
    }
}

macro_rules! entry {
    ($name:ident, $vnni:expr, $g:expr, $lanes:ty, $features:literal) => {
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
                F0 => tile::<F0, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
                F1 => tile::<F1, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
                F2 => tile::<F2, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
                F3 => tile::<F3, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
                F4 => tile::<F4, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
                F5 => tile::<F5, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
                _ => tile::<F6, $vnni, $g, $lanes>(w, rows, row_bytes, x, t, y, n, m),
            }
        }
    };
}
// AVX2 has 16 vector registers: 4 GEMM rows a pass on 8-row tiles.
// AVX-512's 32 hold 8 GEMM rows on 16-row tiles: each `vpdpbusd` does
// twice the products, and each tile load serves twice the rows.
entry!(tile_avx2, false, 4, Ymm, "avx2,fma,f16c");
entry!(
    tile_vnni,
    true,
    8,
    Zmm,
    "avx2,fma,f16c,avx512f,avx512vnni,avx512vl"
);

/// `quantize_pair` in AVX2, bit for bit (the same float operations, in
/// the same order, lane by lane).
///
/// SAFETY: the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_pair_avx2(x: &[f32], main: &mut [BlockQ8], resid: &mut [BlockQ8]) {
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
        let id2 = super::RATIO as f32 * id1;
        let (vd1, vid1, vid2) = (_mm256_set1_ps(d1), _mm256_set1_ps(id1), _mm256_set1_ps(id2));
        let mut q1 = [_mm256_setzero_si256(); 4];
        let mut q2 = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            q1[i] = round8(_mm256_mul_ps(v[i], vid1));
            let r = _mm256_sub_ps(v[i], _mm256_mul_ps(vd1, _mm256_cvtepi32_ps(q1[i])));
            q2[i] = round8(_mm256_mul_ps(r, vid2));
        }
        let s1 = lanes_sum(_mm256_add_epi32(
            _mm256_add_epi32(q1[0], q1[1]),
            _mm256_add_epi32(q1[2], q1[3]),
        ));
        let s2 = lanes_sum(_mm256_add_epi32(
            _mm256_add_epi32(q2[0], q2[1]),
            _mm256_add_epi32(q2[2], q2[3]),
        ));
        pack(q1, a.qs.as_mut_ptr());
        pack(q2, b.qs.as_mut_ptr());
        let qsum = super::RATIO * s1 + s2;
        let d = d1 / super::RATIO as f32;
        (a.d, a.s, a.qsum) = (d, d * qsum as f32, qsum);
        (b.d, b.s, b.qsum) = (0.0, 0.0, 0);
    }
}
