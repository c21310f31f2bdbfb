//! One reactor's I/O queue pair of the host bdev, and what it does when the queue pair
//! fails. Without reconnect (`ctrlr_loss_timeout_sec` 0) it completes what it had in flight
//! and every later request with an error. With reconnect, commands the dead queue pair
//! never answered are kept (with their buffers) and queued, new requests queue behind them,
//! and once the recovery thread (`bdev.rs`) has a new controller and a queue pair for this
//! channel, the channel takes it and resubmits everything in order. The queue fails instead
//! when `fast_io_fail_timeout_sec` or `ctrlr_loss_timeout_sec` has passed.
//!
//! Nothing here blocks, allocates per I/O or waits on a lock: the tables are sized once,
//! and the hand-over of a new queue pair is a `try_lock` on the failure path only.

use super::{cmd, Data, HostCompletion, HostError, Qpair};
use crate::spec::{Sqe, Status};
use engine::bdev::{BdevError, ChannelBackend, IoCompletion, IoOp, IoRequest, CHANNEL_QUEUE_DEPTH_MAX};
use engine::buf::DmaBuf;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Marks tokens of commands whose wire buffer is ours (unmap ranges), not the caller's.
/// The engine's callers use small slot indices as tokens; a token with this bit set is
/// refused up front (see `submit`).
const UNMAP_TAG: u64 = 1 << 63;

/// Status code type of path related statuses (ANA states, transport errors).
const PATH_RELATED_SCT: u8 = 3;

/// What the recovery thread and the channels share.
#[derive(Default)]
pub(crate) struct Shared {
    /// Bumped by every successful reconnect.
    pub generation: AtomicU64,
    /// A channel's queue pair of the current generation failed: reset the controller.
    pub qpair_failed: AtomicBool,
    /// Waiting I/O fails instead of waiting (fast_io_fail passed, or given up).
    pub fail_io: AtomicBool,
    /// `ctrlr_loss_timeout_sec` passed: everything fails from now on.
    pub dead: AtomicBool,
    /// Channels waiting for a queue pair.
    pub wanted: AtomicUsize,
    /// Queue pairs the recovery thread connected for waiting channels, with their generation.
    pub replacements: Mutex<Vec<(u64, Qpair)>>,
    /// Successful reconnects.
    pub reconnects: AtomicU64,
}

/// The request behind a command in flight, to queue it again if the queue pair dies.
#[derive(Clone, Copy)]
struct Inflight {
    op: IoOp,
    slba: u64,
    nlb: u32,
    user: u64,
}

pub(crate) struct HostChannel {
    /// None while waiting for a queue pair from the recovery thread.
    q: Option<Qpair>,
    /// The controller generation `q` belongs to.
    gen: u64,
    nsid: u32,
    shared: std::sync::Arc<Shared>,
    reconnect: bool,
    /// Why the channel failed for good (no reconnect); every request then errors.
    failed: Option<String>,
    /// Error completions waiting for the next poll (never inline).
    errors: VecDeque<IoCompletion>,
    /// Caller buffers of commands that carry none on the wire (flush, write zeroes) or
    /// another (unmap's range list), by CID, handed back at completion.
    held: Vec<Option<DmaBuf>>,
    /// The request behind each CID in flight.
    inflight: Vec<Option<Inflight>>,
    /// Requests waiting for a queue pair (reconnect), oldest first.
    waiting: VecDeque<IoRequest>,
}

fn io_error(s: Status) -> BdevError {
    BdevError::Io(format!("NVMe status {s}"))
}

impl HostChannel {
    /// A channel on `q` (None: wait for one from the recovery thread).
    pub fn new(q: Option<Qpair>, nsid: u32, shared: std::sync::Arc<Shared>, reconnect: bool) -> HostChannel {
        let depth = q.as_ref().map_or(CHANNEL_QUEUE_DEPTH_MAX, |q| q.depth());
        let gen = shared.generation.load(Ordering::Acquire);
        if q.is_none() {
            shared.wanted.fetch_add(1, Ordering::AcqRel);
        }
        HostChannel {
            q,
            gen,
            nsid,
            shared,
            reconnect,
            failed: None,
            errors: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
            held: (0..depth).map(|_| None).collect(),
            inflight: vec![None; depth],
            waiting: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
        }
    }

    fn complete(
        held: &mut [Option<DmaBuf>],
        inflight: &mut [Option<Inflight>],
        c: HostCompletion,
        f: &mut dyn FnMut(IoCompletion),
    ) {
        let cid = usize::from(c.cqe.cid);
        if let Some(p) = inflight.get_mut(cid) {
            *p = None;
        }
        let st = c.status();
        let buf = match held.get_mut(cid).and_then(Option::take) {
            Some(b) => Some(b),
            None if c.user & UNMAP_TAG != 0 => None,
            None => c.buf,
        };
        f(IoCompletion {
            user_data: c.user & !UNMAP_TAG,
            result: if st.is_success() { Ok(()) } else { Err(io_error(st)) },
            buf,
        })
    }

