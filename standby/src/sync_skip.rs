//! Skipping a hole no relay holds, with a block sync to cover it.
//!
//! The primary sends a **block sync** (`docs/replication.md`, "Block sync") when a relay
//! lacks LSNs the primary no longer has: a `Sync Begin` marker at LSN S saying "every block
//! written by an LSN in `covers_from..S` is sent again, as an ordinary write, before the
//! matching `Sync End`", then those writes, then the `End`. A standby that has every LSN
//! applies them as the ordinary writes they are: each carries the block's content as of its
//! own LSN, and nothing changes for it.
//!
//! A standby stuck at a hole that every relay answers `not_held` for, inside
//! `covers_from..S`, may instead **skip** to S (the [`crate::Receiver`] drops what it held
//! below S). From then on its image is not the primary's at any restart point until the
//! sync is complete: blocks written in the hole are stale until their sync write (or a
//! later write) arrives. So, from the skip on:
//!
//! - restart points before the `End` close nothing: they are dropped, never applied or
//!   snapshotted (the rollback target stays the last restart point before the hole);
//! - the first restart point after the `End` closes one epoch holding everything from the
//!   last applied point on, and its epoch number may jump past the dropped ones;
//! - after it, the standby is an ordinary standby again.
//!
//! This module is the pure state machine both engines ([`crate::delayed`],
//! [`crate::snapshot`]) consult; delayed mode stages the markers it acts on so a restart
//! recovers the state (snapshot mode keeps nothing past its last snapshot and derives it
//! again from the stream).

use rdma_transport::wire::SyncMark;
use serde::Serialize;

/// Where a standby stands with respect to a skipped hole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncSkip {
    /// No hole skipped: restart points close epochs as usual.
    #[default]
    None,
    /// A hole was skipped (or an initial sync began); the sync that began at `begin` has
    /// not ended. `initial`: an initial sync is under way, so no restart point was ever
    /// applied from the primary's whole image.
    Syncing { begin: u64, initial: bool },
    /// The sync that began at `begin` ended at `end`; the next restart point closes the
    /// epoch that makes the image consistent again.
    Ending { begin: u64, end: u64, initial: bool },
}

/// What an engine does with a restart point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpVerdict {
    /// As usual (consecutive epochs).
    Normal,
    /// Inside a skipped sync: not a consistent image; drop it.
    Drop,
    /// The first after the sync ended: closes the merged epoch (its number may jump).
    CloseJump,
}

/// What the engine must do with a marker (delayed mode stages the ones that matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkVerdict {
    /// Nothing changes: the marker can be forgotten.
    Ignore,
    /// The state changed: keep the marker (delayed: stage it) so a restart recovers it.
    Keep,
}

/// Status of the skip, for `bdev_standby_get_status`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct SyncSkipStatus {
    /// "none", "syncing" (hole skipped, sync not ended) or "ending" (ended; the next
    /// restart point makes the image consistent again).
    pub state: &'static str,
    /// LSN of the sync's `Begin` (0: none).
    pub begin_lsn: u64,
    /// LSN of its `End` (0: not seen yet).
    pub end_lsn: u64,
    /// Holes skipped so far.
    pub holes_skipped: u64,
    /// LSNs dropped by skips (missing, or held above the hole).
    pub lsns_skipped: u64,
    /// Restart points dropped because they fell inside a skipped sync.
    pub restart_points_dropped: u64,
    /// The sync is an initial sync: no restart point of the primary's whole image was
    /// ever applied (not a valid failover target).
    pub initial: bool,
}

impl SyncSkip {
    /// A marker in LSN order; `skipped` says the standby skipped a hole to reach this
    /// `Begin` (set by [`crate::StandbyVolume`]).
    pub fn on_mark(&mut self, mark: SyncMark, lsn: u64, skipped: bool) -> MarkVerdict {
        match (mark, *self) {
            (SyncMark::Begin { .. }, _) if skipped => {
                // A second skip inside a sync restarts the wait at the newer sync.
                let initial = self.initial();
                *self = SyncSkip::Syncing { begin: lsn, initial };
                MarkVerdict::Keep
            }
            // The volume held data no LSN wrote: nobody's image is the primary's until the
            // End, whether or not a hole was skipped.
            (SyncMark::Initial, _) => {
                *self = SyncSkip::Syncing {
                    begin: lsn,
                    initial: true,
                };
                MarkVerdict::Keep
            }
            // A full sync covers every block: its End makes any syncing image whole (how a
            // sync cut short, e.g. by a primary restart, is finished).
            (SyncMark::Begin { full: true, .. }, SyncSkip::Syncing { .. } | SyncSkip::Ending { .. }) => {
                let initial = self.initial();
                *self = SyncSkip::Syncing { begin: lsn, initial };
                MarkVerdict::Keep
            }
            (SyncMark::End { begin_lsn }, SyncSkip::Syncing { begin, initial }) if begin_lsn == begin => {
                *self = SyncSkip::Ending {
                    begin,
                    end: lsn,
                    initial,
                };
                MarkVerdict::Keep
            }
            _ => MarkVerdict::Ignore,
        }
    }

