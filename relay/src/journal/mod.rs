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

mod base;
pub mod lock;
mod map;
pub mod record;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use engine::buf::DmaBuf;
use io_uring::{opcode, squeue, types, IoUring};

use record::{RecordError, RecordHeader, RecordKind, RECORD_HDR_BYTES, RECORD_PAYLOAD_BYTES_MAX};

/// Default size at which a segment file is closed and the next one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default bound of the bytes all live segments may hold (`JOURNAL_BYTES_MAX`).
pub const JOURNAL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Released segment files kept for reuse by default (see [`JournalConfig::spare_segments`]).
pub const SPARE_SEGMENTS_DEFAULT: usize = 4;
/// Bytes of zeroes written per call while preallocating a spare segment.
const PREALLOCATE_CHUNK_BYTES: usize = 1024 * 1024;
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

/// Why recovery cut the log where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// The bytes there are not a valid record (torn write, corruption).
    Record(RecordError),
    /// A record's sequence number does not follow the previous one (a hole).
    SeqGap {
        /// Expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// A record's LSNs do not follow the previous record's.
    LsnOrder {
        /// Previous record's last LSN.
        prev: u64,
        /// This record's first LSN.
        found: u64,
    },
    /// A record names another segment (a stale file).
    SegmentId {
        /// This file's id.
        expected: u64,
        /// In the record.
        found: u64,
    },
}

/// A torn or corrupt tail recovery cut off (never replayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Segment in which the first bad byte lies.
    pub segment_id: u64,
    /// Offset in that segment where the valid log ends.
    pub offset: u64,
    /// Bytes cut from that segment that were written: from `offset` to the segment's
    /// last non-zero byte. Zeroes at the end of the file are space never written (a memory
    /// segment sized and mapped whole, a preallocated spare), not cut data, although the
    /// file is truncated at `offset` all the same.
    pub bytes_cut: u64,
    /// Whole segments after it that were deleted (0 unless the damage was not at the end).
    pub segments_dropped: usize,
    /// What was wrong.
    pub reason: CutReason,
}

/// What `open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Live segments recovered.
    pub segments: usize,
    /// Frame records recovered (each CRC-verified).
    pub records: u64,
    /// First and last LSN held (0 when empty).
    pub lsn_first: u64,
    /// See `lsn_first`.
    pub lsn_last: u64,
    /// The tail cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Whether the new active segment uses O_DIRECT.
    pub direct_io: bool,
    /// Whether the journal is on a memory file system (no fdatasync: see the module docs).
    pub memory_media: bool,
    /// Spare segment files ready for reuse after open (found, or preallocated).
    pub spare_segments: usize,
    /// Bytes left by a previous use of recycled segment files after their last record
    /// (the normal end of a reused file: not a torn tail, not replayed).
    pub recycled_tail_bytes: u64,
    /// The newest history base recovered (a base record: "nothing held below this LSN
    /// after the records before it"), 0 when none; see [`Journal::append_frame`].
    pub base_lsn: u64,
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

/// A spare segment file. On memory media it stays open and mapped (page tables filled), so
/// reusing it costs a rename: no page fault, no `mmap`.
struct Spare {
    path: PathBuf,
    open: Option<(File, map::SegmentMap)>,
}

struct Segment {
    id: u64,
    path: PathBuf,
    file: File,
    direct: bool,
    /// Batches are followed by fdatasync (false on memory file systems).
    sync: bool,
    /// Bytes staged or written.
    len: u64,
    /// Bytes known durable (readable by `read_range`).
    durable_len: u64,
    lsn_max: u64,
    /// Reads in flight on this file: `release` keeps the file (and its fd) open until 0.
    reads_in_flight: u32,
    /// Memory media: the file mapped, records are encoded into it (`None` for segments
    /// recovered at open, which are only read).
    map: Option<map::SegmentMap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
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

struct Slot {
    buf: DmaBuf,
    state: SlotState,
    len: usize,
    seg_id: u64,
    fd: i32,
    file_off: u64,
    seq_last: u64,
    lsn_last: u64,
    frames: u32,
    /// fdatasync after the write (the segment's `sync`).
    sync: bool,
    sync_dir: bool,
}

const OP_WRITE: u64 = 0;
const OP_FSYNC: u64 = 1;
const OP_DIRSYNC: u64 = 2;
const OP_READ: u64 = 3;

/// Where a forwarder stands in the journal: a record boundary in a segment. Advanced by
/// [`ReadDone::for_each_record`]; moved to the next segment by [`Journal::submit_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCursor {
    segment_id: u64,
    offset: u64,
}

