//! The daemon against the model: what it shares, races with the guest,
//! losses, domains going away, the mode without invalidations.

mod common;

use std::time::Duration;

use common::{class, Host};
use xen_mem_event_share::model::Trigger;
use xen_mem_event_share::{Config, Daemon, GfnRef, Stats};

fn p(d: u16, g: u64) -> GfnRef {
    GfnRef::new(d, g)
}

fn daemon(invalidate: bool, doms: &[u16]) -> Daemon {
    let mut d = Daemon::new(Config {
        batch: 8,
        pages_per_pass: 64,
        invalidate,
        ..Config::default()
    });
    for &dom in doms {
        d.add_domain(dom);
    }
    d
}

fn assert_sane(host: &mut Host, d: &Daemon) -> Stats {
    assert_eq!(host.check(), Ok(()));
    assert_eq!(d.table().check(), Ok(()));
    let s = d.stats();
    assert!(s.consistent(), "{s}");
    s
}

/// Per domain of 16 gfns: 0–5 zero, 6–9 class 1, 10–15 unique.
fn three_guests() -> (Host, Daemon) {
    let mut host = Host::new(1024);
    for d in 1..=3u16 {
        host.domain(d, 16, |g| match g {
            0..=5 => 0,
            6..=9 => 1,
            _ => 1000 * u64::from(d) + g,
        });
    }
    (host, daemon(true, &[1, 2, 3]))
}

#[test]
fn shares_what_is_identical_within_and_across_guests() {
    let (mut host, mut d) = three_guests();
    assert_eq!(d.pass(&mut host.xen), 48);
    let s = assert_sane(&mut host, &d);
    // 18 zero pages → 1 frame, 12 class-1 pages → 1 frame.
    assert_eq!((s.pages_shared, s.pages_sharing), (2, 17 + 11));
    assert_eq!(s.host_saved, 28);
    assert_eq!(s.host_shared_frames, 2);
    assert_eq!((s.share_attempts, s.share_ok), (28, 28));
    assert_eq!((s.zero_pages, s.full_scans), (18, 1));
    for dom in 1..=3 {
        for g in 10..16 {
            assert_eq!(host.xen.handle_of(p(dom, g)), None, "unique page shared");
        }
    }
    // A second pass finds nothing new to do.
    d.pass(&mut host.xen);
    host.deliver(&mut d);
    let s2 = assert_sane(&mut host, &d);
    assert_eq!(
        (s2.share_attempts, s2.pages_sharing, s2.host_saved),
        (28, 28, 28)
    );
    assert_eq!(s2.records_applied, 28);
}

#[test]
fn a_guest_write_between_hash_and_nominate_is_caught_by_the_compare() {
    let mut host = Host::new(64);
    host.domain(1, 2, |_| 1);
    let mut d = daemon(true, &[1]);
    // The first nominate is the representative's: gfn 1 changes before
    // its own nomination.
    host.xen.arm(Trigger::Nominate, p(1, 1), &class(2));
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!(
        (s.compare_mismatch, s.share_attempts, s.host_saved),
        (1, 0, 0)
    );
    // The next pass sees gfn 1's new contents; nothing to share.
    d.pass(&mut host.xen);
    assert_eq!(assert_sane(&mut host, &d).share_attempts, 0);
}

#[test]
fn a_guest_write_after_nomination_makes_the_share_fail() {
    let mut host = Host::new(64);
    host.domain(1, 2, |_| 1);
    let mut d = daemon(true, &[1]);
    host.xen.arm(Trigger::Share, p(1, 1), &class(1));
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.share_attempts, s.stale_client, s.host_saved), (1, 1, 0));
    // Delivered or not, the next pass shares the pair.
    host.deliver(&mut d);
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.share_ok, s.host_saved, s.pages_sharing), (1, 1, 1));
}

#[test]
fn lost_records_make_the_domain_be_scanned_again() {
    let mut host = Host::new(16);
    host.domain(1, 16, |_| 0);
    host.domain(2, 16, |_| 0);
    let mut d = daemon(true, &[1, 2]);
    d.pass(&mut host.xen);
    host.deliver(&mut d);
    assert_eq!(d.stats().pages_sharing, 31);
    for g in 0..8 {
        host.write(p(2, g), &class(1));
    }
    assert_eq!(host.xen.drop_records(2), 8);
    host.deliver(&mut d);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.records_lost, s.rescans), (8, 1));
    assert_eq!(d.table().len(), 16, "domain 2's entries are forgotten");
    host.settle(&mut d);
    let s = assert_sane(&mut host, &d);
    // 24 zero pages on one frame, 8 class-1 pages on another.
    assert_eq!((s.pages_sharing, s.host_saved), (23 + 7, 30));
}

