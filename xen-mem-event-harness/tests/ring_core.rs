//! The hypervisor's ring core (xen/common/mem_event_ring.c, compiled
//! unchanged) against a minimal consumer that follows public/mem_event.h
//! byte by byte.  The safe library's consumer is tested against the same
//! producer in tests/library.rs.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen_mem_event_harness::{
    total_frames, AsyncRec, HvRing, Owner, SHARING_INVALIDATE, SHARING_OOM,
};

const REQ_PROD: usize = 64;
const FLAGS: usize = 68;
const LOST: usize = 72;
const REQ_CONS: usize = 128;
const REQ_EVENT: usize = 132;
const RSP_PROD: usize = 192;
const RSP_CONS: usize = 256;
const PAUSED: u32 = 1;
const FOREIGN: u32 = 2;

/// A raw view of the shared frames: the consumer side of the ABI.
struct Raw<'a> {
    ring: &'a HvRing,
}

impl Raw<'_> {
    fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.ring.len() && off % 4 == 0);
        // SAFETY: in bounds, aligned, and the mapping outlives `self`.
        unsafe { AtomicU32::from_ptr(self.ring.base().wrapping_add(off).cast()) }
    }
    fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.ring.len() && off % 8 == 0);
        // SAFETY: as above.
        unsafe { AtomicU64::from_ptr(self.ring.base().wrapping_add(off).cast()) }
    }
    fn get(&self, off: usize) -> u32 {
        self.u32(off).load(Ordering::Acquire)
    }
    fn set(&self, off: usize, v: u32) {
        self.u32(off).store(v, Ordering::Release)
    }
    fn nr_slots(&self) -> u32 {
        self.get(8)
    }
    fn record(&self, array: usize, idx: u32) -> [u64; 4] {
        let off = array + (idx & (self.nr_slots() - 1)) as usize * 32;
        [0, 8, 16, 24].map(|o| self.u64(off + o).load(Ordering::Relaxed))
    }
    fn write_record(&self, array: usize, idx: u32, rec: [u64; 4]) {
        let off = array + (idx & (self.nr_slots() - 1)) as usize * 32;
        for (i, v) in rec.iter().enumerate() {
            self.u64(off + i * 8).store(*v, Ordering::Relaxed);
        }
    }
    /// Consume every pending request/record: (id, gfn, word2, word3).
    fn take(&self) -> Vec<[u64; 4]> {
        let prod = self.get(REQ_PROD);
        let mut cons = self.get(REQ_CONS);
        let mut out = Vec::new();
        while cons != prod {
            out.push(self.record(4096, cons));
            cons = cons.wrapping_add(1);
        }
        self.set(REQ_CONS, cons);
        out
    }
    fn respond(&self, id: u64, vcpu: u32, flags: u32, pad: [u64; 2]) {
        let prod = self.get(RSP_PROD);
        let rsp_off = self.get(16) as usize;
        self.write_record(
            rsp_off,
            prod,
            [
                id,
                u64::from(vcpu) | (u64::from(flags) << 32),
                pad[0],
                pad[1],
            ],
        );
        self.set(RSP_PROD, prod.wrapping_add(1));
    }
}

fn vcpu_of(req: &[u64; 4]) -> u32 {
    (req[2] & 0xffff_ffff) as u32
}
fn flags_of(req: &[u64; 4]) -> u32 {
    (req[2] >> 32) as u32
}

