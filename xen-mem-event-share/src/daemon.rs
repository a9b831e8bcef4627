//! The daemon: scan passes, merges, invalidation batches, counters.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::backend::{Backend, HostCounters, OpError, PageSource, MAX_BATCH};
use crate::table::{Observed, Table};

use crate::{
    is_zero, page_key, DomId, Gfn, GfnRef, Handle, InvalidateBatch, Page, Stats, ZERO_KEY,
};

/// Most handles [`Daemon`] remembers as all-zero frames.
const ZERO_HANDLES_MAX: usize = 1 << 16;

/// A gfn Xen refused to nominate, or to share both ways, sits out this
/// many full scans at most (1, 2, 4 ... after consecutive refusals).
const REFUSED_MAX_WAIT: u64 = 32;
/// Refused gfns remembered at most (the map is cleared when larger).
const REFUSED_MAX: usize = 1 << 16;

/// A gfn Xen refused to nominate (dom0 maps it writable, or it is not a
/// sharable type) or to share both ways: when to try it again.
#[derive(Debug, Clone, Copy)]
struct Refused {
    /// Consecutive refusals.
    times: u32,
    /// The full scan from which it is looked at again.
    until: u64,
    /// Refused as one side of a share both ways (it stays in the table
    /// and is scanned: only its merges wait), not a nomination.
    both_ways: bool,
}

/// A gfn that cannot be read costs a pass's budget this fraction of a
/// page: mapping a hole is cheap, and a PVH guest's gfn space is mostly
/// holes.
pub const HOLE_COST_DIV: u64 = 64;

/// How the daemon scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    /// Gfns read per call (at most [`MAX_BATCH`]).
    pub batch: usize,
    /// Pages scanned per pass, round-robin across domains one batch at a
    /// time (KSM `pages_to_scan`).
    pub pages_per_pass: u64,
    /// Time between the starts of two passes (KSM `sleep_millisecs`).
    pub pass_interval: Duration,
    /// Apply invalidation records (false: `--no-invalidate`, stale
    /// entries are only found when a share fails).
    pub invalidate: bool,
    /// A pass ends early (between two batches) once it has attempted
    /// this many shares, so that the records its own shares post
    /// (`MERGED`, one per gfn moved) are consumed before the next pass
    /// rather than overflow the rings: set it to half the smallest ring.
    pub shares_per_pass: u64,
}

impl Default for Config {
    /// 4096 pages (16 MiB) every 100 ms, batches of 512, with the ring.
    fn default() -> Config {
        Config {
            batch: MAX_BATCH,
            pages_per_pass: 4096,
            pass_interval: Duration::from_millis(100),
            invalidate: true,
            shares_per_pass: u64::MAX,
        }
    }
}

impl Config {
    /// Scans about `pages_per_sec` pages per second in passes every
    /// `interval`.
    pub fn with_rate(mut self, pages_per_sec: u64, interval: Duration) -> Config {
        let per_pass = u128::from(pages_per_sec) * interval.as_millis() / 1000;
        self.pages_per_pass = u64::try_from(per_pass).unwrap_or(u64::MAX).max(1);
        self.pass_interval = interval;
        self
    }
}

/// Where the scan of one domain stands.
#[derive(Debug, Clone, Copy, Default)]
struct DomScan {
    /// Next gfn to read.
    cursor: Gfn,
    /// Gfns of the domain, read again after every wrap.
    count: Option<u64>,
    /// Wrapped since the last full scan.
    wrapped: bool,
}

/// Gfns per hole chunk: the unit in which unreadable gfn ranges are
/// remembered and skipped.
pub const HOLE_CHUNK: u64 = 512;
/// A chunk that follows unreadable gfns is first probed at one gfn in
/// this many (mapping a hole costs a hypercall per gfn on a PV dom0).
pub const PROBE_STRIDE: usize = 16;
/// Chunks known to be holes are probed again every this many full scans
/// (a guest's memory map may change); skipped otherwise.
pub const HOLE_RECHECK: u64 = 8;

