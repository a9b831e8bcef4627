//! `ModelXen`: a deterministic model of Xen 4.17's memory sharing
//! (`xen/arch/x86/mm/mem_sharing.c`) with the series' invalidation rings,
//! for tests and benchmarks.
//!
//! Frames have contents; each domain has a p2m (gfn → frame, or a hole).
//! `nominate` makes a private frame shared with a fresh handle (one gfn);
//! `share` moves every gfn of the client frame onto the source frame and
//! posts `MERGED` + `HANDLE_GONE` for each of them (refused with
//! [`OpError::ClientShared`] when a gfn of the client frame belongs to
//! neither the source's nor the client's domain, as xen-patches 0008 makes
//! Xen do); a guest write to a
//! gfn of a shared frame gives it a private copy and posts `UNSHARED`
//! (with `HANDLE_GONE` when it was the frame's last gfn, which then
//! becomes private in place); writes to private frames post nothing.
//! Records go to the ring of the gfn's domain, which holds a bounded
//! number and counts what it drops, like the real asynchronous ring.
//! Guest writes can also be armed to happen inside the daemon's next
//! read, nominate or share call, to model a guest racing the daemon.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use crate::backend::{HostCounters, OpError, PageSource, Sharing, MAX_BATCH};
use crate::{
    DomId, Gfn, GfnRef, Handle, InvalidateBatch, InvalidateRecord, Page, Reason, PAGE_SIZE,
};

/// `XEN_MEM_EVENT_INVALIDATE_FREED`.
const REASON_FREED: u16 = 3;
/// `XEN_MEM_EVENT_INVALIDATE_DESTROYED`.
const REASON_DESTROYED: u16 = 4;

/// A frame's sharing state (Xen's `page_sharing_info`).
#[derive(Debug, Clone)]
struct ShareInfo {
    handle: Handle,
    gfns: BTreeSet<GfnRef>,
}

#[derive(Debug, Clone)]
struct Frame {
    data: Box<Page>,
    sharing: Option<ShareInfo>,
}

#[derive(Debug, Clone, Default)]
struct ModelDom {
    p2m: Vec<Option<u64>>,
    ring: VecDeque<InvalidateRecord>,
    lost: u64,
}

/// Which backend call an armed guest write happens in (just before the
/// call does its work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The next [`PageSource::read_pages`].
    Read,
    /// The next [`Sharing::nominate`].
    Nominate,
    /// The next [`Sharing::share`].
    Share,
}

/// The model.  See the module documentation.
#[derive(Debug, Clone)]
pub struct ModelXen {
    frames: FxHashMap<u64, Frame>,
    doms: BTreeMap<DomId, ModelDom>,
    next_mfn: u64,
    next_handle: Handle,
    counters: HostCounters,
    ring_slots: usize,
    armed: Vec<(Trigger, GfnRef, Box<Page>)>,
    fired: Vec<(GfnRef, Box<Page>)>,
    /// Gfns mapped writable by another domain (dom0's backends): Xen
    /// refuses to nominate them (a page with a writable type reference).
    pinned: BTreeSet<GfnRef>,
    /// Nominations refused for a pin.
    pub refused_nominations: u64,
}

impl ModelXen {
    /// A host with no domain; each invalidation ring holds `ring_slots`
    /// records.
    pub fn new(ring_slots: usize) -> ModelXen {
        ModelXen {
            frames: FxHashMap::default(),
            doms: BTreeMap::new(),
            next_mfn: 0x1000,
            next_handle: 1,
            counters: HostCounters::default(),
            ring_slots,
            armed: Vec::new(),
            fired: Vec::new(),
            pinned: BTreeSet::new(),
            refused_nominations: 0,
        }
    }

    /// Another domain maps `page` writable (`true`) or stops doing so:
    /// while it does, nominating the gfn fails ([`OpError::BadGfn`]; Xen:
    /// `EINVAL`, and a debug hypervisor logs "Bad type").
    pub fn pin_writable(&mut self, page: GfnRef, pinned: bool) {
        if pinned {
            self.pinned.insert(page);
        } else {
            self.pinned.remove(&page);
        }
    }

