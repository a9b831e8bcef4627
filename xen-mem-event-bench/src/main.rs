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
mod percore;
mod pool;
mod report;
mod share;
mod throughput;
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::{Report, Row};
use throughput::Tp;
use util::{fmt_bytes, fmt_ns, fmt_rate, percentile, BResult, Checks};
use xen_mem_event::Spin;

const USAGE: &str = "usage: xme-bench [--smoke] [--json] [--only SECTIONS]
  --smoke        tiny sizes, count checks only (a few seconds, even in debug)
  --json         print the results as JSON instead of the markdown table
  --single-post  the async throughput producer posts one record per call
                 (put_invalidate) instead of bulk posts (for experiments)
  --only 1,2,3,4,5,6 run only these sections (percore: only section 1's
                 per-record rows; 5 or share: the sharing daemon's
                 table and scan pipeline; 6 or pool: the pager's worker pool
                 and sync round trips from several threads; for development;
                 default: all)";

const FRAMES: [u32; 3] = [1, 4, 16];
const BATCHES: [u32; 4] = [1, 16, 64, 256];
/// Thresholds of the interleaved throughput runs (256: half the ring for
/// 1 and 4 frames, the clamp).
const TP_BATCHES: [u32; 3] = [1, 64, 256];
const SLOTS_PER_FRAME: u32 = 128;

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
struct Cfg {
    smoke: bool,
    /// Producer run time of each throughput measurement.
    run: Duration,
    /// Repetitions of each per-record cost run (median reported; at
    /// least 5).
    reps: usize,
    /// Interleaved (reference, configuration) pairs per configuration.
    pairs: usize,
    /// Cross-CPU ping-pong round trips bracketing each pair.
    pingpong: u32,
    /// Full 128-record rings per per-record cost run.
    percore_rounds: u64,
    /// Fast-vCPU faults per pager scenario, and its time budget.
    pager_samples: usize,
    pager_budget: Duration,
    /// Duration of each sync round-trip run.
    rt_run: Duration,
    /// Records per post of the async throughput producer (`BULK`, or 1
    /// with `--single-post`: `put_invalidate` per record).
    post: u32,
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
    /// Which of the six sections to run.
    sections: [bool; 6],
}

impl Cfg {
    fn new(smoke: bool) -> Cfg {
        if smoke {
            Cfg {
                smoke,
                run: Duration::from_millis(15),
                reps: 1,
                pairs: 1,
                pingpong: 700,
                percore_rounds: 50,
                pager_samples: 20,
                pager_budget: Duration::from_millis(300),
                rt_run: Duration::from_millis(50),
                post: throughput::BULK,
                oom_samples: 30,
                oom_rounds: 1,
                loss_attempts: 20_000,
                lockstep_rounds: 5,
                share_records: 20_000,
                share_bytes: 4 << 20,
                sections: [true; 6],
            }
        } else {
            Cfg {
                smoke,
                run: Duration::from_millis(250),
                reps: 5,
                pairs: 5,
                pingpong: 14_000,
                percore_rounds: 20_000,
                pager_samples: 1000,
                pager_budget: Duration::from_secs(3),
                rt_run: Duration::from_millis(700),
                post: throughput::BULK,
                oom_samples: 4000,
                oom_rounds: 4,
                loss_attempts: 2_000_000,
                lockstep_rounds: 50,
                share_records: 1_000_000,
                share_bytes: 256 << 20,
                sections: [true; 6],
            }
        }
    }
}

