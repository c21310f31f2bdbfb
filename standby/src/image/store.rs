//! The standby host's execution-image store.
//!
//! Layout (one directory per application, nothing shared between them):
//!
//! ```text
//! <dir>/apps/<app>/images/<seq:020>-<hash hex>.manifest   one per saved image
//! <dir>/apps/<app>/packs/<id:016>.pack                    content-addressed chunks
//! <dir>/apps/<app>/restore/<seq:020>-<hash hex>.img       images handed out by restore
//! <dir>/apps/<app>/tmp/                                   files being written; emptied at open
//! ```
//!
//! A transfer writes the chunks the store lacked into one new pack (in
//! `tmp/`, fsync, rename into `packs/`, fsync the directory), then reads the
//! whole image back through the chunk index and checks its BLAKE3, then
//! writes the manifest the same way (tmp, fsync, rename, fsync dir). The
//! rename of the manifest is the commit: an image is visible only once all
//! its chunks are durable and verified. A crash leaves at worst an
//! unreferenced pack, which the next [`ImageStore::prune`] removes.
//!
//! One `ImageStore` per directory: the server and the standby host share the
//! same instance ([`super::ImageServer::store`]); two instances (or two
//! processes) over one directory are not supported.

use super::{chunk_count, chunk_len, hex, parse_restart_tag, unhex, Hash, ImageError, CHUNK_SIZE};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const PACK_MAGIC: &[u8; 8] = b"BTNPACK1";
const PACK_END_MAGIC: &[u8; 8] = b"BTNPEND1";
const PACK_RECORD_BYTES: usize = 44;
const PACK_FOOTER_BYTES: usize = 24;
const MANIFEST_MAGIC: &[u8; 8] = b"BTNIMGM1";
const MANIFEST_VERSION: u32 = 1;
const MANIFEST_FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 32 + 4;
/// Largest read while streaming an image back from its packs.
const READ_RUN_MAX: usize = 1 << 20;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// What [`ImageStore::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub images_removed: usize,
    /// Chunks no image references any more, removed from the store.
    pub chunks_removed: usize,
    /// Packs deleted because none of their chunks was referenced.
    pub packs_deleted: usize,
    /// Packs rewritten with only their referenced chunks.
    pub packs_compacted: usize,
    /// Pack file bytes freed.
    pub bytes_freed: u64,
}

/// Counters of one application's part of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub images: usize,
    /// Distinct chunks held.
    pub chunks: usize,
    pub packs: usize,
    /// Bytes of all pack files.
    pub pack_bytes: u64,
    /// Transfers in progress (their chunks are kept by prune).
    pub in_flight: usize,
}

/// One image's manifest: its length, whole hash and the hash of each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub seq: u64,
    pub len: u64,
    pub hash: Hash,
    pub chunks: Vec<Hash>,
}

#[derive(Debug)]
struct Pack {
    id: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
    /// (hash, offset, len) of each chunk, in file order.
    records: Vec<(Hash, u64, u32)>,
}

#[derive(Debug, Clone)]
struct Loc {
    pack: Arc<Pack>,
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct AppState {
    packs: BTreeMap<u64, Arc<Pack>>,
    index: HashMap<Hash, Loc>,
    images: BTreeMap<(u64, Hash), Arc<Manifest>>,
    pins: HashMap<u64, Arc<Manifest>>,
    next_pin: u64,
    next_pack: u64,
}

#[derive(Debug)]
pub(crate) struct AppShared {
    name: String,
    dir: PathBuf,
    state: Mutex<AppState>,
}

/// The execution-image store (see the module docs for the layout).
/// All methods take `&self` and may be called from any thread.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    apps: Mutex<HashMap<String, Arc<AppShared>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves state that every step keeps
    // consistent between its file operations; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(format!("fsync directory {}", dir.display()), e))
}

fn mkdirs(dir: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))
}

fn image_file_stem(seq: u64, hash: &Hash) -> String {
    format!("{seq:020}-{}", hex(hash))
}

fn parse_image_stem(stem: &str) -> Option<(u64, Hash)> {
    let (s, h) = stem.split_once('-')?;
    if s.len() != 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((s.parse().ok()?, unhex(h)?))
}

