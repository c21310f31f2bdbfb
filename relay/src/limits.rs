//! Ranges of a relay's journal and forwarding settings, checked in one place before
//! anything is opened: by [`RelayConfig::validate`] when a relay starts (`baton relay`'s
//! options, in-process relays) and by [`JournalConfig::validate`] for a journal configured
//! over JSON-RPC (`relay_create_journal`, whose values override the relay's). A value out
//! of range is refused with an error naming the parameter and the values, instead of a
//! relay that starts and then stalls its primary or refuses it.
//!
//! | setting | range | why |
//! |---|---|---|
//! | `segment_bytes` | [`SEGMENT_BYTES_MIN`]..=[`SEGMENT_BYTES_MAX`] (64 KiB..=1 GiB) | 0 makes no segment; a segment is read whole at recovery and mapped whole on memory media |
//! | `journal_bytes_max` | ≥ 2 × `segment_bytes`, and ≥ `segment_bytes` + [`RECORD_BYTES_NEED_MAX`] | the active segment is never released: below that, a full active segment plus the next record cannot fit and writes stall for good although the standby confirmed everything |
//! | `preallocate_bytes` | ≤ `journal_bytes_max` | spares count against the bound |
//! | forward `interval_ms` | 1..=[`FORWARD_INTERVAL_MS_MAX`] (one day) | 0 is no period |
//! | forward `bytes_per_sec` | ≥ 1 | 0 never forwards |
//! | forward `windows` | at least one, each `HH:MM-HH:MM` with start ≠ end | an empty window never opens |

use crate::journal::record::{self, RECORD_HDR_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use crate::journal::{JournalConfig, DIRECT_ALIGN_BYTES};
use crate::relay::RelayConfig;

/// Smallest segment.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Journal bytes the largest record (a frame of `FRAME_BYTES_MAX`) needs at most: its span
/// plus the worst-case padding `append` reserves with it (1,053,840 bytes).
pub const RECORD_BYTES_NEED_MAX: u64 =
    (record::span(RECORD_PAYLOAD_BYTES_MAX) + DIRECT_ALIGN_BYTES + RECORD_HDR_BYTES) as u64;
/// Longest forwarding interval (one day).
pub const FORWARD_INTERVAL_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// A setting out of range. The message names the parameter and the values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `segment_bytes` outside [`SEGMENT_BYTES_MIN`]..=[`SEGMENT_BYTES_MAX`].
    #[error(
        "segment_bytes ({}) must be between {} and {}",
        Size(*.segment_bytes),
        Size(SEGMENT_BYTES_MIN),
        Size(SEGMENT_BYTES_MAX)
    )]
    SegmentBytes {
        /// Given.
        segment_bytes: u64,
    },
    /// `journal_bytes_max` below two segments.
    #[error(
        "journal_bytes_max ({}) must hold at least 2 segments of segment_bytes ({}): {} or more",
        Size(*.journal_bytes_max),
        Size(*.segment_bytes),
        Size(2 * *.segment_bytes)
    )]
    JournalBelowTwoSegments {
        /// Given.
        journal_bytes_max: u64,
        /// Given.
        segment_bytes: u64,
    },
    /// `journal_bytes_max` below one segment plus the largest record.
    #[error(
        "journal_bytes_max ({}) must hold a full segment of segment_bytes ({}) plus the largest record ({}): {} or more",
        Size(*.journal_bytes_max),
        Size(*.segment_bytes),
        Size(RECORD_BYTES_NEED_MAX),
        Size(*.segment_bytes + RECORD_BYTES_NEED_MAX)
    )]
    JournalBelowLargestRecord {
        /// Given.
        journal_bytes_max: u64,
        /// Given.
        segment_bytes: u64,
    },
    /// More preallocated than the journal may hold.
    #[error(
        "journal_preallocate_bytes ({}) must not exceed journal_bytes_max ({})",
        Size(*.preallocate_bytes),
        Size(*.journal_bytes_max)
    )]
    Preallocate {
        /// Given.
        preallocate_bytes: u64,
        /// Given.
        journal_bytes_max: u64,
    },
    /// A forwarding policy value (the message names it).
    #[error("forward: {0}")]
    Forward(String),
}

/// A byte count as people write it: `8 MiB` when exact, else `1053840 bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        let n = self.0;
        match UNITS.iter().find(|(u, _)| n > 0 && n.is_multiple_of(*u)) {
            Some((u, name)) => write!(f, "{} {name}", n / u),
            None => write!(f, "{n} bytes"),
        }
    }
}

/// The journal limits of the table above.
fn check_journal(journal_bytes_max: u64, segment_bytes: u64, preallocate_bytes: u64) -> Result<(), LimitError> {
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
        return Err(LimitError::SegmentBytes { segment_bytes });
    }
    // segment_bytes ≤ 1 GiB: no overflow below.
    if journal_bytes_max < 2 * segment_bytes {
        return Err(LimitError::JournalBelowTwoSegments {
            journal_bytes_max,
            segment_bytes,
        });
    }
    if journal_bytes_max < segment_bytes + RECORD_BYTES_NEED_MAX {
        return Err(LimitError::JournalBelowLargestRecord {
            journal_bytes_max,
            segment_bytes,
        });
    }
    if preallocate_bytes > journal_bytes_max {
        return Err(LimitError::Preallocate {
            preallocate_bytes,
            journal_bytes_max,
        });
    }
    Ok(())
}

