//! The PDU encoder: each `encode_*` appends one whole PDU (header, digests, padding, data)
//! to a byte buffer.

use super::{
    flags, has_ddgst, has_hdgst, is_term, pdu_type, CapsuleCmdHdr, CapsuleRespHdr, CommonHeader, DataHdr, IcReqHdr,
    IcRespHdr, Side, TermReqHdr, DIGEST_BYTES, TERM_REQ_DATA_MAX_BYTES,
};
use crate::spec::{Cqe, Plain, Sqe};

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
    encode_parts(out, hdr, extra_flags, data, d, true);
}

/// `encode`, copying `data` into `out` only when `copy`; returns where in `out` the data
/// starts (where it belongs when not copied: the data digest, if any, follows there).
fn encode_parts(out: &mut Vec<u8>, hdr: &mut [u8], extra_flags: u8, data: &[u8], d: TxDigests, copy: bool) -> usize {
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
    }
    let at = out.len();
    if !data.is_empty() {
        if copy {
            out.extend_from_slice(data);
        }
        if dd {
            out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
    }
    at
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
    encode_c2h(out, (cccid, datao, last, success), data, d, true);
}

/// Appends a C2HData PDU as `encode_c2h_data` does, but without copying `data`: returns the
/// offset in `out` where the data belongs. The caller sends `out[..at]`, then `data`, then
/// `out[at..]` (the data digest, when negotiated, is already there).
pub fn encode_c2h_data_header(
    out: &mut Vec<u8>,
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    d: TxDigests,
) -> usize {
    encode_c2h(out, (cccid, datao, last, success), data, d, false)
}

/// A C2HData PDU for (CCCID, DATAO, last, success), its data copied when `copy`.
fn encode_c2h(out: &mut Vec<u8>, f: (u16, u32, bool, bool), data: &[u8], d: TxDigests, copy: bool) -> usize {
    let (cccid, datao, last, success) = f;
    let mut p = c2h_hdr(cccid, datao, data.len());
    encode_parts(out, p.as_bytes_mut(), c2h_flags(last, success), data, d, copy)
}

fn c2h_hdr(cccid: u16, datao: u32, len: usize) -> DataHdr {
    DataHdr {
        ch: ch(pdu_type::C2H_DATA),
        cccid,
        ttag: 0,
        offset: datao,
        length: len as u32,
        rsvd: [0; 4],
    }
}

fn c2h_flags(last: bool, success: bool) -> u8 {
    let mut f = if last { flags::LAST_PDU } else { 0 };
    if success && last {
        f |= flags::SUCCESS;
    }
    f
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
