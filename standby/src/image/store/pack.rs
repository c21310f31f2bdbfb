//! Pack files: content-addressed chunks appended after a magic, then an
//! index of (hash, offset, length) records, its count and CRC32C, and an end
//! magic (layout in `docs/execution-images.md`). Also where a manifest's
//! chunks are, reading them back, and dropping a corrupt one.

use super::file::{corrupt, sync_dir, TmpFile};
use super::manifest::Manifest;
use super::{lock, AppShared, AppState, READ_RUN_MAX};
use crate::image::{hex, Hash, ImageError, CHUNK_SIZE};
use crate::le;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PACK_MAGIC: &[u8; 8] = b"BTNPACK1";
const PACK_END_MAGIC: &[u8; 8] = b"BTNPEND1";
const PACK_RECORD_BYTES: usize = 44;
const PACK_FOOTER_BYTES: usize = 24;

#[derive(Debug)]
pub(super) struct Pack {
    pub(super) id: u64,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) bytes: u64,
    /// (hash, offset, len) of each chunk, in file order.
    pub(super) records: Vec<(Hash, u64, u32)>,
}

#[derive(Debug, Clone)]
pub(super) struct Loc {
    pub(super) pack: Arc<Pack>,
    pub(super) offset: u64,
    pub(super) len: u32,
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
    pub(super) fn create(a: &AppShared) -> Result<PackWriter, ImageError> {
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

    pub(super) fn finish(mut self, a: &AppShared, id: u64) -> Result<Pack, ImageError> {
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

/// Reads and checks a pack's footer and index.
pub(super) fn load_pack(id: u64, path: &Path) -> Result<Pack, ImageError> {
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
    let index_offset = le::u64_at(&foot, 0);
    let count = le::u32_at(&foot, 8) as u64;
    let crc = le::u32_at(&foot, 12);
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
        let off = le::u64_at(r, 32);
        let len = le::u32_at(r, 40);
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

/// Replaces pack `p` by a new pack holding only `keep` of its records (new
/// id, fsync, rename), points the index at the new copies, drops the old
/// pack from the map and unlinks its file (readers holding it keep reading
/// the open file).
pub(super) fn rewrite_pack(
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
pub(super) fn locate(st: &AppState, app: &str, m: &Manifest) -> Result<Vec<Loc>, ImageError> {
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
pub(super) fn read_chunks(
    locs: &[Loc],
    mut f: impl FnMut(usize, &[u8]) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
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

impl AppShared {
    /// Drops a chunk found corrupt: removes it from the index and rewrites
    /// its pack without it (so a restart does not index it again); the next
    /// transfer that needs its content is asked for it.
    pub(super) fn evict(&self, h: &Hash, at: &Loc) {
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