impl JournalConfig {
    /// Checks `segment_bytes`, `journal_bytes_max` and `preallocate_bytes` against the
    /// ranges of [`crate::limits`]. [`crate::journal::Journal::open`] does not call it
    /// (the journal itself works with any segment size, and its tests use small ones);
    /// every relay path does, before opening anything.
    pub fn validate(&self) -> Result<(), LimitError> {
        check_journal(self.journal_bytes_max, self.segment_bytes, self.preallocate_bytes)
    }
}

impl RelayConfig {
    /// Checks every size and interval of the relay (its journals' defaults and the forward
    /// policy) against the ranges of [`crate::limits`]; called by `Relay::start`.
    pub fn validate(&self) -> Result<(), LimitError> {
        check_journal(
            self.journal_bytes_max,
            self.segment_bytes,
            self.journal_preallocate_bytes,
        )?;
        self.forward.check().map_err(LimitError::Forward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::ForwardPolicy;

    const K: u64 = 1024;
    const M: u64 = 1024 * K;
    const G: u64 = 1024 * M;

    fn jc(max: u64, seg: u64, pre: u64) -> Result<(), String> {
        let mut c = JournalConfig::new("/nonexistent");
        c.journal_bytes_max = max;
        c.segment_bytes = seg;
        c.preallocate_bytes = pre;
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let r = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "/nonexistent");
        r.validate().unwrap();
        JournalConfig::new("/nonexistent").validate().unwrap();
        assert_eq!(RECORD_BYTES_NEED_MAX, 1_053_840);
    }

    #[test]
    fn segment_bytes_is_bounded_both_ways() {
        let e = jc(G, 0, 0).unwrap_err();
        assert_eq!(e, "segment_bytes (0 bytes) must be between 64 KiB and 1 GiB");
        let e = jc(G, 64 * K - 1, 0).unwrap_err();
        assert!(e.starts_with("segment_bytes (65535 bytes)"), "{e}");
        jc(G, 64 * K, 0).unwrap();
        jc(2 * G, G, 0).unwrap();
        let e = jc(4 * G, G + 1, 0).unwrap_err();
        assert!(e.starts_with("segment_bytes (1073741825 bytes)"), "{e}");
    }

    #[test]
    fn journal_must_hold_two_segments() {
        let e = jc(2 * M, 8 * M, 0).unwrap_err();
        assert_eq!(
            e,
            "journal_bytes_max (2 MiB) must hold at least 2 segments of segment_bytes (8 MiB): 16 MiB or more"
        );
        let e = jc(16 * M - 1, 8 * M, 0).unwrap_err();
        assert!(e.starts_with("journal_bytes_max (16777215 bytes)"), "{e}");
        jc(16 * M, 8 * M, 0).unwrap();
    }

    #[test]
    fn journal_must_hold_a_segment_and_the_largest_record() {
        // Two 256 KiB segments fit in 1 MiB, but a full one and a 1 MiB frame do not.
        let e = jc(M, 256 * K, 0).unwrap_err();
        assert_eq!(
            e,
            "journal_bytes_max (1 MiB) must hold a full segment of segment_bytes (256 KiB) plus the \
             largest record (1053840 bytes): 1315984 bytes or more"
        );
        jc(256 * K + RECORD_BYTES_NEED_MAX, 256 * K, 0).unwrap();
        jc(2 * M, 256 * K, 0).unwrap();
    }

    #[test]
    fn preallocation_stays_within_the_journal() {
        let e = jc(16 * M, 8 * M, 32 * M).unwrap_err();
        assert_eq!(
            e,
            "journal_preallocate_bytes (32 MiB) must not exceed journal_bytes_max (16 MiB)"
        );
        jc(16 * M, 8 * M, 16 * M).unwrap();
    }

    #[test]
    fn forward_policy_values_are_in_range() {
        let mut r = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "/nonexistent");
        let bad = [
            (ForwardPolicy::Interval { interval_ms: 0 }, "interval_ms"),
            (
                ForwardPolicy::Interval {
                    interval_ms: FORWARD_INTERVAL_MS_MAX + 1,
                },
                "interval_ms",
            ),
            (ForwardPolicy::Bandwidth { bytes_per_sec: 0 }, "bytes_per_sec"),
            (ForwardPolicy::Windows { windows: vec![] }, "windows"),
            (
                ForwardPolicy::Windows {
                    windows: vec!["25:00-01:00".into()],
                },
                "25:00-01:00",
            ),
            (
                ForwardPolicy::Windows {
                    windows: vec!["10:00-10:00".into()],
                },
                "10:00-10:00",
            ),
        ];
        for (p, name) in bad {
            r.forward = p.clone();
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with("forward: ") && e.contains(name), "{p:?}: {e}");
        }
        r.forward = ForwardPolicy::Interval {
            interval_ms: FORWARD_INTERVAL_MS_MAX,
        };
        r.validate().unwrap();
        r.forward = ForwardPolicy::Windows {
            windows: vec!["23:00-01:00".into()],
        };
        r.validate().unwrap();
    }

    #[test]
    fn relay_journal_settings_are_checked_too() {
        let mut r = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "/nonexistent");
        r.segment_bytes = 0;
        assert!(matches!(
            r.validate(),
            Err(LimitError::SegmentBytes { segment_bytes: 0 })
        ));
        r.segment_bytes = 8 * M;
        r.journal_bytes_max = 2 * M;
        assert!(matches!(r.validate(), Err(LimitError::JournalBelowTwoSegments { .. })));
        r.journal_bytes_max = G;
        r.journal_preallocate_bytes = 2 * G;
        assert!(matches!(r.validate(), Err(LimitError::Preallocate { .. })));
    }
}
