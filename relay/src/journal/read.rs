//! Reading the journal back: forwarding reads whole records through io_uring from a
//! [`ReadCursor`] ([`Journal::submit_read`] / [`Journal::poll_reads`]), each record's CRC
//! checked again; [`Journal::read_range`] is the blocking read for management and tests
//! (`docs/relay-journal.md`).

use engine::buf::DmaBuf;
use io_uring::{opcode, types};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

use super::commit::OP_READ;
use super::record::{self, RecordError, RecordKind};
use super::{io_err, Journal, JournalError, DIRECT_ALIGN_BYTES, READ_BUF_BYTES_MIN};

/// A record read back.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Record sequence number.
    pub seq: u64,
    /// First LSN.
    pub lsn_first: u64,
    /// Last LSN.
    pub lsn_last: u64,
    /// The payload (a replication frame as received).
    pub payload: &'a [u8],
}

/// Where a forwarder stands in the journal: a record boundary in a segment. Advanced by
/// [`ReadDone::for_each_record`]; moved to the next segment by [`Journal::submit_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCursor {
    pub(super) segment_id: u64,
    pub(super) offset: u64,
}

pub(super) struct PendingRead {
    pub(super) buf: DmaBuf,
    pub(super) user_data: u64,
    pub(super) start: ReadCursor,
    /// Bytes before `start.offset` read only to keep O_DIRECT alignment.
    pub(super) skip: usize,
    /// Durable bytes of the segment when the read was submitted (nothing after is trusted).
    pub(super) durable_end: u64,
}

/// A finished read: the buffer comes back with the bytes of whole and partial records from
/// the cursor on. Parse it with [`ReadDone::for_each_record`].
pub struct ReadDone {
    /// From `submit_read`.
    pub user_data: u64,
    /// The caller's buffer, handed back.
    pub buf: DmaBuf,
    /// The read's outcome; on error the buffer holds nothing useful.
    pub result: Result<(), JournalError>,
    pub(super) start: ReadCursor,
    pub(super) skip: usize,
    pub(super) valid: usize,
}

impl ReadDone {
    /// Calls `f` with every whole frame record of the read whose LSNs reach `lsn_from` or
    /// beyond (pads and earlier records skipped), each CRC-checked again, and returns the
    /// cursor after the last whole record: pass it to the next `submit_read`.
    pub fn for_each_record(
        &self,
        lsn_from: u64,
        f: &mut dyn FnMut(RecordView<'_>),
    ) -> Result<ReadCursor, JournalError> {
        if let Err(e) = &self.result {
            return Err(JournalError::Failed(e.to_string()));
        }
        let bytes = &self.buf[self.skip..self.skip + self.valid];
        let mut off = 0usize;
        while off < bytes.len() {
            let rest = &bytes[off..];
            match record::check(rest) {
                Ok((h, payload)) => {
                    if h.kind == RecordKind::Frame && h.lsn_last >= lsn_from {
                        f(RecordView {
                            seq: h.seq,
                            lsn_first: h.lsn_first,
                            lsn_last: h.lsn_last,
                            payload,
                        });
                    }
                    off += h.span().min(rest.len());
                }
                // The read ended inside a record: the next read starts at it.
                Err(RecordError::Truncated { .. } | RecordError::PayloadTruncated { .. }) => break,
                Err(why) => {
                    return Err(JournalError::Corrupt {
                        segment_id: self.start.segment_id,
                        offset: self.start.offset + off as u64,
                        why,
                    })
                }
            }
        }
        Ok(ReadCursor {
            segment_id: self.start.segment_id,
            offset: self.start.offset + off as u64,
        })
    }
}

impl Journal {
    /// A cursor at the start of the oldest live segment that holds LSNs from `lsn` on
    /// (records before `lsn` in it are skipped by `for_each_record`). If the first record
    /// read has `lsn_first > lsn`, the journal no longer (or never) held `lsn`.
    pub fn read_cursor(&self, lsn: u64) -> ReadCursor {
        let seg = self
            .segments
            .iter()
            .find(|s| s.lsn_max >= lsn)
            .unwrap_or_else(|| self.active());
        ReadCursor {
            segment_id: seg.id,
            offset: 0,
        }
    }

