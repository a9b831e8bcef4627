//! `xen-mem-event`: attach one consumer to one mem-event ring of one domain.
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::json;
use xen_mem_event::domain::Domains;
use xen_mem_event::{
    AsyncRing, Backend, Error, EventType, RegisterParams, Ring, SyncRing, Teardown, Token,
    XenBackend,
};
use xen_mem_event_tools::output::{Format, Out};
use xen_mem_event_tools::pager::{
    self, CommandPolicy, Fallback, MaxMemStep, MemControl, OnFailure, PagerEvent, PagerOpts, Policy,
};
use xen_mem_event_tools::stop::Stop;
use xen_mem_event_tools::{secs, status, watch, ToolError};

const EXAMPLES: &str = "\
Examples:
  xen-mem-event status                      rings of every domain
  xen-mem-event status --domain guest1 --json
  xen-mem-event pager --domain 3 --step 4096 --limit 262144
  xen-mem-event pager --domain 3 --exec /usr/local/sbin/free-memory -- --quiet
  xen-mem-event watch --domain 3 --batch 256 --write-handles /run/stale-handles
  xen-mem-event share --all --pages-per-sec 50000 --json
  xen-mem-event unregister --domain 3 --type oom     (recovery: takes over first)
  xen-mem-event unregister --domain 3 --type oom --token 42
  xen-mem-event register --domain 3 --type invalidate --takeover";

