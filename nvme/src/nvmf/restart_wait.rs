//! Restart point commands waiting for their namespace's sink, for both transports: which
//! request slots wait, for which answer and until when, how the answer is routed back to
//! the queue's reactor by message, and what the command completes with
//! (`docs/restart-points.md`). A queue owns one [`RestartWaits`] sized for its requests; the
//! transport keeps its own request states and finds its queue by the id it gave the sink.

use super::restart::{self, RestartPointError, RestartPointSink};
use crate::spec::Status;
use engine::reactor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Queue identities, unique per process and never reused, so that a restart point answer
/// for a queue that has gone finds nothing instead of another queue.
static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh queue identity (set-up path).
pub(crate) fn next_queue_id() -> u64 {
    NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed)
}

/// Where the sink's answer goes: the queue (by id), its request slot and the wait number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AnswerTo {
    pub core: u32,
    pub queue: u64,
    pub slot: usize,
    pub seq: u64,
}

/// Runs on the queue's reactor with the sink's answer (a transport's lookup of `queue`).
pub(crate) type Deliver = fn(AnswerTo, Result<u64, RestartPointError>);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wait {
    /// 0: the slot is not waiting.
    seq: u64,
    deadline_ns: u64,
}

/// The restart point waits of one queue. Sized once for the queue's requests; nothing
/// here allocates after that (the sink's answer callback is one box per restart point).
#[derive(Debug, Default)]
pub(crate) struct RestartWaits {
    seq: u64,
    pending: u32,
    slots: Vec<Wait>,
}

impl RestartWaits {
    /// Room for `n` request slots (set-up path).
    pub(crate) fn new(n: usize) -> RestartWaits {
        RestartWaits {
            seq: 0,
            pending: 0,
            slots: vec![Wait::default(); n],
        }
    }

    /// Requests waiting now (the RDMA poll group's counter takes them off at close).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn pending(&self) -> u32 {
        self.pending
    }

    /// Whether `slot` waits for answer `seq`.
    pub(crate) fn is_waiting(&self, slot: usize, seq: u64) -> bool {
        seq != 0 && self.slots.get(slot).is_some_and(|w| w.seq == seq)
    }

    /// Marks `slot` waiting until `now_ns` plus the sink's timeout; returns the answer's
    /// number. None if `slot` is out of range or already waits (a transport bug, refused
    /// rather than completing one command twice).
    pub(crate) fn begin(&mut self, slot: usize, timeout_ns: u64, now_ns: u64) -> Option<u64> {
        let w = self.slots.get_mut(slot)?;
        if w.seq != 0 {
            return None;
        }
        self.seq += 1;
        *w = Wait {
            seq: self.seq,
            deadline_ns: now_ns.saturating_add(timeout_ns),
        };
        self.pending += 1;
        Some(self.seq)
    }

    /// Answer `seq` for `slot` arrived: true (and the wait ends) if the slot still waits
    /// for it; false for a late answer (the command timed out, the slot may be in use).
    pub(crate) fn answer(&mut self, slot: usize, seq: u64) -> bool {
        if !self.is_waiting(slot, seq) {
            return false;
        }
        self.slots[slot] = Wait::default();
        self.pending -= 1;
        true
    }

    /// Ends the first wait whose deadline passed and returns its slot; None if none did.
    /// The caller completes that command (and may close its queue, which clears the rest)
    /// before asking for the next.
    pub(crate) fn next_expired(&mut self, now_ns: u64) -> Option<usize> {
        if self.pending == 0 {
            return None;
        }
        let slot = self.slots.iter().position(|w| w.seq != 0 && now_ns >= w.deadline_ns)?;
        self.slots[slot] = Wait::default();
        self.pending -= 1;
        Some(slot)
    }

    /// The queue closed: no wait completes any more (answers still in flight find none).
    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|w| *w = Wait::default());
        self.pending = 0;
    }

    /// Starts a restart point for `slot`: the wait, then `tag` handed to `sink`, whose
    /// answer reaches `deliver` on reactor `core` by message. Returns the wait's number,
    /// or None if the slot could not wait (see [`RestartWaits::begin`]).
    ///
    /// Ordering: every write the queue completed before the command arrived has been
    /// completed by the bdev, so the sink has already ordered it (a replicated volume gave
    /// it an LSN); writes still outstanding are not ordered against the point, as NVMe
    /// orders no outstanding commands.
    pub(crate) fn declare(
        &mut self,
        to: (u32, u64, usize),
        sink: &Arc<dyn RestartPointSink>,
        tag: &[u8],
        now_ns: u64,
        deliver: Deliver,
    ) -> Option<u64> {
        let (core, queue, slot) = to;
        let timeout = u64::try_from(sink.timeout().as_nanos()).unwrap_or(u64::MAX);
        let seq = self.begin(slot, timeout, now_ns)?;
        let to = AnswerTo { core, queue, slot, seq };
        sink.declare(
            tag,
            Box::new(move |res| {
                if let Err(e) = reactor::send_msg(core, move || deliver(to, res)) {
                    log::warn!("nvmf: restart point answer for reactor {core} lost: {e:?}");
                }
            }),
        );
        Some(seq)
    }
}

