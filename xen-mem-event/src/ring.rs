//! The registration handle: register, map, bind, check, kick; tear down on
//! drop.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::backend::{Backend, EventChannel, RegisterParams, Registration, Token};
use crate::layout::{self, hdr, FRAME_SIZE, INTERFACE_VERSION, RECORD_SIZE, SLOTS_PER_FRAME};
use crate::shm::{RecordBytes, RecordWords, Shm};
use crate::{BrokenReason, Error, EventType, Op, RingInfo};

const F_BROKEN: u32 = xen_mem_event_sys::abi::XEN_MEM_EVENT_RING_F_BROKEN;
const F_DETACHED: u32 = xen_mem_event_sys::abi::XEN_MEM_EVENT_RING_F_DETACHED;

/// The ring geometry, checked against the header at attach.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub nr_slots: u32,
    pub req_off: usize,
    pub rsp_off: usize,
    pub max_vcpus: u32,
}

/// A registered, mapped and bound ring of one event type for one domain.
///
/// Most users want the typed consumers ([`SyncRing`](crate::SyncRing),
/// [`AsyncRing`](crate::AsyncRing)), which own a `Ring`.
///
/// # Teardown
///
/// Dropping a `Ring` answers nothing on the consumer's behalf.  It:
///
/// 1. **unregisters** the ring (`XEN_MEM_EVENT_RING_UNREGISTER`): Xen
///    unpauses every vCPU the ring paused and stops producing;
/// 2. **unbinds** the event channel;
/// 3. **unmaps** the frames (Xen frees them once no mapping remains).
///
/// The unregister names the ring by the owner [`Token`] its registration
/// returned, so it can only tear down this registration: if the ring has
/// been taken over (or unregistered and registered again by someone else),
/// Xen answers `ESTALE` and the successor's ring is left alone; that, and a
/// ring or domain already gone, is logged at `info` level.  Any other
/// failure is a warning (`log::warn!`), never a panic; [`Ring::close`]
/// (and `close` of the typed consumers) returns them instead, for callers
/// that must know whether teardown was clean.
///
/// # Example
///
/// ```
/// use xen_mem_event::{testing::FakeXen, EventType, Ring};
///
/// let xen = FakeXen::new();
/// xen.add_domain(1, 2);
/// let ring = Ring::builder(&xen, 1, EventType::SharingInvalidate)
///     .frames(2)
///     .batch(16)
///     .register()?;
/// assert_eq!(ring.nr_slots(), 256);
/// assert!(ring.info()?.state.connected());
/// drop(ring); // unregisters, unbinds, unmaps
/// assert!(xen.info(1, EventType::SharingInvalidate).is_none());
/// # Ok::<(), xen_mem_event::Error>(())
/// ```
#[derive(Debug)]
pub struct Ring<B: Backend> {
    backend: B,
    domid: u16,
    ty: EventType,
    reg: Registration,
    params: RegisterParams,
    geo: Geometry,
    /// The first reason the consumer found the ring broken.
    broken: OnceLock<BrokenReason>,
    /// Teardown has run (by `close`): `Drop` has nothing left to do.
    torn_down: AtomicBool,
    // Field order is drop order: unbind before unmap (after `Drop::drop`
    // has unregistered).
    evtchn: Box<dyn EventChannel>,
    shm: Shm,
}

/// Builder for [`Ring`] (frames, batch threshold, takeover).
#[derive(Debug)]
#[must_use = "call .register()"]
pub struct RingBuilder<B: Backend> {
    backend: B,
    domid: u16,
    ty: EventType,
    params: RegisterParams,
}

impl<B: Backend> RingBuilder<B> {
    /// Data frames per array: a power of two in `1..=64` (128 slots each).
    /// Default 1.
    pub fn frames(mut self, frames: u32) -> Self {
        self.params.frames = frames;
        self
    }

    /// Async rings: records per notification at registration (0 = 1).
    /// Default 0.  Clamped to half the ring before it is registered, as
    /// Xen clamps it (Xen refuses more than the ring).  Ignored for sync rings (the backend
    /// gets 0: the field is
    /// unused for them and Xen wants unused fields zero).
    pub fn batch(mut self, batch: u32) -> Self {
        self.params.batch = batch;
        self
    }