    fn error(&mut self, io: &mut IoRequest, why: String) {
        self.errors.push_back(IoCompletion {
            user_data: io.user_data,
            result: Err(BdevError::Io(why)),
            buf: io.buf.take(),
        });
    }

    /// Why a request cannot be served now, if it cannot.
    fn refusal(&self) -> Option<String> {
        if let Some(f) = &self.failed {
            return Some(format!("queue pair failed: {f}"));
        }
        if self.shared.dead.load(Ordering::Acquire) {
            return Some("controller lost: ctrlr_loss_timeout_sec passed".into());
        }
        if self.q.is_none() && self.shared.fail_io.load(Ordering::Acquire) {
            return Some("controller reconnecting: fast_io_fail_timeout_sec passed".into());
        }
        None
    }

    /// Whether command `cid` has its request on record (to requeue it).
    fn tracked(inflight: &[Option<Inflight>], cid: u16) -> bool {
        inflight.get(usize::from(cid)).is_some_and(Option::is_some)
    }

    /// The request behind command `cid`, taken back with its buffer to be submitted again.
    fn requeue(
        held: &mut [Option<DmaBuf>],
        inflight: &mut [Option<Inflight>],
        cid: u16,
        wire_buf: Option<DmaBuf>,
    ) -> Option<IoRequest> {
        let cid = usize::from(cid);
        let p = inflight.get_mut(cid).and_then(Option::take)?;
        let buf = match held.get_mut(cid).and_then(Option::take) {
            Some(b) => Some(b),
            None if p.op == IoOp::Unmap => None,
            None => wire_buf,
        };
        Some(IoRequest {
            op: p.op,
            offset_blocks: p.slba,
            num_blocks: p.nlb,
            buf,
            user_data: p.user,
        })
    }

    /// The queue pair failed with `e`: requeue what it never answered (reconnect) or fail
    /// it. What completes goes to `errors` (preallocated), reported by the next poll;
    /// requeued commands stay outstanding.
    fn lost(&mut self, e: &HostError) {
        let Some(mut q) = self.q.take() else { return };
        log::warn!("NVMe/{} queue pair {} failed: {e}", q.trtype().as_str(), q.qid());
        let (held, inflight, waiting, errors) =
            (&mut self.held, &mut self.inflight, &mut self.waiting, &mut self.errors);
        let reconnect = self.reconnect;
        q.abort_outstanding(&mut |mut c| {
            let aborted = c.status().same_code(Status::ABORTED_SQ_DELETION);
            if reconnect && aborted && Self::tracked(inflight, c.cqe.cid) {
                // Ahead of anything queued since: these were submitted first.
                if let Some(io) = Self::requeue(held, inflight, c.cqe.cid, c.buf.take()) {
                    waiting.push_front(io);
                    return;
                }
            }
            Self::complete(held, inflight, c, &mut |done| errors.push_back(done));
        });
        q.close();
        if !self.reconnect {
            self.failed = Some(e.to_string());
            return;
        }
        if self.gen == self.shared.generation.load(Ordering::Acquire) {
            self.shared.qpair_failed.store(true, Ordering::Release);
        }
        self.shared.wanted.fetch_add(1, Ordering::AcqRel);
    }

    /// Reports the queued error completions through `f`; returns how many.
    fn drain_errors(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.errors.pop_front() {
            f(c);
            n += 1;
        }
        n
    }

    /// Waiting for a queue pair: take one of the current generation if the recovery thread
    /// has it, then resubmit what waited.
    fn try_resume(&mut self) {
        let gen = self.shared.generation.load(Ordering::Acquire);
        let q = match self.shared.replacements.try_lock() {
            Ok(mut r) => r.iter().position(|(g, _)| *g == gen).map(|i| r.swap_remove(i).1),
            Err(_) => None,
        };
        let Some(q) = q else { return };
        self.shared.wanted.fetch_sub(1, Ordering::AcqRel);
        self.q = Some(q);
        self.gen = gen;
        for _ in 0..self.waiting.len() {
            let Some(io) = self.waiting.pop_front() else { break };
            if let Err(io) = self.submit_now(io) {
                self.waiting.push_front(io);
                break;
            }
        }
    }

