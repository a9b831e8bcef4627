//! Memory sharing, for the sharing daemon: [`MemShr`].
//!
//! The third module of the crate allowed to use `unsafe` (with `shm` and
//! `xen::ffi`).  Everything goes through the distribution's unpatched
//! libxenctrl 4.17 (`xc_memshr_*`, `xc_sharing_*`,
//! `xc_domain_maximum_gpfn`) and libxenforeignmemory
//! (`xenforeignmemory_map`/`unmap`), with handles of its own.  Audit notes:
//!
//! - Both handles are non-null (checked at open), owned by [`MemShr`],
//!   closed once on drop, and never used after.
//! - Every call takes plain integers, or pointers to locals that live for
//!   the whole call (`handle`, `gpfns`, the gfn and error arrays).
//! - A foreign mapping is read only between `xenforeignmemory_map` and
//!   `xenforeignmemory_unmap`, only at pages whose per-gfn error is 0, and
//!   only by copying bytes out through a raw pointer into this process's
//!   own buffer: no Rust reference to guest memory is ever made (the guest
//!   may write the page meanwhile; the copy then mixes old and new bytes,
//!   which is why the daemon compares pages again after nominating them).
//!   The mapping is undone on every path, including a panic in the
//!   caller's closure.
//! - `errno` is read right after the failing call.

#![allow(unsafe_code)]

use std::fmt;
use std::path::Path;
use std::ptr::{self, NonNull};

use xen_mem_event_sys::{abi, libs};

use super::open_error;
use crate::{Error, Op};

/// Bytes in a guest page.
pub const PAGE_SIZE: usize = 4096;

/// Most gfns one [`MemShr::read_pages`] call maps at once.
pub const MAX_MAP: usize = 1024;

/// An `errno` value from a sharing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `xc_memshr_share_gfns`: the source gfn no longer holds the source
    /// handle (`-XENMEM_SHARING_OP_S_HANDLE_INVALID`, returned as errno 10).
    pub const SOURCE_HANDLE_INVALID: Errno = Errno(10);
    /// `xc_memshr_share_gfns`: the client gfn no longer holds the client
    /// handle (`-XENMEM_SHARING_OP_C_HANDLE_INVALID`, errno 9).
    pub const CLIENT_HANDLE_INVALID: Errno = Errno(9);
    /// `xc_memshr_share_gfns`: the client page also has a gfn of a domain
    /// that is neither the source nor the client domain (`EXDEV`, from
    /// xen-patches 0008); the share may be tried the other way round.
    pub const CLIENT_MAPPED_ELSEWHERE: Errno = Errno(18);

    /// The current thread's `errno` (EIO if there is none).
    fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// What [`MemShr::read_pages`] calls for each gfn: its contents, or the
/// errno of its mapping.
pub type EachPage<'a> = dyn FnMut(u64, Result<&[u8; PAGE_SIZE], Errno>) + 'a;

/// One side of a share: `<domid, gfn>` and the handle it was nominated
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareSide {
    /// The domain.
    pub domid: u16,
    /// The gfn.
    pub gfn: u64,
    /// The handle `xc_memshr_nominate_gfn` returned for it.
    pub handle: u64,
}

/// Xen's memory sharing: nominate, share, the host's counters, and
/// read-only foreign mappings of guest pages.
///
/// `Send` but not `Sync`: libxenctrl records a failure in the handle
/// without a lock (see [`crate::domain::Domains`]); one thread at a time.
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<xen_mem_event::MemShr>();
/// ```
#[derive(Debug)]
pub struct MemShr {
    xc: NonNull<libs::xc_interface>,
    fmem: NonNull<libs::xenforeignmemory_handle>,
}

// SAFETY: neither handle is tied to the thread that opened it (their
// calls are ioctls and mmaps on their own privcmd fds; their state is
// plain memory).  Not `Sync`: see the type's documentation.
unsafe impl Send for MemShr {}

/// 0 is success; anything else fails with `errno`.
fn check(rc: libc::c_int) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

