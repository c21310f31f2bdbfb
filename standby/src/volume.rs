//! [`StandbyVolume`]: one standby volume, the object the network side drives.
//!
//! Lifecycle (one reactor owns it; every method is called on that reactor):
//! 1. [`StandbyVolume::open`] formats fresh bdevs or recovers existing ones
//!    (scan staging / replay metadata, finish an interrupted apply);
//! 2. the connection pollers hand every received batch to
//!    [`StandbyVolume::offer_batch`] and a poller calls
//!    [`StandbyVolume::poll`], which moves ops in LSN order into the mode's
//!    engine and drives its I/O; [`StandbyVolume::gaps`] tells which LSN ranges
//!    to fetch from another relay, [`StandbyVolume::durable_lsn`] what to
//!    confirm to relays (`SafeUpTo`);
//! 3. on primary failure [`StandbyVolume::declare_failure`] stops intake,
//!    finishes every epoch fully received and rolls back the rest; polling
//!    continues until [`StandbyVolume::failed_over`];
//! 4. [`StandbyVolume::promote`] bumps and persists the generation and returns
//!    the writable bdev (delayed: the volume; snapshot: a head over the last
//!    snapshot).

use crate::changed::{ChangedBdev, ChangedStatus};
use crate::delayed::{Delayed, DelayedOpts, DelayedStatus};
use crate::io::Dev;
use crate::receive::{Gap, Offer, OwnedOp, Receiver};
use crate::snapshot::{Snapshot, SnapshotInfo, SnapshotOpts, SnapshotStatus};
use crate::superblock::{Mode, Superblock};
use crate::sync_skip::SyncSkipStatus;
use crate::StandbyError;
use engine::bdev::Bdev;
use engine::reactor::PollStatus;
use engine::regionmap::IntentMap;
use rdma_transport::wire::{Batch, Op, SyncMark};
use std::collections::VecDeque;
use std::sync::Arc;

/// Ops moved from the receiver into the engine per poll.
pub const INTAKE_BATCH_MAX: usize = 256;
/// Restart-point arrival times kept for the lag in seconds.
const RP_TIMES_MAX: usize = 4096;
/// Block-sync `Begin` markers remembered ahead of the next LSN.
const SYNCS_SEEN_MAX: usize = 16;

/// Which mode and which bdevs.
#[derive(Clone)]
pub enum ModeConfig {
    /// Delayed-write mode: the volume bdev holds the last applied restart
    /// point; the staging bdev (same block size) holds superblock and log.
    Delayed {
        volume: Arc<dyn Bdev>,
        staging: Arc<dyn Bdev>,
        opts: DelayedOpts,
    },
    /// Snapshot mode: data blocks are allocated on `data`; the map and
    /// snapshot list live in a journal on `metadata`.
    Snapshot {
        data: Arc<dyn Bdev>,
        metadata: Arc<dyn Bdev>,
        /// Logical size of the volume in blocks (at most the data bdev's).
        volume_blocks: u64,
        opts: SnapshotOpts,
    },
}

/// What [`StandbyVolume::open`] needs.
#[derive(Clone)]
pub struct StandbyConfig {
    pub name: String,
    pub mode: ModeConfig,
    /// Format the bdevs even when they hold a valid standby (start over).
    pub format: bool,
}

enum Engine {
    Delayed(Delayed),
    Snapshot(Snapshot),
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match &$self.engine {
            Engine::Delayed($e) => $body,
            Engine::Snapshot($e) => $body,
        }
    };
    (mut $self:expr, $e:ident => $body:expr) => {
        match &mut $self.engine {
            Engine::Delayed($e) => $body,
            Engine::Snapshot($e) => $body,
        }
    };
}

