//! The block-device layer.
//!
//! A [`Bdev`] is a named device shared by every reactor (`Arc<dyn Bdev>`,
//! `Send + Sync`). To do I/O, a user opens a [`BdevChannel`] on the reactor
//! that will use it; the channel is that reactor's own queue to the device
//! (a queue pair, an io_uring, a completion list) and is not `Send`.
//!
//! Contract of a channel:
//! - [`BdevChannel::submit`] never completes inline: every accepted request,
//!   including one rejected as invalid, completes in a later
//!   [`BdevChannel::poll`] on the same channel, on the same reactor.
//! - A full queue hands the request back (`Err(request)`): back-pressure, the
//!   caller retries after polling.
//! - Buffers travel by value: a read or write moves its [`DmaBuf`] into the
//!   request and gets it back in the completion, so nothing is copied between
//!   layers and ownership is never ambiguous.
//! - Out-of-range, wrong-size, zero-length or unsupported requests complete
//!   with a [`BdevError`] naming the rule broken; none panics.
//! - Per-channel statistics are counted by the owning reactor without shared
//!   writes; [`Bdev::io_stats`] sums them on demand (management path).

pub mod malloc;
pub mod null;
pub mod restart;
pub mod spec;
pub mod uring;

use crate::buf::DmaBuf;
use crate::reactor;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Most requests a channel holds in flight (queue depth limit per channel).
pub const CHANNEL_QUEUE_DEPTH_MAX: usize = 1024;
/// Invalid requests a channel holds before its next poll reports them.
const REJECTED_MAX: usize = 256;

/// Block operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    WriteZeroes,
    Unmap,
}

impl IoOp {
    pub const ALL: [IoOp; 5] = [IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::WriteZeroes, IoOp::Unmap];

    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::WriteZeroes => "write_zeroes",
            IoOp::Unmap => "unmap",
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BdevError {
    #[error(
        "I/O of {num_blocks} blocks at block {offset_blocks} is beyond the end of bdev (size {size_blocks} blocks)"
    )]
    OutOfRange {
        offset_blocks: u64,
        num_blocks: u32,
        size_blocks: u64,
    },
    #[error("{op} of zero blocks is not a valid request")]
    ZeroLength { op: &'static str },
    #[error("{op} needs a data buffer")]
    NoBuffer { op: &'static str },
    #[error("buffer of {got_bytes} bytes does not match {num_blocks} blocks of {block_size} bytes")]
    WrongSize {
        got_bytes: usize,
        num_blocks: u32,
        block_size: u32,
    },
    #[error("buffer address {addr:#x} is not aligned to {align} bytes")]
    Misaligned { addr: usize, align: usize },
    #[error("bdev {bdev:?} does not support {op}")]
    Unsupported { bdev: String, op: &'static str },
    #[error("I/O error: {0}")]
    Io(String),
    #[error("bdev {0:?} already exists")]
    Exists(String),
    #[error("no bdev named {0:?}")]
    NotFound(String),
    #[error("invalid bdev parameter {param}: {why}")]
    InvalidParam { param: &'static str, why: String },
    #[error("cannot open {path:?}: {why}")]
    Open { path: String, why: String },
    #[error("cannot create a channel: {0}")]
    Channel(String),
}

impl BdevError {
    /// The negative errno SPDK would report for this error (JSON-RPC codes
    /// and NVMe status mapping start from it).
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::Exists(_) => -libc::EEXIST,
            BdevError::NotFound(_) => -libc::ENODEV,
            BdevError::Unsupported { .. } => -libc::ENOTSUP,
            BdevError::Io(_) | BdevError::Channel(_) => -libc::EIO,
            BdevError::Open { .. } => -libc::ENOENT,
            _ => -libc::EINVAL,
        }
    }
}

/// One block request.
#[derive(Debug)]
pub struct IoRequest {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u32,
    /// The data buffer: required for read and write, exactly
    /// `num_blocks * block_size` bytes long; ignored otherwise.
    pub buf: Option<DmaBuf>,
    /// Returned untouched in the completion.
    pub user_data: u64,
}

/// The completion of one request, with its buffer handed back.
#[derive(Debug)]
pub struct IoCompletion {
    pub user_data: u64,
    pub result: Result<(), BdevError>,
    pub buf: Option<DmaBuf>,
}

/// What a back end implements per channel. The [`BdevChannel`] wrapper has
/// already validated the request against the bdev's geometry.
pub trait ChannelBackend {
    /// Queues a valid request; `Err` hands it back when the queue is full.
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest>;
    /// Reports finished requests through `f`; returns how many.
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize;
}

/// Completions of a back end that finishes I/O at submit time (RAM, null):
/// held until the next poll so nothing completes inline, bounded at the
/// channel queue depth.
pub struct DoneQueue {
    done: VecDeque<IoCompletion>,
}

impl Default for DoneQueue {
    fn default() -> Self {
        DoneQueue {
            done: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
        }
    }
}

impl DoneQueue {
    pub fn is_full(&self) -> bool {
        self.done.len() == self.done.capacity()
    }

    /// Records a successful completion of `io`, handing its buffer back.
    #[inline]
    pub fn complete(&mut self, io: IoRequest) {
        debug_assert!(!self.is_full(), "caller checks is_full before submitting");
        self.done.push_back(IoCompletion {
            user_data: io.user_data,
            result: Ok(()),
            buf: io.buf,
        });
    }

    /// Reports every held completion through `f`.
    #[inline]
    pub fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let n = self.done.len();
        for c in self.done.drain(..) {
            f(c);
        }
        n
    }
}

