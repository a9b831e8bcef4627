//! The gfns known on each handle, as a slab of lists: a table entry
//! names its list by index, so that dropping an entry (the hot path of an
//! invalidation record) reaches the list without a hash lookup.  The map
//! from handle to list index is only used when a handle is named from
//! outside (nomination, a share, `HANDLE_GONE` of a handle whose lists
//! still has members); it is cleaned lazily: an index whose list was
//! emptied (and maybe reused for another handle) is recognised as stale
//! and the map is compacted when stale indices outnumber live ones.

use rustc_hash::FxHashMap;

use crate::{GfnRef, Handle};

#[derive(Debug, Default)]
struct List {
    /// The handle whose gfns these are (meaningless while free).
    handle: Handle,
    pages: Vec<GfnRef>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Members {
    slab: Vec<List>,
    free: Vec<u32>,
    by_handle: FxHashMap<Handle, u32>,
    live: usize,
}

impl Members {
    /// Handles with at least one gfn.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The index of `handle`'s list, if it has members.
    pub(crate) fn index(&self, handle: Handle) -> Option<u32> {
        let i = *self.by_handle.get(&handle)?;
        let l = self.slab.get(i as usize)?;
        (l.handle == handle && !l.pages.is_empty()).then_some(i)
    }

    /// The members of list `i`.
    pub(crate) fn pages(&self, i: u32) -> &[GfnRef] {
        self.slab.get(i as usize).map_or(&[], |l| &l.pages)
    }

    /// The members of `handle`.
    pub(crate) fn of(&self, handle: Handle) -> &[GfnRef] {
        self.index(handle).map_or(&[], |i| self.pages(i))
    }

    /// Appends `page` to `handle`'s list; returns (list index, slot).
    pub(crate) fn push(&mut self, handle: Handle, page: GfnRef) -> (u32, usize) {
        let i = match self.index(handle) {
            Some(i) => i,
            None => self.alloc(handle),
        };
        let pages = self.slab.get_mut(i as usize).map(|l| &mut l.pages);
        let slot = pages.map_or(0, |p| {
            p.push(page);
            p.len() - 1
        });
        (i, slot)
    }

    fn alloc(&mut self, handle: Handle) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slab.push(List::default());
                u32::try_from(self.slab.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(l) = self.slab.get_mut(i as usize) {
            l.handle = handle;
        }
        if self.by_handle.len() > 64 && self.by_handle.len() > 2 * self.live {
            self.compact();
        }
        self.live += 1;
        self.by_handle.insert(handle, i);
        i
    }

    /// Drops the map's stale indices.
    fn compact(&mut self) {
        let slab = &self.slab;
        self.by_handle.retain(|h, i| {
            slab.get(*i as usize)
                .is_some_and(|l| l.handle == *h && !l.pages.is_empty())
        });
    }

    /// Takes `page` off list `i` at `slot` (swap-remove).  Returns the
    /// list's length before, the member that moved into `slot` (if any),
    /// and whether the list is now empty (and freed); `None` if `page` is
    /// not at `slot`.
    pub(crate) fn remove(
        &mut self,
        i: u32,
        slot: usize,
        page: GfnRef,
    ) -> Option<(usize, Option<GfnRef>, bool)> {
        let l = self.slab.get_mut(i as usize)?;
        if l.pages.get(slot) != Some(&page) {
            return None;
        }
        let before = l.pages.len();
        l.pages.swap_remove(slot);
        let moved = l.pages.get(slot).copied();
        let empty = l.pages.is_empty();
        if empty {
            self.release(i);
        }
        Some((before, moved, empty))
    }

    fn release(&mut self, i: u32) {
        self.live = self.live.saturating_sub(1);
        self.free.push(i);
    }

    /// Takes every member of `handle` (the list is freed).
    pub(crate) fn take(&mut self, handle: Handle) -> Vec<GfnRef> {
        let Some(i) = self.index(handle) else {
            return Vec::new();
        };
        let pages = self
            .slab
            .get_mut(i as usize)
            .map(|l| std::mem::take(&mut l.pages))
            .unwrap_or_default();
        self.release(i);
        pages
    }

    /// Keeps the members of `handle` for which `keep` holds; returns the
    /// length before and the members left (the list is freed if none).
    pub(crate) fn retain(
        &mut self,
        handle: Handle,
        keep: impl Fn(&GfnRef) -> bool,
    ) -> (usize, Vec<GfnRef>) {
        let Some(i) = self.index(handle) else {
            return (0, Vec::new());
        };
        let Some(l) = self.slab.get_mut(i as usize) else {
            return (0, Vec::new());
        };
        let before = l.pages.len();
        l.pages.retain(keep);
        let left = l.pages.clone();
        if left.is_empty() {
            self.release(i);
        }
        (before, left)
    }

    /// Every non-empty list: (handle, index, members).
    pub(crate) fn lists(&self) -> impl Iterator<Item = (Handle, u32, &[GfnRef])> + '_ {
        self.slab
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.pages.is_empty())
            .map(|(i, l)| (l.handle, u32::try_from(i).unwrap_or(u32::MAX), &l.pages[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptied_lists_are_reused_and_stale_handles_forgotten() {
        let mut m = Members::default();
        let p = |g| GfnRef::new(1, g);
        for h in 1..=1000u64 {
            let (i, slot) = m.push(h, p(h));
            assert_eq!(slot, 0);
            assert_eq!(m.remove(i, 0, p(h)), Some((1, None, true)));
            assert!(m.index(h).is_none());
        }
        assert_eq!((m.len(), m.slab.len()), (0, 1), "one list, reused");
        assert!(m.by_handle.len() <= 65, "compacted: {}", m.by_handle.len());
        let (i, _) = m.push(7, p(1));
        m.push(7, p(2));
        assert_eq!(m.remove(i, 1, p(1)), None, "not at that slot");
        assert_eq!(m.remove(i, 0, p(1)), Some((2, Some(p(2)), false)));
        assert_eq!(m.of(7), [p(2)]);
        assert_eq!(m.of(1000), []);
        assert_eq!(m.take(7), [p(2)]);
        assert_eq!(m.len(), 0);
    }
}
