//! Section 2: OOM round-trip time, alone and under an invalidate flood,
//! for the per-type design and for a model of the single-ring design.
//!
//! The requester (this thread) plays a vCPU: it raises an OOM event, which
//! pauses it, and polls (yielding the CPU between polls) until the
//! consumer's answer unpauses it.  RTT = raise to observed unpause.

use std::collections::HashSet;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use xen_mem_event::{AsyncRing, EventType, SyncRing};
use xen_mem_event_harness::{Doorbell, HarnessBackend, HarnessRing};

use crate::util::{
    join, nanos, pin, process_invalidate, watchdog, BResult, Checks, FairGuard, FairLock, Padded,
    XorShift, DOM, REASON_UNSHARED,
};

/// vCPUs of the test domain (the requester cycles through them).
pub const VCPUS: u32 = 4;
/// The invalidate ring of the flood: 4 frames (512 records), a kick per
/// 64.  The single-ring model gets the same capacity and threshold.
pub const FLOOD_FRAMES: u32 = 4;
pub const FLOOD_BATCH: u32 = 64;
/// The flood producer posts this many records, then yields.
pub const FLOOD_BURST: u64 = 64;
/// Random pause between two OOM events (µs), outside the measurement.
const GAP_US: (u64, u64) = (100, 400);
/// The flood runs this long before the first sample.
const WARMUP: Duration = Duration::from_millis(50);
/// Placement: the flood (its producer and, per-type, its consumer) on one
/// CPU, the OOM consumer (per-type) or the single ring's consumer on the
/// other, as an operator gives a polling pager a CPU of its own.  The
/// requester is not pinned: it sleeps while its vCPU is paused.
const FLOOD_CPU: usize = 0;
const OOM_CPU: usize = 1;

/// What the invalidate flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flood {
    pub attempted: u64,
    pub posted: u64,
    pub consumed: u64,
    pub lost: u64,
    pub secs: f64,
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.consumed as f64 / self.secs.max(1e-9)
    }
}

/// One latency scenario.
#[derive(Debug, Clone, Default)]
pub struct LatRun {
    /// Sorted RTTs in ns.
    pub rtts: Vec<u64>,
    pub flood: Option<Flood>,
    /// Single ring: records queued ahead of each OOM request when it was
    /// posted (sorted); the per-type OOM ring holds only OOM requests.
    pub ahead: Vec<u64>,
}

impl LatRun {
    /// Adds another run's samples and flood counts to this one.
    pub fn merge(&mut self, other: LatRun) {
        self.rtts.extend(other.rtts);
        self.rtts.sort_unstable();
        self.ahead.extend(other.ahead);
        self.ahead.sort_unstable();
        if let Some(o) = other.flood {
            let f = self.flood.get_or_insert_with(Flood::default);
            f.attempted += o.attempted;
            f.posted += o.posted;
            f.consumed += o.consumed;
            f.lost += o.lost;
            f.secs += o.secs;
        }
    }
}

/// When each vCPU was last unpaused, in ns since `epoch`: stamped on the
/// consumer's thread right after the call that made Xen unpause it
/// returned (the harness runs Xen's response processing synchronously in
/// the consumer's notification).
#[derive(Debug)]
pub struct Unpaused {
    epoch: Instant,
    at: Box<[AtomicU64]>,
}

