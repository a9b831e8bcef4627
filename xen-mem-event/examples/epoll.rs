//! Both rings of one domain served by one thread with `epoll(7)`.
//!
//! - `SHARING_OOM`: each request raises the domain's allowance by a step
//!   (`--step KIB`, default 1024), then is answered.  A raise that fails
//!   leaves the vCPU paused; it is tried again every tick.
//! - `SHARING_INVALIDATE`: records, records lost and handles gone are
//!   counted.
//! - SIGINT or SIGTERM (through a self-pipe): the requests still pending
//!   are answered, both rings closed, and one line of counts printed.
//! - A ring Xen detaches (the domain destroyed, a ring taken over by
//!   another consumer) ends the loop as well, saying which.
//!
//! Run it in dom0, as root, on a Xen with the xen-mem-event series:
//!
//! ```text
//! cargo run --release -p xen-mem-event --example epoll -- --domain 5
//! ```
//!
//! The pattern: a ring's descriptor (`AsFd`) is readable while a
//! notification from Xen is pending (level-triggered).  Then
//! `SyncRing::process` kicks Xen for the answers published and takes the
//! requests; `AsyncRing::process` takes the records, and `rearm` says
//! whether more reached the threshold meanwhile (they sent no kick: take
//! them at once).  Xen sends nothing when it detaches a ring, so a tick
//! checks `Ring::is_detached`; the tick also takes the records that stay
//! below the notification threshold.
//!
//! The loop, [`serve`], is generic over the `Backend`: the harness test
//! `xen-mem-event-harness/tests/epoll_example.rs` includes this file and
//! runs it against the hypervisor's own ring code.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use xen_mem_event::domain::Domains;
use xen_mem_event::{
    AsyncRing, Backend, Error, EventType, Op, Ring, SyncRequest, SyncRing, XenBackend,
};

const USAGE: &str = "usage: epoll --domain ID [--step KIB]";

/// The allowance step per OOM request, KiB (256 pages).
const DEFAULT_STEP_KIB: u64 = 1024;

/// How often the loop checks for detached rings, retries the raises that
/// failed and takes the records below the notification threshold.
const TICK: Duration = Duration::from_secs(1);

/// The epoll keys.
const OOM: u64 = 0;
const INVAL: u64 = 1;
const STOP: u64 = 2;

/// The command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    /// `--domain ID`.
    pub domid: u16,
    /// `--step KIB`.
    pub step_kib: u64,
}

impl Args {
    /// Parses `--domain ID [--step KIB]`; `Ok(None)` for `--help`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
        let (mut domid, mut step_kib) = (None, DEFAULT_STEP_KIB);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--domain" => {
                    let v = value()?;
                    domid = Some(
                        v.parse()
                            .map_err(|_| format!("--domain {v}: not a domid"))?,
                    );
                }
                "--step" => {
                    let v = value()?;
                    step_kib = v
                        .parse()
                        .map_err(|_| format!("--step {v}: not a KiB count"))?;
                }
                _ => return Err(format!("unexpected argument '{arg}'")),
            }
        }
        let domid = domid.ok_or("--domain is required")?;
        Ok(Some(Args { domid, step_kib }))
    }
}

/// Why Xen detached a ring, as `GET_INFO` tells once it has: a dying or
/// destroyed domain answers `ESRCH`, a ring registered again is a
/// takeover, no ring an unregistration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The domain is dying or destroyed.
    DomainGone,
    /// Another consumer registered the ring with takeover.
    TakenOver,
    /// Someone else unregistered the ring.
    Unregistered,
}

/// What ended the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The stop descriptor became readable (SIGINT, SIGTERM).
    Stopped,
    /// Xen detached this ring.
    Detached(EventType, Cause),
}

/// What the loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// OOM requests answered after a raise.
    pub answered: u64,
    /// OOM requests answered at the stop without a raise.
    pub answered_at_exit: u64,
    /// Foreign OOM requests (nothing paused, never answered).
    pub foreign: u64,
    /// Invalidate records.
    pub records: u64,
    /// Invalidate records Xen lost (the ring was full).
    pub lost: u64,
    /// Records whose handle is gone.
    pub handles_gone: u64,
}

