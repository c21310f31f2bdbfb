//! Model of the standby volume in delayed mode (`standby/src/volume.rs`,
//! `standby/src/delayed.rs`) around the real [`Receiver`]: ops popped in LSN order are
//! staged (durable at the next group commit, one per tick), an epoch is applied only when
//! its restart point arrives (whole epochs only), a crash keeps the applied image and the
//! durable staged ops and loses the reorder window, `declare_failure` rolls the staged
//! ops back, `promote` bumps the generation.

use crate::ops::{self, Kind};
use standby::receive::{OpBody, Receiver};
use standby::OwnedOp;

/// Reorder window of the simulated receiver (small, so `Full` and back-pressure happen).
pub const WINDOW_OPS: usize = 96;
pub const WINDOW_BYTES: usize = 256 * 1024;
/// The real default gap age.
pub const GAP_AGE_NS: u64 = standby::receive::GAP_AGE_NS_DEFAULT;

pub struct SVol {
    pub alive: bool,
    pub recv: Receiver,
    pub gen: u64,
    /// `StandbyVolume::fence_generation` (0: no drain fenced yet).
    pub fence_gen: u64,
    pub image: Vec<u64>,
    pub applied_epoch: u64,
    pub applied_rp_lsn: u64,
    /// Ops of the epoch being received, in LSN order.
    staged: Vec<OwnedOp>,
    /// Highest staged LSN made durable by a group commit.
    staged_durable: u64,
    pub failing: bool,
    pub promoted: bool,
    /// A broken rule seen while applying (data that does not match its op, epochs out of
    /// order): reported by the checker as a violation.
    pub error: Option<String>,
    /// The applied epoch changed since the checker last compared images.
    pub image_dirty: bool,
}

impl SVol {
    pub fn new(blocks: usize) -> SVol {
        SVol {
            alive: true,
            recv: Receiver::with_limits(1, 1, WINDOW_OPS, WINDOW_BYTES, GAP_AGE_NS),
            gen: 1,
            fence_gen: 0,
            image: vec![0; blocks],
            applied_epoch: 0,
            applied_rp_lsn: 0,
            staged: Vec::new(),
            staged_durable: 0,
            failing: false,
            promoted: false,
            error: None,
            image_dirty: false,
        }
    }

    pub fn intake_open(&self) -> bool {
        self.alive && !self.failing && !self.promoted && self.error.is_none()
    }

    pub fn next_lsn(&self) -> u64 {
        self.recv.next_lsn()
    }

    /// What `SafeUpTo` carries: the applied restart point or the durable staged ops.
    pub fn durable_lsn(&self) -> u64 {
        self.applied_rp_lsn.max(self.staged_durable)
    }

    /// Resume point after a restart (`Delayed::resume_lsn`).
    fn resume_lsn(&self) -> u64 {
        self.staged.last().map_or(0, |o| o.lsn).max(self.applied_rp_lsn) + 1
    }

    /// One poll: the group commit of what was staged before, then intake.
    pub fn poll(&mut self) {
        if !self.alive {
            return;
        }
        self.staged_durable = self.staged.last().map_or(self.applied_rp_lsn, |o| o.lsn);
        if self.promoted || self.error.is_some() {
            return;
        }
        while let Some(op) = self.recv.pop() {
            self.take(op);
            if self.error.is_some() {
                return;
            }
        }
    }

    fn take(&mut self, op: OwnedOp) {
        let OpBody::RestartPoint { epoch, last_lsn, tag } = &op.body else {
            self.staged.push(op);
            return;
        };
        if *epoch != self.applied_epoch + 1 || *last_lsn + 1 != op.lsn || *tag != ops::rp_tag(*epoch) {
            self.error = Some(format!(
                "restart point at LSN {} (epoch {epoch}, last LSN {last_lsn}) out of order after epoch {}",
                op.lsn, self.applied_epoch
            ));
            return;
        }
        for s in std::mem::take(&mut self.staged) {
            if let Err(e) = apply_owned(&mut self.image, &s) {
                self.error = Some(e);
                return;
            }
        }
        self.applied_epoch = *epoch;
        self.applied_rp_lsn = op.lsn;
        self.staged_durable = op.lsn;
        self.image_dirty = true;
    }

    pub fn crash(&mut self) {
        self.alive = false;
        let d = self.staged_durable;
        self.staged.retain(|o| o.lsn <= d);
    }

    pub fn restart(&mut self) {
        self.alive = true;
        self.recv = Receiver::with_limits(self.resume_lsn(), self.gen, WINDOW_OPS, WINDOW_BYTES, GAP_AGE_NS);
    }

    /// `declare_failure`: everything received in order goes in, the rest is rolled back.
    pub fn declare_failure(&mut self) {
        self.poll();
        self.failing = true;
        self.staged.clear();
        self.staged_durable = self.applied_rp_lsn;
    }

    /// `fence_generation`: the generation promotion will take, fixed at the first call.
    pub fn fence_generation(&mut self) -> u64 {
        if self.fence_gen == 0 {
            self.fence_gen = self.gen.max(self.recv.generation()) + 1;
        }
        self.fence_gen
    }

    /// `promote`: generation `max(seen) + 1`, or the drain's fence; older ops are refused
    /// from now on.
    pub fn promote(&mut self) -> u64 {
        self.gen = (self.gen.max(self.recv.generation()) + 1).max(self.fence_gen);
        self.recv.set_generation(self.gen);
        self.promoted = true;
        self.gen
    }
}

/// Applies one staged op to the image, reading each block's stamp out of its data.
fn apply_owned(image: &mut [u64], op: &OwnedOp) -> Result<(), String> {
    let kind = match &op.body {
        OpBody::Write {
            offset_blocks,
            num_blocks,
            data,
        } => {
            for b in 0..*num_blocks as usize {
                let (stamp, blk) = ops::read_stamp(&data.0, b);
                if stamp != op.lsn || blk != offset_blocks + b as u64 {
                    return Err(format!(
                        "LSN {}: block {} carries stamp {stamp} of block {blk}",
                        op.lsn,
                        offset_blocks + b as u64
                    ));
                }
            }
            Kind::Write {
                off: *offset_blocks,
                n: *num_blocks,
            }
        }
        OpBody::WriteZeroes {
            offset_blocks,
            num_blocks,
        } => Kind::Zero {
            off: *offset_blocks,
            n: *num_blocks,
        },
        OpBody::Deallocate {
            offset_blocks,
            num_blocks,
        } => Kind::Dealloc {
            off: *offset_blocks,
            n: *num_blocks,
        },
        OpBody::RestartPoint { .. } | OpBody::Sync { .. } => return Ok(()),
    };
    ops::apply(image, op.lsn, kind);
    Ok(())
}
