//! NVMe/TCP PDUs: wire headers, the encoder, and the streaming receiver.
//!
//! Sits at the bottom of both the target's and the host's data path: bytes read from a
//! non-blocking socket go into [`PduReceiver::advance`], which turns them into typed
//! [`Pdu`] headers followed by data chunks, checking every length, flag and digest once;
//! everything above it trusts the [`Pdu`]. Replies are appended to a byte buffer by the
//! `encode_*` functions. Reads may end anywhere (mid-header, mid-digest): the receiver keeps
//! its position and continues with the next read.

use crate::spec::{Cqe, Plain, Sqe};
use thiserror::Error;

/// PDU types (NVMe/TCP transport specification, PDU-Type field).
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags.
pub mod flags {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 0x02;
    /// Last H2CData/C2HData PDU of a transfer.
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData only: the command succeeded, no response capsule follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal error status (FES) of a termination request.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Size of a header or data digest (CRC32C).
pub const DIGEST_BYTES: usize = 4;
/// ICReq / ICResp are always exactly this long (header only).
pub const IC_PDU_BYTES: usize = 128;
/// A termination request carries at most this many bytes of the offending PDU header.
pub const TERM_REQ_DATA_MAX_BYTES: usize = 152;
/// Largest header we ever hold: a PDO is one byte, so header + digest + padding <= 255.
const HDR_BUF_BYTES: usize = 256;

/// Common header (8 bytes) at the start of every PDU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}
const _: () = assert!(core::mem::size_of::<CommonHeader>() == 8);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for CommonHeader {}

/// ICReq (host to controller), 128 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcReqHdr {
    pub ch: CommonHeader,
    pub pfv: u16,
    /// Host PDU data alignment: data in C2HData starts at a multiple of (hpda+1)*4 bytes.
    pub hpda: u8,
    /// Bit 0 header digest, bit 1 data digest requested.
    pub dgst: u8,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(core::mem::size_of::<IcReqHdr>() == IC_PDU_BYTES);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for IcReqHdr {}

/// ICResp (controller to host), 128 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcRespHdr {
    pub ch: CommonHeader,
    pub pfv: u16,
    /// Controller PDU data alignment for H2CData/capsule data, (cpda+1)*4 bytes.
    pub cpda: u8,
    pub dgst: u8,
    /// Largest H2CData payload the controller accepts, bytes.
    pub maxh2cdata: u32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(core::mem::size_of::<IcRespHdr>() == IC_PDU_BYTES);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for IcRespHdr {}

/// H2CTermReq / C2HTermReq header (24 bytes); up to 152 bytes of the offending header follow.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TermReqHdr {
    pub ch: CommonHeader,
    pub fes: u16,
    /// Field error information (a u32 at an unaligned offset, hence bytes).
    pub fei: [u8; 4],
    pub rsvd: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<TermReqHdr>() == 24);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for TermReqHdr {}

/// CapsuleCmd header: common header + SQE (72 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CapsuleCmdHdr {
    pub ch: CommonHeader,
    pub sqe: Sqe,
}
const _: () = assert!(core::mem::size_of::<CapsuleCmdHdr>() == 72);
// SAFETY: repr(C), Plain fields only, size assertion proves no padding.
unsafe impl Plain for CapsuleCmdHdr {}

/// CapsuleResp header: common header + CQE (24 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CapsuleRespHdr {
    pub ch: CommonHeader,
    pub cqe: Cqe,
}
const _: () = assert!(core::mem::size_of::<CapsuleRespHdr>() == 24);
// SAFETY: repr(C), Plain fields only, size assertion proves no padding.
unsafe impl Plain for CapsuleRespHdr {}

/// H2CData / C2HData / R2T header (24 bytes). For C2HData `ttag` is reserved; for R2T
/// `offset`/`length` are R2TO/R2TL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataHdr {
    pub ch: CommonHeader,
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<DataHdr>() == 24);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for DataHdr {}

/// Which end of the connection a receiver sits at (decides which PDU types are legal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The controller: receives ICReq, H2CTermReq, CapsuleCmd, H2CData.
    Target,
    /// The host: receives ICResp, C2HTermReq, CapsuleResp, C2HData, R2T.
    Host,
}

/// Data length limits enforced by the receiver, bytes.
#[derive(Clone, Copy, Debug)]
pub struct RxLimits {
    /// In-capsule data of a CapsuleCmd.
    pub in_capsule_data_bytes: u32,
    /// Payload of one H2CData PDU (the MAXH2CDATA the controller announced).
    pub h2c_data_bytes: u32,
    /// Payload of one C2HData PDU.
    pub c2h_data_bytes: u32,
}

/// A parsed PDU header: what the PDU is and how many data bytes follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdu {
    pub kind: PduKind,
    /// Data bytes that follow (digest and padding excluded); delivered as `RxEvent::Data`.
    pub data_len: u32,
}

