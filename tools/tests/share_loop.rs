//! The `share` loop against the model tier: `xen-mem-event-share`'s
//! `ModelXen` (Xen's sharing: frames, handles, unshare on write) for the
//! pages, and the library's `FakeXen` (Xen's ring core) for the
//! `SHARING_INVALIDATE` rings, the model's records forwarded into them.
//! The real loop runs on its own thread with its JSON output; the test
//! thread plays the guests (writes, domains created and destroyed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use xen_mem_event::testing::FakeXen;
use xen_mem_event::{AsyncRing, EventType, InvalidateReason};
use xen_mem_event_share::model::ModelXen;
use xen_mem_event_share::{
    Config, DomId, Gfn, GfnRef, Handle, HostCounters, OpError, Page, PageSource, Reason, Sharing,
};
use xen_mem_event_tools::output::{Format, Out};
use xen_mem_event_tools::share::{self, DomainSource, DomainState, Host, ShareOpts, Summary};
use xen_mem_event_tools::stop::Stop;
use xen_mem_event_tools::ToolError;

/// The model's sharing plus the fake's rings, as one host.
#[derive(Debug, Clone)]
struct Bridge {
    model: Arc<Mutex<ModelXen>>,
    fake: FakeXen,
    pv: Arc<Mutex<BTreeSet<DomId>>>,
    no_sharing: Arc<Mutex<BTreeSet<DomId>>>,
    /// The domain watch: a byte written per domain created or destroyed
    /// (xenstore's @introduceDomain / @releaseDomain), read by the loop.
    watch: Arc<(UnixStream, UnixStream)>,
}

impl Bridge {
    fn new() -> Bridge {
        Bridge {
            model: Arc::new(Mutex::new(ModelXen::new(1 << 20))),
            fake: FakeXen::new(),
            pv: Arc::default(),
            no_sharing: Arc::default(),
            watch: Arc::new({
                let (w, r) = UnixStream::pair().unwrap();
                r.set_nonblocking(true).unwrap();
                (w, r)
            }),
        }
    }

    /// Fires the domain watch.
    fn fire(&self) {
        (&self.watch.0).write_all(b"!").unwrap();
    }

    fn m(&self) -> MutexGuard<'_, ModelXen> {
        self.model.lock().unwrap()
    }

    /// A domain whose gfn `g` holds `ModelXen::pattern(classes(g))`.
    fn domain(&self, d: DomId, gfns: u64, classes: impl Fn(u64) -> u64) {
        self.domain_unannounced(d, gfns, classes);
        self.fire();
    }

    /// The same without firing the watch.
    fn domain_unannounced(&self, d: DomId, gfns: u64, classes: impl Fn(u64) -> u64) {
        self.fake.add_domain(d, 1);
        let mut m = self.m();
        m.add_domain(d, gfns);
        for g in 0..gfns {
            m.guest_write(GfnRef::new(d, g), &ModelXen::pattern(classes(g)));
        }
        drop(m);
        self.forward();
    }

    fn write(&self, p: GfnRef, class: u64) {
        self.m().guest_write(p, &ModelXen::pattern(class));
        self.forward();
    }

    fn destroy(&self, d: DomId) {
        self.m().remove_domain(d);
        self.fake.destroy_domain(d);
        self.fire();
    }

    /// Moves the model's records into the fake's rings (which count what
    /// they cannot hold as lost, as Xen does).
    fn forward(&self) {
        let mut m = self.m();
        for d in m.domains() {
            for r in m.take_batch(d).map(|b| b.records).unwrap_or_default() {
                let reason = match r.reason {
                    Reason::Merged => InvalidateReason::Merged,
                    _ => InvalidateReason::Unshared,
                };
                self.fake
                    .put_async(d, r.handle, r.gfn, reason, r.handle_gone);
            }
        }
    }
}

