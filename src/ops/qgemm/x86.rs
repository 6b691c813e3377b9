//! The SIMD kernels of `qgemm` (AVX2, AVX-512 VNNI): unpacking a tile
//! and the GEMM passes (the prompt rows they take: `acts`).

use super::{Format, Kind, Tile, QK};
use crate::ops::kquant::q4k_scales;
use crate::ops::qdot::x86::weights;
use std::arch::x86_64::*;

mod acts;
pub(super) use acts::Acts;
#[cfg(test)]
pub(super) use acts::{quantize_one_avx2, quantize_pair_avx2};

/// Requests `bytes` into L2, one cache line at a time.
pub fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch never faults; the address is inside `bytes`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) };
    }
}

/// The f16 at `p`, widened with F16C in line (`half`'s conversion is a
/// call per value).
///
/// SAFETY: p points at two bytes of a weight block; the caller has F16C.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned() as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// Eight rows' eight dwords (`r[i]`, row i), transposed: vector g (dword g
/// of every row) to `q` + g·4·width, the rows' place in it at + 32·h.
#[inline(always)]
unsafe fn store_transposed(r: &[__m256i], q: *mut u8, width: usize, h: usize) {
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
    for (j, v) in g.into_iter().enumerate() {
        _mm256_storeu_si256(q.add(j * 4 * width + 32 * h) as *mut __m256i, v);
    }
}

/// A row's 32 quants of one block (bytes, as the format stores them after
/// unpacking) as 32 signed i16 values, two vectors of 16: the format's
/// offset taken off, so that the integer dot needs no correction.
#[inline(always)]
unsafe fn widen<const F: u8>(v: __m256i) -> [__m256i; 2] {
    let fmt = Format::from_code(F);
    let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let signed = matches!(fmt, Format::Block(Kind::Q8_0) | Format::Q6K);
    let (lo, hi) = if signed {
        (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi))
    } else {
        (_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi))
    };
    let off = match fmt {
        Format::Block(kind) => kind.offset() as i16,
        Format::Q4K | Format::Q5K | Format::Q6K => 0,
    };
    if off == 0 {
        return [lo, hi];
    }
    let o = _mm256_set1_epi16(off);
    [_mm256_sub_epi16(lo, o), _mm256_sub_epi16(hi, o)]
}

/// Unpacks `rows` (≤ `t`'s width, 8 or 16) weight rows at `w`
/// (`row_bytes` apart) into `t`; missing rows are zeros.
///
/// SAFETY: `w` holds `rows` whole rows of `t`'s block count.
#[inline(always)]
unsafe fn unpack<const F: u8, const BYTES: bool>(
    w: *const u8,
    rows: usize,
    row_bytes: usize,
    t: &mut Tile,
) {
    let fmt = Format::from_code(F);
    let bytes = fmt.block_bytes();
    let width = t.rows;
    // Per stored block: its 32-element blocks' quants, by row.
    let mut v = [[_mm256_setzero_si256(); 32]; 8];
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
                Format::Q4K | Format::Q5K => {
                    let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
                    let (sc, mn) = q4k_scales(std::slice::from_raw_parts(p.add(4), 12));
                    let m4 = _mm256_set1_epi8(0x0F);
                    let five = fmt == Format::Q5K;
                    // Q5_K: 32 bytes of fifth bits before the nibbles; bit
                    // j of byte l is element l of 32-element block j.
                    let qs = p.add(if five { 48 } else { 16 });
                    let hb = _mm256_loadu_si256(p.add(16) as *const __m256i);
                    // Bits 2c and 2c + 1 of every byte of `hb`, as 16
                    // (no closure: it would not inherit the target features).
                    let sixteen = _mm256_set1_epi8(16);
                    for c in 0..4 {
                        let raw = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                        let (mut lo, mut hi) = (
                            _mm256_and_si256(raw, m4),
                            _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
                        );
                        if five {
                            // Bit 2c moved to bit 4 (16-bit shifts: the
                            // mask drops what crosses from the next byte).
                            let at = _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32));
                            let b0 = _mm256_and_si256(_mm256_slli_epi16(at, 4), sixteen);
                            let b1 = _mm256_and_si256(_mm256_slli_epi16(at, 3), sixteen);
                            lo = _mm256_or_si256(lo, b0);
                            hi = _mm256_or_si256(hi, b1);
                        }
                        (v[2 * c][i], v[2 * c + 1][i]) = (lo, hi);
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
                        // As bytes (one-term tiles) the quants stay
                        // unsigned, 0..63: `vpdpbusd` takes unsigned
                        // weights, and the kernel subtracts 32·Σx.
                        let off = if BYTES { _mm256_setzero_si256() } else { c32 };
                        v[4 * h][i] = _mm256_sub_epi8(_mm256_or_si256(lo_a, h0), off);
                        v[4 * h + 1][i] = _mm256_sub_epi8(_mm256_or_si256(lo_b, h1), off);
                        v[4 * h + 2][i] = _mm256_sub_epi8(_mm256_or_si256(hi_a, h2), off);
                        v[4 * h + 3][i] = _mm256_sub_epi8(_mm256_or_si256(hi_b, h3), off);
                    }
                    for j in 0..8 {
                        t.d[at(j)] = d * *sc.add(2 * j) as f32;
                        t.d2[at(j)] = d * *sc.add(2 * j + 1) as f32;
                    }
                }
            }
        }
        for (j, vj) in v.iter().enumerate().take(fmt.block_len() / QK) {
            let blk = sb * (fmt.block_len() / QK) + j;
            if BYTES {
                // One byte per quant: quad g (elements 4g..4g + 4) of
                // every row, one i32 lane per row.
                let q = t.quants.get_mut::<u8>().as_mut_ptr().add(blk * width * QK);
                for h in 0..width / 8 {
                    store_transposed(&vj[8 * h..8 * h + 8], q, width, h);
                }
                continue;
            }
            let q = t
                .quants
                .get_mut::<u8>()
                .as_mut_ptr()
                .add(blk * width * 2 * QK);
            for h in 0..width / 8 {
                // Each row's pairs 0..8 (elements 0..16) and 8..16.
                let mut lo = [_mm256_setzero_si256(); 8];
                let mut hi = [_mm256_setzero_si256(); 8];
                for r in 0..8 {
                    [lo[r], hi[r]] = widen::<F>(vj[8 * h + r]);
                }
                store_transposed(&lo, q, width, h);
                store_transposed(&hi, q.add(8 * 4 * width), width, h);
            }
        }
    }
}

