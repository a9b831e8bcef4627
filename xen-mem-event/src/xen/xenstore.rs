//! libxenstore: a connection to xenstored with watches, for
//! [`DomainWatch`](crate::domain::DomainWatch).
//!
//! Part of the `xen` module, one of the two places of the crate allowed to
//! use `unsafe` (the library calls).  Audit notes:
//!
//! - The handle is non-null (checked at open), owned, and closed once on
//!   drop; nothing borrowed from it (the watch descriptor) outlives it.
//! - Paths and tokens are `CStr`s, NUL-terminated and alive for the call
//!   (xenstore copies them into its request).
//! - The vector `xs_check_watch` returns is one `malloc` block holding the
//!   pointers and the strings: its two strings are copied out before it
//!   is freed, once, with `free`.
//! - `errno` is read immediately after the failing call.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use xen_mem_event_sys::libs;

/// The current thread's `errno` (EIO if there is none).
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A libxenstore handle with its watch descriptor.
#[derive(Debug)]
pub(crate) struct XenStore {
    h: NonNull<libs::xs_handle>,
    /// `xs_fileno`: readable when watch events wait; owned by the handle.
    fd: RawFd,
}

// SAFETY: a libxenstore handle may be used from any thread (the library
// locks its request and watch state); it is used through `&mut self` for
// the watch calls anyway.
unsafe impl Send for XenStore {}

impl XenStore {
    /// Connects to xenstored (socket or xenbus device) and creates the
    /// watch descriptor.
    pub(crate) fn open() -> Result<XenStore, i32> {
        // SAFETY: no flags; the result is checked.
        let raw = unsafe { libs::xs_open(0) };
        let h = NonNull::new(raw).ok_or_else(errno)?;
        // SAFETY: `h` is a live handle.  The descriptor belongs to the
        // handle and stays open until `xs_close`.
        let fd = unsafe { libs::xs_fileno(h.as_ptr()) };
        if fd < 0 {
            let e = errno();
            // SAFETY: `h` is live and closed only here on this path.
            unsafe { libs::xs_close(h.as_ptr()) };
            return Err(e);
        }
        Ok(XenStore { h, fd })
    }

    /// Watches `path` with `token` (xenstored fires it once at once).
    pub(crate) fn watch(&mut self, path: &CStr, token: &CStr) -> Result<(), i32> {
        // SAFETY: a live handle; both strings are NUL-terminated and
        // outlive the call.
        let ok = unsafe { libs::xs_watch(self.h.as_ptr(), path.as_ptr(), token.as_ptr()) };
        if ok {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// The next pending watch event as `(path, token)`, without blocking;
    /// `None` when none waits.
    pub(crate) fn check_watch(&mut self) -> Result<Option<(CString, CString)>, i32> {
        // SAFETY: a live handle; the result is checked before use.
        let raw = unsafe { libs::xs_check_watch(self.h.as_ptr()) };
        let Some(vec) = NonNull::new(raw) else {
            return match errno() {
                libc::EAGAIN => Ok(None),
                e => Err(e),
            };
        };
        // SAFETY: a non-NULL result starts with at least two pointers,
        // XS_WATCH_PATH and XS_WATCH_TOKEN (indices 0 and 1), inside the
        // block, which is alive until the `free` below.
        let ptrs = unsafe { std::slice::from_raw_parts(vec.as_ptr(), 2) };
        let (path_p, token_p) = (
            ptrs[libs::XS_WATCH_PATH as usize],
            ptrs[libs::XS_WATCH_TOKEN as usize],
        );
        // SAFETY: each is a valid C string inside the live block.
        let path = unsafe { CStr::from_ptr(path_p) }.to_owned();
        // SAFETY: as above.
        let token = unsafe { CStr::from_ptr(token_p) }.to_owned();
        // SAFETY: the block came from xs_check_watch (malloc), both strings
        // were copied, and it is freed once.
        unsafe { libc::free(vec.as_ptr().cast()) };
        Ok(Some((path, token)))
    }

    /// The watch descriptor, borrowed from the handle.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` stays open for as long as the handle, which the
        // returned borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Drop for XenStore {
    fn drop(&mut self) {
        // SAFETY: the handle is live and closed exactly once, here.
        unsafe { libs::xs_close(self.h.as_ptr()) };
    }
}
