//! The epoll example's loop (`xen-mem-event/examples/epoll.rs`, included
//! here as it is) serving both rings of a domain from one thread, against
//! the hypervisor's own ring code: faults and records come from other
//! threads, and every wait is bounded by a deadline, so that a lost
//! wake-up fails the test instead of hanging it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../../xen-mem-event/examples/epoll.rs"]
mod epoll;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use epoll::{serve, Args, Cause, Counts, Ended, Summary};
use xen_mem_event::{AsyncRing, Error, EventType, Op, SyncRequest, SyncRing};
use xen_mem_event_harness::{HarnessBackend, HarnessRing};

const DOM: u16 = 9;
/// Longer than any deadline: only notifications drive the loop.
const NO_TICK: Duration = Duration::from_secs(3600);
const TICK: Duration = Duration::from_millis(10);
const HANDLE_GONE: u32 = 1;
const UNSHARED: u16 = 2;

type Server = JoinHandle<Result<Summary, Error>>;

/// A domain with both rings registered, the loop serving them on its own
/// thread with `raise` as the policy.
struct Setup {
    xen: Arc<HarnessBackend>,
    oom: Arc<HarnessRing>,
    inval: Arc<HarnessRing>,
    stop: UnixStream,
    server: Server,
}

fn start(
    vcpus: u32,
    batch: u32,
    tick: Duration,
    raise: impl FnMut(&SyncRequest) -> Result<(), Error> + Send + 'static,
) -> Setup {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, vcpus);
    let oom = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let inval = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(4)
        .batch(batch)
        .register()
        .unwrap();
    let (stop_rx, stop) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || serve(oom, inval, stop_rx.as_fd(), tick, raise));
    Setup {
        oom: xen.ring(DOM, EventType::SharingOom).unwrap(),
        inval: xen.ring(DOM, EventType::SharingInvalidate).unwrap(),
        xen,
        stop,
        server,
    }
}

impl Setup {
    /// Stops the loop (as SIGINT does) and returns its summary.
    fn stop(mut self) -> Summary {
        self.stop.write_all(b"s").unwrap();
        self.server.join().unwrap().unwrap()
    }

    /// Waits for the loop to end by itself (bounded by `deadline`).
    fn ended_by_itself(mut self, deadline: Instant) -> Summary {
        while !self.server.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let late = !self.server.is_finished();
        if late {
            self.stop.write_all(b"s").unwrap();
        }
        let summary = self.server.join().unwrap().unwrap();
        assert!(!late, "the loop did not end by itself: {summary}");
        summary
    }
}

/// Waits until `cond` holds; false at `deadline`.
fn until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::yield_now();
    }
    true
}

