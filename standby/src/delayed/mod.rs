//! Delayed-write mode (claims 17-19, R7-R10): writes wait in a non-volatile
//! staging log and reach the volume one whole epoch at a time.
//!
//! Where it sits: [`crate::StandbyVolume`] pops ops in LSN order from the
//! [`crate::receive::Receiver`] and hands them to [`Delayed::take`]; the
//! owning reactor calls [`Delayed::poll`] to move I/O forward.
//!
//! Staging bdev layout (block size = the volume's):
//! - blocks 0 and 1: the [`Superblock`] (A/B copies);
//! - blocks 2..: a circular log of records. A record is one header block
//!   (magic, kind, incarnation, seq, LSN, arguments, CRC32C of its data, the
//!   restart point's tag, CRC32C of the header) followed, for writes, by the
//!   data blocks. A record never wraps: when it does not fit before the end,
//!   a one-block `Pad` record says "continue at the start".
//!
//! The in-memory index ([`Rec`] per record, in seq order) knows every staged
//! record's kind, range and place, and keeps the data of recent records in
//! memory up to a byte budget, so the hot path never reads staging; only an
//! apply after a restart, or of an epoch larger than the budget, reads back.
//! On open the index is rebuilt by scanning from the superblock's tail:
//! records must carry consecutive seqs and the current incarnation and pass
//! both CRCs; the first one that does not ends the log (torn tail cut).
//!
//! Applying epoch N (an [`Apply`] state machine, one phase at a time), once
//! its restart point and every record before it are staged and N-1 is
//! applied: flush staging (so the epoch is durable) -> superblock "applying N"
//! -> flush -> read back uncached data -> write the epoch to the volume
//! (per block the last write of the epoch wins; zeroes and deallocates as
//! write-zeroes / unmap) -> flush volume -> superblock "applied N" with the
//! new tail -> flush -> release the epoch's staging space. A crash anywhere
//! leaves either "applied N-1" (N is applied again from staging later) or
//! "applying N" (redone from the start on open); the writes are absolute, so
//! applying twice gives the same volume.
//!
//! Primary failure ([`Delayed::declare_failure`]): ops already delivered in
//! order are staged, every complete epoch is applied (invariant 3: the standby
//! ends at the newest restart point it fully received), then the rest of
//! staging is discarded by bumping the incarnation, which voids every record.

use crate::io::Dev;
use crate::le;
use crate::receive::{OpBody, OwnedOp};
use crate::superblock::{Mode, Superblock};
use crate::sync_skip::{self, MarkVerdict, RpTake, SyncSkip};
use crate::StandbyError;
use engine::bdev::IoCompletion;
use engine::buf::DmaBuf;
use rdma_transport::wire::SyncMark;
use std::collections::VecDeque;

mod apply;

/// First block of the staging log (blocks 0 and 1 hold the superblock).
pub const LOG_START_BLOCK: u64 = 2;
/// Default bytes of staged data kept in memory for apply.
pub const CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

const REC_MAGIC: u32 = 0x4754_5342; // "BSTG"
const HDR_CRC_AT: usize = 312;
const KIND_WRITE: u8 = 1;
const KIND_ZEROES: u8 = 2;
const KIND_DEALLOC: u8 = 3;
const KIND_RP: u8 = 4;
const KIND_PAD: u8 = 5;
/// A block-sync marker the standby acted on (`crate::sync_skip`); a0/a1 as on the wire.
const KIND_SYNC: u8 = 6;

const TAG_MASK: u64 = 0xff << 56;
const TAG_STAGE: u64 = 1 << 56;
const TAG_READ: u64 = 2 << 56;
const TAG_PHASE: u64 = 3 << 56;
const TAG_BGFLUSH: u64 = 4 << 56;

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecKind {
    Write { offset: u64, n: u32 },
    Zero { offset: u64, n: u32, dealloc: bool },
    Rp { epoch: u64, last_lsn: u64, tag: Vec<u8> },
    Pad,
    Sync { mark: SyncMark },
}

