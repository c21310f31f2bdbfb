//! The metadata journal's records (`docs/standby.md`, "Snapshot mode"): header with magic,
//! kind, sequence and CRC32C, and the payloads of a formed snapshot, a deletion and a
//! head map change.

use super::*;
use crate::le;

pub(super) struct Reader<'a> {
    pub(super) p: &'a [u8],
    pub(super) at: usize,
}

impl Reader<'_> {
    pub(super) fn u64(&mut self) -> Option<u64> {
        let b = self.p.get(self.at..self.at + 8)?;
        self.at += 8;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
    pub(super) fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.p.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }
}

/// Appends one record (header + payload, padded to blocks) to `out`.
pub(super) fn push_record(out: &mut Vec<u8>, kind: u8, seq: u64, payload: &[u8], bs: usize) {
    let start = out.len();
    out.extend_from_slice(&REC_MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // crc, filled below
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
    let len = out.len() - start;
    out.resize(start + len.div_ceil(bs) * bs, 0);
}

pub(super) fn rec_crc_ok(rec: &[u8]) -> bool {
    let want = le::u32_at(rec, 20);
    let mut c = crc32c::crc32c(&rec[..20]);
    c = crc32c::crc32c_append(c, &[0; 4]);
    c = crc32c::crc32c_append(c, &rec[24..]);
    c == want
}

pub(super) fn parse_rec_header(b: &[u8], seq: u64) -> Option<(u8, usize)> {
    if le::u32_at(b, 0) != REC_MAGIC {
        return None;
    }
    if le::u64_at(b, 8) != seq {
        return None;
    }
    Some((b[4], le::u32_at(b, 16) as usize))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn encode_snap(
    out: &mut Vec<u8>,
    bs: usize,
    seq: u64,
    ep: &EpochRef,
    formed: u64,
    flags: u32,
    entries: &[(u64, u64)],
    written: &[u64],
) {
    let mut p = Vec::with_capacity(64 + ep.tag.len() + entries.len() * 16 + written.len() * 8);
    for v in [
        ep.epoch,
        ep.last_lsn,
        ep.rp_lsn,
        formed,
        flags as u64,
        ep.tag.len() as u64,
        entries.len() as u64,
        written.len() as u64,
    ] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(&ep.tag);
    p.resize(p.len() + (8 - ep.tag.len() % 8) % 8, 0);
    for &(l, b) in entries {
        p.extend_from_slice(&l.to_le_bytes());
        p.extend_from_slice(&b.to_le_bytes());
    }
    for &w in written {
        p.extend_from_slice(&w.to_le_bytes());
    }
    push_record(out, KIND_SNAP, seq, &p, bs);
}

pub(super) fn encode_delete(out: &mut Vec<u8>, bs: usize, seq: u64, epoch: u64) {
    push_record(out, KIND_DELETE, seq, &epoch.to_le_bytes(), bs);
}

pub(super) fn encode_head(out: &mut Vec<u8>, bs: usize, seq: u64, entries: &[(u64, u64)]) {
    let mut p = Vec::with_capacity(8 + entries.len() * 16);
    p.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for &(l, b) in entries {
        p.extend_from_slice(&l.to_le_bytes());
        p.extend_from_slice(&b.to_le_bytes());
    }
    push_record(out, KIND_HEAD, seq, &p, bs);
}

// ---------------------------------------------------------------------------
// Read-only snapshot bdev and the writable head.
