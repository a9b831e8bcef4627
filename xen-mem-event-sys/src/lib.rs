//! Raw FFI bindings for xen-mem-event: per-event-type memory event rings.
//!
//! This crate is the bottom layer of the project (see `DESIGN.md`): bindgen
//! output, no policy, no safe wrappers. The safe API lives in the
//! `xen-mem-event` crate.
//!
//! # What is bound
//!
//! Two modules, generated at build time by `build.rs`:
//!
//! - [`abi`]: the **patched** Xen public headers (`xen.h`, `domctl.h`,
//!   `memory.h`, `mem_event.h`, `event_channel.h`) of the tree named by
//!   `XEN_MEM_EVENT_XEN_TREE` (default: `<workspace>/build/xen`, made by
//!   `make xen-src`; a relative path is taken from the workspace root),
//!   compiled with `__XEN_TOOLS__`. Allowlisted:
//!   - `struct xen_domctl` with the patched union (member `mem_event_ring`),
//!     and, transitively, the types of every union member;
//!   - [`abi::xen_domctl_mem_event_ring`] and the ring layout:
//!     [`abi::xen_mem_event_ring_page`], [`abi::xen_mem_event_sync_req`],
//!     [`abi::xen_mem_event_sync_rsp`], [`abi::xen_mem_event_async_rec`];
//!   - the constants `XEN_MEM_EVENT_*`, `XEN_DOMCTL_mem_event_ring`,
//!     `XEN_DOMCTL_INTERFACE_VERSION`, `XENMEM_resource_*` and
//!     `__HYPERVISOR_domctl`;
//!   - `domid_t` and `evtchn_port_t`.
//! - [`libs`]: the toolstack libraries, through the **system** headers of
//!   `libxen-dev` 4.17 (`/usr/include`), linked with the flags pkg-config
//!   gives for `xencontrol`, `xenevtchn`, `xenforeignmemory`, `xencall`,
//!   `xentoollog` and `xenstore`. Only what a ring consumer needs:
//!   - libxenctrl: `xc_interface_open`/`close`, `xc_domain_getinfo`,
//!     `xc_domain_getinfolist` (`xc_dominfo_t`, `xc_domaininfo_t`),
//!     `xc_domain_setmaxmem`, `xc_domain_pause`/`unpause`, `XC_OPENFLAG_*`;
//!     memory sharing for the sharing daemon: `xc_memshr_control`,
//!     `xc_memshr_nominate_gfn`, `xc_memshr_share_gfns`,
//!     `xc_sharing_freed_pages`, `xc_sharing_used_frames`,
//!     `xc_domain_maximum_gpfn`;
//!   - libxenevtchn: `xenevtchn_open`/`close`/`fd`/`bind_interdomain`/
//!     `unbind`/`notify`/`pending`/`unmask`;
//!   - libxenforeignmemory: `xenforeignmemory_open`/`close`/`map`/`unmap`/
//!     `map_resource`/`unmap_resource`;
//!   - libxencall: `xencall_open`/`close`, `xencall_alloc_buffer`/
//!     `free_buffer`, `xencall0` .. `xencall5` (the hypercall number is an
//!     `unsigned int`, every argument a `uint64_t`; the return value is an
//!     `int`: the hypercall's result, or -1 with `errno` set);
//!   - libxenstore: `xs_open`/`close`, `xs_watch`/`unwatch`, `xs_fileno`
//!     and `xs_check_watch` (the watch events of `@introduceDomain` and
//!     `@releaseDomain`: the returned vector is one `malloc` block, freed
//!     with `free`), and `enum xs_watch_type` (`XS_WATCH_PATH`,
//!     `XS_WATCH_TOKEN`: indices into that vector);
//!   - libxentoollog: `xtl_createlogger_stdiostream`,
//!     `xtl_stdiostream_set_minlevel`, `xtl_logger_destroy`, the
//!     `xentoollog_level` values `XTL_*`, and `struct xentoollog_logger`
//!     itself (a vtable: custom loggers are possible). Every `logger`
//!     parameter also accepts NULL (the library then logs to stderr).
//!
//! The library handles (`xc_interface`, `xenevtchn_handle`,
//! `xenforeignmemory_handle`, `xenforeignmemory_resource_handle`,
//! `xencall_handle`, `xentoollog_logger_stdiostream`) and stdio's `FILE`
//! are opaque, zero-sized `#[repr(C)]` structs: use them by pointer only.
//!
//! # One C type, one Rust type
//!
//! Where the two header sets overlap (`domid_t`, `evtchn_port_t`,
//! `xen_domain_handle_t`, `struct xen_arch_domainconfig`,
//! `struct xen_domctl_getdomaininfo` behind `xc_domaininfo_t`, ...), `libs`
//! does not define its own copy: `build.rs` blocklists in `libs` every item
//! that `abi` defines, and `libs` uses `abi`'s. So
//! `libs::xc_domaininfo_t` *is* [`abi::xen_domctl_getdomaininfo`]. This is
//! sound because the patch adds to the public headers without changing any
//! existing structure (the tests check `struct xen_domctl` against the
//! system header), and Debian's headers are the pristine 4.17.5 ones.
//!
//! # Why the domctl goes through libxencall
//!
//! The distribution's libxenctrl is unpatched: it has no
//! `xc_mem_event_ring_*` wrapper (that is the series' last patch, for C
//! toolstacks), and its own domctl path (`do_domctl`) is private. So a
//! consumer issues `XEN_DOMCTL_mem_event_ring` itself, with the patched
//! [`abi::xen_domctl`]:
//!
//! 1. `buf = xencall_alloc_buffer(xcall, size_of::<xen_domctl>())` (memory
//!    the hypervisor may access without faulting);
//! 2. fill it: `cmd = XEN_DOMCTL_mem_event_ring`,
//!    `interface_version = XEN_DOMCTL_INTERFACE_VERSION` (unchanged by the
//!    patch), `domain`, `u.mem_event_ring` (all other bytes zero);
//! 3. `xencall1(xcall, __HYPERVISOR_domctl, buf as u64)`: 0, or -1 with
//!    `errno` (`EBUSY`, `ENOENT`, `ENOSPC`, `EINVAL`, ...);
//! 4. read the OUT fields back from `buf`, then `xencall_free_buffer`.
//!
//! Then map `u.mem_event_ring.nr_frames` frames with
//! `xenforeignmemory_map_resource(fmem, domid, XENMEM_resource_mem_event,
//! type, 0, nr_frames, &mut addr, PROT_READ | PROT_WRITE, 0)` and bind
//! `port` with `xenevtchn_bind_interdomain(xce, domid, port)`.
//!
//! # Constants
//!
//! Each constant has the Rust type of the field or parameter it is meant
//! for, so no cast is needed: `u16` for `XEN_MEM_EVENT_STATE_*` and for the
//! `reason` values (`XEN_MEM_EVENT_OOM_*`, `XEN_MEM_EVENT_INVALIDATE_*`
//! except the `_F_` flags), `usize` for the byte sizes
//! `XEN_MEM_EVENT_RECORD_SIZE` and `XEN_MEM_EVENT_FRAME_SIZE`, `u32` for
//! everything else in `abi` (commands, ops, types, flags, versions, frame
//! and slot counts, `__HYPERVISOR_domctl`, and `XENMEM_resource_*`, which
//! go into the `unsigned int type` of `xenforeignmemory_map_resource`).
//!
//! A C field named `type` is `type_` in Rust.
//!
//! # Layout
//!
//! bindgen's layout assertions (size, alignment and every field offset, as
//! clang computed them from the headers) are compiled into both modules as
//! `const` items: a mismatch fails the build, not a test. The integration
//! tests add the documented layout of the ring ABI, independently, and
//! call into the libraries (they pass on a machine without Xen: every open
//! then fails with NULL and `errno`; on a dom0 the handles open and close).
//!
//! # Build
//!
//! Needs libclang (bindgen), pkg-config and `libxen-dev` 4.17
//! (`xencontrol` 4.17.x; the stable libraries have their own 1.x versions).
//! A missing patched tree fails the build with one line that says what to
//! run. Dependent build scripts get `DEP_XENCTRL_XEN_TREE` (the tree used)
//! and `DEP_XENCTRL_INCLUDE` (a directory in which `<xen/...>` are the
//! patched public headers).

#![no_std]

/// The patched Xen public ABI: `struct xen_domctl` with
/// `XEN_DOMCTL_mem_event_ring`, the mem-event ring layout and constants.
///
/// Generated by bindgen from the patched tree's `xen/include/public`.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    rustdoc::all
)]
pub mod abi {
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

/// The header fields only: which member of `u` is valid depends on `cmd`.
impl core::fmt::Debug for abi::xen_domctl {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("xen_domctl")
            .field("cmd", &self.cmd)
            .field("interface_version", &self.interface_version)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Xen's toolstack libraries (libxenctrl, libxenevtchn,
/// libxenforeignmemory, libxencall, libxentoollog, libxenstore), as installed.
///
/// Generated by bindgen from the system headers; types shared with [`abi`]
/// are [`abi`]'s.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    rustdoc::all
)]
pub mod libs {
    include!(concat!(env!("OUT_DIR"), "/libs.rs"));
}