/// What the scan learnt of a domain's holes.
#[derive(Debug, Clone, Default)]
struct Holes {
    /// Chunks (gfn / [`HOLE_CHUNK`]) found entirely unreadable.
    known: FxHashSet<u64>,
    /// The gfn read just before the cursor was unreadable.
    after_hole: bool,
    /// A gfn of the chunk being read was readable.
    chunk_readable: bool,
}

/// One side of a merge.
#[derive(Debug, Clone, Copy)]
struct Side {
    page: GfnRef,
    handle: Option<Handle>,
}

/// The sharing daemon's logic.  The caller drives it: [`Daemon::step`]
/// (or [`Daemon::pass`]) on a timer, [`Daemon::apply`] for each batch of
/// each domain's invalidation ring, [`Daemon::add_domain`] /
/// [`Daemon::remove_domain`] as domains come and go.
#[derive(Debug)]
pub struct Daemon {
    cfg: Config,
    table: Table,
    doms: BTreeMap<DomId, DomScan>,
    /// The domain scanned last (round-robin).
    rr: Option<DomId>,
    next_pass: Option<Duration>,
    stats: Stats,
    host: HostCounters,
    bufs: Box<[Page; 2]>,
    keys: Vec<(Gfn, u64)>,
    bad: Vec<Gfn>,
    /// Handles whose frame was read all-zero after the handle was
    /// obtained: a shared frame never changes while its handle lives
    /// (a write unshares the writer's gfn instead), so it need not be read
    /// again (see [`Daemon::both_zero`]).  A cache, cleared when large.
    zero_handles: FxHashSet<Handle>,
    /// Per domain, its holes (see [`HOLE_CHUNK`]).
    holes: BTreeMap<DomId, Holes>,
    /// Gfns Xen refused to nominate or to share both ways, sitting out
    /// full scans: a refusal costs a hypercall (and a debug hypervisor's
    /// log line), and what makes it (a writable mapping by a backend, a
    /// frame mapped by a third domain) tends to last.
    refused: FxHashMap<GfnRef, Refused>,
}

