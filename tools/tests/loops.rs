//! The tools' event loops against the harness: the hypervisor's ring code
//! on one side, the real loops (with their JSON output) on the other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use xen_mem_event::{AsyncRing, Backend, EventType, SyncRequest, SyncRing};
use xen_mem_event_harness::HarnessBackend;
use xen_mem_event_tools::detach::Cause;
use xen_mem_event_tools::output::{Format, Out};
use xen_mem_event_tools::pager::{
    self, Ended, MaxMemStep, MemControl, OnFailure, PagerOpts, Policy,
};
use xen_mem_event_tools::stop::Stop;
use xen_mem_event_tools::{status, watch};

const DOM: u16 = 7;

/// A domain allowance in memory, and the host's free memory.
#[derive(Debug, Default)]
struct FakeMem {
    kib: AtomicU64,
    crashed: Mutex<Vec<u16>>,
    /// 0: unlimited.
    host_free: AtomicU64,
}

impl MemControl for FakeMem {
    fn host_free_kib(&self) -> Result<u64, String> {
        match self.host_free.load(Ordering::SeqCst) {
            0 => Ok(u64::MAX),
            kib => Ok(kib),
        }
    }
    fn max_mem_kib(&self, _: u16) -> Result<u64, String> {
        Ok(self.kib.load(Ordering::SeqCst))
    }
    fn set_max_mem_kib(&self, _: u16, kib: u64) -> Result<(), String> {
        self.kib.store(kib, Ordering::SeqCst);
        Ok(())
    }
    fn crash(&self, domid: u16) -> Result<(), String> {
        self.crashed.lock().unwrap().push(domid);
        Ok(())
    }
}

fn lines(buf: &[u8]) -> Vec<Value> {
    String::from_utf8(buf.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn opts() -> PagerOpts {
    PagerOpts {
        poll: Duration::from_millis(20),
        backoff: Duration::from_millis(2),
        ..PagerOpts::default()
    }
}

#[test]
fn pager_frees_memory_then_answers_each_event() {
    let t0 = Instant::now();
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 4);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    for v in 0..4 {
        hv.raise_oom(v, 0x1000 * u64::from(v + 1)).unwrap();
    }
    hv.raise_foreign(0, 0x9000).unwrap();
    let mem = Arc::new(FakeMem {
        kib: AtomicU64::new(131_072),
        ..FakeMem::default()
    });
    let policy = Arc::new(MaxMemStep::new(Arc::clone(&mem), 1024, 1 << 20));
    let mut out = Out::new(Vec::new(), Format::Json);
    let o = PagerOpts {
        max_events: 4,
        ..opts()
    };
    let (ended, sum) = pager::run(&mut ring, policy, &mem, &o, &Stop::new(), &mut out).unwrap();
    assert_eq!(ended, Ended::Done);
    assert_eq!(
        (sum.events, sum.answered, sum.foreign, sum.failures),
        (5, 4, 1, 0)
    );
    // Four paused vCPUs and the foreign access: one step each.
    assert_eq!(mem.kib.load(Ordering::SeqCst), 131_072 + 5 * 1024);
    assert!((0..4).all(|v| hv.hv().pause_count(v) == 0));
    let mut unpaused = hv.unpaused();
    unpaused.sort_unstable();
    assert_eq!(unpaused, vec![0, 1, 2, 3]);

    let events = lines(&out.into_inner());
    let ooms: Vec<&Value> = events.iter().filter(|e| e["kind"] == "oom").collect();
    assert_eq!(ooms.len(), 4);
    for e in &ooms {
        assert_eq!(e["domid"], DOM);
        assert!(e["vcpu"].as_u64().unwrap() < 4);
        assert!(e["gfn"].as_u64().unwrap() >= 0x1000);
        assert!(e["id"].as_u64().unwrap() > 0);
        // Paused from when the pager took the request to the answer: within
        // this test's own lifetime.
        let paused = e["paused_ms"].as_f64().unwrap();
        assert!(
            paused.is_finite() && paused <= t0.elapsed().as_secs_f64() * 1e3,
            "paused_ms {paused}"
        );
        assert!(e["action"].as_str().unwrap().starts_with("maxmem "));
        assert_eq!(e["answered"], true);
    }
    let foreign: Vec<&Value> = events.iter().filter(|e| e["kind"] == "foreign").collect();
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign[0]["gfn"], 0x9000);
    assert!(foreign[0]["action"]
        .as_str()
        .unwrap()
        .starts_with("maxmem "));
    assert_eq!(foreign[0]["error"], Value::Null);
}

