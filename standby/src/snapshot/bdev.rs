//! The bdevs over snapshots: a read-only snapshot export and the writable head of a
//! promoted standby, whose channels (any number, on any reactors) redirect a block's
//! first write to a new block and journal the map changes on flush through the head's
//! shared state (`head.rs`; `docs/standby.md`, "Primary failure and promotion").

use super::*;

/// Requests a snapshot/head channel keeps in flight.
pub(super) const VCHANNEL_DEPTH: usize = 256;

/// A read-only bdev showing one snapshot (DR drills while replication goes
/// on). The map is frozen at export; the snapshot is pinned (not deleted)
/// while this bdev lives. Reads are split by physical run; each run reads
/// into its own recycled buffer (`DmaBuf::recycled`).
pub struct SnapshotBdev {
    pub(super) info: BdevInfo,
    pub(super) data: Arc<dyn Bdev>,
    pub(super) map: Arc<Vec<(u64, u64)>>,
    pub(super) _pin: Arc<()>,
    pub(super) stats: StatsSet,
}

impl Bdev for SnapshotBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let lookup = Lookup::Frozen(self.map.clone());
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(1),
            self.stats.new_channel(),
            Box::new(VChannel::new(
                self.data.open_channel()?,
                self.info.block_size,
                lookup,
                None,
            )),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
}

/// Where a channel looks blocks up.
pub(super) enum Lookup {
    /// A snapshot's map, frozen at export: sorted `(lba, pba)`.
    Frozen(Arc<Vec<(u64, u64)>>),
    /// The head's shared map.
    Head(Arc<HeadShared>),
}

impl Lookup {
    /// The block of `lba` to read, and whether it came back pinned (a head block:
    /// unpinned when the read completes).
    fn pba(&self, lba: u64) -> (u64, bool) {
        match self {
            Lookup::Frozen(map) => match map.binary_search_by_key(&lba, |e| e.0) {
                Ok(i) => (map[i].1, false),
                Err(_) => (ZERO_PBA, false),
            },
            Lookup::Head(h) => {
                let e = h.get_pinned(lba);
                (e.pba, e.in_place().is_some())
            }
        }
    }
}

/// Adds block `p` to a list of runs `(pba, blocks)`.
fn push_run(runs: &mut Vec<(u64, u64)>, p: u64) {
    match runs.last_mut() {
        Some(r) if r.0 + r.1 == p => r.1 += 1,
        _ => runs.push((p, 1)),
    }
}

/// What a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Reads, writes in place, unmaps: its sub-requests.
    Io,
    /// A write with new blocks: its data, then publishing them.
    FreshWrite,
    /// A write that lost a block to a concurrent first write: the copy into the winner's.
    Rewrite,
    /// A head flush: the data bdev's flush; then the map changes before `cut`.
    FlushData {
        cut: u64,
    },
    /// Another flush holds the journal; retried at each poll.
    FlushWait {
        cut: u64,
    },
    JournalWrite {
        nblocks: u64,
    },
    JournalFlush {
        nblocks: u64,
    },
}

pub(super) struct VReq {
    pub(super) user_data: u64,
    pub(super) buf: Option<DmaBuf>,
    pub(super) lba: u64,
    pub(super) remaining: usize,
    pub(super) result: Result<(), BdevError>,
    pub(super) stage: Stage,
    pub(super) is_read: bool,
    /// A read of one run: the request's own buffer went to the data bdev.
    pub(super) direct: bool,
}

