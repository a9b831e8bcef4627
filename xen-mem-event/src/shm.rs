//! A bounds-checked view of memory shared with the producer (Xen).
//!
//! This is one of the two modules of the crate allowed to use `unsafe`
//! (the other is `xen::ffi`).  Audit notes:
//!
//! - The other side writes this memory concurrently, so every access is an
//!   atomic access of the natural size at a naturally aligned offset: 32-bit
//!   indices with Acquire/Release, 16/32/64-bit header fields, and records
//!   copied as four relaxed 64-bit loads (or stores).  There is never a
//!   non-atomic Rust reference to the shared bytes, so a misbehaving
//!   producer can make us read garbage values, never undefined behaviour.
//!   Xen's side uses `ACCESS_ONCE`/`memcpy` with barriers, i.e. plain
//!   aligned machine accesses, which is what Rust's atomics compile to.
//! - Every offset is checked (`off + size <= len`, `off % size == 0`)
//!   before the pointer is formed; a failed check returns `None`.
//! - The mapping is owned (`Box<dyn RingMemory>`) by the [`Shm`], so it
//!   outlives every access made through it; [`RingMemory`] promises that
//!   `base()` is valid for `len()` bytes until it is dropped.
//! - `new` rejects a base that is not aligned to the frame size, so every
//!   naturally aligned offset gives a naturally aligned address.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use crate::backend::RingMemory;
use crate::layout::{FRAME_SIZE, RECORD_SIZE};

/// One 32-byte record, as bytes (native endian, as in the C structs).
pub(crate) type RecordBytes = [u8; RECORD_SIZE];

/// One 32-byte record as it is copied out: four naturally aligned 64-bit
/// words (native endian).  Decoding takes fields out of the words with
/// shifts, so the copy never goes through a byte array that a surrounding
/// `Option`/`Result` tag could misalign (a misaligned reload defeats
/// store-to-load forwarding).
pub(crate) type RecordWords = [u64; RECORD_SIZE / 8];

/// The shared mapping of a ring.
#[derive(Debug)]
pub(crate) struct Shm {
    // Owns the mapping that `base` points into.
    _mem: Box<dyn RingMemory>,
    base: *mut u8,
    len: usize,
}

// SAFETY: `Shm` only reads and writes the shared memory through atomic
// operations on `&self`, and `mem` (which owns the mapping) is itself
// `Send + Sync` by the `RingMemory` bound.  The raw pointer is a cached
// copy of `mem.base()`.
unsafe impl Send for Shm {}
// SAFETY: see `Send`: all accesses are atomic, so concurrent `&Shm` use
// from several threads is data-race free.
unsafe impl Sync for Shm {}

impl Shm {
    /// Wraps a mapping.  Fails (returning the mapping's length) unless the
    /// base is frame aligned, non-null, and at least one frame is mapped.
    pub(crate) fn new(mem: Box<dyn RingMemory>) -> Result<Shm, usize> {
        let base = mem.base();
        let len = mem.len();
        if base.is_null() || (base as usize) % FRAME_SIZE != 0 || len < FRAME_SIZE {
            return Err(len);
        }
        Ok(Shm {
            _mem: mem,
            base,
            len,
        })
    }

    /// Bytes mapped.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The pointer to `size` bytes at `off`, if in bounds and aligned.
    #[inline]
    fn at(&self, off: usize, size: usize) -> Option<*mut u8> {
        let end = off.checked_add(size)?;
        if end > self.len || off % size != 0 {
            return None;
        }
        // `wrapping_add` cannot leave the allocation: off + size <= len.
        Some(self.base.wrapping_add(off))
    }

    #[inline]
    fn u32_at(&self, off: usize) -> Option<&AtomicU32> {
        let p = self.at(off, 4)?;
        // SAFETY: `p` is in bounds of the live mapping (checked by `at`,
        // which `self.mem` keeps alive for the lifetime of `&self`), 4-byte
        // aligned (base frame aligned, off % 4 == 0), and only ever
        // accessed atomically by this process (see the module notes).
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    #[inline]
    fn u64_at(&self, off: usize) -> Option<&AtomicU64> {
        let p = self.at(off, 8)?;
        // SAFETY: as in `u32_at`, with 8-byte size and alignment.
        Some(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    #[inline]
    fn u16_at(&self, off: usize) -> Option<&AtomicU16> {
        let p = self.at(off, 2)?;
        // SAFETY: as in `u32_at`, with 2-byte size and alignment.
        Some(unsafe { AtomicU16::from_ptr(p.cast::<u16>()) })
    }

    /// Loads a 32-bit field with Acquire ordering.
    #[inline]
    pub(crate) fn load_acquire_u32(&self, off: usize) -> Option<u32> {
        Some(self.u32_at(off)?.load(Ordering::Acquire))
    }

    /// Loads a 16-bit field with Relaxed ordering.
    #[inline]
    pub(crate) fn load_u16(&self, off: usize) -> Option<u16> {
        Some(self.u16_at(off)?.load(Ordering::Relaxed))
    }

    /// Loads a 64-bit field with Acquire ordering.
    #[inline]
    pub(crate) fn load_u64(&self, off: usize) -> Option<u64> {
        Some(self.u64_at(off)?.load(Ordering::Acquire))
    }

    /// Stores a 32-bit field with Release ordering: everything this thread
    /// read or wrote before is ordered before the store.
    #[inline]
    pub(crate) fn store_release_u32(&self, off: usize, v: u32) -> Option<()> {
        self.u32_at(off)?.store(v, Ordering::Release);
        Some(())
    }

    /// Stores a 32-bit field with Relaxed ordering (producer side of the
    /// test fakes, header initialisation).
    // Producer side: `testing`.
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    pub(crate) fn store_u32(&self, off: usize, v: u32) -> Option<()> {
        self.u32_at(off)?.store(v, Ordering::Relaxed);
        Some(())
    }

    /// Stores a 16-bit field with Relaxed ordering.
    // Producer side: `testing`.
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    pub(crate) fn store_u16(&self, off: usize, v: u16) -> Option<()> {
        self.u16_at(off)?.store(v, Ordering::Relaxed);
        Some(())
    }

    /// Stores a 64-bit field with Release ordering.
    // Producer side: `testing`.
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    pub(crate) fn store_u64(&self, off: usize, v: u64) -> Option<()> {
        self.u64_at(off)?.store(v, Ordering::Release);
        Some(())
    }

    /// Copies a 32-byte record out of shared memory, as four aligned
    /// 64-bit words (one bounds check for the whole record).
    #[inline]
    pub(crate) fn read_record(&self, off: usize) -> Option<RecordWords> {
        // Whole record in bounds and 32-byte aligned, so each word is too.
        let p = self.at(off, RECORD_SIZE)?.cast::<u64>();
        let word = |i: usize| {
            // SAFETY: `p + i` (i < 4) is inside the record `at` checked: in
            // bounds of the live mapping and 8-byte aligned (the record is
            // 32-byte aligned); only ever accessed atomically.
            unsafe { AtomicU64::from_ptr(p.wrapping_add(i)) }.load(Ordering::Relaxed)
        };
        Some([word(0), word(1), word(2), word(3)])
    }

    /// Copies a 32-byte record into shared memory.
    pub(crate) fn write_record(&self, off: usize, rec: &RecordBytes) -> Option<()> {
        self.at(off, RECORD_SIZE)?;
        for (i, chunk) in rec.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.u64_at(off + i * 8)?
                .store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }
        Some(())
    }
}
