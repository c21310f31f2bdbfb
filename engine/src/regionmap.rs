//! Persisted region bitmaps: which regions of a volume were written, kept in a file so a
//! crash does not forget them. Two users: the primary's dirty-block record (what a block
//! sync sends, `docs/replication.md`) and a promoted standby's record of what changed since
//! the common restart point (what a failback sends, `docs/failback.md`). Both write the
//! same file format, so one side's file can be merged into the other's sync.
//!
//! File (little-endian): magic `BTDM`, version 1, region shift (u32: `2^shift` blocks per
//! bit), CRC32C (of bytes 0..12 and 16..end), regions (u64), start LSN (u64: the lowest
//! LSN whose writes it covers; its meaning is the writer's), reserved (u64), then the
//! bitmap as u64 words. Written whole to a temporary file, fdatasync'd, renamed, the
//! directory synced: a reader sees the old file or the new one.
//!
//! [`IntentMap`] is the write-intent form (md's bitmap): a write that sets a new bit is
//! issued only after a background thread persisted the bit, so the file covers every
//! block a crash may have changed. Steady state (regions already marked): an atomic load
//! per write, no wait.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest bitmap, in bits (regions): 128 KiB whatever the volume size.
pub const REGION_BITS_MAX: u64 = 1 << 20;
const MAGIC: u32 = u32::from_le_bytes(*b"BTDM");
const VERSION: u32 = 1;
/// Bytes before the bitmap.
pub const HEADER_BYTES: usize = 40;
/// How often the flusher looks for new marks.
const FLUSH_POLL: Duration = Duration::from_millis(1);

/// Errors reading or writing a region map file.
#[derive(Debug, thiserror::Error)]
pub enum RegionMapError {
    /// File system error.
    #[error("region map {path}: {op}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file is not a valid map for this volume.
    #[error("region map {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// Region size for a volume of `num_blocks`: the smallest power of two keeping the bitmap
/// within [`REGION_BITS_MAX`].
pub fn region_shift(num_blocks: u64) -> u32 {
    let mut shift = 0;
    while num_blocks.max(1).div_ceil(1 << shift) > REGION_BITS_MAX {
        shift += 1;
    }
    shift
}

/// Regions of a volume of `num_blocks` at `shift`.
pub fn regions(num_blocks: u64, shift: u32) -> u64 {
    num_blocks.max(1).div_ceil(1 << shift)
}

/// The file image of a bitmap.
pub fn encode(shift: u32, regions: u64, start_lsn: u64, words: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_BYTES + regions.div_ceil(64) as usize * 8);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&shift.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // CRC, filled below
    b.extend_from_slice(&regions.to_le_bytes());
    b.extend_from_slice(&start_lsn.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // reserved
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..12]), &b[16..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A decoded file: geometry, start LSN and the bitmap words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapImage {
    pub shift: u32,
    pub regions: u64,
    pub start_lsn: u64,
    pub words: Vec<u64>,
}

impl MapImage {
    /// The marked regions as (first block, blocks) runs, clipped to `num_blocks`.
    pub fn runs(&self, num_blocks: u64) -> Vec<(u64, u64)> {
        runs_of(|w| self.words[w], self.shift, self.regions, num_blocks)
    }
}

/// Marked regions as (first block, blocks) runs; `word(w)` is bitmap word `w`.
pub fn runs_of(word: impl Fn(usize) -> u64, shift: u32, regions: u64, num_blocks: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in 0..regions {
        if word((r / 64) as usize) & (1 << (r % 64)) == 0 {
            continue;
        }
        let first = r << shift;
        let len = (1u64 << shift).min(num_blocks.saturating_sub(first));
        match out.last_mut() {
            Some((f, l)) if *f + *l == first => *l += len,
            _ => out.push((first, len)),
        }
    }
    out
}

/// Sets the region bits of blocks `offset..offset + blocks` in `map` (one bit per `2^shift`
/// blocks, `regions` bits). True if a bit was in neither `map` nor `other` before: a new
/// mark. An atomic OR only for words that lack a bit; no allocation, no lock.
pub fn set_range(
    map: &[AtomicU64],
    other: Option<&[AtomicU64]>,
    shift: u32,
    regions: u64,
    offset: u64,
    blocks: u64,
) -> bool {
    if blocks == 0 {
        return false;
    }
    let first = (offset >> shift).min(regions - 1);
    let last = (offset.saturating_add(blocks - 1) >> shift).min(regions - 1);
    let mut new = false;
    let mut r = first;
    while r <= last {
        let w = (r / 64) as usize;
        let lo = r % 64;
        let hi = (last - (r - lo)).min(63);
        let mask = if hi - lo == 63 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo + 1)) - 1) << lo
        };
        if map[w].load(Ordering::Relaxed) & mask != mask {
            let before = map[w].fetch_or(mask, Ordering::AcqRel);
            let elsewhere = other.map_or(0, |o| o[w].load(Ordering::Acquire));
            new |= (before | elsewhere) & mask != mask;
        }
        r += hi - lo + 1;
    }
    new
}

