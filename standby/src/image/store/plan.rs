//! A transfer in progress: the chunks the store lacks, the pin that keeps
//! prune from removing the rest, and the commit that makes the image visible.

use super::file::{sync_dir, TmpFile};
use super::manifest::{encode_manifest, Manifest};
use super::pack::{locate, read_chunks, Loc, PackWriter};
use super::{image_file_stem, lock, AppShared};
use crate::image::{hex, ImageError};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::sync::Arc;

impl AppShared {
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