/// I/O statistics of a bdev (SPDK `bdev_get_iostat` names). Operations are
/// counted when accepted by a channel; errors when they complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    pub bytes_read: u64,
    pub num_read_ops: u64,
    pub bytes_written: u64,
    pub num_write_ops: u64,
    pub bytes_unmapped: u64,
    pub num_unmap_ops: u64,
    pub bytes_write_zeroes: u64,
    pub num_write_zeroes_ops: u64,
    pub num_flush_ops: u64,
    pub num_errors: u64,
}

/// One channel's counters: written only by the channel's reactor (relaxed
/// stores on its own cache lines), read by anyone.
#[derive(Default)]
pub struct ChannelStats {
    bytes_read: AtomicU64,
    num_read_ops: AtomicU64,
    bytes_written: AtomicU64,
    num_write_ops: AtomicU64,
    bytes_unmapped: AtomicU64,
    num_unmap_ops: AtomicU64,
    bytes_write_zeroes: AtomicU64,
    num_write_zeroes_ops: AtomicU64,
    num_flush_ops: AtomicU64,
    num_errors: AtomicU64,
}

#[inline]
fn bump(a: &AtomicU64, n: u64) {
    // Single writer: a load and a store, no read-modify-write bus lock.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The per-bdev list of its channels' counters, summed on demand.
#[derive(Default)]
pub struct StatsSet {
    channels: Mutex<Vec<Arc<ChannelStats>>>,
}

impl StatsSet {
    /// Counters for a new channel (management path: takes a lock).
    pub fn new_channel(&self) -> Arc<ChannelStats> {
        let s = Arc::new(ChannelStats::default());
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).push(s.clone());
        s
    }

    pub fn sum(&self) -> IoStats {
        let mut t = IoStats::default();
        for c in self.channels.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.bytes_read += l(&c.bytes_read);
            t.num_read_ops += l(&c.num_read_ops);
            t.bytes_written += l(&c.bytes_written);
            t.num_write_ops += l(&c.num_write_ops);
            t.bytes_unmapped += l(&c.bytes_unmapped);
            t.num_unmap_ops += l(&c.num_unmap_ops);
            t.bytes_write_zeroes += l(&c.bytes_write_zeroes);
            t.num_write_zeroes_ops += l(&c.num_write_zeroes_ops);
            t.num_flush_ops += l(&c.num_flush_ops);
            t.num_errors += l(&c.num_errors);
        }
        t
    }
}