#[test]
fn a_full_ring_counts_what_it_drops() {
    let mut host = Host::new(3);
    host.domain(1, 8, |_| 0);
    let mut d = daemon(true, &[1]);
    d.pass(&mut host.xen);
    let b = host.xen.take_batch(1).unwrap_or_default();
    assert_eq!((b.records.len(), b.lost), (3, 4));
    d.apply(&b);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.records_applied, s.records_lost, s.rescans), (3, 4, 1));
    host.settle(&mut d);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.pages_sharing, s.host_saved), (7, 7));
}

#[test]
fn a_domain_that_goes_away_is_forgotten() {
    let (mut host, mut d) = three_guests();
    d.pass(&mut host.xen);
    host.deliver(&mut d);
    host.destroy(2);
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!(s.domains_gone, 1);
    assert_eq!(d.domains().collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!((s.pages_sharing, s.host_saved), (11 + 7, 18));
    // Told rather than found out: the same.
    d.remove_domain(3);
    host.destroy(3);
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!(
        (s.pages_sharing, s.host_saved, s.domains_gone),
        (5 + 3, 8, 1)
    );
}

#[test]
fn holes_are_read_errors_not_failures() {
    let mut host = Host::new(64);
    host.domain(1, 8, |_| 0);
    host.punch(p(1, 3));
    let mut d = daemon(true, &[1]);
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.read_errors, s.pages_scanned, s.host_saved), (1, 7, 6));
}

/// A PVH guest's gfn space is mostly holes (its special pages sit just
/// below 4 GiB): a gfn that cannot be read costs a pass a 64th of a page,
/// so a full scan takes passes in proportion to the pages, not the holes.
#[test]
fn holes_cost_a_pass_little() {
    let mut host = Host::new(64);
    host.domain(1, 4096, |g| u64::from(g >= 64));
    for g in 64..4096 {
        host.punch(p(1, g));
    }
    let mut d = Daemon::new(Config {
        batch: 64,
        pages_per_pass: 256,
        ..Config::default()
    });
    d.add_domain(1);
    let cost = d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    // Chunk 0 read whole (448 holes), chunks 1-7 probed (32 gfns each).
    assert_eq!(
        (s.full_scans, s.pages_scanned, s.read_errors),
        (1, 64, 448 + 7 * 32)
    );
    assert_eq!(cost, 64 + 448 / 64 + 7);
    assert_eq!(s.host_saved, 63);
}

/// Guest memory below and above a hole (as a PVH guest's RAM and its
/// special pages): chunks after unreadable gfns are probed at one gfn in
/// 16 and remembered as holes; later full scans skip them (but for every
/// 8th, which probes them again), and memory past the hole is found.
#[test]
fn hole_chunks_are_probed_then_skipped() {
    let mut host = Host::new(4096);
    host.domain(1, 8192, |_| 0);
    let ram = |g: u64| g < 600 || (7700..7720).contains(&g);
    for g in (0..8192).filter(|g| !ram(*g)) {
        host.punch(p(1, g));
    }
    let mut d = Daemon::new(Config {
        batch: 512,
        pages_per_pass: 100_000,
        ..Config::default()
    });
    d.add_domain(1);
    let scan = |d: &mut Daemon, host: &mut Host| {
        let before = d.stats().read_errors;
        d.pass(&mut host.xen);
        host.deliver(d);
        d.stats().read_errors - before
    };
    // Chunk 1 read whole (424 holes), chunks 2-14 probed (13 x 32),
    // chunk 15's probe finds gfn 7712 (then read whole: 492 holes).
    assert_eq!(scan(&mut d, &mut host), 424 + 13 * 32 + 492);
    assert_eq!(d.stats().full_scans, 1);
    // Known holes are skipped.
    assert_eq!(scan(&mut d, &mut host), 424 + 492);
    let s = assert_sane(&mut host, &d);
    assert_eq!(
        s.host_saved,
        600 + 20 - 1,
        "the pages past the hole are shared too"
    );
    // The 8th full scan probes them again.
    for _ in 2..7 {
        scan(&mut d, &mut host);
    }
    assert_eq!(d.stats().full_scans, 7);
    assert_eq!(scan(&mut d, &mut host), 424 + 13 * 32 + 492);
    assert_eq!(scan(&mut d, &mut host), 424 + 492);
}

