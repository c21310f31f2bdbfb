//! Model of a relay (`relay/src/relay.rs`, journal `relay/src/journal`): journal before
//! ack (group commit), crash recovery with a torn tail, the forward gate and forwarding,
//! `serve_gap`, `PrimaryLiveness` reports, release on `SafeUpTo` and on the standby's
//! `HelloReply`, generation fencing of the primary.

use crate::ops::{self, JOp};
use crate::rng::Rng;
use rdma_transport::handshake::{answer_hello, LocalVolume};
use rdma_transport::wire::{
    self, Ack, BatchEncoder, Fence, ForwardState, GapRequest, GapStatus, Hello, HelloReply, PrimaryLiveness, Role,
    FRAME_BYTES_MAX, FRAME_DATA_BYTES_MAX, OPS_PER_FRAME_MAX,
};
use std::collections::VecDeque;

/// `LIVENESS_REPORT_MS` of the real relay.
pub const REPORT_NS: u64 = 100_000_000;
/// `GAP_QUEUE_MAX` of the real relay.
pub const GAP_QUEUE_MAX: usize = 64;
/// Frames per forward read (`send_capacity().min(8)` in the real relay).
pub const FRAMES_PER_READ: usize = 8;

/// `--forward`, on virtual time (the real `windows` reads the UTC wall clock by minute;
/// here a window is open `open_ns` out of every `period_ns`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FwdPolicy {
    Immediate,
    Interval { ns: u64 },
    Windows { open_ns: u64, period_ns: u64 },
    Bandwidth { bytes_per_sec: f64 },
}

pub struct Relay {
    pub alive: bool,
    /// Process incarnation (a crash invalidates its pending commits).
    pub inc: u64,
    pub forwarder: bool,
    pub policy: FwdPolicy,
    /// Newest generation seen (`volume.json`, survives crashes).
    pub gen: u64,
    /// `VolumeMeta::fenced_below`: a draining standby's fence (kept across crashes, as
    /// `volume.json` is).
    pub fenced_below: u64,
    /// Journal: contiguous ops, the first is `released + 1` (or later after a resume
    /// release past the end).
    pub ops: VecDeque<JOp>,
    /// Ends (last LSN) of the records appended and not yet durable.
    pub pending: VecDeque<u64>,
    pub appended: u64,
    pub durable: u64,
    pub released: u64,
    pub commit_inflight: bool,
    pub primary_heard: u64,
    pub primary_connected: bool,
    pub primary_acked: u64,
    pub rs_up: bool,
    pub fwd_next: u64,
    pub safe: u64,
    pub gaps: VecDeque<GapRequest>,
    last_interval: u64,
    tokens: f64,
    tokens_at: u64,
    pub fwd_state: ForwardState,
    /// Since when the forwarder holds by policy (the checker's ground truth).
    pub holding_since: Option<u64>,
    liveness_sent: u64,
    pub torn_tails: u64,
    /// Ops frames of an older generation refused (fencing).
    pub fenced_frames: u64,
    /// Ops sent to the standby under a newer generation than they were written with.
    pub relabelled: u64,
}

/// What a relay wants sent after handling something.
#[derive(Default)]
pub struct Out {
    pub to_primary: Vec<Vec<u8>>,
    pub to_standby: Vec<Vec<u8>>,
    /// Close the primary connection (fencing).
    pub close_primary: bool,
    /// Close the standby connection (refused).
    pub close_standby: bool,
    /// Start a group commit covering LSNs up to this.
    pub commit: Option<u64>,
}

impl Relay {
    pub fn new(forwarder: bool, policy: FwdPolicy) -> Relay {
        Relay {
            alive: true,
            inc: 1,
            forwarder,
            policy,
            gen: 1,
            ops: VecDeque::new(),
            pending: VecDeque::new(),
            appended: 0,
            durable: 0,
            released: 0,
            commit_inflight: false,
            primary_heard: 0,
            primary_connected: false,
            primary_acked: 0,
            rs_up: false,
            fwd_next: 1,
            safe: 0,
            gaps: VecDeque::new(),
            last_interval: 0,
            tokens: 0.0,
            tokens_at: 0,
            fwd_state: if forwarder {
                ForwardState::Forwarding
            } else {
                ForwardState::Backup
            },
            holding_since: None,
            liveness_sent: 0,
            torn_tails: 0,
            fenced_below: 0,
            fenced_frames: 0,
            relabelled: 0,
        }
    }

    /// First LSN the journal holds (`appended + 1` when empty).
    pub fn first(&self) -> u64 {
        self.ops.front().map_or(self.appended + 1, |o| o.lsn)
    }

    fn op(&self, lsn: u64) -> Option<&JOp> {
        let i = lsn.checked_sub(self.first())?;
        self.ops.get(usize::try_from(i).ok()?)
    }

