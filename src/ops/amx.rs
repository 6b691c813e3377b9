//! What AMX needs before any tile instruction, shared by `fgemm` (bf16)
//! and `qgemm` (int8): the CPU's feature bits, Linux's permission for the
//! tile state, and the tile configuration (`ldtilecfg`'s 64 bytes).
//!
//! Linux hands AMX state to a process only after it asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); `granted` asks once.

use std::sync::OnceLock;

/// CPUID.(7,0).EDX bits: AMX-BF16, AMX-TILE, AMX-INT8.
const BF16: u32 = 22;
const TILE: u32 = 24;
const INT8: u32 = 25;

fn cpu_has(bit: u32) -> bool {
    let ids = std::arch::x86_64::__cpuid_count(7, 0);
    ids.edx >> TILE & 1 == 1 && ids.edx >> bit & 1 == 1
}

/// The kernel lets this process use the tile registers (asked once).
fn granted() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !cpu_has(TILE) {
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

/// Tiles with `tdpbf16ps` can run.
pub fn bf16() -> bool {
    cpu_has(BF16) && granted()
}

/// Tiles with `tdpbusd` and its signed/unsigned variants can run.
pub fn int8() -> bool {
    cpu_has(INT8) && granted()
}

/// A tile configuration (palette 1): rows and bytes per row of each of
/// the eight tile registers; unset ones stay unused.
#[repr(C, align(64))]
pub struct TileConfig([u8; 64]);

impl Default for TileConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TileConfig {
    pub fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        TileConfig(c)
    }

    /// Register `t` as `rows` rows of `bytes` bytes (at most 16 × 64).
    pub fn tile(mut self, t: usize, rows: u8, bytes: u16) -> Self {
        debug_assert!(t < 8 && rows <= 16 && bytes <= 64);
        self.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&bytes.to_le_bytes());
        self.0[48 + t] = rows;
        self
    }

    /// Loads this configuration into the tile registers.
    ///
    /// # Safety
    /// `bf16()` or `int8()` is true on this thread's process.
    pub unsafe fn load(&self) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly));
    }
}

/// Zeroes the tile state (`tilerelease`), so the kernel need not save it.
///
/// # Safety
/// As for `TileConfig::load`.
pub unsafe fn release() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}