/// Status as `standby_get_status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StandbyStatus {
    pub name: String,
    pub mode: &'static str,
    pub generation: u64,
    pub promoted: bool,
    pub failure_declared: bool,
    pub failed_over: bool,
    pub error: Option<String>,
    pub applied_epoch: u64,
    pub applied_last_lsn: u64,
    pub applied_rp_lsn: u64,
    /// The restart tag of the applied epoch as text (lossy: tags are bytes).
    pub applied_tag: String,
    /// The same tag, exact, in lowercase hex.
    pub applied_tag_hex: String,
    pub epoch_received_max: u64,
    pub lsn_received_max: u64,
    pub next_lsn: u64,
    pub durable_lsn: u64,
    pub lag_lsn: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub reorder_ops: usize,
    pub reorder_bytes: usize,
    pub duplicates: u64,
    pub stale_generation: u64,
    pub refused_full: u64,
    pub delayed: Option<DelayedStatus>,
    pub snapshot: Option<SnapshotStatus>,
    /// A hole no relay held, skipped under a block sync (`crate::sync_skip`): while
    /// `state` is not "none" the image is not a valid failover target past
    /// `applied_epoch`.
    pub sync_skip: SyncSkipStatus,
    /// "valid", "stale" or "not_valid" ([`Readiness`]).
    pub failover_target: &'static str,
    /// After promotion: the record of blocks changed since the common restart point
    /// (`docs/failback.md`).
    pub changed: Option<ChangedStatus>,
    /// Why the standby is not plainly a valid failover target ("" when it is).
    pub failover_note: String,
}

/// Whether a standby may be failed over to ([`StandbyVolume::failover_readiness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// At a restart point of the primary's image.
    Valid,
    /// At an older restart point than the stream reached (a block sync is covering a
    /// hole): valid, but more is lost than the relays held.
    Stale(String),
    /// Never held the primary's image at a restart point (initial sync under way).
    NotValid(String),
}

impl Readiness {
    /// "valid", "stale" or "not_valid", as `standby_get_status` shows it.
    pub fn label(&self) -> &'static str {
        match self {
            Readiness::Valid => "valid",
            Readiness::Stale(_) => "stale",
            Readiness::NotValid(_) => "not_valid",
        }
    }

    /// Why it is not plainly valid ("" when valid).
    pub fn why(&self) -> &str {
        match self {
            Readiness::Valid => "",
            Readiness::Stale(w) | Readiness::NotValid(w) => w,
        }
    }
}

/// One standby volume; see the module docs.
pub struct StandbyVolume {
    name: String,
    recv: Receiver,
    engine: Engine,
    /// An op popped from the receiver that the engine could not take yet.
    parked: Option<OwnedOp>,
    failing: bool,
    promoted: bool,
    generation: u64,
    /// The generation a failover will promote to, fixed when its drain fenced the relays
    /// with it (0: no drain yet).
    fence_generation: u64,
    /// (epoch, arrival ns) of restart points received and not yet applied.
    rp_times: VecDeque<(u64, u64)>,
    now_ns: u64,
    /// Block-sync `Begin` markers received ahead of the next LSN: (LSN, covers_from).
    syncs_seen: VecDeque<(u64, u64)>,
    /// The `Begin` a hole was skipped to (marked `skipped` when it is taken).
    skip_at: Option<u64>,
    holes_skipped: u64,
    lsns_skipped: u64,
    /// File of the record of changes since promotion (`crate::changed`); None: memory.
    changed_path: Option<std::path::PathBuf>,
    /// That record, once promoted.
    changed: Option<Arc<IntentMap>>,
    /// The writable bdev handed out at promotion (the same one every time after).
    promoted_bdev: Option<Arc<dyn Bdev>>,
}

