//! Admin commands on the NVMe/TCP target: handed to the controller, their data sent back
//! in one C2HData PDU; Asynchronous Event Requests are parked until an event arrives
//! (`docs/nvme-tcp.md`).

use super::Conn;
use crate::nvmf::ctrlr::{data_out_len, AdminResult, AER_MAX};
use crate::spec::Status;
use crate::tcp::pdu;

impl Conn {
    pub(super) fn admin_cmd(&mut self, slot: usize) {
        let Some(c) = self.ctrlr.clone() else {
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        };
        let sqe = self.reqs[slot].sqe;
        let res = c.admin(
            &self.target,
            &sqe,
            self.reqs[slot].buf.as_deref().unwrap_or(&[]),
            self.listen,
        );
        match res {
            AdminResult::ParkAer => {
                if self.aers.len() >= AER_MAX {
                    return self.complete(slot, Status::ASYNC_EVENT_REQUEST_LIMIT, 0, 0);
                }
                self.aers.push(sqe.cid);
                self.release(slot);
            }
            AdminResult::Reply { status, dw0, dw1, data } => {
                if status.is_success() && !data.is_empty() {
                    match data_out_len(&sqe) {
                        Err(s) => return self.complete(slot, s, 0, 0),
                        Ok(n) => {
                            let n = n.min(data.len());
                            if n > 0 {
                                pdu::encode_c2h_data(&mut self.tx, sqe.cid, 0, &data[..n], true, false, self.dg);
                            }
                        }
                    }
                }
                self.complete(slot, status, dw0, dw1)
            }
        }
    }
}