    /// Replace a consumer that is still registered
    /// (`XEN_MEM_EVENT_REGISTER_TAKEOVER`): its vCPUs are released and
    /// their faults raised again on the new ring.  Default false.
    pub fn takeover(mut self, takeover: bool) -> Self {
        self.params.takeover = takeover;
        self
    }

    /// Registers, maps, binds, checks the header and kicks Xen once.
    pub fn register(self) -> Result<Ring<B>, Error> {
        Ring::attach(self.backend, self.domid, self.ty, self.params)
    }
}

/// Unregisters on drop unless disarmed; holds what was set up so far so
/// that teardown keeps the documented order (unregister, unbind, unmap).
struct SetupGuard<'a, B: Backend> {
    backend: &'a B,
    domid: u16,
    ty: EventType,
    token: Token,
    evtchn: Option<Box<dyn EventChannel>>,
    shm: Option<Shm>,
    armed: bool,
}

impl<B: Backend> Drop for SetupGuard<'_, B> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.backend.unregister(self.domid, self.ty, self.token) {
                log::warn!(
                    "{} ring of domain {}: unregister after failed setup: {e}",
                    self.ty,
                    self.domid
                );
            }
        }
        drop(self.evtchn.take());
        drop(self.shm.take());
    }
}

impl<B: Backend> Ring<B> {
    /// Registers a ring of `ty` for `domid` with `frames` data frames per
    /// array (see [`Ring::builder`] for the other parameters).
    pub fn register(backend: B, domid: u16, ty: EventType, frames: u32) -> Result<Ring<B>, Error> {
        Ring::builder(backend, domid, ty).frames(frames).register()
    }

    /// A builder for a ring of `ty` for `domid`.
    pub fn builder(backend: B, domid: u16, ty: EventType) -> RingBuilder<B> {
        RingBuilder {
            backend,
            domid,
            ty,
            params: RegisterParams {
                frames: 1,
                batch: 0,
                takeover: false,
            },
        }
    }

    fn attach(
        backend: B,
        domid: u16,
        ty: EventType,
        mut params: RegisterParams,
    ) -> Result<Ring<B>, Error> {
        let sync = ty.is_sync();
        if sync {
            // Unused by sync rings, and Xen wants unused fields zero.
            params.batch = 0;
        }
        let expected_frames =
            layout::total_frames(params.frames, sync).ok_or(Error::InvalidArgument {
                op: Op::Register,
                domid: Some(domid),
                what: "frames must be a power of two in 1..=64",
            })?;
        if !sync {
            // Xen refuses a threshold beyond the ring and clamps it to half
            // the ring: register what will be in force.
            let nr_slots = params.frames.saturating_mul(SLOTS_PER_FRAME);
            params.batch = params.batch.min((nr_slots / 2).max(1));
        }
        let reg = backend.register(domid, ty, params)?;

        let mut guard = SetupGuard {
            backend: &backend,
            domid,
            ty,
            token: reg.token,
            evtchn: None,
            shm: None,
            armed: true,
        };
        let bad = |field: &'static str, found: u64, expected: u64| Error::RingBroken {
            op: Op::Attach,
            domid,
            ty,
            reason: BrokenReason::BadHeader {
                field,
                found,
                expected,
            },
        };

        let nr_slots = params.frames * SLOTS_PER_FRAME;
        if reg.nr_frames != expected_frames {
            return Err(bad(
                "registration.nr_frames",
                reg.nr_frames.into(),
                expected_frames.into(),
            ));
        }
        if reg.nr_slots != nr_slots {
            return Err(bad(
                "registration.nr_slots",
                reg.nr_slots.into(),
                nr_slots.into(),
            ));
        }

        let mem = backend.map(domid, ty, reg.nr_frames)?;
        let needed = reg.nr_frames as usize * FRAME_SIZE;
        let shm = Shm::new(mem).map_err(|len| Error::RingBroken {
            op: Op::Map,
            domid,
            ty,
            reason: BrokenReason::Mapping { len, needed },
        })?;
        if shm.len() < needed {
            return Err(Error::RingBroken {
                op: Op::Map,
                domid,
                ty,
                reason: BrokenReason::Mapping {
                    len: shm.len(),
                    needed,
                },
            });
        }
        let shm = guard.shm.insert(shm);