/// One staged record in the index.
struct Rec {
    seq: u64,
    /// 0 for pads.
    lsn: u64,
    /// Logical log position (blocks since the log began; physical is modulo).
    pos: u64,
    kind: RecKind,
    staged: bool,
    /// Cached data and the byte offset where it starts in the buffer.
    data: Option<(DmaBuf, usize)>,
}

/// The restart point an apply works on.
#[derive(Debug, Clone)]
struct EpochRef {
    epoch: u64,
    last_lsn: u64,
    rp_lsn: u64,
    tag: Vec<u8>,
}

/// The apply / discard state machine; each variant waits for its phase's
/// I/O (`phase_pending`) to finish before [`Delayed::advance`] moves on.
enum Apply {
    Idle,
    FlushStaging(EpochRef),
    WriteMarker(EpochRef),
    FlushMarker(EpochRef),
    ReadBack(EpochRef),
    WriteVolume(EpochRef),
    FlushVolume(EpochRef),
    WriteApplied(EpochRef, u64),
    FlushApplied(EpochRef, u64),
    WriteDiscard,
    FlushDiscard,
}

impl Apply {
    fn name(&self) -> &'static str {
        match self {
            Apply::Idle => "idle",
            Apply::FlushStaging(_) => "flush_staging",
            Apply::WriteMarker(_) => "write_applying_marker",
            Apply::FlushMarker(_) => "flush_applying_marker",
            Apply::ReadBack(_) => "read_back",
            Apply::WriteVolume(_) => "write_volume",
            Apply::FlushVolume(_) => "flush_volume",
            Apply::WriteApplied(..) => "write_applied_marker",
            Apply::FlushApplied(..) => "flush_applied_marker",
            Apply::WriteDiscard => "write_discard",
            Apply::FlushDiscard => "flush_discard",
        }
    }
}

/// Options of delayed mode.
#[derive(Debug, Clone, Copy)]
pub struct DelayedOpts {
    /// Bytes of staged data kept in memory (0: always read back).
    pub cache_bytes_max: usize,
}

impl Default for DelayedOpts {
    fn default() -> Self {
        DelayedOpts {
            cache_bytes_max: CACHE_BYTES_DEFAULT,
        }
    }
}

/// Delayed-mode status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DelayedStatus {
    pub staging_records: usize,
    pub staging_used_blocks: u64,
    pub staging_blocks: u64,
    pub cache_bytes: usize,
    /// Staging and volume I/O submitted and not completed.
    pub inflight_ios: usize,
    pub apply_phase: &'static str,
    pub applying_epoch: u64,
    pub epochs_applied: u64,
    pub bytes_applied: u64,
}

/// The delayed-write engine of one standby volume. Owned by one reactor.
pub struct Delayed {
    /// The restart point the volume durably holds: (epoch, last LSN,
    /// restart point LSN, tag). `sb` runs ahead of it while a marker is
    /// being written.
    pub(crate) shown: (u64, u64, u64, Vec<u8>),
    staging: Dev,
    volume: Dev,
    pub(crate) sb: Superblock,
    opts: DelayedOpts,
    recs: VecDeque<Rec>,
    next_seq: u64,
    head: u64,
    tail: u64,
    log_blocks: u64,
    /// Every record with seq below this is staged.
    staged_seq: u64,
    /// LSN of the last record in the staged prefix.
    staged_lsn: u64,
    durable_lsn: u64,
    bg_flush_lsn: Option<u64>,
    /// Restart points in the index: (epoch, seq).
    rps: VecDeque<(u64, u64)>,
    last_epoch_seen: u64,
    last_rp_last_lsn: u64,
    /// A skipped hole and the block sync covering it (`crate::sync_skip`).
    skip: SyncSkip,
    /// Restart points dropped inside a skipped sync.
    rps_dropped: u64,
    cache_bytes: usize,
    apply: Apply,
    phase_pending: usize,
    failing: bool,
    /// Block ranges of the staged writes the last rollback voided.
    rolled_back: Vec<(u64, u64)>,
    failed_over: bool,
    error: Option<String>,
    epochs_applied: u64,
    bytes_applied: u64,
    /// Completions of one poll (kept for its capacity).
    done: Vec<IoCompletion>,
    /// The block map of the epoch being written (kept for its capacity).
    epoch_map: Vec<EpochBlock>,
}