    /// Crash: what was not durable is lost, except whole records that happened to reach
    /// the disk; the record after them is torn and cut at recovery.
    pub fn crash(&mut self, rng: &mut Rng) {
        self.alive = false;
        self.inc += 1;
        let keep = rng.below(self.pending.len() as u64 + 1) as usize;
        let end = if keep == 0 {
            self.durable
        } else {
            self.pending[keep - 1]
        };
        if keep < self.pending.len() {
            self.torn_tails += 1;
        }
        while self.ops.back().is_some_and(|o| o.lsn > end) {
            self.ops.pop_back();
        }
        self.pending.clear();
        self.appended = end.max(self.released);
        self.durable = self.appended;
        self.commit_inflight = false;
        self.primary_connected = false;
        self.primary_heard = 0;
        self.primary_acked = 0;
        self.rs_up = false;
        self.gaps.clear();
        self.fwd_state = if self.forwarder {
            ForwardState::Forwarding
        } else {
            ForwardState::Backup
        };
        self.holding_since = None;
    }

    pub fn local(&self, durable_lsn: u64) -> LocalVolume {
        LocalVolume {
            volume_id: crate::primary::VOLUME_ID,
            block_size: ops::BLOCK as u32,
            generation: self.gen.max(self.fenced_below),
            durable_lsn,
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        }
    }

    /// A Hello on the primary port (the primary, or a promoted standby fencing us).
    pub fn on_primary_hello(&mut self, h: &Hello<'_>, now: u64, out: &mut Out) {
        let reply = answer_hello(h, Role::Primary, Some(&self.local(self.durable)));
        if let HelloReply::Accepted { .. } = reply {
            self.gen = self.gen.max(h.generation);
            self.primary_connected = true;
            self.primary_heard = now;
            self.primary_acked = 0;
        } else {
            out.close_primary = true;
        }
        out.to_primary
            .push(wire::encode_hello_reply(&reply).as_bytes().to_vec());
    }

    /// `fence`: a draining standby's order. Older primaries are refused from now on and the
    /// primary's connection closes; the answer names the journal's end.
    pub fn on_fence(&mut self, generation: u64, out: &mut Out) {
        if generation > self.gen.max(self.fenced_below) {
            self.fenced_below = generation;
            if self.primary_connected {
                self.primary_connected = false;
                out.close_primary = true;
            }
        }
        let f = Fence {
            generation: self.gen.max(self.fenced_below),
            journal_lsn: self.appended,
            is_reply: true,
        };
        out.to_standby.push(wire::encode_fence(&f).as_bytes().to_vec());
    }

    /// An Ops frame: journal the ops not held yet as one record.
    pub fn on_ops(&mut self, batch: &wire::Batch<'_>, now: u64, out: &mut Out) {
        if batch.generation < self.gen.max(self.fenced_below) {
            self.fenced_frames += 1;
            self.primary_connected = false;
            out.close_primary = true;
            return;
        }
        self.primary_heard = now;
        let mut last = None;
        let have = self.appended;
        for op in batch.ops.iter().filter(|o| o.lsn() > have) {
            if op.lsn() != self.appended + 1 {
                break; // Never on a FIFO link; the next reconnect resends.
            }
            self.ops.push_back(ops::from_wire(batch.generation, op));
            self.appended = op.lsn();
            last = Some(op.lsn());
        }
        if let Some(l) = last {
            self.pending.push_back(l);
            if !self.commit_inflight {
                self.commit_inflight = true;
                out.commit = Some(self.appended);
            }
        }
    }

    /// The group commit covering `upto` completed: Ack what is durable, start the next.
    pub fn on_commit(&mut self, upto: u64, out: &mut Out) {
        self.commit_inflight = false;
        self.durable = self.durable.max(upto);
        while self.pending.front().is_some_and(|&e| e <= self.durable) {
            self.pending.pop_front();
        }
        if self.appended > self.durable {
            self.commit_inflight = true;
            out.commit = Some(self.appended);
        }
        if self.primary_connected && self.durable > self.primary_acked {
            self.primary_acked = self.durable;
            let ack = Ack {
                durable_lsn: self.durable,
                frame_lsn_first: 0,
                frame_lsn_last: 0,
                generation: self.gen,
            };
            out.to_primary.push(wire::encode_ack(&ack).as_bytes().to_vec());
        }
    }

    /// Releases what the standby holds safely (the real journal releases whole segments;
    /// exact release here is harsher).
    pub fn release(&mut self, upto: u64) {
        self.safe = self.safe.max(upto);
        while self
            .ops
            .front()
            .is_some_and(|o| o.lsn <= self.safe && o.lsn <= self.durable)
        {
            self.ops.pop_front();
        }
        self.released = self.released.max(self.first() - 1);
    }

    pub fn hello_to_standby(&self) -> Vec<u8> {
        let h = Hello {
            role: Role::Relay,
            block_size: ops::BLOCK as u32,
            volume_id: crate::primary::VOLUME_ID,
            volume_name: crate::primary::VOLUME,
            generation: self.gen,
            resume_lsn: self.first().max(1),
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        };
        wire::encode_hello(&h).expect("hello encodes").as_bytes().to_vec()
    }