/// A head channel's handles on the shared state and the metadata bdev.
pub(super) struct HeadCtx {
    pub(super) meta: BdevChannel,
    pub(super) shared: Arc<HeadShared>,
    /// Next-fit cursor of this channel's allocations.
    pub(super) cursor: u64,
    /// Per slot: the new blocks of its write (capacity kept between requests).
    pub(super) fresh: Vec<Vec<Fresh>>,
    /// Per slot: runs `(pba, blocks)` its reads and writes in place pinned, unpinned
    /// when its data I/O has completed (capacity kept between requests).
    pub(super) pinned: Vec<Vec<(u64, u64)>>,
    /// Blocks lost to concurrent first writes (scratch).
    pub(super) lost: Vec<(u32, u64)>,
    /// The journal record this channel is writing, if it holds the journal.
    pub(super) entries: Vec<(u64, u64)>,
    pub(super) release: Vec<u64>,
    pub(super) record: Vec<u8>,
    pub(super) holds_journal: Option<u64>,
    /// Flushes waiting for the journal.
    pub(super) waiting: VecDeque<usize>,
}

/// Channel of a snapshot or head bdev: splits block requests into runs on
/// the data bdev and reassembles them. Nothing here allocates per read or per
/// overwrite once warm: slots, queues and scratch lists keep their capacity, run
/// buffers are recycled.
pub(super) struct VChannel {
    pub(super) data: BdevChannel,
    pub(super) bs: usize,
    pub(super) lookup: Lookup,
    pub(super) head: Option<HeadCtx>,
    pub(super) reqs: Vec<Option<VReq>>,
    pub(super) free_slots: Vec<usize>,
    pub(super) backlog: VecDeque<IoRequest>,
    pub(super) done: VecDeque<IoCompletion>,
    /// `(offset in request, pba, blocks)` of the request being split (scratch).
    pub(super) runs: Vec<(u64, u64, u64)>,
    /// Sub-request completions of one poll (scratch).
    pub(super) subs: Vec<IoCompletion>,
}

/// Sub-request user data: slot in the high half, block offset in the request
/// in the low half; the top bit marks metadata I/O of the head.
pub(super) const SUB_META: u64 = 1 << 63;

