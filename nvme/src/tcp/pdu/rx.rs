//! The streaming PDU receiver: bytes in, checked headers and data chunks out.

use super::{
    expected_hlen, flags, has_ddgst, has_hdgst, is_ic, is_term, legal_for, pdu_type, CapsuleCmdHdr, CapsuleRespHdr,
    CommonHeader, DataHdr, IcReqHdr, IcRespHdr, Pdu, PduError, PduKind, RxEvent, RxLimits, Side, TermReqHdr,
    DIGEST_BYTES, HDR_BUF_BYTES, IC_PDU_BYTES, TERM_REQ_DATA_MAX_BYTES,
};
use crate::spec::Plain;

/// Receiver states: the PDU receive state machine.
#[derive(Clone, Copy, Debug)]
enum RxState {
    /// Collecting the header: the 8-byte common header first, then the rest up to `need`
    /// (header + header digest + padding up to PDO).
    Header { need: usize },
    /// Delivering `remaining` data bytes of the current PDU to the caller.
    Data { remaining: u32, digest: bool, crc: u32 },
    /// Collecting the 4-byte data digest.
    DataDigest { crc: u32, have: usize },
    /// Data was delivered: report `DataEnd` next.
    DataEnd { digest_ok: bool },
    /// An ICReq/ICResp was delivered: nothing more is parsed until `set_digests`.
    AwaitNegotiation,
    /// A fatal error was reported; the connection must be closed.
    Failed,
}

/// The state after `chunk`, the next data bytes of a PDU with `remaining` data bytes left:
/// more data, the data digest, or the end of the PDU.
fn data_step(remaining: u32, digest: bool, crc: u32, chunk: &[u8]) -> RxState {
    let crc = if digest { crc32c::crc32c_append(crc, chunk) } else { crc };
    let remaining = remaining - chunk.len() as u32;
    if remaining > 0 {
        RxState::Data { remaining, digest, crc }
    } else if digest {
        RxState::DataDigest { crc, have: 0 }
    } else {
        RxState::DataEnd { digest_ok: true }
    }
}

/// Streaming PDU receiver for one connection. Owned by the connection (one reactor);
/// no allocation after construction.
pub struct PduReceiver {
    side: Side,
    limits: RxLimits,
    initialized: bool,
    hdgst: bool,
    ddgst: bool,
    state: RxState,
    hdr: [u8; HDR_BUF_BYTES],
    have: usize,
    ddgst_buf: [u8; DIGEST_BYTES],
}

impl PduReceiver {
    /// A receiver expecting the connection's first PDU (ICReq on the target, ICResp on the host).
    pub fn new(side: Side, limits: RxLimits) -> PduReceiver {
        PduReceiver {
            side,
            limits,
            initialized: false,
            hdgst: false,
            ddgst: false,
            state: RxState::Header { need: 8 },
            hdr: [0; HDR_BUF_BYTES],
            have: 0,
            ddgst_buf: [0; DIGEST_BYTES],
        }
    }

    /// Ends connection initialization: from now on digests are as negotiated. Must be called
    /// after the ICReq/ICResp `Header` event; parsing resumes with the next `advance`.
    pub fn set_digests(&mut self, hdgst: bool, ddgst: bool) {
        self.hdgst = hdgst;
        self.ddgst = ddgst;
        self.initialized = true;
        if matches!(self.state, RxState::AwaitNegotiation) {
            self.state = RxState::Header { need: 8 };
        }
    }

    /// Changes the data limits (the host learns MAXH2CDATA etc. only at ICResp time).
    pub fn set_limits(&mut self, limits: RxLimits) {
        self.limits = limits;
    }

    /// The raw bytes of the header being or last parsed (for a termination request's data).
    pub fn header_bytes(&self) -> &[u8] {
        &self.hdr[..self.have.min(TERM_REQ_DATA_MAX_BYTES)]
    }