/// Decodes a file image (`path` names it in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<MapImage, RegionMapError> {
    let invalid = |why: String| RegionMapError::Invalid {
        path: path.display().to_string(),
        why,
    };
    if bytes.len() < HEADER_BYTES {
        return Err(invalid(format!("{} bytes: shorter than the header", bytes.len())));
    }
    let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..12]), &bytes[16..]);
    if u32_at(0) != MAGIC || u32_at(4) != VERSION || u32_at(12) != crc {
        return Err(invalid("bad magic, version or CRC".into()));
    }
    let (shift, regions) = (u32_at(8), u64_at(16));
    if shift > 63 || regions > REGION_BITS_MAX {
        return Err(invalid(format!("geometry {regions} regions of 2^{shift} blocks")));
    }
    let words = regions.div_ceil(64) as usize;
    if bytes.len() != HEADER_BYTES + words * 8 {
        return Err(invalid(format!(
            "{} bytes, expected {}",
            bytes.len(),
            HEADER_BYTES + words * 8
        )));
    }
    Ok(MapImage {
        shift,
        regions,
        start_lsn: u64_at(24),
        words: (0..words).map(|w| u64_at(HEADER_BYTES + w * 8)).collect(),
    })
}

/// Reads and decodes `path`; `None` if it does not exist.
pub fn read(path: &Path) -> Result<Option<MapImage>, RegionMapError> {
    match std::fs::read(path) {
        Ok(b) => decode(&b, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegionMapError::Io {
            op: "read",
            path: path.display().to_string(),
            source,
        }),
    }
}

/// As [`read`], checking the geometry against the volume's (`shift`, `regions`).
pub fn load(path: &Path, shift: u32, regions: u64) -> Result<Option<MapImage>, RegionMapError> {
    let Some(m) = read(path)? else { return Ok(None) };
    if m.shift != shift || m.regions != regions {
        return Err(RegionMapError::Invalid {
            path: path.display().to_string(),
            why: format!(
                "geometry {} regions of 2^{} blocks, the volume has {regions} of 2^{shift}",
                m.regions, m.shift
            ),
        });
    }
    Ok(Some(m))
}

