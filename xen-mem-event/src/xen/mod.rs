//! The real hypervisor: [`XenBackend`].

pub(crate) mod ffi;
pub(crate) mod memshr;
pub(crate) mod poll;
pub(crate) mod xenstore;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xen_mem_event_sys::abi;

use crate::backend::{Backend, EventChannel, RegisterParams, Registration, RingMemory, Token};
use crate::{Error, EventType, Op, RingInfo};

use ffi::{BoundEvtchn, ForeignMemory, ResourceMapping, XenCall};

/// Xen, through libxencall (the domctl), libxenforeignmemory (mapping) and
/// libxenevtchn (notifications).
///
/// The domctl is issued with libxencall and a hypercall buffer, so this
/// works with the distribution's unpatched libxenctrl on a patched
/// hypervisor.  The libxencall and libxenforeignmemory handles are opened
/// once, by [`XenBackend::open`]; each bound event channel gets a
/// libxenevtchn handle of its own, so that waiting on one ring never
/// consumes another ring's notification.
///
/// # Example
///
/// ```no_run
/// use xen_mem_event::{Error, EventType, Ring, XenBackend};
///
/// let xen = match XenBackend::open() {
///     Ok(xen) => xen,
///     Err(Error::NotXen { .. }) => return, // not a Xen dom0
///     Err(e) => panic!("{e}"),
/// };
/// match Ring::register(&xen, 1, EventType::SharingOom, 1) {
///     Ok(ring) => println!("{:?}", ring.info()),
///     Err(Error::Busy { .. }) => eprintln!("another pager owns the ring"),
///     Err(Error::DomctlMissing { .. }) => eprintln!("hypervisor lacks the series"),
///     Err(e) => eprintln!("{e}"),
/// };
/// ```
#[derive(Debug)]
pub struct XenBackend {
    call: XenCall,
    fmem: Arc<ForeignMemory>,
}

/// Maps an errno from opening a library handle.
fn open_error(errno: i32) -> Error {
    match errno {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => Error::NotXen { op: Op::Open },
        libc::EACCES | libc::EPERM => Error::PermissionDenied {
            op: Op::Open,
            domid: None,
            errno,
        },
        _ => Error::Os {
            op: Op::Open,
            domid: None,
            errno,
        },
    }
}

impl XenBackend {
    /// Opens the library handles.  [`Error::NotXen`] if this is not a Xen
    /// domain with privcmd (no `/dev/xen/privcmd`), [`Error::PermissionDenied`]
    /// if not root.
    pub fn open() -> Result<XenBackend, Error> {
        // Checked first so that the libraries do not log to stderr.
        if !Path::new("/dev/xen/privcmd").exists() && !Path::new("/proc/xen/privcmd").exists() {
            return Err(Error::NotXen { op: Op::Open });
        }
        let call = XenCall::open().map_err(open_error)?;
        let fmem = ForeignMemory::open().map_err(open_error)?;
        Ok(XenBackend {
            call,
            fmem: Arc::new(fmem),
        })
    }

    fn domctl(
        &self,
        op: Op,
        domid: u16,
        ty: EventType,
        arg: abi::xen_domctl_mem_event_ring,
    ) -> Result<abi::xen_domctl_mem_event_ring, Error> {
        self.call
            .domctl_mem_event_ring(domid, arg)
            .map_err(|errno| Error::from_errno(op, domid, ty, errno))
    }

    fn simple(
        &self,
        op: Op,
        sub: u32,
        domid: u16,
        ty: EventType,
        token: u64,
    ) -> Result<abi::xen_domctl_mem_event_ring, Error> {
        let arg = abi::xen_domctl_mem_event_ring {
            op: sub,
            type_: ty.raw(),
            token,
            ..Default::default()
        };
        self.domctl(op, domid, ty, arg)
    }
}

