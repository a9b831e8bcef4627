//! The calls into Xen's toolstack libraries.
//!
//! One of the two modules of the crate allowed to use `unsafe` (the other
//! is `shm`).  Each library handle is wrapped in an owning type that closes
//! it on drop; every function here returns `Result<_, errno>` and never
//! leaves a handle or buffer behind on failure.  Audit notes:
//!
//! - Handles are non-null (checked at open) and used only while owned.
//! - The domctl buffer comes from `xencall_alloc_buffer` (page-aligned,
//!   locked memory Xen can access), is fully zeroed before use, accessed
//!   only between allocation and `xencall_free_buffer`, and freed on every
//!   path.
//! - `errno` is read immediately after the failing call.

#![allow(unsafe_code)]

use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_mem_event_sys::{abi, libs};

use crate::backend::RingMemory;
use crate::layout::FRAME_SIZE;

/// The current thread's `errno` (EIO if there is none).
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A libxencall handle.
#[derive(Debug)]
pub(crate) struct XenCall(NonNull<libs::xencall_handle>);

// SAFETY: libxencall handles may be used from any thread: hypercalls are
// ioctls on the privcmd fd, and the buffer cache is protected by a mutex
// inside the library.
unsafe impl Send for XenCall {}
// SAFETY: see `Send`; no method needs exclusive access.
unsafe impl Sync for XenCall {}

impl XenCall {
    pub(crate) fn open() -> Result<XenCall, i32> {
        // SAFETY: a NULL logger is allowed (the library logs to stderr);
        // no flags.
        let h = unsafe { libs::xencall_open(ptr::null_mut(), 0) };
        NonNull::new(h).map(XenCall).ok_or_else(errno)
    }

    /// Issues `XEN_DOMCTL_mem_event_ring` for `domid` with `arg`, returns
    /// the OUT fields.
    pub(crate) fn domctl_mem_event_ring(
        &self,
        domid: u16,
        arg: abi::xen_domctl_mem_event_ring,
    ) -> Result<abi::xen_domctl_mem_event_ring, i32> {
        let size = std::mem::size_of::<abi::xen_domctl>();
        // SAFETY: the handle is open; the size is that of the struct.
        let raw = unsafe { libs::xencall_alloc_buffer(self.0.as_ptr(), size) };
        let Some(buf) = NonNull::new(raw.cast::<abi::xen_domctl>()) else {
            return Err(errno());
        };
        // SAFETY: `buf` is a fresh, page-aligned allocation of `size`
        // bytes, so valid and aligned for one `xen_domctl`; every bit
        // pattern of zeroes is a valid `xen_domctl` (integers only).
        unsafe { ptr::write_bytes(buf.as_ptr(), 0, 1) };
        {
            // SAFETY: `buf` is valid, initialised (zeroed) and not aliased
            // until the hypercall below, after this reference ends.
            let d = unsafe { &mut *buf.as_ptr() };
            d.cmd = abi::XEN_DOMCTL_mem_event_ring;
            d.interface_version = abi::XEN_DOMCTL_INTERFACE_VERSION;
            d.domain = domid;
            d.u.mem_event_ring = arg;
        }
        // SAFETY: the handle is open and `buf` is a hypercall buffer of
        // that handle holding a complete `xen_domctl`.
        let rc = unsafe {
            libs::xencall1(
                self.0.as_ptr(),
                abi::__HYPERVISOR_domctl,
                buf.as_ptr() as usize as u64,
            )
        };
        let result = if rc < 0 {
            Err(errno())
        } else {
            // SAFETY: the hypercall is over; `buf` is valid, aligned and
            // initialised, and nothing else refers to it.
            let d = unsafe { &*buf.as_ptr() };
            // SAFETY: the `mem_event_ring` member is the one this domctl
            // uses, and any bit pattern is valid for it (integers only).
            Ok(unsafe { d.u.mem_event_ring })
        };
        // SAFETY: `buf` came from `xencall_alloc_buffer` on this handle
        // and is not used after this.
        unsafe { libs::xencall_free_buffer(self.0.as_ptr(), buf.as_ptr().cast()) };
        result
    }
}

