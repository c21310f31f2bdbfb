//! The restart point command on the NVMe/TCP target (vendor opcode 0x81, and Flush where
//! the namespace's sink makes it one): handed to the namespace's restart point sink, answered
//! by message on the connection's reactor (`docs/restart-points.md`). The waits, their
//! deadline and the answer's routing are shared with NVMe/RDMA (`nvmf::restart_wait`).

use super::group::GROUP;
use super::request::ReqState;
use super::Conn;
use super::Phase;
use crate::nvmf::restart::RestartPointError;
use crate::nvmf::restart_wait::{self, AnswerTo};
use crate::spec::Status;

/// Runs on the reactor of the connection (a message from the sink's `done`): completes
/// its restart point if the connection and the request are still there.
fn restart_point_answer(to: AnswerTo, res: Result<u64, RestartPointError>) {
    GROUP.with(|g| {
        let Ok(mut g) = g.try_borrow_mut() else {
            log::error!("nvmf: restart point answer arrived inside the poll group; dropped");
            return;
        };
        if let Some(c) = g.as_mut().and_then(|g| g.conns.iter_mut().find(|c| c.id == to.queue)) {
            c.on_restart_point(to.slot, to.seq, res);
        }
    });
}

impl Conn {
    /// Hands the request's tag (its data, `tag_len` bytes) to the namespace's sink. The
    /// answer comes back to this reactor by message ([`restart_point_answer`]); the command
    /// completes then, or at its deadline with Namespace Not Ready.
    pub(super) fn start_restart_point(&mut self, slot: usize, tag_len: u32) {
        let chan = self.reqs[slot].chan;
        let Some(sink) = self.io.sink(chan).cloned() else {
            return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
        };
        // Put back below: the tag may be in the slot's own buffer.
        let buf = self.reqs[slot].buf.take();
        let tag = buf.as_deref().unwrap_or(&[]);
        let tag = &tag[..(tag_len as usize).min(tag.len())];
        self.set_state(slot, ReqState::AwaitRestartPoint);
        let now = engine::clock::now_ns();
        let to = (self.core, self.id, slot);
        let waiting = self.rp.declare(to, &sink, tag, now, restart_point_answer);
        self.reqs[slot].buf = buf;
        if waiting.is_none() {
            self.complete(slot, Status::INTERNAL_ERROR, 0, 0);
        }
    }

    /// The sink answered restart point `seq` of `slot`.
    pub(super) fn on_restart_point(&mut self, slot: usize, seq: u64, res: Result<u64, RestartPointError>) {
        if self.phase == Phase::Closing || !self.rp.answer(slot, seq) {
            return; // timed out already (the slot may be in use again), or closed
        }
        self.stat(|s| &s.completed_nvme_io, 1);
        if let Err(e) = &res {
            log::info!("nvmf: {}: restart point failed: {e}", self.peer);
        }
        let (status, dw0, dw1) = restart_wait::completion(&res);
        self.complete(slot, status, dw0, dw1)
    }

    /// Completes restart points whose sink did not answer in time.
    pub(super) fn expire_restart_points(&mut self, now: u64) -> bool {
        let mut any = false;
        while self.phase != Phase::Closing {
            let Some(slot) = self.rp.next_expired(now) else { break };
            log::warn!(
                "nvmf: {}: restart point (command {}) not replicated in time",
                self.peer,
                self.reqs[slot].sqe.cid
            );
            self.stat(|s| &s.completed_nvme_io, 1);
            self.complete(slot, restart_wait::EXPIRED, 0, 0);
            any = true;
        }
        any
    }
}