impl ImageStore {
    /// Opens (creating if absent) the store in `dir`: removes what crashed
    /// transfers left in `tmp/`, loads every pack index and manifest. A pack
    /// or manifest that fails its checks is renamed to `*.bad` and logged;
    /// restoring an image that needed it then reports the missing chunk.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let apps_dir = dir.join("apps");
        mkdirs(&apps_dir)?;
        let mut apps = HashMap::new();
        let rd = fs::read_dir(&apps_dir).map_err(|e| ImageError::io(format!("read {}", apps_dir.display()), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| ImageError::io(format!("read {}", apps_dir.display()), e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if super::check_app_name(&name).is_err() || !ent.path().is_dir() {
                log::warn!("image store: ignoring {}", ent.path().display());
                continue;
            }
            let app = load_app(&name, &ent.path())?;
            apps.insert(name, Arc::new(app));
        }
        Ok(ImageStore {
            root: dir.to_path_buf(),
            apps: Mutex::new(apps),
        })
    }

    /// The directory the store was opened on.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub(crate) fn app(&self, name: &str) -> Result<Arc<AppShared>, ImageError> {
        super::check_app_name(name)?;
        let mut apps = lock(&self.apps);
        if let Some(a) = apps.get(name) {
            return Ok(a.clone());
        }
        let dir = self.root.join("apps").join(name);
        for sub in ["images", "packs", "restore", "tmp"] {
            mkdirs(&dir.join(sub))?;
        }
        sync_dir(&self.root.join("apps"))?;
        let a = Arc::new(AppShared {
            name: name.to_owned(),
            dir,
            state: Mutex::new(AppState::default()),
        });
        apps.insert(name.to_owned(), a.clone());
        Ok(a)
    }

    fn existing(&self, name: &str) -> Option<Arc<AppShared>> {
        lock(&self.apps).get(name).cloned()
    }

    /// The saved images of `app`, as (seq, whole-image BLAKE3), ascending.
    /// An unknown app has none.
    pub fn list(&self, app: &str) -> Vec<(u64, [u8; 32])> {
        match self.existing(app) {
            Some(a) => lock(&a.state).images.keys().copied().collect(),
            None => Vec::new(),
        }
    }

    /// Counters of `app`'s part of the store.
    pub fn stats(&self, app: &str) -> StoreStats {
        let Some(a) = self.existing(app) else {
            return StoreStats::default();
        };
        let st = lock(&a.state);
        StoreStats {
            images: st.images.len(),
            chunks: st.index.len(),
            packs: st.packs.len(),
            pack_bytes: st.packs.values().map(|p| p.bytes).sum(),
            in_flight: st.pins.len(),
        }
    }

    /// Writes image `seq` with whole-image BLAKE3 `hash` of `app` to
    /// `<dir>/apps/<app>/restore/<seq>-<hash>.img` and returns that path.
    /// Every chunk is checked against its manifest hash as it is read (a
    /// corrupt one gives [`ImageError::CorruptChunk`] naming its index, hash,
    /// pack and offset, and is dropped from the store so the next transfer
    /// that needs it resends it) and the whole file against `hash`; the file
    /// is fsynced and renamed into place, so the path always holds a whole
    /// verified image. Blocking I/O: the standby host's management path.
    pub fn restore(&self, app: &str, seq: u64, hash: &[u8; 32]) -> Result<PathBuf, ImageError> {
        super::check_app_name(app)?;
        let not_found = || ImageError::NotFound {
            app: app.to_owned(),
            seq,
            hash: hex(hash),
        };
        let a = self.existing(app).ok_or_else(not_found)?;
        let (m, locs) = {
            let st = lock(&a.state);
            let m = st.images.get(&(seq, *hash)).cloned().ok_or_else(not_found)?;
            let locs = locate(&st, &a.name, &m)?;
            (m, locs)
        };
        let tmp = a.tmp_path("img");
        let out = File::create(&tmp).map_err(|e| ImageError::io(format!("create {}", tmp.display()), e))?;
        let cleanup = TmpFile(Some(tmp.clone()));
        let mut w = BufWriter::with_capacity(READ_RUN_MAX, out);
        let mut whole = blake3::Hasher::new();
        let mut bad: Option<ImageError> = None;
        read_chunks(&locs, |index, data| {
            if bad.is_some() {
                return Ok(());
            }
            if blake3::hash(data).as_bytes() != &m.chunks[index] {
                let l = &locs[index];
                bad = Some(ImageError::CorruptChunk {
                    app: a.name.clone(),
                    seq,
                    index: index as u64,
                    hash: hex(&m.chunks[index]),
                    pack: l.pack.path.display().to_string(),
                    offset: l.offset,
                });
                return Ok(());
            }
            whole.update(data);
            w.write_all(data)
                .map_err(|e| ImageError::io(format!("write {}", tmp.display()), e))
        })?;
        if let Some(e) = bad {
            if let ImageError::CorruptChunk { index, .. } = &e {
                a.evict(&m.chunks[*index as usize], &locs[*index as usize]);
            }
            return Err(e);
        }
        let actual = *whole.finalize().as_bytes();
        if &actual != hash {
            return Err(ImageError::ImageHashMismatch {
                seq,
                expected: hex(hash),
                actual: hex(&actual),
            });
        }
        let f = w
            .into_inner()
            .map_err(|e| ImageError::io(format!("write {}", tmp.display()), e.into_error()))?;
        f.sync_all()
            .map_err(|e| ImageError::io(format!("fsync {}", tmp.display()), e))?;
        let dst = a
            .dir
            .join("restore")
            .join(format!("{}.img", image_file_stem(seq, hash)));
        fs::rename(&tmp, &dst).map_err(|e| ImageError::io(format!("rename to {}", dst.display()), e))?;
        cleanup.keep();
        sync_dir(&a.dir.join("restore"))?;
        Ok(dst)
    }