/// Where one volume block of an epoch comes from: `(lba, record index, src)`.
type EpochBlock = (u64, usize, EpochSrc);

#[derive(Clone, Copy, PartialEq)]
enum EpochSrc {
    Data { i: usize, blk: u64 },
    Zero { dealloc: bool },
}

impl Delayed {
    /// Formats the staging bdev (new superblock, empty log). Management path.
    pub(crate) fn format(staging: &mut Dev, volume: &Dev) -> Result<Superblock, StandbyError> {
        check_geometry(staging, volume)?;
        let mut sb = Superblock::new(Mode::Delayed, volume.num_blocks, volume.block_size);
        for seq in [1, 2] {
            sb.seq = seq;
            staging.sync_write(sb.slot(), sb.encode())?;
        }
        staging.sync_flush()?;
        Ok(sb)
    }

    /// Opens (recovers) the engine over a formatted staging bdev: rebuilds
    /// the index by scanning and resumes an interrupted apply. Management path.
    pub(crate) fn open(
        mut staging: Dev,
        volume: Dev,
        sb: Superblock,
        opts: DelayedOpts,
    ) -> Result<Delayed, StandbyError> {
        check_geometry(&staging, &volume)?;
        let log_blocks = staging.num_blocks - LOG_START_BLOCK;
        let Scan {
            recs,
            head: pos,
            next_seq: seq,
            cache_bytes,
        } = scan_log(&mut staging, &sb, log_blocks, opts.cache_bytes_max)?;
        let mut d = Delayed {
            shown: (sb.applied_epoch, sb.applied_last_lsn, sb.applied_rp_lsn, sb.tag.clone()),
            staging,
            volume,
            opts,
            next_seq: seq,
            head: pos,
            tail: sb.tail_off,
            log_blocks,
            staged_seq: seq,
            staged_lsn: 0,
            durable_lsn: 0,
            bg_flush_lsn: None,
            rps: VecDeque::new(),
            last_epoch_seen: sb.applied_epoch,
            last_rp_last_lsn: sb.applied_last_lsn,
            skip: SyncSkip::None,
            rps_dropped: 0,
            cache_bytes,
            apply: Apply::Idle,
            phase_pending: 0,
            failing: false,
            rolled_back: Vec::new(),
            failed_over: sb.promoted,
            error: None,
            epochs_applied: 0,
            bytes_applied: 0,
            done: Vec::new(),
            epoch_map: Vec::new(),
            recs,
            sb,
        };
        d.take_in_scanned();
        d.resume_apply()?;
        Ok(d)
    }

    /// Everything found by the scan is durable: the restart points and sync markers it
    /// holds rebuild what taking them had built.
    fn take_in_scanned(&mut self) {
        for r in &self.recs {
            if r.lsn != 0 {
                self.staged_lsn = r.lsn;
            }
            if let RecKind::Rp { epoch, last_lsn, .. } = r.kind {
                self.skip.on_rp();
                if epoch > self.sb.applied_epoch {
                    self.rps.push_back((epoch, r.seq));
                    self.last_epoch_seen = epoch;
                    self.last_rp_last_lsn = last_lsn;
                }
            }
            if let RecKind::Sync { mark } = r.kind {
                // Only markers that changed the state were staged (a Begin only if skipped).
                self.skip.on_mark(mark, r.lsn, matches!(mark, SyncMark::Begin { .. }));
                if matches!(mark, SyncMark::Begin { .. }) && self.shown.0 == 0 {
                    self.skip.never_applied();
                }
            }
        }
        self.staged_lsn = self.staged_lsn.max(self.sb.applied_rp_lsn);
        self.durable_lsn = self.staged_lsn;
    }

