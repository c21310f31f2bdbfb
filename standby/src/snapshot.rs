//! Snapshot mode (claims 20, 22, 23, R11-R14): every write goes to a freshly
//! allocated area of the data bdev, a block map says where each block lives,
//! and each restart point forms a snapshot.
//!
//! Where it sits: like [`crate::delayed`], fed in LSN order by
//! [`crate::StandbyVolume`] and driven by its poll.
//!
//! Map: versions `(lba, epoch) -> pba` in one ordered map. Snapshot S shows,
//! for each block, its version with the largest epoch <= S (or zeroes).
//! Writes not yet in a snapshot are *pending* (`(lsn, lba, pba)` in LSN
//! order, in memory only): the restart point of epoch N says which of them
//! (LSN <= its `last_lsn`) belong to N.
//!
//! Forming snapshot N ([`Form`], one phase at a time): when restart point N is
//! the next op, intake stops (a write that follows a snapshot request is not
//! stored until the snapshot is formed, R13); once every earlier write is on
//! the data bdev, flush it, fold the pending writes of epoch N into versions
//! of epoch N (the last write of a block in the epoch wins; the blocks it
//! supersedes are freed at once, nothing durable points at them), apply
//! retention (keep the last N snapshots), write one journal record (the
//! epoch's map delta + the deletions) and flush the metadata bdev. Work is
//! proportional to the blocks written in the epoch, never the volume size.
//!
//! Persistence, by journal + checkpoint on the metadata bdev:
//! - blocks 0, 1: [`Superblock`] (generation, promoted, active area, first
//!   record seq of the active area);
//! - two equal areas; records are appended to the active one. A record is a
//!   32-byte header (magic, kind, seq, payload length, CRC32C of header and
//!   payload) and its payload, padded to blocks. Replay reads from the
//!   superblock's area and seq and stops at the first record whose magic,
//!   seq or CRC is wrong (a torn last record was never acknowledged).
//! - when a record does not fit, the whole state is written as a checkpoint
//!   into the other area, flushed, and the superblock switched to it (that
//!   forming pays O(mapped blocks), once per area's worth of records).
//! - the allocator is not persisted: on open, free = all blocks - blocks
//!   referenced by the replayed map. Pending writes are never journaled, so a
//!   crash releases them by construction; blocks freed by a deletion are held
//!   back ("limbo") until the record that frees them is durable, so no block
//!   a durable snapshot still names is ever overwritten.
//!
//! Deleting snapshot S (retention or request; never the latest, never an
//! exported one) frees exactly the versions visible in no other retained
//! snapshot: those born after the previous retained snapshot P and
//! overwritten by the next one Q. Only blocks written in (S, Q] are looked at
//! (each snapshot keeps the sorted list of blocks written since its
//! predecessor), so deletion too is proportional to blocks written.
//!
//! Primary failure: after any snapshot whose writes are all stored is formed,
//! every pending write's block is freed: the map is exactly the last snapshot.

use crate::io::Dev;
use crate::receive::{OpBody, OwnedOp};
use crate::superblock::{Mode, Superblock};
use crate::sync_skip::{self, RpVerdict, SyncSkip};
use crate::StandbyError;
use engine::bdev::{
    Bdev, BdevChannel, BdevError, ChannelBackend, Geometry, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
};
use engine::buf::DmaBuf;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Physical block number meaning "reads as zeroes, nothing stored".
pub const ZERO_PBA: u64 = u64::MAX;
/// Epoch of the writable head's versions after promotion.
pub const HEAD_EPOCH: u64 = u64::MAX;
/// Snapshots kept by default.
pub const KEEP_LAST_DEFAULT: usize = 8;
/// First block of metadata area 0.
const META_AREA_START: u64 = 2;
const REC_MAGIC: u32 = 0x444d_5342; // "BSMD"
const REC_HDR_BYTES: usize = 32;
const KIND_SNAP: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_HEAD: u8 = 3;
const FLAG_RESTORE: u32 = 1;
const FLAG_RETAINED: u32 = 2;

const TAG_MASK: u64 = 0xff << 56;
const TAG_DATA: u64 = 1 << 56;
const TAG_PHASE: u64 = 2 << 56;

/// Options of snapshot mode.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOpts {
    /// Retention: snapshots kept (at least 1). Exported ones are never deleted.
    pub keep_last: usize,
}

impl Default for SnapshotOpts {
    fn default() -> Self {
        SnapshotOpts {
            keep_last: KEEP_LAST_DEFAULT,
        }
    }
}

/// A formed snapshot as `snapshot_list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub epoch: u64,
    pub last_lsn: u64,
    pub rp_lsn: u64,
    pub tag: String,
    pub formed_unix_ms: u64,
    /// Blocks written since the previous retained snapshot.
    pub blocks_written: u64,
    pub exported: bool,
}

/// Snapshot-mode status.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotStatus {
    pub block_size: u32,
    pub volume_blocks: u64,
    pub data_blocks: u64,
    pub free_blocks: u64,
    /// Blocks held by snapshots (all versions) and pending writes.
    pub used_blocks: u64,
    pub pending_blocks: u64,
    /// Data writes submitted and not completed.
    pub inflight_writes: usize,
    pub snapshots: usize,
    pub latest_epoch: u64,
    pub form_phase: &'static str,
    pub meta_used_blocks: u64,
    pub meta_area_blocks: u64,
    pub last_form_ns: u64,
    pub last_form_blocks: u64,
}

struct Snap {
    last_lsn: u64,
    rp_lsn: u64,
    tag: Vec<u8>,
    formed_unix_ms: u64,
    /// Blocks written in (previous retained snapshot, this one], sorted.
    written: Vec<u64>,
    /// Held by exported snapshot bdevs: while more than one reference, the
    /// snapshot is exported and must not be deleted.
    pin: Arc<()>,
}

#[derive(Debug, Clone)]
struct EpochRef {
    epoch: u64,
    last_lsn: u64,
    rp_lsn: u64,
    tag: Vec<u8>,
}

struct PendingWrite {
    lsn: u64,
    lba: u64,
    pba: u64,
}

/// A metadata write in progress: the records, and what becomes true once
/// they are durable.
struct Job {
    ep: Option<EpochRef>,
    /// Blocks freed by the records (deletions): free once durable.
    limbo: Vec<u64>,
    checkpoint: bool,
    started_ns: u64,
    blocks: u64,
}

/// The snapshot forming / metadata state machine.
enum Form {
    Idle,
    /// Restart point received: wait for every earlier data write.
    Drain(EpochRef),
    FlushData(EpochRef),
    WriteMeta(Job),
    FlushMeta(Job),
    WriteSb(Job),
    FlushSb(Job),
}

impl Form {
    fn name(&self) -> &'static str {
        match self {
            Form::Idle => "idle",
            Form::Drain(_) => "drain_writes",
            Form::FlushData(_) => "flush_data",
            Form::WriteMeta(_) => "write_metadata",
            Form::FlushMeta(_) => "flush_metadata",
            Form::WriteSb(_) => "write_superblock",
            Form::FlushSb(_) => "flush_superblock",
        }
    }
}

/// The block allocator over the data bdev: a bitmap (1 = free) with a
/// next-fit cursor, so consecutive allocations are mostly contiguous.
struct Alloc {
    bits: Vec<u64>,
    blocks: u64,
    free: u64,
    cursor: u64,
}