    /// Contents of class `n`: all zero for 0, otherwise a pattern of `n`
    /// (different classes differ in every 8-byte word).
    pub fn pattern(n: u64) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        if n != 0 {
            for (i, w) in p.chunks_exact_mut(8).enumerate() {
                let v = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64);
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
        p
    }

    /// Adds a domain of `gfns` private zero pages (replacing any domain
    /// with that id).
    pub fn add_domain(&mut self, domid: DomId, gfns: u64) {
        self.remove_domain(domid);
        let p2m = (0..gfns)
            .map(|_| Some(self.alloc(Box::new([0; PAGE_SIZE]))))
            .collect();
        self.doms.insert(
            domid,
            ModelDom {
                p2m,
                ..ModelDom::default()
            },
        );
    }

    /// Makes `page` a hole (it was private or shared).
    pub fn punch_hole(&mut self, page: GfnRef) {
        if let Ok(mfn) = self.frame_of(page) {
            self.release(page, mfn, REASON_FREED);
            if let Some(slot) = self.p2m_slot(page) {
                *slot = None;
            }
        }
    }

    /// Destroys a domain: its gfns leave their frames (what Xen's
    /// `relinquish_shared_pages` does), its ring goes with it.  False if
    /// there was no such domain.
    pub fn remove_domain(&mut self, domid: DomId) -> bool {
        let Some(dom) = self.doms.remove(&domid) else {
            return false;
        };
        for (gfn, mfn) in dom.p2m.iter().enumerate() {
            if let Some(mfn) = mfn {
                self.release(GfnRef::new(domid, gfn as Gfn), *mfn, REASON_DESTROYED);
            }
        }
        true
    }

    /// Takes `page` off frame `mfn`, freeing the frame if nothing else
    /// maps it.
    fn release(&mut self, page: GfnRef, mfn: u64, reason: u16) {
        let Some(f) = self.frames.get_mut(&mfn) else {
            return;
        };
        let Some(info) = f.sharing.as_mut() else {
            self.frames.remove(&mfn);
            return;
        };
        info.gfns.remove(&page);
        let handle = info.handle;
        let last = info.gfns.is_empty();
        if last {
            self.frames.remove(&mfn);
            self.counters.shared_frames -= 1;
        } else {
            self.counters.saved_pages -= 1;
        }
        self.post(page, handle, Reason::Other(reason), last);
    }

    /// The guest writes `data` to `page` (unsharing it first if it is
    /// shared).  False for a hole or an unknown gfn.
    pub fn guest_write(&mut self, page: GfnRef, data: &Page) -> bool {
        let Ok(mut mfn) = self.frame_of(page) else {
            return false;
        };
        if self.frames.get(&mfn).is_some_and(|f| f.sharing.is_some()) {
            mfn = self.unshare(page, mfn);
        }
        if let Some(f) = self.frames.get_mut(&mfn) {
            f.data.copy_from_slice(data);
        }
        true
    }

    /// Gives `page` a private frame; returns it.
    fn unshare(&mut self, page: GfnRef, mfn: u64) -> u64 {
        let Some(f) = self.frames.get_mut(&mfn) else {
            return mfn;
        };
        let Some(info) = f.sharing.as_mut() else {
            return mfn;
        };
        info.gfns.remove(&page);
        let handle = info.handle;
        if info.gfns.is_empty() {
            f.sharing = None;
            self.counters.shared_frames -= 1;
            self.post(page, handle, Reason::Unshared, true);
            return mfn;
        }
        let data = f.data.clone();
        self.counters.saved_pages -= 1;
        let new = self.alloc(data);
        if let Some(slot) = self.p2m_slot(page) {
            *slot = Some(new);
        }
        self.post(page, handle, Reason::Unshared, false);
        new
    }

    /// The contents `page` maps now.
    pub fn contents(&self, page: GfnRef) -> Option<&Page> {
        let mfn = self.frame_of(page).ok()?;
        self.frames.get(&mfn).map(|f| &*f.data)
    }

    /// The handle `page` holds, if it is shared.
    pub fn handle_of(&self, page: GfnRef) -> Option<Handle> {
        let mfn = self.frame_of(page).ok()?;
        self.frames.get(&mfn)?.sharing.as_ref().map(|s| s.handle)
    }

