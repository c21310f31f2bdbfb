//! The request driver of the NVMe/TCP target. [`Conn::advance`] moves a request on from
//! the state it is in; every event of a request (its capsule complete, buffers back in the
//! pools, the last of its host data in, its last bdev operation done) updates the request
//! and calls it, so one match reads as the whole lifecycle. Every state change goes through
//! [`Conn::set_state`], which keeps the poll group's count of requests in each state.
//!
//! Data buffers: a parsed command that needs them takes them (its slot's own buffer when the
//! transfer fits, else the large or huge pool), or waits in the queue's `buf_wait` in
//! `ReqState::NeedBuffer` and is moved on, oldest first, as buffers come back. Nothing
//! allocates, nothing is refused: exhaustion is back-pressure, counted in `buffer_waits`
//! (`docs/nvme-tcp.md`).

use super::request::{BufFor, ReqState};
use super::Conn;
use crate::nvmf::io::IoCmd;
use crate::tcp::pdu;
use engine::buf::DmaBuf;
use std::sync::atomic::{AtomicU64, Ordering};

impl Conn {
    /// Moves the request in `slot` on as far as it can go now:
    ///
    /// - new (its capsule and in-capsule data are in): route it (`dispatch`): Connect, admin
    ///   and authentication commands execute and complete there; an I/O command is parsed
    ///   and needs buffers or executes;
    /// - need_buffer: take them, then send the R2T (transferring) or the bdev read
    ///   (executing); or keep waiting;
    /// - transferring_host_to_controller: once all the host's data is in, execute;
    /// - executing: bdev operations outstanding (their completions count down `pending`);
    /// - executed (the last one is done): send the data and the response (`finish`), or, for
    ///   a Flush that is a restart point, hand it to the sink;
    /// - awaiting_restart_point: the sink's answer or the deadline completes it
    ///   (`restart_point.rs`).
    ///
    /// Completing queues the response (and a read's data) and frees the slot.
    pub(super) fn advance(&mut self, slot: usize) {
        match self.reqs[slot].state {
            ReqState::Free | ReqState::Executing { .. } | ReqState::AwaitRestartPoint => {}
            ReqState::RecvInCapsule => self.dispatch(slot),
            ReqState::NeedBuffer { next } => self.take_buffers(slot, next),
            ReqState::AwaitH2C { received, total } if received == total => self.host_data_in(slot),
            ReqState::AwaitH2C { .. } => {}
            ReqState::Executed => self.finish(slot),
        }
    }

    /// Moves the request in `slot` to `st`, keeping the poll group's per-state counts.
    pub(super) fn set_state(&mut self, slot: usize, st: ReqState) {
        let old = std::mem::replace(&mut self.reqs[slot].state, st);
        let (from, to) = (old.counter(), st.counter());
        if from != to {
            if let Some(s) = &self.stats {
                if let Some(i) = from {
                    add_own(&s.req_states[i], -1);
                }
                if let Some(i) = to {
                    add_own(&s.req_states[i], 1);
                }
            }
        }
    }

    /// The parsed command in `slot` needs data buffers before it can do `next`: take them
    /// and go on, or wait behind the requests already waiting.
    pub(super) fn need_buffers(&mut self, slot: usize, next: BufFor) {
        self.set_state(slot, ReqState::NeedBuffer { next });
        if self.buf_wait.is_empty() {
            self.advance(slot);
            if !matches!(self.reqs[slot].state, ReqState::NeedBuffer { .. }) {
                return;
            }
        }
        // Cannot allocate: the queue has room for every slot (sized at Connect).
        self.buf_wait.push_back(slot);
        self.stat(|s| &s.buffer_waits, 1);
    }

    /// need_buffer: moves the request on if its buffers can be had now, to the R2T (host
    /// data) or to the bdev (read). Leaves it in NeedBuffer otherwise.
    fn take_buffers(&mut self, slot: usize, next: BufFor) {
        if !self.acquire(slot, next) {
            return;
        }
        match next {
            BufFor::H2C => self.send_r2t(slot),
            BufFor::Execute => self.execute(slot),
        }
    }

