//! The asynchronous consumer against the Rust model of Xen's ring core.

use std::time::Duration;

use xen_mem_event::testing::FakeXen;
use xen_mem_event::{AsyncRing, BrokenReason, Error, EventType, InvalidateReason};

const DOM: u16 = 4;
const INV: EventType = EventType::SharingInvalidate;

fn xen() -> FakeXen {
    let xen = FakeXen::new();
    xen.add_domain(DOM, 2);
    xen
}

fn put(xen: &FakeXen, n: u64) -> u64 {
    (0..n)
        .filter(|h| xen.put_async(DOM, *h, *h * 2, InvalidateReason::Unshared, h % 2 == 0))
        .count() as u64
}

#[test]
fn batch_iterates_and_releases_on_drop() {
    let xen = xen();
    let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
    assert_eq!(put(&xen, 5), 5);
    {
        let mut b = ring.batch().unwrap();
        assert_eq!(b.len(), 5);
        let first: Vec<_> = b.by_ref().take(2).map(Result::unwrap).collect();
        assert_eq!(first[0].handle, 0);
        assert!(first[0].handle_gone);
        assert_eq!(first[1].reason, InvalidateReason::Unshared);
        assert_eq!(b.remaining(), 3);
    }
    // Only the two iterated records were released.
    assert_eq!(ring.available().unwrap(), 3);
    let rest: Vec<u64> = ring.batch().unwrap().map(|r| r.unwrap().handle).collect();
    assert_eq!(rest, [2, 3, 4]);
    assert_eq!(ring.available().unwrap(), 0);
    // Xen sees them consumed at its next update.
    put(&xen, 1);
    assert_eq!(xen.info(DOM, INV).unwrap().consumed, 5);
}

#[test]
fn lost_records_are_a_first_class_delta() {
    let xen = xen();
    let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
    // 128 slots: 200 records, 72 lost.
    assert_eq!(put(&xen, 200), 128);
    let b = ring.batch().unwrap();
    assert_eq!(b.lost(), 72);
    assert_eq!(b.count(), 128);
    // The gap shows in seq once a record after the losses arrives.
    assert!(xen.put_async(DOM, 1000, 0, InvalidateReason::Merged, true));
    let mut b = ring.batch().unwrap();
    assert_eq!(b.lost(), 0);
    let r = b.next().unwrap().unwrap();
    assert_eq!(r.seq, 200);
    assert_eq!(r.lost_before, 72);
    assert_eq!(b.seq_gaps(), 72);
    drop(b);
    assert_eq!(ring.lost_total(), 72);
    assert_eq!(xen.info(DOM, INV).unwrap().lost, 72);
}

#[test]
fn event_index_coalesces_notifications() {
    let xen = xen();
    let mut ring = AsyncRing::builder(&xen, DOM).batch(8).register().unwrap();
    assert_eq!(ring.batch_size(), 8);
    put(&xen, 7);
    assert!(!ring.wait(Some(Duration::ZERO)).unwrap());
    assert_eq!(xen.info(DOM, INV).unwrap().notifications, 0);
    put(&xen, 1);
    assert_eq!(xen.info(DOM, INV).unwrap().notifications, 1);
    assert!(ring.wait(Some(Duration::ZERO)).unwrap());
    assert_eq!(ring.batch().unwrap().count(), 8);
    // 24 more: one kick per 8 once re-armed by wait.
    assert!(!ring.wait(Some(Duration::ZERO)).unwrap());
    put(&xen, 24);
    assert_eq!(xen.info(DOM, INV).unwrap().notifications, 2);
}

#[test]
fn set_batch_rechecks() {
    let xen = xen();
    let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
    put(&xen, 10);
    // Ten records are already there: raising the threshold to 4 must
    // report them ready, since no kick will come for them.
    assert!(ring.set_batch(4).unwrap());
    assert!(!ring.set_batch(11).unwrap());
    assert_eq!(
        ring.set_batch(100_000).map(|_| ring.batch_size()).unwrap(),
        64,
        "at most half the ring"
    );
    assert_eq!(ring.set_batch(0).map(|_| ring.batch_size()).unwrap(), 1);
}

#[test]
fn drain_timeout_takes_the_tail() {
    let xen = xen();
    let mut ring = AsyncRing::builder(&xen, DOM).batch(64).register().unwrap();
    put(&xen, 3);
    let t0 = std::time::Instant::now();
    let b = ring.drain_timeout(Duration::from_millis(20)).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(20));
    assert_eq!(b.len(), 3);
    drop(b); // not iterated: the records stay
    let b = ring.drain_timeout(Duration::from_millis(1)).unwrap();
    assert_eq!(b.count(), 3);
    let b = ring.drain_timeout(Duration::from_millis(1)).unwrap();
    assert!(b.is_empty());
}

#[test]
fn wait_wakes_from_another_thread() {
    let xen = xen();
    let mut ring = AsyncRing::builder(&xen, DOM).batch(2).register().unwrap();
    let x2 = xen.clone();
    let t = std::thread::spawn(move || {
        for h in 0..2 {
            std::thread::sleep(Duration::from_millis(5));
            x2.put_async(DOM, h, 0, InvalidateReason::Unshared, false);
        }
    });
    assert!(ring.wait(Some(Duration::from_secs(10))).unwrap());
    t.join().unwrap();
    assert_eq!(ring.batch().unwrap().count(), 2);
}