/// Size and capabilities a channel validates against.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    /// Buffer address alignment the back end needs (O_DIRECT: block size).
    pub buf_align: usize,
    /// Bit `op as usize` set when the op is supported.
    pub ops: u8,
}

impl Geometry {
    pub fn new(block_size: u32, num_blocks: u64, buf_align: usize, ops: &[IoOp]) -> Geometry {
        Geometry {
            block_size,
            num_blocks,
            buf_align,
            ops: ops.iter().fold(0, |m, &o| m | 1 << (o as u8)),
        }
    }

    pub fn supports(&self, op: IoOp) -> bool {
        self.ops & (1 << op as u8) != 0
    }
}

/// What a bdev says about itself: identity, size and the operations it takes. Fixed when
/// the bdev is made; an implementation keeps one and returns it from [`Bdev::info`], and
/// the trait's accessors read it.
#[derive(Debug, Clone)]
pub struct BdevInfo {
    pub name: String,
    /// SPDK's `product_name` ("Malloc disk", "Null disk", "URING bdev").
    pub product_name: &'static str,
    /// Back end name as used in `bdev_<driver>_create`.
    pub driver: &'static str,
    pub uuid: [u8; 16],
    pub block_size: u32,
    pub num_blocks: u64,
    /// Bit `op as usize` set when the op is supported (as in [`Geometry`]).
    pub ops: u8,
}

impl BdevInfo {
    pub fn new(
        name: &str,
        product_name: &'static str,
        driver: &'static str,
        uuid: [u8; 16],
        block_size: u32,
        num_blocks: u64,
        ops: &[IoOp],
    ) -> BdevInfo {
        BdevInfo {
            name: name.to_string(),
            product_name,
            driver,
            uuid,
            block_size,
            num_blocks,
            ops: Geometry::new(block_size, num_blocks, 1, ops).ops,
        }
    }

    /// A bdev wrapping `inner` under its own name, product and driver: `inner`'s uuid, size
    /// and operations.
    pub fn wrapping(inner: &dyn Bdev, name: &str, product_name: &'static str, driver: &'static str) -> BdevInfo {
        let i = inner.info();
        BdevInfo {
            name: name.to_string(),
            product_name,
            driver,
            ..i.clone()
        }
    }

    pub fn supports(&self, op: IoOp) -> bool {
        self.ops & (1 << op as u8) != 0
    }

    /// The geometry a channel of this bdev validates against, for buffers aligned to
    /// `buf_align`.
    pub fn geometry(&self, buf_align: usize) -> Geometry {
        Geometry {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            buf_align,
            ops: self.ops,
        }
    }
}

/// A block device. Shared by all reactors; see the module docs.
pub trait Bdev: Send + Sync {
    /// Name, product, driver, uuid, size and operations: what the accessors below read.
    fn info(&self) -> &BdevInfo;
    fn name(&self) -> &str {
        &self.info().name
    }
    /// SPDK's `product_name` ("Malloc disk", "Null disk", "URING bdev").
    fn product_name(&self) -> &str {
        self.info().product_name
    }
    /// Back end name as used in `bdev_<driver>_create`.
    fn driver(&self) -> &'static str {
        self.info().driver
    }
    fn uuid(&self) -> [u8; 16] {
        self.info().uuid
    }
    fn block_size(&self) -> u32 {
        self.info().block_size
    }
    fn num_blocks(&self) -> u64 {
        self.info().num_blocks
    }
    fn supports(&self, op: IoOp) -> bool {
        self.info().supports(op)
    }
    /// Opens a channel for the calling reactor.
    fn open_channel(&self) -> Result<BdevChannel, BdevError>;
    fn io_stats(&self) -> IoStats;
    /// The JSON-RPC method and parameters that recreate this bdev, for
    /// `save_config`; `None` (the default) for bdevs created by something else.
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
    /// Every call that recreates this bdev, in replay order, for `save_config` (default: the
    /// one of [`Bdev::config`]). A bdev made by several calls (a controller attached through
    /// several paths) lists them all.
    fn config_entries(&self) -> Vec<(&'static str, serde_json::Value)> {
        self.config().into_iter().collect()
    }
    /// Back-end details for `bdev_get_bdevs`' `driver_specific`.
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::Value::Object(Default::default())
    }
}