    /// Redoes an apply a crash interrupted (the superblock names its epoch).
    fn resume_apply(&mut self) -> Result<(), StandbyError> {
        if self.sb.applying_epoch != 0 {
            // Crashed in the middle of an apply: redo it from the volume
            // writes on (staging was flushed before the marker was written).
            let ep = self.sb.applying_epoch;
            let Some(&(_, rp_seq)) = self.rps.iter().find(|(e, _)| *e == ep) else {
                return Err(StandbyError::Corrupt(format!(
                    "superblock says epoch {ep} was being applied but its restart point is not in staging"
                )));
            };
            log::info!("standby: redoing the interrupted apply of epoch {ep}");
            let r = self.rec(rp_seq).expect("listed restart point is indexed");
            let RecKind::Rp { last_lsn, tag, .. } = &r.kind else {
                unreachable!("rps lists restart points only")
            };
            self.apply = Apply::ReadBack(EpochRef {
                epoch: ep,
                last_lsn: *last_lsn,
                rp_lsn: r.lsn,
                tag: tag.clone(),
            });
            self.start_phase();
        }
        Ok(())
    }

    /// The LSN the receiver should deliver next after open.
    pub(crate) fn resume_lsn(&self) -> u64 {
        let last = self.recs.iter().rev().find(|r| r.lsn != 0).map(|r| r.lsn).unwrap_or(0);
        last.max(self.sb.applied_rp_lsn).max(self.sb.applied_last_lsn) + 1
    }

    fn rec(&self, seq: u64) -> Option<&Rec> {
        let front = self.recs.front()?.seq;
        self.recs.get(seq.checked_sub(front)? as usize)
    }

    fn rec_mut(&mut self, seq: u64) -> Option<&mut Rec> {
        let front = self.recs.front()?.seq;
        self.recs.get_mut(seq.checked_sub(front)? as usize)
    }

    fn used(&self) -> u64 {
        self.head - self.tail
    }

    /// Blocks the op needs in staging, pad included, or `None` when it can
    /// never fit.
    fn need_blocks(&self, op: &OwnedOp) -> Option<u64> {
        let blocks = match &op.body {
            OpBody::Write { num_blocks, .. } => 1 + *num_blocks as u64,
            _ => 1,
        };
        if blocks > self.log_blocks {
            return None;
        }
        let to_end = self.log_blocks - self.head % self.log_blocks;
        Some(if blocks > to_end { to_end + blocks } else { blocks })
    }