#[test]
fn frames_and_validation() {
    assert_eq!(total_frames(SHARING_OOM, 1), 3);
    assert_eq!(total_frames(SHARING_OOM, 64), 129);
    assert_eq!(total_frames(SHARING_INVALIDATE, 4), 5);
    assert_eq!(total_frames(SHARING_INVALIDATE, 3), 0, "not a power of two");
    assert_eq!(total_frames(SHARING_INVALIDATE, 128), 0, "over the cap");
    assert_eq!(total_frames(SHARING_INVALIDATE, 0), 0);
    assert_eq!(total_frames(2, 1), 0, "unknown type");
    assert_eq!(
        HvRing::new(SHARING_OOM, 1, 129, 1, 0).unwrap_err(),
        -libc::ENOSPC
    );
    assert_eq!(
        HvRing::new(SHARING_OOM, 1, 0, 1, 0).unwrap_err(),
        -libc::ENOSPC
    );
    assert_eq!(
        HvRing::new(SHARING_INVALIDATE, 5, 1, 1, 0).unwrap_err(),
        -libc::EINVAL
    );
    let r = HvRing::new(SHARING_OOM, 2, 4, 7, 0).unwrap();
    let raw = Raw { ring: &r };
    assert_eq!(r.len(), 5 * 4096);
    assert_eq!(raw.get(0), 2, "interface version");
    assert_eq!(raw.get(4), SHARING_OOM);
    assert_eq!(raw.nr_slots(), 256);
    assert_eq!(raw.get(12), 4096);
    assert_eq!(raw.get(16), 4096 + 2 * 4096);
    assert_eq!(raw.get(20), 4);
}

#[test]
fn out_of_order_responses_unpause_exactly_their_vcpu() {
    let r = HvRing::new(SHARING_OOM, 1, 8, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    let ids: Vec<u64> = (0..8)
        .map(|v| r.raise_oom(v, 0x1000 + u64::from(v)).unwrap())
        .collect();
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), 8, "ids are ring-unique");
    assert!(ids.iter().all(|&id| id != 0));
    assert!((0..8).all(|v| r.pause_count(v) == 1));

    let reqs = raw.take();
    assert_eq!(reqs.len(), 8);
    for (v, req) in (0u32..).zip(&reqs) {
        assert_eq!(req[0], ids[v as usize]);
        assert_eq!(req[1], 0x1000 + u64::from(v));
        assert_eq!(vcpu_of(req), v);
        assert_eq!(flags_of(req), PAUSED);
        assert_eq!(req[3] & 0xffff, 1, "domid");
        assert_eq!((req[3] >> 16) & 0xffff, 1, "reason OOM_UNSHARE");
    }
    // Answer the odd vCPUs, newest first; the even ones stay paused.
    for v in [7u32, 5, 3, 1] {
        raw.respond(ids[v as usize], v, 0, [0, 0]);
    }
    assert_eq!(r.resume(), vec![7, 5, 3, 1]);
    for v in 0..8 {
        assert_eq!(r.pause_count(v), u32::from(v % 2 == 0), "vcpu {v}");
    }
    for v in [0u32, 6, 2, 4] {
        raw.respond(ids[v as usize], v, 0, [0, 0]);
    }
    assert_eq!(r.resume(), vec![0, 6, 2, 4]);
    assert!((0..8).all(|v| r.pause_count(v) == 0));
    let s = r.stats();
    assert_eq!(
        (s.produced, s.consumed, s.bad_responses, s.paused),
        (8, 8, 0, 0)
    );
}