impl Backend for XenBackend {
    fn register(
        &self,
        domid: u16,
        ty: EventType,
        params: RegisterParams,
    ) -> Result<Registration, Error> {
        let arg = abi::xen_domctl_mem_event_ring {
            op: abi::XEN_MEM_EVENT_RING_REGISTER,
            type_: ty.raw(),
            flags: if params.takeover {
                abi::XEN_MEM_EVENT_REGISTER_TAKEOVER
            } else {
                0
            },
            nr_frames: params.frames,
            // Unused fields must be zero: batch is for async rings only.
            batch: if ty.is_sync() { 0 } else { params.batch },
            ..Default::default()
        };
        let out = self.domctl(Op::Register, domid, ty, arg)?;
        // Xen never returns token 0; a hypervisor that does is not one this
        // crate can tear down safely.
        let token = Token::new(out.token).ok_or(Error::InvalidArgument {
            op: Op::Register,
            domid: Some(domid),
            what: "Xen returned owner token 0",
        })?;
        Ok(Registration {
            nr_frames: out.nr_frames,
            port: out.port,
            nr_slots: out.nr_slots,
            token,
        })
    }

    fn unregister(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
        self.simple(
            Op::Unregister,
            abi::XEN_MEM_EVENT_RING_UNREGISTER,
            domid,
            ty,
            token.get(),
        )
        .map(|_| ())
    }

    fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error> {
        // The token must be 0 for GET_INFO.
        self.simple(Op::GetInfo, abi::XEN_MEM_EVENT_RING_GET_INFO, domid, ty, 0)
            .map(|out| RingInfo::from(&out))
    }

    fn resume(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
        self.simple(
            Op::Resume,
            abi::XEN_MEM_EVENT_RING_RESUME,
            domid,
            ty,
            token.get(),
        )
        .map(|_| ())
    }

    fn map(&self, domid: u16, ty: EventType, nr_frames: u32) -> Result<Box<dyn RingMemory>, Error> {
        ResourceMapping::map(
            &self.fmem,
            domid,
            abi::XENMEM_resource_mem_event,
            ty.raw(),
            nr_frames,
        )
        .map(|m| Box::new(m) as Box<dyn RingMemory>)
        .map_err(|errno| Error::from_errno(Op::Map, domid, ty, errno))
    }

    fn bind(&self, domid: u16, ty: EventType, port: u32) -> Result<Box<dyn EventChannel>, Error> {
        BoundEvtchn::bind(domid, port)
            .map(|ch| Box::new(XenEventChannel { ch, domid }) as Box<dyn EventChannel>)
            .map_err(|errno| match errno {
                libc::ENOENT => Error::NotXen { op: Op::Bind },
                _ => Error::from_errno(Op::Bind, domid, ty, errno),
            })
    }
}

/// A ring's event channel on Xen.
#[derive(Debug)]
struct XenEventChannel {
    ch: BoundEvtchn,
    domid: u16,
}

impl EventChannel for XenEventChannel {
    fn notify(&self) -> Result<(), Error> {
        self.ch.notify().map_err(|errno| Error::Os {
            op: Op::Notify,
            domid: Some(self.domid),
            errno,
        })
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.ch.wait(timeout).map_err(|errno| Error::Os {
            op: Op::Wait,
            domid: Some(self.domid),
            errno,
        })
    }
}

impl std::os::fd::AsFd for XenEventChannel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ch.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_is_not_xen_exactly_without_privcmd() {
        let res = XenBackend::open();
        if Path::new("/dev/xen/privcmd").exists() {
            // A Xen domain: opened, or refused (not root), never "not Xen".
            assert!(
                matches!(res, Ok(_) | Err(Error::PermissionDenied { .. })),
                "on Xen, got {res:?}"
            );
        } else {
            assert!(
                matches!(res, Err(Error::NotXen { op: Op::Open })),
                "expected NotXen, got {res:?}"
            );
        }
    }

    #[test]
    fn open_errors_map() {
        assert!(matches!(open_error(libc::ENOENT), Error::NotXen { .. }));
        assert!(matches!(
            open_error(libc::EACCES),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(open_error(libc::EMFILE), Error::Os { .. }));
    }
}