/// The vector operations of one tile width: R weight rows, one i32 or
/// f32 lane each. `Ymm` (8 rows, AVX2) and `Zmm` (16 rows, AVX-512) run
/// the same per-lane arithmetic, so they give the same outputs bit for
/// bit.
pub(super) trait Lanes {
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
    unsafe fn cvt(a: Self::I) -> Self::F;
    unsafe fn mul_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `acc` plus, per i32 lane, the two products of the i16 pairs of `w`
    /// and `x` (`vpmaddwd` + add on AVX2, `vpdpwssd` on AVX-512 VNNI).
    unsafe fn dot2(acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// `acc` plus, per i32 lane, the four products of the u8 quads of `w`
    /// and the i8 quads of `x` (`vpmaddubsw` + `vpmaddwd` + add on AVX2,
    /// exact for |w·x| pairs within i16, as every weight format here is;
    /// `vpdpbusd` on AVX-512 VNNI).
    unsafe fn dot4(acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
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
    unsafe fn cvt(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
    }
    #[inline(always)]
    unsafe fn dot4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(w, x);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
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
    unsafe fn cvt(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        _mm512_dpwssd_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn dot4(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn store_f(dst: *mut f32, v: __m512, rows: usize) {
        _mm512_mask_storeu_ps(dst, ((1u32 << rows) - 1) as __mmask16, v);
    }
}

/// `acc` + f32(sumi)·(d_w·d_x): `qdot`'s tile kernel's float step.
#[inline(always)]
unsafe fn scale_add<L: Lanes>(acc: L::F, sumi: L::I, d: L::F, xd: f32) -> L::F {
    L::fmadd(L::cvt(sumi), L::mul_f(d, L::set1_f(xd)), acc)
}

/// `P` prompt rows (at `x`, `blocks` apart) · the unpacked tile of H·R
/// rows: each prompt row's outputs, H vectors of R, into `out`. A block's
/// tile holds one vector per activation group (16 pairs, or 8 quads on
/// byte tiles), each with R rows' lanes.
// Index loops over the accumulators keep them in registers (fully
// unrolled) with nothing between the intrinsics and the target features.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn group_dot<const F: u8, const P: usize, const H: usize, L: Lanes, A: Acts>(
    t: &Tile,
    x: *const A,
    blocks: usize,
    out: &mut [[L::F; H]; P],
) {
    let fmt = Format::from_code(F);
    let six = fmt == Format::Q6K;
    let width = H * L::R;
    // Activation groups per 32-element block; bytes of tile per block.
    let groups = if A::BYTES { QK / 4 } else { QK / 2 };
    let block_bytes = if A::BYTES { QK } else { 2 * QK };
    let mut acc = [[L::zero_f(); H]; P];
    for b in 0..blocks {
        let q = t.quants.get::<u8>().as_ptr().add(b * width * block_bytes);
        // Even and odd groups summed apart: two chains per row, so that
        // `vpdpwssd`'s and `vpdpbusd`'s latency (5 cycles) does not bound
        // their throughput.
        let mut even = [[L::zero_i(); H]; P];
        let mut odd = [[L::zero_i(); H]; P];
        let d = |h: usize| L::load_f(t.d.as_ptr().add(b * width + h * L::R));
        for g in (0..groups).step_by(2) {
            if six && g == groups / 2 {
                // The first 16 elements, under their own scale.
                for p in 0..P {
                    let xb = &*x.add(p * blocks + b);
                    let off = L::set1_i(xb.q6k_offset(0));
                    for h in 0..H {
                        let si = L::add_i(L::add_i(even[p][h], odd[p][h]), off);
                        acc[p][h] = scale_add::<L>(acc[p][h], si, d(h), xb.d());
                    }
                }
                (even, odd) = ([[L::zero_i(); H]; P], [[L::zero_i(); H]; P]);
            }
            let mut w0 = [L::zero_i(); H];
            let mut w1 = [L::zero_i(); H];
            for h in 0..H {
                w0[h] = L::load_i(q.add(g * 4 * width + h * 4 * L::R));
                w1[h] = L::load_i(q.add((g + 1) * 4 * width + h * 4 * L::R));
            }
            for p in 0..P {
                let xb = &*x.add(p * blocks + b);
                let (x0, x1) = (xb.group::<L>(g), xb.group::<L>(g + 1));
                for h in 0..H {
                    even[p][h] = A::dot::<L>(even[p][h], w0[h], x0);
                    odd[p][h] = A::dot::<L>(odd[p][h], w1[h], x1);
                }
            }
        }
        let d = |h: usize| {
            let at = b * width + h * L::R;
            L::load_f(if six { t.d2.as_ptr() } else { t.d.as_ptr() }.add(at))
        };
        for p in 0..P {
            let xb = &*x.add(p * blocks + b);
            let off = L::set1_i(if six { xb.q6k_offset(1) } else { 0 });
            for h in 0..H {
                let mut si = L::add_i(even[p][h], odd[p][h]);
                if six {
                    si = L::add_i(si, off);
                }
                acc[p][h] = scale_add::<L>(acc[p][h], si, d(h), xb.d());
                if fmt.has_min() {
                    // The minimum term, m·d_x·Σq, into the same sum.
                    let m = L::load_f(t.m.as_ptr().add(b * width + h * L::R));
                    acc[p][h] = L::fmadd(m, L::set1_f(xb.s()), acc[p][h]);
                }
            }
        }
    }
    for p in 0..P {
        for h in 0..H {
            out[p][h] = acc[p][h];
        }
    }
}

/// One tile (`rows` ≤ H·R weight rows at `w`) against every prompt row of
/// `x` (whole groups of `P`, `blocks` each): prompt row c's outputs go to
/// `y` + c·n (while c < m), this tile's `rows` columns only.
///
/// SAFETY: `y` holds m rows of n, with the tile's columns inside a row;
/// `t` is H·R rows wide.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const F: u8, const P: usize, const H: usize, L: Lanes, A: Acts>(
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    x: &[A],
    t: &mut Tile,
    y: *mut f32,
    n: usize,
    m: usize,
) {
    debug_assert_eq!(t.rows, H * L::R);
    if A::BYTES {
        unpack::<F, true>(w.as_ptr(), rows, row_bytes, t);
    } else {
        unpack::<F, false>(w.as_ptr(), rows, row_bytes, t);
    }
    let blocks = t.blocks();
    let mut ys = [[L::zero_f(); H]; P];
    for (pass, xs) in x.chunks_exact(P * blocks).enumerate() {
        group_dot::<F, P, H, L, A>(t, xs.as_ptr(), blocks, &mut ys);
        for (p, v) in ys.iter().enumerate() {
            let c = pass * P + p;
            if c >= m {
                break;
            }
            for (h, v) in v.iter().enumerate() {
                let done = h * L::R;
                if done < rows {
                    L::store_f(y.add(c * n + done), *v, (rows - done).min(L::R));
                }
            }
        }
    }
}

macro_rules! entry {
    ($name:ident, $p:expr, $h:expr, $lanes:ty, $features:literal) => {
        /// SAFETY: the CPU has the target features; `w` holds `rows`
        /// rows of `row_bytes`, whole blocks of `fmt`; `x` is whole
        /// groups of `PASS` prompt rows of `t`'s 32-element block count;
        /// `y` holds m rows of n with the tile's columns inside.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name<A: Acts>(
            fmt: Format,
            w: &[u8],
            rows: usize,
            row_bytes: usize,
            x: &[A],
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
            const F7: u8 = Format::Q5K.code();
            if A::BYTES {
                // Byte tiles: the k-quants only (`Format::one_term`).
                return match fmt.code() {
                    F5 => tile::<F5, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                    F7 => tile::<F7, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                    _ => tile::<F6, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                };
            }
            match fmt.code() {
                F0 => tile::<F0, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                F1 => tile::<F1, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                F2 => tile::<F2, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                F3 => tile::<F3, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                F4 => tile::<F4, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                F5 => tile::<F5, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                F7 => tile::<F7, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
                _ => tile::<F6, $p, $h, $lanes, A>(w, rows, row_bytes, x, t, y, n, m),
            }
        }
    };
}
// AVX2 has 16 vector registers: 4 prompt rows a pass on 8-row tiles.
// AVX-512's 32 hold 8 prompt rows on 16-row tiles: each `vpdpwssd` does
// twice the products of a 256-bit `vpmaddwd`, and each tile load serves
// twice the rows.
entry!(tile_avx2, 4, 1, Ymm, "avx2,fma,f16c");
entry!(
    tile_vnni,
    4,
    2,
    Zmm,
    "avx2,fma,f16c,avx512f,avx512vnni,avx512vl"
);
