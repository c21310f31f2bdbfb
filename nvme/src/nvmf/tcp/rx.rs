//! The NVMe/TCP target's PDU receive path: the bytes read from the socket go through the
//! [`PduReceiver`](crate::tcp::pdu::PduReceiver); each header and data chunk it yields is acted on
//! here (ICReq, command capsule, H2CData, termination). A protocol violation ends the
//! connection with a C2HTermReq (`docs/nvme-tcp.md`).

use super::request::ReqState;
use super::{Conn, Phase};
use crate::spec::{Sqe, Status};
use crate::tcp::pdu::{self, fes, PduError, PduKind, RxEvent, Side, TxDigests};

/// Where the data of the PDU being received goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxSink {
    None,
    Capsule { slot: usize, off: u32 },
    H2C { slot: usize, off: u32 },
    Discard,
}

/// A protocol violation that ends the connection with a C2HTermReq.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fatal {
    pub(super) fes: u16,
    pub(super) fei: u32,
}

/// Field Error Information (FEI) of the termination requests the target sends for its own
/// rejections (the receiver's are [`PduError::fei`]): the byte offset, in the offending PDU
/// header, of the field at fault (NVMe/TCP, PDU header layouts).
pub(super) mod fei {
    /// PDU-Type, byte 0 of the common header: a PDU type the target never accepts.
    pub use crate::tcp::pdu::fei::PDU_TYPE;
    /// ICReq HPDA (host PDU data alignment), byte 10.
    pub const ICREQ_HPDA: u32 = 10;
    /// H2CData CCCID (the command capsule's CID), bytes 8-9.
    pub const H2C_CCCID: u32 = 8;
    /// H2CData TTAG (the transfer tag the R2T gave), bytes 10-11.
    pub const H2C_TTAG: u32 = 10;
    /// H2CData DATAO (data offset), bytes 12-15.
    pub const H2C_DATAO: u32 = 12;
    /// H2CData DATAL (data length), bytes 16-19.
    pub const H2C_DATAL: u32 = 16;
}

impl From<PduError> for Fatal {
    fn from(e: PduError) -> Fatal {
        Fatal {
            fes: e.fes(),
            fei: e.fei(),
        }
    }
}

impl Conn {
    /// Runs the first `n` bytes of the receive buffer through the PDU receiver.
    pub(super) fn process(&mut self, n: usize) -> Result<(), Fatal> {
        let buf = std::mem::take(&mut self.rx_buf);
        let mut input = &buf[..n];
        let res = loop {
            match self.rx.advance(input) {
                Err(e) => {
                    log::warn!("nvmf: {}: PDU error: {e}", self.peer);
                    break Err(Fatal::from(e));
                }
                Ok((used, ev)) => {
                    input = &input[used..];
                    match ev {
                        None => break Ok(()),
                        Some(ev) => {
                            if let Err(f) = self.on_event(ev) {
                                break Err(f);
                            }
                            if self.phase == Phase::Closing {
                                break Ok(());
                            }
                        }
                    }
                }
            }
        };
        self.rx_buf = buf;
        res
    }

