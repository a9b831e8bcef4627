//! Section 1, per-record costs on one thread, records hot in L1: the
//! library consumer (`AsyncRing::batch` and its iteration) and the ring
//! core's producer (`HvRing::put_invalidate`, `put_invalidate_batch`),
//! each timed alone while the other side runs untimed on the same thread.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use xen_mem_event::{AsyncRing, EventType};
use xen_mem_event_harness::{AsyncRec, HarnessBackend, HarnessRing};

use crate::throughput::BULK;
use crate::util::{BResult, Checks, Pinned, DOM, REASON_UNSHARED};

/// Slots of the ring used (one frame: 4 KiB of records, L1-resident).
const SLOTS: u32 = 128;

/// Nanoseconds per record of each side: every round (128 records) is
/// timed on its own.  The repetitions are spread over section 1 (one after
/// each throughput configuration), so each sees another stretch of this
/// shared machine; the headline is the median round of the least disturbed
/// repetition (a co-runner on the SMT sibling or a preemption slows a
/// whole stretch, not single rounds), with the median and percentiles of
/// all rounds beside it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerRecord {
    /// The lowest of the repetitions' median rounds.
    pub best_rep: f64,
    /// Over all rounds of all repetitions.
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub reps: usize,
    pub records: u64,
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl PerRecord {
    /// Every repetition's rounds (ns per record each).
    pub fn of(reps: &[Vec<f64>]) -> PerRecord {
        let best_rep = reps
            .iter()
            .map(|r| median_of(&mut r.clone()))
            .fold(f64::NAN, f64::min);
        let mut rounds: Vec<f64> = reps.iter().flatten().copied().collect();
        rounds.sort_by(f64::total_cmp);
        let at = |q: usize| {
            rounds
                .get((rounds.len() * q / 100).min(rounds.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        PerRecord {
            best_rep,
            median: at(50),
            p10: at(10),
            p90: at(90),
            reps: reps.len(),
            records: rounds.len() as u64 * u64::from(SLOTS),
        }
    }
}

/// The repetitions gathered so far, per side.
#[derive(Debug, Default)]
pub struct Reps(Vec<(Side, Vec<Vec<f64>>)>);

impl Reps {
    /// One more repetition of every side, `rounds` rounds each.
    pub fn run(&mut self, rounds: u64, checks: &mut Checks) -> BResult<()> {
        for side in Side::ALL {
            let rep = per_record(side, rounds, checks)?;
            match self.0.iter_mut().find(|(s, _)| *s == side) {
                Some((_, reps)) => reps.push(rep),
                None => self.0.push((side, vec![rep])),
            }
        }
        Ok(())
    }

    /// Repetitions gathered (of each side).
    pub fn len(&self) -> usize {
        self.0.first().map_or(0, |(_, r)| r.len())
    }

    /// What the repetitions of `side` say.
    pub fn of(&self, side: Side) -> PerRecord {
        self.0
            .iter()
            .find(|(s, _)| *s == side)
            .map_or_else(PerRecord::default, |(_, r)| PerRecord::of(r))
    }
}

/// Which side is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `AsyncRing::batch` + iterating every record + drop.
    Consumer,
    /// `HvRing::put_invalidate`, one record per call.
    Producer,
    /// `HvRing::put_invalidate_batch`, `BULK` records per call.
    ProducerBatch,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Consumer, Side::Producer, Side::ProducerBatch];
}

type Ring = AsyncRing<Arc<HarnessBackend>>;

fn setup() -> BResult<(Arc<HarnessBackend>, Ring, Arc<HarnessRing>)> {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(SLOTS / 128)
        .batch(SLOTS / 2)
        .register()?;
    let hv = xen
        .ring(DOM, EventType::SharingInvalidate)
        .ok_or("harness: the ring just registered is missing")?;
    Ok((xen, ring, hv))
}

/// One repetition of one side (see [`Side`]): `rounds` full rings, the
/// ns per record of each round.
pub fn per_record(side: Side, rounds: u64, checks: &mut Checks) -> BResult<Vec<f64>> {
    let ctx = format!("per-record {side:?}");
    let _pinned = Pinned::to(1);
    let mut runs = Vec::with_capacity(usize::try_from(rounds).unwrap_or(0));
    {
        let (_xen, mut ring, hv) = setup()?;
        let hv = hv.hv();
        let mut recs = [AsyncRec {
            domid: DOM,
            reason: REASON_UNSHARED,
            ..AsyncRec::default()
        }; SLOTS as usize];
        let (mut seq, mut consumed, mut bad) = (0u64, 0u64, 0u64);
        let mut sink = 0u64;
        for round in 0..rounds {
            let t0 = Instant::now();
            match side {
                Side::Producer => {
                    for k in 0..u64::from(SLOTS) {
                        let h = round * u64::from(SLOTS) + k;
                        hv.put_invalidate(h, h << 12, DOM, REASON_UNSHARED, 0);
                    }
                }
                Side::ProducerBatch | Side::Consumer => {
                    for (k, r) in recs.iter_mut().enumerate() {
                        let h = round * u64::from(SLOTS) + k as u64;
                        r.handle = h;
                        r.gfn = h << 12;
                    }
                    for chunk in recs.chunks(BULK as usize) {
                        hv.put_invalidate_batch(chunk);
                    }
                }
            }
            let t1 = Instant::now();
            for rec in ring.batch()? {
                let rec = rec?;
                bad += u64::from(rec.seq != seq);
                seq = rec.seq + 1;
                sink = sink.wrapping_add(rec.handle ^ rec.gfn);
                consumed += 1;
            }
            let t2 = Instant::now();
            let timed = if side == Side::Consumer {
                t2 - t1
            } else {
                t1 - t0
            };
            runs.push(timed.as_secs_f64() * 1e9 / f64::from(SLOTS));
        }
        black_box(sink);
        let n = rounds * u64::from(SLOTS);
        let s = hv.stats();
        checks.eq(&ctx, "records consumed", consumed, n);
        checks.eq(&ctx, "records out of order", bad, 0);
        checks.eq(&ctx, "lost (ring core)", s.lost, 0);
    }
    Ok(runs)
}
