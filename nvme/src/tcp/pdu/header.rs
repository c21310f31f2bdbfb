//! The fixed PDU header layouts: each a `repr(C)` struct of plain integers whose size is
//! checked at compile time, read from and written to the wire as bytes (`Plain`).

use super::{fei, IC_PDU_BYTES};
use crate::spec::{Cqe, Plain, Sqe};
use core::mem::offset_of;

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

// The FEI constants name these layouts' offsets.
const _: () = assert!(offset_of!(CommonHeader, pdu_type) == fei::PDU_TYPE as usize);
const _: () = assert!(offset_of!(CommonHeader, flags) == fei::FLAGS as usize);
const _: () = assert!(offset_of!(CommonHeader, hlen) == fei::HLEN as usize);
const _: () = assert!(offset_of!(CommonHeader, pdo) == fei::PDO as usize);
const _: () = assert!(offset_of!(CommonHeader, plen) == fei::PLEN as usize);
const _: () = assert!(offset_of!(IcReqHdr, pfv) == fei::IC_PFV as usize);
const _: () = assert!(offset_of!(IcRespHdr, pfv) == fei::IC_PFV as usize);
const _: () = assert!(offset_of!(DataHdr, length) == fei::DATAL as usize);
