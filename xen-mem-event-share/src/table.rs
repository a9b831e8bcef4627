//! The candidate table: what the daemon knows of every scanned gfn.
//!
//! Three maps: each gfn's entry (per domain, an array indexed by gfn:
//! its page's key, and the handle it holds
//! once nominated), one representative gfn per key (the page a new page
//! with that key is compared with), and the gfns known on each handle (so
//! that a handle's death drops all of them, and so that the KSM counters
//! follow from the table).  Representatives are checked when used, never
//! chased when an entry goes.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::gfnmap::GfnMap;
use crate::members::Members;

use crate::{DomId, GfnRef, Handle, InvalidateRecord};

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

/// An [`Entry`] as the table stores it: 24 bytes, and `Option<Packed>`
/// too (the slot is stored + 1, a niche), so that a domain's entries are
/// dense in its [`GfnMap`].  Handle 0 is "none": Xen's handles start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    key: u64,
    handle: Handle,
    slot1: std::num::NonZeroU32,
    /// The index of the handle's member list (see [`Members`]).
    list: u32,
}

impl Packed {
    fn new(key: u64) -> Packed {
        Packed {
            key,
            handle: 0,
            slot1: std::num::NonZeroU32::MIN,
            list: 0,
        }
    }

    fn handle(&self) -> Option<Handle> {
        (self.handle != 0).then_some(self.handle)
    }

    fn slot(&self) -> usize {
        (self.slot1.get() - 1) as usize
    }

    fn set_slot(&mut self, slot: usize) {
        let s = u32::try_from(slot).ok().and_then(|s| s.checked_add(1));
        self.slot1 = s
            .and_then(std::num::NonZeroU32::new)
            .unwrap_or(std::num::NonZeroU32::MAX);
    }

