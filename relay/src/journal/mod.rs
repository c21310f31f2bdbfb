//! The relay journal: append-only segment files on non-volatile storage, group-committed
//! through io_uring, holding every frame a relay acknowledges until the standby has it.
//!
//! Where it sits: the relay's reactor receives a primary's Ops frame, calls
//! [`Journal::append`] (which copies the frame into a staging buffer, or on memory media
//! into the mapped segment: the one copy on this path), and keeps polling;
//! [`Journal::poll`] reaps io_uring completions, submits staged batches as one
//! `IORING_OP_WRITE` linked (`IOSQE_IO_LINK`) to one `IORING_OP_FSYNC(DATASYNC)`, and
//! reports the highest LSN made durable. The relay sends the Ack for a frame only once
//! [`Journal::durable_lsn`] covers it (R3: an acknowledged
//! write survives a relay crash). Forwarding reads records back through io_uring with
//! [`Journal::submit_read`] / [`Journal::poll_reads`] from a [`ReadCursor`] (the blocking
//! [`Journal::read_range`] is for management and tests); the standby's SafeUpTo leads to
//! [`Journal::release`], which gives up whole segments (kept as spares for reuse, or deleted).
//!
//! Group commit: while one batch is being written and synced, appends fill the next
//! staging buffer; when the first completes the next goes out whole, so under load one
//! fdatasync covers many frames, and at queue depth 1 a frame goes out at the next poll.
//! Up to [`STAGING_BUFFERS`] batches are in flight; durability is reported strictly in
//! batch order.
//!
//! Files are opened with O_DIRECT where the file system allows it; with O_DIRECT every
//! batch is padded with a pad record to a [`DIRECT_ALIGN_BYTES`] boundary so no
//! acknowledged block is ever rewritten. On a memory file system (tmpfs, ramfs:
//! [`engine::is_memory_fs`]) segments are mapped and `append` encodes each record straight
//! into the mapping (no staging copy, no fdatasync, no io_uring); the next
//! [`Journal::poll`] reports it durable. fdatasync and O_DIRECT are no-ops there, so no
//! guarantee changes (tmpfs holds nothing across power loss either way; `/dev/shm` stands
//! in for the relay's NVRAM), and it takes the io-wq worker hops and the kernel's
//! page-by-page write path out of every record (docs/relay-journal.md, memory media).
//!
//! Threads: a `Journal` is owned by one reactor; every method is called on it. `append`,
//! `poll`, `submit_read`, `poll_reads` and `durable_lsn` never block. `open` (recovery),
//! segment roll-over (one file create per `segment_bytes`), `read_range` and `release` use
//! blocking file calls: open runs before serving, the others are rare or management paths
//! (moving roll-over and release to io_uring OPENAT/UNLINKAT is noted in
//! `docs/relay-journal.md`).
//!
//! This file holds the journal's settings, errors, counters and state ([`Journal`]) with
//! its accessors. The rest, in the order a record lives:
//! - `recovery.rs`: [`Journal::open`], the directory scan that checks every record and
//!   cuts a torn tail.
//! - `append.rs`: [`Journal::append`] into a staging buffer or, on memory media, the mapped
//!   segment.
//! - `commit.rs`: [`Journal::poll`], the group commit (write + fdatasync through io_uring)
//!   and the durable LSN.
//! - `read.rs`: reading records back for forwarding ([`Journal::submit_read`]) and
//!   management ([`Journal::read_range`]).
//! - `segments.rs`: segment and spare files: roll-over, preallocation and
//!   [`Journal::release`].
//! - `record.rs` (the record format), `base.rs` (history bases), `map.rs` (memory
//!   mappings), `lock.rs` (the directory lock).

mod append;
mod base;
mod commit;
pub mod lock;
mod map;
mod read;
pub mod record;
mod recovery;
mod segments;

pub use read::{ReadCursor, ReadDone, RecordView};
pub use recovery::{CutReason, RecoveryReport, TornTail};

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use io_uring::IoUring;

