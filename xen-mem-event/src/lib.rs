//! Safe consumers for Xen's per-event-type mem-event rings.
//!
//! A patched hypervisor gives every memory event type its own ring, with
//! its own frames (allocated by Xen, mapped with `XENMEM_acquire_resource`),
//! its own event channel and its own consumer.  This crate registers such a
//! ring for a domain, maps it, binds its event channel, and consumes it:
//!
//! - [`Ring`]: the registration handle (register, map, bind, check the ring
//!   header, first kick; on drop: unregister, unbind, unmap).
//! - [`SyncRing`]: the synchronous `SHARING_OOM` ring.  Requests come in,
//!   each pausing a vCPU; answer them by id in any order, batch the kicks.
//! - [`AsyncRing`]: the asynchronous, lossy `SHARING_INVALIDATE` ring.
//!   Records come in batches, with the number lost since the last batch;
//!   the consumer chooses how many records a kick is worth.
//!
//! The operations on Xen go through the [`Backend`] trait: [`XenBackend`]
//! is the real hypervisor (libxencall, libxenevtchn, libxenforeignmemory);
//! a test harness can stand in for it.  The `test-utils` feature adds the
//! `testing` module (a Rust model of Xen's ring core as a backend, and ring
//! memory on the heap) for tests; it is not part of the stable API.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use xen_mem_event::{AsyncRing, SyncRing, XenBackend};
//!
//! # fn main() -> Result<(), xen_mem_event::Error> {
//! let xen = XenBackend::open()?;
//! let domid = 1;
//!
//! // The pager: answer every OOM request once memory is freed.
//! let mut oom = SyncRing::register(&xen, domid, 1)?;
//! if oom.wait(Some(Duration::from_secs(1)))? {
//!     for req in oom.take_requests()? {
//!         // ... free memory for req.gfn ...
//!         oom.respond(&req)?;
//!     }
//!     oom.flush()?; // one kick for the whole batch
//! }
//!
//! // The sharing daemon: prune stale handles, in batches of 64.
//! let mut inval = AsyncRing::builder(&xen, domid).frames(4).batch(64).register()?;
//! let batch = inval.drain_timeout(Duration::from_millis(50))?;
//! if batch.lost() > 0 {
//!     // ... rescan: some invalidations were dropped ...
//! }
//! for rec in batch {
//!     let rec = rec?;
//!     println!("handle {:#x} gfn {:#x}: {:?}", rec.handle, rec.gfn, rec.reason);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Event loops
//!
//! Both ring kinds are [`AsFd`](std::os::fd::AsFd): the descriptor is
//! readable (level-triggered) while a notification from Xen is pending, so
//! one thread can serve many rings with poll, epoll, mio or tokio's
//! `AsyncFd`.  Once it is readable, call the non-blocking
//! [`SyncRing::process`] (kicks Xen for the answers published, then takes
//! the requests) or [`AsyncRing::process`] (takes the records; after the
//! batch, process again while [`AsyncRing::rearm`] returns `true`: records
//! that reached the threshold meanwhile sent no kick).  Answers may also
//! come from other threads through a [`Responder`].  Xen sends no
//! notification when it detaches a ring, so check [`Ring::is_detached`]
//! on a timer.  `examples/epoll.rs` serves both rings of a domain this way,
//! with SIGINT through a self-pipe:
//! `cargo run -p xen-mem-event --example epoll -- --domain ID`.
//!
//! # Safety
//!
//! `unsafe` is confined to two modules: `shm` (atomic, bounds-checked
//! access to the memory shared with Xen) and `xen::ffi` (the calls into
//! Xen's libraries), plus the declaration of the `unsafe trait`
//! [`RingMemory`] (whose contract every mapping must uphold) and its
//! implementation for the test-only heap memory.  Whatever the producer writes into the
//! shared memory,
//! the consumer reads values, not undefined behaviour; an impossible value
//! yields [`Error::RingBroken`].

#![deny(unsafe_code)]
#![deny(missing_docs)]

mod async_ring;
pub mod backend;
pub mod domain;
mod error;
pub mod layout;
mod ring;
mod shm;
mod spin;
mod sync;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
mod xen;

use std::fmt;

use xen_mem_event_sys::abi;

