//! Property tests: random interleavings of produce / consume / respond,
//! with free-running indices starting anywhere (notably just below
//! `u32::MAX`, so that they wrap), against the Rust model of Xen's ring
//! core in `xen_mem_event::testing`.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use xen_mem_event::layout::{event_crossed, index_plausible, ring_distance, slot};
use xen_mem_event::testing::FakeXen;
use xen_mem_event::{AsyncRing, EventType, InvalidateReason, SyncRequest, SyncRing};

const DOM: u16 = 1;

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), (u32::MAX - 300)..=u32::MAX, any::<u32>(),]
}

#[derive(Debug, Clone)]
enum SOp {
    Fault(u32),
    Foreign(u32),
    Take,
    TakeOne,
    Respond(usize),
    Flush,
}

fn sync_op(vcpus: u32) -> impl Strategy<Value = SOp> {
    prop_oneof![
        4 => (0..vcpus).prop_map(SOp::Fault),
        1 => (0..1000u32).prop_map(SOp::Foreign),
        2 => Just(SOp::Take),
        2 => Just(SOp::TakeOne),
        4 => any::<usize>().prop_map(SOp::Respond),
        2 => Just(SOp::Flush),
    ]
}

fn sync_case() -> impl Strategy<Value = (u32, u32, Vec<SOp>)> {
    (1u32..=16, start_index())
        .prop_flat_map(|(v, s)| (Just(v), Just(s), prop::collection::vec(sync_op(v), 1..200)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sync_interleavings((vcpus, start, ops) in sync_case()) {
        let xen = FakeXen::new();
        xen.add_domain(DOM, vcpus);
        xen.set_start_index(start);
        let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
        // Requests posted and not taken yet, in order.
        let mut in_ring: VecDeque<(u64, u32, bool)> = VecDeque::new();
        let mut taken: Vec<SyncRequest> = Vec::new();
        let mut answered = 0u64;
        for op in ops {
            match op {
                SOp::Fault(v) => {
                    let paused = xen.paused_vcpus(DOM).contains(&v);
                    match xen.put_sync(DOM, v, false, u64::from(v)) {
                        Ok(id) => {
                            prop_assert!(!paused);
                            prop_assert_eq!(id & 0xffff, u64::from(v));
                            in_ring.push_back((id, v, false));
                        }
                        Err(e) => prop_assert!(paused && e == -libc::EEXIST, "{e}"),
                    }
                }
                SOp::Foreign(v) => {
                    if let Ok(id) = xen.put_sync(DOM, v, true, 0) {
                        prop_assert_eq!(id, 0);
                        in_ring.push_back((0, v, true));
                    }
                }
                SOp::Take => {
                    let got = ring.take_requests().unwrap();
                    prop_assert_eq!(got.len(), in_ring.len());
                    for r in got {
                        let (id, v, foreign) = in_ring.pop_front().unwrap();
                        prop_assert_eq!((r.id, r.vcpu_id, r.foreign), (id, v, foreign));
                        if !foreign {
                            taken.push(r);
                        }
                    }
                }
                SOp::TakeOne => match ring.next_request().unwrap() {
                    Some(r) => {
                        let (id, v, foreign) = in_ring.pop_front().unwrap();
                        prop_assert_eq!((r.id, r.vcpu_id, r.foreign), (id, v, foreign));
                        if !foreign {
                            taken.push(r);
                        }
                    }
                    None => prop_assert!(in_ring.is_empty()),
                },
                SOp::Respond(i) => {
                    if !taken.is_empty() {
                        let r = taken.swap_remove(i % taken.len());
                        ring.respond(&r).unwrap();
                        answered += 1;
                    }
                }
                SOp::Flush => {
                    ring.flush().unwrap();
                    let pending: BTreeSet<u32> =
                        ring.pending().map(|p| p.request.vcpu_id).collect();
                    let paused: BTreeSet<u32> = xen.paused_vcpus(DOM).into_iter().collect();
                    let in_ring_paused: BTreeSet<u32> =
                        in_ring.iter().filter(|r| !r.2).map(|r| r.1).collect();
                    // Paused = taken and unanswered, plus posted not taken.
                    prop_assert_eq!(paused, &pending | &in_ring_paused);
                }
            }
            let info = ring.ring().info().unwrap();
            prop_assert_eq!(info.bad_responses, 0);
            prop_assert!(!ring.ring().is_broken());
            prop_assert!(!xen.is_broken(DOM, EventType::SharingOom));
        }
        // Answer everything left; every vCPU runs again.
        let rest = ring.take_requests().unwrap();
        taken.extend(rest.into_iter().filter(|r| !r.foreign));
        answered += taken.len() as u64;
        ring.respond_all(taken.iter()).unwrap();
        prop_assert!(xen.paused_vcpus(DOM).is_empty());
        prop_assert_eq!(ring.ring().info().unwrap().consumed, answered);
    }
}

#[derive(Debug, Clone)]
enum AOp {
    Put(u8),
    Take(u8),
    SetBatch(u16),
    Wait,
}

fn async_op() -> impl Strategy<Value = AOp> {
    prop_oneof![
        4 => (1u8..=100).prop_map(AOp::Put),
        3 => any::<u8>().prop_map(AOp::Take),
        1 => (0u16..=300).prop_map(AOp::SetBatch),
        1 => Just(AOp::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn async_interleavings(
        start in start_index(),
        init_batch in 0u32..200,
        ops in prop::collection::vec(async_op(), 1..120),
    ) {
        let xen = FakeXen::new();
        xen.add_domain(DOM, 1);
        xen.set_start_index(start);
        let mut ring = AsyncRing::builder(&xen, DOM).batch(init_batch).register().unwrap();
        let ty = EventType::SharingInvalidate;
        let nr_slots = u64::from(ring.ring().nr_slots());
        // Model, in absolute (non-wrapping) counts.
        let mut expected: VecDeque<(u64, u64)> = VecDeque::new(); // (handle, lost_before)
        let mut lost_since_post = 0u64;
        let mut lost_total = 0u64;
        let mut prod = 0u64;
        let mut cons = 0u64;
        let half = (nr_slots / 2).max(1);
        let mut event = u64::from(init_batch).clamp(1, half);
        // The consumer's last batch took records (it is awake).
        let mut busy = false;
        let mut notifications = 0u64;
        let mut lost_reported = 0u64;
        let mut next_handle = 0u64;
        for op in ops {
            match op {
                AOp::Put(n) => {
                    for _ in 0..n {
                        let h = next_handle;
                        next_handle += 1;
                        let posted = xen.put_async(DOM, h, h, InvalidateReason::Unshared, false);
                        // Xen sees our req_cons as published (batches are
                        // dropped before the next op).
                        prop_assert_eq!(posted, prod - cons < nr_slots);
                        if posted {
                            prod += 1;
                            expected.push_back((h, lost_since_post));
                            lost_since_post = 0;
                            if prod == event {
                                notifications += 1;
                            }
                        } else {
                            lost_since_post += 1;
                            lost_total += 1;
                        }
                    }
                    prop_assert_eq!(xen.info(DOM, ty).unwrap().notifications, notifications);
                }
                AOp::Take(k) => {
                    let mut b = ring.batch().unwrap();
                    prop_assert_eq!(b.len() as u64, prod - cons);
                    lost_reported += b.lost();
                    prop_assert_eq!(lost_reported, lost_total);
                    let before = cons;
                    for r in b.by_ref().take(usize::from(k)) {
                        let r = r.unwrap();
                        let (h, lost_before) = expected.pop_front().unwrap();
                        prop_assert_eq!(r.handle, h);
                        prop_assert_eq!(r.lost_before, lost_before);
                        prop_assert_eq!(r.seq, h);
                        cons += 1;
                    }
                    drop(b);
                    if cons != before {
                        // Awake: req_event, if Xen could still reach it, is
                        // parked out of reach (2^31 ahead).
                        busy = true;
                        if event > cons && event - cons <= nr_slots {
                            event = cons + (1 << 31);
                        }
                    }
                }
                AOp::SetBatch(n) => {
                    let ready = ring.set_batch(u32::from(n)).unwrap();
                    let batch = u64::from(ring.batch_size());
                    prop_assert_eq!(batch, u64::from(n).clamp(1, half));
                    event = cons + batch;
                    busy = false;
                    prop_assert_eq!(ready, prod - cons >= batch);
                }
                AOp::Wait => {
                    let ready = ring.wait(Some(Duration::ZERO)).unwrap();
                    let batch = u64::from(ring.batch_size());
                    // Awake: any record; else the threshold, armed first.
                    let want = if busy { 1 } else { batch };
                    if prod - cons >= want {
                        prop_assert!(ready);
                    } else {
                        event = cons + batch;
                        busy = false;
                        prop_assert_eq!(ready, prod - cons >= batch);
                    }
                }
            }
            prop_assert!(!xen.is_broken(DOM, ty));
        }
        let rest: Vec<_> = ring.batch().unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(rest.len(), expected.len());
        prop_assert_eq!(ring.lost_total(), lost_total);
    }

    #[test]
    fn distance_and_plausibility(
        cons in any::<u32>(),
        d in 0u32..=4096,
        nr_slots_log in 0u32..=13,
    ) {
        let nr_slots = 1u32 << nr_slots_log;
        let prod = cons.wrapping_add(d);
        prop_assert_eq!(ring_distance(prod, cons), d);
        prop_assert_eq!(index_plausible(prod, cons, nr_slots), d <= nr_slots);
        // A consumer ahead of the producer is never plausible.
        if d > 0 {
            prop_assert!(!index_plausible(cons, prod, nr_slots) || d > u32::MAX - nr_slots);
        }
        prop_assert!(slot(prod, nr_slots) < nr_slots);
        prop_assert_eq!(
            u64::from(slot(prod, nr_slots)),
            (u64::from(cons) + u64::from(d)) % u64::from(nr_slots)
        );
    }

    #[test]
    fn event_index_matches_naive(old in any::<u32>(), step in 1u32..=512, ahead in 0u32..=1024) {
        // req_event at `old + ahead`: crossed iff the new prod reached it.
        let new = old.wrapping_add(step);
        let event = old.wrapping_add(ahead);
        prop_assert_eq!(event_crossed(old, new, event), ahead >= 1 && ahead <= step);
    }
}
