//! Section 1: lossless throughput of invalidate records.
//!
//! - [`async_lossless`]: the hypervisor's ring core (producer) and the
//!   library's `AsyncRing` (consumer) on two threads, the event channel
//!   being the harness eventfd.
//! - [`vm_event_baseline`]: a faithful model of today's vm_event ring.
//! - [`spsc_reference`]: a minimal lock-free SPSC queue of the same
//!   records, the physical reference, publishing per record or in bulk.
//! - [`pingpong_ns`]: the cross-CPU cache-line round trip the two CPUs
//!   give at the moment (it moves with where the host places them).
//!
//! Every producer posts records for `run`, then stops; the consumer takes
//! every record, checks their order, and the rate is records taken over
//! the consumer's elapsed time (tail included).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::{AsyncRing, EventType, Spin};
use xen_mem_event_harness::{AsyncRec, Doorbell, HarnessBackend};

use crate::util::{
    backoff, join, pin, watchdog, BResult, Checks, FairGuard, FairLock, HeaderPeek, Padded, Pinned,
    DOM, REASON_UNSHARED,
};

/// Not finished yet (the producer stores its total when it stops).
const RUNNING: u64 = u64::MAX;

/// Producer and consumer run pinned to different CPUs (the machine has
/// two), so that runs do not depend on where the scheduler put them.
const PRODUCER_CPU: usize = 0;
const CONSUMER_CPU: usize = 1;

/// Check the clock every this many records.
const CLOCK_EVERY: u64 = 1024;

/// Records a bulk producer posts at once at most: the async producer
/// (modelling Xen's bulk paths, a share's gfn loop or a domain's
/// teardown) through `mem_event_ring_put_async_batch`, and the batched
/// SPSC reference with one publication.
pub const BULK: u32 = 64;

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tp {
    /// Records delivered (all of them: the runs are lossless).
    pub records: u64,
    /// Consumer's elapsed time.
    pub secs: f64,
    /// Notifications to the consumer (event channel kicks).
    pub notifications: u64,
    /// Non-empty batches the consumer took (vm_event: drain rounds).
    pub batches: u64,
    /// vm_event: consumer -> Xen notifications (one per drain round).
    pub rsp_notifications: u64,
    /// vm_event: times the producer blocked on a full ring.
    pub producer_waits: u64,
}

impl Tp {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.records as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn notif_per_record(&self) -> f64 {
        if self.records > 0 {
            self.notifications as f64 / self.records as f64
        } else {
            0.0
        }
    }
}