    /// The domains.
    pub fn domains(&self) -> Vec<DomId> {
        self.doms.keys().copied().collect()
    }

    /// Gfns of `domid` (0 if unknown).
    pub fn gfns(&self, domid: DomId) -> u64 {
        self.doms.get(&domid).map_or(0, |d| d.p2m.len() as u64)
    }

    /// Everything `domid`'s ring holds, and its loss count (both reset).
    pub fn take_batch(&mut self, domid: DomId) -> Option<InvalidateBatch> {
        let d = self.doms.get_mut(&domid)?;
        Some(InvalidateBatch {
            domid,
            records: d.ring.drain(..).collect(),
            lost: std::mem::take(&mut d.lost),
        })
    }

    /// Drops what `domid`'s ring holds, counting it as lost; returns how
    /// many records went.
    pub fn drop_records(&mut self, domid: DomId) -> u64 {
        let Some(d) = self.doms.get_mut(&domid) else {
            return 0;
        };
        let n = d.ring.len() as u64;
        d.ring.clear();
        d.lost += n;
        n
    }

    /// Arms a guest write of `data` to `page` inside the next backend
    /// call of kind `trigger`.
    pub fn arm(&mut self, trigger: Trigger, page: GfnRef, data: &Page) {
        self.armed.push((trigger, page, Box::new(*data)));
    }

    /// Forgets the armed writes that have not happened.
    pub fn disarm(&mut self) {
        self.armed.clear();
    }

    /// The armed writes that happened since the last call, in order.
    pub fn take_fired(&mut self) -> Vec<(GfnRef, Box<Page>)> {
        std::mem::take(&mut self.fired)
    }

    /// The host counters recomputed from the frames (Xen's audit), to
    /// check the incremental ones against.
    pub fn truth(&self) -> HostCounters {
        let shared = self.frames.values().filter_map(|f| f.sharing.as_ref());
        let (mut saved_pages, mut shared_frames) = (0, 0);
        for s in shared {
            shared_frames += 1;
            saved_pages += s.gfns.len().saturating_sub(1) as u64;
        }
        HostCounters {
            saved_pages,
            shared_frames,
        }
    }

    /// Checks that every shared frame's gfns map it and every mapped frame
    /// exists (for tests).
    pub fn check(&self) -> Result<(), String> {
        for (mfn, f) in &self.frames {
            for p in f.sharing.iter().flat_map(|s| &s.gfns) {
                if self.frame_of(*p) != Ok(*mfn) {
                    return Err(format!("{p} is in the rmap of {mfn:#x} but maps elsewhere"));
                }
            }
        }
        for (d, dom) in &self.doms {
            for (g, mfn) in dom.p2m.iter().enumerate() {
                if mfn.is_some_and(|m| !self.frames.contains_key(&m)) {
                    return Err(format!("d{d} gfn {g:#x} maps a freed frame"));
                }
            }
        }
        Ok(())
    }

    fn alloc(&mut self, data: Box<Page>) -> u64 {
        let mfn = self.next_mfn;
        self.next_mfn += 1;
        self.frames.insert(
            mfn,
            Frame {
                data,
                sharing: None,
            },
        );
        mfn
    }

    fn p2m_slot(&mut self, page: GfnRef) -> Option<&mut Option<u64>> {
        let i = usize::try_from(page.gfn).ok()?;
        self.doms.get_mut(&page.domid)?.p2m.get_mut(i)
    }

    fn frame_of(&self, page: GfnRef) -> Result<u64, OpError> {
        let dom = self.doms.get(&page.domid).ok_or(OpError::NoDomain)?;
        let i = usize::try_from(page.gfn).map_err(|_| OpError::BadGfn)?;
        dom.p2m.get(i).copied().flatten().ok_or(OpError::BadGfn)
    }

    fn post(&mut self, page: GfnRef, handle: Handle, reason: Reason, handle_gone: bool) {
        let Some(d) = self.doms.get_mut(&page.domid) else {
            return;
        };
        if d.ring.len() >= self.ring_slots {
            d.lost += 1;
            return;
        }
        d.ring.push_back(InvalidateRecord {
            domid: page.domid,
            gfn: page.gfn,
            handle,
            reason,
            handle_gone,
        });
    }