impl Alloc {
    fn new_all_free(blocks: u64) -> Alloc {
        let words = blocks.div_ceil(64) as usize;
        let mut bits = vec![u64::MAX; words];
        if !blocks.is_multiple_of(64) {
            bits[words - 1] = (1u64 << (blocks % 64)) - 1;
        }
        Alloc {
            bits,
            blocks,
            free: blocks,
            cursor: 0,
        }
    }
    fn is_free(&self, b: u64) -> bool {
        self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
    fn take(&mut self, b: u64) {
        debug_assert!(self.is_free(b), "block {b} allocated twice");
        self.bits[(b / 64) as usize] &= !(1 << (b % 64));
        self.free -= 1;
    }
    fn release(&mut self, b: u64) {
        assert!(
            b < self.blocks && !self.is_free(b),
            "block {b} freed twice or out of range"
        );
        self.bits[(b / 64) as usize] |= 1 << (b % 64);
        self.free += 1;
    }
    /// Allocates one run of at most `n` blocks.
    fn run(&mut self, n: u64) -> Option<(u64, u64)> {
        if self.free == 0 {
            return None;
        }
        let words = self.bits.len() as u64;
        for w in (self.cursor / 64..).take(words as usize + 1) {
            let word = self.bits[(w % words) as usize];
            if word != 0 {
                let start = (w % words) * 64 + word.trailing_zeros() as u64;
                let mut len = 0;
                while len < n && start + len < self.blocks && self.is_free(start + len) {
                    self.take(start + len);
                    len += 1;
                }
                self.cursor = start + len;
                return Some((start, len));
            }
        }
        None
    }
}

/// The snapshot-mode engine of one standby volume. Owned by one reactor.
pub struct Snapshot {
    data: Dev,
    meta: Dev,
    sb: Superblock,
    opts: SnapshotOpts,
    versions: BTreeMap<(u64, u64), u64>,
    snaps: BTreeMap<u64, Snap>,
    /// Latest snapshot whose record is durable (what the standby shows).
    formed_epoch: u64,
    alloc: Alloc,
    pending: VecDeque<PendingWrite>,
    inflight_writes: usize,
    form: Form,
    phase_pending: usize,
    deletes: Vec<u64>,
    last_epoch_seen: u64,
    last_rp_last_lsn: u64,
    /// A skipped hole and the block sync covering it (`crate::sync_skip`).
    skip: SyncSkip,
    /// Restart points dropped inside a skipped sync.
    rps_dropped: u64,
    area_blocks: u64,
    log_pos: u64,
    next_seq: u64,
    failing: bool,
    /// Blocks of the pending writes the last rollback dropped.
    rolled_back: Vec<(u64, u64)>,
    failed_over: bool,
    error: Option<String>,
    last_form_ns: u64,
    last_form_blocks: u64,
    head: Option<Arc<HeadBdev>>,
    /// Completions of one poll (kept for its capacity).
    done: Vec<IoCompletion>,
}

impl Snapshot {
    /// Formats the metadata bdev (empty map, no snapshot). Management path.
    pub(crate) fn format(meta: &mut Dev, data: &Dev, volume_blocks: u64) -> Result<Superblock, StandbyError> {
        check_geometry(meta, data, volume_blocks)?;
        let mut sb = Superblock::new(Mode::Snapshot, volume_blocks, meta.block_size);
        // Void area 0's first record so an old journal is never replayed.
        meta.sync_write(META_AREA_START, DmaBuf::alloc(meta.block_size as usize))?;
        for seq in [1, 2] {
            sb.seq = seq;
            meta.sync_write(sb.slot(), sb.encode())?;
        }
        meta.sync_flush()?;
        Ok(sb)
    }

    /// Opens (recovers) the engine: replays the journal, rebuilds the
    /// allocator. Management path.
    pub(crate) fn open(data: Dev, mut meta: Dev, sb: Superblock, opts: SnapshotOpts) -> Result<Snapshot, StandbyError> {
        check_geometry(&meta, &data, sb.volume_blocks)?;
        let area_blocks = (meta.num_blocks - META_AREA_START) / 2;
        let bs = meta.block_size as usize;
        let mut s = Snapshot {
            alloc: Alloc::new_all_free(data.num_blocks),
            data,
            opts: SnapshotOpts {
                keep_last: opts.keep_last.max(1),
            },
            versions: BTreeMap::new(),
            snaps: BTreeMap::new(),
            formed_epoch: 0,
            pending: VecDeque::new(),
            inflight_writes: 0,
            form: Form::Idle,
            phase_pending: 0,
            deletes: Vec::new(),
            last_epoch_seen: 0,
            skip: SyncSkip::None,
            rps_dropped: 0,
            last_rp_last_lsn: 0,
            area_blocks,
            log_pos: 0,
            next_seq: sb.meta_start_seq,
            failing: false,
            rolled_back: Vec::new(),
            failed_over: sb.promoted,
            error: None,
            last_form_ns: 0,
            last_form_blocks: 0,
            head: None,
            done: Vec::new(),
            meta: Dev::open(meta.bdev.clone())?,
            sb,
        };
        let area_start = META_AREA_START + s.sb.meta_area as u64 * area_blocks;
        loop {
            if s.log_pos >= area_blocks {
                break;
            }
            let first = meta.sync_read(area_start + s.log_pos, 1)?;
            let Some((kind, len)) = parse_rec_header(&first, s.next_seq) else {
                break;
            };
            let blocks = (REC_HDR_BYTES + len).div_ceil(bs) as u64;
            if s.log_pos + blocks > area_blocks {
                break;
            }
            let rec = if blocks == 1 {
                first
            } else {
                meta.sync_read(area_start + s.log_pos, blocks as u32)?
            };
            if !rec_crc_ok(&rec[..REC_HDR_BYTES + len]) {
                break;
            }
            s.replay(kind, &rec[REC_HDR_BYTES..REC_HDR_BYTES + len])?;
            s.log_pos += blocks;
            s.next_seq += 1;
        }
        drop(meta);
        // Rebuild the allocator from the map.
        for &pba in s.versions.values() {
            if pba != ZERO_PBA {
                if pba >= s.alloc.blocks || !s.alloc.is_free(pba) {
                    return Err(StandbyError::Corrupt(format!(
                        "physical block {pba} mapped twice or beyond the data bdev"
                    )));
                }
                s.alloc.take(pba);
            }
        }
        s.formed_epoch = s.snaps.keys().next_back().copied().unwrap_or(0);
        s.last_epoch_seen = s.formed_epoch.max(s.last_epoch_seen);
        if let Some(sn) = s.snaps.get(&s.formed_epoch) {
            s.last_rp_last_lsn = sn.last_lsn;
        }
        Ok(s)
    }

