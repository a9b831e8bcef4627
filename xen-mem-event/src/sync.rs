//! The synchronous ring consumer (`SHARING_OOM`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use xen_mem_event_sys::abi;

use crate::backend::Backend;
use crate::layout::{self, hdr, RawSyncReq, RawSyncRsp};
use crate::{BrokenReason, Error, EventType, Op, Ring, RingBuilder};

/// Response ids are `(generation << 16) | vcpu_id`.
const ID_VCPU_BITS: u32 = 16;
const ID_VCPU_MASK: u64 = (1 << ID_VCPU_BITS) - 1;

/// Why Xen raised a `SHARING_OOM` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OomReason {
    /// No memory for the private copy of a shared page
    /// (`XEN_MEM_EVENT_OOM_UNSHARE`).
    Unshare,
}

impl OomReason {
    /// The ABI value.
    pub fn raw(self) -> u16 {
        match self {
            OomReason::Unshare => abi::XEN_MEM_EVENT_OOM_UNSHARE,
        }
    }

    fn from_raw(raw: u16) -> Option<OomReason> {
        (raw == abi::XEN_MEM_EVENT_OOM_UNSHARE).then_some(OomReason::Unshare)
    }
}

/// A validated `SHARING_OOM` request, copied out of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SyncRequest {
    /// The ring index it was read from.
    pub index: u32,
    /// The id to answer; 0 for a foreign request.
    pub id: u64,
    /// The gfn whose unshare failed.
    pub gfn: u64,
    /// The vCPU that faulted (the foreign domain's vCPU for a foreign
    /// request).
    pub vcpu_id: u32,
    /// The domain that owns the gfn: always the ring's domain (any other
    /// value makes the ring [broken](Error::RingBroken)).
    pub domid: u16,
    /// Why.
    pub reason: OomReason,
    /// A foreign domain's access hit the event: nothing is paused and the
    /// request must not be answered.
    pub foreign: bool,
}

impl SyncRequest {
    /// Whether the request pauses a vCPU until answered.
    pub fn needs_response(&self) -> bool {
        !self.foreign
    }
}

/// A request taken from the ring and not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRequest {
    /// The request.
    pub request: SyncRequest,
    /// When the consumer took it.
    pub taken_at: Instant,
}

impl PendingRequest {
    /// How long the vCPU has been waiting for this consumer (since the
    /// request was taken).
    pub fn age(&self) -> Duration {
        self.taken_at.elapsed()
    }
}

/// The consumer of a synchronous (`SHARING_OOM`) ring.
///
/// Requests are copied out of the ring and validated by
/// [`take_requests`](SyncRing::take_requests) (or
/// [`next_request`](SyncRing::next_request)); the slot is released to Xen
/// (`req_cons`, Release) only after the copy.  Every request that pauses a
/// vCPU stays in the ring's *pending set* until it is answered with
/// [`respond`](SyncRing::respond) or [`respond_id`](SyncRing::respond_id),
/// in any order, at any later time: a request being worked on (memory being
/// freed for tens of milliseconds) blocks nothing else.  Foreign requests
/// are reported but never pending, never answered.
///
/// Responses are published (`rsp_prod`, Release) as they are written, and
/// Xen is kicked once per batch, by [`flush`](SyncRing::flush) (also done
/// by [`wait`](SyncRing::wait), [`respond_all`](SyncRing::respond_all) and
/// on drop).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use xen_mem_event::{testing::FakeXen, EventType, SyncRing};
///
/// let xen = FakeXen::new();
/// xen.add_domain(1, 4);
/// let mut ring = SyncRing::register(&xen, 1, 1)?;
///
/// // Two vCPUs fault; a foreign mapping too.
/// xen.put_sync(1, 0, false, 0x1000).unwrap();
/// xen.put_sync(1, 3, false, 0x2000).unwrap();
/// xen.put_sync(1, 7, true, 0x3000).unwrap();
///
/// assert!(ring.wait(Some(Duration::ZERO))?);
/// let reqs = ring.take_requests()?;
/// assert_eq!(reqs.len(), 3);
/// assert!(reqs[2].foreign);
/// assert_eq!(ring.pending().count(), 2);
///
/// // Answer vCPU 3 first; vCPU 0 stays paused while we work for it.
/// ring.respond(&reqs[1])?;
/// ring.flush()?;
/// assert_eq!(xen.paused_vcpus(1), vec![0]);
/// ring.respond_id(reqs[0].id, reqs[0].vcpu_id)?;
/// ring.flush()?;
/// assert!(xen.paused_vcpus(1).is_empty());
/// # Ok::<(), xen_mem_event::Error>(())
/// ```
#[derive(Debug)]
pub struct SyncRing<B: Backend> {
    ring: Ring<B>,
    req_cons: u32,
    rsp_prod: u32,
    /// Taken, unanswered requests, by vCPU (Xen has at most one per vCPU).
    pending: BTreeMap<u32, PendingRequest>,
    unnotified: u32,
}

