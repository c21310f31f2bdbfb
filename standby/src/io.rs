//! A bdev channel with a backlog, as the standby's state machines use it.
//!
//! [`Dev`] wraps one [`BdevChannel`] opened on the reactor that owns the
//! standby volume. Requests that do not fit in the channel's queue wait in a
//! backlog and are submitted on the next [`Dev::poll`], so a state machine can
//! issue a whole phase of I/O at once and count completions. The `sync_*`
//! helpers spin on the channel until one request completes: they are for the
//! management path only (open, recovery, promotion), never the data path.

use crate::StandbyError;
use engine::bdev::{Bdev, BdevChannel, BdevError, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use std::collections::VecDeque;
use std::sync::Arc;

/// How many spins a synchronous helper waits before it declares the device
/// stuck (each spin is one poll of the channel; yields in between).
const SYNC_SPINS_MAX: u64 = 100_000_000;

pub(crate) struct Dev {
    pub bdev: Arc<dyn Bdev>,
    ch: BdevChannel,
    backlog: VecDeque<IoRequest>,
    inflight: usize,
    pub block_size: u32,
    pub num_blocks: u64,
}

impl Dev {
    /// Opens a channel on the calling thread.
    pub fn open(bdev: Arc<dyn Bdev>) -> Result<Dev, StandbyError> {
        let ch = bdev.open_channel().map_err(|e| StandbyError::Bdev {
            bdev: bdev.name().to_string(),
            source: e,
        })?;
        Ok(Dev {
            block_size: bdev.block_size(),
            num_blocks: bdev.num_blocks(),
            bdev,
            ch,
            backlog: VecDeque::new(),
            inflight: 0,
        })
    }

    pub fn name(&self) -> &str {
        self.bdev.name()
    }

    /// The geometry an engine needs of its own bdev (`self`, called `role` in errors)
    /// beside the one it serves with (`other`, called `other_role`): the same block size,
    /// and at least `min_blocks` blocks.
    pub fn check_beside(&self, role: &str, other: &Dev, other_role: &str, min_blocks: u64) -> Result<(), StandbyError> {
        if self.block_size != other.block_size {
            return Err(StandbyError::Geometry(format!(
                "{role} {} has {}-byte blocks, {other_role} {} has {}-byte blocks: they must match",
                self.name(),
                self.block_size,
                other.name(),
                other.block_size
            )));
        }
        if self.num_blocks < min_blocks {
            return Err(StandbyError::Geometry(format!(
                "{role} {} has {} blocks: too small",
                self.name(),
                self.num_blocks
            )));
        }
        Ok(())
    }

    /// Queues a request; it completes through a later [`Dev::poll`].
    pub fn submit(&mut self, req: IoRequest) {
        self.backlog.push_back(req);
        self.inflight += 1;
    }

    pub fn write(&mut self, offset_blocks: u64, buf: DmaBuf, user_data: u64) {
        let num_blocks = (buf.len() / self.block_size as usize) as u32;
        self.submit(IoRequest {
            op: IoOp::Write,
            offset_blocks,
            num_blocks,
            buf: Some(buf),
            user_data,
        });
    }

    pub fn read(&mut self, offset_blocks: u64, num_blocks: u32, user_data: u64) {
        let buf = DmaBuf::recycled(num_blocks as usize * self.block_size as usize);
        self.submit(IoRequest {
            op: IoOp::Read,
            offset_blocks,
            num_blocks,
            buf: Some(buf),
            user_data,
        });
    }

    pub fn flush(&mut self, user_data: u64) {
        self.submit(IoRequest {
            op: IoOp::Flush,
            offset_blocks: 0,
            num_blocks: 0,
            buf: None,
            user_data,
        });
    }

    /// Zeroes a range: unmap when `dealloc` and supported (reads return
    /// zeroes on every back end we have), else write-zeroes.
    pub fn zero(&mut self, offset_blocks: u64, num_blocks: u32, dealloc: bool, user_data: u64) {
        let op = if dealloc && self.bdev.supports(IoOp::Unmap) {
            IoOp::Unmap
        } else {
            IoOp::WriteZeroes
        };
        self.submit(IoRequest {
            op,
            offset_blocks,
            num_blocks,
            buf: None,
            user_data,
        });
    }

    fn pump(&mut self) {
        while let Some(r) = self.backlog.pop_front() {
            if let Err(r) = self.ch.submit(r) {
                self.backlog.push_front(r);
                break;
            }
        }
    }

    /// Submits the backlog and reaps completions through `f`.
    pub fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.pump();
        let n = self.ch.poll(f);
        self.inflight -= n;
        if n > 0 {
            self.pump();
        }
        n
    }

    /// Requests queued or in flight.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    fn sync(&mut self, req: IoRequest) -> Result<Option<DmaBuf>, StandbyError> {
        assert_eq!(self.inflight, 0, "sync I/O on a device with async I/O in flight");
        self.submit(req);
        let mut out = None;
        let mut spins = 0u64;
        while out.is_none() {
            self.poll(&mut |c| out = Some(c));
            spins += 1;
            if spins > SYNC_SPINS_MAX {
                return Err(StandbyError::Bdev {
                    bdev: self.name().to_string(),
                    source: BdevError::Io("request did not complete".into()),
                });
            }
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        let c = out.expect("loop exits with a completion");
        c.result.map_err(|e| StandbyError::Bdev {
            bdev: self.name().to_string(),
            source: e,
        })?;
        Ok(c.buf)
    }

    pub fn sync_read(&mut self, offset_blocks: u64, num_blocks: u32) -> Result<DmaBuf, StandbyError> {
        let buf = DmaBuf::alloc(num_blocks as usize * self.block_size as usize);
        let b = self.sync(IoRequest {
            op: IoOp::Read,
            offset_blocks,
            num_blocks,
            buf: Some(buf),
            user_data: 0,
        })?;
        Ok(b.expect("read hands its buffer back"))
    }

    pub fn sync_write(&mut self, offset_blocks: u64, buf: DmaBuf) -> Result<(), StandbyError> {
        let num_blocks = (buf.len() / self.block_size as usize) as u32;
        self.sync(IoRequest {
            op: IoOp::Write,
            offset_blocks,
            num_blocks,
            buf: Some(buf),
            user_data: 0,
        })
        .map(|_| ())
    }

    pub fn sync_flush(&mut self) -> Result<(), StandbyError> {
        self.sync(IoRequest {
            op: IoOp::Flush,
            offset_blocks: 0,
            num_blocks: 0,
            buf: None,
            user_data: 0,
        })
        .map(|_| ())
    }

    /// Waits for every queued request (management path), discarding results.
    pub fn drain(&mut self) {
        let mut spins = 0u64;
        while self.inflight > 0 && spins < SYNC_SPINS_MAX {
            self.poll(&mut |_| {});
            spins += 1;
        }
    }
}