    /// Starts an io_uring read of the durable bytes after `cursor` into `buf` (capacity at
    /// least [`READ_BUF_BYTES_MIN`]); the result comes from [`Journal::poll_reads`] after a
    /// later `poll`. Never blocks. Moves `cursor` to the next segment when the current one is
    /// finished. `Ok(Some(buf))`: nothing durable to read yet, buffer handed back.
    pub fn submit_read(
        &mut self,
        cursor: &mut ReadCursor,
        buf: DmaBuf,
        user_data: u64,
    ) -> Result<Option<DmaBuf>, (DmaBuf, JournalError)> {
        if buf.capacity() < READ_BUF_BYTES_MIN {
            let bytes = buf.capacity();
            return Err((buf, JournalError::ReadBufTooSmall { bytes }));
        }
        let Some(ri) = self.reads.iter().position(Option::is_none) else {
            return Err((buf, JournalError::ReadsBusy));
        };
        // Skip finished segments: wholly durable, not the active one.
        let last_id = self.active().id;
        loop {
            let Some(seg) = self.segments.iter().find(|s| s.id == cursor.segment_id) else {
                // Released under the cursor: continue at the oldest live segment.
                match self.segments.front() {
                    Some(f) if f.id > cursor.segment_id => {
                        *cursor = ReadCursor {
                            segment_id: f.id,
                            offset: 0,
                        };
                        continue;
                    }
                    _ => {
                        let segment_id = cursor.segment_id;
                        return Err((buf, JournalError::Released { segment_id }));
                    }
                }
            };
            let finished = seg.id != last_id && seg.durable_len == seg.len;
            if cursor.offset >= seg.durable_len && finished {
                let next = self.segments.iter().find(|s| s.id > seg.id).map_or(last_id, |s| s.id);
                *cursor = ReadCursor {
                    segment_id: next,
                    offset: 0,
                };
                continue;
            }
            break;
        }
        let Some(seg) = self.segments.iter_mut().find(|s| s.id == cursor.segment_id) else {
            let segment_id = cursor.segment_id;
            return Err((buf, JournalError::Released { segment_id }));
        };
        if cursor.offset >= seg.durable_len {
            return Ok(Some(buf));
        }
        let align = DIRECT_ALIGN_BYTES as u64;
        let aligned = cursor.offset / align * align;
        let skip = (cursor.offset - aligned) as usize;
        let want = (seg.durable_len - aligned).div_ceil(align) * align;
        let len = want.min((buf.capacity() as u64) / align * align) as u32;
        let fd = seg.file.as_raw_fd();
        let mut buf = buf;
        let ptr = buf.as_mut_ptr();
        let sqe = opcode::Read::new(types::Fd(fd), ptr, len)
            .offset(aligned)
            .build()
            .user_data(((ri as u64) << 8) | OP_READ);
        let mut sq = self.ring.submission();
        // SAFETY: the kernel writes up to `len` bytes into `buf` (capacity >= len, checked
        // above), which this journal keeps in `self.reads[ri]` untouched until the read's
        // CQE is reaped (`Drop` waits for it). The fd stays open: `release` keeps a segment
        // while `reads_in_flight > 0`.
        let pushed = unsafe { sq.push(&sqe) };
        drop(sq);
        if pushed.is_err() {
            return Err((buf, JournalError::ReadsBusy));
        }
        seg.reads_in_flight += 1;
        let durable_end = seg.durable_len;
        self.reads[ri] = Some(PendingRead {
            buf,
            user_data,
            start: *cursor,
            skip,
            durable_end,
        });
        if let Err(e) = self.ring.submit() {
            self.fail(format!("io_uring_enter failed: {e}"));
        }
        Ok(None)
    }

    pub(super) fn read_completed(&mut self, ri: usize, res: i32) {
        let Some(p) = self.reads.get_mut(ri).and_then(Option::take) else {
            return;
        };
        if let Some(seg) = self.segments.iter_mut().find(|s| s.id == p.start.segment_id) {
            seg.reads_in_flight -= 1;
        }
        let aligned = p.start.offset - p.skip as u64;
        let (result, valid) = if res < 0 {
            let source = io::Error::from_raw_os_error(-res);
            (
                Err(JournalError::Io {
                    op: "read",
                    path: format!("segment {:#x}", p.start.segment_id),
                    source,
                }),
                0,
            )
        } else {
            // Only bytes that were durable at submission are trusted.
            let end = (aligned + res as u64).min(p.durable_end);
            (Ok(()), end.saturating_sub(p.start.offset) as usize)
        };
        // Cannot be full: at most READS_IN_FLIGHT_MAX reads exist.
        self.reads_done.push_back(ReadDone {
            user_data: p.user_data,
            buf: p.buf,
            result,
            start: p.start,
            skip: p.skip,
            valid,
        });
    }

    /// Hands over the reads that completed (reaped by `poll`), in completion order.
    pub fn poll_reads(&mut self, f: &mut dyn FnMut(ReadDone)) -> usize {
        let mut n = 0;
        while let Some(d) = self.reads_done.pop_front() {
            f(d);
            n += 1;
        }
        n
    }

    /// Calls `f` with every durable frame record whose LSN range meets
    /// `lsn_first..=lsn_last`, in LSN order; each record's CRC is verified again on the way.
    /// Management and test path: blocking file reads (forwarding uses `submit_read`).
    /// Returns the number of records given to `f`.
    pub fn read_range(
        &mut self,
        lsn_first: u64,
        lsn_last: u64,
        f: &mut dyn FnMut(RecordView<'_>),
    ) -> Result<usize, JournalError> {
        let mut n = 0;
        let mut prev_end = 0u64;
        for seg in &self.segments {
            if seg.durable_len == 0 || (seg.lsn_max != 0 && seg.lsn_max < lsn_first) {
                continue;
            }
            self.read_buf.clear();
            File::open(&seg.path)
                .and_then(|file| file.take(seg.durable_len).read_to_end(&mut self.read_buf))
                .map_err(io_err("read segment", &seg.path))?;
            let mut off = 0;
            while off < self.read_buf.len() {
                let (h, payload) = match record::check(&self.read_buf[off..]) {
                    Ok(r) => r,
                    Err(e) => {
                        let why = format!("segment {:#x} offset {off}: durable record unreadable: {e}", seg.id);
                        return Err(JournalError::Failed(why));
                    }
                };
                off += h.span();
                if h.kind != RecordKind::Frame || h.lsn_first > self.durable_lsn {
                    continue;
                }
                assert!(h.lsn_first > prev_end, "journal LSNs out of order on read-back");
                prev_end = h.lsn_last;
                if h.lsn_last >= lsn_first && h.lsn_first <= lsn_last {
                    f(RecordView {
                        seq: h.seq,
                        lsn_first: h.lsn_first,
                        lsn_last: h.lsn_last,
                        payload,
                    });
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