impl PageSource for Bridge {
    fn gfn_count(&mut self, domid: DomId) -> Result<u64, OpError> {
        self.m().gfn_count(domid)
    }
    fn read_pages(
        &mut self,
        domid: DomId,
        gfns: &[Gfn],
        each: &mut dyn FnMut(Gfn, Result<&Page, OpError>),
    ) -> Result<(), OpError> {
        self.m().read_pages(domid, gfns, each)
    }
}

impl Sharing for Bridge {
    fn nominate(&mut self, page: GfnRef) -> Result<Handle, OpError> {
        self.m().nominate(page)
    }
    fn share(&mut self, s: GfnRef, sh: Handle, c: GfnRef, ch: Handle) -> Result<(), OpError> {
        let r = self.m().share(s, sh, c, ch);
        self.forward();
        r
    }
    fn host_counters(&mut self) -> Result<HostCounters, OpError> {
        self.m().host_counters()
    }
}

impl DomainSource for Bridge {
    fn domains(&mut self) -> Result<Vec<DomainState>, String> {
        let pv = self.pv.lock().unwrap().clone();
        let mut all: Vec<DomainState> = self
            .m()
            .domains()
            .into_iter()
            .map(|domid| DomainState { domid, hvm: true })
            .collect();
        all.extend(pv.iter().map(|&domid| DomainState { domid, hvm: false }));
        Ok(all)
    }
    fn watch_fd(&self) -> BorrowedFd<'_> {
        self.watch.1.as_fd()
    }
    fn domains_changed(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 64];
        let mut any = false;
        loop {
            match (&self.watch.1).read(&mut buf) {
                Ok(0) => return Ok(any),
                Ok(_) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Host for Bridge {
    fn enable_sharing(&mut self, domid: DomId) -> Result<(), String> {
        if self.no_sharing.lock().unwrap().contains(&domid) {
            return Err("Operation not supported (os error 95)".into());
        }
        Ok(())
    }
}

/// Output both threads can see.
#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    /// The complete lines written so far (the loop writes a line in
    /// several calls).
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
    fn kind(&self, kind: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["kind"] == kind)
            .collect()
    }
    fn last_interval(&self) -> Option<Value> {
        self.kind("interval").pop()
    }
}

struct Running {
    out: Shared,
    stop: Stop,
    handle: thread::JoinHandle<Result<Summary, ToolError>>,
}

fn opts(domains: &[DomId]) -> ShareOpts {
    ShareOpts {
        domains: domains.to_vec(),
        config: Config {
            batch: 16,
            pages_per_pass: 256,
            pass_interval: Duration::from_millis(5),
            ..Config::default()
        },
        frames: 1,
        ring_batch: 8,
        interval: Duration::from_millis(20),
        ..ShareOpts::default()
    }
}

fn start(bridge: &Bridge, o: ShareOpts) -> Running {
    let out = Shared::default();
    let stop = Stop::new();
    let (mut host, fake, w, st) = (
        bridge.clone(),
        bridge.fake.clone(),
        out.clone(),
        stop.clone(),
    );
    let handle = thread::spawn(move || {
        let mut out = Out::new(w, Format::Json);
        share::run(fake, &mut host, &o, &st, &mut out)
    });
    Running { out, stop, handle }
}

impl Running {
    /// Waits (10 s at most) until `cond` holds of the last status line.
    fn until(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.out.last_interval().filter(|v| cond(v)) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}; last: {:?}",
                self.out.last_interval()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(self) -> (Summary, Shared) {
        self.stop.request();
        let s = self.handle.join().unwrap().unwrap();
        (s, self.out)
    }
}

