//! The synchronous ring answered from many threads (`Responder`), against
//! the hypervisor's own ring code: random order, no bad response, every
//! vCPU unpaused once per fault, and no lost wake-up (the waiter sleeps
//! without a timeout: a lost notification hangs it, and the deadline here
//! fails the test instead).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::{EventType, SyncRequest, SyncRing};
use xen_mem_event_harness::HarnessBackend;

const DOM: u16 = 11;

/// xorshift64: a cheap, seeded, reproducible shuffle.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn thirty_two_vcpus_answered_in_random_order_from_eight_threads() {
    const VCPUS: u32 = 32;
    const ROUNDS: u32 = 100;
    const THREADS: usize = 8;
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, VCPUS);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let responder = ring.responder();
    let done = Arc::new(AtomicBool::new(false));

    // Workers: hold what they get, answer it in a random order.
    let answered = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let (tx, rx) = mpsc::channel::<SyncRequest>();
        senders.push(tx);
        let responder = ring.responder();
        let answered = Arc::clone(&answered);
        workers.push(thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
            let mut held: Vec<SyncRequest> = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_micros(200)) {
                    Ok(r) => held.push(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) if held.is_empty() => return,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {}
                }
                // Answer a random one of those held, sometimes several.
                while !held.is_empty() && next(&mut seed) % 3 != 0 {
                    let i = (next(&mut seed) % held.len() as u64) as usize;
                    let r = held.swap_remove(i);
                    responder.respond(&r).unwrap();
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // The vCPUs: fault, wait to be unpaused, fault again.
    let barrier = Arc::new(Barrier::new(VCPUS as usize + 1));
    let vcpus: Vec<_> = (0..VCPUS)
        .map(|v| {
            let hv = Arc::clone(&hv);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    let id = hv
                        .raise_oom(v, u64::from(round) << 8 | u64::from(v))
                        .unwrap();
                    assert_ne!(id, 0, "vCPU {v} was paused already");
                    while hv.hv().pause_count(v) != 0 {
                        if Instant::now() > deadline {
                            return false;
                        }
                        thread::yield_now();
                    }
                }
                true
            })
        })
        .collect();

    // The waiter: sleeps without a timeout, hands requests out at random.
    let waiter = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut seed = 42u64;
            let mut taken = 0u64;
            while !done.load(Ordering::Acquire) {
                ring.wait(None).unwrap();
                for r in ring.take_requests().unwrap() {
                    assert!(!r.foreign);
                    let t = (next(&mut seed) % THREADS as u64) as usize;
                    senders[t].send(r).unwrap();
                    taken += 1;
                }
            }
            (ring, taken)
        })
    };
    barrier.wait();
    for v in vcpus {
        assert!(v.join().unwrap(), "a vCPU was never unpaused: lost wake-up");
    }
    let total = u64::from(VCPUS * ROUNDS);
    while answered.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "not every request was answered");
        thread::sleep(Duration::from_millis(1));
    }
    // Wake the waiter (sleeping with no timeout) so that it ends.
    done.store(true, Ordering::Release);
    responder.wake();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(waiter.join()).unwrap());
    let (ring, taken) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("Responder::wake did not wake the waiter")
        .unwrap();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(taken, total);
    let info = ring.ring().info().unwrap();
    assert_eq!((info.produced, info.consumed), (total, total));
    assert_eq!(
        (info.bad_responses, info.lost, info.paused_vcpus),
        (0, 0, 0)
    );
    let mut per_vcpu = vec![0u32; VCPUS as usize];
    for v in hv.unpaused() {
        per_vcpu[v as usize] += 1;
    }
    assert_eq!(
        per_vcpu,
        vec![ROUNDS; VCPUS as usize],
        "each fault unpaused once"
    );
    // Coalescing never costs more than a kick per answer.
    assert!(hv.consumer_kicks() <= total + 1);
    assert_eq!(ring.pending().count(), 0);
}

#[test]
fn an_id_is_answered_once_whoever_answers() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 4);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    hv.raise_oom(2, 0x20).unwrap();
    ring.wait(Some(Duration::from_secs(5))).unwrap();
    let req = ring.take_requests().unwrap()[0];
    // Eight threads race to answer the same request: one wins.
    let wins: usize = thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let r = ring.responder();
                s.spawn(move || r.respond(&req).is_ok())
            })
            .collect();
        hs.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
    });
    assert_eq!(wins, 1);
    assert_eq!(hv.unpaused(), vec![2]);
    assert_eq!(hv.hv().stats().bad_responses, 0);
    // Not pending any more: refused by the waiter too.
    assert!(ring.respond(&req).is_err());
}

