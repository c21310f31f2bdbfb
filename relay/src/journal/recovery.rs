//! Opening the journal: the directory is scanned, every record's CRC, segment, sequence and
//! LSN order checked, and the log cut at the first invalid byte, so a torn tail is never
//! replayed (`docs/relay-journal.md`, recovery).

use io_uring::IoUring;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::append::Slot;
use super::record::{self, RecordError, RecordKind};
use super::segments::{
    parse_segment_name, parse_spare_name, preallocate_segments, segment_name, spare_name, Segment, Spare,
};
use super::{
    base, io_err, lock, Journal, JournalConfig, JournalError, JournalStats, READS_IN_FLIGHT_MAX, STAGING_BUFFERS,
    URING_ENTRIES,
};

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

/// The segment and spare files found in the journal's directory, each list sorted.
struct DirListing {
    /// (id, recycled) of every segment file.
    segments: Vec<(u64, bool)>,
    /// Number of every spare file.
    spares: Vec<u64>,
}

/// Where the scan of the records stands, carried from one segment file to the next: the
/// frame records of all segments form one sequence in one LSN order.
#[derive(Default)]
struct LogScan {
    /// Sequence number the next frame record must have (`None` before the first).
    expect_seq: Option<u64>,
    /// Sequence number of the last frame record accepted.
    last_seq: u64,
    /// Last LSN of the last frame record accepted.
    prev_lsn: u64,
}

/// What the scan of one segment file's bytes found.
struct SegmentScan {
    /// Bytes of whole, valid records from the start of the file.
    valid: u64,
    /// Last LSN of the file's last valid frame record (0: none).
    lsn_max: u64,
    /// Why the records stop before the end of the file, when they stop at a torn or
    /// corrupt record (the log is cut there).
    cut: Option<CutReason>,
    /// A reused file whose records end at bytes of a previous use (not a cut).
    stale: bool,
}

/// What recovery keeps of the segment files.
struct RecoveredSegments {
    /// Live segments, oldest first, each `len` = its valid bytes.
    segments: VecDeque<Segment>,
    /// Reused files nothing was written to yet: spares again.
    empty_reused: Vec<PathBuf>,
    log: LogScan,
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
        let listing = list_dir(&cfg.dir)?;
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
        let recovered = recover_segments(&cfg, &listing.segments, &mut report)?;
        let (spares, next_spare) = recover_spares(&cfg, &listing.spares, recovered.empty_reused)?;
        dir.sync_all().map_err(io_err("fsync dir", &cfg.dir))?;
        report.segments = recovered.segments.len();
        report.lsn_last = recovered.log.prev_lsn;

        let ring = IoUring::new(URING_ENTRIES).map_err(io_err("io_uring_setup", &cfg.dir))?;
        let slots = (0..STAGING_BUFFERS).map(|_| Slot::new()).collect();
        let segments = recovered.segments;
        let (last_seq, prev_lsn) = (recovered.log.last_seq, recovered.log.prev_lsn);
        let used_bytes = segments.iter().map(|s| s.len).sum();
        let next_id = listing.segments.last().map_or(1, |&(l, _)| l + 1);
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
        j.start_serving(next_id, &mut report)?;
        Ok((j, report))
    }

    /// The last step of `open`: spare files made and mapped, the active segment `next_id`
    /// created, and what that chose noted in `report`.
    fn start_serving(&mut self, next_id: u64, report: &mut RecoveryReport) -> Result<(), JournalError> {
        self.preallocate()?;
        self.map_spares()?;
        report.spare_segments = self.spares.len();
        self.create_segment(next_id, 0)?;
        report.direct_io = self.segments.back().is_some_and(|s| s.direct);
        report.memory_media = self.memory_media();
        if report.memory_media {
            log::info!(
                "journal {}: memory file system: buffered writes, no fdatasync (a no-op there); \
                 it holds nothing across power loss",
                self.cfg.dir.display()
            );
        }
        Ok(())
    }
}

/// Lists the segment and spare files of the journal directory `dir` (other files are not
/// the journal's and are left alone).
fn list_dir(dir: &Path) -> Result<DirListing, JournalError> {
    let mut ids: Vec<(u64, bool)> = Vec::new();
    let mut spare_ids = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("read_dir", dir))? {
        let e = e.map_err(io_err("read_dir", dir))?;
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
    Ok(DirListing {
        segments: ids,
        spares: spare_ids,
    })
}