    /// A restart point in LSN order.
    pub fn on_rp(&mut self) -> RpVerdict {
        match *self {
            SyncSkip::None => RpVerdict::Normal,
            SyncSkip::Syncing { .. } => RpVerdict::Drop,
            SyncSkip::Ending { .. } => {
                *self = SyncSkip::None;
                RpVerdict::CloseJump
            }
        }
    }

    /// True while the image is not the primary's at any restart point past the last
    /// applied one.
    pub fn active(&self) -> bool {
        *self != SyncSkip::None
    }

    /// A hole skipped by a standby that never applied a restart point (a standby added to a
    /// live volume): no restart point of the primary's is held at all, as in an initial
    /// sync, so it is not a valid failover target until the sync made it whole.
    pub fn never_applied(&mut self) {
        if let SyncSkip::Syncing { begin, .. } = *self {
            *self = SyncSkip::Syncing { begin, initial: true };
        }
    }

    /// True while an initial sync has not made the image whole: the standby never held
    /// the primary's image at a restart point, so it is not a valid failover target.
    pub fn initial(&self) -> bool {
        matches!(
            *self,
            SyncSkip::Syncing { initial: true, .. } | SyncSkip::Ending { initial: true, .. }
        )
    }

    /// The status fields this state fills.
    pub fn status(&self) -> (&'static str, u64, u64) {
        match *self {
            SyncSkip::None => ("none", 0, 0),
            SyncSkip::Syncing { begin, .. } => ("syncing", begin, 0),
            SyncSkip::Ending { begin, end, .. } => ("ending", begin, end),
        }
    }
}

/// Whether a restart point of `epoch` (last LSN `last_lsn`) may follow the previous one
/// (`prev_epoch`, `prev_last_lsn`) under `verdict`.
pub fn epoch_in_order(verdict: RpVerdict, epoch: u64, last_lsn: u64, prev_epoch: u64, prev_last_lsn: u64) -> bool {
    let epoch_ok = match verdict {
        RpVerdict::CloseJump => epoch > prev_epoch,
        _ => epoch == prev_epoch + 1,
    };
    epoch_ok && last_lsn >= prev_last_lsn
}

/// What an engine does with a restart point it is given ([`take_rp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpTake {
    /// Delivered again after a restart: already taken, nothing to do.
    Again,
    /// Inside a skipped sync: not an image of the primary's, dropped.
    Dropped,
    /// The next restart point, in order: take it.
    Next,
}