/// Fails `n` times, then succeeds.
struct Flaky {
    left: AtomicU32,
}

impl Flaky {
    fn new(n: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            left: AtomicU32::new(n),
        })
    }
}

impl Policy for Flaky {
    fn free(&self, _: &SyncRequest) -> Result<String, String> {
        match self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err("nothing to free".into()),
            Err(_) => Ok("freed".into()),
        }
    }
}

#[test]
fn policy_failure_keeps_the_vcpu_paused_and_retries_with_backoff() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 2);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    hv.raise_oom(1, 0x42).unwrap();
    let mem = FakeMem::default();
    let mut out = Out::new(Vec::new(), Format::Json);
    let o = PagerOpts {
        max_events: 1,
        ..opts()
    };
    let start = Instant::now();
    let (ended, sum) =
        pager::run(&mut ring, Flaky::new(3), &mem, &o, &Stop::new(), &mut out).unwrap();
    assert_eq!(ended, Ended::Done);
    assert_eq!((sum.failures, sum.answered), (3, 1));
    // Backoff 2 + 4 + 8 ms at least.
    assert!(start.elapsed() >= Duration::from_millis(14));
    assert_eq!(hv.hv().pause_count(1), 0);
    let events = lines(&out.into_inner());
    let retries: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "retry")
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(retries, vec![1, 2, 3]);
    let delays: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "retry")
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays, vec![2, 4, 8]);
    assert!(mem.crashed.lock().unwrap().is_empty());
}

#[test]
fn ctrl_c_with_pending_requests_releases_them_and_unregisters() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 3);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    for v in 0..3 {
        hv.raise_oom(v, u64::from(v)).unwrap();
    }
    let stop = Stop::new();
    let stopper = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            stop.request();
        })
    };
    let mem = FakeMem::default();
    let mut out = Out::new(Vec::new(), Format::Human);
    let (ended, sum) = pager::run(
        &mut ring,
        Flaky::new(u32::MAX),
        &mem,
        &opts(),
        &stop,
        &mut out,
    )
    .unwrap();
    stopper.join().unwrap();
    assert_eq!(ended, Ended::Stopped);
    assert_eq!(sum.answered, 0);
    assert_eq!(sum.released_at_exit, 3, "answered what was pending");
    assert!(sum.failures >= 3);
    assert!((0..3).all(|v| hv.hv().pause_count(v) == 0));
    drop(ring);
    assert!(
        xen.get_info(DOM, EventType::SharingOom).is_err(),
        "unregistered on detach"
    );
    let text = String::from_utf8(out.into_inner()).unwrap();
    assert!(text.contains("vCPU stays paused, retry 1"), "{text}");
}

#[test]
fn on_failure_crash_and_resume() {
    for (mode, crashed, resumed) in [(OnFailure::Crash, 1, 0), (OnFailure::Resume, 0, 1)] {
        let xen = HarnessBackend::new();
        xen.add_domain(DOM, 1);
        let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
        let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
        hv.raise_oom(0, 5).unwrap();
        let mem = FakeMem::default();
        let mut out = Out::new(Vec::new(), Format::Json);
        let o = PagerOpts {
            on_failure: mode,
            max_events: 1,
            ..opts()
        };
        let (ended, sum) = pager::run(
            &mut ring,
            Flaky::new(u32::MAX),
            &mem,
            &o,
            &Stop::new(),
            &mut out,
        )
        .unwrap();
        assert_eq!(mem.crashed.lock().unwrap().len(), crashed);
        assert_eq!(sum.resumed, resumed);
        assert_eq!(
            ended,
            if crashed == 1 {
                Ended::Crashed
            } else {
                Ended::Done
            }
        );
        let kinds: Vec<String> = lines(&out.into_inner())
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, vec![if crashed == 1 { "crash" } else { "oom" }]);
    }
}

