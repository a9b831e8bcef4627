//! The asynchronous ring consumer (`SHARING_INVALIDATE`).

use std::time::{Duration, Instant};

use xen_mem_event_sys::abi;

use crate::backend::Backend;
use crate::layout::{self, hdr, RawAsyncRec};
use crate::spin::{Spin, Spinner};
use crate::{BrokenReason, Error, EventType, Op, Ring, RingBuilder};

/// Why `<domid, gfn>` stopped being an entry of a sharing handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidateReason {
    /// The page was merged into another page by a share.
    Merged,
    /// The gfn was unshared (written to, unshared explicitly, or freed:
    /// a freed gfn is unshared first).  Nothing is reported for the gfns
    /// of a dying domain: its rings are torn down instead.
    Unshared,
}

impl InvalidateReason {
    /// The ABI value (`XEN_MEM_EVENT_INVALIDATE_*`).
    pub fn raw(self) -> u16 {
        match self {
            InvalidateReason::Merged => abi::XEN_MEM_EVENT_INVALIDATE_MERGED,
            InvalidateReason::Unshared => abi::XEN_MEM_EVENT_INVALIDATE_UNSHARED,
        }
    }

    /// The reason of an ABI value.
    #[inline]
    pub fn from_raw(raw: u16) -> Option<InvalidateReason> {
        match raw {
            abi::XEN_MEM_EVENT_INVALIDATE_MERGED => Some(InvalidateReason::Merged),
            abi::XEN_MEM_EVENT_INVALIDATE_UNSHARED => Some(InvalidateReason::Unshared),
            _ => None,
        }
    }
}

/// A validated `SHARING_INVALIDATE` record, copied out of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct InvalidateRecord {
    /// The ring index it was read from.
    pub index: u32,
    /// Records Xen attempted before this one (posted and lost).
    pub seq: u64,
    /// The sharing handle.
    pub handle: u64,
    /// The gfn.
    pub gfn: u64,
    /// The domain of the gfn.
    pub domid: u16,
    /// Why.
    pub reason: InvalidateReason,
    /// The handle itself is gone: drop every entry of it.
    pub handle_gone: bool,
    /// Records lost between the previous record and this one (`seq` gap).
    pub lost_before: u64,
}

/// The consumer of an asynchronous (`SHARING_INVALIDATE`) ring.
///
/// Consumption is batched in the io-uring style: [`batch`](AsyncRing::batch)
/// snapshots `req_prod` (Acquire) and returns an [`AsyncBatch`] that copies
/// each record out as it is iterated; dropping the batch publishes
/// `req_cons` (Release) once for every record iterated.  Each batch carries
/// the number of records Xen lost since the previous batch.
///
/// Notifications are coalesced: [`set_batch`](AsyncRing::set_batch)`(n)`
/// asks Xen to kick only once `n` records are waiting (at most half the
/// ring: the consumer drains one half while Xen fills the other);
/// [`wait`](AsyncRing::wait) waits for that, and
/// [`drain_timeout`](AsyncRing::drain_timeout) takes whatever arrived when
/// a trickle stops short of `n`.
///
/// A consumer that is awake does not ask for kicks at all: once a batch
/// took records, `wait` returns as soon as any record is waiting, and
/// `req_event` is left (or parked) out of Xen's reach, so a steady stream
/// costs no notification, no fence and no store to `req_event`.  Only when
/// it finds the ring empty does `wait` poll a while (see [`Spin`]), then
/// arm `req_event = req_cons + n`, fence, re-check `req_prod`, and sleep.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use xen_mem_event::{testing::FakeXen, AsyncRing, InvalidateReason};
///
/// let xen = FakeXen::new();
/// xen.add_domain(1, 1);
/// let mut ring = AsyncRing::builder(&xen, 1).frames(1).batch(4).register()?;
///
/// for h in 0..3 {
///     xen.put_async(1, h, 0x100 + h, InvalidateReason::Unshared, false);
/// }
/// // Three records: below the threshold of 4, so no kick came...
/// assert!(!ring.wait(Some(Duration::ZERO))?);
/// // ...but the tail is taken after the timeout.
/// let batch = ring.drain_timeout(Duration::from_millis(1))?;
/// assert_eq!(batch.len(), 3);
/// assert_eq!(batch.lost(), 0);
/// let handles: Vec<u64> = batch.map(|r| r.map(|r| r.handle)).collect::<Result<_, _>>()?;
/// assert_eq!(handles, [0, 1, 2]);
/// # Ok::<(), xen_mem_event::Error>(())
/// ```
#[derive(Debug)]
pub struct AsyncRing<B: Backend> {
    ring: Ring<B>,
    req_cons: u32,
    batch: u32,
    /// The `seq` the next record should carry if nothing is lost.
    next_seq: u64,
    /// Records missing by `seq`, since registration.
    seq_gaps: u64,
    /// The shared `lost` counter at the last batch.
    lost_seen: u64,
    /// Whether and how long `wait` polls before sleeping.
    spin: Spinner,
    /// The `req_event` this consumer last stored.
    event: u32,
    /// The last batch took records: `wait` returns as soon as any record
    /// is waiting, without arming.
    busy: bool,
}

