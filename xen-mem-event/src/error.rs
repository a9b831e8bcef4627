//! The crate's one error type.

use std::fmt;

use crate::EventType;

/// The operation that failed (carried by every [`Error`] that comes from
/// Xen or the OS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Opening a toolstack library handle (`xencall_open`, ...).
    Open,
    /// `XEN_MEM_EVENT_RING_REGISTER`.
    Register,
    /// `XEN_MEM_EVENT_RING_UNREGISTER`.
    Unregister,
    /// `XEN_MEM_EVENT_RING_GET_INFO`.
    GetInfo,
    /// `XEN_MEM_EVENT_RING_RESUME`.
    Resume,
    /// Mapping the ring's frames (`XENMEM_acquire_resource`).
    Map,
    /// Binding the ring's event channel.
    Bind,
    /// Notifying Xen on the event channel.
    Notify,
    /// Waiting on the event channel.
    Wait,
    /// Checking the shared ring header after mapping.
    Attach,
    /// Reading requests or records from the ring.
    Consume,
    /// Writing responses to the ring.
    Respond,
    /// Setting a domain's memory allowance.
    SetMaxMem,
    /// Crashing a domain.
    Crash,
    /// Watching xenstore for domains (`xs_open`, `xs_watch`,
    /// `xs_check_watch`).
    Watch,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Open => "open",
            Op::Register => "register",
            Op::Unregister => "unregister",
            Op::GetInfo => "get_info",
            Op::Resume => "resume",
            Op::Map => "map",
            Op::Bind => "bind",
            Op::Notify => "notify",
            Op::Wait => "wait",
            Op::Attach => "attach",
            Op::Consume => "consume",
            Op::Respond => "respond",
            Op::SetMaxMem => "setmaxmem",
            Op::Crash => "crash",
            Op::Watch => "xenstore watch",
        })
    }
}

/// Why a ring is considered broken.  Whatever the producer wrote, the
/// consumer stops at the first impossible value and reports it: it never
/// reads out of bounds, never loops on it, never answers on its basis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokenReason {
    /// Xen set `XEN_MEM_EVENT_RING_F_BROKEN` (it saw an impossible consumer
    /// index).  Unregister, or register again with takeover, to recover.
    FlaggedByXen,
    /// Xen set `XEN_MEM_EVENT_RING_F_DETACHED`: it tore the ring down
    /// (unregistered, taken over by another consumer, or the domain is
    /// dying) and scrubbed its arrays.  Nothing more will come on it.
    Detached,
    /// `req_prod` is more than `nr_slots` ahead of `req_cons`.
    ProducerAhead {
        /// The producer index read.
        req_prod: u32,
        /// The consumer's index.
        req_cons: u32,
    },
    /// `rsp_cons` is behind the responses' free space or ahead of `rsp_prod`.
    ResponseIndex {
        /// The consumer's response producer index.
        rsp_prod: u32,
        /// Xen's response consumer index, as read.
        rsp_cons: u32,
    },
    /// A header field disagrees with the registration (or is impossible).
    BadHeader {
        /// The field.
        field: &'static str,
        /// The value found.
        found: u64,
        /// The value expected.
        expected: u64,
    },
    /// A request or record failed validation.
    BadRecord {
        /// The ring index of the record.
        index: u32,
        /// What was wrong.
        what: &'static str,
    },
    /// Async records' `seq` went backwards, or more records are missing
    /// (by `seq`) than the shared `lost` counter admits, or the counter
    /// went backwards.
    LossAccounting {
        /// Records missing according to `seq` gaps, since registration.
        seq_gaps: u64,
        /// The shared `lost` counter.
        lost: u64,
    },
    /// The mapping is too small or misaligned for what the header says.
    Mapping {
        /// Bytes mapped.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
}