        let geo = check_header(shm, domid, ty, nr_slots)?;

        let evtchn = guard.evtchn.insert(backend.bind(domid, ty, reg.port)?);
        // Xen marks the ring connected on the first kick.
        evtchn.notify()?;

        guard.armed = false;
        let evtchn = guard.evtchn.take();
        let shm = guard.shm.take();
        drop(guard);
        match (evtchn, shm) {
            (Some(evtchn), Some(shm)) => Ok(Ring {
                backend,
                domid,
                ty,
                reg,
                params,
                geo,
                broken: OnceLock::new(),
                torn_down: AtomicBool::new(false),
                evtchn,
                shm,
            }),
            // Both were inserted above; keep the compiler (not a panic) on it.
            _ => Err(Error::InvalidArgument {
                op: Op::Attach,
                domid: Some(domid),
                what: "internal: setup incomplete",
            }),
        }
    }

    /// The domain.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.ty
    }

    /// What `register` returned.
    pub fn registration(&self) -> Registration {
        self.reg
    }

    /// The parameters registered with.
    pub fn params(&self) -> RegisterParams {
        self.params
    }

    /// Slots per array.
    #[inline]
    pub fn nr_slots(&self) -> u32 {
        self.geo.nr_slots
    }

    /// vCPUs of the domain (sync rings; as found in the ring header).
    pub fn max_vcpus(&self) -> u32 {
        self.geo.max_vcpus
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Xen's statistics and state for this ring (`GET_INFO`).
    pub fn info(&self) -> Result<RingInfo, Error> {
        self.backend.get_info(self.domid, self.ty)
    }

    /// The owner token of this registration.
    pub fn token(&self) -> Token {
        self.reg.token
    }

    /// Asks Xen to process posted responses (`RESUME`), as a notification
    /// does.  [`Error::Stale`] if the ring was taken over.
    pub fn resume(&self) -> Result<(), Error> {
        self.backend.resume(self.domid, self.ty, self.reg.token)
    }

    /// Kicks Xen's end of the event channel.
    pub fn notify(&self) -> Result<(), Error> {
        self.evtchn.notify()
    }

    /// Waits for a notification from Xen (at most `timeout`; `None`
    /// waits forever).  Returns whether one arrived.
    pub fn wait_event(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.evtchn.wait(timeout)
    }

    /// Whether the consumer found the ring broken, or Xen flagged it so
    /// (a detached ring is broken too: unusable).
    pub fn is_broken(&self) -> bool {
        self.broken.get().is_some() || self.flags() & (F_BROKEN | F_DETACHED) != 0
    }

    /// Whether Xen tore the ring down (`XEN_MEM_EVENT_RING_F_DETACHED`):
    /// it was unregistered, taken over by another consumer, or its domain
    /// started dying.  Nothing more will be posted on it; drop it.
    pub fn is_detached(&self) -> bool {
        self.flags() & F_DETACHED != 0
    }

    /// The header flags (an unreadable header reads as broken).
    #[inline]
    fn flags(&self) -> u32 {
        self.shm.load_acquire_u32(hdr::FLAGS).unwrap_or(F_BROKEN)
    }

    /// Tears the ring down now (see [Teardown](Ring#teardown)) and reports
    /// what happened, failures included (they are logged as warnings as
    /// well).
    pub fn close(self) -> Teardown {
        self.teardown()
    }

    /// Unregisters (once), with the token.
    pub(crate) fn teardown(&self) -> Teardown {
        if self.torn_down.swap(true, Ordering::AcqRel) {
            return Teardown::default();
        }
        let mut t = Teardown::default();
        match self.backend.unregister(self.domid, self.ty, self.reg.token) {
            Ok(()) => t.unregistered = true,
            Err(
                e
                @ (Error::Stale { .. } | Error::NotRegistered { .. } | Error::NoSuchDomain { .. }),
            ) => {
                log::info!(
                    "{} ring of domain {}: taken over or gone, not unregistering ({e})",
                    self.ty,
                    self.domid
                );
            }
            Err(e) => {
                log::warn!("{} ring of domain {}: {e}", self.ty, self.domid);
                t.warnings.push(e);
            }
        }
        t
    }

    // ----- for the typed consumers -----

    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Records `reason` (the first one sticks) and returns the error.
    #[cold]
    pub(crate) fn broken(&self, op: Op, reason: BrokenReason) -> Error {
        let reason = *self.broken.get_or_init(|| reason);
        Error::RingBroken {
            op,
            domid: self.domid,
            ty: self.ty,
            reason,
        }
    }

    /// Fails if the ring is (or was found) broken, or is detached.
    #[inline]
    pub(crate) fn check(&self, op: Op) -> Result<(), Error> {
        if let Some(&reason) = self.broken.get() {
            return Err(self.broken(op, reason));
        }
        let flags = self.flags();
        if flags & F_DETACHED != 0 {
            return Err(self.broken(op, BrokenReason::Detached));
        }
        if flags & F_BROKEN != 0 {
            return Err(self.broken(op, BrokenReason::FlaggedByXen));
        }
        Ok(())
    }

    /// `req_prod`, with Acquire, checked against `req_cons`.
    #[inline]
    pub(crate) fn req_prod(&self, op: Op, req_cons: u32) -> Result<u32, Error> {
        self.check(op)?;
        let prod = self.load_acquire(op, hdr::REQ_PROD)?;
        if !layout::index_plausible(prod, req_cons, self.geo.nr_slots) {
            return Err(self.broken(
                op,
                BrokenReason::ProducerAhead {
                    req_prod: prod,
                    req_cons,
                },
            ));
        }
        Ok(prod)
    }

    #[cold]
    fn oob(&self, op: Op, off: usize) -> Error {
        self.broken(
            op,
            BrokenReason::Mapping {
                len: self.shm.len(),
                needed: off,
            },
        )
    }

    #[inline]
    pub(crate) fn load_acquire(&self, op: Op, off: usize) -> Result<u32, Error> {
        match self.shm.load_acquire_u32(off) {
            Some(v) => Ok(v),
            None => Err(self.oob(op, off)),
        }
    }

    #[inline]
    pub(crate) fn load_u64(&self, op: Op, off: usize) -> Result<u64, Error> {
        match self.shm.load_u64(off) {
            Some(v) => Ok(v),
            None => Err(self.oob(op, off)),
        }
    }

    #[inline]
    pub(crate) fn store_release(&self, op: Op, off: usize, v: u32) -> Result<(), Error> {
        match self.shm.store_release_u32(off, v) {
            Some(()) => Ok(()),
            None => Err(self.oob(op, off)),
        }
    }

    /// Stores `req_event`, then a full fence, so that a following load of
    /// `req_prod` cannot be ordered before it (the event-index re-check).
    pub(crate) fn store_event(&self, op: Op, v: u32) -> Result<(), Error> {
        self.store_release(op, hdr::REQ_EVENT, v)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    #[inline]
    pub(crate) fn read_req(&self, op: Op, idx: u32) -> Result<RecordWords, Error> {
        let off = layout::slot_offset(self.geo.req_off, idx, self.geo.nr_slots);
        match self.shm.read_record(off) {
            Some(r) => Ok(r),
            None => Err(self.oob(op, off)),
        }
    }

    pub(crate) fn write_rsp(&self, op: Op, idx: u32, rec: &RecordBytes) -> Result<(), Error> {
        let off = layout::slot_offset(self.geo.rsp_off, idx, self.geo.nr_slots);
        match self.shm.write_record(off, rec) {
            Some(()) => Ok(()),
            None => Err(self.oob(op, off)),
        }
    }

    /// The consumer-owned indices as found at attach (Xen zeroes them).
    pub(crate) fn initial_consumer_indices(&self) -> Result<(u32, u32), Error> {
        let req_cons = self.load_acquire(Op::Attach, hdr::REQ_CONS)?;
        let rsp_prod = self.load_acquire(Op::Attach, hdr::RSP_PROD)?;
        Ok((req_cons, rsp_prod))
    }
}

/// The event channel's descriptor: readable while a notification from Xen
/// is pending.  Consume it with [`Ring::wait_event`]`(Some(Duration::ZERO))`
/// (or the typed consumers' `process`), which never blocks.
impl<B: Backend> AsFd for Ring<B> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.evtchn.as_fd()
    }
}

