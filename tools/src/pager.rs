//! The OOM pager: attaches to a domain's `SHARING_OOM` ring, frees memory
//! for each request by a policy, then answers, which wakes the vCPU.

use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use xen_mem_event::{Backend, Error, SyncRequest, SyncRing};

use crate::ToolError;

use crate::detach::{self, Detached};
use crate::output::Out;
use crate::stop::Stop;

/// What the memory policies need from Xen (behind a trait for tests).
pub trait MemControl {
    /// The domain's memory allowance (max_pages) in KiB.
    fn max_mem_kib(&self, domid: u16) -> Result<u64, String>;
    /// Set the domain's memory allowance in KiB.
    fn set_max_mem_kib(&self, domid: u16, kib: u64) -> Result<(), String>;
    /// Crash the domain (`--on-failure crash`).
    fn crash(&self, domid: u16) -> Result<(), String>;
}

/// How memory is freed for a request.
pub trait Policy {
    /// Free memory for `req`; `Ok` describes what was done, `Err` why not.
    fn free(&mut self, req: &SyncRequest) -> Result<String, String>;
}

/// Raise the domain's allowance by `step_kib`, up to `limit_kib`.
#[derive(Debug)]
pub struct MaxMemStep<M> {
    mem: M,
    step_kib: u64,
    limit_kib: u64,
}

impl<M: MemControl> MaxMemStep<M> {
    /// A policy raising the allowance by `step_kib` up to `limit_kib`.
    pub fn new(mem: M, step_kib: u64, limit_kib: u64) -> Self {
        MaxMemStep {
            mem,
            step_kib,
            limit_kib,
        }
    }
}

impl<M: MemControl> Policy for MaxMemStep<M> {
    fn free(&mut self, req: &SyncRequest) -> Result<String, String> {
        let cur = self.mem.max_mem_kib(req.domid)?;
        if cur >= self.limit_kib {
            return Err(format!(
                "allowance {cur} KiB is at the limit {} KiB",
                self.limit_kib
            ));
        }
        let new = cur.saturating_add(self.step_kib).min(self.limit_kib);
        self.mem.set_max_mem_kib(req.domid, new)?;
        Ok(format!("maxmem {cur} -> {new} KiB"))
    }
}

/// Run a command with the event in its environment; success frees memory.
#[derive(Debug)]
pub struct CommandPolicy {
    argv: Vec<String>,
}

impl CommandPolicy {
    /// `argv[0]` with `argv[1..]`, run for each request.
    pub fn new(argv: Vec<String>) -> Self {
        CommandPolicy { argv }
    }
}

impl Policy for CommandPolicy {
    fn free(&mut self, req: &SyncRequest) -> Result<String, String> {
        let (prog, args) = self.argv.split_first().ok_or("empty command")?;
        let status = Command::new(prog)
            .args(args)
            .env("XME_DOMID", req.domid.to_string())
            .env("XME_VCPU", req.vcpu_id.to_string())
            .env("XME_GFN", format!("{:#x}", req.gfn))
            .env("XME_ID", format!("{:#x}", req.id))
            .status()
            .map_err(|e| format!("{prog}: {e}"))?;
        if status.success() {
            Ok(format!("{prog} succeeded"))
        } else {
            Err(format!("{prog} failed ({status})"))
        }
    }
}

/// What to do when the policy cannot free memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Keep the request pending (the vCPU stays paused) and retry with
    /// exponential backoff.
    Retry,
    /// Answer anyway: the vCPU retries its access, which will likely raise
    /// a new event.
    Resume,
    /// Crash the domain.
    Crash,
}

/// Pager settings.
#[derive(Debug, Clone)]
pub struct PagerOpts {
    /// On policy failure.
    pub on_failure: OnFailure,
    /// First retry delay.
    pub backoff: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long to wait for events before checking the stop flag and the
    /// domain.
    pub poll: Duration,
    /// Stop after this many answered requests (0: never).
    pub max_events: u64,
}

impl Default for PagerOpts {
    fn default() -> Self {
        PagerOpts {
            on_failure: OnFailure::Retry,
            backoff: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            poll: Duration::from_millis(200),
            max_events: 0,
        }
    }
}

