//! Small pieces shared by the benchmarks: errors, count checks, the
//! producer-side header peek, back-off, per-record work, statistics.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::layout::hdr;
use xen_mem_event_harness::HarnessRing;

/// Every fallible benchmark step.
pub type BResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The domain every benchmark registers its rings for.
pub const DOM: u16 = 7;

/// `XEN_MEM_EVENT_INVALIDATE_UNSHARED`.
pub const REASON_UNSHARED: u16 = 2;

/// How long any single run may take before it is declared hung.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// A value on a cache line (two, for the adjacent-line prefetcher) of its
/// own, so that the indices of two threads do not share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Count and correctness checks.  Timings are never checked.
#[derive(Debug, Default)]
pub struct Checks {
    pub passed: u32,
    pub failed: Vec<String>,
}

impl Checks {
    /// Records one check; `what` says what was expected.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            let w = what();
            eprintln!("xme-bench: CHECK FAILED: {w}");
            self.failed.push(w);
        }
    }

    /// `a == b`, with both in the message.
    pub fn eq(&mut self, ctx: &str, what: &str, a: u64, b: u64) {
        self.check(a == b, || format!("{ctx}: {what}: {a} != {b}"));
    }
}

/// Fails a run that has gone on far longer than it should.
pub fn watchdog(t0: Instant, what: &str) -> BResult<()> {
    if t0.elapsed() > WATCHDOG {
        return Err(format!("{what}: no progress after {WATCHDOG:?}").into());
    }
    Ok(())
}

/// Joins a benchmark thread, turning a panic into an error.
pub fn join<T>(h: thread::JoinHandle<BResult<T>>, what: &str) -> BResult<T> {
    h.join().map_err(|_| format!("{what} thread panicked"))?
}

/// Spin briefly, then yield: the waiting side of a polling loop.  On this
/// 2-core machine a pure spin would take the core the other side needs.
#[inline]
pub fn backoff(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

/// Read-only view of the two producer-side facts a flow-controlled
/// producer needs from a ring's shared header: how far the consumer has
/// got (`req_cons`) and how far the producer has got (`req_prod`).
///
/// Xen itself never waits on an async ring (a full ring loses records);
/// this is only so that the benchmark producer can measure *lossless*
/// throughput, by posting a record only when there is a free slot.
#[derive(Debug)]
pub struct HeaderPeek<'a> {
    req_prod: &'a AtomicU32,
    req_cons: &'a AtomicU32,
    nr_slots: u32,
}

impl<'a> HeaderPeek<'a> {
    /// The header of `ring`'s shared frames.
    pub fn new(ring: &'a HarnessRing) -> HeaderPeek<'a> {
        debug_assert_eq!((hdr::NR_SLOTS, hdr::REQ_PROD, hdr::REQ_CONS), (8, 64, 128));
        HeaderPeek {
            req_prod: header_u32(ring, hdr::REQ_PROD),
            req_cons: header_u32(ring, hdr::REQ_CONS),
            nr_slots: ring.hv().stats_slots(),
        }
    }

    /// Free slots now: `nr_slots - (req_prod - req_cons)`.  Only the
    /// producer thread calls this, and only it moves `req_prod`, so the
    /// answer can only grow until it posts.
    pub fn free(&self) -> u32 {
        let cons = self.req_cons.load(Ordering::Acquire);
        let prod = self.req_prod.load(Ordering::Relaxed);
        self.nr_slots.saturating_sub(prod.wrapping_sub(cons))
    }
}

/// A `u32` field of frame 0 of `ring`, as an atomic.
fn header_u32(ring: &HarnessRing, off: usize) -> &AtomicU32 {
    // Frame 0 is at least 4096 bytes; the offsets used are < 320.
    let p = ring.hv().base().wrapping_add(off).cast::<AtomicU32>();
    // SAFETY: `p` points into frame 0 of the ring's shared memory, which is
    // page aligned (posix_memalign in hv.c) and stays allocated as long as
    // the `HvRing` inside `ring` lives, i.e. for the borrow we return.  The
    // offsets are those of u32 fields of `struct xen_mem_event_ring_page`
    // (4-byte aligned).  The field is shared with the C ring core (volatile
    // accesses) and the library consumer (atomic accesses): we only load it
    // atomically, as the library does, never through a plain reference.
    unsafe { &*p }
}

/// The per-record work of a sharing daemon pruning its table of sharable
/// pages: forget the oldest entry, record the new one (two SipHash set
/// operations on a table of 64 Ki entries).  The same function runs in
/// every consumer that processes invalidations in section 2.
#[inline]
pub fn process_invalidate(table: &mut HashSet<u64>, handle: u64) -> bool {
    table.remove(&handle.wrapping_sub(65_536));
    table.insert(handle)
}

/// Nearest-rank percentile (`per_mille` / 1000) of sorted values.
pub fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Nanoseconds of a duration, saturated.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A tiny xorshift generator for jitter (no dependency needed).
#[derive(Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// Uniform-ish in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        lo + x % (hi - lo).max(1)
    }
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Human-readable rate.
pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k", per_s / 1e3)
    } else {
        format!("{per_s:.0} ")
    }
}

