//! `GfnMap`: a map from gfn to value for one domain, as a two-level
//! array (chunks of [`CHUNK`] slots, allocated on first use), so that the
//! table's hot path (apply an invalidation record: find the gfn's entry,
//! drop it) is an index, not a hash lookup and a cache miss into a large
//! hash table.  A guest's gfns are dense (its RAM) with a few far ones
//! (special pages), which chunks fit; gfns beyond [`DENSE_LIMIT`] go to
//! a hash map of chunks so that a wild gfn cannot make the array huge.

use rustc_hash::FxHashMap;

use crate::Gfn;

/// Slots per chunk.
pub const CHUNK: usize = 512;
/// Gfns below this live in the chunk array (2^16 chunks: 128 GiB of
/// guest-physical space, 512 KiB of chunk pointers at most).
pub const DENSE_LIMIT: Gfn = (CHUNK as Gfn) << 16;

type Chunk<V> = Box<[Option<V>; CHUNK]>;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct GfnMap<V> {
    dense: Vec<Option<Chunk<V>>>,
    sparse: FxHashMap<Gfn, Chunk<V>>,
    len: usize,
}

impl<V> Default for GfnMap<V> {
    fn default() -> Self {
        GfnMap {
            dense: Vec::new(),
            sparse: FxHashMap::default(),
            len: 0,
        }
    }
}

/// A bounded index (below [`CHUNK`], or a dense chunk number) as usize.
fn idx(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

fn split(gfn: Gfn) -> (Gfn, usize) {
    (gfn / CHUNK as Gfn, idx(gfn % CHUNK as Gfn))
}

impl<V: Copy> GfnMap<V> {
    /// Values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    fn chunk(&self, c: Gfn) -> Option<&[Option<V>; CHUNK]> {
        if c < DENSE_LIMIT / CHUNK as Gfn {
            self.dense.get(idx(c))?.as_deref()
        } else {
            self.sparse.get(&c).map(|b| &**b)
        }
    }

    fn chunk_mut(&mut self, c: Gfn, create: bool) -> Option<&mut [Option<V>; CHUNK]> {
        let new = || Box::new([None; CHUNK]);
        if c < DENSE_LIMIT / CHUNK as Gfn {
            let i = idx(c);
            if create && self.dense.len() <= i {
                self.dense.resize_with(i + 1, || None);
            }
            let slot = self.dense.get_mut(i)?;
            if create && slot.is_none() {
                *slot = Some(new());
            }
            slot.as_deref_mut()
        } else if create {
            Some(&mut **self.sparse.entry(c).or_insert_with(new))
        } else {
            self.sparse.get_mut(&c).map(|b| &mut **b)
        }
    }

    /// The value of `gfn`.
    #[inline]
    pub fn get(&self, gfn: &Gfn) -> Option<&V> {
        let (c, i) = split(*gfn);
        self.chunk(c)?.get(i)?.as_ref()
    }

    /// The value of `gfn`, mutably.
    #[inline]
    pub fn get_mut(&mut self, gfn: &Gfn) -> Option<&mut V> {
        let (c, i) = split(*gfn);
        self.chunk_mut(c, false)?.get_mut(i)?.as_mut()
    }

    /// Stores `v` for `gfn`; returns the value it replaced.
    pub fn insert(&mut self, gfn: Gfn, v: V) -> Option<V> {
        let (c, i) = split(gfn);
        let old = self.chunk_mut(c, true)?.get_mut(i)?.replace(v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes and returns the value of `gfn`.
    #[inline]
    pub fn remove(&mut self, gfn: &Gfn) -> Option<V> {
        let (c, i) = split(*gfn);
        let old = self.chunk_mut(c, false)?.get_mut(i)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every `(gfn, value)`, the dense part in gfn order.
    pub fn iter(&self) -> impl Iterator<Item = (Gfn, &V)> + '_ {
        let dense = self
            .dense
            .iter()
            .enumerate()
            .filter_map(|(c, ch)| Some((c as Gfn, ch.as_deref()?)));
        let sparse = self.sparse.iter().map(|(c, ch)| (*c, &**ch));
        dense.chain(sparse).flat_map(|(c, ch)| {
            ch.iter()
                .enumerate()
                .filter_map(move |(i, v)| Some((c * CHUNK as Gfn + i as Gfn, v.as_ref()?)))
        })
    }

    /// Every value.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_gfns() {
        let mut m = GfnMap::default();
        for g in [
            0,
            1,
            511,
            512,
            0xfeff0,
            DENSE_LIMIT - 1,
            DENSE_LIMIT,
            u64::MAX - 1,
        ] {
            assert_eq!(m.insert(g, g), None);
            assert_eq!(m.insert(g, g + 1), Some(g));
        }
        assert_eq!(m.len(), 8);
        assert_eq!(m.get(&DENSE_LIMIT), Some(&(DENSE_LIMIT + 1)));
        assert_eq!(m.get(&2), None);
        *m.get_mut(&1).unwrap_or(&mut 0) = 7;
        assert_eq!(m.remove(&1), Some(7));
        assert_eq!(m.remove(&1), None);
        assert_eq!(m.remove(&3_000_000_000_000), None);
        let mut all: Vec<Gfn> = m.iter().map(|(g, _)| g).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            [
                0,
                511,
                512,
                0xfeff0,
                DENSE_LIMIT - 1,
                DENSE_LIMIT,
                u64::MAX - 1
            ]
        );
        assert_eq!(m.len(), 7);
        assert!(m.iter().all(|(g, v)| *v == g + 1));
    }
}