struct PendingRead {
    buf: DmaBuf,
    user_data: u64,
    start: ReadCursor,
    /// Bytes before `start.offset` read only to keep O_DIRECT alignment.
    skip: usize,
    /// Durable bytes of the segment when the read was submitted (nothing after is trusted).
    durable_end: u64,
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
    start: ReadCursor,
    skip: usize,
    valid: usize,
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

/// `seg-<id>.bjl` for a segment in a new file, `seg-<id>-r.bjl` for one in a reused file
/// (whose bytes after the last record may be a previous use's: recovery must know).
fn segment_name(id: u64, recycled: bool) -> String {
    if recycled {
        format!("seg-{id:016x}-r.bjl")
    } else {
        format!("seg-{id:016x}.bjl")
    }
}

/// (id, recycled) of a segment file name.
fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
    let stem = name.strip_prefix("seg-")?.strip_suffix(".bjl")?;
    let (hex, recycled) = match stem.strip_suffix("-r") {
        Some(h) => (h, true),
        None => (stem, false),
    };
    if hex.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, recycled))
}

fn spare_name(n: u64) -> String {
    format!("spare-{n:016x}.bjs")
}

fn parse_spare_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("spare-")?.strip_suffix(".bjs")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
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
    /// Opens (creating if needed) the journal in `cfg.dir` and recovers it: every segment is
    /// scanned, every record's CRC verified, and the log is cut at the first invalid byte
    /// (truncated, later segments deleted, reported in [`RecoveryReport::torn_tail`]): a torn
    /// tail is never replayed. New appends go to a fresh segment. Setup path: blocks,
    /// allocates the staging buffers and the io_uring.
    pub fn open(cfg: JournalConfig) -> Result<(Journal, RecoveryReport), JournalError> {
        std::fs::create_dir_all(&cfg.dir).map_err(io_err("create_dir", &cfg.dir))?;
        // Before anything is read or changed: a live journal's files are its own.
        let lock = lock::DirLock::acquire(&cfg.dir)?;
        let dir = File::open(&cfg.dir).map_err(io_err("open dir", &cfg.dir))?;
        let mut ids: Vec<(u64, bool)> = Vec::new();
        let mut spare_ids = Vec::new();
        for e in std::fs::read_dir(&cfg.dir).map_err(io_err("read_dir", &cfg.dir))? {
            let e = e.map_err(io_err("read_dir", &cfg.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = parse_segment_name(name) {
                ids.push(id);
            } else if let Some(n) = parse_spare_name(name) {
                spare_ids.push(n);
            }
        }
        ids.sort_unstable();
        spare_ids.sort_unstable();

        let mut report = RecoveryReport {
            segments: 0,
            records: 0,
            lsn_first: 0,
            lsn_last: 0,
            torn_tail: None,
            direct_io: false,
            memory_media: false,
            spare_segments: 0,
            recycled_tail_bytes: 0,
            base_lsn: 0,
        };
        let mut segments = VecDeque::new();
        let mut expect_seq: Option<u64> = None;
        let mut last_seq = 0u64;
        let mut prev_lsn = 0u64;
        let mut buf = Vec::new();
        let mut cut_at: Option<usize> = None;
        let mut empty_reused = Vec::new();
        for (index, &(id, recycled)) in ids.iter().enumerate() {
            let path = cfg.dir.join(segment_name(id, recycled));
            buf.clear();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io_err("read segment", &path))?;
            let mut off = 0usize;
            let mut lsn_max = 0u64;
            let mut cut: Option<CutReason> = None;
            // A reused file holds a previous use's bytes after its last record: its records
            // end at the first bytes that do not claim this segment. Bytes that claim it but
            // fail the check are a torn record, cut as in a new file.
            let stale_end = |b: &[u8]| recycled && !record::claims_segment(b, id);
            let mut stale = false;
            while off < buf.len() {
                let (h, payload) = match record::check(&buf[off..]) {
                    Ok(r) => r,
                    Err(_) if stale_end(&buf[off..]) => {
                        stale = true;
                        break;
                    }
                    Err(e) => {
                        cut = Some(CutReason::Record(e));
                        break;
                    }
                };
                if h.segment_id != id && stale_end(&buf[off..]) {
                    stale = true;
                    break;
                }
                if h.segment_id != id {
                    cut = Some(CutReason::SegmentId {
                        expected: id,
                        found: h.segment_id,
                    });
                    break;
                }
                if h.kind == RecordKind::Frame {
                    if let Some(expected) = expect_seq {
                        if h.seq != expected {
                            cut = Some(CutReason::SeqGap { expected, found: h.seq });
                            break;
                        }
                    }
                    if h.lsn_first <= prev_lsn || h.lsn_last < h.lsn_first {
                        cut = Some(CutReason::LsnOrder {
                            prev: prev_lsn,
                            found: h.lsn_first,
                        });
                        break;
                    }
                    expect_seq = Some(h.seq + 1);
                    last_seq = h.seq;
                    prev_lsn = h.lsn_last;
                    lsn_max = h.lsn_last;
                    report.records += 1;
                    base::note_recovered(&mut report, payload, h.lsn_last);
                    if report.lsn_first == 0 {
                        report.lsn_first = h.lsn_first;
                    }
                }
                off += h.span();
            }
            // The span may round past the end of a file cut exactly at a record's end.
            let valid = off.min(buf.len()) as u64;
            if stale {
                // Kept as it is (its pages and blocks are what reuse is for); `len` bounds
                // every read, so the bytes after are never parsed again.
                report.recycled_tail_bytes += buf.len() as u64 - valid;
            }
            if let Some(reason) = cut {
                let cut_bytes = written_after(&buf, valid);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open segment", &path))?;
                file.set_len(valid).map_err(io_err("truncate", &path))?;
                file.sync_all().map_err(io_err("fsync", &path))?;
                let dropped = ids.len() - index - 1;
                log::warn!(
                    "journal {}: segment {id:#x} invalid at offset {valid} ({reason:?}); cut {cut_bytes} bytes and {dropped} later segments",
                    cfg.dir.display(),
                );
                report.torn_tail = Some(TornTail {
                    segment_id: id,
                    offset: valid,
                    bytes_cut: cut_bytes,
                    segments_dropped: dropped,
                    reason,
                });
                cut_at = Some(index);
            }
            if valid > 0 {
                let file = OpenOptions::new()
                    .read(true)
                    .open(&path)
                    .map_err(io_err("open segment", &path))?;
                segments.push_back(Segment {
                    id,
                    path,
                    file,
                    direct: false,
                    sync: true,
                    len: valid,
                    durable_len: valid,
                    lsn_max,
                    reads_in_flight: 0,
                    map: None,
                });
            } else if recycled && cut.is_none() {
                // A reused file nothing was written to yet: a spare again.
                empty_reused.push(path);
            } else {
                std::fs::remove_file(&path).map_err(io_err("unlink", &path))?;
            }
            if cut_at.is_some() {
                break;
            }
        }
        if let Some(index) = cut_at {
            for &(id, recycled) in &ids[index + 1..] {
                let path = cfg.dir.join(segment_name(id, recycled));
                std::fs::remove_file(&path).map_err(io_err("unlink", &path))?;
            }
        }
        // Spares beyond what the configuration keeps go (the configuration may have changed).
        let spare_keep = cfg.spare_segments.max(preallocate_segments(&cfg));
        let mut next_spare = spare_ids.last().map_or(1, |&n| n + 1);
        let mut spares = Vec::new();
        for &n in &spare_ids {
            let path = cfg.dir.join(spare_name(n));
            if spares.len() < spare_keep {
                spares.push(Spare { path, open: None });
            } else {
                std::fs::remove_file(&path).map_err(io_err("unlink", &path))?;
            }
        }
        for path in empty_reused {
            if spares.len() < spare_keep {
                let to = cfg.dir.join(spare_name(next_spare));
                next_spare += 1;
                std::fs::rename(&path, &to).map_err(io_err("rename", &path))?;
                spares.push(Spare { path: to, open: None });
            } else {
                std::fs::remove_file(&path).map_err(io_err("unlink", &path))?;
            }
        }
        dir.sync_all().map_err(io_err("fsync dir", &cfg.dir))?;
        report.segments = segments.len();
        report.lsn_last = prev_lsn;

        let ring = IoUring::new(URING_ENTRIES).map_err(io_err("io_uring_setup", &cfg.dir))?;
        let slots = (0..STAGING_BUFFERS)
            .map(|_| Slot {
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
            })
            .collect();
        let used_bytes = segments.iter().map(|s| s.len).sum();
        let next_id = ids.last().map_or(1, |&(l, _)| l + 1);
        let mut j = Journal {
            cfg,
            ring,
            memory: engine::is_memory_fs(&dir),
            dir,
            segments,
            spares,
            next_spare,
            mem_pending: None,
            mem_unpolled: 0,
            mem_unpolled_records: 0,
            slots,
            order: VecDeque::with_capacity(STAGING_BUFFERS),
            filling: None,
            next_seq: last_seq + 1,
            lsn_appended: prev_lsn,
            durable_lsn: prev_lsn,
            durable_seq: last_seq,
            used_bytes,
            failed: None,
            read_buf: Vec::new(),
            reads: (0..READS_IN_FLIGHT_MAX).map(|_| None).collect(),
            reads_done: VecDeque::with_capacity(READS_IN_FLIGHT_MAX),
            stats: JournalStats::default(),
            base_lsn: report.base_lsn,
            _lock: lock,
        };
        j.preallocate()?;
        j.map_spares()?;
        report.spare_segments = j.spares.len();
        j.create_segment(next_id, 0)?;
        report.direct_io = j.segments.back().is_some_and(|s| s.direct);
        report.memory_media = j.memory_media();
        if report.memory_media {
            log::info!(
                "journal {}: memory file system: buffered writes, no fdatasync (a no-op there); \
                 it holds nothing across power loss",
                j.cfg.dir.display()
            );
        }
        Ok((j, report))
    }

    /// Creates segment `id` as the active one (blocking open; once per `segment_bytes`),
    /// in a spare file when there is one (renamed `seg-<id>-r.bjl`), else in a new file. On
    /// memory media the file is sized to `segment_bytes` (or `min_bytes`, for a record
    /// larger than that) and mapped, and named `-r` too: its bytes after the records are
    /// zeroes, not records.
    fn create_segment(&mut self, id: u64, min_bytes: usize) -> Result<(), JournalError> {
        let spare = self.spares.pop();
        let recycled = spare.is_some();
        let memory = self.memory;
        let path = self.cfg.dir.join(segment_name(id, recycled || memory));
        let mut kept = None;
        if let Some(sp) = spare {
            std::fs::rename(&sp.path, &path).map_err(io_err("rename spare", &sp.path))?;
            self.stats.segments_recycled += 1;
            kept = sp.open;
        } else {
            self.stats.segments_created += 1;
        }
        let want = (self.cfg.segment_bytes as usize).max(min_bytes);
        if let Some((file, map)) = kept.filter(|(_, m)| m.len() >= want) {
            // Memory media, a spare still mapped: nothing to open, map or fault in.
            self.segments.push_back(Segment {
                id,
                path,
                file,
                direct: false,
                sync: false,
                len: 0,
                durable_len: 0,
                lsn_max: 0,
                reads_in_flight: 0,
                map: Some(map),
            });
            return Ok(());
        }
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if recycled {
                o.create(false);
            } else {
                o.create_new(true);
            }
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path)
        };
        let (file, direct) = if self.cfg.direct_io && !memory {
            match open(true) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // tmpfs and some others refuse O_DIRECT: buffered + fdatasync.
                    if !recycled {
                        let _ = std::fs::remove_file(&path);
                    }
                    (open(false).map_err(io_err("create segment", &path))?, false)
                }
                Err(e) => return Err(io_err("create segment", &path)(e)),
            }
        } else {
            (open(false).map_err(io_err("create segment", &path))?, false)
        };
        let map = if memory {
            // A reused file's pages exist: fault them in with one call. A new file's are
            // allocated by the writes, page by page.
            Some(Self::map_segment(&file, &path, want, recycled)?)
        } else {
            None
        };
        self.segments.push_back(Segment {
            id,
            path,
            file,
            direct,
            sync: !memory,
            len: 0,
            durable_len: 0,
            lsn_max: 0,
            reads_in_flight: 0,
            map,
        });
        Ok(())
    }

    /// Sizes a memory-media segment file to at least `bytes` and maps that much (prefaulted
    /// when the file is reused: its pages exist).
    fn map_segment(file: &File, path: &Path, bytes: usize, populate: bool) -> Result<map::SegmentMap, JournalError> {
        let have = file.metadata().map_err(io_err("stat segment", path))?.len();
        if have < bytes as u64 {
            file.set_len(bytes as u64).map_err(io_err("size segment", path))?;
        }
        map::SegmentMap::new(file, bytes, populate).map_err(io_err("mmap segment", path))
    }

    /// Memory media: opens and maps (prefaulted) every spare not mapped yet, so reusing one
    /// on the reactor costs a rename only (setup path).
    fn map_spares(&mut self) -> Result<(), JournalError> {
        if !self.memory {
            return Ok(());
        }
        let bytes = self.cfg.segment_bytes as usize;
        for sp in self.spares.iter_mut().filter(|sp| sp.open.is_none()) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&sp.path)
                .map_err(io_err("open spare", &sp.path))?;
            let map = Self::map_segment(&file, &sp.path, bytes, true)?;
            sp.open = Some((file, map));
        }
        Ok(())
    }

    /// Spares kept at most: live segments plus spares stay within `journal_bytes_max`.
    fn spare_room(&self) -> bool {
        let keep = self.cfg.spare_segments.max(preallocate_segments(&self.cfg));
        let spare_bytes = (self.spares.len() as u64 + 1) * self.cfg.segment_bytes;
        self.spares.len() < keep && self.used_bytes + spare_bytes <= self.cfg.journal_bytes_max
    }

    /// Creates spare files of `segment_bytes` zeroes until `preallocate_bytes` worth exist
    /// (setup path: blocking writes, synced before `open` returns).
    fn preallocate(&mut self) -> Result<(), JournalError> {
        let want = preallocate_segments(&self.cfg);
        if self.spares.len() >= want {
            return Ok(());
        }
        let zeroes = vec![0u8; PREALLOCATE_CHUNK_BYTES];
        let started = std::time::Instant::now();
        let mut made = 0;
        while self.spares.len() < want && self.spare_room() {
            use std::io::Write;
            let path = self.cfg.dir.join(spare_name(self.next_spare));
            self.next_spare += 1;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_err("create spare", &path))?;
            let mut left = self.cfg.segment_bytes as usize;
            while left > 0 {
                let n = left.min(zeroes.len());
                f.write_all(&zeroes[..n]).map_err(io_err("preallocate", &path))?;
                left -= n;
            }
            if !self.memory {
                f.sync_all().map_err(io_err("fsync", &path))?;
            }
            self.spares.push(Spare { path, open: None });
            made += 1;
        }
        if made > 0 {
            self.dir.sync_all().map_err(io_err("fsync dir", &self.cfg.dir))?;
            log::info!(
                "journal {}: preallocated {made} segments of {} bytes in {:.2} s",
                self.cfg.dir.display(),
                self.cfg.segment_bytes,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    fn active(&self) -> &Segment {
        // Invariant: `open` creates an active segment and nothing removes the last one.
        self.segments.back().expect("journal has an active segment")
    }

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

    fn append_known(
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
    fn appended(&mut self, used: usize, lsn_last: u64) {
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
    fn append_mapped(
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
    fn start_batch(&mut self) -> usize {
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
    fn seal(&mut self, i: usize) {
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

    fn fail(&mut self, why: String) {
        log::error!("journal {}: {why}; no further acknowledgement", self.cfg.dir.display());
        if self.failed.is_none() {
            self.failed = Some(why);
        }
    }

    fn reap(&mut self) {
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

    fn advance_durable(&mut self) {
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

    fn submit_sealed(&mut self) {
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

    fn read_completed(&mut self, ri: usize, res: i32) {
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

    /// Reclaims every whole segment (other than the active one) whose records all have
    /// LSN <= `upto_lsn` and are durable: called when the standby confirmed `upto_lsn`.
    /// Keeps the file as a spare for the next roll-over while there is room
    /// ([`JournalConfig::spare_segments`]), else deletes it (blocking rename or unlink).
    /// Returns the bytes reclaimed.
    pub fn release(&mut self, upto_lsn: u64) -> Result<u64, JournalError> {
        let upto = upto_lsn.min(self.durable_lsn);
        let mut freed = 0;
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else { break };
            let busy = self
                .slots
                .iter()
                .any(|s| s.state != SlotState::Free && s.seg_id == front.id);
            if front.lsn_max > upto || busy || front.reads_in_flight > 0 {
                break;
            }
            let Some(seg) = self.segments.pop_front() else { break };
            self.used_bytes -= seg.len;
            if self.spare_room() {
                let to = self.cfg.dir.join(spare_name(self.next_spare));
                self.next_spare += 1;
                std::fs::rename(&seg.path, &to).map_err(io_err("rename", &seg.path))?;
                freed += seg.len;
                self.stats.segments_released += 1;
                // Memory media: keep the file open and mapped for its next use.
                let open = match seg.map {
                    Some(map) => Some((seg.file, map)),
                    None => None,
                };
                self.spares.push(Spare { path: to, open });
                continue;
            } else {
                std::fs::remove_file(&seg.path).map_err(io_err("unlink", &seg.path))?;
            }
            freed += seg.len;
            self.stats.segments_released += 1;
        }
        Ok(freed)
    }
}

/// The header of a frame record.
fn frame_header(seq: u64, lsn_first: u64, lsn_last: u64, payload_len: usize, segment_id: u64) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Frame,
        payload_len: payload_len as u32,
        seq,
        lsn_first,
        lsn_last,
        segment_id,
    }
}

/// `preallocate_bytes` in whole segments.
/// Bytes of `buf` from `valid` up to its last non-zero byte: what a cut at `valid` removes
/// that was ever written (trailing zeroes are space sized or preallocated, never written).
fn written_after(buf: &[u8], valid: u64) -> u64 {
    let start = (valid as usize).min(buf.len());
    buf[start..].iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
}

fn preallocate_segments(cfg: &JournalConfig) -> usize {
    if cfg.segment_bytes == 0 {
        return 0;
    }
    cfg.preallocate_bytes.div_ceil(cfg.segment_bytes) as usize
}

/// Payload of pad records (never more than two alignment units).
static PAD_ZEROS: [u8; 2 * DIRECT_ALIGN_BYTES] = [0; 2 * DIRECT_ALIGN_BYTES];

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
