//! Domain queries the consumers need besides the rings: which domains
//! exist, their memory allowance, and the pager's two actions (raise the
//! allowance, crash the domain).  Through the distribution's libxenctrl;
//! [`DomainWatch`] learns of domains appearing and going from xenstore.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use xen_mem_event_sys::abi;

use crate::xen::ffi::XenCtrl;
use crate::xen::xenstore::XenStore;
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

/// The xenstore special paths fired when a domain is introduced to
/// xenstored (built) and released (destroyed), and the directory the
/// toolstack writes a domain's keys under as soon as it creates it.
const INTRODUCE: &str = "@introduceDomain";
const RELEASE: &str = "@releaseDomain";
const DOMAINS: &str = "/local/domain";

/// What a [`DomainWatch`] saw since the last [`DomainWatch::changes`].
/// The events name no domain: read the domain list ([`Domains::list`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainChanges {
    /// A domain was introduced, or something was written below
    /// `/local/domain`: a domain may have been created.  xl writes
    /// `/local/domain/N` as it creates the domain, then builds it and only
    /// then introduces it (`@introduceDomain`): under QEMU TCG on a loaded
    /// host the build took 20 to 60 s.
    pub introduced: bool,
    /// A domain was released (destroyed).
    pub released: bool,
}

impl DomainChanges {
    /// Anything at all.
    pub fn any(&self) -> bool {
        self.introduced || self.released
    }

    /// Counts one watch event on `path` (other paths are ignored).
    fn note(&mut self, path: &[u8]) {
        let below_domains = path
            .strip_prefix(DOMAINS.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"));
        if path == INTRODUCE.as_bytes() || below_domains {
            self.introduced = true;
        } else if path == RELEASE.as_bytes() {
            self.released = true;
        }
    }
}

/// Xenstore watches on `@introduceDomain`, `@releaseDomain` and
/// `/local/domain`: a descriptor ([`AsFd`]) that becomes readable when a
/// domain is created or destroyed (or a domain's keys are written: the
/// toolstack writes them as it creates a domain, before it builds and
/// introduces it), for an event loop's `poll`; then [`changes`] says which
/// (and consumes the events).  xenstored fires each watch once when it is
/// set, so the first [`changes`] reports both: read the domain list then.
///
/// [`changes`]: DomainWatch::changes
#[derive(Debug)]
pub struct DomainWatch {
    xs: XenStore,
}

impl DomainWatch {
    /// Connects to xenstored and sets both watches.  [`Error::NotXen`]
    /// outside a Xen domain; [`Error::Os`] (op [`Op::Watch`]) when
    /// xenstored cannot be reached.
    pub fn open() -> Result<DomainWatch, Error> {
        if !Path::new("/proc/xen").exists() && !Path::new("/dev/xen").exists() {
            return Err(Error::NotXen { op: Op::Watch });
        }
        let os = |errno| Error::Os {
            op: Op::Watch,
            domid: None,
            errno,
        };
        let mut xs = XenStore::open().map_err(os)?;
        for (path, token) in [
            (INTRODUCE, c"xme-introduce"),
            (RELEASE, c"xme-release"),
            (DOMAINS, c"xme-domains"),
        ] {
            let path = std::ffi::CString::new(path).map_err(|_| os(libc::EINVAL))?;
            xs.watch(&path, token).map_err(os)?;
        }
        Ok(DomainWatch { xs })
    }

    /// Takes every pending watch event, without blocking.
    pub fn changes(&mut self) -> Result<DomainChanges, Error> {
        let mut c = DomainChanges::default();
        while let Some((path, _token)) = self.xs.check_watch().map_err(|errno| Error::Os {
            op: Op::Watch,
            domid: None,
            errno,
        })? {
            c.note(path.to_bytes());
        }
        Ok(c)
    }
}

impl AsFd for DomainWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xs.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_follow_the_paths() {
        let mut c = DomainChanges::default();
        assert!(!c.any());
        c.note(b"/local/domainx/3");
        c.note(b"/vm/3/name");
        assert!(!c.any(), "other paths are ignored");
        c.note(b"@releaseDomain");
        assert_eq!((c.introduced, c.released), (false, true));
        c.note(b"@introduceDomain");
        assert_eq!((c.introduced, c.released), (true, true));
        assert!(c.any());
        for path in [&b"/local/domain/7/name"[..], b"/local/domain"] {
            let mut c = DomainChanges::default();
            c.note(path);
            assert_eq!((c.introduced, c.released), (true, false), "{path:?}");
        }
    }

    #[test]
    fn open_outside_xen_or_without_xenstored_is_an_error() {
        if Path::new("/dev/xen/xenbus").exists() || Path::new("/run/xenstored/socket").exists() {
            return; // a dom0 with xenstored: opening may well succeed
        }
        let r = DomainWatch::open().map(|_| ());
        assert!(
            matches!(
                r,
                Err(Error::NotXen { op: Op::Watch } | Error::Os { op: Op::Watch, .. })
            ),
            "{r:?}"
        );
    }
}
