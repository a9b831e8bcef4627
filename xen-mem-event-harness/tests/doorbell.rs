//! The emulated event channel: a wait waits, however short its timeout.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use xen_mem_event_harness::Doorbell;

/// A sub-millisecond timeout still sleeps that long: it used to be
/// truncated to a 0 ms poll, so consumers waiting with a timeout under
/// 1 ms returned at once and busy-looped.
#[test]
fn a_short_wait_sleeps_its_timeout() {
    let bell = Doorbell::new().unwrap();
    for us in [1u64, 300, 999, 1500] {
        let timeout = Duration::from_micros(us);
        let t0 = Instant::now();
        assert!(!bell.wait(Some(timeout)).unwrap());
        assert!(
            t0.elapsed() >= timeout,
            "wait({timeout:?}) returned after {:?}",
            t0.elapsed()
        );
    }
    // A ring that is there is taken at once, without blocking.
    bell.notify().unwrap();
    assert!(bell.wait(Some(Duration::ZERO)).unwrap());
    assert!(!bell.wait(Some(Duration::ZERO)).unwrap());
}