#[test]
fn bad_responses_are_dropped_and_counted() {
    let r = HvRing::new(SHARING_OOM, 1, 4, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    let a = r.raise_oom(0, 1).unwrap();
    let b = r.raise_oom(1, 2).unwrap();
    raw.take();
    raw.respond(a ^ (1 << 20), 0, 0, [0, 0]); // unknown generation
    raw.respond(b, 0, 0, [0, 0]); // vcpu_id mismatch
    raw.respond(a, 0, 1, [0, 0]); // flags set
    raw.respond(a, 0, 0, [0, 9]); // padding set
    raw.respond(0, 0, 0, [0, 0]); // id 0 (foreign requests are never answered)
    raw.respond((1 << 16) | 3, 3, 0, [0, 0]); // vCPU 3 has nothing outstanding
    raw.respond(u64::MAX, 0xffff, 0, [0, 0]); // vCPU beyond max_vcpus
    raw.respond(a, 0, 0, [0, 0]); // valid
    raw.respond(a, 0, 0, [0, 0]); // repeated
    assert_eq!(r.resume(), vec![0]);
    let s = r.stats();
    assert_eq!(s.bad_responses, 8);
    assert_eq!(s.consumed, 1);
    assert_eq!(
        (r.pause_count(0), r.pause_count(1)),
        (0, 1),
        "only vCPU 0 was released"
    );
    assert_eq!(s.broken, 0, "bad responses do not break the ring");
    raw.respond(b, 1, 0, [0, 0]);
    assert_eq!(r.resume(), vec![1]);
}

#[test]
fn every_vcpu_finds_a_slot_foreign_requests_do_not_take_them() {
    // 128 slots, 100 vCPUs: a foreign request only while more than 100 are
    // free, so 28 at most.
    let r = HvRing::new(SHARING_OOM, 1, 100, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    let mut foreign_ok = 0;
    for i in 0..200 {
        if r.raise_foreign(3, i).is_ok() {
            foreign_ok += 1;
        } else {
            assert_eq!(r.raise_foreign(3, i), Err(-libc::EBUSY));
        }
    }
    assert_eq!(foreign_ok, 28);
    for v in 0..100 {
        assert_ne!(
            r.raise_oom(v, u64::from(v)).unwrap(),
            0,
            "vCPU {v} found no slot"
        );
    }
    assert_eq!(
        r.raise_oom(5, 5),
        Ok(0),
        "second fault of a paused vCPU: -EEXIST, no new request"
    );
    let s = r.stats();
    assert_eq!(s.produced, 128);
    // Every refused foreign request was attempted twice above.
    assert_eq!(s.lost, 2 * (200 - 28));
    let reqs = raw.take();
    assert_eq!(
        reqs.iter()
            .filter(|q| flags_of(q) == FOREIGN && q[0] == 0)
            .count(),
        28
    );
    assert_eq!(reqs.iter().filter(|q| flags_of(q) == PAUSED).count(), 100);
    assert_eq!(s.paused, 100);
}

#[test]
fn wraparound_of_every_index() {
    for start in [u32::MAX - 3, u32::MAX, 0x7fff_fffe] {
        let r = HvRing::new(SHARING_OOM, 1, 4, 1, 0).unwrap();
        r.set_start(start);
        let raw = Raw { ring: &r };
        for round in 0..300u64 {
            let ids: Vec<u64> = (0..4).map(|v| r.raise_oom(v, round).unwrap()).collect();
            let reqs = raw.take();
            assert_eq!(reqs.len(), 4);
            for (v, req) in reqs.iter().enumerate().rev() {
                assert_eq!(req[0], ids[v]);
                assert_eq!(req[1], round);
                raw.respond(req[0], vcpu_of(req), 0, [0, 0]);
            }
            assert_eq!(r.resume(), vec![3, 2, 1, 0]);
        }
        let s = r.stats();
        assert_eq!(
            (s.produced, s.consumed, s.bad_responses, s.broken),
            (1200, 1200, 0, 0)
        );
        assert_eq!(s.req_prod, start.wrapping_add(1200));

        let a = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 1).unwrap();
        a.set_start(start);
        let raw = Raw { ring: &a };
        let mut seen = 0u64;
        for round in 0..40u64 {
            for i in 0..100 {
                a.put_invalidate(round * 100 + i, i, 1, 2, 0);
            }
            for rec in raw.take() {
                assert_eq!(rec[0], seen, "seq");
                assert_eq!(rec[1], seen, "handle");
                seen += 1;
            }
            a.resume();
        }
        assert_eq!(seen, 4000);
        assert_eq!(a.stats().lost, 0);
    }
}

#[test]
fn async_loss_is_counted_exactly() {
    let r = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 1).unwrap();
    let raw = Raw { ring: &r };
    for i in 0..1000 {
        r.put_invalidate(i, i, 1, 2, 1);
    }
    let s = r.stats();
    assert_eq!((s.produced, s.lost), (128, 872));
    assert_eq!(
        raw.u64(LOST).load(Ordering::Acquire),
        872,
        "shared lost counter"
    );
    let first = raw.take();
    assert_eq!(first.len(), 128);
    assert!(first.iter().enumerate().all(|(i, rec)| rec[0] == i as u64));
    for i in 1000..1010 {
        r.put_invalidate(i, i, 1, 2, 1);
    }
    let next = raw.take();
    assert_eq!(next[0][0], 1000, "seq jumps over the 872 lost");
    assert_eq!(next[0][1], 1000);
    assert_eq!(next[0][3] & 0xffff, 1);
    assert_eq!((next[0][3] >> 16) & 0xffff, 2);
    assert_eq!(next[0][3] >> 32, 1, "flags");
    r.resume();
    let s = r.stats();
    assert_eq!(s.produced + s.lost, 1010);
    assert_eq!(s.consumed, 138);
}