    /// [`ImageStore::restore`] of the image named by a restart-point tag
    /// (see [`super::restart_tag`]), e.g. the tag the standby volume reports
    /// for its last applied restart point.
    pub fn restore_tag(&self, app: &str, tag: &[u8]) -> Result<PathBuf, ImageError> {
        let (seq, hash) = parse_restart_tag(tag).ok_or(ImageError::BadTag { len: tag.len() })?;
        self.restore(app, seq, &hash)
    }

    /// Removes `app`'s images with seq < `keep_from_seq` (their manifests and
    /// restored files), then every chunk no remaining image and no transfer
    /// in progress references: a pack left with no referenced chunk is
    /// deleted, a pack with some is rewritten with only those (new pack,
    /// fsync, rename, then the old one is deleted). Costs a rewrite of the
    /// live part of each pack that lost a chunk, so call it every few
    /// restart points rather than at each. Blocks `app`'s transfers while it
    /// runs. A crash in the middle leaves the store valid (at worst an extra
    /// copy of some chunks, removed by the next prune).
    pub fn prune(&self, app: &str, keep_from_seq: u64) -> Result<PruneReport, ImageError> {
        super::check_app_name(app)?;
        let Some(a) = self.existing(app) else {
            return Ok(PruneReport::default());
        };
        let mut st = lock(&a.state);
        let mut rep = PruneReport::default();
        let old: Vec<(u64, Hash)> = st.images.range(..(keep_from_seq, [0u8; 32])).map(|(k, _)| *k).collect();
        for (seq, hash) in &old {
            let stem = image_file_stem(*seq, hash);
            let mf = a.dir.join("images").join(format!("{stem}.manifest"));
            fs::remove_file(&mf).map_err(|e| ImageError::io(format!("remove {}", mf.display()), e))?;
            let rf = a.dir.join("restore").join(format!("{stem}.img"));
            match fs::remove_file(&rf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("remove {}", rf.display()), e)),
            }
            st.images.remove(&(*seq, *hash));
            rep.images_removed += 1;
        }
        sync_dir(&a.dir.join("images"))?;
        let live: HashSet<Hash> = st
            .images
            .values()
            .chain(st.pins.values())
            .flat_map(|m| m.chunks.iter().copied())
            .collect();
        let packs: Vec<Arc<Pack>> = st.packs.values().cloned().collect();
        for p in packs {
            // A record is live if referenced and it is the copy the index serves.
            let is_live = |st: &AppState, h: &Hash, off: u64| {
                live.contains(h) && st.index.get(h).is_some_and(|l| l.pack.id == p.id && l.offset == off)
            };
            let keep: Vec<(Hash, u64, u32)> = p
                .records
                .iter()
                .filter(|(h, off, _)| is_live(&st, h, *off))
                .copied()
                .collect();
            if keep.len() == p.records.len() {
                continue;
            }
            let dead = p.records.len() - keep.len();
            for (h, off, _) in &p.records {
                if st.index.get(h).is_some_and(|l| l.pack.id == p.id && l.offset == *off) && !live.contains(h) {
                    st.index.remove(h);
                }
            }
            rep.chunks_removed += dead;
            if keep.is_empty() {
                st.packs.remove(&p.id);
                fs::remove_file(&p.path).map_err(|e| ImageError::io(format!("remove {}", p.path.display()), e))?;
                rep.packs_deleted += 1;
                rep.bytes_freed += p.bytes;
                continue;
            }
            let np = rewrite_pack(&a, &mut st, &p, &keep)?;
            rep.packs_compacted += 1;
            rep.bytes_freed += p.bytes.saturating_sub(np.bytes);
        }
        sync_dir(&a.dir.join("packs"))?;
        Ok(rep)
    }
}