    fn fire(&mut self, trigger: Trigger) {
        let (now, later) = std::mem::take(&mut self.armed)
            .into_iter()
            .partition(|(t, _, _)| *t == trigger);
        self.armed = later;
        let now: Vec<(Trigger, GfnRef, Box<Page>)> = now;
        for (_, page, data) in now {
            if self.guest_write(page, &data) {
                self.fired.push((page, data));
            }
        }
    }

    fn shared_handle(&self, mfn: u64) -> Option<Handle> {
        self.frames.get(&mfn)?.sharing.as_ref().map(|s| s.handle)
    }

    /// Xen's checks, in its order: both frames shared (the lower mfn
    /// grabbed first), then the source handle, then the client's.
    fn check_share(&self, smfn: u64, sh: Handle, cmfn: u64, ch: Handle) -> Result<(), OpError> {
        let (s, c) = (self.shared_handle(smfn), self.shared_handle(cmfn));
        if smfn < cmfn {
            s.ok_or(OpError::StaleSource)?;
            c.ok_or(OpError::StaleClient)?;
        } else {
            c.ok_or(OpError::StaleClient)?;
            s.ok_or(OpError::StaleSource)?;
        }
        if s != Some(sh) {
            return Err(OpError::StaleSource);
        }
        if c != Some(ch) {
            return Err(OpError::StaleClient);
        }
        Ok(())
    }
}

impl PageSource for ModelXen {
    fn gfn_count(&mut self, domid: DomId) -> Result<u64, OpError> {
        self.doms
            .get(&domid)
            .map(|d| d.p2m.len() as u64)
            .ok_or(OpError::NoDomain)
    }

    fn read_pages(
        &mut self,
        domid: DomId,
        gfns: &[Gfn],
        each: &mut dyn FnMut(Gfn, Result<&Page, OpError>),
    ) -> Result<(), OpError> {
        self.fire(Trigger::Read);
        if gfns.len() > MAX_BATCH {
            return Err(OpError::Errno(22));
        }
        if !self.doms.contains_key(&domid) {
            return Err(OpError::NoDomain);
        }
        for &gfn in gfns {
            let mfn = self.frame_of(GfnRef::new(domid, gfn));
            let page = mfn.and_then(|m| self.frames.get(&m).ok_or(OpError::BadGfn));
            each(gfn, page.map(|f| &*f.data));
        }
        Ok(())
    }
}

impl Sharing for ModelXen {
    fn nominate(&mut self, page: GfnRef) -> Result<Handle, OpError> {
        self.fire(Trigger::Nominate);
        let mfn = self.frame_of(page)?;
        if self.pinned.contains(&page) {
            self.refused_nominations += 1;
            return Err(OpError::BadGfn);
        }
        let handle = self.next_handle;
        let f = self.frames.get_mut(&mfn).ok_or(OpError::BadGfn)?;
        if let Some(s) = &f.sharing {
            return Ok(s.handle);
        }
        f.sharing = Some(ShareInfo {
            handle,
            gfns: BTreeSet::from([page]),
        });
        self.next_handle += 1;
        self.counters.shared_frames += 1;
        Ok(handle)
    }

    fn share(
        &mut self,
        src: GfnRef,
        src_handle: Handle,
        cli: GfnRef,
        cli_handle: Handle,
    ) -> Result<(), OpError> {
        self.fire(Trigger::Share);
        let side = |r: Result<u64, OpError>, stale| match r {
            Err(OpError::NoDomain) => Err(OpError::NoDomain),
            other => other.map_err(|_| stale),
        };
        let smfn = side(self.frame_of(src), OpError::StaleSource)?;
        let cmfn = side(self.frame_of(cli), OpError::StaleClient)?;
        if smfn == cmfn {
            return Ok(()); // "the pages are already the same"
        }
        self.check_share(smfn, src_handle, cmfn, cli_handle)?;
        // xen-patches 0008: a client frame that a third domain maps is
        // refused (its p2m lock would be taken under the page locks).
        let third = |p: &GfnRef| p.domid != src.domid && p.domid != cli.domid;
        let client_gfns = self.frames.get(&cmfn).and_then(|f| f.sharing.as_ref());
        if client_gfns.is_some_and(|s| s.gfns.iter().any(third)) {
            return Err(OpError::ClientShared);
        }
        let moved = self
            .frames
            .remove(&cmfn)
            .and_then(|f| f.sharing)
            .map(|s| s.gfns)
            .unwrap_or_default();
        for page in moved {
            if let Some(slot) = self.p2m_slot(page) {
                *slot = Some(smfn);
            }
            if let Some(s) = self.frames.get_mut(&smfn).and_then(|f| f.sharing.as_mut()) {
                s.gfns.insert(page);
            }
            self.post(page, cli_handle, Reason::Merged, true);
        }
        self.counters.shared_frames -= 1;
        self.counters.saved_pages += 1;
        Ok(())
    }

