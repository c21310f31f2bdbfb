//! Applying a whole epoch to the volume, and discarding staged records at a rollback: the
//! superblock phases (applying N, applied N), the epoch's writes to the volume, the flushes
//! between them (`docs/standby.md`, "Delayed-write mode").

use super::*;

impl Delayed {
    pub(super) fn write_sb(&mut self) {
        self.sb.seq += 1;
        let slot = self.sb.slot();
        let b = self.sb.encode();
        self.staging.write(slot, b, TAG_PHASE);
        self.phase_pending += 1;
    }

    /// Issues the I/O of the current phase.
    pub(super) fn start_phase(&mut self) {
        match std::mem::replace(&mut self.apply, Apply::Idle) {
            Apply::Idle => {}
            Apply::FlushStaging(ep) => {
                self.staging.flush(TAG_PHASE);
                self.phase_pending += 1;
                self.apply = Apply::FlushStaging(ep);
            }
            Apply::WriteMarker(ep) => {
                self.sb.applying_epoch = ep.epoch;
                self.sb.applying_last_lsn = ep.last_lsn;
                self.sb.applying_rp_lsn = ep.rp_lsn;
                self.write_sb();
                self.apply = Apply::WriteMarker(ep);
            }
            Apply::FlushMarker(ep) => {
                self.staging.flush(TAG_PHASE);
                self.phase_pending += 1;
                self.apply = Apply::FlushMarker(ep);
            }
            Apply::ReadBack(ep) => {
                let mut reads = Vec::new();
                for r in &self.recs {
                    if matches!(r.kind, RecKind::Rp { .. } | RecKind::Pad | RecKind::Sync { .. }) {
                        continue;
                    }
                    if r.lsn > ep.last_lsn {
                        break;
                    }
                    if let (RecKind::Write { n, .. }, None) = (&r.kind, &r.data) {
                        if r.lsn > self.sb.applied_last_lsn {
                            reads.push((LOG_START_BLOCK + r.pos % self.log_blocks + 1, *n, r.seq));
                        }
                    }
                }
                for (blk, n, seq) in reads {
                    self.staging.read(blk, n, TAG_READ | seq);
                    self.phase_pending += 1;
                }
                self.apply = Apply::ReadBack(ep);
            }
            Apply::WriteVolume(ep) => {
                self.write_epoch(&ep);
                self.apply = Apply::WriteVolume(ep);
            }
            Apply::FlushVolume(ep) => {
                self.volume.flush(TAG_PHASE);
                self.phase_pending += 1;
                self.apply = Apply::FlushVolume(ep);
            }
            Apply::WriteApplied(ep, _) => {
                // The new tail: the first record the next epochs still need.
                let keep = self.recs.iter().find(|r| !releasable(r, &ep));
                let (tail, tail_seq) = keep.map(|r| (r.pos, r.seq)).unwrap_or((self.head, self.next_seq));
                self.sb.applied_epoch = ep.epoch;
                self.sb.applied_last_lsn = ep.last_lsn;
                self.sb.applied_rp_lsn = ep.rp_lsn;
                self.sb.tag = ep.tag.clone();
                self.sb.applying_epoch = 0;
                self.sb.applying_last_lsn = 0;
                self.sb.applying_rp_lsn = 0;
                self.sb.tail_off = tail;
                self.sb.tail_seq = tail_seq;
                self.write_sb();
                self.apply = Apply::WriteApplied(ep, tail_seq);
            }
            Apply::FlushApplied(ep, s) => {
                self.staging.flush(TAG_PHASE);
                self.phase_pending += 1;
                self.apply = Apply::FlushApplied(ep, s);
            }
            Apply::WriteDiscard => {
                // What the rollback voids: a failback treats these blocks as changed.
                let applied = self.sb.applied_last_lsn;
                let voided = self
                    .recs
                    .iter()
                    .filter(|r| r.lsn > applied)
                    .filter_map(|r| match r.kind {
                        RecKind::Write { offset, n } | RecKind::Zero { offset, n, .. } => Some((offset, u64::from(n))),
                        _ => None,
                    });
                self.rolled_back.extend(voided);
                self.sb.incarnation += 1;
                self.sb.tail_off = self.head;
                self.sb.tail_seq = self.next_seq;
                self.write_sb();
                self.apply = Apply::WriteDiscard;
            }
            Apply::FlushDiscard => {
                self.staging.flush(TAG_PHASE);
                self.phase_pending += 1;
                self.apply = Apply::FlushDiscard;
            }
        }
    }