    fn replay(&mut self, kind: u8, p: &[u8]) -> Result<(), StandbyError> {
        let bad = |what: &str| StandbyError::Corrupt(format!("metadata record: {what}"));
        let mut r = Reader { p, at: 0 };
        match kind {
            KIND_SNAP => {
                let epoch = r.u64().ok_or_else(|| bad("short snapshot record"))?;
                let last_lsn = r.u64().ok_or_else(|| bad("short"))?;
                let rp_lsn = r.u64().ok_or_else(|| bad("short"))?;
                let formed = r.u64().ok_or_else(|| bad("short"))?;
                let flags = r.u64().ok_or_else(|| bad("short"))? as u32;
                let tag_len = r.u64().ok_or_else(|| bad("short"))? as usize;
                let n = r.u64().ok_or_else(|| bad("short"))? as usize;
                let nw = r.u64().ok_or_else(|| bad("short"))? as usize;
                let tag = r.bytes(tag_len.div_ceil(8) * 8).ok_or_else(|| bad("short tag"))?[..tag_len].to_vec();
                let mut entries = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    let lba = r.u64().ok_or_else(|| bad("short entries"))?;
                    let pba = r.u64().ok_or_else(|| bad("short entries"))?;
                    entries.push((lba, pba));
                }
                let mut written = Vec::with_capacity(nw.min(1 << 20));
                for _ in 0..nw {
                    written.push(r.u64().ok_or_else(|| bad("short written list"))?);
                }
                let info = EpochRef {
                    epoch,
                    last_lsn,
                    rp_lsn,
                    tag,
                };
                if flags & FLAG_RESTORE != 0 {
                    for &(lba, pba) in &entries {
                        self.versions.insert((lba, epoch), pba);
                    }
                    if flags & FLAG_RETAINED != 0 {
                        self.snaps.insert(epoch, new_snap(&info, formed, written));
                    }
                    if epoch != HEAD_EPOCH {
                        self.last_epoch_seen = self.last_epoch_seen.max(epoch);
                    }
                } else {
                    self.commit_snapshot(&info, formed, &entries);
                }
            }
            KIND_DELETE => {
                let epoch = r.u64().ok_or_else(|| bad("short delete record"))?;
                self.delete_mem(epoch);
            }
            KIND_HEAD => {
                let n = r.u64().ok_or_else(|| bad("short head record"))? as usize;
                for _ in 0..n {
                    let lba = r.u64().ok_or_else(|| bad("short head entries"))?;
                    let pba = r.u64().ok_or_else(|| bad("short head entries"))?;
                    self.versions.insert((lba, HEAD_EPOCH), pba);
                }
            }
            k => return Err(bad(&format!("unknown kind {k}"))),
        }
        Ok(())
    }

    /// Adds snapshot `ep` with its map delta (in memory).
    fn commit_snapshot(&mut self, ep: &EpochRef, formed_unix_ms: u64, entries: &[(u64, u64)]) {
        for &(lba, pba) in entries {
            self.versions.insert((lba, ep.epoch), pba);
        }
        let mut written: Vec<u64> = entries.iter().map(|e| e.0).collect();
        written.sort_unstable();
        written.dedup();
        self.snaps.insert(ep.epoch, new_snap(ep, formed_unix_ms, written));
        self.last_epoch_seen = self.last_epoch_seen.max(ep.epoch);
    }

    /// Removes snapshot `s` from the map (in memory); returns the physical
    /// blocks only it held.
    fn delete_mem(&mut self, s: u64) -> Vec<u64> {
        let prev = self.snaps.range(..s).next_back().map(|(&e, _)| e);
        let Some(next) = self.snaps.range(s + 1..).next().map(|(&e, _)| e) else {
            return Vec::new(); // the latest is never deleted
        };
        let Some(gone) = self.snaps.remove(&s) else {
            return Vec::new();
        };
        let mut freed = Vec::new();
        let next_written = std::mem::take(&mut self.snaps.get_mut(&next).expect("next exists").written);
        for &lba in &next_written {
            let Some((&(_, e), &pba)) = self.versions.range((lba, 0)..=(lba, s)).next_back() else {
                continue;
            };
            let n = self
                .versions
                .range((lba, s + 1)..=(lba, u64::MAX))
                .next()
                .map(|(&(_, e2), _)| e2);
            if n.is_some_and(|n| n <= next) && prev.is_none_or(|p| e > p) {
                self.versions.remove(&(lba, e));
                if pba != ZERO_PBA {
                    freed.push(pba);
                }
            }
        }
        self.snaps.get_mut(&next).expect("next exists").written = merge_sorted(&gone.written, &next_written);
        freed
    }

    pub(crate) fn generation(&self) -> u64 {
        self.sb.generation
    }
    pub(crate) fn promoted(&self) -> bool {
        self.sb.promoted
    }

    /// The LSN the receiver should deliver next after open: pending writes
    /// were not journaled, so everything after the last snapshot comes again.
    pub(crate) fn block_size(&self) -> u32 {
        self.data.block_size
    }

    pub(crate) fn resume_lsn(&self) -> u64 {
        self.snaps.get(&self.formed_epoch).map(|s| s.last_lsn).unwrap_or(0) + 1
    }

    pub(crate) fn applied(&self) -> (u64, u64, u64, Vec<u8>) {
        match self.snaps.get(&self.formed_epoch) {
            Some(s) => (self.formed_epoch, s.last_lsn, s.rp_lsn, s.tag.clone()),
            None => (0, 0, 0, Vec::new()),
        }
    }

    pub(crate) fn formed_epoch(&self) -> u64 {
        self.formed_epoch
    }

    pub(crate) fn durable_lsn(&self) -> u64 {
        self.snaps.get(&self.formed_epoch).map(|s| s.last_lsn).unwrap_or(0)
    }

    pub(crate) fn last_epoch_seen(&self) -> u64 {
        self.last_epoch_seen
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub(crate) fn failed_over(&self) -> bool {
        self.failed_over
    }

    /// True when nothing is in flight and no snapshot is being formed.
    pub(crate) fn idle(&self) -> bool {
        matches!(self.form, Form::Idle) && self.inflight_writes == 0 && self.phase_pending == 0
    }

    pub(crate) fn declare_failure(&mut self) {
        if !self.failed_over {
            self.failing = true;
        }
    }

    /// Takes the next op in LSN order; `Err(op)` means "not now" (a snapshot
    /// is being formed, or the data bdev is full), or an error when given.
    // The Err hands the op back by value: boxing it would allocate on every
    // refusal (back-pressure is a hot path too).
    #[allow(clippy::result_large_err)]
    pub(crate) fn take(&mut self, op: OwnedOp) -> Result<(), (OwnedOp, Option<StandbyError>)> {
        if self.error.is_some() || self.failed_over || !matches!(self.form, Form::Idle) {
            return Err((op, None));
        }
        match op.body {
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
            } => {
                if offset_blocks
                    .checked_add(num_blocks as u64)
                    .is_none_or(|e| e > self.sb.volume_blocks)
                {
                    let e = StandbyError::OutOfRange {
                        lsn: op.lsn,
                        offset_blocks,
                        num_blocks,
                        volume_blocks: self.sb.volume_blocks,
                    };
                    self.error = Some(e.to_string());
                    return Err((op, Some(e)));
                }
            }
            OpBody::RestartPoint { .. } | OpBody::Sync { .. } => {}
        }
        match op.body {
            OpBody::Write {
                offset_blocks,
                num_blocks,
                data,
            } => {
                let n = num_blocks as u64;
                if self.alloc.free < n {
                    if self.inflight_writes == 0 && self.deletes.is_empty() {
                        let e = StandbyError::NoSpace {
                            needed: n,
                            free: self.alloc.free,
                        };
                        self.error = Some(e.to_string());
                    }
                    return Err((
                        OwnedOp {
                            lsn: op.lsn,
                            generation: op.generation,
                            body: OpBody::Write {
                                offset_blocks,
                                num_blocks,
                                data,
                            },
                        },
                        None,
                    ));
                }
                let bs = self.data.block_size as usize;
                let mut done = 0u64;
                let mut whole = Some(data.0);
                while done < n {
                    let (pba, len) = self.alloc.run(n - done).expect("free count checked");
                    for i in 0..len {
                        self.pending.push_back(PendingWrite {
                            lsn: op.lsn,
                            lba: offset_blocks + done + i,
                            pba: pba + i,
                        });
                    }
                    let buf = if done == 0 && len == n {
                        whole.take().expect("whole buffer used once")
                    } else {
                        let src = whole.as_ref().expect("split writes copy from the whole buffer");
                        let mut b = DmaBuf::recycled(len as usize * bs);
                        b.copy_from_slice(&src[done as usize * bs..(done + len) as usize * bs]);
                        b
                    };
                    self.data.write(pba, buf, TAG_DATA);
                    self.inflight_writes += 1;
                    done += len;
                }
                Ok(())
            }
            OpBody::WriteZeroes {
                offset_blocks,
                num_blocks,
            }
            | OpBody::Deallocate {
                offset_blocks,
                num_blocks,
            } => {
                for i in 0..num_blocks as u64 {
                    self.pending.push_back(PendingWrite {
                        lsn: op.lsn,
                        lba: offset_blocks + i,
                        pba: ZERO_PBA,
                    });
                }
                Ok(())
            }
            OpBody::RestartPoint {
                epoch,
                last_lsn,
                ref tag,
            } => {
                if epoch <= self.last_epoch_seen {
                    return Ok(()); // delivered again after a restart
                }
                let verdict = self.skip.on_rp();
                if verdict == RpVerdict::Drop {
                    // Inside a skipped sync: no snapshot of an image that is not the
                    // primary's (sync_skip.rs); the writes stay pending.
                    self.rps_dropped += 1;
                    return Ok(());
                }
                if !sync_skip::epoch_in_order(verdict, epoch, last_lsn, self.last_epoch_seen, self.last_rp_last_lsn) {
                    let e = StandbyError::EpochOrder {
                        epoch,
                        expected: self.last_epoch_seen + 1,
                        last_lsn,
                        prev_last_lsn: self.last_rp_last_lsn,
                    };
                    self.error = Some(e.to_string());
                    return Err((op, Some(e)));
                }
                self.last_epoch_seen = epoch;
                self.last_rp_last_lsn = last_lsn;
                self.form = Form::Drain(EpochRef {
                    epoch,
                    last_lsn,
                    rp_lsn: op.lsn,
                    tag: tag.clone(),
                });
                Ok(())
            }
            OpBody::Sync { mark, skipped } => {
                // Kept in memory only: a restart resumes at the last snapshot, before the
                // hole, and skips it again.
                self.skip.on_mark(mark, op.lsn, skipped);
                if skipped && self.formed_epoch == 0 {
                    self.skip.never_applied();
                }
                Ok(())
            }
        }
    }