/// Reads and checks every segment file of `ids` in order, cutting the log at the first
/// invalid record: that file is truncated there and every later one deleted. Files left
/// with no valid record are deleted, or kept as spares when they are reused files nothing
/// was written to yet.
fn recover_segments(
    cfg: &JournalConfig,
    ids: &[(u64, bool)],
    report: &mut RecoveryReport,
) -> Result<RecoveredSegments, JournalError> {
    let mut segments = VecDeque::new();
    let mut log = LogScan::default();
    let mut buf = Vec::new();
    let mut cut_at: Option<usize> = None;
    let mut empty_reused = Vec::new();
    for (index, &(id, recycled)) in ids.iter().enumerate() {
        let path = cfg.dir.join(segment_name(id, recycled));
        buf.clear();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io_err("read segment", &path))?;
        let scan = scan_segment(&buf, id, recycled, &mut log, report);
        let valid = scan.valid;
        if scan.stale {
            // Kept as it is (its pages and blocks are what reuse is for); `len` bounds
            // every read, so the bytes after are never parsed again.
            report.recycled_tail_bytes += buf.len() as u64 - valid;
        }
        if let Some(reason) = scan.cut {
            let dropped = ids.len() - index - 1;
            report.torn_tail = Some(cut_segment(&cfg.dir, &path, &buf, id, valid, reason, dropped)?);
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
                lsn_max: scan.lsn_max,
                reads_in_flight: 0,
                map: None,
            });
        } else if recycled && scan.cut.is_none() {
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
    Ok(RecoveredSegments {
        segments,
        empty_reused,
        log,
    })
}

/// Checks the records of segment `id` (its file's bytes in `buf`) from the start, in the
/// sequence and LSN order `log` carries from the earlier segments, counting the frame
/// records kept in `report`. Stops at the first record that is invalid, belongs to another
/// segment or breaks the order (a cut), or, in a reused file, at bytes of a previous use.
fn scan_segment(buf: &[u8], id: u64, recycled: bool, log: &mut LogScan, report: &mut RecoveryReport) -> SegmentScan {
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
            if let Some(expected) = log.expect_seq {
                if h.seq != expected {
                    cut = Some(CutReason::SeqGap { expected, found: h.seq });
                    break;
                }
            }
            if h.lsn_first <= log.prev_lsn || h.lsn_last < h.lsn_first {
                cut = Some(CutReason::LsnOrder {
                    prev: log.prev_lsn,
                    found: h.lsn_first,
                });
                break;
            }
            log.expect_seq = Some(h.seq + 1);
            log.last_seq = h.seq;
            log.prev_lsn = h.lsn_last;
            lsn_max = h.lsn_last;
            report.records += 1;
            base::note_recovered(report, payload, h.lsn_last);
            if report.lsn_first == 0 {
                report.lsn_first = h.lsn_first;
            }
        }
        off += h.span();
    }
    SegmentScan {
        // The span may round past the end of a file cut exactly at a record's end.
        valid: off.min(buf.len()) as u64,
        lsn_max,
        cut,
        stale,
    }
}

/// Cuts segment `id` (file `path`, its bytes in `buf`) at `valid`: truncates the file there
/// and syncs it. `dropped` later segments go too (the caller deletes them).
fn cut_segment(
    dir: &Path,
    path: &Path,
    buf: &[u8],
    id: u64,
    valid: u64,
    reason: CutReason,
    dropped: usize,
) -> Result<TornTail, JournalError> {
    let cut_bytes = written_after(buf, valid);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open segment", path))?;
    file.set_len(valid).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    log::warn!(
        "journal {}: segment {id:#x} invalid at offset {valid} ({reason:?}); cut {cut_bytes} bytes and {dropped} later segments",
        dir.display(),
    );
    Ok(TornTail {
        segment_id: id,
        offset: valid,
        bytes_cut: cut_bytes,
        segments_dropped: dropped,
        reason,
    })
}

/// The spares recovery keeps, and the number of the next spare file: spare files beyond
/// what the configuration keeps are deleted (the configuration may have changed); reused
/// segment files found empty become spares again while there is room.
fn recover_spares(
    cfg: &JournalConfig,
    spare_ids: &[u64],
    empty_reused: Vec<PathBuf>,
) -> Result<(Vec<Spare>, u64), JournalError> {
    let spare_keep = cfg.spare_segments.max(preallocate_segments(cfg));
    let mut next_spare = spare_ids.last().map_or(1, |&n| n + 1);
    let mut spares = Vec::new();
    for &n in spare_ids {
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
    Ok((spares, next_spare))
}

/// Bytes of `buf` from `valid` up to its last non-zero byte: what a cut at `valid` removes
/// that was ever written (trailing zeroes are space sized or preallocated, never written).
fn written_after(buf: &[u8], valid: u64) -> u64 {
    let start = (valid as usize).min(buf.len());
    buf[start..].iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
}
