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
//!
//! - [`pack`]: the pack file format (writer, loader), chunk locations and reads.
//! - [`manifest`]: the manifest file format and building one from a delta.
//! - [`plan`]: a transfer in progress, from its need list to the commit.
//! - [`file`]: directory fsync, temporary files, files set aside as corrupt.

mod file;
mod manifest;
mod pack;
mod plan;

pub(crate) use manifest::apply_delta;
pub(crate) use plan::Plan;

use super::{hex, parse_restart_tag, unhex, Hash, ImageError};
use file::{corrupt, mkdirs, set_aside, sync_dir, TmpFile};
use manifest::{decode_manifest, Manifest};
use pack::{load_pack, locate, read_chunks, rewrite_pack, Loc, Pack};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
