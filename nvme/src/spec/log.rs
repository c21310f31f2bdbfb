//! Log pages (Get Log Page): error information, SMART / health, firmware slot, changed
//! namespace list, and the NVMe-oF discovery log.

use super::plain::Plain;

/// Log page identifiers.
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMANDS_SUPPORTED: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0C;
    pub const DISCOVERY: u8 = 0x70;
}

/// Error Information log entry (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorLogEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: u16,
    pub param_error_location: u16,
    pub lba: u64,
    pub nsid: u32,
    pub vs: u8,
    pub trtype: u8,
    pub rsvd30: [u8; 2],
    pub csi: u64,
    pub trtype_specific: u16,
    pub rsvd42: [u8; 22],
}
const _: () = assert!(core::mem::size_of::<ErrorLogEntry>() == 64);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for ErrorLogEntry {}

/// SMART / Health Information log (512 bytes). 128-bit counters are little-endian byte arrays.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvins (u16 at an odd offset, hence bytes).
    pub temperature: [u8; 2],
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    pub endu_grp_crit_warn: u8,
    pub rsvd7: [u8; 25],
    /// In thousands of 512-byte units.
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_read_commands: [u8; 16],
    pub host_write_commands: [u8; 16],
    pub ctrl_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub num_err_log_entries: [u8; 16],
    pub warning_temp_time: u32,
    pub critical_comp_time: u32,
    pub temp_sensor: [u16; 8],
    pub rsvd216: [u8; 296],
}
const _: () = assert!(core::mem::size_of::<SmartLog>() == 512);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for SmartLog {}

/// Firmware Slot Information log (512 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FirmwareSlotLog {
    /// Active firmware info: bits 2:0 = active slot.
    pub afi: u8,
    pub rsvd1: [u8; 7],
    pub frs: [[u8; 8]; 7],
    pub rsvd64: [u8; 448],
}
const _: () = assert!(core::mem::size_of::<FirmwareSlotLog>() == 512);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for FirmwareSlotLog {}

/// Changed Namespace List log: up to 1024 NSIDs, zero-terminated; 0xFFFFFFFF in entry 0
/// means "more than 1024 changed".
pub const CHANGED_NS_LIST_BYTES: usize = 4096;

/// Commands Supported and Effects log: 256 admin entries (ACS) then 256 I/O entries
/// (IOCS), 4 bytes each, indexed by opcode; the rest reserved.
pub const COMMANDS_SUPPORTED_BYTES: usize = 4096;
/// Byte offset of the I/O command entries in the Commands Supported and Effects log.
pub const COMMANDS_SUPPORTED_IOCS_OFFSET: usize = 1024;

/// Bits of a Commands Supported and Effects entry.
pub mod effects {
    /// Command supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical block content change.
    pub const LBCC: u32 = 1 << 1;
}

/// Discovery log page header (1024 bytes); `numrec` entries of 1024 bytes follow.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DiscoveryLogHeader {
    pub genctr: u64,
    pub numrec: u64,
    pub recfmt: u16,
    pub rsvd18: [u8; 1006],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogHeader>() == 1024);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for DiscoveryLogHeader {}

/// Transport types (TRTYPE).
pub const TRTYPE_TCP: u8 = 3;
/// Address families (ADRFAM).
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;
/// Subsystem types in a discovery log entry.
pub const SUBTYPE_DISCOVERY: u8 = 1;
pub const SUBTYPE_NVME: u8 = 2;
/// TREQ: secure channel not required.
pub const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x02;
/// TREQ: a secure channel is required.
pub const TREQ_SECURE_CHANNEL_REQUIRED: u8 = 0x01;
/// TSAS of TCP, byte 0 (SECTYPE): TLS 1.3.
pub const TSAS_TCP_SECTYPE_TLS13: u8 = 2;
/// CNTLID meaning "dynamic controller model".
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// Discovery log page entry (1024 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub eflags: u16,
    pub rsvd12: [u8; 20],
    pub trsvcid: [u8; 32],
    pub rsvd64: [u8; 192],
    pub subnqn: [u8; 256],
    pub traddr: [u8; 256],
    pub tsas: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogEntry>() == 1024);
