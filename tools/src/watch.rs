//! The invalidate watcher: attaches to a domain's `SHARING_INVALIDATE`
//! ring, consumes batches, reports records or per-interval summaries and
//! the records lost, and keeps the set of handles seen invalidated.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use xen_mem_event::{AsyncRing, Backend, Error, InvalidateRecord};

use crate::output::Out;
use crate::stop::Stop;
use crate::ToolError;

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatchOpts {
    /// Records per notification (the ring's event index).
    pub batch: u32,
    /// Print every record (otherwise a summary line per interval).
    pub records: bool,
    /// Summary interval.
    pub interval: Duration,
    /// Stop after this many records (0: never).
    pub max_records: u64,
    /// Stop after this long without any record (zero: never).
    pub idle_exit: Duration,
    /// Consume at most this many records per second (a deliberately slow
    /// consumer, to see loss accounting at work).
    pub slow: Option<u64>,
}

impl Default for WatchOpts {
    fn default() -> Self {
        WatchOpts {
            batch: 64,
            records: false,
            interval: Duration::from_secs(1),
            max_records: 0,
            idle_exit: Duration::ZERO,
            slow: None,
        }
    }
}

/// Why the watcher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Ctrl-C (or the stop flag).
    Stopped,
    /// `max_records` seen, or idle for `idle_exit`.
    Done,
    /// The domain went away.
    DomainGone,
}

/// What the watcher saw.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Records consumed.
    pub records: u64,
    /// Non-empty batches consumed.
    pub batches: u64,
    /// Largest batch.
    pub max_batch: usize,
    /// Records lost (Xen's counter) while attached.
    pub lost: u64,
    /// Handles seen gone (`HANDLE_GONE`), sorted.
    pub handles_gone: BTreeSet<u64>,
    /// <domid, gfn> entries seen invalidated.
    pub entries: u64,
}

/// Consume `ring` until stopped.
pub fn run<B: Backend, W: Write>(
    ring: &mut AsyncRing<B>,
    opts: &WatchOpts,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<(Ended, Summary), ToolError> {
    ring.set_batch(opts.batch)?;
    let mut sum = Summary::default();
    let mut interval = Interval::new();
    let mut last_record = Instant::now();
    let mut last_check = Instant::now();
    let tick = opts.interval.min(Duration::from_millis(200));

    let ended = loop {
        if stop.requested() {
            break Ended::Stopped;
        }
        let mut got = Vec::new();
        let lost;
        {
            let batch = ring.drain_timeout(tick)?;
            lost = batch.lost();
            for rec in batch {
                got.push(rec?);
            }
        }
        sum.lost += lost;
        interval.lost += lost;
        if lost > 0 && opts.records {
            out.emit(
                &format!("{lost} record(s) lost: resynchronise"),
                json!({"kind": "lost", "count": lost, "total": sum.lost}),
            )?;
        }
        if !got.is_empty() {
            last_record = Instant::now();
            sum.batches += 1;
            interval.batches += 1;
            sum.max_batch = sum.max_batch.max(got.len());
        }
        for rec in &got {
            sum.records += 1;
            interval.records += 1;
            sum.entries += 1;
            if rec.handle_gone {
                sum.handles_gone.insert(rec.handle);
            }
            if opts.records {
                emit_record(out, rec)?;
            }
        }
        if let Some(rate) = opts.slow.filter(|r| *r > 0) {
            std::thread::sleep(Duration::from_secs_f64(got.len() as f64 / rate as f64));
        }
        if !opts.records && interval.start.elapsed() >= opts.interval {
            interval.emit(out, &sum)?;
            interval = Interval::new();
        }
        if opts.max_records != 0 && sum.records >= opts.max_records {
            break Ended::Done;
        }
        if !opts.idle_exit.is_zero() && last_record.elapsed() >= opts.idle_exit {
            break Ended::Done;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            match ring.ring().info() {
                Err(Error::NoSuchDomain { .. }) => break Ended::DomainGone,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
    };
    if !opts.records && interval.records + interval.lost > 0 {
        interval.emit(out, &sum)?;
    }
    Ok((ended, sum))
}

fn emit_record<W: Write>(out: &mut Out<W>, rec: &InvalidateRecord) -> Result<(), ToolError> {
    let reason = format!("{:?}", rec.reason).to_lowercase();
    out.emit(
        &format!(
            "seq {} d{} gfn {:#x} handle {:#x}: {reason}{}",
            rec.seq,
            rec.domid,
            rec.gfn,
            rec.handle,
            if rec.handle_gone { ", handle gone" } else { "" }
        ),
        json!({"kind": "invalidate", "seq": rec.seq, "domid": rec.domid, "gfn": rec.gfn,
               "handle": rec.handle, "reason": reason, "handle_gone": rec.handle_gone}),
    )?;
    Ok(())
}

struct Interval {
    start: Instant,
    records: u64,
    batches: u64,
    lost: u64,
}

impl Interval {
    fn new() -> Self {
        Interval {
            start: Instant::now(),
            records: 0,
            batches: 0,
            lost: 0,
        }
    }

    fn emit<W: Write>(&self, out: &mut Out<W>, sum: &Summary) -> Result<(), ToolError> {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.records as f64 / secs;
        let avg = if self.batches == 0 {
            0.0
        } else {
            self.records as f64 / self.batches as f64
        };
        out.emit(
            &format!(
                "{:>8} records {:>10.0}/s  {:>6} batches (avg {:.1})  lost {:>6} since last line  handles gone {}",
                self.records,
                rate,
                self.batches,
                avg,
                self.lost,
                sum.handles_gone.len()
            ),
            json!({"kind": "interval", "secs": secs, "records": self.records, "rate": rate,
                   "batches": self.batches, "avg_batch": avg, "lost": self.lost,
                   "handles_gone": sum.handles_gone.len(), "total_records": sum.records, "total_lost": sum.lost}),
        )?;
        Ok(())
    }
}

/// Write the handles seen gone, one hex number a line.
pub fn write_handles(path: &std::path::Path, sum: &Summary) -> std::io::Result<()> {
    let mut s = String::new();
    for h in &sum.handles_gone {
        s.push_str(&format!("{h:#x}\n"));
    }
    std::fs::write(path, s)
}