    /// Writes epoch `ep` to the volume: per block the last write wins, and
    /// runs of blocks that follow each other in one source become one write.
    pub(super) fn write_epoch(&mut self, ep: &EpochRef) {
        let mut map = std::mem::take(&mut self.epoch_map);
        map.clear();
        for (i, r) in self.recs.iter().enumerate() {
            if matches!(r.kind, RecKind::Rp { .. } | RecKind::Pad | RecKind::Sync { .. }) {
                continue;
            }
            if r.lsn > ep.last_lsn {
                break;
            }
            if r.lsn <= self.sb.applied_last_lsn {
                continue;
            }
            match r.kind {
                RecKind::Write { offset, n } => {
                    map.extend((0..n as u64).map(|b| (offset + b, i, EpochSrc::Data { i, blk: b })));
                }
                RecKind::Zero { offset, n, dealloc } => {
                    map.extend((0..n as u64).map(|b| (offset + b, i, EpochSrc::Zero { dealloc })));
                }
                RecKind::Rp { .. } | RecKind::Pad | RecKind::Sync { .. } => {}
            }
        }
        // By block, then by record: the last entry of each block is its last write.
        map.sort_unstable_by_key(|&(lba, i, _)| (lba, i));
        let last_writes = map
            .iter()
            .enumerate()
            .filter(|&(k, e)| map.get(k + 1).is_none_or(|n| n.0 != e.0))
            .map(|(_, &(lba, _, src))| (lba, src));
        let bs = self.volume.block_size as usize;
        let mut it = last_writes.peekable();
        while let Some((lba, src)) = it.next() {
            let mut len = 1u64;
            let mut last = src;
            while let Some(&(l2, s2)) = it.peek() {
                let follows = l2 == lba + len
                    && match (last, s2) {
                        (EpochSrc::Data { i, blk }, EpochSrc::Data { i: i2, blk: b2 }) => i == i2 && b2 == blk + 1,
                        (EpochSrc::Zero { dealloc }, EpochSrc::Zero { dealloc: d2 }) => dealloc == d2,
                        _ => false,
                    };
                if !follows || len >= u32::MAX as u64 {
                    break;
                }
                last = s2;
                len += 1;
                it.next();
            }
            match src {
                EpochSrc::Data { i, blk } => {
                    let (d, off) = self.recs[i].data.as_ref().expect("read back before the volume writes");
                    let start = off + blk as usize * bs;
                    let mut b = DmaBuf::recycled(len as usize * bs);
                    b.copy_from_slice(&d[start..start + len as usize * bs]);
                    self.volume.write(lba, b, TAG_PHASE);
                }
                EpochSrc::Zero { dealloc } => self.volume.zero(lba, len as u32, dealloc, TAG_PHASE),
            }
            self.bytes_applied += len * bs as u64;
            self.phase_pending += 1;
        }
        self.epoch_map = map;
    }

    /// Runs the state machine as far as finished I/O allows.
    pub(super) fn advance(&mut self) -> bool {
        let mut moved = false;
        while self.phase_pending == 0 && self.error.is_none() {
            let next = match std::mem::replace(&mut self.apply, Apply::Idle) {
                Apply::Idle => {
                    if let Some(ep) = self.ready_epoch() {
                        Apply::FlushStaging(ep)
                    } else if self.failing && self.staging.inflight() == 0 && !self.failed_over {
                        Apply::WriteDiscard
                    } else {
                        break;
                    }
                }
                Apply::FlushStaging(ep) => Apply::WriteMarker(ep),
                Apply::WriteMarker(ep) => Apply::FlushMarker(ep),
                Apply::FlushMarker(ep) => Apply::ReadBack(ep),
                Apply::ReadBack(ep) => Apply::WriteVolume(ep),
                Apply::WriteVolume(ep) => Apply::FlushVolume(ep),
                Apply::FlushVolume(ep) => Apply::WriteApplied(ep, 0),
                Apply::WriteApplied(ep, s) => Apply::FlushApplied(ep, s),
                Apply::FlushApplied(ep, tail_seq) => {
                    self.finish_apply(&ep, tail_seq);
                    Apply::Idle
                }
                Apply::WriteDiscard => Apply::FlushDiscard,
                Apply::FlushDiscard => {
                    self.finish_discard();
                    Apply::Idle
                }
            };
            self.apply = next;
            self.start_phase();
            moved = true;
        }
        moved
    }

    pub(super) fn finish_apply(&mut self, ep: &EpochRef, tail_seq: u64) {
        while self.recs.front().is_some_and(|r| r.seq < tail_seq) {
            let r = self.recs.pop_front().expect("checked");
            if let Some((d, off)) = r.data {
                self.cache_bytes -= d.len() - off;
            }
        }
        self.tail = self.recs.front().map(|r| r.pos).unwrap_or(self.head);
        let popped = self.rps.pop_front();
        debug_assert_eq!(popped.map(|p| p.0), Some(ep.epoch));
        self.durable_lsn = self.durable_lsn.max(ep.rp_lsn);
        self.shown = (ep.epoch, ep.last_lsn, ep.rp_lsn, ep.tag.clone());
        self.epochs_applied += 1;
        log::debug!("standby: epoch {} applied (last LSN {})", ep.epoch, ep.last_lsn);
    }

    pub(super) fn finish_discard(&mut self) {
        self.recs.clear();
        self.rps.clear();
        self.cache_bytes = 0;
        self.tail = self.head;
        self.staged_seq = self.next_seq;
        self.last_epoch_seen = self.sb.applied_epoch;
        self.last_rp_last_lsn = self.sb.applied_last_lsn;
        self.failed_over = true;
        self.failing = false;
        log::info!(
            "standby: staging discarded; volume at restart point {} (LSN {})",
            self.sb.applied_epoch,
            self.sb.applied_last_lsn
        );
    }
}
