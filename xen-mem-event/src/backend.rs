//! The operations a ring consumer needs from Xen, behind a trait so that the
//! userspace harness (the hypervisor's own ring code compiled for tests) can
//! stand in for the real hypervisor.
//!
//! # Implementing `Backend` (for a test producer)
//!
//! - `register` initialises the ring page as Xen does
//!   (`mem_event_ring_init`) and returns `nr_frames` (1 + F for async,
//!   1 + 2F for sync rings), `nr_slots` (F * 128) and a port.  `EBUSY`,
//!   `ENOENT`, ... are reported as the matching [`Error`] variants
//!   ([`Error::from_errno`] does the mapping).
//! - `map` returns the ring's frames: one contiguous region, **frame (4096
//!   byte) aligned**, at least `nr_frames * 4096` bytes, which stays valid
//!   until the returned box is dropped.  The producer may keep writing it
//!   concurrently; the consumer accesses it only with aligned atomic loads
//!   and stores.  `testing::HeapMemory` is such a region on the heap (its
//!   clones share the memory, so the producer can keep one).
//! - `bind` returns the consumer's end of the ring's event channel.
//!   [`EventChannel::notify`] from the consumer is what Xen's notification
//!   handler reacts to: mark the ring connected, then process the posted
//!   responses (call `mem_event_ring_get_response` until it returns 0) and
//!   unpause the vCPUs they release.  [`EventChannel::wait`] returns `true`
//!   once the producer has notified since the last wait (every sync request,
//!   and each async record for which `mem_event_ring_put_async` returned
//!   `true`), `false` on timeout; it must not return early otherwise
//!   (spurious wake-ups are tolerated, but cost a re-check).
//! - Teardown calls `get_info` (the port must be the one registered, and
//!   `produced` must not go backwards, or the ring is considered taken over
//!   and left alone), then `unregister`, then drops the channel, then the
//!   mapping.

use std::time::Duration;

use crate::{Error, EventType, RingInfo};

/// What `register` returns: where to map the ring and which port to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Frames to map (header frame included).
    pub nr_frames: u32,
    /// Xen's end of the ring's event channel.
    pub port: u32,
    /// Slots per array.
    pub nr_slots: u32,
}

/// Parameters of `register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterParams {
    /// Data frames per array (power of two, 1..=64).
    pub frames: u32,
    /// Async rings: initial notification threshold (0 = 1).
    pub batch: u32,
    /// Take the ring over from a consumer that is still registered.
    pub takeover: bool,
}

/// A mapping of a ring's frames.  The memory stays valid until dropped.
pub trait RingMemory: Send + Sync + std::fmt::Debug {
    /// Start of the mapping (page aligned).
    fn base(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Never empty; present for clippy's `len_without_is_empty`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bound event channel: notify the other end, wait for it.
pub trait EventChannel: Send + Sync + std::fmt::Debug {
    /// Kick the other end.
    fn notify(&self) -> Result<(), Error>;
    /// Wait until the other end kicks us or `timeout` passes.  Returns
    /// whether a notification arrived.  Consumes (and unmasks) it.
    fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error>;
}

/// Xen, or a stand-in for it.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// XEN_MEM_EVENT_RING_REGISTER.
    fn register(
        &self,
        domid: u16,
        ty: EventType,
        params: RegisterParams,
    ) -> Result<Registration, Error>;
    /// XEN_MEM_EVENT_RING_UNREGISTER.
    fn unregister(&self, domid: u16, ty: EventType) -> Result<(), Error>;
    /// XEN_MEM_EVENT_RING_GET_INFO.
    fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error>;
    /// XEN_MEM_EVENT_RING_RESUME.
    fn resume(&self, domid: u16, ty: EventType) -> Result<(), Error>;
    /// Map the ring's frames (XENMEM_acquire_resource).
    fn map(&self, domid: u16, ty: EventType, nr_frames: u32) -> Result<Box<dyn RingMemory>, Error>;
    /// Bind Xen's `port` of the ring.
    fn bind(&self, domid: u16, ty: EventType, port: u32) -> Result<Box<dyn EventChannel>, Error>;
}

/// Implements [`Backend`] for a pointer type by forwarding every operation
/// to the pointee.
macro_rules! forward_backend {
    ($($(#[$doc:meta])* $ptr:ty;)*) => {$(
        $(#[$doc])*
        impl<T: Backend + ?Sized> Backend for $ptr {
            fn register(
                &self,
                domid: u16,
                ty: EventType,
                params: RegisterParams,
            ) -> Result<Registration, Error> {
                (**self).register(domid, ty, params)
            }
            fn unregister(&self, domid: u16, ty: EventType) -> Result<(), Error> {
                (**self).unregister(domid, ty)
            }
            fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error> {
                (**self).get_info(domid, ty)
            }
            fn resume(&self, domid: u16, ty: EventType) -> Result<(), Error> {
                (**self).resume(domid, ty)
            }
            fn map(
                &self,
                domid: u16,
                ty: EventType,
                nr_frames: u32,
            ) -> Result<Box<dyn RingMemory>, Error> {
                (**self).map(domid, ty, nr_frames)
            }
            fn bind(
                &self,
                domid: u16,
                ty: EventType,
                port: u32,
            ) -> Result<Box<dyn EventChannel>, Error> {
                (**self).bind(domid, ty, port)
            }
        }
    )*};
}

forward_backend! {
    /// Forwards to the referenced backend, so that a ring can borrow its
    /// backend (`Ring::register(&backend, ...)`).
    &T;
    /// Forwards to the shared backend, so that a ring can own its backend
    /// (`Ring::register(Arc::clone(&backend), ...)`), e.g. to move it to
    /// another thread.
    std::sync::Arc<T>;
    /// Forwards to the boxed backend (`Box<dyn Backend>`).
    Box<T>;
}