#[test]
fn watcher_reports_records_and_exact_losses() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(16)
        .register()
        .unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    // 300 records into 128 slots before the watcher runs: 172 lost.
    for i in 0..300u64 {
        let gone = if i % 3 == 0 { 1 } else { 0 };
        hv.put_invalidate(0x100 + i % 50, i, DOM, 2, gone);
    }
    let mut out = Out::new(Vec::new(), Format::Json);
    let o = watch::WatchOpts {
        batch: 16,
        records: true,
        max_records: 128,
        ..watch::WatchOpts::default()
    };
    let (ended, sum) = watch::run(&mut ring, &o, &Stop::new(), &mut out).unwrap();
    assert_eq!(ended, watch::Ended::Done);
    assert_eq!((sum.records, sum.lost), (128, 172));
    let info = ring.ring().info().unwrap();
    assert_eq!(info.produced, sum.records);
    assert_eq!(info.produced + info.lost, 300);
    let events = lines(&out.into_inner());
    let lost: Vec<&Value> = events.iter().filter(|e| e["kind"] == "lost").collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["count"], 172);
    let recs: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "invalidate")
        .collect();
    assert_eq!(recs.len(), 128);
    for r in &recs {
        assert_eq!(r["domid"], DOM);
        assert_eq!(r["reason"], "unshared");
        assert!(
            r["handle"].as_u64().is_some()
                && r["seq"].as_u64().is_some()
                && r["gfn"].as_u64().is_some()
        );
        assert_eq!(r["handle_gone"], r["gfn"].as_u64().unwrap() % 3 == 0);
    }
    // Handles 0x100.. with gfn % 3 == 0 among the first 128 records.
    let expect: std::collections::BTreeSet<u64> = (0..128u64)
        .filter(|i| i % 3 == 0)
        .map(|i| 0x100 + i % 50)
        .collect();
    assert_eq!(sum.handles_gone, expect);
}

#[test]
fn watcher_summary_lines_and_domain_destruction() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(2)
        .batch(8)
        .register()
        .unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    let producer = {
        let xen = Arc::clone(&xen);
        thread::spawn(move || {
            for i in 0..100u64 {
                hv.put_invalidate(i, i, DOM, 1, 1);
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(Duration::from_millis(300));
            xen.destroy_domain(DOM);
        })
    };
    let mut out = Out::new(Vec::new(), Format::Json);
    let o = watch::WatchOpts {
        batch: 8,
        interval: Duration::from_millis(100),
        ..watch::WatchOpts::default()
    };
    let (ended, sum) = watch::run(&mut ring, &o, &Stop::new(), &mut out).unwrap();
    producer.join().unwrap();
    assert_eq!(ended, watch::Ended::DomainGone);
    assert_eq!(sum.records, 100, "the trickle's tail was drained too");
    let events = lines(&out.into_inner());
    let intervals: Vec<&Value> = events.iter().filter(|e| e["kind"] == "interval").collect();
    assert!(intervals.len() >= 2, "{events:?}");
    let total: u64 = intervals
        .iter()
        .map(|e| e["records"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100);
    for e in intervals {
        for k in [
            "secs",
            "rate",
            "batches",
            "avg_batch",
            "lost",
            "handles_gone",
            "total_records",
            "total_lost",
        ] {
            assert!(!e[k].is_null(), "interval line lacks {k}");
        }
    }
}

#[test]
fn status_rows_and_json() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 2);
    xen.add_domain(DOM + 1, 2);
    let _oom = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let _inval = AsyncRing::builder(Arc::clone(&xen), DOM + 1)
        .frames(4)
        .batch(32)
        .register()
        .unwrap();
    let rows = status::collect(&*xen, &[DOM, DOM + 1]).unwrap();
    assert_eq!(rows.len(), 2);
    let table = status::table(&rows);
    assert!(table.starts_with("DOMID"));
    assert!(table.contains("SHARING_OOM") && table.contains("SHARING_INVALIDATE"));
    let j = serde_json::to_value(status::RingRow::from(&rows[1])).unwrap();
    assert_eq!(j["kind"], "ring");
    assert_eq!(j["type"], "SHARING_INVALIDATE");
    assert_eq!(
        (
            j["frames"].as_u64(),
            j["slots"].as_u64(),
            j["batch"].as_u64()
        ),
        (Some(5), Some(512), Some(32))
    );
    for k in [
        "consumer",
        "produced",
        "consumed",
        "lost",
        "bad_responses",
        "notifications",
        "paused_vcpus",
        "connected",
        "broken",
        "consumer_gone",
    ] {
        assert!(!j[k].is_null(), "status JSON lacks {k}");
    }
    assert!(
        status::collect(&*xen, &[99]).is_err(),
        "a missing domain asked for alone is an error"
    );
}

