//! The bounded lock-free ring a reactor receives cross-core work through.
//!
//! Many producers (any thread), one consumer (the owning reactor). Built on
//! `crossbeam_queue::ArrayQueue`, a well-kept bounded MPMC queue (Vyukov's
//! array design): each slot carries a stamp, a producer claims a slot with one
//! CAS on the tail and publishes the value with a `Release` store of the slot's
//! stamp, which the consumer's `Acquire` load of the same stamp pairs with, so
//! the message's contents are visible before the consumer can see the slot as
//! full. Head and tail live on separate cache lines inside the queue.
//!
//! Guarantees the reactor relies on, checked by the tests below:
//! - bounded: a full ring refuses the message and hands it back (back-pressure;
//!   never an unbounded queue, never a lost message);
//! - every accepted message is popped exactly once;
//! - messages from one producer are popped in the order it pushed them.
//!
//! No allocation after construction.
//!
//! With the `dpdk` feature and the process's env set to DPDK
//! ([`crate::env`]), the same `Ring` is an `rte_ring` (multi-producer,
//! multi-consumer, exact size) holding the items by value, with the same
//! guarantees; without the feature the DPDK variant does not exist and the
//! ring is exactly the crossbeam queue.

use crate::env::EnvKind;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

/// A bounded many-producer ring.
pub struct Ring<T> {
    q: Inner<T>,
}

// The crossbeam queue stays inline (boxing it would add a pointer chase to
// every push and pop); the enum's size only matters once per ring.
#[allow(clippy::large_enum_variant)]
enum Inner<T> {
    Baton(CachePadded<ArrayQueue<T>>),
    #[cfg(feature = "dpdk")]
    Dpdk(crate::env::dpdk::DpdkRing<T>),
}

impl<T> Ring<T> {
    /// A ring holding at most `capacity` items (allocates once, here), of the
    /// process's env ([`crate::env::current`]). Should that env be DPDK and
    /// DPDK fail to make the ring, the error is logged and the ring is baton's
    /// (this constructor cannot fail; [`Ring::new_in`] can).
    pub fn new(capacity: usize) -> Ring<T> {
        #[cfg(feature = "dpdk")]
        if crate::env::current() == Ok(EnvKind::Dpdk) {
            match Ring::new_in(EnvKind::Dpdk, capacity) {
                Ok(r) => return r,
                Err(e) => log::error!("{e}: using baton's ring instead"),
            }
        }
        Ring::baton(capacity)
    }

    fn baton(capacity: usize) -> Ring<T> {
        assert!(capacity > 0, "a ring needs room for at least one item");
        Ring {
            q: Inner::Baton(CachePadded::new(ArrayQueue::new(capacity))),
        }
    }

    /// A ring of the given kind whatever the process's env (benchmarks compare
    /// the two side by side). DPDK's needs its EAL running ([`crate::env::ensure`]).
    pub fn new_in(kind: EnvKind, capacity: usize) -> Result<Ring<T>, crate::env::EnvError> {
        match kind {
            EnvKind::Baton => Ok(Ring::baton(capacity)),
            #[cfg(feature = "dpdk")]
            EnvKind::Dpdk => {
                assert!(capacity > 0, "a ring needs room for at least one item");
                Ok(Ring {
                    q: Inner::Dpdk(crate::env::dpdk::DpdkRing::new(capacity)?),
                })
            }
            #[cfg(not(feature = "dpdk"))]
            EnvKind::Dpdk => Err(crate::env::EnvError::NotBuilt),
        }
    }

    /// Whose ring this is.
    pub fn kind(&self) -> EnvKind {
        match &self.q {
            Inner::Baton(_) => EnvKind::Baton,
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(_) => EnvKind::Dpdk,
        }
    }

    /// Enqueues `item`, or hands it back when the ring is full. Any thread.
    #[inline]
    pub fn push(&self, item: T) -> Result<(), T> {
        match &self.q {
            Inner::Baton(q) => q.push(item),
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(r) => r.push(item),
        }
    }

    /// Dequeues the oldest item. Meant for the single consumer; safe (but
    /// without the per-producer order guarantee across consumers) for more.
    #[inline]
    pub fn pop(&self) -> Option<T> {
        match &self.q {
            Inner::Baton(q) => q.pop(),
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(r) => r.pop(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.q {
            Inner::Baton(q) => q.len(),
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.q {
            Inner::Baton(q) => q.is_empty(),
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(r) => r.is_empty(),
        }
    }

    pub fn capacity(&self) -> usize {
        match &self.q {
            Inner::Baton(q) => q.capacity(),
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(r) => r.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_ring_hands_the_item_back() {
        let r = Ring::new(2);
        r.push(1).unwrap();
        r.push(2).unwrap();
        assert_eq!(r.push(3), Err(3));
        assert_eq!(r.pop(), Some(1));
        r.push(3).unwrap();
        assert_eq!(r.pop(), Some(2));
        assert_eq!(r.pop(), Some(3));
        assert_eq!(r.pop(), None);
    }

    /// Several producers push tagged sequence numbers into a small ring (so it
    /// is full often), retrying on back-pressure; the consumer checks that
    /// each producer's numbers arrive exactly once and in order.
    #[test]
    fn many_producers_exactly_once_in_order() {
        const PRODUCERS: u64 = 4;
        const PER_PRODUCER: u64 = 200_000;
        let ring = Arc::new(Ring::<u64>::new(64));
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    let mut full = 0u64;
                    for seq in 0..PER_PRODUCER {
                        let mut item = (p << 32) | seq;
                        while let Err(back) = ring.push(item) {
                            item = back;
                            full += 1;
                            std::hint::spin_loop();
                        }
                    }
                    full
                })
            })
            .collect();
        let mut next = [0u64; PRODUCERS as usize];
        let mut received = 0u64;
        while received < PRODUCERS * PER_PRODUCER {
            match ring.pop() {
                Some(item) => {
                    let p = (item >> 32) as usize;
                    let seq = item & 0xffff_ffff;
                    assert_eq!(seq, next[p], "producer {p}: out of order or duplicated");
                    next[p] += 1;
                    received += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        let full: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(next.iter().all(|&n| n == PER_PRODUCER));
        assert!(ring.pop().is_none(), "no extra items");
        // The ring was small enough that back-pressure was exercised.
        eprintln!("producers saw the ring full {full} times");
    }
}
