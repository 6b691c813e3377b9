//! The tile's integer dots on AMX (`tdpbsud`/`tdpbusd`): one instruction
//! multiplies 16 GEMM rows × 32 activation bytes by 32 bytes × 16 weight
//! rows, the work of 128 `vpdpbusd` on 512-bit registers.
//!
//! Same integers and float steps as the AVX-512 VNNI tile (`x86`), so the
//! outputs are its outputs bit for bit (tested):
//! - A: 16 GEMM rows (8 prompt rows, main and residual terms) × one
//!   32-element block, read in place from the quantized activations (a
//!   row stride of one `BlockQ8` row);
//! - B: the unpacked weight tile's block as it already lies: vector g (64
//!   bytes) holds bytes 4g..4g+4 of each of the 16 weight rows, which is
//!   AMX's layout for B;
//! - C: 16 GEMM rows × 16 weight rows of i32, stored and then scaled per
//!   prompt row exactly as `x86::add_block` does for the VNNI lanes.
//!
//! Signs as in the VNNI tile: unsigned weights (Q4/Q5, Q4_K, Q8_0 offset
//! by 128) against signed activations (`tdpbsud`); Q6_K's signed weights
//! against its activations offset by 128 (`tdpbusd`), in two halves of 16
//! elements, each under its own scale.

use super::x86::{add_block, unpack, Lanes, Zmm};
use super::{BlockQ8, Format, Kind, Tile, QK};
use crate::ops::amx::TileConfig;
use std::arch::asm;
use std::arch::x86_64::*;

/// GEMM rows per pass (one A tile): 8 prompt rows.
pub(super) const GROUP: usize = 16;

/// C · a stored tile: 16 rows of 16 i32.
#[repr(C, align(64))]
struct CTile([i32; 256]);

/// Products per batch: one per C tile register (tmm0..tmm3), run back to
/// back before their results are read (one at a time, each waited on its
/// store: 2.9 → ? tok/s).
const BATCH: usize = 4;

/// C_i (tmm i) = A · B for product i, into registers tmm0..tmm3; A (16
/// rows of KB bytes, `stride` apart) and B (KB/4 rows of 64 bytes) go in
/// tmm4/tmm5 and tmm6/tmm7 by turns, so that loads overlap the dots.
macro_rules! product {
    ($ins:literal, $c:literal, $a:literal, $b:literal, $ap:expr, $stride:expr, $bp:expr) => {
        asm!(
            concat!("tilezero tmm", $c),
            concat!("tileloadd tmm", $a, ", [{a} + {s}*1]"),
            concat!("tileloadd tmm", $b, ", [{b} + {s64}*1]"),
            concat!($ins, " tmm", $c, ", tmm", $a, ", tmm", $b),
            a = in(reg) $ap,
            s = in(reg) $stride,
            b = in(reg) $bp,
            s64 = in(reg) 64usize,
            options(nostack, readonly)
        )
    };
}

macro_rules! store {
    ($c:literal, $to:expr) => {
        asm!(
            concat!("tilestored [{c} + {s64}*1], tmm", $c),
            c = in(reg) $to,
            s64 = in(reg) 64usize,
            options(nostack)
        )
    };
}

/// The first `count` (1..=4) products: C_i = A_i · B_i, stored to `c[i]`.
/// `SIGNED_W`: signed weights against unsigned activations (`tdpbusd`);
/// otherwise unsigned weights against signed ones (`tdpbsud`).
///
/// # Safety
/// Tiles configured by `config`; each pointer holds its tile's rows.
#[inline(always)]
unsafe fn products<const SIGNED_W: bool>(
    count: usize,
    a: &[*const u8; BATCH],
    stride: usize,
    b: &[*const u8; BATCH],
    c: &mut [CTile; BATCH],
) {
    macro_rules! run {
        ($ins:literal) => {
            product!($ins, "0", "4", "5", a[0], stride, b[0]);
            if count > 1 {
                product!($ins, "1", "6", "7", a[1], stride, b[1]);
            }
            if count > 2 {
                product!($ins, "2", "4", "5", a[2], stride, b[2]);
            }
            if count > 3 {
                product!($ins, "3", "6", "7", a[3], stride, b[3]);
            }
        };
    }
    if SIGNED_W {
        run!("tdpbusd");
    } else {
        run!("tdpbsud");
    }
    store!("0", c[0].0.as_mut_ptr());
    if count > 1 {
        store!("1", c[1].0.as_mut_ptr());
    }
    if count > 2 {
        store!("2", c[2].0.as_mut_ptr());
    }
    if count > 3 {
        store!("3", c[3].0.as_mut_ptr());
    }
}

