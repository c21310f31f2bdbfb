//! Fencing seen from the primary: a relay that refuses this primary's Hello as of a
//! stale generation, or whose Ack names a newer generation, says the standby was promoted.
//! From then on this primary must not acknowledge anything: whatever it acknowledged now
//! would exist on its own volume only, a silent divergence from the promoted standby.
//!
//! 1. [`LinkState::note_generation`] (on the frame) stores the newer generation in
//!    `Shared::superseded` at once: channels fail every new write and restart point.
//! 2. [`LinkState::supersede`] (the same poll, after every link was driven) closes every
//!    relay connection, so connections hand back their references to op data, then fails
//!    every op still in flight with [`VolumeError::Superseded`]. Their local halves may
//!    have landed: the dirty-block record marked them when they were numbered, so a
//!    failback knows those blocks.
//! 3. Submissions that still arrive are failed the same way, never numbered.
//!
//! It holds whatever the ack policy and `on_relay_down` say: a degraded volume does not go
//! on alone once it knows it is superseded. Only a new volume (a higher `generation`, as a
//! failback creates) writes again.

use std::sync::atomic::Ordering;

use engine::bdev::BdevError;

use super::{LinkState, VolumeError};

impl VolumeError {
    /// The error of a write or restart point refused by a superseded primary.
    pub fn superseded(volume: &str, generation: u64) -> VolumeError {
        VolumeError::Superseded {
            volume: volume.to_string(),
            generation,
        }
    }
}

impl LinkState {
    /// A relay named `generation`: when it is newer than this primary's, the primary is
    /// superseded (new writes fail at once; [`Self::supersede`] finishes the job).
    /// Returns true when it is.
    pub(super) fn note_generation(&mut self, generation: u64, addr: rdma_transport::Endpoint) -> bool {
        if generation <= self.s.cfg.generation {
            return false;
        }
        if self.s.superseded.fetch_max(generation, Ordering::AcqRel) < generation {
            log::error!(
                "volume {}: relay {addr} is at generation {generation}, this primary at {}: \
                 the standby was promoted; writes are refused from now on",
                self.s.cfg.name,
                self.s.cfg.generation
            );
        }
        true
    }

    /// The generation this primary was superseded by (0: none).
    pub(super) fn superseded_by(&self) -> u64 {
        self.s.superseded.load(Ordering::Acquire)
    }

    /// Once superseded: closes every relay connection for good (the links stay `refused`
    /// and are not retried) and fails what is in flight and what channels submit. Does
    /// nothing otherwise. Returns whether it did work.
    pub(super) fn supersede(&mut self, now: u64) -> bool {
        let newer = self.superseded_by();
        if newer == 0 {
            return false;
        }
        let mut busy = false;
        for i in 0..self.links.len() {
            if self.links[i].conn.is_some() || !self.links[i].life.is_refused() {
                let why = format!("superseded by generation {newer}");
                self.link_failed(i, why.clone(), now);
                self.links[i].life.refused(why, now);
                busy = true;
            }
        }
        let name = self.s.cfg.name.clone();
        while let Some(e) = self.inflight.pop_front() {
            if e.refs > 0 {
                // Every connection is closed and handed its references back: none is left.
                log::error!("volume {name}: LSN {} still referenced after close", e.op.lsn);
            }
            super::link::complete(e.owner, Err(VolumeError::superseded(&name, newer)));
            busy = true;
        }
        while let Some(sub) = self.s.subq.pop() {
            let _ = self.dirty.mark(sub.offset_blocks, sub.num_blocks.into());
            let why = VolumeError::superseded(&name, newer).to_string();
            let _ = sub.chan.done.push((sub.slot, Err(BdevError::Io(why))));
            busy = true;
        }
        busy
    }
}
