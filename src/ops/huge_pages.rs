//! Loaded weights on transparent huge pages.
//!
//! Decode streams every weight once per token. On 4 KiB pages that is a TLB
//! miss every 4 KiB, and in a virtual machine each miss walks two page
//! tables. On the 2-core Xeon VM (same-run A/B, `EXPERT_HUGE_PAGES=0`
//! against the default, 2026-12-03) 0.6B q8_0 decode went from 31.9 to
//! 35.6 tok/s, q4_0 42.5 → 49.2, q4_k_m 39.8 → 48.9, bf16 19.1 → 21.5,
//! SmolLM2 Q4_1 176 → 198 (docs/performance.md has every row); a plain
//! 2-thread read of 2 GiB runs 22–29 GB/s from 4 KiB pages and 29–34 GB/s
//! from 2 MiB ones.
//!
//! Linux's default THP mode, `madvise`, gives huge pages only to memory that
//! asks for them, and weights are copied into ordinary heap memory while
//! they load. So once a model is loaded its weights are collapsed onto huge
//! pages (`MADV_COLLAPSE`, Linux 6.1 on), on a thread of their own. `EXPERT_HUGE_PAGES=0` turns this
//! off; other systems keep their pages. (Advising blocks onto huge pages as
//! they are allocated, in a global allocator, got a third to a half of the
//! weights there: glibc writes its chunk headers on both sides of a block
//! before the advice, and the 2 MiB pages they fall in stay small.)

/// Whether weights are moved onto huge pages: not with `EXPERT_HUGE_PAGES=0`.
fn enabled() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && std::env::var("EXPERT_HUGE_PAGES").map_or(true, |v| v != "0")
}

/// Whether the last model's weights are being moved onto huge pages: the
/// decode kernels read them in the order that is fastest there
/// (`ops::ReadOrder`). Set when the move starts, from the system's
/// settings alone, never from how far it has got: the kernels' float
/// summation order depends on the read order, and a chat's output must not
/// depend on timing.
static ON_HUGE_PAGES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the loaded weights lie on huge pages, or are being moved there.
pub fn weights_on_huge_pages() -> bool {
    ON_HUGE_PAGES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether this system can collapse memory onto huge pages: THP not
/// `never`, and a kernel with `MADV_COLLAPSE` (Linux 6.1).
fn system_collapses() -> bool {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    thp.is_ok_and(|t| !t.contains("[never]")) && has_madv_collapse(&release)
}

/// Whether a kernel release string ("6.18.0-foo") is Linux 6.1 or later.
fn has_madv_collapse(release: &str) -> bool {
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 1)
}

/// Collapses still running.
static PENDING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Counts a thread that moves weights (`load::mapped`) as a pending move:
/// [`wait`] waits for it too.
pub fn track(h: std::thread::JoinHandle<()>) {
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(h);
}

/// Whether weights of `total` bytes go onto huge pages here: big enough,
/// not turned off, and a system that can collapse memory.
pub fn wanted(total: usize) -> bool {
    total >= COLLAPSE_MIN_BYTES && enabled() && system_collapses()
}

/// Waits until every collapse started so far has finished.
pub fn wait() {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for h in pending {
        let _ = h.join();
    }
}

/// Weights below this size in all are left on their pages: they fit the
/// TLB's reach, and the tests load many tiny models.
const COLLAPSE_MIN_BYTES: usize = 32 << 20;

