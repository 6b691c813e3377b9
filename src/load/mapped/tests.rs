//! The mapped regions: contents as in the file, every byte the same while
//! and after the region moves into anonymous memory, and the mapping gone
//! once its last user is.

use super::*;
use std::io::Write;

/// A temporary file of `len` bytes, byte i = (i·7 + i/4093) mod 256.
fn file_of(len: usize, tag: &str) -> (std::path::PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
    let path = std::env::temp_dir().join(format!(
        "expert-mapped-{tag}-{}-{len}.bin",
        std::process::id()
    ));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&bytes).unwrap();
    (path, bytes)
}

/// The /proc/self/maps lines that overlap `start..end`.
fn maps_over(start: usize, end: usize) -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            let span = l.split_whitespace().next().unwrap();
            let (lo, hi) = span.split_once('-').unwrap();
            let lo = usize::from_str_radix(lo, 16).unwrap();
            let hi = usize::from_str_radix(hi, 16).unwrap();
            lo < end && hi > start
        })
        .map(str::to_string)
        .collect()
}

fn slot_free(slot: usize) -> bool {
    REGIONS[slot].start.load(Ordering::Acquire) == 0
}

/// Vecs over the mapping hold the file's bytes at their offsets; what
/// cannot be a Vec (empty, outside, misaligned, a partial value) is None;
/// the last user gone, the mapping is too.
#[test]
fn vecs_read_the_file_and_the_last_user_unmaps() {
    let (path, bytes) = file_of((5 << 20) + 123, "vecs");
    let r = Region::map(&std::fs::File::open(&path).unwrap()).expect("mapping");
    std::fs::remove_file(&path).unwrap();
    let (slot, start, len) = (r.slot, r.start, r.len);
    assert_eq!(start % HUGE, 0);
    assert_eq!(len, ((5 << 20) + 123usize).next_multiple_of(PAGE));
    let f: Vec<f32> = unsafe { r.vec(4096 + 32, 4 * 1000) }.unwrap();
    for (i, v) in f.iter().enumerate() {
        let at = 4096 + 32 + 4 * i;
        assert_eq!(v.to_le_bytes(), bytes[at..at + 4], "f32 {i}");
    }
    let h: Vec<half::bf16> = unsafe { r.vec(2, bytes.len() - 3) }.unwrap();
    assert_eq!(h.len(), (bytes.len() - 3) / 2);
    assert_eq!(h.last().unwrap().to_bits().to_le_bytes(), {
        let at = 2 + 2 * (h.len() - 1);
        [bytes[at], bytes[at + 1]]
    });
    assert!(unsafe { r.vec::<f32>(0, 0) }.is_none(), "empty");
    assert!(unsafe { r.vec::<f32>(2, 8) }.is_none(), "misaligned");
    assert!(unsafe { r.vec::<f32>(0, 6) }.is_none(), "a partial value");
    assert!(unsafe { r.vec::<u8>(len - 4, 8) }.is_none(), "past the end");
    assert!(
        unsafe { r.vec::<u8>(usize::MAX - 2, 8) }.is_none(),
        "overflow"
    );
    assert_eq!(REGIONS[slot].users.load(Ordering::Acquire), 3);
    drop(r);
    drop(f);
    assert!(!slot_free(slot), "a Vec still uses it");
    assert!(!maps_over(start, start + len).is_empty());
    drop(h);
    assert!(slot_free(slot));
    assert!(maps_over(start, start + len).is_empty(), "unmapped");
}

/// Growing a mapped Vec moves it to the heap with its contents, and lets
/// go of the region.
#[test]
fn a_growing_vec_moves_to_the_heap() {
    let (path, bytes) = file_of(3 * PAGE + 5, "grow");
    let r = Region::map(&std::fs::File::open(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let slot = r.slot;
    let mut v: Vec<u8> = unsafe { r.vec(0, 3 * PAGE + 5) }.unwrap();
    drop(r);
    v.push(1);
    assert!(slot_free(slot), "the region's last user left with the push");
    assert_eq!(v[..bytes.len()], bytes[..]);
    assert_eq!(v[bytes.len()], 1);
}

/// While the region moves into anonymous memory (small pages or huge) a
/// reader sees the file's bytes all along; afterwards the file is no
/// longer mapped, and every byte is still the file's.
#[test]
fn moving_keeps_every_byte_and_ends_the_file_mapping() {
    for huge in [false, true] {
        let n = (9 << 20) + 4 * PAGE + 77;
        let (path, bytes) = file_of(n, if huge { "huge" } else { "small" });
        let r = Region::map(&std::fs::File::open(&path).unwrap()).unwrap();
        let (slot, start, len) = (r.slot, r.start, r.len);
        let w: Vec<u8> = unsafe { r.vec(0, n) }.unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut passes = 0;
                while !done.load(Ordering::Acquire) || passes == 0 {
                    // One byte per page and the ends, over and over.
                    for at in (0..n).step_by(PAGE).chain([n - 1]) {
                        assert_eq!(w[at], bytes[at], "byte {at} during the move");
                    }
                    passes += 1;
                }
            });
            r.settle(huge);
            crate::ops::huge_pages::wait();
            done.store(true, Ordering::Release);
        });
        std::fs::remove_file(&path).unwrap();
        assert!(w == bytes, "every byte after the move");
        let file_lines: Vec<String> = maps_over(start, start + len)
            .into_iter()
            .filter(|l| l.contains("expert-mapped"))
            .collect();
        assert!(file_lines.is_empty(), "still mapped: {file_lines:?}");
        drop(w);
        assert!(slot_free(slot));
        assert!(maps_over(start, start + len).is_empty(), "unmapped");
    }
}

/// A file cut short before the move (rewritten in place by another
/// program): the move reads it with `pread` and stops at the cut instead of
/// dying of SIGBUS; the part before the cut moved with its bytes.
#[test]
fn a_file_cut_short_stops_the_move_without_a_signal() {
    let n = (6 << 20) + 99;
    let (path, bytes) = file_of(n, "cut");
    let r = Region::map(&std::fs::File::open(&path).unwrap()).unwrap();
    let (slot, start, len) = (r.slot, r.start, r.len);
    let head: Vec<u8> = unsafe { r.vec(0, 3 << 20) }.unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    r.settle(false);
    crate::ops::huge_pages::wait();
    assert!(head == bytes[..3 << 20], "the bytes before the cut");
    let still_file = maps_over(start, start + len)
        .into_iter()
        .any(|l| l.contains("expert-mapped"));
    assert!(still_file, "the cut part stays mapped from the file");
    std::fs::remove_file(&path).unwrap();
    drop(head);
    assert!(slot_free(slot));
}
