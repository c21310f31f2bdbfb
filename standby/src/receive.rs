//! Ordered receive: the first stage of the standby's data path.
//!
//! Relays forward the primary's operations to the standby over several
//! streams at once, each at its own pace, so an operation may arrive twice
//! (two relays hold it), late (one relay is slow) or not at all (a relay
//! died). [`Receiver`] turns those streams into one stream in strict LSN
//! order with every LSN exactly once:
//!
//! - an op below the next LSN to deliver, or already held, is a duplicate and
//!   is dropped (and counted);
//! - an op above the next LSN waits in a bounded reorder window: a ring of
//!   [`WINDOW_OPS_MAX`] slots indexed by LSN from the next one, holding at
//!   most [`WINDOW_BYTES_MAX`] bytes. An op past the window's end, or one
//!   that would exceed its bytes, is refused with [`Offer::Full`] (back-pressure: the caller keeps it, or does not
//!   acknowledge it, and offers it again later), never drops it. The op that
//!   fills the lowest hole is always accepted, so a full window cannot
//!   deadlock;
//! - a hole older than a configurable age is reported by [`Receiver::gaps`]
//!   so the caller can fetch that LSN range from another relay;
//! - an op of an older generation than the receiver's is refused (fencing: a
//!   primary that was cut off by a failover cannot write any more).
//!
//! Pure logic: no I/O, no clock reads (the caller passes `now_ns`), owned by
//! the reactor that owns the standby volume. Nothing allocates per op: the
//! ring is reserved up front and an op's data is copied out of the receive
//! buffer (the wire [`Op`] borrows it) into a [`DmaBuf::recycled`] buffer.

use engine::buf::DmaBuf;
use rdma_transport::wire::{Op, SyncMark, RESTART_TAG_BYTES_MAX};
use std::collections::VecDeque;

/// Slots of the reorder window: an op more than this many LSNs past the next
/// one to deliver waits (is refused with `Full`) until the window moves.
pub const WINDOW_OPS_MAX: usize = 16 * 1024;
/// Most data bytes the reorder window holds.
pub const WINDOW_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Default age after which a hole in the LSN sequence is reported.
pub const GAP_AGE_NS_DEFAULT: u64 = 200_000_000;

/// What an owned op does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpBody {
    /// Write `data` (`num_blocks * block_size` bytes) at `offset_blocks`.
    Write {
        offset_blocks: u64,
        num_blocks: u32,
        data: DmaBufEq,
    },
    /// Zero a block range.
    WriteZeroes { offset_blocks: u64, num_blocks: u32 },
    /// Deallocate a block range (reads return zeroes afterwards).
    Deallocate { offset_blocks: u64, num_blocks: u32 },
    /// Restart point closing `epoch`, covering every LSN up to `last_lsn`.
    RestartPoint { epoch: u64, last_lsn: u64, tag: Vec<u8> },
    /// Block-sync marker (`crate::sync_skip`). `skipped`: the standby skipped a hole no
    /// relay held to reach this `Begin` (set by the volume, never on the wire).
    Sync { mark: SyncMark, skipped: bool },
}

impl OpBody {
    /// The block range (first block, blocks) a write, write-zeroes or deallocate touches.
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            OpBody::Write {
                offset_blocks,
                num_blocks,
                ..
            }
            | OpBody::WriteZeroes {
                offset_blocks,
                num_blocks,
            }
            | OpBody::Deallocate {
                offset_blocks,
                num_blocks,
            } => Some((offset_blocks, u64::from(num_blocks))),
            _ => None,
        }
    }
}

/// A [`DmaBuf`] compared by content (tests compare ops).
#[derive(Debug)]
pub struct DmaBufEq(pub DmaBuf);

impl PartialEq for DmaBufEq {
    fn eq(&self, o: &Self) -> bool {
        self.0[..] == o.0[..]
    }
}
impl Eq for DmaBufEq {}
impl Clone for DmaBufEq {
    fn clone(&self) -> Self {
        let mut b = DmaBuf::recycled(self.0.len());
        b.copy_from_slice(&self.0);
        DmaBufEq(b)
    }
}

/// A replicated operation owned by the standby (its data copied out of the
/// receive buffer), with the generation of the primary that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedOp {
    pub lsn: u64,
    pub generation: u64,
    pub body: OpBody,
}