/// The typed content of each PDU type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduKind {
    IcReq {
        hpda: u8,
        hdgst: bool,
        ddgst: bool,
        maxr2t: u32,
    },
    IcResp {
        cpda: u8,
        hdgst: bool,
        ddgst: bool,
        maxh2cdata: u32,
    },
    /// H2CTermReq or C2HTermReq (the receiving side tells which); data = offending header.
    TermReq {
        fes: u16,
        fei: u32,
    },
    CapsuleCmd {
        sqe: Sqe,
    },
    CapsuleResp {
        cqe: Cqe,
    },
    H2CData {
        cccid: u16,
        ttag: u16,
        datao: u32,
        last: bool,
    },
    C2HData {
        cccid: u16,
        datao: u32,
        last: bool,
        success: bool,
    },
    R2T {
        cccid: u16,
        ttag: u16,
        r2to: u32,
        r2tl: u32,
    },
}

/// What the receiver produced from the bytes given to it.
#[derive(Debug, PartialEq, Eq)]
pub enum RxEvent<'a> {
    /// A complete, checked header. If `data_len > 0`, `Data` events and one `DataEnd` follow.
    Header(Pdu),
    /// The next chunk of the current PDU's data, in order.
    Data(&'a [u8]),
    /// All data of the current PDU was delivered; `digest_ok` is false on a data digest
    /// mismatch (a per-command error, not a connection error).
    DataEnd { digest_ok: bool },
}

/// Why a PDU stream was rejected. Each is fatal to the connection: the receiver answers with
/// a termination request carrying [`PduError::fes`] and [`PduError::fei`], then closes.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PduError {
    #[error("unknown PDU type {0:#04x}")]
    UnknownType(u8),
    #[error("PDU type {0:#04x} is not valid in this direction")]
    WrongDirection(u8),
    #[error("PDU type {ty:#04x} out of sequence (connection initialized: {initialized})")]
    OutOfSequence { ty: u8, initialized: bool },
    #[error("PDU type {ty:#04x}: HLEN {hlen}, expected {expected}")]
    BadHlen { ty: u8, hlen: u8, expected: u8 },
    #[error("PDU type {ty:#04x}: flags {flags:#04x} disagree with negotiated digests")]
    BadDigestFlags { ty: u8, flags: u8 },
    #[error("PDU type {ty:#04x}: PDO {pdo} invalid for header of {hdr_len} bytes, PLEN {plen}")]
    BadPdo { ty: u8, pdo: u8, hdr_len: u32, plen: u32 },
    #[error("PDU type {ty:#04x}: PLEN {plen} invalid")]
    BadPlen { ty: u8, plen: u32 },
    #[error("PDU type {ty:#04x}: {len} data bytes exceed the limit of {max}")]
    DataTooLong { ty: u8, len: u32, max: u32 },
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest { computed: u32, received: u32 },
    #[error("unsupported PDU format version {0}")]
    UnsupportedPfv(u16),
    #[error("data PDU DATAL {datal} disagrees with its {len} data bytes")]
    DatalMismatch { datal: u32, len: u32 },
    #[error("C2HData has SUCCESS without LAST_PDU")]
    SuccessWithoutLast,
    #[error("receiver already failed: {0}")]
    AlreadyFailed(&'static str),
}

impl PduError {
    /// Fatal error status for the termination request.
    pub fn fes(&self) -> u16 {
        match self {
            PduError::UnknownType(_)
            | PduError::WrongDirection(_)
            | PduError::BadHlen { .. }
            | PduError::BadDigestFlags { .. }
            | PduError::BadPdo { .. }
            | PduError::BadPlen { .. }
            | PduError::DatalMismatch { .. }
            | PduError::SuccessWithoutLast
            | PduError::AlreadyFailed(_) => fes::INVALID_HEADER_FIELD,
            PduError::OutOfSequence { .. } => fes::PDU_SEQUENCE_ERROR,
            PduError::HeaderDigest { .. } => fes::HEADER_DIGEST_ERROR,
            PduError::DataTooLong { .. } => fes::DATA_LIMIT_EXCEEDED,
            PduError::UnsupportedPfv(_) => fes::UNSUPPORTED_PARAMETER,
        }
    }

    /// Field error information: byte offset of the offending field in the header.
    pub fn fei(&self) -> u32 {
        match self {
            PduError::UnknownType(_) | PduError::WrongDirection(_) => 0,
            PduError::OutOfSequence { .. } => 0,
            PduError::BadDigestFlags { .. } | PduError::SuccessWithoutLast => 1,
            PduError::BadHlen { .. } => 2,
            PduError::BadPdo { .. } => 3,
            PduError::BadPlen { .. } | PduError::DataTooLong { .. } => 4,
            PduError::DatalMismatch { .. } => 16,
            PduError::UnsupportedPfv(_) => 8,
            PduError::HeaderDigest { .. } | PduError::AlreadyFailed(_) => 0,
        }
    }
}