/// Replaces pack `p` by a new pack holding only `keep` of its records (new
/// id, fsync, rename), points the index at the new copies, drops the old
/// pack from the map and unlinks its file (readers holding it keep reading
/// the open file).
fn rewrite_pack(
    a: &AppShared,
    st: &mut AppState,
    p: &Arc<Pack>,
    keep: &[(Hash, u64, u32)],
) -> Result<Arc<Pack>, ImageError> {
    let mut w = PackWriter::create(a)?;
    let mut buf = vec![0u8; CHUNK_SIZE];
    for (h, off, len) in keep {
        let d = &mut buf[..*len as usize];
        p.file
            .read_exact_at(d, *off)
            .map_err(|e| ImageError::io(format!("read {}", p.path.display()), e))?;
        w.append(h, d)?;
    }
    let id = st.next_pack;
    st.next_pack += 1;
    let np = Arc::new(w.finish(a, id)?);
    for (h, off, len) in &np.records {
        st.index.insert(
            *h,
            Loc {
                pack: np.clone(),
                offset: *off,
                len: *len,
            },
        );
    }
    st.packs.insert(id, np.clone());
    st.packs.remove(&p.id);
    fs::remove_file(&p.path).map_err(|e| ImageError::io(format!("remove {}", p.path.display()), e))?;
    Ok(np)
}

/// Locations of each chunk of `m`, in order.
fn locate(st: &AppState, app: &str, m: &Manifest) -> Result<Vec<Loc>, ImageError> {
    m.chunks
        .iter()
        .enumerate()
        .map(|(i, h)| {
            st.index.get(h).cloned().ok_or_else(|| ImageError::MissingChunk {
                app: app.to_owned(),
                seq: m.seq,
                index: i as u64,
                hash: hex(h),
            })
        })
        .collect()
}

/// Reads the chunks at `locs` in order, calling `f(index, data)` for each;
/// adjacent chunks of one pack are read together, up to 1 MiB at a time.
fn read_chunks(locs: &[Loc], mut f: impl FnMut(usize, &[u8]) -> Result<(), ImageError>) -> Result<(), ImageError> {
    let mut buf = vec![0u8; READ_RUN_MAX];
    let mut i = 0;
    while i < locs.len() {
        let first = &locs[i];
        let mut end = first.offset + first.len as u64;
        let mut j = i + 1;
        while j < locs.len()
            && Arc::ptr_eq(&locs[j].pack, &first.pack)
            && locs[j].offset == end
            && (end - first.offset) as usize + locs[j].len as usize <= READ_RUN_MAX
        {
            end += locs[j].len as u64;
            j += 1;
        }
        let n = (end - first.offset) as usize;
        first
            .pack
            .file
            .read_exact_at(&mut buf[..n], first.offset)
            .map_err(|e| ImageError::io(format!("read {}", first.pack.path.display()), e))?;
        let mut at = 0;
        for (k, l) in locs.iter().enumerate().take(j).skip(i) {
            f(k, &buf[at..at + l.len as usize])?;
            at += l.len as usize;
        }
        i = j;
    }
    Ok(())
}

/// Removes a temporary file on drop unless kept.
struct TmpFile(Option<PathBuf>);
impl TmpFile {
    fn keep(mut self) {
        self.0 = None;
    }
}
impl Drop for TmpFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

impl AppShared {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn tmp_path(&self, ext: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir.join("tmp").join(format!("{}-{n}.{ext}", std::process::id()))
    }

    /// The manifest of a saved image, if held.
    pub(crate) fn manifest(&self, seq: u64, hash: &Hash) -> Option<Arc<Manifest>> {
        lock(&self.state).images.get(&(seq, *hash)).cloned()
    }

    /// Pins `m` (prune keeps its chunks until the returned [`Plan`] drops)
    /// and lists, in chunk order, the first index of each distinct chunk
    /// hash the store does not hold.
    pub(crate) fn plan(self: &Arc<Self>, m: Manifest) -> Plan {
        let m = Arc::new(m);
        let mut st = lock(&self.state);
        let pin = st.next_pin;
        st.next_pin += 1;
        st.pins.insert(pin, m.clone());
        let mut asked = HashSet::new();
        let need = m
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, h)| !st.index.contains_key(*h) && asked.insert(**h))
            .map(|(i, _)| i as u32)
            .collect();
        Plan {
            app: self.clone(),
            pin,
            manifest: m,
            need,
        }
    }

    /// Drops a chunk found corrupt: removes it from the index and rewrites
    /// its pack without it (so a restart does not index it again); the next
    /// transfer that needs its content is asked for it.
    fn evict(&self, h: &Hash, at: &Loc) {
        let mut st = lock(&self.state);
        let indexed = st
            .index
            .get(h)
            .is_some_and(|l| Arc::ptr_eq(&l.pack, &at.pack) && l.offset == at.offset);
        if !indexed {
            return;
        }
        log::error!(
            "image store {}: chunk {} in {} at {} is corrupt; dropping it",
            self.name,
            hex(h),
            at.pack.path.display(),
            at.offset
        );
        st.index.remove(h);
        let p = at.pack.clone();
        if !st.packs.get(&p.id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
            return;
        }
        let keep: Vec<(Hash, u64, u32)> = p
            .records
            .iter()
            .filter(|(rh, off, _)| {
                st.index
                    .get(rh)
                    .is_some_and(|l| Arc::ptr_eq(&l.pack, &p) && l.offset == *off)
            })
            .copied()
            .collect();
        let r = if keep.is_empty() {
            st.packs.remove(&p.id);
            fs::remove_file(&p.path).map_err(|e| ImageError::io(format!("remove {}", p.path.display()), e))
        } else {
            rewrite_pack(self, &mut st, &p, &keep).map(|_| ())
        };
        if let Err(e) = r.and_then(|_| sync_dir(&self.dir.join("packs"))) {
            log::error!(
                "image store {}: rewriting {} without the corrupt chunk: {e}",
                self.name,
                p.path.display()
            );
        }
    }
}