    /// Retries the waiting requests in order until one still finds no buffer; returns
    /// whether any moved on.
    pub(super) fn retry_buffer_waits(&mut self) -> bool {
        let mut any = false;
        // Off the queue while it moves on (a request that completes at once is released,
        // and release removes its slot from the queue); back at the front if it still waits
        // (no allocation: the room it had is still there).
        while let Some(slot) = self.buf_wait.pop_front() {
            if !matches!(self.reqs[slot].state, ReqState::NeedBuffer { .. }) {
                continue;
            }
            self.advance(slot);
            if matches!(self.reqs[slot].state, ReqState::NeedBuffer { .. }) {
                self.buf_wait.push_front(slot);
                break;
            }
            any = true;
        }
        any
    }

    /// Takes every buffer the request in `slot` needs for `next`, or none of them.
    fn acquire(&mut self, slot: usize, next: BufFor) -> bool {
        let r = &self.reqs[slot];
        let (first, second) = match (next, r.cmd) {
            // A Compare's read buffer is taken with its data buffer.
            (BufFor::H2C, IoCmd::Compare { bytes, .. }) => (r.cmd.host_bytes(), bytes),
            (BufFor::H2C, c) => (c.host_bytes(), 0),
            (BufFor::Execute, IoCmd::Read { bytes, .. }) => (bytes, 0),
            (BufFor::Execute, IoCmd::Compare { bytes, .. }) if r.buf2.is_none() => (0, bytes),
            (BufFor::Execute, _) => (0, 0),
        };
        let Some(b1) = self.take_needed(slot, first) else {
            return false;
        };
        let Some(b2) = self.take_needed(slot, second) else {
            if let Some(b) = b1 {
                self.reqs[slot].give_back(b);
            }
            return false;
        };
        let r = &mut self.reqs[slot];
        if b1.is_some() {
            if let Some(old) = std::mem::replace(&mut r.buf, b1) {
                r.give_back(old);
            }
        }
        if b2.is_some() {
            r.buf2 = b2;
        }
        true
    }

    /// `Some(None)` when `len` is 0 (no buffer needed), `Some(Some(buffer))` when one was
    /// taken, None when the pool is empty for now.
    fn take_needed(&mut self, slot: usize, len: u32) -> Option<Option<DmaBuf>> {
        match len {
            0 => Some(None),
            n => self.take_buf(slot, n).map(Some),
        }
    }

    /// A buffer of `len` bytes for `slot`: its own when that fits and is unused, else from
    /// the pools (None when the pool is empty for now).
    pub(super) fn take_buf(&mut self, slot: usize, len: u32) -> Option<DmaBuf> {
        let r = &mut self.reqs[slot];
        if let Some(own) = r.own.as_ref() {
            if len as usize <= own.capacity() {
                let mut b = r.own.take()?;
                b.set_len(len as usize);
                return Some(b);
            }
        }
        self.pools.take(len)
    }

    /// The request in `slot` has its buffer: ask the host for its data (an R2T whose
    /// transfer tag is the slot).
    fn send_r2t(&mut self, slot: usize) {
        let bytes = self.reqs[slot].cmd.host_bytes();
        self.set_state(
            slot,
            ReqState::AwaitH2C {
                received: 0,
                total: bytes,
            },
        );
        let cid = self.reqs[slot].sqe.cid;
        pdu::encode_r2t(&mut self.tx, cid, slot as u16, 0, bytes, self.dg);
    }
}

/// Adds `d` to a per-state count of the poll group. Only the group's reactor writes these
/// counts (statistics only read them), so a load and a store do: no read-modify-write.
pub(super) fn add_own(a: &AtomicU64, d: i64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add_signed(d), Ordering::Relaxed);
}
