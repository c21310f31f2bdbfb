//! Block sync: the primary sends blocks' current contents again, so a history that lost
//! LSNs everywhere becomes whole again (`docs/replication.md`, "Block sync").
//!
//! Why: a resync base (`volume/resync.rs`) gives a relay a new history from the oldest
//! LSN the primary still holds; what it skipped is held by the other relays. When no
//! other relay is known to hold it (one relay, or every relay lost it), or on request
//! (`replication_sync_volume`), the primary sends every block written since `covers_from`
//! (from the dirty-block record, `volume/dirty.rs`) or every block of the volume (`full`):
//!
//! 1. a `Sync Begin { covers_from }` marker op at LSN S;
//! 2. the blocks, read from the base bdev in chunks and sent as **ordinary writes**, each
//!    at the LSN it gets when its read completes and holding the block's content as of
//!    that LSN (below); a write to a chunk from S on sends it itself and takes the chunk
//!    off the list when it covers it whole;
//! 3. a `Sync End { begin_lsn: S }` marker op once every chunk was sent.
//!
//! Every relay gets these ops like any other (the same LSNs, the same content
//! everywhere): the history stays the primary's one LSN sequence. A standby that has every
//! LSN applies them as writes; one stuck at a hole no relay holds inside `covers_from..S`
//! skips it and is consistent again at the first restart point after the End
//! (`standby/src/sync_skip.rs`).
//!
//! **Content as of its LSN.** A chunk's read is sent at LSN L (assigned when the read
//! completes) only if (a) when it was issued no write overlapping the chunk was still
//! being written to the base bdev (each channel publishes its slots' ranges in flight,
//! [`super::ChanShared::busy`]), and (b) no write overlapping it got an LSN while it was
//! read. Then every write with an LSN below L that touches the chunk had landed before
//! the read (a write that got its LSN before the read was issued landed by (a); none got
//! one during it by (b)), so the content includes all of them; a write that lands during
//! the read gets its LSN after L and overwrites its blocks after the sync write, so the
//! end state is the same (the sync write may show it early: the write was in flight, not
//! acknowledged). A read that fails (b) is thrown away and the chunk read again.

use engine::bdev::{BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use engine::regionmap;
use serde::Serialize;
use std::sync::atomic::Ordering;

use super::{InFlight, LinkState, OpMeta, Owner, INFLIGHT_OPS_MAX};
use crate::dataref::DataRef;
use rdma_transport::wire::{OpKind, SyncMark};

/// Bytes read and sent per sync write.
pub const SYNC_CHUNK_BYTES: u64 = 64 * 1024;
/// Sync writes with an LSN and not yet retired (bounds the sync's share of the
/// in-flight table and of the retention ring).
pub const SYNC_OPS_IN_FLIGHT_MAX: u64 = 64;
/// How often a running sync's progress is persisted (with a `dirty_map`).
const SYNC_PERSIST_PERIOD_NS: u64 = 1_000_000_000;

/// What `replication_get_volumes` shows of the current (or last) block sync.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct SyncStatus {
    /// "reading", "ending" (End sent, not yet acknowledged), "done", or "failed".
    pub state: &'static str,
    /// Every block of the volume, not only the dirty ones.
    pub full: bool,
    /// An initial sync (the base held data no LSN wrote): no standby is a valid failover
    /// target until it ended.
    pub initial: bool,
    /// Why it started.
    pub reason: String,
    /// Blocks written from this LSN on are covered.
    pub covers_from_lsn: u64,
    /// LSN of the Begin marker.
    pub begin_lsn: u64,
    /// LSN of the End marker (0 until sent).
    pub end_lsn: u64,
    /// Chunks to send in all, and sent or made unnecessary by later writes.
    pub chunks_total: u64,
    pub chunks_done: u64,
    /// Bytes sent as sync writes.
    pub bytes_sent: u64,
    /// Reads thrown away because a write to the chunk got its LSN meanwhile.
    pub reads_discarded: u64,
    /// Times a chunk waited for a write to it to land on the base bdev.
    pub busy_waits: u64,
    /// The last error (the sync stops on a read error).
    pub last_error: String,
    /// Bytes the sync has to send in all (chunks × chunk size, the last chunk clipped).
    pub bytes_total: u64,
    /// Chunks done over chunks in all, in percent (100 once done).
    pub percent: f64,
    /// Time since the sync started (until it ended, once done or failed), ms.
    pub elapsed_ms: u64,
    /// Average rate of sync bytes sent since the start, bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Time left at the average rate (0 once done; absent before a first chunk).
    pub eta_ms: Option<u64>,
}

