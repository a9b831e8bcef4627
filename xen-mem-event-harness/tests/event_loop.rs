//! Both rings of one domain served from one thread by one `poll(2)` loop,
//! through their descriptors (`AsFd`) and the non-blocking `process`,
//! against the hypervisor's own ring code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::{AsyncRing, EventType, SyncRing};
use xen_mem_event_harness::HarnessBackend;

const DOM: u16 = 9;

/// `poll(2)` on `fds` for up to `ms`: which are readable.
fn poll(fds: &[&dyn AsFd], ms: i32) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of valid pollfds of that length.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    pfds.iter().map(|p| p.revents != 0).collect()
}

#[test]
fn one_poll_loop_serves_both_rings_of_a_domain() {
    const VCPUS: u32 = 8;
    const ROUNDS: u32 = 100;
    const RECORDS: u64 = 5000;
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, VCPUS);
    let mut oom = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let mut inval = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(4)
        .batch(16)
        .register()
        .unwrap();
    let hv_oom = xen.ring(DOM, EventType::SharingOom).unwrap();
    let hv_inval = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);

    let vcpus: Vec<_> = (0..VCPUS)
        .map(|v| {
            let hv = Arc::clone(&hv_oom);
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    assert_ne!(hv.raise_oom(v, u64::from(round)).unwrap(), 0);
                    while hv.hv().pause_count(v) != 0 {
                        assert!(Instant::now() < deadline, "vCPU {v} never unpaused");
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let flood_done = Arc::new(AtomicBool::new(false));
    let flood = {
        let hv = Arc::clone(&hv_inval);
        let done = Arc::clone(&flood_done);
        thread::spawn(move || {
            for i in 0..RECORDS {
                hv.put_invalidate(i, i, DOM, 2, 0);
                if i % 64 == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            done.store(true, Ordering::Release);
        })
    };

    let (mut answered, mut records, mut lost) = (0u32, 0u64, 0u64);
    let mut next_seq = 0u64;
    while answered < VCPUS * ROUNDS || records + lost < RECORDS {
        assert!(
            Instant::now() < deadline,
            "a wake-up was lost: {answered} answered, {records} records, {lost} lost"
        );
        let ready = poll(&[&oom, &inval], 20);
        if ready[0] {
            let reqs = oom.process().unwrap();
            for r in reqs.iter().rev() {
                oom.respond(r).unwrap();
                answered += 1;
            }
            oom.flush().unwrap();
        }
        // Readable, or a poll timeout: take the tail below the threshold
        // too once the producer is done.
        if ready[1] || (ready == [false, false] && flood_done.load(Ordering::Acquire)) {
            loop {
                let batch = inval.process().unwrap();
                lost += batch.lost();
                for rec in batch {
                    let rec = rec.unwrap();
                    assert!(rec.seq >= next_seq);
                    next_seq = rec.seq + 1;
                    records += 1;
                }
                if !inval.rearm().unwrap() {
                    break;
                }
            }
        }
    }
    for v in vcpus {
        v.join().unwrap();
    }
    flood.join().unwrap();
    let info = oom.ring().info().unwrap();
    assert_eq!(
        (info.produced, info.consumed, info.bad_responses),
        (u64::from(VCPUS * ROUNDS), u64::from(VCPUS * ROUNDS), 0)
    );
    let info = inval.ring().info().unwrap();
    assert_eq!((records, lost), (info.produced, info.lost));
    assert_eq!(records + lost, RECORDS);
}

#[test]
fn async_records_arriving_while_a_batch_is_handled_are_not_lost() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(4)
        .register()
        .unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    for i in 0..4 {
        hv.put_invalidate(i, i, DOM, 2, 0);
    }
    assert_eq!(poll(&[&ring], 5000), [true], "a kick for the batch");
    let mut batch = ring.process().unwrap();
    assert_eq!(batch.len(), 4);
    // Four more while the batch is handled: Xen compares against the old
    // event index (already crossed) and does not kick.
    for i in 4..8 {
        hv.put_invalidate(i, i, DOM, 2, 0);
    }
    assert_eq!(batch.by_ref().count(), 4);
    drop(batch);
    assert_eq!(poll(&[&ring], 0), [false], "no kick came for them");
    assert!(ring.rearm().unwrap(), "rearm reports them");
    assert_eq!(ring.process().unwrap().count(), 4);
    assert!(!ring.rearm().unwrap());
    assert_eq!(hv.producer_kicks(), 1);
}

#[test]
fn sync_process_consumes_the_notification_without_blocking() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 2);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    // Nothing there: returns at once, nothing taken.
    assert!(ring.process().unwrap().is_empty());
    hv.raise_oom(1, 0x10).unwrap();
    assert_eq!(poll(&[&ring], 5000), [true]);
    let reqs = ring.process().unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(poll(&[&ring], 0), [false], "the notification was consumed");
    ring.respond(&reqs[0]).unwrap();
    // The next process kicks Xen for the answer.
    assert!(ring.process().unwrap().is_empty());
    assert_eq!(hv.unpaused(), vec![1]);
}
