//! The invalidate watcher: attaches to a domain's `SHARING_INVALIDATE`
//! ring, consumes batches, reports records or per-interval summaries and
//! the records lost, and keeps the set of handles seen invalidated.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use xen_mem_event::{AsyncRing, Backend, Error, InvalidateReason, InvalidateRecord};

use crate::detach::{self, Detached};
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
    /// Keep the handles seen gone in this file: rewritten (atomically)
    /// every interval and at exit.
    pub write_handles: Option<PathBuf>,
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
            write_handles: None,
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
    /// Someone else took the ring away (taken over or unregistered).
    Detached(Detached),
}

impl Ended {
    /// The `ended` field of the summary.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ended::Stopped => "stopped",
            Ended::Done => "done",
            Ended::DomainGone => "domain destroyed",
            Ended::Detached(d) => d.ended(),
        }
    }
}

impl From<Detached> for Ended {
    fn from(d: Detached) -> Ended {
        if d.is_failure() {
            Ended::Detached(d)
        } else {
            Ended::DomainGone
        }
    }
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

/// What the watcher reports besides the records themselves.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    /// Records were lost (Xen's counter grew): resynchronise.
    Lost {
        /// Lost in this batch.
        count: u64,
        /// Lost while attached.
        total: u64,
    },
    /// The status line, every `--interval`.
    Interval {
        /// Seconds the interval lasted.
        secs: f64,
        /// Records in the interval.
        records: u64,
        /// Records per second.
        rate: f64,
        /// Non-empty batches in the interval.
        batches: u64,
        /// Records per batch.
        avg_batch: f64,
        /// Records lost in the interval.
        lost: u64,
        /// Handles seen gone while attached.
        handles_gone: usize,
        /// Records while attached.
        total_records: u64,
        /// Records lost while attached.
        total_lost: u64,
    },
    /// The last line: why the watcher ended and its totals.
    Summary {
        /// The domain.
        domid: u16,
        /// Why it ended (`stopped`, `domain destroyed`, ...).
        ended: &'static str,
        /// Records consumed.
        records: u64,
        /// Non-empty batches.
        batches: u64,
        /// Largest batch.
        max_batch: usize,
        /// Records lost while attached.
        lost: u64,
        /// Handles seen gone.
        handles_gone: usize,
        /// Xen's produced counter at the end (0 once detached).
        xen_produced: u64,
        /// Xen's lost counter at the end (0 once detached).
        xen_lost: u64,
    },
}

impl fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchEvent::Lost { count, .. } => write!(f, "{count} record(s) lost: resynchronise"),
            WatchEvent::Interval {
                records,
                rate,
                batches,
                avg_batch,
                lost,
                handles_gone,
                ..
            } => write!(
                f,
                "{records:>8} records {rate:>10.0}/s  {batches:>6} batches (avg {avg_batch:.1})  \
                 lost {lost:>6} since last line  handles gone {handles_gone}"
            ),
            WatchEvent::Summary {
                domid,
                ended,
                records,
                batches,
                max_batch,
                lost,
                handles_gone,
                xen_produced,
                xen_lost,
            } => write!(
                f,
                "d{domid} watcher {ended}: {records} records in {batches} batches (largest \
                 {max_batch}), {lost} lost, {handles_gone} handles gone; Xen: {xen_produced} \
                 produced, {xen_lost} lost"
            ),
        }
    }
}

