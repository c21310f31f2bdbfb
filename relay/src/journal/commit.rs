//! The journal's group commit: [`Journal::poll`] reaps io_uring completions, submits each
//! sealed staging buffer as one write linked to one fdatasync (and a directory fsync for a
//! new file), and advances the durable LSN strictly in batch order
//! (`docs/relay-journal.md`).

use io_uring::{opcode, squeue, types};
use std::io;
use std::os::fd::AsRawFd;

use super::append::SlotState;
use super::{Journal, JournalError, URING_ENTRIES};

pub(super) const OP_WRITE: u64 = 0;
pub(super) const OP_FSYNC: u64 = 1;
pub(super) const OP_DIRSYNC: u64 = 2;
pub(super) const OP_READ: u64 = 3;

impl Journal {
    /// Reaps completions, submits staged batches, advances the durable LSN. Never blocks.
    /// Returns the durable LSN after this poll (unchanged when nothing completed).
    pub fn poll(&mut self) -> Result<u64, JournalError> {
        if let Some(why) = &self.failed {
            return Err(JournalError::Failed(why.clone()));
        }
        if let Some((seq, lsn)) = self.mem_pending.take() {
            // Memory media: what the appends since the last poll copied is stored.
            self.durable_lsn = lsn;
            self.durable_seq = seq;
            for seg in self.segments.iter_mut().rev() {
                if seg.durable_len == seg.len {
                    break;
                }
                seg.durable_len = seg.len;
            }
            self.stats.batches_committed += 1;
            self.stats.records_committed += u64::from(self.mem_unpolled_records);
            self.stats.bytes_written += self.mem_unpolled as u64;
            self.mem_unpolled = 0;
            self.mem_unpolled_records = 0;
        }
        self.reap();
        self.advance_durable();
        // Group commit: the filling batch goes out when nothing is in flight.
        let in_flight = self
            .order
            .iter()
            .any(|&i| matches!(self.slots[i].state, SlotState::InFlight { .. }));
        if !in_flight {
            if let Some(i) = self.filling {
                if self.slots[i].frames > 0 {
                    self.filling = None;
                    self.seal(i);
                }
            }
        }
        self.submit_sealed();
        if let Some(why) = &self.failed {
            return Err(JournalError::Failed(why.clone()));
        }
        Ok(self.durable_lsn)
    }

    pub(super) fn reap(&mut self) {
        let mut events: [(u64, i32); URING_ENTRIES as usize] = [(0, 0); URING_ENTRIES as usize];
        let mut n = 0;
        for cqe in self.ring.completion() {
            if n == events.len() {
                break;
            }
            events[n] = (cqe.user_data(), cqe.result());
            n += 1;
        }
        for &(ud, res) in &events[..n] {
            let i = (ud >> 8) as usize;
            let op = ud & 0xFF;
            if op == OP_READ {
                self.read_completed(i, res);
                continue;
            }
            let Some(slot) = self.slots.get_mut(i) else { continue };
            let expected = slot.len as i32;
            let SlotState::InFlight { ops_left } = slot.state else {
                continue;
            };
            slot.state = if ops_left <= 1 {
                SlotState::Done
            } else {
                SlotState::InFlight { ops_left: ops_left - 1 }
            };
            if res < 0 {
                let e = io::Error::from_raw_os_error(-res);
                let what = ["write", "fdatasync", "fsync dir"][op.min(2) as usize];
                self.fail(format!("{what} of segment {:#x} failed: {e}", self.slots[i].seg_id));
            } else if op == OP_WRITE && res != expected {
                self.fail(format!("short write: {res} of {expected} bytes"));
            }
        }
    }

    pub(super) fn advance_durable(&mut self) {
        while let Some(&i) = self.order.front() {
            if self.slots[i].state != SlotState::Done {
                break;
            }
            self.order.pop_front();
            let s = &mut self.slots[i];
            if s.frames > 0 {
                self.durable_lsn = s.lsn_last;
                self.durable_seq = s.seq_last;
            }
            self.stats.batches_committed += 1;
            self.stats.records_committed += u64::from(s.frames);
            self.stats.bytes_written += s.len as u64;
            let end = s.file_off + s.len as u64;
            let seg_id = s.seg_id;
            s.state = SlotState::Free;
            s.len = 0;
            s.frames = 0;
            if let Some(seg) = self.segments.iter_mut().find(|g| g.id == seg_id) {
                seg.durable_len = seg.durable_len.max(end);
            }
        }
    }

    pub(super) fn submit_sealed(&mut self) {
        let mut pushed = false;
        for k in 0..self.order.len() {
            let i = self.order[k];
            if self.slots[i].state != SlotState::Sealed {
                continue;
            }
            let s = &self.slots[i];
            let ops = if s.sync_dir { 3 } else { 2 };
            // Room for the whole chain, or wait for the next poll.
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room < ops {
                break;
            }
            let base = (i as u64) << 8;
            let write = opcode::Write::new(types::Fd(s.fd), s.buf.as_ptr(), s.len as u32)
                .offset(s.file_off)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(base | OP_WRITE);
            let fsync = opcode::Fsync::new(types::Fd(s.fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(base | OP_FSYNC);
            let fsync = if s.sync_dir {
                fsync.flags(squeue::Flags::IO_LINK)
            } else {
                fsync
            };
            let dirsync = opcode::Fsync::new(types::Fd(self.dir.as_raw_fd()))
                .build()
                .user_data(base | OP_DIRSYNC);
            let mut sq = self.ring.submission();
            // SAFETY: the write reads `s.buf`, a heap buffer owned by this journal's slot; the
            // slot stays InFlight (never refilled or freed) until every CQE of the chain is
            // reaped, and `Drop` waits for in-flight chains. The fds belong to segment files
            // that `release` does not close while a slot refers to them.
            let r = unsafe {
                if ops == 3 {
                    sq.push_multiple(&[write, fsync, dirsync])
                } else {
                    sq.push_multiple(&[write, fsync])
                }
            };
            drop(sq);
            if r.is_err() {
                break;
            }
            self.slots[i].state = SlotState::InFlight { ops_left: ops as u8 };
            pushed = true;
        }
        if pushed {
            if let Err(e) = self.ring.submit() {
                self.fail(format!("io_uring_enter failed: {e}"));
            }
        }
    }
}