/// Per-event-type memory event rings of Xen, from dom0.
///
/// Every event type of a domain has a ring of its own, with its own
/// consumer: the OOM pager and the invalidate watcher are separate
/// processes that never wait on each other.  Needs a hypervisor with the
/// xen-mem-event series, and root in dom0.
#[derive(Debug, Parser)]
#[command(name = "xen-mem-event", version, after_help = EXAMPLES)]
struct Cli {
    /// Print JSON Lines (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the rings registered for one domain or all domains.
    ///
    /// For each ring: type, consumer domain, frames, slots, and the
    /// counters Xen keeps (produced, consumed, lost, bad responses,
    /// notifications, vCPUs paused now) and its state.
    Status {
        /// Domain id or name (default: every domain).
        #[arg(long, short)]
        domain: Option<String>,
    },
    /// Attach to the SHARING_OOM ring and free memory for each event.
    ///
    /// For each OOM event (a vCPU paused because unsharing a page found no
    /// memory) the policy frees memory, then the pager answers, which
    /// wakes the vCPU.  If the policy fails, the request stays pending and
    /// is retried with backoff (the vCPU stays paused, the guest is not
    /// crashed) unless --on-failure says otherwise.  Ctrl-C answers what
    /// is pending, unregisters and exits; a second Ctrl-C exits at once.
    Pager(PagerArgs),
    /// Attach to the SHARING_INVALIDATE ring and report invalidations.
    ///
    /// Consumes records in batches (one notification per --batch records,
    /// at most half the ring: a larger --batch is clamped, and said so),
    /// prints a summary line per interval (or every record with
    /// --records), reports how many records Xen dropped because the ring
    /// was full, and keeps the set of handles seen invalidated.
    Watch(WatchArgs),
    /// Share identical pages of guests (a KSM-style sharing daemon).
    ///
    /// Scans the managed domains' memory through read-only mappings,
    /// shares identical pages within and across domains (nominate, compare
    /// byte for byte, share), and keeps its table fresh by applying each
    /// domain's SHARING_INVALIDATE ring.  Memory sharing is enabled on each
    /// managed domain.  Prints a status line per --interval and a summary;
    /// Ctrl-C unregisters every ring and exits.
    Share(xen_mem_event_tools::share::ShareArgs),
    /// Register a ring and leave it registered (scripts, recovery).
    ///
    /// With --takeover, replace a consumer that is still registered (e.g.
    /// a process that died): the vCPUs it paused are released and their
    /// faults raised again on the new ring.  Prints the owner token, which
    /// `unregister --token` takes.
    Register {
        #[command(flatten)]
        target: Target,
        /// Data frames per array (power of two, 1-64).
        #[arg(long, default_value_t = 1)]
        frames: u32,
        /// Records per notification (invalidate rings only; Xen clamps it
        /// to half the ring and refuses more than the ring).
        #[arg(long)]
        batch: Option<u32>,
        /// Take the ring over from its current consumer.
        #[arg(long)]
        takeover: bool,
    },
    /// Tear a ring down, whoever its consumer (recovery).
    ///
    /// Every vCPU the ring paused is released.  With --token (as printed
    /// by `register`), only that registration is unregistered: if the ring
    /// has since been taken over, nothing is done and the command fails.
    /// Without --token, the ring is first taken over explicitly (its
    /// current consumer, if alive, notices that it was taken over), then
    /// unregistered with the fresh token.
    Unregister {
        #[command(flatten)]
        target: Target,
        /// The owner token of the registration to unregister (from
        /// `register`).
        #[arg(long)]
        token: Option<Token>,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// Domain id or name.
    #[arg(long, short)]
    domain: String,
    /// The ring.
    #[arg(long = "type", short = 't', value_enum)]
    ty: TypeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TypeArg {
    /// SHARING_OOM (synchronous).
    Oom,
    /// SHARING_INVALIDATE (asynchronous).
    Invalidate,
}

impl From<TypeArg> for EventType {
    fn from(t: TypeArg) -> EventType {
        match t {
            TypeArg::Oom => EventType::SharingOom,
            TypeArg::Invalidate => EventType::SharingInvalidate,
        }
    }
}

#[derive(Debug, Args)]
struct PagerArgs {
    /// Domain id or name.
    #[arg(long, short)]
    domain: String,
    /// Raise the domain's allowance by this many KiB per event...
    #[arg(long, default_value_t = 1024, conflicts_with = "exec")]
    step: u64,
    /// ...up to this many KiB (default: the allowance at start + 256 MiB).
    #[arg(long, conflicts_with = "exec")]
    limit: Option<u64>,
    /// Instead, run this command per event (XME_DOMID, XME_VCPU, XME_GFN
    /// and XME_ID in its environment); answer when it succeeds.  Its
    /// arguments follow `--`: `--exec CMD -- ARG...` (they may begin with
    /// a dash).
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Arguments of the --exec command (after `--`).
    #[arg(last = true, value_name = "ARG", requires = "exec")]
    exec_args: Vec<String>,
    /// When memory cannot be freed: keep retrying (the vCPU stays paused),
    /// answer anyway, or crash the domain.
    #[arg(long, value_enum, default_value_t = FailureArg::Retry)]
    on_failure: FailureArg,
    /// Data frames per array of the ring.
    #[arg(long, default_value_t = 1)]
    frames: u32,
    /// Take the ring over from a consumer that is still registered.
    #[arg(long)]
    takeover: bool,
    /// Exit after answering this many events.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Worker threads running the policy: requests are handled
    /// independently, so a slow policy for one vCPU never delays another.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Raise the allowance only while Xen's free memory stays above this
    /// many MiB; below, the request waits (retried with backoff, the vCPU
    /// stays paused), or, with --exec, goes to the command (the allowance
    /// is then raised by the default step and limit first).
    #[arg(long, value_name = "MiB")]
    reserve: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FailureArg {
    Retry,
    Resume,
    Crash,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Domain id or name.
    #[arg(long, short)]
    domain: String,
    /// Records per notification.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Data frames of the ring (power of two, 1-64; 128 records a frame).
    #[arg(long, default_value_t = 4)]
    frames: u32,
    /// Print every record instead of a summary per interval.
    #[arg(long)]
    records: bool,
    /// Seconds between summary lines (and --write-handles updates).
    #[arg(long, default_value = "1", value_parser = secs)]
    interval: Duration,
    /// Keep the handles seen invalidated in this file: rewritten
    /// atomically every interval and at exit.
    #[arg(long, value_name = "FILE")]
    write_handles: Option<PathBuf>,
    /// Exit after this many records.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Exit after this many seconds without records.
    #[arg(long, value_parser = secs)]
    idle_exit: Option<Duration>,
    /// Take the ring over from a consumer that is still registered.
    #[arg(long)]
    takeover: bool,
    /// Consume this many records per second at most (testing slow consumers).
    #[arg(long, hide = true)]
    slow: Option<u64>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse().and_then(validate) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // Library warnings (a failed unregister, a failed final kick) go to
    // stderr, or to the journal with their priority under systemd;
    // RUST_LOG chooses more.
    xen_mem_event_tools::logging::init();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xen-mem-event: {}", explain(&e));
            ExitCode::from(1)
        }
    }
}

/// Usage errors clap cannot express.
fn validate(cli: Cli) -> Result<Cli, clap::Error> {
    if let Cmd::Register {
        target,
        batch: Some(_),
        ..
    } = &cli.cmd
    {
        if matches!(target.ty, TypeArg::Oom) {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--batch applies to invalidate rings only, not --type oom",
            ));
        }
    }
    Ok(cli)
}