/// The library consumer against the hypervisor's ring core, lossless.
pub fn async_lossless(
    frames: u32,
    batch: u32,
    spin: Spin,
    post: u32,
    run: Duration,
    checks: &mut Checks,
) -> BResult<Tp> {
    let ctx = format!("async lossless frames {frames} batch {batch} spin {spin:?} post {post}");
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(frames)
        .batch(batch)
        .register()?;
    ring.set_spin_policy(spin);
    let hv = xen
        .ring(DOM, EventType::SharingInvalidate)
        .ok_or("harness: the ring just registered is missing")?;
    let done = Arc::new(AtomicU64::new(RUNNING));
    let start = Arc::new(Barrier::new(2));

    let producer = {
        let (hv, done, start) = (Arc::clone(&hv), Arc::clone(&done), Arc::clone(&start));
        thread::spawn(move || -> BResult<u64> {
            pin(Some(PRODUCER_CPU));
            let peek = HeaderPeek::new(&hv);
            let mut recs = [AsyncRec {
                domid: DOM,
                reason: REASON_UNSHARED,
                ..AsyncRec::default()
            }; BULK as usize];
            start.wait();
            let t0 = Instant::now();
            let (mut i, mut spins, mut next_clock) = (0u64, 0u32, CLOCK_EVERY);
            loop {
                let free = peek.free();
                if free == 0 {
                    // Flow control: wait for the consumer to release slots.
                    backoff(&mut spins);
                    continue;
                }
                spins = 0;
                if post <= 1 {
                    for _ in 0..free {
                        hv.put_invalidate(i, i << 12, DOM, REASON_UNSHARED, 0);
                        i += 1;
                    }
                } else {
                    let n = free.min(post.min(BULK)) as usize;
                    for (k, r) in recs[..n].iter_mut().enumerate() {
                        let h = i + k as u64;
                        r.handle = h;
                        r.gfn = h << 12;
                    }
                    hv.put_invalidate_batch(&recs[..n]);
                    i += n as u64;
                }
                if i >= next_clock {
                    next_clock = i + CLOCK_EVERY;
                    if t0.elapsed() >= run {
                        break;
                    }
                }
            }
            done.store(i, Ordering::Release);
            Ok(i)
        })
    };

    let _pinned = Pinned::to(CONSUMER_CPU);
    start.wait();
    let t0 = Instant::now();
    let (mut consumed, mut batches, mut lost_seen, mut next_seq, mut out_of_order) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut sink = 0u64;
    loop {
        let total = done.load(Ordering::Acquire);
        if total != RUNNING && consumed == total {
            break;
        }
        if total == RUNNING {
            ring.wait(Some(Duration::from_millis(2)))?;
        }
        let b = ring.batch()?;
        lost_seen += b.lost();
        let mut n = 0u64;
        for rec in b {
            let rec = rec?;
            out_of_order += u64::from(rec.seq != next_seq);
            next_seq = rec.seq + 1;
            sink = sink.wrapping_add(rec.handle ^ rec.gfn);
            n += 1;
        }
        if n > 0 {
            batches += 1;
            consumed += n;
        }
        watchdog(t0, &ctx)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    black_box(sink);
    let produced = join(producer, "async producer")?;

    let stats = hv.hv().stats();
    let kicks = hv.producer_kicks();
    checks.eq(&ctx, "consumed == produced", consumed, produced);
    checks.eq(
        &ctx,
        "ring core produced == producer count",
        stats.produced,
        produced,
    );
    checks.eq(&ctx, "lost (ring core)", stats.lost, 0);
    checks.eq(&ctx, "lost (consumer)", lost_seen, 0);
    checks.eq(&ctx, "records out of order", out_of_order, 0);
    checks.eq(
        &ctx,
        "ring core notifications == eventfd kicks",
        stats.notifications,
        kicks,
    );
    // req_event only moves when req_cons does (once per batch), and a kick
    // needs req_prod to cross it: at most one kick per batch (plus the
    // registration's initial req_event).
    checks.check(kicks <= batches + 1, || {
        format!("{ctx}: {kicks} notifications for {batches} batches (> 1 per batch)")
    });
    Ok(Tp {
        records: consumed,
        secs,
        notifications: kicks,
        batches,
        ..Tp::default()
    })
}

// ----------------------------------------------------------------------
// (a) today's vm_event ring, modelled faithfully.

/// `sizeof(struct vm_event_sring)` header: req_prod, req_event, rsp_prod,
/// rsp_event, then padding to 64 bytes.
const VM_HEADER: usize = 64;
/// A slot is `union { vm_event_request_t; vm_event_response_t; }`.
const VM_SLOT_BYTES: usize = 400;
const VM_SLOT_WORDS: usize = VM_SLOT_BYTES / 8;
/// `__RING_SIZE`: (4096 - 64) / 400 = 10, rounded down to a power of two.
pub const VM_SLOTS: u32 = {
    let n = (4096 - VM_HEADER) / VM_SLOT_BYTES;
    1u32 << (usize::BITS - 1 - n.leading_zeros())
};

/// The shared page (`DEFINE_RING_TYPES(vm_event, ...)`): four indices in
/// one cache line, then the slots, requests and responses sharing them.
#[derive(Debug)]
#[repr(C, align(4096))]
struct VmPage {
    req_prod: AtomicU32,
    req_event: AtomicU32,
    rsp_prod: AtomicU32,
    rsp_event: AtomicU32,
    _pad: [u32; 12],
    slots: [[AtomicU64; VM_SLOT_WORDS]; VM_SLOTS as usize],
}

const _: () = assert!(std::mem::size_of::<VmPage>() == 4096);

/// Xen's private ring state, under the vm_event ring lock.
#[derive(Debug, Default)]
struct VmXen {
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// A vCPU sleeps on the waitqueue for a slot (`vm_event_wait_slot`).
    waiting: bool,
    producer_waits: u64,
}

#[derive(Debug)]
struct VmRing {
    page: Box<VmPage>,
    xen: FairLock<VmXen>,
    /// Xen -> consumer event channel.
    to_consumer: Doorbell,
    /// The waitqueue the producing vCPU sleeps on when the ring is full.
    producer_wq: Doorbell,
}

fn lock<T>(m: &FairLock<T>) -> FairGuard<'_, T> {
    m.lock()
}