/// How far ahead of `req_cons` a busy consumer parks `req_event`: out of
/// Xen's reach (`req_prod` is never more than `nr_slots` ahead of
/// `req_cons`) for the next 2^31 - `nr_slots` records.
const PARKED: u32 = 1 << 31;

/// Builder for an [`AsyncRing`].
#[derive(Debug)]
#[must_use = "call .register()"]
pub struct AsyncRingBuilder<B: Backend> {
    inner: RingBuilder<B>,
}

impl<B: Backend> AsyncRingBuilder<B> {
    /// Data frames (a power of two in `1..=64`, 128 records each).
    pub fn frames(self, frames: u32) -> Self {
        AsyncRingBuilder {
            inner: self.inner.frames(frames),
        }
    }

    /// Records per notification (0 = 1; clamped to half the ring, as Xen
    /// clamps it: [`AsyncRing::batch_size`] says what is in force).
    pub fn batch(self, batch: u32) -> Self {
        AsyncRingBuilder {
            inner: self.inner.batch(batch),
        }
    }

    /// Replace a consumer that is still registered.
    pub fn takeover(self, takeover: bool) -> Self {
        AsyncRingBuilder {
            inner: self.inner.takeover(takeover),
        }
    }

    /// Registers and attaches.
    pub fn register(self) -> Result<AsyncRing<B>, Error> {
        AsyncRing::new(self.inner.register()?)
    }
}

impl<B: Backend> AsyncRing<B> {
    /// Registers the `SHARING_INVALIDATE` ring of `domid`, `frames` data
    /// frames, a notification per record (see [`AsyncRing::builder`]).
    pub fn register(backend: B, domid: u16, frames: u32) -> Result<AsyncRing<B>, Error> {
        AsyncRing::builder(backend, domid).frames(frames).register()
    }

    /// A builder for the `SHARING_INVALIDATE` ring of `domid`.
    pub fn builder(backend: B, domid: u16) -> AsyncRingBuilder<B> {
        AsyncRingBuilder {
            inner: Ring::builder(backend, domid, EventType::SharingInvalidate),
        }
    }

    /// Wraps a registered asynchronous ring.  The notification threshold
    /// is the registration's `batch`.
    pub fn new(ring: Ring<B>) -> Result<AsyncRing<B>, Error> {
        if ring.event_type().is_sync() {
            return Err(Error::WrongRingType {
                op: Op::Attach,
                ty: ring.event_type(),
            });
        }
        let (req_cons, _) = ring.initial_consumer_indices()?;
        let batch = layout::clamp_batch(ring.params().batch, ring.nr_slots());
        let event = ring.load_acquire(Op::Attach, hdr::REQ_EVENT)?;
        Ok(AsyncRing {
            ring,
            req_cons,
            batch,
            next_seq: 0,
            seq_gaps: 0,
            lost_seen: 0,
            spin: Spinner::new(Spin::default()),
            event,
            busy: false,
        })
    }

    /// Lets [`wait`](AsyncRing::wait) poll the producer index for up to
    /// `spin` on every wait before sleeping on the event channel
    /// ([`Spin::Fixed`]; zero: [`Spin::Never`]).  See
    /// [`set_spin_policy`](AsyncRing::set_spin_policy) for the default.
    pub fn set_spin(&mut self, spin: Duration) {
        let policy = if spin.is_zero() {
            Spin::Never
        } else {
            Spin::Fixed(spin)
        };
        self.set_spin_policy(policy);
    }