/// Human-readable nanoseconds.
pub fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 10_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} µs", ns as f64 / 1e3)
    }
}

/// Human-readable bytes.
pub fn fmt_bytes(b: u64) -> String {
    let mut s = String::new();
    if b >= 1 << 20 {
        let _ = write!(s, "{:.1} MiB", b as f64 / f64::from(1u32 << 20));
    } else {
        let _ = write!(s, "{} KiB", b / 1024);
    }
    s
}

/// CPUs of the machine, as first seen (call it before pinning anything:
/// `available_parallelism` follows the calling thread's affinity).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| thread::available_parallelism().map_or(1, |p| p.get()))
}

/// Restricts the calling thread to CPU `cpu` (`None`: every CPU).
/// Returns whether it worked (machines with one CPU: nothing to do).
pub fn pin(cpu: Option<usize>) -> bool {
    let n = cpus();
    if n < 2 {
        return false;
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in 0..n {
        if cpu.map_or(true, |want| want % n == c) {
            // SAFETY: `set` is a valid cpu_set_t; CPU_SET range-checks `c`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: plain syscall on the calling thread (0) with a valid set of
    // the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    rc == 0
}

/// Pins the calling thread to a CPU until dropped.
#[derive(Debug)]
pub struct Pinned;

impl Pinned {
    pub fn to(cpu: usize) -> Pinned {
        pin(Some(cpu));
        Pinned
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        pin(None);
    }
}

/// A fair (FIFO, ticket) lock, like Xen's spinlocks: the models of Xen's
/// ring lock use it.  `std::sync::Mutex` lets a thread that unlocks and
/// relocks in a loop (a flood producer) starve a waiter for milliseconds,
/// which Xen's ticket locks do not.  Waiters spin briefly, then yield.
#[derive(Debug, Default)]
pub struct FairLock<T> {
    next: AtomicU32,
    serving: AtomicU32,
    inner: std::sync::Mutex<T>,
}

/// Held [`FairLock`].
#[derive(Debug)]
pub struct FairGuard<'a, T> {
    guard: Option<std::sync::MutexGuard<'a, T>>,
    serving: &'a AtomicU32,
}

impl<T> FairLock<T> {
    pub fn new(v: T) -> FairLock<T> {
        FairLock {
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            inner: std::sync::Mutex::new(v),
        }
    }

    pub fn lock(&self) -> FairGuard<'_, T> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut spins = 0u32;
        while self.serving.load(Ordering::Acquire) != ticket {
            backoff(&mut spins);
        }
        // Only the ticket holder gets here: the mutex is uncontended.
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        FairGuard {
            guard: Some(guard),
            serving: &self.serving,
        }
    }
}

impl<T> std::ops::Deref for FairGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Always Some until drop.
        self.guard.as_deref().unwrap_or_else(|| unreachable_guard())
    }
}

impl<T> std::ops::DerefMut for FairGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard
            .as_deref_mut()
            .unwrap_or_else(|| unreachable_guard())
    }
}

#[cold]
#[allow(clippy::panic)] // Justification: the guard is Some from lock() until drop; this cannot run.
fn unreachable_guard() -> ! {
    panic!("FairGuard used after release")
}

impl<T> Drop for FairGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.serving.fetch_add(1, Ordering::Release);
    }
}
