//! What the daemon needs from Xen: reading pages, and the sharing ops.

use crate::{DomId, Gfn, GfnRef, Handle, Page};

/// Most gfns read by one [`PageSource::read_pages`] call (Xen: one
/// `xenforeignmemory_map` of at most this many gfns).
pub const MAX_BATCH: usize = 512;

/// Why a backend operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpError {
    /// `share`: the source gfn no longer holds the source handle
    /// (`XENMEM_SHARING_OP_S_HANDLE_INVALID`).
    StaleSource,
    /// `share`: the client gfn no longer holds the client handle
    /// (`XENMEM_SHARING_OP_C_HANDLE_INVALID`).
    StaleClient,
    /// `share`: the client frame is also mapped by a third domain (a gfn
    /// of a domain that is neither the source's nor the client's; Xen:
    /// `EXDEV`, xen-patches 0008).  Nothing changed; the share may succeed
    /// the other way round (the other frame as client).
    ClientShared,
    /// The gfn cannot be read or shared: a hole, a paged-out or special
    /// page (Xen: a per-gfn mapping error, or `EINVAL` from nominate).
    BadGfn,
    /// The domain does not exist (any more).
    NoDomain,
    /// Any other failure, as an errno.
    Errno(i32),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::StaleSource => f.write_str("source handle invalid"),
            OpError::StaleClient => f.write_str("client handle invalid"),
            OpError::ClientShared => {
                f.write_str("the client frame is also mapped by a third domain")
            }
            OpError::BadGfn => f.write_str("gfn cannot be read or shared"),
            OpError::NoDomain => f.write_str("no such domain"),
            OpError::Errno(e) => write!(f, "errno {e}"),
        }
    }
}

impl std::error::Error for OpError {}

/// Reads guests' memory read-only.
pub trait PageSource {
    /// How many gfns the domain has to scan (its highest gfn + 1).
    fn gfn_count(&mut self, domid: DomId) -> Result<u64, OpError>;

    /// Reads up to [`MAX_BATCH`] gfns of `domid` read-only and calls
    /// `each` once per gfn, in order, with its contents or why it could
    /// not be read.  An error for the whole call (e.g.
    /// [`OpError::NoDomain`]) means `each` was not called.
    fn read_pages(
        &mut self,
        domid: DomId,
        gfns: &[Gfn],
        each: &mut dyn FnMut(Gfn, Result<&Page, OpError>),
    ) -> Result<(), OpError>;
}

/// Xen's host-wide sharing counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostCounters {
    /// Pages freed by sharing (`xc_sharing_freed_pages`, Xen's
    /// `nr_saved_mfns`): the gfns mapped to shared frames beyond the first
    /// of each.
    pub saved_pages: u64,
    /// Shared frames, including nominated ones with a single gfn
    /// (`xc_sharing_used_frames`, Xen's `nr_shared_mfns`).
    pub shared_frames: u64,
}

/// Xen's memory-sharing operations (`XENMEM_sharing_op_*`).
pub trait Sharing {
    /// Makes `page` sharable and returns its handle.  A gfn that is
    /// already shared returns its current handle; one that cannot be
    /// shared fails ([`OpError::BadGfn`]).
    fn nominate(&mut self, page: GfnRef) -> Result<Handle, OpError>;

    /// Merges the client's frame into the source's: every gfn of the
    /// client frame then maps the source frame, the client handle dies
    /// (one `MERGED` + `HANDLE_GONE` record per moved gfn) and one page is
    /// freed.  Fails with [`OpError::StaleSource`] /
    /// [`OpError::StaleClient`] when a gfn no longer holds its handle, and
    /// with [`OpError::ClientShared`] (changing nothing) when the client
    /// frame has a gfn of a domain other than `src.domid` and `cli.domid`.
    fn share(
        &mut self,
        src: GfnRef,
        src_handle: Handle,
        cli: GfnRef,
        cli_handle: Handle,
    ) -> Result<(), OpError>;

    /// The host's sharing counters.
    fn host_counters(&mut self) -> Result<HostCounters, OpError>;
}

/// Both halves: what [`crate::Daemon`] runs on.
pub trait Backend: PageSource + Sharing {}

impl<T: PageSource + Sharing + ?Sized> Backend for T {}
