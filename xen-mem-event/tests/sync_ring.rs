//! The synchronous consumer against the Rust model of Xen's ring core.

use std::time::Duration;

use xen_mem_event::layout::hdr;
use xen_mem_event::testing::FakeXen;
use xen_mem_event::{
    AsyncRing, Backend, BrokenReason, Error, EventType, Op, Ring, SyncRing, Token,
};

const DOM: u16 = 3;
const OOM: EventType = EventType::SharingOom;

/// A sync request's bytes, as the producer writes them.
fn raw_req(id: u64, vcpu: u32, flags: u32, domid: u16, reason: u16, pad: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&id.to_ne_bytes());
    b[16..20].copy_from_slice(&vcpu.to_ne_bytes());
    b[20..24].copy_from_slice(&flags.to_ne_bytes());
    b[24..26].copy_from_slice(&domid.to_ne_bytes());
    b[26..28].copy_from_slice(&reason.to_ne_bytes());
    b[28..32].copy_from_slice(&pad.to_ne_bytes());
    b
}

fn xen(vcpus: u32) -> FakeXen {
    let xen = FakeXen::new();
    xen.add_domain(DOM, vcpus);
    xen
}

#[test]
fn register_checks_and_connects() {
    let xen = xen(4);
    let ring = SyncRing::register(&xen, DOM, 2).unwrap();
    let r = ring.ring();
    assert_eq!(r.nr_slots(), 256);
    assert_eq!(r.max_vcpus(), 4);
    assert_eq!(r.registration().nr_frames, 5);
    let info = r.info().unwrap();
    assert!(info.state.connected());
    // The initial kick only.
    assert_eq!(xen.kicks_from_consumer(DOM, OOM), 1);
}

#[test]
fn bad_frames_rejected_before_xen() {
    let xen = xen(1);
    let err = SyncRing::register(&xen, DOM, 3).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(xen.info(DOM, OOM).is_none());
}

#[test]
fn no_such_domain() {
    let xen = xen(1);
    let err = SyncRing::register(&xen, 9, 1).unwrap_err();
    assert!(matches!(err, Error::NoSuchDomain { domid: 9, .. }), "{err}");
}

#[test]
fn too_many_vcpus_is_no_space() {
    let xen = xen(200);
    let err = SyncRing::register(&xen, DOM, 1).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
}

#[test]
fn second_consumer_is_busy_and_takeover_replaces() {
    let xen = xen(2);
    let first = SyncRing::register(&xen, DOM, 1).unwrap();
    let err = SyncRing::register(&xen, DOM, 1).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert_eq!(err.errno(), Some(libc::EBUSY));
    let second = SyncRing::builder(&xen, DOM)
        .takeover(true)
        .register()
        .unwrap();
    let port = second.ring().registration().port;
    // The old handle sees it was taken over and leaves the new ring alone.
    drop(first);
    assert_eq!(xen.info(DOM, OOM).unwrap().port, port);
    drop(second);
    assert!(xen.info(DOM, OOM).is_none());
}

#[test]
fn types_are_independent() {
    let xen = xen(2);
    let _oom = SyncRing::register(&xen, DOM, 1).unwrap();
    let _inv = AsyncRing::register(&xen, DOM, 1).unwrap();
}

#[test]
fn wrong_ring_type() {
    let xen = xen(2);
    let ring = Ring::register(&xen, DOM, EventType::SharingInvalidate, 1).unwrap();
    assert!(matches!(
        SyncRing::new(ring),
        Err(Error::WrongRingType { .. })
    ));
    let ring = Ring::register(&xen, DOM, OOM, 1).unwrap();
    assert!(matches!(
        AsyncRing::new(ring),
        Err(Error::WrongRingType { .. })
    ));
}

