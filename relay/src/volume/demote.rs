//! Demoting a primary for a planned switchover (`docs/switchover.md`): new writes are
//! refused, and every write that got an LSN is ordered before one final restart point.
//!
//! The order that makes "no acknowledged write lost" hold:
//!
//! 1. [`super::ReplicatedVolume::demote`] sets `Shared::demoted` first: from then on a
//!    channel fails a new write before it touches the base bdev.
//! 2. The link reactor takes the `Demote` control (fence **pending**) and keeps numbering
//!    what channels already submitted. A write that passed the channel's check just before
//!    step 1 may still arrive; so the final restart point is numbered only in a poll that
//!    found the submission queue empty (fence **fenced** at that LSN).
//! 3. From then on a submission that still arrives is failed with
//!    [`super::VolumeError::Demoted`], never numbered, so never acknowledged. Its local half
//!    may have reached the base bdev: it is marked in the dirty-block record, so a later
//!    failback (`docs/switchover.md`) knows the block.
//! 4. The final restart point completes under the acknowledgement policy like any other;
//!    the standby that applies its epoch holds every acknowledged write.
//!
//! [`super::ReplicatedVolume::resume`] lifts the fence (an aborted switchover, before the
//! standby was promoted: after that the relays refuse this primary's generation anyway).

use std::sync::atomic::Ordering;

use engine::bdev::BdevError;

use super::{LinkState, RestartDone, VolumeError};

/// Where the fence stands on the link reactor.
pub(super) enum Fence {
    /// Writes are numbered as usual.
    None,
    /// Demote asked: the final restart point waits for an empty submission queue.
    Pending { tag: Vec<u8>, done: RestartDone },
    /// The final restart point took `lsn`; later submissions fail.
    Fenced { lsn: u64 },
}

impl Fence {
    /// True once the final restart point is numbered.
    pub(super) fn fenced(&self) -> bool {
        matches!(self, Fence::Fenced { .. })
    }

    /// True while a demote is pending or in force (no new restart point or sync).
    pub(super) fn active(&self) -> bool {
        !matches!(self, Fence::None)
    }

    /// LSN of the final restart point (0: none yet).
    pub(super) fn lsn(&self) -> u64 {
        match self {
            Fence::Fenced { lsn } => *lsn,
            _ => 0,
        }
    }
}

impl LinkState {
    /// Takes a `Demote` control. Hands it back (to wait) while no LSN is known yet;
    /// refuses it while a block sync runs (the standby's image is not whole until its
    /// End) or a demote is already under way.
    pub(super) fn start_demote(&mut self, tag: Vec<u8>, done: RestartDone) -> Result<(), (Vec<u8>, RestartDone)> {
        if self.next_lsn == 0 {
            return Err((tag, done));
        }
        let name = self.s.cfg.name.clone();
        let refuse = VolumeError::Busy;
        if let Some(s) = self.sync.as_ref().map(|s| s.status()) {
            if s.state != "done" && s.state != "failed" {
                self.s.demoted.store(false, Ordering::Release);
                done(Err(refuse(format!(
                    "volume {name}: a block sync is {} ({:.0} %): the standby's image is not whole until it ends",
                    s.state, s.percent
                ))));
                return Ok(());
            }
        }
        if !matches!(self.fence, Fence::None) {
            done(Err(refuse(format!("volume {name} is already demoted"))));
            return Ok(());
        }
        self.fence = Fence::Pending { tag, done };
        Ok(())
    }

    /// Numbers the final restart point once the submission queue is empty. True if it did.
    /// When nothing was numbered since the last restart point (the application quiesced at
    /// it), that point is the final one: no new point with the switchover's tag, so the
    /// standby shows the application's own tag (its execution image) after promotion.
    pub(super) fn try_fence(&mut self) -> bool {
        if !matches!(self.fence, Fence::Pending { .. }) || !self.s.subq.is_empty() {
            return false;
        }
        if let Some(rp) = self.last_rp.filter(|rp| rp.lsn + 1 == self.next_lsn) {
            if self.completed_lsn < rp.lsn {
                return false;
            }
            let Fence::Pending { done, .. } = std::mem::replace(&mut self.fence, Fence::Fenced { lsn: rp.lsn }) else {
                return false;
            };
            self.s.fence_reused.store(true, Ordering::Release);
            log::warn!(
                "volume {}: demoted: writes fenced behind the last restart point (epoch {}, LSN {})",
                self.s.cfg.name,
                rp.epoch,
                rp.lsn
            );
            done(Ok(rp));
            return true;
        }
        let Fence::Pending { tag, done } = std::mem::replace(&mut self.fence, Fence::None) else {
            return false;
        };
        self.s.fence_reused.store(false, Ordering::Release);
        let lsn = self.next_lsn;
        match self.issue_restart_point(tag, done) {
            Ok(()) => {
                log::warn!(
                    "volume {}: demoted: writes fenced behind the restart point at LSN {lsn}",
                    self.s.cfg.name
                );
                self.fence = Fence::Fenced { lsn };
                true
            }
            Err((tag, done)) => {
                self.fence = Fence::Pending { tag, done };
                false
            }
        }
    }

    /// Fails what channels submitted after the fence (never numbered, never acknowledged);
    /// its blocks go into the dirty-block record (the local write may have landed).
    pub(super) fn fail_fenced_submits(&mut self) {
        while let Some(sub) = self.s.subq.pop() {
            let _ = self.dirty.mark(sub.offset_blocks, sub.num_blocks.into());
            let why = VolumeError::Demoted(self.s.cfg.name.clone()).to_string();
            let _ = sub.chan.done.push((sub.slot, Err(BdevError::Io(why))));
        }
    }

    /// Lifts the fence: writes are numbered again after the final restart point.
    pub(super) fn resume_writes(&mut self) -> Result<(), String> {
        match std::mem::replace(&mut self.fence, Fence::None) {
            Fence::Pending { done, .. } => done(Err(VolumeError::Demoted(format!(
                "{} (demote cancelled by resume)",
                self.s.cfg.name
            )))),
            Fence::Fenced { .. } | Fence::None => {}
        }
        self.s.demoted.store(false, Ordering::Release);
        log::warn!("volume {}: resumed: writes accepted again", self.s.cfg.name);
        Ok(())
    }
}
