//! The candidate table: what the daemon knows of every scanned gfn.
//!
//! Three maps: each gfn's entry (its page's key, and the handle it holds
//! once nominated), one representative gfn per key (the page a new page
//! with that key is compared with), and the gfns known on each handle (so
//! that a handle's death drops all of them, and so that the KSM counters
//! follow from the table).  Representatives are checked when used, never
//! chased when an entry goes.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{DomId, Gfn, GfnRef, Handle, InvalidateRecord};

/// What the table knows of one gfn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The key of the page's contents when it was scanned.
    pub key: u64,
    /// The handle the gfn held when last seen (nominated or shared).
    pub handle: Option<Handle>,
    /// Index of the gfn in its handle's member list.
    slot: usize,
}

/// What [`Table::observe`] found for a scanned page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A key nobody else has: the page is now the key's representative.
    New,
    /// Nothing to do: the page is the representative, or already on the
    /// representative's frame.
    Unchanged,
    /// Another page has the same key: a candidate for sharing.
    Match {
        /// The key's representative.
        rep: GfnRef,
        /// The handle the representative holds, if nominated.
        rep_handle: Option<Handle>,
        /// The handle the scanned page holds, if nominated.
        handle: Option<Handle>,
    },
}

/// The table.  See the module documentation.
#[derive(Debug, Default)]
pub struct Table {
    doms: FxHashMap<DomId, FxHashMap<Gfn, Entry>>,
    reps: FxHashMap<u64, GfnRef>,
    members: FxHashMap<Handle, Vec<GfnRef>>,
    entries: usize,
    /// Handles with two gfns or more.
    shared: u64,
    /// Gfns on those handles beyond the first of each.
    sharing: u64,
}