impl Unpaused {
    pub fn new() -> Unpaused {
        Unpaused {
            epoch: Instant::now(),
            at: (0..VCPUS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed()).max(1)
    }

    /// Stamps `vcpus` as unpaused now.
    pub fn stamp(&self, vcpus: &[u32]) {
        let t = self.now();
        for v in vcpus {
            if let Some(a) = self.at.get(*v as usize) {
                a.store(t, Ordering::Release);
            }
        }
    }

    fn get(&self, vcpu: u32) -> u64 {
        self.at
            .get(vcpu as usize)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }
}

/// Raises `n` OOM events one after the other and times each round trip:
/// from just before the raise to the consumer's unpause stamp.
fn measure_rtts(
    n: usize,
    ctx: &str,
    stamps: &Unpaused,
    raise: impl Fn(u32, u64) -> BResult<()>,
    paused: impl Fn(u32) -> bool,
) -> BResult<Vec<u64>> {
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(n);
    let mut vcpu = 0u32;
    for k in 0..n as u64 {
        thread::sleep(Duration::from_micros(rng.range(GAP_US.0, GAP_US.1)));
        vcpu = (vcpu + 1) % VCPUS;
        let t0 = stamps.now();
        let start = Instant::now();
        raise(vcpu, k << 8 | u64::from(vcpu))?;
        // A paused vCPU uses no dom0 CPU: wait for the unpause sleeping
        // (the wait is not what is timed: the consumer's stamp is), so
        // that on 2 cores the requester does not compete with consumers.
        while paused(vcpu) || stamps.get(vcpu) < t0 {
            thread::sleep(Duration::from_micros(10));
            watchdog(start, ctx)?;
        }
        out.push(stamps.get(vcpu) - t0);
    }
    out.sort_unstable();
    Ok(out)
}

/// A flood producer: bursts of `FLOOD_BURST` records at full speed (lossy:
/// a full ring drops), a yield between bursts, normal priority.
fn spawn_flood_producer(
    stop: &Arc<AtomicBool>,
    put: impl Fn(u64) + Send + 'static,
) -> JoinHandle<BResult<u64>> {
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        pin(Some(FLOOD_CPU));
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..FLOOD_BURST {
                put(i);
                i += 1;
            }
            thread::yield_now();
        }
        Ok(i)
    })
}

fn errno(what: &'static str) -> impl Fn(i32) -> Box<dyn std::error::Error + Send + Sync> {
    move |e| format!("{what}: ring core error {e}").into()
}

// ----------------------------------------------------------------------
// The per-type design: the library's SyncRing and AsyncRing, each with its
// own consumer thread, on the hypervisor's ring core.

struct PerTypeFlood {
    hv: Arc<HarnessRing>,
    stop_producer: Arc<AtomicBool>,
    stop_consumer: Arc<AtomicBool>,
    producer: JoinHandle<BResult<u64>>,
    consumer: JoinHandle<BResult<(u64, u64)>>,
    t0: Instant,
}

fn start_per_type_flood(xen: &Arc<HarnessBackend>) -> BResult<PerTypeFlood> {
    let mut ring = AsyncRing::builder(Arc::clone(xen), DOM)
        .frames(FLOOD_FRAMES)
        .batch(FLOOD_BATCH)
        .register()?;
    let hv = xen
        .ring(DOM, EventType::SharingInvalidate)
        .ok_or("harness: invalidate ring missing")?;
    let stop_producer = Arc::new(AtomicBool::new(false));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let consumer = {
        let stop = Arc::clone(&stop_consumer);
        thread::spawn(move || -> BResult<(u64, u64)> {
            pin(Some(FLOOD_CPU));
            let mut table = HashSet::with_capacity(1 << 17);
            let (mut consumed, mut lost) = (0u64, 0u64);
            loop {
                let stopping = stop.load(Ordering::Acquire);
                let b = if stopping {
                    ring.batch()?
                } else {
                    ring.drain_timeout(Duration::from_millis(1))?
                };
                lost += b.lost();
                let mut n = 0u64;
                for rec in b {
                    process_invalidate(&mut table, rec?.handle);
                    n += 1;
                }
                consumed += n;
                if stopping && n == 0 {
                    return Ok((consumed, lost));
                }
            }
        })
    };
    let producer = {
        let hv = Arc::clone(&hv);
        spawn_flood_producer(&stop_producer, move |i| {
            hv.put_invalidate(i, i << 12, DOM, REASON_UNSHARED, 0);
        })
    };
    Ok(PerTypeFlood {
        hv,
        stop_producer,
        stop_consumer,
        producer,
        consumer,
        t0: Instant::now(),
    })
}

impl PerTypeFlood {
    fn stop(self, ctx: &str, checks: &mut Checks) -> BResult<Flood> {
        self.stop_producer.store(true, Ordering::Relaxed);
        let attempted = join(self.producer, "flood producer")?;
        let secs = self.t0.elapsed().as_secs_f64();
        self.stop_consumer.store(true, Ordering::Release);
        let (consumed, lost) = join(self.consumer, "flood consumer")?;
        let s = self.hv.hv().stats();
        checks.eq(
            ctx,
            "flood: produced + lost == attempted",
            s.produced + s.lost,
            attempted,
        );
        checks.eq(ctx, "flood: consumed == produced", consumed, s.produced);
        checks.eq(ctx, "flood: lost seen by consumer == lost", lost, s.lost);
        Ok(Flood {
            attempted,
            posted: s.produced,
            consumed,
            lost,
            secs,
        })
    }
}