/// Consume `ring` until stopped.
pub fn run<B: Backend, W: Write>(
    ring: &mut AsyncRing<B>,
    opts: &WatchOpts,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<(Ended, Summary), ToolError> {
    let mut sum = Summary::default();
    let result = serve(ring, opts, stop, out, &mut sum);
    let ended = match result {
        Ok(ended) => ended,
        Err(e) => {
            let d = detach::after_error(ring.ring(), e)?;
            out.event(&d)?;
            d.into()
        }
    };
    if let Some(path) = &opts.write_handles {
        write_handles(path, &sum)?;
    }
    Ok((ended, sum))
}

fn serve<B: Backend, W: Write>(
    ring: &mut AsyncRing<B>,
    opts: &WatchOpts,
    stop: &Stop,
    out: &mut Out<W>,
    sum: &mut Summary,
) -> Result<Ended, ToolError> {
    ring.set_batch(opts.batch)?;
    let domid = ring.ring().domid();
    let clamped = if opts.batch > ring.batch_size() {
        format!(" (--batch {} clamped to half the ring)", opts.batch)
    } else {
        String::new()
    };
    out.note(&format!(
        "d{domid} SHARING_INVALIDATE: attached ({} slots, batch {}{clamped}); Ctrl-C to detach",
        ring.ring().nr_slots(),
        ring.batch_size()
    ))?;
    let mut interval = Interval::new();
    let mut last_record = Instant::now();
    let mut last_check = Instant::now();
    let mut last_write = Instant::now();
    let tick = opts.interval.min(Duration::from_millis(200));

    let ended = loop {
        if stop.requested() {
            break Ended::Stopped;
        }
        if let Some(d) = detach::check(ring.ring()) {
            out.event(&d)?;
            break d.into();
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
            out.event(&WatchEvent::Lost {
                count: lost,
                total: sum.lost,
            })?;
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
                out.event(&Invalidated::from(rec))?;
            }
        }
        if let Some(rate) = opts.slow.filter(|r| *r > 0) {
            std::thread::sleep(Duration::from_secs_f64(got.len() as f64 / rate as f64));
        }
        if !opts.records && interval.start.elapsed() >= opts.interval {
            interval.emit(out, sum)?;
            interval = Interval::new();
        }
        if let Some(path) = &opts.write_handles {
            if last_write.elapsed() >= opts.interval {
                write_handles(path, sum)?;
                last_write = Instant::now();
            }
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
        interval.emit(out, sum)?;
    }
    Ok(ended)
}

/// Why `<domid, gfn>` was invalidated, as the JSON output spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `XEN_MEM_EVENT_INVALIDATE_MERGED`.
    Merged,
    /// `XEN_MEM_EVENT_INVALIDATE_UNSHARED`.
    Unshared,
    /// A reason this tool does not know (the raw value).
    Other(u16),
}

impl From<InvalidateReason> for Reason {
    fn from(r: InvalidateReason) -> Reason {
        match r {
            InvalidateReason::Merged => Reason::Merged,
            InvalidateReason::Unshared => Reason::Unshared,
            other => Reason::Other(other.raw()),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Merged => f.write_str("merged"),
            Reason::Unshared => f.write_str("unshared"),
            Reason::Other(raw) => write!(f, "reason {raw}"),
        }
    }
}

/// One invalidation record (`--records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename = "invalidate")]
pub struct Invalidated {
    /// Records Xen attempted before this one.
    pub seq: u64,
    /// The domain of the gfn.
    pub domid: u16,
    /// The gfn.
    pub gfn: u64,
    /// The sharing handle.
    pub handle: u64,
    /// Why.
    pub reason: Reason,
    /// The handle itself is gone.
    pub handle_gone: bool,
}

impl From<&InvalidateRecord> for Invalidated {
    fn from(r: &InvalidateRecord) -> Invalidated {
        Invalidated {
            seq: r.seq,
            domid: r.domid,
            gfn: r.gfn,
            handle: r.handle,
            reason: r.reason.into(),
            handle_gone: r.handle_gone,
        }
    }
}

impl fmt::Display for Invalidated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq {} d{} gfn {:#x} handle {:#x}: {}{}",
            self.seq,
            self.domid,
            self.gfn,
            self.handle,
            self.reason,
            if self.handle_gone {
                ", handle gone"
            } else {
                ""
            }
        )
    }
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
        out.event(&WatchEvent::Interval {
            secs,
            records: self.records,
            rate,
            batches: self.batches,
            avg_batch: avg,
            lost: self.lost,
            handles_gone: sum.handles_gone.len(),
            total_records: sum.records,
            total_lost: sum.lost,
        })?;
        Ok(())
    }
}

/// Write the handles seen gone, one hex number a line, atomically: to a
/// temporary file in the same directory, then renamed over `path`, so a
/// reader never sees a partial list.
pub fn write_handles(path: &Path, sum: &Summary) -> std::io::Result<()> {
    let mut s = String::new();
    for h in &sum.handles_gone {
        s.push_str(&format!("{h:#x}\n"));
    }
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("handles"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, s)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
