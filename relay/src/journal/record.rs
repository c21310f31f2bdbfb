//! Journal record format: a 48-byte header (LSN range, length, CRC32C) and a payload.
//!
//! Where it sits: the relay's group commit copies every received frame into a staging buffer
//! as one record ([`encode_into`]); recovery and read-back check each record with [`check`]
//! before trusting a byte of it (the CRC is computed when the record is written and verified
//! again whenever it is read: the pair of assertions TigerBeetle's style asks for).
//! Layout, all little-endian (also in `docs/relay-journal.md`):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x4E4A_5442` ("BTJN") |
//! | 4 | 4 | CRC32C of bytes 8..48 of the header and of the payload |
//! | 8 | 1 | kind: 1 frame, 2 pad |
//! | 9 | 1 | format version, 1 |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | payload length in bytes |
//! | 16 | 8 | record sequence number (frames: +1 per record, across segments; pads: 0) |
//! | 24 | 8 | first LSN the payload carries (pads: 0) |
//! | 32 | 8 | last LSN the payload carries (pads: 0) |
//! | 40 | 8 | segment id the record was written to |
//!
//! A record occupies `48 + payload_len` bytes rounded up to [`RECORD_ALIGN_BYTES`]; the
//! rounding bytes are zero and not covered by the CRC.

/// Record header bytes.
pub const RECORD_HDR_BYTES: usize = 48;
/// Records start at multiples of this many bytes.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// `b"BTJN"` read as a little-endian u32.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"BTJN");
/// Format version byte.
pub const RECORD_VERSION: u8 = 1;
/// Largest payload: one largest replication frame.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = rdma_transport::wire::FRAME_BYTES_MAX;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A replication frame (its payload is the frame's bytes as received).
    Frame = 1,
    /// Padding up to an O_DIRECT block boundary at the end of a group commit.
    Pad = 2,
}

/// A record header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Frame or pad.
    pub kind: RecordKind,
    /// Payload bytes.
    pub payload_len: u32,
    /// Record sequence number.
    pub seq: u64,
    /// First LSN.
    pub lsn_first: u64,
    /// Last LSN.
    pub lsn_last: u64,
    /// Segment id.
    pub segment_id: u64,
}

impl RecordHeader {
    /// Bytes the record occupies in its segment, header, payload and alignment included.
    pub fn span(&self) -> usize {
        span(self.payload_len as usize)
    }
}

/// Bytes a record with `payload_len` payload bytes occupies.
pub const fn span(payload_len: usize) -> usize {
    (RECORD_HDR_BYTES + payload_len).div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// Why bytes are not a valid record. Recovery cuts the log at the first of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than a header (a torn tail).
    #[error("{have} bytes left, less than a record header")]
    Truncated {
        /// Bytes present.
        have: usize,
    },
    /// Magic does not match (zeroes or garbage: end of the written log).
    #[error("bad magic {magic:#010x}")]
    Magic {
        /// Value read.
        magic: u32,
    },
    /// Version or reserved or kind field invalid.
    #[error("bad header field {field} = {value}")]
    Field {
        /// Field name.
        field: &'static str,
        /// Value read.
        value: u64,
    },
    /// Payload extends past the end of the data (a torn tail).
    #[error("payload of {len} bytes extends past the {have} bytes present")]
    PayloadTruncated {
        /// Declared payload bytes.
        len: u32,
        /// Bytes present after the header.
        have: usize,
    },
    /// CRC mismatch: torn or corrupted.
    #[error("CRC32C mismatch: record says {expected:#010x}, computed {computed:#010x}")]
    Crc {
        /// Stored.
        expected: u32,
        /// Computed.
        computed: u32,
    },
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Whether `buf` starts with what a record of segment `segment_id` would begin with: the
/// magic and that segment id. Recovery of a recycled segment file uses it to tell a torn
/// record of this segment (it claims the segment, but fails [`check`]) from the bytes a
/// previous use of the file left after the last record (anything else).
pub fn claims_segment(buf: &[u8], segment_id: u64) -> bool {
    buf.len() >= RECORD_HDR_BYTES && u32_at(buf, 0) == RECORD_MAGIC && u64_at(buf, 40) == segment_id
}

/// Checks the record at the start of `buf`; returns its header and payload.
pub fn check(buf: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
    let Some(hdr) = buf.get(..RECORD_HDR_BYTES) else {
        return Err(RecordError::Truncated { have: buf.len() });
    };
    let magic = u32_at(hdr, 0);
    if magic != RECORD_MAGIC {
        return Err(RecordError::Magic { magic });
    }
    let kind = match hdr[8] {
        1 => RecordKind::Frame,
        2 => RecordKind::Pad,
        k => {
            return Err(RecordError::Field {
                field: "kind",
                value: k.into(),
            })
        }
    };
    if hdr[9] != RECORD_VERSION {
        return Err(RecordError::Field {
            field: "version",
            value: hdr[9].into(),
        });
    }
    let rsv = u16::from_le_bytes([hdr[10], hdr[11]]);
    if rsv != 0 {
        return Err(RecordError::Field {
            field: "reserved",
            value: rsv.into(),
        });
    }
    let payload_len = u32_at(hdr, 12);
    let rest = &buf[RECORD_HDR_BYTES..];
    let Some(payload) = rest.get(..payload_len as usize) else {
        return Err(RecordError::PayloadTruncated {
            len: payload_len,
            have: rest.len(),
        });
    };
    let expected = u32_at(hdr, 4);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&hdr[8..]), payload);
    if expected != computed {
        return Err(RecordError::Crc { expected, computed });
    }
    let h = RecordHeader {
        kind,
        payload_len,
        seq: u64_at(hdr, 16),
        lsn_first: u64_at(hdr, 24),
        lsn_last: u64_at(hdr, 32),
        segment_id: u64_at(hdr, 40),
    };
    Ok((h, payload))
}

