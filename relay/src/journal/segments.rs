//! The journal's files: segments (`seg-<id>.bjl`, `-r` when in a reused file) and spares
//! (`spare-<n>.bjs`, released or preallocated segment files kept for reuse), roll-over to a
//! new segment, preallocation, and [`Journal::release`], which gives up whole segments once
//! the standby has their records (`docs/relay-journal.md`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::append::SlotState;
use super::map;
use super::{io_err, Journal, JournalConfig, JournalError};

/// Bytes of zeroes written per call while preallocating a spare segment.
const PREALLOCATE_CHUNK_BYTES: usize = 1024 * 1024;

/// A spare segment file. On memory media it stays open and mapped (page tables filled), so
/// reusing it costs a rename: no page fault, no `mmap`.
pub(super) struct Spare {
    pub(super) path: PathBuf,
    pub(super) open: Option<(File, map::SegmentMap)>,
}

pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) direct: bool,
    /// Batches are followed by fdatasync (false on memory file systems).
    pub(super) sync: bool,
    /// Bytes staged or written.
    pub(super) len: u64,
    /// Bytes known durable (readable by `read_range`).
    pub(super) durable_len: u64,
    pub(super) lsn_max: u64,
    /// Reads in flight on this file: `release` keeps the file (and its fd) open until 0.
    pub(super) reads_in_flight: u32,
    /// Memory media: the file mapped, records are encoded into it (`None` for segments
    /// recovered at open, which are only read).
    pub(super) map: Option<map::SegmentMap>,
}

/// `seg-<id>.bjl` for a segment in a new file, `seg-<id>-r.bjl` for one in a reused file
/// (whose bytes after the last record may be a previous use's: recovery must know).
pub(super) fn segment_name(id: u64, recycled: bool) -> String {
    if recycled {
        format!("seg-{id:016x}-r.bjl")
    } else {
        format!("seg-{id:016x}.bjl")
    }
}

/// (id, recycled) of a segment file name.
pub(super) fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
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

pub(super) fn spare_name(n: u64) -> String {
    format!("spare-{n:016x}.bjs")
}

pub(super) fn parse_spare_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("spare-")?.strip_suffix(".bjs")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

impl Journal {
    /// Creates segment `id` as the active one (blocking open; once per `segment_bytes`),
    /// in a spare file when there is one (renamed `seg-<id>-r.bjl`), else in a new file. On
    /// memory media the file is sized to `segment_bytes` (or `min_bytes`, for a record
    /// larger than that) and mapped, and named `-r` too: its bytes after the records are
    /// zeroes, not records.
    pub(super) fn create_segment(&mut self, id: u64, min_bytes: usize) -> Result<(), JournalError> {
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
    pub(super) fn map_segment(
        file: &File,
        path: &Path,
        bytes: usize,
        populate: bool,
    ) -> Result<map::SegmentMap, JournalError> {
        let have = file.metadata().map_err(io_err("stat segment", path))?.len();
        if have < bytes as u64 {
            file.set_len(bytes as u64).map_err(io_err("size segment", path))?;
        }
        map::SegmentMap::new(file, bytes, populate).map_err(io_err("mmap segment", path))
    }

    /// Memory media: opens and maps (prefaulted) every spare not mapped yet, so reusing one
    /// on the reactor costs a rename only (setup path).
    pub(super) fn map_spares(&mut self) -> Result<(), JournalError> {
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
    pub(super) fn spare_room(&self) -> bool {
        let keep = self.cfg.spare_segments.max(preallocate_segments(&self.cfg));
        let spare_bytes = (self.spares.len() as u64 + 1) * self.cfg.segment_bytes;
        self.spares.len() < keep && self.used_bytes + spare_bytes <= self.cfg.journal_bytes_max
    }

    /// Creates spare files of `segment_bytes` zeroes until `preallocate_bytes` worth exist
    /// (setup path: blocking writes, synced before `open` returns).
    pub(super) fn preallocate(&mut self) -> Result<(), JournalError> {
        let want = preallocate_segments(&self.cfg);
        if self.spares.len() >= want {
            return Ok(());
        }
        let zeroes = vec![0u8; PREALLOCATE_CHUNK_BYTES];
        let started = std::time::Instant::now();
        let mut made = 0;
        while self.spares.len() < want && self.spare_room() {
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

/// `preallocate_bytes` in whole segments.
pub(super) fn preallocate_segments(cfg: &JournalConfig) -> usize {
    if cfg.segment_bytes == 0 {
        return 0;
    }
    cfg.preallocate_bytes.div_ceil(cfg.segment_bytes) as usize
}