    /// The skipped-hole state and the restart points it dropped.
    pub(crate) fn sync_skip(&self) -> (SyncSkip, u64) {
        (self.skip, self.rps_dropped)
    }

    pub(crate) fn poll(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.done);
        let mut busy = self.data.poll(&mut |c| done.push(c)) > 0;
        busy |= self.meta.poll(&mut |c| done.push(c)) > 0;
        for c in done.drain(..) {
            if let Err(e) = &c.result {
                self.error = Some(format!("I/O failed: {e}"));
            }
            match c.user_data & TAG_MASK {
                TAG_DATA => self.inflight_writes -= 1,
                TAG_PHASE => self.phase_pending -= 1,
                _ => log::error!("standby: completion with unknown tag {:#x}", c.user_data),
            }
        }
        self.done = done;
        busy |= self.advance();
        busy
    }

    fn advance(&mut self) -> bool {
        let mut moved = false;
        while self.phase_pending == 0 && self.error.is_none() {
            let next = match std::mem::replace(&mut self.form, Form::Idle) {
                Form::Idle => {
                    if self.failing && self.inflight_writes == 0 {
                        self.rollback();
                        break;
                    } else if !self.deletes.is_empty() && self.inflight_writes == 0 && self.head.is_none() {
                        match self.build_job(None) {
                            Ok(j) => Form::WriteMeta(j),
                            Err(e) => {
                                self.error = Some(e.to_string());
                                break;
                            }
                        }
                    } else {
                        break;
                    }
                }
                Form::Drain(ep) => {
                    if self.inflight_writes > 0 {
                        self.form = Form::Drain(ep);
                        break;
                    }
                    self.data.flush(TAG_PHASE);
                    self.phase_pending += 1;
                    Form::FlushData(ep)
                }
                Form::FlushData(ep) => match self.build_job(Some(ep)) {
                    Ok(j) => Form::WriteMeta(j),
                    Err(e) => {
                        self.error = Some(e.to_string());
                        break;
                    }
                },
                Form::WriteMeta(j) => {
                    self.meta.flush(TAG_PHASE);
                    self.phase_pending += 1;
                    Form::FlushMeta(j)
                }
                Form::FlushMeta(j) => {
                    if j.checkpoint {
                        self.sb.seq += 1;
                        self.meta.write(self.sb.slot(), self.sb.encode(), TAG_PHASE);
                        self.phase_pending += 1;
                        Form::WriteSb(j)
                    } else {
                        self.finish_job(j);
                        Form::Idle
                    }
                }
                Form::WriteSb(j) => {
                    self.meta.flush(TAG_PHASE);
                    self.phase_pending += 1;
                    Form::FlushSb(j)
                }
                Form::FlushSb(j) => {
                    self.finish_job(j);
                    Form::Idle
                }
            };
            self.form = next;
            moved = true;
        }
        moved
    }

    /// Builds and submits the metadata records of a snapshot (and/or the
    /// requested deletions); applies them to the in-memory map.
    fn build_job(&mut self, ep: Option<EpochRef>) -> Result<Job, StandbyError> {
        let started_ns = engine::clock::now_ns();
        let mut recs: Vec<u8> = Vec::new();
        let mut limbo = Vec::new();
        let mut blocks = 0;
        if let Some(ep) = &ep {
            // Fold the epoch's pending writes: last write of a block wins.
            let k = self.pending.partition_point(|p| p.lsn <= ep.last_lsn);
            let mut last: HashMap<u64, u64> = HashMap::with_capacity(k);
            for p in self.pending.drain(..k) {
                if let Some(old) = last.insert(p.lba, p.pba) {
                    if old != ZERO_PBA {
                        self.alloc.release(old);
                    }
                }
            }
            let mut entries: Vec<(u64, u64)> = last.into_iter().collect();
            entries.sort_unstable();
            blocks = entries.len() as u64;
            let formed = unix_ms();
            encode_snap(
                &mut recs,
                self.meta.block_size as usize,
                self.next_seq,
                ep,
                formed,
                0,
                &entries,
                &[],
            );
            self.next_seq += 1;
            self.commit_snapshot(ep, formed, &entries);
            // Retention: oldest first, never the latest, never exported.
            let excess = self.snaps.len().saturating_sub(self.opts.keep_last);
            let old: Vec<u64> = self
                .snaps
                .iter()
                .take(self.snaps.len() - 1)
                .filter(|(&e, s)| Arc::strong_count(&s.pin) == 1 && e != self.formed_epoch)
                .map(|(&e, _)| e)
                .take(excess)
                .collect();
            for e in old {
                if !self.deletes.contains(&e) {
                    self.deletes.push(e);
                }
            }
        }
        for e in std::mem::take(&mut self.deletes) {
            // Never the snapshot shown now, nor the newest (being formed).
            if !self.snaps.contains_key(&e) || e == self.formed_epoch || Some(&e) == self.snaps.keys().next_back() {
                continue;
            }
            encode_delete(&mut recs, self.meta.block_size as usize, self.next_seq, e);
            self.next_seq += 1;
            limbo.extend(self.delete_mem(e));
        }
        let bs = self.meta.block_size as usize;
        let rec_blocks = (recs.len() / bs) as u64;
        let mut checkpoint = false;
        if self.log_pos + rec_blocks > self.area_blocks {
            // The active area is full: write the whole state to the other one.
            recs.clear();
            let first_seq = self.next_seq;
            self.encode_checkpoint(&mut recs);
            let ck_blocks = (recs.len() / bs) as u64;
            if ck_blocks > self.area_blocks {
                return Err(StandbyError::MetadataFull(format!(
                    "a checkpoint needs {ck_blocks} blocks, an area holds {}",
                    self.area_blocks
                )));
            }
            self.sb.meta_area ^= 1;
            self.sb.meta_start_seq = first_seq;
            self.log_pos = 0;
            checkpoint = true;
        }
        let area_start = META_AREA_START + self.sb.meta_area as u64 * self.area_blocks;
        if !recs.is_empty() {
            let nblocks = (recs.len() / bs) as u64;
            let mut b = DmaBuf::recycled(recs.len());
            b.copy_from_slice(&recs);
            self.meta.write(area_start + self.log_pos, b, TAG_PHASE);
            self.phase_pending += 1;
            self.log_pos += nblocks;
        }
        Ok(Job {
            ep,
            limbo,
            checkpoint,
            started_ns,
            blocks,
        })
    }

    fn encode_checkpoint(&mut self, out: &mut Vec<u8>) {
        let mut by_epoch: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for (&(lba, e), &pba) in &self.versions {
            by_epoch.entry(e).or_default().push((lba, pba));
        }
        for &e in self.snaps.keys() {
            by_epoch.entry(e).or_default();
        }
        for (e, entries) in by_epoch {
            let (info, formed, written, flags) = match self.snaps.get(&e) {
                Some(s) => (
                    EpochRef {
                        epoch: e,
                        last_lsn: s.last_lsn,
                        rp_lsn: s.rp_lsn,
                        tag: s.tag.clone(),
                    },
                    s.formed_unix_ms,
                    s.written.clone(),
                    FLAG_RESTORE | FLAG_RETAINED,
                ),
                None => (
                    EpochRef {
                        epoch: e,
                        last_lsn: 0,
                        rp_lsn: 0,
                        tag: Vec::new(),
                    },
                    0,
                    Vec::new(),
                    FLAG_RESTORE,
                ),
            };
            encode_snap(
                out,
                self.meta.block_size as usize,
                self.next_seq,
                &info,
                formed,
                flags,
                &entries,
                &written,
            );
            self.next_seq += 1;
        }
    }

    fn finish_job(&mut self, j: Job) {
        for b in j.limbo {
            self.alloc.release(b);
        }
        if let Some(ep) = j.ep {
            self.formed_epoch = ep.epoch;
            self.last_form_ns = engine::clock::now_ns().saturating_sub(j.started_ns);
            self.last_form_blocks = j.blocks;
            log::debug!("standby: snapshot {} formed ({} blocks)", ep.epoch, j.blocks);
        }
    }

    /// R14: release every block written since the last snapshot.
    fn rollback(&mut self) {
        // What the rollback drops: a failback treats these blocks as changed.
        self.rolled_back.extend(self.pending.iter().map(|p| (p.lba, 1)));
        for p in self.pending.drain(..) {
            if p.pba != ZERO_PBA {
                self.alloc.release(p.pba);
            }
        }
        self.last_epoch_seen = self.formed_epoch;
        self.last_rp_last_lsn = self.snaps.get(&self.formed_epoch).map(|s| s.last_lsn).unwrap_or(0);
        self.failing = false;
        self.failed_over = true;
        log::info!("standby: rolled back to snapshot {}", self.formed_epoch);
    }

    /// Blocks of the pending writes the rollback dropped (since this open).
    pub(crate) fn rolled_back(&self) -> &[(u64, u64)] {
        &self.rolled_back
    }

    pub(crate) fn list(&self) -> Vec<SnapshotInfo> {
        self.snaps
            .range(..=self.formed_epoch)
            .map(|(&e, s)| SnapshotInfo {
                epoch: e,
                last_lsn: s.last_lsn,
                rp_lsn: s.rp_lsn,
                tag: String::from_utf8_lossy(&s.tag).into_owned(),
                formed_unix_ms: s.formed_unix_ms,
                blocks_written: s.written.len() as u64,
                exported: Arc::strong_count(&s.pin) > 1,
            })
            .collect()
    }

    pub(crate) fn request_delete(&mut self, epoch: u64) -> Result<(), StandbyError> {
        let Some(s) = self.snaps.get(&epoch).filter(|_| epoch <= self.formed_epoch) else {
            return Err(StandbyError::NoSnapshot(epoch));
        };
        if epoch == self.formed_epoch {
            return Err(StandbyError::SnapshotBusy {
                epoch,
                why: "it is the latest restart point",
            });
        }
        if Arc::strong_count(&s.pin) > 1 {
            return Err(StandbyError::SnapshotBusy {
                epoch,
                why: "it is exported",
            });
        }
        if self.head.is_some() {
            return Err(StandbyError::Promoted("snapshots are frozen after promotion"));
        }
        if !self.deletes.contains(&epoch) {
            self.deletes.push(epoch);
        }
        Ok(())
    }

    /// The frozen map of snapshot `epoch`: sorted `(lba, pba)`, zero blocks left out.
    fn frozen_map(&self, epoch: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&(lba, e), &pba) in &self.versions {
            if e > epoch {
                continue;
            }
            if out.last().is_some_and(|l| l.0 == lba) {
                out.pop();
            }
            out.push((lba, pba));
        }
        out.retain(|e| e.1 != ZERO_PBA);
        out
    }

    pub(crate) fn export(&mut self, epoch: u64, name: &str) -> Result<Arc<dyn Bdev>, StandbyError> {
        let Some(s) = self.snaps.get(&epoch).filter(|_| epoch <= self.formed_epoch) else {
            return Err(StandbyError::NoSnapshot(epoch));
        };
        let pin = s.pin.clone();
        let map = Arc::new(self.frozen_map(epoch));
        Ok(Arc::new(SnapshotBdev {
            name: name.to_string(),
            uuid: engine::bdev::new_uuid(),
            block_size: self.data.block_size,
            num_blocks: self.sb.volume_blocks,
            data: self.data.bdev.clone(),
            map,
            _pin: pin,
            stats: StatsSet::default(),
        }))
    }

    /// Promotion (after failover): persists the generation and returns the
    /// writable head over the last snapshot. Management path.
    pub(crate) fn promote(&mut self, generation: u64, name: &str) -> Result<Arc<dyn Bdev>, StandbyError> {
        if !self.failed_over {
            return Err(StandbyError::NotFailedOver);
        }
        self.data.drain();
        self.meta.drain();
        self.sb.promoted = true;
        self.sb.generation = generation;
        self.sb.seq += 1;
        self.meta.sync_write(self.sb.slot(), self.sb.encode())?;
        self.meta.sync_flush()?;
        self.open_head(name)
    }

    /// The writable head of a promoted volume (also after a restart).
    pub(crate) fn open_head(&mut self, name: &str) -> Result<Arc<dyn Bdev>, StandbyError> {
        if !self.sb.promoted {
            return Err(StandbyError::NotFailedOver);
        }
        if let Some(h) = &self.head {
            return Ok(h.clone());
        }
        // The head starts as the latest snapshot plus the head versions
        // journaled since promotion.
        let mut map: HashMap<u64, (u64, bool)> = HashMap::new();
        for (lba, pba) in self.frozen_map(self.formed_epoch) {
            map.insert(lba, (pba, false));
        }
        for (&(lba, e), &pba) in &self.versions {
            if e == HEAD_EPOCH {
                map.insert(lba, (pba, true));
            }
        }
        let st = HeadState {
            map,
            alloc: std::mem::replace(&mut self.alloc, Alloc::new_all_free(1)),
            dirty: Vec::new(),
            limbo: Vec::new(),
            log_pos: self.log_pos,
            next_seq: self.next_seq,
            area_start: META_AREA_START + self.sb.meta_area as u64 * self.area_blocks,
            area_blocks: self.area_blocks,
        };
        let h = Arc::new(HeadBdev {
            name: name.to_string(),
            uuid: engine::bdev::new_uuid(),
            block_size: self.data.block_size,
            num_blocks: self.sb.volume_blocks,
            data: self.data.bdev.clone(),
            meta: self.meta.bdev.clone(),
            state: Arc::new(Mutex::new(Some(st))),
            stats: StatsSet::default(),
        });
        self.head = Some(h.clone());
        Ok(h)
    }

    pub(crate) fn status(&self) -> SnapshotStatus {
        SnapshotStatus {
            block_size: self.data.block_size,
            volume_blocks: self.sb.volume_blocks,
            data_blocks: self.alloc.blocks,
            free_blocks: self.alloc.free,
            used_blocks: self.alloc.blocks - self.alloc.free,
            pending_blocks: self.pending.len() as u64,
            inflight_writes: self.inflight_writes,
            snapshots: self.snaps.range(..=self.formed_epoch).count(),
            latest_epoch: self.formed_epoch,
            form_phase: self.form.name(),
            meta_used_blocks: self.log_pos,
            meta_area_blocks: self.area_blocks,
            last_form_ns: self.last_form_ns,
            last_form_blocks: self.last_form_blocks,
        }
    }
}