fn excess(n: usize) -> u64 {
    n.saturating_sub(1) as u64
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }

    /// Entries (gfns known).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the table knows no gfn.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Handles known (frames the daemon nominated or shared).
    pub fn handles(&self) -> usize {
        self.members.len()
    }

    /// Gfns known to hold `handle`.
    pub fn members(&self, handle: Handle) -> usize {
        self.members.get(&handle).map_or(0, Vec::len)
    }

    /// KSM's `pages_shared`: handles with two gfns or more.
    pub fn pages_shared(&self) -> u64 {
        self.shared
    }

    /// KSM's `pages_sharing`: gfns on those handles beyond the first of
    /// each, i.e. the pages sharing saves.
    pub fn pages_sharing(&self) -> u64 {
        self.sharing
    }

    /// The entry of `page`.
    pub fn get(&self, page: GfnRef) -> Option<Entry> {
        self.doms.get(&page.domid)?.get(&page.gfn).copied()
    }

    fn adjust(&mut self, before: usize, after: usize) {
        self.sharing = self.sharing + excess(after) - excess(before);
        self.shared = self.shared + u64::from(after >= 2) - u64::from(before >= 2);
    }

    fn entry_mut(&mut self, page: GfnRef) -> Option<&mut Entry> {
        self.doms.get_mut(&page.domid)?.get_mut(&page.gfn)
    }

    /// Takes `page` (at `slot`) off `handle`'s member list.
    fn detach(&mut self, page: GfnRef, handle: Handle, slot: usize) {
        let Some(list) = self.members.get_mut(&handle) else {
            return;
        };
        if list.get(slot) != Some(&page) {
            return;
        }
        let before = list.len();
        list.swap_remove(slot);
        let moved = list.get(slot).copied();
        if list.is_empty() {
            self.members.remove(&handle);
        }
        self.adjust(before, before - 1);
        if let Some(e) = moved.and_then(|m| self.entry_mut(m)) {
            e.slot = slot;
        }
    }

    /// Appends `page` to `handle`'s member list; returns its slot.
    fn attach(&mut self, page: GfnRef, handle: Handle) -> usize {
        let list = self.members.entry(handle).or_default();
        let slot = list.len();
        list.push(page);
        self.adjust(slot, slot + 1);
        slot
    }

    /// Records `page` with `key`, not nominated; replaces what was known.
    pub fn insert(&mut self, page: GfnRef, key: u64) {
        self.remove(page);
        let e = Entry {
            key,
            handle: None,
            slot: 0,
        };
        self.doms.entry(page.domid).or_default().insert(page.gfn, e);
        self.entries += 1;
    }

    /// Forgets `page`.
    pub fn remove(&mut self, page: GfnRef) -> Option<Entry> {
        let e = self.doms.get_mut(&page.domid)?.remove(&page.gfn)?;
        self.entries -= 1;
        if let Some(h) = e.handle {
            self.detach(page, h, e.slot);
        }
        Some(e)
    }

    /// Records that `page` holds `handle` (it was nominated).  Returns
    /// false when the table does not know `page`.
    pub fn set_handle(&mut self, page: GfnRef, handle: Handle) -> bool {
        let Some(e) = self.get(page) else {
            return false;
        };
        if e.handle == Some(handle) {
            return true;
        }
        if let Some(old) = e.handle {
            self.detach(page, old, e.slot);
        }
        let slot = self.attach(page, handle);
        if let Some(e) = self.entry_mut(page) {
            e.handle = Some(handle);
            e.slot = slot;
        }
        true
    }

    /// A share merged the client `cli`'s frame (`from`) into `into`'s
    /// frame: `cli` now holds `into`.  The other gfns known on `from`
    /// moved with it only if they were still there, which only records
    /// can tell; so they are forgotten (the next scan finds them on
    /// `into` by nomination, without a share).  That keeps the rule
    /// [`Table::apply`] relies on: an entry's handle is one the gfn held
    /// when the daemon last asked Xen.
    pub fn merged(&mut self, cli: GfnRef, from: Handle, into: Handle) {
        if from == into {
            return;
        }
        let list = self.members.remove(&from).unwrap_or_default();
        self.adjust(list.len(), 0);
        for page in list.into_iter().filter(|p| *p != cli) {
            if let Some(m) = self.doms.get_mut(&page.domid) {
                if m.remove(&page.gfn).is_some() {
                    self.entries -= 1;
                }
            }
        }
        if let Some(e) = self.entry_mut(cli) {
            e.handle = None;
        }
        self.set_handle(cli, into);
    }

    /// Forgets every gfn known to hold `handle`; returns how many.
    pub fn drop_handle(&mut self, handle: Handle) -> usize {
        let Some(list) = self.members.remove(&handle) else {
            return 0;
        };
        self.adjust(list.len(), 0);
        for page in &list {
            if let Some(m) = self.doms.get_mut(&page.domid) {
                if m.remove(&page.gfn).is_some() {
                    self.entries -= 1;
                }
            }
        }
        list.len()
    }

    /// Forgets every gfn of `domid`; returns how many.
    pub fn forget_domain(&mut self, domid: DomId) -> usize {
        let Some(gone) = self.doms.remove(&domid) else {
            return 0;
        };
        self.entries -= gone.len();
        let handles: FxHashSet<Handle> = gone.values().filter_map(|e| e.handle).collect();
        for h in handles {
            self.prune_members(h, domid);
        }
        gone.len()
    }

    /// Removes `domid`'s gfns from `handle`'s member list (their entries
    /// are gone already) and renumbers the others' slots.
    fn prune_members(&mut self, handle: Handle, domid: DomId) {
        let Some(mut list) = self.members.remove(&handle) else {
            return;
        };
        let before = list.len();
        list.retain(|p| p.domid != domid);
        self.adjust(before, list.len());
        for (slot, page) in list.iter().enumerate() {
            if let Some(e) = self.entry_mut(*page) {
                e.slot = slot;
            }
        }
        if !list.is_empty() {
            self.members.insert(handle, list);
        }
    }

    /// Applies one invalidation record; returns whether an entry went.
    ///
    /// Every reason means the same: `<domid, gfn>` no longer holds
    /// `handle`, so its entry goes, unless the entry already names a
    /// different handle (the daemon's own share moved the gfn since: the
    /// record is older than what the table knows).  `handle_gone` drops
    /// every gfn still known on the handle.
    pub fn apply(&mut self, rec: &InvalidateRecord) -> bool {
        let page = rec.page();
        let mut dropped = false;
        if let Some(e) = self.get(page) {
            if e.handle.is_none() || e.handle == Some(rec.handle) {
                self.remove(page);
                dropped = true;
            }
        }
        if rec.handle_gone {
            dropped |= self.drop_handle(rec.handle) > 0;
        }
        dropped
    }

    /// The representative of `key`, if it is still valid (known, with
    /// that key); an invalid one is forgotten.
    pub fn rep(&mut self, key: u64) -> Option<(GfnRef, Entry)> {
        let r = *self.reps.get(&key)?;
        match self.get(r) {
            Some(e) if e.key == key => Some((r, e)),
            _ => {
                self.reps.remove(&key);
                None
            }
        }
    }

    /// Makes `page` the representative of `key`.
    pub fn set_rep(&mut self, key: u64, page: GfnRef) {
        self.reps.insert(key, page);
    }

    /// A scan read `page` with `key`: updates the table and says whether
    /// the page is a candidate for sharing.  A page whose key changed
    /// loses its old entry (and handle).
    pub fn observe(&mut self, page: GfnRef, key: u64) -> Observed {
        let cur = match self.get(page) {
            Some(e) if e.key == key => Some(e),
            Some(_) => {
                self.remove(page);
                None
            }
            None => None,
        };
        let Some((rep, re)) = self.rep(key) else {
            if cur.is_none() {
                self.insert(page, key);
            }
            self.set_rep(key, page);
            return if cur.is_some() {
                Observed::Unchanged
            } else {
                Observed::New
            };
        };
        let handle = cur.and_then(|e| e.handle);
        if rep == page || (handle.is_some() && handle == re.handle) {
            return Observed::Unchanged;
        }
        if cur.is_none() {
            self.insert(page, key);
        }
        Observed::Match {
            rep,
            rep_handle: re.handle,
            handle,
        }
    }

    /// Checks the table's internal consistency (for tests): every member
    /// list matches the entries, and the counters match the lists.
    pub fn check(&self) -> Result<(), String> {
        let mut with_handle = 0usize;
        for (d, m) in &self.doms {
            for (g, e) in m {
                let Some(h) = e.handle else { continue };
                with_handle += 1;
                let p = GfnRef::new(*d, *g);
                if self.members.get(&h).and_then(|l| l.get(e.slot)) != Some(&p) {
                    return Err(format!("{p}: not at slot {} of handle {h}", e.slot));
                }
            }
        }
        let listed: usize = self.members.values().map(Vec::len).sum();
        let sharing: u64 = self.members.values().map(|l| excess(l.len())).sum();
        let shared = self.members.values().filter(|l| l.len() >= 2).count() as u64;
        let entries: usize = self.doms.values().map(FxHashMap::len).sum();
        if listed != with_handle || sharing != self.sharing || shared != self.shared {
            return Err(format!(
                "members {listed} vs entries with a handle {with_handle}, sharing {sharing} vs {}, shared {shared} vs {}",
                self.sharing, self.shared
            ));
        }
        if entries != self.entries || self.members.values().any(Vec::is_empty) {
            return Err(format!("entries {entries} vs {}", self.entries));
        }
        Ok(())
    }
}
