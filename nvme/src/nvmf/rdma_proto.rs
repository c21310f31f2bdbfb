//! The wire rules of the NVMe/RDMA transport that need no device (docs/nvme-rdma.md): the
//! rdma_cm private data a host sends with its connection request and the target answers
//! with (accept or reject), the SGL data descriptors of a command capsule as RDMA carries
//! them (keyed data blocks naming host memory, offset data blocks naming in-capsule data),
//! and the RDMA transport-specific address subtype (TSAS) of a discovery log entry.
//!
//! Everything here is a pure function of bytes from the network: bad input is a typed
//! answer (a CM reject status or an NVMe status), never a panic. Built in every
//! configuration so the unit tests and the fuzz target (`nvme/fuzz`, `rdma`) run without an
//! RDMA device or the `rdma-sys` bindings.

use crate::spec::{Sqe, Status};

/// Bytes of the host's connection request private data (`recfmt`, `qid`, `hrqsize`,
/// `hsqsize`, `cntlid`, reserved).
pub const CM_REQUEST_BYTES: usize = 32;
/// Bytes of the target's accept private data (`recfmt`, `crqsize`, reserved).
pub const CM_ACCEPT_BYTES: usize = 32;
/// Bytes of the target's reject private data (`recfmt`, `sts`).
pub const CM_REJECT_BYTES: usize = 4;
/// The only record format defined.
pub const RECFMT: u16 = 0;

/// Why the target refused a connection request (the `sts` of the reject private data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[repr(u16)]
pub enum CmRejectStatus {
    #[error("private data shorter than the NVMe/RDMA connection request")]
    InvalidLength = 0x01,
    #[error("unknown record format")]
    InvalidRecfmt = 0x02,
    #[error("queue id out of range")]
    InvalidQid = 0x03,
    #[error("host submission queue size invalid")]
    InvalidHsqsize = 0x04,
    #[error("host receive queue size invalid")]
    InvalidHrqsize = 0x05,
    #[error("no resources for the queue")]
    NoResources = 0x06,
    #[error("the host serves no RDMA READs (responder resources 0)")]
    InvalidIrd = 0x07,
}

/// A host's connection request, decoded but not yet checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmRequest {
    pub recfmt: u16,
    /// Queue identifier: 0 admin, else an I/O queue.
    pub qid: u16,
    /// Host receive queue size: how many responses the host can take at once.
    pub hrqsize: u16,
    /// Host submission queue size, 0's based (the Connect command's SQSIZE).
    pub hsqsize: u16,
    /// Controller the I/O queue joins (0xFFFF or 0 when the host does not say).
    pub cntlid: u16,
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

impl CmRequest {
    /// Decodes the first [`CM_REQUEST_BYTES`] of the private data. rdma_cm may pad the
    /// private data (it is rounded up by the transport), so longer input is accepted.
    pub fn decode(b: &[u8]) -> Result<CmRequest, CmRejectStatus> {
        if b.len() < CM_REQUEST_BYTES {
            return Err(CmRejectStatus::InvalidLength);
        }
        Ok(CmRequest {
            recfmt: le16(b, 0),
            qid: le16(b, 2),
            hrqsize: le16(b, 4),
            hsqsize: le16(b, 6),
            cntlid: le16(b, 8),
        })
    }

