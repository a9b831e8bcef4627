//! Test support: ring memory on the heap, and [`FakeXen`], a [`Backend`]
//! whose producer is a Rust model of the hypervisor's ring core
//! (`xen/common/mem_event_ring.c`).
//!
//! Not part of the stable API.  The harness crate drives the real C ring
//! code instead; it can use [`HeapMemory`] as the ring frames.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xen_mem_event_sys::abi;

use crate::backend::{Backend, EventChannel, RegisterParams, Registration, RingMemory, Token};
use crate::layout::{
    self, event_crossed, hdr, RawAsyncRec, RawSyncReq, RawSyncRsp, FRAME_SIZE, INTERFACE_VERSION,
    RECORD_SIZE, SLOTS_PER_FRAME,
};
use crate::shm::Shm;
use crate::xen::poll::{poll_readable, EventFd};
use crate::{Error, EventType, InvalidateReason, Op, RingInfo, RingState};

/// One frame, frame aligned, zero-initialised, only accessed atomically.
#[repr(C, align(4096))]
struct Frame([AtomicU64; FRAME_SIZE / 8]);

const _: () = assert!(std::mem::size_of::<Frame>() == FRAME_SIZE);

/// Contiguous, frame-aligned, zeroed ring frames on the heap.  Clones share
/// the memory (like two mappings of the same frames); it is freed when the
/// last clone goes.
#[derive(Clone)]
pub struct HeapMemory {
    frames: Arc<[Frame]>,
}

impl std::fmt::Debug for HeapMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapMemory")
            .field("base", &self.base())
            .field("frames", &self.frames.len())
            .finish()
    }
}