/// Moves loaded weights onto huge pages: `MADV_COLLAPSE` (Linux 6.1 on;
/// elsewhere, or when the kernel refuses, the pages stay as they are) over
/// the 2 MiB pages the `spans` (address, bytes) touch, merged into as few
/// calls as possible (each call has a fixed cost of milliseconds).
///
/// Weights were faulted in 4 KiB at a time while being copied, mostly into
/// glibc's heap, where they lie next to each other: the spans merge into a
/// few ranges. The collapse copies them once, on a thread of its own, so a
/// loaded model is usable at once and decodes faster as it proceeds
/// (reading weights meanwhile is safe: a collapse never changes contents).
/// It costs 0.1–0.2 s of a core for 633 MB (0.6B q8_0) when the VM has
/// huge pages to give, up to 1.4–2.5 s when its host has to supply the
/// memory first; run inside loading it made loads that much slower.
/// [`wait`] waits for it (`expert bench`, before it measures).
pub fn collapse(spans: impl IntoIterator<Item = (usize, usize)>) {
    const HUGE: usize = 2 << 20;
    use std::sync::atomic::Ordering::Relaxed;
    let spans: Vec<(usize, usize)> = spans.into_iter().filter(|s| s.1 > 0).collect();
    let total: usize = spans.iter().map(|s| s.1).sum();
    let moving = wanted(total);
    ON_HUGE_PAGES.store(moving, Relaxed);
    if !moving {
        return;
    }
    let mut ranges: Vec<(usize, usize)> = spans
        .into_iter()
        .map(|(at, len)| (at / HUGE * HUGE, (at + len).next_multiple_of(HUGE)))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let collapse = move || {
            // One call stops at the first mapping it cannot collapse (a
            // guard page, a file): each range is cut to the private
            // anonymous mappings it covers, whole 2 MiB pages inside them.
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            for (a, b) in clip_to_anonymous(&merged, &maps) {
                // SAFETY: MADV_COLLAPSE copies the range's contents into
                // huge pages and never changes them; memory in the same
                // 2 MiB pages beside the weights (heap neighbours) moves
                // along unchanged, and memory unmapped meanwhile only makes
                // the call return an error.
                unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_COLLAPSE) };
            }
        };
        // Without a thread the weights stay on the pages they have.
        if let Ok(h) = std::thread::Builder::new()
            .name("expert-huge-pages".into())
            .spawn(collapse)
        {
            track(h);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = merged;
}

/// The parts of `ranges` (sorted, disjoint) inside private anonymous
/// read-write mappings of `maps` (/proc/self/maps' text), cut to whole
/// 2 MiB pages.
fn clip_to_anonymous(ranges: &[(usize, usize)], maps: &str) -> Vec<(usize, usize)> {
    const HUGE: usize = 2 << 20;
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(span), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let inode = f.nth(2);
        let Some((lo, hi)) = span.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        if perms != "rw-p" || inode != Some("0") {
            continue;
        }
        let (lo, hi) = (lo.next_multiple_of(HUGE), hi / HUGE * HUGE);
        for &(a, b) in ranges {
            let (a, b) = (a.max(lo), b.min(hi));
            if a < b {
                out.push((a, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// MADV_COLLAPSE arrived in Linux 6.1; anything unreadable counts as older.
    #[test]
    fn kernel_release_decides_collapse() {
        for (release, want) in [
            ("6.18.0-firecracker\n", true),
            ("6.1", true),
            ("7.0.2", true),
            ("6.0.19-arch1", false),
            ("5.15.0-91-generic", false),
            ("", false),
            ("linux", false),
        ] {
            assert_eq!(super::has_madv_collapse(release), want, "{release:?}");
        }
    }

    /// Collapsing a weight-sized block (and its heap neighbours) keeps
    /// every byte, once the move has finished; a span list under the
    /// minimum starts nothing.
    #[test]
    fn collapse_keeps_contents() {
        let n = super::COLLAPSE_MIN_BYTES + 3 * 4096 + 17;
        let w: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let small: Vec<u8> = (0..4096).map(|i| (i % 13) as u8).collect();
        super::collapse([
            (w.as_ptr() as usize, w.len()),
            (small.as_ptr() as usize, 4096),
        ]);
        super::collapse([(small.as_ptr() as usize, small.len())]);
        super::wait();
        assert!(w.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert!(small.iter().enumerate().all(|(i, &b)| b == (i % 13) as u8));
    }

    /// Weight ranges are cut to the private anonymous mappings, whole huge
    /// pages inside them; files, guard pages and stacks' neighbours are left.
    #[test]
    fn ranges_are_cut_to_anonymous_mappings() {
        let maps = "\
55d000000000-55d000a00000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000400000 r--p 00000000 08:01 1234                       /model.gguf
7f0000400000-7f0000401000 ---p 00000000 00:00 0
7f0000401000-7f0000c00000 rw-p 00000000 00:00 0
";
        let ranges = [
            (0x55cfffe00000, 0x55d000600000),
            (0x7f0000000000, 0x7f0001000000),
        ];
        let got = super::clip_to_anonymous(&ranges, maps);
        assert_eq!(
            got,
            [
                (0x55d000000000, 0x55d000600000),
                (0x7f0000600000, 0x7f0000c00000)
            ]
        );
    }
}