pub use async_ring::{AsyncBatch, AsyncRing, AsyncRingBuilder, InvalidateReason, InvalidateRecord};
pub use backend::{Backend, EventChannel, RegisterParams, Registration, RingMemory, Token};
pub use error::{BrokenReason, Error, Op};
pub use ring::{Ring, RingBuilder, Teardown};
pub use spin::Spin;
pub use sync::{OomReason, PendingRequest, Responder, SyncRequest, SyncRing, SyncRingBuilder};
pub use xen::memshr::{EachPage, Errno, MemShr, ShareSide, MAX_MAP, PAGE_SIZE};
pub use xen::XenBackend;

/// A mem-event type: which ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EventType {
    /// Synchronous: unsharing a page failed for lack of memory.
    SharingOom,
    /// Asynchronous, lossy: a sharing handle (or an entry of it) is gone.
    SharingInvalidate,
}

impl EventType {
    /// Every event type this crate knows.
    pub const ALL: [EventType; 2] = [EventType::SharingOom, EventType::SharingInvalidate];

    /// The ABI value (`XEN_MEM_EVENT_TYPE_*`).
    pub fn raw(self) -> u32 {
        match self {
            EventType::SharingOom => abi::XEN_MEM_EVENT_TYPE_SHARING_OOM,
            EventType::SharingInvalidate => abi::XEN_MEM_EVENT_TYPE_SHARING_INVALIDATE,
        }
    }

    /// The type of an ABI value.
    pub fn from_raw(raw: u32) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.raw() == raw)
    }

    /// Whether the ring is synchronous (requests answered by id).
    pub fn is_sync(self) -> bool {
        matches!(self, EventType::SharingOom)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::SharingOom => "SHARING_OOM",
            EventType::SharingInvalidate => "SHARING_INVALIDATE",
        })
    }
}

/// `XEN_MEM_EVENT_STATE_*` flags of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RingState(pub u16);

impl RingState {
    /// The consumer has kicked the event channel at least once.
    pub fn connected(self) -> bool {
        self.0 & abi::XEN_MEM_EVENT_STATE_CONNECTED != 0
    }
    /// Xen saw an impossible consumer index and stopped using the ring.
    pub fn broken(self) -> bool {
        self.0 & abi::XEN_MEM_EVENT_STATE_BROKEN != 0
    }
    /// The consumer closed its end of the event channel.
    pub fn consumer_gone(self) -> bool {
        self.0 & abi::XEN_MEM_EVENT_STATE_CONSUMER_GONE != 0
    }
}

/// What `XEN_MEM_EVENT_RING_GET_INFO` reports about a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingInfo {
    /// Frames to map (header frame included).
    pub nr_frames: u32,
    /// Async rings: the notification threshold given at registration.
    pub batch: u32,
    /// Xen's end of the event channel.
    pub port: u32,
    /// Slots per array.
    pub nr_slots: u32,
    /// The consumer domain.
    pub consumer: u16,
    /// `XEN_MEM_EVENT_STATE_*`.
    pub state: RingState,
    /// vCPUs paused by the ring now, with a request outstanding.
    pub paused_vcpus: u32,
    /// vCPUs paused by the ring without a request, waiting for room (the
    /// ring was full or broken when they faulted).
    pub parked_vcpus: u32,
    /// Requests/records posted.
    pub produced: u64,
    /// Records consumed (async) or requests answered (sync).
    pub consumed: u64,
    /// Records lost (async), or requests refused for want of a slot (sync).
    pub lost: u64,
    /// Responses Xen dropped as malformed, unknown or repeated.
    pub bad_responses: u64,
    /// Event channel notifications Xen sent.
    pub notifications: u64,
}

impl From<&abi::xen_domctl_mem_event_ring> for RingInfo {
    fn from(d: &abi::xen_domctl_mem_event_ring) -> RingInfo {
        RingInfo {
            nr_frames: d.nr_frames,
            batch: d.batch,
            port: d.port,
            nr_slots: d.nr_slots,
            consumer: d.consumer,
            state: RingState(d.state),
            paused_vcpus: d.paused_vcpus,
            parked_vcpus: d.parked_vcpus,
            produced: d.produced,
            consumed: d.consumed,
            lost: d.lost,
            bad_responses: d.bad_responses,
            notifications: d.notifications,
        }
    }
}