/// Stops the loop after `after` if the condition under test never ends it
/// (so that a missing fix fails the test instead of hanging it).
fn watchdog(stop: &Stop, after: Duration) {
    let stop = stop.clone();
    thread::spawn(move || {
        thread::sleep(after);
        stop.request();
    });
}

#[test]
fn pager_notices_a_takeover_and_says_so() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 2);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let taker = {
        let xen = Arc::clone(&xen);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            SyncRing::builder(xen, DOM)
                .takeover(true)
                .register()
                .unwrap()
        })
    };
    let stop = Stop::new();
    watchdog(&stop, Duration::from_secs(10));
    let mem = Arc::new(FakeMem::default());
    let policy = Arc::new(MaxMemStep::new(Arc::clone(&mem), 1024, 1 << 20));
    let mut out = Out::new(Vec::new(), Format::Json);
    let (ended, _) = pager::run(&mut ring, policy, &mem, &opts(), &stop, &mut out).unwrap();
    let new = taker.join().unwrap();
    match ended {
        Ended::Detached(d) => assert_eq!(d.cause, Cause::TakenOver),
        other => panic!("ended {other:?}"),
    }
    assert_eq!(ended.as_str(), "taken over");
    let events = lines(&out.into_inner());
    let det: Vec<&Value> = events.iter().filter(|e| e["kind"] == "detached").collect();
    assert_eq!(det.len(), 1, "{events:?}");
    assert_eq!(det[0]["cause"], "taken_over");
    assert_eq!(det[0]["type"], "SHARING_OOM");
    // The old consumer's teardown leaves the new ring alone.
    let t = ring.close();
    assert!(!t.unregistered && t.is_clean(), "{t:?}");
    assert!(xen.get_info(DOM, EventType::SharingOom).is_ok());
    drop(new);
}

#[test]
fn watcher_notices_an_unregister_and_a_dying_domain() {
    for destroy in [false, true] {
        let xen = HarnessBackend::new();
        xen.add_domain(DOM, 1);
        let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
            .register()
            .unwrap();
        let token = ring.ring().token();
        {
            let xen = Arc::clone(&xen);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                if destroy {
                    xen.destroy_domain(DOM);
                } else {
                    xen.unregister(DOM, EventType::SharingInvalidate, token)
                        .unwrap();
                }
            });
        }
        let stop = Stop::new();
        watchdog(&stop, Duration::from_secs(10));
        let mut out = Out::new(Vec::new(), Format::Human);
        let o = watch::WatchOpts {
            interval: Duration::from_millis(20),
            ..watch::WatchOpts::default()
        };
        let (ended, _) = watch::run(&mut ring, &o, &stop, &mut out).unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        if destroy {
            assert_eq!(ended, watch::Ended::DomainGone);
            assert!(text.contains("domain destroyed; detached"), "{text}");
        } else {
            assert!(
                matches!(ended, watch::Ended::Detached(d) if d.cause == Cause::Unregistered),
                "{ended:?}"
            );
            assert!(text.contains("unregistered by someone else"), "{text}");
        }
    }
}

