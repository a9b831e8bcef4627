//! Invalidation records, as the `SHARING_INVALIDATE` ring delivers them.

use crate::{DomId, Gfn, GfnRef, Handle};

/// Why a `<domain, gfn, handle>` stopped being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Reason {
    /// The gfn's frame was merged into another by a share.
    Merged,
    /// The gfn was unshared (written to, or unshared explicitly).
    Unshared,
    /// Any other reason (freed, destroyed, or one added later), raw.
    Other(u16),
}

impl Reason {
    /// From the ABI value (`XEN_MEM_EVENT_INVALIDATE_*`).
    pub fn from_raw(raw: u16) -> Reason {
        match raw {
            1 => Reason::Merged,
            2 => Reason::Unshared,
            other => Reason::Other(other),
        }
    }

    /// The ABI value.
    pub fn raw(self) -> u16 {
        match self {
            Reason::Merged => 1,
            Reason::Unshared => 2,
            Reason::Other(r) => r,
        }
    }
}

/// One record: `<domid, gfn>` no longer holds `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct InvalidateRecord {
    /// The domain of the gfn.
    pub domid: DomId,
    /// The gfn.
    pub gfn: Gfn,
    /// The handle the gfn held.
    pub handle: Handle,
    /// Why.
    pub reason: Reason,
    /// The handle died with this record (its frame has no gfn left, or
    /// was merged into another).
    pub handle_gone: bool,
}

impl InvalidateRecord {
    /// The gfn the record names.
    pub fn page(&self) -> GfnRef {
        GfnRef::new(self.domid, self.gfn)
    }
}

/// The records one ring delivered at once, and how many it lost before
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidateBatch {
    /// The domain whose ring delivered the batch.
    pub domid: DomId,
    /// The records, in ring order.
    pub records: Vec<InvalidateRecord>,
    /// Records the ring dropped (full) since the previous batch.
    pub lost: u64,
}