    /// Takes the next op in LSN order. `Err(op)`: staging is full (or the
    /// engine stopped); offer it again after polling.
    // The Err hands the op back by value: boxing it would allocate on every
    // refusal (back-pressure is a hot path too).
    #[allow(clippy::result_large_err)]
    pub(crate) fn take(&mut self, op: OwnedOp) -> Result<(), (OwnedOp, Option<StandbyError>)> {
        if self.error.is_some() || self.failed_over {
            return Err((op, None));
        }
        let Some(need) = self.need_blocks(&op) else {
            let e = StandbyError::TooLargeForStaging {
                lsn: op.lsn,
                staging_blocks: self.log_blocks,
            };
            return Err((op, Some(e)));
        };
        if self.used() + need > self.log_blocks {
            return Err((op, None));
        }
        let kind = match self.record_kind(&op, need) {
            Ok(Some(kind)) => kind,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.error = Some(e.to_string());
                return Err((op, Some(e)));
            }
        };
        if matches!(op.body, OpBody::Write { .. }) {
            if let Err(e) = op.check_range(self.volume.num_blocks) {
                self.error = Some(e.to_string());
                return Err((op, Some(e)));
            }
        }
        self.stage(&op, need, kind);
        Ok(())
    }

    /// The record `op` is staged as (`need` blocks), or `None` when nothing is staged (a
    /// sync marker the skip state ignores, a restart point delivered again or dropped).
    fn record_kind(&mut self, op: &OwnedOp, need: u64) -> Result<Option<RecKind>, StandbyError> {
        Ok(Some(match op.body {
            OpBody::Write {
                offset_blocks,
                num_blocks,
                ..
            } => RecKind::Write {
                offset: offset_blocks,
                n: num_blocks,
            },
            OpBody::WriteZeroes {
                offset_blocks,
                num_blocks,
            } => RecKind::Zero {
                offset: offset_blocks,
                n: num_blocks,
                dealloc: false,
            },
            OpBody::Deallocate {
                offset_blocks,
                num_blocks,
            } => RecKind::Zero {
                offset: offset_blocks,
                n: num_blocks,
                dealloc: true,
            },
            OpBody::Sync { mark, skipped } => {
                if self.skip.on_mark(mark, op.lsn, skipped) == MarkVerdict::Ignore {
                    return Ok(None);
                }
                if skipped && self.shown.0 == 0 {
                    self.skip.never_applied();
                }
                RecKind::Sync { mark }
            }
            OpBody::RestartPoint {
                epoch,
                last_lsn,
                ref tag,
            } => {
                match sync_skip::take_rp(
                    &mut self.skip,
                    &mut self.last_epoch_seen,
                    &mut self.last_rp_last_lsn,
                    epoch,
                    last_lsn,
                )? {
                    // Delivered again after a restart: already staged or applied.
                    RpTake::Again => return Ok(None),
                    RpTake::Dropped => {
                        // Inside a skipped sync: not an image of the primary's (sync_skip.rs).
                        self.rps_dropped += 1;
                        return Ok(None);
                    }
                    RpTake::Next => {}
                }
                self.rps.push_back((epoch, self.next_seq + u64::from(need > 1)));
                RecKind::Rp {
                    epoch,
                    last_lsn,
                    tag: tag.clone(),
                }
            }
        }))
    }

    /// Stages `op` as a `kind` record, after a pad to the start of the log when its
    /// `need` blocks include the rest of the log before it.
    fn stage(&mut self, op: &OwnedOp, need: u64, kind: RecKind) {
        let bs = self.staging.block_size as usize;
        let to_end = self.log_blocks - self.head % self.log_blocks;
        let rec_blocks = match &kind {
            RecKind::Write { n, .. } => 1 + *n as u64,
            _ => 1,
        };
        if need > rec_blocks {
            // Pad to the start of the log.
            let mut b = DmaBuf::recycled(bs);
            encode_header(&mut b, KIND_PAD, self.sb.incarnation, self.next_seq, 0, 0, 0, 0, &[]);
            self.push_rec(0, to_end, RecKind::Pad, b);
        }
        let (kind_byte, a0, a1, tag): (u8, u64, u64, &[u8]) = match &kind {
            RecKind::Write { offset, n } => (KIND_WRITE, *offset, *n as u64, &[]),
            RecKind::Zero { offset, n, dealloc } => (
                if *dealloc { KIND_DEALLOC } else { KIND_ZEROES },
                *offset,
                *n as u64,
                &[],
            ),
            RecKind::Rp { epoch, last_lsn, tag } => (KIND_RP, *epoch, *last_lsn, tag),
            RecKind::Sync { mark } => {
                let (a0, a1) = mark.args();
                (KIND_SYNC, a0, a1, &[])
            }
            RecKind::Pad => unreachable!("ops never become pads"),
        };
        let mut b = DmaBuf::recycled(rec_blocks as usize * bs);
        let mut data_crc = 0;
        if let OpBody::Write { data, .. } = &op.body {
            b[bs..].copy_from_slice(&data.0);
            data_crc = crc32c::crc32c(&data.0);
        }
        let tag = tag.to_vec();
        encode_header(
            &mut b[..bs],
            kind_byte,
            self.sb.incarnation,
            self.next_seq,
            op.lsn,
            a0,
            a1,
            data_crc,
            &tag,
        );
        self.push_rec(op.lsn, rec_blocks, kind, b);
    }

    fn push_rec(&mut self, lsn: u64, blocks: u64, kind: RecKind, buf: DmaBuf) {
        let seq = self.next_seq;
        let phys = LOG_START_BLOCK + self.head % self.log_blocks;
        debug_assert!(phys + blocks <= self.staging.num_blocks || matches!(kind, RecKind::Pad));
        let write_blocks = if matches!(kind, RecKind::Pad) { 1 } else { blocks };
        let mut buf = buf;
        buf.set_len(write_blocks as usize * self.staging.block_size as usize);
        self.staging.write(phys, buf, TAG_STAGE | seq);
        self.recs.push_back(Rec {
            seq,
            lsn,
            pos: self.head,
            kind,
            staged: false,
            data: None,
        });
        self.head += blocks;
        self.next_seq += 1;
    }

    /// Moves I/O forward; returns true when something happened.
    pub(crate) fn poll(&mut self) -> bool {
        let mut busy = false;
        let mut done = std::mem::take(&mut self.done);
        busy |= self.staging.poll(&mut |c| done.push(c)) > 0;
        busy |= self.volume.poll(&mut |c| done.push(c)) > 0;
        for c in done.drain(..) {
            self.complete(c);
        }
        self.done = done;
        self.advance_staged();
        if self.bg_flush_lsn.is_none() && self.staged_lsn > self.durable_lsn {
            self.bg_flush_lsn = Some(self.staged_lsn);
            self.staging.flush(TAG_BGFLUSH);
            busy = true;
        }
        busy |= self.advance();
        busy
    }

    fn complete(&mut self, c: IoCompletion) {
        let tag = c.user_data & TAG_MASK;
        let low = c.user_data & !TAG_MASK;
        if let Err(e) = &c.result {
            self.error = Some(format!("I/O failed ({}): {e}", tag >> 56));
        }
        match tag {
            TAG_STAGE => {
                let cache_ok = self.cache_bytes < self.opts.cache_bytes_max;
                let bs = self.staging.block_size as usize;
                let mut added = 0;
                if let Some(r) = self.rec_mut(low) {
                    r.staged = c.result.is_ok();
                    if let (RecKind::Write { .. }, Some(buf), true) = (&r.kind, c.buf, cache_ok) {
                        added = buf.len() - bs;
                        r.data = Some((buf, bs));
                    }
                }
                self.cache_bytes += added;
            }
            TAG_READ => {
                let mut added = 0;
                if let (Some(r), Some(buf)) = (self.rec_mut(low), c.buf) {
                    added = buf.len();
                    r.data = Some((buf, 0));
                }
                self.cache_bytes += added;
                self.phase_pending -= 1;
            }
            TAG_PHASE => self.phase_pending -= 1,
            TAG_BGFLUSH => {
                if let Some(l) = self.bg_flush_lsn.take() {
                    if c.result.is_ok() {
                        self.durable_lsn = self.durable_lsn.max(l);
                    }
                }
            }
            _ => log::error!("standby: completion with unknown tag {:#x}", c.user_data),
        }
    }

    fn advance_staged(&mut self) {
        while let Some(r) = self.rec(self.staged_seq) {
            if !r.staged {
                break;
            }
            if r.lsn != 0 {
                self.staged_lsn = r.lsn;
            }
            self.staged_seq += 1;
        }
    }

    /// The next epoch whose restart point and everything before it is staged.
    fn ready_epoch(&self) -> Option<EpochRef> {
        let &(epoch, seq) = self.rps.front()?;
        // Consecutive, except past a skipped sync's dropped points (sync_skip.rs).
        debug_assert!(epoch > self.sb.applied_epoch);
        if seq >= self.staged_seq {
            return None;
        }
        let r = self.rec(seq)?;
        let RecKind::Rp { last_lsn, tag, .. } = &r.kind else {
            return None;
        };
        Some(EpochRef {
            epoch,
            last_lsn: *last_lsn,
            rp_lsn: r.lsn,
            tag: tag.clone(),
        })
    }

    /// Primary failure: finish complete epochs, then discard staging.
    /// Progress through [`Delayed::poll`]; done when [`Delayed::failed_over`].
    pub(crate) fn declare_failure(&mut self) {
        if !self.failed_over {
            self.failing = true;
        }
    }

    /// The skipped-hole state and the restart points it dropped.
    pub(crate) fn sync_skip(&self) -> (SyncSkip, u64) {
        (self.skip, self.rps_dropped)
    }

    pub(crate) fn failed_over(&self) -> bool {
        self.failed_over
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Every LSN up to this is durable in staging or applied.
    pub(crate) fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    pub(crate) fn last_epoch_seen(&self) -> u64 {
        self.last_epoch_seen
    }

    /// True when nothing is in flight and no apply can start.
    pub(crate) fn idle(&self) -> bool {
        self.quiescent() && self.staging.inflight() == 0 && self.volume.inflight() == 0 && self.ready_epoch().is_none()
    }

    /// True when no apply is in progress (the volume is at a restart point).
    pub(crate) fn quiescent(&self) -> bool {
        matches!(self.apply, Apply::Idle) && self.phase_pending == 0
    }

    pub(crate) fn status(&self) -> DelayedStatus {
        DelayedStatus {
            staging_records: self.recs.len(),
            staging_used_blocks: self.used(),
            staging_blocks: self.log_blocks,
            cache_bytes: self.cache_bytes,
            inflight_ios: self.staging.inflight() + self.volume.inflight(),
            apply_phase: self.apply.name(),
            applying_epoch: self.sb.applying_epoch,
            epochs_applied: self.epochs_applied,
            bytes_applied: self.bytes_applied,
        }
    }

    /// Block ranges of the staged writes the rollback voided (since this open).
    pub(crate) fn rolled_back(&self) -> &[(u64, u64)] {
        &self.rolled_back
    }

    pub(crate) fn volume_bdev(&self) -> std::sync::Arc<dyn engine::bdev::Bdev> {
        self.volume.bdev.clone()
    }

    /// Promotion (management path, after failover): persists the new
    /// generation and hands out the volume bdev.
    pub(crate) fn promote(&mut self, generation: u64) -> Result<std::sync::Arc<dyn engine::bdev::Bdev>, StandbyError> {
        if !self.failed_over {
            return Err(StandbyError::NotFailedOver);
        }
        self.staging.drain();
        self.volume.drain();
        self.sb.promoted = true;
        self.sb.generation = generation;
        self.sb.seq += 1;
        self.staging.sync_write(self.sb.slot(), self.sb.encode())?;
        self.staging.sync_flush()?;
        Ok(self.volume.bdev.clone())
    }
}