impl OwnedOp {
    /// Whether the blocks a write, write-zeroes or deallocate touches lie within a volume
    /// of `volume_blocks` blocks (restart points and sync markers touch none).
    pub(crate) fn check_range(&self, volume_blocks: u64) -> Result<(), crate::StandbyError> {
        let Some((offset_blocks, num_blocks)) = self.body.range() else {
            return Ok(());
        };
        if offset_blocks.checked_add(num_blocks).is_none_or(|e| e > volume_blocks) {
            return Err(crate::StandbyError::OutOfRange {
                lsn: self.lsn,
                offset_blocks,
                num_blocks: num_blocks as u32,
                volume_blocks,
            });
        }
        Ok(())
    }

    /// Copies a wire op; the data goes into a recycled buffer (see the module
    /// docs). A restart point's tag is the one allocation (once per epoch).
    pub fn from_wire(generation: u64, op: &Op<'_>) -> OwnedOp {
        let body = match *op {
            Op::Write {
                offset_blocks,
                num_blocks,
                data,
                ..
            } => {
                let mut b = DmaBuf::recycled(data.len());
                b.copy_from_slice(data);
                OpBody::Write {
                    offset_blocks,
                    num_blocks,
                    data: DmaBufEq(b),
                }
            }
            Op::WriteZeroes {
                offset_blocks,
                num_blocks,
                ..
            } => OpBody::WriteZeroes {
                offset_blocks,
                num_blocks,
            },
            Op::Deallocate {
                offset_blocks,
                num_blocks,
                ..
            } => OpBody::Deallocate {
                offset_blocks,
                num_blocks,
            },
            Op::RestartPoint {
                epoch, last_lsn, tag, ..
            } => OpBody::RestartPoint {
                epoch,
                last_lsn,
                tag: tag[..tag.len().min(RESTART_TAG_BYTES_MAX)].to_vec(),
            },
            Op::Sync { mark, .. } => OpBody::Sync { mark, skipped: false },
        };
        OwnedOp {
            lsn: op.lsn(),
            generation,
            body,
        }
    }

    /// Data bytes the op holds in memory.
    pub fn data_bytes(&self) -> usize {
        match &self.body {
            OpBody::Write { data, .. } => data.0.len(),
            OpBody::RestartPoint { tag, .. } => tag.len(),
            _ => 0,
        }
    }
}

/// The result of offering one op to the [`Receiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Held; it will be delivered in LSN order.
    Accepted,
    /// Already delivered or already held: dropped.
    Duplicate,
    /// The op's generation is older than the receiver's: refused (fencing).
    StaleGeneration { got: u64, current: u64 },
    /// The reorder window is full: not taken; offer it again after popping.
    Full,
    /// The standby takes no more ops (primary failure declared, promoted, or
    /// stopped on an error): not taken.
    Closed,
}

/// A missing LSN range the caller should fetch from another relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub lsn_first: u64,
    pub lsn_last: u64,
    /// How long the op just above the hole has been waiting.
    pub age_ns: u64,
}

/// Counters, for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub stale_generation: u64,
    pub refused_full: u64,
    pub delivered: u64,
}

struct Held {
    op: OwnedOp,
    arrived_ns: u64,
}

/// Orders ops from many streams into one; see the module docs.
/// Owned by one reactor; not shared.
pub struct Receiver {
    /// The next LSN [`Receiver::pop`] will deliver.
    next_lsn: u64,
    generation: u64,
    /// Slot `i` holds LSN `next_lsn + i`; empty, or its last slot is full.
    held: VecDeque<Option<Held>>,
    held_ops: usize,
    held_bytes: usize,
    ops_max: usize,
    bytes_max: usize,
    gap_age_ns: u64,
    stats: ReceiveStats,
}

impl Receiver {
    /// A receiver that will deliver `next_lsn` first and refuses generations
    /// below `generation`.
    pub fn new(next_lsn: u64, generation: u64) -> Receiver {
        Receiver::with_limits(
            next_lsn,
            generation,
            WINDOW_OPS_MAX,
            WINDOW_BYTES_MAX,
            GAP_AGE_NS_DEFAULT,
        )
    }

