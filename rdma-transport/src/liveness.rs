//! The direct primary -> standby-host heartbeat: one small UDP datagram per replicated
//! volume every `interval_ms`, so the standby host can tell a dead primary from a cut link
//! (see `docs/failover.md`).
//!
//! Where it sits: the primary's sender (`relay::liveness`) calls [`encode`]; the standby
//! host's listener (`standby::host`) calls [`decode`] on every datagram it receives, the only
//! code that reads those bytes. One datagram is one heartbeat: nothing spans datagrams, so a
//! lost or reordered one costs nothing but its own information (the sequence number lets the
//! receiver drop an older one that arrives late).
//!
//! Layout (little-endian, `60 + name_len` bytes, at most [`HEARTBEAT_BYTES_MAX`]):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"BTHB"` |
//! | 4 | 1 | version, [`HEARTBEAT_VERSION`] |
//! | 5 | 1 | kind, 1 = primary heartbeat |
//! | 6 | 2 | flags, 0 |
//! | 8 | 2 | total length of the datagram |
//! | 10 | 1 | volume name length (1..=64) |
//! | 11 | 1 | reserved, 0 |
//! | 12 | 4 | sender's interval, ms |
//! | 16 | 8 | sequence number (per sender, +1 per heartbeat) |
//! | 24 | 8 | generation of the volume |
//! | 32 | 8 | last LSN assigned (0: none yet) |
//! | 40 | 8 | last restart point epoch declared |
//! | 48 | 8 | sender's wall clock, ns since the UNIX epoch (informative) |
//! | 56 | n | volume name, UTF-8 |
//! | 56+n | 4 | CRC32C of bytes `[0, 56+n)` |

use crate::wire::VOLUME_NAME_BYTES_MAX;

/// Magic that starts every heartbeat datagram.
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"BTHB";
/// Version this build speaks (byte 4).
pub const HEARTBEAT_VERSION: u8 = 1;
/// Kind byte of a primary heartbeat.
pub const KIND_PRIMARY: u8 = 1;
/// Bytes before the volume name.
pub const HEARTBEAT_FIXED_BYTES: usize = 56;
/// Largest datagram (longest volume name).
pub const HEARTBEAT_BYTES_MAX: usize = HEARTBEAT_FIXED_BYTES + VOLUME_NAME_BYTES_MAX + 4;
/// Smallest datagram (one-byte volume name).
pub const HEARTBEAT_BYTES_MIN: usize = HEARTBEAT_FIXED_BYTES + 1 + 4;

/// A decoded primary heartbeat (borrows the datagram for the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryHeartbeat<'a> {
    /// Replicated volume name (as in the relays' Hello).
    pub volume: &'a str,
    /// Sender's heartbeat interval, ms (lets the receiver judge lateness).
    pub interval_ms: u32,
    /// Sender's sequence number.
    pub seq: u64,
    /// Volume generation (fencing).
    pub generation: u64,
    /// Last LSN the primary assigned.
    pub last_lsn: u64,
    /// Last restart point epoch the primary declared.
    pub epoch: u64,
    /// Sender's wall clock, ns since the UNIX epoch.
    pub time_ns: u64,
}

/// Why a datagram is not a heartbeat. Each rule is its own variant and names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LivenessError {
    #[error("heartbeat of {len} bytes, outside {HEARTBEAT_BYTES_MIN}..={HEARTBEAT_BYTES_MAX}")]
    Size { len: usize },
    #[error("heartbeat magic {got:02x?}, expected {HEARTBEAT_MAGIC:02x?}")]
    Magic { got: [u8; 4] },
    #[error("heartbeat version {got} not supported (this build speaks {HEARTBEAT_VERSION})")]
    Version { got: u8 },
    #[error("heartbeat kind {got} unknown")]
    Kind { got: u8 },
    #[error("heartbeat flags {flags:#x} set (must be 0)")]
    Flags { flags: u16 },
    #[error("heartbeat reserved byte is {value}, must be 0")]
    Reserved { value: u8 },
    #[error("heartbeat declares {declared} bytes, datagram has {actual}")]
    Length { declared: usize, actual: usize },
    #[error("heartbeat volume name length {len}, must be 1..={VOLUME_NAME_BYTES_MAX}")]
    NameLength { len: usize },
    #[error("heartbeat volume name is not UTF-8")]
    NameUtf8,
    #[error("heartbeat CRC32C {expected:#010x} does not match computed {computed:#010x}")]
    Crc { expected: u32, computed: u32 },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encodes `hb` into `out` (cleared first). Fails only on a volume name of the wrong length.