#[test]
fn version_mismatch_unregisters() {
    let xen = xen(2);
    xen.corrupt_next_register(hdr::VERSION, 7);
    let err = SyncRing::register(&xen, DOM, 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::VersionMismatch {
                found: 7,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(xen.info(DOM, OOM).is_none(), "failed setup must unregister");
}

#[test]
fn header_inconsistent_with_registration() {
    for (off, v, field) in [
        (hdr::TYPE, 1, "type"),
        (hdr::NR_SLOTS, 64, "nr_slots"),
        (hdr::MAX_VCPUS, 0, "max_vcpus"),
        (hdr::RSP_OFFSET, 4096, "rsp_offset"),
    ] {
        let xen = xen(2);
        xen.corrupt_next_register(off, v);
        match SyncRing::register(&xen, DOM, 1).unwrap_err() {
            Error::RingBroken {
                reason: BrokenReason::BadHeader { field: f, .. },
                ..
            } => assert_eq!(f, field),
            e => panic!("{field}: {e}"),
        }
        assert!(xen.info(DOM, OOM).is_none());
    }
}

#[test]
fn out_of_order_responses_one_kick_per_batch() {
    let xen = xen(8);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    for v in 0..8 {
        xen.put_sync(DOM, v, false, 0x1000 + u64::from(v)).unwrap();
    }
    assert!(ring.wait(Some(Duration::ZERO)).unwrap());
    let reqs = ring.take_requests().unwrap();
    assert_eq!(reqs.len(), 8);
    assert_eq!(ring.pending().count(), 8);
    // Answer the odd ones, in reverse order, in one batch.
    for r in reqs.iter().rev().filter(|r| r.vcpu_id % 2 == 1) {
        ring.respond(r).unwrap();
    }
    assert_eq!(ring.unflushed(), 4);
    assert!(ring.flush().unwrap());
    assert!(!ring.flush().unwrap(), "nothing new to flush");
    assert_eq!(xen.kicks_from_consumer(DOM, OOM), 2);
    assert_eq!(xen.paused_vcpus(DOM), vec![0, 2, 4, 6]);
    ring.respond_all(reqs.iter().filter(|r| r.vcpu_id % 2 == 0))
        .unwrap();
    assert_eq!(xen.kicks_from_consumer(DOM, OOM), 3);
    assert!(xen.paused_vcpus(DOM).is_empty());
    let info = ring.ring().info().unwrap();
    assert_eq!(info.consumed, 8);
    assert_eq!(info.bad_responses, 0);
}

#[test]
fn pending_request_does_not_block_others() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    let slow = xen.put_sync(DOM, 0, false, 1).unwrap();
    let first = ring.next_request().unwrap().unwrap();
    assert_eq!(first.id, slow);
    // vCPU 1 faults, and is answered, while vCPU 0's request is worked on.
    xen.put_sync(DOM, 1, false, 2).unwrap();
    let fast = ring.next_request().unwrap().unwrap();
    ring.respond(&fast).unwrap();
    ring.flush().unwrap();
    assert_eq!(xen.paused_vcpus(DOM), vec![0]);
    std::thread::sleep(Duration::from_millis(20));
    let p = ring.pending_for(0).unwrap();
    assert!(p.age() >= Duration::from_millis(20));
    // vCPU 1 faults again: a new id.
    let again = xen.put_sync(DOM, 1, false, 3).unwrap();
    assert_ne!(again, fast.id);
    let r = ring.next_request().unwrap().unwrap();
    ring.respond_id(slow, 0).unwrap();
    ring.respond(&r).unwrap();
    ring.flush().unwrap();
    assert!(xen.paused_vcpus(DOM).is_empty());
}

#[test]
fn foreign_requests_are_reported_never_answered() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    assert_eq!(xen.put_sync(DOM, 42, true, 0x77), Ok(0));
    let reqs = ring.take_requests().unwrap();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].foreign && !reqs[0].needs_response());
    assert_eq!(reqs[0].id, 0);
    ring.respond(&reqs[0]).unwrap(); // no-op
    assert_eq!(ring.unflushed(), 0);
    assert!(matches!(
        ring.respond_id(0, 42),
        Err(Error::UnknownRequest { .. })
    ));
    assert_eq!(ring.pending().count(), 0);
}

#[test]
fn unknown_and_repeated_responses_are_refused_locally() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    xen.put_sync(DOM, 1, false, 0).unwrap();
    let r = ring.next_request().unwrap().unwrap();
    assert!(matches!(
        ring.respond_id(r.id + (1 << 16), 1),
        Err(Error::UnknownRequest { .. })
    ));
    assert!(matches!(
        ring.respond_id(r.id, 0),
        Err(Error::UnknownRequest { .. })
    ));
    ring.respond(&r).unwrap();
    assert!(matches!(
        ring.respond(&r),
        Err(Error::UnknownRequest { .. })
    ));
    ring.flush().unwrap();
    assert_eq!(ring.ring().info().unwrap().bad_responses, 0);
}

