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
//!   (spurious wake-ups are tolerated, but cost a re-check).  Its
//!   descriptor (`AsFd`, e.g. an eventfd the producer writes) is readable
//!   exactly while such a notification is pending, and `wait` with a zero
//!   timeout consumes it without blocking.
//! - Every registration gets an owner [`Token`], unique since the backend
//!   started, returned by `register`.  `unregister` and `resume` must be
//!   given the token of the ring registered now: any other one (a ring
//!   since taken over, or unregistered and registered again) is
//!   [`Error::Stale`] (`ESTALE`), and nothing is done.
//! - A ring that is torn down (unregistered, taken over, its domain dying)
//!   gets `XEN_MEM_EVENT_RING_F_DETACHED` in its header and its arrays
//!   zeroed, in the memory its old consumer still maps.
//! - Teardown calls `unregister` with the ring's token (`Stale`,
//!   `NotRegistered` or `NoSuchDomain` mean the ring is no longer ours: left
//!   alone), then drops the channel, then the mapping.

use std::fmt;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::time::Duration;

use crate::{Error, EventType, RingInfo};

/// The owner token of a registration: a generation unique since boot,
/// never 0, returned by `REGISTER` and required by `UNREGISTER` and
/// `RESUME`, so that a consumer whose ring was taken over cannot act on its
/// successor's ring.  It protects cooperating consumers from each other's
/// stale state; it is not a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(NonZeroU64);

impl Token {
    /// The token of raw value `raw` (`None` for 0, which no registration
    /// has).
    pub fn new(raw: u64) -> Option<Token> {
        NonZeroU64::new(raw).map(Token)
    }

    /// The raw value, as the domctl carries it.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Token {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Token, Self::Err> {
        let s = s.trim();
        let raw = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse::<u64>(),
        }
        .map_err(|_| "not a number")?;
        Token::new(raw).ok_or("0 is no registration's token")
    }
}

/// What `register` returns: where to map the ring, which port to bind, and
/// the owner token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Frames to map (header frame included).
    pub nr_frames: u32,
    /// Xen's end of the ring's event channel.
    pub port: u32,
    /// Slots per array.
    pub nr_slots: u32,
    /// The owner token of this registration.
    pub token: Token,
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

/// A mapping of a ring's frames, shared with a producer.
///
/// The consumer ([`Ring`](crate::Ring)) reads and writes the region through
/// the pointer returned by [`base`](RingMemory::base) with atomic loads and
/// stores, trusting the implementation for its validity: a wrong base or
/// length is undefined behaviour in safe code, hence an `unsafe` trait (as
/// vm-memory's raw regions are).
///
/// # Safety
///
/// An implementation must guarantee, from the moment the value is created
/// until it is dropped:
///
/// - `base()` always returns the same pointer, and `len()` the same length;
/// - the `len()` bytes from `base()` are one mapped, readable and writable
///   region (no hole, no guard page, not read-only), not freed, unmapped or
///   remapped before the value is dropped, whatever happens to the ring
///   (unregistered, taken over, the domain destroyed) or to clones of the
///   value;
/// - nothing in this process accesses those bytes through a Rust reference
///   to non-atomic data (`&[u8]`, `&mut [u8]`, ...): other parties may only
///   write them with atomic or volatile machine accesses (as Xen or a
///   producer thread using atomics does), so the consumer's concurrent
///   atomic accesses are not data races;
/// - the value can be sent to and shared between threads (`Send + Sync`)
///   without affecting any of the above.
///
/// The consumer checks alignment (a frame-aligned `base`, rejected
/// otherwise) and bounds against `len()` itself; it does not need a
/// non-null base to be safe, only the guarantees above.
///
/// Safe code cannot make up a region: a safe implementation does not
/// compile (with a safe trait, this one made `Ring::register` read and
/// write address 0x1000):
///
/// ```compile_fail,E0200
/// #![forbid(unsafe_code)]
///
/// #[derive(Debug)]
/// struct Bogus;
///
/// impl xen_mem_event::RingMemory for Bogus {
///     fn base(&self) -> *mut u8 {
///         0x1000 as *mut u8
///     }
///     fn len(&self) -> usize {
///         1 << 20
///     }
/// }
/// ```
// Declaring the trait unsafe moves the proof obligation to implementers;
// it adds no unsafe operation here.
#[allow(unsafe_code)]
pub unsafe trait RingMemory: Send + Sync + std::fmt::Debug {
    /// Start of the mapping (frame aligned).
    fn base(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Never empty; present for clippy's `len_without_is_empty`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bound event channel: notify the other end, wait for it.
///
/// Its descriptor ([`AsFd`]) is readable while a notification from the
/// other end is pending (not consumed by [`wait`](EventChannel::wait)), so
/// that a ring can join an event loop (poll, epoll, mio, tokio's `AsyncFd`).
pub trait EventChannel: AsFd + Send + Sync + std::fmt::Debug {
    /// Kick the other end.
    fn notify(&self) -> Result<(), Error>;
    /// Wait until the other end kicks us or `timeout` passes.  Returns
    /// whether a notification arrived.  Consumes (and unmasks) it.
    ///
    /// `Some(Duration::ZERO)` must never block: it consumes a pending
    /// notification, if any (what an event loop calls once the descriptor
    /// is readable).  Several threads may wait at once: one of them gets
    /// the notification, the others keep waiting (never blocking in a
    /// `read` of a notification someone else took).
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
    /// XEN_MEM_EVENT_RING_UNREGISTER of the ring registered as `token`
    /// ([`Error::Stale`] if the ring registered now has another token).
    fn unregister(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error>;
    /// XEN_MEM_EVENT_RING_GET_INFO.
    fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error>;
    /// XEN_MEM_EVENT_RING_RESUME of the ring registered as `token`
    /// ([`Error::Stale`] if the ring registered now has another token).
    fn resume(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error>;
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
            fn unregister(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
                (**self).unregister(domid, ty, token)
            }
            fn get_info(&self, domid: u16, ty: EventType) -> Result<RingInfo, Error> {
                (**self).get_info(domid, ty)
            }
            fn resume(&self, domid: u16, ty: EventType, token: Token) -> Result<(), Error> {
                (**self).resume(domid, ty, token)
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
