//! The lifecycle of one NVMe/TCP request: its states, routing a command whose capsule is
//! complete to Connect, the admin or the I/O path, and sending its response capsule
//! (`docs/nvme-tcp.md`).

use super::buffers::SMALL_BUF_BYTES;
use super::Conn;
use crate::nvmf::io::IoCmd;
use crate::spec::cmd::admin_opc;
use crate::spec::fabrics::fctype;
use crate::spec::{Cqe, Sqe, Status};
use crate::tcp::pdu;
use engine::buf::DmaBuf;

/// Lifecycle of one request (one command on this queue). `Conn::advance` (`driver.rs`)
/// moves a request from each state to the next; every change goes through
/// `Conn::set_state`, which keeps the poll group's per-state counts. The steps SPDK names
/// READY_TO_EXECUTE, TRANSFERRING_CONTROLLER_TO_HOST and COMPLETED happen within one call
/// here (the response and read data are queued on the socket at once), and EXECUTED is
/// left in the same call it is entered, so no request is seen in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqState {
    /// Slot unused.
    Free,
    /// Command capsule received; its in-capsule data is arriving (SPDK's NEW).
    RecvInCapsule,
    /// Parsed; waiting for data buffers (the pool was empty), then does `next`.
    NeedBuffer { next: BufFor },
    /// R2T sent; `received` of `total` bytes have arrived in H2CData PDUs.
    AwaitH2C { received: u32, total: u32 },
    /// Submitted to the bdev: `pending` bdev operations outstanding (admin, Connect and
    /// authentication commands are here with none while they execute).
    Executing { pending: u32 },
    /// The last bdev operation is done: the data and the response are sent next (SPDK's
    /// EXECUTED; counted as executing).
    Executed,
    /// Handed to the namespace's restart point sink; waiting for its answer (the wait's
    /// number and deadline are the connection's `RestartWaits`).
    AwaitRestartPoint,
}

/// What a request in `ReqState::NeedBuffer` does once it has its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BufFor {
    /// Send the R2T for the host's data (a Compare also takes its read buffer now, so
    /// no request holds one buffer while waiting for another).
    H2C,
    /// Submit the bdev read (Read, Compare).
    Execute,
}

/// Names of the counted request states in `nvmf_get_stats` (SPDK's TCP request state
/// names, lower case), in `ReqState::counter` order.
pub const REQ_STATE_NAMES: [&str; REQ_STATE_COUNTERS] = [
    "new",
    "need_buffer",
    "transferring_host_to_controller",
    "executing",
    "awaiting_restart_point",
];
/// How many request states are counted (all but Free).
pub const REQ_STATE_COUNTERS: usize = 5;
/// Index of the NeedBuffer count in `GroupStats::req_states` (`pending_data_buffer`).
pub const REQ_STATE_NEED_BUFFER: usize = 1;

impl ReqState {
    /// Index of this state's counter (`REQ_STATE_NAMES`); None for Free.
    pub(super) fn counter(self) -> Option<usize> {
        match self {
            ReqState::Free => None,
            ReqState::RecvInCapsule => Some(0),
            ReqState::NeedBuffer { .. } => Some(REQ_STATE_NEED_BUFFER),
            ReqState::AwaitH2C { .. } => Some(2),
            ReqState::Executing { .. } | ReqState::Executed => Some(3),
            ReqState::AwaitRestartPoint => Some(4),
        }
    }
}

pub(super) struct Req {
    pub(super) state: ReqState,
    pub(super) sqe: Sqe,
    /// In-capsule data bytes that came with the command.
    pub(super) in_capsule: u32,
    /// Data from the host (write, compare, DSM, admin) or for the host (read).
    pub(super) buf: Option<DmaBuf>,
    /// Compare: what the bdev read.
    pub(super) buf2: Option<DmaBuf>,
    /// The slot's own small buffer while no command uses it: in-capsule data lands in it,
    /// and transfers that fit use it instead of a pool buffer (`buffers.rs`).
    pub(super) own: Option<DmaBuf>,
    pub(super) cmd: IoCmd,
    /// Index into the queue's channel table.
    pub(super) chan: usize,
    /// First error seen (data digest, bdev error).
    pub(super) status: Status,
}

