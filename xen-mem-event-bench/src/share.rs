//! Section 5: the sharing daemon's logic on one core, on local memory:
//! its table applying invalidation records, and its scan pipeline (zero
//! check + xxh3 + table insert/match), with `xen-mem-event-share`'s own
//! code.  No Xen, no threads.

use std::time::Instant;

use xen_mem_event_share::model::ModelXen;
use xen_mem_event_share::{page_key, GfnRef, InvalidateRecord, Observed, Reason, Table, PAGE_SIZE};

use crate::util::{Checks, XorShift};

/// Items processed in a timed run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub items: u64,
    pub secs: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.items as f64 / self.secs
        } else {
            f64::NAN
        }
    }
}

/// Gfns per shared frame in the record run.
pub const PER_FRAME: u64 = 4;

/// A table of `frames` handles with [`PER_FRAME`] gfns each over four
/// domains, and the records unsharing every gfn, frames interleaved (the
/// last gfn of each with `HANDLE_GONE`).
fn populated(frames: u64) -> (Table, Vec<InvalidateRecord>) {
    let mut t = Table::new();
    let mut recs = Vec::with_capacity(usize::try_from(frames * PER_FRAME).unwrap_or(0));
    for i in 0..PER_FRAME {
        for f in 0..frames {
            let page = GfnRef::new(1 + (i % 4) as u16, f * PER_FRAME + i);
            t.insert(page, f);
            t.set_handle(page, f + 1);
            recs.push(InvalidateRecord {
                domid: page.domid,
                gfn: page.gfn,
                handle: f + 1,
                reason: Reason::Unshared,
                handle_gone: i == PER_FRAME - 1,
            });
        }
    }
    (t, recs)
}

/// The table applying `frames × PER_FRAME` records (median of `reps`).
pub fn apply_records(frames: u64, reps: usize, checks: &mut Checks) -> Run {
    let ctx = "share: table applying records";
    let mut runs = Vec::new();
    for _ in 0..reps.max(1) {
        let (mut t, recs) = populated(frames);
        checks.eq(
            ctx,
            "sharing before",
            t.pages_sharing(),
            frames * (PER_FRAME - 1),
        );
        let t0 = Instant::now();
        let dropped = recs.iter().filter(|r| t.apply(r)).count() as u64;
        let secs = t0.elapsed().as_secs_f64();
        checks.eq(
            ctx,
            "records that dropped an entry",
            dropped,
            recs.len() as u64,
        );
        checks.eq(ctx, "entries left", t.len() as u64, 0);
        checks.eq(ctx, "handles left", t.handles() as u64, 0);
        runs.push(Run {
            items: recs.len() as u64,
            secs,
        });
    }
    median(runs)
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs.get(runs.len() / 2).copied().unwrap_or_default()
}

/// Shares of the scan mix, in percent of pages: zero, duplicates of
/// [`PATTERNS`] common pages, the rest unique.
pub const MIX: (u64, u64) = (25, 35);
/// Distinct contents among the duplicate pages.
pub const PATTERNS: u64 = 64;

/// What a scan run found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scan {
    pub run: Run,
    pub pages: u64,
    pub new: u64,
    pub matches: u64,
}

/// `bytes` of local memory with the [`MIX`], page `i`'s class chosen by
/// a fixed generator; returns the memory and the number of unique pages.
fn memory(bytes: u64) -> (Vec<u8>, u64) {
    let mut mem = vec![0u8; usize::try_from(bytes).unwrap_or(0)];
    let mut rng = XorShift::new(0x5eed);
    let mut unique = 0;
    for (i, page) in mem.chunks_exact_mut(PAGE_SIZE).enumerate() {
        let roll = rng.range(0, 100);
        let seed = if roll < MIX.0 {
            continue;
        } else if roll < MIX.0 + MIX.1 {
            1 + rng.range(0, PATTERNS)
        } else {
            unique += 1;
            1 << 32 | i as u64
        };
        page.copy_from_slice(&ModelXen::pattern(seed));
    }
    (mem, unique)
}

/// Zero check + xxh3 + table observe of every page of `bytes` of local
/// memory (median of `reps`, each into a fresh table).
pub fn scan_pipeline(bytes: u64, reps: usize, checks: &mut Checks) -> Scan {
    let ctx = "share: scan pipeline";
    let (mem, unique) = memory(bytes);
    let mut scans = Vec::new();
    for _ in 0..reps.max(1) {
        let mut t = Table::new();
        let (mut new, mut matches) = (0u64, 0u64);
        let t0 = Instant::now();
        for (i, page) in mem.chunks_exact(PAGE_SIZE).enumerate() {
            let Ok(page) = <&[u8; PAGE_SIZE]>::try_from(page) else {
                continue;
            };
            match t.observe(GfnRef::new(1, i as u64), page_key(page)) {
                Observed::New => new += 1,
                Observed::Match { .. } => matches += 1,
                Observed::Unchanged => {}
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let pages = (mem.len() / PAGE_SIZE) as u64;
        checks.eq(ctx, "pages seen", new + matches, pages);
        checks.check(new <= 1 + PATTERNS + unique && new >= unique, || {
            format!("{ctx}: {new} distinct contents for {unique} unique pages")
        });
        checks.eq(ctx, "table entries", t.len() as u64, pages);
        scans.push(Scan {
            run: Run {
                items: mem.len() as u64,
                secs,
            },
            pages,
            new,
            matches,
        });
    }
    scans.sort_by(|a, b| a.run.rate().total_cmp(&b.run.rate()));
    scans.get(scans.len() / 2).copied().unwrap_or_default()
}