impl VmRing {
    fn new() -> BResult<VmRing> {
        let page = Box::new(VmPage {
            req_prod: AtomicU32::new(0),
            req_event: AtomicU32::new(1),
            rsp_prod: AtomicU32::new(0),
            rsp_event: AtomicU32::new(1),
            _pad: [0; 12],
            slots: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        });
        Ok(VmRing {
            page,
            xen: FairLock::new(VmXen::default()),
            to_consumer: Doorbell::new()?,
            producer_wq: Doorbell::new()?,
        })
    }

    fn slot(&self, idx: u32) -> &[AtomicU64; VM_SLOT_WORDS] {
        &self.page.slots[(idx & (VM_SLOTS - 1)) as usize]
    }

    /// `vm_event_put_request()` after `vm_event_claim_slot()`: copy the
    /// whole request into the ring, push, notify, every request.  Blocks
    /// (on the producer's own eventfd) while the ring is full.
    fn put_request(&self, req: &[u64; VM_SLOT_WORDS], stop: &AtomicBool) {
        loop {
            let mut x = lock(&self.xen);
            // RING_FREE_REQUESTS on Xen's front ring.
            let free = VM_SLOTS - x.req_prod_pvt.wrapping_sub(x.rsp_cons);
            if free > 0 {
                let idx = x.req_prod_pvt;
                for (w, v) in self.slot(idx).iter().zip(req) {
                    w.store(*v, Ordering::Relaxed);
                }
                x.req_prod_pvt = idx.wrapping_add(1);
                // RING_PUSH_REQUESTS: wmb, then publish.
                self.page.req_prod.store(x.req_prod_pvt, Ordering::Release);
                drop(x);
                // notify_via_xen_event_channel(): unconditionally.
                let _ = self.to_consumer.notify();
                return;
            }
            x.waiting = true;
            x.producer_waits += 1;
            drop(x);
            // wait_event(ved->wq, ...): woken by vm_event_resume().
            let _ = self.producer_wq.wait(Some(Duration::from_millis(10)));
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// `vm_event_resume()`, run by the consumer's notification: read every
    /// response (a full copy each), retire the slots, wake the producer.
    fn resume(&self) {
        let mut x = lock(&self.xen);
        let prod = self.page.rsp_prod.load(Ordering::Acquire);
        let mut rsp = [0u64; VM_SLOT_WORDS];
        while x.rsp_cons != prod {
            for (v, w) in rsp.iter_mut().zip(self.slot(x.rsp_cons)) {
                *v = w.load(Ordering::Relaxed);
            }
            black_box(&rsp);
            x.rsp_cons = x.rsp_cons.wrapping_add(1);
        }
        // vm_event_wake(): slots are free again.
        if x.waiting {
            x.waiting = false;
            drop(x);
            let _ = self.producer_wq.notify();
        }
    }
}

/// (a): today's vm_event ring: one page, 400-byte slots (8 of them),
/// a notification per request, in-order processing with a response per
/// request written back into the ring, the producer blocking when full.
pub fn vm_event_baseline(run: Duration, checks: &mut Checks) -> BResult<Tp> {
    let ctx = "vm_event baseline";
    let ring = Arc::new(VmRing::new()?);
    let done = Arc::new(AtomicU64::new(RUNNING));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(2));

    let producer = {
        let (ring, done, stop, start) = (
            Arc::clone(&ring),
            Arc::clone(&done),
            Arc::clone(&stop),
            Arc::clone(&start),
        );
        thread::spawn(move || -> BResult<u64> {
            pin(Some(PRODUCER_CPU));
            start.wait();
            let t0 = Instant::now();
            let mut req = [0u64; VM_SLOT_WORDS];
            let mut i = 0u64;
            loop {
                // The same 32 bytes as an invalidate record; Xen builds the
                // whole request on its stack and copies all of it.
                req[0] = i;
                req[1] = i;
                req[2] = i << 12;
                req[3] = u64::from(REASON_UNSHARED) << 16 | u64::from(DOM);
                ring.put_request(&req, &stop);
                i += 1;
                if i % 64 == 0 && t0.elapsed() >= run {
                    break;
                }
            }
            done.store(i, Ordering::Release);
            Ok(i)
        })
    };

    let _pinned = Pinned::to(CONSUMER_CPU);
    start.wait();
    let t0 = Instant::now();
    let (mut req_cons, mut rsp_prod_pvt) = (0u32, 0u32);
    let (mut consumed, mut rounds, mut next_seq, mut out_of_order, mut sink) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut req = [0u64; VM_SLOT_WORDS];
    let mut rsp = [0u64; VM_SLOT_WORDS];
    let result = (|| -> BResult<()> {
        loop {
            let total = done.load(Ordering::Acquire);
            if total != RUNNING && consumed == total {
                return Ok(());
            }
            // xenevtchn_pending() + unmask: wait for the event channel.
            if ring.page.req_prod.load(Ordering::Acquire) == req_cons {
                ring.to_consumer.wait(Some(Duration::from_millis(2)))?;
            }
            let mut n = 0u64;
            // while ( RING_HAS_UNCONSUMED_REQUESTS(&back_ring) )
            loop {
                let prod = ring.page.req_prod.load(Ordering::Acquire);
                if prod == req_cons {
                    break;
                }
                while req_cons != prod {
                    // get_request(): copy the whole request out.
                    for (v, w) in req.iter_mut().zip(ring.slot(req_cons)) {
                        *v = w.load(Ordering::Relaxed);
                    }
                    req_cons = req_cons.wrapping_add(1);
                    out_of_order += u64::from(req[0] != next_seq);
                    next_seq = req[0] + 1;
                    sink = sink.wrapping_add(req[1] ^ req[2]);
                    // put_response(): a full response into the ring.
                    rsp.copy_from_slice(&req);
                    rsp[4] = 1;
                    for (w, v) in ring.slot(rsp_prod_pvt).iter().zip(&rsp) {
                        w.store(*v, Ordering::Relaxed);
                    }
                    rsp_prod_pvt = rsp_prod_pvt.wrapping_add(1);
                    // RING_PUSH_RESPONSES.
                    ring.page.rsp_prod.store(rsp_prod_pvt, Ordering::Release);
                    n += 1;
                }
            }
            if n > 0 {
                consumed += n;
                rounds += 1;
                // xenevtchn_notify(): Xen runs vm_event_resume().
                ring.resume();
            }
            watchdog(t0, ctx)?;
        }
    })();
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = ring.producer_wq.notify();
    black_box(sink);
    let produced = join(producer, "vm_event producer")?;
    result?;

    let kicks = ring.to_consumer.kicks();
    checks.eq(ctx, "consumed == produced", consumed, produced);
    checks.eq(ctx, "records out of order", out_of_order, 0);
    checks.eq(ctx, "one notification per request", kicks, produced);
    let producer_waits = lock(&ring.xen).producer_waits;
    Ok(Tp {
        records: consumed,
        secs,
        notifications: kicks,
        batches: rounds,
        rsp_notifications: rounds,
        producer_waits,
    })
}

// ----------------------------------------------------------------------
// (b) the physical reference: a minimal lock-free SPSC queue.

#[derive(Debug)]
struct Spsc {
    /// Consumer's index.
    head: Padded<AtomicU32>,
    /// Producer's index.
    tail: Padded<AtomicU32>,
    slots: Box<[[AtomicU64; 4]]>,
    mask: u32,
}

/// (b): the same 32-byte records between the same two threads through a
/// minimal SPSC queue of `slots` slots (a power of two): no lock, no
/// notification, the consumer and a full producer spin (then yield).  The
/// producer publishes its index after every record (`bulk` 1), or once per
/// up to `bulk` records written (the batched-publish reference).
pub fn spsc_reference(slots: u32, bulk: u32, run: Duration, checks: &mut Checks) -> BResult<Tp> {
    let ctx = format!("SPSC reference {slots} slots, bulk {bulk}");
    let q = Arc::new(Spsc {
        head: Padded(AtomicU32::new(0)),
        tail: Padded(AtomicU32::new(0)),
        slots: (0..slots)
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect(),
        mask: slots - 1,
    });
    let done = Arc::new(AtomicU64::new(RUNNING));
    let start = Arc::new(Barrier::new(2));

    let producer = {
        let (q, done, start) = (Arc::clone(&q), Arc::clone(&done), Arc::clone(&start));
        thread::spawn(move || -> BResult<u64> {
            pin(Some(PRODUCER_CPU));
            start.wait();
            let t0 = Instant::now();
            let (mut tail, mut head_cache, mut spins, mut i) = (0u32, 0u32, 0u32, 0u64);
            let mut next_clock = CLOCK_EVERY;
            loop {
                if tail.wrapping_sub(head_cache) == q.mask + 1 {
                    head_cache = q.head.0.load(Ordering::Acquire);
                    if tail.wrapping_sub(head_cache) == q.mask + 1 {
                        backoff(&mut spins);
                        continue;
                    }
                }
                spins = 0;
                let n = (q.mask + 1 - tail.wrapping_sub(head_cache)).min(bulk.max(1));
                for _ in 0..n {
                    let rec = [
                        i,
                        i,
                        i << 12,
                        u64::from(REASON_UNSHARED) << 16 | u64::from(DOM),
                    ];
                    for (w, v) in q.slots[(tail & q.mask) as usize].iter().zip(rec) {
                        w.store(v, Ordering::Relaxed);
                    }
                    tail = tail.wrapping_add(1);
                    i += 1;
                    if bulk <= 1 {
                        q.tail.0.store(tail, Ordering::Release);
                    }
                }
                if bulk > 1 {
                    q.tail.0.store(tail, Ordering::Release);
                }
                if i >= next_clock {
                    next_clock = i + CLOCK_EVERY;
                    if t0.elapsed() >= run {
                        break;
                    }
                }
            }
            done.store(i, Ordering::Release);
            Ok(i)
        })
    };

    let _pinned = Pinned::to(CONSUMER_CPU);
    start.wait();
    let t0 = Instant::now();
    let (mut head, mut spins) = (0u32, 0u32);
    let (mut consumed, mut next_seq, mut out_of_order, mut sink) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let tail = q.tail.0.load(Ordering::Acquire);
        if tail == head {
            let total = done.load(Ordering::Acquire);
            if total != RUNNING && consumed == total {
                break;
            }
            backoff(&mut spins);
            if spins % 4096 == 0 {
                watchdog(t0, &ctx)?;
            }
            continue;
        }
        spins = 0;
        while head != tail {
            let mut rec = [0u64; 4];
            for (v, w) in rec.iter_mut().zip(&q.slots[(head & q.mask) as usize]) {
                *v = w.load(Ordering::Relaxed);
            }
            out_of_order += u64::from(rec[0] != next_seq);
            next_seq = rec[0] + 1;
            sink = sink.wrapping_add(rec[1] ^ rec[2]);
            head = head.wrapping_add(1);
            consumed += 1;
        }
        q.head.0.store(head, Ordering::Release);
    }
    let secs = t0.elapsed().as_secs_f64();
    black_box(sink);
    let produced = join(producer, "SPSC producer")?;
    checks.eq(&ctx, "consumed == produced", consumed, produced);
    checks.eq(&ctx, "records out of order", out_of_order, 0);
    Ok(Tp {
        records: consumed,
        secs,
        ..Tp::default()
    })
}

