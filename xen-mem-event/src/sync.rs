//! The synchronous ring consumer (`SHARING_OOM`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xen_mem_event_sys::abi;

use crate::backend::Backend;
use crate::layout::{self, hdr, RawSyncReq, RawSyncRsp};
use crate::xen::poll::{poll_readable, EventFd};
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

/// The consumer of a synchronous (`SHARING_OOM`) ring: the *waiter*, which
/// takes requests, and the owner of the registration.
///
/// Requests are copied out of the ring and validated by
/// [`take_requests`](SyncRing::take_requests) (or
/// [`next_request`](SyncRing::next_request), or
/// [`process`](SyncRing::process) in an event loop); the slot is released to
/// Xen (`req_cons`, Release) only after the copy.  Every request that
/// pauses a vCPU stays in the ring's *pending set* until it is answered,
/// in any order, at any later time, from any thread: a request being worked
/// on (memory being freed for tens of milliseconds) blocks nothing else.
/// Foreign requests are reported but never pending, never answered.
///
/// Answers come from the waiter itself ([`respond`](SyncRing::respond),
/// [`respond_id`](SyncRing::respond_id): published at once, kicked by the
/// next [`flush`](SyncRing::flush), [`wait`](SyncRing::wait) or
/// [`process`](SyncRing::process), one kick per batch) or from a
/// [`Responder`] (`Send + Sync + Clone`, from [`responder`](SyncRing::responder)),
/// which answers from any thread and kicks Xen itself.  Kicks are
/// coalesced: answers published while another thread is kicking are
/// covered by one more kick of that thread, and no answer is ever left
/// without a kick after it.  Each id is answered at most once, only while
/// pending; ids are opaque (answer with the values the request carried).
///
/// [`wait`](SyncRing::wait) sleeps on the event channel and on a wake-up
/// descriptor that [`Responder::wake`] rings, so worker threads can wake the
/// waiter (when a result needs the waiter's attention).  The ring's
/// descriptor ([`AsFd`]) is the event channel's, for event loops.
///
/// Dropping (or [`close`](SyncRing::close)) the `SyncRing` kicks Xen for
/// the answers published, then unregisters the ring: Xen releases every
/// vCPU still paused.  Responders outliving it get
/// [`Error::RingBroken`] (detached) from then on; the mapping and the
/// event channel go when the last of them does.
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
/// // Another thread answers vCPU 0 (and kicks Xen itself).
/// let responder = ring.responder();
/// let req0 = reqs[0];
/// std::thread::scope(|s| s.spawn(|| responder.respond(&req0)).join().unwrap())?;
/// assert!(xen.paused_vcpus(1).is_empty());
/// # Ok::<(), xen_mem_event::Error>(())
/// ```
#[derive(Debug)]
pub struct SyncRing<B: Backend> {
    shared: Arc<Shared<B>>,
    req_cons: u32,
}

/// What the waiter and its responders share.
#[derive(Debug)]
struct Shared<B: Backend> {
    ring: Ring<B>,
    state: Mutex<RspState>,
    /// Responses published since the last kick.
    unnotified: AtomicU32,
    /// A thread is kicking Xen now (it re-checks `unnotified` after).
    kicking: AtomicBool,
    /// Rung by `Responder::wake`: wakes `SyncRing::wait`.
    wake: EventFd,
}

/// The response side, under the lock.
#[derive(Debug)]
struct RspState {
    rsp_prod: u32,
    /// Taken, unanswered requests, by vCPU (Xen has at most one per vCPU).
    pending: BTreeMap<u32, PendingRequest>,
}

