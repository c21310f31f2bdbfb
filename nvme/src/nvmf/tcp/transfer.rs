//! Data transfer of the NVMe/TCP target: taking a write's data in H2CData PDUs (the R2T
//! that asks for it is sent by `driver.rs` once the request has its buffer), and sending a read's data in C2HData PDUs (`docs/nvme-tcp.md`).

use super::request::ReqState;
use super::rx::{fei, Fatal, RxSink};
use super::{Conn, C2H_PDU_BYTES};
use crate::spec::Status;
use crate::tcp::pdu::{self, fes};

impl Conn {
    pub(super) fn on_h2c(&mut self, cccid: u16, ttag: u16, datao: u32, len: u32) -> Result<(), Fatal> {
        let slot = usize::from(ttag);
        let Some(r) = self.reqs.get(slot) else {
            log::warn!("nvmf: {}: H2CData for unknown transfer tag {ttag}", self.peer);
            return Err(Fatal {
                fes: fes::INVALID_HEADER_FIELD,
                fei: fei::H2C_TTAG,
            });
        };
        let ReqState::AwaitH2C { received, total } = r.state else {
            log::warn!("nvmf: {}: H2CData for tag {ttag} that awaits no data", self.peer);
            return Err(Fatal {
                fes: fes::INVALID_HEADER_FIELD,
                fei: fei::H2C_TTAG,
            });
        };
        if r.sqe.cid != cccid {
            log::warn!(
                "nvmf: {}: H2CData tag {ttag} names command {cccid}, expected {}",
                self.peer,
                r.sqe.cid
            );
            return Err(Fatal {
                fes: fes::INVALID_HEADER_FIELD,
                fei: fei::H2C_CCCID,
            });
        }
        if datao != received {
            log::warn!("nvmf: {}: H2CData offset {datao}, expected {received}", self.peer);
            return Err(Fatal {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: fei::H2C_DATAO,
            });
        }
        if datao.checked_add(len).is_none_or(|end| end > total) {
            log::warn!(
                "nvmf: {}: H2CData {datao}+{len} beyond the R2T's {total} bytes",
                self.peer
            );
            return Err(Fatal {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: fei::H2C_DATAL,
            });
        }
        self.sink = RxSink::H2C { slot, off: datao };
        Ok(())
    }

    /// The data of an H2CData PDU for `slot` has arrived (`off` bytes of the transfer so
    /// far): the driver moves the request on once the whole transfer is in.
    pub(super) fn on_h2c_end(&mut self, slot: usize, off: u32, digest_ok: bool) {
        if !digest_ok {
            self.reqs[slot].status = Status::TRANSIENT_TRANSPORT_ERROR;
        }
        if let ReqState::AwaitH2C { total, .. } = self.reqs[slot].state {
            self.set_state(slot, ReqState::AwaitH2C { received: off, total });
            self.advance(slot);
        }
    }

    /// transferring_host_to_controller, all data in: execute the command, or fail it if a
    /// data digest did not match.
    pub(super) fn host_data_in(&mut self, slot: usize) {
        let status = self.reqs[slot].status;
        if status.is_success() {
            self.execute(slot);
        } else {
            self.complete(slot, status, 0, 0);
        }
    }

    /// Queues the first `bytes` of the read data of `slot` in C2HData PDUs, the last one
    /// flagged SUCCESS when `success` (the host then gets no response capsule).
    pub(super) fn send_c2h(&mut self, slot: usize, bytes: u32, success: bool) {
        // Large reads leave from their own buffer (`sock.rs`); the rest is copied.
        if self.send_c2h_pinned(slot, bytes as usize, C2H_PDU_BYTES, success) {
            return;
        }
        let cid = self.reqs[slot].sqe.cid;
        if let Some(b) = self.reqs[slot].buf.as_deref() {
            // One C2HData PDU per 128 KiB: hosts size their receive limits for
            // that, whatever MDTS allows.
            let mut chunks = b[..bytes as usize].chunks(C2H_PDU_BYTES).peekable();
            let mut off = 0u32;
            while let Some(d) = chunks.next() {
                let last = chunks.peek().is_none();
                pdu::encode_c2h_data(&mut self.tx, cid, off, d, last, success && last, self.dg);
                off += d.len() as u32;
            }
        }
    }
}