/// Builder for a [`SyncRing`].
#[derive(Debug)]
#[must_use = "call .register()"]
pub struct SyncRingBuilder<B: Backend> {
    inner: RingBuilder<B>,
}

impl<B: Backend> SyncRingBuilder<B> {
    /// Data frames per array (a power of two in `1..=64`, 128 slots each);
    /// the ring needs a slot per vCPU of the domain.
    pub fn frames(self, frames: u32) -> Self {
        SyncRingBuilder {
            inner: self.inner.frames(frames),
        }
    }

    /// Replace a consumer that is still registered: its paused vCPUs are
    /// released and their faults raised again on the new ring.
    pub fn takeover(self, takeover: bool) -> Self {
        SyncRingBuilder {
            inner: self.inner.takeover(takeover),
        }
    }

    /// Registers and attaches.
    pub fn register(self) -> Result<SyncRing<B>, Error> {
        SyncRing::new(self.inner.register()?)
    }
}

impl<B: Backend> SyncRing<B> {
    /// Registers the `SHARING_OOM` ring of `domid` with `frames` data frames
    /// per array.
    pub fn register(backend: B, domid: u16, frames: u32) -> Result<SyncRing<B>, Error> {
        SyncRing::new(Ring::register(
            backend,
            domid,
            EventType::SharingOom,
            frames,
        )?)
    }

    /// A builder for the `SHARING_OOM` ring of `domid` (frames, takeover).
    pub fn builder(backend: B, domid: u16) -> SyncRingBuilder<B> {
        SyncRingBuilder {
            inner: Ring::builder(backend, domid, EventType::SharingOom),
        }
    }

    /// Wraps a registered synchronous ring.
    pub fn new(mut ring: Ring<B>) -> Result<SyncRing<B>, Error> {
        if !ring.event_type().is_sync() {
            return Err(Error::WrongRingType {
                op: Op::Attach,
                ty: ring.event_type(),
            });
        }
        let (req_cons, rsp_prod) = ring.initial_consumer_indices()?;
        Ok(SyncRing {
            ring,
            req_cons,
            rsp_prod,
            pending: BTreeMap::new(),
            unnotified: 0,
        })
    }

    /// The registration handle.
    pub fn ring(&self) -> &Ring<B> {
        &self.ring
    }

    /// Requests in the ring not taken yet.
    pub fn available(&mut self) -> Result<u32, Error> {
        let prod = self.ring.req_prod(Op::Consume, self.req_cons)?;
        Ok(layout::ring_distance(prod, self.req_cons))
    }

    /// Takes the next request, if any, and releases its slot.
    pub fn next_request(&mut self) -> Result<Option<SyncRequest>, Error> {
        let prod = self.ring.req_prod(Op::Consume, self.req_cons)?;
        if prod == self.req_cons {
            return Ok(None);
        }
        let req = self.read_one()?;
        self.publish_cons()?;
        Ok(Some(req))
    }

