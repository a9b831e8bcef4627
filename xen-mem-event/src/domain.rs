//! Domain queries the consumers need besides the rings: which domains
//! exist, their memory allowance, and the pager's two actions (raise the
//! allowance, crash the domain).  Through the distribution's libxenctrl.

use std::path::Path;

use xen_mem_event_sys::abi;

use crate::xen::ffi::XenCtrl;
use crate::{Error, Op};

/// What Xen says about a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainInfo {
    /// The domain id.
    pub domid: u16,
    /// Pages the domain owns now.
    pub tot_pages: u64,
    /// Its allowance, in pages.
    pub max_pages: u64,
    /// An HVM (or PVH) domain: one that can have rings.
    pub hvm: bool,
    /// Being destroyed.
    pub dying: bool,
    /// Shut down (or crashed).
    pub shutdown: bool,
}

impl DomainInfo {
    /// The allowance in KiB (4 KiB pages).
    pub fn max_mem_kib(&self) -> u64 {
        self.max_pages.saturating_mul(4)
    }

    /// Owned memory in KiB.
    pub fn tot_mem_kib(&self) -> u64 {
        self.tot_pages.saturating_mul(4)
    }
}

impl From<&abi::xen_domctl_getdomaininfo> for DomainInfo {
    fn from(i: &abi::xen_domctl_getdomaininfo) -> Self {
        DomainInfo {
            domid: i.domain,
            tot_pages: i.tot_pages,
            max_pages: i.max_pages,
            hvm: i.flags & abi::XEN_DOMINF_hvm_guest != 0,
            dying: i.flags & abi::XEN_DOMINF_dying != 0,
            shutdown: i.flags & abi::XEN_DOMINF_shutdown != 0,
        }
    }
}

/// Domain queries through libxenctrl.
///
/// `Send` but not `Sync`: libxenctrl records a failure in the handle's
/// `last_error` without a lock, so one handle must not be used by two
/// threads at once.  Put it behind a `Mutex` to share it, or open one per
/// thread:
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<xen_mem_event::domain::Domains>();
/// ```
#[derive(Debug)]
pub struct Domains {
    xc: XenCtrl,
}

fn err(op: Op, domid: Option<u16>, errno: i32) -> Error {
    match (errno, domid) {
        (libc::ESRCH, Some(domid)) => Error::NoSuchDomain { op, domid },
        (libc::EACCES | libc::EPERM, _) => Error::PermissionDenied { op, domid, errno },
        _ => Error::Os { op, domid, errno },
    }
}

impl Domains {
    /// Opens libxenctrl.  [`Error::NotXen`] outside a Xen domain.
    pub fn open() -> Result<Domains, Error> {
        if !Path::new("/dev/xen/privcmd").exists() && !Path::new("/proc/xen/privcmd").exists() {
            return Err(Error::NotXen { op: Op::Open });
        }
        let xc = XenCtrl::open().map_err(|e| err(Op::Open, None, e))?;
        Ok(Domains { xc })
    }

    /// Every domain, by id.
    pub fn list(&self) -> Result<Vec<DomainInfo>, Error> {
        let mut out = Vec::new();
        let mut first = 0u16;
        loop {
            let chunk = self
                .xc
                .domain_infos(first, 256)
                .map_err(|e| err(Op::GetInfo, None, e))?;
            let Some(last) = chunk.last().map(|i| i.domain) else {
                break;
            };
            out.extend(chunk.iter().map(DomainInfo::from));
            match last.checked_add(1) {
                Some(next) if chunk.len() == 256 => first = next,
                _ => break,
            }
        }
        Ok(out)
    }

    /// One domain.  [`Error::NoSuchDomain`] if it does not exist.
    pub fn info(&self, domid: u16) -> Result<DomainInfo, Error> {
        let chunk = self
            .xc
            .domain_infos(domid, 1)
            .map_err(|e| err(Op::GetInfo, Some(domid), e))?;
        chunk
            .first()
            .filter(|i| i.domain == domid)
            .map(DomainInfo::from)
            .ok_or(Error::NoSuchDomain {
                op: Op::GetInfo,
                domid,
            })
    }

    /// Sets the domain's allowance (`xc_domain_setmaxmem`), in KiB.
    pub fn set_max_mem_kib(&self, domid: u16, kib: u64) -> Result<(), Error> {
        self.xc
            .set_max_mem_kib(domid, kib)
            .map_err(|e| err(Op::SetMaxMem, Some(domid), e))
    }

    /// The host's free memory in KiB (`xc_physinfo`: pages no domain
    /// owns, 4 KiB each).
    pub fn host_free_kib(&self) -> Result<u64, Error> {
        self.xc
            .free_pages()
            .map(|p| p.saturating_mul(4))
            .map_err(|e| err(Op::GetInfo, None, e))
    }

    /// Crashes the domain (`SHUTDOWN_crash`).
    pub fn crash(&self, domid: u16) -> Result<(), Error> {
        self.xc
            .crash(domid)
            .map_err(|e| err(Op::Crash, Some(domid), e))
    }
}
