//! The shared ring layout (offsets from the patched public header), record
//! encoding and index arithmetic.  No `unsafe`, no shared-memory access.

use std::mem::offset_of;

use xen_mem_event_sys::abi;

use crate::shm::{RecordBytes, RecordWords};

/// Size of a ring frame.
pub const FRAME_SIZE: usize = abi::XEN_MEM_EVENT_FRAME_SIZE;
/// Size of every request, response and record.
pub const RECORD_SIZE: usize = abi::XEN_MEM_EVENT_RECORD_SIZE;
/// Slots per data frame.
pub const SLOTS_PER_FRAME: u32 = abi::XEN_MEM_EVENT_SLOTS_PER_FRAME;
/// Largest `frames` value of a registration.
pub const MAX_FRAMES: u32 = abi::XEN_MEM_EVENT_MAX_FRAMES;
/// The ring layout version this crate speaks.
pub const INTERFACE_VERSION: u32 = abi::XEN_MEM_EVENT_INTERFACE_VERSION;

type Page = abi::xen_mem_event_ring_page;
type Req = abi::xen_mem_event_sync_req;
type Rsp = abi::xen_mem_event_sync_rsp;
type Rec = abi::xen_mem_event_async_rec;

// The layout the rest of the crate relies on (bindgen checks the offsets
// against clang's; these check the record size and the header size).
const _: () = assert!(std::mem::size_of::<Req>() == RECORD_SIZE);
const _: () = assert!(std::mem::size_of::<Rsp>() == RECORD_SIZE);
const _: () = assert!(std::mem::size_of::<Rec>() == RECORD_SIZE);
const _: () = assert!(std::mem::size_of::<Page>() <= FRAME_SIZE);
const _: () = assert!(FRAME_SIZE % RECORD_SIZE == 0);

/// Byte offsets of the header fields in frame 0
/// (`struct xen_mem_event_ring_page`).
#[allow(missing_docs)]
pub mod hdr {
    use super::*;
    pub const VERSION: usize = offset_of!(Page, version);
    pub const TYPE: usize = offset_of!(Page, type_);
    pub const NR_SLOTS: usize = offset_of!(Page, nr_slots);
    pub const REQ_OFFSET: usize = offset_of!(Page, req_offset);
    pub const RSP_OFFSET: usize = offset_of!(Page, rsp_offset);
    pub const MAX_VCPUS: usize = offset_of!(Page, max_vcpus);
    pub const DOMID: usize = offset_of!(Page, domid);
    pub const REQ_PROD: usize = offset_of!(Page, req_prod);
    pub const FLAGS: usize = offset_of!(Page, flags);
    pub const LOST: usize = offset_of!(Page, lost);
    pub const REQ_CONS: usize = offset_of!(Page, req_cons);
    pub const REQ_EVENT: usize = offset_of!(Page, req_event);
    pub const RSP_PROD: usize = offset_of!(Page, rsp_prod);
    pub const RSP_CONS: usize = offset_of!(Page, rsp_cons);
}

/// Number of entries between two free-running indices (`prod - cons`,
/// modulo 2^32).
#[inline]
pub fn ring_distance(prod: u32, cons: u32) -> u32 {
    prod.wrapping_sub(cons)
}

/// Whether a producer index is possible: at most `nr_slots` ahead of the
/// consumer index (wrapping arithmetic).
#[inline]
pub fn index_plausible(prod: u32, cons: u32, nr_slots: u32) -> bool {
    ring_distance(prod, cons) <= nr_slots
}

/// The slot of index `idx` in a ring of `nr_slots` (a power of two).
#[inline]
pub fn slot(idx: u32, nr_slots: u32) -> u32 {
    idx & nr_slots.wrapping_sub(1)
}

/// The byte offset, from frame 0, of index `idx` in the array at
/// `array_off`.
#[inline]
pub(crate) fn slot_offset(array_off: usize, idx: u32, nr_slots: u32) -> usize {
    array_off + slot(idx, nr_slots) as usize * RECORD_SIZE
}

/// Whether Xen, moving `req_prod` from `old` to `new`, notifies for
/// `req_event` (event-index style, as in Xen's `mem_event_ring_put_async`).
#[inline]
pub fn event_crossed(old: u32, new: u32, req_event: u32) -> bool {
    new.wrapping_sub(req_event) < new.wrapping_sub(old)
}

/// The notification threshold in force for `batch` on a ring of
/// `nr_slots`: 0 means 1, and at most half the ring (as Xen clamps it:
/// the consumer drains one half while Xen fills the other).
#[inline]
pub fn clamp_batch(batch: u32, nr_slots: u32) -> u32 {
    batch.clamp(1, (nr_slots / 2).max(1))
}

/// Frames per registration of `frames` data frames per array: 1 header
/// frame plus one array (async) or two (sync).  `None` if `frames` is not a
/// power of two in `1..=MAX_FRAMES`.
pub fn total_frames(frames: u32, sync: bool) -> Option<u32> {
    if frames == 0 || frames > MAX_FRAMES || !frames.is_power_of_two() {
        return None;
    }
    Some(1 + frames * if sync { 2 } else { 1 })
}

