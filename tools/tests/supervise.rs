//! `pager --all` / `watch --all`'s supervisor against a fake domain list
//! and watch, with `sleep` (or a failing `sh`) as the per-domain child.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use xen_mem_event_tools::domains::{DomainSource, DomainState};
use xen_mem_event_tools::output::{Format, Out};
use xen_mem_event_tools::stop::Stop;
use xen_mem_event_tools::supervise::{self, Spawn};

/// Domains (id -> hvm) and the watch that announces changes.
#[derive(Clone)]
struct Fake {
    list: Arc<Mutex<BTreeMap<u16, bool>>>,
    watch: Arc<(UnixStream, UnixStream)>,
}

impl Fake {
    fn new(domains: &[(u16, bool)]) -> Fake {
        let (w, r) = UnixStream::pair().unwrap();
        r.set_nonblocking(true).unwrap();
        Fake {
            list: Arc::new(Mutex::new(domains.iter().copied().collect())),
            watch: Arc::new((w, r)),
        }
    }
    fn set(&self, domid: u16, hvm: Option<bool>) {
        match hvm {
            Some(h) => self.list.lock().unwrap().insert(domid, h),
            None => self.list.lock().unwrap().remove(&domid),
        };
        (&self.watch.0).write_all(b"!").unwrap();
    }
}

impl DomainSource for Fake {
    fn domains(&mut self) -> Result<Vec<DomainState>, String> {
        Ok(self
            .list
            .lock()
            .unwrap()
            .iter()
            .map(|(&domid, &hvm)| DomainState { domid, hvm })
            .collect())
    }
    fn watch_fd(&self) -> BorrowedFd<'_> {
        self.watch.1.as_fd()
    }
    fn domains_changed(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 16];
        let mut any = false;
        while let Ok(n) = (&self.watch.1).read(&mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        Ok(any)
    }
}

/// Domain 4's consumer fails at once; the others run until killed.
struct Sleepers;

impl Spawn for Sleepers {
    fn spawn(&mut self, domid: u16) -> std::io::Result<Child> {
        if domid == 4 {
            Command::new("sh").args(["-c", "exit 1"]).spawn()
        } else {
            Command::new("sleep").arg("30").spawn()
        }
    }
}

#[derive(Clone, Default)]
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
    fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
    fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.lines().into_iter().find(|v| f(v)) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }
    fn count(&self, kind: &str, domid: u64) -> usize {
        self.lines()
            .iter()
            .filter(|v| v["kind"] == kind && v["domid"] == domid)
            .count()
    }
}

/// SIGKILL to the child a "started" line names.
fn kill(started: &Value) {
    let pid = i32::try_from(started["pid"].as_u64().unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

fn is(kind: &'static str, domid: u64) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == kind && v["domid"] == domid
}

#[test]
fn a_child_per_hvm_domain_as_they_come_and_go() {
    let fake = Fake::new(&[(1, true), (2, false)]);
    let out = Shared::default();
    let stop = Stop::new();
    let handle = {
        let (mut fake, out, stop) = (fake.clone(), out.clone(), stop.clone());
        thread::spawn(move || {
            let mut o = Out::new(out, Format::Json);
            supervise::run("pager", &mut fake, &mut Sleepers, &stop, &mut o)
        })
    };
    let d1 = out.wait_for("d1 started", is("started", 1));
    // A domain that appears gets its consumer; a PV one never does.
    fake.set(3, Some(true));
    out.wait_for("d3 started", is("started", 3));
    // Domain 1's consumer is killed while the domain lives: started again.
    kill(&d1);
    out.wait_for("d1 died", is("died", 1));
    let d1 = out.wait_for("d1 started again", |v| {
        is("started", 1)(v) && v["pid"] != d1["pid"]
    });
    // Domain 1 is destroyed: its consumer detaches by itself (here: dies).
    fake.set(1, None);
    kill(&d1);
    let gone = out.wait_for("d1 exited", is("exited", 1));
    assert_eq!(gone["domain_alive"], false, "{gone}");
    // A consumer that fails while its domain lives is not restarted.
    fake.set(4, Some(true));
    let failed = out.wait_for("d4 exited", is("exited", 4));
    assert_eq!(
        (failed["domain_alive"].as_bool(), failed["status"].as_i64()),
        (Some(true), Some(1))
    );
    fake.set(5, Some(true));
    out.wait_for("d5 started", is("started", 5));
    assert_eq!(out.count("started", 4), 1, "d4 started again");
    stop.request();
    let s = handle.join().unwrap().unwrap();
    assert_eq!((s.started, s.detached, s.refused), (5, 1, 1));
    assert_eq!(out.count("started", 2), 0, "a PV domain got a consumer");
    for d in [3, 5] {
        assert_eq!(out.count("stopped", d), 1, "d{d} not stopped");
    }
}
