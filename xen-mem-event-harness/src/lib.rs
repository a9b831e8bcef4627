//! The hypervisor side of the xen-mem-event test harness.
//!
//! `xen/common/mem_event_ring.c` of the patched tree, the hypervisor's ring
//! index and record logic, is compiled unchanged (see `build.rs`), with a few
//! stand-in headers and a small C file (`c/hv.c`) that does what
//! `xen/common/mem_event.c` does around it: the ring lock, vCPU pause
//! counts, the response loop of the event channel handler, teardown.
//!
//! [`HvRing`] is that producer; [`Doorbell`] emulates an event channel with an
//! eventfd (a real kernel wake-up).  Tests and benchmarks put the real Rust
//! consumer on the other side.

#![allow(unsafe_code)]

pub mod backend;
mod ffi;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use backend::{HarnessBackend, HarnessRing};
pub use ffi::AsyncRec;
pub use ffi::HvStats as Stats;

/// Event type numbers of `public/mem_event.h`.
pub const SHARING_OOM: u32 = 0;
/// See [`SHARING_OOM`].
pub const SHARING_INVALIDATE: u32 = 1;

/// Was the C code built with AddressSanitizer (`XME_HARNESS_SANITIZE=1`)?
pub fn sanitized() -> bool {
    // SAFETY: a pure function without arguments.
    unsafe { ffi::hv_sanitized() != 0 }
}

/// `mem_event_ring_total_frames()`: frames of a ring, 0 if invalid.
pub fn total_frames(ty: u32, nr_frames: u32) -> u32 {
    // SAFETY: a pure function of its arguments.
    unsafe { ffi::hv_total_frames(ty, nr_frames) }
}

/// Who owns a ring: its consumer domain and its owner token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The consumer domain (the only one that may map the ring).
    pub consumer: u16,
    /// The registration's owner token.
    pub token: u64,
}

/// One ring as the hypervisor sees it.
#[derive(Debug)]
pub struct HvRing {
    ring: NonNull<ffi::HvRingC>,
    domid: u16,
}

// SAFETY: every entry point of hv.c takes the ring's mutex, as the
// hypervisor takes the ring's spinlock; the shared frames are meant to be
// accessed concurrently by the consumer.
unsafe impl Send for HvRing {}
// SAFETY: as above.
unsafe impl Sync for HvRing {}

impl HvRing {
    /// `mem_event_ring_init()` on fresh page-aligned, zeroed memory, for
    /// consumer domain 0 with owner token [`HvRing::DEFAULT_TOKEN`].
    /// Errors are the ring core's negative errno values.
    pub fn new(
        ty: u32,
        nr_frames: u32,
        max_vcpus: u32,
        domid: u16,
        batch: u32,
    ) -> Result<Self, i32> {
        let owner = Owner {
            consumer: 0,
            token: HvRing::DEFAULT_TOKEN,
        };
        HvRing::with_owner(ty, nr_frames, max_vcpus, domid, batch, owner)
    }

    /// The owner token of rings made by [`HvRing::new`].
    pub const DEFAULT_TOKEN: u64 = 1;

    /// `mem_event_ring_init()` for the given consumer domain and token.
    pub fn with_owner(
        ty: u32,
        nr_frames: u32,
        max_vcpus: u32,
        domid: u16,
        batch: u32,
        owner: Owner,
    ) -> Result<Self, i32> {
        let mut err = 0;
        // SAFETY: `err` is a valid out-pointer; the result is owned by us.
        let ptr = unsafe {
            ffi::hv_ring_new(
                ty,
                nr_frames,
                max_vcpus,
                domid,
                batch,
                owner.consumer,
                owner.token,
                &mut err,
            )
        };
        NonNull::new(ptr)
            .map(|ring| HvRing { ring, domid })
            .ok_or(err)
    }

    /// `mem_event_ring_may_map()`: may domain `caller` map the frames?
    pub fn may_map(&self, caller: u16) -> bool {
        // SAFETY: `self.ring` is live.
        unsafe { ffi::hv_ring_may_map(self.ring.as_ptr(), caller) != 0 }
    }

    /// `mem_event_ring_owns()`: is `token` the ring's owner token?
    pub fn owns(&self, token: u64) -> bool {
        // SAFETY: `self.ring` is live.
        unsafe { ffi::hv_ring_owns(self.ring.as_ptr(), token) != 0 }
    }

    /// Start of the shared frames.
    pub fn base(&self) -> *mut u8 {
        // SAFETY: `self.ring` is live until drop.
        unsafe { ffi::hv_ring_base(self.ring.as_ptr()).cast() }
    }

    /// Length of the shared frames in bytes.
    pub fn len(&self) -> usize {
        // SAFETY: `self.ring` is live until drop.
        unsafe { ffi::hv_ring_len(self.ring.as_ptr()) }
    }

    /// Slots per array.
    pub fn stats_slots(&self) -> u32 {
        // nr_slots is the third u32 of the ring page (constant after init).
        let page = self.base().cast::<u32>();
        // SAFETY: the ring page is at least 320 bytes and 4-byte aligned;
        // the field is written once by mem_event_ring_init() before we
        // return from new().
        unsafe { page.wrapping_add(2).read_volatile() }
    }

