//! The bdevs over snapshots: a read-only snapshot export and the writable head of a
//! promoted standby, whose channel redirects a block's first write to a new block and
//! journals its map changes on flush (`docs/standby.md`, "Primary failure and promotion").

use super::*;

/// Requests a snapshot/head channel keeps in flight.
pub(super) const VCHANNEL_DEPTH: usize = 256;

/// A read-only bdev showing one snapshot (DR drills while replication goes
/// on). The map is frozen at export; the snapshot is pinned (not deleted)
/// while this bdev lives. Reads are split by physical run; each run reads
/// into its own buffer (allocated: this is a drill path, not the data path).
pub struct SnapshotBdev {
    pub(super) name: String,
    pub(super) uuid: [u8; 16],
    pub(super) block_size: u32,
    pub(super) num_blocks: u64,
    pub(super) data: Arc<dyn Bdev>,
    pub(super) map: Arc<Vec<(u64, u64)>>,
    pub(super) _pin: Arc<()>,
    pub(super) stats: StatsSet,
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

pub(super) type MapFn = Box<dyn Fn(u64) -> u64>;

pub(super) struct VReq {
    pub(super) user_data: u64,
    pub(super) buf: Option<DmaBuf>,
    pub(super) remaining: usize,
    pub(super) result: Result<(), BdevError>,
    /// Flush of the head: journal the dirty map after the data flush.
    pub(super) flush_stage: u8,
    pub(super) is_read: bool,
    /// Head writes: new mappings, recorded for journaling only once the
    /// request's data is on the data bdev.
    pub(super) new_maps: Vec<(u64, u64)>,
    /// Head flush: blocks freed by the mappings it journals, reusable once
    /// the journal record is durable.
    pub(super) release_after: Vec<u64>,
}

/// Channel of a snapshot or head bdev: splits block requests into runs on
/// the data bdev and reassembles them.
pub(super) struct VChannel {
    pub(super) data: BdevChannel,
    pub(super) bs: usize,
    pub(super) lookup: MapFn,
    pub(super) head: Option<HeadCtx>,
    pub(super) reqs: Vec<Option<VReq>>,
    pub(super) free_slots: Vec<usize>,
    pub(super) backlog: VecDeque<IoRequest>,
    pub(super) done: VecDeque<IoCompletion>,
}

/// Sub-request user data: slot in the high half, block offset in the request
/// in the low half; the top bit marks metadata I/O of the head.
pub(super) const SUB_META: u64 = 1 << 63;

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
    // One piece on purpose: one dispatch over the I/O kinds on the data path, each arm the
    // translation of that kind through the block map, all sharing the slot just taken.
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
pub(super) struct HeadState {
    /// lba -> (pba, owned by the head: may be overwritten in place).
    pub(super) map: HashMap<u64, (u64, bool)>,
    pub(super) alloc: Alloc,
    /// Head mappings written but not yet journaled (journaled on flush).
    pub(super) dirty: Vec<(u64, u64)>,
    /// Blocks unmapped by a write-zeroes, reusable after the next journal flush.
    pub(super) limbo: Vec<u64>,
    pub(super) log_pos: u64,
    pub(super) next_seq: u64,
    pub(super) area_start: u64,
    pub(super) area_blocks: u64,
}

pub(super) struct HeadCtx {
    pub(super) meta: BdevChannel,
    pub(super) state: StateCell,
}

/// The head state while a channel holds it.
pub(super) struct StateCell(Option<HeadState>);

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
    pub(super) name: String,
    pub(super) uuid: [u8; 16],
    pub(super) block_size: u32,
    pub(super) num_blocks: u64,
    pub(super) data: Arc<dyn Bdev>,
    pub(super) meta: Arc<dyn Bdev>,
    pub(super) state: Arc<Mutex<Option<HeadState>>>,
    pub(super) stats: StatsSet,
}

pub(super) struct HeadChannel {
    pub(super) inner: VChannel,
    pub(super) home: Arc<Mutex<Option<HeadState>>>,
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