/// A reactor's queue to one bdev. Not `Send`: use it on the reactor that
/// opened it.
pub struct BdevChannel {
    backend: Box<dyn ChannelBackend>,
    geometry: Geometry,
    name: Arc<str>,
    stats: Arc<ChannelStats>,
    rejected: VecDeque<IoCompletion>,
    outstanding: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl BdevChannel {
    /// Wraps a back end's channel (back ends call this from `open_channel`).
    pub fn new(
        name: &str,
        geometry: Geometry,
        stats: Arc<ChannelStats>,
        backend: Box<dyn ChannelBackend>,
    ) -> BdevChannel {
        BdevChannel {
            backend,
            geometry,
            name: Arc::from(name),
            stats,
            rejected: VecDeque::with_capacity(REJECTED_MAX),
            outstanding: 0,
            _not_send: std::marker::PhantomData,
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn validate(&self, io: &IoRequest) -> Result<(), BdevError> {
        let g = &self.geometry;
        if !g.supports(io.op) {
            return Err(BdevError::Unsupported {
                bdev: self.name.to_string(),
                op: io.op.name(),
            });
        }
        if io.op == IoOp::Flush {
            return Ok(());
        }
        if io.num_blocks == 0 {
            return Err(BdevError::ZeroLength { op: io.op.name() });
        }
        let end = io.offset_blocks.checked_add(io.num_blocks as u64);
        if end.is_none_or(|e| e > g.num_blocks) {
            return Err(BdevError::OutOfRange {
                offset_blocks: io.offset_blocks,
                num_blocks: io.num_blocks,
                size_blocks: g.num_blocks,
            });
        }
        if matches!(io.op, IoOp::Read | IoOp::Write) {
            let buf = io.buf.as_ref().ok_or(BdevError::NoBuffer { op: io.op.name() })?;
            let want = io.num_blocks as u64 * g.block_size as u64;
            if buf.len() as u64 != want {
                return Err(BdevError::WrongSize {
                    got_bytes: buf.len(),
                    num_blocks: io.num_blocks,
                    block_size: g.block_size,
                });
            }
            let addr = buf.as_ptr() as usize;
            if g.buf_align > 1 && !addr.is_multiple_of(g.buf_align) {
                return Err(BdevError::Misaligned {
                    addr,
                    align: g.buf_align,
                });
            }
        }
        Ok(())
    }

    /// Submits a request. `Err(io)` means the queue is full: poll, then retry.
    /// Every `Ok` is followed by exactly one completion from [`Self::poll`].
    #[inline]
    pub fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        if self.outstanding >= CHANNEL_QUEUE_DEPTH_MAX {
            return Err(io);
        }
        if let Err(e) = self.validate(&io) {
            if self.rejected.len() >= REJECTED_MAX {
                return Err(io);
            }
            self.rejected.push_back(IoCompletion {
                user_data: io.user_data,
                result: Err(e),
                buf: io.buf,
            });
            self.outstanding += 1;
            reactor::io_started();
            return Ok(());
        }
        let (op, bytes) = (io.op, io.num_blocks as u64 * self.geometry.block_size as u64);
        self.backend.submit(io)?;
        let s = &self.stats;
        match op {
            IoOp::Read => {
                bump(&s.num_read_ops, 1);
                bump(&s.bytes_read, bytes);
            }
            IoOp::Write => {
                bump(&s.num_write_ops, 1);
                bump(&s.bytes_written, bytes);
            }
            IoOp::Unmap => {
                bump(&s.num_unmap_ops, 1);
                bump(&s.bytes_unmapped, bytes);
            }
            IoOp::WriteZeroes => {
                bump(&s.num_write_zeroes_ops, 1);
                bump(&s.bytes_write_zeroes, bytes);
            }
            IoOp::Flush => bump(&s.num_flush_ops, 1),
        }
        self.outstanding += 1;
        reactor::io_started();
        Ok(())
    }

    /// Reaps completed requests, calling `f` for each; returns how many.
    #[inline]
    pub fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.rejected.pop_front() {
            bump(&self.stats.num_errors, 1);
            n += 1;
            f(c);
        }
        let stats = &self.stats;
        n += self.backend.poll(&mut |c: IoCompletion| {
            if c.result.is_err() {
                bump(&stats.num_errors, 1);
            }
            f(c)
        });
        self.outstanding -= n;
        for _ in 0..n {
            reactor::io_finished();
        }
        n
    }

    /// Requests accepted and not yet reported by `poll`.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        // A channel dropped with I/O in flight abandons it; the reactor must
        // not wait for completions that will never be reaped.
        for _ in 0..self.outstanding {
            reactor::io_finished();
        }
        if self.outstanding > 0 {
            log::warn!(
                "bdev {}: channel closed with {} I/O in flight",
                self.name,
                self.outstanding
            );
        }
    }
}