    fn host_counters(&mut self) -> Result<HostCounters, OpError> {
        Ok(self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(d: DomId, g: Gfn) -> GfnRef {
        GfnRef::new(d, g)
    }

    /// Xen's rule (xen-patches 0008): a client frame with a gfn of a
    /// domain that is neither the source's nor the client's is refused,
    /// and nothing changes; the same pair shares the other way round.
    #[test]
    fn refuses_a_client_frame_a_third_domain_maps() -> Result<(), OpError> {
        let mut x = ModelXen::new(64);
        for d in 1..=3 {
            x.add_domain(d, 4);
        }
        // Frame z: d1 gfn 0 and d2 gfn 0.
        let (h10, h20) = (x.nominate(p(1, 0))?, x.nominate(p(2, 0))?);
        x.share(p(1, 0), h10, p(2, 0), h20)?;
        let h11 = x.nominate(p(1, 1))?;
        for d in 1..=3 {
            x.take_batch(d);
        }
        let before = x.truth();
        // Within d1: z as client has a gfn of d2, a third domain.
        assert_eq!(
            x.share(p(1, 1), h11, p(1, 0), h10),
            Err(OpError::ClientShared)
        );
        // Across d1 and d3: d2 is still a third domain.
        let h30 = x.nominate(p(3, 0))?;
        assert_eq!(
            x.share(p(3, 0), h30, p(2, 0), h10),
            Err(OpError::ClientShared)
        );
        assert_eq!(x.truth().shared_frames, before.shared_frames + 1);
        assert_eq!(x.truth().saved_pages, before.saved_pages);
        assert_eq!(x.host_counters(), Ok(x.truth()));
        assert_eq!(x.truth().saved_pages, before.saved_pages);
        for (page, h) in [
            (p(1, 0), h10),
            (p(2, 0), h10),
            (p(1, 1), h11),
            (p(3, 0), h30),
        ] {
            assert_eq!(x.handle_of(page), Some(h), "{page} moved");
        }
        for d in 1..=3 {
            let b = x.take_batch(d);
            assert!(
                b.is_some_and(|b| b.records.is_empty()),
                "d{d}: records posted"
            );
        }
        assert_eq!(x.check(), Ok(()));
        // The other way round, z as the source takes any client; a
        // client frame on the source's and the client's domains only is
        // fine.
        assert_eq!(x.share(p(1, 0), h10, p(1, 1), h11), Ok(()));
        assert_eq!(x.share(p(2, 0), h10, p(3, 0), h30), Ok(()));
        let h21 = x.nominate(p(2, 1))?;
        assert_eq!(
            x.share(p(2, 1), h21, p(1, 0), h10),
            Err(OpError::ClientShared)
        );
        assert_eq!(x.handle_of(p(3, 0)), Some(h10));
        // A client frame on the source's and the client's domains only.
        let (h12, h22) = (x.nominate(p(1, 2))?, x.nominate(p(2, 2))?);
        x.share(p(1, 2), h12, p(2, 2), h22)?;
        let h23 = x.nominate(p(2, 3))?;
        assert_eq!(x.share(p(2, 3), h23, p(1, 2), h12), Ok(()));
        assert_eq!(x.handle_of(p(2, 2)), Some(h23));
        assert_eq!(x.truth(), x.host_counters()?);
        assert_eq!(x.check(), Ok(()));
        Ok(())
    }
}