impl fmt::Display for BrokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokenReason::FlaggedByXen => f.write_str("Xen flagged the ring broken"),
            BrokenReason::Detached => f.write_str(
                "Xen tore the ring down (unregistered, taken over, or the domain is dying)",
            ),
            BrokenReason::ProducerAhead { req_prod, req_cons } => write!(
                f,
                "req_prod {req_prod} is more than a ring ahead of req_cons {req_cons}"
            ),
            BrokenReason::ResponseIndex { rsp_prod, rsp_cons } => {
                write!(f, "impossible rsp_cons {rsp_cons} (rsp_prod {rsp_prod})")
            }
            BrokenReason::BadHeader {
                field,
                found,
                expected,
            } => write!(f, "header field {field} is {found}, expected {expected}"),
            BrokenReason::BadRecord { index, what } => {
                write!(f, "bad record at index {index}: {what}")
            }
            BrokenReason::LossAccounting { seq_gaps, lost } => write!(
                f,
                "loss accounting: {seq_gaps} records missing by seq, lost counter {lost}"
            ),
            BrokenReason::Mapping { len, needed } => {
                write!(f, "mapping of {len} bytes, {needed} needed (or misaligned)")
            }
        }
    }
}

/// Formats an optional domain for messages.
fn dom(domid: &Option<u16>) -> String {
    match domid {
        Some(d) => format!(" of domain {d}"),
        None => String::new(),
    }
}

/// Formats an errno for messages.
fn errno_str(errno: &i32) -> String {
    std::io::Error::from_raw_os_error(*errno).to_string()
}

/// Everything that can go wrong.  Each variant carries what failed (`op`),
/// for which domain and, where the cause is an OS error, the `errno`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not running on Xen: no `/dev/xen/privcmd` (nor `/proc/xen/privcmd`).
    #[error("{op}: not running on Xen (no /dev/xen/privcmd)")]
    NotXen {
        /// The operation.
        op: Op,
    },
    /// `EACCES`/`EPERM`: not privileged (not root, not dom0, denied by
    /// XSM), or the hypervisor's domctl interface version differs.
    #[error("{op}{}: permission denied ({})", dom(.domid), errno_str(.errno))]
    PermissionDenied {
        /// The operation.
        op: Op,
        /// The domain, if the operation concerned one.
        domid: Option<u16>,
        /// `EACCES` or `EPERM`.
        errno: i32,
    },
    /// `ESRCH`: the domain does not exist.
    #[error("{op}: no domain {domid}")]
    NoSuchDomain {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
    },
    /// `EBUSY`: the ring of this type already has a consumer (register with
    /// takeover to replace it).
    #[error("{op}: the {ty} ring of domain {domid} already has a consumer")]
    Busy {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
    },
    /// `ENOENT`: no ring of this type is registered.
    #[error("{op}: no {ty} ring is registered for domain {domid}")]
    NotRegistered {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
    },
    /// `ESTALE`: the token given is not the one of the ring registered now
    /// (it was taken over, or unregistered and registered again).
    #[error("{op}: the {ty} ring of domain {domid} belongs to another registration now")]
    Stale {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
    },
    /// `ENOSYS` from `XEN_DOMCTL_mem_event_ring`: the hypervisor lacks the
    /// mem-event ring series.
    #[error("{op}: the hypervisor lacks XEN_DOMCTL_mem_event_ring (domain {domid})")]
    DomctlMissing {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
    },
    /// `EOPNOTSUPP` (or `ENOSYS` from anything but the domctl): not
    /// supported for this domain or by this hypervisor (e.g. not HVM, or no
    /// `XENMEM_resource_mem_event`).
    #[error("{op}{}: not supported ({})", dom(.domid), errno_str(.errno))]
    NotSupported {
        /// The operation.
        op: Op,
        /// The domain, if the operation concerned one.
        domid: Option<u16>,
        /// `EOPNOTSUPP` or `ENOSYS`.
        errno: i32,
    },
    /// `ENODEV`: the domain does not use HAP (memory sharing needs it).
    #[error("{op}: domain {domid} does not use HAP")]
    NoHap {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
    },
    /// `ENOSPC`: a synchronous ring must have a slot for every vCPU.
    #[error("{op}: the {ty} ring of domain {domid} has fewer slots than the domain has vCPUs")]
    NoSpace {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
    },
    /// `EINVAL`, or an argument rejected before reaching Xen.
    #[error("{op}{}: invalid argument: {what}", dom(.domid))]
    InvalidArgument {
        /// The operation.
        op: Op,
        /// The domain, if the operation concerned one.
        domid: Option<u16>,
        /// What was invalid.
        what: &'static str,
    },
    /// The ring page's layout version is not the one this crate speaks.
    #[error(
        "{op}: the {ty} ring of domain {domid} has layout version {found:#x}, expected \
        {expected:#x}"
    )]
    VersionMismatch {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
        /// `version` in the ring page.
        found: u32,
        /// `XEN_MEM_EVENT_INTERFACE_VERSION`.
        expected: u32,
    },
    /// The ring is unusable: Xen flagged it, or the producer's state is
    /// impossible.  Every later operation on the ring fails the same way;
    /// drop the ring (and register again) to recover.
    #[error("{op}: the {ty} ring of domain {domid} is broken: {reason}")]
    RingBroken {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
        /// What is wrong.
        reason: BrokenReason,
    },
    /// The response array has no free slot (Xen has not consumed earlier
    /// responses yet).  Flush, wait a little and retry.
    #[error("{op}: the response array of the {ty} ring of domain {domid} is full")]
    RingFull {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The event type.
        ty: EventType,
    },
    /// A response for a request that this ring does not hold pending
    /// (never taken, already answered, or foreign).
    #[error("{op}: request {id:#x} (vCPU {vcpu_id}) is not pending on domain {domid}'s ring")]
    UnknownRequest {
        /// The operation.
        op: Op,
        /// The domain.
        domid: u16,
        /// The request id.
        id: u64,
        /// The vCPU given.
        vcpu_id: u32,
    },
    /// The operation does not apply to this kind of ring (sync vs async).
    #[error("{op}: wrong kind of ring ({ty})")]
    WrongRingType {
        /// The operation.
        op: Op,
        /// The ring's event type.
        ty: EventType,
    },
    /// Any other OS error.
    #[error("{op}{}: {}", dom(.domid), errno_str(.errno))]
    Os {
        /// The operation.
        op: Op,
        /// The domain, if the operation concerned one.
        domid: Option<u16>,
        /// The errno.
        errno: i32,
    },
}

