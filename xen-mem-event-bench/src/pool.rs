//! Section 6 (issue 13): concurrent consumers of the OOM ring.
//!
//! - [`pager_latency`]: the tools' pager (`pager::run`) on the ring core,
//!   its policy returning at once for the fast vCPUs and taking
//!   [`SLOW`] for vCPU 0 (when there is a slow vCPU); the pause of each
//!   fast vCPU's fault, single-threaded pager against the worker pool.
//! - [`round_trips`]: sync round trips per second, the waiter handing
//!   requests to 1, 2 or 4 threads that answer through `Responder`s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::{EventType, SyncRequest, SyncRing};
use xen_mem_event_harness::HarnessBackend;
use xen_mem_event_tools::output::{Format, Out};
use xen_mem_event_tools::pager::{self, MemControl, PagerOpts, Policy};
use xen_mem_event_tools::stop::Stop;

use crate::util::{join, nanos, watchdog, BResult, Checks, XorShift, DOM};

/// The slow policy's time for vCPU 0 (`--exec` of tens of ms and more).
pub const SLOW: Duration = Duration::from_millis(200);
/// vCPUs of the pager's domain: vCPU 0 (slow, when enabled) and the fast
/// ones.
pub const PAGER_VCPUS: u32 = 4;

/// The policy: [`SLOW`] for vCPU 0 if `slow`, at once for the others.
#[derive(Debug)]
struct SlowVcpu0 {
    slow: bool,
}

impl Policy for SlowVcpu0 {
    fn free(&self, req: &SyncRequest) -> Result<String, String> {
        if self.slow && req.vcpu_id == 0 {
            thread::sleep(SLOW);
            return Ok("slow".into());
        }
        Ok("fast".into())
    }
}

/// Memory control that does nothing (the policy above does not use it).
#[derive(Debug)]
struct NoMem;

impl MemControl for NoMem {
    fn max_mem_kib(&self, _: u16) -> Result<u64, String> {
        Ok(0)
    }
    fn set_max_mem_kib(&self, _: u16, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn crash(&self, _: u16) -> Result<(), String> {
        Ok(())
    }
    fn host_free_kib(&self) -> Result<u64, String> {
        Ok(u64::MAX)
    }
}

/// Fast vCPUs' pauses (sorted, ns) of one pager scenario.
#[derive(Debug, Clone, Default)]
pub struct PagerLat {
    pub rtts: Vec<u64>,
    pub slow_answered: u64,
}

/// The pager with `workers` threads; vCPU 0 faulting again and again into
/// a [`SLOW`] policy if `slow`; the fast vCPUs faulting one at a time
/// (100-400 µs apart), `n` faults or `budget` of time, whichever ends
/// first.  RTT = raise to the unpause the requester observes (polling,
/// yielding between polls).
pub fn pager_latency(
    workers: usize,
    slow: bool,
    n: usize,
    budget: Duration,
    checks: &mut Checks,
) -> BResult<PagerLat> {
    let ctx = format!("pager workers {workers} slow {slow}");
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, PAGER_VCPUS);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1)?;
    let hv = xen
        .ring(DOM, EventType::SharingOom)
        .ok_or("harness: OOM ring missing")?;
    let stop = Stop::new();
    let pager = {
        let stop = stop.clone();
        thread::spawn(move || -> BResult<u64> {
            let policy: Arc<dyn Policy> = Arc::new(SlowVcpu0 { slow });
            let mut out = Out::new(std::io::sink(), Format::Json);
            let o = PagerOpts {
                workers,
                poll: Duration::from_millis(20),
                stop_wait: SLOW * 2,
                ..PagerOpts::default()
            };
            let (_, sum) = pager::run(&mut ring, policy, &NoMem, &o, &stop, &mut out)
                .map_err(|e| format!("pager: {e}"))?;
            Ok(sum.answered)
        })
    };
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow_thread = slow.then(|| {
        let (hv, done) = (Arc::clone(&hv), Arc::clone(&slow_done));
        thread::spawn(move || -> BResult<u64> {
            let mut answered = 0u64;
            let t0 = Instant::now();
            while !done.load(Ordering::Acquire) {
                if hv.hv().pause_count(0) == 0 {
                    hv.raise_oom(0, 0xdead_0000 + answered)
                        .map_err(|e| format!("raise_oom vCPU 0: {e}"))?;
                    answered += 1;
                }
                thread::sleep(Duration::from_millis(1));
                watchdog(t0, "slow vCPU")?;
            }
            Ok(answered)
        })
    });
    if slow {
        // vCPU 0's policy is running before the first fast fault.
        thread::sleep(Duration::from_millis(20));
    }
    let mut rng = XorShift::new(0x5eed_0013);
    let mut rtts = Vec::with_capacity(n);
    let t_start = Instant::now();
    let (mut k, mut vcpu) = (0u64, 0u32);
    while rtts.len() < n && t_start.elapsed() < budget {
        vcpu = vcpu % (PAGER_VCPUS - 1) + 1;
        k += 1;
        thread::sleep(Duration::from_micros(rng.range(100, 400)));
        let t0 = Instant::now();
        hv.raise_oom(vcpu, k << 12 | u64::from(vcpu))
            .map_err(|e| format!("raise_oom vCPU {vcpu}: {e}"))?;
        while hv.hv().pause_count(vcpu) != 0 {
            thread::yield_now();
            watchdog(t0, &ctx)?;
        }
        rtts.push(nanos(t0.elapsed()));
    }
    slow_done.store(true, Ordering::Release);
    let slow_raised = match slow_thread {
        Some(t) => join(t, "slow vCPU")?,
        None => 0,
    };
    // The last slow fault is answered (or released) by the pager's exit.
    let t0 = Instant::now();
    while hv.hv().pause_count(0) != 0 && t0.elapsed() < SLOW * 3 {
        thread::sleep(Duration::from_millis(5));
    }
    stop.request();
    let answered = join(pager, "pager")?;
    let s = hv.hv().stats();
    checks.eq(&ctx, "bad responses", s.bad_responses, 0);
    checks.eq(&ctx, "vCPUs still paused", u64::from(s.paused), 0);
    checks.eq(
        &ctx,
        "answered == fast faults + slow faults",
        answered,
        rtts.len() as u64 + slow_raised,
    );
    rtts.sort_unstable();
    Ok(PagerLat {
        rtts,
        slow_answered: slow_raised,
    })
}

