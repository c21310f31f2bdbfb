//! The shared state of a promoted head (`docs/standby.md`, "Primary failure and
//! promotion"): the block map every channel reads without a lock, the allocator every
//! channel takes blocks from without a lock, and the one place map *changes* go
//! (`MapChanges`: publishing first writes, unmapping, journaling on flush), and the
//! pins that keep a block from being reused while a read or an overwrite of it is in
//! flight (`Pins`).

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{OnceLock, TryLockError};

/// Blocks per leaf of the head map (a leaf is 32 KiB of entries).
const LEAF_BITS: u32 = 12;
const LEAF_BLOCKS: u64 = 1 << LEAF_BITS;
/// Entry bit: the block belongs to the head (may be overwritten in place).
const OWNED: u64 = 1 << 63;
/// Pin stripes: `1 << PIN_BITS` counters (256 KiB), allocated with the head.
const PIN_BITS: u32 = 16;

/// One block's place as the head map stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    /// Data block, or [`ZERO_PBA`] (reads as zeroes).
    pub(super) pba: u64,
    /// Written since promotion: overwritten in place, never a snapshot's block.
    pub(super) owned: bool,
}

impl Entry {
    /// The block a write may overwrite in place, if any.
    pub(super) fn in_place(self) -> Option<u64> {
        (self.owned && self.pba != ZERO_PBA).then_some(self.pba)
    }
}

fn encode(e: Entry) -> u64 {
    let low = if e.pba == ZERO_PBA { 0 } else { e.pba + 1 };
    low | if e.owned { OWNED } else { 0 }
}

fn decode(v: u64) -> Entry {
    let low = v & !OWNED;
    Entry {
        pba: if low == 0 { ZERO_PBA } else { low - 1 },
        owned: v & OWNED != 0,
    }
}

/// LBA -> entry as a two-level radix of atomics: a leaf is allocated the first time a
/// block in its range is mapped (a map change, never a read or an overwrite); a missing
/// leaf reads as zeroes. Readers take no lock.
pub(super) struct HeadMap {
    leaves: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl HeadMap {
    pub(super) fn new(blocks: u64) -> HeadMap {
        HeadMap {
            leaves: (0..blocks.div_ceil(LEAF_BLOCKS)).map(|_| OnceLock::new()).collect(),
        }
    }

    pub(super) fn get(&self, lba: u64) -> Entry {
        let v = self
            .leaves
            .get((lba >> LEAF_BITS) as usize)
            .and_then(|l| l.get())
            .map_or(0, |l| l[(lba & (LEAF_BLOCKS - 1)) as usize].load(Ordering::SeqCst));
        decode(v)
    }

    /// SeqCst, as `get`: a pin's recheck and the releaser's look at the pins are
    /// ordered with it (`Pins`).
    ///
    /// Only `MapChanges` (under its lock) and the head's construction call this, so a
    /// leaf is never initialized by two threads at once. `lba` is below the volume
    /// size (the channel checks requests against it); a larger one is ignored.
    fn set(&self, lba: u64, e: Entry) {
        let Some(slot) = self.leaves.get((lba >> LEAF_BITS) as usize) else {
            return;
        };
        let leaf = slot.get_or_init(|| (0..LEAF_BLOCKS).map(|_| AtomicU64::new(0)).collect());
        leaf[(lba & (LEAF_BLOCKS - 1)) as usize].store(encode(e), Ordering::SeqCst);
    }
}

/// The data bdev's free blocks as a bitmap of atomics (1 = free): a channel takes a
/// block with one compare-and-swap, next-fit from its own cursor so one channel's
/// consecutive first writes are mostly contiguous and channels rarely meet.
pub(super) struct AtomicAlloc {
    bits: Box<[AtomicU64]>,
    blocks: u64,
    free: AtomicU64,
}

impl AtomicAlloc {
    pub(super) fn from_alloc(a: &Alloc) -> AtomicAlloc {
        AtomicAlloc {
            bits: a.bits.iter().map(|&w| AtomicU64::new(w)).collect(),
            blocks: a.blocks,
            free: AtomicU64::new(a.free),
        }
    }

    pub(super) fn blocks(&self) -> u64 {
        self.blocks
    }

