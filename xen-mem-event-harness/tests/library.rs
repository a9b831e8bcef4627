//! The safe library's consumers against the hypervisor's real ring code
//! (compiled unchanged from the patched tree), across threads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::{AsyncRing, Backend, Error, EventType, Spin, SyncRing};
use xen_mem_event_harness::{HarnessBackend, HarnessRing};

const DOM: u16 = 5;

#[test]
fn thousands_of_oom_events_answered_out_of_order_across_threads() {
    const VCPUS: u32 = 32;
    const ROUNDS: u32 = 200;
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, VCPUS);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();

    // One producer thread per vCPU: fault, wait to be unpaused, fault again.
    let barrier = Arc::new(Barrier::new(VCPUS as usize + 1));
    let producers: Vec<_> = (0..VCPUS)
        .map(|v| {
            let hv = Arc::clone(&hv);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    let id = hv
                        .raise_oom(v, u64::from(round) << 20 | u64::from(v))
                        .unwrap();
                    assert_ne!(id, 0, "vCPU {v} was not paused already");
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while hv.hv().pause_count(v) != 0 {
                        assert!(Instant::now() < deadline, "vCPU {v} never unpaused");
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    barrier.wait();

    // The consumer answers in a scrambled order, holding some back a while.
    let mut answered = 0u32;
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    while answered < VCPUS * ROUNDS {
        ring.wait(Some(Duration::from_millis(10))).unwrap();
        for req in ring.take_requests().unwrap() {
            assert!(!req.foreign);
            assert_eq!(
                req.gfn & 0xfffff,
                u64::from(req.vcpu_id),
                "gfn belongs to its vCPU"
            );
            assert!(seen.insert(req.id), "id {:#x} reused", req.id);
            held.push(req);
        }
        // Answer every other request, newest first; keep the rest for later.
        held.reverse();
        let (now, later): (Vec<_>, Vec<_>) =
            held.drain(..).enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, req) in &now {
            ring.respond(req).unwrap();
            answered += 1;
        }
        held = later.into_iter().map(|(_, r)| r).collect();
        ring.flush().unwrap();
    }
    for p in producers {
        p.join().unwrap();
    }
    let info = ring.ring().info().unwrap();
    assert_eq!(info.produced, u64::from(VCPUS * ROUNDS));
    assert_eq!(info.consumed, u64::from(VCPUS * ROUNDS));
    assert_eq!(
        (info.bad_responses, info.lost, info.paused_vcpus),
        (0, 0, 0)
    );
    let mut unpaused = hv.unpaused();
    assert_eq!(unpaused.len(), (VCPUS * ROUNDS) as usize);
    unpaused.sort_unstable();
    unpaused.dedup();
    assert_eq!(
        unpaused,
        (0..VCPUS).collect::<Vec<_>>(),
        "exactly our vCPUs were unpaused"
    );
}

#[test]
fn async_overload_loss_is_exact() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(32)
        .register()
        .unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    const TOTAL: u64 = 200_000;
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let hv = Arc::clone(&hv);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            for i in 0..TOTAL {
                hv.put_invalidate(i, i * 2, DOM, 2, 0);
            }
            done.store(true, Ordering::Release);
        })
    };
    let (mut consumed, mut lost) = (0u64, 0u64);
    let mut last_seq = None;
    loop {
        let finished = done.load(Ordering::Acquire);
        let batch = ring.drain_timeout(Duration::from_millis(1)).unwrap();
        lost += batch.lost();
        for rec in batch {
            let rec = rec.unwrap();
            assert_eq!(rec.gfn, rec.handle * 2);
            assert_eq!(rec.seq, rec.handle, "seq counts every attempt");
            if let Some(prev) = last_seq {
                assert!(rec.seq > prev);
            }
            last_seq = Some(rec.seq);
            consumed += 1;
        }
        // A slow consumer: give the producer time to overrun the ring.
        thread::sleep(Duration::from_micros(50));
        if finished && ring.available().unwrap() == 0 {
            break;
        }
    }
    producer.join().unwrap();
    let batch = ring.batch().unwrap();
    lost += batch.lost();
    drop(batch);
    let info = ring.ring().info().unwrap();
    assert_eq!(info.produced + info.lost, TOTAL);
    assert_eq!(consumed, info.produced, "every posted record consumed");
    assert_eq!(lost, info.lost, "the consumer learned every loss");
    assert!(lost > 0, "the ring was overrun");
    assert_eq!(consumed + lost, TOTAL);
}

