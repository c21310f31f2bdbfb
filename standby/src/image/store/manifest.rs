//! Manifests: one file per saved image naming its length, whole BLAKE3 and
//! the hash of each chunk, CRC32C-checked (layout in
//! `docs/execution-images.md`); and building the next manifest from a delta.

use super::file::corrupt;
use crate::image::{chunk_count, chunk_len, Hash, ImageError, CHUNK_SIZE, IMAGE_BYTES_MAX};
use crate::le;
use std::path::Path;

const MANIFEST_MAGIC: &[u8; 8] = b"BTNIMGM1";
const MANIFEST_VERSION: u32 = 1;
const MANIFEST_FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 32 + 4;

/// One image's manifest: its length, whole hash and the hash of each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub seq: u64,
    pub len: u64,
    pub hash: Hash,
    pub chunks: Vec<Hash>,
}

pub(super) fn encode_manifest(m: &Manifest) -> Vec<u8> {
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

pub(super) fn decode_manifest(path: &Path, b: &[u8]) -> Result<Manifest, ImageError> {
    if b.len() < MANIFEST_FIXED_BYTES + 4 {
        return Err(corrupt(path, format!("{} bytes, too short", b.len())));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let crc = le::u32_at(crc, 0);
    let computed = crc32c::crc32c(body);
    if crc != computed {
        return Err(corrupt(path, format!("CRC32C {crc:#010x}, computed {computed:#010x}")));
    }
    if &body[..8] != MANIFEST_MAGIC {
        return Err(corrupt(path, "bad manifest magic"));
    }
    let version = le::u32_at(body, 8);
    let chunk = le::u32_at(body, 12);
    if version != MANIFEST_VERSION || chunk as usize != CHUNK_SIZE {
        return Err(corrupt(
            path,
            format!("manifest version {version} chunk size {chunk}, expected {MANIFEST_VERSION} and {CHUNK_SIZE}"),
        ));
    }
    let seq = le::u64_at(body, 16);
    let len = le::u64_at(body, 24);
    let hash: Hash = body[32..64].try_into().expect("32 bytes");
    let count = le::u32_at(body, 64) as u64;
    if len > IMAGE_BYTES_MAX || count != chunk_count(len) {
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
