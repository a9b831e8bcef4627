//! A model host plus the guests' own view of their memory (what each gfn
//! must contain whatever the daemon did), shared by the daemon tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use xen_mem_event_share::model::ModelXen;
use xen_mem_event_share::{Daemon, DomId, GfnRef, Page, Sharing};

/// Contents of class `c`: 0 is the zero page, 1–3 are common patterns,
/// anything else is unique to its number.
pub fn class(c: u64) -> Page {
    ModelXen::pattern(c)
}

#[derive(Debug)]
pub struct Host {
    pub xen: ModelXen,
    /// What every gfn must contain (holes and dead domains removed).
    pub shadow: BTreeMap<GfnRef, Page>,
}

impl Host {
    pub fn new(ring_slots: usize) -> Host {
        Host {
            xen: ModelXen::new(ring_slots),
            shadow: BTreeMap::new(),
        }
    }

    /// A domain whose gfn `g` holds `class(classes(g))`.
    pub fn domain(&mut self, d: DomId, gfns: u64, classes: impl Fn(u64) -> u64) {
        self.xen.add_domain(d, gfns);
        for g in 0..gfns {
            self.write(GfnRef::new(d, g), &class(classes(g)));
        }
    }

    pub fn write(&mut self, p: GfnRef, data: &Page) {
        if self.xen.guest_write(p, data) {
            self.shadow.insert(p, *data);
        }
    }

    pub fn punch(&mut self, p: GfnRef) {
        self.xen.punch_hole(p);
        self.shadow.remove(&p);
    }

    pub fn destroy(&mut self, d: DomId) {
        self.xen.remove_domain(d);
        self.shadow.retain(|p, _| p.domid != d);
    }

    /// Takes the armed writes that happened into the shadow.
    pub fn sync(&mut self) {
        for (p, data) in self.xen.take_fired() {
            self.shadow.insert(p, *data);
        }
    }

    /// Every gfn holds what its guest wrote; Xen's counters match its
    /// frames.
    pub fn check(&mut self) -> Result<(), String> {
        self.sync();
        for (p, want) in &self.shadow {
            if self.xen.contents(*p) != Some(want) {
                return Err(format!("{p}: contents changed behind the guest's back"));
            }
        }
        self.xen.check()?;
        let (c, t) = (
            self.xen.host_counters().map_err(|e| e.to_string())?,
            self.xen.truth(),
        );
        if c != t {
            return Err(format!("Xen's counters {c:?} vs its frames {t:?}"));
        }
        Ok(())
    }

    /// Hands every domain's ring to the daemon.
    pub fn deliver(&mut self, daemon: &mut Daemon) {
        for d in self.xen.domains() {
            if let Some(b) = self.xen.take_batch(d) {
                daemon.apply(&b);
            }
        }
    }

    /// No more guest activity: records delivered after every pass, until
    /// a full scan changes nothing (no share attempt, the same table) and
    /// at least two full scans were made.
    pub fn settle(&mut self, daemon: &mut Daemon) {
        self.xen.disarm();
        self.deliver(daemon);
        let snapshot = |d: &Daemon| {
            let s = d.stats();
            (s.share_attempts, s.pages_sharing, s.table_entries)
        };
        let (start, mut last) = (daemon.stats().full_scans, None);
        for _ in 0..10_000 {
            let scans = daemon.stats().full_scans;
            daemon.pass(&mut self.xen);
            self.deliver(daemon);
            if daemon.domains().next().is_none() {
                break;
            }
            if daemon.stats().full_scans > scans {
                let now = Some(snapshot(daemon));
                if now == last && daemon.stats().full_scans >= start + 2 {
                    break;
                }
                last = now;
            }
        }
    }
}