/// A pass stops between two batches once it has attempted
/// `shares_per_pass` shares: its own MERGED records then fit the rings.
#[test]
fn a_pass_stops_after_its_share_budget() {
    let mut host = Host::new(1024);
    host.domain(1, 64, |_| 0);
    let mut d = Daemon::new(Config {
        batch: 8,
        pages_per_pass: 64,
        shares_per_pass: 10,
        ..Config::default()
    });
    d.add_domain(1);
    assert_eq!(d.pass(&mut host.xen), 16, "two batches: 7 + 8 shares");
    assert_eq!(d.stats().share_attempts, 15);
    host.settle(&mut d);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.share_ok, s.host_saved), (63, 63));
}

/// Counts the single-page reads (the compares after nomination).
struct Counting<'a> {
    xen: &'a mut xen_mem_event_share::model::ModelXen,
    single_reads: u64,
}

impl xen_mem_event_share::PageSource for Counting<'_> {
    fn gfn_count(&mut self, d: u16) -> Result<u64, xen_mem_event_share::OpError> {
        self.xen.gfn_count(d)
    }
    fn read_pages(
        &mut self,
        d: u16,
        gfns: &[u64],
        each: &mut dyn FnMut(u64, Result<&xen_mem_event_share::Page, xen_mem_event_share::OpError>),
    ) -> Result<(), xen_mem_event_share::OpError> {
        self.single_reads += u64::from(gfns.len() == 1);
        self.xen.read_pages(d, gfns, each)
    }
}

impl xen_mem_event_share::Sharing for Counting<'_> {
    fn nominate(&mut self, p: GfnRef) -> Result<u64, xen_mem_event_share::OpError> {
        self.xen.nominate(p)
    }
    fn share(
        &mut self,
        s: GfnRef,
        sh: u64,
        c: GfnRef,
        ch: u64,
    ) -> Result<(), xen_mem_event_share::OpError> {
        self.xen.share(s, sh, c, ch)
    }
    fn host_counters(
        &mut self,
    ) -> Result<xen_mem_event_share::HostCounters, xen_mem_event_share::OpError> {
        self.xen.host_counters()
    }
}

/// Zero pages: the frame a share keeps was read all-zero once after its
/// nomination and cannot change while its handle lives, so each further
/// merge reads only the new page; other contents read both.
#[test]
fn a_zero_merge_reads_one_page() {
    let mut host = Host::new(1024);
    host.domain(1, 64, |g| if g < 32 { 0 } else { 1 });
    let mut d = daemon(true, &[1]);
    let mut c = Counting {
        xen: &mut host.xen,
        single_reads: 0,
    };
    d.pass(&mut c);
    let reads = c.single_reads;
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.share_ok, s.host_saved), (62, 62));
    // Zero: 2 for the first merge, then 1 each; class 1: 2 each.
    assert_eq!(reads, (2 + 30) + 2 * 31);
    // A zero page written non-zero after its hash is still caught.
    host.write(p(1, 5), &class(7));
    host.deliver(&mut d);
    host.xen.arm(Trigger::Nominate, p(1, 6), &class(8));
    host.write(p(1, 6), &class(0));
    host.deliver(&mut d);
    host.settle(&mut d);
    let s = assert_sane(&mut host, &d);
    assert!(s.consistent(), "{s}");
}

#[test]
fn without_invalidations_a_stale_handle_is_found_by_a_failed_share() {
    for invalidate in [true, false] {
        let mut host = Host::new(64);
        host.domain(1, 4, |g| u64::from(g < 2));
        let mut d = daemon(invalidate, &[1]);
        d.pass(&mut host.xen);
        // The representative is unshared (same contents written back),
        // then a new page of its class appears.
        host.write(p(1, 0), &class(1));
        host.write(p(1, 2), &class(1));
        host.deliver(&mut d);
        d.pass(&mut host.xen);
        let s = assert_sane(&mut host, &d);
        let want = if invalidate { 0 } else { 1 };
        assert_eq!(s.stale_source, want, "invalidate {invalidate}: {s}");
        assert_eq!(s.host_saved, 2 * u64::from(invalidate));
    }
}

