//! The OOM pager: attaches to a domain's `SHARING_OOM` ring, frees memory
//! for each request by a policy, then answers, which wakes the vCPU.
//!
//! Policies run on a bounded pool of worker threads, each request on its
//! own: a slow or failing policy for one vCPU never delays the answer to
//! another.  A worker whose policy freed memory answers at once, from its
//! thread (a [`Responder`]); the ring loop takes requests, schedules
//! retries, reports, and answers what a failure leaves to it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use xen_mem_event::{Backend, Error, Responder, SyncRequest, SyncRing};

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
    /// The host's free memory in KiB (Xen's `xc_physinfo`).
    fn host_free_kib(&self) -> Result<u64, String>;
}

impl<T: MemControl + ?Sized> MemControl for Arc<T> {
    fn max_mem_kib(&self, domid: u16) -> Result<u64, String> {
        (**self).max_mem_kib(domid)
    }
    fn set_max_mem_kib(&self, domid: u16, kib: u64) -> Result<(), String> {
        (**self).set_max_mem_kib(domid, kib)
    }
    fn crash(&self, domid: u16) -> Result<(), String> {
        (**self).crash(domid)
    }
    fn host_free_kib(&self) -> Result<u64, String> {
        (**self).host_free_kib()
    }
}

/// How memory is freed for a request.  Called from worker threads, for
/// several requests at once.
pub trait Policy: Send + Sync {
    /// Free memory for `req`; `Ok` describes what was done, `Err` why not.
    fn free(&self, req: &SyncRequest) -> Result<String, String>;
}

/// Raise the domain's allowance by `step_kib`, up to `limit_kib`, and only
/// while the host keeps `reserve_kib` free.
#[derive(Debug)]
pub struct MaxMemStep<M> {
    /// One raise at a time (read, then set, the allowance).
    mem: Mutex<M>,
    step_kib: u64,
    limit_kib: u64,
    reserve_kib: u64,
}

impl<M: MemControl + Send> MaxMemStep<M> {
    /// A policy raising the allowance by `step_kib` up to `limit_kib`.
    pub fn new(mem: M, step_kib: u64, limit_kib: u64) -> Self {
        MaxMemStep {
            mem: Mutex::new(mem),
            step_kib,
            limit_kib,
            reserve_kib: 0,
        }
    }

    /// Raise only while Xen's free memory stays at least `reserve_kib`
    /// after the step (`--reserve`); below, the request fails (and is
    /// retried with backoff, or goes to the fallback policy).
    pub fn reserve(mut self, reserve_kib: u64) -> Self {
        self.reserve_kib = reserve_kib;
        self
    }
}