/// The end of [`serve`]: one line (`Display`) plus what closing warned of.
#[derive(Debug)]
pub struct Summary {
    /// The domain.
    pub domid: u16,
    /// What the loop did.
    pub counts: Counts,
    /// Why it ended.
    pub ended: Ended,
    /// What failed while closing the rings.
    pub warnings: Vec<Error>,
}

impl Summary {
    /// Success unless someone else took a ring away.
    pub fn success(&self) -> bool {
        matches!(
            self.ended,
            Ended::Stopped | Ended::Detached(_, Cause::DomainGone)
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(f, "d{}: ", self.domid)?;
        match self.ended {
            Ended::Stopped => f.write_str("stopped")?,
            Ended::Detached(_, Cause::DomainGone) => f.write_str("domain destroyed")?,
            Ended::Detached(ty, Cause::TakenOver) => {
                write!(f, "{ty} ring taken over by another consumer")?;
            }
            Ended::Detached(ty, Cause::Unregistered) => {
                write!(f, "{ty} ring unregistered by someone else")?;
            }
        }
        write!(
            f,
            "; SHARING_OOM: {} answered, {} answered at exit, {} foreign; \
             SHARING_INVALIDATE: {} records, {} lost, {} handles gone",
            c.answered, c.answered_at_exit, c.foreign, c.records, c.lost, c.handles_gone
        )
    }
}

/// Serves `oom` and `inval` (rings of the same domain) until `stop` is
/// readable or Xen detaches one of them; `raise` makes room for a request
/// (called again every `tick` while it fails).  Closes both rings.
pub fn serve<B: Backend>(
    oom: SyncRing<B>,
    inval: AsyncRing<B>,
    stop: BorrowedFd<'_>,
    tick: Duration,
    raise: impl FnMut(&SyncRequest) -> Result<(), Error>,
) -> Result<Summary, Error> {
    let domid = oom.ring().domid();
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os_error(domid))?;
    for (fd, key) in [(oom.as_fd(), OOM), (inval.as_fd(), INVAL), (stop, STOP)] {
        let data = epoll::EventData::new_u64(key);
        epoll::add(&epoll, fd, data, epoll::EventFlags::IN).map_err(os_error(domid))?;
    }
    let mut state = Loop {
        oom,
        inval,
        raise,
        counts: Counts::default(),
        epoll,
        events: Vec::with_capacity(3),
        tick,
        next_tick: Instant::now(),
    };
    let ended = loop {
        let stopped = state.turn();
        // A detached ring explains any error, and ends the loop.
        if let Some(end) = detached(state.oom.ring()).or_else(|| detached(state.inval.ring())) {
            break end;
        }
        if stopped? {
            break Ended::Stopped;
        }
    };
    drop(state.epoll);
    let mut warnings = state.oom.close().warnings;
    warnings.extend(state.inval.close().warnings);
    Ok(Summary {
        domid,
        counts: state.counts,
        ended,
        warnings,
    })
}

fn os_error(domid: u16) -> impl Fn(rustix::io::Errno) -> Error {
    move |errno| Error::Os {
        op: Op::Wait,
        domid: Some(domid),
        errno: errno.raw_os_error(),
    }
}

/// The state of [`serve`].
struct Loop<B: Backend, F> {
    oom: SyncRing<B>,
    inval: AsyncRing<B>,
    raise: F,
    counts: Counts,
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
    tick: Duration,
    next_tick: Instant,
}