    pub(super) fn on_event(&mut self, ev: RxEvent<'_>) -> Result<(), Fatal> {
        match ev {
            RxEvent::Header(p) => match p.kind {
                PduKind::IcReq { hpda, hdgst, ddgst, .. } => {
                    if hpda > 31 {
                        return Err(Fatal {
                            fes: fes::UNSUPPORTED_PARAMETER,
                            fei: fei::ICREQ_HPDA,
                        });
                    }
                    self.dg = TxDigests {
                        hdgst,
                        ddgst,
                        data_align: (usize::from(hpda) + 1) * 4,
                    };
                    pdu::encode_ic_resp(&mut self.tx, 0, hdgst, ddgst, self.opts.io_unit_size);
                    self.rx.set_digests(hdgst, ddgst);
                    self.phase = Phase::Ready;
                    Ok(())
                }
                PduKind::TermReq { fes, fei } => {
                    log::info!("nvmf: {} sent H2CTermReq fes={fes:#x} fei={fei:#x}", self.peer);
                    self.close("host terminated the connection");
                    Ok(())
                }
                PduKind::CapsuleCmd { sqe } => {
                    self.on_capsule(sqe, p.data_len);
                    Ok(())
                }
                PduKind::H2CData { cccid, ttag, datao, .. } => self.on_h2c(cccid, ttag, datao, p.data_len),
                // The receiver rejects controller-to-host types on the target side.
                PduKind::IcResp { .. }
                | PduKind::CapsuleResp { .. }
                | PduKind::C2HData { .. }
                | PduKind::R2T { .. } => Err(Fatal {
                    fes: fes::INVALID_HEADER_FIELD,
                    fei: fei::PDU_TYPE,
                }),
            },
            RxEvent::Data(d) => {
                match &mut self.sink {
                    RxSink::Capsule { slot, off } | RxSink::H2C { slot, off } => {
                        let o = *off as usize;
                        if let Some(b) = self.reqs[*slot].buf.as_mut() {
                            b[o..o + d.len()].copy_from_slice(d);
                        }
                        *off += d.len() as u32;
                    }
                    RxSink::Discard | RxSink::None => {}
                }
                Ok(())
            }
            RxEvent::DataEnd { digest_ok } => {
                let sink = std::mem::replace(&mut self.sink, RxSink::None);
                match sink {
                    RxSink::Capsule { slot, .. } => {
                        if !digest_ok {
                            self.reqs[slot].status = Status::TRANSIENT_TRANSPORT_ERROR;
                        }
                        self.advance(slot);
                    }
                    RxSink::H2C { slot, off } => self.on_h2c_end(slot, off, digest_ok),
                    RxSink::Discard | RxSink::None => {}
                }
                Ok(())
            }
        }
    }

    pub(super) fn on_capsule(&mut self, sqe: Sqe, data_len: u32) {
        self.traffic = true;
        self.sqhd = (self.sqhd + 1) % self.sq_entries.max(1);
        let Some(slot) = self.free.pop() else {
            log::warn!(
                "nvmf: {}: command {} exceeds the queue depth of {}",
                self.peer,
                sqe.cid,
                self.reqs.len()
            );
            self.respond(sqe.cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            if data_len > 0 {
                self.sink = RxSink::Discard;
            }
            return;
        };
        let r = &mut self.reqs[slot];
        debug_assert_eq!(r.state, ReqState::Free);
        r.sqe = sqe;
        r.in_capsule = data_len;
        r.status = Status::SUCCESS;
        if data_len > 0 {
            // In-capsule data lands in the slot's own buffer (the receiver refuses more than
            // the in-capsule limit, which it holds).
            let b = self.take_buf(slot, data_len);
            let r = &mut self.reqs[slot];
            if b.is_none() {
                // Only if the slot's buffer was lost and the pool is empty: the data is
                // dropped and the host told to retry.
                log::warn!(
                    "nvmf: {}: no buffer for command {}'s in-capsule data",
                    self.peer,
                    sqe.cid
                );
                r.status = Status::TRANSIENT_TRANSPORT_ERROR;
            }
            r.buf = b;
            self.set_state(slot, ReqState::RecvInCapsule);
            self.sink = RxSink::Capsule { slot, off: 0 };
        } else {
            self.set_state(slot, ReqState::RecvInCapsule);
            self.advance(slot);
        }
    }

    /// Ends the connection with a C2HTermReq carrying the offending header.
    pub(super) fn terminate(&mut self, f: Fatal) {
        log::warn!(
            "nvmf: {}: terminating connection, fes={:#x} fei={}",
            self.peer,
            f.fes,
            f.fei
        );
        self.stat(|s| &s.term_reqs_sent, 1);
        let hdr: Vec<u8> = self.rx.header_bytes().to_vec();
        pdu::encode_term_req(&mut self.tx, Side::Target, f.fes, f.fei, &hdr);
        self.flush();
        self.close("protocol error");
    }
}
