//! Calls into the real libraries. On a machine that is not a Xen dom0 (no
//! /dev/xen/privcmd, /dev/xen/evtchn, ...) every open must fail cleanly:
//! NULL with `errno` set, no crash. On a dom0 the opens succeed and the
//! handles are closed again; both outcomes pass.

use core::ptr;
use std::io;

use xen_mem_event_sys::libs::*;

extern "C" {
    /// glibc's `stderr` stream.
    static stderr: *mut FILE;
}

/// What an open returned: `Ok(handle)` or `Err(errno)`.
fn outcome<T>(handle: *mut T) -> Result<*mut T, io::Error> {
    if handle.is_null() {
        Err(io::Error::last_os_error())
    } else {
        Ok(handle)
    }
}

/// A NULL handle must come with an errno.
fn assert_clean_failure(what: &str, error: &io::Error) {
    let errno = error.raw_os_error().unwrap_or(0);
    assert_ne!(errno, 0, "{what} returned NULL without errno");
    eprintln!("{what}: NULL, errno {errno} ({error}) - not a dom0");
}

#[test]
fn xc_interface_open_fails_cleanly_or_opens() {
    // SAFETY: NULL loggers are documented as "use the default (stderr)".
    let xch = unsafe { xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
    match outcome(xch) {
        Err(e) => assert_clean_failure("xc_interface_open", &e),
        Ok(xch) => {
            // SAFETY: xch was returned by xc_interface_open and is closed once.
            assert_eq!(unsafe { xc_interface_close(xch) }, 0);
        }
    }
}

#[test]
fn xc_interface_open_dummy_works_everywhere() {
    // XC_OPENFLAG_DUMMY does not touch Xen: it must succeed even here.
    // SAFETY: NULL loggers are allowed.
    let xch = unsafe { xc_interface_open(ptr::null_mut(), ptr::null_mut(), XC_OPENFLAG_DUMMY) };
    assert!(!xch.is_null(), "{}", io::Error::last_os_error());
    // SAFETY: xch was returned by xc_interface_open and is closed once.
    assert_eq!(unsafe { xc_interface_close(xch) }, 0);
}

#[test]
fn xenevtchn_open_fails_cleanly_or_opens() {
    // SAFETY: a NULL logger is allowed.
    let xce = unsafe { xenevtchn_open(ptr::null_mut(), 0) };
    match outcome(xce) {
        Err(e) => assert_clean_failure("xenevtchn_open", &e),
        Ok(xce) => {
            // SAFETY: xce is open.
            assert!(unsafe { xenevtchn_fd(xce) } >= 0);
            // SAFETY: xce was returned by xenevtchn_open and is closed once.
            assert_eq!(unsafe { xenevtchn_close(xce) }, 0);
        }
    }
}

#[test]
fn xencall_open_fails_cleanly_or_opens() {
    // SAFETY: a NULL logger is allowed.
    let xcall = unsafe { xencall_open(ptr::null_mut(), 0) };
    match outcome(xcall) {
        Err(e) => assert_clean_failure("xencall_open", &e),
        Ok(xcall) => {
            // SAFETY: xcall is open; the buffer is freed with the same handle.
            let buf = unsafe { xencall_alloc_buffer(xcall, 4096) };
            assert!(!buf.is_null());
            // SAFETY: buf came from xencall_alloc_buffer on this handle.
            unsafe { xencall_free_buffer(xcall, buf) };
            // SAFETY: xcall was returned by xencall_open and is closed once.
            assert_eq!(unsafe { xencall_close(xcall) }, 0);
        }
    }
}

#[test]
fn xenforeignmemory_open_fails_cleanly_or_opens() {
    // SAFETY: a NULL logger is allowed.
    let fmem = unsafe { xenforeignmemory_open(ptr::null_mut(), 0) };
    match outcome(fmem) {
        Err(e) => assert_clean_failure("xenforeignmemory_open", &e),
        Ok(fmem) => {
            // SAFETY: fmem was returned by xenforeignmemory_open, closed once.
            assert_eq!(unsafe { xenforeignmemory_close(fmem) }, 0);
        }
    }
}

#[test]
fn stdio_logger_round_trip() {
    // SAFETY: reading glibc's `stderr` pointer, initialised before main.
    let stream = unsafe { stderr };
    // SAFETY: stream is a valid FILE*; the logger does not close it.
    let logger = unsafe { xtl_createlogger_stdiostream(stream, XTL_CRITICAL, 0) };
    assert!(!logger.is_null());
    // SAFETY: logger is live.
    unsafe { xtl_stdiostream_set_minlevel(logger, XTL_ERROR) };
    // A stdiostream logger *is* a xentoollog_logger (its first member).
    let logger = logger.cast::<xentoollog_logger>();
    // SAFETY: logger is live; DUMMY does not touch Xen.
    let xch = unsafe { xc_interface_open(logger, logger, XC_OPENFLAG_DUMMY) };
    assert!(!xch.is_null());
    // SAFETY: xch is open and closed once.
    assert_eq!(unsafe { xc_interface_close(xch) }, 0);
    // SAFETY: logger is destroyed once, after its last user is closed.
    unsafe { xtl_logger_destroy(logger) };
    // SAFETY: "0 is ok".
    unsafe { xtl_logger_destroy(ptr::null_mut()) };
}

#[test]
fn xs_open_fails_cleanly_or_opens() {
    // SAFETY: no flags; the handle is closed once below.
    let xsh = unsafe { xs_open(0) };
    match outcome(xsh) {
        Err(e) => assert_clean_failure("xs_open", &e),
        Ok(xsh) => {
            // SAFETY: a live handle, closed once.
            unsafe { xs_close(xsh) };
        }
    }
}
