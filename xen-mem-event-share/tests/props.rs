//! Property test: random interleavings of scan passes, guest writes (to
//! random gfns and to shared ones, some writing common contents back,
//! some racing the daemon inside its own calls), record delivery and
//! loss, holes and domains going away.  After every step: no gfn's
//! contents changed behind its guest's back (the daemon never shared
//! two different pages), every share attempt is accounted for, Xen's
//! counters are what the daemon reports.  At the end, with the ring and
//! once everything is delivered and rescanned, the table's view of the
//! savings is Xen's.

mod common;

use common::{class, Host};
use proptest::prelude::*;
use xen_mem_event_share::model::Trigger;
use xen_mem_event_share::{Config, Daemon, GfnRef};

const DOMS: u16 = 3;
const GFNS: u64 = 24;

#[derive(Debug, Clone)]
enum Op {
    Pass,
    Write { d: u16, g: u64, c: u64 },
    WriteShared { i: usize, c: u64 },
    Race { t: u8, d: u16, g: u64, c: u64 },
    Deliver { d: u16 },
    Drop { d: u16 },
    Punch { d: u16, g: u64 },
    Destroy { d: u16, tell: bool },
}

/// Mostly common contents (zero and three patterns), sometimes unique.
fn contents() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..4, 1 => 100u64..10_000]
}

fn op() -> impl Strategy<Value = Op> {
    let d = 1..=DOMS;
    prop_oneof![
        6 => Just(Op::Pass),
        4 => (d.clone(), 0..GFNS, contents()).prop_map(|(d, g, c)| Op::Write { d, g, c }),
        3 => (any::<usize>(), contents()).prop_map(|(i, c)| Op::WriteShared { i, c }),
        2 => (0u8..3, d.clone(), 0..GFNS, contents())
            .prop_map(|(t, d, g, c)| Op::Race { t, d, g, c }),
        4 => d.clone().prop_map(|d| Op::Deliver { d }),
        1 => d.clone().prop_map(|d| Op::Drop { d }),
        1 => (d.clone(), 0..GFNS).prop_map(|(d, g)| Op::Punch { d, g }),
        1 => (d, any::<bool>()).prop_map(|(d, tell)| Op::Destroy { d, tell }),
    ]
}

fn setup(invalidate: bool, ring: usize, init: &[u64]) -> (Host, Daemon) {
    let mut host = Host::new(ring);
    for d in 1..=DOMS {
        host.domain(d, GFNS, |g| {
            init[usize::try_from(g + u64::from(d) * 7).unwrap_or(0) % init.len()]
        });
    }
    let mut daemon = Daemon::new(Config {
        batch: 8,
        pages_per_pass: 20,
        invalidate,
        ..Config::default()
    });
    for d in 1..=DOMS {
        daemon.add_domain(d);
    }
    (host, daemon)
}

fn run(host: &mut Host, daemon: &mut Daemon, op: &Op) {
    match *op {
        Op::Pass => {
            daemon.pass(&mut host.xen);
        }
        Op::Write { d, g, c } => host.write(GfnRef::new(d, g), &class(c)),
        Op::WriteShared { i, c } => {
            let shared: Vec<GfnRef> = host
                .shadow
                .keys()
                .copied()
                .filter(|p| host.xen.handle_of(*p).is_some())
                .collect();
            if !shared.is_empty() {
                host.write(shared[i % shared.len()], &class(c));
            }
        }
        Op::Race { t, d, g, c } => {
            let trigger = [Trigger::Read, Trigger::Nominate, Trigger::Share][usize::from(t)];
            host.xen.arm(trigger, GfnRef::new(d, g), &class(c));
        }
        Op::Deliver { d } => {
            if let Some(b) = host.xen.take_batch(d) {
                daemon.apply(&b);
            }
        }
        Op::Drop { d } => {
            host.xen.drop_records(d);
        }
        Op::Punch { d, g } => host.punch(GfnRef::new(d, g)),
        Op::Destroy { d, tell } => {
            host.destroy(d);
            if tell {
                daemon.remove_domain(d);
            }
        }
    }
}

fn check(host: &mut Host, daemon: &Daemon, after_pass: bool) -> Result<(), TestCaseError> {
    host.check().map_err(TestCaseError::fail)?;
    daemon.table().check().map_err(TestCaseError::fail)?;
    let s = daemon.stats();
    prop_assert!(s.consistent(), "{}", s);
    if after_pass {
        prop_assert_eq!(s.host_saved, host.xen.truth().saved_pages);
        prop_assert_eq!(s.host_shared_frames, host.xen.truth().shared_frames);
    }
    Ok(())
}

/// One case: `ops` on a host set up from `init`, checked after every step
/// and, settled, at the end.
fn case(invalidate: bool, ring: usize, init: &[u64], ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut host, mut daemon) = setup(invalidate, ring, init);
    for op in ops {
        run(&mut host, &mut daemon, op);
        check(&mut host, &daemon, matches!(op, Op::Pass))?;
    }
    host.settle(&mut daemon);
    check(&mut host, &daemon, true)?;
    if invalidate {
        let s = daemon.stats();
        prop_assert_eq!(s.pages_sharing, s.host_saved, "{}", s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn never_shares_different_pages(
        invalidate in any::<bool>(),
        ring in prop_oneof![Just(4usize), Just(64)],
        init in proptest::collection::vec(contents(), 1..6),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        case(invalidate, ring, &init, &ops)?;
    }
}

/// Found by `never_shares_different_pages`: a pair refused both ways
/// (its client frame mapped by a third domain) was left out of the scans
/// while it waited, so records lost meanwhile were never made up for by
/// the rescan and the table kept believing 54 pages sharing where Xen
/// had freed 70.
#[test]
fn a_pair_refused_both_ways_is_still_scanned() -> Result<(), TestCaseError> {
    let ops = [
        Op::Pass,
        Op::WriteShared { i: 0, c: 0 },
        Op::Write { d: 1, g: 0, c: 0 },
        Op::Pass,
        Op::Write { d: 1, g: 0, c: 0 },
    ];
    case(true, 4, &[0], &ops)
}