/// 64 gfns: 0-15 zero, 16-31 class 1, 32-63 unique to the domain.
fn guest(b: &Bridge, d: DomId) {
    b.domain(d, 64, |g| match g {
        0..=15 => 0,
        16..=31 => 1,
        _ => 1000 * u64::from(d) + g,
    });
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn shares_what_is_identical_across_domains_then_detaches_on_stop() {
    let b = Bridge::new();
    for d in 1..=3 {
        guest(&b, d);
    }
    let run = start(&b, opts(&[1, 2, 3]));
    // 48 zero pages on one frame, 48 class-1 pages on another.
    run.until("94 pages sharing", |v| n(v, "pages_sharing") == 94);
    assert_eq!(run.out.kind("managed").len(), 3);
    for d in 1..=3 {
        assert!(b.fake.token(d, EventType::SharingInvalidate).is_some());
    }
    let (s, out) = run.stop();
    assert!(s.stats.consistent(), "{s}");
    assert_eq!((s.xen.saved_pages, s.xen.shared_frames), (94, 2));
    assert!(s.agrees, "{s}");
    assert_eq!(s.stats.stale_failures(), 0);
    assert_eq!(s.teardown_failures, 0);
    let m = b.m();
    for d in 1..=3u16 {
        for g in 32..64 {
            assert_eq!(m.handle_of(GfnRef::new(d, g)), None, "unique page shared");
        }
    }
    drop(m);
    for d in 1..=3 {
        assert_eq!(
            b.fake.token(d, EventType::SharingInvalidate),
            None,
            "unregistered"
        );
    }
    let sum = out.kind("summary");
    assert_eq!(sum.len(), 1);
    assert_eq!(sum[0]["ended"], "stopped");
}

#[test]
fn guest_writes_reach_the_table_through_the_rings() {
    let b = Bridge::new();
    guest(&b, 1);
    guest(&b, 2);
    let run = start(&b, opts(&[1, 2]));
    run.until("62 sharing", |v| n(v, "pages_sharing") == 62);
    // The guests write over half their shared pages (unshared: records),
    // then write shared contents back into some of them.
    for d in 1..=2 {
        for g in (0..32).step_by(2) {
            b.write(GfnRef::new(d, g), 5000 + 100 * u64::from(d) + g);
        }
    }
    // 62 MERGED records from the shares, 32 UNSHARED from the writes.
    let v = run.until("the unshares applied", |v| {
        n(v, "records_applied") == 62 + 32 && n(v, "pages_sharing") == 30
    });
    assert_eq!(n(&v, "stale_source") + n(&v, "stale_client"), 0);
    for d in 1..=2 {
        for g in (0..16).step_by(4) {
            b.write(GfnRef::new(d, g), 0);
        }
    }
    // 24 zero pages (23 saved), 16 class-1 pages (15 saved).
    run.until("re-shared", |v| n(v, "pages_sharing") == 38);
    let (s, _) = run.stop();
    assert!(s.stats.consistent(), "{s}");
    assert!(s.agrees, "{s}");
    assert_eq!(s.stats.stale_failures(), 0, "{s}");
    assert_eq!(s.stats.records_lost, 0);
}

#[test]
fn bad_domains_get_one_line_each_and_the_others_are_managed() {
    let b = Bridge::new();
    guest(&b, 1);
    guest(&b, 2);
    guest(&b, 6);
    b.pv.lock().unwrap().insert(4);
    b.no_sharing.lock().unwrap().insert(2);
    // Another consumer holds domain 6's ring.
    let _other = AsyncRing::register(b.fake.clone(), 6, 1).unwrap();
    let run = start(&b, opts(&[1, 2, 4, 6, 9]));
    run.until("domain 1 shared", |v| n(v, "pages_sharing") == 30);
    let (s, out) = run.stop();
    let refused = out.kind("refused");
    let by = |d: u64| -> Vec<String> {
        refused
            .iter()
            .filter(|v| v["domid"] == d)
            .map(|v| v["error"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(
        by(2)[0].contains("cannot enable memory sharing"),
        "{refused:?}"
    );
    assert!(by(4)[0].contains("PV"), "{refused:?}");
    assert!(by(6)[0].contains("--takeover"), "{refused:?}");
    assert_eq!(by(9), ["no such domain"]);
    assert_eq!(out.kind("managed").len(), 1);
    assert_eq!(s.domains, 1);
}

#[test]
fn no_domain_at_all_is_a_runtime_error() {
    let b = Bridge::new();
    b.pv.lock().unwrap().insert(4);
    let run = start(&b, opts(&[4, 9]));
    let r = run.handle.join().unwrap();
    assert!(
        matches!(r, Err(ToolError::Other(ref m)) if m.contains("no domain")),
        "{r:?}"
    );
    assert_eq!(run.out.kind("refused").len(), 2);
}

#[test]
fn a_destroyed_domain_is_forgotten_and_the_others_kept() {
    let b = Bridge::new();
    for d in 1..=3 {
        guest(&b, d);
    }
    let run = start(&b, opts(&[1, 2, 3]));
    run.until("94 sharing", |v| n(v, "pages_sharing") == 94);
    b.destroy(2);
    run.until("two domains left", |v| n(v, "domains") == 2);
    let gone = run.out.kind("forgotten");
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["domid"], 2);
    assert!(
        gone[0]["why"].as_str().unwrap().contains("destroyed"),
        "{gone:?}"
    );
    guest(&b, 2);
    let (s, _) = run.stop();
    assert!(s.stats.consistent(), "{s}");
    assert_eq!((s.domains, s.xen.saved_pages), (2, 62));
    assert!(s.agrees, "{s}");
}

#[test]
fn all_picks_up_domains_as_they_appear() {
    let b = Bridge::new();
    guest(&b, 1);
    b.pv.lock().unwrap().insert(7);
    let run = start(
        &b,
        ShareOpts {
            all: true,
            ..opts(&[])
        },
    );
    let first = run.until("domain 1", |v| n(v, "pages_sharing") == 30);
    // A domain the watch does not announce is not looked for (no polling
    // of the domain list): ten status lines later, still one domain.
    b.domain_unannounced(5, 64, |g| match g {
        0..=15 => 0,
        16..=31 => 1,
        _ => 5_000 + g,
    });
    let t0 = first["t"].as_f64().unwrap();
    let later = run.until("ten more status lines", |v| {
        v["t"].as_f64().unwrap() > t0 + 0.2
    });
    assert_eq!(n(&later, "domains"), 1, "{later}");
    b.fire();
    run.until("domain 5 too", |v| n(v, "pages_sharing") == 62);
    let (s, out) = run.stop();
    let managed: Vec<u64> = out
        .kind("managed")
        .iter()
        .map(|v| v["domid"].as_u64().unwrap())
        .collect();
    assert_eq!(managed, [1, 5]);
    assert!(
        out.kind("refused").is_empty(),
        "PV domains are skipped by --all"
    );
    assert!(s.agrees, "{s}");
}

#[test]
fn without_invalidate_no_ring_is_registered() {
    let b = Bridge::new();
    guest(&b, 1);
    guest(&b, 2);
    let mut o = opts(&[1, 2]);
    o.config.invalidate = false;
    let run = start(&b, o);
    run.until("62 sharing", |v| n(v, "pages_sharing") == 62);
    assert_eq!(b.fake.token(1, EventType::SharingInvalidate), None);
    assert_eq!(run.out.kind("managed")[0]["slots"], 0);
    let (s, _) = run.stop();
    assert_eq!(s.stats.records_applied, 0);
    assert!(s.stats.consistent(), "{s}");
}

#[test]
fn duration_ends_the_run() {
    let b = Bridge::new();
    guest(&b, 1);
    let run = start(
        &b,
        ShareOpts {
            duration: Some(Duration::from_millis(300)),
            ..opts(&[1])
        },
    );
    let s = run.handle.join().unwrap().unwrap();
    assert_eq!(s.ended, share::Ended::Done);
    assert!(s.secs >= 0.3 && s.secs < 5.0, "{}", s.secs);
}