#[test]
fn corrupt_producer_index_is_ring_broken() {
    let xen = xen();
    let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
    xen.corrupt_req_prod(DOM, INV, u32::MAX);
    assert!(matches!(
        ring.batch(),
        Err(Error::RingBroken {
            reason: BrokenReason::ProducerAhead { .. },
            ..
        })
    ));
    assert!(ring.wait(None).unwrap_err().is_broken(), "no endless wait");
}

#[test]
fn lost_counter_going_backwards_is_ring_broken() {
    let xen = xen();
    let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
    put(&xen, 130);
    assert_eq!(ring.batch().unwrap().lost(), 2);
    xen.corrupt_lost(DOM, INV, 1);
    assert!(matches!(
        ring.batch(),
        Err(Error::RingBroken {
            reason: BrokenReason::LossAccounting { .. },
            ..
        })
    ));
}

#[test]
fn seq_gap_beyond_lost_counter_is_ring_broken() {
    let xen = xen();
    let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&5u64.to_ne_bytes()); // seq 5, nothing lost
    b[26..28].copy_from_slice(&1u16.to_ne_bytes());
    xen.push_raw(DOM, INV, b);
    let mut batch = ring.batch().unwrap();
    assert!(batch.next().unwrap().unwrap_err().is_broken());
    assert!(batch.next().is_none());
}

#[test]
fn garbage_records_are_ring_broken() {
    for (reason, flags) in [(0u16, 0u32), (5, 0), (1, 2)] {
        let xen = xen();
        let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
        put(&xen, 1);
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&1u64.to_ne_bytes());
        b[26..28].copy_from_slice(&reason.to_ne_bytes());
        b[28..32].copy_from_slice(&flags.to_ne_bytes());
        xen.push_raw(DOM, INV, b);
        let got: Vec<_> = ring.batch().unwrap().collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(matches!(
            got[1],
            Err(Error::RingBroken {
                reason: BrokenReason::BadRecord { index: 1, .. },
                ..
            })
        ));
        assert!(ring.batch().unwrap_err().is_broken());
    }
}

#[test]
fn drop_unregisters() {
    let xen = xen();
    let ring = AsyncRing::register(&xen, DOM, 2).unwrap();
    assert_eq!(ring.ring().nr_slots(), 256);
    drop(ring);
    assert!(xen.info(DOM, INV).is_none());
}

#[test]
fn steady_stream_costs_at_most_one_kick_per_batch() {
    for batch in [1u32, 16, 64] {
        for idle in [true, false] {
            let xen = xen();
            let mut ring = AsyncRing::builder(&xen, DOM)
                .frames(1)
                .batch(batch)
                .register()
                .unwrap();
            for _ in 0..10 {
                if idle {
                    // The consumer finds the ring empty and would sleep.
                    assert!(!ring.wait(Some(Duration::ZERO)).unwrap());
                }
                put(&xen, u64::from(batch));
                assert!(ring.wait(Some(Duration::from_secs(5))).unwrap());
                assert_eq!(ring.batch().unwrap().count(), batch as usize);
            }
            // Sleeping between batches: one kick each.  Never finding the
            // ring empty: only the kick of the first batch.
            assert_eq!(
                xen.info(DOM, INV).unwrap().notifications,
                if idle { 10 } else { 1 },
                "batch {batch}, idle {idle}"
            );
        }
    }
}

/// `wait(Some(Duration::MAX))` (and a spin) must not overflow the
/// deadline: `Instant::now() + timeout` panicked.
#[test]
fn wait_with_the_longest_timeout() {
    let xen = xen();
    let mut ring = AsyncRing::builder(&xen, DOM).batch(2).register().unwrap();
    assert_eq!(put(&xen, 2), 2);
    assert!(ring.wait(Some(Duration::MAX)).unwrap());
    assert_eq!(ring.batch().unwrap().count(), 2);
    // Nothing comes: the spin is bounded by the wait's deadline.
    ring.set_spin(Duration::MAX);
    assert!(!ring.wait(Some(Duration::from_millis(5))).unwrap());
}

/// A ring Xen tore down (taken over, or the domain dying) is reported as
/// detached, and reading it is `RingBroken` (`Detached`), not garbage.
#[test]
fn detached_ring_is_reported() {
    for takeover in [true, false] {
        let xen = xen();
        let mut ring = AsyncRing::register(&xen, DOM, 1).unwrap();
        assert_eq!(put(&xen, 3), 3);
        let _taker = if takeover {
            Some(
                AsyncRing::builder(&xen, DOM)
                    .takeover(true)
                    .register()
                    .unwrap(),
            )
        } else {
            xen.destroy_domain(DOM);
            None
        };
        assert!(ring.ring().is_detached(), "takeover {takeover}");
        let err = ring.batch().map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::RingBroken {
                    reason: BrokenReason::Detached,
                    ..
                }
            ),
            "{err}"
        );
        let t = ring.close();
        assert!(!t.unregistered && t.is_clean(), "{t:?}");
    }
}
