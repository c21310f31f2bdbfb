//! The restart point command on NVMe/RDMA queues (vendor opcode 0x81, and Flush where the
//! namespace's sink makes it one), with NVMe/TCP's semantics: the tag handed to the
//! namespace's restart point sink, the answer routed back by message to the queue's
//! reactor, the command completed then or at its deadline (`docs/restart-points.md`). The
//! waits, deadlines, routing and statuses are the shared `nvmf::restart_wait`.

use super::queue::{Phase, Queue, St};
use super::GROUP;
use crate::nvmf::restart::RestartPointError;
use crate::nvmf::restart_wait::{self, AnswerTo};
use crate::spec::Status;

/// Runs on the queue's reactor (a message from the sink's `done`): completes the restart
/// point if the queue and the request still wait for it.
fn restart_point_answer(to: AnswerTo, res: Result<u64, RestartPointError>) {
    GROUP.with(|g| {
        let Ok(mut g) = g.try_borrow_mut() else {
            log::error!("nvmf: RDMA restart point answer arrived inside the poll group; dropped");
            return;
        };
        if let Some(q) = g.as_mut().and_then(|g| g.queues.iter_mut().find(|q| q.uid == to.queue)) {
            q.on_restart_point(to.slot, to.seq, res);
        }
    });
}

impl Queue {
    /// Hands request `i`'s tag (its host data, at most `tag_len` bytes) to the namespace's
    /// sink; Invalid Opcode if the namespace takes no restart points.
    pub(super) fn start_restart_point(&mut self, i: u32, tag_len: u32) {
        let r = &mut self.reqs[i as usize];
        let Some(sink) = self.io.sink(r.chan).cloned() else {
            return self.complete(i, Status::INVALID_OPCODE, 0, 0);
        };
        let n = tag_len.min(r.in_len) as usize;
        let buf = r.buf.take();
        let tag = buf.as_deref().map_or(&[][..], |b| &b[..n.min(b.len())]);
        r.st = St::AwaitRestartPoint;
        let now = engine::clock::now_ns();
        let to = (self.core, self.uid, i as usize);
        let waiting = self.rp.declare(to, &sink, tag, now, restart_point_answer);
        self.reqs[i as usize].buf = buf;
        match waiting {
            Some(_) => self.stat(|s| &s.awaiting_restart_point, 1),
            None => self.complete(i, Status::INTERNAL_ERROR, 0, 0),
        }
    }

    /// The sink answered restart point `seq` of request `slot`. A queue that closed, or a
    /// request that timed out (and may be in use again), takes no answer: a command
    /// completes once.
    pub(super) fn on_restart_point(&mut self, slot: usize, seq: u64, res: Result<u64, RestartPointError>) {
        if self.phase == Phase::Closing || !self.rp.answer(slot, seq) {
            return;
        }
        if self.reqs[slot].st != St::AwaitRestartPoint {
            return;
        }
        if let Err(e) = &res {
            log::info!("nvmf: RDMA queue from {}: restart point failed: {e}", self.peer);
        }
        self.stat(|s| &s.awaiting_restart_point, -1);
        let (status, dw0, dw1) = restart_wait::completion(&res);
        self.complete(slot as u32, status, dw0, dw1)
    }

    /// Completes restart points whose sink did not answer in time (Namespace Not Ready).
    pub(super) fn expire_restart_points(&mut self, now: u64) -> bool {
        let mut any = false;
        while self.phase != Phase::Closing {
            let Some(slot) = self.rp.next_expired(now) else { break };
            log::warn!(
                "nvmf: RDMA queue from {}: restart point (command {}) not replicated in time",
                self.peer,
                self.reqs[slot].sqe.cid
            );
            self.stat(|s| &s.awaiting_restart_point, -1);
            self.stat(|s| &s.restart_point_timeouts, 1);
            self.complete(slot as u32, restart_wait::EXPIRED, 0, 0);
            any = true;
        }
        any
    }

    /// Request `i`'s Flush is done locally (or the bdev has none): complete it, or, on a
    /// namespace whose sink makes Flush a restart point, declare one with an empty tag.
    pub(super) fn flush_done(&mut self, i: u32) {
        let chan = self.reqs[i as usize].chan;
        if self.io.sink(chan).is_some_and(|s| s.flush_is_restart_point()) {
            return self.start_restart_point(i, 0);
        }
        self.complete(i, Status::SUCCESS, 0, 0)
    }
}
