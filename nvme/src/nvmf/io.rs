//! NVM I/O commands: the typed form of Read, Write, Flush, Write Zeroes, Dataset Management
//! and Compare after validation against the namespace, the vendor-specific Restart Point
//! (81h, `docs/restart-points.md`), and the bdev-error to NVMe-status map.

use crate::nvmf::restart::RESTART_TAG_BYTES_MAX;
use crate::spec::cmd::{io_opc, sgl_type};
use crate::spec::{Sqe, Status};
use engine::bdev::{BdevError, IoOp};

/// Bytes per Dataset Management range descriptor.
pub const DSM_RANGE_BYTES: u32 = 16;
/// DSM attribute: deallocate (CDW11 bit 2).
const DSM_AD: u32 = 1 << 2;

/// What an I/O command does, after its fields were checked against the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCmd {
    Read {
        slba: u64,
        nlb: u32,
        bytes: u32,
    },
    Write {
        slba: u64,
        nlb: u32,
        bytes: u32,
    },
    Compare {
        slba: u64,
        nlb: u32,
        bytes: u32,
    },
    Flush,
    WriteZeroes {
        slba: u64,
        nlb: u32,
    },
    /// `ranges` descriptors of 16 bytes follow as host data; `deallocate` says whether to act.
    Dsm {
        ranges: u32,
        deallocate: bool,
    },
    /// Vendor specific 81h: declare a restart point; `tag_len` bytes of tag follow as host
    /// data (CDW10; at most [`RESTART_TAG_BYTES_MAX`]).
    RestartPoint {
        tag_len: u32,
    },
}

impl IoCmd {
    /// Bytes the host sends with the command (0 if none).
    pub fn host_bytes(&self) -> u32 {
        match *self {
            IoCmd::Write { bytes, .. } | IoCmd::Compare { bytes, .. } => bytes,
            IoCmd::Dsm { ranges, .. } => ranges * DSM_RANGE_BYTES,
            IoCmd::RestartPoint { tag_len } => tag_len,
            _ => 0,
        }
    }
}

/// The namespace facts validation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsGeometry {
    pub block_size: u32,
    pub num_blocks: u64,
}

fn check_range(slba: u64, nlb: u32, g: NsGeometry) -> Result<(), Status> {
    match slba.checked_add(u64::from(nlb)) {
        Some(end) if end <= g.num_blocks => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE),
    }
}

/// Parses an I/O command against namespace geometry `g`. `in_capsule` is the number of
/// in-capsule data bytes that came with it. `max_io_bytes` is the MDTS limit.
pub fn parse_io(sqe: &Sqe, g: NsGeometry, in_capsule: u32, max_io_bytes: u32) -> Result<IoCmd, Status> {
    let cmd = parse_io_cmd(sqe, g, max_io_bytes)?;
    match cmd {
        IoCmd::RestartPoint { tag_len } => check_tag_sgl(sqe, tag_len, in_capsule)?,
        _ => check_sgl(sqe, &cmd, in_capsule)?,
    }
    Ok(cmd)
}

/// [`parse_io`] without the NVMe/TCP data descriptor checks: the command and its range
/// only (NVMe/RDMA checks its descriptors with `rdma_proto::parse_sgl`).
pub fn parse_io_cmd(sqe: &Sqe, g: NsGeometry, max_io_bytes: u32) -> Result<IoCmd, Status> {
    let data_cmd = |opc: u8| -> Result<IoCmd, Status> {
        let nlb = sqe.nlb();
        let bytes = u64::from(nlb) * u64::from(g.block_size);
        if bytes > u64::from(max_io_bytes) {
            return Err(Status::INVALID_FIELD);
        }
        let bytes = bytes as u32;
        check_range(sqe.slba(), nlb, g)?;
        let slba = sqe.slba();
        Ok(match opc {
            io_opc::READ => IoCmd::Read { slba, nlb, bytes },
            io_opc::WRITE => IoCmd::Write { slba, nlb, bytes },
            _ => IoCmd::Compare { slba, nlb, bytes },
        })
    };
    let cmd = match sqe.opc {
        io_opc::READ | io_opc::WRITE | io_opc::COMPARE => data_cmd(sqe.opc)?,
        io_opc::FLUSH => IoCmd::Flush,
        io_opc::WRITE_ZEROES => {
            let nlb = sqe.nlb();
            check_range(sqe.slba(), nlb, g)?;
            IoCmd::WriteZeroes { slba: sqe.slba(), nlb }
        }
        io_opc::DATASET_MANAGEMENT => IoCmd::Dsm {
            ranges: (sqe.cdw10 & 0xFF) + 1,
            deallocate: sqe.cdw11 & DSM_AD != 0,
        },
        io_opc::RESTART_POINT => {
            if sqe.cdw10 > RESTART_TAG_BYTES_MAX {
                return Err(Status::INVALID_FIELD);
            }
            IoCmd::RestartPoint { tag_len: sqe.cdw10 }
        }
        _ => return Err(Status::INVALID_OPCODE),
    };
    Ok(cmd)
}