/// Writes a record (header, payload gathered from `payload`, zero alignment) at the start of
/// `out`, which must hold [`span`] bytes. Returns the bytes used.
pub fn encode_into(out: &mut [u8], h: &RecordHeader, payload: &[&[u8]]) -> usize {
    encode_into_known_tail(out, h, payload, None)
}

/// [`encode_into`] for a payload whose bytes from `tail.0` on are known to have CRC32C
/// `tail.1` (a replication frame's body, whose CRC its envelope carries): the record CRC is
/// combined from the CRC of the header and the payload's head with that, without reading
/// the tail again ([`rdma_transport::crc::combine`]). The bytes written are the same as with
/// `encode_into`, provided `tail.1` is right; if it is not, the record fails its check
/// when read back (cut at recovery, reported as corrupt when forwarded), never taken for
/// good.
pub fn encode_into_known_tail(
    out: &mut [u8],
    h: &RecordHeader,
    payload: &[&[u8]],
    tail: Option<(usize, u32)>,
) -> usize {
    let len = h.payload_len as usize;
    let total = span(len);
    let (hdr, rest) = out[..total].split_at_mut(RECORD_HDR_BYTES);
    hdr[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    hdr[8] = h.kind as u8;
    hdr[9] = RECORD_VERSION;
    hdr[10..12].fill(0);
    hdr[12..16].copy_from_slice(&h.payload_len.to_le_bytes());
    hdr[16..24].copy_from_slice(&h.seq.to_le_bytes());
    hdr[24..32].copy_from_slice(&h.lsn_first.to_le_bytes());
    hdr[32..40].copy_from_slice(&h.lsn_last.to_le_bytes());
    hdr[40..48].copy_from_slice(&h.segment_id.to_le_bytes());
    let mut at = 0;
    for p in payload {
        rest[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    debug_assert_eq!(at, len, "payload slices do not add up to payload_len");
    rest[len..].fill(0);
    let crc = match tail {
        Some((from, tail_crc)) if from <= len => {
            let head = crc32c::crc32c_append(crc32c::crc32c(&hdr[8..]), &rest[..from]);
            rdma_transport::crc::combine(head, tail_crc, (len - from) as u64)
        }
        _ => crc32c::crc32c_append(crc32c::crc32c(&hdr[8..]), &rest[..len]),
    };
    hdr[4..8].copy_from_slice(&crc.to_le_bytes());
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Vec<u8> {
        let h = RecordHeader {
            kind: RecordKind::Frame,
            payload_len: 13,
            seq: 4,
            lsn_first: 10,
            lsn_last: 12,
            segment_id: 2,
        };
        let mut v = vec![0xEE; span(13)];
        let n = encode_into(&mut v, &h, &[b"hello ", b"journal"]);
        assert_eq!(n, 64);
        v
    }

    #[test]
    fn round_trip() {
        let v = rec();
        let (h, p) = check(&v).unwrap();
        assert_eq!((h.seq, h.lsn_first, h.lsn_last, h.segment_id), (4, 10, 12, 2));
        assert_eq!(p, b"hello journal");
        assert!(v[RECORD_HDR_BYTES + 13..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_single_byte_change_of_header_or_payload_is_caught() {
        let v = rec();
        for i in 0..RECORD_HDR_BYTES + 13 {
            let mut m = v.clone();
            m[i] ^= 0x20;
            assert!(check(&m).is_err(), "change at byte {i} accepted");
        }
        assert!(matches!(check(&v[..40]), Err(RecordError::Truncated { have: 40 })));
        assert!(matches!(
            check(&v[..55]),
            Err(RecordError::PayloadTruncated { len: 13, have: 7 })
        ));
        assert!(matches!(check(&[0u8; 64]), Err(RecordError::Magic { magic: 0 })));
    }
}
