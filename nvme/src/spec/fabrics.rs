//! NVMe over Fabrics commands (Connect, Property Get/Set), the Connect data, controller
//! properties (the fabrics replacement for PCIe registers) and features.

use super::plain::Plain;

/// Fabrics command types (FCTYPE, SQE byte 4).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Connect command data (1024 bytes), carried in the capsule.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    /// 0xFFFF on the admin queue = "any controller" (dynamic model); on I/O queues the
    /// controller ID the admin queue's Connect returned.
    pub cntlid: u16,
    pub rsvd18: [u8; 238],
    pub subnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub rsvd768: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<ConnectData>() == 1024);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for ConnectData {}

/// Connect command fields (from the SQE's CDW10..CDW12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep alive timeout in milliseconds (admin queue only; 0 disables).
    pub kato_ms: u32,
}

impl ConnectCmd {
    pub fn from_sqe(sqe: &super::Sqe) -> ConnectCmd {
        ConnectCmd {
            recfmt: sqe.cdw10 as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: sqe.cdw11 as u16,
            cattr: (sqe.cdw11 >> 16) as u8,
            kato_ms: sqe.cdw12,
        }
    }
    /// Writes these fields into an SQE that already has opcode/fctype set.
    pub fn to_sqe(self, sqe: &mut super::Sqe) {
        sqe.cdw10 = u32::from(self.recfmt) | (u32::from(self.qid) << 16);
        sqe.cdw11 = u32::from(self.sqsize) | (u32::from(self.cattr) << 16);
        sqe.cdw12 = self.kato_ms;
    }
}

/// In Connect's error completion, DW0 says where the bad parameter was: IPO (the byte
/// offset) in bits 15:0, IATTR in bit 16 (1 = in the Connect data, 0 = in the SQE). A bad
/// SUBNQN is IATTR 1, IPO 256; an unknown CNTLID IATTR 1, IPO 16.
pub fn connect_invalid_param_dw0(in_data: bool, offset: u16) -> u32 {
    (u32::from(in_data) << 16) | u32::from(offset)
}

/// Splits a Connect "Invalid Parameters" DW0 into (IATTR set, IPO).
pub fn connect_invalid_param_fields(dw0: u32) -> (bool, u16) {
    (dw0 & (1 << 16) != 0, dw0 as u16)
}

/// Property offsets (controller "registers" on fabrics).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const INTMS: u32 = 0x0C;
    pub const INTMC: u32 = 0x10;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
    pub const AQA: u32 = 0x24;
}

/// Property Get/Set fields from the SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyCmd {
    /// True when the property is 8 bytes (ATTRIB.SIZE = 1).
    pub size8: bool,
    pub offset: u32,
    /// Value to set (Property Set only).
    pub value: u64,
}

impl PropertyCmd {
    pub fn from_sqe(sqe: &super::Sqe) -> PropertyCmd {
        PropertyCmd {
            size8: sqe.cdw10 & 0x7 == 1,
            offset: sqe.cdw11,
            value: u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
        }
    }
    pub fn to_sqe(self, sqe: &mut super::Sqe) {
        sqe.cdw10 = u32::from(self.size8);
        sqe.cdw11 = self.offset;
        sqe.cdw12 = self.value as u32;
        sqe.cdw13 = (self.value >> 32) as u32;
    }
}

/// Controller Configuration (CC) fields.
pub mod cc {
    pub const EN: u32 = 1;
    /// Shutdown notification, bits 15:14.
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 0x3 << SHN_SHIFT;
}

/// Controller Status (CSTS) fields.
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status, bits 3:2; 10b = shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0b10 << 2;
}

/// Feature identifiers.
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Asynchronous event: type "notice", info "namespace attribute changed", log page 04h,
/// packed as AER completion DW0 (type 2:0, info 15:8, log page 23:16).
pub const AEN_NS_ATTR_CHANGED_DW0: u32 = 0x02 | (0x04 << 16);
/// Async event configuration bit enabling namespace attribute notices.
pub const AEC_NS_ATTR_NOTICES: u32 = 1 << 8;
/// Asynchronous Event Configuration: ANA change notices (bit 11).
pub const AEC_ANA_CHANGE_NOTICES: u32 = 1 << 11;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Sqe;
    use core::mem::offset_of;

    #[test]
    fn connect_data_offsets_match_spec() {
        assert_eq!(offset_of!(ConnectData, cntlid), 16);
        assert_eq!(offset_of!(ConnectData, subnqn), 256);
        assert_eq!(offset_of!(ConnectData, hostnqn), 512);
    }

    #[test]
    fn invalid_param_dw0_has_ipo_low_and_iattr_at_bit_16() {
        // What the Linux target and SPDK answer for a bad SUBNQN: IATTR 1, IPO 256.
        assert_eq!(connect_invalid_param_dw0(true, 256), 0x0001_0100);
        assert_eq!(connect_invalid_param_dw0(false, 44), 44);
        assert_eq!(connect_invalid_param_fields(0x0001_0010), (true, 16));
        assert_eq!(connect_invalid_param_fields(42), (false, 42));
    }

    #[test]
    fn connect_fields_sit_at_spec_bytes() {
        let mut sqe = Sqe::default();
        ConnectCmd {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: 0,
            kato_ms: 15000,
        }
        .to_sqe(&mut sqe);
        let b = crate::spec::Plain::as_bytes(&sqe);
        assert_eq!(u16::from_le_bytes([b[42], b[43]]), 3);
        assert_eq!(u16::from_le_bytes([b[44], b[45]]), 127);
        assert_eq!(u32::from_le_bytes([b[48], b[49], b[50], b[51]]), 15000);
        assert_eq!(ConnectCmd::from_sqe(&sqe).qid, 3);
        let mut p = Sqe::default();
        PropertyCmd {
            size8: true,
            offset: prop::CAP,
            value: 0,
        }
        .to_sqe(&mut p);
        let b = crate::spec::Plain::as_bytes(&p);
        assert_eq!(b[40], 1);
        assert_eq!(u32::from_le_bytes([b[44], b[45], b[46], b[47]]), 0);
    }
}
