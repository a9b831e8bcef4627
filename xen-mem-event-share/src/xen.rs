//! The real hypervisor behind the daemon's traits: [`XenSharing`], over
//! the library's audited [`MemShr`] (this crate stays free of `unsafe`).

use xen_mem_event::{Errno, InvalidateReason, MemShr, ShareSide};

use crate::backend::{HostCounters, OpError, PageSource, Sharing, MAX_BATCH};
use crate::{DomId, Gfn, GfnRef, Handle, InvalidateRecord, Page, Reason, PAGE_SIZE};

/// Xen through libxenctrl and libxenforeignmemory: pages read through
/// read-only foreign mappings, [`MAX_BATCH`] gfns a map call.
#[derive(Debug)]
pub struct XenSharing {
    shr: MemShr,
    buf: Box<Page>,
}

impl XenSharing {
    /// Wraps open handles.
    pub fn new(shr: MemShr) -> XenSharing {
        XenSharing {
            shr,
            buf: Box::new([0; PAGE_SIZE]),
        }
    }

    /// Opens the handles ([`xen_mem_event::Error::NotXen`] outside a Xen
    /// dom0).
    pub fn open() -> Result<XenSharing, xen_mem_event::Error> {
        MemShr::open().map(XenSharing::new)
    }

    /// The handles, for the calls the traits do not cover (enabling
    /// sharing on a domain).
    pub fn memshr(&self) -> &MemShr {
        &self.shr
    }
}

/// A domain-wide failure: no such domain, or the errno.
fn dom_error(e: Errno) -> OpError {
    if e.0 == libc::ESRCH {
        OpError::NoDomain
    } else {
        OpError::Errno(e.0)
    }
}

/// `xc_memshr_nominate_gfn`'s errors: EINVAL (not sharable: a hole,
/// MMIO, paged out), E2BIG (referenced elsewhere), ENOENT/EEXIST
/// (Xen-internal races) all mean "not this gfn, not now".
fn nominate_error(e: Errno) -> OpError {
    match e.0 {
        libc::EINVAL | libc::E2BIG | libc::ENOENT | libc::EEXIST => OpError::BadGfn,
        _ => dom_error(e),
    }
}

/// `xc_memshr_share_gfns`'s errors: the two stale-handle codes, EXDEV
/// (the client page is mapped by a third domain), or a domain-wide
/// failure.
pub fn share_error(e: Errno) -> OpError {
    match e {
        Errno::SOURCE_HANDLE_INVALID => OpError::StaleSource,
        Errno::CLIENT_HANDLE_INVALID => OpError::StaleClient,
        Errno::CLIENT_MAPPED_ELSEWHERE => OpError::ClientShared,
        e => dom_error(e),
    }
}

impl PageSource for XenSharing {
    fn gfn_count(&mut self, domid: DomId) -> Result<u64, OpError> {
        let max = self.shr.max_gpfn(domid).map_err(dom_error)?;
        Ok(max.saturating_add(1))
    }

    fn read_pages(
        &mut self,
        domid: DomId,
        gfns: &[Gfn],
        each: &mut dyn FnMut(Gfn, Result<&Page, OpError>),
    ) -> Result<(), OpError> {
        if gfns.len() > MAX_BATCH {
            return Err(OpError::Errno(libc::E2BIG));
        }
        self.shr
            .read_pages(domid, gfns, &mut self.buf, &mut |gfn, page| {
                each(gfn, page.map_err(|_| OpError::BadGfn));
            })
            .map_err(dom_error)
    }
}

impl Sharing for XenSharing {
    fn nominate(&mut self, page: GfnRef) -> Result<Handle, OpError> {
        self.shr
            .nominate_gfn(page.domid, page.gfn)
            .map_err(nominate_error)
    }

    fn share(
        &mut self,
        src: GfnRef,
        src_handle: Handle,
        cli: GfnRef,
        cli_handle: Handle,
    ) -> Result<(), OpError> {
        let side = |p: GfnRef, handle| ShareSide {
            domid: p.domid,
            gfn: p.gfn,
            handle,
        };
        self.shr
            .share_gfns(side(src, src_handle), side(cli, cli_handle))
            .map_err(share_error)
    }

    fn host_counters(&mut self) -> Result<HostCounters, OpError> {
        Ok(HostCounters {
            saved_pages: self.shr.freed_pages().map_err(dom_error)?,
            shared_frames: self.shr.used_frames().map_err(dom_error)?,
        })
    }
}

impl From<InvalidateReason> for Reason {
    fn from(r: InvalidateReason) -> Reason {
        match r {
            InvalidateReason::Merged => Reason::Merged,
            InvalidateReason::Unshared => Reason::Unshared,
            other => Reason::Other(other.raw()),
        }
    }
}

impl From<&xen_mem_event::InvalidateRecord> for InvalidateRecord {
    fn from(r: &xen_mem_event::InvalidateRecord) -> InvalidateRecord {
        InvalidateRecord {
            domid: r.domid,
            gfn: r.gfn,
            handle: r.handle,
            reason: r.reason.into(),
            handle_gone: r.handle_gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_what_the_daemon_acts_on() {
        assert_eq!(share_error(Errno(10)), OpError::StaleSource);
        assert_eq!(share_error(Errno(9)), OpError::StaleClient);
        assert_eq!(share_error(Errno(libc::EXDEV)), OpError::ClientShared);
        assert_eq!(share_error(Errno(libc::ESRCH)), OpError::NoDomain);
        assert_eq!(
            share_error(Errno(libc::ENOMEM)),
            OpError::Errno(libc::ENOMEM)
        );
        assert_eq!(nominate_error(Errno(libc::EINVAL)), OpError::BadGfn);
        assert_eq!(nominate_error(Errno(libc::E2BIG)), OpError::BadGfn);
        assert_eq!(nominate_error(Errno(libc::ESRCH)), OpError::NoDomain);
        assert_eq!(
            nominate_error(Errno(libc::EPERM)),
            OpError::Errno(libc::EPERM)
        );
    }

    #[test]
    fn library_records_convert() {
        assert_eq!(Reason::from(InvalidateReason::Merged), Reason::Merged);
        assert_eq!(Reason::from(InvalidateReason::Unshared), Reason::Unshared);
    }
}