use append::{Slot, SlotState};
use read::PendingRead;
use record::{RecordError, RECORD_HDR_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use segments::{Segment, Spare};

/// Default size at which a segment file is closed and the next one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default bound of the bytes all live segments may hold (`JOURNAL_BYTES_MAX`).
pub const JOURNAL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Released segment files kept for reuse by default (see [`JournalConfig::spare_segments`]).
pub const SPARE_SEGMENTS_DEFAULT: usize = 4;
/// Staging buffers: one filling, the rest in flight.
pub const STAGING_BUFFERS: usize = 4;
/// Bytes of one staging buffer: the largest record plus its padding fits.
pub const STAGING_BYTES: usize = 4 * 1024 * 1024;
/// O_DIRECT alignment of offsets, lengths and buffers.
pub const DIRECT_ALIGN_BYTES: usize = 4096;
/// Reads (forwarding) in flight at once.
pub const READS_IN_FLIGHT_MAX: usize = 4;
/// Smallest buffer `submit_read` takes: any record fits, whatever its alignment.
pub const READ_BUF_BYTES_MIN: usize = STAGING_BYTES;
/// io_uring submission queue entries: 3 per batch at most, plus the reads.
pub const URING_ENTRIES: u32 = (STAGING_BUFFERS * 3 + READS_IN_FLIGHT_MAX) as u32;

const _: () = assert!(STAGING_BYTES >= record::span(RECORD_PAYLOAD_BYTES_MAX) + DIRECT_ALIGN_BYTES + RECORD_HDR_BYTES);

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// Most bytes all live segments may hold; an append beyond it fails with `Full`.
    pub journal_bytes_max: u64,
    /// Segment size at which the next segment starts.
    pub segment_bytes: u64,
    /// Try O_DIRECT (falls back to buffered where the file system refuses it).
    pub direct_io: bool,
    /// Released segment files kept (renamed `spare-*.bjs`) and reused at roll-over instead
    /// of deleting them and creating new ones: appends then land in pages and blocks the
    /// file system has already allocated (no page allocation on tmpfs, no extent allocation
    /// or size change to journal on ext4/xfs). Spares are kept only while live segments
    /// plus spares stay within `journal_bytes_max`.
    pub spare_segments: usize,
    /// Bytes of spare segments `open` creates and fills with zeroes before serving, so the
    /// first appends are reuses too and the space is reserved up front (0: none). Blocks
    /// `open` for as long as writing that much takes. Rounded up to whole segments, bounded
    /// by `journal_bytes_max`.
    pub preallocate_bytes: u64,
}

impl JournalConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            journal_bytes_max: JOURNAL_BYTES_MAX_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            direct_io: true,
            spare_segments: SPARE_SEGMENTS_DEFAULT,
            preallocate_bytes: 0,
        }
    }
}

/// Journal errors. `Full` and `Busy` are back-pressure (retry after the standby confirms /
/// after a poll); `Failed` means an I/O error stopped the journal: nothing more is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Appending would exceed `journal_bytes_max`.
    #[error("journal full: {used_bytes} of {max_bytes} bytes used, record needs {need_bytes}")]
    Full {
        /// Bytes held by live segments.
        used_bytes: u64,
        /// Bytes the record (with worst-case padding) needs.
        need_bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// Every staging buffer is in flight; poll and retry.
    #[error("all {STAGING_BUFFERS} staging buffers busy; poll and retry")]
    Busy,
    /// LSNs must increase from record to record.
    #[error("record LSN {lsn_first} does not follow the last appended LSN {last}")]
    LsnOrder {
        /// Last LSN appended.
        last: u64,
        /// First LSN of the refused record.
        lsn_first: u64,
    },
    /// `lsn_first > lsn_last` or `lsn_first == 0`.
    #[error("bad LSN range {lsn_first}..={lsn_last}")]
    BadLsnRange {
        /// Given.
        lsn_first: u64,
        /// Given.
        lsn_last: u64,
    },
    /// Payload above [`RECORD_PAYLOAD_BYTES_MAX`].
    #[error("record payload of {bytes} bytes above {RECORD_PAYLOAD_BYTES_MAX}")]
    RecordTooLarge {
        /// Given.
        bytes: usize,
    },
    /// A file or io_uring call failed.
    #[error("journal {op} on {path}: {source}")]
    Io {
        /// Which call.
        op: &'static str,
        /// File involved.
        path: String,
        /// OS error.
        source: io::Error,
    },
    /// Another journal (another relay, or another journal of this one) holds the
    /// directory's lock ([`lock::DirLock`]).
    #[error(
        "journal directory {dir} is in use by another relay ({}); each relay needs its own --journal-dir",
        lock::holder(.pid)
    )]
    InUse {
        /// The directory.
        dir: String,
        /// The holder's PID, as it wrote it in the lock file (`None`: not written yet).
        pid: Option<u32>,
    },
    /// The configuration is out of range (checked by [`JournalConfig::validate`]).
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    /// The journal stopped after an I/O error; reopen to recover.
    #[error("journal failed earlier: {0}")]
    Failed(String),
    /// A read names a segment that `release` already deleted.
    #[error("segment {segment_id:#x} was released")]
    Released {
        /// The segment.
        segment_id: u64,
    },
    /// A read buffer below [`READ_BUF_BYTES_MIN`].
    #[error("read buffer of {bytes} bytes below {READ_BUF_BYTES_MIN}")]
    ReadBufTooSmall {
        /// Capacity given.
        bytes: usize,
    },
    /// [`READS_IN_FLIGHT_MAX`] reads already in flight; poll and retry.
    #[error("{READS_IN_FLIGHT_MAX} reads already in flight")]
    ReadsBusy,
    /// A durable record read back fails its check: the medium lost data.
    #[error("segment {segment_id:#x} offset {offset}: durable record unreadable: {why}")]
    Corrupt {
        /// Segment.
        segment_id: u64,
        /// Offset of the record.
        offset: u64,
        /// What the check said.
        why: RecordError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Frame records appended.
    pub records_appended: u64,
    /// Batches made durable (one write + one fdatasync each).
    pub batches_committed: u64,
    /// Frame records made durable.
    pub records_committed: u64,
    /// Bytes written (padding included).
    pub bytes_written: u64,
    /// Appends refused with `Full`.
    pub full: u64,
    /// Appends refused with `Busy`.
    pub busy: u64,
    /// Segments given up by `release` (deleted or kept as spares).
    pub segments_released: u64,
    /// Segments started by creating a new file.
    pub segments_created: u64,
    /// Segments started by reusing a spare file.
    pub segments_recycled: u64,
}