#[test]
fn one_epoll_thread_serves_both_rings_of_a_domain() {
    const VCPUS: u32 = 8;
    const ROUNDS: u32 = 100;
    const CHUNKS: u64 = 40;
    const CHUNK: u64 = 64;
    let raised = Arc::new(AtomicU64::new(0));
    let raises = Arc::clone(&raised);
    // A notification per record: each chunk is taken on kicks alone.
    let s = start(VCPUS, 1, NO_TICK, move |_| {
        raises.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let deadline = Instant::now() + Duration::from_secs(60);

    let vcpus: Vec<_> = (0..VCPUS)
        .map(|v| {
            let hv = Arc::clone(&s.oom);
            thread::spawn(move || {
                (0..ROUNDS).all(|round| {
                    assert_ne!(hv.raise_oom(v, u64::from(round)).unwrap(), 0);
                    until(deadline, || hv.hv().pause_count(v) == 0)
                })
            })
        })
        .collect();
    let flood = {
        let (inval, oom) = (Arc::clone(&s.inval), Arc::clone(&s.oom));
        thread::spawn(move || {
            (0..CHUNKS).all(|c| {
                for i in c * CHUNK..(c + 1) * CHUNK {
                    let flags = if i % 8 == 0 { HANDLE_GONE } else { 0 };
                    inval.put_invalidate(i, i, DOM, UNSHARED, flags);
                }
                // A foreign access: reported, never answered.
                oom.raise_foreign(0, c).unwrap();
                until(deadline, || inval.hv().stats().consumed == (c + 1) * CHUNK)
            })
        })
    };
    let vcpus_ok: Vec<bool> = vcpus.into_iter().map(|t| t.join().unwrap()).collect();
    let flood_ok = flood.join().unwrap();
    let (hv_oom, hv_inval) = (Arc::clone(&s.oom), Arc::clone(&s.inval));
    let summary = s.stop();
    assert!(
        vcpus_ok.iter().all(|&ok| ok) && flood_ok,
        "a wake-up was lost (vCPUs answered in time: {vcpus_ok:?}, records taken in time: \
            {flood_ok}): {summary}"
    );

    assert_eq!(summary.ended, Ended::Stopped);
    assert!(summary.success() && summary.warnings.is_empty());
    let answered = u64::from(VCPUS * ROUNDS);
    assert_eq!(
        summary.counts,
        Counts {
            answered,
            answered_at_exit: 0,
            foreign: CHUNKS,
            records: CHUNKS * CHUNK,
            lost: 0,
            handles_gone: CHUNKS * CHUNK / 8,
        }
    );
    assert_eq!(raised.load(Ordering::Relaxed), answered);
    let st = hv_oom.hv().stats();
    assert_eq!((st.consumed, st.bad_responses), (answered, 0));
    assert_eq!(hv_inval.hv().stats().lost, 0);
    assert_eq!(
        summary.to_string(),
        format!(
            "d{DOM}: stopped; SHARING_OOM: 800 answered, 0 answered at exit, 40 foreign; \
             SHARING_INVALIDATE: 2560 records, 0 lost, 320 handles gone"
        )
    );
}

#[test]
fn a_failed_raise_is_tried_again_every_tick_and_the_stop_answers_the_rest() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&calls);
    // vCPU 0: never any room; vCPU 1: room at the third attempt.
    let s = start(2, 64, TICK, move |req| {
        let mut log = log.lock().unwrap();
        log.push(req.vcpu_id);
        let tries = log.iter().filter(|&&v| v == req.vcpu_id).count();
        if req.vcpu_id == 1 && tries >= 3 {
            Ok(())
        } else {
            Err(Error::NoSuchDomain {
                op: Op::SetMaxMem,
                domid: DOM,
            })
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    s.oom.raise_oom(0, 0x10).unwrap();
    s.oom.raise_oom(1, 0x20).unwrap();
    assert!(
        until(deadline, || s.oom.hv().pause_count(1) == 0),
        "vCPU 1 was never answered"
    );
    assert_eq!(s.oom.hv().pause_count(0), 1, "no room for vCPU 0 yet");
    let hv = Arc::clone(&s.oom);
    let summary = s.stop();
    assert_eq!(summary.ended, Ended::Stopped);
    assert_eq!(
        (summary.counts.answered, summary.counts.answered_at_exit),
        (1, 1)
    );
    // Both answered by a response, before the ring was closed.
    assert_eq!(hv.unpaused(), vec![1, 0]);
    assert_eq!(hv.hv().stats().bad_responses, 0);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.iter().filter(|&&v| v == 1).count(), 3);
    assert!(calls.iter().filter(|&&v| v == 0).count() >= 3);
}

#[test]
fn records_below_the_threshold_are_taken_on_the_tick() {
    let s = start(1, 64, TICK, |_| Ok(()));
    for i in 0..10 {
        assert!(!s.inval.put_invalidate(i, i, DOM, UNSHARED, 0), "no kick");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(until(deadline, || s.inval.hv().stats().consumed == 10));
    let summary = s.stop();
    assert_eq!(summary.counts.records, 10);
}

#[test]
fn a_destroyed_domain_ends_the_loop() {
    let s = start(2, 64, TICK, |_| Ok(()));
    s.oom.raise_oom(1, 0x10).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(until(deadline, || s.oom.hv().pause_count(1) == 0));
    s.xen.destroy_domain(DOM);
    let summary = s.ended_by_itself(deadline);
    assert!(
        matches!(summary.ended, Ended::Detached(_, Cause::DomainGone)),
        "{summary}"
    );
    assert!(summary.success() && summary.warnings.is_empty());
    assert_eq!(summary.counts.answered, 1);
    assert!(summary.to_string().starts_with("d9: domain destroyed;"));
}

#[test]
fn a_takeover_ends_the_loop_naming_the_ring() {
    let s = start(2, 64, TICK, |_| Ok(()));
    let successor = AsyncRing::builder(Arc::clone(&s.xen), DOM)
        .takeover(true)
        .register()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary = s.ended_by_itself(deadline);
    assert_eq!(
        summary.ended,
        Ended::Detached(EventType::SharingInvalidate, Cause::TakenOver)
    );
    assert!(!summary.success());
    assert!(summary
        .to_string()
        .starts_with("d9: SHARING_INVALIDATE ring taken over by another consumer;"));
    // The successor is untouched; the OOM ring was closed.
    assert!(!successor.ring().is_detached());
    assert!(successor.ring().info().is_ok());
}

#[test]
fn the_command_line() {
    let parse = |args: &[&str]| Args::parse(args.iter().map(|a| a.to_string()));
    assert_eq!(
        parse(&["--domain", "5"]),
        Ok(Some(Args {
            domid: 5,
            step_kib: 1024
        }))
    );
    assert_eq!(
        parse(&["--step", "4096", "--domain", "7"]),
        Ok(Some(Args {
            domid: 7,
            step_kib: 4096
        }))
    );
    assert_eq!(parse(&["--help"]), Ok(None));
    assert!(parse(&[]).is_err());
    assert!(parse(&["--domain"]).is_err());
    assert!(parse(&["--domain", "70000"]).is_err());
    assert!(parse(&["--domain", "1", "--step", "x"]).is_err());
    assert!(parse(&["--domain", "1", "extra"]).is_err());
}