    /// Takes every request in the ring (at most `nr_slots`), releasing
    /// their slots with one `req_cons` update.  Requests that need an
    /// answer join the pending set.
    ///
    /// On a malformed request, the requests before it are still taken
    /// (and pending), and [`Error::RingBroken`] is returned.
    pub fn take_requests(&mut self) -> Result<Vec<SyncRequest>, Error> {
        let prod = self.ring.req_prod(Op::Consume, self.req_cons)?;
        let n = layout::ring_distance(prod, self.req_cons);
        let mut out = Vec::with_capacity(n as usize);
        let mut result = Ok(());
        for _ in 0..n {
            match self.read_one() {
                Ok(r) => out.push(r),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if !out.is_empty() {
            self.publish_cons()?;
        }
        result.map(|()| out)
    }

    /// Copies out, validates and accounts one request at `req_cons` (which
    /// must be below `req_prod`); advances the private index only.
    fn read_one(&mut self) -> Result<SyncRequest, Error> {
        let idx = self.req_cons;
        let raw = RawSyncReq::decode(&self.ring.read_req(Op::Consume, idx)?);
        let req = match self.validate(idx, &raw) {
            Ok(r) => r,
            Err(what) => {
                return Err(self
                    .ring
                    .broken(Op::Consume, BrokenReason::BadRecord { index: idx, what }))
            }
        };
        self.req_cons = idx.wrapping_add(1);
        if !req.foreign {
            self.pending.insert(
                req.vcpu_id,
                PendingRequest {
                    request: req,
                    taken_at: Instant::now(),
                },
            );
        }
        Ok(req)
    }

    fn validate(&self, index: u32, raw: &RawSyncReq) -> Result<SyncRequest, &'static str> {
        if raw.pad != 0 {
            return Err("padding is not zero");
        }
        if raw.domid != self.ring.domid() {
            return Err("domid is not the ring's domain");
        }
        let reason = OomReason::from_raw(raw.reason).ok_or("unknown reason")?;
        let foreign = match raw.flags {
            abi::XEN_MEM_EVENT_REQ_FOREIGN => true,
            abi::XEN_MEM_EVENT_REQ_VCPU_PAUSED => false,
            _ => return Err("unknown flags"),
        };
        if foreign {
            if raw.id != 0 {
                return Err("foreign request with an id");
            }
        } else {
            if raw.id >> ID_VCPU_BITS == 0 || raw.id & ID_VCPU_MASK != u64::from(raw.vcpu_id) {
                return Err("id does not match its vCPU");
            }
            if raw.vcpu_id >= self.ring.geometry().max_vcpus {
                return Err("vcpu_id beyond max_vcpus");
            }
            if self.pending.contains_key(&raw.vcpu_id) {
                return Err("second request for a vCPU already paused");
            }
        }
        Ok(SyncRequest {
            index,
            id: raw.id,
            gfn: raw.gfn,
            vcpu_id: raw.vcpu_id,
            domid: raw.domid,
            reason,
            foreign,
        })
    }

    /// Publishes `req_cons` (Release: after the copies).
    fn publish_cons(&mut self) -> Result<(), Error> {
        self.ring
            .store_release(Op::Consume, hdr::REQ_CONS, self.req_cons)
    }

    /// The taken, unanswered requests, by vCPU.
    pub fn pending(&self) -> impl Iterator<Item = &PendingRequest> + '_ {
        self.pending.values()
    }

    /// The pending request of `vcpu_id`, if any.
    pub fn pending_for(&self, vcpu_id: u32) -> Option<&PendingRequest> {
        self.pending.get(&vcpu_id)
    }

    /// Answers `req` (see [`respond_id`](SyncRing::respond_id)).  A foreign
    /// request is never answered: this is a no-op for one.
    pub fn respond(&mut self, req: &SyncRequest) -> Result<(), Error> {
        if req.foreign {
            return Ok(());
        }
        self.respond_id(req.id, req.vcpu_id)
    }

    /// Answers the pending request `id` of `vcpu_id`: writes the response
    /// and publishes it (`rsp_prod`, Release).  Xen is kicked by the next
    /// [`flush`](SyncRing::flush).
    ///
    /// Fails with [`Error::UnknownRequest`] (writing nothing) unless the
    /// request is pending, and with [`Error::RingFull`] (after kicking Xen)
    /// if Xen has not consumed earlier responses yet.
    pub fn respond_id(&mut self, id: u64, vcpu_id: u32) -> Result<(), Error> {
        if self.pending.get(&vcpu_id).map(|p| p.request.id) != Some(id) {
            return Err(Error::UnknownRequest {
                op: Op::Respond,
                domid: self.ring.domid(),
                id,
                vcpu_id,
            });
        }
        self.push_response(&RawSyncRsp {
            id,
            vcpu_id,
            flags: 0,
            pad: [0, 0],
        })?;
        self.pending.remove(&vcpu_id);
        Ok(())
    }

