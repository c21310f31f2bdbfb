//! I/O commands on the NVMe/TCP target: parsing a command against the queue's namespace
//! table (`nvmf::channels`) before its data is fetched and it executes
//! (`docs/nvme-tcp.md`).

use super::request::BufFor;
use super::Conn;
use crate::nvmf::io::{self, IoCmd};
use crate::spec::cmd::{admin_opc, io_opc};
use crate::spec::Status;

impl Conn {
    pub(super) fn io_cmd(&mut self, slot: usize) {
        let Some(c) = self.ctrlr.clone() else { return };
        let sqe = self.reqs[slot].sqe;
        let in_capsule = self.reqs[slot].in_capsule;
        if sqe.opc == admin_opc::FABRICS {
            return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
        }
        let (geo, chan) = match self.io.namespace(&c, sqe.nsid) {
            Ok(ns) => ns,
            Err(s) => return self.complete(slot, s, 0, 0),
        };
        if sqe.opc == io_opc::RESTART_POINT || sqe.opc == io_opc::FLUSH {
            let sink = self.io.current_sink(chan);
            if sqe.opc == io_opc::RESTART_POINT && sink.is_none() {
                // Only replicated volumes take restart points.
                return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
            }
        }
        let cmd = match io::parse_io(&sqe, geo, in_capsule, self.opts.max_io_size) {
            Ok(cmd) => cmd,
            Err(s) => return self.complete(slot, s, 0, 0),
        };
        let r = &mut self.reqs[slot];
        r.cmd = cmd;
        r.chan = chan;
        let hb = cmd.host_bytes();
        if hb > 0 && r.in_capsule == 0 {
            return self.need_buffers(slot, BufFor::H2C);
        }
        if hb > 0 {
            if let Some(b) = r.buf.as_mut() {
                b.set_len(hb as usize);
            }
        }
        if matches!(cmd, IoCmd::Read { .. } | IoCmd::Compare { .. }) {
            // The bdev reads into a buffer of the request's.
            return self.need_buffers(slot, BufFor::Execute);
        }
        self.execute(slot);
    }
}