#[test]
fn raw_malformed_responses_are_counted_by_xen() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    let id = xen.put_sync(DOM, 1, false, 0).unwrap();
    let _ = ring.take_requests().unwrap();
    ring.push_raw_response(id, 1, 1, [0, 0]).unwrap(); // flags set
    ring.push_raw_response(id, 0, 0, [0, 0]).unwrap(); // wrong vCPU
    ring.push_raw_response(id, 1, 0, [0, 9]).unwrap(); // padding
    ring.flush().unwrap();
    assert_eq!(ring.ring().info().unwrap().bad_responses, 3);
    assert_eq!(xen.paused_vcpus(DOM), vec![1]);
    ring.respond_id(id, 1).unwrap();
    ring.flush().unwrap();
    assert!(xen.paused_vcpus(DOM).is_empty());
}

#[test]
fn response_ring_full_is_reported() {
    let xen = xen(1);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    // Fill the response array without kicking Xen: 128 garbage responses.
    for _ in 0..128 {
        ring.push_raw_response(1 << 16, 0, 0, [0, 0]).unwrap();
    }
    // The 129th finds no room; it kicks Xen, which drains the array.
    assert!(matches!(
        ring.push_raw_response(1 << 16, 0, 0, [0, 0]),
        Err(Error::RingFull { .. })
    ));
    ring.push_raw_response(1 << 16, 0, 0, [0, 0]).unwrap();
    ring.flush().unwrap();
    assert_eq!(ring.ring().info().unwrap().bad_responses, 129);
}

#[test]
fn xen_broken_flag_is_ring_broken() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    xen.corrupt_header_u32(DOM, OOM, hdr::FLAGS, 1);
    let err = ring.take_requests().unwrap_err();
    assert!(
        matches!(
            err,
            Error::RingBroken {
                reason: BrokenReason::FlaggedByXen,
                ..
            }
        ),
        "{err}"
    );
    assert!(ring.ring().is_broken());
    assert!(ring.wait(Some(Duration::ZERO)).unwrap_err().is_broken());
}

#[test]
fn producer_far_ahead_is_ring_broken() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    xen.corrupt_req_prod(DOM, OOM, 129);
    let err = ring.take_requests().unwrap_err();
    assert!(
        matches!(
            err,
            Error::RingBroken {
                reason: BrokenReason::ProducerAhead {
                    req_prod: 129,
                    req_cons: 0
                },
                ..
            }
        ),
        "{err}"
    );
    // Sticky, even if the producer index looks sane again.
    xen.corrupt_req_prod(DOM, OOM, 0);
    assert!(ring.next_request().unwrap_err().is_broken());
}

#[test]
fn garbage_requests_are_ring_broken() {
    let valid = |id: u64, vcpu: u32, flags: u32, reason: u16, pad: u32| {
        raw_req(id, vcpu, flags, DOM, reason, pad)
    };
    let cases = [
        ("unknown flags", valid(1 << 16, 0, 4, 1, 0)),
        ("unknown reason", valid(1 << 16, 0, 1, 9, 0)),
        ("padding", valid(1 << 16, 0, 1, 1, 5)),
        ("id/vcpu mismatch", valid(1 << 16, 1, 1, 1, 0)),
        ("generation zero", valid(0, 0, 1, 1, 0)),
        ("vcpu beyond max", valid((1 << 16) | 5, 5, 1, 1, 0)),
        ("foreign with id", valid(1 << 16, 0, 2, 1, 0)),
    ];
    for (what, rec) in cases {
        let xen = xen(2);
        let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
        // One good request first: it is still taken.
        let good = xen.put_sync(DOM, 1, false, 0).unwrap();
        xen.push_raw(DOM, OOM, rec);
        let err = ring.take_requests().unwrap_err();
        assert!(
            matches!(
                err,
                Error::RingBroken {
                    reason: BrokenReason::BadRecord { index: 1, .. },
                    ..
                }
            ),
            "{what}: {err}"
        );
        assert_eq!(ring.pending_for(1).unwrap().request.id, good, "{what}");
    }
}