#[test]
fn step_runs_a_pass_when_one_is_due() {
    let mut host = Host::new(64);
    host.domain(1, 4, |_| 0);
    let mut d = daemon(true, &[1]);
    let ms = Duration::from_millis;
    assert_eq!(d.step(&mut host.xen, ms(1000)), ms(1100));
    assert_eq!(d.stats().pages_scanned, 4);
    assert_eq!(d.step(&mut host.xen, ms(1050)), ms(1100));
    assert_eq!(d.stats().pages_scanned, 4);
    assert_eq!(d.step(&mut host.xen, ms(1100)), ms(1200));
    assert_eq!(d.stats().pages_scanned, 8);
}

#[test]
fn a_pass_scans_its_budget_round_robin() {
    let mut host = Host::new(64);
    host.domain(1, 100, |g| g + 10);
    host.domain(2, 100, |g| g + 500);
    let mut d = Daemon::new(Config {
        batch: 10,
        pages_per_pass: 30,
        ..Config::default()
    });
    d.add_domain(1);
    d.add_domain(2);
    assert_eq!(d.pass(&mut host.xen), 30);
    assert_eq!(d.table().len(), 30);
    for _ in 0..6 {
        d.pass(&mut host.xen);
    }
    let s = d.stats();
    assert_eq!((s.pages_scanned, s.full_scans), (200, 1));
}

/// Churn: the guests keep rewriting pages, half of them back to shared
/// contents.  With the ring, no share fails on a stale handle; without
/// it, shares do (counts only).
#[test]
fn churn_with_and_without_invalidations() {
    let (mut stale, mut saved) = (Vec::new(), Vec::new());
    for invalidate in [true, false] {
        let mut host = Host::new(4096);
        for dom in 1..=3u16 {
            host.domain(dom, 128, |g| if g % 2 == 0 { 0 } else { 1 + g % 3 });
        }
        let mut d = daemon(invalidate, &[1, 2, 3]);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200u64 {
            for i in 0..8u64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let page = p(1 + (rng % 3) as u16, (rng >> 8) % 128);
                let c = if i % 2 == 0 {
                    rng % 4
                } else {
                    10_000 + round * 8 + i
                };
                host.write(page, &class(c));
            }
            host.deliver(&mut d);
            d.pass(&mut host.xen);
            let s = assert_sane(&mut host, &d);
            assert_eq!(s.host_saved, host.xen.truth().saved_pages);
        }
        let s = d.stats();
        eprintln!("churn, invalidate {invalidate}: {s}");
        assert!(s.share_ok > 300, "{s}");
        stale.push(s.stale_failures());
        saved.push(s.host_saved);
    }
    assert_eq!(stale[0], 0, "with invalidations");
    assert!(stale[1] > 0, "without: {}", stale[1]);
    assert!(saved[0] > saved[1], "saved with / without: {saved:?}");
}

/// Three domains of 8 zero gfns; `zero frames` are built before the
/// daemon starts, each from the given gfns (nominated and shared in
/// order, the first as source).
fn premerged(frames: &[&[GfnRef]]) -> Result<Host, xen_mem_event_share::OpError> {
    use xen_mem_event_share::Sharing;
    let mut host = Host::new(1024);
    for d in 1..=3u16 {
        host.domain(d, 8, |_| 0);
    }
    for frame in frames {
        let src = frame[0];
        let sh = host.xen.nominate(src)?;
        for &cli in &frame[1..] {
            let ch = host.xen.nominate(cli)?;
            host.xen.share(src, sh, cli, ch)?;
        }
    }
    for d in 1..=3 {
        host.xen.take_batch(d);
    }
    Ok(host)
}

#[test]
fn a_client_frame_another_domain_maps_is_shared_the_other_way_round(
) -> Result<(), xen_mem_event_share::OpError> {
    // d1 gfns 0–2 are one zero frame (the representative, 3 members);
    // d1 gfn 3 is on a zero frame with d2 gfn 0.  Merging d1 gfn 3 within
    // d1 makes the smaller frame, the one d2 also maps, the client: Xen
    // refuses it (d2 is a third domain), the swap makes it the source.
    let mut host = premerged(&[&[p(1, 0), p(1, 1), p(1, 2)], &[p(1, 3), p(2, 0)]])?;
    let mut d = daemon(true, &[1, 2, 3]);
    d.pass(&mut host.xen);
    host.deliver(&mut d);
    let s = assert_sane(&mut host, &d);
    assert_eq!(
        (s.share_swapped, s.client_shared, s.share_failed),
        (1, 0, 0),
        "{s}"
    );
    let z = host.xen.handle_of(p(2, 0));
    assert!(z.is_some());
    for g in 0..4 {
        assert_eq!(host.xen.handle_of(p(1, g)), z, "d1 gfn {g}");
    }
    host.settle(&mut d);
    let s = assert_sane(&mut host, &d);
    // 24 zero pages on one frame.
    assert_eq!((s.host_saved, s.host_shared_frames), (23, 1), "{s}");
    assert_eq!((s.pages_sharing, s.share_ok), (23, s.share_attempts), "{s}");
    Ok(())
}

