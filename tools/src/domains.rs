//! Which domains exist, and word when that changes: the domain list of
//! libxenctrl and xenstore's watch on `@introduceDomain`, `@releaseDomain`
//! and `/local/domain`
//! ([`xen_mem_event::domain::DomainWatch`]), behind [`DomainSource`] so
//! that the `--all` loops can be tested without Xen.

use std::os::fd::{AsFd, BorrowedFd};

use xen_mem_event::domain::{DomainWatch, Domains};

/// A domain as the domain list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainState {
    /// The domain id.
    pub domid: u16,
    /// HVM or PVH (rings and sharing need it).
    pub hvm: bool,
}

/// The domain list and its watch.
pub trait DomainSource {
    /// Every live domain but dom0 (dying ones left out).
    fn domains(&mut self) -> Result<Vec<DomainState>, String>;
    /// A descriptor that is readable when a domain was created or
    /// destroyed (xenstore's `@introduceDomain`, `@releaseDomain`,
    /// `/local/domain`).
    fn watch_fd(&self) -> BorrowedFd<'_>;
    /// Consumes what made [`DomainSource::watch_fd`] readable: did a
    /// domain come or go since the last call?
    fn domains_changed(&mut self) -> Result<bool, String>;
}

/// The real one: libxenctrl's list, xenstore's watch.
#[derive(Debug)]
pub struct XenDomains {
    /// Domain queries.
    pub list: Domains,
    /// Domains created and destroyed.
    pub watch: DomainWatch,
}

impl XenDomains {
    /// Opens libxenctrl and sets the xenstore watches.
    pub fn open() -> Result<XenDomains, xen_mem_event::Error> {
        Ok(XenDomains {
            list: Domains::open()?,
            watch: DomainWatch::open()?,
        })
    }
}

impl DomainSource for XenDomains {
    fn domains(&mut self) -> Result<Vec<DomainState>, String> {
        let list = self.list.list().map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .filter(|d| d.domid != 0 && !d.dying)
            .map(|d| DomainState {
                domid: d.domid,
                hvm: d.hvm,
            })
            .collect())
    }

    fn watch_fd(&self) -> BorrowedFd<'_> {
        self.watch.as_fd()
    }

    fn domains_changed(&mut self) -> Result<bool, String> {
        self.watch
            .changes()
            .map(|c| c.any())
            .map_err(|e| e.to_string())
    }
}
