//! Whether an awake consumer polls before it sleeps.
//!
//! Sleeping on the event channel costs a kick from Xen and a wake-up (on
//! the machines measured, about 14 µs on the harness's eventfd and more
//! through Xen's event channel driver).  A ring of one frame is filled in
//! a few microseconds, so a consumer that sleeps whenever it has caught up
//! spends most of a stream waking up.  Polling for a while first is the
//! classic spin-then-block answer; the [`Spin::Adaptive`] default polls
//! only while polling pays, so an idle or trickling ring costs no CPU.

use std::time::Duration;

/// How [`AsyncRing::wait`](crate::AsyncRing::wait) polls the producer index
/// before it arms `req_event` and sleeps.  Polling comes before arming, so
/// Xen never kicks a consumer that is polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spin {
    /// Sleep as soon as the ring is found short of what is waited for.
    Never,
    /// Poll up to this long on every wait, busy or not.
    Fixed(Duration),
    /// The default: after a batch that took records, poll up to this long
    /// for the next record.  A poll that finds nothing is not tried again
    /// for the next 1, 2, 4 ... 64 sleeps that end within this window
    /// (consecutive failures double the wait; one poll that pays resets
    /// it); sleeps longer than the window do not count.  An idle ring thus
    /// costs one poll, a trickle almost none, and a consumer sharing its
    /// CPU with whatever produces (where polling can never pay) one poll
    /// in 64 wake-ups.
    Adaptive(Duration),
}

impl Spin {
    /// The default window of [`Spin::Adaptive`]: a few wake-ups' worth.
    pub const DEFAULT_WINDOW: Duration = Duration::from_micros(50);
}

impl Default for Spin {
    fn default() -> Spin {
        Spin::Adaptive(Spin::DEFAULT_WINDOW)
    }
}

/// The most short sleeps an adaptive consumer skips polling for.
const MAX_PENALTY: u32 = 64;

/// The consumer's polling decisions (no clock, no ring: pure bookkeeping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spinner {
    policy: Spin,
    /// Adaptive: short sleeps to go before the next poll.
    skip: u32,
    /// Adaptive: the last `skip` set, doubled by every failed poll, 0
    /// after one that paid.
    penalty: u32,
}

impl Spinner {
    pub(crate) fn new(policy: Spin) -> Spinner {
        Spinner {
            policy,
            skip: 0,
            penalty: 0,
        }
    }

    pub(crate) fn policy(&self) -> Spin {
        self.policy
    }

    /// How long to poll before sleeping, for a consumer whose last batch
    /// took records (`busy`) or not.
    pub(crate) fn window(&self, busy: bool) -> Duration {
        match self.policy {
            Spin::Never => Duration::ZERO,
            Spin::Fixed(d) => d,
            Spin::Adaptive(d) if busy && self.skip == 0 => d,
            Spin::Adaptive(_) => Duration::ZERO,
        }
    }

    /// A poll found what it waited for.
    pub(crate) fn poll_paid(&mut self) {
        self.penalty = 0;
    }

    /// A poll of the whole window found nothing.
    pub(crate) fn poll_failed(&mut self) {
        self.penalty = (self.penalty * 2).clamp(1, MAX_PENALTY);
        self.skip = self.penalty;
    }

    /// A sleep ended with a kick `slept` after the consumer armed.
    pub(crate) fn woke_after(&mut self, slept: Duration) {
        if let Spin::Adaptive(d) = self.policy {
            if slept <= d {
                self.skip = self.skip.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Spin::DEFAULT_WINDOW;

    /// Short sleeps until the next poll.
    fn skipped(s: &mut Spinner) -> u32 {
        let mut n = 0;
        while s.window(true).is_zero() {
            // A long sleep does not count.
            s.woke_after(W * 2);
            s.woke_after(W / 2);
            n += 1;
        }
        n
    }

    #[test]
    fn adaptive_polls_only_while_busy_and_paying() {
        let mut s = Spinner::new(Spin::default());
        assert_eq!(s.policy(), Spin::Adaptive(W));
        // Not busy (the ring was empty at the last batch): sleep at once.
        assert_eq!(s.window(false), Duration::ZERO);
        assert_eq!(s.window(true), W);
        // Failed polls back off: 1, 2, 4 ... 64 short sleeps without one.
        let mut waits = Vec::new();
        for _ in 0..8 {
            s.poll_failed();
            waits.push(skipped(&mut s));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 64]);
        // One that pays resets it.
        s.poll_paid();
        s.poll_failed();
        assert_eq!(skipped(&mut s), 1);
    }

    #[test]
    fn fixed_and_never_do_not_adapt() {
        let mut s = Spinner::new(Spin::Fixed(W));
        s.poll_failed();
        assert_eq!(s.window(false), W);
        let mut s = Spinner::new(Spin::Never);
        s.woke_after(Duration::ZERO);
        assert_eq!(s.window(true), Duration::ZERO);
    }
}