    pub(super) fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Takes one free block at or after `cursor` (wrapping), moving the cursor past it.
    pub(super) fn take(&self, cursor: &mut u64) -> Option<u64> {
        let words = self.bits.len();
        if words == 0 {
            return None;
        }
        let first = (*cursor / 64) as usize % words;
        for k in 0..=words {
            let wi = (first + k) % words;
            let mut w = self.bits[wi].load(Ordering::Relaxed);
            while w != 0 {
                let above = if k == 0 { w & (u64::MAX << (*cursor % 64)) } else { w };
                let bit = if above != 0 { above } else { w }.trailing_zeros() as u64;
                match self.bits[wi].compare_exchange_weak(w, w & !(1 << bit), Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => {
                        self.free.fetch_sub(1, Ordering::Relaxed);
                        let b = wi as u64 * 64 + bit;
                        *cursor = b + 1;
                        return Some(b);
                    }
                    Err(now) => w = now,
                }
            }
        }
        None
    }

    /// Gives a block back. A block freed twice or out of range is ignored (and a
    /// debug build stops): it would otherwise be handed out twice.
    pub(super) fn release(&self, b: u64) {
        if b >= self.blocks {
            debug_assert!(false, "block {b} out of range");
            return;
        }
        let mask = 1u64 << (b % 64);
        let prev = self.bits[(b / 64) as usize].fetch_or(mask, Ordering::AcqRel);
        if prev & mask != 0 {
            debug_assert!(false, "block {b} freed twice");
            return;
        }
        self.free.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts of reads and writes in place in flight per data block, striped: block `p`
/// counts in stripe `hash(p)`, so a pin on another block of the stripe only delays a
/// release (conservative, never unsafe). An I/O pins the block its map entry names,
/// then loads the entry again: if it changed, it unpins and looks up again
/// (`HeadShared::get_pinned`). An unmap stores the entry (SeqCst) before the releaser
/// loads the pin (SeqCst), so either the I/O sees the new entry or the releaser sees
/// its pin and defers the block. Atomics only, allocated once.
pub(super) struct Pins {
    counts: Box<[AtomicU32]>,
}

impl Pins {
    fn new() -> Pins {
        Pins {
            counts: (0..1usize << PIN_BITS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn stripe(&self, pba: u64) -> &AtomicU32 {
        &self.counts[(pba.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - PIN_BITS)) as usize]
    }

    fn pin(&self, pba: u64) {
        self.stripe(pba).fetch_add(1, Ordering::SeqCst);
    }

    fn unpin(&self, pba: u64) {
        self.stripe(pba).fetch_sub(1, Ordering::Release);
    }

    fn pinned(&self, pba: u64) -> bool {
        self.stripe(pba).load(Ordering::SeqCst) != 0
    }
}

/// A first write's new block, published once its data is on the data bdev.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fresh {
    /// Block offset in the request.
    pub(super) off: u32,
    pub(super) pba: u64,
}

/// What a flush finds when it goes to journal the map changes before its cut.
pub(super) enum JournalStart {
    /// Another flush is journaling: try again at the next poll.
    Busy,
    /// Nothing to journal (and no journal write in flight).
    Nothing,
    /// This flush holds the journal: write the entries taken at `at`, then flush.
    Write { at: u64, seq: u64, nblocks: u64 },
    /// The metadata area cannot hold the record.
    Full,
}

/// Map changes in the order they were made, and the journal's position. Everything
/// here is touched under one lock, by first writes (once per block), unmaps and
/// flushes; never by a read or an overwrite.
pub(super) struct Journal {
    /// `(lba, pba)` changes not yet journaled, oldest first.
    dirty: Vec<(u64, u64)>,
    /// Absolute index (count of changes ever made) of `dirty[0]`.
    base: u64,
    /// Changes of a journal record that failed: the next record carries them.
    retry: Vec<(u64, u64)>,
    /// Blocks unmapped by the change with that absolute index: free once a record
    /// holding that change is durable.
    limbo: Vec<(u64, u64)>,
    retry_limbo: Vec<u64>,
    /// Blocks whose unmapping is durable but whose stripe was pinned when they were
    /// due: released at a later flush or poll, once unpinned.
    deferred: Vec<u64>,
    log_pos: u64,
    next_seq: u64,
    area_start: u64,
    area_blocks: u64,
    /// Metadata block size (records are padded to it).
    bs: usize,
}

/// Where the head's journal records go: the active metadata area and the next
/// record's position and sequence.
pub(super) struct JournalPos {
    pub(super) log_pos: u64,
    pub(super) next_seq: u64,
    pub(super) area_start: u64,
    pub(super) area_blocks: u64,
    pub(super) bs: usize,
}

/// The shared state of a head: map, allocator, map changes.
pub(super) struct HeadShared {
    pub(super) map: HeadMap,
    pub(super) alloc: AtomicAlloc,
    pins: Pins,
    /// `Journal::deferred` is not empty (checked at each poll without the lock).
    has_deferred: AtomicBool,
    journal: Mutex<Journal>,
    /// One flush at a time writes a journal record: records must land in order.
    journaling: AtomicBool,
    channels: AtomicU64,
}

impl HeadShared {
    pub(super) fn new(map: HeadMap, alloc: AtomicAlloc, pos: JournalPos) -> HeadShared {
        HeadShared {
            map,
            alloc,
            pins: Pins::new(),
            has_deferred: AtomicBool::new(false),
            journal: Mutex::new(Journal {
                dirty: Vec::new(),
                base: 0,
                retry: Vec::new(),
                limbo: Vec::new(),
                retry_limbo: Vec::new(),
                deferred: Vec::new(),
                log_pos: pos.log_pos,
                next_seq: pos.next_seq,
                area_start: pos.area_start,
                area_blocks: pos.area_blocks,
                bs: pos.bs,
            }),
            journaling: AtomicBool::new(false),
            channels: AtomicU64::new(0),
        }
    }

    /// Sets an entry while the head is built (one thread, before any channel).
    pub(super) fn init(&self, lba: u64, e: Entry) {
        self.map.set(lba, e);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `lba`; a block the head owns (`Entry::in_place`) comes back
    /// pinned: the caller unpins it (`unpin`) when the I/O on it has completed. The
    /// entry is loaded again after pinning, so the pin covers a block still mapped
    /// there: an unmap journaled later finds the pin and defers the block's release.
    pub(super) fn get_pinned(&self, lba: u64) -> Entry {
        loop {
            let e = self.map.get(lba);
            let Some(p) = e.in_place() else { return e };
            self.pins.pin(p);
            if self.map.get(lba) == e {
                return e;
            }
            self.pins.unpin(p);
        }
    }

    /// Unpins `n` blocks from `pba` (pinned by `get_pinned` or `publish`).
    pub(super) fn unpin(&self, pba: u64, n: u64) {
        (pba..pba.saturating_add(n)).for_each(|b| self.pins.unpin(b));
    }

    /// Hands blocks whose unmapping is durable to the allocator; a block whose stripe
    /// is pinned (I/O may still be on it) waits in `deferred` instead.
    fn release_durable(&self, j: &mut Journal, blocks: &mut Vec<u64>) {
        j.deferred.append(blocks);
        self.release_deferred(j);
    }

    fn release_deferred(&self, j: &mut Journal) {
        if j.deferred.is_empty() {
            return;
        }
        j.deferred.retain(|&b| {
            let keep = self.pins.pinned(b);
            if !keep {
                self.alloc.release(b);
            }
            keep
        });
        self.has_deferred.store(!j.deferred.is_empty(), Ordering::Relaxed);
    }

    /// Releases deferred blocks no longer pinned (each poll: one relaxed load when
    /// there are none; never waits for the lock).
    pub(super) fn retry_deferred(&self) {
        if !self.has_deferred.load(Ordering::Relaxed) {
            return;
        }
        let mut j = match self.journal.try_lock() {
            Ok(j) => j,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.release_deferred(&mut j);
    }

    /// Where a new channel's allocation cursor starts: channels spread over the
    /// data bdev so their first writes rarely contend for one bitmap word.
    pub(super) fn channel_cursor(&self) -> u64 {
        let k = self.channels.fetch_add(1, Ordering::Relaxed);
        (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 8) % self.alloc.blocks.max(1)
    }

    /// Publishes the new blocks of a write whose data is on the data bdev. A block
    /// another channel published first (a concurrent first write of the same LBA)
    /// loses: its block is freed (nobody ever saw it) and `(off, winner)` is pushed on
    /// `lost` for the caller to write its data there, with `winner` pinned (under the
    /// lock no unmap can change the entry; the caller unpins it after that write).
    pub(super) fn publish(&self, lba: u64, fresh: &[Fresh], lost: &mut Vec<(u32, u64)>) {
        let mut j = self.lock();
        for f in fresh {
            let at = lba + f.off as u64;
            if let Some(winner) = self.map.get(at).in_place() {
                self.pins.pin(winner);
                self.alloc.release(f.pba);
                lost.push((f.off, winner));
                continue;
            }
            self.map.set(
                at,
                Entry {
                    pba: f.pba,
                    owned: true,
                },
            );
            j.dirty.push((at, f.pba));
        }
    }

    /// Maps `n` blocks from `lba` to zeroes; head blocks they held go to limbo.
    pub(super) fn unmap(&self, lba: u64, n: u64) {
        let mut j = self.lock();
        for at in lba..lba + n {
            let old = self.map.get(at);
            if old.pba == ZERO_PBA {
                continue;
            }
            self.map.set(
                at,
                Entry {
                    pba: ZERO_PBA,
                    owned: true,
                },
            );
            let idx = j.base + j.dirty.len() as u64;
            j.dirty.push((at, ZERO_PBA));
            if old.owned {
                j.limbo.push((idx, old.pba));
            }
        }
    }

    /// A flush's cut: the map changes made so far (every write completed before the
    /// flush was submitted made its change before this).
    pub(super) fn cut(&self) -> u64 {
        let j = self.lock();
        j.base + j.dirty.len() as u64
    }

    /// Takes the journal for the changes before `cut` (their data is on the data bdev:
    /// each change was made after its data write completed, which was before the
    /// flush's data flush). Fills `entries` (deduplicated, last change of a block
    /// wins) and `release` (blocks free once the record is durable).
    pub(super) fn start_journal(
        &self,
        cut: u64,
        entries: &mut Vec<(u64, u64)>,
        release: &mut Vec<u64>,
    ) -> JournalStart {
        if self
            .journaling
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return JournalStart::Busy;
        }
        let mut j = self.lock();
        let j = &mut *j;
        self.release_deferred(j);
        entries.clear();
        release.clear();
        let k = (cut.saturating_sub(j.base) as usize).min(j.dirty.len());
        entries.append(&mut j.retry);
        entries.extend(j.dirty.drain(..k));
        j.base += k as u64;
        release.append(&mut j.retry_limbo);
        let base = j.base;
        let taken = j.limbo.iter().take_while(|e| e.0 < base).count();
        release.extend(j.limbo.drain(..taken).map(|e| e.1));
        if entries.is_empty() {
            // Blocks in limbo with no change to journal cannot exist: a change
            // before the cut is taken with its limbo.
            self.release_durable(j, release);
            self.journaling.store(false, Ordering::Release);
            return JournalStart::Nothing;
        }
        dedup_last(entries);
        let nblocks = head_record_blocks(entries.len(), j.bs);
        if j.log_pos + nblocks > j.area_blocks {
            j.retry.append(entries);
            j.retry_limbo.append(release);
            self.journaling.store(false, Ordering::Release);
            return JournalStart::Full;
        }
        let at = j.area_start + j.log_pos;
        let seq = j.next_seq;
        j.log_pos += nblocks;
        j.next_seq += 1;
        JournalStart::Write { at, seq, nblocks }
    }

    /// Releases the journal after the record's write and flush (`ok`) or a failure
    /// (its position is given back and its changes go into the next record).
    pub(super) fn end_journal(&self, ok: bool, nblocks: u64, entries: &mut Vec<(u64, u64)>, release: &mut Vec<u64>) {
        let mut j = self.lock();
        if ok {
            self.release_durable(&mut j, release);
            entries.clear();
        } else {
            j.log_pos -= nblocks;
            j.next_seq -= 1;
            let mut older = std::mem::take(entries);
            older.append(&mut j.retry);
            j.retry = older;
            j.retry_limbo.append(release);
        }
        drop(j);
        self.journaling.store(false, Ordering::Release);
    }
}

/// Keeps the last change of each block, sorted by block (a stable sort keeps the
/// order changes were made in).
fn dedup_last(entries: &mut Vec<(u64, u64)>) {
    entries.sort_by_key(|e| e.0);
    let mut w = 0;
    for r in 0..entries.len() {
        if w > 0 && entries[w - 1].0 == entries[r].0 {
            entries[w - 1] = entries[r];
        } else {
            entries[w] = entries[r];
            w += 1;
        }
    }
    entries.truncate(w);
}

/// Blocks a head record of `n` entries takes (`encode_head`: header, count, entries,
/// padded to blocks).
pub(super) fn head_record_blocks(n: usize, bs: usize) -> u64 {
    (REC_HDR_BYTES + 8 + 16 * n).div_ceil(bs.max(1)) as u64
}