impl HeapMemory {
    /// `nr_frames` zeroed frames.
    pub fn new(nr_frames: usize) -> HeapMemory {
        let frames: Vec<Frame> = (0..nr_frames)
            .map(|_| Frame(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        HeapMemory {
            frames: Arc::from(frames),
        }
    }
}

// SAFETY: the frames are one heap allocation of `frames.len()` frames,
// frame aligned (`Frame` is `align(4096)`), kept alive by the `Arc` as long
// as this clone lives, never moved (an `Arc<[Frame]>` does not reallocate),
// and made of atomics only, so every access to them, by any clone on any
// thread, is atomic.
#[allow(unsafe_code)]
unsafe impl RingMemory for HeapMemory {
    fn base(&self) -> *mut u8 {
        // The frames are atomics (interior mutability): writing through
        // this pointer, atomically, is allowed.
        self.frames.as_ptr().cast::<u8>().cast_mut()
    }
    fn len(&self) -> usize {
        self.frames.len() * FRAME_SIZE
    }
}

/// The producer's private state of one ring (like `mem_event_ring_core`).
#[derive(Debug)]
struct FakeRing {
    shm: Shm,
    mem: HeapMemory,
    sync: bool,
    nr_slots: u32,
    req_off: usize,
    rsp_off: usize,
    max_vcpus: u32,
    port: u32,
    token: Token,
    batch: u32,
    req_prod: u32,
    req_cons: u32,
    rsp_cons: u32,
    next_id: u64,
    seq: u64,
    outstanding: Vec<u64>,
    broken: bool,
    connected: bool,
    consumer_gone: bool,
    kicks_to_consumer: u64,
    kicks_from_consumer: u64,
    /// The consumer's end of the event channel: readable while
    /// `kicks_to_consumer` is not zero (or once the ring is torn down).
    doorbell: Arc<EventFd>,
    info: RingInfo,
}

impl FakeRing {
    /// Notifies the consumer (the caller holds the state lock).
    fn kick_consumer(&mut self) {
        self.info.notifications += 1;
        self.kicks_to_consumer += 1;
        self.doorbell.signal();
    }

    fn paused(&self) -> u32 {
        u32::try_from(self.outstanding.iter().filter(|&&id| id != 0).count()).unwrap_or(u32::MAX)
    }

    fn mark_broken(&mut self) {
        self.broken = true;
        let _ = self
            .shm
            .store_u32(hdr::FLAGS, abi::XEN_MEM_EVENT_RING_F_BROKEN);
    }

    fn update_cons(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let cons = self.shm.load_acquire_u32(hdr::REQ_CONS).unwrap_or(0);
        let done = cons.wrapping_sub(self.req_cons);
        if done > self.req_prod.wrapping_sub(self.req_cons) {
            self.mark_broken();
            return false;
        }
        self.req_cons = cons;
        if !self.sync {
            self.info.consumed += u64::from(done);
        }
        true
    }

    /// Xen's teardown as the old consumer sees it: `F_DETACHED` set and
    /// the arrays scrubbed, in the memory it still maps.
    fn detach(&self) {
        let flags = self.shm.load_acquire_u32(hdr::FLAGS).unwrap_or(0);
        let _ = self
            .shm
            .store_u32(hdr::FLAGS, flags | abi::XEN_MEM_EVENT_RING_F_DETACHED);
        // Wake the old consumer so that it sees the flag.
        self.doorbell.signal();
        for slot in 0..self.nr_slots {
            let _ = self.shm.write_record(
                layout::slot_offset(self.req_off, slot, self.nr_slots),
                &[0; RECORD_SIZE],
            );
            if self.sync {
                let _ = self.shm.write_record(
                    layout::slot_offset(self.rsp_off, slot, self.nr_slots),
                    &[0; RECORD_SIZE],
                );
            }
        }
    }

    fn count_lost(&mut self) {
        self.info.lost += 1;
        let _ = self.shm.store_u64(hdr::LOST, self.info.lost);
    }

    fn push(&mut self, rec: &[u8; RECORD_SIZE]) {
        let off = layout::slot_offset(self.req_off, self.req_prod, self.nr_slots);
        let _ = self.shm.write_record(off, rec);
        self.req_prod = self.req_prod.wrapping_add(1);
        let _ = self.shm.store_release_u32(hdr::REQ_PROD, self.req_prod);
        self.info.produced += 1;
    }

    /// Processes posted responses (what a kick or RESUME does).
    fn get_responses(&mut self) {
        while self.sync && !self.broken {
            let prod = self.shm.load_acquire_u32(hdr::RSP_PROD).unwrap_or(0);
            let used = prod.wrapping_sub(self.rsp_cons);
            if used > self.nr_slots {
                self.mark_broken();
                return;
            }
            if used == 0 {
                return;
            }
            let off = layout::slot_offset(self.rsp_off, self.rsp_cons, self.nr_slots);
            let rsp =
                RawSyncRsp::decode(&self.shm.read_record(off).unwrap_or([0; RECORD_SIZE / 8]));
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
            let _ = self.shm.store_release_u32(hdr::RSP_CONS, self.rsp_cons);
            let vcpu = rsp.id & 0xffff;
            let ok = rsp.flags == 0
                && rsp.pad == [0, 0]
                && rsp.id >> 16 != 0
                && u64::from(rsp.vcpu_id) == vcpu
                && self.outstanding.get(vcpu as usize) == Some(&rsp.id);
            if ok {
                if let Some(slot) = self.outstanding.get_mut(vcpu as usize) {
                    *slot = 0;
                }
                self.info.consumed += 1;
            } else {
                self.info.bad_responses += 1;
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Domains and their vCPU counts.
    domains: BTreeMap<u16, u32>,
    rings: BTreeMap<(u16, EventType), FakeRing>,
    /// One-shot failures injected by `fail_next`.
    inject: Vec<(Op, i32)>,
    /// The last owner token handed out.
    last_token: u64,
    start_index: u32,
    /// Header words overwritten right after the next registration.
    corrupt_next: Vec<(usize, u32)>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

/// A [`Backend`] whose producer is a Rust model of Xen's ring core, over
/// [`HeapMemory`].  Cheap to clone (clones share the state).
///
/// Drive the producer with [`put_sync`](FakeXen::put_sync) and
/// [`put_async`](FakeXen::put_async); the consumer's event-channel kicks
/// make it process responses, as Xen's notification handler does.
#[derive(Debug, Clone, Default)]
pub struct FakeXen {
    shared: Arc<Shared>,
}

impl FakeXen {
    /// An empty fake hypervisor.
    pub fn new() -> FakeXen {
        FakeXen::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates domain `domid` with `max_vcpus` vCPUs.
    pub fn add_domain(&self, domid: u16, max_vcpus: u32) {
        self.lock().domains.insert(domid, max_vcpus);
    }

    /// Destroys domain `domid`: its rings are torn down (detached) first,
    /// as Xen does when the domain starts dying.
    pub fn destroy_domain(&self, domid: u16) {
        let mut st = self.lock();
        st.domains.remove(&domid);
        let keys: Vec<_> = st.rings.keys().filter(|k| k.0 == domid).copied().collect();
        for k in keys {
            if let Some(r) = st.rings.remove(&k) {
                r.detach();
            }
        }
        self.shared.cond.notify_all();
    }

    /// Makes the next `op` (`Op::Unregister`, `Op::Resume` or
    /// `Op::Notify`, on any ring) fail with `errno`.
    pub fn fail_next(&self, op: Op, errno: i32) {
        self.lock().inject.push((op, errno));
    }

    fn injected(&self, op: Op) -> Option<i32> {
        let mut st = self.lock();
        let i = st.inject.iter().position(|(o, _)| *o == op)?;
        Some(st.inject.remove(i).1)
    }

    /// The owner token of the ring registered now.
    pub fn token(&self, domid: u16, ty: EventType) -> Option<Token> {
        self.lock().rings.get(&(domid, ty)).map(|r| r.token)
    }

    /// Rings registered from now on start their indices at `idx` (to test
    /// wraparound), as if that many requests had gone through already.
    pub fn set_start_index(&self, idx: u32) {
        self.lock().start_index = idx;
    }

    /// Overwrites the header word at byte offset `off` (see
    /// [`layout::hdr`](crate::layout::hdr)) with `v` right after the next
    /// registration initialises the ring page, before the consumer maps it.
    pub fn corrupt_next_register(&self, off: usize, v: u32) {
        self.lock().corrupt_next.push((off, v));
    }

    /// Posts a synchronous request as Xen's `mem_event_ring_put_sync`:
    /// returns the id (0 for a foreign request) or the negative errno.
    pub fn put_sync(&self, domid: u16, vcpu_id: u32, foreign: bool, gfn: u64) -> Result<u64, i32> {
        let mut st = self.lock();
        let r = st
            .rings
            .get_mut(&(domid, EventType::SharingOom))
            .ok_or(-libc::ENOENT)?;
        if !foreign && vcpu_id >= r.max_vcpus {
            return Err(-libc::EINVAL);
        }
        if !r.update_cons() {
            return Err(-libc::EIO);
        }
        if !foreign
            && r.outstanding
                .get(vcpu_id as usize)
                .is_some_and(|&id| id != 0)
        {
            return Err(-libc::EEXIST);
        }
        let free = r.nr_slots - r.req_prod.wrapping_sub(r.req_cons);
        let reserved = r.max_vcpus - r.paused();
        if if foreign { free <= reserved } else { free == 0 } {
            r.count_lost();
            return Err(if foreign { -libc::EBUSY } else { -libc::ENOSPC });
        }
        let mut req = RawSyncReq {
            gfn,
            vcpu_id,
            domid,
            reason: abi::XEN_MEM_EVENT_OOM_UNSHARE,
            ..RawSyncReq::default()
        };
        if foreign {
            req.flags = abi::XEN_MEM_EVENT_REQ_FOREIGN;
        } else {
            req.id = (r.next_id << 16) | u64::from(vcpu_id);
            r.next_id += 1;
            req.flags = abi::XEN_MEM_EVENT_REQ_VCPU_PAUSED;
            if let Some(slot) = r.outstanding.get_mut(vcpu_id as usize) {
                *slot = req.id;
            }
        }
        r.push(&req.encode());
        r.kick_consumer();
        self.shared.cond.notify_all();
        Ok(req.id)
    }

    /// Posts an asynchronous record as Xen's `mem_event_ring_put_async`:
    /// returns whether it was posted (false: counted as lost).
    pub fn put_async(
        &self,
        domid: u16,
        handle: u64,
        gfn: u64,
        reason: InvalidateReason,
        handle_gone: bool,
    ) -> bool {
        let mut st = self.lock();
        let Some(r) = st.rings.get_mut(&(domid, EventType::SharingInvalidate)) else {
            return false;
        };
        let rec = RawAsyncRec {
            seq: r.seq,
            handle,
            gfn,
            domid,
            reason: reason.raw(),
            flags: if handle_gone {
                abi::XEN_MEM_EVENT_INVALIDATE_F_HANDLE_GONE
            } else {
                0
            },
        };
        r.seq += 1;
        if !r.update_cons() || r.req_prod.wrapping_sub(r.req_cons) == r.nr_slots {
            r.count_lost();
            return false;
        }
        let old = r.req_prod;
        r.push(&rec.encode());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let event = r.shm.load_acquire_u32(hdr::REQ_EVENT).unwrap_or(0);
        if event_crossed(old, r.req_prod, event) {
            r.kick_consumer();
            self.shared.cond.notify_all();
        }
        true
    }

    /// Writes `rec` into the next request slot and publishes it, without
    /// any validation (to feed the consumer garbage).
    pub fn push_raw(&self, domid: u16, ty: EventType, rec: [u8; RECORD_SIZE]) {
        if let Some(r) = self.lock().rings.get_mut(&(domid, ty)) {
            r.push(&rec);
            r.kicks_to_consumer += 1;
            r.doorbell.signal();
        }
        self.shared.cond.notify_all();
    }

    /// Overwrites the shared `req_prod` (to simulate a corrupt producer).
    pub fn corrupt_req_prod(&self, domid: u16, ty: EventType, req_prod: u32) {
        if let Some(r) = self.lock().rings.get_mut(&(domid, ty)) {
            let _ = r.shm.store_release_u32(hdr::REQ_PROD, req_prod);
        }
    }

    /// Writes `bytes` at byte offset `off` of the ring's frames, whatever
    /// is there (header, indices, arrays): a hostile producer.  Bytes
    /// beyond the mapping are dropped.
    pub fn scribble(&self, domid: u16, ty: EventType, off: usize, bytes: &[u8]) {
        let st = self.lock();
        let Some(r) = st.rings.get(&(domid, ty)) else {
            return;
        };
        for (at, b) in (off..).zip(bytes) {
            let word = at & !7;
            let Some(w) = r.shm.load_u64(word) else {
                break;
            };
            let mut w = w.to_ne_bytes();
            if let Some(byte) = w.get_mut(at - word) {
                *byte = *b;
            }
            let _ = r.shm.store_u64(word, u64::from_ne_bytes(w));
        }
    }

    /// Bytes of the ring's frames (what [`scribble`](FakeXen::scribble)
    /// can reach).
    pub fn ring_len(&self, domid: u16, ty: EventType) -> Option<usize> {
        self.lock().rings.get(&(domid, ty)).map(|r| r.mem.len())
    }

    /// Overwrites the shared `lost` counter.
    pub fn corrupt_lost(&self, domid: u16, ty: EventType, lost: u64) {
        if let Some(r) = self.lock().rings.get_mut(&(domid, ty)) {
            let _ = r.shm.store_u64(hdr::LOST, lost);
        }
    }

    /// Overwrites a header field of the ring page (`off`: byte offset).
    pub fn corrupt_header_u32(&self, domid: u16, ty: EventType, off: usize, v: u32) {
        if let Some(r) = self.lock().rings.get_mut(&(domid, ty)) {
            let _ = r.shm.store_u32(off, v);
        }
    }

    /// The vCPUs paused by the `SHARING_OOM` ring of `domid`.
    pub fn paused_vcpus(&self, domid: u16) -> Vec<u32> {
        let st = self.lock();
        st.rings
            .get(&(domid, EventType::SharingOom))
            .map(|r| {
                (0u32..)
                    .zip(&r.outstanding)
                    .filter(|(_, &id)| id != 0)
                    .map(|(v, _)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `GET_INFO`, or `None` if no such ring.
    pub fn info(&self, domid: u16, ty: EventType) -> Option<RingInfo> {
        self.get_info(domid, ty).ok()
    }

    /// Kicks the consumer received (event-channel notifications from the
    /// consumer), for counting notifications per batch.
    pub fn kicks_from_consumer(&self, domid: u16, ty: EventType) -> u64 {
        self.lock()
            .rings
            .get(&(domid, ty))
            .map_or(0, |r| r.kicks_from_consumer)
    }

    /// Whether the producer side considers the ring broken.
    pub fn is_broken(&self, domid: u16, ty: EventType) -> bool {
        self.lock()
            .rings
            .get(&(domid, ty))
            .is_some_and(|r| r.broken)
    }

    fn kick_from_consumer(&self, domid: u16, ty: EventType, token: Token) {
        let mut st = self.lock();
        if let Some(r) = st.rings.get_mut(&(domid, ty)) {
            if r.token == token {
                r.connected = true;
                r.kicks_from_consumer += 1;
                r.get_responses();
            }
        }
    }

    fn channel_closed(&self, domid: u16, ty: EventType, token: Token) {
        let mut st = self.lock();
        if let Some(r) = st.rings.get_mut(&(domid, ty)) {
            if r.token == token {
                r.consumer_gone = true;
            }
        }
    }

    /// Waits for a kick to the consumer of the ring registered as `token`
    /// (the channel of a ring torn down never fires again), on the
    /// channel's eventfd.
    fn wait_kick(
        &self,
        domid: u16,
        ty: EventType,
        token: Token,
        doorbell: &EventFd,
        timeout: Option<Duration>,
    ) -> Result<bool, Error> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            {
                let mut st = self.lock();
                match st.rings.get_mut(&(domid, ty)) {
                    Some(r) if r.token == token => {
                        if r.kicks_to_consumer > 0 {
                            // Counter and eventfd are reset together, under
                            // the lock the producer kicks under.
                            r.kicks_to_consumer = 0;
                            doorbell.drain();
                            return Ok(true);
                        }
                    }
                    _ => {
                        doorbell.drain();
                        return Ok(false);
                    }
                }
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    Some(d - now)
                }
                None => None,
            };
            let ready = poll_readable([doorbell.as_fd()], left).map_err(|e| Error::Os {
                op: Op::Wait,
                domid: Some(domid),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
            if ready == [false] {
                return Ok(false);
            }
        }
    }
}

fn fake_err(op: Op, domid: u16, ty: EventType, errno: i32) -> Error {
    Error::from_errno(op, domid, ty, errno)
}

impl Backend for FakeXen {
    fn register(
        &self,
        domid: u16,
        ty: EventType,
        params: RegisterParams,
    ) -> Result<Registration, Error> {
        let mut st = self.lock();
        let max_vcpus = *st.domains.get(&domid).ok_or(Error::NoSuchDomain {
            op: Op::Register,
            domid,
        })?;
        let sync = ty.is_sync();
        // As the domctl: fields unused by the operation must be zero.
        if sync && params.batch != 0 {
            return Err(fake_err(Op::Register, domid, ty, libc::EINVAL));
        }
        let nr_frames = layout::total_frames(params.frames, sync).ok_or(fake_err(
            Op::Register,
            domid,
            ty,
            libc::EINVAL,
        ))?;
        if let Some(old) = st.rings.get(&(domid, ty)) {
            if !params.takeover && !old.consumer_gone {
                return Err(fake_err(Op::Register, domid, ty, libc::EBUSY));
            }
        }
        let nr_slots = params.frames * SLOTS_PER_FRAME;
        // As the domctl: a threshold beyond the ring is refused.
        if params.batch > nr_slots {
            return Err(fake_err(Op::Register, domid, ty, libc::EINVAL));
        }
        if sync && (max_vcpus == 0 || max_vcpus > nr_slots) {
            return Err(fake_err(Op::Register, domid, ty, libc::ENOSPC));
        }
        let array = nr_slots as usize * RECORD_SIZE;
        let mem = HeapMemory::new(nr_frames as usize);
        let shm = Shm::new(Box::new(mem.clone()))
            .map_err(|_| fake_err(Op::Register, domid, ty, libc::ENOMEM))?;
        let start = st.start_index;
        // As Xen: at most half the ring (what GET_INFO reports too).
        let batch = if sync {
            1
        } else {
            layout::clamp_batch(params.batch, nr_slots)
        };
        let rsp_off = if sync { FRAME_SIZE + array } else { 0 };
        let init = [
            (hdr::VERSION, INTERFACE_VERSION),
            (hdr::TYPE, ty.raw()),
            (hdr::NR_SLOTS, nr_slots),
            (hdr::REQ_OFFSET, u32::try_from(FRAME_SIZE).unwrap_or(0)),
            (hdr::RSP_OFFSET, u32::try_from(rsp_off).unwrap_or(0)),
            (hdr::MAX_VCPUS, max_vcpus),
            (hdr::REQ_PROD, start),
            (hdr::REQ_CONS, start),
            (hdr::REQ_EVENT, start.wrapping_add(batch)),
            (hdr::RSP_PROD, start),
            (hdr::RSP_CONS, start),
        ];
        for (off, v) in init {
            let _ = shm.store_u32(off, v);
        }
        let _ = shm.store_u16(hdr::DOMID, domid);
        for (off, v) in std::mem::take(&mut st.corrupt_next) {
            let _ = shm.store_u32(off, v);
        }
        // Xen allocates the lowest free port of the domain: a port number
        // is reused once its ring is torn down.  (During a takeover the old
        // ring still holds its port.)
        let port = (1u32..)
            .find(|p| !st.rings.iter().any(|(k, r)| k.0 == domid && r.port == *p))
            .unwrap_or(u32::MAX);
        st.last_token += 1;
        let token =
            Token::new(st.last_token).ok_or(fake_err(Op::Register, domid, ty, libc::EOVERFLOW))?;
        let ring = FakeRing {
            shm,
            mem,
            sync,
            nr_slots,
            req_off: FRAME_SIZE,
            rsp_off,
            max_vcpus,
            port,
            token,
            batch,
            req_prod: start,
            req_cons: start,
            rsp_cons: start,
            next_id: 1,
            seq: 0,
            outstanding: vec![0; if sync { max_vcpus as usize } else { 0 }],
            broken: false,
            connected: false,
            consumer_gone: false,
            kicks_to_consumer: 0,
            kicks_from_consumer: 0,
            doorbell: Arc::new(
                EventFd::new().map_err(|_| fake_err(Op::Register, domid, ty, libc::EMFILE))?,
            ),
            info: RingInfo::default(),
        };
        // A takeover tears the old ring down (its vCPUs are released).
        if let Some(old) = st.rings.insert((domid, ty), ring) {
            old.detach();
        }
        self.shared.cond.notify_all();
        Ok(Registration {
            nr_frames,
            port,
            nr_slots,
            token,
        })
    }

    fn unregister(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
        if let Some(errno) = self.injected(Op::Unregister) {
            return Err(fake_err(Op::Unregister, domid, ty, errno));
        }
        let mut st = self.lock();
        if !st.domains.contains_key(&domid) {
            return Err(Error::NoSuchDomain {
                op: Op::Unregister,
                domid,
            });
        }
        match st.rings.get(&(domid, ty)) {
            None => return Err(fake_err(Op::Unregister, domid, ty, libc::ENOENT)),
            Some(r) if r.token != token => {
                return Err(fake_err(Op::Unregister, domid, ty, libc::ESTALE))
            }
            Some(_) => {}
        }
        if let Some(r) = st.rings.remove(&(domid, ty)) {
            r.detach();
        }
        self.shared.cond.notify_all();
        Ok(())
    }

    fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error> {
        let st = self.lock();
        let r = st
            .rings
            .get(&(domid, ty))
            .ok_or(fake_err(Op::GetInfo, domid, ty, libc::ENOENT))?;
        let mut state = 0;
        if r.connected {
            state |= abi::XEN_MEM_EVENT_STATE_CONNECTED;
        }
        if r.broken {
            state |= abi::XEN_MEM_EVENT_STATE_BROKEN;
        }
        if r.consumer_gone {
            state |= abi::XEN_MEM_EVENT_STATE_CONSUMER_GONE;
        }
        Ok(RingInfo {
            nr_frames: layout::total_frames(r.nr_slots / SLOTS_PER_FRAME, r.sync).unwrap_or(0),
            batch: r.batch,
            port: r.port,
            nr_slots: r.nr_slots,
            consumer: 0,
            state: RingState(state),
            paused_vcpus: r.paused(),
            ..r.info
        })
    }

    fn resume(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
        if let Some(errno) = self.injected(Op::Resume) {
            return Err(fake_err(Op::Resume, domid, ty, errno));
        }
        let mut st = self.lock();
        let r =
            st.rings
                .get_mut(&(domid, ty))
                .ok_or(fake_err(Op::Resume, domid, ty, libc::ENOENT))?;
        if r.token != token {
            return Err(fake_err(Op::Resume, domid, ty, libc::ESTALE));
        }
        r.get_responses();
        Ok(())
    }

    fn map(&self, domid: u16, ty: EventType, nr_frames: u32) -> Result<Box<dyn RingMemory>, Error> {
        let st = self.lock();
        let r = st
            .rings
            .get(&(domid, ty))
            .ok_or(fake_err(Op::Map, domid, ty, libc::ENOENT))?;
        if nr_frames as usize * FRAME_SIZE > r.mem.len() {
            return Err(fake_err(Op::Map, domid, ty, libc::EINVAL));
        }
        Ok(Box::new(r.mem.clone()))
    }

    fn bind(&self, domid: u16, ty: EventType, port: u32) -> Result<Box<dyn EventChannel>, Error> {
        let st = self.lock();
        match st.rings.get(&(domid, ty)) {
            Some(r) if r.port == port => Ok(Box::new(FakeChannel {
                xen: self.clone(),
                domid,
                ty,
                token: r.token,
                doorbell: Arc::clone(&r.doorbell),
            })),
            _ => Err(fake_err(Op::Bind, domid, ty, libc::EINVAL)),
        }
    }
}

/// The consumer's end of a [`FakeXen`] ring's event channel: bound to one
/// registration (Xen closes its end when the ring is torn down, so the
/// channel never reaches a later ring that reuses the port number).
#[derive(Debug)]
struct FakeChannel {
    xen: FakeXen,
    domid: u16,
    ty: EventType,
    token: Token,
    /// Shared with the producer's side of the ring.
    doorbell: Arc<EventFd>,
}

impl std::os::fd::AsFd for FakeChannel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.doorbell.as_fd()
    }
}

impl EventChannel for FakeChannel {
    fn notify(&self) -> Result<(), Error> {
        if let Some(errno) = self.xen.injected(Op::Notify) {
            return Err(Error::Os {
                op: Op::Notify,
                domid: Some(self.domid),
                errno,
            });
        }
        self.xen.kick_from_consumer(self.domid, self.ty, self.token);
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.xen
            .wait_kick(self.domid, self.ty, self.token, &self.doorbell, timeout)
    }
}

impl Drop for FakeChannel {
    fn drop(&mut self) {
        self.xen.channel_closed(self.domid, self.ty, self.token);
    }
}
