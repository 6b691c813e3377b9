//! Weights used in place from the file's mapping, then moved into memory of
//! their own behind the model's back.
//!
//! Copying a GGUF's tensors out of the page cache at load was most of its
//! load time: on the VMs this was written on the cost is the kernel (and the
//! VM's host) supplying fresh zeroed pages, 60 % of an f32 load (2.4 GB,
//! 1.1–1.5 s from a warm cache). llama.cpp avoids it by computing from the
//! mapping. Here the file is mapped privately at a 2 MiB boundary and each
//! tensor's `Vec` points into the mapping, so loading copies nothing; then a
//! thread of its own copies the mapping 2 MiB at a time into anonymous
//! memory (on huge pages where `ops::huge_pages` would put the weights) and
//! swaps each piece in at the same address with `mremap`. Readers never see
//! a change: the contents are equal, and the swap is atomic under the
//! address space's lock. Once it is done the file is no longer mapped:
//! replacing or truncating it cannot touch a running model.
//!
//! A `Vec` must be freed by the allocator that gave it out, so this module
//! is also the process's global allocator ([`Allocator`], the system one
//! plus the mapped regions): freeing a pointer inside a region drops one
//! user of it, and the last user unmaps it. The regions live in a fixed
//! table (the allocator cannot allocate); when it is full, or mapping fails,
//! or off Linux, tensors are copied as before (`load::copy`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One mapped region: its address range and how many `Vec`s (and handles)
/// still use it. `start == 0`: a free slot.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    users: AtomicUsize,
}

const SLOTS: usize = 64;
#[allow(clippy::declare_interior_mutable_const)] // only as the array initializer
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    users: AtomicUsize::new(0),
};
static REGIONS: [Slot; SLOTS] = [FREE; SLOTS];
/// Regions registered now: frees skip the table scan when there are none.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Slots ever used (a prefix of the table): frees scan only these.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Serializes registering (finding a free slot); frees never take it.
static REGISTERING: AtomicBool = AtomicBool::new(false);

/// A free slot set to `start..end` with one user, or None when all are used.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn register(start: usize, end: usize) -> Option<usize> {
    while REGISTERING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    let slot = REGIONS
        .iter()
        .position(|s| s.start.load(Ordering::Acquire) == 0);
    if let Some(i) = slot {
        let s = &REGIONS[i];
        s.users.store(1, Ordering::Relaxed);
        s.end.store(end, Ordering::Relaxed);
        s.start.store(start, Ordering::Release);
        USED.fetch_max(i + 1, Ordering::AcqRel);
        LIVE.fetch_add(1, Ordering::AcqRel);
    }
    REGISTERING.store(false, Ordering::Release);
    slot
}

/// The region holding `ptr`, if any.
fn region_of(ptr: usize) -> Option<usize> {
    if LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let used = USED.load(Ordering::Acquire);
    REGIONS[..used].iter().position(|s| {
        let start = s.start.load(Ordering::Acquire);
        start != 0 && ptr >= start && ptr < s.end.load(Ordering::Acquire)
    })
}

fn retain(slot: usize) {
    REGIONS[slot].users.fetch_add(1, Ordering::AcqRel);
}

/// Drops one user of a region; the last one unmaps it (after clearing the
/// slot, so no later allocation at those addresses is mistaken for it).
fn release(slot: usize) {
    let s = &REGIONS[slot];
    if s.users.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    // `end` first: the slot is free (and may be registered again) once
    // `start` is 0.
    let end = s.end.swap(0, Ordering::AcqRel);
    let start = s.start.swap(0, Ordering::AcqRel);
    LIVE.fetch_sub(1, Ordering::AcqRel);
    #[cfg(unix)]
    // SAFETY: the region was mapped by `Region::map` and nothing uses it
    // any more (its last user is gone).
    unsafe {
        libc::munmap(start as *mut libc::c_void, end - start)
    };
    #[cfg(not(unix))]
    let _ = (start, end);
}

