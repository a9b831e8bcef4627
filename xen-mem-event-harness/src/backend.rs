//! [`HarnessBackend`]: the library's [`Backend`] served by the hypervisor's
//! own ring code ([`HvRing`]) instead of Xen.
//!
//! Registration, GET_INFO and teardown behave as `xen/common/mem_event.c`
//! does; the "event channel" is a pair of doorbells: the consumer's
//! `notify` runs the hypervisor's notification handler (response
//! processing) on the consumer's thread, as Xen does in the consumer's
//! hypercall, and the producer's kicks wake the consumer's `wait`.
//!
//! Each registration gets an owner token of its own (a counter, as Xen's
//! registration generation), checked by the ring core (`owns`) for
//! UNREGISTER and RESUME: another token is `ESTALE`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use xen_mem_event::backend::{
    Backend, EventChannel, RegisterParams, Registration, RingMemory, Token,
};
use xen_mem_event::{Error, EventType, Op, RingInfo, RingState};

use crate::{total_frames, Doorbell, HvRing, Owner};

/// One registered ring: the hypervisor side plus the emulated channel.
#[derive(Debug)]
pub struct HarnessRing {
    hv: HvRing,
    to_consumer: Doorbell,
    port: u32,
    token: Token,
    batch: u32,
    frames: u32,
    unpaused: Mutex<Vec<u32>>,
    consumer_kicks: AtomicU64,
}

impl HarnessRing {
    /// The hypervisor side.
    pub fn hv(&self) -> &HvRing {
        &self.hv
    }

    /// The owner token of this registration.
    pub fn token(&self) -> Token {
        self.token
    }

    /// A fault of the domain's own `vcpu` on `gfn` (kicks the consumer).
    /// `Ok(0)`: the vCPU had a request pending already.
    pub fn raise_oom(&self, vcpu: u32, gfn: u64) -> Result<u64, i32> {
        let id = self.hv.raise_oom(vcpu, gfn)?;
        if id != 0 {
            self.kick();
        }
        Ok(id)
    }

    /// A foreign access hit the failure (kicks the consumer).
    pub fn raise_foreign(&self, vcpu: u32, gfn: u64) -> Result<(), i32> {
        self.hv.raise_foreign(vcpu, gfn)?;
        self.kick();
        Ok(())
    }

    /// Post an invalidate record; kicks the consumer when Xen would.
    pub fn put_invalidate(
        &self,
        handle: u64,
        gfn: u64,
        domid: u16,
        reason: u16,
        flags: u32,
    ) -> bool {
        let notify = self.hv.put_invalidate(handle, gfn, domid, reason, flags);
        if notify {
            self.kick();
        }
        notify
    }

    /// Post invalidate records in bulk (`mem_event_ring_put_async_batch`:
    /// one publication, at most one kick); kicks the consumer when Xen
    /// would.
    pub fn put_invalidate_batch(&self, recs: &[crate::AsyncRec]) -> bool {
        let notify = self.hv.put_invalidate_batch(recs);
        if notify {
            self.kick();
        }
        notify
    }

    fn kick(&self) {
        // An eventfd write only fails if the counter would overflow.
        let _ = self.to_consumer.notify();
    }

    fn resume(&self) {
        let released = self.hv.resume();
        lock(&self.unpaused).extend(released);
    }

    /// vCPUs unpaused by responses so far, in order.
    pub fn unpaused(&self) -> Vec<u32> {
        lock(&self.unpaused).clone()
    }

    /// Notifications sent to the consumer.
    pub fn producer_kicks(&self) -> u64 {
        self.to_consumer.kicks()
    }

