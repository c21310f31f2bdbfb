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
use crate::sync_skip::{self, SyncSkip};
use crate::StandbyError;
use engine::bdev::{
    Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
};
use engine::buf::DmaBuf;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

mod bdev;
mod form;
mod head;
mod record;
pub use bdev::SnapshotBdev;
use bdev::*;
use head::*;
use record::*;

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
            info: BdevInfo::new(
                name,
                "Standby snapshot",
                "standby_snapshot",
                engine::bdev::new_uuid(),
                self.data.block_size,
                self.sb.volume_blocks,
                &[IoOp::Read, IoOp::Flush],
            ),
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
        let map = HeadMap::new(self.sb.volume_blocks);
        let alloc = AtomicAlloc::from_alloc(&self.alloc);
        self.alloc = Alloc::new_all_free(1);
        let shared = HeadShared::new(
            map,
            alloc,
            JournalPos {
                log_pos: self.log_pos,
                next_seq: self.next_seq,
                area_start: META_AREA_START + self.sb.meta_area as u64 * self.area_blocks,
                area_blocks: self.area_blocks,
                bs: self.meta.block_size as usize,
            },
        );
        for (lba, pba) in self.frozen_map(self.formed_epoch) {
            shared.init(lba, Entry { pba, owned: false });
        }
        for (&(lba, e), &pba) in &self.versions {
            if e == HEAD_EPOCH {
                shared.init(lba, Entry { pba, owned: true });
            }
        }
        let h = Arc::new(HeadBdev {
            info: BdevInfo::new(
                name,
                "Standby promoted head",
                "standby_head",
                engine::bdev::new_uuid(),
                self.data.block_size,
                self.sb.volume_blocks,
                &IoOp::ALL,
            ),
            data: self.data.bdev.clone(),
            meta: self.meta.bdev.clone(),
            shared: Arc::new(shared),
            stats: StatsSet::default(),
        });
        self.head = Some(h.clone());
        Ok(h)
    }

    pub(crate) fn status(&self) -> SnapshotStatus {
        // After promotion the head's allocator holds the data bdev's blocks.
        let (blocks, free) = match &self.head {
            Some(h) => (h.shared.alloc.blocks(), h.shared.alloc.free()),
            None => (self.alloc.blocks, self.alloc.free),
        };
        SnapshotStatus {
            block_size: self.data.block_size,
            volume_blocks: self.sb.volume_blocks,
            data_blocks: blocks,
            free_blocks: free,
            used_blocks: blocks - free.min(blocks),
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
    meta.check_beside("metadata bdev", data, "data bdev", META_AREA_START + 4)?;
    if volume_blocks == 0 {
        return Err(StandbyError::Geometry("volume_blocks must be > 0".into()));
    }
    Ok(())
}