    fn entry(&self) -> Entry {
        Entry {
            key: self.key,
            handle: self.handle(),
            slot: self.slot(),
        }
    }
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
    doms: FxHashMap<DomId, GfnMap<Packed>>,
    reps: FxHashMap<u64, GfnRef>,
    members: Members,
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
        self.members.of(handle).len()
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
        self.doms
            .get(&page.domid)?
            .get(&page.gfn)
            .map(Packed::entry)
    }

    fn adjust(&mut self, before: usize, after: usize) {
        self.sharing = self.sharing + excess(after) - excess(before);
        self.shared = self.shared + u64::from(after >= 2) - u64::from(before >= 2);
    }

    fn get_packed(&self, page: GfnRef) -> Option<&Packed> {
        self.doms.get(&page.domid)?.get(&page.gfn)
    }

    fn entry_mut(&mut self, page: GfnRef) -> Option<&mut Packed> {
        self.doms.get_mut(&page.domid)?.get_mut(&page.gfn)
    }

    /// Takes `page` (entry `e`) off its handle's member list; returns
    /// whether the handle has no member left (and is forgotten).
    fn detach(&mut self, page: GfnRef, e: &Packed) -> bool {
        let slot = e.slot();
        let Some((before, moved, empty)) = self.members.remove(e.list, slot, page) else {
            return false;
        };
        self.adjust(before, before - 1);
        if let Some(e) = moved.and_then(|m| self.entry_mut(m)) {
            e.set_slot(slot);
        }
        empty
    }

    /// Appends `page` to `handle`'s member list; returns (list, slot).
    fn attach(&mut self, page: GfnRef, handle: Handle) -> (u32, usize) {
        let (list, slot) = self.members.push(handle, page);
        self.adjust(slot, slot + 1);
        (list, slot)
    }

    /// Records `page` with `key`, not nominated; replaces what was known.
    pub fn insert(&mut self, page: GfnRef, key: u64) {
        self.remove(page);
        self.doms
            .entry(page.domid)
            .or_default()
            .insert(page.gfn, Packed::new(key));
        self.entries += 1;
    }

    /// Forgets `page`.
    pub fn remove(&mut self, page: GfnRef) -> Option<Entry> {
        self.remove_packed(page).map(|(e, _)| e.entry())
    }

    /// Forgets `page`; returns its entry, and whether that left its
    /// handle without a member.
    fn remove_packed(&mut self, page: GfnRef) -> Option<(Packed, bool)> {
        let e = self.doms.get_mut(&page.domid)?.remove(&page.gfn)?;
        self.entries -= 1;
        let emptied = e.handle().is_some() && self.detach(page, &e);
        Some((e, emptied))
    }

    /// Records that `page` holds `handle` (it was nominated).  Returns
    /// false when the table does not know `page`.
    pub fn set_handle(&mut self, page: GfnRef, handle: Handle) -> bool {
        let Some(e) = self.get_packed(page).copied() else {
            return false;
        };
        if e.handle == handle {
            return true;
        }
        if e.handle != 0 {
            self.detach(page, &e);
        }
        let (list, slot) = self.attach(page, handle);
        if let Some(e) = self.entry_mut(page) {
            e.handle = handle;
            e.list = list;
            e.set_slot(slot);
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
        let list = self.members.take(from);
        self.adjust(list.len(), 0);
        for page in list.into_iter().filter(|p| *p != cli) {
            if let Some(m) = self.doms.get_mut(&page.domid) {
                if m.remove(&page.gfn).is_some() {
                    self.entries -= 1;
                }
            }
        }
        if let Some(e) = self.entry_mut(cli) {
            e.handle = 0;
        }
        self.set_handle(cli, into);
    }

    /// Forgets every gfn known to hold `handle`; returns how many.
    pub fn drop_handle(&mut self, handle: Handle) -> usize {
        let list = self.members.take(handle);
        if list.is_empty() {
            return 0;
        }
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
        let handles: FxHashSet<Handle> = gone.values().filter_map(Packed::handle).collect();
        for h in handles {
            self.prune_members(h, domid);
        }
        gone.len()
    }

    /// Removes `domid`'s gfns from `handle`'s member list (their entries
    /// are gone already) and renumbers the others' slots.
    fn prune_members(&mut self, handle: Handle, domid: DomId) {
        let (before, list) = self.members.retain(handle, |p| p.domid != domid);
        self.adjust(before, list.len());
        for (slot, page) in list.iter().enumerate() {
            if let Some(e) = self.entry_mut(*page) {
                e.set_slot(slot);
            }
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
        let (mut dropped, mut emptied) = (false, false);
        let current = self.get_packed(page).map(|e| e.handle);
        if current == Some(0) || current == Some(rec.handle) {
            if let Some((_, gone)) = self.remove_packed(page) {
                dropped = true;
                emptied = gone && current == Some(rec.handle);
            }
        }
        // The last member of the handle just went: nothing else to drop
        // (saves a lookup in the hot path).
        if rec.handle_gone && !emptied {
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
            for (g, e) in m.iter() {
                let Some(h) = e.handle() else { continue };
                with_handle += 1;
                let p = GfnRef::new(*d, g);
                if self.members.index(h) != Some(e.list)
                    || self.members.pages(e.list).get(e.slot()) != Some(&p)
                {
                    return Err(format!("{p}: not at slot {} of handle {h}", e.slot()));
                }
            }
        }
        let listed: usize = self.members.lists().map(|(_, _, l)| l.len()).sum();
        let sharing: u64 = self.members.lists().map(|(_, _, l)| excess(l.len())).sum();
        let shared = self
            .members
            .lists()
            .filter(|(_, _, l)| l.len() >= 2)
            .count() as u64;
        let entries: usize = self.doms.values().map(GfnMap::len).sum();
        if listed != with_handle || sharing != self.sharing || shared != self.shared {
            return Err(format!(
                "members {listed} vs entries with a handle {with_handle}, sharing {sharing} vs \
                    {}, shared {shared} vs {}",
                self.sharing, self.shared
            ));
        }
        let lists = self.members.lists().count();
        if entries != self.entries || lists != self.members.len() {
            return Err(format!("entries {entries} vs {}", self.entries));
        }
        Ok(())
    }
}