    /// Notifications the consumer sent.
    pub fn consumer_kicks(&self) -> u64 {
        self.consumer_kicks.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The domain every caller of the harness backend is (dom0): the consumer
/// of every ring it registers.
const CONSUMER: u16 = 0;

/// Domains and rings of a pretend hypervisor.
#[derive(Debug, Default)]
pub struct HarnessBackend {
    domains: Mutex<HashMap<u16, u32>>,
    rings: Mutex<HashMap<(u16, EventType), Arc<HarnessRing>>>,
    next_port: AtomicU32,
    /// The last owner token handed out.
    last_token: AtomicU64,
    released_by_teardown: AtomicU64,
    start: Mutex<Option<u32>>,
}

impl HarnessBackend {
    /// No domains yet.
    pub fn new() -> Arc<HarnessBackend> {
        Arc::new(HarnessBackend::default())
    }

    /// Create domain `domid` with `max_vcpus` vCPUs.
    pub fn add_domain(&self, domid: u16, max_vcpus: u32) {
        lock(&self.domains).insert(domid, max_vcpus);
    }

    /// Destroy domain `domid`: its rings are torn down.
    pub fn destroy_domain(&self, domid: u16) {
        lock(&self.domains).remove(&domid);
        let gone: Vec<Arc<HarnessRing>> = {
            let mut rings = lock(&self.rings);
            let keys: Vec<_> = rings.keys().filter(|k| k.0 == domid).copied().collect();
            keys.iter().filter_map(|k| rings.remove(k)).collect()
        };
        for r in gone {
            self.teardown(&r);
        }
    }

    /// Start every index of rings registered from now on at `start`
    /// (wraparound tests).
    pub fn start_indices_at(&self, start: u32) {
        *lock(&self.start) = Some(start);
    }

    /// The registered ring of (`domid`, `ty`), to play the producer.
    pub fn ring(&self, domid: u16, ty: EventType) -> Option<Arc<HarnessRing>> {
        lock(&self.rings).get(&(domid, ty)).cloned()
    }

    /// vCPUs released by teardowns (unregister, takeover, destruction).
    pub fn released_by_teardown(&self) -> u64 {
        self.released_by_teardown.load(Ordering::Relaxed)
    }

    fn teardown(&self, r: &HarnessRing) {
        let n = r.hv.teardown();
        self.released_by_teardown
            .fetch_add(u64::from(n), Ordering::Relaxed);
    }

    fn max_vcpus(&self, op: Op, domid: u16) -> Result<u32, Error> {
        lock(&self.domains)
            .get(&domid)
            .copied()
            .ok_or(Error::NoSuchDomain { op, domid })
    }

    fn get(&self, op: Op, domid: u16, ty: EventType) -> Result<Arc<HarnessRing>, Error> {
        self.max_vcpus(op, domid)?;
        self.ring(domid, ty)
            .ok_or(Error::NotRegistered { op, domid, ty })
    }
}

impl Backend for HarnessBackend {
    fn register(
        &self,
        domid: u16,
        ty: EventType,
        params: RegisterParams,
    ) -> Result<Registration, Error> {
        let op = Op::Register;
        let max_vcpus = self.max_vcpus(op, domid)?;
        if ty.is_sync() && params.batch != 0 {
            return Err(Error::from_errno(op, domid, ty, libc::EINVAL));
        }
        // As the domctl: a threshold beyond the ring is refused, and the
        // one in force (GET_INFO) is clamped to half the ring.
        let nr_slots = params.frames.saturating_mul(128);
        if params.batch > nr_slots {
            return Err(Error::from_errno(op, domid, ty, libc::EINVAL));
        }
        let batch = if ty.is_sync() {
            0
        } else {
            xen_mem_event::layout::clamp_batch(params.batch, nr_slots)
        };
        if !params.takeover && self.ring(domid, ty).is_some() {
            return Err(Error::Busy { op, domid, ty });
        }
        let raw_token = self.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        let token =
            Token::new(raw_token).ok_or(Error::from_errno(op, domid, ty, libc::EOVERFLOW))?;
        let owner = Owner {
            consumer: CONSUMER,
            token: raw_token,
        };
        let hv = HvRing::with_owner(
            ty.raw(),
            params.frames,
            max_vcpus,
            domid,
            params.batch,
            owner,
        )
        .map_err(|rc| Error::from_errno(op, domid, ty, -rc))?;
        if let Some(start) = *lock(&self.start) {
            hv.set_start(start);
        }
        let ring = Arc::new(HarnessRing {
            hv,
            to_consumer: Doorbell::new().map_err(|e| {
                Error::from_errno(op, domid, ty, e.raw_os_error().unwrap_or(libc::EIO))
            })?,
            port: self.next_port.fetch_add(1, Ordering::Relaxed) + 10,
            token,
            batch,
            frames: total_frames(ty.raw(), params.frames),
            unpaused: Mutex::new(Vec::new()),
            consumer_kicks: AtomicU64::new(0),
        });
        let reg = Registration {
            nr_frames: ring.frames,
            port: ring.port,
            nr_slots: ring.hv.stats_slots(),
            token,
        };
        let old = {
            let mut rings = lock(&self.rings);
            if !params.takeover && rings.contains_key(&(domid, ty)) {
                return Err(Error::Busy { op, domid, ty });
            }
            rings.insert((domid, ty), ring)
        };
        // The new ring is in place before the old one releases its vCPUs.
        if let Some(old) = old {
            self.teardown(&old);
        }
        Ok(reg)
    }

    fn unregister(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
        let op = Op::Unregister;
        self.max_vcpus(op, domid)?;
        let r = {
            let mut rings = lock(&self.rings);
            let r = rings
                .get(&(domid, ty))
                .ok_or(Error::NotRegistered { op, domid, ty })?;
            if !r.hv.owns(token.get()) {
                return Err(Error::from_errno(op, domid, ty, libc::ESTALE));
            }
            rings.remove(&(domid, ty))
        };
        if let Some(r) = r {
            self.teardown(&r);
        }
        Ok(())
    }

    fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error> {
        let r = self.get(Op::GetInfo, domid, ty)?;
        let s = r.hv.stats();
        let mut state = 0u16;
        if r.consumer_kicks() > 0 {
            state |= 1;
        }
        if s.broken != 0 {
            state |= 2;
        }
        Ok(RingInfo {
            nr_frames: r.frames,
            batch: r.batch,
            port: r.port,
            nr_slots: r.hv.stats_slots(),
            consumer: 0,
            state: RingState(state),
            paused_vcpus: s.paused,
            parked_vcpus: s.parked,
            produced: s.produced,
            consumed: s.consumed,
            lost: s.lost,
            bad_responses: s.bad_responses,
            notifications: s.notifications,
        })
    }

    fn resume(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
        let r = self.get(Op::Resume, domid, ty)?;
        if !r.hv.owns(token.get()) {
            return Err(Error::from_errno(Op::Resume, domid, ty, libc::ESTALE));
        }
        r.resume();
        if r.hv.stats().broken != 0 {
            return Err(Error::from_errno(Op::Resume, domid, ty, libc::EIO));
        }
        Ok(())
    }

    fn map(&self, domid: u16, ty: EventType, nr_frames: u32) -> Result<Box<dyn RingMemory>, Error> {
        let r = self.get(Op::Map, domid, ty)?;
        if !r.hv.may_map(CONSUMER) {
            return Err(Error::from_errno(Op::Map, domid, ty, libc::EPERM));
        }
        if nr_frames != r.frames {
            return Err(Error::from_errno(Op::Map, domid, ty, libc::EINVAL));
        }
        Ok(Box::new(Mapping(r)))
    }

    fn bind(&self, domid: u16, ty: EventType, port: u32) -> Result<Box<dyn EventChannel>, Error> {
        let r = self.get(Op::Bind, domid, ty)?;
        if port != r.port {
            return Err(Error::from_errno(Op::Bind, domid, ty, libc::EINVAL));
        }
        Ok(Box::new(Channel(r)))
    }
}

/// A "mapping": keeps the ring's memory alive, as a mapping keeps Xen's
/// frames alive after teardown.
#[derive(Debug)]
struct Mapping(Arc<HarnessRing>);

// SAFETY: `HvRing::base()`/`len()` are the ring's frames, allocated
// page aligned by hv.c for the ring's lifetime and freed only when the
// `HvRing` drops, which the `Arc` in this mapping prevents; they never
// change.  The C producer accesses them with plain aligned machine
// accesses (under its mutex), never through Rust references.
unsafe impl RingMemory for Mapping {
    fn base(&self) -> *mut u8 {
        self.0.hv.base()
    }
    fn len(&self) -> usize {
        self.0.hv.len()
    }
}

#[derive(Debug)]
struct Channel(Arc<HarnessRing>);

impl std::os::fd::AsFd for Channel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.to_consumer.as_fd()
    }
}

impl EventChannel for Channel {
    fn notify(&self) -> Result<(), Error> {
        self.0.consumer_kicks.fetch_add(1, Ordering::Relaxed);
        self.0.resume();
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.0.to_consumer.wait(timeout).map_err(|e| Error::Os {
            op: Op::Wait,
            domid: None,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })
    }
}
