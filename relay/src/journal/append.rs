//! The journal's append path: a record is encoded into the filling staging buffer (one of
//! [`STAGING_BUFFERS`] slots, sealed and padded when full or when the segment rolls over),
//! or on memory media straight into the mapped active segment (`docs/relay-journal.md`).
//! The slots' trip to the disk is in `commit.rs`.

use engine::buf::DmaBuf;
use std::os::fd::AsRawFd;

use super::record::{self, RecordHeader, RecordKind, RECORD_HDR_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use super::{Journal, JournalError, DIRECT_ALIGN_BYTES, STAGING_BUFFERS, STAGING_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// Unused.
    Free,
    /// Appends go here.
    Filling,
    /// Padded and waiting for submission.
    Sealed,
    /// Submitted; `ops_left` linked operations still to complete.
    InFlight { ops_left: u8 },
    /// Written and synced; waits for earlier batches before it counts as durable.
    Done,
}

pub(super) struct Slot {
    pub(super) buf: DmaBuf,
    pub(super) state: SlotState,
    pub(super) len: usize,
    pub(super) seg_id: u64,
    pub(super) fd: i32,
    pub(super) file_off: u64,
    pub(super) seq_last: u64,
    pub(super) lsn_last: u64,
    pub(super) frames: u32,
    /// fdatasync after the write (the segment's `sync`).
    pub(super) sync: bool,
    pub(super) sync_dir: bool,
}

impl Slot {
    /// A free staging slot with its buffer (setup path: allocates).
    pub(super) fn new() -> Slot {
        Slot {
            buf: DmaBuf::alloc(STAGING_BYTES),
            state: SlotState::Free,
            len: 0,
            seg_id: 0,
            fd: -1,
            file_off: 0,
            seq_last: 0,
            lsn_last: 0,
            frames: 0,
            sync: true,
            sync_dir: false,
        }
    }
}

impl Journal {
    /// Appends one record holding `payload` (gathered from the slices) for LSNs
    /// `lsn_first..=lsn_last`; returns its sequence number. Never blocks (except the rare
    /// segment roll-over), never completes inline: the record is durable once
    /// [`Journal::durable_lsn`] reaches `lsn_last`, after some later [`Journal::poll`].
    /// `Full` / `Busy` are back-pressure: nothing was appended.
    pub fn append(&mut self, lsn_first: u64, lsn_last: u64, payload: &[&[u8]]) -> Result<u64, JournalError> {
        self.append_known(lsn_first, lsn_last, payload, None)
    }

    /// [`Journal::append`] of one whole replication frame (envelope first, as
    /// `rdma_transport::wire` encodes it): the record CRC is derived from the body CRC the
    /// frame's envelope carries (verified when the frame was received, or computed when it
    /// was encoded) instead of a second pass over the frame's bytes. Payloads that are not
    /// one whole frame are appended as by `append`.
    pub fn append_frame(&mut self, lsn_first: u64, lsn_last: u64, frame: &[&[u8]]) -> Result<u64, JournalError> {
        let len: usize = frame.iter().map(|p| p.len()).sum();
        let tail = match frame.first().map(|f| rdma_transport::wire::peek_envelope(f)) {
            Some(Ok(Some(env))) if env.frame_len == len => Some((rdma_transport::wire::ENVELOPE_BYTES, env.body_crc)),
            _ => None,
        };
        let seq = self.append_known(lsn_first, lsn_last, frame, tail)?;
        self.note_appended_base(frame, lsn_last);
        Ok(seq)
    }

    pub(super) fn append_known(
        &mut self,
        lsn_first: u64,
        lsn_last: u64,
        payload: &[&[u8]],
        tail: Option<(usize, u32)>,
    ) -> Result<u64, JournalError> {
        if let Some(why) = &self.failed {
            return Err(JournalError::Failed(why.clone()));
        }
        if lsn_first == 0 || lsn_first > lsn_last {
            return Err(JournalError::BadLsnRange { lsn_first, lsn_last });
        }
        if lsn_first <= self.lsn_appended {
            return Err(JournalError::LsnOrder {
                last: self.lsn_appended,
                lsn_first,
            });
        }
        let len: usize = payload.iter().map(|p| p.len()).sum();
        if len > RECORD_PAYLOAD_BYTES_MAX {
            return Err(JournalError::RecordTooLarge { bytes: len });
        }
        let span = record::span(len);
        // Worst case padding a batch can add after this record.
        let need = span + DIRECT_ALIGN_BYTES + RECORD_HDR_BYTES;
        if self.used_bytes + need as u64 > self.cfg.journal_bytes_max {
            self.stats.full += 1;
            return Err(JournalError::Full {
                used_bytes: self.used_bytes,
                need_bytes: need as u64,
                max_bytes: self.cfg.journal_bytes_max,
            });
        }
        if self.memory {
            return self.append_mapped(lsn_first, lsn_last, payload, len, tail);
        }
        let roll = self.active().len > 0 && self.active().len + need as u64 > self.cfg.segment_bytes;
        let fits = self.filling.is_some_and(|i| self.slots[i].len + need <= STAGING_BYTES);
        let needs_slot = roll || !fits;
        if needs_slot && !self.slots.iter().any(|s| s.state == SlotState::Free) {
            self.stats.busy += 1;
            return Err(JournalError::Busy);
        }
        if needs_slot {
            if let Some(i) = self.filling.take() {
                self.seal(i);
            }
        }
        if roll {
            let id = self.active().id + 1;
            self.create_segment(id, 0)?;
        }
        let i = match self.filling {
            Some(i) => i,
            None => self.start_batch(),
        };
        let seq = self.next_seq;
        let h = frame_header(seq, lsn_first, lsn_last, len, self.active().id);
        let slot = &mut self.slots[i];
        let at = slot.len;
        let used = record::encode_into_known_tail(&mut slot.buf[at..], &h, payload, tail);
        slot.len += used;
        slot.seq_last = seq;
        slot.lsn_last = lsn_last;
        slot.frames += 1;
        self.appended(used, lsn_last);
        Ok(seq)
    }

    /// Accounts a record of `used` bytes ending at `lsn_last` just encoded into the active
    /// segment (staged or mapped).
    pub(super) fn appended(&mut self, used: usize, lsn_last: u64) {
        self.next_seq += 1;
        self.lsn_appended = lsn_last;
        self.used_bytes += used as u64;
        self.stats.records_appended += 1;
        if let Some(seg) = self.segments.back_mut() {
            seg.len += used as u64;
            seg.lsn_max = lsn_last;
        }
    }

    /// `append` on memory media: the record is encoded straight into the active segment's
    /// mapping (the one copy of the payload on this path) and reported durable by the next
    /// `poll`. Appends between two polls are bounded like the staging buffers
    /// (`STAGING_BUFFERS * STAGING_BYTES`, then `Busy`).
    pub(super) fn append_mapped(
        &mut self,
        lsn_first: u64,
        lsn_last: u64,
        payload: &[&[u8]],
        len: usize,
        tail: Option<(usize, u32)>,
    ) -> Result<u64, JournalError> {
        let span = record::span(len);
        if self.mem_unpolled + span > STAGING_BUFFERS * STAGING_BYTES {
            self.stats.busy += 1;
            return Err(JournalError::Busy);
        }
        let (active_len, mapped) = {
            let a = self.active();
            (a.len as usize, a.map.as_ref().map_or(0, |m| m.len()))
        };
        if active_len + span > mapped {
            if active_len == 0 {
                // An empty segment too small for this record: map it larger.
                let Some(seg) = self.segments.back_mut() else {
                    return Err(JournalError::Failed("no active segment".into()));
                };
                seg.map = None;
                seg.map = Some(Self::map_segment(&seg.file, &seg.path, span, false)?);
            } else {
                let id = self.active().id + 1;
                self.create_segment(id, span)?;
            }
        }
        let seq = self.next_seq;
        let Some(seg) = self.segments.back_mut() else {
            return Err(JournalError::Failed("no active segment".into()));
        };
        let h = frame_header(seq, lsn_first, lsn_last, len, seg.id);
        let at = seg.len as usize;
        let Some(out) = seg.map.as_mut().and_then(|m| m.slice_mut(at, span)) else {
            // create_segment maps every memory segment at least `span` bytes long.
            return Err(JournalError::Failed(format!(
                "segment {:#x} not mapped at {at}+{span}",
                seg.id
            )));
        };
        let used = record::encode_into_known_tail(out, &h, payload, tail);
        self.appended(used, lsn_last);
        self.mem_pending = Some((seq, lsn_last));
        self.mem_unpolled += used;
        self.mem_unpolled_records += 1;
        Ok(seq)
    }

    /// Takes a free slot as the filling batch of the active segment.
    pub(super) fn start_batch(&mut self) -> usize {
        let (seg_id, fd, off, fresh, sync) = {
            let a = self.active();
            (a.id, a.file.as_raw_fd(), a.len, a.len == 0, a.sync)
        };
        // Caller checked that a slot is free.
        let i = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::Free)
            .expect("a free staging slot");
        let s = &mut self.slots[i];
        s.state = SlotState::Filling;
        s.len = 0;
        s.seg_id = seg_id;
        s.fd = fd;
        s.file_off = off;
        s.frames = 0;
        s.sync = sync;
        // The first batch of a new file also syncs the directory entry.
        s.sync_dir = fresh && sync;
        self.order.push_back(i);
        self.filling = Some(i);
        i
    }

    /// Pads the batch to the alignment O_DIRECT needs and marks it ready to submit.
    pub(super) fn seal(&mut self, i: usize) {
        let align =
            self.segments
                .iter()
                .find(|s| s.id == self.slots[i].seg_id)
                .map_or(record::RECORD_ALIGN_BYTES, |s| {
                    if s.direct {
                        DIRECT_ALIGN_BYTES
                    } else {
                        record::RECORD_ALIGN_BYTES
                    }
                });
        let slot = &mut self.slots[i];
        let rem = slot.len % align;
        let mut pad = 0;
        if rem != 0 {
            let mut gap = align - rem;
            if gap < RECORD_HDR_BYTES {
                gap += align;
            }
            let h = RecordHeader {
                kind: RecordKind::Pad,
                payload_len: (gap - RECORD_HDR_BYTES) as u32,
                seq: 0,
                lsn_first: 0,
                lsn_last: 0,
                segment_id: slot.seg_id,
            };
            let at = slot.len;
            let used = record::encode_into(&mut slot.buf[at..], &h, &[&PAD_ZEROS[..gap - RECORD_HDR_BYTES]]);
            debug_assert_eq!(used, gap);
            slot.len += gap;
            pad = gap;
        }
        slot.state = SlotState::Sealed;
        let seg_id = slot.seg_id;
        self.used_bytes += pad as u64;
        if let Some(seg) = self.segments.iter_mut().find(|s| s.id == seg_id) {
            seg.len += pad as u64;
        }
    }
}

/// The header of a frame record.
pub(super) fn frame_header(
    seq: u64,
    lsn_first: u64,
    lsn_last: u64,
    payload_len: usize,
    segment_id: u64,
) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Frame,
        payload_len: payload_len as u32,
        seq,
        lsn_first,
        lsn_last,
        segment_id,
    }
}

/// Payload of pad records (never more than two alignment units).
pub(super) static PAD_ZEROS: [u8; 2 * DIRECT_ALIGN_BYTES] = [0; 2 * DIRECT_ALIGN_BYTES];