#[test]
fn batches_cost_one_notification() {
    for batch in [1u32, 16, 64, 256] {
        let xen = HarnessBackend::new();
        xen.add_domain(DOM, 1);
        let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
            .frames(4)
            .batch(batch)
            .register()
            .unwrap();
        let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
        let batches = 20u64;
        let mut got = 0u64;
        for b in 0..batches {
            // The consumer finds the ring empty: it arms and would sleep.
            assert!(!ring.wait(Some(Duration::ZERO)).unwrap());
            for i in 0..u64::from(batch) {
                hv.put_invalidate(b * 1000 + i, i, DOM, 1, 1);
            }
            assert!(
                ring.wait(Some(Duration::from_secs(5))).unwrap(),
                "a kick per batch"
            );
            let n = ring.batch().unwrap().count() as u64;
            assert_eq!(n, u64::from(batch));
            got += n;
        }
        assert_eq!(got, batches * u64::from(batch));
        assert_eq!(
            hv.producer_kicks(),
            batches,
            "batch {batch}: one notification per batch"
        );
        assert_eq!(ring.ring().info().unwrap().notifications, batches);
    }
}

type Inval = AsyncRing<Arc<HarnessBackend>>;

/// A 1-frame invalidate ring with threshold `batch`, and Xen's side of it.
fn invalidate_ring(batch: u32) -> (Arc<HarnessBackend>, Inval, Arc<HarnessRing>) {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(batch)
        .register()
        .unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    (xen, ring, hv)
}

/// `req_event` as the consumer last wrote it.
fn req_event(hv: &HarnessRing) -> u32 {
    let p = hv.hv().base().wrapping_add(132).cast::<AtomicU32>();
    // SAFETY: offset 132 of the ring page is req_event, 4-byte aligned, and
    // the ring outlives the call.
    unsafe { &*p }.load(Ordering::Acquire)
}

#[test]
fn a_busy_consumer_is_not_kicked_and_does_not_rearm() {
    let (_xen, mut ring, hv) = invalidate_ring(4);
    let mut seq = 0u64;
    let mut post = |n: u64| {
        for _ in 0..n {
            hv.put_invalidate(seq, seq, DOM, 2, 0);
            seq += 1;
        }
    };
    // Records keep coming: each look finds more waiting.
    post(4);
    let mut event = None;
    for round in 0..50 {
        assert!(ring.wait(Some(Duration::from_secs(5))).unwrap());
        assert_eq!(
            ring.batch().unwrap().count(),
            if round == 0 { 4 } else { 3 }
        );
        post(3); // below the threshold: taken because the consumer is awake
        let now = req_event(&hv);
        assert_eq!(
            *event.get_or_insert(now),
            now,
            "round {round}: req_event rewritten"
        );
    }
    assert!(ring.wait(Some(Duration::ZERO)).unwrap());
    assert_eq!(ring.batch().unwrap().count(), 3);
    assert_eq!(
        hv.producer_kicks(),
        1,
        "only the kick that woke the consumer"
    );

    // Idle: the ring is empty, so the consumer arms before it sleeps.
    assert!(!ring.wait(Some(Duration::from_millis(1))).unwrap());
    let cons = 4 + 50 * 3;
    assert_eq!(req_event(&hv), cons + 4, "armed at req_cons + batch");
    post(3);
    assert!(
        !ring.wait(Some(Duration::ZERO)).unwrap(),
        "below the threshold"
    );
    assert_eq!(hv.producer_kicks(), 1);
    post(1);
    assert_eq!(hv.producer_kicks(), 2, "one kick for the full batch");
    assert!(ring.wait(Some(Duration::from_secs(5))).unwrap());
    assert_eq!(ring.batch().unwrap().count(), 4);
}

