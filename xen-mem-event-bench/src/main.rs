//! `xme-bench`: benchmarks of the per-type mem-event rings.
//!
//! The producer is the hypervisor's own ring core (compiled unchanged by
//! `xen-mem-event-harness`), the consumer is the safe library, the event
//! channel an eventfd.  Beside them: a model of today's vm_event ring, a
//! minimal SPSC queue (the physical reference), and a model of the
//! single-ring design.  One markdown table on stdout (or JSON with
//! `--json`); progress on stderr.
//!
//! `--smoke`: tiny sizes; checks counts only.  Every run (smoke or full)
//! exits non-zero if a count check fails; timings are reported, never
//! asserted.

mod latency;
mod loss;
mod report;
mod share;
mod throughput;
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::{Report, Row};
use throughput::Tp;
use util::{fmt_bytes, fmt_ns, fmt_rate, percentile, BResult, Checks};

const USAGE: &str = "usage: xme-bench [--smoke] [--json] [--only SECTIONS]
  --smoke        tiny sizes, count checks only (a few seconds, even in debug)
  --json         print the results as JSON instead of the markdown table
  --only 1,2,3,4,5 run only these sections (5 or share: the sharing daemon's
                 table and scan pipeline; for development; default: all)";

const FRAMES: [u32; 3] = [1, 4, 16];
const BATCHES: [u32; 4] = [1, 16, 64, 256];
const SLOTS_PER_FRAME: u32 = 128;

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
struct Cfg {
    smoke: bool,
    /// Producer run time of each throughput measurement.
    run: Duration,
    /// Repetitions of each throughput measurement (median reported).
    reps: usize,
    /// OOM events per latency scenario.
    oom_samples: usize,
    /// Interleaved rounds the latency scenarios are split into.
    oom_rounds: usize,
    /// Records attempted in the loss run.
    loss_attempts: u64,
    /// Rounds of the lock-step notification count.
    lockstep_rounds: u64,
    /// Invalidation records the sharing daemon's table applies (section 5).
    share_records: u64,
    /// Bytes of local memory the scan pipeline hashes (section 5).
    share_bytes: u64,
    /// Which of the five sections to run.
    sections: [bool; 5],
}

impl Cfg {
    fn new(smoke: bool) -> Cfg {
        if smoke {
            Cfg {
                smoke,
                run: Duration::from_millis(15),
                reps: 1,
                oom_samples: 30,
                oom_rounds: 1,
                loss_attempts: 20_000,
                lockstep_rounds: 5,
                share_records: 20_000,
                share_bytes: 4 << 20,
                sections: [true; 5],
            }
        } else {
            Cfg {
                smoke,
                run: Duration::from_millis(500),
                reps: 3,
                oom_samples: 4000,
                oom_rounds: 4,
                loss_attempts: 2_000_000,
                lockstep_rounds: 50,
                share_records: 1_000_000,
                share_bytes: 256 << 20,
                sections: [true; 5],
            }
        }
    }
}

