//! `xen-mem-event`: attach one consumer to one mem-event ring of one domain.
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use xen_mem_event::domain::{DomainWatch, Domains};
use xen_mem_event::{
    AsyncRing, Backend, Error, EventType, RegisterParams, Ring, SyncRing, Teardown, XenBackend,
};
use xen_mem_event_tools::admin::AdminEvent;
use xen_mem_event_tools::cli::{self, Cli, Cmd, FailureArg, PagerArgs, WatchArgs};
use xen_mem_event_tools::domains::XenDomains;
use xen_mem_event_tools::output::{Format, Out};
use xen_mem_event_tools::pager::{
    self, CommandPolicy, Fallback, MaxMemStep, MemControl, OnFailure, PagerEvent, PagerOpts, Policy,
};
use xen_mem_event_tools::stop::Stop;
use xen_mem_event_tools::supervise::{self, SelfSpawn};
use xen_mem_event_tools::{status, watch, ToolError};

fn main() -> ExitCode {
    // A child of `pager --all` / `watch --all` ends with its supervisor.
    if !supervise::follow_parent() {
        return ExitCode::from(1);
    }
    let cli = match cli::parse() {
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
            out.event(&AdminEvent::Registered {
                domid,
                ty,
                port: reg.port,
                frames: reg.nr_frames,
                slots: reg.nr_slots,
                token: reg.token.get(),
            })?;
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
            out.event(&AdminEvent::Unregistered {
                domid,
                ty,
                took_over,
            })?;
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
                out.record(&status::RingRow::from(r))?;
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

/// `pager --all`, `watch --all`: a child process per HVM domain.
fn cmd_all<W: io::Write>(sub: &'static str, out: &mut Out<W>) -> Result<(), ToolError> {
    // The rings' backend first: outside Xen, the usual one line.
    drop(XenBackend::open()?);
    let mut domains = XenDomains::open()?;
    let mut spawner = SelfSpawn {
        program: std::env::current_exe()?.into_os_string(),
        argv: std::env::args_os().collect(),
        sub,
    };
    let stop = Stop::install()?;
    supervise::run(sub, &mut domains, &mut spawner, &stop, out).map(|_| ())
}

fn cmd_pager<W: io::Write>(a: PagerArgs, out: &mut Out<W>) -> Result<(), ToolError> {
    let Some(domain) = a.domain.as_deref() else {
        return cmd_all("pager", out);
    };
    let xen = Arc::new(XenBackend::open()?);
    let stop = Stop::install()?;
    let domid = resolve_or_wait(domain, a.wait, &stop, out)?;
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
    let Some(domain) = a.domain.as_deref() else {
        return cmd_all("watch", out);
    };
    let xen = XenBackend::open()?;
    let stop = Stop::install()?;
    let domid = resolve_or_wait(domain, a.wait, &stop, out)?;
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
    out.event(&watch::WatchEvent::Summary {
        domid,
        ended: why,
        records: s.records,
        batches: s.batches,
        max_batch: s.max_batch,
        lost: s.lost,
        handles_gone: s.handles_gone.len(),
        xen_produced: produced,
        xen_lost: lost_xen,
    })?;
    if let watch::Ended::Detached(d) = ended {
        return Err(ToolError::Other(d.to_string()));
    }
    teardown_result(&teardown)
}

/// `resolve`, and with `wait`, until the domain exists (looked up again
/// whenever the xenstore domain watch fires): a unit started before its
/// guest.
fn resolve_or_wait<W: io::Write>(
    domain: &str,
    wait: bool,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<u16, ToolError> {
    if !wait {
        return resolve(domain);
    }
    let mut watch = DomainWatch::open()?;
    let domains = Domains::open()?;
    let mut said = false;
    // The look-up, then the watch's events since: a domain that appears
    // in between still fires the watch.
    let mut changed = true;
    loop {
        if changed {
            if let Ok(domid) = resolve(domain) {
                if domains.info(domid).is_ok_and(|i| !i.dying) {
                    return Ok(domid);
                }
            }
        }
        if stop.requested() {
            return Err(ToolError::Other(format!(
                "stopped while waiting for domain '{domain}'"
            )));
        }
        if !said {
            out.note(&format!("waiting for domain '{domain}' to appear"))?;
            said = true;
        }
        let mut fds = [rustix::event::PollFd::new(
            &watch,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ToolError::Io(e.into())),
        }
        changed = watch.changes()?.any();
    }
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