/// Posts one record `after` from now, on another thread.
fn post_later(hv: &Arc<HarnessRing>, handle: u64, after: Duration) -> thread::JoinHandle<()> {
    let hv = Arc::clone(hv);
    thread::spawn(move || {
        thread::sleep(after);
        hv.put_invalidate(handle, handle, DOM, 2, 0);
    })
}

/// The default polling (`Spin::Adaptive`): an awake consumer polls for the
/// next record instead of arming and sleeping (no kick), stops polling
/// once a poll found nothing (the next record costs a kick), and polls
/// again once a sleep was short.  Windows and delays are 10x apart.
#[test]
fn an_awake_consumer_polls_while_polling_pays() {
    const WINDOW: Duration = Duration::from_millis(300);
    const SOON: Duration = Duration::from_millis(30);
    let (_xen, mut ring, hv) = invalidate_ring(1);
    assert_eq!(ring.spin_policy(), Spin::default());
    ring.set_spin_policy(Spin::Adaptive(WINDOW));
    let mut handle = 0u64;
    let mut next = |ring: &mut Inval| {
        let t = post_later(&hv, handle, SOON);
        handle += 1;
        assert!(ring.wait(Some(Duration::from_secs(10))).unwrap());
        t.join().unwrap();
        assert_eq!(ring.batch().unwrap().count(), 1);
        hv.producer_kicks()
    };
    // Not awake yet: the first record is waited for asleep, with a kick.
    assert_eq!(next(&mut ring), 1);
    // Awake: polled for, no kick (the consumer never armed).
    assert_eq!(next(&mut ring), 1);
    assert_eq!(next(&mut ring), 1);
    // Nothing comes within the window: the poll fails, the consumer sleeps.
    assert!(!ring.wait(Some(WINDOW * 3)).unwrap());
    assert_eq!(req_event(&hv), 3 + 1, "armed after the failed poll");
    // Taken while awake, but the last poll failed: the next one is slept
    // for (a kick)...
    hv.put_invalidate(99, 99, DOM, 2, 0);
    assert_eq!(hv.producer_kicks(), 2);
    assert_eq!(ring.batch().unwrap().count(), 1);
    assert_eq!(next(&mut ring), 3);
    // ...and that sleep was short: polling pays again, no kick.
    assert_eq!(next(&mut ring), 3);
    assert_eq!(next(&mut ring), 3);
    // A consumer told never to poll arms at once: a kick per record.
    ring.set_spin_policy(Spin::Never);
    assert_eq!(next(&mut ring), 4);
    assert_eq!(next(&mut ring), 5);
}

#[test]
fn a_consumer_woken_by_a_timeout_parks_req_event_out_of_reach() {
    let (_xen, mut ring, hv) = invalidate_ring(8);
    for i in 0..3 {
        hv.put_invalidate(i, i, DOM, 2, 0);
    }
    // The tail of a trickle: taken after the timeout, event still armed.
    assert_eq!(
        ring.drain_timeout(Duration::from_millis(1))
            .unwrap()
            .count(),
        3
    );
    // Awake now: more records must not kick it, even past the old event.
    for i in 3..20 {
        hv.put_invalidate(i, i, DOM, 2, 0);
    }
    assert_eq!(hv.producer_kicks(), 0);
    assert!(ring.wait(Some(Duration::ZERO)).unwrap());
    assert_eq!(ring.batch().unwrap().count(), 17);
}

#[test]
fn a_threshold_above_half_the_ring_is_clamped() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    // 128 slots: at most 64 per notification (Xen refuses more than 128).
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(256)
        .register()
        .unwrap();
    assert_eq!(ring.batch_size(), 64);
    assert_eq!(ring.ring().info().unwrap().batch, 64);
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    for i in 0..64 {
        hv.put_invalidate(i, i, DOM, 2, 0);
    }
    assert_eq!(hv.producer_kicks(), 1, "a kick at half the ring");
    assert!(ring.wait(Some(Duration::from_secs(5))).unwrap());
    assert_eq!(ring.batch().unwrap().count(), 64);
    ring.set_batch(100).unwrap();
    assert_eq!(ring.batch_size(), 64);
    ring.set_batch(0).unwrap();
    assert_eq!(ring.batch_size(), 1);
    ring.set_batch(64).unwrap();
    assert_eq!(ring.batch_size(), 64);
}