impl<B: Backend> AsRawFd for Ring<B> {
    fn as_raw_fd(&self) -> RawFd {
        self.evtchn.as_fd().as_raw_fd()
    }
}

impl<B: Backend> Drop for Ring<B> {
    fn drop(&mut self) {
        // Warnings are logged by `teardown`.
        let _ = self.teardown();
        // Then the fields drop in declaration order: `evtchn` (unbind),
        // then `shm` (unmap).
    }
}

/// What tearing a ring down did ([`Ring::close`], `SyncRing::close`,
/// `AsyncRing::close`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Teardown {
    /// This handle unregistered the ring (false: it had been taken over,
    /// unregistered by someone else, or its domain was gone).
    pub unregistered: bool,
    /// What failed (a final kick, the unregister), each also logged as a
    /// warning.
    pub warnings: Vec<Error>,
}

impl Teardown {
    /// Whether nothing failed.
    pub fn is_clean(&self) -> bool {
        self.warnings.is_empty()
    }
}

/// Checks the ring header against the registration; returns the geometry.
fn check_header(shm: &Shm, domid: u16, ty: EventType, nr_slots: u32) -> Result<Geometry, Error> {
    let broken = |reason| Error::RingBroken {
        op: Op::Attach,
        domid,
        ty,
        reason,
    };
    let bad = |field: &'static str, found: u64, expected: u64| {
        broken(BrokenReason::BadHeader {
            field,
            found,
            expected,
        })
    };
    let oob = broken(BrokenReason::Mapping {
        len: shm.len(),
        needed: FRAME_SIZE,
    });
    let r32 = |off| shm.load_acquire_u32(off).ok_or(oob.clone());

    let version = r32(hdr::VERSION)?;
    if version != INTERFACE_VERSION {
        return Err(Error::VersionMismatch {
            op: Op::Attach,
            domid,
            ty,
            found: version,
            expected: INTERFACE_VERSION,
        });
    }
    let found_ty = r32(hdr::TYPE)?;
    if found_ty != ty.raw() {
        return Err(bad("type", found_ty.into(), ty.raw().into()));
    }
    let slots = r32(hdr::NR_SLOTS)?;
    if slots != nr_slots {
        return Err(bad("nr_slots", slots.into(), nr_slots.into()));
    }
    let array = nr_slots as usize * RECORD_SIZE;
    let req_off = r32(hdr::REQ_OFFSET)? as usize;
    if req_off != FRAME_SIZE {
        return Err(bad("req_offset", req_off as u64, FRAME_SIZE as u64));
    }
    let rsp_off = r32(hdr::RSP_OFFSET)? as usize;
    let expected_rsp = if ty.is_sync() { FRAME_SIZE + array } else { 0 };
    if rsp_off != expected_rsp {
        return Err(bad("rsp_offset", rsp_off as u64, expected_rsp as u64));
    }
    let max_vcpus = r32(hdr::MAX_VCPUS)?;
    if ty.is_sync() && (max_vcpus == 0 || max_vcpus > nr_slots) {
        return Err(bad("max_vcpus", max_vcpus.into(), nr_slots.into()));
    }
    let found_dom = shm.load_u16(hdr::DOMID).ok_or(oob.clone())?;
    if found_dom != domid {
        return Err(bad("domid", found_dom.into(), domid.into()));
    }
    let end = if ty.is_sync() {
        rsp_off + array
    } else {
        req_off + array
    };
    if end > shm.len() {
        return Err(broken(BrokenReason::Mapping {
            len: shm.len(),
            needed: end,
        }));
    }
    Ok(Geometry {
        nr_slots,
        req_off,
        rsp_off,
        max_vcpus,
    })
}

/// The deadline `timeout` from now: `None` (no deadline, wait forever) for
/// no timeout, and for one too long to be represented (`Duration::MAX`).
pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// What is left of a wait until `deadline`: `None` once it has passed,
/// `Some(None)` for no deadline (wait forever), else the time left.
pub(crate) fn time_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(d) => d
            .checked_duration_since(Instant::now())
            .filter(|t| !t.is_zero())
            .map(Some),
    }
}