impl Drop for XenCall {
    fn drop(&mut self) {
        // SAFETY: the handle is open and not used after this.
        if unsafe { libs::xencall_close(self.0.as_ptr()) } != 0 {
            log::warn!("xencall_close: errno {}", errno());
        }
    }
}

/// A libxenforeignmemory handle.
#[derive(Debug)]
pub(crate) struct ForeignMemory(NonNull<libs::xenforeignmemory_handle>);

// SAFETY: mapping and unmapping are ioctl/mmap/munmap on the privcmd fd,
// safe from any thread; the handle holds no unsynchronised state that
// `map_resource`/`unmap_resource` modify.
unsafe impl Send for ForeignMemory {}
// SAFETY: see `Send`.
unsafe impl Sync for ForeignMemory {}

impl ForeignMemory {
    pub(crate) fn open() -> Result<ForeignMemory, i32> {
        // SAFETY: a NULL logger is allowed; no flags.
        let h = unsafe { libs::xenforeignmemory_open(ptr::null_mut(), 0) };
        NonNull::new(h).map(ForeignMemory).ok_or_else(errno)
    }
}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        // SAFETY: the handle is open; every mapping holds an `Arc` of it,
        // so none remains.
        if unsafe { libs::xenforeignmemory_close(self.0.as_ptr()) } != 0 {
            log::warn!("xenforeignmemory_close: errno {}", errno());
        }
    }
}

