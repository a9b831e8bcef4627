//! The daemon's counters, in Linux KSM's terms where KSM has one.

use std::fmt;

/// A snapshot of the daemon's counters (see [`crate::Daemon::stats`]).
///
/// Invariant: `share_attempts == share_ok + stale_source + stale_client +
/// share_failed + client_shared` ([`Stats::consistent`]).
///
/// An attempt is one merge of two frames, not one share call: a share
/// refused because the client frame is also mapped by a third domain is
/// tried once more the other way round within the same attempt (counted
/// in `share_swapped`, which is not a term of the invariant), and the
/// attempt is counted by the outcome of that second call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Pages read and hashed (KSM `pages_scanned`).
    pub pages_scanned: u64,
    /// Of those, pages found all-zero (the fast path).
    pub zero_pages: u64,
    /// Gfns that could not be read (holes, paged out).
    pub read_errors: u64,
    /// Complete passes over every managed domain (KSM `full_scans`).
    pub full_scans: u64,
    /// Distinct frames with two gfns or more, as the table knows them
    /// (KSM `pages_shared`).
    pub pages_shared: u64,
    /// Gfns mapped to those frames beyond the first of each: the pages
    /// saved, as the table knows them (KSM `pages_sharing`).
    pub pages_sharing: u64,
    /// Pages saved according to Xen (`xc_sharing_freed_pages`), at the
    /// end of the last pass.
    pub host_saved: u64,
    /// Shared frames according to Xen (`xc_sharing_used_frames`,
    /// nominated single-gfn frames included).
    pub host_shared_frames: u64,
    /// Merges tried: share calls, a retry the other way round not counted
    /// again (see `share_swapped`).
    pub share_attempts: u64,
    /// Shares that succeeded.
    pub share_ok: u64,
    /// Shares refused because the source gfn no longer held the handle
    /// the table had for it.
    pub stale_source: u64,
    /// Shares refused because the client gfn no longer held the handle it
    /// was just nominated with (the guest wrote to it in between).
    pub stale_client: u64,
    /// Shares that failed for any other reason.
    pub share_failed: u64,
    /// Shares refused both ways because each frame was also mapped by a
    /// third domain (Xen: `EXDEV`, xen-patches 0008).
    pub client_shared: u64,
    /// Shares tried again with source and client swapped because the
    /// client frame was also mapped by a third domain (the retry belongs
    /// to the same attempt; its outcome is what the attempt counts as).
    pub share_swapped: u64,
    /// Nominations that failed (the gfn cannot be shared).
    pub nominate_failed: u64,
    /// Candidates with the same key whose contents differed when compared
    /// after nomination (changed since the scan, or a hash collision).
    pub compare_mismatch: u64,
    /// Invalidation records applied.
    pub records_applied: u64,
    /// Invalidation records the rings lost.
    pub records_lost: u64,
    /// Domains scanned again from the start because records were lost.
    pub rescans: u64,
    /// Managed domains that went away.
    pub domains_gone: u64,
    /// Gfns in the table.
    pub table_entries: u64,
}

impl Stats {
    /// Shares refused for a stale handle, source or client.
    pub fn stale_failures(&self) -> u64 {
        self.stale_source + self.stale_client
    }

    /// Whether every share attempt is accounted for exactly once.
    pub fn consistent(&self) -> bool {
        self.share_attempts
            == self.share_ok + self.stale_failures() + self.share_failed + self.client_shared
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scanned {} ({} zero, {} full scans) · shared {} sharing {} (Xen: saved {}, {} \
                frames) · \
             shares {} = {} ok + {} stale ({} source, {} client) + {} failed + {} client shared \
             ({} swapped) · \
             records {} applied, {} lost, {} rescans",
            self.pages_scanned,
            self.zero_pages,
            self.full_scans,
            self.pages_shared,
            self.pages_sharing,
            self.host_saved,
            self.host_shared_frames,
            self.share_attempts,
            self.share_ok,
            self.stale_failures(),
            self.stale_source,
            self.stale_client,
            self.share_failed,
            self.client_shared,
            self.share_swapped,
            self.records_applied,
            self.records_lost,
            self.rescans
        )
    }
}