/// OOM RTTs of the per-type design, alone or under a flood, the OOM
/// consumer sleeping on the event channel or (`polling`) polling the
/// producer index (spinning, yielding every 64 polls).
pub fn per_type(flood: bool, polling: bool, n: usize, checks: &mut Checks) -> BResult<LatRun> {
    let ctx = match (flood, polling) {
        (true, false) => "per-type OOM under flood, sleeping consumer",
        (false, false) => "per-type OOM alone, sleeping consumer",
        (true, true) => "per-type OOM under flood, polling consumer",
        (false, true) => "per-type OOM alone, polling consumer",
    };
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, VCPUS);
    let mut oom = SyncRing::register(Arc::clone(&xen), DOM, 1)?;
    let hv = xen
        .ring(DOM, EventType::SharingOom)
        .ok_or("harness: OOM ring missing")?;
    let stop = Arc::new(AtomicBool::new(false));
    let stamps = Arc::new(Unpaused::new());
    let consumer = {
        let (stop, stamps) = (Arc::clone(&stop), Arc::clone(&stamps));
        thread::spawn(move || -> BResult<u64> {
            pin(Some(OOM_CPU));
            let mut answered = 0u64;
            let mut vcpus = Vec::new();
            let mut spins = 0u32;
            while !stop.load(Ordering::Acquire) {
                let ready = if polling {
                    let ready = oom.available()? > 0;
                    if !ready {
                        crate::util::backoff(&mut spins);
                    }
                    ready
                } else {
                    oom.wait(Some(Duration::from_millis(5)))?
                };
                if ready {
                    spins = 0;
                    vcpus.clear();
                    for req in oom.take_requests()? {
                        oom.respond(&req)?;
                        vcpus.push(req.vcpu_id);
                        answered += 1;
                    }
                    // The kick runs Xen's response processing: unpaused.
                    oom.flush()?;
                    stamps.stamp(&vcpus);
                }
            }
            Ok(answered)
        })
    };
    let flood_threads = if flood {
        let f = start_per_type_flood(&xen)?;
        thread::sleep(WARMUP);
        Some(f)
    } else {
        None
    };

    let rtts = measure_rtts(
        n,
        ctx,
        &stamps,
        |vcpu, gfn| match hv.raise_oom(vcpu, gfn).map_err(errno("raise_oom"))? {
            0 => Err("raise_oom: the vCPU was paused already".into()),
            _ => Ok(()),
        },
        |vcpu| hv.hv().pause_count(vcpu) != 0,
    )?;

    let flood = match flood_threads {
        Some(f) => Some(f.stop(ctx, checks)?),
        None => None,
    };
    stop.store(true, Ordering::Release);
    let answered = join(consumer, "OOM consumer")?;
    let s = hv.hv().stats();
    let n = n as u64;
    checks.eq(ctx, "OOM requests answered", answered, n);
    checks.eq(ctx, "OOM requests posted (ring core)", s.produced, n);
    checks.eq(ctx, "OOM responses accepted (ring core)", s.consumed, n);
    checks.eq(ctx, "OOM bad responses", s.bad_responses, 0);
    checks.eq(ctx, "OOM requests refused", s.lost, 0);
    checks.eq(ctx, "vCPUs still paused", u64::from(s.paused), 0);
    Ok(LatRun {
        rtts,
        flood,
        ahead: Vec::new(),
    })
}

// ----------------------------------------------------------------------
// The single-ring design, modelled: one in-order ring carrying both
// types (tagged records), one lock on the producer side (Xen's ring lock),
// one consumer thread processing records in ring order.

const TAG_OOM: u64 = 1;
const TAG_INVAL: u64 = 2;
const SR_SLOTS: u32 = FLOOD_FRAMES * 128;

