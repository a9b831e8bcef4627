//! Section 3: loss accounting with a consumer slower than the producer,
//! and the lock-step notification count (one kick per batch, exactly).

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use xen_mem_event::{AsyncRing, EventType};
use xen_mem_event_harness::HarnessBackend;

use crate::util::{join, process_invalidate, watchdog, BResult, Checks, DOM, REASON_UNSHARED};

/// What a lossy run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loss {
    pub attempted: u64,
    pub consumed: u64,
    /// Losses reported to the consumer (sum of `AsyncBatch::lost`).
    pub lost: u64,
    /// Losses found from `seq` gaps, plus those after the last record.
    pub seq_lost: u64,
    pub batches: u64,
    pub secs: f64,
}

/// A producer at full speed (never waits: Xen drops on a full ring) and a
/// deliberately slow consumer: table work per record plus a 50 µs nap per
/// batch, on a 1-frame ring with a batch threshold of 32.
pub fn slow_consumer(attempts: u64, checks: &mut Checks) -> BResult<Loss> {
    let ctx = "loss accounting";
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(32)
        .register()?;
    let hv = xen
        .ring(DOM, EventType::SharingInvalidate)
        .ok_or("harness: the ring just registered is missing")?;
    let t0 = Instant::now();
    let producer = {
        let hv = Arc::clone(&hv);
        thread::spawn(move || -> BResult<u64> {
            for i in 0..attempts {
                hv.put_invalidate(i, i << 12, DOM, REASON_UNSHARED, 0);
                if i % 256 == 255 {
                    thread::yield_now();
                }
            }
            Ok(attempts)
        })
    };
    let mut table = HashSet::with_capacity(1 << 17);
    let (mut consumed, mut lost, mut gaps, mut batches) = (0u64, 0u64, 0u64, 0u64);
    let mut last_seq: Option<u64> = None;
    loop {
        let finished = producer.is_finished();
        let b = ring.drain_timeout(Duration::from_millis(1))?;
        lost += b.lost();
        let mut n = 0u64;
        for rec in b {
            let rec = rec?;
            gaps += rec.lost_before;
            last_seq = Some(rec.seq);
            process_invalidate(&mut table, rec.handle);
            n += 1;
        }
        consumed += n;
        batches += u64::from(n > 0);
        if finished && n == 0 {
            break;
        }
        // Deliberately slower than the producer.
        thread::sleep(Duration::from_micros(50));
        watchdog(t0, ctx)?;
    }
    let attempted = join(producer, "loss producer")?;
    let secs = t0.elapsed().as_secs_f64();
    let trailing = attempted - last_seq.map_or(0, |s| s + 1);
    let s = hv.hv().stats();
    checks.eq(
        ctx,
        "produced == consumed + lost",
        attempted,
        consumed + lost,
    );
    checks.eq(
        ctx,
        "ring core: posted + lost == attempted",
        s.produced + s.lost,
        attempted,
    );
    checks.eq(ctx, "consumed == posted", consumed, s.produced);
    checks.eq(
        ctx,
        "lost seen by consumer == ring core's lost",
        lost,
        s.lost,
    );
    checks.eq(
        ctx,
        "seq gaps + trailing losses == lost",
        gaps + trailing,
        lost,
    );
    checks.check(lost > 0, || {
        format!("{ctx}: the slow consumer lost nothing: not an overload")
    });
    Ok(Loss {
        attempted,
        consumed,
        lost,
        seq_lost: gaps + trailing,
        batches,
        secs,
    })
}

/// Lock-step: post exactly `batch` records, wait for the kick, take them;
/// `rounds` times.  Returns the notifications sent.
pub fn lockstep_kicks(frames: u32, batch: u32, rounds: u64, checks: &mut Checks) -> BResult<u64> {
    let ctx = format!("lock-step frames {frames} batch {batch}");
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(frames)
        .batch(batch)
        .register()?;
    let hv = xen
        .ring(DOM, EventType::SharingInvalidate)
        .ok_or("harness: the ring just registered is missing")?;
    let eff = u64::from(ring.batch_size());
    let mut got = 0u64;
    for r in 0..rounds {
        // The consumer finds the ring empty: it arms req_event and would
        // sleep (an awake consumer asks for no kick at all).
        let early = ring.wait(Some(Duration::ZERO))?;
        checks.check(!early, || {
            format!("{ctx}: round {r}: records before the batch")
        });
        for i in 0..eff {
            hv.put_invalidate(r * eff + i, i, DOM, REASON_UNSHARED, 0);
        }
        let kicked = ring.wait(Some(Duration::from_secs(5)))?;
        checks.check(kicked, || {
            format!("{ctx}: round {r}: no notification for a full batch")
        });
        got += ring.batch()?.count() as u64;
    }
    let kicks = hv.producer_kicks();
    checks.eq(&ctx, "records", got, rounds * eff);
    checks.eq(&ctx, "notifications == batches", kicks, rounds);
    Ok(kicks)
}