fn new_snap(ep: &EpochRef, formed_unix_ms: u64, written: Vec<u64>) -> Snap {
    Snap {
        last_lsn: ep.last_lsn,
        rp_lsn: ep.rp_lsn,
        tag: ep.tag.clone(),
        formed_unix_ms,
        written,
        pin: Arc::new(()),
    }
}

fn merge_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let v = if j >= b.len() || (i < a.len() && a[i] <= b[j]) {
            i += 1;
            a[i - 1]
        } else {
            j += 1;
            b[j - 1]
        };
        if out.last() != Some(&v) {
            out.push(v);
        }
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_geometry(meta: &Dev, data: &Dev, volume_blocks: u64) -> Result<(), StandbyError> {
    if meta.block_size != data.block_size {
        return Err(StandbyError::Geometry(format!(
            "metadata bdev {} has {}-byte blocks, data bdev {} has {}: they must match",
            meta.name(),
            meta.block_size,
            data.name(),
            data.block_size
        )));
    }
    if meta.num_blocks < META_AREA_START + 4 {
        return Err(StandbyError::Geometry(format!(
            "metadata bdev {} has {} blocks: too small",
            meta.name(),
            meta.num_blocks
        )));
    }
    if volume_blocks == 0 {
        return Err(StandbyError::Geometry("volume_blocks must be > 0".into()));
    }
    Ok(())
}

