//! bf16 weights on AMX (Intel Sapphire Rapids and later): `tdpbf16ps`
//! multiplies a 16 × 32 tile of bf16 by a 32 × 16 one and adds the
//! 16 × 16 products into f32, 16 times the work of one `vdpbf16ps`.
//!
//! Same arithmetic as the AVX-512 BF16 tile: each activation is carried as
//! two bf16 terms (hi + lo), every product is exact in f32 and summed in f32.
//! f16 and f32 weights (generation only) are split per 32-row block into
//! two and three bf16 terms, exactly, and each term runs like a bf16 weight,
//! except that f32's third term skips the lo activation term (that product
//! is at most 2⁻²⁴ of |w·x|, f32's own rounding).
//!
//! Roles (C += A·B in AMX's terms):
//! - A: 16 weight rows × 32 k, read straight from W (row-major along k);
//! - B: 32 k × 16 prompt rows in AMX's pair layout (row `kk` holds, for
//!   each prompt row, the pair k = 2kk, 2kk+1): the activations are packed
//!   once per call (`pack`), the weights never;
//! - C: 16 weight rows × 16 prompt rows of f32 sums, transposed on store.
//!
//! Eight tile registers: four C (2 weight blocks × 2 prompt blocks), two A,
//! two B (hi, then lo). Each thread takes a range of 32-row weight blocks
//! and runs each against all prompt rows, so the block (≤ 192 KB at
//! k = 3072) is read from memory once and then from L2.
//!
//! The tile instructions are written with `asm!`: Rust's AMX intrinsics are
//! not stable. Linux hands AMX state to a process only after it asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); `available` asks once.

use crate::ops::Lines;
use std::arch::asm;
use std::sync::OnceLock;

/// k per tile step (32 bf16 = 64 bytes per tile row).
pub const K_STEP: usize = 32;
/// Rows per tile (weights or prompt rows).
pub const BLOCK: usize = 16;
/// Bytes of one packed B tile.
const B_TILE: usize = BLOCK * 64;

/// CPUID and the kernel both allow AMX tiles with bf16 (asked once).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID.(7,0).EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
        let ids = std::arch::x86_64::__cpuid_count(7, 0);
        if ids.edx >> 22 & 1 == 0 || ids.edx >> 24 & 1 == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for permission; it changes nothing else.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    })
}

/// Prompt rows from which f16 and f32 weights go to AMX: splitting each
/// weight into bf16 terms costs a pass over it per call, which fewer rows
/// do not repay. A (3072, 1024) weight on a 2-core Xeon, 2 threads, AMX
/// against the f32 tiles (µs): f32 16 rows 973 / 712, 32 rows 1014 / 1333,
/// 128 rows 2523 / 5051; f16 16 rows 681 / 551, 32 rows 762 / 1138, 128
/// rows 1816 / 4525. bf16 weights go at any row count (4 rows: 178 / 434
/// against the AVX-512 BF16 tiles).
pub const MIN_ROWS_TO_SPLIT: usize = 32;

/// Shapes the tiles take whole: k a multiple of 32 and n of 16 (every
/// projection of Qwen3 and SmolLM2); others go to the AVX-512 tiles.
pub fn fits(n: usize, k: usize) -> bool {
    k.is_multiple_of(K_STEP) && n.is_multiple_of(BLOCK)
}

/// Prompt rows, padded to whole pairs of 16-row blocks.
pub fn padded_rows(m: usize) -> usize {
    m.div_ceil(2 * BLOCK) * 2 * BLOCK
}

/// Packs one bf16 term of the activations, `x` (m, k) row-major, into B
/// tiles: block (b, j) holds prompt rows 16b..16b+16 and k = 32j..32j+32,
/// at u32 index ((b · k/32 + j) · 16 + kk) · 16 + r = the pair
/// (x[16b+r][32j+2kk], x[16b+r][32j+2kk+1]). Rows past m are zero.
pub fn pack(x: &[u16], m: usize, k: usize, out: &mut Lines) {
    let rows = padded_rows(m);
    let steps = k / K_STEP;
    let out = out.zeroed::<u32>(rows * k / 2);
    for b in 0..rows / BLOCK {
        for r in 0..BLOCK.min(m.saturating_sub(b * BLOCK)) {
            let src = &x[(b * BLOCK + r) * k..(b * BLOCK + r + 1) * k];
            for j in 0..steps {
                let tile = &mut out[(b * steps + j) * BLOCK * BLOCK..][..BLOCK * BLOCK];
                for kk in 0..BLOCK {
                    let at = j * K_STEP + 2 * kk;
                    tile[kk * BLOCK + r] = src[at] as u32 | (src[at + 1] as u32) << 16;
                }
            }
        }
    }
}

/// Every tile: 16 rows of 64 bytes (palette 1).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16_by_64() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            c[48 + t] = BLOCK as u8; // rows
        }
        TileConfig(c)
    }
}

