//! A hostile producer, fuzzed: random bytes written into the header, the
//! indices and the arrays of a ring between consumer operations (both ring
//! kinds).  Whatever is written, every consumer operation returns `Ok` or
//! [`Error::RingBroken`] (the response array being full is also allowed
//! for a response: a producer may stop consuming responses), returns
//! promptly, and never holds more than one ring's worth of records.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use xen_mem_event::layout::{hdr, FRAME_SIZE, RECORD_SIZE};
use xen_mem_event::testing::FakeXen;
use xen_mem_event::{AsyncRing, Error, EventType, InvalidateReason, SyncRing};

const DOM: u16 = 2;
const VCPUS: u32 = 8;
/// Far more than any operation needs; only a hang gets near it.
const SLOW: Duration = Duration::from_secs(2);

/// Where a hostile write lands.
#[derive(Debug, Clone)]
enum Target {
    /// Anywhere in the header frame.
    Header(usize),
    /// One of the shared indices and counters (a whole word).
    Index(usize),
    /// Anywhere in the arrays (request/record and response).
    Arrays(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Scribble(Target, Vec<u8>),
    /// A well-behaved post by the producer model (which may itself find
    /// the ring broken).
    Produce(u32),
    /// A forged record that passes most checks (published at `req_prod`).
    Forge(Forged),
    /// Consumer operations.
    Take,
    TakeOne,
    Available,
    Respond(usize),
    Flush,
    Wait,
    SetBatch(u32),
    Resume,
}

const INDICES: [usize; 7] = [
    hdr::REQ_PROD,
    hdr::REQ_CONS,
    hdr::REQ_EVENT,
    hdr::RSP_PROD,
    hdr::RSP_CONS,
    hdr::FLAGS,
    hdr::LOST,
];

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        (0..FRAME_SIZE).prop_map(Target::Header),
        prop::sample::select(&INDICES[..]).prop_map(Target::Index),
        any::<usize>().prop_map(Target::Arrays),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..=8),
        // A whole plausible-looking record, or a word of a small index.
        prop::collection::vec(any::<u8>(), RECORD_SIZE..=RECORD_SIZE),
        (0u32..300).prop_map(|v| v.to_ne_bytes().to_vec()),
    ]
}

/// The fields of a plausible record: either kind is built from them.
#[derive(Debug, Clone)]
struct Forged {
    generation: u64,
    vcpu: u32,
    foreign: bool,
    domid: u16,
    reason: u16,
    flags: u32,
    seq: u64,
}

impl Forged {
    fn sync(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        let id = if self.foreign {
            0
        } else {
            (self.generation << 16) | u64::from(self.vcpu & 0xffff)
        };
        b[0..8].copy_from_slice(&id.to_ne_bytes());
        b[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        b[16..20].copy_from_slice(&self.vcpu.to_ne_bytes());
        b[20..24].copy_from_slice(&(if self.foreign { 2u32 } else { 1 }).to_ne_bytes());
        b[24..26].copy_from_slice(&self.domid.to_ne_bytes());
        b[26..28].copy_from_slice(&self.reason.to_ne_bytes());
        b
    }

    fn asynchronous(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..8].copy_from_slice(&self.seq.to_ne_bytes());
        b[8..16].copy_from_slice(&self.generation.to_ne_bytes());
        b[16..24].copy_from_slice(&0x1000u64.to_ne_bytes());
        b[24..26].copy_from_slice(&self.domid.to_ne_bytes());
        b[26..28].copy_from_slice(&self.reason.to_ne_bytes());
        b[28..32].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

fn forged() -> impl Strategy<Value = Forged> {
    (
        0u64..4,
        0..VCPUS + 2,
        any::<bool>(),
        prop_oneof![3 => Just(DOM), 1 => any::<u16>()],
        0u16..4,
        0u32..3,
        prop_oneof![0u64..64, any::<u64>()],
    )
        .prop_map(
            |(generation, vcpu, foreign, domid, reason, flags, seq)| Forged {
                generation,
                vcpu,
                foreign,
                domid,
                reason,
                flags,
                seq,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (target(), bytes()).prop_map(|(t, b)| Op::Scribble(t, b)),
        3 => forged().prop_map(Op::Forge),
        3 => (0..VCPUS + 2).prop_map(Op::Produce),
        2 => Just(Op::Take),
        2 => Just(Op::TakeOne),
        1 => Just(Op::Available),
        2 => any::<usize>().prop_map(Op::Respond),
        1 => Just(Op::Flush),
        1 => Just(Op::Wait),
        1 => (0u32..1000).prop_map(Op::SetBatch),
        1 => Just(Op::Resume),
    ]
}

/// `Ok`, or the ring is broken; anything else (or a panic) fails the case.
fn allowed<T>(what: &str, r: &Result<T, Error>, ring_full_ok: bool) -> Result<(), TestCaseError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_broken() => Ok(()),
        Err(Error::RingFull { .. }) if ring_full_ok => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("{what}: {e}"))),
    }
}