struct Reader<'a> {
    p: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let b = self.p.get(self.at..self.at + 8)?;
        self.at += 8;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.p.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }
}

/// Appends one record (header + payload, padded to blocks) to `out`.
fn push_record(out: &mut Vec<u8>, kind: u8, seq: u64, payload: &[u8], bs: usize) {
    let start = out.len();
    out.extend_from_slice(&REC_MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // crc, filled below
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
    let len = out.len() - start;
    out.resize(start + len.div_ceil(bs) * bs, 0);
}

fn rec_crc_ok(rec: &[u8]) -> bool {
    let want = u32::from_le_bytes(rec[20..24].try_into().expect("4 bytes"));
    let mut c = crc32c::crc32c(&rec[..20]);
    c = crc32c::crc32c_append(c, &[0; 4]);
    c = crc32c::crc32c_append(c, &rec[24..]);
    c == want
}

fn parse_rec_header(b: &[u8], seq: u64) -> Option<(u8, usize)> {
    if u32::from_le_bytes(b[0..4].try_into().ok()?) != REC_MAGIC {
        return None;
    }
    if u64::from_le_bytes(b[8..16].try_into().ok()?) != seq {
        return None;
    }
    Some((b[4], u32::from_le_bytes(b[16..20].try_into().ok()?) as usize))
}

#[allow(clippy::too_many_arguments)]
fn encode_snap(
    out: &mut Vec<u8>,
    bs: usize,
    seq: u64,
    ep: &EpochRef,
    formed: u64,
    flags: u32,
    entries: &[(u64, u64)],
    written: &[u64],
) {
    let mut p = Vec::with_capacity(64 + ep.tag.len() + entries.len() * 16 + written.len() * 8);
    for v in [
        ep.epoch,
        ep.last_lsn,
        ep.rp_lsn,
        formed,
        flags as u64,
        ep.tag.len() as u64,
        entries.len() as u64,
        written.len() as u64,
    ] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(&ep.tag);
    p.resize(p.len() + (8 - ep.tag.len() % 8) % 8, 0);
    for &(l, b) in entries {
        p.extend_from_slice(&l.to_le_bytes());
        p.extend_from_slice(&b.to_le_bytes());
    }
    for &w in written {
        p.extend_from_slice(&w.to_le_bytes());
    }
    push_record(out, KIND_SNAP, seq, &p, bs);
}

fn encode_delete(out: &mut Vec<u8>, bs: usize, seq: u64, epoch: u64) {
    push_record(out, KIND_DELETE, seq, &epoch.to_le_bytes(), bs);
}

fn encode_head(out: &mut Vec<u8>, bs: usize, seq: u64, entries: &[(u64, u64)]) {
    let mut p = Vec::with_capacity(8 + entries.len() * 16);
    p.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for &(l, b) in entries {
        p.extend_from_slice(&l.to_le_bytes());
        p.extend_from_slice(&b.to_le_bytes());
    }
    push_record(out, KIND_HEAD, seq, &p, bs);
}

// ---------------------------------------------------------------------------
// Read-only snapshot bdev and the writable head.

/// Requests a snapshot/head channel keeps in flight.
const VCHANNEL_DEPTH: usize = 256;

/// A read-only bdev showing one snapshot (DR drills while replication goes
/// on). The map is frozen at export; the snapshot is pinned (not deleted)
/// while this bdev lives. Reads are split by physical run; each run reads
/// into its own buffer (allocated: this is a drill path, not the data path).
pub struct SnapshotBdev {
    name: String,
    uuid: [u8; 16],
    block_size: u32,
    num_blocks: u64,
    data: Arc<dyn Bdev>,
    map: Arc<Vec<(u64, u64)>>,
    _pin: Arc<()>,
    stats: StatsSet,
}

impl Bdev for SnapshotBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "Standby snapshot"
    }
    fn driver(&self) -> &'static str {
        "standby_snapshot"
    }
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn supports(&self, op: IoOp) -> bool {
        matches!(op, IoOp::Read | IoOp::Flush)
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let map = self.map.clone();
        let lookup: MapFn = Box::new(move |lba| match map.binary_search_by_key(&lba, |e| e.0) {
            Ok(i) => map[i].1,
            Err(_) => ZERO_PBA,
        });
        Ok(BdevChannel::new(
            &self.name,
            Geometry::new(self.block_size, self.num_blocks, 1, &[IoOp::Read, IoOp::Flush]),
            self.stats.new_channel(),
            Box::new(VChannel::new(self.data.open_channel()?, self.block_size, lookup, None)),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
}

type MapFn = Box<dyn Fn(u64) -> u64>;

struct VReq {
    user_data: u64,
    buf: Option<DmaBuf>,
    remaining: usize,
    result: Result<(), BdevError>,
    /// Flush of the head: journal the dirty map after the data flush.
    flush_stage: u8,
    is_read: bool,
    /// Head writes: new mappings, recorded for journaling only once the
    /// request's data is on the data bdev.
    new_maps: Vec<(u64, u64)>,
    /// Head flush: blocks freed by the mappings it journals, reusable once
    /// the journal record is durable.
    release_after: Vec<u64>,
}

/// Channel of a snapshot or head bdev: splits block requests into runs on
/// the data bdev and reassembles them.
struct VChannel {
    data: BdevChannel,
    bs: usize,
    lookup: MapFn,
    head: Option<HeadCtx>,
    reqs: Vec<Option<VReq>>,
    free_slots: Vec<usize>,
    backlog: VecDeque<IoRequest>,
    done: VecDeque<IoCompletion>,
}

/// Sub-request user data: slot in the high half, block offset in the request
/// in the low half; the top bit marks metadata I/O of the head.
const SUB_META: u64 = 1 << 63;

impl VChannel {
    fn new(data: BdevChannel, bs: u32, lookup: MapFn, head: Option<HeadCtx>) -> VChannel {
        VChannel {
            data,
            bs: bs as usize,
            lookup,
            head,
            reqs: (0..VCHANNEL_DEPTH).map(|_| None).collect(),
            free_slots: (0..VCHANNEL_DEPTH).rev().collect(),
            backlog: VecDeque::new(),
            done: VecDeque::new(),
        }
    }

    fn pump(&mut self) {
        while let Some(r) = self.backlog.pop_front() {
            let target = if r.user_data & SUB_META != 0 {
                match self.head.as_mut() {
                    Some(h) => &mut h.meta,
                    None => &mut self.data,
                }
            } else {
                &mut self.data
            };
            if let Err(r) = target.submit(r) {
                self.backlog.push_front(r);
                break;
            }
        }
    }

    fn finish(&mut self, slot: usize) {
        let mut r = self.reqs[slot].take().expect("live slot");
        self.free_slots.push(slot);
        if let Some(h) = self.head.as_mut() {
            if !r.new_maps.is_empty() || !r.release_after.is_empty() {
                let mut st = h.state.take_state();
                if r.result.is_ok() {
                    st.dirty.append(&mut r.new_maps);
                    for b in r.release_after.drain(..) {
                        st.alloc.release(b);
                    }
                } else {
                    // Not journaled: keep the blocks out of use until a later flush.
                    st.limbo.append(&mut r.release_after);
                }
                h.state.put_state(st);
            }
        }
        self.done.push_back(IoCompletion {
            user_data: r.user_data,
            result: r.result,
            buf: r.buf,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn sub(&mut self, op: IoOp, slot: usize, off_in_req: u64, pba: u64, n: u64, buf: Option<DmaBuf>, meta: bool) {
        self.reqs[slot].as_mut().expect("live slot").remaining += 1;
        self.backlog.push_back(IoRequest {
            op,
            offset_blocks: pba,
            num_blocks: n as u32,
            buf,
            user_data: ((slot as u64) << 32) | off_in_req | if meta { SUB_META } else { 0 },
        });
    }

    fn on_sub(&mut self, c: IoCompletion) {
        let slot = ((c.user_data & !SUB_META) >> 32) as usize;
        let off = (c.user_data & 0xffff_ffff) as usize;
        let Some(r) = self.reqs[slot].as_mut() else { return };
        r.remaining -= 1;
        if let Err(e) = c.result {
            r.result = Err(e);
        }
        if let (Some(sub), Some(dst)) = (c.buf, r.buf.as_mut()) {
            if r.is_read {
                let at = off * self.bs;
                if at + sub.len() <= dst.len() {
                    dst[at..at + sub.len()].copy_from_slice(&sub);
                }
            }
        }
        if r.remaining == 0 {
            if r.flush_stage == 1 && r.result.is_ok() {
                // Data flushed: now journal the head map and flush metadata.
                r.flush_stage = 2;
                self.journal_head(slot);
                if self.reqs[slot].as_ref().is_some_and(|r| r.remaining > 0) {
                    return;
                }
            }
            self.finish(slot);
        }
    }

    fn journal_head(&mut self, slot: usize) {
        let bs = self.bs;
        let Some(h) = self.head.as_mut() else { return };
        let mut st = h.state.take_state();
        if st.dirty.is_empty() {
            h.state.put_state(st);
            return;
        }
        let mut recs = Vec::new();
        let mut entries = std::mem::take(&mut st.dirty);
        // Last mapping of a block wins: stable sort keeps submission order.
        entries.sort_by_key(|e| e.0);
        let mut dedup: Vec<(u64, u64)> = Vec::with_capacity(entries.len());
        for e in entries {
            if dedup.last().is_some_and(|l| l.0 == e.0) {
                dedup.pop();
            }
            dedup.push(e);
        }
        encode_head(&mut recs, bs, st.next_seq, &dedup);
        let nblocks = (recs.len() / bs) as u64;
        if st.log_pos + nblocks > st.area_blocks {
            st.dirty = dedup;
            h.state.put_state(st);
            self.reqs[slot].as_mut().expect("live").result = Err(BdevError::Io(
                "standby metadata area full: head map cannot be journaled".into(),
            ));
            return;
        }
        let at = st.area_start + st.log_pos;
        st.log_pos += nblocks;
        st.next_seq += 1;
        let release = std::mem::take(&mut st.limbo);
        h.state.put_state(st);
        self.reqs[slot].as_mut().expect("live").release_after = release;
        let mut b = DmaBuf::recycled(recs.len());
        b.copy_from_slice(&recs);
        self.sub(IoOp::Write, slot, 0, at, nblocks, Some(b), true);
        // Write then flush: queue order on one channel is not completion
        // order, so the flush waits for the write's completion (stage 3).
        self.reqs[slot].as_mut().expect("live").flush_stage = 3;
    }
}

impl ChannelBackend for VChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        let Some(slot) = self.free_slots.pop() else {
            return Err(io);
        };
        self.reqs[slot] = Some(VReq {
            user_data: io.user_data,
            buf: None,
            remaining: 0,
            result: Ok(()),
            flush_stage: 0,
            is_read: io.op == IoOp::Read,
            new_maps: Vec::new(),
            release_after: Vec::new(),
        });
        match io.op {
            IoOp::Read => {
                let mut buf = io.buf.expect("validated: reads carry a buffer");
                let n = io.num_blocks as u64;
                let mut i = 0;
                let mut subs = Vec::new();
                while i < n {
                    let p = (self.lookup)(io.offset_blocks + i);
                    let mut len = 1;
                    while i + len < n {
                        let q = (self.lookup)(io.offset_blocks + i + len);
                        let contiguous = if p == ZERO_PBA { q == ZERO_PBA } else { q == p + len };
                        if !contiguous {
                            break;
                        }
                        len += 1;
                    }
                    if p == ZERO_PBA {
                        buf[i as usize * self.bs..(i + len) as usize * self.bs].fill(0);
                    } else {
                        subs.push((i, p, len));
                    }
                    i += len;
                }
                self.reqs[slot].as_mut().expect("just set").buf = Some(buf);
                for (i, p, len) in subs {
                    let b = DmaBuf::recycled(len as usize * self.bs);
                    self.sub(IoOp::Read, slot, i, p, len, Some(b), false);
                }
            }
            IoOp::Write => {
                let buf = io.buf.expect("validated: writes carry a buffer");
                let h = self.head.as_mut().expect("only the head accepts writes");
                let mut st = h.state.take_state();
                let n = io.num_blocks as u64;
                let mut writes = Vec::new();
                let mut new_maps = Vec::new();
                let mut failed = false;
                for i in 0..n {
                    let lba = io.offset_blocks + i;
                    let pba = match st.map.get(&lba) {
                        Some(&(p, true)) if p != ZERO_PBA => p,
                        _ => match st.alloc.run(1) {
                            Some((p, _)) => {
                                if let Some((old, true)) = st.map.insert(lba, (p, true)) {
                                    if old != ZERO_PBA {
                                        st.alloc.release(old);
                                    }
                                }
                                new_maps.push((lba, p));
                                p
                            }
                            None => {
                                failed = true;
                                break;
                            }
                        },
                    };
                    writes.push((i, pba));
                }
                h.state.put_state(st);
                self.reqs[slot].as_mut().expect("live").new_maps = new_maps;
                if failed {
                    self.reqs[slot].as_mut().expect("live").result =
                        Err(BdevError::Io("standby data bdev is full".into()));
                } else {
                    // Coalesce physically contiguous blocks into runs.
                    let mut k = 0;
                    while k < writes.len() {
                        let (i0, p0) = writes[k];
                        let mut len = 1;
                        while k + (len as usize) < writes.len() && writes[k + len as usize].1 == p0 + len {
                            len += 1;
                        }
                        let mut b = DmaBuf::recycled(len as usize * self.bs);
                        b.copy_from_slice(&buf[i0 as usize * self.bs..(i0 + len) as usize * self.bs]);
                        self.sub(IoOp::Write, slot, i0, p0, len, Some(b), false);
                        k += len as usize;
                    }
                }
                self.reqs[slot].as_mut().expect("live").buf = Some(buf);
            }
            IoOp::WriteZeroes | IoOp::Unmap => {
                let h = self.head.as_mut().expect("only the head accepts writes");
                let mut st = h.state.take_state();
                let mut new_maps = Vec::with_capacity(io.num_blocks as usize);
                for i in 0..io.num_blocks as u64 {
                    let lba = io.offset_blocks + i;
                    if let Some((old, true)) = st.map.insert(lba, (ZERO_PBA, true)) {
                        if old != ZERO_PBA {
                            // The journal may still map lba to it: reusable
                            // only once the zero mapping is journaled.
                            st.limbo.push(old);
                        }
                    }
                    new_maps.push((lba, ZERO_PBA));
                }
                h.state.put_state(st);
                self.reqs[slot].as_mut().expect("live").new_maps = new_maps;
            }
            IoOp::Flush => {
                if self.head.is_some() {
                    self.reqs[slot].as_mut().expect("live").flush_stage = 1;
                    self.sub(IoOp::Flush, slot, 0, 0, 0, None, false);
                }
            }
        }
        if self.reqs[slot].as_ref().is_some_and(|r| r.remaining == 0) {
            self.finish(slot);
        }
        self.pump();
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.pump();
        let mut subs = Vec::new();
        self.data.poll(&mut |c| subs.push(c));
        if let Some(h) = self.head.as_mut() {
            h.meta.poll(&mut |c| subs.push(c));
        }
        for c in subs {
            let slot = ((c.user_data & !SUB_META) >> 32) as usize;
            if self.reqs[slot].as_ref().is_some_and(|r| r.flush_stage == 3) {
                // Head journal write done: flush the metadata bdev.
                let r = self.reqs[slot].as_mut().expect("live");
                r.remaining -= 1;
                if let Err(e) = c.result {
                    r.result = Err(e);
                }
                r.flush_stage = 4;
                self.sub(IoOp::Flush, slot, 0, 0, 0, None, true);
                continue;
            }
            self.on_sub(c);
        }
        self.pump();
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            f(c);
        }
        n
    }
}

/// Head state: owned by the one open channel of the head (taken out of the
/// bdev's mutex when the channel opens, put back when it closes), so the
/// data path takes no lock.
struct HeadState {
    /// lba -> (pba, owned by the head: may be overwritten in place).
    map: HashMap<u64, (u64, bool)>,
    alloc: Alloc,
    /// Head mappings written but not yet journaled (journaled on flush).
    dirty: Vec<(u64, u64)>,
    /// Blocks unmapped by a write-zeroes, reusable after the next journal flush.
    limbo: Vec<u64>,
    log_pos: u64,
    next_seq: u64,
    area_start: u64,
    area_blocks: u64,
}

struct HeadCtx {
    meta: BdevChannel,
    state: StateCell,
}

/// The head state while a channel holds it.
struct StateCell(Option<HeadState>);

impl StateCell {
    fn take_state(&mut self) -> HeadState {
        self.0.take().expect("head state present while the channel lives")
    }
    fn put_state(&mut self, s: HeadState) {
        self.0 = Some(s);
    }
}

/// The writable head of a promoted snapshot-mode volume: the last snapshot,
/// with writes redirected to blocks no snapshot holds (allocate on first
/// write, overwrite in place after), the map journaled on flush (volatile
/// write cache semantics: what was written before a completed flush survives
/// a crash). One channel at a time: the state moves into the channel.
pub struct HeadBdev {
    name: String,
    uuid: [u8; 16],
    block_size: u32,
    num_blocks: u64,
    data: Arc<dyn Bdev>,
    meta: Arc<dyn Bdev>,
    state: Arc<Mutex<Option<HeadState>>>,
    stats: StatsSet,
}

struct HeadChannel {
    inner: VChannel,
    home: Arc<Mutex<Option<HeadState>>>,
}

impl Bdev for HeadBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "Standby promoted head"
    }
    fn driver(&self) -> &'static str {
        "standby_head"
    }
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn supports(&self, _op: IoOp) -> bool {
        true
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let st = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| BdevError::Channel(format!("{}: only one channel may be open on a head", self.name)))?;
        // Reads look blocks up in the state the channel owns (see
        // HeadChannel::submit); the state goes home when the channel closes.
        let home = self.state.clone();
        let inner = VChannel::new(
            self.data.open_channel()?,
            self.block_size,
            Box::new(|_| ZERO_PBA),
            Some(HeadCtx {
                meta: self.meta.open_channel()?,
                state: StateCell(Some(st)),
            }),
        );
        Ok(BdevChannel::new(
            &self.name,
            Geometry::new(self.block_size, self.num_blocks, 1, &IoOp::ALL),
            self.stats.new_channel(),
            Box::new(HeadChannel { inner, home }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
}

impl ChannelBackend for HeadChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        if io.op == IoOp::Read {
            // Reads look the block up in the head's own map.
            let st = self.inner.head.as_mut().expect("head channel").state.take_state();
            let snapshot: Vec<u64> = (0..io.num_blocks as u64)
                .map(|i| st.map.get(&(io.offset_blocks + i)).map(|e| e.0).unwrap_or(ZERO_PBA))
                .collect();
            self.inner.head.as_mut().expect("head channel").state.put_state(st);
            let base = io.offset_blocks;
            self.inner.lookup = Box::new(move |lba| snapshot[(lba - base) as usize]);
        }
        self.inner.submit(io)
    }
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.inner.poll(f)
    }
}

impl Drop for HeadChannel {
    fn drop(&mut self) {
        if let Some(h) = self.inner.head.as_mut() {
            if let Some(st) = h.state.0.take() {
                *self.home.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
            }
        }
    }
}
