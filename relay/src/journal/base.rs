//! History bases: how a journal says "I hold nothing between my last record and LSN Y".
//!
//! A relay whose journal lacks LSNs the primary no longer retains (a lost tail, an outage
//! longer than the primary's retention, a relay added to a live volume) is resynced from a
//! base (`docs/replication.md`, "Resync"): the primary sends a `Base { lsn: Y }` frame and
//! the relay journals that frame, as received, as an ordinary frame record covering the
//! LSNs `X+1 ..= Y-1` it skips (X: the journal's last LSN before it). Nothing in the record
//! format or the recovery scan changes: the record has the next sequence number and an LSN
//! range after X, so a journal whose records go `..X, base(X+1..=Y-1), Y, ..` is valid and
//! recovers as such; its durable LSN covers `Y-1` once the base record is durable (the Ack
//! the primary counts from), and readers that want ops (forwarding, gap replies) skip the
//! record because its payload is not an Ops frame, so a GapRequest for LSNs in `(X, Y)` is
//! answered `not_held`.

use rdma_transport::wire::{self, Frame, FrameKind};

use super::{Journal, RecoveryReport};

/// The base LSN a record payload declares, if it is a Base frame.
pub(super) fn base_of(payload: &[u8]) -> Option<u64> {
    if payload.get(1) != Some(&(FrameKind::Base as u8)) {
        return None;
    }
    match wire::parse(payload) {
        Ok(Frame::Base(b)) => Some(b.lsn),
        _ => None,
    }
}

/// Recovery: a base record found at `lsn_last` (it covers up to `base - 1`).
pub(super) fn note_recovered(report: &mut RecoveryReport, payload: &[u8], lsn_last: u64) {
    // The record's LSN range (CRC-checked with it) is what the journal holds to; the
    // frame's LSN says the same when the relay wrote it.
    if base_of(payload).is_some() {
        report.base_lsn = lsn_last.saturating_add(1);
    }
}

impl Journal {
    /// Append path: remembers the base of a Base frame record just appended.
    pub(super) fn note_appended_base(&mut self, frame: &[&[u8]], lsn_last: u64) {
        if frame.len() == 1 && base_of(frame[0]).is_some() {
            self.base_lsn = lsn_last + 1;
        }
    }

    /// The newest history base this journal holds (appended since open, or recovered):
    /// the journal holds no op between the records before its base record and this LSN.
    /// 0 when the journal never had one.
    pub fn base_lsn(&self) -> u64 {
        self.base_lsn
    }

    /// Appends a base record for `base` (a Base frame of `generation`, covering the LSNs
    /// from the journal's end to `base - 1`); `Ok(None)` when the journal already reaches
    /// `base - 1` (nothing is skipped). Back-pressure (`Full`, `Busy`) as for any append.
    pub fn append_base(&mut self, base: u64, generation: u64) -> Result<Option<u64>, super::JournalError> {
        let first = self.lsn_appended + 1;
        if base <= first {
            return Ok(None);
        }
        let hdr = wire::encode_base(&wire::Base { lsn: base, generation });
        self.append_frame(first, base - 1, &[hdr.as_bytes()]).map(Some)
    }
}