/// Checks the data descriptor against the transfer the command implies.
fn check_sgl(sqe: &Sqe, cmd: &IoCmd, in_capsule: u32) -> Result<(), Status> {
    let need = match *cmd {
        IoCmd::Read { bytes, .. } => bytes,
        _ => cmd.host_bytes(),
    };
    if need == 0 {
        return if in_capsule == 0 {
            Ok(())
        } else {
            Err(Status::INVALID_FIELD)
        };
    }
    match sqe.sgl.sgl_type {
        sgl_type::DATA_BLOCK_OFFSET => {
            if matches!(cmd, IoCmd::Read { .. }) {
                return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            if sqe.sgl.addr != 0 {
                return Err(Status::SGL_OFFSET_INVALID);
            }
            if sqe.sgl.length != in_capsule || in_capsule < need {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            Ok(())
        }
        sgl_type::TRANSPORT_DATA_BLOCK => {
            if in_capsule != 0 {
                return Err(Status::INVALID_FIELD);
            }
            if sqe.sgl.length < need {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            Ok(())
        }
        _ => Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

/// The Restart Point's data descriptor must describe exactly the tag: in-capsule (offset 0,
/// SGL length = data in the capsule = CDW10) or by R2T (SGL length = CDW10); no data at all
/// for an empty tag. Anything else is Invalid Field (the tag length does not match the data).
fn check_tag_sgl(sqe: &Sqe, tag_len: u32, in_capsule: u32) -> Result<(), Status> {
    match sqe.sgl.sgl_type {
        sgl_type::DATA_BLOCK_OFFSET if in_capsule > 0 || tag_len > 0 => {
            if sqe.sgl.addr != 0 {
                return Err(Status::SGL_OFFSET_INVALID);
            }
            if sqe.sgl.length != in_capsule || in_capsule != tag_len {
                return Err(Status::INVALID_FIELD);
            }
            Ok(())
        }
        _ if in_capsule != 0 => Err(Status::INVALID_FIELD),
        _ if tag_len == 0 => {
            if sqe.sgl.length != 0 {
                return Err(Status::INVALID_FIELD);
            }
            Ok(())
        }
        sgl_type::TRANSPORT_DATA_BLOCK => {
            if sqe.sgl.length != tag_len {
                return Err(Status::INVALID_FIELD);
            }
            Ok(())
        }
        _ => Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

/// One DSM range: context attributes, length in blocks, starting LBA.
pub fn dsm_range(data: &[u8], i: usize) -> (u32, u64) {
    let d = &data[i * 16..i * 16 + 16];
    let nlb = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
    let slba = u64::from_le_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
    (nlb, slba)
}

/// Validates a DSM range against the namespace.
pub fn check_dsm_range(nlb: u32, slba: u64, g: NsGeometry) -> Result<(), Status> {
    check_range(slba, nlb, g)
}

/// The NVMe status for a failed bdev operation.
pub fn status_of(op: IoOp, e: &BdevError) -> Status {
    match e {
        BdevError::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE,
        BdevError::Unsupported { .. } => Status::INVALID_OPCODE,
        BdevError::Io(_) => match op {
            IoOp::Read => Status::UNRECOVERED_READ_ERROR,
            _ => Status::WRITE_FAULT,
        },
        _ => Status::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Sgl;

    const G: NsGeometry = NsGeometry {
        block_size: 512,
        num_blocks: 1000,
    };

    fn rw(opc: u8, slba: u64, nlb: u32, sgl_type_: u8, len: u32) -> Sqe {
        Sqe {
            opc,
            nsid: 1,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: nlb - 1,
            sgl: Sgl {
                addr: 0,
                length: len,
                rsvd: [0; 3],
                sgl_type: sgl_type_,
            },
            ..Sqe::default()
        }
    }

    #[test]
    fn io_commands_parse_and_check_ranges() {
        let t = sgl_type::TRANSPORT_DATA_BLOCK;
        assert_eq!(
            parse_io(&rw(io_opc::READ, 0, 8, t, 4096), G, 0, 131072),
            Ok(IoCmd::Read {
                slba: 0,
                nlb: 8,
                bytes: 4096
            })
        );
        assert_eq!(
            parse_io(&rw(io_opc::READ, 993, 8, t, 4096), G, 0, 131072),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            parse_io(&rw(io_opc::READ, u64::MAX, 8, t, 4096), G, 0, 131072),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            parse_io(&rw(io_opc::READ, 0, 8, t, 4096), G, 0, 2048),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(
            parse_io(&rw(io_opc::READ, 0, 8, t, 100), G, 0, 131072),
            Err(Status::DATA_SGL_LENGTH_INVALID)
        );
        let ic = sgl_type::DATA_BLOCK_OFFSET;
        assert_eq!(
            parse_io(&rw(io_opc::WRITE, 1, 2, ic, 1024), G, 1024, 131072),
            Ok(IoCmd::Write {
                slba: 1,
                nlb: 2,
                bytes: 1024
            })
        );
        assert_eq!(
            parse_io(&rw(io_opc::WRITE, 1, 2, ic, 1024), G, 512, 131072),
            Err(Status::DATA_SGL_LENGTH_INVALID)
        );
        assert_eq!(
            parse_io(&rw(io_opc::READ, 1, 2, ic, 1024), G, 1024, 131072),
            Err(Status::SGL_DESCRIPTOR_TYPE_INVALID)
        );
        assert_eq!(
            parse_io(&rw(0x7E, 1, 2, t, 1024), G, 0, 131072),
            Err(Status::INVALID_OPCODE)
        );
        let mut dsm = rw(io_opc::DATASET_MANAGEMENT, 0, 1, t, 32);
        dsm.cdw10 = 1;
        dsm.cdw11 = 4;
        assert_eq!(
            parse_io(&dsm, G, 0, 131072),
            Ok(IoCmd::Dsm {
                ranges: 2,
                deallocate: true
            })
        );
    }

    fn rp(tag_len: u32, sgl_type_: u8, sgl_len: u32) -> Sqe {
        Sqe {
            opc: io_opc::RESTART_POINT,
            nsid: 1,
            cdw10: tag_len,
            sgl: Sgl {
                addr: 0,
                length: sgl_len,
                rsvd: [0; 3],
                sgl_type: sgl_type_,
            },
            ..Sqe::default()
        }
    }

    #[test]
    fn restart_point_parses_and_checks_the_tag_length() {
        let (t, ic) = (sgl_type::TRANSPORT_DATA_BLOCK, sgl_type::DATA_BLOCK_OFFSET);
        let p = |s: &Sqe, in_capsule| parse_io(s, G, in_capsule, 131072);
        assert_eq!(p(&rp(5, ic, 5), 5), Ok(IoCmd::RestartPoint { tag_len: 5 }));
        assert_eq!(p(&rp(256, t, 256), 0), Ok(IoCmd::RestartPoint { tag_len: 256 }));
        assert_eq!(p(&rp(0, t, 0), 0), Ok(IoCmd::RestartPoint { tag_len: 0 }));
        assert_eq!(p(&rp(0, ic, 0), 0), Ok(IoCmd::RestartPoint { tag_len: 0 }));
        assert_eq!(IoCmd::RestartPoint { tag_len: 9 }.host_bytes(), 9);
        // Oversize tag.
        assert_eq!(p(&rp(257, t, 257), 0), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(u32::MAX, t, 0), 0), Err(Status::INVALID_FIELD));
        // Tag length does not match the data.
        assert_eq!(p(&rp(5, ic, 6), 6), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(5, ic, 5), 4), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(5, ic, 0), 0), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(5, t, 4), 0), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(5, t, 6), 0), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(0, t, 8), 0), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(0, ic, 4), 4), Err(Status::INVALID_FIELD));
        assert_eq!(p(&rp(5, t, 5), 5), Err(Status::INVALID_FIELD));
        // Other descriptor problems keep their statuses.
        let mut off = rp(5, ic, 5);
        off.sgl.addr = 8;
        assert_eq!(p(&off, 5), Err(Status::SGL_OFFSET_INVALID));
        assert_eq!(p(&rp(5, 0x00, 5), 0), Err(Status::SGL_DESCRIPTOR_TYPE_INVALID));
    }

    #[test]
    fn parse_io_survives_random_restart_points() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let types = [sgl_type::TRANSPORT_DATA_BLOCK, sgl_type::DATA_BLOCK_OFFSET, 0x00, 0xFF];
        for _ in 0..100_000 {
            let tag_len = match next() % 4 {
                0 => (next() % 300) as u32,
                1 => next() as u32,
                _ => (next() % 260) as u32,
            };
            let sgl_len = if next() % 2 == 0 {
                tag_len
            } else {
                (next() % 300) as u32
            };
            let in_capsule = if next() % 2 == 0 {
                sgl_len
            } else {
                (next() % 300) as u32
            };
            let mut s = rp(tag_len, types[(next() % 4) as usize], sgl_len);
            s.sgl.addr = if next() % 8 == 0 { next() } else { 0 };
            if let Ok(IoCmd::RestartPoint { tag_len: n }) = parse_io(&s, G, in_capsule, 131072) {
                assert!(n <= RESTART_TAG_BYTES_MAX);
                assert_eq!(n, s.cdw10);
                assert!(in_capsule == 0 || in_capsule == n, "in-capsule data is exactly the tag");
                assert_eq!(s.sgl.length, n, "descriptor is exactly the tag");
            }
        }
    }
}