/// A read of one run of chunks, in flight on the base bdev.
struct Reading {
    offset: u64,
    blocks: u64,
    /// A write overlapping it got an LSN while it was read: throw it away.
    touched: bool,
}

/// What a sync sends and how fast.
pub(super) struct SyncPlan {
    /// Every block of the volume (else the dirty `runs`).
    pub full: bool,
    /// The dirty record covers writes from this LSN on.
    pub covers_from: u64,
    /// Bandwidth cap (0: none).
    pub bytes_per_sec: u64,
    /// Why it runs (for status and logs).
    pub reason: String,
    /// Blocks per chunk (default: `SYNC_CHUNK_BYTES`; a delta sync uses its region size,
    /// and consecutive chunks are still read and sent together).
    pub chunk_blocks: Option<u64>,
}

/// A block sync in progress on the link reactor.
pub(super) struct BlockSync {
    st: SyncStatus,
    chunk_blocks: u64,
    num_blocks: u64,
    /// One bit per chunk still to send.
    todo: Vec<u64>,
    /// Next chunk to look at (a pass goes round the volume; busy chunks wait for the next).
    cursor: u64,
    chan: BdevChannel,
    reading: Option<Reading>,
    /// Sync writes not yet retired.
    unretired: u64,
    /// Bandwidth cap (0: none) and its token bucket.
    bytes_per_sec: u64,
    tokens: f64,
    tokens_ns: u64,
    /// Monotonic start, and end once done or failed (0: running).
    started_ns: u64,
    ended_ns: u64,
    chunk_bytes: u64,
    /// Chunk ranges `[first, end)` of sync writes not yet retired, oldest first: still to
    /// send after a crash (their writes may be lost with the in-flight table).
    unretired_chunks: std::collections::VecDeque<(u64, u64)>,
    /// When progress was last handed to the flusher (`volume/dirty.rs`).
    persisted_ns: u64,
}

impl BlockSync {
    /// A sync of the dirty `runs` (or of every block when `full`).
    pub(super) fn new(
        chan: BdevChannel,
        block_size: u32,
        num_blocks: u64,
        runs: &[(u64, u64)],
        plan: SyncPlan,
    ) -> BlockSync {
        let SyncPlan {
            full,
            covers_from,
            bytes_per_sec,
            reason,
            chunk_blocks,
        } = plan;
        let max_chunk = (SYNC_CHUNK_BYTES / u64::from(block_size)).max(1);
        let chunk_blocks = chunk_blocks.map_or(max_chunk, |c| c.clamp(1, max_chunk));
        let chunks = num_blocks.div_ceil(chunk_blocks);
        let mut todo = vec![0u64; chunks.div_ceil(64) as usize];
        let mut set = |c: u64| todo[(c / 64) as usize] |= 1 << (c % 64);
        if full {
            (0..chunks).for_each(&mut set);
        } else {
            for &(first, n) in runs {
                let last = (first + n.max(1) - 1).min(num_blocks.saturating_sub(1));
                (first / chunk_blocks..=last / chunk_blocks).for_each(&mut set);
            }
        }
        let total = todo.iter().map(|w| u64::from(w.count_ones())).sum();
        BlockSync {
            st: SyncStatus {
                state: "reading",
                full,
                reason,
                covers_from_lsn: covers_from.max(1),
                chunks_total: total,
                ..SyncStatus::default()
            },
            chunk_blocks,
            num_blocks,
            todo,
            cursor: 0,
            chan,
            reading: None,
            unretired: 0,
            bytes_per_sec,
            tokens: 0.0,
            tokens_ns: 0,
            started_ns: engine::clock::now_ns(),
            ended_ns: 0,
            chunk_bytes: chunk_blocks * u64::from(block_size),
            unretired_chunks: std::collections::VecDeque::with_capacity(SYNC_OPS_IN_FLIGHT_MAX as usize),
            persisted_ns: 0,
        }
    }