    /// As [`Receiver::new`] with explicit window limits and gap age.
    pub fn with_limits(next_lsn: u64, generation: u64, ops_max: usize, bytes_max: usize, gap_age_ns: u64) -> Receiver {
        assert!(next_lsn >= 1, "LSN 0 means nothing; the first LSN is 1");
        assert!(ops_max >= 1);
        Receiver {
            next_lsn,
            generation,
            held: VecDeque::with_capacity(ops_max),
            held_ops: 0,
            held_bytes: 0,
            ops_max,
            bytes_max,
            gap_age_ns,
            stats: ReceiveStats::default(),
        }
    }

    /// Offers an op received in a batch of generation `generation`.
    /// Copies the op's data only when it is accepted.
    pub fn offer(&mut self, generation: u64, op: &Op<'_>, now_ns: u64) -> Offer {
        let lsn = op.lsn();
        match self.check(generation, lsn, op_data_len(op)) {
            Offer::Accepted => {}
            other => return other,
        }
        self.insert(OwnedOp::from_wire(generation, op), now_ns);
        Offer::Accepted
    }

    /// Offers an op that is already owned (tests, gap replies copied earlier).
    /// On anything but `Accepted` the op is handed back.
    pub fn offer_owned(&mut self, op: OwnedOp, now_ns: u64) -> Result<(), (Offer, OwnedOp)> {
        match self.check(op.generation, op.lsn, op.data_bytes()) {
            Offer::Accepted => {
                self.insert(op, now_ns);
                Ok(())
            }
            other => Err((other, op)),
        }
    }

    fn check(&mut self, generation: u64, lsn: u64, bytes: usize) -> Offer {
        if generation < self.generation {
            self.stats.stale_generation += 1;
            return Offer::StaleGeneration {
                got: generation,
                current: self.generation,
            };
        }
        if lsn < self.next_lsn || self.slot(lsn).is_some_and(|h| h.is_some()) {
            self.stats.duplicates += 1;
            return Offer::Duplicate;
        }
        // The op the consumer waits for always gets in: refusing it could
        // leave a full window that never drains. (Only while nothing is
        // deliverable, so the window never exceeds its bound by more than one.)
        let fills_lowest_hole = lsn == self.next_lsn;
        if !fills_lowest_hole
            && (lsn - self.next_lsn >= self.ops_max as u64 || self.held_bytes + bytes > self.bytes_max)
        {
            self.stats.refused_full += 1;
            return Offer::Full;
        }
        if generation > self.generation {
            // A newer primary (after a failover elsewhere): from now on its
            // predecessor is fenced.
            self.generation = generation;
        }
        Offer::Accepted
    }

    /// The slot of `lsn` (>= next_lsn), if the ring reaches that far.
    fn slot(&self, lsn: u64) -> Option<&Option<Held>> {
        self.held.get(usize::try_from(lsn - self.next_lsn).ok()?)
    }

    fn insert(&mut self, op: OwnedOp, now_ns: u64) {
        self.stats.accepted += 1;
        self.held_ops += 1;
        self.held_bytes += op.data_bytes();
        // `check` keeps the index below ops_max (the ring's reserved capacity), so
        // growing the ring to it never allocates.
        let i = (op.lsn - self.next_lsn) as usize;
        while self.held.len() <= i {
            self.held.push_back(None);
        }
        self.held[i] = Some(Held { op, arrived_ns: now_ns });
    }

    /// The next op in LSN order, if it has arrived.
    pub fn pop(&mut self) -> Option<OwnedOp> {
        if !self.ready() {
            return None;
        }
        let h = self.held.pop_front().flatten().expect("ready: the first slot is full");
        self.held_ops -= 1;
        self.held_bytes -= h.op.data_bytes();
        self.next_lsn += 1;
        self.stats.delivered += 1;
        Some(h.op)
    }

    /// True when [`Receiver::pop`] would return an op.
    pub fn ready(&self) -> bool {
        self.held.front().is_some_and(|h| h.is_some())
    }