/// Answers requests of a [`SyncRing`] from any thread: `Send + Sync +
/// Clone` (clones answer the same ring).
///
/// Each answer is published (`rsp_prod`, Release) and Xen kicked before
/// the call returns, unless another thread is kicking at that moment: that
/// thread kicks once more for every answer published meanwhile (so answers
/// that arrive close together cost one notification, and none is left
/// unsignalled).
#[derive(Debug)]
pub struct Responder<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Clone for Responder<B> {
    fn clone(&self) -> Self {
        Responder {
            shared: Arc::clone(&self.shared),
        }
    }
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

fn os_error(op: Op, domid: u16, e: &std::io::Error) -> Error {
    Error::Os {
        op,
        domid: Some(domid),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

impl<B: Backend> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, RspState> {
        // Nothing panics while holding the lock; a poisoned state is whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers the pending request `id` of `vcpu_id` (publishes, no kick).
    fn answer(&self, id: u64, vcpu_id: u32) -> Result<(), Error> {
        let mut st = self.lock();
        if st.pending.get(&vcpu_id).map(|p| p.request.id) != Some(id) {
            return Err(Error::UnknownRequest {
                op: Op::Respond,
                domid: self.ring.domid(),
                id,
                vcpu_id,
            });
        }
        self.push_response(
            &mut st,
            &RawSyncRsp {
                id,
                vcpu_id,
                flags: 0,
                pad: [0, 0],
            },
        )?;
        st.pending.remove(&vcpu_id);
        Ok(())
    }

    fn push_response(&self, st: &mut RspState, rsp: &RawSyncRsp) -> Result<(), Error> {
        let ring = &self.ring;
        ring.check(Op::Respond)?;
        let nr_slots = ring.nr_slots();
        let rsp_cons = ring.load_acquire(Op::Respond, hdr::RSP_CONS)?;
        let used = layout::ring_distance(st.rsp_prod, rsp_cons);
        if used > nr_slots {
            return Err(ring.broken(
                Op::Respond,
                BrokenReason::ResponseIndex {
                    rsp_prod: st.rsp_prod,
                    rsp_cons,
                },
            ));
        }
        if used == nr_slots {
            // Xen has not consumed earlier responses: make sure it hears.
            ring.notify()?;
            return Err(Error::RingFull {
                op: Op::Respond,
                domid: ring.domid(),
                ty: ring.event_type(),
            });
        }
        ring.write_rsp(Op::Respond, st.rsp_prod, &rsp.encode())?;
        let next = st.rsp_prod.wrapping_add(1);
        // Release: the response is written before Xen can see it counted.
        ring.store_release(Op::Respond, hdr::RSP_PROD, next)?;
        st.rsp_prod = next;
        self.unnotified.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Kicks Xen for every response published so far, coalescing with
    /// other threads: if one is kicking, it kicks again after for ours.
    /// Returns whether this thread kicked.
    fn kick(&self) -> Result<bool, Error> {
        let mut kicked = false;
        // SeqCst throughout: a publisher's `unnotified` increment then
        // `kicking` swap, against the kicker's `kicking` store then
        // `unnotified` load (store-buffering): one of them must see the
        // other's write, so a response is never left without a kick.
        loop {
            if self.unnotified.load(Ordering::SeqCst) == 0 {
                return Ok(kicked);
            }
            if self.kicking.swap(true, Ordering::SeqCst) {
                // The kicker re-checks `unnotified` once it is done.
                return Ok(kicked);
            }
            let n = self.unnotified.swap(0, Ordering::SeqCst);
            let res = if n > 0 { self.ring.notify() } else { Ok(()) };
            if res.is_err() {
                // Still owed a kick: the next flush tries again.
                self.unnotified.fetch_add(n, Ordering::SeqCst);
            }
            self.kicking.store(false, Ordering::SeqCst);
            res?;
            kicked |= n > 0;
        }
    }

    fn pending(&self) -> Vec<PendingRequest> {
        self.lock().pending.values().copied().collect()
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
    pub fn new(ring: Ring<B>) -> Result<SyncRing<B>, Error> {
        if !ring.event_type().is_sync() {
            return Err(Error::WrongRingType {
                op: Op::Attach,
                ty: ring.event_type(),
            });
        }
        let (req_cons, rsp_prod) = ring.initial_consumer_indices()?;
        let wake = EventFd::new().map_err(|e| os_error(Op::Attach, ring.domid(), &e))?;
        Ok(SyncRing {
            shared: Arc::new(Shared {
                ring,
                state: Mutex::new(RspState {
                    rsp_prod,
                    pending: BTreeMap::new(),
                }),
                unnotified: AtomicU32::new(0),
                kicking: AtomicBool::new(false),
                wake,
            }),
            req_cons,
        })
    }

    /// The registration handle.
    pub fn ring(&self) -> &Ring<B> {
        &self.shared.ring
    }

    /// A handle that answers requests of this ring from any thread.
    pub fn responder(&self) -> Responder<B> {
        Responder {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Requests in the ring not taken yet.
    pub fn available(&mut self) -> Result<u32, Error> {
        let prod = self.shared.ring.req_prod(Op::Consume, self.req_cons)?;
        Ok(layout::ring_distance(prod, self.req_cons))
    }

    /// Takes the next request, if any, and releases its slot.
    pub fn next_request(&mut self) -> Result<Option<SyncRequest>, Error> {
        let prod = self.shared.ring.req_prod(Op::Consume, self.req_cons)?;
        if prod == self.req_cons {
            return Ok(None);
        }
        let shared = Arc::clone(&self.shared);
        let req = self.read_one(&mut shared.lock())?;
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
        let prod = self.shared.ring.req_prod(Op::Consume, self.req_cons)?;
        let n = layout::ring_distance(prod, self.req_cons);
        let mut out = Vec::with_capacity(n as usize);
        let mut result = Ok(());
        if n > 0 {
            let shared = Arc::clone(&self.shared);
            let mut st = shared.lock();
            for _ in 0..n {
                match self.read_one(&mut st) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if !out.is_empty() {
            self.publish_cons()?;
        }
        result.map(|()| out)
    }

    /// For event loops, once the descriptor ([`AsFd`]) is readable: kicks
    /// Xen for the answers not flushed yet, consumes the pending
    /// notification (without blocking), then takes every request there
    /// (possibly none).  A request posted after the notification was
    /// consumed notifies again, so the descriptor becomes readable again
    /// for it: no wake-up is lost.
    pub fn process(&mut self) -> Result<Vec<SyncRequest>, Error> {
        self.flush()?;
        self.shared.ring.wait_event(Some(Duration::ZERO))?;
        self.take_requests()
    }

    /// Copies out, validates and accounts one request at `req_cons` (which
    /// must be below `req_prod`); advances the private index only.
    fn read_one(&mut self, st: &mut RspState) -> Result<SyncRequest, Error> {
        let idx = self.req_cons;
        let ring = &self.shared.ring;
        let raw = RawSyncReq::decode(&ring.read_req(Op::Consume, idx)?);
        let req = match validate(ring, st, idx, &raw) {
            Ok(r) => r,
            Err(what) => {
                return Err(ring.broken(Op::Consume, BrokenReason::BadRecord { index: idx, what }))
            }
        };
        self.req_cons = idx.wrapping_add(1);
        if !req.foreign {
            st.pending.insert(
                req.vcpu_id,
                PendingRequest {
                    request: req,
                    taken_at: Instant::now(),
                },
            );
        }
        Ok(req)
    }

    /// Publishes `req_cons` (Release: after the copies).
    fn publish_cons(&mut self) -> Result<(), Error> {
        self.shared
            .ring
            .store_release(Op::Consume, hdr::REQ_CONS, self.req_cons)
    }

    /// The taken, unanswered requests, by vCPU (a snapshot: responders
    /// may answer them meanwhile).
    pub fn pending(&self) -> impl Iterator<Item = PendingRequest> {
        self.shared.pending().into_iter()
    }

    /// The pending request of `vcpu_id`, if any.
    pub fn pending_for(&self, vcpu_id: u32) -> Option<PendingRequest> {
        self.shared.lock().pending.get(&vcpu_id).copied()
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
        self.shared.answer(id, vcpu_id)
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
        let mut st = self.shared.lock();
        self.shared.push_response(
            &mut st,
            &RawSyncRsp {
                id,
                vcpu_id,
                flags,
                pad,
            },
        )
    }

    /// Responses published since the last kick (by anyone).
    pub fn unflushed(&self) -> u32 {
        self.shared.unnotified.load(Ordering::SeqCst)
    }

    /// Kicks Xen if responses were published since the last kick (one
    /// notification per batch).  Returns whether this call kicked (false
    /// also when another thread's kick in progress covers them).
    pub fn flush(&mut self) -> Result<bool, Error> {
        self.shared.kick()
    }

    /// Flushes, then waits until requests are available (at most
    /// `timeout`; `None` waits forever), or until a [`Responder::wake`].
    /// Returns whether requests are available (after a wake-up, possibly
    /// not).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.flush()?;
        let deadline = crate::ring::deadline_after(timeout);
        let domid = self.shared.ring.domid();
        loop {
            if self.available()? > 0 {
                return Ok(true);
            }
            let Some(left) = crate::ring::time_left(deadline) else {
                return Ok(false);
            };
            let [notified, woken] =
                poll_readable([self.shared.ring.as_fd(), self.shared.wake.as_fd()], left)
                    .map_err(|e| os_error(Op::Wait, domid, &e))?;
            if notified {
                // Never blocks; false if another waiter took it first.
                self.shared.ring.wait_event(Some(Duration::ZERO))?;
            }
            if woken {
                self.shared.wake.drain();
                return Ok(self.available()? > 0);
            }
            if !notified {
                return Ok(self.available()? > 0);
            }
        }
    }

    /// Kicks Xen for the responses not flushed yet, then tears the ring
    /// down (see [`Ring::close`]); reports what failed.
    pub fn close(self) -> crate::Teardown {
        let flushed = self.shared.kick();
        let mut t = self.shared.ring.teardown();
        if let Err(e) = flushed {
            log::warn!(
                "{} ring of domain {}: final kick: {e}",
                self.shared.ring.event_type(),
                self.shared.ring.domid()
            );
            t.warnings.insert(0, e);
            // Do not try (and warn) again on drop.
            self.shared.unnotified.store(0, Ordering::SeqCst);
        }
        t
    }
}

fn validate<B: Backend>(
    ring: &Ring<B>,
    st: &RspState,
    index: u32,
    raw: &RawSyncReq,
) -> Result<SyncRequest, &'static str> {
    if raw.pad != 0 {
        return Err("padding is not zero");
    }
    if raw.domid != ring.domid() {
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
        if raw.vcpu_id >= ring.geometry().max_vcpus {
            return Err("vcpu_id beyond max_vcpus");
        }
        if st.pending.contains_key(&raw.vcpu_id) {
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

impl<B: Backend> Responder<B> {
    /// The domain of the ring.
    pub fn domid(&self) -> u16 {
        self.shared.ring.domid()
    }

    /// Answers `req` and kicks Xen (see [`respond_id`](Responder::respond_id)).
    /// A foreign request is never answered: this is a no-op for one.
    pub fn respond(&self, req: &SyncRequest) -> Result<(), Error> {
        if req.foreign {
            return Ok(());
        }
        self.respond_id(req.id, req.vcpu_id)
    }

    /// Answers the pending request `id` of `vcpu_id`, then kicks Xen
    /// (coalesced with other threads' kicks).
    ///
    /// Fails with [`Error::UnknownRequest`] (writing nothing) unless the
    /// request is pending (never taken, or answered already, by anyone),
    /// with [`Error::RingBroken`] once the ring is detached (the waiter
    /// closed it, or Xen tore it down).
    pub fn respond_id(&self, id: u64, vcpu_id: u32) -> Result<(), Error> {
        self.shared.answer(id, vcpu_id)?;
        self.shared.kick().map(|_| ())
    }

    /// Answers several requests, then kicks Xen once.
    pub fn respond_all<'r>(
        &self,
        reqs: impl IntoIterator<Item = &'r SyncRequest>,
    ) -> Result<(), Error> {
        let mut result = Ok(());
        for r in reqs.into_iter().filter(|r| !r.foreign) {
            result = self.shared.answer(r.id, r.vcpu_id);
            if result.is_err() {
                break;
            }
        }
        self.shared.kick()?;
        result
    }

    /// Kicks Xen for answers published but not kicked yet (by
    /// [`SyncRing::respond`]).  Returns whether this call kicked.
    pub fn flush(&self) -> Result<bool, Error> {
        self.shared.kick()
    }

    /// Wakes the waiter: its [`SyncRing::wait`] returns now (or its next one
    /// returns at once).
    pub fn wake(&self) {
        self.shared.wake.signal();
    }

    /// The pending requests (a snapshot).
    pub fn pending(&self) -> Vec<PendingRequest> {
        self.shared.pending()
    }

    /// Whether the request `id` of `vcpu_id` is still pending.
    pub fn is_pending(&self, id: u64, vcpu_id: u32) -> bool {
        self.shared
            .lock()
            .pending
            .get(&vcpu_id)
            .is_some_and(|p| p.request.id == id)
    }
}

/// The event channel's descriptor: readable while a notification from Xen
/// is pending; then call [`SyncRing::process`].
impl<B: Backend> AsFd for SyncRing<B> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.ring.as_fd()
    }
}

impl<B: Backend> AsRawFd for SyncRing<B> {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.ring.as_raw_fd()
    }
}

impl<B: Backend> Drop for SyncRing<B> {
    fn drop(&mut self) {
        // Publishing was done by `respond`; make sure Xen hears of it.
        if let Err(e) = self.shared.kick() {
            log::warn!(
                "{} ring of domain {}: final kick: {e}",
                self.shared.ring.event_type(),
                self.shared.ring.domid()
            );
        }
        // The owner goes: unregister now (Xen releases every paused vCPU),
        // even if responders keep the mapping a while longer.
        let _ = self.shared.ring.teardown();
    }
}
