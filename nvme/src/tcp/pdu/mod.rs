//! NVMe/TCP PDUs: wire headers, the encoder, and the streaming receiver.
//!
//! Sits at the bottom of both the target's and the host's data path: bytes read from a
//! non-blocking socket go into [`PduReceiver::advance`], which turns them into typed
//! [`Pdu`] headers followed by data chunks, checking every length, flag and digest once;
//! everything above it trusts the [`Pdu`]. Replies are appended to a byte buffer by the
//! `encode_*` functions. Reads may end anywhere (mid-header, mid-digest): the receiver keeps
//! its position and continues with the next read.
//!
//! - [`header`]: the fixed header layouts, as `repr(C)` structs.
//! - [`rx`]: the streaming receiver ([`PduReceiver`]) and its fuzz entry point.
//! - [`tx`]: the `encode_*` functions.

mod header;
mod rx;
mod tx;

pub use header::{CapsuleCmdHdr, CapsuleRespHdr, CommonHeader, DataHdr, IcReqHdr, IcRespHdr, TermReqHdr};
pub use rx::{fuzz_pdu, PduReceiver};
pub use tx::{
    encode_c2h_data, encode_c2h_data_header, encode_capsule_cmd, encode_capsule_resp, encode_h2c_data, encode_ic_req,
    encode_ic_resp, encode_r2t, encode_term_req, TxDigests,
};

use crate::spec::{Cqe, Sqe};
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

/// Field error information (FEI) of the termination requests that follow the receiver's
/// rejections ([`PduError::fei`]): the byte offset, in the offending PDU header, of the
/// field at fault (NVMe/TCP, PDU header layouts; checked against the layouts in `header.rs`).
pub mod fei {
    /// No one field is at fault (sequence error, header digest error): FEI is reserved, 0.
    pub const NONE: u32 = 0;
    /// PDU-Type, byte 0 of the common header.
    pub const PDU_TYPE: u32 = 0;
    /// FLAGS, byte 1 of the common header.
    pub const FLAGS: u32 = 1;
    /// HLEN, byte 2 of the common header.
    pub const HLEN: u32 = 2;
    /// PDO, byte 3 of the common header.
    pub const PDO: u32 = 3;
    /// PLEN, bytes 4-7 of the common header.
    pub const PLEN: u32 = 4;
    /// ICReq/ICResp PFV (PDU format version), bytes 8-9.
    pub const IC_PFV: u32 = 8;
    /// H2CData/C2HData DATAL (data length), bytes 16-19.
    pub const DATAL: u32 = 16;
}

/// Size of a header or data digest (CRC32C).
pub const DIGEST_BYTES: usize = 4;
/// ICReq / ICResp are always exactly this long (header only).
pub const IC_PDU_BYTES: usize = 128;
/// A termination request carries at most this many bytes of the offending PDU header.
pub const TERM_REQ_DATA_MAX_BYTES: usize = 152;
/// Largest header we ever hold: a PDO is one byte, so header + digest + padding <= 255.
const HDR_BUF_BYTES: usize = 256;

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
            PduError::UnknownType(_) | PduError::WrongDirection(_) => fei::PDU_TYPE,
            PduError::OutOfSequence { .. } => fei::NONE,
            PduError::BadDigestFlags { .. } | PduError::SuccessWithoutLast => fei::FLAGS,
            PduError::BadHlen { .. } => fei::HLEN,
            PduError::BadPdo { .. } => fei::PDO,
            PduError::BadPlen { .. } | PduError::DataTooLong { .. } => fei::PLEN,
            PduError::DatalMismatch { .. } => fei::DATAL,
            PduError::UnsupportedPfv(_) => fei::IC_PFV,
            PduError::HeaderDigest { .. } | PduError::AlreadyFailed(_) => fei::NONE,
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

#[cfg(test)]
mod tests;
