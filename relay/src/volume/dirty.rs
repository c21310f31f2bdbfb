//! The dirty-block record: which regions of the volume were written by LSNs that not every
//! relay has confirmed (acknowledged, and not skipped by a resync base). It is what a block
//! sync (`volume/sync.rs`) sends; this module maintains and persists it
//! (`docs/replication.md`, "The dirty-block record" and "Block sync").
//!
//! Shape: two bitmaps of `regions` bits, one bit per `2^region_shift` blocks, sized so a
//! bitmap is at most `engine::regionmap::REGION_BITS_MAX` bits (128 KiB) whatever the volume size: bounded
//! memory. `cur` collects the regions of ops from `starts[cur]` on; `prev` those of ops from
//! `starts[prev]` to `starts[cur]`. The union covers every LSN from `starts[prev]` on. Once
//! every relay confirmed everything before `starts[cur]`, `prev` is cleared and becomes
//! the new `cur` (at most once per [`ROTATE_PERIOD_NS`]: the clear is one pass over 128 KiB
//! on the link reactor).
//!
//! Persistence (write-intent, as md's bitmap): a file (`VolumeConfig::dirty_map`) holding
//! the union, written by a background thread (write to a temporary file, fdatasync, rename,
//! sync the directory: never on the reactor). An op that sets a region bit not set before
//! completes only after a flush that includes it: the link reactor numbers the marks and
//! the op waits for `flushed >= its mark` (steady state: the regions are dirty already, no
//! wait). So after a primary crash the file covers every write that completed to a caller
//! and that some relay had not confirmed. Clears reach the file lazily (a superset is safe).
//! Without a file the record is kept in memory only and nothing waits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use engine::regionmap;
use serde::Serialize;

/// Largest bitmap, in bits (regions).
#[cfg(test)]
const DIRTY_BITS_MAX: u64 = regionmap::REGION_BITS_MAX;
/// Shortest time between two rotations (each clears one bitmap on the link reactor).
pub const ROTATE_PERIOD_NS: u64 = 1_000_000_000;
/// How often the flusher looks for new marks.
const FLUSH_POLL: Duration = Duration::from_millis(1);
/// How often the flusher writes the file without new marks when a rotation cleared bits.
const CLEAR_FLUSH_PERIOD: Duration = Duration::from_secs(1);
#[cfg(test)]
use regionmap::HEADER_BYTES;

/// Errors loading or writing the persisted record (the file format is
/// `engine::regionmap`'s).
pub type DirtyError = engine::regionmap::RegionMapError;

/// What `replication_get_volumes` shows of the record.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct DirtyStatus {
    /// Blocks per region (bit).
    pub region_blocks: u64,
    /// Regions (bits) of the volume.
    pub regions: u64,
    /// Regions marked (union of both bitmaps).
    pub dirty_regions: u64,
    /// Lowest LSN whose writes the record covers.
    pub start_lsn: u64,
    /// File it is persisted to ("" when in memory only).
    pub file: String,
    /// Marks taken / marks the file holds (ops wait for the second to reach theirs).
    pub marks: u64,
    /// See `marks`.
    pub flushed_marks: u64,
    /// Last error writing the file.
    pub last_error: String,
}

/// State shared by the link reactor (writer of bits) and the flusher thread.
pub(super) struct DirtyShared {
    region_shift: u32,
    regions: u64,
    maps: [Box<[AtomicU64]>; 2],
    /// Lowest LSN covered by the union (`starts[prev]`), for the file.
    start_lsn: AtomicU64,
    marks: AtomicU64,
    flushed: AtomicU64,
    /// Rotations so far (the flusher rewrites the file after one, lazily).
    rotations: AtomicU64,
    path: Option<PathBuf>,
    stop: AtomicBool,
    last_error: std::sync::Mutex<String>,
    /// The block sync's progress for the flusher to persist (`volume/sync.rs`): `Some(Some)`
    /// write this image, `Some(None)` remove the file. Taken by the flusher.
    pub(super) sync_image: std::sync::Mutex<Option<Option<Vec<u8>>>>,
    /// Which map is `cur` (written by the link reactor at a rotation, read by channels).
    cur: std::sync::atomic::AtomicUsize,
}