impl<M: MemControl + Send> Policy for MaxMemStep<M> {
    fn free(&self, req: &SyncRequest) -> Result<String, String> {
        let mem = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        let cur = mem.max_mem_kib(req.domid)?;
        if cur >= self.limit_kib {
            return Err(format!(
                "allowance {cur} KiB is at the limit {} KiB",
                self.limit_kib
            ));
        }
        let new = cur.saturating_add(self.step_kib).min(self.limit_kib);
        if self.reserve_kib > 0 {
            let free = mem.host_free_kib()?;
            if free < self.reserve_kib.saturating_add(new - cur) {
                return Err(format!(
                    "host free memory {free} KiB would drop below the reserve {} KiB",
                    self.reserve_kib
                ));
            }
        }
        mem.set_max_mem_kib(req.domid, new)?;
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
    fn free(&self, req: &SyncRequest) -> Result<String, String> {
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

/// The first policy, then the second when the first fails (`--reserve`
/// with `--exec`: raise the allowance while the host has memory to spare,
/// else run the command).
#[derive(Debug)]
pub struct Fallback<A, B>(pub A, pub B);

impl<A: Policy, B: Policy> Policy for Fallback<A, B> {
    fn free(&self, req: &SyncRequest) -> Result<String, String> {
        self.0
            .free(req)
            .or_else(|first| self.1.free(req).map_err(|e| format!("{first}; {e}")))
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
    /// Worker threads running policies (at least 1; 1: one policy at a
    /// time, in order).
    pub workers: usize,
    /// On stop, how long to wait for running policies before answering
    /// what is pending.
    pub stop_wait: Duration,
}

impl Default for PagerOpts {
    fn default() -> Self {
        PagerOpts {
            on_failure: OnFailure::Retry,
            backoff: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            poll: Duration::from_millis(200),
            max_events: 0,
            workers: 4,
            stop_wait: Duration::from_secs(5),
        }
    }
}

/// One thing the pager reports: a line of text (`Display`) or a JSON
/// object with a `"kind"` tag (serde).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PagerEvent {
    /// The ring is attached.
    Attached {
        /// The domain.
        domid: u16,
        /// Slots of the ring.
        slots: u32,
        /// Worker threads.
        workers: usize,
    },
    /// A paused vCPU's request was answered.
    Oom {
        /// The domain.
        domid: u16,
        /// The vCPU.
        vcpu: u32,
        /// The gfn.
        gfn: u64,
        /// The request id.
        id: u64,
        /// From taking the request to the answer.
        paused_ms: f64,
        /// What the policy did (none: answered without memory).
        action: Option<String>,
        /// Why the policy failed (answered anyway).
        error: Option<String>,
        /// Always true (the vCPU runs again).
        answered: bool,
    },
    /// A foreign access hit the failure: nothing paused, nothing answered.
    Foreign {
        /// The domain.
        domid: u16,
        /// The other domain's vCPU.
        vcpu: u32,
        /// The gfn.
        gfn: u64,
        /// What the policy did.
        action: Option<String>,
        /// Why it failed.
        error: Option<String>,
    },
    /// The policy failed; the vCPU stays paused until a retry succeeds.
    Retry {
        /// The domain.
        domid: u16,
        /// The vCPU.
        vcpu: u32,
        /// The gfn.
        gfn: u64,
        /// Why.
        error: String,
        /// Failures so far for this request.
        attempt: u32,
        /// Until the next attempt.
        delay_ms: u64,
    },
    /// `--on-failure crash`.
    Crash {
        /// The domain.
        domid: u16,
        /// Why the policy failed.
        error: String,
        /// What crashing it did ("ok" or the error).
        result: String,
    },
    /// Answering failed (the ring went away under a worker).
    AnswerFailed {
        /// The domain.
        domid: u16,
        /// The vCPU.
        vcpu: u32,
        /// The error.
        error: String,
    },
    /// The pager's last line.
    Summary {
        /// The domain.
        domid: u16,
        /// Why it ended.
        ended: &'static str,
        /// Requests taken.
        events: u64,
        /// Answered after the policy freed memory.
        answered: u64,
        /// Foreign requests.
        foreign: u64,
        /// Policy failures.
        failures: u64,
        /// Answered without memory.
        resumed: u64,
        /// Answered at exit.
        released_at_exit: u64,
        /// Longest pause.
        max_pause_ms: f64,
    },
}

impl fmt::Display for PagerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagerEvent::Attached {
                domid,
                slots,
                workers,
            } => write!(
                f,
                "d{domid} SHARING_OOM: attached ({slots} slots, {workers} workers); Ctrl-C to \
                    detach"
            ),
            PagerEvent::Oom {
                domid,
                vcpu,
                gfn,
                paused_ms,
                action,
                error,
                ..
            } => {
                write!(f, "d{domid} vcpu {vcpu} gfn {gfn:#x}: ")?;
                match (action, error) {
                    (Some(a), _) => write!(f, "paused {paused_ms:.1} ms, {a}, answered"),
                    (None, Some(e)) => write!(
                        f,
                        "cannot free memory ({e}); answered anyway after {paused_ms:.1} ms"
                    ),
                    (None, None) => write!(f, "paused {paused_ms:.1} ms, answered"),
                }
            }
            PagerEvent::Foreign {
                domid,
                vcpu,
                gfn,
                action,
                error,
            } => {
                write!(
                    f,
                    "d{domid} foreign access to gfn {gfn:#x} (from a vcpu {vcpu} of another \
                        domain): no memory, not paused; "
                )?;
                match (action, error) {
                    (Some(a), _) => f.write_str(a),
                    (None, e) => {
                        write!(f, "could not free memory: {}", e.as_deref().unwrap_or("?"))
                    }
                }
            }
            PagerEvent::Retry {
                domid,
                vcpu,
                gfn,
                error,
                attempt,
                delay_ms,
            } => write!(
                f,
                "d{domid} vcpu {vcpu} gfn {gfn:#x}: cannot free memory ({error}); vCPU stays \
                    paused, retry {attempt} in {delay_ms} ms"
            ),
            PagerEvent::Crash {
                domid,
                error,
                result,
            } => write!(
                f,
                "d{domid}: cannot free memory ({error}); crashing the domain: {result}"
            ),
            PagerEvent::AnswerFailed { domid, vcpu, error } => {
                write!(f, "d{domid} vcpu {vcpu}: answering failed: {error}")
            }
            PagerEvent::Summary {
                domid,
                ended,
                events,
                answered,
                foreign,
                failures,
                resumed,
                released_at_exit,
                max_pause_ms,
            } => write!(
                f,
                "d{domid} pager {ended}: {events} events, {answered} answered, {foreign} foreign, \
                    {failures} policy failures, {resumed} answered without memory, \
                    {released_at_exit} released at exit, longest pause {max_pause_ms:.1} ms"
            ),
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

impl Summary {
    /// The summary line.
    pub fn event(&self, domid: u16, ended: &Ended) -> PagerEvent {
        PagerEvent::Summary {
            domid,
            ended: ended.as_str(),
            events: self.events,
            answered: self.answered,
            foreign: self.foreign,
            failures: self.failures,
            resumed: self.resumed,
            released_at_exit: self.released_at_exit,
            max_pause_ms: ms(self.max_wait),
        }
    }
}

struct Retry {
    attempts: u32,
    next: Instant,
}

/// A request for a worker.
struct Job {
    req: SyncRequest,
    taken_at: Instant,
}

/// What a worker did.
enum Done {
    /// The policy freed memory; the worker answered (or failed to).
    Freed {
        req: SyncRequest,
        action: String,
        answered: Result<Duration, Error>,
    },
    /// The policy failed; the request is still pending.
    Failed { req: SyncRequest, why: String },
}

/// The worker threads.  Dropping it closes the queue: each worker exits
/// after its current policy (none is joined: a stuck policy must not hold
/// the pager's exit).
struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// Ids of the requests queued or running (a vCPU answered by a worker
    /// may fault again before the ring loop hears of the answer).
    in_flight: HashSet<u64>,
    /// Jobs queued or running (foreign ones included).
    running: usize,
}

impl Pool {
    fn start<B: Backend + 'static>(
        n: usize,
        policy: &Arc<dyn Policy>,
        responder: &Responder<B>,
    ) -> Result<Pool, ToolError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..n.max(1) {
            let jobs = Arc::clone(&jobs_rx);
            let done = done_tx.clone();
            let policy = Arc::clone(policy);
            let responder = responder.clone();
            thread::Builder::new()
                .name(format!("pager-worker-{i}"))
                .spawn(move || worker(&jobs, &done, &*policy, &responder))
                .map_err(ToolError::Io)?;
        }
        Ok(Pool {
            jobs: Some(jobs_tx),
            done: done_rx,
            in_flight: HashSet::new(),
            running: 0,
        })
    }