/// The global allocator: the system's, except that memory inside a mapped
/// region is released to the region (see the module doc).
pub struct Allocator;

// SAFETY: everything not in a region is the system allocator's; region
// pointers are handed out only as `Vec`s by `Region::vec`, and are never
// returned by `System`, so the two never mix.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match region_of(ptr as usize) {
            Some(slot) => release(slot),
            None => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(slot) = region_of(ptr as usize) else {
            return System.realloc(ptr, layout, new_size);
        };
        // A growing (or shrinking) mapped Vec moves to the heap.
        let new = System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            release(slot);
        }
        new
    }
}

#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const HUGE: usize = 2 << 20;
#[cfg(test)]
const PAGE: usize = 4096;

/// The system's page size (4 KiB on x86; 16 or 64 KiB on some ARM).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    }
}

/// Whether GGUF tensors are used in place: not with `EXPERT_MMAP=0`
/// (they are then copied at load, as before).
pub fn enabled() -> bool {
    std::env::var("EXPERT_MMAP").map_or(true, |v| v != "0")
}

/// A file mapped privately (read-write, copy on write) at a 2 MiB
/// boundary; the handle is one user of it.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
pub struct Region {
    slot: usize,
    start: usize,
    len: usize,
    /// The file (its own handle) and its size when mapped: the move reads
    /// it with `pread`, which a file truncated meanwhile answers with a
    /// short read instead of the SIGBUS a read of the mapping would get.
    file: std::fs::File,
    size: usize,
}

impl Region {
    /// Maps the whole of `file`; None where that cannot be done (not Linux,
    /// an empty file, a refused mapping, the region table full).
    pub fn map(file: &std::fs::File) -> Option<Region> {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            use std::os::fd::AsRawFd;
            let size = usize::try_from(file.metadata().ok()?.len()).ok()?;
            if size == 0 {
                return None;
            }
            let len = size.next_multiple_of(page_size());
            // SAFETY: a fresh reservation, then the file mapped over an
            // aligned part of it with MAP_FIXED (only our own reservation
            // is replaced), and the rest of the reservation unmapped.
            // Like every mmap-based loader this assumes the file is not
            // truncated while mapped; the move below ends the mapping.
            unsafe {
                let raw = libc::mmap(
                    std::ptr::null_mut(),
                    len + HUGE,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
                if raw == libc::MAP_FAILED {
                    return None;
                }
                let raw = raw as usize;
                let start = raw.next_multiple_of(HUGE);
                let at = libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                );
                if at == libc::MAP_FAILED {
                    libc::munmap(raw as *mut libc::c_void, len + HUGE);
                    return None;
                }
                if start > raw {
                    libc::munmap(raw as *mut libc::c_void, start - raw);
                }
                let tail = raw + len + HUGE - (start + len);
                if tail > 0 {
                    libc::munmap((start + len) as *mut libc::c_void, tail);
                }
                let Some(slot) = register(start, start + len) else {
                    libc::munmap(start as *mut libc::c_void, len);
                    return None;
                };
                let Ok(file) = file.try_clone() else {
                    release(slot);
                    return None;
                };
                Some(Region {
                    slot,
                    start,
                    len,
                    file,
                    size,
                })
            }
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        {
            let _ = file;
            None
        }
    }

    /// The `bytes` at `offset` in the file as a `Vec<T>` that uses the
    /// mapping in place; None when they are empty, outside the file, not a
    /// whole number of `T`s or not aligned for `T`.
    ///
    /// # Safety
    /// `T` must be plain data, valid for any bits and without `Drop`
    /// (floats, ggml blocks).
    pub unsafe fn vec<T>(&self, offset: usize, bytes: usize) -> Option<Vec<T>> {
        let size = std::mem::size_of::<T>();
        let at = self.start.checked_add(offset)?;
        if bytes == 0
            || size == 0
            || !bytes.is_multiple_of(size)
            || at % std::mem::align_of::<T>() != 0
            || offset.checked_add(bytes)? > self.len
        {
            return None;
        }
        retain(self.slot);
        let n = bytes / size;
        // SAFETY: `at..at + bytes` lies inside the region, which stays
        // mapped while this Vec lives (it is one of the region's users,
        // released when the global allocator is asked to free it); T is
        // aligned and valid for any bits (the caller's promise); the
        // capacity is the length, so
        // the Vec never writes past the region.
        Some(unsafe { Vec::from_raw_parts(at as *mut T, n, n) })
    }