    /// How [`wait`](AsyncRing::wait) polls before it sleeps.  The default,
    /// [`Spin::Adaptive`] with [`Spin::DEFAULT_WINDOW`], polls after a
    /// batch that took records and backs off when a poll finds nothing,
    /// so a stream is not slowed by a wake-up per batch and an idle ring
    /// costs almost no CPU.  The poll comes before `req_event` is armed, so Xen
    /// does not kick a consumer that is polling.
    pub fn set_spin_policy(&mut self, policy: Spin) {
        self.spin = Spinner::new(policy);
    }

    /// The polling policy in force.
    pub fn spin_policy(&self) -> Spin {
        self.spin.policy()
    }

    /// The registration handle.
    pub fn ring(&self) -> &Ring<B> {
        &self.ring
    }

    /// The notification threshold in force (at most half the ring).
    pub fn batch_size(&self) -> u32 {
        self.batch
    }

    /// Records lost since registration, as of the last batch.
    pub fn lost_total(&self) -> u64 {
        self.lost_seen
    }

    /// Tears the ring down (see [`Ring::close`]); reports what failed.
    pub fn close(self) -> crate::Teardown {
        self.ring.close()
    }

    /// Records waiting in the ring.
    #[inline]
    pub fn available(&mut self) -> Result<u32, Error> {
        let prod = self.ring.req_prod(Op::Consume, self.req_cons)?;
        Ok(layout::ring_distance(prod, self.req_cons))
    }

    /// Sets the notification threshold to `n` records (clamped to
    /// `1..=nr_slots / 2`, as Xen clamps it; [`batch_size`] says what is in
    /// force): `req_event = req_cons + n`.  Then re-checks `req_prod`:
    /// returns `true` if `n` records are already waiting, in which case no
    /// kick will come for them.
    ///
    /// [`batch_size`]: AsyncRing::batch_size
    pub fn set_batch(&mut self, n: u32) -> Result<bool, Error> {
        self.batch = layout::clamp_batch(n, self.ring.nr_slots());
        self.arm()
    }

    /// Publishes `req_event` for the current threshold, fences, and
    /// re-checks: the step before sleeping.
    fn arm(&mut self) -> Result<bool, Error> {
        let event = self.req_cons.wrapping_add(self.batch);
        self.ring.check(Op::Wait)?;
        self.ring.store_event(Op::Wait, event)?;
        self.event = event;
        self.busy = false;
        Ok(self.available()? >= self.batch)
    }

    /// After `req_cons` moved while awake: if Xen could still reach the
    /// armed `req_event` (it is ahead of `req_cons` by at most the ring
    /// size), move it out of reach, so that a consumer that is not going
    /// to sleep is not kicked.  No fence: a kick that is sent anyway is
    /// only a wasted one.  One store per wake-up at most (none when the
    /// wake-up was a kick: the event is then behind).
    #[inline]
    fn park(&mut self) -> Result<(), Error> {
        let ahead = self.event.wrapping_sub(self.req_cons);
        if ahead == 0 || ahead > self.ring.nr_slots() {
            return Ok(());
        }
        let event = self.req_cons.wrapping_add(PARKED);
        self.ring
            .store_release(Op::Consume, hdr::REQ_EVENT, event)?;
        self.event = event;
        Ok(())
    }

    /// Polls for `want` records until `until`, without arming.
    fn spin_for(&mut self, want: u32, until: Instant) -> Result<bool, Error> {
        while Instant::now() < until {
            for _ in 0..64 {
                if self.available()? >= want {
                    return Ok(true);
                }
                std::hint::spin_loop();
            }
        }
        Ok(false)
    }