    /// Answers several requests, then kicks Xen once.
    pub fn respond_all<'r>(
        &mut self,
        reqs: impl IntoIterator<Item = &'r SyncRequest>,
    ) -> Result<(), Error> {
        let mut result = Ok(());
        for r in reqs {
            result = self.respond(r);
            if result.is_err() {
                break;
            }
        }
        self.flush()?;
        result
    }

    /// Writes a response as given, bypassing the pending set (for tests of
    /// Xen's validation of malformed responses).
    #[doc(hidden)]
    pub fn push_raw_response(
        &mut self,
        id: u64,
        vcpu_id: u32,
        flags: u32,
        pad: [u64; 2],
    ) -> Result<(), Error> {
        self.push_response(&RawSyncRsp {
            id,
            vcpu_id,
            flags,
            pad,
        })
    }

    fn push_response(&mut self, rsp: &RawSyncRsp) -> Result<(), Error> {
        self.ring.check(Op::Respond)?;
        let nr_slots = self.ring.nr_slots();
        let rsp_cons = self.ring.load_acquire(Op::Respond, hdr::RSP_CONS)?;
        let used = layout::ring_distance(self.rsp_prod, rsp_cons);
        if used > nr_slots {
            return Err(self.ring.broken(
                Op::Respond,
                BrokenReason::ResponseIndex {
                    rsp_prod: self.rsp_prod,
                    rsp_cons,
                },
            ));
        }
        if used == nr_slots {
            self.flush()?;
            return Err(Error::RingFull {
                op: Op::Respond,
                domid: self.ring.domid(),
                ty: self.ring.event_type(),
            });
        }
        self.ring
            .write_rsp(Op::Respond, self.rsp_prod, &rsp.encode())?;
        self.rsp_prod = self.rsp_prod.wrapping_add(1);
        // Release: the response is written before Xen can see it counted.
        self.ring
            .store_release(Op::Respond, hdr::RSP_PROD, self.rsp_prod)?;
        self.unnotified += 1;
        Ok(())
    }

    /// Responses published since the last kick.
    pub fn unflushed(&self) -> u32 {
        self.unnotified
    }

    /// Kicks Xen if responses were published since the last kick (one
    /// notification per batch).  Returns whether it kicked.
    pub fn flush(&mut self) -> Result<bool, Error> {
        if self.unnotified == 0 {
            return Ok(false);
        }
        self.ring.notify()?;
        self.unnotified = 0;
        Ok(true)
    }

    /// Flushes, then waits until requests are available (at most
    /// `timeout`; `None` waits forever).  Returns whether requests are
    /// available.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.flush()?;
        let deadline = crate::ring::deadline_after(timeout);
        loop {
            if self.available()? > 0 {
                return Ok(true);
            }
            let Some(left) = crate::ring::time_left(deadline) else {
                return Ok(false);
            };
            if !self.ring.wait_event(left)? {
                return Ok(self.available()? > 0);
            }
        }
    }
}

impl<B: Backend> SyncRing<B> {
    /// Kicks Xen for the responses not flushed yet, then tears the ring
    /// down (see [`Ring::close`]); reports what failed.
    pub fn close(mut self) -> crate::Teardown {
        let flushed = self.flush();
        let mut t = self.ring.teardown();
        if let Err(e) = flushed {
            log::warn!(
                "{} ring of domain {}: final kick: {e}",
                self.ring.event_type(),
                self.ring.domid()
            );
            t.warnings.insert(0, e);
            // Do not try (and warn) again on drop.
            self.unnotified = 0;
        }
        t
    }
}

impl<B: Backend> Drop for SyncRing<B> {
    fn drop(&mut self) {
        // Publishing was done by `respond`; make sure Xen hears of it.
        if let Err(e) = self.flush() {
            log::warn!(
                "{} ring of domain {}: final kick: {e}",
                self.ring.event_type(),
                self.ring.domid()
            );
        }
    }
}
