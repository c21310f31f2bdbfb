//! Authentication Send / Receive on the NVMe/TCP target: the queue's DH-HMAC-CHAP
//! transaction ([`crate::nvmf::auth::Session`]) fed from command capsules, its messages sent
//! back in C2HData; a failed authentication fails the queue, and on the admin queue the
//! controller (`docs/nvme-tcp.md`, "In-band authentication").

use super::Conn;
use crate::nvmf::auth::{self, Outcome};
use crate::nvmf::ctrlr::data_out_len;
use crate::spec::auth::AuthCmd;
use crate::spec::fabrics::fctype;
use crate::spec::Status;
use crate::tcp::pdu;

impl Conn {
    pub(super) fn auth_cmd(&mut self, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        let cmd = AuthCmd::from_sqe(&sqe);
        let Some(a) = self.auth.as_mut() else {
            // The host entry has no keys: there is nothing to authenticate.
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        };
        let outcome = if sqe.fctype() == fctype::AUTH_SEND {
            let r = &self.reqs[slot];
            let n = r.in_capsule as usize;
            let data = r.buf.as_deref().map(|b| &b[..n.min(b.len())]).unwrap_or(&[]);
            let (status, outcome) = a.send(&cmd, data);
            self.complete(slot, status, 0, 0);
            outcome
        } else {
            let (status, data, outcome) = a.recv(&cmd);
            if status.is_success() {
                match data_out_len(&sqe) {
                    Err(s) => {
                        self.complete(slot, s, 0, 0);
                        return self.auth_outcome(outcome);
                    }
                    Ok(n) => {
                        let n = n.min(data.len());
                        if n > 0 {
                            pdu::encode_c2h_data(&mut self.tx, sqe.cid, 0, &data[..n], true, false, self.dg);
                        }
                    }
                }
            }
            self.complete(slot, status, 0, 0);
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

    /// Ends a queue whose authentication failed (or timed out); on the admin queue the
    /// controller fails with it.
    pub(super) fn auth_failed(&mut self, why: &str) {
        if self.qid == 0 {
            if let Some(c) = &self.ctrlr {
                c.fail(why);
            }
        }
        self.close(why);
    }
}