/// Sets the region bits of `offset..offset + blocks` in map `cur`; true if one was in
/// neither map before (a new mark).
fn set_bits(sh: &DirtyShared, cur: usize, offset: u64, blocks: u64) -> bool {
    regionmap::set_range(
        &sh.maps[cur],
        Some(&sh.maps[1 - cur]),
        sh.region_shift,
        sh.regions,
        offset,
        blocks,
    )
}

impl DirtyShared {
    /// Sets the bits of `offset..offset + blocks` in the current map from a channel, before
    /// its local write is issued (write intent). Returns the mark the write must see
    /// [`Self::flushed_marks`] reach (0 without a file: nothing to wait for). Any reactor;
    /// no allocation, no lock.
    pub(super) fn intent(&self, offset: u64, blocks: u64) -> u64 {
        if self.path.is_none() || blocks == 0 {
            return 0;
        }
        let cur = self.cur.load(Ordering::Acquire);
        if set_bits(self, cur, offset, blocks) {
            return self.marks.fetch_add(1, Ordering::AcqRel) + 1;
        }
        self.marks.load(Ordering::Acquire)
    }

    /// Marks the file holds (`u64::MAX` without a file).
    pub(super) fn flushed_marks(&self) -> u64 {
        if self.path.is_none() {
            return u64::MAX;
        }
        self.flushed.load(Ordering::Acquire)
    }

    /// True when the record has a file (and so a sync's progress is persisted).
    pub(super) fn persisted(&self) -> bool {
        self.path.is_some()
    }

    /// The file a block sync's progress is persisted to: the record's, extension `sync`.
    pub(super) fn sync_path(&self) -> Option<PathBuf> {
        self.path.as_ref().map(|p| p.with_extension("sync"))
    }

    /// Hands the flusher a new sync progress image (or `None`: remove the file). Never
    /// blocks: when the flusher holds the slot, false (try again later).
    pub(super) fn offer_sync_image(&self, img: Option<Vec<u8>>) -> bool {
        match self.sync_image.try_lock() {
            Ok(mut slot) => {
                *slot = Some(img);
                true
            }
            Err(_) => false,
        }
    }

    fn words(&self) -> usize {
        self.regions.div_ceil(64) as usize
    }

    fn union_word(&self, w: usize) -> u64 {
        self.maps[0][w].load(Ordering::Acquire) | self.maps[1][w].load(Ordering::Acquire)
    }

    /// Regions in the union (management path).
    pub(super) fn dirty_regions(&self) -> u64 {
        (0..self.words())
            .map(|w| u64::from(self.union_word(w).count_ones()))
            .sum()
    }

    /// The union as (first block, blocks) runs (what a block sync sends).
    pub(super) fn runs(&self, num_blocks: u64) -> Vec<(u64, u64)> {
        regionmap::runs_of(|w| self.union_word(w), self.region_shift, self.regions, num_blocks)
    }