#[test]
fn duplicate_request_for_paused_vcpu_is_ring_broken() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    let id = xen.put_sync(DOM, 0, false, 0).unwrap();
    let _ = ring.take_requests().unwrap();
    xen.push_raw(DOM, OOM, raw_req(id + (1 << 16), 0, 1, DOM, 1, 0));
    let err = ring.take_requests().unwrap_err();
    assert!(
        matches!(
            err,
            Error::RingBroken {
                reason: BrokenReason::BadRecord {
                    what: "second request for a vCPU already paused",
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
}

/// A request (paused or foreign) must name the ring's own domain: the
/// pager would otherwise act on (set the allowance of) another domain.
#[test]
fn request_naming_another_domain_is_ring_broken() {
    for (flags, id) in [(1u32, 1u64 << 16), (2, 0)] {
        let xen = xen(2);
        let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
        xen.push_raw(DOM, OOM, raw_req(id, 0, flags, DOM + 1, 1, 0));
        let err = ring.take_requests().unwrap_err();
        assert!(
            matches!(
                err,
                Error::RingBroken {
                    reason: BrokenReason::BadRecord {
                        index: 0,
                        what: "domid is not the ring's domain"
                    },
                    ..
                }
            ),
            "flags {flags}: {err}"
        );
        assert_eq!(ring.pending().count(), 0, "flags {flags}");
    }
}

/// A consumer whose ring was taken over, then unregistered, then
/// registered again by a third consumer (which gets the same, lowest free,
/// port) must not unregister the third consumer's ring when it drops.
#[test]
fn drop_after_takeover_leaves_a_later_registration_alone() {
    let xen = xen(2);
    let old = SyncRing::register(&xen, DOM, 1).unwrap();
    let old_port = old.ring().registration().port;
    let taker = SyncRing::builder(&xen, DOM)
        .takeover(true)
        .register()
        .unwrap();
    assert!(old.ring().is_detached());
    assert!(taker.close().unregistered);
    let mut third = SyncRing::register(&xen, DOM, 1).unwrap();
    assert_eq!(third.ring().registration().port, old_port, "port reused");
    assert_ne!(third.ring().token(), old.ring().token());

    let t = old.close();
    assert!(!t.unregistered, "the old consumer's token is stale");
    assert!(t.is_clean(), "{:?}", t.warnings);
    let info = xen
        .info(DOM, OOM)
        .expect("the third ring is still registered");
    assert_eq!(info.port, old_port);
    // ... and still works.
    xen.put_sync(DOM, 1, false, 0x42).unwrap();
    assert!(third.wait(Some(Duration::ZERO)).unwrap());
    let reqs = third.take_requests().unwrap();
    third.respond_all(&reqs).unwrap();
    assert!(xen.paused_vcpus(DOM).is_empty());
}

#[test]
fn unregister_and_resume_need_the_token() {
    let xen = xen(2);
    let ring = SyncRing::register(&xen, DOM, 1).unwrap();
    let token = ring.ring().token();
    let other = Token::new(token.get() + 1).unwrap();
    assert!(matches!(
        xen.unregister(DOM, OOM, other),
        Err(Error::Stale {
            op: Op::Unregister,
            domid: DOM,
            ..
        })
    ));
    assert!(matches!(
        xen.resume(DOM, OOM, other),
        Err(Error::Stale { op: Op::Resume, .. })
    ));
    assert!(
        xen.info(DOM, OOM).is_some(),
        "nothing done with a stale token"
    );
    ring.ring().resume().unwrap();
    assert!(ring.close().unregistered);
    assert!(xen.info(DOM, OOM).is_none());
}

/// Xen tearing the ring down under the consumer (taken over, or the
/// domain dying): the consumer sees `F_DETACHED` and gets `RingBroken`
/// (`Detached`) instead of reading the scrubbed slots.
#[test]
fn detached_ring_is_reported() {
    for takeover in [true, false] {
        let xen = xen(2);
        let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
        xen.put_sync(DOM, 0, false, 0x1000).unwrap();
        assert!(!ring.ring().is_detached());
        let _taker = if takeover {
            Some(
                SyncRing::builder(&xen, DOM)
                    .takeover(true)
                    .register()
                    .unwrap(),
            )
        } else {
            xen.destroy_domain(DOM);
            None
        };
        assert!(ring.ring().is_detached(), "takeover {takeover}");
        assert!(ring.ring().is_broken());
        let err = ring.take_requests().unwrap_err();
        assert!(
            matches!(
                err,
                Error::RingBroken {
                    reason: BrokenReason::Detached,
                    ..
                }
            ),
            "{err}"
        );
        assert!(ring.wait(Some(Duration::ZERO)).unwrap_err().is_broken());
        let t = ring.close();
        assert!(!t.unregistered && t.is_clean(), "{t:?}");
    }
}

#[test]
fn close_reports_a_failed_unregister_and_final_kick() {
    let xen = xen(2);
    let ring = SyncRing::register(&xen, DOM, 1).unwrap();
    xen.fail_next(Op::Unregister, libc::EIO);
    let t = ring.close();
    assert!(!t.unregistered);
    assert!(
        matches!(
            t.warnings[..],
            [Error::Os {
                op: Op::Unregister,
                errno: libc::EIO,
                ..
            }]
        ),
        "{t:?}"
    );

    let xen2 = FakeXen::new();
    xen2.add_domain(DOM, 2);
    let mut ring = SyncRing::register(&xen2, DOM, 1).unwrap();
    xen2.put_sync(DOM, 0, false, 0).unwrap();
    let reqs = ring.take_requests().unwrap();
    ring.respond(&reqs[0]).unwrap();
    xen2.fail_next(Op::Notify, libc::EIO);
    let t = ring.close();
    assert!(t.unregistered);
    assert!(
        matches!(t.warnings[..], [Error::Os { op: Op::Notify, .. }]),
        "{t:?}"
    );
}

/// `wait(Some(Duration::MAX))` must not overflow the deadline (it panicked
/// computing `Instant::now() + timeout`).
#[test]
fn wait_with_the_longest_timeout() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    xen.put_sync(DOM, 0, false, 0).unwrap();
    assert!(ring.wait(Some(Duration::MAX)).unwrap());
    let reqs = ring.take_requests().unwrap();
    ring.respond_all(&reqs).unwrap();
    // And a long wait that a producer ends.
    let x = xen.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        x.put_sync(DOM, 1, false, 0).unwrap();
    });
    assert!(ring.wait(Some(Duration::MAX)).unwrap());
    t.join().unwrap();
}

