//! Authentication Send / Receive on NVMe/RDMA queues: the DH-HMAC-CHAP transaction NVMe/TCP
//! runs ([`crate::nvmf::auth::Session`]), fed from command capsules (the host's message
//! in-capsule or fetched by RDMA READ, like any host-to-controller data), our messages
//! written to the host's keyed buffer by RDMA WRITE before the response. A failed or late
//! authentication ends the queue, and on the admin queue the controller
//! (`docs/nvme-rdma.md`, "In-band authentication").

use super::queue::Queue;
use crate::nvmf::auth::{self, Outcome};
use crate::nvmf::rdma_proto::DataDesc;
use crate::spec::auth::AuthCmd;
use crate::spec::fabrics::fctype;
use crate::spec::Status;

impl Queue {
    /// An Authentication Send or Receive on a queue whose Connect asked for it.
    pub(super) fn auth_cmd(&mut self, i: u32) {
        let sqe = self.reqs[i as usize].sqe;
        let cmd = AuthCmd::from_sqe(&sqe);
        let Some(a) = self.auth.as_mut() else {
            // The host entry has no keys: there is nothing to authenticate.
            return self.complete(i, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        };
        let outcome = if sqe.fctype() == fctype::AUTH_SEND {
            let r = &self.reqs[i as usize];
            let b = r.buf.as_deref().unwrap_or(&[]);
            let (status, outcome) = a.send(&cmd, &b[..(r.in_len as usize).min(b.len())]);
            self.complete(i, status, 0, 0);
            outcome
        } else {
            let (mut status, data, outcome) = a.recv(&cmd);
            if status.is_success() && !data.is_empty() {
                if let DataDesc::Keyed { .. } = self.reqs[i as usize].desc {
                    if !self.reply_to_host(i, &data) {
                        return;
                    }
                } else {
                    // The message goes to the host: only a keyed buffer can take it.
                    status = Status::SGL_DESCRIPTOR_TYPE_INVALID;
                }
            }
            self.complete(i, status, 0, 0);
            outcome
        };
        self.auth_outcome(outcome);
    }

    fn auth_outcome(&mut self, outcome: Outcome) {
        let cntlid = self.ctrlr.as_ref().map_or(0, |c| c.cntlid);
        if auth::apply_outcome(outcome, &mut self.authenticated, self.peer, self.qid, cntlid) {
            self.auth_failed("authentication failed");
        }
    }

    /// True (and the queue closed) when its authentication is still due after its
    /// deadline.
    pub(super) fn auth_expired(&mut self, now: u64) -> bool {
        if self.auth.is_some() && !self.authenticated && now > self.auth_deadline_ns {
            self.auth_failed("authentication timed out");
            return true;
        }
        false
    }

    /// Ends a queue whose authentication failed (or timed out); on the admin queue the
    /// controller fails with it.
    fn auth_failed(&mut self, why: &str) {
        log::info!("nvmf: {}: RDMA queue {}: {why}", self.peer, self.qid);
        if self.qid == 0 {
            if let Some(c) = &self.ctrlr {
                c.fail(why);
            }
        }
        self.close(why);
    }
}