#[test]
fn one_notification_per_batch() {
    for batch in [1u32, 16, 64] {
        let r = HvRing::new(SHARING_INVALIDATE, 2, 1, 1, batch).unwrap();
        let raw = Raw { ring: &r };
        let mut kicks = 0;
        for i in 0..(u64::from(batch) * 10) {
            if r.put_invalidate(i, i, 1, 2, 0) {
                kicks += 1;
                let got = raw.take();
                assert_eq!(got.len(), batch as usize, "a kick per full batch");
                let cons = raw.get(REQ_CONS);
                raw.set(REQ_EVENT, cons.wrapping_add(batch));
            }
        }
        assert_eq!(kicks, 10, "batch {batch}");
        assert_eq!(r.stats().notifications, 10);
    }
}

/// A batched post: one publication and at most one notification for the
/// whole batch; what does not fit is lost, its sequence numbers used up.
#[test]
fn a_batch_is_published_once_and_loses_exactly_what_does_not_fit() {
    let r = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 1).unwrap();
    let raw = Raw { ring: &r };
    let rec = |i: u64| AsyncRec {
        handle: 0x100 + i,
        gfn: i,
        domid: 1,
        reason: 1,
        flags: 1,
        ..AsyncRec::default()
    };
    let batch: Vec<AsyncRec> = (0..100).map(rec).collect();
    assert!(
        r.put_invalidate_batch(&batch),
        "req_event 1 crossed: one kick"
    );
    assert_eq!(r.stats().notifications, 1);
    raw.set(REQ_EVENT, 1000);
    // 28 slots left: 28 posted, 72 lost.
    assert!(!r.put_invalidate_batch(&batch));
    let s = r.stats();
    assert_eq!((s.produced, s.lost, s.notifications), (128, 72, 1));
    let recs = raw.take();
    let seqs: Vec<u64> = recs.iter().map(|q| q[0]).collect();
    assert_eq!(seqs, (0..128).collect::<Vec<u64>>());
    assert_eq!((recs[127][1], recs[127][2]), (0x100 + 27, 27));
    // After the gap, the next record's seq says exactly how many were lost.
    raw.set(REQ_EVENT, r.stats().req_prod.wrapping_add(1));
    assert!(r.put_invalidate_batch(&batch[..1]));
    assert_eq!(raw.take()[0][0], 200, "seq 128..199 lost, this is 200");
    assert_eq!(raw.get(LOST), 72);
}