impl StandbyVolume {
    /// Formats or recovers the standby on the configured bdevs and opens its
    /// channels on the calling thread (the reactor that will poll it).
    /// Management path: recovery does synchronous I/O.
    pub fn open(cfg: StandbyConfig) -> Result<StandbyVolume, StandbyError> {
        let engine = match cfg.mode {
            ModeConfig::Delayed { volume, staging, opts } => {
                let mut st = Dev::open(staging)?;
                let vol = Dev::open(volume)?;
                let sb = match (cfg.format, Superblock::load(&mut st)?) {
                    (false, Some(sb)) => {
                        check_mode(&st, &sb, Mode::Delayed)?;
                        sb
                    }
                    _ => Delayed::format(&mut st, &vol)?,
                };
                Engine::Delayed(Delayed::open(st, vol, sb, opts)?)
            }
            ModeConfig::Snapshot {
                data,
                metadata,
                volume_blocks,
                opts,
            } => {
                let mut md = Dev::open(metadata)?;
                let dd = Dev::open(data)?;
                let sb = match (cfg.format, Superblock::load(&mut md)?) {
                    (false, Some(sb)) => {
                        check_mode(&md, &sb, Mode::Snapshot)?;
                        sb
                    }
                    _ => Snapshot::format(&mut md, &dd, volume_blocks)?,
                };
                Engine::Snapshot(Snapshot::open(dd, md, sb, opts)?)
            }
        };
        let (generation, promoted, resume) = match &engine {
            Engine::Delayed(d) => (d.sb.generation, d.sb.promoted, d.resume_lsn()),
            Engine::Snapshot(s) => (s.generation(), s.promoted(), s.resume_lsn()),
        };
        Ok(StandbyVolume {
            name: cfg.name,
            recv: Receiver::new(resume, generation),
            engine,
            parked: None,
            failing: false,
            promoted,
            generation,
            fence_generation: 0,
            rp_times: VecDeque::new(),
            now_ns: 0,
            syncs_seen: VecDeque::with_capacity(SYNCS_SEEN_MAX),
            skip_at: None,
            holes_skipped: 0,
            lsns_skipped: 0,
            changed_path: None,
            changed: None,
            promoted_bdev: None,
        })
    }

    /// Where the record of changes since promotion is persisted (`docs/failback.md`).
    /// Without one it is kept in memory only (a restart after promotion forgets it).
    pub fn set_changed_map(&mut self, path: Option<std::path::PathBuf>) {
        self.changed_path = path;
    }

    /// The record of changes since the common restart point (after promotion).
    pub fn changed_map(&self) -> Option<&Arc<IntentMap>> {
        self.changed.as_ref()
    }

    /// Wraps the promoted bdev in the record of changes; `seed`: blocks the rollback
    /// dropped (a new record) or nothing (reopened after a restart).
    fn record_changes(
        &mut self,
        inner: Arc<dyn Bdev>,
        name: &str,
        seed: &[(u64, u64)],
    ) -> Result<Arc<dyn Bdev>, StandbyError> {
        let start = self.applied().1;
        let map = IntentMap::open(inner.num_blocks(), self.changed_path.clone(), start, seed)
            .map_err(|e| StandbyError::Stopped(format!("record of changes: {e}")))?;
        self.changed = Some(map.clone());
        let b: Arc<dyn Bdev> = Arc::new(ChangedBdev::new(name, inner, map));
        self.promoted_bdev = Some(b.clone());
        Ok(b)
    }

    /// Block ranges of every op the standby received past its last applied point and
    /// dropped at the rollback (staged or pending, held out of order, parked).
    fn dropped_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = match &self.engine {
            Engine::Delayed(d) => d.rolled_back().to_vec(),
            Engine::Snapshot(s) => s.rolled_back().to_vec(),
        };
        v.extend(self.recv.held_ranges());
        v.extend(self.parked.as_ref().and_then(|o| o.body.range()));
        v
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offers one op of a batch of generation `generation`.
    pub fn offer(&mut self, generation: u64, op: &Op<'_>, now_ns: u64) -> Offer {
        if self.failing || self.promoted || self.error().is_some() {
            return Offer::Closed;
        }
        if let Op::Sync { lsn, mark } = *op {
            self.note_sync(lsn, mark);
        }
        let o = self.recv.offer(generation, op, now_ns);
        if let (Offer::Accepted, Op::RestartPoint { epoch, .. }) = (o, op) {
            if self.rp_times.len() < RP_TIMES_MAX {
                self.rp_times.push_back((*epoch, now_ns));
            }
        }
        o
    }

    /// Offers every op of a batch. Returns how many were taken or were
    /// duplicates (the caller may consider those handled) and the first
    /// refusal, after which the rest of the batch was not looked at.
    pub fn offer_batch(&mut self, batch: &Batch<'_>, now_ns: u64) -> (usize, Option<Offer>) {
        for (i, op) in batch.ops.iter().enumerate() {
            match self.offer(batch.generation, op, now_ns) {
                Offer::Accepted | Offer::Duplicate => {}
                o => return (i, Some(o)),
            }
        }
        (batch.ops.len(), None)
    }