/// A transfer in progress: its manifest is pinned until this drops.
pub(crate) struct Plan {
    app: Arc<AppShared>,
    pin: u64,
    pub manifest: Arc<Manifest>,
    /// Chunk indices to receive, ascending.
    pub need: Vec<u32>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        lock(&self.app.state).pins.remove(&self.pin);
    }
}

impl Plan {
    /// Starts the pack that will hold the needed chunks.
    pub(crate) fn pack_writer(&self) -> Result<PackWriter, ImageError> {
        PackWriter::create(&self.app)
    }

    /// Commits: makes `pack` (the needed chunks, each already checked
    /// against its manifest hash) durable and indexed, reads the whole image
    /// back and checks its BLAKE3, then writes the manifest durably. Only
    /// after this returns `Ok` is the image listed.
    pub(crate) fn commit(self, pack: Option<PackWriter>) -> Result<(), ImageError> {
        let a = &self.app;
        let m = &self.manifest;
        if let Some(w) = pack {
            let id = {
                let mut st = lock(&a.state);
                st.next_pack += 1;
                st.next_pack - 1
            };
            let p = Arc::new(w.finish(a, id)?);
            let mut st = lock(&a.state);
            for (h, off, len) in &p.records {
                st.index.entry(*h).or_insert_with(|| Loc {
                    pack: p.clone(),
                    offset: *off,
                    len: *len,
                });
            }
            st.packs.insert(id, p);
        }
        let locs = locate(&lock(&a.state), &a.name, m)?;
        let mut whole = blake3::Hasher::new();
        read_chunks(&locs, |_, d| {
            whole.update(d);
            Ok(())
        })?;
        let actual = *whole.finalize().as_bytes();
        if actual != m.hash {
            // Find which stored chunk is wrong (each received chunk was
            // checked on arrival, so a bad one is an older stored chunk).
            let mut bad = None;
            read_chunks(&locs, |i, d| {
                if bad.is_none() && blake3::hash(d).as_bytes() != &m.chunks[i] {
                    bad = Some(i);
                }
                Ok(())
            })?;
            return Err(match bad {
                Some(i) => {
                    a.evict(&m.chunks[i], &locs[i]);
                    ImageError::CorruptChunk {
                        app: a.name.clone(),
                        seq: m.seq,
                        index: i as u64,
                        hash: hex(&m.chunks[i]),
                        pack: locs[i].pack.path.display().to_string(),
                        offset: locs[i].offset,
                    }
                }
                None => ImageError::ImageHashMismatch {
                    seq: m.seq,
                    expected: hex(&m.hash),
                    actual: hex(&actual),
                },
            });
        }
        let stem = image_file_stem(m.seq, &m.hash);
        let tmp = a.tmp_path("manifest");
        let guard = TmpFile(Some(tmp.clone()));
        let bytes = encode_manifest(m);
        let mut f = File::create(&tmp).map_err(|e| ImageError::io(format!("create {}", tmp.display()), e))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| ImageError::io(format!("write {}", tmp.display()), e))?;
        let dst = a.dir.join("images").join(format!("{stem}.manifest"));
        // Under the lock: prune never sees a manifest file without its entry.
        let mut st = lock(&a.state);
        fs::rename(&tmp, &dst).map_err(|e| ImageError::io(format!("rename to {}", dst.display()), e))?;
        guard.keep();
        sync_dir(&a.dir.join("images"))?;
        st.images.insert((m.seq, m.hash), m.clone());
        Ok(())
    }
}

/// Writes a new pack in `tmp/`; [`PackWriter::finish`] makes it durable and
/// moves it into `packs/`. Dropped unfinished, the temporary file is removed.
pub(crate) struct PackWriter {
    tmp: TmpFile,
    path: PathBuf,
    w: BufWriter<File>,
    at: u64,
    records: Vec<(Hash, u64, u32)>,
}