fn try_main(cli: Cli) -> Result<(), ToolError> {
    let format = if cli.json {
        Format::Json
    } else {
        Format::Human
    };
    let mut out = Out::new(io::stdout().lock(), format);
    match cli.cmd {
        Cmd::Status { domain } => cmd_status(domain.as_deref(), &mut out),
        Cmd::Pager(a) => cmd_pager(a, &mut out),
        Cmd::Watch(a) => cmd_watch(a, &mut out),
        Cmd::Share(a) => xen_mem_event_tools::share::cmd(a, resolve, &mut out),
        Cmd::Register {
            target,
            frames,
            batch,
            takeover,
        } => {
            let xen = XenBackend::open()?;
            let domid = resolve(&target.domain)?;
            let ty = EventType::from(target.ty);
            let ring = Ring::builder(&xen, domid, ty)
                .frames(frames)
                .batch(batch.unwrap_or(0))
                .takeover(takeover)
                .register()?;
            let reg = ring.registration();
            // Leave it registered.  Our event channel closes when we exit,
            // so the next registration takes the ring over by itself.
            std::mem::forget(ring);
            out.emit(
                &format!(
                    "d{domid} {ty}: registered, port {} frames {} slots {} token {}",
                    reg.port, reg.nr_frames, reg.nr_slots, reg.token
                ),
                json!({"kind": "registered", "domid": domid, "type": ty.to_string(),
                    "port": reg.port,
                       "frames": reg.nr_frames, "slots": reg.nr_slots, "token": reg.token.get()}),
            )?;
            Ok(())
        }
        Cmd::Unregister { target, token } => {
            let xen = XenBackend::open()?;
            let domid = resolve(&target.domain)?;
            let ty = EventType::from(target.ty);
            let (token, took_over) = match token {
                Some(t) => (t, false),
                None => {
                    // Not ours: make it ours first (an explicit takeover),
                    // then unregister with the fresh token.  A ring that
                    // does not exist is reported as such, not created.
                    xen.get_info(domid, ty)?;
                    let reg = xen.register(
                        domid,
                        ty,
                        RegisterParams {
                            frames: 1,
                            batch: 0,
                            takeover: true,
                        },
                    )?;
                    (reg.token, true)
                }
            };
            xen.unregister(domid, ty, token)?;
            out.emit(
                &format!(
                    "d{domid} {ty}: unregistered{}",
                    if took_over { " (taken over first)" } else { "" }
                ),
                json!({"kind": "unregistered", "domid": domid, "type": ty.to_string(),
                    "took_over": took_over}),
            )?;
            Ok(())
        }
    }
}

fn cmd_status<W: io::Write>(domain: Option<&str>, out: &mut Out<W>) -> Result<(), ToolError> {
    let xen = XenBackend::open()?;
    let domids = match domain {
        Some(d) => vec![resolve(d)?],
        // Only HVM domains have rings (dom0, PV, is never one of them).
        None => Domains::open()?
            .list()?
            .into_iter()
            .filter(|d| d.hvm && !d.dying)
            .map(|d| d.domid)
            .collect(),
    };
    let rows = status::collect(&xen, &domids)?;
    match out.format() {
        Format::Human if rows.is_empty() => out.note("no mem_event rings registered")?,
        Format::Human => out.note(status::table(&rows).trim_end())?,
        Format::Json => {
            for r in &rows {
                out.emit("", status::json(r))?;
            }
        }
    }
    Ok(())
}

struct XenMem(Domains);

impl MemControl for XenMem {
    fn max_mem_kib(&self, domid: u16) -> Result<u64, String> {
        self.0
            .info(domid)
            .map(|i| i.max_mem_kib())
            .map_err(|e| e.to_string())
    }
    fn set_max_mem_kib(&self, domid: u16, kib: u64) -> Result<(), String> {
        self.0
            .set_max_mem_kib(domid, kib)
            .map_err(|e| e.to_string())
    }
    fn crash(&self, domid: u16) -> Result<(), String> {
        self.0.crash(domid).map_err(|e| e.to_string())
    }
    fn host_free_kib(&self) -> Result<u64, String> {
        self.0.host_free_kib().map_err(|e| e.to_string())
    }
}