    /// Waits until the threshold is reached (at most `timeout`; `None`
    /// waits forever).  Returns whether it is.
    ///
    /// While the consumer is awake (its last batch took records), any
    /// waiting record counts: it returns `true` at once, without touching
    /// `req_event`.  Once the ring is found empty, it polls (see
    /// [`set_spin_policy`](AsyncRing::set_spin_policy)), then arms
    /// `req_event = req_cons + threshold`, fences, re-checks, and sleeps on
    /// the event channel until Xen kicks.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let deadline = crate::ring::deadline_after(timeout);
        let want = if self.busy { 1 } else { self.batch };
        if self.available()? >= want {
            return Ok(true);
        }
        if self.poll(want, deadline)? {
            return Ok(true);
        }
        loop {
            if self.arm()? {
                return Ok(true);
            }
            let Some(left) = crate::ring::time_left(deadline) else {
                return Ok(false);
            };
            let slept = Instant::now();
            if !self.ring.wait_event(left)? {
                return Ok(self.available()? >= self.batch);
            }
            self.spin.woke_after(slept.elapsed());
        }
    }

    /// `wait`'s poll before sleeping: whether `want` records came.
    fn poll(&mut self, want: u32, deadline: Option<Instant>) -> Result<bool, Error> {
        let window = self.spin.window(self.busy);
        if window.is_zero() {
            return Ok(false);
        }
        // A window too long for an Instant is not a poll for ever: cap it.
        let end = crate::ring::deadline_after(Some(window))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let cut = deadline.is_some_and(|d| d < end);
        let until = deadline.map_or(end, |d| d.min(end));
        if self.spin_for(want, until)? {
            self.spin.poll_paid();
            return Ok(true);
        }
        if !cut {
            self.spin.poll_failed();
        }
        Ok(false)
    }

    /// For event loops, once the descriptor ([`AsFd`](std::os::fd::AsFd))
    /// is readable: consumes the pending notification (without blocking),
    /// then takes the records waiting now, as [`batch`](AsyncRing::batch).
    /// Dropping the batch re-arms the notification; then call
    /// [`rearm`](AsyncRing::rearm): records that reached the threshold
    /// while the batch was handled sent no kick (Xen saw the old event
    /// index), so `process` again while it returns `true`.
    pub fn process(&mut self) -> Result<AsyncBatch<'_, B>, Error> {
        self.ring.wait_event(Some(Duration::ZERO))?;
        let mut batch = self.batch()?;
        batch.arm_on_drop = true;
        Ok(batch)
    }

    /// Publishes `req_event` (`req_cons` + the threshold) and re-checks:
    /// `true` if the threshold is already reached, in which case no kick
    /// will come for those records (take them now).
    pub fn rearm(&mut self) -> Result<bool, Error> {
        self.arm()
    }

    /// For the tail of a trickle: waits up to `timeout` for the threshold
    /// (while the consumer is awake, for any record: see
    /// [`wait`](AsyncRing::wait)), then takes whatever is there (possibly
    /// nothing).
    pub fn drain_timeout(&mut self, timeout: Duration) -> Result<AsyncBatch<'_, B>, Error> {
        self.wait(Some(timeout))?;
        self.batch()
    }

    /// Takes the records waiting now: snapshots `req_prod` and the `lost`
    /// counter.  Records are copied out and validated one by one as the
    /// batch is iterated; dropping the batch releases their slots (and,
    /// the consumer being awake, leaves `req_event` out of Xen's reach:
    /// [`wait`](AsyncRing::wait) arms it before sleeping).
    #[inline]
    pub fn batch(&mut self) -> Result<AsyncBatch<'_, B>, Error> {
        let end = self.ring.req_prod(Op::Consume, self.req_cons)?;
        // Read after req_prod (Acquire): every loss before a record we can
        // see is counted in this value.
        let lost = self.ring.load_u64(Op::Consume, hdr::LOST)?;
        if lost < self.lost_seen || lost < self.seq_gaps {
            return Err(self.ring.broken(
                Op::Consume,
                BrokenReason::LossAccounting {
                    seq_gaps: self.seq_gaps,
                    lost,
                },
            ));
        }
        let lost_delta = lost - self.lost_seen;
        self.lost_seen = lost;
        let start = self.req_cons;
        Ok(AsyncBatch {
            ring: self,
            start,
            end,
            lost: lost_delta,
            lost_snapshot: lost,
            seq_gaps: 0,
            done: false,
            arm_on_drop: false,
        })
    }
}

/// The event channel's descriptor: readable while a notification from Xen
/// is pending; then call [`AsyncRing::process`].
impl<B: Backend> std::os::fd::AsFd for AsyncRing<B> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.ring)
    }
}

impl<B: Backend> std::os::fd::AsRawFd for AsyncRing<B> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ring)
    }
}