#[test]
fn corrupt_consumer_indices_break_the_ring_safely() {
    // req_cons beyond req_prod.
    let r = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 1).unwrap();
    let raw = Raw { ring: &r };
    r.put_invalidate(1, 1, 1, 2, 0);
    raw.set(REQ_CONS, 5);
    // The producer reads req_cons only when the ring looks full; the next
    // read (here GET_INFO's, as a notification's would) finds it impossible.
    assert!(!r.put_invalidate(2, 2, 1, 2, 0));
    assert_eq!(r.stats().broken, 1);
    assert_eq!(raw.get(FLAGS) & 1, 1, "BROKEN flag in the shared header");
    for i in 0..10 {
        assert!(!r.put_invalidate(i, i, 1, 2, 0));
    }
    let s = r.stats();
    assert_eq!((s.produced, s.lost), (2, 10));

    // An impossible req_cons found when the ring looks full breaks it too,
    // and nothing is written over unconsumed records.
    let r = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 1).unwrap();
    let raw = Raw { ring: &r };
    for i in 0..128 {
        r.put_invalidate(i, i, 1, 2, 0);
    }
    raw.set(REQ_CONS, 0x8000_0000);
    assert!(!r.put_invalidate(200, 200, 1, 2, 0));
    let s = r.stats();
    assert_eq!((s.produced, s.lost, s.broken), (128, 1, 1));
    assert_eq!(raw.record(4096, 0)[1], 0, "slot 0 still holds record 0");

    // req_cons moving backwards.
    let r = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 1).unwrap();
    let raw = Raw { ring: &r };
    for i in 0..4 {
        r.put_invalidate(i, i, 1, 2, 0);
    }
    raw.take();
    r.resume();
    raw.set(REQ_CONS, 2);
    r.resume();
    assert_eq!(r.stats().broken, 1);

    // rsp_prod more than a ring ahead, and req_cons garbage, on a sync ring.
    let r = HvRing::new(SHARING_OOM, 1, 2, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    r.raise_oom(0, 1).unwrap();
    raw.set(RSP_PROD, 129);
    assert!(r.resume().is_empty());
    assert_eq!(r.stats().broken, 1);
    // A vCPU faulting on a broken ring is parked: paused, no request, so it
    // does not re-fault in a loop; foreign requests are refused.
    assert_eq!(r.raise_oom(1, 1), Err(-libc::EAGAIN));
    assert_eq!(r.pause_count(1), 1, "parked on a broken ring");
    assert_eq!(
        r.raise_oom(1, 1),
        Ok(0),
        "a parked vCPU does not park twice"
    );
    assert_eq!(r.raise_foreign(3, 1), Err(-libc::EIO));
    assert!(r.resume().is_empty(), "a broken ring releases nobody");
    assert_eq!((r.stats().paused, r.stats().parked), (1, 1));
    assert_eq!(r.teardown(), 2, "teardown releases vCPU 0 and the parked 1");
    assert_eq!((r.pause_count(0), r.pause_count(1)), (0, 0));
    assert_eq!((r.stats().paused, r.stats().parked), (0, 0));

    let r = HvRing::new(SHARING_OOM, 1, 2, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    raw.set(REQ_CONS, 0xdead_beef);
    assert_eq!(r.raise_oom(0, 1), Err(-libc::EAGAIN));
    assert_eq!(raw.get(RSP_CONS), 0);
    assert_eq!(r.stats().produced, 0);
}

#[test]
fn teardown_releases_every_paused_vcpu() {
    let r = HvRing::new(SHARING_OOM, 1, 16, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    for v in 0..16 {
        r.raise_oom(v, 0).unwrap();
    }
    let reqs = raw.take();
    raw.respond(reqs[3][0], 3, 0, [0, 0]);
    assert_eq!(r.resume(), vec![3]);
    assert_eq!(r.teardown(), 15);
    assert!((0..16).all(|v| r.pause_count(v) == 0));
    assert_eq!(r.stats().paused, 0);
}

/// The sequence of issue 11: a consumed request frees its slot, a foreign
/// request must not take it, or the vCPU finds none once answered.
#[test]
fn a_foreign_request_never_takes_a_slot_a_vcpu_will_need() {
    let r = HvRing::new(SHARING_OOM, 1, 128, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    let id0 = r.raise_oom(0, 0x10).unwrap();
    assert_eq!(raw.take().len(), 1);
    assert_eq!(r.raise_foreign(200, 0x20), Err(-libc::EBUSY));
    raw.respond(id0, 0, 0, [0, 0]);
    assert_eq!(r.resume(), vec![0]);
    for v in 0..128 {
        assert_ne!(r.raise_oom(v, u64::from(v)), Err(-libc::EAGAIN), "vCPU {v}");
        assert_eq!(r.pause_count(v), 1);
    }
    let s = r.stats();
    assert_eq!((s.paused, s.parked, s.lost), (128, 0, 1));
}

/// A consumer that answers without consuming: the ring fills up, and a vCPU
/// that faults again is parked (no busy loop) until the consumer catches up.
#[test]
fn a_vcpu_without_a_slot_is_parked_until_there_is_room() {
    let r = HvRing::new(SHARING_OOM, 1, 128, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    let ids: Vec<u64> = (0..128).map(|v| r.raise_oom(v, 1).unwrap()).collect();
    raw.respond(ids[0], 0, 0, [0, 0]);
    assert_eq!(r.resume(), vec![0], "answered, but its slot not consumed");
    assert_eq!(r.raise_oom(0, 1), Err(-libc::EAGAIN));
    assert_eq!(
        (r.pause_count(0), r.stats().parked, r.stats().lost),
        (1, 1, 1)
    );
    assert!(r.resume().is_empty(), "still no room: stays parked");
    assert_eq!(raw.take().len(), 128);
    assert_eq!(r.resume(), vec![0], "room again: released to retry");
    assert_eq!(r.pause_count(0), 0);
    assert_ne!(r.raise_oom(0, 1).unwrap(), 0);
    assert_eq!(r.stats().parked, 0);
}

/// Only the registered consumer maps the frames; only the owner token
/// unregisters or resumes.
#[test]
fn only_the_owner_acts_on_a_ring() {
    let owner = Owner {
        consumer: 7,
        token: 0x1234_5678_9abc,
    };
    let r = HvRing::with_owner(SHARING_INVALIDATE, 1, 1, 3, 0, owner).unwrap();
    assert!(r.may_map(7));
    assert!(!r.may_map(0), "dom0, not the consumer");
    assert!(!r.may_map(3), "the target itself (e.g. its device model)");
    assert!(r.owns(owner.token));
    assert!(!r.owns(owner.token + 1));
    assert!(!r.owns(0));
}

/// Ids of one ring are bad responses on the next ring of the domain (a
/// stale answer after a takeover must not release a vCPU).
#[test]
fn ids_are_unique_across_successive_rings() {
    let ring = |token| {
        let owner = Owner { consumer: 0, token };
        HvRing::with_owner(SHARING_OOM, 1, 2, 1, 0, owner).unwrap()
    };
    let old = ring(41);
    let old_id = old.raise_oom(0, 1).unwrap();
    drop(old);
    let new = ring(42);
    let raw = Raw { ring: &new };
    let new_id = new.raise_oom(0, 1).unwrap();
    assert_ne!(old_id, new_id);
    raw.take();
    raw.respond(old_id, 0, 0, [0, 0]);
    assert!(new.resume().is_empty(), "the stale answer released nobody");
    assert_eq!((new.stats().bad_responses, new.pause_count(0)), (1, 1));
    raw.respond(new_id, 0, 0, [0, 0]);
    assert_eq!(new.resume(), vec![0]);
}

/// Teardown says so in the header and scrubs the arrays (gfns, handles).
#[test]
fn teardown_detaches_and_scrubs() {
    let r = HvRing::new(SHARING_INVALIDATE, 1, 1, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    for i in 0..10 {
        r.put_invalidate(0xabc0 + i, 0x5000 + i, 1, 2, 0);
    }
    assert_ne!(raw.record(4096, 3), [0; 4]);
    r.teardown();
    assert_eq!(raw.get(FLAGS) & 2, 2, "XEN_MEM_EVENT_RING_F_DETACHED");
    assert!((0..128).all(|i| raw.record(4096, i) == [0; 4]));
    assert!(!r.put_invalidate(1, 1, 1, 2, 0));
    assert_eq!((r.stats().produced, r.stats().lost), (10, 1));

    let r = HvRing::new(SHARING_OOM, 1, 2, 1, 0).unwrap();
    let raw = Raw { ring: &r };
    let id = r.raise_oom(0, 0x77).unwrap();
    raw.respond(id, 0, 0, [0, 0]);
    r.teardown();
    assert_eq!(raw.get(FLAGS) & 2, 2);
    assert_eq!(raw.record(4096, 0), [0; 4], "request scrubbed");
    assert_eq!(raw.record(4096 + 4096, 0), [0; 4], "response scrubbed");
    assert_eq!(r.raise_oom(1, 1), Err(-libc::EAGAIN), "nothing posted");
}

mod interleavings {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Fault(u32),
        FaultAll,
        Foreign(u32),
        Consume,
        Answer(usize),
        Resume,
    }

    fn step(vcpus: u32) -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..vcpus).prop_map(Step::Fault),
            1 => Just(Step::FaultAll),
            3 => (1u32..=130).prop_map(Step::Foreign),
            2 => Just(Step::Consume),
            3 => any::<usize>().prop_map(Step::Answer),
            2 => Just(Step::Resume),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// While the consumer follows the protocol (consumes what it reads,
        /// answers only what it consumed), no vCPU's request is refused.
        #[test]
        fn a_vcpu_request_is_never_refused(
            (vcpus, steps) in (1u32..=128).prop_flat_map(|v| {
                (Just(v), proptest::collection::vec(step(v), 1..200))
            })
        ) {
            let r = HvRing::new(SHARING_OOM, 1, vcpus, 1, 0).unwrap();
            let raw = Raw { ring: &r };
            let mut consumed: Vec<(u64, u32)> = Vec::new();
            for s in steps {
                match s {
                    Step::Fault(v) if r.pause_count(v) == 0 => {
                        let rc = r.raise_oom(v, u64::from(v));
                        let posted = matches!(rc, Ok(id) if id != 0);
                            prop_assert!(posted, "vCPU {} got {:?}", v, rc);
                    }
                    Step::Fault(_) => {}
                    Step::FaultAll => {
                        for v in (0..vcpus).filter(|v| r.pause_count(*v) == 0) {
                            let rc = r.raise_oom(v, u64::from(v));
                            let posted = matches!(rc, Ok(id) if id != 0);
                            prop_assert!(posted, "vCPU {} got {:?}", v, rc);
                        }
                    }
                    Step::Foreign(n) => {
                        for _ in 0..n {
                            let _ = r.raise_foreign(vcpus + 1, 0);
                        }
                    }
                    Step::Consume => consumed.extend(
                        raw.take()
                            .iter()
                            .filter(|q| q[0] != 0)
                            .map(|q| (q[0], vcpu_of(q))),
                    ),
                    Step::Answer(i) if !consumed.is_empty() => {
                        let (id, v) = consumed.swap_remove(i % consumed.len());
                        raw.respond(id, v, 0, [0, 0]);
                    }
                    Step::Answer(_) => {}
                    Step::Resume => {
                        r.resume();
                    }
                }
                let s = r.stats();
                prop_assert_eq!((s.parked, s.broken, s.bad_responses), (0, 0, 0));
            }
        }
    }
}

#[test]
fn sanitizers_are_on_when_asked_for() {
    assert_eq!(xen_mem_event_harness::sanitized(), cfg!(harness_sanitized));
}