pub fn encode(hb: &PrimaryHeartbeat<'_>, out: &mut Vec<u8>) -> Result<(), LivenessError> {
    let name = hb.volume.as_bytes();
    if name.is_empty() || name.len() > VOLUME_NAME_BYTES_MAX {
        return Err(LivenessError::NameLength { len: name.len() });
    }
    let total = HEARTBEAT_FIXED_BYTES + name.len() + 4;
    out.clear();
    out.extend_from_slice(&HEARTBEAT_MAGIC);
    out.push(HEARTBEAT_VERSION);
    out.push(KIND_PRIMARY);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(total as u16).to_le_bytes());
    out.push(name.len() as u8);
    out.push(0);
    out.extend_from_slice(&hb.interval_ms.to_le_bytes());
    for v in [hb.seq, hb.generation, hb.last_lsn, hb.epoch, hb.time_ns] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(name);
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), total);
    Ok(())
}

/// Decodes one datagram. Pure; never panics on any input. Check order: size, magic,
/// version, kind, flags, reserved, declared length, name length, CRC, name UTF-8.
pub fn decode(b: &[u8]) -> Result<PrimaryHeartbeat<'_>, LivenessError> {
    if !(HEARTBEAT_BYTES_MIN..=HEARTBEAT_BYTES_MAX).contains(&b.len()) {
        return Err(LivenessError::Size { len: b.len() });
    }
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != HEARTBEAT_MAGIC {
        return Err(LivenessError::Magic { got: magic });
    }
    if b[4] != HEARTBEAT_VERSION {
        return Err(LivenessError::Version { got: b[4] });
    }
    if b[5] != KIND_PRIMARY {
        return Err(LivenessError::Kind { got: b[5] });
    }
    let flags = u16::from_le_bytes([b[6], b[7]]);
    if flags != 0 {
        return Err(LivenessError::Flags { flags });
    }
    if b[11] != 0 {
        return Err(LivenessError::Reserved { value: b[11] });
    }
    let declared = u16::from_le_bytes([b[8], b[9]]) as usize;
    if declared != b.len() {
        return Err(LivenessError::Length {
            declared,
            actual: b.len(),
        });
    }
    let n = b[10] as usize;
    if n == 0 || n > VOLUME_NAME_BYTES_MAX || HEARTBEAT_FIXED_BYTES + n + 4 != b.len() {
        return Err(LivenessError::NameLength { len: n });
    }
    let body = HEARTBEAT_FIXED_BYTES + n;
    let expected = u32::from_le_bytes([b[body], b[body + 1], b[body + 2], b[body + 3]]);
    let computed = crc32c::crc32c(&b[..body]);
    if expected != computed {
        return Err(LivenessError::Crc { expected, computed });
    }
    let volume = std::str::from_utf8(&b[HEARTBEAT_FIXED_BYTES..body]).map_err(|_| LivenessError::NameUtf8)?;
    Ok(PrimaryHeartbeat {
        volume,
        interval_ms: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        seq: u64_at(b, 16),
        generation: u64_at(b, 24),
        last_lsn: u64_at(b, 32),
        epoch: u64_at(b, 40),
        time_ns: u64_at(b, 48),
    })
}

