//! Executing an NVMe/TCP I/O command: its bdev operations submitted on the queue's
//! channel, their completions reaped, and the command finished once the last one is in
//! (`docs/nvme-tcp.md`).

use super::request::ReqState;
use super::Conn;
use crate::nvmf::channels::QueueChannels;
use crate::nvmf::io::{self, IoCmd};
use crate::spec::Status;
use engine::bdev::{IoCompletion, IoOp, IoRequest};

/// User data bit marking the compare read (lands in `buf2`).
pub(super) const UD_BUF2: u64 = 1 << 32;

impl Conn {
    /// All data is here: submit the command's bdev operations.
    pub(super) fn execute(&mut self, slot: usize) {
        let r = &mut self.reqs[slot];
        let (io, chan) = (&self.io, r.chan);
        let supports = |op| io.supports(chan, op);
        let ud = slot as u64;
        let mut ios: [Option<IoRequest>; 1] = [None];
        match r.cmd {
            IoCmd::Read { slba, nlb, .. } => {
                ios[0] = Some(IoRequest {
                    op: IoOp::Read,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    // Taken before (`driver.rs`).
                    buf: r.buf.take(),
                    user_data: ud,
                });
            }
            IoCmd::Write { slba, nlb, .. } => {
                ios[0] = Some(IoRequest {
                    op: IoOp::Write,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: r.buf.take(),
                    user_data: ud,
                });
            }
            IoCmd::Compare { slba, nlb, .. } => {
                ios[0] = Some(IoRequest {
                    op: IoOp::Read,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: r.buf2.take(),
                    user_data: ud | UD_BUF2,
                });
            }
            IoCmd::RestartPoint { tag_len } => return self.start_restart_point(slot, tag_len),
            IoCmd::Flush => {
                if !supports(IoOp::Flush) {
                    return self.flush_done(slot);
                }
                ios[0] = Some(IoRequest {
                    op: IoOp::Flush,
                    offset_blocks: 0,
                    num_blocks: 0,
                    buf: None,
                    user_data: ud,
                });
            }
            IoCmd::WriteZeroes { slba, nlb } => {
                if !supports(IoOp::WriteZeroes) {
                    return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
                }
                ios[0] = Some(IoRequest {
                    op: IoOp::WriteZeroes,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: None,
                    user_data: ud,
                });
            }
            IoCmd::Dsm { ranges, deallocate } => {
                if !deallocate || !supports(IoOp::Unmap) {
                    return self.complete(slot, Status::SUCCESS, 0, 0);
                }
                return self.execute_dsm(slot, ranges);
            }
        }
        self.set_state(slot, ReqState::Executing { pending: 1 });
        if let Some(io) = ios[0].take() {
            self.submit(slot, io);
        }
    }

    /// Dataset Management with Deallocate: one Unmap per range of the request's data, after
    /// every range is checked against the namespace.
    fn execute_dsm(&mut self, slot: usize, ranges: u32) {
        let r = &self.reqs[slot];
        let data = r.buf.as_deref().unwrap_or(&[]);
        match self.io.unmap_ranges(r.chan, data, ranges, slot as u64) {
            Err(s) => self.complete(slot, s, 0, 0),
            Ok(n) => {
                self.stat(|s| &s.pending_bdev_io, i64::from(n.pending));
                if n.pending == 0 {
                    return self.complete(slot, Status::SUCCESS, 0, 0);
                }
                self.set_state(slot, ReqState::Executing { pending: n.pending });
            }
        }
    }

    pub(super) fn submit(&mut self, slot: usize, io: IoRequest) {
        let chan = self.reqs[slot].chan;
        // Counted whatever the channel did with it: every operation submitted completes
        // once through `poll_bdev` (or `poll_closing`), or is dropped by `close`, and each
        // of those takes it off again.
        self.io.submit(chan, io);
        self.stat(|s| &s.pending_bdev_io, 1);
    }

    /// Reaps bdev completions, finishes their requests, resubmits retried operations.
    pub(super) fn poll_bdev(&mut self) -> bool {
        QueueChannels::poll(
            self,
            |c| &mut c.io,
            |c, done| {
                c.stat(|s| &s.pending_bdev_io, -(done.len() as i64));
                for cpl in done.drain(..) {
                    c.on_bdev_done(cpl);
                }
            },
        )
    }

    pub(super) fn on_bdev_done(&mut self, cpl: IoCompletion) {
        let slot = (cpl.user_data & 0xFFFF_FFFF) as usize;
        let Some(r) = self.reqs.get_mut(slot) else { return };
        let ReqState::Executing { pending } = r.state else {
            return;
        };
        if let Err(e) = &cpl.result {
            let op = match r.cmd {
                IoCmd::Read { .. } | IoCmd::Compare { .. } => IoOp::Read,
                IoCmd::WriteZeroes { .. } => IoOp::WriteZeroes,
                IoCmd::Dsm { .. } => IoOp::Unmap,
                IoCmd::Flush => IoOp::Flush,
                IoCmd::Write { .. } | IoCmd::RestartPoint { .. } => IoOp::Write,
            };
            if r.status.is_success() {
                log::debug!("nvmf: bdev {op:?} failed: {e}");
                r.status = io::status_of(op, e);
            }
        }
        if cpl.user_data & UD_BUF2 != 0 {
            r.buf2 = cpl.buf;
        } else if cpl.buf.is_some() {
            r.buf = cpl.buf;
        }
        // Executing to Executing or Executed: the per-state counts do not change.
        r.state = match pending.saturating_sub(1) {
            0 => ReqState::Executed,
            pending => ReqState::Executing { pending },
        };
        self.advance(slot);
    }

    /// executed: every bdev operation of the request finished: send data and the response.
    pub(super) fn finish(&mut self, slot: usize) {
        let r = &self.reqs[slot];
        let status = r.status;
        if status.is_success() && r.cmd == IoCmd::Flush {
            return self.flush_done(slot);
        }
        self.stat(|s| &s.completed_nvme_io, 1);
        if !status.is_success() {
            return self.complete(slot, status, 0, 0);
        }
        match r.cmd {
            IoCmd::Read { bytes, .. } => {
                let success = self.opts.c2h_success;
                self.send_c2h(slot, bytes, success);
                if success {
                    self.release(slot);
                } else {
                    self.complete(slot, Status::SUCCESS, 0, 0);
                }
            }
            IoCmd::Compare { .. } => {
                let same = match (r.buf.as_deref(), r.buf2.as_deref()) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                self.complete(slot, if same { Status::SUCCESS } else { Status::COMPARE_FAILURE }, 0, 0)
            }
            _ => self.complete(slot, Status::SUCCESS, 0, 0),
        }
    }

    /// The local flush is done (or the bdev has none): complete, or, on a namespace whose
    /// sink makes Flush a restart point, declare one with an empty tag first.
    pub(super) fn flush_done(&mut self, slot: usize) {
        let chan = self.reqs[slot].chan;
        if self.io.sink(chan).is_some_and(|s| s.flush_is_restart_point()) {
            return self.start_restart_point(slot, 0);
        }
        self.stat(|s| &s.completed_nvme_io, 1);
        self.complete(slot, Status::SUCCESS, 0, 0)
    }
}