#[test]
fn responders_fail_once_the_owner_detached_and_vcpus_are_released() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 4);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    for v in 0..4 {
        hv.raise_oom(v, u64::from(v)).unwrap();
    }
    ring.wait(Some(Duration::from_secs(5))).unwrap();
    let reqs = ring.take_requests().unwrap();
    let responder = ring.responder();
    responder.respond(&reqs[0]).unwrap();
    let t = ring.close();
    assert!(t.unregistered && t.is_clean(), "{t:?}");
    assert_eq!(xen.released_by_teardown(), 3);
    let err = responder.respond(&reqs[1]).unwrap_err();
    assert!(err.is_broken(), "{err}");
    assert!((0..4).all(|v| hv.hv().pause_count(v) == 0));
}

/// The harness, with a consumer-side event channel whose first `notify`
/// waits until the test lets it go (a kick in flight).
#[derive(Debug)]
struct SlowKick {
    inner: Arc<HarnessBackend>,
    gate: Arc<std::sync::Mutex<Option<mpsc::Receiver<()>>>>,
    entered: Arc<Barrier>,
}

#[derive(Debug)]
struct SlowChannel {
    inner: Box<dyn xen_mem_event::EventChannel>,
    gate: Arc<std::sync::Mutex<Option<mpsc::Receiver<()>>>>,
    entered: Arc<Barrier>,
}

impl std::os::fd::AsFd for SlowChannel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl xen_mem_event::EventChannel for SlowChannel {
    fn notify(&self) -> Result<(), xen_mem_event::Error> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            self.entered.wait();
            gate.recv().unwrap();
        }
        self.inner.notify()
    }
    fn wait(&self, t: Option<Duration>) -> Result<bool, xen_mem_event::Error> {
        self.inner.wait(t)
    }
}

impl xen_mem_event::Backend for SlowKick {
    fn register(
        &self,
        d: u16,
        ty: EventType,
        p: xen_mem_event::RegisterParams,
    ) -> Result<xen_mem_event::Registration, xen_mem_event::Error> {
        self.inner.register(d, ty, p)
    }
    fn unregister(
        &self,
        d: u16,
        ty: EventType,
        t: xen_mem_event::Token,
    ) -> Result<(), xen_mem_event::Error> {
        self.inner.unregister(d, ty, t)
    }
    fn get_info(
        &self,
        d: u16,
        ty: EventType,
    ) -> Result<xen_mem_event::RingInfo, xen_mem_event::Error> {
        self.inner.get_info(d, ty)
    }
    fn resume(
        &self,
        d: u16,
        ty: EventType,
        t: xen_mem_event::Token,
    ) -> Result<(), xen_mem_event::Error> {
        self.inner.resume(d, ty, t)
    }
    fn map(
        &self,
        d: u16,
        ty: EventType,
        n: u32,
    ) -> Result<Box<dyn xen_mem_event::RingMemory>, xen_mem_event::Error> {
        self.inner.map(d, ty, n)
    }
    fn bind(
        &self,
        d: u16,
        ty: EventType,
        port: u32,
    ) -> Result<Box<dyn xen_mem_event::EventChannel>, xen_mem_event::Error> {
        Ok(Box::new(SlowChannel {
            inner: self.inner.bind(d, ty, port)?,
            gate: Arc::clone(&self.gate),
            entered: Arc::clone(&self.entered),
        }))
    }
}

#[test]
fn answers_during_a_kick_cost_one_more_kick_and_none_is_left_unsignalled() {
    let inner = HarnessBackend::new();
    inner.add_domain(DOM, 8);
    let gate = Arc::new(std::sync::Mutex::new(None));
    let entered = Arc::new(Barrier::new(2));
    let xen = SlowKick {
        inner: Arc::clone(&inner),
        gate: Arc::clone(&gate),
        entered: Arc::clone(&entered),
    };
    let mut ring = SyncRing::register(xen, DOM, 1).unwrap();
    let hv = inner.ring(DOM, EventType::SharingOom).unwrap();
    for v in 0..8 {
        hv.raise_oom(v, u64::from(v)).unwrap();
    }
    ring.wait(Some(Duration::from_secs(5))).unwrap();
    let reqs = ring.take_requests().unwrap();
    let kicks0 = hv.consumer_kicks();
    let (release, held) = mpsc::channel();
    *gate.lock().unwrap() = Some(held);
    thread::scope(|s| {
        // vCPU 0's answer: its kick is held in flight.
        let r0 = ring.responder();
        let req0 = reqs[0];
        let first = s.spawn(move || r0.respond(&req0).unwrap());
        entered.wait();
        // Seven answers while it is in flight: published, not kicked here.
        for r in &reqs[1..] {
            ring.responder().respond(r).unwrap();
        }
        assert_eq!(hv.unpaused(), Vec::<u32>::new(), "nothing kicked yet");
        release.send(()).unwrap();
        first.join().unwrap();
    });
    // The kicker kicked once more for all seven: two kicks, eight answers.
    assert_eq!(hv.consumer_kicks() - kicks0, 2);
    let mut unpaused = hv.unpaused();
    unpaused.sort_unstable();
    assert_eq!(unpaused, (0..8).collect::<Vec<_>>());
    assert_eq!(ring.unflushed(), 0);
}