    pub(super) fn status(&self) -> SyncStatus {
        let mut st = self.st.clone();
        let end = match st.state {
            "done" | "failed" if self.ended_ns != 0 => self.ended_ns,
            _ => engine::clock::now_ns(),
        };
        let elapsed_ns = end.saturating_sub(self.started_ns).max(1);
        st.bytes_total = st.chunks_total * self.chunk_bytes;
        st.percent = if st.state == "done" || st.chunks_total == 0 {
            100.0
        } else {
            (st.chunks_done as f64 * 100.0 / st.chunks_total as f64).min(100.0)
        };
        st.elapsed_ms = elapsed_ns / 1_000_000;
        st.rate_bytes_per_sec = (st.bytes_sent as u128 * 1_000_000_000 / u128::from(elapsed_ns)) as u64;
        let left = st.chunks_total.saturating_sub(st.chunks_done) * self.chunk_bytes;
        st.eta_ms = match st.state {
            "done" => Some(0),
            _ if st.rate_bytes_per_sec > 0 => Some(left.saturating_mul(1000) / st.rate_bytes_per_sec),
            _ => None,
        };
        st
    }

    /// Marks the end time (done or failed).
    fn stamp_end(&mut self) {
        if self.ended_ns == 0 {
            self.ended_ns = engine::clock::now_ns();
        }
    }