    /// Queues `req` unless it is queued or running already.
    fn submit(&mut self, req: SyncRequest, taken_at: Instant) {
        // Foreign requests have no vCPU of ours: never deduplicated.
        if !req.foreign && !self.in_flight.insert(req.id) {
            return;
        }
        if let Some(jobs) = &self.jobs {
            // Fails only once every worker is gone (they never exit while
            // the queue is open).
            if jobs.send(Job { req, taken_at }).is_ok() {
                self.running += 1;
            }
        }
    }

    fn finished(&mut self, d: &Done) {
        let req = match d {
            Done::Freed { req, .. } | Done::Failed { req, .. } => req,
        };
        if !req.foreign {
            self.in_flight.remove(&req.id);
        }
        self.running = self.running.saturating_sub(1);
    }
}

fn worker<B: Backend>(
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    policy: &dyn Policy,
    responder: &Responder<B>,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job { req, taken_at }) = job else {
            return;
        };
        let d = match policy.free(&req) {
            Ok(action) => {
                // Answer now, from here: nobody else waits for this.
                let answered = responder.respond(&req).map(|()| taken_at.elapsed());
                Done::Freed {
                    req,
                    action,
                    answered,
                }
            }
            Err(why) => Done::Failed { req, why },
        };
        if done.send(d).is_err() {
            return;
        }
        // The ring loop reports, schedules retries and counts.
        responder.wake();
    }
}