impl VChannel {
    fn new(data: BdevChannel, bs: u32, lookup: Lookup, head: Option<HeadCtx>) -> VChannel {
        VChannel {
            data,
            bs: bs as usize,
            lookup,
            head,
            reqs: (0..VCHANNEL_DEPTH).map(|_| None).collect(),
            free_slots: (0..VCHANNEL_DEPTH).rev().collect(),
            backlog: VecDeque::with_capacity(VCHANNEL_DEPTH),
            done: VecDeque::with_capacity(VCHANNEL_DEPTH),
            runs: Vec::new(),
            subs: Vec::with_capacity(VCHANNEL_DEPTH),
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

    fn req(&mut self, slot: usize) -> &mut VReq {
        self.reqs[slot].as_mut().expect("live slot")
    }

    fn finish(&mut self, slot: usize) {
        let r = self.reqs[slot].take().expect("live slot");
        self.free_slots.push(slot);
        self.done.push_back(IoCompletion {
            user_data: r.user_data,
            result: r.result,
            buf: r.buf,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn sub(&mut self, op: IoOp, slot: usize, off_in_req: u64, pba: u64, n: u64, buf: Option<DmaBuf>, meta: bool) {
        self.req(slot).remaining += 1;
        self.backlog.push_back(IoRequest {
            op,
            offset_blocks: pba,
            num_blocks: n as u32,
            buf,
            user_data: ((slot as u64) << 32) | off_in_req | if meta { SUB_META } else { 0 },
        });
    }

    /// A sub-request write of the request's blocks `[i, i + n)` to `pba`.
    fn sub_write(&mut self, slot: usize, i: u64, pba: u64, n: u64) {
        let bs = self.bs;
        let mut b = DmaBuf::recycled(n as usize * bs);
        if let Some(src) = self.req(slot).buf.as_ref() {
            b.copy_from_slice(&src[i as usize * bs..(i + n) as usize * bs]);
        }
        self.sub(IoOp::Write, slot, i, pba, n, Some(b), false);
    }

    fn on_sub(&mut self, c: IoCompletion) {
        let slot = ((c.user_data & !SUB_META) >> 32) as usize;
        let off = (c.user_data & 0xffff_ffff) as usize;
        let bs = self.bs;
        let Some(r) = self.reqs[slot].as_mut() else { return };
        r.remaining -= 1;
        if let Err(e) = c.result {
            r.result = Err(e);
        }
        if r.direct {
            r.buf = c.buf;
        } else if let (Some(sub), Some(dst)) = (c.buf, r.buf.as_mut()) {
            if r.is_read {
                let at = off * bs;
                if at + sub.len() <= dst.len() {
                    dst[at..at + sub.len()].copy_from_slice(&sub);
                }
            }
        }
        if r.remaining == 0 {
            self.unpin(slot);
            self.next_stage(slot);
        }
    }

    /// The request's data I/O has all completed (successfully or not): its blocks
    /// may be reused once their unmapping is durable.
    fn unpin(&mut self, slot: usize) {
        if let Some(h) = self.head.as_mut() {
            h.pinned[slot].drain(..).for_each(|(p, n)| h.shared.unpin(p, n));
        }
    }

    /// A request's sub-requests are all done: its next stage, or its completion.
    fn next_stage(&mut self, slot: usize) {
        let r = self.req(slot);
        let ok = r.result.is_ok();
        match r.stage {
            Stage::FreshWrite => self.publish(slot),
            Stage::FlushData { cut } if ok => self.journal(slot, cut),
            Stage::JournalWrite { nblocks } if ok => {
                self.req(slot).stage = Stage::JournalFlush { nblocks };
                self.sub(IoOp::Flush, slot, 0, 0, 0, None, true);
            }
            Stage::JournalWrite { nblocks } | Stage::JournalFlush { nblocks } => {
                self.end_journal(ok, nblocks);
                self.req(slot).stage = Stage::Io;
            }
            _ => {}
        }
        self.finish_if_idle(slot);
    }

    /// Completes a request with nothing in flight and nothing to wait for.
    fn finish_if_idle(&mut self, slot: usize) {
        if self.reqs[slot]
            .as_ref()
            .is_some_and(|r| r.remaining == 0 && !matches!(r.stage, Stage::FlushWait { .. }))
        {
            self.finish(slot);
        }
    }

    /// A first write's data is on the data bdev: its new blocks become visible to
    /// every channel; a block lost to a concurrent first write is written again into
    /// the winner's block.
    fn publish(&mut self, slot: usize) {
        let (lba, ok) = {
            let r = self.req(slot);
            r.stage = Stage::Rewrite;
            (r.lba, r.result.is_ok())
        };
        let h = self.head.as_mut().expect("only the head writes");
        let mut lost = std::mem::take(&mut h.lost);
        if ok {
            h.shared.publish(lba, &h.fresh[slot], &mut lost);
        } else {
            // Never visible: the blocks go back at once.
            h.fresh[slot].iter().for_each(|f| h.shared.alloc.release(f.pba));
        }
        h.fresh[slot].clear();
        for &(off, pba) in &lost {
            // Pinned by `publish`: unpinned when this write completes.
            push_run(&mut self.head.as_mut().expect("head").pinned[slot], pba);
            self.sub_write(slot, off as u64, pba, 1);
        }
        lost.clear();
        self.head.as_mut().expect("head").lost = lost;
    }

    /// A head flush's data is durable: journal the map changes before its cut.
    fn journal(&mut self, slot: usize, cut: u64) {
        let bs = self.bs;
        let h = self.head.as_mut().expect("only the head flushes its map");
        match h.shared.start_journal(cut, &mut h.entries, &mut h.release) {
            JournalStart::Busy => {
                h.waiting.push_back(slot);
                self.req(slot).stage = Stage::FlushWait { cut };
            }
            JournalStart::Nothing => self.req(slot).stage = Stage::Io,
            JournalStart::Full => {
                self.req(slot).result = Err(BdevError::Io(
                    "standby metadata area full: head map cannot be journaled".into(),
                ));
            }
            JournalStart::Write { at, seq, nblocks } => {
                h.holds_journal = Some(nblocks);
                h.record.clear();
                encode_head(&mut h.record, bs, seq, &h.entries);
                let mut b = DmaBuf::recycled(h.record.len());
                b.copy_from_slice(&h.record);
                self.req(slot).stage = Stage::JournalWrite { nblocks };
                // Write then flush: queue order on one channel is not completion
                // order, so the flush waits for the write's completion.
                self.sub(IoOp::Write, slot, 0, at, nblocks, Some(b), true);
            }
        }
    }

    fn end_journal(&mut self, ok: bool, nblocks: u64) {
        let h = self.head.as_mut().expect("head");
        h.holds_journal = None;
        h.shared.end_journal(ok, nblocks, &mut h.entries, &mut h.release);
    }

    /// Flushes waiting for the journal try again.
    fn retry_waiting(&mut self) {
        let n = self.head.as_ref().map_or(0, |h| h.waiting.len());
        for _ in 0..n {
            let Some(slot) = self.head.as_mut().and_then(|h| h.waiting.pop_front()) else {
                break;
            };
            if let Some(Stage::FlushWait { cut }) = self.reqs[slot].as_ref().map(|r| r.stage) {
                self.journal(slot, cut);
                self.finish_if_idle(slot);
            }
        }
    }

    /// Splits a read into runs of the map; zero runs are filled here. Head blocks are
    /// pinned until the read completes (`Pins`).
    fn submit_read(&mut self, slot: usize, io: IoRequest) {
        let mut buf = io.buf.expect("validated: reads carry a buffer");
        let n = io.num_blocks as u64;
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        for i in 0..n {
            let (p, pinned) = self.lookup.pba(io.offset_blocks + i);
            if pinned {
                if let Some(h) = self.head.as_mut() {
                    push_run(&mut h.pinned[slot], p);
                }
            }
            match runs.last_mut() {
                Some(r) if r.1 == ZERO_PBA && p == ZERO_PBA => r.2 += 1,
                Some(r) if r.1 != ZERO_PBA && p != ZERO_PBA && r.1 + r.2 == p => r.2 += 1,
                _ => runs.push((i, p, 1)),
            }
        }
        if let [(0, p, len)] = runs[..] {
            if p != ZERO_PBA && len == n {
                // One run: the data bdev reads into the request's buffer.
                self.req(slot).direct = true;
                self.sub(IoOp::Read, slot, 0, p, len, Some(buf), false);
                self.runs = runs;
                return;
            }
        }
        for &(i, p, len) in &runs {
            if p == ZERO_PBA {
                buf[i as usize * self.bs..(i + len) as usize * self.bs].fill(0);
            }
        }
        self.req(slot).buf = Some(buf);
        for &(i, p, len) in &runs {
            if p != ZERO_PBA {
                let b = DmaBuf::recycled(len as usize * self.bs);
                self.sub(IoOp::Read, slot, i, p, len, Some(b), false);
            }
        }
        self.runs = runs;
    }

    /// A head write: in place where the head owns the block, else into a new block
    /// published when the data is written (`publish`). Contiguous blocks go as one run.
    fn submit_write(&mut self, slot: usize, io: IoRequest) {
        self.req(slot).buf = io.buf;
        let n = io.num_blocks as u64;
        let h = self.head.as_mut().expect("only the head accepts writes");
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        let fresh = &mut h.fresh[slot];
        fresh.clear();
        let mut full = false;
        for i in 0..n {
            let pba = match h.shared.get_pinned(io.offset_blocks + i).in_place() {
                Some(p) => {
                    push_run(&mut h.pinned[slot], p);
                    p
                }
                None => match h.shared.alloc.take(&mut h.cursor) {
                    Some(p) => {
                        fresh.push(Fresh { off: i as u32, pba: p });
                        p
                    }
                    None => {
                        full = true;
                        break;
                    }
                },
            };
            match runs.last_mut() {
                Some(r) if r.1 + r.2 == pba => r.2 += 1,
                _ => runs.push((i, pba, 1)),
            }
        }
        if full {
            fresh.drain(..).for_each(|f| h.shared.alloc.release(f.pba));
            h.pinned[slot].drain(..).for_each(|(p, n)| h.shared.unpin(p, n));
            self.req(slot).result = Err(BdevError::Io("standby data bdev is full".into()));
        } else {
            if !fresh.is_empty() {
                self.req(slot).stage = Stage::FreshWrite;
            }
            for &(i, p, len) in &runs {
                self.sub_write(slot, i, p, len);
            }
        }
        self.runs = runs;
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
            lba: io.offset_blocks,
            remaining: 0,
            result: Ok(()),
            stage: Stage::Io,
            is_read: io.op == IoOp::Read,
            direct: false,
        });
        match io.op {
            IoOp::Read => self.submit_read(slot, io),
            IoOp::Write => self.submit_write(slot, io),
            IoOp::WriteZeroes | IoOp::Unmap => {
                let h = self.head.as_ref().expect("only the head accepts writes");
                h.shared.unmap(io.offset_blocks, io.num_blocks as u64);
            }
            IoOp::Flush => {
                if let Some(h) = self.head.as_ref() {
                    let cut = h.shared.cut();
                    self.req(slot).stage = Stage::FlushData { cut };
                    self.sub(IoOp::Flush, slot, 0, 0, 0, None, false);
                }
            }
        }
        self.finish_if_idle(slot);
        self.pump();
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.pump();
        let mut subs = std::mem::take(&mut self.subs);
        self.data.poll(&mut |c| subs.push(c));
        if let Some(h) = self.head.as_mut() {
            h.meta.poll(&mut |c| subs.push(c));
        }
        for c in subs.drain(..) {
            self.on_sub(c);
        }
        self.subs = subs;
        if let Some(h) = self.head.as_ref() {
            h.shared.retry_deferred();
        }
        self.retry_waiting();
        self.pump();
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            f(c);
        }
        n
    }
}

impl Drop for HeadCtx {
    fn drop(&mut self) {
        // Dropped after the channel's data channel (an earlier field of `VChannel`):
        // a back end that runs I/O after submit waits for it on close (uring), RAM
        // ran it at submit, so the pins of requests still open go now.
        for runs in &mut self.pinned {
            runs.drain(..).for_each(|(p, n)| self.shared.unpin(p, n));
        }
    }
}

impl Drop for VChannel {
    fn drop(&mut self) {
        // A channel closed while its flush holds the journal gives it back (the
        // record's fate is unknown: its changes go into the next record).
        if let Some(nblocks) = self.head.as_ref().and_then(|h| h.holds_journal) {
            self.end_journal(false, nblocks);
        }
    }
}

/// The writable head of a promoted snapshot-mode volume: the last snapshot,
/// with writes redirected to blocks no snapshot holds (allocate on first
/// write, overwrite in place after), the map journaled on flush (volatile
/// write cache semantics: what was written before a completed flush survives
/// a crash). Any number of channels: they share [`HeadShared`].
pub struct HeadBdev {
    pub(super) info: BdevInfo,
    pub(super) data: Arc<dyn Bdev>,
    pub(super) meta: Arc<dyn Bdev>,
    pub(super) shared: Arc<HeadShared>,
    pub(super) stats: StatsSet,
}

impl Bdev for HeadBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let ctx = HeadCtx {
            meta: self.meta.open_channel()?,
            shared: self.shared.clone(),
            cursor: self.shared.channel_cursor(),
            fresh: (0..VCHANNEL_DEPTH).map(|_| Vec::new()).collect(),
            pinned: (0..VCHANNEL_DEPTH).map(|_| Vec::new()).collect(),
            lost: Vec::new(),
            entries: Vec::new(),
            release: Vec::new(),
            record: Vec::new(),
            holds_journal: None,
            waiting: VecDeque::with_capacity(VCHANNEL_DEPTH),
        };
        let inner = VChannel::new(
            self.data.open_channel()?,
            self.info.block_size,
            Lookup::Head(self.shared.clone()),
            Some(ctx),
        );
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(1),
            self.stats.new_channel(),
            Box::new(inner),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
}