    /// Whether `addr..addr + bytes` lies inside the region.
    pub fn holds(&self, addr: usize, bytes: usize) -> bool {
        addr >= self.start && addr.saturating_add(bytes) <= self.start + self.len
    }

    /// Starts moving the region into anonymous memory, on huge pages when
    /// `huge`, on a thread of its own (`ops::huge_pages::wait` waits for
    /// it). Without a thread the weights stay in the mapping.
    pub fn settle(self, huge: bool) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let (slot, start, size) = (self.slot, self.start, self.size);
            let Ok(file) = self.file.try_clone() else {
                return;
            };
            // The mover is a user: the region outlives its copy.
            retain(slot);
            let moved = std::thread::Builder::new()
                .name("expert-weights".into())
                .spawn(move || {
                    // SAFETY: the region stays mapped while this thread is
                    // one of its users.
                    unsafe { move_to_anonymous(slot, start, &file, size, huge) };
                    release(slot);
                });
            match moved {
                Ok(h) => crate::ops::huge_pages::track(h),
                Err(_) => release(slot),
            }
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let _ = huge;
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        release(self.slot);
    }
}

/// Replaces the region's pages 2 MiB at a time by anonymous memory holding
/// the same bytes, read from `file` (`size` bytes when mapped). Stops when
/// the mover is the region's last user (the model is gone) or the file
/// has shrunk; a piece that cannot be moved stays as it is.
///
/// # Safety
/// `slot` must be a region at `start` (2 MiB-aligned) of which the caller
/// is a user.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn move_to_anonymous(
    slot: usize,
    start: usize,
    file: &std::fs::File,
    size: usize,
    huge: bool,
) {
    use std::os::unix::fs::FileExt;
    let mut off = 0;
    while off < size {
        if REGIONS[slot].users.load(Ordering::Acquire) <= 1 {
            return;
        }
        let n = HUGE.min(size - off);
        let span = n.next_multiple_of(page_size());
        // A fresh piece at a 2 MiB boundary (so it can be one huge page
        // and keep it when moved to `start + off`).
        let raw = libc::mmap(
            std::ptr::null_mut(),
            span + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return;
        }
        let raw = raw as usize;
        let piece = raw.next_multiple_of(HUGE);
        if piece > raw {
            libc::munmap(raw as *mut libc::c_void, piece - raw);
        }
        libc::munmap(
            (piece + span) as *mut libc::c_void,
            raw + span + HUGE - (piece + span),
        );
        let p = piece as *mut libc::c_void;
        if huge {
            libc::madvise(p, span, libc::MADV_HUGEPAGE);
        }
        // The bytes past the end of the file stay zero, as in the mapping.
        let buf = std::slice::from_raw_parts_mut(piece as *mut u8, n);
        if file.read_exact_at(buf, off as u64).is_err() {
            libc::munmap(p, span);
            return;
        }
        if huge && span == HUGE {
            // Where the fault got small pages (no free huge page then).
            libc::madvise(p, span, libc::MADV_COLLAPSE);
        }
        // Atomic for every other thread: the old pages are unmapped and the
        // new ones put in their place under the address space's lock.
        let moved = libc::mremap(
            p,
            span,
            span,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            (start + off) as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            libc::munmap(p, span);
        }
        off += n;
    }
}

#[cfg(test)]
mod tests;