    /// As [`StandbyVolume::offer_owned`], but a refused op comes back with
    /// the refusal, so the caller can offer it again later (back-pressure).
    pub fn try_offer_owned(&mut self, op: OwnedOp, now_ns: u64) -> Result<Offer, (Offer, OwnedOp)> {
        if !self.intake_open() {
            return Err((Offer::Closed, op));
        }
        let rp = match op.body {
            crate::OpBody::RestartPoint { epoch, .. } => Some(epoch),
            crate::OpBody::Sync { mark, .. } => {
                self.note_sync(op.lsn, mark);
                None
            }
            _ => None,
        };
        match self.recv.offer_owned(op, now_ns) {
            Ok(()) => {
                if let Some(e) = rp {
                    if self.rp_times.len() < RP_TIMES_MAX {
                        self.rp_times.push_back((e, now_ns));
                    }
                }
                Ok(Offer::Accepted)
            }
            Err((Offer::Duplicate, _)) => Ok(Offer::Duplicate),
            Err(r) => Err(r),
        }
    }

    /// Remembers a block sync's `Begin` (or `Initial`, which covers everything) seen ahead
    /// of the next LSN.
    fn note_sync(&mut self, lsn: u64, mark: SyncMark) {
        let covers_from = match mark {
            SyncMark::Begin { covers_from, .. } => covers_from,
            SyncMark::Initial => 1,
            SyncMark::End { .. } => return,
        };
        let next = self.recv.next_lsn();
        self.syncs_seen.retain(|&(s, _)| s >= next && s != lsn);
        if lsn < next {
            return;
        }
        if self.syncs_seen.len() >= SYNCS_SEEN_MAX {
            self.syncs_seen.pop_front();
        }
        self.syncs_seen.push_back((lsn, covers_from));
    }

    /// Every relay said it does not hold the next LSN: if a block sync seen ahead covers
    /// it (its `Begin` at S with `covers_from` at or below the next LSN), skip to S and
    /// return S. The image is then not the primary's until the first restart point after
    /// the sync's `End` (`crate::sync_skip`). `None`: no sync covers the hole, it stays.
    pub fn skip_unheld_hole(&mut self) -> Option<u64> {
        let next = self.recv.next_lsn();
        if !self.intake_open() || self.recv.ready() || self.parked.is_some() {
            return None;
        }
        let &(begin, covers_from) = self
            .syncs_seen
            .iter()
            .filter(|&&(s, f)| f <= next && s > next)
            .min_by_key(|&&(s, _)| s)?;
        let n = self.recv.skip_to(begin);
        self.skip_at = Some(begin);
        self.holes_skipped += 1;
        self.lsns_skipped += n;
        log::warn!(
            "standby {}: no relay holds LSN {next}: skipping {n} LSNs to the block sync at {begin} (covers writes from LSN {covers_from}); the image is not a restart point again until that sync ends",
            self.name
        );
        Some(begin)
    }

    /// True while the standby takes ops: no primary failure being handled,
    /// not promoted, not stopped on an error.
    pub fn intake_open(&self) -> bool {
        !self.failing && !self.promoted && self.error().is_none()
    }

    /// The next LSN the receiver will deliver in order (everything below it
    /// was received). What a relay is asked to resume from.
    pub fn next_lsn(&self) -> u64 {
        self.recv.next_lsn()
    }

    /// Block size of the volume in bytes.
    pub fn block_size(&self) -> u32 {
        match &self.engine {
            Engine::Delayed(d) => d.sb.block_size,
            Engine::Snapshot(s) => s.block_size(),
        }
    }

    /// Offers an owned op (tests and gap replies).
    pub fn offer_owned(&mut self, op: OwnedOp, now_ns: u64) -> Offer {
        if self.failing || self.promoted || self.error().is_some() {
            return Offer::Closed;
        }
        let rp = match op.body {
            crate::OpBody::RestartPoint { epoch, .. } => Some(epoch),
            _ => None,
        };
        match self.recv.offer_owned(op, now_ns) {
            Ok(()) => {
                if let Some(e) = rp {
                    if self.rp_times.len() < RP_TIMES_MAX {
                        self.rp_times.push_back((e, now_ns));
                    }
                }
                Offer::Accepted
            }
            Err((o, _)) => o,
        }
    }