    /// Holes in the LSN sequence whose next held op has waited at least the
    /// gap age, lowest first, at most `max` of them.
    pub fn gaps(&self, now_ns: u64, max: usize) -> Vec<Gap> {
        let mut out = Vec::new();
        let mut expect = self.next_lsn;
        let held = self
            .held
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((self.next_lsn + i as u64, h.as_ref()?)));
        for (lsn, h) in held {
            if out.len() >= max {
                break;
            }
            if lsn > expect {
                let age_ns = now_ns.saturating_sub(h.arrived_ns);
                if age_ns >= self.gap_age_ns {
                    out.push(Gap {
                        lsn_first: expect,
                        lsn_last: lsn - 1,
                        age_ns,
                    });
                }
            }
            expect = lsn + 1;
        }
        out
    }

    /// The LSN the next delivered op will carry (everything below was delivered).
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The highest LSN seen so far (held or delivered).
    pub fn lsn_seen_max(&self) -> u64 {
        self.next_lsn + self.held.len() as u64 - 1
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Raises the generation (promotion): older ops are refused from now on.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = self.generation.max(generation);
    }

    /// Moves delivery forward to `lsn` (a hole no relay holds, covered by a block sync:
    /// `crate::sync_skip`), dropping what was held below it. Returns the LSNs passed over.
    pub fn skip_to(&mut self, lsn: u64) -> u64 {
        if lsn <= self.next_lsn {
            return 0;
        }
        let skipped = lsn - self.next_lsn;
        let n = usize::try_from(skipped).unwrap_or(usize::MAX).min(self.held.len());
        for h in self.held.drain(..n).flatten() {
            self.held_ops -= 1;
            self.held_bytes -= h.op.data_bytes();
        }
        self.next_lsn = lsn;
        skipped
    }

    /// Drops everything held and restarts delivery at `next_lsn` (after a
    /// primary failure, or when the consumer rewinds after a restart).
    pub fn reset(&mut self, next_lsn: u64) {
        self.held.clear();
        self.held_ops = 0;
        self.held_bytes = 0;
        self.next_lsn = next_lsn.max(1);
    }

    /// Block ranges (first block, blocks) the held ops write (a failback must treat them
    /// as changed: the primary that numbered them wrote them locally).
    pub fn held_ranges(&self) -> Vec<(u64, u64)> {
        self.held.iter().flatten().filter_map(|h| h.op.body.range()).collect()
    }

    /// Ops and bytes held.
    pub fn held(&self) -> (usize, usize) {
        (self.held_ops, self.held_bytes)
    }

    pub fn stats(&self) -> ReceiveStats {
        self.stats
    }
}