impl Error {
    /// The errno behind this error, where there is one (the implied one for
    /// the variants named after an errno).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { errno, .. }
            | Error::NotSupported { errno, .. }
            | Error::Os { errno, .. } => Some(*errno),
            Error::NotXen { .. } => Some(libc::ENOENT),
            Error::NoSuchDomain { .. } => Some(libc::ESRCH),
            Error::Busy { .. } => Some(libc::EBUSY),
            Error::NotRegistered { .. } => Some(libc::ENOENT),
            Error::Stale { .. } => Some(libc::ESTALE),
            Error::DomctlMissing { .. } => Some(libc::ENOSYS),
            Error::NoHap { .. } => Some(libc::ENODEV),
            Error::NoSpace { .. } => Some(libc::ENOSPC),
            Error::InvalidArgument { .. } => Some(libc::EINVAL),
            _ => None,
        }
    }

    /// Whether the ring is broken (see [`Error::RingBroken`]).
    pub fn is_broken(&self) -> bool {
        matches!(self, Error::RingBroken { .. })
    }

    /// Maps an errno returned by a ring operation (`op` on `ty` of `domid`)
    /// to the variant the crate documents.  `ENOSYS` from one of the domctl
    /// operations means the hypervisor lacks the series.
    pub fn from_errno(op: Op, domid: u16, ty: EventType, errno: i32) -> Error {
        let domctl = matches!(op, Op::Register | Op::Unregister | Op::GetInfo | Op::Resume);
        match errno {
            libc::EBUSY => Error::Busy { op, domid, ty },
            libc::ENOENT if domctl => Error::NotRegistered { op, domid, ty },
            libc::ESTALE if domctl => Error::Stale { op, domid, ty },
            libc::ESRCH => Error::NoSuchDomain { op, domid },
            libc::ENOSYS if domctl => Error::DomctlMissing { op, domid },
            libc::EOPNOTSUPP | libc::ENOSYS => Error::NotSupported {
                op,
                domid: Some(domid),
                errno,
            },
            libc::ENODEV => Error::NoHap { op, domid },
            libc::ENOSPC if domctl => Error::NoSpace { op, domid, ty },
            libc::EACCES | libc::EPERM => Error::PermissionDenied {
                op,
                domid: Some(domid),
                errno,
            },
            libc::EINVAL => Error::InvalidArgument {
                op,
                domid: Some(domid),
                what: "rejected by Xen (EINVAL)",
            },
            _ => Error::Os {
                op,
                domid: Some(domid),
                errno,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: EventType = EventType::SharingOom;

    #[test]
    fn errno_mapping() {
        let m = |op, e| Error::from_errno(op, 5, T, e);
        assert!(matches!(
            m(Op::Register, libc::EBUSY),
            Error::Busy { domid: 5, .. }
        ));
        assert!(matches!(
            m(Op::GetInfo, libc::ENOENT),
            Error::NotRegistered { .. }
        ));
        assert!(matches!(m(Op::Map, libc::ENOENT), Error::Os { .. }));
        assert!(matches!(
            m(Op::Unregister, libc::ESTALE),
            Error::Stale { domid: 5, .. }
        ));
        assert!(matches!(m(Op::Resume, libc::ESTALE), Error::Stale { .. }));
        assert_eq!(m(Op::Unregister, libc::ESTALE).errno(), Some(libc::ESTALE));
        assert_eq!(
            m(Op::Unregister, libc::ESTALE).to_string(),
            "unregister: the SHARING_OOM ring of domain 5 belongs to another registration now"
        );
        assert!(matches!(
            m(Op::Register, libc::ESRCH),
            Error::NoSuchDomain { .. }
        ));
        assert!(matches!(
            m(Op::Register, libc::ENOSYS),
            Error::DomctlMissing { .. }
        ));
        assert!(matches!(
            m(Op::Map, libc::ENOSYS),
            Error::NotSupported { .. }
        ));
        assert!(matches!(
            m(Op::Register, libc::EOPNOTSUPP),
            Error::NotSupported { .. }
        ));
        assert!(matches!(m(Op::Register, libc::ENODEV), Error::NoHap { .. }));
        assert!(matches!(
            m(Op::Register, libc::ENOSPC),
            Error::NoSpace { .. }
        ));
        assert!(matches!(
            m(Op::Register, libc::EPERM),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            m(Op::Register, libc::EACCES),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            m(Op::Register, libc::EINVAL),
            Error::InvalidArgument { .. }
        ));
        assert!(matches!(
            m(Op::Register, libc::EIO),
            Error::Os {
                errno: libc::EIO,
                ..
            }
        ));
        for e in [
            libc::EBUSY,
            libc::ESRCH,
            libc::ENODEV,
            libc::EPERM,
            libc::EIO,
        ] {
            assert_eq!(m(Op::Register, e).errno(), Some(e));
        }
    }

    #[test]
    fn messages_name_op_domain_and_cause() {
        let e = Error::from_errno(Op::Register, 7, T, libc::EBUSY);
        assert_eq!(
            e.to_string(),
            "register: the SHARING_OOM ring of domain 7 already has a consumer"
        );
        let e = Error::from_errno(Op::Unregister, 7, T, libc::EIO);
        assert!(e.to_string().starts_with("unregister of domain 7: "), "{e}");
        let e = Error::NotXen { op: Op::Open };
        assert_eq!(
            e.to_string(),
            "open: not running on Xen (no /dev/xen/privcmd)"
        );
    }
}
