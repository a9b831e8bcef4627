//! The candidate table on its own: insert, match, stale drop per reason,
//! HANDLE_GONE, domains forgotten, counters.

use xen_mem_event_share::{GfnRef, InvalidateRecord, Observed, Reason, Table};

const K: u64 = 0xabcd;
const K2: u64 = 0x1234;

fn p(d: u16, g: u64) -> GfnRef {
    GfnRef::new(d, g)
}

fn rec(page: GfnRef, handle: u64, reason: Reason, handle_gone: bool) -> InvalidateRecord {
    InvalidateRecord {
        domid: page.domid,
        gfn: page.gfn,
        handle,
        reason,
        handle_gone,
    }
}

/// `pages` on one handle `h` (each nominated with a handle of its own,
/// then merged into `h` as the daemon does after a share).
fn shared(t: &mut Table, key: u64, h: u64, pages: &[GfnRef]) {
    for (i, &pg) in pages.iter().enumerate() {
        t.insert(pg, key);
        let own = h + 1000 + i as u64;
        assert!(t.set_handle(pg, own));
        t.merged(pg, own, h);
    }
    t.set_rep(key, pages[0]);
    assert_eq!(t.check(), Ok(()));
}

#[test]
fn insert_then_match() {
    let mut t = Table::new();
    assert_eq!(t.observe(p(1, 0), K), Observed::New);
    assert_eq!(t.observe(p(1, 0), K), Observed::Unchanged);
    assert_eq!(
        t.observe(p(2, 5), K),
        Observed::Match {
            rep: p(1, 0),
            rep_handle: None,
            handle: None
        }
    );
    assert_eq!(t.observe(p(1, 1), K2), Observed::New);
    assert_eq!(t.len(), 3);
    assert_eq!(t.check(), Ok(()));
}

#[test]
fn pages_on_the_reps_frame_are_unchanged() {
    let mut t = Table::new();
    shared(&mut t, K, 7, &[p(1, 0), p(2, 0), p(2, 1)]);
    assert_eq!(t.members(7), 3);
    assert_eq!((t.pages_shared(), t.pages_sharing()), (1, 2));
    assert_eq!(t.observe(p(2, 1), K), Observed::Unchanged);
}

#[test]
fn a_changed_key_drops_the_entry_and_its_handle() {
    let mut t = Table::new();
    shared(&mut t, K, 7, &[p(1, 0), p(1, 1)]);
    assert_eq!(t.observe(p(1, 1), K2), Observed::New);
    assert_eq!(t.get(p(1, 1)).and_then(|e| e.handle), None);
    assert_eq!((t.members(7), t.pages_sharing()), (1, 0));
    assert_eq!(t.check(), Ok(()));
}

#[test]
fn every_reason_drops_the_gfn() {
    for reason in [
        Reason::Merged,
        Reason::Unshared,
        Reason::Other(3),
        Reason::Other(4),
        Reason::Other(99),
    ] {
        let mut t = Table::new();
        shared(&mut t, K, 7, &[p(1, 0), p(1, 1), p(1, 2)]);
        assert!(t.apply(&rec(p(1, 1), 7, reason, false)), "{reason:?}");
        assert_eq!(t.get(p(1, 1)), None);
        assert_eq!((t.len(), t.members(7), t.pages_sharing()), (2, 2, 1));
        assert_eq!(t.check(), Ok(()));
    }
}

#[test]
fn a_record_for_an_unnominated_entry_drops_it() {
    let mut t = Table::new();
    t.insert(p(1, 0), K);
    assert!(t.apply(&rec(p(1, 0), 3, Reason::Unshared, false)));
    assert!(t.is_empty());
}

#[test]
fn a_record_older_than_the_table_keeps_the_entry() {
    // p(2,0) was nominated with handle 9, then merged into 7 by the
    // daemon's own share; Xen's MERGED record for <2, 0, 9> comes after.
    let mut t = Table::new();
    shared(&mut t, K, 7, &[p(1, 0), p(2, 0)]);
    assert!(!t.apply(&rec(p(2, 0), 9, Reason::Merged, true)));
    assert_eq!(t.get(p(2, 0)).and_then(|e| e.handle), Some(7));
    assert_eq!(t.pages_sharing(), 1);
}

#[test]
fn handle_gone_drops_every_gfn_of_the_handle() {
    let mut t = Table::new();
    shared(&mut t, K, 7, &[p(1, 0), p(1, 1), p(2, 3)]);
    shared(&mut t, K2, 8, &[p(1, 4), p(2, 4)]);
    assert!(t.apply(&rec(p(1, 0), 7, Reason::Unshared, true)));
    assert_eq!(t.len(), 2);
    assert_eq!((t.members(7), t.handles()), (0, 1));
    assert_eq!((t.pages_shared(), t.pages_sharing()), (1, 1));
    // The key's representative went with it: the next page is new.
    assert_eq!(t.observe(p(3, 0), K), Observed::New);
    assert_eq!(t.check(), Ok(()));
}

#[test]
fn forgetting_a_domain_keeps_the_others_on_shared_handles() {
    let mut t = Table::new();
    shared(&mut t, K, 7, &[p(1, 0), p(2, 0), p(1, 1), p(2, 1), p(1, 2)]);
    assert_eq!(t.forget_domain(1), 3);
    assert_eq!((t.len(), t.members(7), t.pages_sharing()), (2, 2, 1));
    assert_eq!(t.check(), Ok(()));
    assert!(t.apply(&rec(p(2, 1), 7, Reason::Unshared, false)));
    assert_eq!(t.check(), Ok(()));
    assert_eq!(t.forget_domain(1), 0);
}

#[test]
fn a_merge_moves_the_client_and_forgets_the_other_gfns_of_its_frame() {
    let mut t = Table::new();
    shared(&mut t, K, 7, &[p(1, 0), p(1, 1)]);
    shared(&mut t, K, 8, &[p(2, 0), p(2, 1), p(2, 2)]);
    t.merged(p(1, 1), 7, 8);
    assert_eq!(t.get(p(1, 1)).and_then(|e| e.handle), Some(8));
    assert_eq!(t.get(p(1, 0)), None, "may have left 7 before the share");
    assert_eq!((t.members(7), t.members(8), t.pages_sharing()), (0, 4, 3));
    assert_eq!(t.check(), Ok(()));
    // Its UNSHARED record for 7, older than the share, changes nothing.
    assert!(!t.apply(&rec(p(1, 1), 7, Reason::Unshared, false)));
}

#[test]
fn removing_members_renumbers_slots() {
    let mut t = Table::new();
    let pages: Vec<GfnRef> = (0..6).map(|g| p(1, g)).collect();
    shared(&mut t, K, 7, &pages);
    for g in [0, 5, 2] {
        assert!(t.remove(p(1, g)).is_some());
        assert_eq!(t.check(), Ok(()));
    }
    assert_eq!((t.members(7), t.pages_sharing()), (3, 2));
}