/// What [`round_trips`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundTrips {
    pub answered: u64,
    pub secs: f64,
}

impl RoundTrips {
    pub fn rate(&self) -> f64 {
        self.answered as f64 / self.secs.max(1e-9)
    }
}

/// vCPUs kept faulting in the round-trip run.
pub const RT_VCPUS: u32 = 16;

/// Sync round trips answered from `threads` responder threads: "Xen" (one
/// thread) re-faults every vCPU as soon as it is unpaused, the waiter takes
/// requests and hands them round-robin to the responders, each answering
/// with `Responder::respond` (kicks coalesced), for `run`.
pub fn round_trips(threads: usize, run: Duration, checks: &mut Checks) -> BResult<RoundTrips> {
    let ctx = format!("sync round trips, {threads} responder thread(s)");
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, RT_VCPUS);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1)?;
    let hv = xen
        .ring(DOM, EventType::SharingOom)
        .ok_or("harness: OOM ring missing")?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut txs = Vec::new();
    let mut responders = Vec::new();
    for _ in 0..threads.max(1) {
        let (tx, rx) = mpsc::channel::<Vec<SyncRequest>>();
        txs.push(tx);
        let (r, answered) = (ring.responder(), Arc::clone(&answered));
        responders.push(thread::spawn(move || -> BResult<()> {
            for reqs in rx {
                for req in &reqs {
                    r.respond(req)?;
                }
                answered.fetch_add(reqs.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let xen_thread = {
        let (hv, stop) = (Arc::clone(&hv), Arc::clone(&stop));
        thread::spawn(move || -> BResult<u64> {
            let mut raised = 0u64;
            while !stop.load(Ordering::Acquire) {
                let mut any = false;
                for v in 0..RT_VCPUS {
                    if hv.hv().pause_count(v) == 0 {
                        hv.raise_oom(v, raised << 12 | u64::from(v))
                            .map_err(|e| format!("raise_oom: {e}"))?;
                        raised += 1;
                        any = true;
                    }
                }
                if !any {
                    thread::yield_now();
                }
            }
            Ok(raised)
        })
    };
    let t0 = Instant::now();
    let mut next = 0usize;
    while t0.elapsed() < run {
        if ring.wait(Some(Duration::from_millis(5)))? {
            let reqs = ring.take_requests()?;
            if !reqs.is_empty() {
                let tx = &txs[next % txs.len()];
                next += 1;
                tx.send(reqs).map_err(|_| "responder gone")?;
            }
        }
    }
    let counted = answered.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let raised = join(xen_thread, "fault loop")?;
    drop(txs);
    for r in responders {
        join(r, "responder")?;
    }
    // Answer what is still outstanding, so every vCPU ends unpaused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hv.hv().stats().paused != 0 && Instant::now() < deadline {
        if ring.wait(Some(Duration::from_millis(5)))? {
            for req in ring.take_requests()? {
                ring.respond(&req)?;
            }
            ring.flush()?;
        }
    }
    let s = hv.hv().stats();
    checks.eq(&ctx, "bad responses", s.bad_responses, 0);
    checks.eq(&ctx, "vCPUs still paused", u64::from(s.paused), 0);
    checks.eq(&ctx, "answered == raised", s.consumed, raised);
    Ok(RoundTrips {
        answered: counted,
        secs,
    })
}