#[derive(Debug, Default)]
struct SrXen {
    prod: u32,
    paused: u32,
    seq: u64,
    inval_posted: u64,
    inval_lost: u64,
    oom_posted: u64,
    answered: u64,
    ahead: Vec<u64>,
}

#[derive(Debug)]
struct SingleRing {
    xen: FairLock<SrXen>,
    slots: Box<[[AtomicU64; 4]]>,
    req_prod: Padded<AtomicU32>,
    req_cons: Padded<AtomicU32>,
    req_event: Padded<AtomicU32>,
    /// Emulated `vcpu->pause_count`.
    pause: Box<[AtomicU32]>,
    bell: Doorbell,
}

fn lock<T>(m: &FairLock<T>) -> FairGuard<'_, T> {
    m.lock()
}

impl SingleRing {
    fn new() -> BResult<SingleRing> {
        Ok(SingleRing {
            xen: FairLock::new(SrXen::default()),
            slots: (0..SR_SLOTS)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            req_prod: Padded(AtomicU32::new(0)),
            req_cons: Padded(AtomicU32::new(0)),
            req_event: Padded(AtomicU32::new(1)),
            pause: (0..VCPUS).map(|_| AtomicU32::new(0)).collect(),
            bell: Doorbell::new()?,
        })
    }

    fn slot(&self, idx: u32) -> &[AtomicU64; 4] {
        &self.slots[(idx & (SR_SLOTS - 1)) as usize]
    }

    fn free(&self, x: &SrXen) -> u32 {
        SR_SLOTS.saturating_sub(x.prod.wrapping_sub(self.req_cons.0.load(Ordering::Acquire)))
    }

    /// Writes and publishes a record; returns whether the event index asks
    /// for a kick.
    fn post(&self, x: &mut SrXen, rec: [u64; 4]) -> bool {
        let old = x.prod;
        for (w, v) in self.slot(old).iter().zip(rec) {
            w.store(v, Ordering::Relaxed);
        }
        x.prod = old.wrapping_add(1);
        self.req_prod.0.store(x.prod, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.req_event.0.load(Ordering::Acquire);
        x.prod.wrapping_sub(event) < x.prod.wrapping_sub(old)
    }

    /// An invalidation: lossy, never into the slots reserved for vCPUs
    /// that may still need one, a kick per consumer-chosen batch.
    fn put_invalidate(&self, handle: u64) {
        let mut x = lock(&self.xen);
        let seq = x.seq;
        x.seq += 1;
        if self.free(&x) <= VCPUS - x.paused {
            x.inval_lost += 1;
            return;
        }
        let notify = self.post(&mut x, [TAG_INVAL, seq, handle, handle << 12]);
        x.inval_posted += 1;
        drop(x);
        if notify {
            let _ = self.bell.notify();
        }
    }

    /// An OOM: pause the vCPU, post behind whatever is queued, kick.
    fn raise_oom(&self, vcpu: u32, gfn: u64) -> BResult<()> {
        let mut x = lock(&self.xen);
        if self.free(&x) == 0 {
            return Err("single ring: no slot for an OOM request".into());
        }
        let seq = x.seq;
        x.seq += 1;
        let ahead = SR_SLOTS - self.free(&x);
        x.ahead.push(u64::from(ahead));
        self.post(&mut x, [TAG_OOM | u64::from(vcpu) << 8, seq, gfn, 0]);
        x.paused += 1;
        x.oom_posted += 1;
        self.pause[vcpu as usize].fetch_add(1, Ordering::Release);
        drop(x);
        let _ = self.bell.notify();
        Ok(())
    }

    /// The answer to an OOM request: unpause its vCPU.
    fn respond(&self, vcpu: u32) {
        let mut x = lock(&self.xen);
        x.paused = x.paused.saturating_sub(1);
        x.answered += 1;
        if let Some(p) = self.pause.get(vcpu as usize) {
            p.fetch_sub(1, Ordering::Release);
        }
    }
}

/// The single consumer: takes whatever is in the ring and processes it in
/// ring order (an OOM is answered as soon as it is reached).
fn single_ring_consumer(
    ring: &SingleRing,
    stop: &AtomicBool,
    stamps: &Unpaused,
) -> BResult<(u64, u64, u64)> {
    let mut table = HashSet::with_capacity(1 << 17);
    let (mut cons, mut ooms, mut invals, mut bad) = (0u32, 0u64, 0u64, 0u64);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        // Event index: a kick once FLOOD_BATCH invalidations wait (OOM
        // requests always kick), then re-check.
        ring.req_event
            .0
            .store(cons.wrapping_add(FLOOD_BATCH), Ordering::Release);
        fence(Ordering::SeqCst);
        let avail = ring.req_prod.0.load(Ordering::Acquire).wrapping_sub(cons);
        if avail == 0 && stopping {
            return Ok((ooms, invals, bad));
        }
        if avail < FLOOD_BATCH && !stopping {
            ring.bell.wait(Some(Duration::from_millis(1)))?;
        }
        let prod = ring.req_prod.0.load(Ordering::Acquire);
        while cons != prod {
            let mut rec = [0u64; 4];
            for (v, w) in rec.iter_mut().zip(ring.slot(cons)) {
                *v = w.load(Ordering::Relaxed);
            }
            cons = cons.wrapping_add(1);
            match rec[0] & 0xff {
                TAG_OOM => {
                    let vcpu = u32::try_from(rec[0] >> 8).unwrap_or(u32::MAX);
                    ring.respond(vcpu);
                    stamps.stamp(&[vcpu]);
                    ooms += 1;
                }
                TAG_INVAL => {
                    process_invalidate(&mut table, rec[2]);
                    invals += 1;
                }
                _ => bad += 1,
            }
        }
        ring.req_cons.0.store(cons, Ordering::Release);
    }
}