/// A mapping of a resource's frames, unmapped on drop.
#[derive(Debug)]
pub(crate) struct ResourceMapping {
    fmem: Arc<ForeignMemory>,
    res: NonNull<libs::xenforeignmemory_resource_handle>,
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory (accessed atomically by
// `shm`), and unmapping through the handle is thread-safe (see
// `ForeignMemory`).
unsafe impl Send for ResourceMapping {}
// SAFETY: `&ResourceMapping` only exposes the address and length.
unsafe impl Sync for ResourceMapping {}

impl ResourceMapping {
    /// Maps `nr_frames` frames of resource (`ty`, `id`) of `domid`, read-write.
    pub(crate) fn map(
        fmem: &Arc<ForeignMemory>,
        domid: u16,
        ty: u32,
        id: u32,
        nr_frames: u32,
    ) -> Result<ResourceMapping, i32> {
        let mut addr: *mut libc::c_void = ptr::null_mut();
        // SAFETY: the handle is open, `addr` is a valid out-pointer (NULL:
        // let the kernel choose the address), frame 0, no flags.
        let res = unsafe {
            libs::xenforeignmemory_map_resource(
                fmem.0.as_ptr(),
                domid,
                ty,
                id,
                0,
                libc::c_ulong::from(nr_frames),
                &mut addr,
                libc::PROT_READ | libc::PROT_WRITE,
                0,
            )
        };
        let Some(res) = NonNull::new(res) else {
            return Err(errno());
        };
        let mut mapping = ResourceMapping {
            fmem: Arc::clone(fmem),
            res,
            addr: NonNull::dangling(),
            len: 0,
        };
        match NonNull::new(addr.cast::<u8>()) {
            Some(addr) => {
                mapping.addr = addr;
                mapping.len = nr_frames as usize * FRAME_SIZE;
                Ok(mapping)
            }
            // Dropping `mapping` unmaps.
            None => Err(libc::EFAULT),
        }
    }
}

// SAFETY: `addr` and `len` are set once, by `map`, to the region that
// `xenforeignmemory_map_resource` mapped read-write for `nr_frames` frames
// (an mmap of the privcmd device: page aligned, no holes), and the region
// is only unmapped by `Drop`.  Xen (the other party) writes it with plain
// aligned machine accesses; this process never takes a non-atomic
// reference to it.  The mapping is usable from any thread (see `Send`).
unsafe impl RingMemory for ResourceMapping {
    fn base(&self) -> *mut u8 {
        self.addr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for ResourceMapping {
    fn drop(&mut self) {
        // SAFETY: `res` came from `map_resource` on this handle (kept open
        // by the `Arc`) and is not used after this; no reference into the
        // mapping outlives it (`Shm` owns this mapping).
        if unsafe { libs::xenforeignmemory_unmap_resource(self.fmem.0.as_ptr(), self.res.as_ptr()) }
            != 0
        {
            log::warn!("xenforeignmemory_unmap_resource: errno {}", errno());
        }
    }
}

/// A libxenevtchn handle with one bound port; unbound and closed on drop.
#[derive(Debug)]
pub(crate) struct BoundEvtchn {
    h: NonNull<libs::xenevtchn_handle>,
    local_port: u32,
    /// The handle's descriptor (`xenevtchn_fd`), non-blocking: open as
    /// long as the handle.
    fd: libc::c_int,
}

// SAFETY: every operation is a read/write/ioctl on the handle's fd, safe
// from any thread.
unsafe impl Send for BoundEvtchn {}
// SAFETY: see `Send`.
unsafe impl Sync for BoundEvtchn {}

impl BoundEvtchn {
    /// Opens a handle of its own and binds Xen's `remote_port` of `domid`.
    pub(crate) fn bind(domid: u16, remote_port: u32) -> Result<BoundEvtchn, i32> {
        // SAFETY: a NULL logger is allowed; no flags.
        let h = unsafe { libs::xenevtchn_open(ptr::null_mut(), 0) };
        let h = NonNull::new(h).ok_or_else(errno)?;
        // SAFETY: the handle is open.
        let rc = unsafe { libs::xenevtchn_bind_interdomain(h.as_ptr(), domid.into(), remote_port) };
        let bound = u32::try_from(rc);
        let local_port = match bound {
            Ok(local_port) => local_port,
            Err(_) => {
                let e = errno();
                // SAFETY: the handle is open and not used after this.
                unsafe { libs::xenevtchn_close(h.as_ptr()) };
                return Err(e);
            }
        };
        // From here on, dropping `ch` unbinds and closes.
        let mut ch = BoundEvtchn {
            h,
            local_port,
            fd: -1,
        };
        // SAFETY: the handle is open.
        let fd = unsafe { libs::xenevtchn_fd(ch.h.as_ptr()) };
        if fd < 0 {
            return Err(errno());
        }
        ch.fd = fd;
        // Non-blocking, so that a waiter whose notification another waiter
        // (or an event loop) consumed first gets EAGAIN instead of
        // blocking in `read`.
        super::poll::set_nonblocking(std::os::fd::AsFd::as_fd(&ch))
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        Ok(ch)
    }

    pub(crate) fn notify(&self) -> Result<(), i32> {
        // SAFETY: the handle is open and the port bound on it.
        let rc = unsafe { libs::xenevtchn_notify(self.h.as_ptr(), self.local_port) };
        if rc < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }

    /// Waits (poll) for the port to fire, then consumes and unmasks it.
    /// `Some(Duration::ZERO)` never blocks: it consumes a notification
    /// that is there, if any.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Result<bool, i32> {
        let fd = self.fd;
        // A timeout too long to represent waits for ever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let port = loop {
            let ms: libc::c_int = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so that a sub-millisecond wait still sleeps.
                    let ms = left.as_micros().div_ceil(1000);
                    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Ok(false);
            }
            // SAFETY: the handle is open; its descriptor is non-blocking,
            // so this never blocks.
            let port = unsafe { libs::xenevtchn_pending(self.h.as_ptr()) };
            let port = match u32::try_from(port) {
                Ok(port) => port,
                Err(_) => {
                    let e = errno();
                    if e != libc::EAGAIN && e != libc::EWOULDBLOCK {
                        return Err(e);
                    }
                    // Another waiter took it first: wait again, if time is
                    // left.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    continue;
                }
            };
            break port;
        };
        // SAFETY: the handle is open; `port` was just reported on it.
        if unsafe { libs::xenevtchn_unmask(self.h.as_ptr(), port) } < 0 {
            return Err(errno());
        }
        Ok(true)
    }
}

impl std::os::fd::AsFd for BoundEvtchn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `fd` is the descriptor of the handle, set by `bind` to a
        // non-negative value before any `BoundEvtchn` is handed out, and
        // closed only by `xenevtchn_close` in `Drop`, after every borrow
        // of `self` has ended.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Drop for BoundEvtchn {
    fn drop(&mut self) {
        // SAFETY: the handle is open and the port bound on it.
        if unsafe { libs::xenevtchn_unbind(self.h.as_ptr(), self.local_port) } < 0 {
            log::warn!("xenevtchn_unbind({}): errno {}", self.local_port, errno());
        }
        // SAFETY: the handle is open and not used after this.
        if unsafe { libs::xenevtchn_close(self.h.as_ptr()) } < 0 {
            log::warn!("xenevtchn_close: errno {}", errno());
        }
    }
}