/// Why the pager stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Ctrl-C (or the stop flag).
    Stopped,
    /// `max_events` answered.
    Done,
    /// The domain went away.
    DomainGone,
    /// `--on-failure crash` crashed the domain.
    Crashed,
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
            Ended::Crashed => "domain crashed",
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

/// What the pager did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Requests taken (foreign included).
    pub events: u64,
    /// Requests answered after the policy freed memory.
    pub answered: u64,
    /// Foreign requests (nothing paused, nothing to answer; the policy ran
    /// once for each).
    pub foreign: u64,
    /// Policy failures.
    pub failures: u64,
    /// Requests answered without memory (`--on-failure resume`).
    pub resumed: u64,
    /// Requests answered at exit, without memory.
    pub released_at_exit: u64,
    /// Longest time a request stayed pending.
    pub max_wait: Duration,
}

struct Retry {
    attempts: u32,
    next: Instant,
}

/// Serve `ring` until stopped.  Returns why it ended, with the summary.
pub fn run<B: Backend, W: Write>(
    ring: &mut SyncRing<B>,
    policy: &mut dyn Policy,
    mem: &dyn MemControl,
    opts: &PagerOpts,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<(Ended, Summary), ToolError> {
    let mut sum = Summary::default();
    let ended = match serve(ring, policy, mem, opts, stop, out, &mut sum) {
        Ok(ended) => ended,
        Err(e) => {
            let d = detach::after_error(ring.ring(), e)?;
            out.event(&d)?;
            d.into()
        }
    };

    // Detach: release every vCPU still waiting on us.
    if matches!(ended, Ended::Stopped | Ended::Done) {
        let pending: Vec<SyncRequest> = ring.pending().map(|p| p.request).collect();
        for req in pending {
            answer(ring, &req)?;
            sum.released_at_exit += 1;
        }
        ring.flush()?;
    }
    Ok((ended, sum))
}

fn serve<B: Backend, W: Write>(
    ring: &mut SyncRing<B>,
    policy: &mut dyn Policy,
    mem: &dyn MemControl,
    opts: &PagerOpts,
    stop: &Stop,
    out: &mut Out<W>,
    sum: &mut Summary,
) -> Result<Ended, ToolError> {
    let domid = ring.ring().domid();
    let mut retry: HashMap<u32, Retry> = HashMap::new();
    let mut last_check = Instant::now();

    loop {
        if stop.requested() {
            return Ok(Ended::Stopped);
        }
        if let Some(d) = detach::check(ring.ring()) {
            out.event(&d)?;
            return Ok(d.into());
        }
        if opts.max_events != 0 && sum.answered + sum.resumed >= opts.max_events {
            return Ok(Ended::Done);
        }
        // Sleep until an event, the next retry, or the poll interval.
        let now = Instant::now();
        let until_retry = retry
            .values()
            .map(|r| r.next.saturating_duration_since(now))
            .min();
        let timeout = until_retry.map_or(opts.poll, |d| d.min(opts.poll));
        ring.wait(Some(timeout))?;

        for req in ring.take_requests()? {
            sum.events += 1;
            if req.foreign {
                // Nothing waits for an answer (there is none to give): the
                // foreign access failed with ENOMEM and its caller retries
                // by itself.  Free memory once so that the retry can work.
                sum.foreign += 1;
                let freed = policy.free(&req);
                if freed.is_err() {
                    sum.failures += 1;
                }
                let (what, action, error) = match &freed {
                    Ok(a) => (a.clone(), Some(a.as_str()), None),
                    Err(e) => (
                        format!("could not free memory: {e}"),
                        None,
                        Some(e.as_str()),
                    ),
                };
                out.emit(
                    &format!(
                        "d{} foreign access to gfn {:#x} (from a vcpu {} of another domain): no memory, not paused; {what}",
                        req.domid, req.gfn, req.vcpu_id
                    ),
                    json!({"kind": "foreign", "domid": req.domid, "vcpu": req.vcpu_id, "gfn": req.gfn,
                           "action": action, "error": error}),
                )?;
                continue;
            }
            retry.insert(
                req.vcpu_id,
                Retry {
                    attempts: 0,
                    next: Instant::now(),
                },
            );
        }

        let now = Instant::now();
        let due: Vec<(SyncRequest, Duration)> = ring
            .pending()
            .filter(|p| {
                retry
                    .get(&p.request.vcpu_id)
                    .map_or(true, |r| r.next <= now)
            })
            .map(|p| (p.request, p.age()))
            .collect();
        for (req, _) in due {
            match policy.free(&req) {
                Ok(action) => {
                    let waited = answer(ring, &req)?;
                    retry.remove(&req.vcpu_id);
                    sum.answered += 1;
                    sum.max_wait = sum.max_wait.max(waited);
                    out.emit(
                        &format!(
                            "d{} vcpu {} gfn {:#x}: paused {:.1} ms, {action}, answered",
                            req.domid,
                            req.vcpu_id,
                            req.gfn,
                            ms(waited)
                        ),
                        json!({"kind": "oom", "domid": req.domid, "vcpu": req.vcpu_id, "gfn": req.gfn,
                               "id": req.id, "paused_ms": ms(waited), "action": action, "answered": true}),
                    )
                    ?;
                }
                Err(why) => {
                    sum.failures += 1;
                    match opts.on_failure {
                        OnFailure::Retry => {
                            let r = retry.entry(req.vcpu_id).or_insert(Retry {
                                attempts: 0,
                                next: now,
                            });
                            r.attempts = r.attempts.saturating_add(1);
                            let delay = backoff(opts, r.attempts);
                            r.next = Instant::now() + delay;
                            out.emit(
                                &format!(
                                    "d{} vcpu {} gfn {:#x}: cannot free memory ({why}); vCPU stays paused, retry {} in {} ms",
                                    req.domid,
                                    req.vcpu_id,
                                    req.gfn,
                                    r.attempts,
                                    delay.as_millis()
                                ),
                                json!({"kind": "retry", "domid": req.domid, "vcpu": req.vcpu_id, "gfn": req.gfn,
                                       "error": why, "attempt": r.attempts, "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)}),
                            )
                            ?;
                        }
                        OnFailure::Resume => {
                            let waited = answer(ring, &req)?;
                            retry.remove(&req.vcpu_id);
                            sum.resumed += 1;
                            out.emit(
                                &format!(
                                    "d{} vcpu {} gfn {:#x}: cannot free memory ({why}); answered anyway after {:.1} ms",
                                    req.domid,
                                    req.vcpu_id,
                                    req.gfn,
                                    ms(waited)
                                ),
                                json!({"kind": "oom", "domid": req.domid, "vcpu": req.vcpu_id, "gfn": req.gfn,
                                       "id": req.id, "paused_ms": ms(waited), "error": why, "answered": true}),
                            )
                            ?;
                        }
                        OnFailure::Crash => {
                            let res = mem.crash(domid);
                            out.emit(
                                &format!("d{domid}: cannot free memory ({why}); crashing the domain: {}", ok_or(&res)),
                                json!({"kind": "crash", "domid": domid, "error": why, "result": ok_or(&res)}),
                            )
                            ?;
                            ring.flush()?;
                            return Ok(Ended::Crashed);
                        }
                    }
                }
            }
        }
        ring.flush()?;

        // Notice the domain going away (GET_INFO fails once it is dying),
        // should Xen not have detached the ring.
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            match ring.ring().info() {
                Err(Error::NoSuchDomain { .. }) => return Ok(Ended::DomainGone),
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
    }
}

fn answer<B: Backend>(ring: &mut SyncRing<B>, req: &SyncRequest) -> Result<Duration, Error> {
    let waited = ring
        .pending_for(req.vcpu_id)
        .map_or(Duration::ZERO, |p| p.age());
    ring.respond(req)?;
    Ok(waited)
}

fn backoff(opts: &PagerOpts, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(16))
        .unwrap_or(u32::MAX);
    opts.backoff.saturating_mul(factor).min(opts.backoff_max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ok_or(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.clone(),
    }
}