static REGISTRY: Mutex<BTreeMap<String, Arc<dyn Bdev>>> = Mutex::new(BTreeMap::new());

/// Adds a bdev to the process's registry. Management path.
pub fn register(b: Arc<dyn Bdev>) -> Result<(), BdevError> {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if r.contains_key(b.name()) {
        return Err(BdevError::Exists(b.name().to_string()));
    }
    r.insert(b.name().to_string(), b);
    Ok(())
}

/// Removes a bdev from the registry. Channels already open keep working
/// until closed; new lookups no longer find it.
pub fn unregister(name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name)
        .ok_or_else(|| BdevError::NotFound(name.to_string()))
}

pub fn lookup(name: &str) -> Option<Arc<dyn Bdev>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
}

/// All registered bdevs, by name.
pub fn list() -> Vec<Arc<dyn Bdev>> {
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect()
}

/// A random (version 4) UUID, for bdevs created without one.
pub fn new_uuid() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(crate::clock::now_ns() ^ i as u64);
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// `8-4-4-4-12` lowercase hex, as SPDK prints UUIDs.
pub fn uuid_to_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses `8-4-4-4-12` hex (case-insensitive).
pub fn uuid_parse(s: &str) -> Result<[u8; 16], BdevError> {
    let bad = || BdevError::InvalidParam {
        param: "uuid",
        why: format!("{s:?} is not a UUID (expected 8-4-4-4-12 hex digits)"),
    };
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Checks creation parameters every back end shares.
pub(crate) fn check_geometry(name: &str, block_size: u32, num_blocks: u64) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(BdevError::InvalidParam {
            param: "name",
            why: "must not be empty".into(),
        });
    }
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::InvalidParam {
            param: "block_size",
            why: format!("{block_size} is not a power of two between 512 and 65536"),
        });
    }
    if num_blocks == 0 {
        return Err(BdevError::InvalidParam {
            param: "num_blocks",
            why: "must be greater than 0".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip() {
        let u = new_uuid();
        let s = uuid_to_string(&u);
        assert_eq!(uuid_parse(&s).unwrap(), u);
        assert_eq!(u[6] >> 4, 4);
        assert!(uuid_parse("not-a-uuid").is_err());
        assert!(uuid_parse("zzzzzzzz-0000-0000-0000-000000000000").is_err());
        assert_ne!(new_uuid(), new_uuid());
    }

    #[test]
    fn geometry_checks() {
        assert!(check_geometry("a", 512, 1).is_ok());
        assert!(check_geometry("", 512, 1).is_err());
        assert!(check_geometry("a", 1000, 1).is_err());
        assert!(check_geometry("a", 4096, 0).is_err());
    }
}