/// What the scan of the staging log found: its records from the tail on, where the
/// next record goes, its sequence number, and the bytes of write data kept in memory.
struct Scan {
    recs: VecDeque<Rec>,
    head: u64,
    next_seq: u64,
    cache_bytes: usize,
}

/// Scans the staging log from the superblock's tail up to the first record that is torn,
/// stale or foreign (at most one lap), keeping write data in memory up to
/// `cache_bytes_max`.
fn scan_log(staging: &mut Dev, sb: &Superblock, log_blocks: u64, cache_bytes_max: usize) -> Result<Scan, StandbyError> {
    let mut recs = VecDeque::new();
    let mut pos = sb.tail_off;
    let mut seq = sb.tail_seq;
    let mut cache_bytes = 0usize;
    // Scan at most one lap: a valid log never holds more.
    while pos - sb.tail_off < log_blocks {
        let phys = LOG_START_BLOCK + pos % log_blocks;
        let hdr = staging.sync_read(phys, 1)?;
        let Some(h) = parse_header(&hdr, sb.incarnation, seq) else {
            break;
        };
        let to_end = log_blocks - pos % log_blocks;
        let blocks = match h.kind {
            RecKind::Pad => to_end,
            RecKind::Write { n, .. } => 1 + n as u64,
            _ => 1,
        };
        if blocks > to_end || pos + blocks - sb.tail_off > log_blocks {
            break;
        }
        let mut data = None;
        if let RecKind::Write { n, .. } = h.kind {
            let d = staging.sync_read(phys + 1, n)?;
            if crc32c::crc32c(&d) != h.data_crc {
                break; // torn: header landed, data did not
            }
            if cache_bytes + d.len() <= cache_bytes_max {
                cache_bytes += d.len();
                data = Some((d, 0));
            }
        }
        recs.push_back(Rec {
            seq,
            lsn: h.lsn,
            pos,
            kind: h.kind,
            staged: true,
            data,
        });
        pos += blocks;
        seq += 1;
    }
    Ok(Scan {
        recs,
        head: pos,
        next_seq: seq,
        cache_bytes,
    })
}