impl PackWriter {
    fn create(a: &AppShared) -> Result<PackWriter, ImageError> {
        let path = a.tmp_path("pack");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImageError::io(format!("create {}", path.display()), e))?;
        let mut w = BufWriter::with_capacity(READ_RUN_MAX, f);
        w.write_all(PACK_MAGIC)
            .map_err(|e| ImageError::io(format!("write {}", path.display()), e))?;
        Ok(PackWriter {
            tmp: TmpFile(Some(path.clone())),
            path,
            w,
            at: PACK_MAGIC.len() as u64,
            records: Vec::new(),
        })
    }

    /// Appends one chunk (the caller checked `blake3(data) == hash`).
    pub(crate) fn append(&mut self, hash: &Hash, data: &[u8]) -> Result<(), ImageError> {
        debug_assert!(!data.is_empty() && data.len() <= CHUNK_SIZE);
        self.w
            .write_all(data)
            .map_err(|e| ImageError::io(format!("write {}", self.path.display()), e))?;
        self.records.push((*hash, self.at, data.len() as u32));
        self.at += data.len() as u64;
        Ok(())
    }

    fn finish(mut self, a: &AppShared, id: u64) -> Result<Pack, ImageError> {
        let index_offset = self.at;
        let mut tail = Vec::with_capacity(self.records.len() * PACK_RECORD_BYTES + 24);
        for (h, off, len) in &self.records {
            tail.extend_from_slice(h);
            tail.extend_from_slice(&off.to_le_bytes());
            tail.extend_from_slice(&len.to_le_bytes());
        }
        tail.extend_from_slice(&index_offset.to_le_bytes());
        tail.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&tail);
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.extend_from_slice(PACK_END_MAGIC);
        let werr = |e| ImageError::io(format!("write {}", self.path.display()), e);
        self.w.write_all(&tail).map_err(werr)?;
        let f = self
            .w
            .into_inner()
            .map_err(|e| ImageError::io(format!("write {}", self.path.display()), e.into_error()))?;
        f.sync_all()
            .map_err(|e| ImageError::io(format!("fsync {}", self.path.display()), e))?;
        let dst = a.dir.join("packs").join(format!("{id:016}.pack"));
        fs::rename(&self.path, &dst).map_err(|e| ImageError::io(format!("rename to {}", dst.display()), e))?;
        self.tmp.keep();
        sync_dir(&a.dir.join("packs"))?;
        Ok(Pack {
            id,
            path: dst,
            file: f,
            bytes: index_offset + tail.len() as u64,
            records: self.records,
        })
    }
}

