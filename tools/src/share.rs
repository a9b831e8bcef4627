//! The sharing daemon: `xen-mem-event share`.  One thread, one `poll(2)`
//! loop over the `SHARING_INVALIDATE` rings of every managed domain plus
//! the scan timer; the logic (scan, table, merges, KSM counters) is
//! `xen-mem-event-share`'s [`Daemon`].
//!
//! Domains come and go: `--all` picks up every HVM domain as it appears
//! (the domain list is read when the host's xenstore watch on
//! `@introduceDomain` / `@releaseDomain` fires, never polled); a domain
//! that is destroyed (its ring detached, or gone from the list, or its
//! pages unreadable) is forgotten and the others are still managed; a domain
//! that cannot be managed (no such domain, PV, sharing refused, its ring
//! taken) gets one line saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use serde::Serialize;
use xen_mem_event::{AsyncRing, Backend, Error};
use xen_mem_event_share::{
    Config, Daemon, DomId, HostCounters, InvalidateBatch, InvalidateRecord, OpError, PageSource,
    Sharing, Stats,
};

use crate::detach;
pub use crate::domains::{DomainSource, DomainState};
use crate::output::Out;
use crate::stop::Stop;
use crate::ToolError;

/// What the daemon needs from Xen besides pages and sharing ops: the
/// domain list, word when it changes, and turning sharing on.
pub trait Host: PageSource + Sharing + DomainSource {
    /// Turns memory sharing on for `domid` (`xc_memshr_control`).
    fn enable_sharing(&mut self, domid: DomId) -> Result<(), String>;
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct ShareOpts {
    /// Domains named on the command line.
    pub domains: Vec<DomId>,
    /// Every HVM domain, now and as they appear.
    pub all: bool,
    /// The scan: batch, pages per pass, pass interval, invalidate.
    pub config: Config,
    /// Data frames of each ring.
    pub frames: u32,
    /// Records per notification.
    pub ring_batch: u32,
    /// Take rings over from consumers still registered.
    pub takeover: bool,
    /// Between two status lines.
    pub interval: Duration,
    /// Stop after this long (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
}

impl Default for ShareOpts {
    fn default() -> Self {
        ShareOpts {
            domains: Vec::new(),
            all: false,
            config: Config::default(),
            frames: 4,
            ring_batch: 64,
            takeover: false,
            interval: Duration::from_secs(1),
            duration: None,
        }
    }
}

/// A domain is now managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename = "managed")]
pub struct Managed {
    /// The domain.
    pub domid: DomId,
    /// Slots of its `SHARING_INVALIDATE` ring (0: `--no-invalidate`).
    pub slots: u32,
    /// Records per notification.
    pub batch: u32,
}

impl fmt::Display for Managed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}: managed, memory sharing enabled; ", self.domid)?;
        if self.slots == 0 {
            f.write_str("no invalidation ring (--no-invalidate)")
        } else {
            write!(
                f,
                "SHARING_INVALIDATE attached ({} slots, batch {})",
                self.slots, self.batch
            )
        }
    }
}

/// A domain that cannot be managed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename = "refused")]
pub struct Refused {
    /// The domain.
    pub domid: DomId,
    /// Why, in one line.
    pub error: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}: not managed: {}", self.domid, self.error)
    }
}

/// A managed domain went away (or its ring was taken away).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename = "forgotten")]
pub struct Forgotten {
    /// The domain.
    pub domid: DomId,
    /// Why.
    pub why: String,
}

impl fmt::Display for Forgotten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}: {}; forgotten", self.domid, self.why)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn mib(pages: u64) -> f64 {
    pages as f64 * 4096.0 / MIB
}

/// The status line, each `--interval`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename = "interval")]
pub struct Interval {
    /// Seconds since the start.
    pub t: f64,
    /// Domains managed now.
    pub domains: usize,
    /// Pages scanned per second over the interval.
    pub scan_rate: f64,
    /// The counters.
    #[serde(flatten)]
    pub stats: Stats,
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{:>7.1}s {} dom  scanned {} ({:.0}/s, {} full scans)  shared {} sharing {} = {:.1} \
                MiB saved (Xen {:.1} MiB)  shares {} ok {} stale {} failed  records {} lost {} \
                rescans {}",
            self.t,
            self.domains,
            s.pages_scanned,
            self.scan_rate,
            s.full_scans,
            s.pages_shared,
            s.pages_sharing,
            mib(s.pages_sharing),
            mib(s.host_saved),
            s.share_ok,
            s.stale_failures(),
            s.share_failed,
            s.records_applied,
            s.records_lost,
            s.rescans
        )
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Ctrl-C (or the stop flag).
    Stopped,
    /// `--duration` elapsed.
    Done,
}

