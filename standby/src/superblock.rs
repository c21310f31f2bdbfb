//! The standby's superblock: the small persistent record that says what the
//! volume is and where its recovery starts.
//!
//! Two copies live in blocks 0 and 1 of the staging bdev (delayed mode) or of
//! the metadata bdev (snapshot mode). Each write goes to the copy the current
//! one is not in (`seq` parity), so a torn write can only destroy the copy
//! being written: recovery takes the valid copy (magic, version, CRC32C) with
//! the highest `seq`.
//!
//! Layout (little-endian), CRC32C of bytes `[0, 508)` at offset 508; the rest
//! of the block is zero:
//!
//! | off | field |
//! |----:|-------|
//! | 0   | magic `BATONSBK` |
//! | 8   | version u32 = 1, mode u8 (1 delayed, 2 snapshot), promoted u8, rsv u16 |
//! | 16  | seq u64 |
//! | 24  | generation u64 |
//! | 32  | volume_blocks u64 |
//! | 40  | block_size u32, tag_len u16, meta_area u8, rsv u8 |
//! | 48  | incarnation u64 (delayed: staging records of another incarnation are void) |
//! | 56  | applied_epoch, applied_last_lsn, applied_rp_lsn (u64 each) |
//! | 80  | applying_epoch (0 = none), applying_last_lsn, applying_rp_lsn |
//! | 104 | tail_off u64, tail_seq u64 (delayed: where the staging scan starts) |
//! | 120 | meta_start_seq u64 (snapshot: first record seq of the active area) |
//! | 128 | tag: the applied restart point's tag (up to 256 bytes) |

use crate::le;
use crate::StandbyError;
use engine::buf::DmaBuf;
use rdma_transport::wire::RESTART_TAG_BYTES_MAX;

const MAGIC: &[u8; 8] = b"BATONSBK";
const VERSION: u32 = 1;
const CRC_AT: usize = 508;
/// Bytes of a superblock; every block size we accept (>= 512) holds it.
pub const SUPERBLOCK_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Delayed = 1,
    Snapshot = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub mode: Mode,
    pub promoted: bool,
    pub seq: u64,
    pub generation: u64,
    pub volume_blocks: u64,
    pub block_size: u32,
    pub meta_area: u8,
    pub incarnation: u64,
    pub applied_epoch: u64,
    pub applied_last_lsn: u64,
    pub applied_rp_lsn: u64,
    pub applying_epoch: u64,
    pub applying_last_lsn: u64,
    pub applying_rp_lsn: u64,
    pub tail_off: u64,
    pub tail_seq: u64,
    pub meta_start_seq: u64,
    pub tag: Vec<u8>,
}

impl Superblock {
    pub fn new(mode: Mode, volume_blocks: u64, block_size: u32) -> Superblock {
        Superblock {
            mode,
            promoted: false,
            seq: 0,
            generation: 1,
            volume_blocks,
            block_size,
            meta_area: 0,
            incarnation: 1,
            applied_epoch: 0,
            applied_last_lsn: 0,
            applied_rp_lsn: 0,
            applying_epoch: 0,
            applying_last_lsn: 0,
            applying_rp_lsn: 0,
            tail_off: 0,
            tail_seq: 1,
            meta_start_seq: 1,
            tag: Vec::new(),
        }
    }

    /// Block (0 or 1) this superblock's `seq` is written to.
    pub fn slot(&self) -> u64 {
        self.seq & 1
    }

    /// Encodes into a buffer of one `block_size` block.
    pub fn encode(&self) -> DmaBuf {
        let mut b = DmaBuf::alloc(self.block_size as usize);
        let tag = &self.tag[..self.tag.len().min(RESTART_TAG_BYTES_MAX)];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12] = self.mode as u8;
        b[13] = u8::from(self.promoted);
        let put = |b: &mut DmaBuf, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut b, 16, self.seq);
        put(&mut b, 24, self.generation);
        put(&mut b, 32, self.volume_blocks);
        b[40..44].copy_from_slice(&self.block_size.to_le_bytes());
        b[44..46].copy_from_slice(&(tag.len() as u16).to_le_bytes());
        b[46] = self.meta_area;
        put(&mut b, 48, self.incarnation);
        put(&mut b, 56, self.applied_epoch);
        put(&mut b, 64, self.applied_last_lsn);
        put(&mut b, 72, self.applied_rp_lsn);
        put(&mut b, 80, self.applying_epoch);
        put(&mut b, 88, self.applying_last_lsn);
        put(&mut b, 96, self.applying_rp_lsn);
        put(&mut b, 104, self.tail_off);
        put(&mut b, 112, self.tail_seq);
        put(&mut b, 120, self.meta_start_seq);
        b[128..128 + tag.len()].copy_from_slice(tag);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one copy; `None` when it is not a valid superblock.
    pub fn decode(b: &[u8]) -> Option<Superblock> {
        if b.len() < SUPERBLOCK_BYTES || &b[0..8] != MAGIC {
            return None;
        }
        let crc = le::u32_at(b, CRC_AT);
        if crc != crc32c::crc32c(&b[..CRC_AT]) {
            return None;
        }
        if le::u32_at(b, 8) != VERSION {
            return None;
        }
        let mode = match b[12] {
            1 => Mode::Delayed,
            2 => Mode::Snapshot,
            _ => return None,
        };
        let tag_len = (le::u16_at(b, 44) as usize).min(RESTART_TAG_BYTES_MAX);
        Some(Superblock {
            mode,
            promoted: b[13] != 0,
            seq: le::u64_at(b, 16),
            generation: le::u64_at(b, 24),
            volume_blocks: le::u64_at(b, 32),
            block_size: le::u32_at(b, 40),
            meta_area: b[46],
            incarnation: le::u64_at(b, 48),
            applied_epoch: le::u64_at(b, 56),
            applied_last_lsn: le::u64_at(b, 64),
            applied_rp_lsn: le::u64_at(b, 72),
            applying_epoch: le::u64_at(b, 80),
            applying_last_lsn: le::u64_at(b, 88),
            applying_rp_lsn: le::u64_at(b, 96),
            tail_off: le::u64_at(b, 104),
            tail_seq: le::u64_at(b, 112),
            meta_start_seq: le::u64_at(b, 120),
            tag: b[128..128 + tag_len].to_vec(),
        })
    }

    /// Reads both copies and returns the newest valid one.
    pub(crate) fn load(dev: &mut crate::io::Dev) -> Result<Option<Superblock>, StandbyError> {
        let a = dev.sync_read(0, 1)?;
        let b = dev.sync_read(1, 1)?;
        let (a, b) = (Superblock::decode(&a), Superblock::decode(&b));
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
            (a, b) => a.or(b),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut s = Superblock::new(Mode::Snapshot, 1000, 4096);
        s.seq = 7;
        s.tag = b"tag".to_vec();
        s.applying_epoch = 3;
        s.promoted = true;
        let mut b = s.encode();
        assert_eq!(Superblock::decode(&b), Some(s.clone()));
        assert_eq!(s.slot(), 1);
        b[100] ^= 1;
        assert_eq!(Superblock::decode(&b), None);
    }
}