#[test]
fn wraparound_through_the_library() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 4);
    xen.start_indices_at(u32::MAX - 40);
    let mut oom = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let mut inval = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(8)
        .register()
        .unwrap();
    let hv_oom = xen.ring(DOM, EventType::SharingOom).unwrap();
    let hv_inval = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    let mut seq = 0u64;
    for round in 0..100u64 {
        for v in 0..4 {
            hv_oom.raise_oom(v, round).unwrap();
        }
        ring_round(&mut oom, 4);
        for i in 0..50 {
            hv_inval.put_invalidate(round * 50 + i, i, DOM, 2, 0);
        }
        for rec in inval.batch().unwrap() {
            assert_eq!(rec.unwrap().seq, seq);
            seq += 1;
        }
    }
    assert_eq!(seq, 5000);
    let info = oom.ring().info().unwrap();
    assert_eq!(
        (
            info.produced,
            info.consumed,
            info.bad_responses,
            info.paused_vcpus
        ),
        (400, 400, 0, 0)
    );
    assert_eq!(inval.ring().info().unwrap().lost, 0);
}

fn ring_round(ring: &mut SyncRing<Arc<HarnessBackend>>, n: usize) {
    ring.wait(Some(Duration::from_secs(1))).unwrap();
    let reqs = ring.take_requests().unwrap();
    assert_eq!(reqs.len(), n);
    for req in reqs.iter().rev() {
        ring.respond(req).unwrap();
    }
    ring.flush().unwrap();
}

#[test]
fn corrupt_producer_index_is_ring_broken() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    hv.put_invalidate(1, 1, DOM, 1, 0);
    // Scribble a producer index more than a ring ahead.
    let req_prod = hv.hv().base().wrapping_add(64).cast::<AtomicU32>();
    // SAFETY: offset 64 of the ring page is req_prod, 4-byte aligned, and
    // the ring outlives this test.
    unsafe { &*req_prod }.store(100_000, Ordering::Release);
    let err = ring.batch().map(|b| b.count()).unwrap_err();
    assert!(err.is_broken(), "{err}");
    // And it stays broken, without looping or reading out of bounds.
    assert!(ring.drain_timeout(Duration::from_millis(1)).is_err());
}

#[test]
fn drop_while_pending_unpauses() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 8);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    for v in 0..8 {
        hv.raise_oom(v, 0x100 + u64::from(v)).unwrap();
    }
    ring.wait(Some(Duration::from_secs(1))).unwrap();
    let reqs = ring.take_requests().unwrap();
    assert_eq!(reqs.len(), 8);
    ring.respond(&reqs[2]).unwrap();
    ring.flush().unwrap();
    assert_eq!(hv.unpaused(), vec![2]);
    drop(ring);
    assert_eq!(
        xen.released_by_teardown(),
        7,
        "unregistering released the 7 waiting vCPUs"
    );
    assert!((0..8).all(|v| hv.hv().pause_count(v) == 0));
    assert!(matches!(
        xen.get_info(DOM, EventType::SharingOom),
        Err(Error::NotRegistered { .. })
    ));
}

#[test]
fn independent_registration_and_busy() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 2);
    let oom = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let inval = AsyncRing::register(Arc::clone(&xen), DOM, 2).unwrap();
    assert!(matches!(
        SyncRing::register(Arc::clone(&xen), DOM, 1),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        AsyncRing::register(Arc::clone(&xen), DOM, 1),
        Err(Error::Busy { .. })
    ));
    drop(oom);
    let _again = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    drop(inval);
    assert!(matches!(
        SyncRing::register(Arc::clone(&xen), 99, 1),
        Err(Error::NoSuchDomain { .. })
    ));
}