/// A libxenctrl handle, for the domain queries of [`crate::domain`].
#[derive(Debug)]
pub(crate) struct XenCtrl(NonNull<libs::xc_interface>);

// SAFETY: the handle is not tied to the thread that opened it: hypercalls
// are ioctls on its privcmd fd, and its state (the hypercall buffer cache,
// the `last_error` record) is plain memory any one thread may use.
//
// It is deliberately not `Sync`: libxenctrl's error path (`xc_reportv`)
// writes the handle's `last_error` without a lock, so two threads calling
// through one handle at once race on it.  Share a `Domains` behind a
// `Mutex`, or open one per thread.
unsafe impl Send for XenCtrl {}

impl XenCtrl {
    pub(crate) fn open() -> Result<XenCtrl, i32> {
        // SAFETY: NULL loggers are allowed; no flags.
        let h = unsafe { libs::xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
        NonNull::new(h).map(XenCtrl).ok_or_else(errno)
    }

    /// Up to `max` domains from `first` on.
    pub(crate) fn domain_infos(
        &self,
        first: u16,
        max: usize,
    ) -> Result<Vec<abi::xen_domctl_getdomaininfo>, i32> {
        let mut infos = vec![abi::xen_domctl_getdomaininfo::default(); max];
        let max_u = u32::try_from(max).map_err(|_| libc::EINVAL)?;
        // SAFETY: the handle is open; `infos` has room for `max` entries,
        // which is what the call may write.
        let n = unsafe {
            libs::xc_domain_getinfolist(
                self.0.as_ptr(),
                u32::from(first),
                max_u,
                infos.as_mut_ptr(),
            )
        };
        let n = usize::try_from(n).map_err(|_| errno())?;
        infos.truncate(n.min(max));
        Ok(infos)
    }

    pub(crate) fn set_max_mem_kib(&self, domid: u16, kib: u64) -> Result<(), i32> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { libs::xc_domain_setmaxmem(self.0.as_ptr(), u32::from(domid), kib) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// The host's free memory in pages (`xc_physinfo`).
    pub(crate) fn free_pages(&self) -> Result<u64, i32> {
        let mut info = libs::xc_physinfo_t::default();
        // SAFETY: the handle is open; `info` is a valid, initialised
        // out-structure of the type the call fills.
        let rc = unsafe { libs::xc_physinfo(self.0.as_ptr(), &mut info) };
        if rc == 0 {
            Ok(info.free_pages)
        } else {
            Err(errno())
        }
    }

    pub(crate) fn crash(&self, domid: u16) -> Result<(), i32> {
        let reason = i32::try_from(abi::SHUTDOWN_crash).map_err(|_| libc::EINVAL)?;
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { libs::xc_domain_shutdown(self.0.as_ptr(), u32::from(domid), reason) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }
}

impl Drop for XenCtrl {
    fn drop(&mut self) {
        // SAFETY: the handle is open and not used after this.
        if unsafe { libs::xc_interface_close(self.0.as_ptr()) } != 0 {
            log::warn!("xc_interface_close: errno {}", errno());
        }
    }
}
