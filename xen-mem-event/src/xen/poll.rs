//! File descriptors for event loops: an eventfd (a wake-up any thread can
//! ring) and `poll(2)` over several descriptors.
//!
//! Part of the `xen` module, one of the two places of the crate allowed to
//! use `unsafe` (the system calls).  Audit notes:
//!
//! - Every descriptor is owned (`OwnedFd`) or borrowed (`BorrowedFd`) for
//!   the duration of the call: none is used after it is closed.
//! - Buffers handed to `read`/`write`/`poll` are live locals of the exact
//!   length given.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A non-blocking eventfd: [`signal`](EventFd::signal) makes it readable
/// until [`drain`](EventFd::drain).
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: a plain system call; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable (never blocks: the counter saturating
    /// at its maximum leaves it readable anyway).
    pub(crate) fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Consumes the signals; returns whether there were any.
    pub(crate) fn drain(&self) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte buffer from our
        // (non-blocking) eventfd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n == 8
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no
/// timeout; a timeout too long to represent waits for ever).  Returns one
/// flag per descriptor (all false on timeout).  Interrupted system calls
/// are restarted with the time left.
pub(crate) fn poll_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let nfds =
        libc::nfds_t::try_from(N).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that a sub-millisecond wait still sleeps.
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
            }
        };
        // SAFETY: `pfds` is an array of `N` valid pollfds for the duration
        // of the call, each naming a descriptor borrowed for it.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), nfds, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // POLLERR/POLLHUP count as readable: the next read reports them.
        return Ok(pfds.map(|p| p.revents != 0));
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor borrowed for the call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with integer flags on a descriptor borrowed for the
    // call.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_signal_poll_drain() -> io::Result<()> {
        let a = EventFd::new()?;
        let b = EventFd::new()?;
        assert_eq!(
            poll_readable([a.as_fd(), b.as_fd()], Some(Duration::ZERO))?,
            [false, false]
        );
        b.signal();
        b.signal();
        assert_eq!(
            poll_readable([a.as_fd(), b.as_fd()], Some(Duration::from_secs(5)))?,
            [false, true]
        );
        assert!(b.drain());
        assert!(!b.drain(), "one drain takes every signal");
        assert_eq!(poll_readable([b.as_fd()], Some(Duration::ZERO))?, [false]);
        Ok(())
    }
}