fn releasable(r: &Rec, ep: &EpochRef) -> bool {
    match r.kind {
        RecKind::Pad => true,
        RecKind::Rp { epoch, .. } => epoch <= ep.epoch,
        _ => r.lsn <= ep.last_lsn,
    }
}

fn check_geometry(staging: &Dev, volume: &Dev) -> Result<(), StandbyError> {
    staging.check_beside("staging bdev", volume, "volume", LOG_START_BLOCK + 2)
}

struct Header {
    kind: RecKind,
    lsn: u64,
    data_crc: u32,
}

#[allow(clippy::too_many_arguments)]
fn encode_header(b: &mut [u8], kind: u8, incarnation: u64, seq: u64, lsn: u64, a0: u64, a1: u64, crc: u32, tag: &[u8]) {
    // The whole block: a recycled buffer holds what its last user left.
    b.fill(0);
    b[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
    b[4] = kind;
    b[6..8].copy_from_slice(&(tag.len() as u16).to_le_bytes());
    b[8..16].copy_from_slice(&incarnation.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&lsn.to_le_bytes());
    b[32..40].copy_from_slice(&a0.to_le_bytes());
    b[40..48].copy_from_slice(&a1.to_le_bytes());
    b[48..52].copy_from_slice(&crc.to_le_bytes());
    b[56..56 + tag.len()].copy_from_slice(tag);
    let h = crc32c::crc32c(&b[..HDR_CRC_AT]);
    b[HDR_CRC_AT..HDR_CRC_AT + 4].copy_from_slice(&h.to_le_bytes());
}

/// Parses a record header; `None` ends the scan (torn, stale or foreign).
fn parse_header(b: &[u8], incarnation: u64, seq: u64) -> Option<Header> {
    if le::u32_at(b, 0) != REC_MAGIC {
        return None;
    }
    if le::u32_at(b, HDR_CRC_AT) != crc32c::crc32c(&b[..HDR_CRC_AT]) {
        return None;
    }
    if le::u64_at(b, 8) != incarnation || le::u64_at(b, 16) != seq {
        return None;
    }
    let (lsn, a0, a1) = (le::u64_at(b, 24), le::u64_at(b, 32), le::u64_at(b, 40));
    let tag_len = le::u16_at(b, 6) as usize;
    let n = u32::try_from(a1).ok();
    let kind = match b[4] {
        KIND_WRITE => RecKind::Write { offset: a0, n: n? },
        KIND_ZEROES => RecKind::Zero {
            offset: a0,
            n: n?,
            dealloc: false,
        },
        KIND_DEALLOC => RecKind::Zero {
            offset: a0,
            n: n?,
            dealloc: true,
        },
        KIND_RP if tag_len <= HDR_CRC_AT - 56 => RecKind::Rp {
            epoch: a0,
            last_lsn: a1,
            tag: b[56..56 + tag_len].to_vec(),
        },
        KIND_PAD => RecKind::Pad,
        KIND_SYNC => RecKind::Sync {
            mark: SyncMark::from_args(lsn, a0, a1).ok()?,
        },
        _ => return None,
    };
    Some(Header {
        kind,
        lsn,
        data_crc: le::u32_at(b, 48),
    })
}