/// What a restart point command completes with: the epoch in DW0/DW1, or the error's
/// status.
pub(crate) fn completion(res: &Result<u64, RestartPointError>) -> (Status, u32, u32) {
    match res {
        Ok(epoch) => (Status::SUCCESS, *epoch as u32, (*epoch >> 32) as u32),
        Err(e) => (restart::status(e), 0, 0),
    }
}

/// What a restart point command completes with when its sink did not answer in time
/// (retryable).
pub(crate) const EXPIRED: Status = Status::NAMESPACE_NOT_READY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_completes_once() {
        let mut w = RestartWaits::new(4);
        let s = w.begin(2, 1_000, 10).unwrap();
        assert_eq!(w.pending(), 1);
        assert!(w.begin(2, 1_000, 10).is_none(), "one wait per slot");
        assert!(!w.answer(1, s), "other slot");
        assert!(!w.answer(2, s + 1), "other number");
        assert!(w.answer(2, s));
        assert!(!w.answer(2, s), "a second answer is late");
        assert_eq!(w.pending(), 0);
        assert!(w.begin(9, 1, 1).is_none(), "slot out of range");
    }

    #[test]
    fn deadline_expires_then_late_answer_is_ignored() {
        let mut w = RestartWaits::new(3);
        let a = w.begin(0, 100, 0).unwrap();
        let b = w.begin(1, 500, 0).unwrap();
        assert_eq!(w.next_expired(99), None);
        assert_eq!(w.next_expired(100), Some(0));
        assert_eq!(w.next_expired(100), None);
        assert!(!w.answer(0, a), "timed out already");
        // The slot is reused: the old answer still does not match.
        let c = w.begin(0, 100, 200).unwrap();
        assert_ne!(a, c);
        assert!(!w.answer(0, a));
        assert!(w.answer(1, b));
        assert!(w.answer(0, c));
        assert_eq!(w.pending(), 0);
        assert_eq!(w.next_expired(u64::MAX), None, "nothing waits");
    }

    #[test]
    fn clear_drops_every_wait() {
        let mut w = RestartWaits::new(2);
        let a = w.begin(0, u64::MAX, 5).unwrap();
        w.begin(1, 1, 5).unwrap();
        w.clear();
        assert_eq!(w.pending(), 0);
        assert!(!w.answer(0, a));
        assert_eq!(w.next_expired(u64::MAX), None, "cleared");
    }

    #[test]
    fn completion_statuses() {
        assert_eq!(completion(&Ok(0x1_0000_0002)), (Status::SUCCESS, 2, 1));
        let e = RestartPointError::PolicyUnmet("relays".into());
        assert_eq!(completion(&Err(e)).0, Status::NAMESPACE_NOT_READY);
        assert_eq!(EXPIRED, Status::NAMESPACE_NOT_READY);
        assert!(next_queue_id() < next_queue_id());
    }
}