/// Serve `ring` until stopped.  Returns why it ended, with the summary.
pub fn run<B: Backend + 'static, W: Write>(
    ring: &mut SyncRing<B>,
    policy: Arc<dyn Policy>,
    mem: &dyn MemControl,
    opts: &PagerOpts,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<(Ended, Summary), ToolError> {
    let mut sum = Summary::default();
    let mut pool = Pool::start(opts.workers, &policy, &ring.responder())?;
    let mut retry: HashMap<u32, Retry> = HashMap::new();
    let ended = match serve(ring, &mut pool, &mut retry, mem, opts, stop, out, &mut sum) {
        Ok(ended) => ended,
        Err(e) => {
            let d = detach::after_error(ring.ring(), e)?;
            out.event(&d)?;
            d.into()
        }
    };

    // Detach: wait (a bounded time) for the policies running, then release
    // every vCPU still waiting on us.
    if matches!(ended, Ended::Stopped | Ended::Done) {
        pool.jobs = None;
        let until = Instant::now() + opts.stop_wait;
        while pool.running > 0 {
            let left = until.saturating_duration_since(Instant::now());
            match pool.done.recv_timeout(left) {
                Ok(d) => {
                    pool.finished(&d);
                    // A failure now is not retried: answered below.
                    if let Done::Freed { .. } = d {
                        report(ring, &mut retry, d, mem, opts, out, &mut sum)?;
                    } else {
                        sum.failures += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let pending: Vec<SyncRequest> = ring.pending().map(|p| p.request).collect();
        for req in pending {
            match ring.respond(&req) {
                Ok(()) => sum.released_at_exit += 1,
                // A late worker answered it meanwhile.
                Err(Error::UnknownRequest { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        ring.flush()?;
    }
    Ok((ended, sum))
}

#[allow(clippy::too_many_arguments)]
fn serve<B: Backend, W: Write>(
    ring: &mut SyncRing<B>,
    pool: &mut Pool,
    retry: &mut HashMap<u32, Retry>,
    mem: &dyn MemControl,
    opts: &PagerOpts,
    stop: &Stop,
    out: &mut Out<W>,
    sum: &mut Summary,
) -> Result<Ended, ToolError> {
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
        // Sleep until an event, a worker's result, the next retry, or the
        // poll interval.
        let now = Instant::now();
        let until_retry = retry
            .values()
            .map(|r| r.next.saturating_duration_since(now))
            .min();
        let timeout = until_retry.map_or(opts.poll, |d| d.min(opts.poll));
        ring.wait(Some(timeout))?;

        let taken_at = Instant::now();
        for req in ring.take_requests()? {
            sum.events += 1;
            if req.foreign {
                // Nothing waits for an answer (there is none to give): the
                // foreign access failed with ENOMEM and its caller retries
                // by itself.  Free memory once so that the retry can work.
                sum.foreign += 1;
            }
            pool.submit(req, taken_at);
        }

        while let Ok(d) = pool.done.try_recv() {
            pool.finished(&d);
            if let Some(ended) = report(ring, retry, d, mem, opts, out, sum)? {
                return Ok(ended);
            }
        }

        // Retries that are due, for requests still pending.
        let now = Instant::now();
        let due: Vec<u32> = retry
            .iter()
            .filter(|(_, r)| r.next <= now)
            .map(|(&v, _)| v)
            .collect();
        for v in due {
            match ring.pending_for(v) {
                Some(p) => pool.submit(p.request, p.taken_at),
                None => {
                    retry.remove(&v);
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

/// Reports a worker's result; schedules a retry or answers as the failure
/// mode says.  `Some` ends the pager (the domain crashed).
#[allow(clippy::too_many_arguments)]
fn report<B: Backend, W: Write>(
    ring: &mut SyncRing<B>,
    retry: &mut HashMap<u32, Retry>,
    d: Done,
    mem: &dyn MemControl,
    opts: &PagerOpts,
    out: &mut Out<W>,
    sum: &mut Summary,
) -> Result<Option<Ended>, ToolError> {
    match d {
        Done::Freed { req, action, .. } if req.foreign => {
            out.event(&PagerEvent::Foreign {
                domid: req.domid,
                vcpu: req.vcpu_id,
                gfn: req.gfn,
                action: Some(action),
                error: None,
            })?;
        }
        Done::Failed { req, why } if req.foreign => {
            sum.failures += 1;
            out.event(&PagerEvent::Foreign {
                domid: req.domid,
                vcpu: req.vcpu_id,
                gfn: req.gfn,
                action: None,
                error: Some(why),
            })?;
        }
        Done::Freed {
            req,
            action,
            answered,
        } => {
            retry.remove(&req.vcpu_id);
            match answered {
                Ok(waited) => {
                    sum.answered += 1;
                    sum.max_wait = sum.max_wait.max(waited);
                    out.event(&PagerEvent::Oom {
                        domid: req.domid,
                        vcpu: req.vcpu_id,
                        gfn: req.gfn,
                        id: req.id,
                        paused_ms: ms(waited),
                        action: Some(action),
                        error: None,
                        answered: true,
                    })?;
                }
                Err(e) if e.is_broken() => return Err(e.into()),
                Err(e) => out.event(&PagerEvent::AnswerFailed {
                    domid: req.domid,
                    vcpu: req.vcpu_id,
                    error: e.to_string(),
                })?,
            }
        }
        Done::Failed { req, why } => {
            sum.failures += 1;
            match opts.on_failure {
                OnFailure::Retry => {
                    let r = retry.entry(req.vcpu_id).or_insert(Retry {
                        attempts: 0,
                        next: Instant::now(),
                    });
                    r.attempts = r.attempts.saturating_add(1);
                    let delay = backoff(opts, r.attempts);
                    r.next = Instant::now() + delay;
                    out.event(&PagerEvent::Retry {
                        domid: req.domid,
                        vcpu: req.vcpu_id,
                        gfn: req.gfn,
                        error: why,
                        attempt: r.attempts,
                        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    })?;
                }
                OnFailure::Resume => {
                    retry.remove(&req.vcpu_id);
                    let waited = ring
                        .pending_for(req.vcpu_id)
                        .map_or(Duration::ZERO, |p| p.age());
                    ring.respond(&req)?;
                    sum.resumed += 1;
                    out.event(&PagerEvent::Oom {
                        domid: req.domid,
                        vcpu: req.vcpu_id,
                        gfn: req.gfn,
                        id: req.id,
                        paused_ms: ms(waited),
                        action: None,
                        error: Some(why),
                        answered: true,
                    })?;
                }
                OnFailure::Crash => {
                    let res = mem.crash(req.domid);
                    out.event(&PagerEvent::Crash {
                        domid: req.domid,
                        error: why,
                        result: ok_or(&res),
                    })?;
                    ring.flush()?;
                    return Ok(Some(Ended::Crashed));
                }
            }
        }
    }
    Ok(None)
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