#[test]
fn watcher_writes_handles_every_interval_atomically() {
    let dir = std::env::temp_dir().join(format!("xme-handles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("handles");
    let _ = std::fs::remove_file(&path);
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .batch(1)
        .register()
        .unwrap();
    let hv = xen.ring(DOM, EventType::SharingInvalidate).unwrap();
    hv.put_invalidate(0xabc, 1, DOM, 1, 1);
    let stop = Stop::new();
    // Stop once the file shows the handle, while the watcher still runs.
    let seen = {
        let stop = stop.clone();
        let path = path.clone();
        thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if std::fs::read_to_string(&path).is_ok_and(|s| s == "0xabc\n") {
                    stop.request();
                    return true;
                }
                thread::sleep(Duration::from_millis(5));
            }
            stop.request();
            false
        })
    };
    let o = watch::WatchOpts {
        batch: 1,
        interval: Duration::from_millis(20),
        write_handles: Some(path.clone()),
        ..watch::WatchOpts::default()
    };
    let mut out = Out::new(Vec::new(), Format::Json);
    let (ended, _) = watch::run(&mut ring, &o, &stop, &mut out).unwrap();
    assert!(
        seen.join().unwrap(),
        "the file was not written while running"
    );
    assert_eq!(ended, watch::Ended::Stopped);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "0xabc\n");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watcher_start_line_shows_the_batch_in_force() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = AsyncRing::builder(Arc::clone(&xen), DOM)
        .frames(1)
        .batch(100_000)
        .register()
        .unwrap();
    let stop = Stop::new();
    stop.request();
    let o = watch::WatchOpts {
        batch: 100_000,
        ..watch::WatchOpts::default()
    };
    let mut out = Out::new(Vec::new(), Format::Human);
    watch::run(&mut ring, &o, &stop, &mut out).unwrap();
    let text = String::from_utf8(out.into_inner()).unwrap();
    // At most half the ring, and the watcher says it clamped --batch.
    assert!(
        text.contains("(128 slots, batch 64 (--batch 100000 clamped to half the ring))"),
        "{text}"
    );
}

#[test]
fn invalidate_reasons_are_stable_snake_case() {
    use xen_mem_event_tools::watch::Reason;
    assert_eq!(serde_json::to_value(Reason::Merged).unwrap(), "merged");
    assert_eq!(serde_json::to_value(Reason::Unshared).unwrap(), "unshared");
    assert_eq!(Reason::Merged.to_string(), "merged");
}

/// Blocks for vCPU 0 until released; returns at once for every other vCPU.
#[derive(Default)]
struct BlockVcpu0 {
    /// (entered for vCPU 0, released)
    state: Mutex<(bool, bool)>,
    cond: Condvar,
}

impl Policy for BlockVcpu0 {
    fn free(&self, req: &SyncRequest) -> Result<String, String> {
        if req.vcpu_id == 0 {
            let mut st = self.state.lock().unwrap();
            st.0 = true;
            self.cond.notify_all();
            while !st.1 {
                st = self.cond.wait(st).unwrap();
            }
            return Ok("slow".into());
        }
        Ok("fast".into())
    }
}

