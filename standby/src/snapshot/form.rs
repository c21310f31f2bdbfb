//! Taking ops in and forming snapshots: every write goes to a new block as a pending write;
//! a restart point closes an epoch, whose pending writes are folded into a snapshot by a
//! metadata journal write (`docs/standby.md`, "Snapshot mode").

use super::*;
use crate::receive::DmaBufEq;
use crate::sync_skip::RpTake;

impl Snapshot {
    /// Takes the next op in LSN order; `Err(op)` means "not now" (a snapshot
    /// is being formed, or the data bdev is full), or an error when given.
    // The Err hands the op back by value: boxing it would allocate on every
    // refusal (back-pressure is a hot path too).
    #[allow(clippy::result_large_err)]
    pub(crate) fn take(&mut self, op: OwnedOp) -> Result<(), (OwnedOp, Option<StandbyError>)> {
        if self.error.is_some() || self.failed_over || !matches!(self.form, Form::Idle) {
            return Err((op, None));
        }
        if let Err(e) = op.check_range(self.sb.volume_blocks) {
            self.error = Some(e.to_string());
            return Err((op, Some(e)));
        }
        match op.body {
            OpBody::Write {
                offset_blocks,
                num_blocks,
                data,
            } => self.take_write(op.lsn, op.generation, offset_blocks, num_blocks, data),
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
                match sync_skip::take_rp(
                    &mut self.skip,
                    &mut self.last_epoch_seen,
                    &mut self.last_rp_last_lsn,
                    epoch,
                    last_lsn,
                ) {
                    Ok(RpTake::Again) => return Ok(()), // delivered again after a restart
                    Ok(RpTake::Dropped) => {
                        // Inside a skipped sync: no snapshot of an image that is not the
                        // primary's (sync_skip.rs); the writes stay pending.
                        self.rps_dropped += 1;
                        return Ok(());
                    }
                    Ok(RpTake::Next) => {}
                    Err(e) => {
                        self.error = Some(e.to_string());
                        return Err((op, Some(e)));
                    }
                }
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

    /// Takes a write: allocates data blocks for it (in runs, each written from its part
    /// of the buffer) and queues its blocks for the next snapshot. Hands the op back when
    /// the data bdev is full (an error once nothing in flight can free blocks).
    #[allow(clippy::result_large_err)]
    fn take_write(
        &mut self,
        lsn: u64,
        generation: u64,
        offset_blocks: u64,
        num_blocks: u32,
        data: DmaBufEq,
    ) -> Result<(), (OwnedOp, Option<StandbyError>)> {
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
                    lsn,
                    generation,
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
                    lsn,
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

    pub(super) fn advance(&mut self) -> bool {
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
    pub(super) fn build_job(&mut self, ep: Option<EpochRef>) -> Result<Job, StandbyError> {
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

    pub(super) fn encode_checkpoint(&mut self, out: &mut Vec<u8>) {
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

    pub(super) fn finish_job(&mut self, j: Job) {
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
}