// SAFETY: repr(C), integers only, size assertion proves no padding.
unsafe impl Plain for DiscoveryLogEntry {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn log_offsets_match_spec() {
        assert_eq!(offset_of!(ErrorLogEntry, lba), 16);
        assert_eq!(offset_of!(ErrorLogEntry, nsid), 24);
        assert_eq!(offset_of!(ErrorLogEntry, csi), 32);
        assert_eq!(offset_of!(SmartLog, avail_spare), 3);
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, host_write_commands), 80);
        assert_eq!(offset_of!(SmartLog, power_on_hours), 128);
        assert_eq!(offset_of!(SmartLog, num_err_log_entries), 176);
        assert_eq!(offset_of!(SmartLog, warning_temp_time), 192);
        assert_eq!(offset_of!(SmartLog, temp_sensor), 200);
        assert_eq!(offset_of!(FirmwareSlotLog, frs), 8);
        assert_eq!(offset_of!(DiscoveryLogHeader, numrec), 8);
        assert_eq!(offset_of!(DiscoveryLogHeader, recfmt), 16);
        assert_eq!(offset_of!(DiscoveryLogEntry, portid), 4);
        assert_eq!(offset_of!(DiscoveryLogEntry, cntlid), 6);
        assert_eq!(offset_of!(DiscoveryLogEntry, asqsz), 8);
        assert_eq!(offset_of!(DiscoveryLogEntry, trsvcid), 32);
        assert_eq!(offset_of!(DiscoveryLogEntry, subnqn), 256);
        assert_eq!(offset_of!(DiscoveryLogEntry, traddr), 512);
        assert_eq!(offset_of!(DiscoveryLogEntry, tsas), 768);
    }
}

/// One group descriptor of the ANA log page (0Ch), decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroup {
    pub anagrpid: u32,
    /// ANA state code (01h optimized, 02h non-optimized, 03h inaccessible, 04h persistent
    /// loss, 0Fh change).
    pub state: u8,
    pub nsids: Vec<u32>,
}

/// Header plus group descriptor sizes of the ANA log page.
const ANA_HEADER: usize = 16;
const ANA_DESC: usize = 32;

/// Decodes an ANA log page as the target sent it: (change count, groups). Errors name
/// what is inconsistent (a count that runs past the data); never panics.
pub fn parse_ana_log(d: &[u8]) -> Result<(u64, Vec<AnaGroup>), &'static str> {
    let u32_at = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?)) };
    let head = d.get(..ANA_HEADER).ok_or("shorter than the ANA log header")?;
    let chgcnt = u64::from_le_bytes(head[..8].try_into().map_err(|_| "header")?);
    let ngrps = u16::from_le_bytes([head[8], head[9]]);
    let mut at = ANA_HEADER;
    let mut groups = Vec::with_capacity(usize::from(ngrps).min(d.len() / ANA_DESC));
    for _ in 0..ngrps {
        let desc = d
            .get(at..at + ANA_DESC)
            .ok_or("a group descriptor runs past the data")?;
        let anagrpid = u32::from_le_bytes(desc[..4].try_into().map_err(|_| "descriptor")?);
        let nnsids = u32::from_le_bytes(desc[4..8].try_into().map_err(|_| "descriptor")?) as usize;
        let state = desc[16] & 0x0F;
        at += ANA_DESC;
        if nnsids > (d.len() - at) / 4 {
            return Err("a group's NSID list runs past the data");
        }
        let nsids = (0..nnsids).filter_map(|i| u32_at(at + i * 4)).collect();
        at += nnsids * 4;
        groups.push(AnaGroup { anagrpid, state, nsids });
    }
    Ok((chgcnt, groups))
}

/// Fuzz entry point of [`parse_ana_log`] (`nvme/fuzz`, `ana_log`): must never panic.
pub fn fuzz_ana_log(data: &[u8]) {
    if let Ok((_, g)) = parse_ana_log(data) {
        assert!(g.iter().map(|g| 32 + 4 * g.nsids.len()).sum::<usize>() + 16 <= data.len());
    }
}