#[test]
fn drop_unregisters_and_releases_vcpus() {
    let xen = xen(2);
    {
        let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
        xen.put_sync(DOM, 0, false, 0).unwrap();
        let _ = ring.take_requests().unwrap();
        // Dropped with the request unanswered.
    }
    assert!(xen.info(DOM, OOM).is_none());
    assert!(xen.paused_vcpus(DOM).is_empty());
    // The type can be registered again.
    let _ring = SyncRing::register(&xen, DOM, 1).unwrap();
}

#[test]
fn wait_times_out_and_wakes() {
    let xen = xen(2);
    let mut ring = SyncRing::register(&xen, DOM, 1).unwrap();
    assert!(!ring.wait(Some(Duration::from_millis(5))).unwrap());
    let x2 = xen.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        x2.put_sync(DOM, 1, false, 0).unwrap();
    });
    assert!(ring.wait(Some(Duration::from_secs(10))).unwrap());
    t.join().unwrap();
    assert_eq!(ring.take_requests().unwrap().len(), 1);
}

#[test]
fn ring_is_send_to_another_thread() {
    let xen = std::sync::Arc::new(xen(2));
    let ring = SyncRing::register(std::sync::Arc::clone(&xen), DOM, 1).unwrap();
    std::thread::spawn(move || drop(ring)).join().unwrap();
    assert!(xen.info(DOM, OOM).is_none());
}

#[test]
fn batch_is_not_sent_for_sync_rings() {
    // The fake, like the domctl, rejects a non-zero batch for sync rings.
    let xen = xen(1);
    let ring = Ring::builder(&xen, DOM, OOM).batch(64).register().unwrap();
    assert_eq!(ring.params().batch, 0);
}