    /// Encodes the request as a host sends it (tests, a future host).
    pub fn encode(&self) -> [u8; CM_REQUEST_BYTES] {
        let mut b = [0u8; CM_REQUEST_BYTES];
        for (i, v) in [self.recfmt, self.qid, self.hrqsize, self.hsqsize, self.cntlid]
            .iter()
            .enumerate()
        {
            b[i * 2..i * 2 + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// The target's limits a connection request is checked against (the transport options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmLimits {
    /// Entries of an I/O queue at most (`max_queue_depth`).
    pub max_queue_depth: u16,
    /// Entries of the admin queue at most (`max_aq_depth`).
    pub max_aq_depth: u16,
    /// I/O queues per controller at most (`max_io_qpairs_per_ctrlr`).
    pub max_io_qpairs: u16,
}

/// What an accepted request sets up: the queue, how many command capsules the target keeps
/// receives posted for, and how many responses it may have outstanding at the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueParams {
    pub qid: u16,
    /// Submission queue entries (hsqsize + 1): receive buffers the target posts.
    pub sq_entries: u16,
    /// Responses the host can hold (hrqsize): the target never has more SENDs in flight.
    pub host_recv: u16,
}

/// Checks a decoded request against the target's limits. A queue needs at least two
/// entries (SQSIZE is 0's based and 0 is invalid), no more than the limit of its kind, and
/// a host that can receive a response for every command it may submit.
pub fn check_request(r: &CmRequest, l: CmLimits) -> Result<QueueParams, CmRejectStatus> {
    if r.recfmt != RECFMT {
        return Err(CmRejectStatus::InvalidRecfmt);
    }
    if r.qid > l.max_io_qpairs {
        return Err(CmRejectStatus::InvalidQid);
    }
    let max = if r.qid == 0 { l.max_aq_depth } else { l.max_queue_depth };
    let sq_entries = u32::from(r.hsqsize) + 1;
    if r.hsqsize == 0 || sq_entries > u32::from(max) {
        return Err(CmRejectStatus::InvalidHsqsize);
    }
    if u32::from(r.hrqsize) < sq_entries {
        return Err(CmRejectStatus::InvalidHrqsize);
    }
    Ok(QueueParams {
        qid: r.qid,
        sq_entries: sq_entries as u16,
        host_recv: r.hrqsize,
    })
}

/// The RDMA READ depth the target takes on a queue: the READs the host serves at once
/// (`host_ird`, its responder resources as the connection request carries them), the
/// device's limit per queue pair, and no more than the queue has commands (each command
/// reads its data with one READ). A host that serves none is refused: the target fetches
/// keyed write data by READ.
pub fn read_depth(host_ird: u8, device_max: u8, sq_entries: u16) -> Result<u8, CmRejectStatus> {
    if host_ird == 0 {
        return Err(CmRejectStatus::InvalidIrd);
    }
    let by_queue = u8::try_from(sq_entries.max(1)).unwrap_or(u8::MAX);
    Ok(host_ird.min(device_max.max(1)).min(by_queue))
}

/// Decodes and checks a connection request's private data in one step.
pub fn accept_request(private: &[u8], l: CmLimits) -> Result<QueueParams, CmRejectStatus> {
    check_request(&CmRequest::decode(private)?, l)
}

/// The accept private data: record format and the controller receive queue size (the
/// receives the target posted for this queue).
pub fn encode_accept(crqsize: u16) -> [u8; CM_ACCEPT_BYTES] {
    let mut b = [0u8; CM_ACCEPT_BYTES];
    b[0..2].copy_from_slice(&RECFMT.to_le_bytes());
    b[2..4].copy_from_slice(&crqsize.to_le_bytes());
    b
}

/// Decodes accept private data (the host side and tests): the controller's crqsize.
pub fn decode_accept(b: &[u8]) -> Option<u16> {
    (b.len() >= 4 && le16(b, 0) == RECFMT).then(|| le16(b, 2))
}

/// The reject private data carrying `sts`.
pub fn encode_reject(sts: CmRejectStatus) -> [u8; CM_REJECT_BYTES] {
    let mut b = [0u8; CM_REJECT_BYTES];
    b[0..2].copy_from_slice(&RECFMT.to_le_bytes());
    b[2..4].copy_from_slice(&(sts as u16).to_le_bytes());
    b
}

/// Decodes reject private data (the host side): the target's `sts`, if it is one of the
/// statuses NVMe/RDMA defines.
pub fn decode_reject(b: &[u8]) -> Option<CmRejectStatus> {
    if b.len() < CM_REJECT_BYTES || le16(b, 0) != RECFMT {
        return None;
    }
    use CmRejectStatus::*;
    [
        InvalidLength,
        InvalidRecfmt,
        InvalidQid,
        InvalidHsqsize,
        InvalidHrqsize,
        NoResources,
        InvalidIrd,
    ]
    .into_iter()
    .find(|s| *s as u16 == le16(b, 2))
}

/// SGL descriptor type byte values over RDMA (type in bits 7:4, subtype in bits 3:0).
pub mod sgl {
    /// Data Block descriptor type (unkeyed): with subtype Offset, in-capsule data.
    pub const TYPE_DATA_BLOCK: u8 = 0x0;
    /// Keyed Data Block descriptor type: host memory named by address, length and key.
    pub const TYPE_KEYED_DATA_BLOCK: u8 = 0x4;
    /// Subtype Address (keyed data block).
    pub const SUB_ADDRESS: u8 = 0x0;
    /// Subtype Offset (data block): the address is an offset into the in-capsule data.
    pub const SUB_OFFSET: u8 = 0x1;
    /// Subtype Invalidate Key (keyed data block): the target should invalidate the key
    /// with its response (SEND with Invalidate).
    pub const SUB_INVALIDATE: u8 = 0xF;
    /// Keyed data block lengths are 24 bits.
    pub const KEYED_LENGTH_MAX: u32 = 0x00FF_FFFF;
}

/// Which way a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Host to controller (writes): fetched by RDMA READ or found in the capsule.
    ToCtrl,
    /// Controller to host (reads): delivered by RDMA WRITE.
    ToHost,
}

/// Where a command's data is, after its SGL descriptor passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDesc {
    /// The command moves no data.
    None,
    /// In the capsule: `len` bytes at `offset` from the start of the in-capsule data.
    InCapsule { offset: u32, len: u32 },
    /// In host memory: `len` bytes at `addr` under remote key `key`; `invalidate` when the
    /// host asked for the key to be invalidated with the response.
    Keyed {
        addr: u64,
        len: u32,
        key: u32,
        invalidate: bool,
    },
}