#[test]
fn a_policy_blocked_for_one_vcpu_delays_no_other() {
    const VCPUS: u32 = 4;
    const ROUNDS: u32 = 50;
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, VCPUS);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    let policy = Arc::new(BlockVcpu0::default());
    let stop = Stop::new();
    // Bounds the test: a pager that serialises the policies never answers
    // the others, and this stops it instead of hanging.
    watchdog(&stop, Duration::from_secs(30));
    let pager = {
        let policy: Arc<dyn Policy> = policy.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mem = FakeMem::default();
            let mut out = Out::new(Vec::new(), Format::Json);
            let o = PagerOpts {
                workers: 2,
                ..opts()
            };
            let r = pager::run(&mut ring, policy, &mem, &o, &stop, &mut out).unwrap();
            (r, out.into_inner())
        })
    };
    // vCPU 0 faults first, and its policy starts.
    hv.raise_oom(0, 0xa000).unwrap();
    {
        let mut st = policy.state.lock().unwrap();
        while !st.0 {
            st = policy.cond.wait(st).unwrap();
        }
    }
    // Every other vCPU faults again and again, and is answered each time,
    // while vCPU 0's policy is still running.
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0..ROUNDS {
        for v in 1..VCPUS {
            hv.raise_oom(v, u64::from(round) << 12 | u64::from(v))
                .unwrap();
        }
        for v in 1..VCPUS {
            while hv.hv().pause_count(v) != 0 {
                assert!(
                    Instant::now() < deadline && !stop.requested(),
                    "vCPU {v} was not answered while vCPU 0's policy ran (round {round})"
                );
                thread::yield_now();
            }
        }
        assert_eq!(hv.hv().pause_count(0), 1, "vCPU 0 still waits");
        assert!(!policy.state.lock().unwrap().1);
    }
    // Release vCPU 0's policy: then it is answered too.
    {
        let mut st = policy.state.lock().unwrap();
        st.1 = true;
        policy.cond.notify_all();
    }
    while hv.hv().pause_count(0) != 0 {
        assert!(Instant::now() < deadline, "vCPU 0 never answered");
        thread::yield_now();
    }
    stop.request();
    let ((ended, sum), out) = pager.join().unwrap();
    assert_eq!(ended, Ended::Stopped);
    assert_eq!(sum.answered, u64::from((VCPUS - 1) * ROUNDS + 1));
    assert_eq!(sum.released_at_exit, 0);
    // In the output too: vCPU 0's answer comes after every other one.
    let vcpus: Vec<u64> = lines(&out)
        .iter()
        .filter(|e| e["kind"] == "oom")
        .map(|e| e["vcpu"].as_u64().unwrap())
        .collect();
    assert_eq!(vcpus.len() as u64, sum.answered);
    assert_eq!(vcpus.last(), Some(&0));
    let s = hv.hv().stats();
    assert_eq!((s.bad_responses, s.paused), (0, 0));
    assert_eq!(s.consumed, sum.answered);
}

#[test]
fn reserve_keeps_the_host_free_memory_above_it() {
    let xen = HarnessBackend::new();
    xen.add_domain(DOM, 1);
    let mut ring = SyncRing::register(Arc::clone(&xen), DOM, 1).unwrap();
    let hv = xen.ring(DOM, EventType::SharingOom).unwrap();
    hv.raise_oom(0, 0x42).unwrap();
    // 1 MiB free, a 4 MiB reserve: no raise.
    let mem = Arc::new(FakeMem {
        kib: AtomicU64::new(65_536),
        host_free: AtomicU64::new(1024),
        ..FakeMem::default()
    });
    let policy = Arc::new(MaxMemStep::new(Arc::clone(&mem), 1024, 1 << 20).reserve(4096));
    // The host frees memory after a few refusals.
    let freer = {
        let mem = Arc::clone(&mem);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            mem.host_free.store(64 * 1024, Ordering::SeqCst);
        })
    };
    let mut out = Out::new(Vec::new(), Format::Json);
    let o = PagerOpts {
        max_events: 1,
        ..opts()
    };
    let stop = Stop::new();
    watchdog(&stop, Duration::from_secs(10));
    let (ended, sum) = pager::run(&mut ring, policy, &mem, &o, &stop, &mut out).unwrap();
    freer.join().unwrap();
    assert_eq!(ended, Ended::Done);
    assert_eq!(sum.answered, 1);
    assert!(sum.failures >= 1);
    assert_eq!(mem.kib.load(Ordering::SeqCst), 65_536 + 1024, "raised once");
    let events = lines(&out.into_inner());
    let retry = events.iter().find(|e| e["kind"] == "retry").unwrap();
    assert!(
        retry["error"]
            .as_str()
            .unwrap()
            .contains("reserve 4096 KiB"),
        "{retry}"
    );
    assert_eq!(events.last().unwrap()["kind"], "oom");
}

#[test]
fn pager_events_are_modelled_once() {
    let e = pager::PagerEvent::Retry {
        domid: 3,
        vcpu: 1,
        gfn: 0x42,
        error: "no".into(),
        attempt: 2,
        delay_ms: 20,
    };
    assert_eq!(
        e.to_string(),
        "d3 vcpu 1 gfn 0x42: cannot free memory (no); vCPU stays paused, retry 2 in 20 ms"
    );
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["kind"], "retry");
    assert_eq!(
        (j["attempt"].as_u64(), j["delay_ms"].as_u64()),
        (Some(2), Some(20))
    );
}