    pub(super) fn status(&self) -> DirtyStatus {
        DirtyStatus {
            region_blocks: 1 << self.region_shift,
            regions: self.regions,
            dirty_regions: self.dirty_regions(),
            start_lsn: self.start_lsn.load(Ordering::Acquire),
            file: self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            marks: self.marks.load(Ordering::Acquire),
            flushed_marks: self.flushed.load(Ordering::Acquire),
            last_error: self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    /// The file image: header + union bitmap (`engine::regionmap`'s format).
    fn image(&self) -> Vec<u8> {
        regionmap::encode(
            self.region_shift,
            self.regions,
            self.start_lsn.load(Ordering::Acquire),
            (0..self.words()).map(|w| self.union_word(w)),
        )
    }

    fn write_file(&self, path: &Path) -> Result<(), DirtyError> {
        regionmap::write_atomic(path, &self.image())
    }
}

fn region_shift(num_blocks: u64) -> u32 {
    regionmap::region_shift(num_blocks)
}

/// Loads the persisted union (same geometry) into a bitmap: (words, start LSN).
fn load(path: &Path, shift: u32, regions: u64) -> Result<Option<(Vec<u64>, u64)>, DirtyError> {
    Ok(regionmap::load(path, shift, regions)?.map(|m| (m.words, m.start_lsn)))
}

/// The link reactor's side of the record.
pub(super) struct DirtyMap {
    pub(super) shared: Arc<DirtyShared>,
    cur: usize,
    starts: [u64; 2],
    rotated_ns: u64,
    /// Marks taken (newly set bits); mirrors `shared.marks`.
    marks: u64,
}

impl DirtyMap {
    /// Creates the record for a volume of `num_blocks`, loading `path` if it exists (a file
    /// that cannot be trusted marks every region: a superset is safe, a hole is not).
    pub(super) fn open(num_blocks: u64, path: Option<PathBuf>, volume: &str) -> DirtyMap {
        let shift = region_shift(num_blocks.max(1));
        let regions = num_blocks.max(1).div_ceil(1 << shift);
        let words = regions.div_ceil(64) as usize;
        let mk = || (0..words).map(|_| AtomicU64::new(0)).collect::<Box<[AtomicU64]>>();
        let maps = [mk(), mk()];
        let mut start = 0;
        if let Some(p) = &path {
            match load(p, shift, regions) {
                Ok(Some((bits, s))) => {
                    for (w, v) in bits.into_iter().enumerate() {
                        maps[1][w].store(v, Ordering::Relaxed);
                    }
                    start = s;
                    log::info!("volume {volume}: dirty-block record loaded from {}", p.display());
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("volume {volume}: {e}; every region counts as dirty");
                    for (w, word) in maps[1].iter().enumerate() {
                        let bits = (regions - 64 * w as u64).min(64);
                        let v = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
                        word.store(v, Ordering::Relaxed);
                    }
                }
            }
        }
        let shared = Arc::new(DirtyShared {
            region_shift: shift,
            regions,
            maps,
            start_lsn: AtomicU64::new(start),
            marks: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            path,
            stop: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(String::new()),
            sync_image: std::sync::Mutex::new(None),
            cur: std::sync::atomic::AtomicUsize::new(0),
        });
        DirtyMap {
            shared,
            // The loaded union is `prev` (from its start LSN); new ops go to map 0.
            cur: 0,
            starts: [u64::MAX, start],
            rotated_ns: 0,
            marks: 0,
        }
    }

    /// Sets the first LSN of `cur` once the volume knows where its LSNs resume.
    pub(super) fn begin(&mut self, first_lsn: u64) {
        if self.starts[self.cur] == u64::MAX {
            self.starts[self.cur] = first_lsn;
        }
    }

    /// The lowest LSN whose writes the record covers (what a block sync of its regions
    /// covers: `volume/sync.rs`).
    pub(super) fn covers_from(&self) -> u64 {
        self.starts
            .iter()
            .copied()
            .filter(|&s| s != u64::MAX)
            .min()
            .unwrap_or(1)
            .max(1)
    }

    /// Marks blocks `offset..offset + blocks` as written by the op getting its LSN now.
    /// Returns the mark the op must see flushed before it completes (0: none). Hot path:
    /// no allocation, no lock; an atomic OR only for words that lack a bit.
    pub(super) fn mark(&mut self, offset: u64, blocks: u64) -> u64 {
        let sh = &self.shared;
        if blocks == 0 {
            return 0;
        }
        let new = set_bits(sh, self.cur, offset, blocks);
        if sh.path.is_none() {
            return 0;
        }
        if new {
            self.marks = sh.marks.fetch_add(1, Ordering::AcqRel) + 1;
            return self.marks;
        }
        // Conservative: a bit set by an earlier op (or a channel's intent) may not be
        // flushed yet either.
        sh.marks.load(Ordering::Acquire)
    }

    /// Marks flushed to the file (ops with a mark above it wait).
    pub(super) fn flushed(&self) -> u64 {
        if self.shared.path.is_none() {
            return u64::MAX;
        }
        self.shared.flushed.load(Ordering::Acquire)
    }

    /// Every relay confirmed every LSN <= `confirmed`: drops `prev` if it only covers those
    /// (at most once per [`ROTATE_PERIOD_NS`]); `next_lsn` starts the new `cur`.
    pub(super) fn rotate(&mut self, confirmed: u64, next_lsn: u64, now: u64) {
        let cur_start = self.starts[self.cur];
        if cur_start == u64::MAX || confirmed.saturating_add(1) < cur_start {
            return;
        }
        if now.saturating_sub(self.rotated_ns) < ROTATE_PERIOD_NS {
            return;
        }
        self.rotated_ns = now;
        let prev = 1 - self.cur;
        for w in self.shared.maps[prev].iter() {
            w.store(0, Ordering::Release);
        }
        self.starts[prev] = next_lsn;
        self.cur = prev;
        self.shared.cur.store(prev, Ordering::Release);
        // The union now starts where the old `cur` did.
        self.shared.start_lsn.store(cur_start, Ordering::Release);
        self.shared.rotations.fetch_add(1, Ordering::AcqRel);
    }
}

/// The background writer of the persisted record.
pub(super) struct DirtyFlusher {
    shared: Arc<DirtyShared>,
    join: Option<JoinHandle<()>>,
}

impl DirtyFlusher {
    /// Starts the flusher of `shared` (none without a file); writes the file once first so
    /// a new volume has one.
    pub(super) fn start(shared: &Arc<DirtyShared>, volume: &str) -> Result<Option<DirtyFlusher>, DirtyError> {
        let Some(path) = shared.path.clone() else {
            return Ok(None);
        };
        shared.write_file(&path)?;
        let s = shared.clone();
        let name = volume.to_string();
        let join = std::thread::Builder::new()
            .name(format!("dirty-{volume}"))
            .spawn(move || flush_loop(&s, &path, &name))
            .map_err(|source| DirtyError::Io {
                op: "spawn flusher",
                path: shared
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source,
            })?;
        Ok(Some(DirtyFlusher {
            shared: shared.clone(),
            join: Some(join),
        }))
    }

    /// Stops the thread after a last flush.
    pub(super) fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for DirtyFlusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn flush_loop(s: &DirtyShared, path: &Path, volume: &str) {
    let mut rotations = s.rotations.load(Ordering::Acquire);
    let mut last_write = std::time::Instant::now();
    loop {
        let stopping = s.stop.load(Ordering::Acquire);
        // Read the mark count before the bits: every bit of a mark <= `m` is in the image.
        let m = s.marks.load(Ordering::Acquire);
        let r = s.rotations.load(Ordering::Acquire);
        let cleared = r != rotations && last_write.elapsed() >= CLEAR_FLUSH_PERIOD;
        if m > s.flushed.load(Ordering::Acquire) || cleared || stopping {
            match s.write_file(path) {
                Ok(()) => {
                    s.flushed.store(m, Ordering::Release);
                    rotations = r;
                    last_write = std::time::Instant::now();
                }
                Err(e) => {
                    let why = e.to_string();
                    if let Ok(mut le) = s.last_error.lock() {
                        if *le != why {
                            log::error!("volume {volume}: {why}; writes that dirty new regions wait");
                            *le = why;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        persist_sync(s);
        if stopping {
            return;
        }
        std::thread::sleep(FLUSH_POLL);
    }
}

/// Writes (or removes) the block sync's progress file if the link reactor left an image.
fn persist_sync(s: &DirtyShared) {
    let Some(path) = s.sync_path() else { return };
    let Some(img) = s.sync_image.lock().ok().and_then(|mut slot| slot.take()) else {
        return;
    };
    let r = match img {
        Some(bytes) => regionmap::write_atomic(&path, &bytes),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DirtyError::Io {
                op: "remove",
                path: path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        },
    };
    if let Err(e) = r {
        log::error!("block sync progress: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_bounded_and_marks_cover_ranges() {
        assert_eq!(region_shift(1000), 0);
        assert_eq!(region_shift(DIRTY_BITS_MAX + 1), 1);
        let mut d = DirtyMap::open(1000, None, "t");
        d.begin(1);
        d.mark(10, 1);
        d.mark(60, 10);
        d.mark(999, 5);
        assert_eq!(d.shared.runs(1000), vec![(10, 1), (60, 10), (999, 1)]);
        assert_eq!(d.shared.dirty_regions(), 12);
        // Everything before LSN 1 confirmed: `prev` (empty) goes, `cur` stays as the union.
        d.rotate(0, 50, ROTATE_PERIOD_NS);
        assert_eq!(d.shared.dirty_regions(), 12);
        d.mark(0, 1);
        // Everything before 50 confirmed: the first marks go, the newest stays.
        d.rotate(49, 80, 2 * ROTATE_PERIOD_NS);
        assert_eq!(d.shared.runs(1000), vec![(0, 1)]);
    }

    #[test]
    fn a_channels_intent_reaches_the_file_before_its_write_may_be_issued() {
        let dir = std::env::temp_dir().join(format!("baton-intent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.dirty");
        let _ = std::fs::remove_file(&path);
        let mut d = DirtyMap::open(4096, Some(path.clone()), "t");
        let mut f = DirtyFlusher::start(&d.shared, "t").unwrap().unwrap();
        d.begin(1);
        // The channel marks before its local write; the link reactor's mark at numbering
        // then finds the bits set and takes no new mark.
        let m = d.shared.intent(200, 4);
        assert!(m >= 1 && m > d.shared.flushed_marks() || d.shared.flushed_marks() >= m);
        let t = std::time::Instant::now();
        while d.shared.flushed_marks() < m {
            assert!(t.elapsed() < Duration::from_secs(10), "the flusher wrote the intent");
            std::thread::sleep(Duration::from_millis(1));
        }
        let on_file = regionmap::read(&path).unwrap().unwrap();
        assert_eq!(on_file.runs(4096), vec![(200, 4)], "the file holds the intent");
        assert_eq!(d.mark(200, 4), m, "already marked: no new mark at numbering");
        assert_eq!(d.shared.intent(201, 1), m, "nor for a second write there");
        f.stop();
        // Without a file: nothing to wait for.
        let d2 = DirtyMap::open(4096, None, "t");
        assert_eq!(d2.shared.intent(0, 1), 0);
        assert_eq!(d2.shared.flushed_marks(), u64::MAX);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn persisted_record_survives_reopen_and_a_bad_file_marks_everything() {
        let dir = std::env::temp_dir().join(format!("baton-dirty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.dirty");
        let _ = std::fs::remove_file(&path);
        let mut d = DirtyMap::open(4096, Some(path.clone()), "t");
        let mut f = DirtyFlusher::start(&d.shared, "t").unwrap().unwrap();
        d.begin(1);
        let m = d.mark(100, 3);
        assert_eq!(m, 1);
        let t = std::time::Instant::now();
        while d.flushed() < m {
            assert!(t.elapsed() < Duration::from_secs(10), "flusher wrote the mark");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Already dirty: no new mark.
        assert_eq!(d.mark(101, 1), 1);
        f.stop();
        let d2 = DirtyMap::open(4096, Some(path.clone()), "t");
        assert_eq!(d2.shared.runs(4096), vec![(100, 3)]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let d3 = DirtyMap::open(4096, Some(path), "t");
        assert_eq!(d3.shared.runs(4096), vec![(0, 4096)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
