//! Declarations of c/hv.c.

use std::os::raw::{c_int, c_uint, c_void};

/// Opaque `struct hv_ring`.
#[repr(C)]
pub struct HvRingC {
    _private: [u8; 0],
}

/// `struct hv_stats`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HvStats {
    pub produced: u64,
    pub consumed: u64,
    pub lost: u64,
    pub bad_responses: u64,
    pub notifications: u64,
    pub paused: u32,
    pub broken: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub parked: u32,
    pub detached: u32,
}

/// `struct xen_mem_event_async_rec` (the input of a batched post; `seq` is
/// assigned by the ring).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AsyncRec {
    pub seq: u64,
    pub handle: u64,
    pub gfn: u64,
    pub domid: u16,
    pub reason: u16,
    pub flags: u32,
}

extern "C" {
    pub fn hv_sanitized() -> c_int;
    pub fn hv_total_frames(ty: c_uint, nr_frames: c_uint) -> c_uint;
    pub fn hv_ring_new(
        ty: c_uint,
        nr_frames: c_uint,
        max_vcpus: c_uint,
        domid: u16,
        batch: u32,
        consumer: u16,
        token: u64,
        err: *mut c_int,
    ) -> *mut HvRingC;
    pub fn hv_ring_free(r: *mut HvRingC);
    pub fn hv_ring_base(r: *mut HvRingC) -> *mut c_void;
    pub fn hv_ring_len(r: *mut HvRingC) -> usize;
    pub fn hv_ring_raise_oom(
        r: *mut HvRingC,
        vcpu: c_uint,
        foreign: c_int,
        gfn: u64,
        domid: u16,
        id: *mut u64,
    ) -> c_int;
    pub fn hv_ring_put_async(
        r: *mut HvRingC,
        handle: u64,
        gfn: u64,
        domid: u16,
        reason: u16,
        flags: u32,
    ) -> c_int;
    pub fn hv_ring_put_async_batch(r: *mut HvRingC, recs: *const AsyncRec, nr: c_uint) -> c_int;
    pub fn hv_ring_resume(r: *mut HvRingC, unpaused: *mut c_uint, max: c_uint) -> c_int;
    pub fn hv_ring_teardown(r: *mut HvRingC) -> c_uint;
    pub fn hv_vcpu_pause_count(r: *mut HvRingC, vcpu: c_uint) -> c_uint;
    pub fn hv_ring_stats(r: *mut HvRingC, s: *mut HvStats);
    pub fn hv_ring_set_start(r: *mut HvRingC, start: u32);
    pub fn hv_ring_may_map(r: *mut HvRingC, caller: u16) -> c_int;
    pub fn hv_ring_owns(r: *mut HvRingC, token: u64) -> c_int;
}