/// C in tmm0..tmm3 (16 × 64 bytes); A in tmm4, tmm6 (16 × KB); B in tmm5,
/// tmm7 (KB/4 × 64).
fn config(kb: u16) -> TileConfig {
    let mut cfg = TileConfig::new();
    for c in 0..4 {
        cfg = cfg.tile(c, 16, 64);
    }
    for ab in [4, 6] {
        cfg = cfg.tile(ab, 16, kb).tile(ab + 1, (kb / 4) as u8, 64);
    }
    cfg
}

/// Row r of a stored C tile.
#[inline(always)]
unsafe fn row(c: &CTile, r: usize) -> __m512i {
    Zmm::load_i(c.0.as_ptr().add(16 * r) as *const u8)
}

/// `tile_vnni` on AMX: one 16-row tile (`rows` ≤ 16 weight rows at `w`)
/// against every GEMM row of `x` (whole groups of `GROUP`).
///
/// SAFETY: as `x86::tile_vnni`, with `GROUP`-row groups; `ops::amx::int8()`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const F: u8>(
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    x: &[BlockQ8],
    t: &mut Tile,
    y: *mut f32,
    n: usize,
    m: usize,
) {
    debug_assert_eq!(t.rows, Zmm::R);
    let fmt = Format::from_code(F);
    let q6 = fmt == Format::Q6K;
    unpack::<F, true>(w.as_ptr(), rows, row_bytes, t);
    let blocks = t.blocks();
    let stride = blocks * std::mem::size_of::<BlockQ8>();
    let qs = std::mem::offset_of!(BlockQ8, qs);
    let mut c: [CTile; BATCH] = std::array::from_fn(|_| CTile([0; 256]));
    config(if q6 { 16 } else { 32 }).load();
    // Products per block: Q6_K's two halves of 16, each under its own
    // scale; one otherwise. Blocks per batch, so a batch never splits one.
    let per = if q6 { 2 } else { 1 };
    let chunk = BATCH / per;
    for (pass, xs) in x.chunks_exact(GROUP * blocks).enumerate() {
        let mut acc = [Zmm::zero_f(); GROUP / 2];
        let mut mins = [Zmm::zero_f(); GROUP / 2];
        for b0 in (0..blocks).step_by(chunk) {
            let count = per * chunk.min(blocks - b0);
            let (mut a, mut bw) = ([std::ptr::null(); BATCH], [std::ptr::null(); BATCH]);
            for j in 0..count {
                let (b, h) = (b0 + j / per, j % per);
                a[j] = (xs.as_ptr().add(b) as *const u8).add(qs + 16 * h);
                bw[j] = t.quants.as_ptr().add(b * 16 * QK + 4 * 64 * h);
            }
            if q6 {
                products::<true>(count, &a, stride, &bw, &mut c);
            } else {
                products::<false>(count, &a, stride, &bw, &mut c);
            }
            for (j, c) in c.iter().enumerate().take(count) {
                let (b, h) = (b0 + j / per, j % per);
                let d = Zmm::load_f(if h == 0 { t.d.as_ptr() } else { t.d2.as_ptr() }.add(b * 16));
                let m = Zmm::load_f(t.m.as_ptr().add(b * 16));
                let corr = (t.corr.as_ptr().add(b * 32) as *const u8).add(64 * h);
                let k = if q6 { Some(Zmm::load_i(corr)) } else { None };
                for p in 0..GROUP / 2 {
                    let (main, resid) = (row(c, 2 * p), row(c, 2 * p + 1));
                    let xm = &*xs.as_ptr().add(2 * p * blocks + b);
                    add_block::<F, true, Zmm>(&mut acc[p], &mut mins[p], main, resid, k, d, m, xm);
                }
            }
        }
        for p in 0..GROUP / 2 {
            let r = pass * GROUP / 2 + p;
            if r >= m {
                break;
            }
            Zmm::store_f(y.add(r * n), Zmm::add_f(acc[p], mins[p]), rows);
        }
    }
    crate::ops::amx::release();
}

/// SAFETY: the CPU has AVX-512 F/VL/VNNI and `ops::amx::int8()` holds;
/// `w` holds `rows` rows of `row_bytes`, whole blocks of `fmt`; `x` is
/// whole groups of `GROUP` GEMM rows of `t`'s block count; `y` holds m
/// rows of n with the tile's columns inside.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_amx(
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
        F0 => tile::<F0>(w, rows, row_bytes, x, t, y, n, m),
        F1 => tile::<F1>(w, rows, row_bytes, x, t, y, n, m),
        F2 => tile::<F2>(w, rows, row_bytes, x, t, y, n, m),
        F3 => tile::<F3>(w, rows, row_bytes, x, t, y, n, m),
        F4 => tile::<F4>(w, rows, row_bytes, x, t, y, n, m),
        F5 => tile::<F5>(w, rows, row_bytes, x, t, y, n, m),
        _ => tile::<F6>(w, rows, row_bytes, x, t, y, n, m),
    }
}