/// What a capsule's descriptor is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SglLimits {
    /// In-capsule data bytes the target accepts on this queue (`in_capsule_data_size`).
    pub in_capsule_max: u32,
    /// Largest transfer of one command (`max_io_size`).
    pub max_io_bytes: u32,
}

/// The keyed view of a descriptor: 24-bit length, 32-bit key (bytes 8..11 and 11..15).
fn keyed_fields(sqe: &Sqe) -> (u32, u32) {
    let s = &sqe.sgl;
    let len = s.length & sgl::KEYED_LENGTH_MAX;
    let key = (s.length >> 24) | u32::from(s.rsvd[0]) << 8 | u32::from(s.rsvd[1]) << 16 | u32::from(s.rsvd[2]) << 24;
    (len, key)
}

/// Checks a capsule's data descriptor. `need` is the transfer the command implies (0 when
/// it moves no data), `dir` its direction, `in_capsule` the data bytes that arrived after the
/// 64-byte SQE in the capsule. As strict as the NVMe/TCP target's checks: a wrong type is
/// SGL Descriptor Type Invalid, a wrong subtype SGL Sub Type Invalid, data placed outside
/// the capsule SGL Offset Invalid, a length that does not cover the command or exceeds the
/// limits Data SGL Length Invalid, and capsule data a command has no use for Invalid Field.
pub fn parse_sgl(sqe: &Sqe, need: u32, dir: Dir, in_capsule: u32, l: SglLimits) -> Result<DataDesc, Status> {
    let ty = sqe.sgl.sgl_type >> 4;
    let sub = sqe.sgl.sgl_type & 0xF;
    match ty {
        sgl::TYPE_DATA_BLOCK => {
            if sub != sgl::SUB_OFFSET {
                return Err(Status::SGL_SUBTYPE_INVALID);
            }
            let len = sqe.sgl.length;
            if need == 0 {
                return if len == 0 && in_capsule == 0 {
                    Ok(DataDesc::None)
                } else {
                    Err(Status::INVALID_FIELD)
                };
            }
            if dir != Dir::ToCtrl {
                // Read data cannot go into the capsule the host sent.
                return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            let end = sqe.sgl.addr.checked_add(u64::from(len));
            if end.is_none_or(|e| e > u64::from(l.in_capsule_max) || e > u64::from(in_capsule)) {
                return Err(Status::SGL_OFFSET_INVALID);
            }
            if len < need {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            // Longer than the command needs is accepted, as for keyed buffers and on
            // NVMe/TCP: Linux sends Dataset Management with room for 256 ranges whatever
            // the number of ranges. Only the needed bytes are used.
            Ok(DataDesc::InCapsule {
                offset: sqe.sgl.addr as u32,
                len: need,
            })
        }
        sgl::TYPE_KEYED_DATA_BLOCK => {
            let invalidate = match sub {
                sgl::SUB_ADDRESS => false,
                sgl::SUB_INVALIDATE => true,
                _ => return Err(Status::SGL_SUBTYPE_INVALID),
            };
            if in_capsule != 0 {
                return Err(Status::INVALID_FIELD);
            }
            let (len, key) = keyed_fields(sqe);
            if need == 0 {
                // Hosts describe "no data" as a keyed descriptor of length 0.
                return if len == 0 {
                    Ok(DataDesc::None)
                } else {
                    Err(Status::DATA_SGL_LENGTH_INVALID)
                };
            }
            if len < need || len > l.max_io_bytes || sqe.sgl.addr.checked_add(u64::from(len)).is_none() {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            Ok(DataDesc::Keyed {
                addr: sqe.sgl.addr,
                len: need,
                key,
                invalidate,
            })
        }
        _ => Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

/// Encodes a keyed data block descriptor into `sqe` (tests, a future host).
pub fn set_keyed(sqe: &mut Sqe, addr: u64, len: u32, key: u32, invalidate: bool) {
    sqe.sgl.addr = addr;
    sqe.sgl.length = (len & sgl::KEYED_LENGTH_MAX) | (key << 24);
    sqe.sgl.rsvd = [(key >> 8) as u8, (key >> 16) as u8, (key >> 24) as u8];
    let sub = if invalidate {
        sgl::SUB_INVALIDATE
    } else {
        sgl::SUB_ADDRESS
    };
    sqe.sgl.sgl_type = sgl::TYPE_KEYED_DATA_BLOCK << 4 | sub;
}

/// Discovery log TRTYPE of RDMA.
pub const TRTYPE_RDMA: u8 = 1;
/// TSAS RDMA QP service type: reliable connected.
pub const TSAS_QPTYPE_CONNECTED: u8 = 1;
/// TSAS RDMA provider type: not specified (RoCE, iWARP and InfiniBand alike).
pub const TSAS_PRTYPE_NOT_SPECIFIED: u8 = 1;
/// TSAS RDMA connection management service: rdma_cm.
pub const TSAS_CMS_RDMA_CM: u8 = 1;

/// The TSAS field of an RDMA discovery log entry: QP type, provider type, CM service
/// (bytes 0..3) and the partition key (bytes 8..10, 0 outside InfiniBand).
pub fn rdma_tsas() -> [u8; 256] {
    let mut t = [0u8; 256];
    t[0] = TSAS_QPTYPE_CONNECTED;
    t[1] = TSAS_PRTYPE_NOT_SPECIFIED;
    t[2] = TSAS_CMS_RDMA_CM;
    t
}

/// Fuzz entry point (`nvme/fuzz`, `rdma`): the first 32 bytes are connection request
/// private data checked against limits taken from the next 6 bytes, the next 64 an SQE whose
/// descriptor is checked with a need, direction and capsule size from the bytes after it.
/// Invariants: an accepted request fits its limits; an accepted descriptor lies inside the
/// capsule or within `max_io_size` and covers exactly the transfer. Must never panic.
pub fn fuzz_rdma(data: &[u8]) {
    let take = |off: usize, n: usize| data.get(off..off + n);
    if let (Some(p), Some(lim)) = (take(0, 32), take(32, 6)) {
        let l = CmLimits {
            max_queue_depth: le16(lim, 0),
            max_aq_depth: le16(lim, 2),
            max_io_qpairs: le16(lim, 4),
        };
        if let Ok(q) = accept_request(p, l) {
            assert!(q.sq_entries >= 2 && q.host_recv >= q.sq_entries && q.qid <= l.max_io_qpairs);
        }
        let _ = CmRequest::decode(&data[..data.len().min(64)]);
    }
    let Some(raw) = take(38, 64) else { return };
    let mut sqe = Sqe::default();
    crate::spec::Plain::as_bytes_mut(&mut sqe).copy_from_slice(raw);
    let tail = &data[102..];
    let word = |i: usize| {
        tail.get(i * 4..i * 4 + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let need = word(0) % (1 << 22);
    let in_capsule = word(1) % (1 << 16);
    let l = SglLimits {
        in_capsule_max: word(2) % (1 << 16),
        max_io_bytes: word(3) % (1 << 23),
    };
    let dir = if word(4) & 1 == 0 { Dir::ToCtrl } else { Dir::ToHost };
    match parse_sgl(&sqe, need, dir, in_capsule, l) {
        Ok(DataDesc::InCapsule { offset, len }) => {
            assert!(u64::from(offset) + u64::from(len) <= u64::from(in_capsule.min(l.in_capsule_max)));
            assert!(len == need && dir == Dir::ToCtrl);
        }
        Ok(DataDesc::Keyed { len, .. }) => assert!(len == need && len <= l.max_io_bytes && len > 0),
        Ok(DataDesc::None) => assert_eq!(need, 0),
        Err(_) => {}
    }
}

#[cfg(test)]
#[path = "rdma_proto_tests.rs"]
mod tests;