impl Daemon {
    /// A daemon managing no domain yet.
    pub fn new(mut cfg: Config) -> Daemon {
        cfg.batch = cfg.batch.clamp(1, MAX_BATCH);
        Daemon {
            cfg,
            table: Table::new(),
            doms: BTreeMap::new(),
            rr: None,
            next_pass: None,
            stats: Stats::default(),
            host: HostCounters::default(),
            bufs: Box::new([[0; crate::PAGE_SIZE]; 2]),
            keys: Vec::with_capacity(MAX_BATCH),
            bad: Vec::new(),
            zero_handles: FxHashSet::default(),
            holes: BTreeMap::new(),
            refused: FxHashMap::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The candidate table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Starts managing `domid`; false if it already was.
    pub fn add_domain(&mut self, domid: DomId) -> bool {
        if self.doms.contains_key(&domid) {
            return false;
        }
        self.doms.insert(domid, DomScan::default());
        true
    }

    /// Forgets `domid` (it went away, or is no longer managed); false if
    /// it was not managed.
    pub fn remove_domain(&mut self, domid: DomId) -> bool {
        self.table.forget_domain(domid);
        self.holes.remove(&domid);
        self.refused.retain(|p, _| p.domid != domid);
        self.doms.remove(&domid).is_some()
    }

    /// The managed domains.
    pub fn domains(&self) -> impl Iterator<Item = DomId> + '_ {
        self.doms.keys().copied()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        Stats {
            pages_shared: self.table.pages_shared(),
            pages_sharing: self.table.pages_sharing(),
            host_saved: self.host.saved_pages,
            host_shared_frames: self.host.shared_frames,
            table_entries: self.table.len() as u64,
            ..self.stats
        }
    }

    /// Applies one batch of a domain's invalidation ring.  A batch with
    /// losses makes that domain be scanned again from the start, its
    /// entries forgotten (which records were missed is unknown).  Does
    /// nothing without [`Config::invalidate`].
    pub fn apply(&mut self, batch: &InvalidateBatch) {
        if !self.cfg.invalidate {
            return;
        }
        for rec in &batch.records {
            self.table.apply(rec);
            if rec.handle_gone {
                self.zero_handles.remove(&rec.handle);
            }
        }
        self.stats.records_applied += batch.records.len() as u64;
        if batch.lost > 0 {
            self.stats.records_lost += batch.lost;
            self.rescan(batch.domid);
        }
    }

    fn rescan(&mut self, domid: DomId) {
        let Some(s) = self.doms.get_mut(&domid) else {
            return;
        };
        *s = DomScan::default();
        if let Some(h) = self.holes.get_mut(&domid) {
            h.after_hole = false;
        }
        self.table.forget_domain(domid);
        self.stats.rescans += 1;
    }

    /// Runs a pass if one is due at `now` (time since any fixed origin);
    /// returns when the next one is due.
    pub fn step<B: Backend + ?Sized>(&mut self, xen: &mut B, now: Duration) -> Duration {
        let due = *self.next_pass.get_or_insert(now);
        if now >= due {
            self.pass(xen);
            self.next_pass = Some(now + self.cfg.pass_interval);
        }
        self.next_pass.unwrap_or(now)
    }

    /// One pass: up to [`Config::pages_per_pass`] pages, a batch from each
    /// domain in turn, stopping early when a full scan completes (a pass
    /// never reads a page twice); then Xen's counters.  A gfn that cannot
    /// be read (a hole: most of a PVH guest's gfn space) costs the budget
    /// 1/[`HOLE_COST_DIV`] of a page.  Returns the budget used.
    pub fn pass<B: Backend + ?Sized>(&mut self, xen: &mut B) -> u64 {
        let (mut budget, mut scanned, mut idle) = (self.cfg.pages_per_pass, 0, 0);
        let (full_scans, attempts) = (self.stats.full_scans, self.stats.share_attempts);
        while budget > 0
            && idle <= self.doms.len()
            && self.stats.full_scans == full_scans
            && self.stats.share_attempts - attempts < self.cfg.shares_per_pass
        {
            let Some(domid) = self.next_domain() else {
                break;
            };
            let n = self.scan_some(xen, domid, budget);
            idle = if n == 0 { idle + 1 } else { 0 };
            budget = budget.saturating_sub(n);
            scanned += n;
        }
        if let Ok(h) = xen.host_counters() {
            self.host = h;
        }
        scanned
    }

    fn next_domain(&mut self) -> Option<DomId> {
        let next = match self.rr {
            Some(last) => self.doms.range((Excluded(last), Unbounded)).next(),
            None => None,
        };
        let d = next.or_else(|| self.doms.iter().next()).map(|(d, _)| *d)?;
        self.rr = Some(d);
        Some(d)
    }

    /// Scans the next batch of `domid`; returns the budget it cost.
    fn scan_some<B: Backend + ?Sized>(&mut self, xen: &mut B, domid: DomId, budget: u64) -> u64 {
        let Some(count) = self.domain_count(xen, domid) else {
            return 0;
        };
        let Some(s) = self.doms.get(&domid).copied() else {
            return 0;
        };
        let room = count.saturating_sub(s.cursor);
        let (chunk, offset) = (s.cursor / HOLE_CHUNK, s.cursor % HOLE_CHUNK);
        if offset == 0 && room > 0 {
            if let Some(cost) = self.skip_hole(xen, domid, chunk, room) {
                self.advance(domid, HOLE_CHUNK.min(room), count);
                return cost;
            }
        }
        // Batches never straddle a chunk boundary.
        let n = room
            .min(budget)
            .min(self.cfg.batch as u64)
            .min(HOLE_CHUNK - offset);
        let mut cost = 0;
        if n > 0 {
            let gfns: Vec<Gfn> = (s.cursor..s.cursor + n).collect();
            let (read, errors) = self.scan_batch(xen, domid, &gfns);
            cost = (read + errors.div_ceil(HOLE_COST_DIV)).max(1);
            // The batch ended in unreadable gfns: the next chunk may be a
            // hole too.
            let tail_bad = self.bad.last() == Some(&(s.cursor + n - 1));
            let h = self.holes.entry(domid).or_default();
            h.after_hole = tail_bad;
            h.chunk_readable |= read > 0;
            // The chunk ends here, entirely unreadable: remember it.
            let ends = offset + n == HOLE_CHUNK || s.cursor + n >= count;
            if ends && !h.chunk_readable && errors > 0 {
                h.known.insert(chunk);
            }
        }
        self.advance(domid, n, count);
        cost
    }

    /// At the start of `chunk`: skips it if it is a known hole (probing
    /// it again every [`HOLE_RECHECK`] full scans), or if it follows a hole
    /// and a probe of one gfn in [`PROBE_STRIDE`] finds nothing readable.
    /// Returns the budget used if the chunk is skipped; `None` to read it.
    fn skip_hole<B: Backend + ?Sized>(
        &mut self,
        xen: &mut B,
        domid: DomId,
        chunk: u64,
        room: u64,
    ) -> Option<u64> {
        let recheck = self.stats.full_scans % HOLE_RECHECK == HOLE_RECHECK - 1;
        let h = self.holes.entry(domid).or_default();
        h.chunk_readable = false;
        let known = h.known.contains(&chunk);
        if known && !recheck {
            return Some(1);
        }
        if !(known || h.after_hole) {
            return None;
        }
        let start = chunk * HOLE_CHUNK;
        let probes: Vec<Gfn> = (start..start + room.min(HOLE_CHUNK))
            .step_by(PROBE_STRIDE)
            .collect();
        let mut readable = false;
        let r = xen.read_pages(domid, &probes, &mut |_, page| readable |= page.is_ok());
        if let Err(e) = r {
            self.failed_domain(domid, e);
            return Some(1);
        }
        self.stats.read_errors += if readable { 0 } else { probes.len() as u64 };
        let h = self.holes.entry(domid).or_default();
        if readable {
            h.known.remove(&chunk);
            return None;
        }
        h.known.insert(chunk);
        h.after_hole = true;
        Some(1)
    }

    /// Moves `domid`'s cursor `n` gfns on, wrapping at `count`.
    fn advance(&mut self, domid: DomId, n: u64, count: u64) {
        if let Some(s) = self.doms.get_mut(&domid) {
            s.cursor += n;
            if s.cursor >= count {
                self.wrap(domid);
            }
        }
    }

    fn domain_count<B: Backend + ?Sized>(&mut self, xen: &mut B, domid: DomId) -> Option<u64> {
        let s = self.doms.get_mut(&domid)?;
        if let Some(c) = s.count {
            return Some(c);
        }
        match xen.gfn_count(domid) {
            Ok(c) => {
                s.count = Some(c);
                Some(c)
            }
            Err(e) => {
                self.failed_domain(domid, e);
                None
            }
        }
    }

    fn failed_domain(&mut self, domid: DomId, e: OpError) {
        if e == OpError::NoDomain {
            self.remove_domain(domid);
            self.stats.domains_gone += 1;
        }
    }

    fn wrap(&mut self, domid: DomId) {
        if let Some(h) = self.holes.get_mut(&domid) {
            h.after_hole = false;
        }
        if let Some(s) = self.doms.get_mut(&domid) {
            *s = DomScan {
                wrapped: true,
                ..DomScan::default()
            };
        }
        if self.doms.values().all(|s| s.wrapped) {
            self.stats.full_scans += 1;
            self.doms.values_mut().for_each(|s| s.wrapped = false);
        }
    }

    /// Reads and observes a batch; returns (pages read, gfns not read).
    fn scan_batch<B: Backend + ?Sized>(
        &mut self,
        xen: &mut B,
        domid: DomId,
        gfns: &[Gfn],
    ) -> (u64, u64) {
        let mut keys = std::mem::take(&mut self.keys);
        let mut bad = std::mem::take(&mut self.bad);
        keys.clear();
        bad.clear();
        let read = xen.read_pages(domid, gfns, &mut |gfn, page| match page {
            Ok(p) => keys.push((gfn, page_key(p))),
            Err(_) => bad.push(gfn),
        });
        let counts = match read {
            Ok(()) => (keys.len() as u64, bad.len() as u64),
            Err(_) => (0, gfns.len() as u64),
        };
        match read {
            Ok(()) => {
                self.stats.pages_scanned += keys.len() as u64;
                self.stats.zero_pages += keys.iter().filter(|(_, k)| *k == ZERO_KEY).count() as u64;
                self.stats.read_errors += bad.len() as u64;
                for &gfn in &bad {
                    self.table.remove(GfnRef::new(domid, gfn));
                }
                for &(gfn, key) in &keys {
                    let page = GfnRef::new(domid, gfn);
                    if !self.sitting_out(page, false) {
                        self.observe(xen, page, key);
                    }
                }
            }
            Err(e) => {
                self.stats.read_errors += gfns.len() as u64;
                self.failed_domain(domid, e);
            }
        }
        self.keys = keys;
        self.bad = bad;
        counts
    }

    fn observe<B: Backend + ?Sized>(&mut self, xen: &mut B, page: GfnRef, key: u64) {
        if let Observed::Match {
            rep,
            rep_handle,
            handle,
        } = self.table.observe(page, key)
        {
            let rep = Side {
                page: rep,
                handle: rep_handle,
            };
            self.merge(xen, key, rep, Side { page, handle });
        }
    }

    /// nominate → read both → compare → share.
    fn merge<B: Backend + ?Sized>(&mut self, xen: &mut B, key: u64, rep: Side, new: Side) {
        let Some(hs) = self.handle_of(xen, rep) else {
            self.table.set_rep(key, new.page);
            return;
        };
        let Some(hc) = self.handle_of(xen, new) else {
            return;
        };
        if hs == hc || self.sitting_out(new.page, true) {
            return;
        }
        let same = if key == ZERO_KEY {
            self.both_zero(xen, (rep.page, hs), (new.page, hc))
        } else {
            self.same_contents(xen, key, rep.page, new.page)
        };
        if !same {
            return;
        }
        // The frame with more known gfns stays; the other one's move.
        let (mut src, mut sh, mut cli, mut ch) = if self.table.members(hc) > self.table.members(hs)
        {
            (new.page, hc, rep.page, hs)
        } else {
            (rep.page, hs, new.page, hc)
        };
        // One attempt per merge: a client frame that a third domain also
        // maps is refused (nothing changed), so the same attempt tries the
        // other frame as client once; its outcome is the attempt's.
        self.stats.share_attempts += 1;
        let mut r = xen.share(src, sh, cli, ch);
        if r == Err(OpError::ClientShared) {
            self.stats.share_swapped += 1;
            (src, sh, cli, ch) = (cli, ch, src, sh);
            r = xen.share(src, sh, cli, ch);
        }
        match r {
            Ok(()) => {
                self.stats.share_ok += 1;
                self.table.merged(cli, ch, sh);
                if !self.refused.is_empty() {
                    self.refused.remove(&new.page);
                }
            }
            Err(OpError::StaleSource) => {
                self.zero_handles.remove(&sh);
                self.stats.stale_source += 1;
                self.table.remove(src);
                self.table.set_rep(key, cli);
            }
            Err(OpError::StaleClient) => {
                self.zero_handles.remove(&ch);
                self.stats.stale_client += 1;
                self.table.remove(cli);
                self.table.set_rep(key, src);
            }
            Err(OpError::ClientShared) => {
                // Each frame has a gfn of a domain the other frame's
                // domain is not: neither can move now.  Both gfns still
                // hold the handles the table has (nothing changed), so
                // their entries stay (and are scanned, so that the table
                // follows them); the gfn that found the match is not
                // merged for some full scans.
                self.stats.client_shared += 1;
                self.refuse(new.page, true);
            }
            Err(_) => {
                self.stats.share_failed += 1;
                self.table.remove(new.page);
            }
        }
    }

    /// The handle of one side: the one the table has, or a nomination.
    fn handle_of<B: Backend + ?Sized>(&mut self, xen: &mut B, side: Side) -> Option<Handle> {
        if side.handle.is_some() {
            return side.handle;
        }
        match xen.nominate(side.page) {
            Ok(h) => {
                self.refused.remove(&side.page);
                self.table.set_handle(side.page, h);
                Some(h)
            }
            Err(e) => {
                self.stats.nominate_failed += 1;
                self.table.remove(side.page);
                if e == OpError::BadGfn {
                    self.refuse(side.page, false);
                }
                None
            }
        }
    }

    /// Whether `page` is sitting out this full scan after a refusal of
    /// the kind `both_ways` says (a nomination: it is not scanned; a share
    /// both ways: it is not merged).
    fn sitting_out(&self, page: GfnRef, both_ways: bool) -> bool {
        self.refused
            .get(&page)
            .is_some_and(|r| r.both_ways == both_ways && self.stats.full_scans < r.until)
    }

    /// Xen refused to nominate `page`, or to share it both ways: it sits
    /// out the next 1, 2, 4 ... [`REFUSED_MAX_WAIT`] full scans.
    fn refuse(&mut self, page: GfnRef, both_ways: bool) {
        if self.refused.len() >= REFUSED_MAX {
            self.refused.clear();
        }
        let scan = self.stats.full_scans;
        let r = self.refused.entry(page).or_insert(Refused {
            times: 0,
            until: 0,
            both_ways,
        });
        let wait = (1u64 << r.times.min(6)).min(REFUSED_MAX_WAIT);
        r.times = r.times.saturating_add(1);
        r.until = scan + 1 + wait;
        r.both_ways = both_ways;
    }

    /// The zero fast path of the compare: each side (page, handle it was
    /// nominated with) is all zero if its handle's frame was already read
    /// all zero, or if reading it now finds it so.  A side read non-zero
    /// is dropped (the next pass sees it anew), as in `same_contents`.
    fn both_zero<B: Backend + ?Sized>(
        &mut self,
        xen: &mut B,
        rep: (GfnRef, Handle),
        new: (GfnRef, Handle),
    ) -> bool {
        if self.zero_handles.len() > ZERO_HANDLES_MAX {
            self.zero_handles.clear();
        }
        let mut zero = |d: &mut Daemon, (page, h): (GfnRef, Handle)| {
            if d.zero_handles.contains(&h) {
                return true;
            }
            let buf = &mut d.bufs[0];
            let ok = read_into(xen, page, buf) && is_zero(buf);
            if ok {
                d.zero_handles.insert(h);
            }
            ok
        };
        let (rep_ok, new_ok) = (zero(self, rep), zero(self, new));
        if rep_ok && new_ok {
            return true;
        }
        self.stats.compare_mismatch += 1;
        if !rep_ok {
            self.table.remove(rep.0);
            self.table.set_rep(ZERO_KEY, new.0);
        }
        if !new_ok {
            self.table.remove(new.0);
        }
        false
    }

    /// Reads both pages again (after nomination) and compares them byte
    /// for byte.  A page whose contents no longer have `key` is dropped
    /// (the next pass sees it anew); the representative is then `new`.
    fn same_contents<B: Backend + ?Sized>(
        &mut self,
        xen: &mut B,
        key: u64,
        rep: GfnRef,
        new: GfnRef,
    ) -> bool {
        let [a, b] = &mut *self.bufs;
        let (ra, rb) = (read_into(xen, rep, a), read_into(xen, new, b));
        if ra && rb && a == b {
            return true;
        }
        self.stats.compare_mismatch += 1;
        let fresh = |p: &Page, read| read && page_key(p) == key;
        let (rep_ok, new_ok) = (fresh(a, ra), fresh(b, rb));
        if !rep_ok {
            self.table.remove(rep);
            self.table.set_rep(key, new);
        }
        if !new_ok {
            self.table.remove(new);
        }
        false
    }
}

/// Reads one page into `buf`; false if it could not be read.
fn read_into<B: PageSource + ?Sized>(xen: &mut B, page: GfnRef, buf: &mut Page) -> bool {
    let mut ok = false;
    let r = xen.read_pages(page.domid, &[page.gfn], &mut |_, p| {
        if let Ok(p) = p {
            buf.copy_from_slice(p);
            ok = true;
        }
    });
    r.is_ok() && ok
}