impl<B: Backend, F: FnMut(&SyncRequest) -> Result<(), Error>> Loop<B, F> {
    /// The tick's work if it is due, one `epoll_wait`, then what it
    /// reported; `true` once the stop came (and the stop's work is done).
    fn turn(&mut self) -> Result<bool, Error> {
        if Instant::now() >= self.next_tick {
            self.next_tick = Instant::now() + self.tick;
            self.answer_pending()?;
            self.take_records()?;
        }
        let left = self.next_tick.saturating_duration_since(Instant::now());
        let timeout = Timespec::try_from(left).ok();
        self.events.clear();
        let buf = spare_capacity(&mut self.events);
        match epoll::wait(&self.epoll, buf, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(os_error(self.oom.ring().domid())(e)),
        }
        // The rings first, then the stop if it came in the same wait.
        let mut keys: Vec<u64> = self.events.iter().map(|e| e.data.u64()).collect();
        keys.sort_unstable();
        for key in keys {
            match key {
                OOM => self.take_requests()?,
                INVAL => self.take_records()?,
                _ => {
                    self.answer_at_exit()?;
                    self.take_records()?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The OOM ring is readable: takes its requests, answers those
    /// `raise` made room for.
    fn take_requests(&mut self) -> Result<(), Error> {
        for req in self.oom.process()? {
            if req.foreign {
                self.counts.foreign += 1;
            } else if let Err(e) = (self.raise)(&req) {
                eprintln!(
                    "d{} vCPU {}: raising the allowance: {e}; tried again every tick",
                    req.domid, req.vcpu_id
                );
            } else {
                self.oom.respond(&req)?;
                self.counts.answered += 1;
            }
        }
        self.oom.flush().map(drop)
    }

    /// The tick: tries `raise` again for the requests still pending.
    fn answer_pending(&mut self) -> Result<(), Error> {
        for p in self.oom.pending() {
            if (self.raise)(&p.request).is_ok() {
                self.oom.respond(&p.request)?;
                self.counts.answered += 1;
            }
        }
        self.oom.flush().map(drop)
    }

    /// The stop: takes the requests there, then answers every vCPU still
    /// paused, without a raise.
    fn answer_at_exit(&mut self) -> Result<(), Error> {
        for req in self.oom.process()? {
            self.counts.foreign += u64::from(req.foreign);
        }
        for p in self.oom.pending() {
            self.oom.respond(&p.request)?;
            self.counts.answered_at_exit += 1;
        }
        self.oom.flush().map(drop)
    }

    /// Takes the records there, then again while more reached the
    /// threshold meanwhile.
    fn take_records(&mut self) -> Result<(), Error> {
        loop {
            let batch = self.inval.process()?;
            self.counts.lost += batch.lost();
            for rec in batch {
                self.counts.records += 1;
                self.counts.handles_gone += u64::from(rec?.handle_gone);
            }
            if !self.inval.rearm()? {
                return Ok(());
            }
        }
    }
}

/// Whether (and why) Xen detached `ring`.
fn detached<B: Backend>(ring: &Ring<B>) -> Option<Ended> {
    ring.is_detached().then(|| {
        let cause = match ring.info() {
            Ok(_) => Cause::TakenOver,
            Err(Error::NotRegistered { .. }) => Cause::Unregistered,
            Err(_) => Cause::DomainGone,
        };
        Ended::Detached(ring.event_type(), cause)
    })
}

/// Opens Xen, registers both rings, serves them until SIGINT/SIGTERM.
fn run(args: Args) -> Result<Summary, Box<dyn std::error::Error>> {
    let xen = XenBackend::open()?;
    let domains = Domains::open()?;
    let (domid, step) = (args.domid, args.step_kib);
    // The self-pipe: the handler writes a byte, epoll sees the read end.
    let (stop_rx, stop_tx) = UnixStream::pair()?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, stop_tx.try_clone()?)?;
    }
    let oom = SyncRing::register(&xen, domid, 1)?;
    let inval = AsyncRing::builder(&xen, domid)
        .frames(4)
        .batch(64)
        .register()?;
    println!(
        "d{domid}: serving SHARING_OOM (+{step} KiB a request), SHARING_INVALIDATE; Ctrl-C stops"
    );
    let raise = |_: &SyncRequest| {
        let max = domains.info(domid)?.max_mem_kib();
        domains.set_max_mem_kib(domid, max.saturating_add(step))
    };
    Ok(serve(oom, inval, stop_rx.as_fd(), TICK, raise)?)
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("epoll: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(summary) => {
            for w in &summary.warnings {
                eprintln!("epoll: closing: {w}");
            }
            println!("{summary}");
            if summary.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("epoll: {e}");
            ExitCode::FAILURE
        }
    }
}