/// The relay journal. See the module documentation.
pub struct Journal {
    cfg: JournalConfig,
    ring: IoUring,
    dir: File,
    /// The directory is on tmpfs/ramfs (checked once at open): segments get no fdatasync.
    memory: bool,
    segments: VecDeque<Segment>,
    /// Spare segment files (released or preallocated), reused at roll-over; newest last.
    spares: Vec<Spare>,
    /// Number of the next spare file name.
    next_spare: u64,
    /// Memory media: (sequence, last LSN) of the newest record encoded into a mapping and
    /// not yet reported durable (the next `poll` does).
    mem_pending: Option<(u64, u64)>,
    /// Memory media: bytes and records appended since the last poll.
    mem_unpolled: usize,
    mem_unpolled_records: u32,
    slots: Vec<Slot>,
    /// Slots in batch order (Filling / Sealed / InFlight / Done), oldest first.
    order: VecDeque<usize>,
    filling: Option<usize>,
    next_seq: u64,
    lsn_appended: u64,
    durable_lsn: u64,
    durable_seq: u64,
    used_bytes: u64,
    failed: Option<String>,
    read_buf: Vec<u8>,
    reads: Vec<Option<PendingRead>>,
    reads_done: VecDeque<ReadDone>,
    stats: JournalStats,
    /// See [`Journal::base_lsn`].
    base_lsn: u64,
    /// The directory's lock, held for the journal's life (last field: dropped after the
    /// files are closed).
    _lock: lock::DirLock,
}

impl Journal {
    fn active(&self) -> &Segment {
        // Invariant: `open` creates an active segment and nothing removes the last one.
        self.segments.back().expect("journal has an active segment")
    }

    fn fail(&mut self, why: String) {
        log::error!("journal {}: {why}; no further acknowledgement", self.cfg.dir.display());
        if self.failed.is_none() {
            self.failed = Some(why);
        }
    }

    /// Highest LSN such that it and every LSN appended before it are durable.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }
    /// Highest LSN appended (durable or not).
    pub fn appended_lsn(&self) -> u64 {
        self.lsn_appended
    }
    /// Bytes held by live segments (padding and not-yet-durable records included).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }
    /// The configured bound.
    pub fn bytes_max(&self) -> u64 {
        self.cfg.journal_bytes_max
    }
    /// Live segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    /// Spare segment files ready for reuse.
    pub fn spare_count(&self) -> usize {
        self.spares.len()
    }
    /// Whether the active segment uses O_DIRECT.
    pub fn direct_io(&self) -> bool {
        self.active().direct
    }

    /// Whether the active segment is on a memory file system (batches are not fdatasync'ed).
    pub fn memory_media(&self) -> bool {
        !self.active().sync
    }
    /// Counters.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }
    /// True when nothing appended waits to become durable.
    pub fn is_idle(&self) -> bool {
        self.order.is_empty() && self.mem_pending.is_none()
    }

    /// True while [`Journal::poll`] or [`Journal::poll_reads`] has something to finish:
    /// appends on their way to durable, or forwarding reads in flight. Its reactor must
    /// not sleep then (their completions signal no descriptor it watches).
    pub fn io_in_flight(&self) -> bool {
        !self.is_idle() || self.reads.iter().any(Option::is_some)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // The kernel may still read staging buffers: wait for every chain in flight.
        let mut left: usize = self
            .slots
            .iter()
            .map(|s| match s.state {
                SlotState::InFlight { ops_left } => ops_left as usize,
                _ => 0,
            })
            .sum::<usize>()
            + self.reads.iter().filter(|r| r.is_some()).count();
        while left > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            let n = self.ring.completion().count();
            left = left.saturating_sub(n);
        }
    }
}

#[cfg(test)]
mod tests;
