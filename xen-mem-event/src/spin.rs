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
    /// for the next record.  A poll that finds nothing stops polling until
    /// a sleep shows records coming again within this window (the kick
    /// came less than this long after the consumer went to sleep).  An
    /// idle ring thus costs one poll, a trickle none.
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

/// The consumer's polling decisions (no clock, no ring: pure bookkeeping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spinner {
    policy: Spin,
    /// Adaptive: the last poll paid, or a sleep since was short.
    paying: bool,
}

impl Spinner {
    pub(crate) fn new(policy: Spin) -> Spinner {
        Spinner {
            policy,
            paying: true,
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
            Spin::Adaptive(d) if busy && self.paying => d,
            Spin::Adaptive(_) => Duration::ZERO,
        }
    }

    /// A poll of the whole window found nothing.
    pub(crate) fn poll_failed(&mut self) {
        self.paying = false;
    }

    /// A sleep ended with a kick `slept` after the consumer armed.
    pub(crate) fn woke_after(&mut self, slept: Duration) {
        if let Spin::Adaptive(d) = self.policy {
            if slept <= d {
                self.paying = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Spin::DEFAULT_WINDOW;

    #[test]
    fn adaptive_polls_only_while_busy_and_paying() {
        let mut s = Spinner::new(Spin::default());
        assert_eq!(s.policy(), Spin::Adaptive(W));
        // Not busy (the ring was empty at the last batch): sleep at once.
        assert_eq!(s.window(false), Duration::ZERO);
        assert_eq!(s.window(true), W);
        // A poll that found nothing: no more polling...
        s.poll_failed();
        assert_eq!(s.window(true), Duration::ZERO);
        // ...a long sleep does not bring it back...
        s.woke_after(W * 2);
        assert_eq!(s.window(true), Duration::ZERO);
        // ...a short one does.
        s.woke_after(W / 2);
        assert_eq!(s.window(true), W);
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