    /// Makes progress: moves ordered ops into the engine, reaps and issues
    /// I/O, advances apply / snapshot forming. Call from the owning reactor's
    /// poller; `now_ns` is the reactor's clock.
    pub fn poll(&mut self, now_ns: u64) -> PollStatus {
        self.now_ns = now_ns;
        let mut busy = false;
        let mut took = 0;
        let idle_before = each!(self, e => e.idle());
        while took < INTAKE_BATCH_MAX {
            let mut op = match self.parked.take() {
                Some(o) => o,
                None => match self.recv.pop() {
                    Some(o) => o,
                    None => break,
                },
            };
            if self.skip_at == Some(op.lsn) {
                if let crate::OpBody::Sync { skipped, .. } = &mut op.body {
                    *skipped = true;
                }
                self.skip_at = None;
            }
            let r = each!(mut self, e => e.take(op));
            match r {
                Ok(()) => took += 1,
                Err((op, err)) => {
                    if let Some(err) = err {
                        log::error!("standby {}: {err}", self.name);
                    }
                    self.parked = Some(op);
                    break;
                }
            }
        }
        busy |= took > 0;
        busy |= each!(mut self, e => e.poll());
        // Roll back only once every op received in order has been taken,
        // or the engine refuses it with nothing in flight (stuck: full).
        let drained = self.parked.is_none() && !self.recv.ready();
        if self.failing && took == 0 && (drained || idle_before) && !each!(self, e => e.failed_over()) {
            each!(mut self, e => e.declare_failure());
        }
        if self.failing && each!(self, e => e.failed_over()) {
            self.failing = false;
            self.parked = None;
            let resume = each!(self, e => e.resume_lsn());
            self.recv.reset(resume);
        }
        let applied = self.applied_epoch();
        while self.rp_times.front().is_some_and(|&(e, _)| e <= applied) {
            self.rp_times.pop_front();
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// LSN ranges missing for longer than the gap age (fetch from another relay).
    pub fn gaps(&self, now_ns: u64, max: usize) -> Vec<Gap> {
        self.recv.gaps(now_ns, max)
    }

    /// Every LSN up to this is durable at the standby (`SafeUpTo`).
    pub fn durable_lsn(&self) -> u64 {
        each!(self, e => e.durable_lsn())
    }

    /// Declares the primary failed: no more ops are taken; every epoch fully
    /// received is applied (or its snapshot formed), the rest is rolled back.
    /// Completes through [`StandbyVolume::poll`].
    pub fn declare_failure(&mut self) {
        if !self.promoted && !each!(self, e => e.failed_over()) {
            self.failing = true;
        }
    }

    /// True once a declared failure has been fully handled (and after promotion).
    pub fn failed_over(&self) -> bool {
        !self.failing && each!(self, e => e.failed_over())
    }

    /// Declares failure and polls until it is handled. Management path only
    /// (spins on the volume's channels).
    pub fn fail_over_blocking(&mut self) -> Result<(), StandbyError> {
        self.declare_failure();
        let mut spins = 0u64;
        while !self.failed_over() {
            if let Some(e) = self.error() {
                return Err(StandbyError::Stopped(e.to_string()));
            }
            self.poll(engine::clock::now_ns());
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// Promotes the standby: fails over if not done yet, bumps and persists
    /// the generation (older ops are refused from now on) and returns the
    /// writable bdev at the last restart point. Management path.
    pub fn promote(&mut self) -> Result<Arc<dyn Bdev>, StandbyError> {
        let head = format!("{}_head", self.name);
        self.promote_named(&head)
    }

    /// As [`StandbyVolume::promote`], naming the snapshot-mode head bdev.
    pub fn promote_named(&mut self, head_name: &str) -> Result<Arc<dyn Bdev>, StandbyError> {
        if self.promoted {
            return Err(StandbyError::Promoted("already promoted"));
        }
        self.fail_over_blocking()?;
        let generation = (self.generation() + 1).max(self.fence_generation);
        let inner_name = format!("{head_name}.inner");
        let inner = match &mut self.engine {
            Engine::Delayed(d) => d.promote(generation)?,
            Engine::Snapshot(s) => s.promote(generation, &inner_name)?,
        };
        self.generation = generation;
        self.recv.set_generation(generation);
        self.promoted = true;
        let seed = self.dropped_ranges();
        self.record_changes(inner, head_name, &seed)
    }

    /// The writable bdev of a promoted standby (also after a restart).
    /// Management path.
    pub fn promoted_bdev(&mut self) -> Result<Arc<dyn Bdev>, StandbyError> {
        if !self.promoted {
            return Err(StandbyError::NotFailedOver);
        }
        self.promoted_bdev_named(&format!("{}_head", self.name))
    }

    /// As [`StandbyVolume::promoted_bdev`], naming the bdev (as at promotion).
    pub fn promoted_bdev_named(&mut self, head: &str) -> Result<Arc<dyn Bdev>, StandbyError> {
        if !self.promoted {
            return Err(StandbyError::NotFailedOver);
        }
        if let Some(b) = &self.promoted_bdev {
            return Ok(b.clone());
        }
        let inner = match &mut self.engine {
            Engine::Delayed(d) => d.volume_bdev(),
            Engine::Snapshot(s) => s.open_head(&format!("{head}.inner"))?,
        };
        self.record_changes(inner, head, &[])
    }

    pub fn generation(&self) -> u64 {
        self.generation.max(self.recv.generation())
    }

    /// The generation a failover promotes this volume to, fixed at the first call: the
    /// failover drain fences the relays off from the old primary with it before it takes
    /// their last ops, and [`StandbyVolume::promote`] then uses it.
    pub fn fence_generation(&mut self) -> u64 {
        if self.fence_generation == 0 {
            self.fence_generation = self.generation() + 1;
        }
        self.fence_generation
    }

    pub fn promoted(&self) -> bool {
        self.promoted
    }

    /// The error the standby stopped on, if any.
    pub fn error(&self) -> Option<&str> {
        each!(self, e => e.error())
    }

    /// (epoch, last LSN, restart point LSN, tag) of the restart point the
    /// volume (delayed) or latest snapshot (snapshot mode) shows.
    pub fn applied(&self) -> (u64, u64, u64, Vec<u8>) {
        match &self.engine {
            Engine::Delayed(d) => d.shown.clone(),
            Engine::Snapshot(s) => s.applied(),
        }
    }

    /// The epoch of [`StandbyVolume::applied`] alone (no copy of the tag).
    pub fn applied_epoch(&self) -> u64 {
        match &self.engine {
            Engine::Delayed(d) => d.shown.0,
            Engine::Snapshot(s) => s.formed_epoch(),
        }
    }

    /// True when nothing is being applied (delayed: the volume is exactly at
    /// the applied restart point and may be read).
    pub fn quiescent(&self) -> bool {
        match &self.engine {
            Engine::Delayed(d) => d.quiescent(),
            Engine::Snapshot(_) => true,
        }
    }

    pub fn status(&self) -> StandbyStatus {
        let (applied_epoch, applied_last_lsn, applied_rp_lsn, tag) = self.applied();
        let rs = self.recv.stats();
        let (held_ops, held_bytes) = self.recv.held();
        let lsn_max = self.recv.lsn_seen_max();
        let readiness = self.failover_readiness();
        let (delayed, snapshot, engine_lag_bytes) = match &self.engine {
            Engine::Delayed(d) => {
                let s = d.status();
                let lag = s.staging_used_blocks * d.sb.block_size as u64;
                (Some(s), None, lag)
            }
            Engine::Snapshot(s) => {
                let st = s.status();
                let lag = st.pending_blocks * st.block_size as u64;
                (None, Some(st), lag)
            }
        };
        let lag_seconds = self
            .rp_times
            .front()
            .map(|&(_, t)| self.now_ns.saturating_sub(t) as f64 / 1e9)
            .unwrap_or(0.0);
        StandbyStatus {
            name: self.name.clone(),
            mode: match self.engine {
                Engine::Delayed(_) => "delayed",
                Engine::Snapshot(_) => "snapshot",
            },
            generation: self.generation(),
            promoted: self.promoted,
            failure_declared: self.failing,
            failed_over: self.failed_over(),
            error: self.error().map(str::to_string),
            applied_epoch,
            applied_last_lsn,
            applied_rp_lsn,
            applied_tag: String::from_utf8_lossy(&tag).into_owned(),
            applied_tag_hex: tag.iter().map(|b| format!("{b:02x}")).collect(),
            epoch_received_max: each!(self, e => e.last_epoch_seen()),
            lsn_received_max: lsn_max,
            next_lsn: self.recv.next_lsn(),
            durable_lsn: self.durable_lsn(),
            lag_lsn: lsn_max.saturating_sub(applied_rp_lsn.max(applied_last_lsn)),
            lag_bytes: engine_lag_bytes + held_bytes as u64,
            lag_seconds,
            reorder_ops: held_ops,
            reorder_bytes: held_bytes,
            duplicates: rs.duplicates,
            stale_generation: rs.stale_generation,
            refused_full: rs.refused_full,
            delayed,
            snapshot,
            sync_skip: self.sync_skip_status(),
            failover_target: readiness.label(),
            changed: self.changed.as_deref().map(ChangedStatus::of),
            failover_note: readiness.why().to_string(),
        }
    }

    fn sync_skip_status(&self) -> SyncSkipStatus {
        let (skip, dropped) = each!(self, e => e.sync_skip());
        let (state, begin_lsn, end_lsn) = skip.status();
        SyncSkipStatus {
            state,
            begin_lsn,
            end_lsn,
            holes_skipped: self.holes_skipped,
            lsns_skipped: self.lsns_skipped,
            restart_points_dropped: dropped,
            initial: skip.initial(),
        }
    }

    /// Whether this standby is a valid failover target now (`docs/failover.md`,
    /// "Syncing standbys").
    pub fn failover_readiness(&self) -> Readiness {
        let (skip, _) = each!(self, e => e.sync_skip());
        if skip.initial() {
            Readiness::NotValid(format!(
                "syncing: not a valid failover target (initial sync from LSN {} not complete; the volume holds no restart point of the primary)",
                skip.status().1
            ))
        } else if skip.active() {
            Readiness::Stale(format!(
                "a block sync covers a skipped hole (from LSN {}): failover returns to epoch {}, the last restart point before the hole",
                skip.status().1,
                self.applied_epoch()
            ))
        } else {
            Readiness::Valid
        }
    }

    fn snap(&mut self) -> Result<&mut Snapshot, StandbyError> {
        match &mut self.engine {
            Engine::Snapshot(s) => Ok(s),
            Engine::Delayed(_) => Err(StandbyError::Mode("snapshots exist only in snapshot mode")),
        }
    }

    /// Formed snapshots, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        match &self.engine {
            Engine::Snapshot(s) => s.list(),
            Engine::Delayed(_) => Vec::new(),
        }
    }

    /// Deletes the snapshot of `epoch` (never the latest, never an exported
    /// one) and releases the blocks only it held. Takes effect durably with
    /// the next metadata write; completes through `poll`.
    pub fn delete_snapshot(&mut self, epoch: u64) -> Result<(), StandbyError> {
        self.snap()?.request_delete(epoch)
    }

    /// A read-only bdev showing the snapshot of `epoch`, usable while
    /// replication continues. Management path.
    pub fn export_snapshot(&mut self, epoch: u64, bdev_name: &str) -> Result<Arc<dyn Bdev>, StandbyError> {
        self.snap()?.export(epoch, bdev_name)
    }
}

fn check_mode(dev: &Dev, sb: &Superblock, want: Mode) -> Result<(), StandbyError> {
    let name = |m: Mode| match m {
        Mode::Delayed => "delayed",
        Mode::Snapshot => "snapshot",
    };
    if sb.mode != want {
        return Err(StandbyError::WrongMode {
            bdev: dev.name().to_string(),
            found: name(sb.mode),
            wanted: name(want),
        });
    }
    if sb.block_size != dev.block_size {
        return Err(StandbyError::Geometry(format!(
            "superblock on {} says {}-byte blocks, the bdev has {}",
            dev.name(),
            sb.block_size,
            dev.block_size
        )));
    }
    Ok(())
}