/// The 64-bit field at byte `off` (8-aligned) of a record.
#[inline(always)]
fn u64_at(w: &RecordWords, off: usize) -> u64 {
    w[off / 8]
}

/// The `N` bytes at byte `off` of a record (within one word).
#[inline(always)]
fn bytes_at<const N: usize>(w: &RecordWords, off: usize) -> [u8; N] {
    let word = w[off / 8].to_ne_bytes();
    let mut out = [0u8; N];
    out.copy_from_slice(&word[off % 8..off % 8 + N]);
    out
}

#[inline(always)]
fn u32_at(w: &RecordWords, off: usize) -> u32 {
    u32::from_ne_bytes(bytes_at(w, off))
}

#[inline(always)]
fn u16_at(w: &RecordWords, off: usize) -> u16 {
    u16::from_ne_bytes(bytes_at(w, off))
}

/// A record's bytes as the words [`Shm::read_record`](crate::shm) returns.
#[cfg(test)]
fn words(b: &RecordBytes) -> RecordWords {
    let mut w = [0u64; RECORD_SIZE / 8];
    for (w, c) in w.iter_mut().zip(b.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        *w = u64::from_ne_bytes(a);
    }
    w
}

fn put(b: &mut RecordBytes, off: usize, bytes: &[u8]) {
    b[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A synchronous request, as found in the ring (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawSyncReq {
    pub id: u64,
    pub gfn: u64,
    pub vcpu_id: u32,
    pub flags: u32,
    pub domid: u16,
    pub reason: u16,
    pub pad: u32,
}

impl RawSyncReq {
    #[inline]
    pub(crate) fn decode(b: &RecordWords) -> RawSyncReq {
        RawSyncReq {
            id: u64_at(b, offset_of!(Req, id)),
            gfn: u64_at(b, offset_of!(Req, gfn)),
            vcpu_id: u32_at(b, offset_of!(Req, vcpu_id)),
            flags: u32_at(b, offset_of!(Req, flags)),
            domid: u16_at(b, offset_of!(Req, domid)),
            reason: u16_at(b, offset_of!(Req, reason)),
            pad: u32_at(b, offset_of!(Req, _pad)),
        }
    }

    // Producer side: `testing`.
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    pub(crate) fn encode(&self) -> RecordBytes {
        let mut b = [0u8; RECORD_SIZE];
        put(&mut b, offset_of!(Req, id), &self.id.to_ne_bytes());
        put(&mut b, offset_of!(Req, gfn), &self.gfn.to_ne_bytes());
        put(
            &mut b,
            offset_of!(Req, vcpu_id),
            &self.vcpu_id.to_ne_bytes(),
        );
        put(&mut b, offset_of!(Req, flags), &self.flags.to_ne_bytes());
        put(&mut b, offset_of!(Req, domid), &self.domid.to_ne_bytes());
        put(&mut b, offset_of!(Req, reason), &self.reason.to_ne_bytes());
        put(&mut b, offset_of!(Req, _pad), &self.pad.to_ne_bytes());
        b
    }
}

/// A synchronous response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawSyncRsp {
    pub id: u64,
    pub vcpu_id: u32,
    pub flags: u32,
    pub pad: [u64; 2],
}

impl RawSyncRsp {
    // Producer side: `testing`.
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    pub(crate) fn decode(b: &RecordWords) -> RawSyncRsp {
        let pad = offset_of!(Rsp, _pad);
        RawSyncRsp {
            id: u64_at(b, offset_of!(Rsp, id)),
            vcpu_id: u32_at(b, offset_of!(Rsp, vcpu_id)),
            flags: u32_at(b, offset_of!(Rsp, flags)),
            pad: [u64_at(b, pad), u64_at(b, pad + 8)],
        }
    }

    pub(crate) fn encode(&self) -> RecordBytes {
        let mut b = [0u8; RECORD_SIZE];
        let pad = offset_of!(Rsp, _pad);
        put(&mut b, offset_of!(Rsp, id), &self.id.to_ne_bytes());
        put(
            &mut b,
            offset_of!(Rsp, vcpu_id),
            &self.vcpu_id.to_ne_bytes(),
        );
        put(&mut b, offset_of!(Rsp, flags), &self.flags.to_ne_bytes());
        put(&mut b, pad, &self.pad[0].to_ne_bytes());
        put(&mut b, pad + 8, &self.pad[1].to_ne_bytes());
        b
    }
}

/// An asynchronous record, as found in the ring (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawAsyncRec {
    pub seq: u64,
    pub handle: u64,
    pub gfn: u64,
    pub domid: u16,
    pub reason: u16,
    pub flags: u32,
}

impl RawAsyncRec {
    #[inline]
    pub(crate) fn decode(b: &RecordWords) -> RawAsyncRec {
        RawAsyncRec {
            seq: u64_at(b, offset_of!(Rec, seq)),
            handle: u64_at(b, offset_of!(Rec, handle)),
            gfn: u64_at(b, offset_of!(Rec, gfn)),
            domid: u16_at(b, offset_of!(Rec, domid)),
            reason: u16_at(b, offset_of!(Rec, reason)),
            flags: u32_at(b, offset_of!(Rec, flags)),
        }
    }

    // Producer side: `testing`.
    #[cfg_attr(not(any(test, feature = "test-utils")), allow(dead_code))]
    pub(crate) fn encode(&self) -> RecordBytes {
        let mut b = [0u8; RECORD_SIZE];
        put(&mut b, offset_of!(Rec, seq), &self.seq.to_ne_bytes());
        put(&mut b, offset_of!(Rec, handle), &self.handle.to_ne_bytes());
        put(&mut b, offset_of!(Rec, gfn), &self.gfn.to_ne_bytes());
        put(&mut b, offset_of!(Rec, domid), &self.domid.to_ne_bytes());
        put(&mut b, offset_of!(Rec, reason), &self.reason.to_ne_bytes());
        put(&mut b, offset_of!(Rec, flags), &self.flags.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_offsets_match_the_documented_layout() {
        assert_eq!(hdr::VERSION, 0);
        assert_eq!(hdr::DOMID, 24);
        assert_eq!(hdr::REQ_PROD, 64);
        assert_eq!(hdr::FLAGS, 68);
        assert_eq!(hdr::LOST, 72);
        assert_eq!(hdr::REQ_CONS, 128);
        assert_eq!(hdr::REQ_EVENT, 132);
        assert_eq!(hdr::RSP_PROD, 192);
        assert_eq!(hdr::RSP_CONS, 256);
    }

    #[test]
    fn distance_wraps() {
        assert_eq!(ring_distance(5, 3), 2);
        assert_eq!(ring_distance(2, u32::MAX - 1), 4);
        assert_eq!(ring_distance(0, 0), 0);
        assert_eq!(ring_distance(0, 1), u32::MAX);
    }

    #[test]
    fn plausibility() {
        assert!(index_plausible(128, 0, 128));
        assert!(!index_plausible(129, 0, 128));
        assert!(index_plausible(127, u32::MAX, 128));
        assert!(!index_plausible(u32::MAX, 0, 128)); // consumer ahead
        assert!(index_plausible(7, 7, 128));
    }

    #[test]
    fn slots_mask() {
        assert_eq!(slot(128, 128), 0);
        assert_eq!(slot(u32::MAX, 128), 127);
        assert_eq!(slot_offset(4096, 129, 128), 4096 + 32);
    }

    #[test]
    fn event_index_crossing() {
        // From below the event to the event: notify.
        assert!(event_crossed(0, 1, 1));
        // Already past it: no new notification.
        assert!(!event_crossed(1, 2, 1));
        // Batch of 4 from 0: notify only when reaching 4.
        assert!(!event_crossed(2, 3, 4));
        assert!(event_crossed(3, 4, 4));
        // Across the wrap.
        assert!(event_crossed(u32::MAX, 0, 0));
        assert!(event_crossed(u32::MAX - 1, 2, 1));
        assert!(!event_crossed(u32::MAX - 1, u32::MAX, 1));
    }

    #[test]
    fn batch_is_clamped_to_half_the_ring() {
        assert_eq!(clamp_batch(0, 128), 1);
        assert_eq!(clamp_batch(64, 128), 64);
        assert_eq!(clamp_batch(65, 128), 64);
        assert_eq!(clamp_batch(256, 128), 64);
        assert_eq!(clamp_batch(u32::MAX, 8192), 4096);
    }

    #[test]
    fn frame_counts() {
        assert_eq!(total_frames(1, true), Some(3));
        assert_eq!(total_frames(1, false), Some(2));
        assert_eq!(total_frames(64, true), Some(129));
        assert_eq!(total_frames(3, true), None);
        assert_eq!(total_frames(0, false), None);
        assert_eq!(total_frames(128, false), None);
    }

    #[test]
    fn records_roundtrip() {
        let r = RawSyncReq {
            id: 0x1_0002,
            gfn: 0xdead_beef,
            vcpu_id: 2,
            flags: 1,
            domid: 7,
            reason: 1,
            pad: 0,
        };
        assert_eq!(RawSyncReq::decode(&words(&r.encode())), r);
        let s = RawSyncRsp {
            id: 9,
            vcpu_id: 1,
            flags: 0,
            pad: [0, 3],
        };
        assert_eq!(RawSyncRsp::decode(&words(&s.encode())), s);
        let a = RawAsyncRec {
            seq: 42,
            handle: 77,
            gfn: 5,
            domid: 3,
            reason: 2,
            flags: 1,
        };
        assert_eq!(RawAsyncRec::decode(&words(&a.encode())), a);
    }
}
