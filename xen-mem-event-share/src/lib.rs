//! The logic of a Xen memory-sharing daemon, in the style of Linux KSM.
//!
//! The daemon scans guests' memory through read-only mappings, hashes
//! every page (xxh3, with an all-zero fast path), keeps a table of
//! candidates keyed by hash, and shares two pages with the same hash only
//! after nominating both and comparing them byte for byte
//! (nominate → read → compare → share), within one domain and across
//! domains.  It keeps its table fresh by applying the records of Xen's
//! `SHARING_INVALIDATE` ring (each names a `<domain, gfn, handle>` that
//! stopped being valid); a batch that reports losses makes the domain's
//! memory be scanned again from the start.
//!
//! Everything here is pure logic, driven step by step by its caller
//! ([`Daemon::pass`], [`Daemon::step`], [`Daemon::apply`]): no thread, no
//! sleep, no clock of its own.  Xen is reached through two traits,
//! [`PageSource`] and [`Sharing`]; [`model::ModelXen`] implements both
//! with the semantics of Xen 4.17's `mem_sharing.c`, for tests and
//! benchmarks.
//!
//! ```
//! use xen_mem_event_share::{model::ModelXen, Config, Daemon, GfnRef};
//!
//! let mut xen = ModelXen::new(128);
//! xen.add_domain(1, 4);
//! xen.add_domain(2, 4);
//! for d in [1, 2] {
//!     for g in 0..4 {
//!         xen.guest_write(GfnRef::new(d, g), &ModelXen::pattern(g % 2));
//!     }
//! }
//! let mut daemon = Daemon::new(Config::default());
//! daemon.add_domain(1);
//! daemon.add_domain(2);
//! daemon.pass(&mut xen);
//! // Two classes of 4 identical pages: 2 frames left, 6 pages saved.
//! assert_eq!(daemon.stats().pages_sharing, 6);
//! assert_eq!(xen.truth().saved_pages, 6);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod daemon;
mod gfnmap;
mod hash;
mod members;
pub mod model;
mod record;
mod stats;
mod table;
pub mod xen;

pub use backend::{Backend, HostCounters, OpError, PageSource, Sharing, MAX_BATCH};
pub use daemon::{Config, Daemon, HOLE_COST_DIV};
pub use hash::{is_zero, page_key, ZERO_KEY};
pub use record::{InvalidateBatch, InvalidateRecord, Reason};
pub use stats::Stats;
pub use table::{Entry, Observed, Table};

/// A domain id.
pub type DomId = u16;
/// A guest frame number.
pub type Gfn = u64;
/// A sharing handle (Xen's `shr_handle_t`): names one shared frame for as
/// long as it lives; never reused.
pub type Handle = u64;
/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;
/// One page of guest memory.
pub type Page = [u8; PAGE_SIZE];

/// One gfn of one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct GfnRef {
    /// The domain.
    pub domid: DomId,
    /// The gfn in that domain.
    pub gfn: Gfn,
}

impl GfnRef {
    /// `<domid, gfn>`.
    pub const fn new(domid: DomId, gfn: Gfn) -> GfnRef {
        GfnRef { domid, gfn }
    }
}

impl std::fmt::Display for GfnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "d{} gfn {:#x}", self.domid, self.gfn)
    }
}