/// The weights as AMX reads them.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// bf16 bits: the A tiles read W in place.
    Bf16(&'a [u16]),
    /// f16 bits: each block of 32 rows is split per thread into two bf16
    /// terms, exactly (11 significant bits fit in 8 + 8; every f16,
    /// subnormals too, is inside bf16's range), kept in L2 while it runs.
    F16(&'a [u16]),
    /// f32: each block of 32 rows split the same way into three bf16
    /// terms (24 significant bits in 8 + 8 + 8; exact but for parts below
    /// bf16's smallest normal, 2⁻¹²⁶, which are flushed).
    F32(&'a [f32]),
}

/// One k step: C[a|b][0|1] += A[a|b] · (B hi, then B lo), where the A
/// tiles are 16 weight rows at `wa`, `wb` (`ws` bytes apart) and the B
/// tiles the packed activations at h0, h1 (hi) and l0, l1 (lo; None: the
/// hi terms only).
///
/// # Safety
/// Tiles configured (`TileConfig::all_16_by_64`); each pointer has 16 rows
/// of 64 bytes at its stride.
#[inline(always)]
unsafe fn step(
    wa: *const u8,
    wb: *const u8,
    ws: usize,
    h: [*const u8; 2],
    l: Option<[*const u8; 2]>,
) {
    asm!(
        "tileloadd tmm4, [{wa} + {ws}*1]",
        "tileloadd tmm5, [{wb} + {ws}*1]",
        "tileloadd tmm6, [{h0} + {s}*1]",
        "tileloadd tmm7, [{h1} + {s}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        wa = in(reg) wa,
        wb = in(reg) wb,
        ws = in(reg) ws,
        h0 = in(reg) h[0],
        h1 = in(reg) h[1],
        s = in(reg) 64usize,
        options(nostack, readonly)
    );
    // The A tiles stay in tmm4/tmm5 between the two blocks.
    if let Some(l) = l {
        asm!(
            "tileloadd tmm6, [{l0} + {s}*1]",
            "tileloadd tmm7, [{l1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            l0 = in(reg) l[0],
            l1 = in(reg) l[1],
            s = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

/// y = x·Wᵀ for the weight rows in `blocks` (units of 32 rows; the last
/// may be 16) and all prompt rows, from the packed activation terms.
///
/// # Safety
/// `available()` must be true (and AVX-512 BF16 for f16 and f32 weights);
/// `fits(n, k)`; `hi` and `lo` are `pack`ed from (m, k); w holds n·k
/// elements; y points at m·n f32 that no other thread writes in these
/// columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_blocks(
    hi: &[u32],
    lo: &[u32],
    w: Weights,
    n: usize,
    k: usize,
    m: usize,
    blocks: std::ops::Range<usize>,
    y: *mut f32,
) {
    let cfg = TileConfig::all_16_by_64();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let steps = k / K_STEP;
    let ws = k * 2; // bytes between weight rows
    let pair_blocks = padded_rows(m) / (2 * BLOCK);
    let mut c = [0f32; 4 * BLOCK * BLOCK];
    // f16 and f32: the block's rows split into bf16 terms, term by term.
    // On whole cache lines: each 64-byte tile row is then one line.
    let mut split = Lines::default();
    for blk in blocks {
        let n0 = blk * 2 * BLOCK;
        let two = n0 + BLOCK < n;
        let rows = if two { 2 * BLOCK } else { BLOCK };
        // The block's weight terms, `count` runs of `rows` rows one after
        // the other: bf16 in place; f16 and f32 split here.
        let (first, count) = match w {
            Weights::Bf16(w) => (w.as_ptr().add(n0 * k) as *const u8, 1),
            Weights::F16(w) => {
                super::x86::split_f16_in_2(&w[n0 * k..(n0 + rows) * k], &mut split);
                (split.get::<u16>().as_ptr() as *const u8, 2)
            }
            Weights::F32(w) => {
                super::x86::split_f32_in_3(&w[n0 * k..(n0 + rows) * k], &mut split);
                (split.get::<u16>().as_ptr() as *const u8, 3)
            }
        };
        let term_bytes = rows * ws;
        for pb in 0..pair_blocks {
            let b0 = (2 * pb * steps) * B_TILE;
            let b1 = ((2 * pb + 1) * steps) * B_TILE;
            let (hp, lp) = (hi.as_ptr() as *const u8, lo.as_ptr() as *const u8);
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for j in 0..steps {
                let o = j * B_TILE;
                for t in 0..count {
                    let wa = first.add(t * term_bytes + j * 64);
                    // A lone last block of 16 rows repeats itself (not stored).
                    let wb = if two { wa.add(BLOCK * ws) } else { wa };
                    // f32's third weight term (≤ 2⁻¹⁶ of the weight) times
                    // the lo activation term (≤ 2⁻⁸ of x): at most 2⁻²⁴ of
                    // |w·x|, f32's own rounding; skipped.
                    let lo = (t < 2).then(|| [lp.add(b0 + o), lp.add(b1 + o)]);
                    step(wa, wb, ws, [hp.add(b0 + o), hp.add(b1 + o)], lo);
                }
            }
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c = in(reg) c.as_mut_ptr(),
                c1 = in(reg) c.as_mut_ptr().add(BLOCK * BLOCK),
                c2 = in(reg) c.as_mut_ptr().add(2 * BLOCK * BLOCK),
                c3 = in(reg) c.as_mut_ptr().add(3 * BLOCK * BLOCK),
                s = in(reg) 64usize,
                options(nostack)
            );
            // c[(2a + b)·256 + nn·16 + r]: weight row n0 + 16a + nn, prompt
            // row 16(2pb + b) + r.
            for a in 0..1 + two as usize {
                for b in 0..2 {
                    let tile = &c[(2 * a + b) * BLOCK * BLOCK..][..BLOCK * BLOCK];
                    let r0 = (2 * pb + b) * BLOCK;
                    for r in 0..BLOCK.min(m.saturating_sub(r0)) {
                        let row = y.add((r0 + r) * n + n0 + a * BLOCK);
                        for nn in 0..BLOCK {
                            *row.add(nn) = tile[nn * BLOCK + r];
                        }
                    }
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}