/// OOM RTTs of the single-ring model, alone or under a flood.
pub fn single_ring(flood: bool, n: usize, checks: &mut Checks) -> BResult<LatRun> {
    let ctx = if flood {
        "single-ring OOM under flood"
    } else {
        "single-ring OOM alone"
    };
    let ring = Arc::new(SingleRing::new()?);
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let stop_producer = Arc::new(AtomicBool::new(false));
    let stamps = Arc::new(Unpaused::new());
    let consumer = {
        let (ring, stop, stamps) = (
            Arc::clone(&ring),
            Arc::clone(&stop_consumer),
            Arc::clone(&stamps),
        );
        thread::spawn(move || {
            pin(Some(OOM_CPU));
            single_ring_consumer(&ring, &stop, &stamps)
        })
    };
    let producer = if flood {
        let ring = Arc::clone(&ring);
        let p = spawn_flood_producer(&stop_producer, move |i| ring.put_invalidate(i));
        thread::sleep(WARMUP);
        Some(p)
    } else {
        None
    };
    let t0 = Instant::now();

    let rtts = measure_rtts(
        n,
        ctx,
        &stamps,
        |vcpu, gfn| ring.raise_oom(vcpu, gfn),
        |vcpu| ring.pause[vcpu as usize].load(Ordering::Acquire) != 0,
    )?;

    stop_producer.store(true, Ordering::Relaxed);
    let attempted = match producer {
        Some(p) => join(p, "flood producer")?,
        None => 0,
    };
    let secs = t0.elapsed().as_secs_f64() + if flood { WARMUP.as_secs_f64() } else { 0.0 };
    stop_consumer.store(true, Ordering::Release);
    let (ooms, invals, bad) = join(consumer, "single-ring consumer")?;
    let mut x = lock(&ring.xen);
    let mut ahead = std::mem::take(&mut x.ahead);
    ahead.sort_unstable();
    let n = n as u64;
    checks.eq(ctx, "OOM requests answered", ooms, n);
    checks.eq(ctx, "OOM requests posted", x.oom_posted, n);
    checks.eq(ctx, "OOM responses applied", x.answered, n);
    checks.eq(ctx, "records with a bad tag", bad, 0);
    checks.eq(ctx, "vCPUs still paused", u64::from(x.paused), 0);
    checks.eq(
        ctx,
        "flood: posted + lost == attempted",
        x.inval_posted + x.inval_lost,
        attempted,
    );
    checks.eq(ctx, "flood: consumed == posted", invals, x.inval_posted);
    let flood = flood.then_some(Flood {
        attempted,
        posted: x.inval_posted,
        consumed: invals,
        lost: x.inval_lost,
        secs,
    });
    Ok(LatRun { rtts, flood, ahead })
}
