//! Model of the primary's replicated volume (`relay/src/volume.rs`): LSN assignment, one
//! Ops frame per relay per send (at most 32 ops), resend from a relay's `resume_lsn` after
//! a reconnect (the retention ring, unbounded here), and the acknowledgement policy
//! (`all` / `quorum k` / `any`, `on_relay_down = block`: a down relay still counts, so
//! writes wait for it). It also keeps the ground truth the checker compares against: the
//! image after every op and the image at every restart point.

use crate::ops::{self, JOp, Kind};
use crate::rng::Rng;
use rdma_transport::wire::{BatchEncoder, Hello, Role, FRAME_BYTES_MAX, OPS_PER_FRAME_MAX};

pub const VOLUME: &str = "vol";
pub const VOLUME_ID: [u8; 16] = [7; 16];

/// How many relays must hold an op before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    All,
    Quorum(usize),
    Any,
}

/// The primary's view of one relay connection.
#[derive(Debug, Clone, Default)]
pub struct PLink {
    /// HelloReply accepted on the current connection.
    pub up: bool,
    /// Highest LSN sent on the current connection.
    pub sent: u64,
    /// The relay's cumulative durable LSN from its Acks (never moves back).
    pub acked: u64,
    /// The relay refused us with `StaleGeneration`: a newer primary exists.
    pub fenced: bool,
}

pub struct Primary {
    pub alive: bool,
    pub gen: u64,
    /// Every op, index `lsn - 1`.
    pub ops: Vec<JOp>,
    pub image: Vec<u64>,
    /// Image at restart point `epoch` (index epoch; 0 is the empty volume).
    pub images: Vec<Vec<u64>>,
    /// LSN of restart point `epoch` (index epoch; 0 for epoch 0).
    pub rp_lsn: Vec<u64>,
    pub links: Vec<PLink>,
    pub policy: AckPolicy,
    /// Every LSN up to this is acknowledged to the application.
    pub acked: u64,
    /// Newest acknowledged restart point.
    pub acked_rp: u64,
    /// Per relay: the highest LSN acknowledged while counting that relay as holding it
    /// (invariant 1: it must stay durable there).
    pub must_hold: Vec<u64>,
    /// Ops still to issue.
    pub ops_left: u64,
    pub hb_seq: u64,
}

impl Primary {
    pub fn new(relays: usize, blocks: usize, policy: AckPolicy, ops_total: u64) -> Primary {
        Primary {
            alive: true,
            gen: 1,
            ops: Vec::new(),
            image: vec![0; blocks],
            images: vec![vec![0; blocks]],
            rp_lsn: vec![0],
            links: vec![PLink::default(); relays],
            policy,
            acked: 0,
            acked_rp: 0,
            must_hold: vec![0; relays],
            ops_left: ops_total,
            hb_seq: 0,
        }
    }

    pub fn last_lsn(&self) -> u64 {
        self.ops.len() as u64
    }

    pub fn epoch(&self) -> u64 {
        self.rp_lsn.len() as u64 - 1
    }

    fn push(&mut self, kind: Kind) {
        let lsn = self.last_lsn() + 1;
        let data = match kind {
            Kind::Write { off, n } => ops::write_data(lsn, off, n),
            Kind::Rp { epoch, .. } => ops::rp_tag(epoch),
            _ => Vec::new(),
        };
        ops::apply(&mut self.image, lsn, kind);
        if let Kind::Rp { .. } = kind {
            self.images.push(self.image.clone());
            self.rp_lsn.push(lsn);
        }
        self.ops.push(JOp {
            lsn,
            gen: self.gen,
            kind,
            data,
        });
    }

    /// The application issues a burst of ops, sometimes closed by a restart point.
    pub fn issue(&mut self, rng: &mut Rng) {
        let blocks = self.image.len() as u64;
        let burst = rng.range(1, 6).min(self.ops_left);
        for _ in 0..burst {
            let n = rng.range(1, 4) as u32;
            let off = rng.below(blocks - u64::from(n) + 1);
            let kind = match rng.below(20) {
                0 => Kind::Zero { off, n },
                1 => Kind::Dealloc { off, n },
                _ => Kind::Write { off, n },
            };
            self.push(kind);
        }
        self.ops_left -= burst;
        if rng.chance(250) || (self.ops_left == 0 && burst > 0) {
            let epoch = self.epoch() + 1;
            let last_lsn = self.last_lsn();
            self.push(Kind::Rp { epoch, last_lsn });
        }
    }

    /// Ops frames that bring relay `i` up to date on its current connection.
    pub fn frames_for(&mut self, i: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let l = &mut self.links[i];
        if !self.alive || !l.up || l.fenced {
            return out;
        }
        while l.sent < self.ops.len() as u64 {
            let from = l.sent as usize;
            let to = (from + OPS_PER_FRAME_MAX).min(self.ops.len());
            let batch: Vec<&JOp> = self.ops[from..to].iter().collect();
            out.push(ops::encode(BatchEncoder::ops(self.gen, ops::BLOCK as u32), &batch));
            l.sent = to as u64;
        }
        out
    }

    pub fn hello(&self) -> Hello<'static> {
        Hello {
            role: Role::Primary,
            block_size: ops::BLOCK as u32,
            volume_id: VOLUME_ID,
            volume_name: VOLUME,
            generation: self.gen,
            resume_lsn: self.last_lsn() + 1,
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        }
    }

    fn need(&self) -> usize {
        let n = self.links.len();
        match self.policy {
            AckPolicy::All => n,
            AckPolicy::Quorum(k) => k.min(n),
            AckPolicy::Any => 1,
        }
    }

    /// An Ack from relay `i`: acknowledge every op the policy now covers, in LSN order.
    pub fn on_ack(&mut self, i: usize, durable: u64) {
        let l = &mut self.links[i];
        l.acked = l.acked.max(durable.min(self.ops.len() as u64));
        let need = self.need();
        while self.acked < self.ops.len() as u64 {
            let lsn = self.acked + 1;
            if self.links.iter().filter(|l| l.acked >= lsn).count() < need {
                break;
            }
            for (r, l) in self.links.iter().enumerate() {
                if l.acked >= lsn {
                    self.must_hold[r] = lsn;
                }
            }
            self.acked = lsn;
            if let Kind::Rp { epoch, .. } = self.ops[lsn as usize - 1].kind {
                self.acked_rp = epoch;
            }
        }
    }
}