    /// Consumes bytes from `input` and returns how many it used plus at most one event.
    /// Returns `(n, None)` only when all input is consumed or it waits for `set_digests`.
    /// After an error every later call fails too.
    pub fn advance<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<RxEvent<'a>>), PduError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                RxState::Failed => return Err(PduError::AlreadyFailed("earlier PDU error")),
                RxState::AwaitNegotiation => return Ok((used, None)),
                RxState::DataEnd { digest_ok } => {
                    self.state = RxState::Header { need: 8 };
                    return Ok((used, Some(RxEvent::DataEnd { digest_ok })));
                }
                RxState::Header { need } => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let n = (need - self.have).min(rest.len());
                    self.hdr[self.have..self.have + n].copy_from_slice(&rest[..n]);
                    self.have += n;
                    used += n;
                    if self.have < need {
                        return Ok((used, None));
                    }
                    if need == 8 {
                        match self.check_common_header() {
                            Ok(total) => self.state = RxState::Header { need: total },
                            Err(e) => return Err(self.fail(e)),
                        }
                        continue;
                    }
                    match self.finish_header() {
                        Ok(pdu) => {
                            self.have_done(&pdu);
                            return Ok((used, Some(RxEvent::Header(pdu))));
                        }
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                RxState::Data { remaining, digest, crc } => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let n = (remaining as usize).min(rest.len());
                    let chunk = &rest[..n];
                    self.state = data_step(remaining, digest, crc, chunk);
                    return Ok((used + n, Some(RxEvent::Data(chunk))));
                }
                RxState::DataDigest { crc, have } => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let n = (DIGEST_BYTES - have).min(rest.len());
                    self.ddgst_buf[have..have + n].copy_from_slice(&rest[..n]);
                    used += n;
                    let have = have + n;
                    self.state = if have < DIGEST_BYTES {
                        RxState::DataDigest { crc, have }
                    } else {
                        RxState::DataEnd {
                            digest_ok: u32::from_le_bytes(self.ddgst_buf) == crc,
                        }
                    };
                }
            }
        }
    }

    /// Data bytes of the current PDU still to come while the receiver is in the middle of
    /// its data, else 0. The caller may read them from the socket straight into where they
    /// belong and account for them with [`consume_data`](Self::consume_data) instead of
    /// passing them through `advance` (no copy through a receive buffer).
    pub fn data_remaining(&self) -> u32 {
        match self.state {
            RxState::Data { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Accounts for `data`, the next bytes of the current PDU's data that the caller read
    /// into place itself: the data digest covers them and the PDU ends after them as if
    /// `advance` had delivered them. Bytes beyond [`data_remaining`](Self::data_remaining)
    /// are not data of this PDU and are ignored (the caller never reads them this way).
    pub fn consume_data(&mut self, data: &[u8]) {
        if let RxState::Data { remaining, digest, crc } = self.state {
            let n = data.len().min(remaining as usize);
            self.state = data_step(remaining, digest, crc, &data[..n]);
        }
    }

    fn fail(&mut self, e: PduError) -> PduError {
        self.state = RxState::Failed;
        e
    }

    fn have_done(&mut self, pdu: &Pdu) {
        let ty = self.hdr[0];
        self.have = 0;
        self.state = if is_ic(ty) {
            RxState::AwaitNegotiation
        } else if pdu.data_len > 0 {
            let digest = self.initialized && self.ddgst && has_ddgst(ty);
            RxState::Data {
                remaining: pdu.data_len,
                digest,
                crc: 0,
            }
        } else {
            RxState::Header { need: 8 }
        };
    }

    /// Validates the common header; returns how many header bytes (to PDO or end of header
    /// digest) precede the data.
    fn check_common_header(&self) -> Result<usize, PduError> {
        let ch = CommonHeader::read_from(&self.hdr).ok_or(PduError::AlreadyFailed("short"))?;
        let ty = ch.pdu_type;
        let expected = expected_hlen(ty).ok_or(PduError::UnknownType(ty))?;
        if !legal_for(self.side, ty) {
            return Err(PduError::WrongDirection(ty));
        }
        if is_ic(ty) == self.initialized && !is_term(ty) {
            return Err(PduError::OutOfSequence {
                ty,
                initialized: self.initialized,
            });
        }
        if ch.hlen != expected {
            return Err(PduError::BadHlen {
                ty,
                hlen: ch.hlen,
                expected,
            });
        }
        let hd = self.initialized && self.hdgst && has_hdgst(ty);
        if (ch.flags & flags::HDGSTF != 0) != hd {
            return Err(PduError::BadDigestFlags { ty, flags: ch.flags });
        }
        let hdr_len = u32::from(ch.hlen) + if hd { DIGEST_BYTES as u32 } else { 0 };
        let plen = ch.plen;
        if plen < hdr_len {
            return Err(PduError::BadPlen { ty, plen });
        }
        if is_ic(ty) {
            return if plen == IC_PDU_BYTES as u32 {
                Ok(IC_PDU_BYTES)
            } else {
                Err(PduError::BadPlen { ty, plen })
            };
        }
        if is_term(ty) {
            if plen - hdr_len > TERM_REQ_DATA_MAX_BYTES as u32 || ch.flags & flags::DDGSTF != 0 {
                return Err(PduError::BadPlen { ty, plen });
            }
            return Ok(hdr_len as usize);
        }
        let dd_possible = self.initialized && self.ddgst && has_ddgst(ty);
        if plen == hdr_len {
            // No data. H2CData/C2HData must carry data.
            if ch.flags & flags::DDGSTF != 0 {
                return Err(PduError::BadDigestFlags { ty, flags: ch.flags });
            }
            if ty == pdu_type::H2C_DATA || ty == pdu_type::C2H_DATA {
                return Err(PduError::BadPlen { ty, plen });
            }
            return Ok(hdr_len as usize);
        }
        if !has_ddgst(ty) {
            return Err(PduError::BadPlen { ty, plen });
        }
        let pdo = u32::from(ch.pdo);
        if pdo < hdr_len || pdo >= plen {
            return Err(PduError::BadPdo {
                ty,
                pdo: ch.pdo,
                hdr_len,
                plen,
            });
        }
        if (ch.flags & flags::DDGSTF != 0) != dd_possible {
            return Err(PduError::BadDigestFlags { ty, flags: ch.flags });
        }
        let dd = if dd_possible { DIGEST_BYTES as u32 } else { 0 };
        let data_len = (plen - pdo)
            .checked_sub(dd)
            .filter(|&l| l > 0)
            .ok_or(PduError::BadPlen { ty, plen })?;
        let max = match ty {
            pdu_type::CAPSULE_CMD => self.limits.in_capsule_data_bytes,
            pdu_type::H2C_DATA => self.limits.h2c_data_bytes,
            _ => self.limits.c2h_data_bytes,
        };
        if data_len > max {
            return Err(PduError::DataTooLong { ty, len: data_len, max });
        }
        Ok(pdo as usize)
    }

    /// The whole header is in `hdr[..have]`: check the digest and build the typed PDU.
    fn finish_header(&self) -> Result<Pdu, PduError> {
        let ch = CommonHeader::read_from(&self.hdr).ok_or(PduError::AlreadyFailed("short"))?;
        let ty = ch.pdu_type;
        let hlen = usize::from(ch.hlen);
        let hd = self.initialized && self.hdgst && has_hdgst(ty);
        if hd {
            let computed = crc32c::crc32c(&self.hdr[..hlen]);
            let mut r = [0u8; 4];
            r.copy_from_slice(&self.hdr[hlen..hlen + DIGEST_BYTES]);
            let received = u32::from_le_bytes(r);
            if computed != received {
                return Err(PduError::HeaderDigest { computed, received });
            }
        }
        let hdr_len = hlen as u32 + if hd { DIGEST_BYTES as u32 } else { 0 };
        let data_len = if is_term(ty) {
            ch.plen - hdr_len
        } else if ch.plen == hdr_len {
            0
        } else {
            let dd = if self.initialized && self.ddgst && has_ddgst(ty) {
                DIGEST_BYTES as u32
            } else {
                0
            };
            ch.plen - u32::from(ch.pdo) - dd
        };
        let kind = parse_kind(&self.hdr, &ch, data_len)?;
        Ok(Pdu { kind, data_len })
    }
}

/// An ICReq's or ICResp's format version (only 0 is known) and its digest bits (bit 0
/// header digest, bit 1 data digest).
fn ic_digests(pfv: u16, dgst: u8) -> Result<(bool, bool), PduError> {
    if pfv != 0 {
        return Err(PduError::UnsupportedPfv(pfv));
    }
    Ok((dgst & 1 != 0, dgst & 2 != 0))
}

/// The typed content of a checked header `h` (common header `ch`, `data_len` data bytes
/// following).
fn parse_kind(h: &[u8], ch: &CommonHeader, data_len: u32) -> Result<PduKind, PduError> {
    let ty = ch.pdu_type;
    Ok(match ty {
        pdu_type::IC_REQ => {
            let p = IcReqHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            let (hdgst, ddgst) = ic_digests(p.pfv, p.dgst)?;
            PduKind::IcReq {
                hpda: p.hpda,
                hdgst,
                ddgst,
                maxr2t: p.maxr2t,
            }
        }
        pdu_type::IC_RESP => {
            let p = IcRespHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            let (hdgst, ddgst) = ic_digests(p.pfv, p.dgst)?;
            PduKind::IcResp {
                cpda: p.cpda,
                hdgst,
                ddgst,
                maxh2cdata: p.maxh2cdata,
            }
        }
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => {
            let p = TermReqHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            PduKind::TermReq {
                fes: p.fes,
                fei: u32::from_le_bytes(p.fei),
            }
        }
        pdu_type::CAPSULE_CMD => {
            let p = CapsuleCmdHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            PduKind::CapsuleCmd { sqe: p.sqe }
        }
        pdu_type::CAPSULE_RESP => {
            let p = CapsuleRespHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            PduKind::CapsuleResp { cqe: p.cqe }
        }
        pdu_type::H2C_DATA | pdu_type::C2H_DATA => {
            let p = DataHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            if p.length != data_len {
                return Err(PduError::DatalMismatch {
                    datal: p.length,
                    len: data_len,
                });
            }
            let last = ch.flags & flags::LAST_PDU != 0;
            if ty == pdu_type::H2C_DATA {
                PduKind::H2CData {
                    cccid: p.cccid,
                    ttag: p.ttag,
                    datao: p.offset,
                    last,
                }
            } else {
                let success = ch.flags & flags::SUCCESS != 0;
                if success && !last {
                    return Err(PduError::SuccessWithoutLast);
                }
                PduKind::C2HData {
                    cccid: p.cccid,
                    datao: p.offset,
                    last,
                    success,
                }
            }
        }
        pdu_type::R2T => {
            let p = DataHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
            PduKind::R2T {
                cccid: p.cccid,
                ttag: p.ttag,
                r2to: p.offset,
                r2tl: p.length,
            }
        }
        other => return Err(PduError::UnknownType(other)),
    })
}

/// Fuzz entry point: feeds arbitrary bytes to a receiver in pieces and checks that it either
/// reports an error or produces well-formed events, never panics or loops. The first byte
/// picks side, digests and chunk size. Used by `nvme/fuzz` and by a unit test.
pub fn fuzz_pdu(data: &[u8]) {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let side = if cfg & 1 == 0 { Side::Target } else { Side::Host };
    let limits = RxLimits {
        in_capsule_data_bytes: 8192,
        h2c_data_bytes: 65536,
        c2h_data_bytes: 131072,
    };
    let mut rx = PduReceiver::new(side, limits);
    let chunk = usize::from(cfg >> 3) + 1;
    let mut expect_data: u64 = 0;
    let mut in_data = false;
    while !rest.is_empty() {
        let take = chunk.min(rest.len());
        let mut piece = &rest[..take];
        rest = &rest[take..];
        loop {
            match rx.advance(piece) {
                Err(_) => return,
                Ok((n, ev)) => {
                    assert!(n <= piece.len());
                    piece = &piece[n..];
                    match ev {
                        None => {
                            if matches!(rx.state, RxState::AwaitNegotiation) {
                                rx.set_digests(cfg & 2 != 0, cfg & 4 != 0);
                                continue;
                            }
                            assert!(piece.is_empty());
                            break;
                        }
                        Some(RxEvent::Header(p)) => {
                            assert!(!in_data);
                            expect_data = u64::from(p.data_len);
                            in_data =
                                p.data_len > 0 && !matches!(p.kind, PduKind::IcReq { .. } | PduKind::IcResp { .. });
                        }
                        Some(RxEvent::Data(d)) => {
                            assert!(in_data && !d.is_empty() && d.len() as u64 <= expect_data);
                            expect_data -= d.len() as u64;
                        }
                        Some(RxEvent::DataEnd { .. }) => {
                            assert!(in_data && expect_data == 0);
                            in_data = false;
                        }
                    }
                }
            }
        }
    }
}