    /// Puts `io` on the wire (the queue pair exists and nothing refuses it).
    fn submit_now(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        let Some(q) = self.q.as_mut() else {
            self.waiting.push_back(io);
            return Ok(());
        };
        let (slba, nlb) = (io.offset_blocks, io.num_blocks);
        let (sqe, data, keep, token): (Sqe, Data, Option<DmaBuf>, u64) = match io.op {
            // The channel wrapper checked that reads and writes carry a buffer.
            IoOp::Read => (
                cmd::read(self.nsid, slba, nlb),
                io.buf.take().map_or(Data::None, Data::FromCtrl),
                None,
                io.user_data,
            ),
            IoOp::Write => (
                cmd::write(self.nsid, slba, nlb),
                io.buf.take().map_or(Data::None, Data::ToCtrl),
                None,
                io.user_data,
            ),
            IoOp::Flush => (cmd::flush(self.nsid), Data::None, io.buf.take(), io.user_data),
            IoOp::WriteZeroes => (
                cmd::write_zeroes(self.nsid, slba, nlb),
                Data::None,
                io.buf.take(),
                io.user_data,
            ),
            IoOp::Unmap => (
                cmd::deallocate(self.nsid, 1),
                // Management-rate op: the 16-byte range list is allocated here.
                Data::ToCtrl(cmd::dsm_ranges(&[(slba, nlb)])),
                io.buf.take(),
                io.user_data | UNMAP_TAG,
            ),
        };
        match q.submit(sqe, data, token) {
            Ok(cid) => {
                let cid = usize::from(cid);
                if let Some(slot) = self.held.get_mut(cid) {
                    *slot = keep;
                }
                if let Some(slot) = self.inflight.get_mut(cid) {
                    *slot = Some(Inflight {
                        op: io.op,
                        slba,
                        nlb,
                        user: io.user_data,
                    });
                }
                Ok(())
            }
            Err((e, data)) => {
                io.buf = match data {
                    Data::ToCtrl(b) | Data::FromCtrl(b) if io.op != IoOp::Unmap => Some(b),
                    _ => keep,
                };
                if e == HostError::QueueFull {
                    return Err(io);
                }
                self.lost(&e);
                if self.reconnect {
                    self.waiting.push_back(io);
                } else {
                    self.error(&mut io, e.to_string());
                }
                Ok(())
            }
        }
    }
}

impl ChannelBackend for HostChannel {
    fn submit(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        let why = if io.user_data & UNMAP_TAG != 0 {
            Some("user_data with bit 63 set is reserved by the NVMe/TCP bdev".to_string())
        } else {
            self.refusal()
        };
        if let Some(why) = why {
            if self.errors.len() == self.errors.capacity() {
                return Err(io);
            }
            self.error(&mut io, why);
            return Ok(());
        }
        if self.q.is_none() {
            if self.waiting.len() == self.waiting.capacity() {
                return Err(io);
            }
            self.waiting.push_back(io);
            return Ok(());
        }
        self.submit_now(io)
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let n = self.drain_errors(f);
        if self.failed.is_some() {
            return n;
        }
        if self.q.is_none() {
            if let Some(why) = self.refusal() {
                while let Some(mut io) = self.waiting.pop_front() {
                    self.error(&mut io, why.clone());
                }
                return n + self.drain_errors(f);
            }
            self.try_resume();
        }
        if self.q.is_some() && self.gen != self.shared.generation.load(Ordering::Acquire) {
            // The controller was reset or failed over to another path: this queue pair
            // belongs to the old one.
            self.lost(&HostError::Invalid("the controller moved to a new connection".into()));
            return n + self.drain_errors(f);
        }
        let Some(q) = self.q.as_mut() else { return n };
        let (held, inflight, waiting) = (&mut self.held, &mut self.inflight, &mut self.waiting);
        let reconnect = self.reconnect;
        let mut path_error = None;
        let r = q.poll(&mut |mut c| {
            // A path error (ANA inaccessible, transition, ...): with reconnect, the command
            // goes again once the controller is on a path that can serve it.
            if reconnect && c.status().sct == PATH_RELATED_SCT && Self::tracked(inflight, c.cqe.cid) {
                if let Some(io) = Self::requeue(held, inflight, c.cqe.cid, c.buf.take()) {
                    path_error = Some(c.status());
                    waiting.push_back(io);
                    return;
                }
            }
            Self::complete(held, inflight, c, f)
        });
        match (r, path_error) {
            (Ok(k), None) => n + k,
            (Ok(_), Some(s)) => {
                self.lost(&HostError::Status(s));
                n + self.drain_errors(f)
            }
            (Err(e), _) => {
                self.lost(&e);
                n + self.drain_errors(f)
            }
        }
    }
}

impl Drop for HostChannel {
    fn drop(&mut self) {
        if self.q.is_none() && self.reconnect && self.failed.is_none() {
            self.shared.wanted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