fn main() -> ExitCode {
    let (mut smoke, mut json, mut single_post) = (false, false, false);
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--json" => json = true,
            "--single-post" => single_post = true,
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
    if single_post {
        cfg.post = 1;
    }
    if let Some(o) = only {
        // "percore": only the per-record rows of section 1.
        if o.split(',').any(|x| x.trim() == "percore") {
            cfg.pairs = 0;
        }
        let names = ["percore", "", "", "", "share", "pool"];
        cfg.sections = [1, 2, 3, 4, 5, 6].map(|s| {
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
    if cfg.sections[5] {
        section_pool(cfg, report, checks)?;
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

/// A verdict from timings: none in a smoke run (tiny sizes, debug build).
fn timed(cfg: &Cfg, ok: bool) -> &'static str {
    if cfg.smoke {
        "n/a (smoke)"
    } else {
        met(ok)
    }
}

/// Median, min and max of some values.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(&lo), Some(&hi)) => (v[v.len() / 2], lo, hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

// ----------------------------------------------------------------------

/// One interleaved pair: the references and the configuration measured
/// back to back, bracketed by the placement probe.
#[derive(Debug, Clone, Copy)]
struct Pair {
    pp: (f64, f64),
    spsc: Tp,
    spsc_bulk: Tp,
    asy: Tp,
}

/// The async consumer's polling, as a row says it.
fn spin_label(spin: Spin) -> String {
    let us = spin_window(spin).as_micros();
    match spin {
        Spin::Never => "consumer sleeps at once".to_string(),
        Spin::Fixed(_) => format!("consumer polls {us} µs before every sleep"),
        _ => format!("consumer polls ≤{us} µs while that pays (library default)"),
    }
}

fn spin_window(spin: Spin) -> Duration {
    match spin {
        Spin::Fixed(d) | Spin::Adaptive(d) => d,
        _ => Duration::ZERO,
    }
}

fn spin_kind(spin: Spin) -> &'static str {
    match spin {
        Spin::Never => "never",
        Spin::Fixed(_) => "fixed",
        _ => "adaptive",
    }
}

fn section_throughput(cfg: &Cfg, report: &mut Report, checks: &mut Checks) -> BResult<()> {
    const S: &str = "1 throughput";
    progress(
        "1/6 throughput: interleaved (ping-pong, SPSC, batched SPSC, async, ping-pong) \
        pairs, vm_event baseline, per-record costs",
    );
    let mut base_runs = Vec::new();
    let mut all_pp = Vec::new();
    let mut refs: Vec<(u32, Vec<f64>, Vec<f64>)> =
        FRAMES.iter().map(|&f| (f, vec![], vec![])).collect();
    let mut rows = Vec::new();
    let mut percore_reps = percore::Reps::default();
    for &f in FRAMES.iter().filter(|_| cfg.pairs > 0) {
        let slots = f * SLOTS_PER_FRAME;
        // Each threshold with the library's default (adaptive) polling,
        // then the largest again sleeping at once and polling every time.
        let configs = TP_BATCHES
            .iter()
            .map(|&b| (b, Spin::default()))
            .chain([(256, Spin::Never), (256, Spin::Fixed(Spin::DEFAULT_WINDOW))]);
        for (batch, spin) in configs {
            let mut pairs = Vec::with_capacity(cfg.pairs);
            for _ in 0..cfg.pairs {
                let pp0 = throughput::pingpong_ns(cfg.pingpong)?;
                let spsc = throughput::spsc_reference(slots, 1, cfg.run, checks)?;
                let spsc_bulk =
                    throughput::spsc_reference(slots, throughput::BULK, cfg.run, checks)?;
                let asy = throughput::async_lossless(f, batch, spin, cfg.post, cfg.run, checks)?;
                let pp1 = throughput::pingpong_ns(cfg.pingpong)?;
                pairs.push(Pair {
                    pp: (pp0, pp1),
                    spsc,
                    spsc_bulk,
                    asy,
                });
            }
            // The baseline between configurations, spreading it over the
            // section as well.
            base_runs.push(throughput::vm_event_baseline(cfg.run, checks)?);
            // And a repetition of the per-record costs.
            percore_reps.run(cfg.percore_rounds, checks)?;
            if let Some(r) = refs.iter_mut().find(|r| r.0 == f) {
                r.1.extend(pairs.iter().map(|p| p.spsc.rate()));
                r.2.extend(pairs.iter().map(|p| p.spsc_bulk.rate()));
            }
            all_pp.extend(pairs.iter().flat_map(|p| [p.pp.0, p.pp.1]));
            rows.push((f, batch, spin, pairs));
        }
    }
    base_runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let base = base_runs
        .get(base_runs.len() / 2)
        .copied()
        .unwrap_or_default();
    let (pp_med, pp_lo, pp_hi) = spread(&all_pp);
    if cfg.pairs == 0 {
        return percore_rows(cfg, percore_reps, report, checks);
    }
    report.placement_ns = Some((pp_med, pp_lo, pp_hi));

    report.rows.push(
        Row::new(
            S,
            "placement: cross-CPU cache-line round trip (ping-pong), before and after every pair",
        )
        .result(format!(
            "median {pp_med:.0} ns · range {pp_lo:.0}–{pp_hi:.0} ns over {} probes",
            all_pp.len()
        ))
        .num("pingpong_median_ns", pp_med)
        .num("pingpong_min_ns", pp_lo)
        .num("pingpong_max_ns", pp_hi),
    );
    let spsc1 = refs.first().map_or(f64::NAN, |r| spread(&r.1).0);
    report.rows.push(
        Row::new(
            S,
            "(a) vm_event-shaped baseline: 1 page, 400 B slots → 8, kick per request, \
            response per request, producer sleeps when full",
        )
        .result(format!(
            "{}rec/s · {:.3} notif/rec (+{:.3} consumer→Xen kicks/rec, {:.3} producer \
                    sleeps/rec) · median of {} runs between configurations",
            fmt_rate(base.rate()),
            base.notif_per_record(),
            ratio(base.rsp_notifications as f64, base.records as f64),
            ratio(base.producer_waits as f64, base.records as f64),
            base_runs.len()
        ))
        .ratio(format!(
            "1× (a) · {:.3}× (b, 128 slots, medians)",
            ratio(base.rate(), spsc1)
        ))
        .num("records_per_s", base.rate())
        .int("records", base.records)
        .int("notifications", base.notifications)
        .int("consumer_notifications", base.rsp_notifications)
        .int("producer_waits", base.producer_waits)
        .num("notifications_per_record", base.notif_per_record()),
    );
    for (f, per, bulk) in &refs {
        for (name, v) in [
            ("(b) SPSC reference, index published per record", per),
            (
                "(b') batched-publish SPSC reference, index published once per ≤64 records",
                bulk,
            ),
        ] {
            let (m, lo, hi) = spread(v);
            report.rows.push(
                Row::new(
                    S,
                    format!(
                        "{name}, {} slots × 32 B, spin/yield, no notifications",
                        f * SLOTS_PER_FRAME
                    ),
                )
                .result(format!(
                    "median {}rec/s · range {}–{}rec/s over {} runs (one per pair)",
                    fmt_rate(m),
                    fmt_rate(lo),
                    fmt_rate(hi),
                    v.len()
                ))
                .ratio(format!("{:.1}× (a)", ratio(m, base.rate())))
                .int("slots", u64::from(f * SLOTS_PER_FRAME))
                .num("records_per_s", m)
                .num("records_per_s_min", lo)
                .num("records_per_s_max", hi),
            );
        }
    }
    for (f, batch, spin, pairs) in rows {
        let eff = batch.min(f * SLOTS_PER_FRAME / 2);
        let rb: Vec<f64> = pairs
            .iter()
            .map(|p| ratio(p.asy.rate(), p.spsc.rate()))
            .collect();
        let rbb: Vec<f64> = pairs
            .iter()
            .map(|p| ratio(p.asy.rate(), p.spsc_bulk.rate()))
            .collect();
        let rates: Vec<f64> = pairs.iter().map(|p| p.asy.rate()).collect();
        let pps: Vec<f64> = pairs.iter().flat_map(|p| [p.pp.0, p.pp.1]).collect();
        let (rb_m, rb_lo, rb_hi) = spread(&rb);
        let (rbb_m, rbb_lo, rbb_hi) = spread(&rbb);
        let (rate_m, rate_lo, rate_hi) = spread(&rates);
        let (_, pp_lo, pp_hi) = spread(&pps);
        let ra = ratio(rate_m, base.rate());
        let (mut recs, mut notifs, mut batches) = (0u64, 0u64, 0u64);
        for p in &pairs {
            recs += p.asy.records;
            notifs += p.asy.notifications;
            batches += p.asy.batches;
        }
        let per_batch = ratio(notifs as f64, batches as f64);
        let mut target = format!(
            "≤1 notif/batch: {}",
            met(per_batch <= 1.0 + 1e-9 || batches == 0)
        );
        if batch == 256 {
            let _ = std::fmt::Write::write_fmt(
                &mut target,
                format_args!(
                    "; ≥20× (a): {}; ≥0.5× (b), median: {}",
                    timed(cfg, ra >= 20.0),
                    timed(cfg, rb_m >= 0.5)
                ),
            );
        }
        let mut eff_note = if eff == batch {
            String::new()
        } else {
            format!(" (eff. {eff})")
        };
        eff_note.push_str(", ");
        eff_note.push_str(&spin_label(spin));
        report.rows.push(
            Row::new(
                S,
                format!(
                    "async lossless, batch {batch}{eff_note}, {f} frame(s) = {} slots, {}",
                    f * SLOTS_PER_FRAME,
                    if cfg.post > 1 {
                        format!("bulk posts ≤{}", cfg.post)
                    } else {
                        "single-record posts".to_string()
                    }
                ),
            )
            .result(format!(
                "median {}rec/s (range {}–{}) · {:.4} notif/rec · {:.2} notif/batch · \
                    {} pairs, ping-pong {:.0}–{:.0} ns",
                fmt_rate(rate_m),
                fmt_rate(rate_lo),
                fmt_rate(rate_hi),
                ratio(notifs as f64, recs as f64),
                per_batch,
                pairs.len(),
                pp_lo,
                pp_hi
            ))
            .ratio(format!(
                "{rb_m:.2}× (b) [{rb_lo:.2}–{rb_hi:.2}] · {rbb_m:.2}× (b') \
                    [{rbb_lo:.2}–{rbb_hi:.2}] · {ra:.0}× (a)"
            ))
            .target(target)
            .int("frames", u64::from(f))
            .int("batch", u64::from(batch))
            .int("effective_batch", u64::from(eff))
            .int(
                "spin_us",
                u64::try_from(spin_window(spin).as_micros()).unwrap_or(u64::MAX),
            )
            .text("spin", spin_kind(spin))
            .int("pairs", pairs.len() as u64)
            .num("records_per_s", rate_m)
            .num("records_per_s_min", rate_lo)
            .num("records_per_s_max", rate_hi)
            .int("records", recs)
            .int("notifications", notifs)
            .int("batches", batches)
            .num("notifications_per_batch", per_batch)
            .num("ratio_vs_vm_event", ra)
            .num("ratio_vs_spsc", rb_m)
            .num("ratio_vs_spsc_min", rb_lo)
            .num("ratio_vs_spsc_max", rb_hi)
            .num("ratio_vs_spsc_batched", rbb_m)
            .num("ratio_vs_spsc_batched_min", rbb_lo)
            .num("ratio_vs_spsc_batched_max", rbb_hi)
            .num("pingpong_min_ns", pp_lo)
            .num("pingpong_max_ns", pp_hi),
        );
    }
    percore_rows(cfg, percore_reps, report, checks)
}

fn percore_rows(
    cfg: &Cfg,
    mut reps: percore::Reps,
    report: &mut Report,
    checks: &mut Checks,
) -> BResult<()> {
    const S: &str = "1 throughput";
    while reps.len() < cfg.reps.max(5) {
        reps.run(cfg.percore_rounds, checks)?;
    }
    for (side, what) in [
        (
            percore::Side::Consumer,
            "consumer: AsyncRing::batch + iterating each record (copy, \
            validation, seq) + drop, 1 frame",
        ),
        (
            percore::Side::Producer,
            "producer: HvRing::put_invalidate (ring core, one record per \
            call, under hv.c's spinlock, at the cost of Xen's)",
        ),
        (
            percore::Side::ProducerBatch,
            "producer: HvRing::put_invalidate_batch (ring core, ≤64 \
            records per call)",
        ),
    ] {
        let c = reps.of(side);
        report.rows.push(
            Row::new(
                S,
                format!("per record, one thread, records hot in L1: {what}"),
            )
            .result(format!(
                "{:.2} ns/record (median round of the least disturbed of {} repetitions) · all \
                    rounds: median {:.2} (p10 {:.2}, p90 {:.2}) · {} records in rounds of 128",
                c.best_rep, c.reps, c.median, c.p10, c.p90, c.records
            ))
            .target(format!("≤ 8 ns: {}", timed(cfg, c.best_rep <= 8.0)))
            .text("side", format!("{side:?}"))
            .num("ns_per_record", c.best_rep)
            .num("ns_per_record_all_median", c.median)
            .int("repetitions", c.reps as u64)
            .num("ns_per_record_p10", c.p10)
            .num("ns_per_record_p90", c.p90)
            .int("records", c.records),
        );
    }
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
    progress(
        "2/6 OOM latency: per-type (sleeping and polling OOM consumer) alone / under flood, \
        single-ring alone / under flood",
    );
    // Interleaved rounds, so that slow drifts of this (virtual) machine
    // spread over every scenario instead of landing on one.
    let rounds = cfg.oom_rounds.max(1);
    let n = (cfg.oom_samples / rounds).max(1);
    let (mut pt_alone, mut pt_flood, mut sr_alone, mut sr_flood) = Default::default();
    let (mut pp_alone, mut pp_flood) = Default::default();
    for _ in 0..rounds {
        latency::LatRun::merge(&mut pt_alone, latency::per_type(false, false, n, checks)?);
        latency::LatRun::merge(&mut pt_flood, latency::per_type(true, false, n, checks)?);
        latency::LatRun::merge(&mut pp_alone, latency::per_type(false, true, n, checks)?);
        latency::LatRun::merge(&mut pp_flood, latency::per_type(true, true, n, checks)?);
        latency::LatRun::merge(&mut sr_alone, latency::single_ring(false, n, checks)?);
        latency::LatRun::merge(&mut sr_flood, latency::single_ring(true, n, checks)?);
    }
    let p99 = |r: &latency::LatRun| percentile(&r.rtts, 990) as f64;
    let pt_ratio = ratio(p99(&pt_flood), p99(&pt_alone));
    let pp_ratio = ratio(p99(&pp_flood), p99(&pp_alone));
    let pt_vs_polling = ratio(p99(&pt_flood), p99(&pp_alone));
    let sr_ratio = ratio(p99(&sr_flood), p99(&sr_alone));
    // The median shows the queue every OOM waits behind; the p99 is mostly
    // wake-up noise once each consumer has a CPU of its own.
    let p50 = |r: &latency::LatRun| percentile(&r.rtts, 500) as f64;
    let p50_ratio = |alone, flood| ratio(p50(flood), p50(alone));
    let pt_p50 = p50_ratio(&pt_alone, &pt_flood);
    let sr_p50 = p50_ratio(&sr_alone, &sr_flood);
    for (design, alone, flood, r) in [
        (
            "per-type rings (library SyncRing + AsyncRing, own threads), OOM consumer sleeping",
            &pt_alone,
            &pt_flood,
            pt_ratio,
        ),
        (
            "per-type rings (library SyncRing + AsyncRing, own threads), OOM consumer polling",
            &pp_alone,
            &pp_flood,
            pp_ratio,
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
            format!("p99 flood ≤ 1.5× alone: {}", timed(cfg, r <= 1.5))
        } else {
            format!(
                "shows head-of-line blow-up (p50 or p99 flood/alone > 1.5× and > per-type's \
                    sleeping consumer's): {}",
                if cfg.smoke {
                    "n/a (smoke)"
                } else if (r > 1.5 && r > pt_ratio) || (sr_p50 > 1.5 && sr_p50 > pt_p50) {
                    "yes"
                } else {
                    "NO"
                }
            )
        };
        let extra = if design.ends_with("sleeping") {
            format!(" · {pt_vs_polling:.2}× the polling consumer's p99 alone")
        } else {
            String::new()
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
            .ratio(format!(
                "p99 flood/alone {r:.2}× · p50 {:.2}×{extra}",
                p50_ratio(alone, flood)
            ))
            .target(target)
            .text("design", design)
            .text("scenario", "flood")
            .int("samples", flood.rtts.len() as u64)
            .int("p50_ns", p50)
            .int("p99_ns", p99)
            .int("max_ns", max)
            .num("p99_ratio_flood_over_alone", r)
            .num("p50_ratio_flood_over_alone", p50_ratio(alone, flood))
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
    progress("3/6 loss accounting and notification counts");
    let l = loss::slow_consumer(cfg.loss_attempts, checks)?;
    let exact = l.attempted == l.consumed + l.lost && l.seq_lost == l.lost;
    report.rows.push(
        Row::new(
            S,
            "slow consumer (1 frame, batch 32, table work + 50 µs nap per batch), \
            producer never waits",
        )
        .result(format!(
            "produced {} = consumed {} + lost {} · seq-gap losses {} · {} batches in {:.2} s",
            l.attempted, l.consumed, l.lost, l.seq_lost, l.batches, l.secs
        ))
        .ratio(format!(
            "loss rate {:.1}%",
            100.0 * ratio(l.lost as f64, l.attempted as f64)
        ))
        .target(format!(
            "produced = consumed + lost exactly: {}",
            met(exact)
        ))
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
    progress("4/6 memory");
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
    progress("5/6 sharing daemon: table applying records, scan pipeline");
    let frames = cfg.share_records / share::PER_FRAME;
    let a = share::apply_records(frames, cfg.reps, checks);
    let ok = a.rate() >= 5e6;
    report.rows.push(
        Row::new(
            S,
            format!(
                "table applying invalidation records: {frames} frames × {} gfns over \
            4 domains, each gfn UNSHARED (HANDLE_GONE on the last), one core",
                share::PER_FRAME
            ),
        )
        .result(format!(
            "{}rec/s ({} records in {:.1} ms)",
            fmt_rate(a.rate()),
            a.items,
            a.secs * 1e3
        ))
        .target(format!("≥ 5 M rec/s: {}", timed(cfg, ok)))
        .num("records_per_s", a.rate())
        .int("records", a.items)
        .flag("target_met", ok),
    );
    let sc = share::scan_pipeline(cfg.share_bytes, cfg.reps, checks);
    let gib_s = sc.run.rate() / f64::from(1u32 << 30);
    let ok = gib_s >= 1.0;
    report.rows.push(
        Row::new(
            S,
            format!(
                "scan pipeline on local memory: {} of pages ({}% zero, {}% copies of \
            {} pages, the rest unique), zero check + xxh3 + table insert/match, one core",
                fmt_bytes(cfg.share_bytes),
                share::MIX.0,
                share::MIX.1,
                share::PATTERNS
            ),
        )
        .result(format!(
            "{gib_s:.2} GiB/s · {}pages/s · {} distinct, {} matches",
            fmt_rate(sc.pages as f64 / sc.run.secs),
            sc.new,
            sc.matches
        ))
        .target(format!("≥ 1 GiB/s: {}", timed(cfg, ok)))
        .num("gib_per_s", gib_s)
        .num("pages_per_s", sc.pages as f64 / sc.run.secs)
        .int("pages", sc.pages)
        .int("distinct", sc.new)
        .int("matches", sc.matches)
        .flag("target_met", ok),
    );
}

fn section_pool(cfg: &Cfg, report: &mut Report, checks: &mut Checks) -> BResult<()> {
    const S: &str = "6 concurrent consumers";
    progress(
        "6/6 pager: fast vCPUs beside a slow one, 1 worker vs a pool; sync round trips from \
        1, 2, 4 threads",
    );
    let mut lat = Vec::new();
    for workers in [1usize, 4] {
        for slow in [false, true] {
            let l =
                pool::pager_latency(workers, slow, cfg.pager_samples, cfg.pager_budget, checks)?;
            lat.push((workers, slow, l));
        }
    }
    let p99_of = |w: usize, slow: bool| {
        lat.iter()
            .find(|(ww, s, _)| *ww == w && *s == slow)
            .map_or(0, |(_, _, l)| percentile(&l.rtts, 990))
    };
    for (workers, slow, l) in &lat {
        let (p50, p99, max) = lat_cells(&l.rtts);
        let r = ratio(p99 as f64, p99_of(*workers, false) as f64);
        let mut row = Row::new(
            S,
            format!(
                "pager (tools' pager::run), {} — fast vCPUs' OOM pause, {}",
                if *workers == 1 {
                    "workers = 1 (single-threaded)".to_string()
                } else {
                    format!("worker pool of {workers}")
                },
                if *slow {
                    format!(
                        "vCPU 0's policy taking {} ms beside them",
                        pool::SLOW.as_millis()
                    )
                } else {
                    "no slow vCPU".to_string()
                }
            ),
        )
        .result(format!(
            "p50 {} · p99 {} · max {} · {} fast faults{}",
            fmt_ns(p50),
            fmt_ns(p99),
            fmt_ns(max),
            l.rtts.len(),
            if *slow {
                format!(", {} slow ones", l.slow_answered)
            } else {
                String::new()
            }
        ))
        .int("workers", *workers as u64)
        .flag("slow_vcpu", *slow)
        .int("samples", l.rtts.len() as u64)
        .int("p50_ns", p50)
        .int("p99_ns", p99)
        .int("max_ns", max);
        if *slow {
            row = row
                .ratio(format!("p99 with/without the slow vCPU {r:.2}×"))
                .num("p99_ratio_slow_over_none", r);
            if *workers > 1 {
                row = row.target(format!("≤ 2×: {}", timed(cfg, r <= 2.0)));
            }
        }
        report.rows.push(row);
    }
    let mut base = 0.0;
    for threads in [1usize, 2, 4] {
        let rt = pool::round_trips(threads, cfg.rt_run, checks)?;
        if threads == 1 {
            base = rt.rate();
        }
        report.rows.push(
            Row::new(
                S,
                format!(
                    "sync round trips: {} vCPUs re-faulting at once, the waiter hands requests to \
                        {threads} thread(s) answering by Responder",
                    pool::RT_VCPUS
                ),
            )
            .result(format!(
                "{}round trips/s ({} in {:.2} s)",
                fmt_rate(rt.rate()),
                rt.answered,
                rt.secs
            ))
            .ratio(format!("{:.2}× 1 thread", ratio(rt.rate(), base)))
            .int("threads", threads as u64)
            .int("answered", rt.answered)
            .num("round_trips_per_s", rt.rate()),
        );
    }
    Ok(())
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
        "Machine: {} CPUs. Throughput methodology: every async configuration is measured in {} \
            interleaved pairs; a pair is a cross-CPU ping-pong probe, the per-record SPSC \
            reference (b), the batched-publish SPSC reference (b'), the configuration, and \
            another probe, each run {:?} with the same slot count; ratios are computed within a \
            pair only, and the median and the range over the pairs are shown; a verdict says met \
            only when the median meets the target. The baseline (a) runs once between \
            configurations (median shown). Producer and consumer threads are pinned to CPU 0 and \
            CPU 1 in every section-1 run. rate = records taken / consumer's elapsed time (tail \
            included). The ping-pong probe bounces one cache line between the two CPUs; its round \
            trip follows where the host placed them (about 60-320 ns on this machine) and every \
            cross-CPU figure follows it.",
        util::cpus(),
        cfg.pairs,
        cfg.run,
    ));
    n.push(format!(
        "Async producer = the hypervisor's ring core (mem_event_ring.c, unchanged, under hv.c's \
        spinlock, at the cost of Xen's) posting in bulk through mem_event_ring_put_async_batch \
        (HarnessRing::put_invalidate_batch, ≤{} records per call: one lock, one req_prod \
        publication, one barrier, one event check), as Xen does on its bulk paths; consumer = \
        the library's AsyncRing (wait + batch) on another thread; event channel = the harness \
        eventfd. The consumer takes whatever is waiting while it is awake and arms req_event \
        (fence, re-check) only when it finds the ring empty, before it sleeps; by default \
        (Spin::Adaptive) it first polls up to 50 µs for the next record after a batch that took \
        records, and after a poll that finds nothing skips polling for the next 1, 2, 4 ... 64 \
        sleeps that end within 50 µs (a sleep and a wake-up cost about 14 µs here, while 128 \
        records arrive in under 2 µs). Xen itself never waits on a full async ring: for LOSSLESS \
        throughput the bench producer reads req_cons/req_prod from the shared header (atomic \
        loads) and posts only into free slots, spinning then yielding when full. Every lossless \
        run checks lost == 0 and in-order seq.",
        throughput::BULK
    ));
    n.push(
        "Per-record rows: one thread, a 1-frame ring (4 KiB of records, L1-resident), 128 \
        records posted then taken per round; only the named side is timed, every round on its own \
        (Instant around the 128 records, not per record). A repetition of each side runs after \
        each throughput configuration, so the repetitions sample the whole section; the figure is \
        the median round of the least disturbed repetition (a busy SMT sibling or a preemption on \
        this shared host slows a stretch of rounds, up to 2x), with the median and 10th/90th \
        percentiles of all rounds beside it. The single-record producer pays hv.c's ring \
        spinlock (one locked instruction to take, a plain store to drop, as Xen's), the ring \
        core's full barrier before it reads req_event, and its event check per record; the \
        batched one pays them once per ≤64 records."
            .into(),
    );
    n.push(
        "Section 6: the tools' pager (pager::run) on the ring core, its policy returning at \
        once for vCPUs 1-3 and sleeping 200 ms for vCPU 0, which faults again as soon as it is \
        answered; the fast vCPUs fault one at a time, 100-400 µs apart; pause = raise to the \
        unpause the requester sees (polling, yielding). workers = 1 runs one policy at a time (a \
        slow one blocks everybody); the pool runs 4. Round trips: 16 vCPUs re-faulted by one \
        'Xen' thread as soon as they are unpaused; the waiter (SyncRing::wait + take_requests) \
        hands each batch of requests to 1, 2 or 4 threads in turn, which answer through \
        Responder::respond (kicks coalesced). On 2 cores more threads add handoffs, not cores."
            .into(),
    );
    n.push(
        "(a) models today's vm_event ring in the bench: 64 B sring header + 8 union slots of \
        400 B in one 4 KiB page; Xen copies a whole 400 B request in under the ring lock and \
        kicks the eventfd for every request; the consumer (xen-access-shaped) copies each request \
        out, writes a 400 B response back into the ring, and notifies Xen once per drain round, \
        which runs vm_event_resume (copies responses out, frees slots, wakes the producer); a \
        producer finding the ring full sleeps on its own eventfd until resume wakes it."
            .into(),
    );
    n.push(
        "(b) is a minimal lock-free SPSC queue (cached indices, Release/Acquire, \
        cache-line-padded) of the same 32 B records between two threads, the producer spinning \
        then yielding when full and the consumer spinning then yielding when empty: no \
        notification, no validation, no lock; it publishes its index after every record. (b') is \
        the same queue publishing its index once per ≤64 records written (the fair reference for \
        a ring posted in bulk). Ratios compare against (b) and (b') with the same slot count, \
        measured in the same pair."
            .into(),
    );
    n.push(format!(
        "OOM latency: the OOM consumer either sleeps on the event channel (SyncRing::wait) or \
            polls the producer index (SyncRing::available, spinning then yielding); alone, a \
            sleeping consumer pays a wake-up per event, which a flood (keeping it awake) can \
            hide, hence both modes. A requester thread (a vCPU) raises an OOM through \
            HarnessRing::raise_oom (the ring core pauses the vCPU and kicks the consumer's \
            eventfd); RTT = from just before the raise to the moment the vCPU is unpaused, \
            stamped on the consumer's thread right after the call that ran Xen's response \
            processing returned (flush() for the SyncRing; the response for the model). The \
            requester then waits for the unpause sleeping (10 µs polls, not timed), so that on 2 \
            cores it does not compete with the consumers. {} events per scenario in {} \
            interleaved rounds (alone and flood scenarios alternate, spreading machine noise over \
            all of them), 100–400 µs random gap between events. Per-type consumer = library \
            SyncRing (wait, take_requests, respond, flush) on its own thread.",
        cfg.oom_samples, cfg.oom_rounds
    ));
    n.push(format!(
        "Flood: its own producer thread posting bursts of {} invalidations at full speed (lossy: \
            the ring drops when full) with a sched_yield between bursts, at normal priority, into \
            a {}-frame ring with batch {}, consumed by its own thread doing a HashSet remove + \
            insert per record (the same per-record work in both designs). The yield is what keeps \
            a 4-thread scenario usable on 2 cores. Placement: the flood's producer and (per-type) \
            its consumer are pinned to CPU 0, the OOM consumer (or the single ring's consumer) to \
            CPU 1, as an operator gives a pager a CPU of its own; the requester is not pinned (it \
            sleeps while its vCPU is paused). SCHED_IDLE for the flood producers was tried \
            and rejected: it made a preempted producer holding the single ring's lock stall that \
            design's consumer (a priority inversion Xen's non-preemptible spinlocks do not have).",
        latency::FLOOD_BURST,
        latency::FLOOD_FRAMES,
        latency::FLOOD_BATCH
    ));
    n.push(format!(
        "Single-ring model: one {}-slot in-order ring of tagged 32 B records under one producer \
            lock (Xen's ring lock), invalidations lossy with one slot reserved per vCPU for OOM \
            requests, event-index kicks per {} invalidations and a kick per OOM request; one \
            consumer thread takes everything queued and processes it in ring order, answering an \
            OOM as soon as it reaches it (best case for that design; a consumer scanning ahead \
            for OOMs would shorten the wait but not the shared capacity/loss coupling). Its lock \
            is a fair ticket lock like Xen's spinlocks (std's Mutex let the flood producer starve \
            the OOM path for milliseconds); the vm_event model uses the same lock. 'records ahead \
            of an OOM' = records queued in the ring when the OOM request was posted.",
        latency::FLOOD_FRAMES * SLOTS_PER_FRAME,
        latency::FLOOD_BATCH
    ));
    n.push(
        "Memory: ring bytes include the header frame (and the response array for the sync \
        ring); the resident figures are for this whole benchmark process, which holds producers, \
        consumers and the models of every section, so they bound the consumer side from above."
            .into(),
    );
}
