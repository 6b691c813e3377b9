//! The one thread pool for per-token work: persistent workers that spin
//! briefly, then park; a caller that never waits for a worker that has not
//! started.
//!
//! candle's barrier pool (which our kernels used first) hands each worker a
//! share and waits at a barrier for every worker to check in. With 2 cores
//! and one competing busy process, a worker is often descheduled when a job
//! is posted, and the caller spins until the scheduler brings it back:
//! 2-thread decode fell from 11.7 to 2.0 tok/s (0.6B q8_0, loaded machine).
//! Here a job is a counter of chunks that whoever is running takes from:
//! the caller works through them itself, and when none are left it closes
//! the job; a worker that arrives later sees it closed and goes back to
//! waiting. The caller waits only for workers inside a chunk (yielding its
//! core to them), so the worst case under load is about one thread's speed.
//!
//! One job runs at a time (concurrent callers take turns); a job must not
//! post another job from inside its closure.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks: longer than the gaps
/// between the matmuls of one token (the small ops in between), far shorter
/// than the gap between two user turns.
const SPIN: Duration = Duration::from_micros(200);

/// `state`: job sequence number (high 32 bits), closed flag (bit 31) and the
/// number of workers inside the job (low 31 bits).
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

/// A posted job: run `f(c)` for every chunk index `c < chunks`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    chunks: usize,
    next: AtomicUsize,
}

struct Shared {
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    sleepers: AtomicUsize,
}

pub struct Pool {
    shared: &'static Shared,
    workers: Vec<Thread>,
    /// One job at a time; holds the next sequence number.
    call: Mutex<u64>,
}

impl Pool {
    fn new(workers: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
        }));
        let workers = (0..workers)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("expert-worker-{i}"))
                    .spawn(move || worker(shared))
                    .expect("cannot start a worker thread")
                    .thread()
                    .clone()
            })
            .collect();
        Self {
            shared,
            workers,
            call: Mutex::new(1),
        }
    }

    /// Threads that run a job: the workers and the caller.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(c)` for every `c < chunks`, on the caller and whichever
    /// workers join; returns when all have run.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || chunks <= 1 {
            (0..chunks).for_each(f);
            return;
        }
        let mut seq = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let job = Job {
            f,
            chunks,
            next: AtomicUsize::new(0),
        };
        let s = self.shared;
        // SAFETY: the pointer is only read by workers that entered the job
        // (active > 0), and this function returns only after the job is
        // closed and no worker is inside, so `job` outlives every use.
        s.job
            .store(&job as *const Job as *mut Job<'static>, Release);
        *seq = seq.wrapping_add(1) & 0xffff_ffff;
        s.state.store(*seq << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            self.workers.iter().for_each(Thread::unpark);
        }
        run_chunks(&job);
        s.state.fetch_or(CLOSED, AcqRel);
        let mut spins = 0u32;
        while s.state.load(Acquire) & ACTIVE != 0 {
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                // A worker inside a chunk was descheduled: give it the core.
                std::thread::yield_now();
            }
        }
    }
}

fn run_chunks(job: &Job) {
    loop {
        let c = job.next.fetch_add(1, Relaxed);
        if c >= job.chunks {
            break;
        }
        (job.f)(c);
    }
}

fn worker(s: &'static Shared) {
    let mut seen = s.state.load(Acquire) >> 32;
    loop {
        // Wait for a new job: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.state.load(Acquire) >> 32 == seen {
            spins += 1;
            if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            s.sleepers.fetch_add(1, SeqCst);
            if s.state.load(SeqCst) >> 32 == seen {
                std::thread::park();
            }
            s.sleepers.fetch_sub(1, SeqCst);
        }
        // Enter it unless it is already closed.
        loop {
            let st = s.state.load(Acquire);
            seen = st >> 32;
            if st & CLOSED != 0 {
                break;
            }
            if s.state
                .compare_exchange_weak(st, st + 1, AcqRel, Acquire)
                .is_ok()
            {
                // SAFETY: inside the job (active > 0) its poster is waiting.
                let job = unsafe { &*s.job.load(Acquire) };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(job)))
                    .is_err()
                {
                    // The poster would wait for this worker forever.
                    eprintln!("error: a worker thread panicked");
                    std::process::abort();
                }
                s.state.fetch_sub(1, Release);
                break;
            }
        }
    }
}

/// The process's pool: `ops::threads()` threads in all (the caller included).
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(super::threads().saturating_sub(1)))
}

/// Calls `f` on disjoint ranges covering 0..n, spread over the pool in about
/// eight chunks per thread (a late or slow thread leaves its share to the
/// others).
pub fn for_ranges(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    for_chunks(n, 8, f);
}

/// `for_ranges` for the decode kernels that stream a weight from memory:
/// two chunks per thread, so each thread reads a few long sequential runs.
/// Every new run starts with its prefetches empty; with eight chunks per
/// thread q8_0 decode ran 37.5–38.2 tok/s, with two 41.6–41.7 (2-core Xeon).
pub fn for_streams(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    for_chunks(n, 2, f);
}

fn for_chunks(n: usize, per_thread: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let pool = pool();
    let chunk = n.div_ceil(pool.threads() * per_thread).max(1);
    pool.run(n.div_ceil(chunk), &|c| {
        f(c * chunk..((c + 1) * chunk).min(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index is visited exactly once, over many jobs, from several
    /// callers at once, with 1 and 3 workers.
    #[test]
    fn every_chunk_runs_once() {
        for workers in [1, 3] {
            let pool = Pool::new(workers);
            std::thread::scope(|scope| {
                for caller in 0..3 {
                    let pool = &pool;
                    scope.spawn(move || {
                        for job in 0..300 {
                            let n = 1 + (job * 7 + caller) % 97;
                            let hits: Vec<AtomicUsize> =
                                (0..n).map(|_| AtomicUsize::new(0)).collect();
                            pool.run(n, &|c| {
                                hits[c].fetch_add(1, Relaxed);
                            });
                            assert!(hits.iter().all(|h| h.load(Relaxed) == 1));
                        }
                    });
                }
            });
        }
    }

    /// Workers that parked (idle past the spin time) wake for the next job.
    #[test]
    fn parked_workers_wake() {
        let pool = Pool::new(2);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 20);
            let ran = AtomicUsize::new(0);
            pool.run(64, &|_| {
                ran.fetch_add(1, Relaxed);
            });
            assert_eq!(ran.load(Relaxed), 64);
        }
    }
}