fn scribble(xen: &FakeXen, ty: EventType, t: &Target, b: &[u8]) {
    let len = xen.ring_len(DOM, ty).unwrap_or(FRAME_SIZE);
    let off = match *t {
        Target::Header(off) | Target::Index(off) => off,
        Target::Arrays(off) => FRAME_SIZE + off % (len - FRAME_SIZE),
    };
    xen.scribble(DOM, ty, off, b);
}

fn timed<T>(f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let t = Instant::now();
    let r = f();
    prop_assert!(t.elapsed() < SLOW, "took {:?}", t.elapsed());
    Ok(r)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sync_consumer_survives_a_hostile_producer(
        frames in prop::sample::select(&[1u32, 2][..]),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let ty = EventType::SharingOom;
        let xen = FakeXen::new();
        xen.add_domain(DOM, VCPUS);
        let mut ring = SyncRing::register(&xen, DOM, frames).unwrap();
        let slots = ring.ring().nr_slots() as usize;
        for op in &ops {
            match op {
                Op::Scribble(t, b) => scribble(&xen, ty, t, b),
                Op::Produce(v) => {
                    let _ = xen.put_sync(DOM, *v, *v >= VCPUS, 0x1000);
                }
                Op::Forge(f) => xen.push_raw(DOM, ty, f.sync()),
                Op::Take => {
                    let r = timed(|| ring.take_requests())?;
                    allowed("take_requests", &r, false)?;
                    if let Ok(v) = &r {
                        prop_assert!(v.capacity() <= slots, "capacity {} > {slots}", v.capacity());
                        prop_assert!(v.iter().all(|q| q.domid == DOM), "{v:?}");
                    }
                }
                Op::TakeOne => {
                    let r = timed(|| ring.next_request())?;
                    allowed("next_request", &r, false)?;
                    if let Ok(Some(q)) = &r {
                        prop_assert_eq!(q.domid, DOM);
                    }
                }
                Op::Available => {
                    let r = timed(|| ring.available())?;
                    allowed("available", &r, false)?;
                    if let Ok(n) = r {
                        prop_assert!(n as usize <= slots);
                    }
                }
                Op::Respond(i) => {
                    let pending: Vec<_> = ring.pending().map(|p| p.request).collect();
                    if !pending.is_empty() {
                        let req = pending[i % pending.len()];
                        let r = timed(|| ring.respond(&req))?;
                        allowed("respond", &r, true)?;
                    }
                }
                Op::Flush => allowed("flush", &timed(|| ring.flush())?, false)?,
                Op::Wait | Op::SetBatch(_) => {
                    let r = timed(|| ring.wait(Some(Duration::ZERO)))?;
                    allowed("wait", &r, false)?;
                }
                Op::Resume => {
                    // Xen's answer to RESUME is not the consumer's to judge.
                    let _ = ring.ring().resume();
                }
            }
            prop_assert!(ring.pending().count() <= VCPUS as usize);
        }
        let t = ring.close();
        prop_assert!(t.is_clean(), "{:?}", t.warnings);
    }

    #[test]
    fn async_consumer_survives_a_hostile_producer(
        frames in prop::sample::select(&[1u32, 2][..]),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let ty = EventType::SharingInvalidate;
        let xen = FakeXen::new();
        xen.add_domain(DOM, VCPUS);
        let mut ring = AsyncRing::builder(&xen, DOM).frames(frames).batch(4).register().unwrap();
        let slots = ring.ring().nr_slots() as usize;
        let mut handle = 0u64;
        for op in &ops {
            match op {
                Op::Scribble(t, b) => scribble(&xen, ty, t, b),
                Op::Produce(n) => {
                    for _ in 0..*n {
                        handle += 1;
                        let _ = xen.put_async(DOM, handle, handle, InvalidateReason::Merged, false);
                    }
                }
                Op::Forge(f) => xen.push_raw(DOM, ty, f.asynchronous()),
                Op::Take | Op::TakeOne | Op::Respond(_) => {
                    let one = matches!(op, Op::TakeOne);
                    let r = timed(|| -> Result<(usize, usize), Error> {
                        let batch = ring.batch()?;
                        let len = batch.len();
                        let mut n = 0;
                        for rec in batch.take(if one { 1 } else { usize::MAX }) {
                            rec?;
                            n += 1;
                        }
                        Ok((len, n))
                    })?;
                    allowed("batch", &r, false)?;
                    if let Ok((len, n)) = r {
                        prop_assert!(len <= slots && n <= len, "batch {len}, iterated {n}");
                    }
                }
                Op::Available => {
                    let r = timed(|| ring.available())?;
                    allowed("available", &r, false)?;
                    if let Ok(n) = r {
                        prop_assert!(n as usize <= slots);
                    }
                }
                Op::Flush | Op::Wait => {
                    let r = timed(|| ring.wait(Some(Duration::ZERO)))?;
                    allowed("wait", &r, false)?;
                }
                Op::SetBatch(n) => {
                    let r = timed(|| ring.set_batch(*n))?;
                    allowed("set_batch", &r, false)?;
                }
                Op::Resume => {
                    let _ = ring.ring().resume();
                }
            }
        }
        let t = ring.close();
        prop_assert!(t.is_clean(), "{:?}", t.warnings);
    }
}