/// Checks restart point `epoch` (last LSN `last_lsn`) against the last one the engine saw
/// (`seen_epoch`, `seen_last_lsn`, advanced to this one when it is the next) and the skip
/// state. Both engines take restart points by this rule.
pub fn take_rp(
    skip: &mut SyncSkip,
    seen_epoch: &mut u64,
    seen_last_lsn: &mut u64,
    epoch: u64,
    last_lsn: u64,
) -> Result<RpTake, crate::StandbyError> {
    if epoch <= *seen_epoch {
        return Ok(RpTake::Again);
    }
    let verdict = skip.on_rp();
    if verdict == RpVerdict::Drop {
        return Ok(RpTake::Dropped);
    }
    if !epoch_in_order(verdict, epoch, last_lsn, *seen_epoch, *seen_last_lsn) {
        return Err(crate::StandbyError::EpochOrder {
            epoch,
            expected: *seen_epoch + 1,
            last_lsn,
            prev_last_lsn: *seen_last_lsn,
        });
    }
    *seen_epoch = epoch;
    *seen_last_lsn = last_lsn;
    Ok(RpTake::Next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: SyncMark = SyncMark::Begin {
        covers_from: 10,
        full: false,
    };

    #[test]
    fn unskipped_sync_changes_nothing() {
        let mut s = SyncSkip::None;
        assert_eq!(s.on_mark(BEGIN, 50, false), MarkVerdict::Ignore);
        assert_eq!(s.on_rp(), RpVerdict::Normal);
        assert_eq!(
            s.on_mark(SyncMark::End { begin_lsn: 50 }, 90, false),
            MarkVerdict::Ignore
        );
        assert_eq!(s.on_rp(), RpVerdict::Normal);
        assert!(!s.active());
    }

    #[test]
    fn skipped_sync_drops_points_until_after_its_end() {
        let mut s = SyncSkip::None;
        assert_eq!(s.on_mark(BEGIN, 50, true), MarkVerdict::Keep);
        assert!(!s.initial(), "a skipped hole leaves the last applied point valid");
        assert_eq!(s.on_rp(), RpVerdict::Drop);
        // An End of another sync does not end this one.
        assert_eq!(
            s.on_mark(SyncMark::End { begin_lsn: 40 }, 60, false),
            MarkVerdict::Ignore
        );
        assert_eq!(s.on_rp(), RpVerdict::Drop);
        assert_eq!(s.on_mark(SyncMark::End { begin_lsn: 50 }, 90, false), MarkVerdict::Keep);
        assert_eq!(s.status(), ("ending", 50, 90));
        assert_eq!(s.on_rp(), RpVerdict::CloseJump);
        assert_eq!(s.on_rp(), RpVerdict::Normal);
    }

    #[test]
    fn a_skip_by_a_standby_that_never_applied_is_an_initial_sync() {
        let mut s = SyncSkip::None;
        s.on_mark(BEGIN, 50, true);
        s.never_applied();
        assert!(s.initial(), "a new standby added to a live volume holds nothing valid");
        s.on_mark(SyncMark::End { begin_lsn: 50 }, 90, false);
        assert!(s.initial());
        assert_eq!(s.on_rp(), RpVerdict::CloseJump);
        assert!(!s.initial());
    }

    #[test]
    fn a_second_skip_waits_for_the_newer_sync() {
        let mut s = SyncSkip::None;
        s.on_mark(BEGIN, 50, true);
        s.on_mark(BEGIN, 70, true);
        assert_eq!(
            s.on_mark(SyncMark::End { begin_lsn: 50 }, 80, false),
            MarkVerdict::Ignore
        );
        assert_eq!(s.on_rp(), RpVerdict::Drop);
        s.on_mark(SyncMark::End { begin_lsn: 70 }, 90, false);
        assert_eq!(s.on_rp(), RpVerdict::CloseJump);
    }

    #[test]
    fn an_initial_sync_drops_points_even_without_a_skip_and_a_full_sync_finishes_it() {
        let mut s = SyncSkip::None;
        assert_eq!(s.on_mark(SyncMark::Initial, 1, false), MarkVerdict::Keep);
        assert!(s.initial());
        assert_eq!(s.on_rp(), RpVerdict::Drop);
        // Cut short (no End); a later full sync's End makes the image whole.
        let full = SyncMark::Begin {
            covers_from: 1,
            full: true,
        };
        assert_eq!(s.on_mark(full, 40, false), MarkVerdict::Keep);
        assert_eq!(
            s.on_mark(SyncMark::End { begin_lsn: 1 }, 50, false),
            MarkVerdict::Ignore
        );
        assert_eq!(s.on_rp(), RpVerdict::Drop);
        assert_eq!(s.on_mark(SyncMark::End { begin_lsn: 40 }, 60, false), MarkVerdict::Keep);
        assert!(
            s.initial(),
            "still not whole between the End and the next restart point"
        );
        assert_eq!(s.on_rp(), RpVerdict::CloseJump);
        assert!(!s.initial());
        // A full sync when nothing is syncing changes nothing.
        assert_eq!(s.on_mark(full, 70, false), MarkVerdict::Ignore);
        assert_eq!(s.on_rp(), RpVerdict::Normal);
    }

    #[test]
    fn epoch_order_allows_a_jump_only_when_closing() {
        assert!(epoch_in_order(RpVerdict::Normal, 5, 100, 4, 90));
        assert!(!epoch_in_order(RpVerdict::Normal, 7, 100, 4, 90));
        assert!(epoch_in_order(RpVerdict::CloseJump, 7, 100, 4, 90));
        assert!(!epoch_in_order(RpVerdict::CloseJump, 4, 100, 4, 90));
        assert!(!epoch_in_order(RpVerdict::CloseJump, 7, 80, 4, 90));
    }
}