fn expected_hlen(ty: u8) -> Option<u8> {
    Some(match ty {
        pdu_type::IC_REQ | pdu_type::IC_RESP => IC_PDU_BYTES as u8,
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => 24,
        pdu_type::CAPSULE_CMD => 72,
        pdu_type::CAPSULE_RESP | pdu_type::H2C_DATA | pdu_type::C2H_DATA | pdu_type::R2T => 24,
        _ => return None,
    })
}

/// Types that carry a header digest once digests are negotiated.
fn has_hdgst(ty: u8) -> bool {
    matches!(
        ty,
        pdu_type::CAPSULE_CMD | pdu_type::CAPSULE_RESP | pdu_type::H2C_DATA | pdu_type::C2H_DATA | pdu_type::R2T
    )
}

/// Types whose data is covered by a data digest once negotiated.
fn has_ddgst(ty: u8) -> bool {
    matches!(ty, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA | pdu_type::C2H_DATA)
}

fn is_ic(ty: u8) -> bool {
    ty == pdu_type::IC_REQ || ty == pdu_type::IC_RESP
}

fn is_term(ty: u8) -> bool {
    ty == pdu_type::H2C_TERM_REQ || ty == pdu_type::C2H_TERM_REQ
}

fn legal_for(side: Side, ty: u8) -> bool {
    match side {
        Side::Target => matches!(
            ty,
            pdu_type::IC_REQ | pdu_type::H2C_TERM_REQ | pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA
        ),
        Side::Host => matches!(
            ty,
            pdu_type::IC_RESP | pdu_type::C2H_TERM_REQ | pdu_type::CAPSULE_RESP | pdu_type::C2H_DATA | pdu_type::R2T
        ),
    }
}

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
                    let crc = if digest { crc32c::crc32c_append(crc, chunk) } else { crc };
                    let remaining = remaining - n as u32;
                    self.state = if remaining > 0 {
                        RxState::Data { remaining, digest, crc }
                    } else if digest {
                        RxState::DataDigest { crc, have: 0 }
                    } else {
                        RxState::DataEnd { digest_ok: true }
                    };
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
        let h = &self.hdr[..];
        let kind = match ty {
            pdu_type::IC_REQ => {
                let p = IcReqHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
                if p.pfv != 0 {
                    return Err(PduError::UnsupportedPfv(p.pfv));
                }
                PduKind::IcReq {
                    hpda: p.hpda,
                    hdgst: p.dgst & 1 != 0,
                    ddgst: p.dgst & 2 != 0,
                    maxr2t: p.maxr2t,
                }
            }
            pdu_type::IC_RESP => {
                let p = IcRespHdr::read_from(h).ok_or(PduError::AlreadyFailed("short"))?;
                if p.pfv != 0 {
                    return Err(PduError::UnsupportedPfv(p.pfv));
                }
                PduKind::IcResp {
                    cpda: p.cpda,
                    hdgst: p.dgst & 1 != 0,
                    ddgst: p.dgst & 2 != 0,
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
        };
        Ok(Pdu { kind, data_len })
    }
}

/// Digest and alignment settings a sender applies to the PDUs it encodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxDigests {
    pub hdgst: bool,
    pub ddgst: bool,
    /// Data in PDUs we send must start at a multiple of this many bytes (the peer's
    /// (PDA+1)*4); 0 or 4 mean no padding beyond the natural header size.
    pub data_align: usize,
}

