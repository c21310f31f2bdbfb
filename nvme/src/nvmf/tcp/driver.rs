//! The request driver of the NVMe/TCP target's data buffers: a parsed command that needs
//! data buffers takes them (its slot's own buffer when the transfer fits, else the large
//! or huge pool), or waits in the queue's `buf_wait` in `ReqState::NeedBuffer` and is
//! moved on, oldest first, as buffers come back. Nothing allocates, nothing is refused:
//! exhaustion is back-pressure, counted in `buffer_waits` (`docs/nvme-tcp.md`).

use super::request::{BufFor, ReqState};
use super::Conn;
use crate::nvmf::io::IoCmd;
use crate::tcp::pdu;
use engine::buf::DmaBuf;

impl Conn {
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

    /// Moves a request waiting for buffers on if they can be had now: to the R2T (host
    /// data) or to the bdev (read). Leaves it in NeedBuffer otherwise.
    pub(super) fn advance(&mut self, slot: usize) {
        let ReqState::NeedBuffer { next } = self.reqs[slot].state else {
            return;
        };
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
        let b1 = match first {
            0 => None,
            n => match self.take_buf(slot, n) {
                Some(b) => Some(b),
                None => return false,
            },
        };
        let b2 = match second {
            0 => None,
            n => match self.take_buf(slot, n) {
                Some(b) => Some(b),
                None => {
                    if let Some(b) = b1 {
                        self.reqs[slot].give_back(b);
                    }
                    return false;
                }
            },
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