/// A batch of records: an iterator of `Result<InvalidateRecord, Error>`.
///
/// Iteration stops at the first malformed record (yielding
/// [`Error::RingBroken`]).  On drop, `req_cons` is published (Release) for
/// the records iterated; records not iterated stay in the ring for the next
/// batch.  A batch from [`AsyncRing::process`] also re-arms `req_event` to
/// `req_cons + batch` (an event loop goes back to sleep next); one from
/// [`AsyncRing::batch`] leaves it out of Xen's reach (the consumer is
/// awake; [`AsyncRing::wait`] arms it before it sleeps).
#[derive(Debug)]
#[must_use = "iterate the batch to consume its records"]
pub struct AsyncBatch<'a, B: Backend> {
    ring: &'a mut AsyncRing<B>,
    start: u32,
    end: u32,
    lost: u64,
    lost_snapshot: u64,
    seq_gaps: u64,
    done: bool,
    /// Re-arm `req_event` on drop (batches of `process`).
    arm_on_drop: bool,
}

impl<B: Backend> AsyncBatch<'_, B> {
    /// Records lost (ring full) since the previous batch, from the shared
    /// `lost` counter.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Records missing between the records iterated so far (`seq` gaps,
    /// including the gap before the first one).
    pub fn seq_gaps(&self) -> u64 {
        self.seq_gaps
    }

    /// Records in the batch (iterated or not).
    pub fn len(&self) -> usize {
        layout::ring_distance(self.end, self.start) as usize
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Records not iterated yet.
    pub fn remaining(&self) -> usize {
        layout::ring_distance(self.end, self.ring.req_cons) as usize
    }

    #[inline]
    fn next_record(&mut self) -> Result<InvalidateRecord, Error> {
        let r = &mut *self.ring;
        let idx = r.req_cons;
        let raw = RawAsyncRec::decode(&r.ring.read_req(Op::Consume, idx)?);
        let bad = |what| BrokenReason::BadRecord { index: idx, what };
        let reason = match InvalidateReason::from_raw(raw.reason) {
            Some(reason) => reason,
            None => return Err(r.ring.broken(Op::Consume, bad("unknown reason"))),
        };
        if raw.flags & !abi::XEN_MEM_EVENT_INVALIDATE_F_HANDLE_GONE != 0 {
            return Err(r.ring.broken(Op::Consume, bad("unknown flags")));
        }
        if raw.seq < r.next_seq {
            return Err(r.ring.broken(Op::Consume, bad("seq went backwards")));
        }
        let gap = raw.seq - r.next_seq;
        let total = r.seq_gaps.saturating_add(gap);
        if total > self.lost_snapshot {
            return Err(r.ring.broken(
                Op::Consume,
                BrokenReason::LossAccounting {
                    seq_gaps: total,
                    lost: self.lost_snapshot,
                },
            ));
        }
        r.seq_gaps = total;
        r.next_seq = raw.seq.saturating_add(1);
        r.req_cons = idx.wrapping_add(1);
        self.seq_gaps += gap;
        Ok(InvalidateRecord {
            index: idx,
            seq: raw.seq,
            handle: raw.handle,
            gfn: raw.gfn,
            domid: raw.domid,
            reason,
            handle_gone: raw.flags & abi::XEN_MEM_EVENT_INVALIDATE_F_HANDLE_GONE != 0,
            lost_before: gap,
        })
    }
}

impl<B: Backend> Iterator for AsyncBatch<'_, B> {
    type Item = Result<InvalidateRecord, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.ring.req_cons == self.end {
            return None;
        }
        let r = self.next_record();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.done { 0 } else { self.remaining() };
        (0, Some(n))
    }
}

impl<B: Backend> Drop for AsyncBatch<'_, B> {
    fn drop(&mut self) {
        if self.ring.req_cons == self.start {
            return;
        }
        let cons = self.ring.req_cons;
        // Release: the records are copied out before Xen may reuse them.
        if let Err(e) = self
            .ring
            .ring
            .store_release(Op::Consume, hdr::REQ_CONS, cons)
        {
            log::warn!("publishing req_cons: {e}");
            return;
        }
        self.ring.busy = true;
        let armed = if self.arm_on_drop {
            // Re-arm: the next kick when the next full batch is in.
            let event = cons.wrapping_add(self.ring.batch);
            self.ring.event = event;
            self.ring.ring.store_event(Op::Consume, event)
        } else {
            self.ring.park()
        };
        if let Err(e) = armed {
            log::warn!("publishing req_event: {e}");
        }
    }
}
