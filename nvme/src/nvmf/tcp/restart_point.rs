//! The restart point command on the NVMe/TCP target (vendor opcode 0x81, and Flush where
//! the namespace's sink makes it one): handed to the namespace's restart point sink, answered
//! by message on the connection's reactor (`docs/restart-points.md`).

use super::group::GROUP;
use super::request::ReqState;
use super::Conn;
use super::Phase;
use crate::nvmf::restart::RestartPointError;
use crate::spec::Status;
use engine::reactor;

/// Runs on the reactor of connection `conn` (a message from the sink's `done`): completes
/// its restart point in `slot` if the connection and the request are still there.
fn restart_point_answer(conn: u64, slot: usize, seq: u64, res: Result<u64, RestartPointError>) {
    GROUP.with(|g| {
        let Ok(mut g) = g.try_borrow_mut() else {
            log::error!("nvmf: restart point answer arrived inside the poll group; dropped");
            return;
        };
        if let Some(c) = g.as_mut().and_then(|g| g.conns.iter_mut().find(|c| c.id == conn)) {
            c.on_restart_point(slot, seq, res);
        }
    });
}

impl Conn {
    /// Hands the request's tag (its data, `tag_len` bytes) to the namespace's sink. The
    /// answer comes back to this reactor by message ([`restart_point_answer`]); the command
    /// completes then, or at its deadline with Namespace Not Ready.
    ///
    /// Ordering: every write this queue completed before the command arrived has been
    /// completed by the bdev, so the sink has already ordered it (a replicated volume gave it
    /// an LSN); writes still outstanding on the queue are not ordered against the point, as
    /// NVMe orders no outstanding commands.
    pub(super) fn start_restart_point(&mut self, slot: usize, tag_len: u32) {
        let chan = self.reqs[slot].chan;
        let Some(sink) = self.io.sink(chan).cloned() else {
            return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
        };
        self.rp_seq += 1;
        self.rp_pending += 1;
        let seq = self.rp_seq;
        // Put back below: the tag may be in the slot's own buffer.
        let buf = self.reqs[slot].buf.take();
        let tag = buf.as_deref().unwrap_or(&[]);
        let tag = &tag[..(tag_len as usize).min(tag.len())];
        self.set_state(slot, ReqState::AwaitRestartPoint { seq });
        let timeout = u64::try_from(sink.timeout().as_nanos()).unwrap_or(u64::MAX);
        self.reqs[slot].deadline_ns = engine::clock::now_ns().saturating_add(timeout);
        let (core, conn) = (self.core, self.id);
        sink.declare(
            tag,
            Box::new(move |res| {
                if let Err(e) = reactor::send_msg(core, move || restart_point_answer(conn, slot, seq, res)) {
                    log::warn!("nvmf: restart point answer for reactor {core} lost: {e:?}");
                }
            }),
        );
        self.reqs[slot].buf = buf;
    }

    /// The sink answered restart point `seq` of `slot`.
    pub(super) fn on_restart_point(&mut self, slot: usize, seq: u64, res: Result<u64, RestartPointError>) {
        if self.phase == Phase::Closing {
            return;
        }
        let Some(r) = self.reqs.get(slot) else { return };
        if r.state != (ReqState::AwaitRestartPoint { seq }) {
            return; // timed out already; the slot may be in use again
        }
        self.rp_pending -= 1;
        self.stat(|s| &s.completed_nvme_io, 1);
        match res {
            Ok(epoch) => self.complete(slot, Status::SUCCESS, epoch as u32, (epoch >> 32) as u32),
            Err(e) => {
                log::info!("nvmf: {}: restart point failed: {e}", self.peer);
                self.complete(slot, crate::nvmf::restart::status(&e), 0, 0)
            }
        }
    }

    /// Completes restart points whose sink did not answer in time.
    pub(super) fn expire_restart_points(&mut self, now: u64) -> bool {
        let mut any = false;
        for slot in 0..self.reqs.len() {
            let r = &self.reqs[slot];
            if matches!(r.state, ReqState::AwaitRestartPoint { .. }) && now >= r.deadline_ns {
                log::warn!(
                    "nvmf: {}: restart point (command {}) not replicated in time",
                    self.peer,
                    r.sqe.cid
                );
                self.rp_pending -= 1;
                self.stat(|s| &s.completed_nvme_io, 1);
                self.complete(slot, Status::NAMESPACE_NOT_READY, 0, 0);
                any = true;
            }
        }
        any
    }
}