fn op_data_len(op: &Op<'_>) -> usize {
    match op {
        Op::Write { data, .. } => data.len(),
        Op::RestartPoint { tag, .. } => tag.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(lsn: u64, data: &[u8]) -> Op<'_> {
        Op::Write {
            lsn,
            offset_blocks: lsn,
            num_blocks: 1,
            data,
        }
    }

    fn drain(r: &mut Receiver) -> Vec<u64> {
        std::iter::from_fn(|| r.pop()).map(|o| o.lsn).collect()
    }

    /// SplitMix64: deterministic tests without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn in_order_passes_straight_through() {
        let mut r = Receiver::new(1, 1);
        let d = [7u8; 512];
        for lsn in 1..=5 {
            assert_eq!(r.offer(1, &w(lsn, &d), 0), Offer::Accepted);
        }
        assert_eq!(drain(&mut r), vec![1, 2, 3, 4, 5]);
        assert_eq!(r.next_lsn(), 6);
        assert_eq!(r.held(), (0, 0));
    }

    #[test]
    fn reorders_and_drops_duplicates() {
        let mut r = Receiver::new(1, 1);
        let d = [1u8; 512];
        assert_eq!(r.offer(1, &w(3, &d), 0), Offer::Accepted);
        assert_eq!(r.offer(1, &w(2, &d), 0), Offer::Accepted);
        assert!(!r.ready(), "LSN 1 missing: nothing deliverable");
        assert_eq!(r.offer(1, &w(3, &d), 0), Offer::Duplicate);
        assert_eq!(r.offer(1, &w(1, &d), 0), Offer::Accepted);
        assert_eq!(drain(&mut r), vec![1, 2, 3]);
        assert_eq!(r.offer(1, &w(2, &d), 0), Offer::Duplicate, "already delivered");
        assert_eq!(r.stats().duplicates, 2);
    }

    #[test]
    fn data_is_copied_and_kept_intact() {
        let mut r = Receiver::new(10, 1);
        let mut d = vec![0u8; 1024];
        d.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        r.offer(1, &w(11, &d), 0);
        r.offer(
            1,
            &Op::RestartPoint {
                lsn: 12,
                epoch: 3,
                last_lsn: 11,
                tag: b"app",
            },
            0,
        );
        r.offer(1, &w(10, &d), 0);
        let ops: Vec<OwnedOp> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(ops.len(), 3);
        match &ops[1].body {
            OpBody::Write { data, .. } => assert_eq!(&data.0[..], &d[..]),
            b => panic!("unexpected {b:?}"),
        }
        assert_eq!(
            ops[2].body,
            OpBody::RestartPoint {
                epoch: 3,
                last_lsn: 11,
                tag: b"app".to_vec()
            }
        );
    }

    #[test]
    fn older_generation_is_refused_newer_is_adopted() {
        let mut r = Receiver::new(1, 5);
        let d = [0u8; 512];
        assert_eq!(r.offer(4, &w(1, &d), 0), Offer::StaleGeneration { got: 4, current: 5 });
        assert!(!r.ready());
        assert_eq!(r.offer(6, &w(1, &d), 0), Offer::Accepted);
        assert_eq!(r.generation(), 6);
        assert_eq!(
            r.offer(5, &w(2, &d), 0),
            Offer::StaleGeneration { got: 5, current: 6 },
            "the generation before the newest one is now fenced"
        );
        r.set_generation(9);
        assert_eq!(r.offer(8, &w(2, &d), 0), Offer::StaleGeneration { got: 8, current: 9 });
        assert_eq!(r.stats().stale_generation, 3);
    }

    #[test]
    fn full_window_pushes_back_but_lowest_hole_always_fits() {
        // A window of 4 slots (LSNs next..next+3) and 4096 bytes.
        let mut r = Receiver::with_limits(1, 1, 4, 4096, 0);
        let d = [0u8; 1024];
        for lsn in [2, 3, 4] {
            assert_eq!(r.offer(1, &w(lsn, &d), 0), Offer::Accepted);
        }
        assert_eq!(r.offer(1, &w(5, &d), 0), Offer::Full, "past the window's end");
        assert_eq!(r.held(), (3, 3072));
        assert_eq!(
            r.offer(1, &w(1, &[0u8; 2048]), 0),
            Offer::Accepted,
            "the lowest hole, even over the byte bound"
        );
        assert_eq!(r.offer(1, &w(5, &d), 0), Offer::Full, "1 is deliverable: pop first");
        assert_eq!(drain(&mut r), vec![1, 2, 3, 4]);
        // The window moved on: LSNs 5..=8.
        assert_eq!(r.offer(1, &w(6, &[0u8; 2048]), 0), Offer::Accepted);
        assert_eq!(
            r.offer(1, &w(7, &[0u8; 2048]), 0),
            Offer::Accepted,
            "exactly at the byte bound"
        );
        assert_eq!(r.offer(1, &w(8, &d), 0), Offer::Full, "byte limit");
        assert_eq!(r.offer(1, &w(9, &d), 0), Offer::Full, "past the window's end");
        assert_eq!(r.lsn_seen_max(), 7);
        assert_eq!(r.offer(1, &w(5, &d), 0), Offer::Accepted, "now the lowest hole");
        assert_eq!(drain(&mut r), vec![5, 6, 7]);
        assert_eq!(r.held(), (0, 0));
        assert_eq!(r.lsn_seen_max(), 7);
        assert_eq!(r.stats().refused_full, 4);
    }

    #[test]
    fn gaps_reported_only_when_old_enough() {
        let mut r = Receiver::with_limits(1, 1, 100, 1 << 20, 1000);
        let d = [0u8; 512];
        r.offer(1, &w(2, &d), 100);
        r.offer(1, &w(5, &d), 500);
        r.offer(1, &w(6, &d), 600);
        r.offer(1, &w(9, &d), 900);
        assert_eq!(r.gaps(1000, 10), vec![]);
        assert_eq!(
            r.gaps(1100, 10),
            vec![Gap {
                lsn_first: 1,
                lsn_last: 1,
                age_ns: 1000
            }]
        );
        assert_eq!(
            r.gaps(2000, 10),
            vec![
                Gap {
                    lsn_first: 1,
                    lsn_last: 1,
                    age_ns: 1900
                },
                Gap {
                    lsn_first: 3,
                    lsn_last: 4,
                    age_ns: 1500
                },
                Gap {
                    lsn_first: 7,
                    lsn_last: 8,
                    age_ns: 1100
                }
            ]
        );
        assert_eq!(r.gaps(2000, 1).len(), 1);
        r.offer(1, &w(1, &d), 2000);
        assert_eq!(drain(&mut r), vec![1, 2]);
        assert_eq!(r.gaps(2000, 10)[0].lsn_first, 3);
        assert_eq!(r.lsn_seen_max(), 9);
    }

    #[test]
    fn reset_rewinds() {
        let mut r = Receiver::new(1, 1);
        let d = [0u8; 512];
        r.offer(1, &w(3, &d), 0);
        r.reset(10);
        assert_eq!(r.held(), (0, 0));
        assert_eq!(r.offer(1, &w(9, &d), 0), Offer::Duplicate);
        assert_eq!(r.offer(1, &w(10, &d), 0), Offer::Accepted);
        assert_eq!(drain(&mut r), vec![10]);
    }

    #[test]
    fn skip_to_drops_what_is_below_and_keeps_the_rest() {
        let mut r = Receiver::new(5, 1);
        let d = [0u8; 512];
        for lsn in [7, 8, 12, 13] {
            assert_eq!(r.offer(1, &w(lsn, &d), 0), Offer::Accepted);
        }
        assert_eq!(r.skip_to(12), 7);
        assert_eq!(r.held(), (2, 1024));
        assert_eq!(drain(&mut r), vec![12, 13]);
        // Past everything held, and backwards: nothing breaks.
        assert_eq!(r.skip_to(100), 86);
        assert_eq!(r.skip_to(50), 0);
        assert_eq!(r.held(), (0, 0));
        assert_eq!(r.offer(1, &w(100, &d), 0), Offer::Accepted);
        assert_eq!(drain(&mut r), vec![100]);
    }

    /// Several streams, each an in-order copy of the same sequence with
    /// random holes and delays; interleaved at random, with back-pressure
    /// retried. Every LSN must come out once, in order, and only LSNs that
    /// some stream carried.
    #[test]
    fn random_multi_stream_delivery() {
        for seed in 0..200 {
            let mut rng = Rng(seed);
            let n = 1 + rng.below(300);
            let streams = 1 + rng.below(4) as usize;
            let mut queues: Vec<Vec<u64>> = (0..streams)
                .map(|_| (1..=n).filter(|_| rng.below(4) != 0).collect())
                .collect();
            // Make sure every LSN is carried by at least one stream, except
            // possibly a final hole the test then fills as a "gap fetch".
            for lsn in 1..=n {
                if !queues.iter().any(|q| q.contains(&lsn)) {
                    let s = rng.below(streams as u64) as usize;
                    let pos = queues[s].partition_point(|&x| x < lsn);
                    queues[s].insert(pos, lsn);
                }
            }
            let mut heads = vec![0usize; streams];
            let ops_max = 1 + rng.below(16) as usize;
            let mut r = Receiver::with_limits(1, 7, ops_max, 64 * 512, 0);
            let mut out = Vec::new();
            let d = [0u8; 512];
            let mut t = 0;
            while heads.iter().zip(&queues).any(|(&h, q)| h < q.len()) {
                t += 1;
                let s = rng.below(streams as u64) as usize;
                if heads[s] < queues[s].len() {
                    let lsn = queues[s][heads[s]];
                    match r.offer(7, &w(lsn, &d), t) {
                        Offer::Accepted | Offer::Duplicate => heads[s] += 1,
                        Offer::Full => {}
                        o => panic!("unexpected {o:?}"),
                    }
                }
                if rng.below(3) == 0 {
                    out.extend(drain(&mut r));
                }
                assert!(r.held().0 <= ops_max + 1, "window above its bound");
            }
            out.extend(drain(&mut r));
            assert_eq!(out, (1..=n).collect::<Vec<_>>(), "seed {seed}");
        }
    }
}
