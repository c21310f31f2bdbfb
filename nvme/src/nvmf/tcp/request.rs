//! The lifecycle of one NVMe/TCP request: its states, routing a command whose capsule is
//! complete to Connect, the admin or the I/O path, and sending its response capsule
//! (`docs/nvme-tcp.md`).

use super::Conn;
use crate::nvmf::io::IoCmd;
use crate::spec::cmd::admin_opc;
use crate::spec::fabrics::fctype;
use crate::spec::{Cqe, Sqe, Status};
use crate::tcp::pdu;
use engine::buf::DmaBuf;

/// Lifecycle of one request (one command on this queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqState {
    /// Slot unused.
    Free,
    /// Command capsule received; its in-capsule data is arriving.
    RecvInCapsule,
    /// R2T sent; `received` of `total` bytes have arrived in H2CData PDUs.
    AwaitH2C { received: u32, total: u32 },
    /// Submitted to the bdev: `pending` bdev operations outstanding.
    Executing { pending: u32 },
    /// Handed to the namespace's restart point sink; waiting for its answer number `seq`
    /// of this connection (a late answer for an earlier use of the slot is ignored).
    AwaitRestartPoint { seq: u64 },
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
    pub(super) cmd: IoCmd,
    /// Index into the queue's channel table.
    pub(super) chan: usize,
    /// First error seen (data digest, bdev error).
    pub(super) status: Status,
    /// AwaitRestartPoint: when the command gives up waiting (`engine::clock` ns).
    pub(super) deadline_ns: u64,
}

impl Req {
    pub(super) fn new() -> Req {
        Req {
            state: ReqState::Free,
            sqe: Sqe::default(),
            in_capsule: 0,
            buf: None,
            buf2: None,
            cmd: IoCmd::Flush,
            chan: 0,
            status: Status::SUCCESS,
            deadline_ns: 0,
        }
    }
}

impl Conn {
    /// A command with all its in-capsule data: route it by queue.
    pub(super) fn dispatch(&mut self, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        if !self.reqs[slot].status.is_success() {
            let s = self.reqs[slot].status;
            return self.complete(slot, s, 0, 0);
        }
        if self.ctrlr.is_none() {
            if sqe.opc == admin_opc::FABRICS && sqe.fctype() == fctype::CONNECT {
                return self.connect(slot);
            }
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        }
        if sqe.opc == admin_opc::FABRICS && matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECV) {
            return self.auth_cmd(slot);
        }
        if self.auth.is_some() && !self.authenticated {
            // Not authenticated yet: only authentication commands (NVMe base spec,
            // "Authentication Required").
            return self.complete(slot, Status::AUTH_REQUIRED, 0, 0);
        }
        if self.qid == 0 {
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
        let r = &mut self.reqs[slot];
        if r.state != ReqState::Free {
            r.state = ReqState::Free;
            r.buf = None;
            r.buf2 = None;
            self.free.push(slot);
        }
    }
}