#[test]
fn a_merge_refused_both_ways_is_counted_apart() -> Result<(), xen_mem_event_share::OpError> {
    // d1 gfn 0 shares a frame with d2 gfn 0, d1 gfn 1 one with d3 gfn 0:
    // within d1, each frame has a gfn of a third domain.
    let mut host = premerged(&[&[p(1, 0), p(2, 0)], &[p(1, 1), p(3, 0)]])?;
    let mut d = daemon(true, &[1]);
    d.pass(&mut host.xen);
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.client_shared, s.share_swapped), (1, 1), "{s}");
    assert_ne!(host.xen.handle_of(p(1, 0)), host.xen.handle_of(p(1, 1)));
    assert!(s.to_string().contains("1 client shared (1 swapped)"), "{s}");
    // The other zero gfns of d1 (2–7) still merge, into one of the two.
    for _ in 0..3 {
        d.pass(&mut host.xen);
        host.deliver(&mut d);
    }
    let s = assert_sane(&mut host, &d);
    assert_eq!(s.share_failed, 0, "{s}");
    assert_eq!((s.host_saved, s.host_shared_frames), (1 + 1 + 6, 2), "{s}");
    Ok(())
}

/// A pair refused both ways is not tried on every full scan: the gfn that
/// found its match sits out 1, 2, 4 ... 32 scans after each refusal, as a
/// gfn Xen refuses to nominate does.
#[test]
fn a_pair_refused_both_ways_is_tried_less_and_less() -> Result<(), xen_mem_event_share::OpError> {
    let mut host = premerged(&[&[p(1, 0), p(2, 0)], &[p(1, 1), p(3, 0)]])?;
    let mut d = daemon(true, &[1]);
    for _ in 0..64 {
        d.pass(&mut host.xen);
        host.deliver(&mut d);
    }
    let s = assert_sane(&mut host, &d);
    assert!(s.full_scans >= 64, "{s}");
    // Refused at scans 1, 2, 4, 8, 16, 32, 64 at most (was: every scan).
    assert!((1..=7).contains(&s.client_shared), "{s}");
    assert_eq!(s.share_failed, 0, "{s}");
    assert_eq!((s.host_saved, s.host_shared_frames), (1 + 1 + 6, 2), "{s}");
    Ok(())
}

/// A gfn Xen refuses to nominate (dom0 maps it writable: the debug
/// hypervisor logs "Bad type" for every attempt) is not nominated on every
/// full scan: after each refusal it sits out 1, 2, 4 ... 32 scans.  Once
/// the mapping goes, it is shared again within 32 scans.
#[test]
fn a_gfn_xen_refuses_to_nominate_is_tried_less_and_less() {
    let mut host = Host::new(1024);
    host.domain(1, 4, |g| if g < 2 { 7 } else { 100 + g });
    let mut d = daemon(true, &[1]);
    host.xen.pin_writable(p(1, 1), true);
    for _ in 0..64 {
        d.pass(&mut host.xen);
        host.deliver(&mut d);
    }
    let s = assert_sane(&mut host, &d);
    assert!(s.full_scans >= 64, "{s}");
    // Refused at scans 1, 2, 4, 8, 16, 32, 64 at most (was: every scan).
    let refused = host.xen.refused_nominations;
    assert!((1..=7).contains(&refused), "{refused} refusals in 64 scans");
    assert_eq!(s.nominate_failed, refused);
    assert_eq!(s.pages_sharing, 0, "{s}");
    // The mapping goes: the pair is shared within 32 more scans.
    host.xen.pin_writable(p(1, 1), false);
    for _ in 0..33 {
        d.pass(&mut host.xen);
        host.deliver(&mut d);
    }
    let s = assert_sane(&mut host, &d);
    assert_eq!((s.pages_shared, s.pages_sharing), (1, 1), "{s}");
}
