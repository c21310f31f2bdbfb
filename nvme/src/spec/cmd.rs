//! Submission and completion queue entries (NVMe base spec, "Submission Queue Entry" and
//! "Completion Queue Entry"), the SGL data descriptor NVMe-oF uses, and the opcodes baton knows.

use super::plain::Plain;
use super::status::Status;

/// Admin command opcodes.
pub mod admin_opc {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands share one opcode; the command is in `fctype`.
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set I/O opcodes.
pub mod io_opc {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Vendor specific (baton): declare a replication restart point, ordered with the
    /// queue's writes. Bits 1:0 = 01b: host-to-controller data (the tag, CDW10 bytes).
    /// See `docs/restart-points.md`.
    pub const RESTART_POINT: u8 = 0x81;
}

/// SGL descriptor type byte (type in bits 7:4, subtype in bits 3:0) as NVMe/TCP uses it.
pub mod sgl_type {
    /// Data Block, subtype Offset: the data is in the capsule at `addr` bytes from its start.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport Data Block, subtype Transport specific: moved by R2T/H2CData or C2HData.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5A;
}

/// PSDT value in CDW0 bits 15:14 meaning "SGLs, metadata pointer is an address".
pub const PSDT_SGL: u8 = 0b01;

/// Scatter gather list descriptor in DPTR (bytes 24..40 of the SQE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sgl {
    pub addr: u64,
    pub length: u32,
    pub rsvd: [u8; 3],
    pub sgl_type: u8,
}
const _: () = assert!(core::mem::size_of::<Sgl>() == 16);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for Sgl {}

/// A 64-byte submission queue entry. Fabrics commands (opcode 0x7F) reuse the layout:
/// `fctype` is the low byte of `nsid` and their fields sit in CDW10..CDW15.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opc: u8,
    /// FUSE in bits 1:0, PSDT in bits 7:6.
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub sgl: Sgl,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}
const _: () = assert!(core::mem::size_of::<Sqe>() == 64);
// SAFETY: repr(C), integers and a Plain struct only, size assertion proves no padding.
unsafe impl Plain for Sqe {}

impl Sqe {
    /// Fabrics command type (valid when `opc == FABRICS`).
    pub fn fctype(&self) -> u8 {
        self.nsid as u8
    }
    /// Starting LBA of an NVM I/O command (CDW10, CDW11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10) | (u64::from(self.cdw11) << 32)
    }
    /// Number of logical blocks of an NVM I/O command (NLB is 0's based in CDW12 15:0).
    pub fn nlb(&self) -> u32 {
        (self.cdw12 & 0xFFFF) + 1
    }
    /// Sets the PSDT bits to "SGL".
    pub fn set_sgl_psdt(&mut self) {
        self.flags = (self.flags & 0x3F) | (PSDT_SGL << 6);
    }
}

/// A 16-byte completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific result (DW0).
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Phase (bit 0), SC (8:1), SCT (11:9), CRD (13:12), M (14), DNR (15).
    pub status: u16,
}
const _: () = assert!(core::mem::size_of::<Cqe>() == 16);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for Cqe {}

impl Cqe {
    /// The status field as a typed value (phase bit dropped).
    pub fn status(&self) -> Status {
        Status::from_field(self.status)
    }
    /// A completion for `cid` with `status` and result `dw0`.
    pub fn new(cid: u16, status: Status, dw0: u32) -> Cqe {
        Cqe {
            dw0,
            cid,
            status: status.to_field(),
            ..Cqe::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn sqe_offsets_match_spec() {
        assert_eq!(offset_of!(Sqe, cid), 2);
        assert_eq!(offset_of!(Sqe, nsid), 4);
        assert_eq!(offset_of!(Sqe, mptr), 16);
        assert_eq!(offset_of!(Sqe, sgl), 24);
        assert_eq!(offset_of!(Sqe, cdw10), 40);
        assert_eq!(offset_of!(Sqe, cdw15), 60);
        assert_eq!(offset_of!(Sgl, length), 8);
        assert_eq!(offset_of!(Sgl, sgl_type), 15);
    }

    #[test]
    fn cqe_offsets_match_spec() {
        assert_eq!(offset_of!(Cqe, sqhd), 8);
        assert_eq!(offset_of!(Cqe, sqid), 10);
        assert_eq!(offset_of!(Cqe, cid), 12);
        assert_eq!(offset_of!(Cqe, status), 14);
    }

    #[test]
    fn sqe_round_trips_through_bytes() {
        let mut s = Sqe {
            opc: io_opc::READ,
            cid: 0x1234,
            nsid: 1,
            cdw10: 7,
            cdw12: 3,
            ..Sqe::default()
        };
        s.set_sgl_psdt();
        let b = s.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(b[1], 0x40);
        assert_eq!(&b[2..4], &[0x34, 0x12]);
        let back = Sqe::read_from(b).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.slba(), 7);
        assert_eq!(back.nlb(), 4);
        assert!(Sqe::read_from(&b[..63]).is_none());
    }
}