impl MemShr {
    /// Opens libxenctrl and libxenforeignmemory.  [`Error::NotXen`] outside
    /// a Xen domain with privcmd, [`Error::PermissionDenied`] if not root.
    pub fn open() -> Result<MemShr, Error> {
        // Checked first so that the libraries do not log to stderr.
        if !Path::new("/dev/xen/privcmd").exists() && !Path::new("/proc/xen/privcmd").exists() {
            return Err(Error::NotXen { op: Op::Open });
        }
        // SAFETY: NULL loggers are allowed; no flags.
        let xc = unsafe { libs::xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
        let xc = NonNull::new(xc).ok_or_else(|| open_error(Errno::last().0))?;
        // SAFETY: a NULL logger is allowed; no flags.
        let fmem = unsafe { libs::xenforeignmemory_open(ptr::null_mut(), 0) };
        let Some(fmem) = NonNull::new(fmem) else {
            let e = open_error(Errno::last().0);
            // SAFETY: `xc` was just opened and is not used after this.
            unsafe { libs::xc_interface_close(xc.as_ptr()) };
            return Err(e);
        };
        Ok(MemShr { xc, fmem })
    }

    /// Turns memory sharing on (or off) for `domid` (`xc_memshr_control`).
    /// `EOPNOTSUPP`: not an HVM domain (or no sharing on this CPU);
    /// `ENODEV`: no HAP; `EXDEV`: a passed-through device; `ESRCH`: no such
    /// domain.
    pub fn set_enabled(&self, domid: u16, enable: bool) -> Result<(), Errno> {
        // SAFETY: the handle is open; plain integer arguments.
        check(unsafe {
            libs::xc_memshr_control(self.xc.as_ptr(), u32::from(domid), i32::from(enable))
        })
    }

    /// Makes `<domid, gfn>` sharable and returns its handle (the current
    /// one if it is already shared).  `EINVAL`: the gfn cannot be shared
    /// (a hole, MMIO, paged out, ...); `E2BIG`: other references to it.
    pub fn nominate_gfn(&self, domid: u16, gfn: u64) -> Result<u64, Errno> {
        let gfn = libc::c_ulong::try_from(gfn).map_err(|_| Errno(libc::EINVAL))?;
        let mut handle = 0u64;
        // SAFETY: the handle is open; `handle` is a valid out-pointer for
        // the duration of the call.
        check(unsafe {
            libs::xc_memshr_nominate_gfn(self.xc.as_ptr(), u32::from(domid), gfn, &mut handle)
        })?;
        Ok(handle)
    }

    /// Merges the client's frame into the source's
    /// (`xc_memshr_share_gfns`).  [`Errno::SOURCE_HANDLE_INVALID`] /
    /// [`Errno::CLIENT_HANDLE_INVALID`] when a gfn no longer holds the
    /// handle it was nominated with.
    pub fn share_gfns(&self, src: ShareSide, cli: ShareSide) -> Result<(), Errno> {
        let gfn = |g: u64| libc::c_ulong::try_from(g).map_err(|_| Errno(libc::EINVAL));
        let (sg, cg) = (gfn(src.gfn)?, gfn(cli.gfn)?);
        // SAFETY: the handle is open; plain integer arguments.
        check(unsafe {
            libs::xc_memshr_share_gfns(
                self.xc.as_ptr(),
                u32::from(src.domid),
                sg,
                src.handle,
                u32::from(cli.domid),
                cg,
                cli.handle,
            )
        })
    }

    /// Pages freed by sharing, host-wide (`xc_sharing_freed_pages`).
    pub fn freed_pages(&self) -> Result<u64, Errno> {
        // SAFETY: the handle is open.
        let n = unsafe { libs::xc_sharing_freed_pages(self.xc.as_ptr()) };
        u64::try_from(n).map_err(|_| Errno::last())
    }

    /// Frames holding shared pages, host-wide (`xc_sharing_used_frames`).
    pub fn used_frames(&self) -> Result<u64, Errno> {
        // SAFETY: the handle is open.
        let n = unsafe { libs::xc_sharing_used_frames(self.xc.as_ptr()) };
        u64::try_from(n).map_err(|_| Errno::last())
    }

    /// The highest gfn of `domid` (`xc_domain_maximum_gpfn`).
    pub fn max_gpfn(&self, domid: u16) -> Result<u64, Errno> {
        let mut gpfns: abi::xen_pfn_t = 0;
        // SAFETY: the handle is open; `gpfns` is a valid out-pointer for
        // the duration of the call.
        check(unsafe {
            libs::xc_domain_maximum_gpfn(self.xc.as_ptr(), u32::from(domid), &mut gpfns)
        })?;
        // xen_pfn_t is an unsigned long: u64 on the 64-bit hosts Xen's
        // sharing supports.
        #[allow(clippy::useless_conversion)]
        Ok(u64::from(gpfns))
    }

    /// Maps up to [`MAX_MAP`] gfns of `domid` read-only in one call and
    /// calls `each` once per gfn, in order, with a copy of its contents
    /// (in `buf`) or the errno of that gfn's mapping.  An error for the
    /// whole call (`ESRCH`: no such domain; `E2BIG`: too many gfns) means
    /// `each` was not called.
    pub fn read_pages(
        &self,
        domid: u16,
        gfns: &[u64],
        buf: &mut [u8; PAGE_SIZE],
        each: &mut EachPage<'_>,
    ) -> Result<(), Errno> {
        if gfns.is_empty() {
            return Ok(());
        }
        if gfns.len() > MAX_MAP {
            return Err(Errno(libc::E2BIG));
        }
        let arr = gfns
            .iter()
            .map(|&g| abi::xen_pfn_t::try_from(g).map_err(|_| Errno(libc::EINVAL)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut err: Vec<libc::c_int> = vec![0; gfns.len()];
        let mapping = Mapping::new(self, domid, &arr, &mut err)?;
        for (i, (&gfn, &e)) in gfns.iter().zip(&err).enumerate() {
            if e != 0 {
                // Per-gfn errors are errno values, negative on some
                // kernels.
                each(gfn, Err(Errno(e.abs())));
                continue;
            }
            mapping.copy_page(i, buf);
            each(gfn, Ok(buf));
        }
        Ok(())
    }
}

/// A read-only foreign mapping of `pages` pages, unmapped on drop.
struct Mapping<'a> {
    shr: &'a MemShr,
    addr: NonNull<u8>,
    pages: usize,
}

impl<'a> Mapping<'a> {
    fn new(
        shr: &'a MemShr,
        domid: u16,
        arr: &[abi::xen_pfn_t],
        err: &mut [libc::c_int],
    ) -> Result<Mapping<'a>, Errno> {
        if err.len() != arr.len() {
            return Err(Errno(libc::EINVAL));
        }
        // SAFETY: the handle is open; `arr` and `err` hold `arr.len()`
        // elements each and live for the whole call; the mapping it
        // returns is owned by the `Mapping` below.
        let addr = unsafe {
            libs::xenforeignmemory_map(
                shr.fmem.as_ptr(),
                u32::from(domid),
                libc::PROT_READ,
                arr.len(),
                arr.as_ptr(),
                err.as_mut_ptr(),
            )
        };
        let addr = NonNull::new(addr.cast::<u8>()).ok_or_else(Errno::last)?;
        Ok(Mapping {
            shr,
            addr,
            pages: arr.len(),
        })
    }

    /// Copies page `i` (which mapped without error) into `buf`.
    fn copy_page(&self, i: usize, buf: &mut [u8; PAGE_SIZE]) {
        if i >= self.pages {
            return;
        }
        let src = self.addr.as_ptr().wrapping_add(i * PAGE_SIZE);
        // SAFETY: `src` is page `i` of the mapping (`i < pages`), which is
        // readable until `drop`; `buf` is this process's own memory,
        // distinct from it.  Bytes are copied through raw pointers, never
        // through a reference to the guest's page.
        unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), PAGE_SIZE) };
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        // SAFETY: `addr` and `pages` are what `xenforeignmemory_map`
        // returned on this (open) handle; nothing refers into the mapping
        // any more.
        let rc = unsafe {
            libs::xenforeignmemory_unmap(
                self.shr.fmem.as_ptr(),
                self.addr.as_ptr().cast(),
                self.pages,
            )
        };
        if rc != 0 {
            log::warn!("xenforeignmemory_unmap: {}", Errno::last());
        }
    }
}