fn main() -> ExitCode {
    let (mut smoke, mut json) = (false, false);
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--json" => json = true,
            "--only" => only = args.next(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("xme-bench: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    util::cpus(); // before any thread is pinned
    let mut cfg = Cfg::new(smoke);
    if let Some(o) = only {
        let names = ["", "", "", "", "share"];
        cfg.sections = [1, 2, 3, 4, 5].map(|s| {
            o.split(',')
                .any(|x| x.trim() == s.to_string() || x.trim() == names[s - 1])
        });
    }
    let mut checks = Checks::default();
    let t0 = Instant::now();
    let mut report = Report {
        mode: if smoke { "smoke" } else { "full" },
        ..Report::default()
    };
    if let Err(e) = run(&cfg, &mut report, &mut checks) {
        eprintln!("xme-bench: error: {e}");
        return ExitCode::from(1);
    }
    report.elapsed_s = t0.elapsed().as_secs_f64();
    report.checks_passed = checks.passed;
    report.checks_failed.clone_from(&checks.failed);
    report.rows.push(
        Row::new("✓", "count and correctness checks (never timings)")
            .result(format!(
                "{} passed, {} failed",
                checks.passed,
                checks.failed.len()
            ))
            .target("0 failed")
            .int("passed", u64::from(checks.passed))
            .int("failed", checks.failed.len() as u64),
    );
    if json {
        print!("{}", report.json());
    } else {
        print!("{}", report.markdown());
    }
    if checks.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("xme-bench: {} count check(s) failed", checks.failed.len());
        ExitCode::from(1)
    }
}

fn progress(what: &str) {
    eprintln!("xme-bench: {what}");
}

fn run(cfg: &Cfg, report: &mut Report, checks: &mut Checks) -> BResult<()> {
    if cfg.sections[0] {
        section_throughput(cfg, report, checks)?;
    }
    if cfg.sections[1] {
        section_latency(cfg, report, checks)?;
    }
    if cfg.sections[2] {
        section_loss(cfg, report, checks)?;
    }
    if cfg.sections[3] {
        section_memory(report);
    }
    if cfg.sections[4] {
        section_share(cfg, report, checks);
    }
    notes(cfg, report);
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

// ----------------------------------------------------------------------

fn section_throughput(cfg: &Cfg, report: &mut Report, checks: &mut Checks) -> BResult<()> {
    const S: &str = "1 throughput";
    progress("1/4 throughput: SPSC reference, vm_event baseline, async rings");
    let mut spsc = Vec::new();
    for f in FRAMES {
        let slots = f * SLOTS_PER_FRAME;
        let tp = throughput::median_of(cfg.reps, || {
            throughput::spsc_reference(slots, cfg.run, checks)
        })?;
        spsc.push((f, tp));
    }
    let base = throughput::median_of(cfg.reps, || throughput::vm_event_baseline(cfg.run, checks))?;

    let mut rows = Vec::new();
    for &f in &FRAMES {
        let b_ref = spsc
            .iter()
            .find(|(ff, _)| *ff == f)
            .map_or(0.0, |(_, t)| t.rate());
        // Each threshold sleeping on the event channel at once, then the
        // largest again with the consumer polling 50 µs before it sleeps.
        let configs = BATCHES
            .iter()
            .map(|&b| (b, 0u64))
            .chain(std::iter::once((256, 50)));
        for (batch, spin_us) in configs {
            let spin = Duration::from_micros(spin_us);
            let tp: Tp = throughput::median_of(cfg.reps, || {
                throughput::async_lossless(f, batch, spin, cfg.run, checks)
            })?;
            let eff = batch.min(f * SLOTS_PER_FRAME);
            let (ra, rb) = (ratio(tp.rate(), base.rate()), ratio(tp.rate(), b_ref));
            let per_batch = ratio(tp.notifications as f64, tp.batches as f64);
            let mut target = format!(
                "≤1 notif/batch: {}",
                met(per_batch <= 1.0 + 1e-9 || tp.batches == 0)
            );
            if batch == 256 {
                let _ = std::fmt::Write::write_fmt(
                    &mut target,
                    format_args!(
                        "; ≥20× (a): {}; ≥0.5× (b): {}",
                        met(ra >= 20.0),
                        met(rb >= 0.5)
                    ),
                );
            }
            let mut eff_note = if eff == batch {
                String::new()
            } else {
                format!(" (eff. {eff})")
            };
            if spin_us > 0 {
                eff_note.push_str(&format!(", consumer polls {spin_us} µs before sleeping"));
            }
            rows.push(
                Row::new(
                    S,
                    format!(
                        "async lossless, batch {batch}{eff_note}, {f} frame(s) = {} slots",
                        f * SLOTS_PER_FRAME
                    ),
                )
                .result(format!(
                    "{}rec/s · {:.4} notif/rec ({:.1} rec/notif) · {:.2} notif/batch",
                    fmt_rate(tp.rate()),
                    tp.notif_per_record(),
                    ratio(tp.records as f64, tp.notifications as f64),
                    per_batch
                ))
                .ratio(format!("{ra:.1}× (a) · {rb:.2}× (b)"))
                .target(target)
                .int("frames", u64::from(f))
                .int("batch", u64::from(batch))
                .int("effective_batch", u64::from(eff))
                .int("spin_us", spin_us)
                .num("records_per_s", tp.rate())
                .int("records", tp.records)
                .int("notifications", tp.notifications)
                .int("batches", tp.batches)
                .num("notifications_per_record", tp.notif_per_record())
                .num("notifications_per_batch", per_batch)
                .num("ratio_vs_vm_event", ra)
                .num("ratio_vs_spsc", rb),
            );
        }
    }
    report.rows.push(
        Row::new(S, "(a) vm_event-shaped baseline: 1 page, 400 B slots → 8, kick per request, response per request, producer sleeps when full")
            .result(format!(
                "{}rec/s · {:.3} notif/rec (+{:.3} consumer→Xen kicks/rec, {:.3} producer sleeps/rec)",
                fmt_rate(base.rate()),
                base.notif_per_record(),
                ratio(base.rsp_notifications as f64, base.records as f64),
                ratio(base.producer_waits as f64, base.records as f64),
            ))
            .ratio(format!("1× (a) · {:.3}× (b, 128 slots)", ratio(base.rate(), spsc.first().map_or(0.0, |(_, t)| t.rate()))))
            .num("records_per_s", base.rate())
            .int("records", base.records)
            .int("notifications", base.notifications)
            .int("consumer_notifications", base.rsp_notifications)
            .int("producer_waits", base.producer_waits)
            .num("notifications_per_record", base.notif_per_record()),
    );
    for (f, tp) in &spsc {
        report.rows.push(
            Row::new(
                S,
                format!(
                    "(b) SPSC reference, {} slots × 32 B, spin/yield, no notifications",
                    f * SLOTS_PER_FRAME
                ),
            )
            .result(format!("{}rec/s · 0 notif/rec", fmt_rate(tp.rate())))
            .ratio(format!(
                "{:.1}× (a) · 1× (b)",
                ratio(tp.rate(), base.rate())
            ))
            .int("slots", u64::from(f * SLOTS_PER_FRAME))
            .num("records_per_s", tp.rate())
            .int("records", tp.records),
        );
    }
    report.rows.extend(rows);
    Ok(())
}

fn lat_cells(rtts: &[u64]) -> (u64, u64, u64) {
    (
        percentile(rtts, 500),
        percentile(rtts, 990),
        rtts.last().copied().unwrap_or(0),
    )
}

fn section_latency(cfg: &Cfg, report: &mut Report, checks: &mut Checks) -> BResult<()> {
    const S: &str = "2 OOM latency";
    progress("2/4 OOM latency: per-type alone / under flood, single-ring alone / under flood");
    // Interleaved rounds, so that slow drifts of this (virtual) machine
    // spread over every scenario instead of landing on one.
    let rounds = cfg.oom_rounds.max(1);
    let n = (cfg.oom_samples / rounds).max(1);
    let (mut pt_alone, mut pt_flood, mut sr_alone, mut sr_flood) = Default::default();
    for _ in 0..rounds {
        latency::LatRun::merge(&mut pt_alone, latency::per_type(false, n, checks)?);
        latency::LatRun::merge(&mut pt_flood, latency::per_type(true, n, checks)?);
        latency::LatRun::merge(&mut sr_alone, latency::single_ring(false, n, checks)?);
        latency::LatRun::merge(&mut sr_flood, latency::single_ring(true, n, checks)?);
    }
    let pt_ratio = ratio(
        percentile(&pt_flood.rtts, 990) as f64,
        percentile(&pt_alone.rtts, 990) as f64,
    );
    let sr_ratio = ratio(
        percentile(&sr_flood.rtts, 990) as f64,
        percentile(&sr_alone.rtts, 990) as f64,
    );
    for (design, alone, flood, r) in [
        (
            "per-type rings (library SyncRing + AsyncRing, own threads)",
            &pt_alone,
            &pt_flood,
            pt_ratio,
        ),
        (
            "single ring, both types in order (model)",
            &sr_alone,
            &sr_flood,
            sr_ratio,
        ),
    ] {
        let (p50, p99, max) = lat_cells(&alone.rtts);
        report.rows.push(
            Row::new(
                S,
                format!("{design}: OOM alone, {} events", alone.rtts.len()),
            )
            .result(format!(
                "p50 {} · p99 {} · max {}",
                fmt_ns(p50),
                fmt_ns(p99),
                fmt_ns(max)
            ))
            .text("design", design)
            .text("scenario", "alone")
            .int("samples", alone.rtts.len() as u64)
            .int("p50_ns", p50)
            .int("p99_ns", p99)
            .int("max_ns", max),
        );
        let (p50, p99, max) = lat_cells(&flood.rtts);
        let f = flood.flood.unwrap_or_default();
        let ahead = if flood.ahead.is_empty() {
            " · 0 records ahead of an OOM (own ring)".to_string()
        } else {
            format!(
                " · records ahead of an OOM p50 {} / p99 {}",
                percentile(&flood.ahead, 500),
                percentile(&flood.ahead, 990)
            )
        };
        let target = if design.starts_with("per-type") {
            format!("p99 flood ≤ 1.5× alone: {}", met(r <= 1.5))
        } else {
            format!(
                "shows head-of-line blow-up (ratio > 1.5× and > per-type's): {}",
                if r > 1.5 && r > pt_ratio { "yes" } else { "NO" }
            )
        };
        report.rows.push(
            Row::new(
                S,
                format!(
                    "{design}: OOM under invalidate flood, {} events",
                    flood.rtts.len()
                ),
            )
            .result(format!(
                "p50 {} · p99 {} · max {} · flood {}rec/s consumed, {:.1}% lost{ahead}",
                fmt_ns(p50),
                fmt_ns(p99),
                fmt_ns(max),
                fmt_rate(f.rate()),
                100.0 * ratio(f.lost as f64, f.attempted as f64)
            ))
            .ratio(format!("p99 flood/alone {r:.2}×"))
            .target(target)
            .text("design", design)
            .text("scenario", "flood")
            .int("samples", flood.rtts.len() as u64)
            .int("p50_ns", p50)
            .int("p99_ns", p99)
            .int("max_ns", max)
            .num("p99_ratio_flood_over_alone", r)
            .int("flood_attempted", f.attempted)
            .int("flood_posted", f.posted)
            .int("flood_consumed", f.consumed)
            .int("flood_lost", f.lost)
            .num("flood_consumed_per_s", f.rate())
            .int("records_ahead_p50", percentile(&flood.ahead, 500))
            .int("records_ahead_p99", percentile(&flood.ahead, 990)),
        );
    }
    Ok(())
}

fn section_loss(cfg: &Cfg, report: &mut Report, checks: &mut Checks) -> BResult<()> {
    const S: &str = "3 loss";
    progress("3/4 loss accounting and notification counts");
    let l = loss::slow_consumer(cfg.loss_attempts, checks)?;
    let exact = l.attempted == l.consumed + l.lost && l.seq_lost == l.lost;
    report.rows.push(
        Row::new(S, "slow consumer (1 frame, batch 32, table work + 50 µs nap per batch), producer never waits")
            .result(format!(
                "produced {} = consumed {} + lost {} · seq-gap losses {} · {} batches in {:.2} s",
                l.attempted, l.consumed, l.lost, l.seq_lost, l.batches, l.secs
            ))
            .ratio(format!("loss rate {:.1}%", 100.0 * ratio(l.lost as f64, l.attempted as f64)))
            .target(format!("produced = consumed + lost exactly: {}", met(exact)))
            .int("produced", l.attempted)
            .int("consumed", l.consumed)
            .int("lost", l.lost)
            .int("lost_by_seq_gaps", l.seq_lost)
            .int("batches", l.batches)
            .num("secs", l.secs)
            .num("loss_rate", ratio(l.lost as f64, l.attempted as f64))
            .flag("exact", exact),
    );
    let mut kicks = Vec::new();
    for batch in BATCHES {
        let k = loss::lockstep_kicks(4, batch, cfg.lockstep_rounds, checks)?;
        kicks.push(format!("batch {batch}: {k}"));
    }
    let all = kicks.len();
    report.rows.push(
        Row::new(
            S,
            format!(
                "lock-step: {} rounds of exactly one batch, 4 frames",
                cfg.lockstep_rounds
            ),
        )
        .result(format!("notifications: {}", kicks.join(", ")))
        .ratio("1 notif/batch")
        .target(format!(
            "== rounds for all {all} thresholds: {}",
            met(checks.failed.is_empty())
        ))
        .int("rounds", cfg.lockstep_rounds),
    );
    Ok(())
}

fn section_memory(report: &mut Report) {
    const S: &str = "4 memory";
    progress("4/4 memory");
    let page = 4096u64;
    let oom = u64::from(xen_mem_event_harness::total_frames(
        xen_mem_event_harness::SHARING_OOM,
        1,
    ));
    report.rows.push(
        Row::new(S, "SHARING_OOM ring (sync), 1 frame per array")
            .result(format!(
                "{} (header + request + response frames: {oom} × 4 KiB)",
                fmt_bytes(oom * page)
            ))
            .int("frames", oom)
            .int("bytes", oom * page),
    );
    for f in FRAMES {
        let t = u64::from(xen_mem_event_harness::total_frames(
            xen_mem_event_harness::SHARING_INVALIDATE,
            f,
        ));
        report.rows.push(
            Row::new(
                S,
                format!(
                    "SHARING_INVALIDATE ring (async), {f} frame(s), {} records",
                    f * SLOTS_PER_FRAME
                ),
            )
            .result(format!(
                "{} (header + {f} record frame(s): {t} × 4 KiB)",
                fmt_bytes(t * page)
            ))
            .ratio(format!(
                "{:.1}× a vm_event page",
                (t * page) as f64 / page as f64
            ))
            .int("frames", t)
            .int("bytes", t * page),
        );
    }
    report.rows.push(
        Row::new(
            S,
            "(a) vm_event ring today (per ring: paging, monitor, sharing)",
        )
        .result(format!("4 KiB, {} slots of 400 B", throughput::VM_SLOTS))
        .int("bytes", page),
    );
    let (rss, hwm) = util::rss_kib();
    report.rows.push(
        Row::new(
            S,
            "this process (producers + consumers + models, all runs): /proc/self/status",
        )
        .result(format!(
            "VmRSS {} · VmHWM {}",
            fmt_bytes(rss * 1024),
            fmt_bytes(hwm * 1024)
        ))
        .int("vm_rss_kib", rss)
        .int("vm_hwm_kib", hwm),
    );
}

fn section_share(cfg: &Cfg, report: &mut Report, checks: &mut Checks) {
    const S: &str = "5 share";
    progress("5/5 sharing daemon: table applying records, scan pipeline");
    let frames = cfg.share_records / share::PER_FRAME;
    let a = share::apply_records(frames, cfg.reps, checks);
    let ok = a.rate() >= 5e6;
    report.rows.push(
        Row::new(S, format!("table applying invalidation records: {frames} frames × {} gfns over 4 domains, each gfn UNSHARED (HANDLE_GONE on the last), one core", share::PER_FRAME))
            .result(format!("{}rec/s ({} records in {:.1} ms)", fmt_rate(a.rate()), a.items, a.secs * 1e3))
            .target(format!("≥ 5 M rec/s: {}", met(ok)))
            .num("records_per_s", a.rate())
            .int("records", a.items)
            .flag("target_met", ok),
    );
    let sc = share::scan_pipeline(cfg.share_bytes, cfg.reps, checks);
    let gib_s = sc.run.rate() / f64::from(1u32 << 30);
    let ok = gib_s >= 1.0;
    report.rows.push(
        Row::new(S, format!("scan pipeline on local memory: {} of pages ({}% zero, {}% copies of {} pages, the rest unique), zero check + xxh3 + table insert/match, one core", fmt_bytes(cfg.share_bytes), share::MIX.0, share::MIX.1, share::PATTERNS))
            .result(format!("{gib_s:.2} GiB/s · {}pages/s · {} distinct, {} matches", fmt_rate(sc.pages as f64 / sc.run.secs), sc.new, sc.matches))
            .target(format!("≥ 1 GiB/s: {}", met(ok)))
            .num("gib_per_s", gib_s)
            .num("pages_per_s", sc.pages as f64 / sc.run.secs)
            .int("pages", sc.pages)
            .int("distinct", sc.new)
            .int("matches", sc.matches)
            .flag("target_met", ok),
    );
}

fn notes(cfg: &Cfg, report: &mut Report) {
    let n = &mut report.notes;
    if cfg.smoke {
        n.push(
            "SMOKE run: tiny sizes; the timings above mean nothing, only the count checks do."
                .into(),
        );
    }
    n.push(format!(
        "Machine: {} CPUs. Throughput: each configuration runs its producer for {:?}, {} time(s), the median run by rate is shown; rate = records taken / consumer's elapsed time (tail included). Producer and consumer threads are pinned to CPU 0 and CPU 1 in every section-1 run (async, (a) and (b) alike). The async consumer blocks in the eventfd whenever fewer than `batch` records wait, so every notification costs a real sleep/wake-up; that wake-up, not the per-record cost, bounds the small-ring and small-batch rows.",
        util::cpus(),
        cfg.run,
        cfg.reps
    ));
    n.push("Async producer = the hypervisor's ring core (mem_event_ring.c, unchanged, under hv.c's ring mutex) via HarnessRing::put_invalidate; consumer = the library's AsyncRing (wait + batch) on another thread; event channel = the harness eventfd. Xen itself never waits on a full async ring: for LOSSLESS throughput the bench producer reads req_cons/req_prod from the shared header (atomic loads) and posts only into free slots, spinning then yielding when full. Every lossless run checks lost == 0 and in-order seq.".into());
    n.push("(a) models today's vm_event ring in the bench: 64 B sring header + 8 union slots of 400 B in one 4 KiB page; Xen copies a whole 400 B request in under the ring lock and kicks the eventfd for every request; the consumer (xen-access-shaped) copies each request out, writes a 400 B response back into the ring, and notifies Xen once per drain round, which runs vm_event_resume (copies responses out, frees slots, wakes the producer); a producer finding the ring full sleeps on its own eventfd until resume wakes it.".into());
    n.push("(b) is a minimal lock-free SPSC queue (cached indices, Release/Acquire, cache-line-padded) of the same 32 B records between two threads, the producer spinning then yielding when full and the consumer spinning then yielding when empty: no notification, no validation, no lock. Ratios compare against (b) with the same slot count.".into());
    n.push(format!(
        "OOM latency: a requester thread (a vCPU) raises an OOM through HarnessRing::raise_oom (the ring core pauses the vCPU and kicks the consumer's eventfd); RTT = from just before the raise to the moment the vCPU is unpaused, stamped on the consumer's thread right after the call that ran Xen's response processing returned (flush() for the SyncRing; the response for the model). The requester then waits for the unpause sleeping (10 µs polls, not timed), so that on 2 cores it does not compete with the consumers. {} events per scenario in {} interleaved rounds (alone and flood scenarios alternate, spreading machine noise over all of them), 100–400 µs random gap between events. Per-type consumer = library SyncRing (wait, take_requests, respond, flush) on its own thread.",
        cfg.oom_samples,
        cfg.oom_rounds
    ));
    n.push(format!(
        "Flood: its own producer thread posting bursts of {} invalidations at full speed (lossy: the ring drops when full) with a sched_yield between bursts, at normal priority, into a {}-frame ring with batch {}, consumed by its own thread doing a HashSet remove + insert per record (the same per-record work in both designs). The yield is what keeps a 4-thread scenario usable on 2 cores. SCHED_IDLE for the flood producers was tried and rejected: it made a preempted producer holding the single ring's lock stall that design's consumer (a priority inversion Xen's non-preemptible spinlocks do not have).",
        latency::FLOOD_BURST,
        latency::FLOOD_FRAMES,
        latency::FLOOD_BATCH
    ));
    n.push(format!(
        "Single-ring model: one {}-slot in-order ring of tagged 32 B records under one producer lock (Xen's ring lock), invalidations lossy with one slot reserved per vCPU for OOM requests, event-index kicks per {} invalidations and a kick per OOM request; one consumer thread takes everything queued and processes it in ring order, answering an OOM as soon as it reaches it (best case for that design; a consumer scanning ahead for OOMs would shorten the wait but not the shared capacity/loss coupling). Its lock is a fair ticket lock like Xen's spinlocks (std's Mutex let the flood producer starve the OOM path for milliseconds); the vm_event model uses the same lock. 'records ahead of an OOM' = records queued in the ring when the OOM request was posted.",
        latency::FLOOD_FRAMES * SLOTS_PER_FRAME,
        latency::FLOOD_BATCH
    ));
    n.push("Memory: ring bytes include the header frame (and the response array for the sync ring); the resident figures are for this whole benchmark process, which holds producers, consumers and the models of every section, so they bound the consumer side from above.".into());
}