impl Ended {
    /// The `ended` field of the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Stopped => "stopped",
            Ended::Done => "done",
        }
    }
}

/// The final summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename = "summary")]
pub struct Summary {
    /// Why the loop ended.
    pub ended: Ended,
    /// Seconds run.
    pub secs: f64,
    /// Domains managed at the end.
    pub domains: usize,
    /// Xen's counters read at the end (host-wide).
    pub xen: HostCounters,
    /// The daemon's `pages_sharing` equals Xen's pages freed (true when
    /// the daemon is the only sharer and its table is fresh).
    pub agrees: bool,
    /// Failures while unregistering the rings.
    pub teardown_failures: usize,
    /// The counters.
    #[serde(flatten)]
    pub stats: Stats,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "share {} after {:.1}s: {} domains; {}; Xen: {} pages freed ({:.1} MiB), {} shared \
                frames; daemon {} Xen",
            self.ended.as_str(),
            self.secs,
            self.domains,
            self.stats,
            self.xen.saved_pages,
            mib(self.xen.saved_pages),
            self.xen.shared_frames,
            if self.agrees {
                "agrees with"
            } else {
                "differs from"
            }
        )
    }
}

/// One managed domain: its ring, if any.
struct Dom<B: Backend> {
    ring: Option<AsyncRing<B>>,
}

/// The daemon's loop state.
struct Loop<'a, B: Backend + Clone, H: Host, W: Write> {
    rings: B,
    host: &'a mut H,
    opts: &'a ShareOpts,
    out: &'a mut Out<W>,
    daemon: Daemon,
    doms: BTreeMap<DomId, Dom<B>>,
    /// Domains refused, not tried again while they exist.
    refused: BTreeSet<DomId>,
    teardown_failures: usize,
}