fn cmd_pager<W: io::Write>(a: PagerArgs, out: &mut Out<W>) -> Result<(), ToolError> {
    let xen = Arc::new(XenBackend::open()?);
    let domid = resolve(&a.domain)?;
    let mem = XenMem(Domains::open()?);
    let command = a
        .exec
        .map(|prog| CommandPolicy::new(std::iter::once(prog).chain(a.exec_args).collect()));
    let policy: Arc<dyn Policy> = match (command, a.reserve) {
        (Some(cmd), None) => Arc::new(cmd),
        (command, reserve) => {
            let start = mem.max_mem_kib(domid).map_err(ToolError::Other)?;
            let limit = a.limit.unwrap_or(start + 256 * 1024);
            let step = MaxMemStep::new(XenMem(Domains::open()?), a.step, limit)
                .reserve(reserve.unwrap_or(0).saturating_mul(1024));
            match command {
                Some(cmd) => Arc::new(Fallback(step, cmd)),
                None => Arc::new(step),
            }
        }
    };
    let stop = Stop::install()?;
    let mut ring = SyncRing::builder(Arc::clone(&xen), domid)
        .frames(a.frames)
        .takeover(a.takeover)
        .register()?;
    let opts = PagerOpts {
        on_failure: match a.on_failure {
            FailureArg::Retry => OnFailure::Retry,
            FailureArg::Resume => OnFailure::Resume,
            FailureArg::Crash => OnFailure::Crash,
        },
        max_events: a.count,
        workers: a.workers.into(),
        ..PagerOpts::default()
    };
    if out.format() == Format::Human {
        out.event(&PagerEvent::Attached {
            domid,
            slots: ring.ring().nr_slots(),
            workers: opts.workers,
        })?;
    }
    let (ended, s) = pager::run(&mut ring, policy, &mem, &opts, &stop, out)?;
    let teardown = ring.close();
    out.event(&s.event(domid, &ended))?;
    if let pager::Ended::Detached(d) = ended {
        return Err(ToolError::Other(d.to_string()));
    }
    teardown_result(&teardown)
}

/// A teardown that logged warnings (a failed unregister, a failed final
/// kick) fails the tool.
fn teardown_result(t: &Teardown) -> Result<(), ToolError> {
    match t.warnings.len() {
        0 => Ok(()),
        n => Err(ToolError::Other(format!(
            "{n} failure(s) while detaching from the ring (see the warnings above)"
        ))),
    }
}

fn cmd_watch<W: io::Write>(a: WatchArgs, out: &mut Out<W>) -> Result<(), ToolError> {
    if a.interval.is_zero() {
        return Err(ToolError::Other(
            "--interval must be a positive number of seconds".into(),
        ));
    }
    let xen = XenBackend::open()?;
    let domid = resolve(&a.domain)?;
    let stop = Stop::install()?;
    let mut ring = AsyncRing::builder(&xen, domid)
        .frames(a.frames)
        .batch(a.batch)
        .takeover(a.takeover)
        .register()?;
    let opts = watch::WatchOpts {
        batch: a.batch,
        records: a.records,
        interval: a.interval,
        max_records: a.count,
        idle_exit: a.idle_exit.unwrap_or(Duration::ZERO),
        slow: a.slow,
        write_handles: a.write_handles,
    };
    let (ended, s) = watch::run(&mut ring, &opts, &stop, out)?;
    // Once detached, GET_INFO describes someone else's ring (or none).
    let info = if ring.ring().is_detached() {
        None
    } else {
        ring.ring().info().ok()
    };
    let teardown = ring.close();
    let why = ended.as_str();
    let (produced, lost_xen) = info.map_or((0, 0), |i| (i.produced, i.lost));
    out.emit(
        &format!(
            "d{domid} watcher {why}: {} records in {} batches (largest {}), {} lost, {} handles \
                gone; Xen: {} produced, {} lost",
            s.records,
            s.batches,
            s.max_batch,
            s.lost,
            s.handles_gone.len(),
            produced,
            lost_xen
        ),
        json!({"kind": "summary", "domid": domid, "ended": why, "records": s.records,
            "batches": s.batches,
               "max_batch": s.max_batch, "lost": s.lost, "handles_gone": s.handles_gone.len(),
               "xen_produced": produced, "xen_lost": lost_xen}),
    )?;
    if let watch::Ended::Detached(d) = ended {
        return Err(ToolError::Other(d.to_string()));
    }
    teardown_result(&teardown)
}

/// A domain id, or a name looked up with `xl domid`.
fn resolve(domain: &str) -> Result<u16, ToolError> {
    if let Ok(id) = domain.parse::<u16>() {
        return Ok(id);
    }
    let out = std::process::Command::new("xl")
        .args(["domid", domain])
        .output()
        .map_err(|e| ToolError::Other(format!("looking up domain '{domain}' with xl: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|_| out.status.success())
        .ok_or_else(|| ToolError::Other(format!("unknown domain '{domain}'")))
}

/// One line for the user, for the errors they will actually meet.
fn explain(e: &ToolError) -> String {
    match e {
        ToolError::Xen(Error::NotXen { .. }) => {
            "not running in a Xen dom0 (no /dev/xen/privcmd): nothing to attach to".into()
        }
        ToolError::Xen(Error::DomctlMissing { .. }) => {
            "the hypervisor does not have XEN_DOMCTL_mem_event_ring: boot a Xen with the \
                xen-mem-event series"
                .into()
        }
        ToolError::Xen(e @ Error::Busy { .. }) => {
            format!("{e} (use --takeover if that consumer died)")
        }
        e => e.to_string(),
    }
}