/// Writes `image` to `path` atomically and durably (temporary file, fdatasync, rename,
/// directory fsync). Blocking: never on a reactor.
pub fn write_atomic(path: &Path, image: &[u8]) -> Result<(), RegionMapError> {
    let io = |op: &'static str| {
        move |source| RegionMapError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create"))?;
    f.write_all(image).map_err(io("write"))?;
    f.sync_data().map_err(io("fdatasync"))?;
    std::fs::rename(&tmp, path).map_err(io("rename"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync dir"))?;
    }
    Ok(())
}

/// A write-intent bitmap: one bit per region, persisted by a background thread before the
/// writes that set new bits are issued (see the module docs). Shared between the reactors
/// that mark it and the flusher.
pub struct IntentMap {
    shift: u32,
    regions: u64,
    num_blocks: u64,
    bits: Box<[AtomicU64]>,
    start_lsn: u64,
    /// Marks taken (bits newly set) and marks the file holds.
    marks: AtomicU64,
    flushed: AtomicU64,
    path: Option<PathBuf>,
    stop: AtomicBool,
    last_error: Mutex<String>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl IntentMap {
    /// A map for a volume of `num_blocks` persisted to `path` (memory only without one).
    /// An existing file of the same geometry is loaded and kept; `seed` runs are marked;
    /// `start_lsn` is recorded for a new file. Starts the flusher and writes the file once.
    pub fn open(
        num_blocks: u64,
        path: Option<PathBuf>,
        start_lsn: u64,
        seed: &[(u64, u64)],
    ) -> Result<Arc<IntentMap>, RegionMapError> {
        let shift = region_shift(num_blocks);
        let regions = regions(num_blocks, shift);
        let words = regions.div_ceil(64) as usize;
        let bits: Box<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let mut start = start_lsn;
        if let Some(p) = &path {
            if let Some(m) = load(p, shift, regions)? {
                for (w, v) in m.words.into_iter().enumerate() {
                    bits[w].store(v, Ordering::Relaxed);
                }
                start = m.start_lsn;
            }
        }
        let map = Arc::new(IntentMap {
            shift,
            regions,
            num_blocks,
            bits,
            start_lsn: start,
            marks: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            path,
            stop: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            flusher: Mutex::new(None),
        });
        for &(o, n) in seed {
            map.set(o, n);
        }
        if let Some(p) = map.path.clone() {
            write_atomic(&p, &map.image())?;
            let m = map.clone();
            let h = std::thread::Builder::new()
                .name("intent-map".into())
                .spawn(move || flush_loop(&m, &p))
                .map_err(|source| RegionMapError::Io {
                    op: "spawn flusher",
                    path: String::new(),
                    source,
                })?;
            *map.flusher.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        }
        Ok(map)
    }

    /// Sets the bits of `offset..offset + blocks`; true if one was not set.
    fn set(&self, offset: u64, blocks: u64) -> bool {
        set_range(&self.bits, None, self.shift, self.regions, offset, blocks)
    }

    /// Marks `offset..offset + blocks` as about to be written. Returns the mark the write
    /// must see [`Self::flushed`] reach before it is issued (0: none). Any reactor; no
    /// allocation, no lock.
    pub fn mark(&self, offset: u64, blocks: u64) -> u64 {
        let new = self.set(offset, blocks);
        if self.path.is_none() {
            return 0;
        }
        if new {
            return self.marks.fetch_add(1, Ordering::AcqRel) + 1;
        }
        // A bit set by another write may not be persisted yet either.
        self.marks.load(Ordering::Acquire)
    }

    /// Marks the file holds (`u64::MAX` without a file).
    pub fn flushed(&self) -> u64 {
        if self.path.is_none() {
            return u64::MAX;
        }
        self.flushed.load(Ordering::Acquire)
    }

    /// The marked regions as (first block, blocks) runs.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        runs_of(
            |w| self.bits[w].load(Ordering::Acquire),
            self.shift,
            self.regions,
            self.num_blocks,
        )
    }

    /// Regions marked.
    pub fn marked_regions(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }

    /// Blocks per region.
    pub fn region_blocks(&self) -> u64 {
        1 << self.shift
    }

    /// The file ("" in memory only).
    pub fn path(&self) -> String {
        self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    }

    /// The last error writing the file ("" if none).
    pub fn last_error(&self) -> String {
        self.last_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn image(&self) -> Vec<u8> {
        encode(
            self.shift,
            self.regions,
            self.start_lsn,
            self.bits.iter().map(|w| w.load(Ordering::Acquire)),
        )
    }

    /// Stops the flusher after a last write of the file.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.flusher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

fn flush_loop(m: &IntentMap, path: &Path) {
    loop {
        let stopping = m.stop.load(Ordering::Acquire);
        // The mark count before the bits: every bit of a mark <= `n` is in the image.
        let n = m.marks.load(Ordering::Acquire);
        if n > m.flushed.load(Ordering::Acquire) || stopping {
            match write_atomic(path, &m.image()) {
                Ok(()) => m.flushed.store(n, Ordering::Release),
                Err(e) => {
                    let why = e.to_string();
                    if let Ok(mut le) = m.last_error.lock() {
                        if *le != why {
                            log::error!("{why}; writes to new regions wait");
                            *le = why;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(FLUSH_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_bounded_and_runs_merge() {
        assert_eq!(region_shift(1000), 0);
        assert_eq!(region_shift(REGION_BITS_MAX + 1), 1);
        let m = IntentMap::open(1000, None, 0, &[(10, 1), (60, 10)]).unwrap();
        assert_eq!(m.mark(999, 5), 0, "memory only: nothing to wait for");
        assert_eq!(m.runs(), vec![(10, 1), (60, 10), (999, 1)]);
        assert_eq!(m.marked_regions(), 12);
    }

    #[test]
    fn marks_wait_for_the_file_and_survive_reopen_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("baton-regionmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.map");
        let _ = std::fs::remove_file(&path);
        let m = IntentMap::open(4096, Some(path.clone()), 7, &[(5, 2)]).unwrap();
        let k = m.mark(100, 3);
        assert!(k >= 1);
        let t = std::time::Instant::now();
        while m.flushed() < k {
            assert!(t.elapsed() < Duration::from_secs(10), "the flusher wrote the mark");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(m.mark(101, 1), k, "already marked: no new mark");
        m.stop();
        let img = read(&path).unwrap().unwrap();
        assert_eq!(img.start_lsn, 7);
        assert_eq!(img.runs(4096), vec![(5, 2), (100, 3)]);
        let m2 = IntentMap::open(4096, Some(path.clone()), 99, &[]).unwrap();
        assert_eq!(m2.runs(), vec![(5, 2), (100, 3)], "kept across a reopen");
        m2.stop();
        assert!(load(&path, 0, 8192).is_err(), "another geometry is refused");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES] ^= 1;
        assert!(decode(&bytes, &path).is_err(), "a flipped bit fails the CRC");
        assert!(decode(&bytes[..10], &path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