    /// The standby's HelloReply (`drive_standby`: resume there, and release below it when
    /// `release_on_resume`, as the real relay does).
    pub fn on_standby_reply(&mut self, r: &HelloReply, release_on_resume: bool, out: &mut Out) {
        match *r {
            HelloReply::Accepted { resume_lsn, .. } => {
                self.rs_up = true;
                self.fwd_next = resume_lsn.max(1);
                if release_on_resume {
                    self.release(resume_lsn.saturating_sub(1));
                }
            }
            HelloReply::Refused { .. } => out.close_standby = true,
        }
    }

    /// One poll of the standby side: gap replies, the liveness report, forwarding.
    pub fn poll_standby(&mut self, now: u64, out: &mut Out) {
        if !self.alive || !self.rs_up {
            return;
        }
        while let Some(g) = self.gaps.pop_front() {
            out.to_standby.push(self.serve_gap(&g));
        }
        if now.saturating_sub(self.liveness_sent) >= REPORT_NS {
            self.liveness_sent = now;
            let p = PrimaryLiveness {
                primary_age_ms: if self.primary_heard == 0 {
                    wire::PRIMARY_AGE_NEVER
                } else {
                    now.saturating_sub(self.primary_heard) / 1_000_000
                },
                primary_lsn: self.appended,
                connected: self.primary_connected,
                forward: self.fwd_state,
            };
            out.to_standby
                .push(wire::encode_primary_liveness(&p).as_bytes().to_vec());
        }
        if self.forwarder {
            self.forward(now, out);
        }
    }

    /// `forward_gate` of the real relay, on virtual time.
    fn gate(&mut self, now: u64) -> bool {
        match self.policy {
            FwdPolicy::Immediate => true,
            FwdPolicy::Interval { ns } => {
                if now.saturating_sub(self.last_interval) >= ns {
                    self.last_interval = now;
                    true
                } else {
                    false
                }
            }
            FwdPolicy::Windows { open_ns, period_ns } => now % period_ns < open_ns,
            FwdPolicy::Bandwidth { bytes_per_sec } => {
                let dt = now.saturating_sub(self.tokens_at) as f64 / 1e9;
                self.tokens_at = now;
                self.tokens = (self.tokens + dt * bytes_per_sec).min(bytes_per_sec);
                self.tokens > 0.0
            }
        }
    }

    fn forward(&mut self, now: u64, out: &mut Out) {
        let behind = self.fwd_next <= self.durable;
        let open = behind && self.gate(now);
        self.fwd_state = if behind && !open {
            ForwardState::Holding
        } else {
            ForwardState::Forwarding
        };
        if self.fwd_state == ForwardState::Holding {
            self.holding_since.get_or_insert(now);
        } else {
            self.holding_since = None;
        }
        if !open {
            return;
        }
        let mut next = self.fwd_next.max(self.first());
        for _ in 0..FRAMES_PER_READ {
            let batch = self.batch_from(next, self.durable);
            let Some(last) = batch.last().map(|o| o.lsn) else { break };
            let bytes: usize = batch.iter().map(|o| o.data.len()).sum();
            let relabelled = batch.iter().filter(|o| o.gen < self.gen).count() as u64;
            out.to_standby
                .push(ops::encode(BatchEncoder::forward(self.gen, ops::BLOCK as u32), &batch));
            self.relabelled += relabelled;
            self.tokens -= bytes as f64;
            next = last + 1;
            self.fwd_next = next;
        }
    }

    /// Up to one frame of durable ops from `from` to `to`.
    fn batch_from(&self, from: u64, to: u64) -> Vec<&JOp> {
        let mut v = Vec::new();
        let mut bytes = 0;
        let mut lsn = from.max(self.first());
        while lsn <= to.min(self.durable) && v.len() < OPS_PER_FRAME_MAX {
            let Some(o) = self.op(lsn) else { break };
            if bytes + o.data.len() > FRAME_DATA_BYTES_MAX {
                break;
            }
            bytes += o.data.len();
            v.push(o);
            lsn += 1;
        }
        v
    }

    /// `serve_gap` of the real relay: one reply, from durable records only.
    fn serve_gap(&mut self, g: &GapRequest) -> Vec<u8> {
        let batch = self.batch_from(g.lsn_first, g.lsn_last);
        let status = match batch.first() {
            None => GapStatus::NotHeld,
            Some(o) if o.lsn > g.lsn_first => GapStatus::Partial,
            Some(_) => GapStatus::Complete,
        };
        let relabelled = batch.iter().filter(|o| o.gen < self.gen).count() as u64;
        let enc = BatchEncoder::gap_reply(g.request_id, status, self.gen, ops::BLOCK as u32);
        let f = ops::encode(enc, &batch);
        self.relabelled += relabelled;
        f
    }
}