// ----------------------------------------------------------------------
// The placement probe.

/// The cross-CPU round trip of one cache line between `PRODUCER_CPU` and
/// `CONSUMER_CPU`, in ns: `rounds` ping-pongs of a counter, in blocks, the
/// median block reported (a block preempted by another process of this
/// shared machine does not count).  Pure spinning, no yield: a round trip
/// is a few hundred ns at most.
pub fn pingpong_ns(rounds: u32) -> BResult<f64> {
    const BLOCKS: u32 = 7;
    let line = Arc::new(Padded(AtomicU64::new(0)));
    let per_block = (rounds / BLOCKS).max(1);
    let total = u64::from(per_block) * u64::from(BLOCKS);
    let echo = {
        let line = Arc::clone(&line);
        thread::spawn(move || -> BResult<()> {
            pin(Some(PRODUCER_CPU));
            let t0 = Instant::now();
            let mut want = 1u64;
            while want < 2 * total {
                let mut spins = 0u32;
                while line.0.load(Ordering::Acquire) != want {
                    std::hint::spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins % 65_536 == 0 {
                        watchdog(t0, "ping-pong echo")?;
                        thread::yield_now();
                    }
                }
                line.0.store(want + 1, Ordering::Release);
                want += 2;
            }
            Ok(())
        })
    };
    let _pinned = Pinned::to(CONSUMER_CPU);
    let t0 = Instant::now();
    let mut blocks = Vec::with_capacity(BLOCKS as usize);
    let mut v = 0u64;
    for _ in 0..BLOCKS {
        let b0 = Instant::now();
        for _ in 0..per_block {
            line.0.store(v + 1, Ordering::Release);
            let mut spins = 0u32;
            while line.0.load(Ordering::Acquire) != v + 2 {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins % 65_536 == 0 {
                    watchdog(t0, "ping-pong")?;
                    thread::yield_now();
                }
            }
            v += 2;
        }
        blocks.push(b0.elapsed().as_secs_f64() * 1e9 / f64::from(per_block));
    }
    join(echo, "ping-pong echo")?;
    blocks.sort_by(f64::total_cmp);
    Ok(blocks[blocks.len() / 2])
}