fn corrupt(path: &Path, why: impl Into<String>) -> ImageError {
    ImageError::CorruptFile {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Reads and checks a pack's footer and index.
fn load_pack(id: u64, path: &Path) -> Result<Pack, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| ImageError::io(format!("open {}", path.display()), e))?;
    let bytes = file
        .metadata()
        .map_err(|e| ImageError::io(format!("stat {}", path.display()), e))?
        .len();
    let min = (PACK_MAGIC.len() + PACK_FOOTER_BYTES) as u64;
    if bytes < min {
        return Err(corrupt(path, format!("{bytes} bytes, shorter than {min}")));
    }
    let rd = |off: u64, n: usize| -> Result<Vec<u8>, ImageError> {
        let mut v = vec![0u8; n];
        file.read_exact_at(&mut v, off)
            .map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        Ok(v)
    };
    if rd(0, 8)? != PACK_MAGIC {
        return Err(corrupt(path, "bad pack magic"));
    }
    let foot = rd(bytes - PACK_FOOTER_BYTES as u64, PACK_FOOTER_BYTES)?;
    if &foot[16..] != PACK_END_MAGIC {
        return Err(corrupt(path, "bad pack end magic (torn or truncated)"));
    }
    let index_offset = u64::from_le_bytes(foot[..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(foot[8..12].try_into().expect("4 bytes")) as u64;
    let crc = u32::from_le_bytes(foot[12..16].try_into().expect("4 bytes"));
    let expect_len = index_offset
        .checked_add(count * PACK_RECORD_BYTES as u64)
        .and_then(|v| v.checked_add(PACK_FOOTER_BYTES as u64));
    if expect_len != Some(bytes) || index_offset < PACK_MAGIC.len() as u64 {
        return Err(corrupt(
            path,
            format!("index at {index_offset} with {count} records does not fit {bytes} bytes"),
        ));
    }
    let idx = rd(index_offset, (bytes - index_offset) as usize - 8)?;
    let computed = crc32c::crc32c(&idx[..idx.len() - 4]);
    if computed != crc {
        return Err(corrupt(
            path,
            format!("index CRC32C {crc:#010x}, computed {computed:#010x}"),
        ));
    }
    let mut records = Vec::with_capacity(count as usize);
    for r in idx[..count as usize * PACK_RECORD_BYTES].chunks_exact(PACK_RECORD_BYTES) {
        let h: Hash = r[..32].try_into().expect("32 bytes");
        let off = u64::from_le_bytes(r[32..40].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(r[40..44].try_into().expect("4 bytes"));
        let end = off.checked_add(len as u64);
        if len == 0
            || len as usize > CHUNK_SIZE
            || off < PACK_MAGIC.len() as u64
            || end.is_none_or(|e| e > index_offset)
        {
            return Err(corrupt(
                path,
                format!("record at {off} of {len} bytes outside the data"),
            ));
        }
        records.push((h, off, len));
    }
    Ok(Pack {
        id,
        path: path.to_path_buf(),
        file,
        bytes,
        records,
    })
}

fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut v = Vec::with_capacity(MANIFEST_FIXED_BYTES + 32 * m.chunks.len() + 4);
    v.extend_from_slice(MANIFEST_MAGIC);
    v.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    v.extend_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
    v.extend_from_slice(&m.seq.to_le_bytes());
    v.extend_from_slice(&m.len.to_le_bytes());
    v.extend_from_slice(&m.hash);
    v.extend_from_slice(&(m.chunks.len() as u32).to_le_bytes());
    for h in &m.chunks {
        v.extend_from_slice(h);
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn decode_manifest(path: &Path, b: &[u8]) -> Result<Manifest, ImageError> {
    if b.len() < MANIFEST_FIXED_BYTES + 4 {
        return Err(corrupt(path, format!("{} bytes, too short", b.len())));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(body);
    if crc != computed {
        return Err(corrupt(path, format!("CRC32C {crc:#010x}, computed {computed:#010x}")));
    }
    if &body[..8] != MANIFEST_MAGIC {
        return Err(corrupt(path, "bad manifest magic"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    let chunk = u32_at(12);
    if version != MANIFEST_VERSION || chunk as usize != CHUNK_SIZE {
        return Err(corrupt(
            path,
            format!("manifest version {version} chunk size {chunk}, expected {MANIFEST_VERSION} and {CHUNK_SIZE}"),
        ));
    }
    let seq = u64_at(16);
    let len = u64_at(24);
    let hash: Hash = body[32..64].try_into().expect("32 bytes");
    let count = u32_at(64) as u64;
    if len > super::IMAGE_BYTES_MAX || count != chunk_count(len) {
        return Err(corrupt(path, format!("{count} chunks for an image of {len} bytes")));
    }
    if body.len() as u64 != MANIFEST_FIXED_BYTES as u64 + 32 * count {
        return Err(corrupt(path, "length does not match the chunk count"));
    }
    let chunks = body[MANIFEST_FIXED_BYTES..]
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    Ok(Manifest { seq, len, hash, chunks })
}

fn set_aside(path: &Path, e: &ImageError) {
    log::error!("image store: {e}; renamed to .bad");
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    if let Err(e) = fs::rename(path, &bad) {
        log::error!("image store: rename {}: {e}", path.display());
    }
}

fn load_app(name: &str, dir: &Path) -> Result<AppShared, ImageError> {
    for sub in ["images", "packs", "restore", "tmp"] {
        mkdirs(&dir.join(sub))?;
    }
    let list = |sub: &str| -> Result<Vec<(String, PathBuf)>, ImageError> {
        let d = dir.join(sub);
        let mut v = Vec::new();
        for ent in fs::read_dir(&d).map_err(|e| ImageError::io(format!("read {}", d.display()), e))? {
            let ent = ent.map_err(|e| ImageError::io(format!("read {}", d.display()), e))?;
            if let Some(n) = ent.file_name().to_str() {
                v.push((n.to_owned(), ent.path()));
            }
        }
        v.sort();
        Ok(v)
    };
    for (_, p) in list("tmp")? {
        fs::remove_file(&p).map_err(|e| ImageError::io(format!("remove {}", p.display()), e))?;
    }
    let mut st = AppState::default();
    for (n, p) in list("packs")? {
        let Some(id) = n.strip_suffix(".pack").and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        match load_pack(id, &p) {
            Ok(pack) => {
                let pack = Arc::new(pack);
                for (h, off, len) in &pack.records {
                    st.index.entry(*h).or_insert_with(|| Loc {
                        pack: pack.clone(),
                        offset: *off,
                        len: *len,
                    });
                }
                st.next_pack = st.next_pack.max(id + 1);
                st.packs.insert(id, pack);
            }
            Err(e) => {
                st.next_pack = st.next_pack.max(id + 1);
                set_aside(&p, &e);
            }
        }
    }
    for (n, p) in list("images")? {
        let Some(key) = n.strip_suffix(".manifest").and_then(parse_image_stem) else {
            continue;
        };
        let m = fs::read(&p)
            .map_err(|e| ImageError::io(format!("read {}", p.display()), e))
            .and_then(|b| decode_manifest(&p, &b))
            .and_then(|m| {
                if (m.seq, m.hash) == key {
                    Ok(m)
                } else {
                    Err(corrupt(&p, "contents do not match the file name"))
                }
            });
        match m {
            Ok(m) => {
                st.images.insert(key, Arc::new(m));
            }
            Err(e) => set_aside(&p, &e),
        }
    }
    Ok(AppShared {
        name: name.to_owned(),
        dir: dir.to_path_buf(),
        state: Mutex::new(st),
    })
}

/// Builds the manifest of image `seq` of `len` bytes from `base`'s chunk
/// hashes and `entries` (changed chunk index -> new hash, ascending). Every
/// index at or past the base's chunk count must have an entry.
pub(crate) fn apply_delta(
    seq: u64,
    len: u64,
    hash: Hash,
    base: Option<&Manifest>,
    entries: &[(u32, Hash)],
) -> Result<Manifest, String> {
    let n = chunk_count(len) as usize;
    let mut chunks: Vec<Option<Hash>> = match base {
        Some(b) => b.chunks.iter().take(n).map(|h| Some(*h)).collect(),
        None => Vec::new(),
    };
    chunks.resize(n, None);
    let mut prev: Option<u32> = None;
    for (i, h) in entries {
        if prev.is_some_and(|p| p >= *i) {
            return Err(format!("entry index {i} is not above the previous one"));
        }
        prev = Some(*i);
        let slot = chunks
            .get_mut(*i as usize)
            .ok_or_else(|| format!("entry index {i} is beyond the {n} chunks"))?;
        *slot = Some(*h);
    }
    // A chunk kept from the base must keep its length: only the base's last
    // chunk and the new last chunk can differ.
    if let Some(b) = base {
        let bn = b.chunks.len();
        for i in [bn.wrapping_sub(1), n.wrapping_sub(1)] {
            if i < bn.min(n)
                && chunk_len(b.len, i as u64) != chunk_len(len, i as u64)
                && entries.binary_search_by_key(&(i as u32), |e| e.0).is_err()
            {
                return Err(format!("chunk {i} changed length but has no entry"));
            }
        }
    }
    let chunks = chunks
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.ok_or_else(|| format!("chunk {i} is past the base and has no entry")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Manifest { seq, len, hash, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_codec_round_trip_and_rejects() {
        let m = Manifest {
            seq: 9,
            len: 5000,
            hash: [7; 32],
            chunks: vec![[1; 32], [2; 32]],
        };
        let p = Path::new("x");
        let b = encode_manifest(&m);
        assert_eq!(decode_manifest(p, &b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(decode_manifest(p, &b[..cut]).is_err());
        }
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(decode_manifest(p, &bad).is_err());
    }

    #[test]
    fn delta_rules() {
        let base = Manifest {
            seq: 1,
            len: 3 * 4096,
            hash: [0; 32],
            chunks: vec![[1; 32], [2; 32], [3; 32]],
        };
        let m = apply_delta(2, 3 * 4096, [9; 32], Some(&base), &[(1, [5; 32])]).unwrap();
        assert_eq!(m.chunks, vec![[1; 32], [5; 32], [3; 32]]);
        // Shrink keeps the prefix.
        let m = apply_delta(2, 4096, [9; 32], Some(&base), &[]).unwrap();
        assert_eq!(m.chunks, vec![[1; 32]]);
        // Growth needs entries for the new chunks.
        assert!(apply_delta(2, 4 * 4096, [9; 32], Some(&base), &[]).is_err());
        assert!(apply_delta(2, 4 * 4096, [9; 32], Some(&base), &[(3, [4; 32])]).is_ok());
        // Out of order, out of range.
        assert!(apply_delta(2, 3 * 4096, [9; 32], Some(&base), &[(2, [4; 32]), (1, [4; 32])]).is_err());
        assert!(apply_delta(2, 3 * 4096, [9; 32], Some(&base), &[(3, [4; 32])]).is_err());
        // A short last chunk that grows must be resent.
        let short = Manifest {
            seq: 1,
            len: 4096 + 10,
            hash: [0; 32],
            chunks: vec![[1; 32], [2; 32]],
        };
        assert!(apply_delta(2, 4096 + 20, [9; 32], Some(&short), &[]).is_err());
        assert!(apply_delta(2, 4096 + 20, [9; 32], Some(&short), &[(1, [3; 32])]).is_ok());
        // So must a full chunk that becomes the short last one.
        assert!(apply_delta(2, 4096 + 5, [9; 32], Some(&base), &[]).is_err());
        assert!(apply_delta(2, 4096 + 5, [9; 32], Some(&base), &[(1, [3; 32])]).is_ok());
    }
}