impl Drop for MemShr {
    fn drop(&mut self) {
        // SAFETY: the handle is open and not used after this (no mapping
        // outlives the `&self` borrow that made it).
        if unsafe { libs::xenforeignmemory_close(self.fmem.as_ptr()) } != 0 {
            log::warn!("xenforeignmemory_close: {}", Errno::last());
        }
        // SAFETY: the handle is open and not used after this.
        if unsafe { libs::xc_interface_close(self.xc.as_ptr()) } != 0 {
            log::warn!("xc_interface_close: {}", Errno::last());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_is_not_xen_without_privcmd() {
        if Path::new("/dev/xen/privcmd").exists() || Path::new("/proc/xen/privcmd").exists() {
            return;
        }
        assert!(matches!(
            MemShr::open(),
            Err(Error::NotXen { op: Op::Open })
        ));
    }

    #[test]
    fn stale_handle_errnos_are_xens_codes() {
        // XENMEM_SHARING_OP_{S,C}_HANDLE_INVALID are -10 and -9 in the
        // public memory.h; libxenctrl turns a result r into errno -r.
        assert_eq!(Errno::SOURCE_HANDLE_INVALID, Errno(10));
        assert_eq!(Errno::CLIENT_HANDLE_INVALID, Errno(9));
        assert_eq!(Errno::CLIENT_MAPPED_ELSEWHERE, Errno(libc::EXDEV));
        assert!(Errno(libc::ESRCH).to_string().contains("No such process"));
    }
}