/// Appends one PDU whose header (common header type and type-specific fields already set)
/// is `hdr`, with `data` as payload. Fills in flags, HLEN, PDO, PLEN and the digests.
fn encode(out: &mut Vec<u8>, hdr: &mut [u8], extra_flags: u8, data: &[u8], d: TxDigests) {
    let ty = hdr[0];
    let hlen = hdr.len();
    let hd = d.hdgst && has_hdgst(ty);
    let dd = d.ddgst && has_ddgst(ty) && !data.is_empty();
    let hdr_len = hlen + if hd { DIGEST_BYTES } else { 0 };
    let pdo = if data.is_empty() || is_term(ty) {
        0
    } else if d.data_align > 4 {
        hdr_len.div_ceil(d.data_align) * d.data_align
    } else {
        hdr_len
    };
    let data_start = if data.is_empty() {
        hdr_len
    } else if is_term(ty) {
        hlen
    } else {
        pdo
    };
    let plen = data_start + data.len() + if dd { DIGEST_BYTES } else { 0 };
    let mut fl = extra_flags;
    if hd {
        fl |= flags::HDGSTF;
    }
    if dd {
        fl |= flags::DDGSTF;
    }
    hdr[1] = fl;
    hdr[2] = hlen as u8;
    hdr[3] = pdo as u8;
    hdr[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    out.extend_from_slice(hdr);
    if hd {
        out.extend_from_slice(&crc32c::crc32c(hdr).to_le_bytes());
    }
    if !data.is_empty() {
        out.resize(out.len() + (data_start - hdr_len), 0);
        out.extend_from_slice(data);
        if dd {
            out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
    }
}

fn ch(ty: u8) -> CommonHeader {
    CommonHeader {
        pdu_type: ty,
        ..CommonHeader::default()
    }
}

/// Appends an ICReq.
pub fn encode_ic_req(out: &mut Vec<u8>, hpda: u8, hdgst: bool, ddgst: bool, maxr2t: u32) {
    let mut p = IcReqHdr {
        ch: ch(pdu_type::IC_REQ),
        pfv: 0,
        hpda,
        dgst: u8::from(hdgst) | (u8::from(ddgst) << 1),
        maxr2t,
        rsvd: [0; 112],
    };
    encode(out, p.as_bytes_mut(), 0, &[], TxDigests::default());
}

/// Appends an ICResp.
pub fn encode_ic_resp(out: &mut Vec<u8>, cpda: u8, hdgst: bool, ddgst: bool, maxh2cdata: u32) {
    let mut p = IcRespHdr {
        ch: ch(pdu_type::IC_RESP),
        pfv: 0,
        cpda,
        dgst: u8::from(hdgst) | (u8::from(ddgst) << 1),
        maxh2cdata,
        rsvd: [0; 112],
    };
    encode(out, p.as_bytes_mut(), 0, &[], TxDigests::default());
}

/// Appends a termination request from `side` (C2HTermReq from the target, H2CTermReq from
/// the host) carrying up to 152 bytes of the offending header.
pub fn encode_term_req(out: &mut Vec<u8>, side: Side, fes_: u16, fei: u32, offending: &[u8]) {
    let ty = if side == Side::Target {
        pdu_type::C2H_TERM_REQ
    } else {
        pdu_type::H2C_TERM_REQ
    };
    let mut p = TermReqHdr {
        ch: ch(ty),
        fes: fes_,
        fei: fei.to_le_bytes(),
        rsvd: [0; 10],
    };
    let n = offending.len().min(TERM_REQ_DATA_MAX_BYTES);
    encode(out, p.as_bytes_mut(), 0, &offending[..n], TxDigests::default());
}

/// Appends a command capsule with optional in-capsule data.
pub fn encode_capsule_cmd(out: &mut Vec<u8>, sqe: &Sqe, data: &[u8], d: TxDigests) {
    let mut p = CapsuleCmdHdr {
        ch: ch(pdu_type::CAPSULE_CMD),
        sqe: *sqe,
    };
    encode(out, p.as_bytes_mut(), 0, data, d);
}

/// Appends a response capsule.
pub fn encode_capsule_resp(out: &mut Vec<u8>, cqe: &Cqe, d: TxDigests) {
    let mut p = CapsuleRespHdr {
        ch: ch(pdu_type::CAPSULE_RESP),
        cqe: *cqe,
    };
    encode(out, p.as_bytes_mut(), 0, &[], d);
}

/// Appends an H2CData PDU.
pub fn encode_h2c_data(out: &mut Vec<u8>, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool, d: TxDigests) {
    let mut p = DataHdr {
        ch: ch(pdu_type::H2C_DATA),
        cccid,
        ttag,
        offset: datao,
        length: data.len() as u32,
        rsvd: [0; 4],
    };
    encode(out, p.as_bytes_mut(), if last { flags::LAST_PDU } else { 0 }, data, d);
}

/// Appends a C2HData PDU; `success` (only with `last`) tells the host no response follows.
pub fn encode_c2h_data(
    out: &mut Vec<u8>,
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    d: TxDigests,
) {
    let mut p = DataHdr {
        ch: ch(pdu_type::C2H_DATA),
        cccid,
        ttag: 0,
        offset: datao,
        length: data.len() as u32,
        rsvd: [0; 4],
    };
    let mut f = if last { flags::LAST_PDU } else { 0 };
    if success && last {
        f |= flags::SUCCESS;
    }
    encode(out, p.as_bytes_mut(), f, data, d);
}

/// Appends an R2T asking for `r2tl` bytes at offset `r2to` of command `cccid`.
pub fn encode_r2t(out: &mut Vec<u8>, cccid: u16, ttag: u16, r2to: u32, r2tl: u32, d: TxDigests) {
    let mut p = DataHdr {
        ch: ch(pdu_type::R2T),
        cccid,
        ttag,
        offset: r2to,
        length: r2tl,
        rsvd: [0; 4],
    };
    encode(out, p.as_bytes_mut(), 0, &[], d);
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

#[cfg(test)]
mod tests;