/// Body of the fuzz target `heartbeat`: decode never panics, and anything accepted
/// re-encodes to the same bytes.
pub fn fuzz_heartbeat(data: &[u8]) {
    if let Ok(hb) = decode(data) {
        let mut out = Vec::new();
        encode(&hb, &mut out).expect("a decoded heartbeat re-encodes");
        assert_eq!(out, data, "accepted heartbeat does not re-encode to the same bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        encode(
            &PrimaryHeartbeat {
                volume: name,
                interval_ms: 100,
                seq: 7,
                generation: 3,
                last_lsn: 12345,
                epoch: 9,
                time_ns: 1_700_000_000_000_000_000,
            },
            &mut v,
        )
        .unwrap();
        v
    }

    fn recrc(v: &mut [u8]) {
        let body = v.len() - 4;
        let c = crc32c::crc32c(&v[..body]);
        v[body..].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        for name in ["v", "vol0", &"x".repeat(VOLUME_NAME_BYTES_MAX)] {
            let v = sample(name);
            assert_eq!(v.len(), HEARTBEAT_FIXED_BYTES + name.len() + 4);
            let hb = decode(&v).unwrap();
            assert_eq!(hb.volume, name);
            assert_eq!((hb.seq, hb.generation, hb.last_lsn, hb.epoch), (7, 3, 12345, 9));
            assert_eq!(hb.interval_ms, 100);
            fuzz_heartbeat(&v);
        }
        let mut out = Vec::new();
        let bad = PrimaryHeartbeat {
            volume: "",
            interval_ms: 1,
            seq: 0,
            generation: 1,
            last_lsn: 0,
            epoch: 0,
            time_ns: 0,
        };
        assert_eq!(encode(&bad, &mut out), Err(LivenessError::NameLength { len: 0 }));
    }

    #[test]
    fn each_rule_rejects() {
        let good = sample("vol0");
        let edit = |at: usize, v: u8, fix: bool| {
            let mut s = good.clone();
            s[at] = v;
            if fix {
                recrc(&mut s);
            }
            decode(&s).unwrap_err()
        };
        assert!(matches!(edit(0, b'X', true), LivenessError::Magic { .. }));
        assert_eq!(edit(4, 2, true), LivenessError::Version { got: 2 });
        assert_eq!(edit(5, 9, true), LivenessError::Kind { got: 9 });
        assert_eq!(edit(6, 1, true), LivenessError::Flags { flags: 1 });
        assert_eq!(edit(11, 1, true), LivenessError::Reserved { value: 1 });
        assert!(matches!(edit(8, 0, true), LivenessError::Length { .. }));
        assert_eq!(edit(10, 3, true), LivenessError::NameLength { len: 3 });
        assert!(matches!(edit(20, 0xff, false), LivenessError::Crc { .. }));
        assert_eq!(edit(56, 0xff, true), LivenessError::NameUtf8);
        assert_eq!(decode(&good[..10]), Err(LivenessError::Size { len: 10 }));
        assert_eq!(decode(&[]), Err(LivenessError::Size { len: 0 }));
        let mut long = good.clone();
        long.resize(HEARTBEAT_BYTES_MAX + 1, 0);
        assert!(matches!(decode(&long), Err(LivenessError::Size { .. })));
    }

    /// The fuzz body over random, truncated and mutated input (deterministic).
    #[test]
    fn fuzz_random_truncated_and_mutated() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [sample("a"), sample("vol0"), sample(&"z".repeat(64))];
        let mut accepted = 0;
        for i in 0..50_000 {
            let seed = &seeds[(next() % 3) as usize];
            let mut m = seed.clone();
            match i % 4 {
                0 => {
                    let at = (next() as usize) % m.len();
                    m[at] ^= (next() as u8) | 1;
                    // CRC32C catches every single-byte change.
                    assert!(decode(&m).is_err(), "byte {at} changed and accepted");
                }
                1 => m.truncate((next() as usize) % m.len()),
                2 => {
                    let at = (next() as usize) % m.len();
                    m[at] = next() as u8;
                    recrc(&mut m);
                }
                _ => {
                    let n = (next() as usize) % (HEARTBEAT_BYTES_MAX + 8);
                    m = (0..n).map(|_| next() as u8).collect();
                }
            }
            if decode(&m).is_ok() {
                accepted += 1;
            }
            fuzz_heartbeat(&m);
        }
        assert!(accepted > 0, "some resealed mutations are valid heartbeats");
    }
}