/// Runs the daemon until stopped (or `--duration`); returns the summary.
/// Fails (exit 1) only when no domain named on the command line can be
/// managed, or on an output error.
pub fn run<B: Backend + Clone, H: Host, W: Write>(
    rings: B,
    host: &mut H,
    opts: &ShareOpts,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<Summary, ToolError> {
    let mut lp = Loop {
        rings,
        host,
        opts,
        out,
        daemon: Daemon::new(opts.config),
        doms: BTreeMap::new(),
        refused: BTreeSet::new(),
        teardown_failures: 0,
    };
    let t0 = Instant::now();
    let ended = lp.serve(t0, stop);
    // Whatever happened, every ring is unregistered.
    let ids: Vec<DomId> = lp.doms.keys().copied().collect();
    for d in &ids {
        lp.close(*d);
    }
    let ended = ended?;
    let xen = lp.host.host_counters().unwrap_or_default();
    let stats = lp.daemon.stats();
    let summary = Summary {
        ended,
        secs: t0.elapsed().as_secs_f64(),
        domains: ids.len(),
        xen,
        agrees: stats.pages_sharing == xen.saved_pages,
        teardown_failures: lp.teardown_failures,
        stats,
    };
    lp.out.event(&summary)?;
    Ok(summary)
}

impl<B: Backend + Clone, H: Host, W: Write> Loop<'_, B, H, W> {
    fn serve(&mut self, t0: Instant, stop: &Stop) -> Result<Ended, ToolError> {
        let list = self.domain_list();
        for &d in &self.opts.domains {
            let known = list.iter().find(|s| s.domid == d).copied();
            self.add(d, known)?;
        }
        if !self.opts.all && self.doms.is_empty() {
            return Err(ToolError::Other(
                "no domain could be managed (see above)".into(),
            ));
        }
        if self.opts.all {
            self.discover(&list)?;
        }
        let mut next_stats = self.opts.interval;
        let mut last = (Duration::ZERO, 0u64);
        loop {
            if stop.requested() {
                return Ok(Ended::Stopped);
            }
            let now = t0.elapsed();
            if self.opts.duration.is_some_and(|d| now >= d) {
                return Ok(Ended::Done);
            }
            if self.domains_changed() {
                let list = self.domain_list();
                self.discover(&list)?;
            }
            self.drain_rings()?;
            let next_pass = self.daemon.step(self.host, now);
            self.forget_lost_domains()?;
            if now >= next_stats {
                let s = self.daemon.stats();
                let dt = (now - last.0).as_secs_f64().max(1e-9);
                let rate = s.pages_scanned.saturating_sub(last.1) as f64 / dt;
                last = (now, s.pages_scanned);
                self.out.event(&Interval {
                    t: now.as_secs_f64(),
                    domains: self.doms.len(),
                    scan_rate: rate,
                    stats: s,
                })?;
                next_stats = now + self.opts.interval;
            }
            let mut wake = next_pass.min(next_stats);
            if let Some(d) = self.opts.duration {
                wake = wake.min(d);
            }
            // Short enough to notice Ctrl-C promptly (signals interrupt
            // poll, but one may land just before it).
            let timeout = wake
                .saturating_sub(t0.elapsed())
                .min(Duration::from_millis(200));
            self.wait(timeout)?;
        }
    }

    /// The domain list; empty (with a warning) if it cannot be read.
    fn domain_list(&mut self) -> Vec<DomainState> {
        match self.host.domains() {
            Ok(l) => l,
            Err(e) => {
                log::warn!("reading the domain list: {e}");
                Vec::new()
            }
        }
    }

    /// Did a domain come or go (the watch fired)?  A watch that fails is
    /// said once per failure and counts as a change (the list is read).
    fn domains_changed(&mut self) -> bool {
        self.host.domains_changed().unwrap_or_else(|e| {
            log::warn!("xenstore watch: {e}");
            true
        })
    }

    /// `--all`: manages the HVM domains not managed yet; and with or
    /// without it, forgets managed domains no longer listed.
    fn discover(&mut self, list: &[DomainState]) -> Result<(), ToolError> {
        if list.is_empty() {
            return Ok(()); // unreadable, or really nothing: keep what we have
        }
        let listed: BTreeSet<DomId> = list.iter().map(|s| s.domid).collect();
        self.refused.retain(|d| listed.contains(d));
        let gone: Vec<DomId> = self
            .doms
            .keys()
            .copied()
            .filter(|d| !listed.contains(d))
            .collect();
        for d in gone {
            self.forget(d, "domain destroyed".into())?;
        }
        if self.opts.all {
            for s in list {
                if s.hvm && !self.doms.contains_key(&s.domid) && !self.refused.contains(&s.domid) {
                    self.add(s.domid, Some(*s))?;
                }
            }
        }
        Ok(())
    }

    /// Starts managing `domid` (`known`: its entry in the domain list).
    fn add(&mut self, domid: DomId, known: Option<DomainState>) -> Result<(), ToolError> {
        if self.doms.contains_key(&domid) {
            return Ok(());
        }
        match self.attach(domid, known) {
            Ok((dom, managed)) => {
                self.doms.insert(domid, dom);
                self.daemon.add_domain(domid);
                self.out.event(&managed)?;
            }
            Err(error) => {
                self.refused.insert(domid);
                self.out.event(&Refused { domid, error })?;
            }
        }
        Ok(())
    }

    fn attach(
        &mut self,
        domid: DomId,
        known: Option<DomainState>,
    ) -> Result<(Dom<B>, Managed), String> {
        match known {
            None => return Err("no such domain".into()),
            Some(s) if !s.hvm => {
                return Err(
                    "a PV domain: memory sharing needs an HVM or PVH domain with HAP".into(),
                )
            }
            Some(_) => {}
        }
        self.host
            .enable_sharing(domid)
            .map_err(|e| format!("cannot enable memory sharing: {e}"))?;
        if !self.opts.config.invalidate {
            let managed = Managed {
                domid,
                slots: 0,
                batch: 0,
            };
            return Ok((Dom { ring: None }, managed));
        }
        let ring = AsyncRing::builder(self.rings.clone(), domid)
            .frames(self.opts.frames)
            .batch(self.opts.ring_batch)
            .takeover(self.opts.takeover)
            .register()
            .map_err(|e| match e {
                Error::Busy { .. } => format!("{e} (use --takeover if that consumer died)"),
                e => e.to_string(),
            })?;
        let managed = Managed {
            domid,
            slots: ring.ring().nr_slots(),
            batch: ring.batch_size(),
        };
        Ok((Dom { ring: Some(ring) }, managed))
    }

    /// Unregisters `domid`'s ring, if any, and counts failures.
    fn close(&mut self, domid: DomId) {
        if let Some(ring) = self.doms.remove(&domid).and_then(|d| d.ring) {
            // A ring Xen detached is no longer ours to unregister.
            if ring.ring().is_detached() {
                drop(ring.close());
            } else {
                self.teardown_failures += ring.close().warnings.len();
            }
        }
    }

    /// Stops managing `domid`.
    fn forget(&mut self, domid: DomId, why: String) -> Result<(), ToolError> {
        self.close(domid);
        self.daemon.remove_domain(domid);
        self.out.event(&Forgotten { domid, why })?;
        Ok(())
    }

    /// Domains the daemon dropped by itself (their pages could not be
    /// read: the domain is gone).
    fn forget_lost_domains(&mut self) -> Result<(), ToolError> {
        let live: BTreeSet<DomId> = self.daemon.domains().collect();
        let lost: Vec<DomId> = self
            .doms
            .keys()
            .copied()
            .filter(|d| !live.contains(d))
            .collect();
        for d in lost {
            self.forget(d, "domain destroyed (pages unreadable)".into())?;
        }
        Ok(())
    }

    /// Applies whatever every ring holds.
    fn drain_rings(&mut self) -> Result<(), ToolError> {
        let ids: Vec<DomId> = self.doms.keys().copied().collect();
        for d in ids {
            let Some(ring) = self.doms.get_mut(&d).and_then(|m| m.ring.as_mut()) else {
                continue;
            };
            // Torn down by Xen: the domain died, or the ring was taken.
            if let Some(det) = detach::check(ring.ring()) {
                let alive = self.domain_list().iter().any(|s| s.domid == d);
                let why = if alive {
                    det.to_string()
                } else {
                    "domain destroyed".to_owned()
                };
                self.forget(d, why)?;
                continue;
            }
            let drained = drain(ring);
            match drained {
                Ok(batches) => {
                    for b in &batches {
                        self.daemon.apply(b);
                    }
                }
                Err(e) => {
                    let why = self
                        .doms
                        .get(&d)
                        .and_then(|m| m.ring.as_ref())
                        .and_then(|r| detach::check(r.ring()))
                        .map_or_else(|| format!("ring failed: {e}"), |det| det.to_string());
                    self.forget(d, why)?;
                }
            }
        }
        Ok(())
    }

    /// Sleeps until a ring's descriptor or the domain watch is readable,
    /// or `timeout` passes.
    fn wait(&mut self, timeout: Duration) -> Result<(), ToolError> {
        let watch = self.host.watch_fd();
        let mut fds: Vec<rustix::event::PollFd<'_>> = self
            .doms
            .values()
            .filter_map(|m| m.ring.as_ref())
            .map(|r| rustix::event::PollFd::new(r, rustix::event::PollFlags::IN))
            .collect();
        fds.push(rustix::event::PollFd::from_borrowed_fd(
            watch,
            rustix::event::PollFlags::IN,
        ));
        let ts = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        });
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(ToolError::Io(e.into())),
        }
    }
}