    /// Never true; for clippy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fault of the domain's own `vcpu` on `gfn`: post a request and pause
    /// the vCPU.  Returns the request id (0 with `Ok` means the vCPU already
    /// had a request pending or was parked: `-EEXIST` in the ring core).
    /// `Err(-EAGAIN)`: the ring had no room (or is broken or detached), the
    /// vCPU is parked (paused without a request).
    pub fn raise_oom(&self, vcpu: u32, gfn: u64) -> Result<u64, i32> {
        self.raise(vcpu, false, gfn)
    }

    /// A foreign access hit the failure: informational request, no pause.
    pub fn raise_foreign(&self, vcpu: u32, gfn: u64) -> Result<(), i32> {
        self.raise(vcpu, true, gfn).map(|_| ())
    }

    fn raise(&self, vcpu: u32, foreign: bool, gfn: u64) -> Result<u64, i32> {
        let mut id = 0;
        // SAFETY: `self.ring` is live, `id` a valid out-pointer.
        let rc = unsafe {
            ffi::hv_ring_raise_oom(
                self.ring.as_ptr(),
                vcpu,
                i32::from(foreign),
                gfn,
                self.domid,
                &mut id,
            )
        };
        match rc {
            0 => Ok(id),
            e if e == -libc::EEXIST => Ok(0),
            e => Err(e),
        }
    }

    /// Post an invalidate record; returns whether Xen would notify.
    pub fn put_invalidate(
        &self,
        handle: u64,
        gfn: u64,
        domid: u16,
        reason: u16,
        flags: u32,
    ) -> bool {
        // SAFETY: `self.ring` is live.
        unsafe {
            ffi::hv_ring_put_async(self.ring.as_ptr(), handle, gfn, domid, reason, flags) != 0
        }
    }

    /// Post a batch of invalidate records at once (`seq` of each is ignored
    /// and assigned by the ring): one publication, at most one
    /// notification.  Returns whether Xen would notify.
    pub fn put_invalidate_batch(&self, recs: &[AsyncRec]) -> bool {
        let nr = u32::try_from(recs.len()).unwrap_or(u32::MAX);
        // SAFETY: `self.ring` is live and `recs` has at least `nr` records.
        unsafe { ffi::hv_ring_put_async_batch(self.ring.as_ptr(), recs.as_ptr(), nr) != 0 }
    }

    /// What the event channel notification from the consumer does: process
    /// responses (sync) or the consumer index (async), then release parked
    /// vCPUs if there is room.  Returns the vCPUs unpaused, answered ones
    /// first in response order, then unparked ones.
    pub fn resume(&self) -> Vec<u32> {
        let mut out = vec![0u32; 4096];
        let cap = u32::try_from(out.len()).unwrap_or(u32::MAX);
        // SAFETY: `out` has room for `cap` entries.
        let n = unsafe { ffi::hv_ring_resume(self.ring.as_ptr(), out.as_mut_ptr(), cap) };
        out.truncate(usize::try_from(n).unwrap_or(0).min(out.len()));
        out
    }

    /// Teardown: detach (flag, scrub) and release every vCPU the ring paused
    /// or parked; returns how many.
    pub fn teardown(&self) -> u32 {
        // SAFETY: `self.ring` is live.
        unsafe { ffi::hv_ring_teardown(self.ring.as_ptr()) }
    }

    /// The emulated pause count of `vcpu` (0 = running).
    pub fn pause_count(&self, vcpu: u32) -> u32 {
        // SAFETY: `self.ring` is live; hv.c range-checks `vcpu`.
        unsafe { ffi::hv_vcpu_pause_count(self.ring.as_ptr(), vcpu) }
    }

    /// The ring core's statistics.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // SAFETY: `self.ring` is live, `s` a valid out-pointer.
        unsafe { ffi::hv_ring_stats(self.ring.as_ptr(), &mut s) };
        s
    }

    /// Start every index at `start` (fresh rings only): wraparound tests.
    pub fn set_start(&self, start: u32) {
        // SAFETY: `self.ring` is live.
        unsafe { ffi::hv_ring_set_start(self.ring.as_ptr(), start) }
    }
}

impl Drop for HvRing {
    fn drop(&mut self) {
        // SAFETY: we own the ring; nothing uses it after this.
        unsafe { ffi::hv_ring_free(self.ring.as_ptr()) }
    }
}

/// An event channel end emulated by an eventfd: `notify` wakes `wait`.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    kicks: AtomicU64,
}

impl Doorbell {
    /// A new doorbell.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Doorbell {
            fd,
            kicks: AtomicU64::new(0),
        })
    }

    /// Ring it.
    pub fn notify(&self) -> io::Result<()> {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Wait for a ring (or `timeout`); returns whether one came.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        // A timeout too long to represent waits for ever.
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // The time left, rounded up: a sub-millisecond wait still sleeps.
            let ms = deadline.map_or(-1, |d| {
                let left = d.saturating_duration_since(std::time::Instant::now());
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            });
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Ok(false);
            }
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer from our eventfd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 8 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
    }

    /// Times `notify` was called.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }
}

/// Readable while rung and not waited for.
impl std::os::fd::AsFd for Doorbell {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