    fn is_todo(&self, c: u64) -> bool {
        self.todo[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    fn done_chunk(&mut self, c: u64) {
        let w = &mut self.todo[(c / 64) as usize];
        if *w & (1 << (c % 64)) != 0 {
            *w &= !(1 << (c % 64));
            self.st.chunks_done += 1;
        }
    }

    /// A write (or zeroes / unmap) of `offset..offset + blocks` got an LSN after the Begin:
    /// it sends the chunks it covers whole itself, and spoils a read it overlaps.
    pub(super) fn on_write(&mut self, offset: u64, blocks: u64) {
        // Only writes numbered after the Begin count (one before it may be skipped with the
        // hole), and nothing is left to do once every chunk is sent: no work per write then.
        if blocks == 0 || self.st.begin_lsn == 0 || self.st.state != "reading" {
            return;
        }
        let end = offset.saturating_add(blocks);
        if let Some(r) = self.reading.as_mut() {
            if offset < r.offset + r.blocks && r.offset < end {
                r.touched = true;
            }
        }
        let first = offset.div_ceil(self.chunk_blocks);
        let last_end = if end >= self.num_blocks {
            self.num_blocks.div_ceil(self.chunk_blocks)
        } else {
            end / self.chunk_blocks
        };
        for c in first..last_end {
            self.done_chunk(c);
        }
    }

    /// A sync write retired (they retire in LSN order).
    pub(super) fn retired(&mut self) {
        self.unretired = self.unretired.saturating_sub(1);
        self.unretired_chunks.pop_front();
    }

    /// The progress file image: chunks still to send (todo, and sent but not retired) as a
    /// region map of one bit per chunk (`engine::regionmap`; `None` when chunks are not a
    /// power of two blocks).
    fn progress_image(&self) -> Option<Vec<u8>> {
        if !self.chunk_blocks.is_power_of_two() {
            return None;
        }
        let mut words = self.todo.clone();
        for &(a, b) in &self.unretired_chunks {
            for c in a..b {
                words[(c / 64) as usize] |= 1 << (c % 64);
            }
        }
        let chunks = self.num_blocks.div_ceil(self.chunk_blocks);
        Some(regionmap::encode(
            self.chunk_blocks.trailing_zeros(),
            chunks,
            self.st.begin_lsn,
            words.into_iter(),
        ))
    }

    /// The End marker was acknowledged under the policy.
    pub(super) fn ended(&mut self) {
        self.st.state = "done";
        self.stamp_end();
    }

    fn refill(&mut self, now: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let cap = (self.bytes_per_sec as f64).max(SYNC_CHUNK_BYTES as f64);
        if self.tokens_ns == 0 {
            self.tokens = SYNC_CHUNK_BYTES as f64;
        } else {
            let dt = now.saturating_sub(self.tokens_ns) as f64 / 1e9;
            self.tokens = (self.tokens + dt * self.bytes_per_sec as f64).min(cap);
        }
        self.tokens_ns = now;
    }
}

impl LinkState {
    /// Starts a block sync (one at a time: a request while one runs widens nothing and is
    /// refused by the caller). Returns false if the base bdev cannot be read here.
    pub(super) fn start_block_sync(&mut self, full: bool, bytes_per_sec: u64, reason: String) -> Result<(), String> {
        self.start_sync_of(full, false, bytes_per_sec, reason)
    }

    /// As [`Self::start_block_sync`]; `initial` marks it with an `Initial` marker (every
    /// standby treats its image as not the primary's until the End).
    pub(super) fn start_sync_of(
        &mut self,
        full: bool,
        initial: bool,
        bytes_per_sec: u64,
        reason: String,
    ) -> Result<(), String> {
        self.start_sync_with(full, initial, bytes_per_sec, reason, None)
    }

    /// As [`Self::start_sync_of`]; `delta`: send exactly these (first block, blocks) runs
    /// in chunks of the given blocks (a failback, `docs/failback.md`) instead of the
    /// dirty-block record's or every block.
    pub(super) fn start_sync_with(
        &mut self,
        full: bool,
        initial: bool,
        bytes_per_sec: u64,
        reason: String,
        delta: Option<(Vec<(u64, u64)>, u64)>,
    ) -> Result<(), String> {
        if self
            .sync
            .as_ref()
            .is_some_and(|s| s.st.state != "done" && s.st.state != "failed")
        {
            return Err("a block sync is already running".into());
        }
        let chan = self.s.base.open_channel().map_err(|e| format!("base bdev: {e}"))?;
        let covers_from = if full || delta.is_some() {
            1
        } else {
            self.dirty.covers_from()
        };
        let (runs, chunk_blocks) = match delta {
            Some((runs, chunk)) => (runs, Some(chunk)),
            None if full => (Vec::new(), None),
            None => (self.s.dirty.runs(self.s.base.num_blocks()), None),
        };
        let bs = self.s.base.block_size();
        let plan = SyncPlan {
            full,
            covers_from,
            bytes_per_sec,
            reason,
            chunk_blocks,
        };
        let mut s = BlockSync::new(chan, bs, self.s.base.num_blocks(), &runs, plan);
        s.st.initial = initial;
        log::warn!(
            "volume {}: block sync ({}): {} chunks of {} KiB, covering writes from LSN {}",
            self.s.cfg.name,
            s.st.reason,
            s.st.chunks_total,
            s.chunk_bytes / 1024,
            s.st.covers_from_lsn
        );
        self.sync = Some(s);
        Ok(())
    }

    /// Pushes a marker op at the next LSN.
    fn push_mark(&mut self, mark: SyncMark) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let (arg0, arg1) = mark.args();
        self.inflight.push_back(InFlight {
            op: OpMeta {
                lsn,
                kind: OpKind::Sync,
                arg0,
                arg1,
                data: DataRef::EMPTY,
                crc: crc32c::crc32c(&[]),
            },
            owner: Owner::SyncMark {
                end: matches!(mark, SyncMark::End { .. }),
            },
            refs: 0,
            dirty_mark: 0,
        });
        lsn
    }

    /// Moves the block sync forward: Begin, reads, sync writes, End. Link reactor.
    pub(super) fn drive_sync(&mut self, now: u64) -> bool {
        let Some(mut s) = self.sync.take() else { return false };
        let busy = self.drive_sync_inner(&mut s, now);
        self.persist_progress(&mut s, now);
        self.sync = Some(s);
        busy
    }

    /// Hands the sync's progress to the dirty-block record's flusher (with a `dirty_map`
    /// only): at most once per [`SYNC_PERSIST_PERIOD_NS`] while it runs (a file that is
    /// behind only sends chunks again), removed once it is done. Link reactor; the image
    /// is built off the data path, once a second.
    fn persist_progress(&mut self, s: &mut BlockSync, now: u64) {
        if !self.s.dirty.persisted() || s.st.begin_lsn == 0 || s.persisted_ns == u64::MAX {
            return;
        }
        match s.st.state {
            "done" if self.s.dirty.offer_sync_image(None) => s.persisted_ns = u64::MAX,
            "done" | "failed" => {}
            _ if now.saturating_sub(s.persisted_ns) >= SYNC_PERSIST_PERIOD_NS => {
                if let Some(img) = s.progress_image() {
                    if self.s.dirty.offer_sync_image(Some(img)) {
                        s.persisted_ns = now;
                    }
                }
            }
            _ => {}
        }
    }

    /// At a stop, the running sync's progress as it is now (the flusher's last pass
    /// writes it).
    pub(super) fn persist_sync_at_stop(&mut self) {
        if let Some(mut s) = self.sync.take() {
            if matches!(s.st.state, "reading" | "ending") {
                s.persisted_ns = 0;
            }
            self.persist_progress(&mut s, u64::MAX - 1);
            self.sync = Some(s);
        }
    }

    /// After a restart: a sync cut short (its progress file is there) goes on with what it
    /// had left, plus the dirty-block record; its marker is a full `Begin`, whose `End`
    /// every standby takes as making a syncing image whole (`docs/replication.md`, "Block
    /// sync"). True if one was resumed.
    pub(super) fn resume_sync(&mut self, bytes_per_sec: u64) -> bool {
        let Some(path) = self.s.dirty.sync_path() else {
            return false;
        };
        let img = match regionmap::read(&path) {
            Ok(Some(img)) => img,
            Ok(None) => return false,
            Err(e) => {
                log::error!("volume {}: {e}: a full sync follows instead", self.s.cfg.name);
                return self
                    .start_block_sync(
                        true,
                        bytes_per_sec,
                        "resumed after a restart (progress unreadable)".into(),
                    )
                    .is_ok();
            }
        };
        let num_blocks = self.s.base.num_blocks();
        if img.regions != regionmap::regions(num_blocks, img.shift) {
            log::error!(
                "volume {}: sync progress {}: geometry differs; a full sync follows",
                self.s.cfg.name,
                path.display()
            );
            return self
                .start_block_sync(true, bytes_per_sec, "resumed after a restart (geometry changed)".into())
                .is_ok();
        }
        let mut runs = img.runs(num_blocks);
        runs.extend(self.s.dirty.runs(num_blocks));
        runs.sort_unstable();
        let chunk = 1u64 << img.shift;
        let r = self.start_sync_with(
            false,
            false,
            bytes_per_sec,
            "resumed after a restart".into(),
            Some((runs, chunk)),
        );
        match r {
            Ok(()) => {
                if let Some(s) = self.sync.as_mut() {
                    // The marker covers everything: the End completes a syncing image.
                    s.st.full = true;
                }
                true
            }
            Err(e) => {
                log::error!("volume {}: cannot resume the block sync: {e}", self.s.cfg.name);
                false
            }
        }
    }

    fn drive_sync_inner(&mut self, s: &mut BlockSync, now: u64) -> bool {
        if matches!(s.st.state, "done" | "failed" | "ending") || self.next_lsn == 0 {
            return false;
        }
        let room = |ls: &LinkState| ls.inflight.len() < INFLIGHT_OPS_MAX / 2;
        if s.st.begin_lsn == 0 {
            if !room(self) {
                return false;
            }
            s.st.begin_lsn = self.push_mark(if s.st.initial {
                SyncMark::Initial
            } else {
                SyncMark::Begin {
                    covers_from: s.st.covers_from_lsn,
                    full: s.st.full,
                }
            });
            return true;
        }
        let mut busy = false;
        let mut done: Option<IoCompletion> = None;
        s.chan.poll(&mut |c| done = Some(c));
        if let Some(c) = done {
            busy = true;
            let r = s.reading.take().expect("a completion means a read was in flight");
            match (c.result, c.buf) {
                (Ok(()), Some(buf)) if !r.touched => self.push_sync_write(s, r, buf),
                (Ok(()), _) => s.st.reads_discarded += 1,
                (Err(e), _) => {
                    s.st.last_error = format!("read of blocks {}+{}: {e}", r.offset, r.blocks);
                    s.st.state = "failed";
                    s.stamp_end();
                    log::error!("volume {}: block sync stopped: {}", self.s.cfg.name, s.st.last_error);
                    return true;
                }
            }
        }
        if s.reading.is_some() {
            return busy;
        }
        if s.st.chunks_done >= s.st.chunks_total {
            if room(self) {
                s.st.end_lsn = self.push_mark(SyncMark::End {
                    begin_lsn: s.st.begin_lsn,
                });
                s.st.state = "ending";
                log::info!(
                    "volume {}: block sync sent {} bytes in LSNs {}..{}",
                    self.s.cfg.name,
                    s.st.bytes_sent,
                    s.st.begin_lsn,
                    s.st.end_lsn
                );
                return true;
            }
            return busy;
        }
        if s.unretired >= SYNC_OPS_IN_FLIGHT_MAX || !room(self) {
            return busy;
        }
        s.refill(now);
        if s.bytes_per_sec != 0 && s.tokens < (s.chunk_blocks * u64::from(self.s.base.block_size())) as f64 {
            return busy;
        }
        busy | self.issue_read(s)
    }

    /// Issues the read of the next chunk to send whose blocks no write is landing on.
    fn issue_read(&mut self, s: &mut BlockSync) -> bool {
        let chunks = s.num_blocks.div_ceil(s.chunk_blocks);
        for _ in 0..chunks.min(64) {
            let c = s.cursor;
            s.cursor = (s.cursor + 1) % chunks;
            if !s.is_todo(c) {
                continue;
            }
            let offset = c * s.chunk_blocks;
            let mut blocks = s.chunk_blocks.min(s.num_blocks - offset);
            if self.landing(offset, blocks) {
                s.st.busy_waits += 1;
                continue;
            }
            // Small chunks (a delta sync) that follow each other go out as one read and
            // one write of up to SYNC_CHUNK_BYTES.
            let bs = u64::from(self.s.base.block_size());
            while s.cursor != 0
                && s.is_todo(s.cursor)
                && (blocks + s.chunk_blocks) * bs <= SYNC_CHUNK_BYTES
                && !self.landing(offset + blocks, s.chunk_blocks.min(s.num_blocks - offset - blocks))
            {
                blocks += s.chunk_blocks.min(s.num_blocks - offset - blocks);
                s.cursor = (s.cursor + 1) % chunks;
            }
            let req = IoRequest {
                op: IoOp::Read,
                offset_blocks: offset,
                num_blocks: blocks as u32,
                buf: Some(DmaBuf::recycled((blocks * bs) as usize)),
                user_data: c,
            };
            if s.chan.submit(req).is_err() {
                return false;
            }
            s.tokens -= (blocks * bs) as f64;
            s.reading = Some(Reading {
                offset,
                blocks,
                touched: false,
            });
            return true;
        }
        false
    }

    /// Whether a channel's write overlapping `offset..offset + blocks` is still being
    /// written to the base bdev (see the module docs, (a)). The registry's lock is only
    /// tried: when a channel is being opened, the chunk waits for the next poll.
    fn landing(&self, offset: u64, blocks: u64) -> bool {
        let Ok(chans) = self.s.chans.try_lock() else {
            return true;
        };
        chans.iter().filter_map(|w| w.upgrade()).any(|c| {
            c.busy.iter().any(|b| {
                let v = b.load(Ordering::Acquire);
                v != 0 && {
                    let (o, n) = super::unpack_busy(v);
                    o < offset + blocks && offset < o + n
                }
            })
        })
    }

    /// The read was clean: its blocks go out as a write at the next LSN.
    fn push_sync_write(&mut self, s: &mut BlockSync, r: Reading, buf: DmaBuf) {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        // SAFETY: the buffer's heap bytes live in `Owner::SyncWrite` until the entry is
        // retired, which waits for `refs == 0`; moving a DmaBuf does not move its bytes.
        let data = unsafe { DataRef::new(&buf) };
        let crc = crc32c::crc32c(&data);
        let dirty_mark = self.dirty.mark(r.offset, r.blocks);
        self.inflight.push_back(InFlight {
            op: OpMeta {
                lsn,
                kind: OpKind::Write,
                arg0: r.offset,
                arg1: r.blocks,
                data,
                crc,
            },
            owner: Owner::SyncWrite { _buf: buf },
            refs: 0,
            dirty_mark,
        });
        s.unretired += 1;
        s.st.bytes_sent += r.blocks * u64::from(self.s.base.block_size());
        let chunks = (
            r.offset / s.chunk_blocks,
            (r.offset + r.blocks).div_ceil(s.chunk_blocks),
        );
        for c in chunks.0..chunks.1 {
            s.done_chunk(c);
        }
        s.unretired_chunks.push_back(chunks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(name: &str) -> BlockSync {
        let b = engine::bdev::malloc::create(name, 64, 4096, None).unwrap();
        let plan = SyncPlan {
            full: true,
            covers_from: 1,
            bytes_per_sec: 0,
            reason: "test".into(),
            chunk_blocks: None,
        };
        BlockSync::new(b.open_channel().unwrap(), 4096, 64, &[], plan)
    }

    #[test]
    fn only_writes_numbered_after_the_begin_take_chunks_off_the_list() {
        let mut s = sync("sync_unit_a");
        assert_eq!(s.st.chunks_total, 4, "64 blocks of 4 KiB in 64 KiB chunks");
        // Before the Begin has its LSN a write may be skipped with the hole: it counts for nothing.
        s.on_write(0, 16);
        assert_eq!(s.st.chunks_done, 0);
        s.st.begin_lsn = 5;
        // Partly covered chunks stay; a whole one goes.
        s.on_write(8, 16);
        assert_eq!(s.st.chunks_done, 0);
        s.on_write(16, 20);
        assert_eq!(s.st.chunks_done, 1);
        assert!(!s.is_todo(1) && s.is_todo(2));
        // The tail chunk is covered by a write reaching the volume's end.
        s.on_write(48, 16);
        assert_eq!(s.st.chunks_done, 2);
        // Once every chunk is sent, writes cost nothing here.
        s.st.state = "ending";
        s.on_write(0, 64);
        assert_eq!(s.st.chunks_done, 2);
    }

    #[test]
    fn a_write_overlapping_the_chunk_being_read_spoils_the_read() {
        let mut s = sync("sync_unit_b");
        s.st.begin_lsn = 5;
        s.reading = Some(Reading {
            offset: 16,
            blocks: 16,
            touched: false,
        });
        s.on_write(40, 1);
        assert!(!s.reading.as_ref().unwrap().touched);
        s.on_write(31, 2);
        assert!(s.reading.as_ref().unwrap().touched);
    }
}