/// Takes every record waiting in `ring` (consuming its notification),
/// as batches for the daemon.
fn drain<B: Backend>(ring: &mut AsyncRing<B>) -> Result<Vec<InvalidateBatch>, Error> {
    let domid = ring.ring().domid();
    let mut out = Vec::new();
    loop {
        let mut b = InvalidateBatch {
            domid,
            ..InvalidateBatch::default()
        };
        {
            let batch = ring.process()?;
            b.lost = batch.lost();
            for rec in batch {
                b.records.push(InvalidateRecord::from(&rec?));
            }
        }
        let more = ring.rearm()?;
        if !b.records.is_empty() || b.lost > 0 {
            out.push(b);
        }
        if !more {
            return Ok(out);
        }
    }
}

/// The real host: [`xen_mem_event_share::xen::XenSharing`], the domain
/// list of libxenctrl and xenstore's domain watch.
#[derive(Debug)]
pub struct XenHost {
    /// Pages and sharing ops.
    pub sharing: xen_mem_event_share::xen::XenSharing,
    /// The domain list and its watch.
    pub domains: crate::domains::XenDomains,
}

impl PageSource for XenHost {
    fn gfn_count(&mut self, domid: DomId) -> Result<u64, OpError> {
        self.sharing.gfn_count(domid)
    }
    fn read_pages(
        &mut self,
        domid: DomId,
        gfns: &[xen_mem_event_share::Gfn],
        each: &mut dyn FnMut(xen_mem_event_share::Gfn, Result<&xen_mem_event_share::Page, OpError>),
    ) -> Result<(), OpError> {
        self.sharing.read_pages(domid, gfns, each)
    }
}

impl Sharing for XenHost {
    fn nominate(
        &mut self,
        page: xen_mem_event_share::GfnRef,
    ) -> Result<xen_mem_event_share::Handle, OpError> {
        self.sharing.nominate(page)
    }
    fn share(
        &mut self,
        src: xen_mem_event_share::GfnRef,
        src_handle: xen_mem_event_share::Handle,
        cli: xen_mem_event_share::GfnRef,
        cli_handle: xen_mem_event_share::Handle,
    ) -> Result<(), OpError> {
        self.sharing.share(src, src_handle, cli, cli_handle)
    }
    fn host_counters(&mut self) -> Result<HostCounters, OpError> {
        self.sharing.host_counters()
    }
}