impl Req {
    /// A free slot owning `own`, a `SMALL_BUF_BYTES` buffer (set-up path).
    pub(super) fn new(own: DmaBuf) -> Req {
        Req {
            state: ReqState::Free,
            sqe: Sqe::default(),
            in_capsule: 0,
            buf: None,
            buf2: None,
            own: Some(own),
            cmd: IoCmd::Flush,
            chan: 0,
            status: Status::SUCCESS,
        }
    }

    /// Keeps `b` as the slot's own buffer if it is one (the slot's buffer came back from
    /// the bdev or was never used); other buffers go back to their pool when dropped.
    pub(super) fn give_back(&mut self, b: DmaBuf) {
        if self.own.is_none() && b.capacity() == SMALL_BUF_BYTES {
            self.own = Some(b);
        }
    }
}

impl Conn {
    /// new: a command with all its in-capsule data: route it by queue.
    pub(super) fn dispatch(&mut self, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        if !self.reqs[slot].status.is_success() {
            let s = self.reqs[slot].status;
            return self.complete(slot, s, 0, 0);
        }
        // Connect, authentication and admin commands execute in this call (with no bdev
        // operation); an I/O command's parsing moves it on (`io_queue.rs`).
        let executing = ReqState::Executing { pending: 0 };
        if self.ctrlr.is_none() {
            if sqe.opc == admin_opc::FABRICS && sqe.fctype() == fctype::CONNECT {
                self.set_state(slot, executing);
                return self.connect(slot);
            }
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        }
        if sqe.opc == admin_opc::FABRICS && matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECV) {
            self.set_state(slot, executing);
            return self.auth_cmd(slot);
        }
        if self.auth.is_some() && !self.authenticated {
            // Not authenticated yet: only authentication commands (NVMe base spec,
            // "Authentication Required").
            return self.complete(slot, Status::AUTH_REQUIRED, 0, 0);
        }
        if self.qid == 0 {
            self.set_state(slot, executing);
            self.admin_cmd(slot)
        } else {
            self.io_cmd(slot)
        }
    }

    pub(super) fn respond(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: self.sqhd,
            sqid: self.qid,
            cid,
            status: status.to_field(),
        };
        pdu::encode_capsule_resp(&mut self.tx, &cqe, self.dg);
    }

    /// Sends the response for the request in `slot` and frees the slot.
    pub(super) fn complete(&mut self, slot: usize, status: Status, dw0: u32, dw1: u32) {
        let cid = self.reqs[slot].sqe.cid;
        self.respond(cid, status, dw0, dw1);
        self.release(slot);
    }

    pub(super) fn release(&mut self, slot: usize) {
        let old = self.reqs[slot].state;
        if old == ReqState::Free {
            return;
        }
        if matches!(old, ReqState::NeedBuffer { .. }) {
            self.buf_wait.retain(|&s| s != slot);
        }
        self.set_state(slot, ReqState::Free);
        let r = &mut self.reqs[slot];
        for b in [r.buf.take(), r.buf2.take()].into_iter().flatten() {
            r.give_back(b);
        }
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_but_free_has_its_own_named_counter() {
        let states = [
            ReqState::RecvInCapsule,
            ReqState::NeedBuffer { next: BufFor::H2C },
            ReqState::AwaitH2C { received: 0, total: 1 },
            ReqState::Executing { pending: 0 },
            ReqState::AwaitRestartPoint,
        ];
        assert_eq!(ReqState::Free.counter(), None);
        let idx: Vec<usize> = states.iter().map(|s| s.counter().unwrap()).collect();
        assert_eq!(idx, (0..REQ_STATE_COUNTERS).collect::<Vec<_>>());
        assert_eq!(
            ReqState::NeedBuffer { next: BufFor::Execute }.counter(),
            Some(REQ_STATE_NEED_BUFFER)
        );
        assert_eq!(REQ_STATE_NAMES[REQ_STATE_NEED_BUFFER], "need_buffer");
        assert_eq!(
            ReqState::Executed.counter(),
            ReqState::Executing { pending: 0 }.counter()
        );
    }
}