impl DomainSource for XenHost {
    fn domains(&mut self) -> Result<Vec<DomainState>, String> {
        self.domains.domains()
    }
    fn watch_fd(&self) -> BorrowedFd<'_> {
        self.domains.watch_fd()
    }
    fn domains_changed(&mut self) -> Result<bool, String> {
        self.domains.domains_changed()
    }
}

impl Host for XenHost {
    fn enable_sharing(&mut self, domid: DomId) -> Result<(), String> {
        self.sharing.memshr().set_enabled(domid, true).map_err(|e| {
            let hint = match rustix::io::Errno::from_raw_os_error(e.0) {
                rustix::io::Errno::OPNOTSUPP => " (not an HVM domain, or no sharing on this CPU)",
                rustix::io::Errno::NODEV => " (the domain does not use HAP)",
                rustix::io::Errno::XDEV => " (a device is passed through to it)",
                _ => "",
            };
            format!("{e}{hint}")
        })
    }
}

/// `xen-mem-event share`: the command line.
#[derive(Debug, clap::Args)]
pub struct ShareArgs {
    /// A domain to manage (id or name); repeat for several.
    #[arg(long, short, required_unless_present = "all", conflicts_with = "all")]
    pub domain: Vec<String>,
    /// Manage every HVM domain, and each new one as it appears.
    #[arg(long)]
    pub all: bool,
    /// Do not register the SHARING_INVALIDATE rings: stale entries are
    /// then only found when a share fails (to measure what the ring is
    /// worth).
    #[arg(long)]
    pub no_invalidate: bool,
    /// Pages scanned per second, across all domains (KSM's
    /// pages_to_scan / sleep_millisecs); a hole costs 1/64 of a page.
    #[arg(long, default_value_t = 25_600)]
    pub pages_per_sec: u64,
    /// Seconds between two scan passes.
    #[arg(long, default_value = "0.1", value_parser = crate::secs)]
    pub pass_interval: Duration,
    /// Seconds between status lines.
    #[arg(long, default_value = "1", value_parser = crate::secs)]
    pub interval: Duration,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_parser = crate::secs)]
    pub duration: Option<Duration>,
    /// Data frames of each SHARING_INVALIDATE ring (128 records a frame);
    /// a scan pass attempts at most half a ring of shares.
    #[arg(long, default_value_t = 16)]
    pub frames: u32,
    /// Records per notification.
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// Take the rings over from consumers that are still registered.
    #[arg(long)]
    pub takeover: bool,
}

/// Runs `xen-mem-event share` on Xen; `resolve` turns a domain name into
/// an id.
pub fn cmd<W: Write>(
    a: ShareArgs,
    resolve: impl Fn(&str) -> Result<DomId, ToolError>,
    out: &mut Out<W>,
) -> Result<(), ToolError> {
    if a.interval.is_zero() || a.pass_interval.is_zero() {
        return Err(ToolError::Other(
            "--interval and --pass-interval must be positive".into(),
        ));
    }
    let rings = xen_mem_event::XenBackend::open()?;
    let mut host = XenHost {
        sharing: xen_mem_event_share::xen::XenSharing::open()?,
        domains: crate::domains::XenDomains::open()?,
    };
    let domains = a
        .domain
        .iter()
        .map(|d| resolve(d))
        .collect::<Result<Vec<_>, _>>()?;
    let config = Config {
        invalidate: !a.no_invalidate,
        // The records of a pass's own shares must fit the rings.
        shares_per_pass: if a.no_invalidate {
            u64::MAX
        } else {
            (u64::from(a.frames) * 128 / 2).max(1)
        },
        ..Config::default()
    }
    .with_rate(a.pages_per_sec, a.pass_interval);
    let opts = ShareOpts {
        domains,
        all: a.all,
        config,
        frames: a.frames,
        ring_batch: a.batch,
        takeover: a.takeover,
        interval: a.interval,
        duration: a.duration,
    };
    let stop = Stop::install()?;
    out.note(&format!(
        "sharing daemon: {} pages/s in passes of {} every {:?}, {}; Ctrl-C to stop",
        a.pages_per_sec,
        opts.config.pages_per_pass,
        a.pass_interval,
        if a.no_invalidate {
            "without invalidation rings"
        } else {
            "with SHARING_INVALIDATE rings"
        }
    ))?;
    let s = run(&rings, &mut host, &opts, &stop, out)?;
    match s.teardown_failures {
        0 => Ok(()),
        n => Err(ToolError::Other(format!(
            "{n} failure(s) while unregistering the rings (see the warnings above)"
        ))),
    }
}
