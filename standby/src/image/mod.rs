//! Execution images (R17, R18, R19): the primary host's application sends its
//! saved processing state to the standby host at each restart point; the
//! standby host stores it keyed by that restart point and, on failover, hands
//! back the image that matches the volume's restored restart point.
//!
//! ```text
//! primary host app                              standby host
//!   ImageClient::transfer(seq, image)  --TCP-->  ImageServer (its own threads)
//!     chunk hashes, delta vs last manifest          need list (dedup), chunks,
//!     <- Need (chunks the standby lacks)            verify whole BLAKE3, fsync,
//!     -> Chunks                                     atomic commit -> ImageStore
//!     <- Saved  (only now declare the restart point to storage)
//!
//! failover: standby volume's tag -> ImageStore::restore_tag -> image file path
//! ```
//!
//! - [`wire`]: the framed, versioned, CRC32C-checked protocol (pure codec).
//! - [`ImageClient`]: the primary host's side; keeps the last manifest it sent.
//! - [`ImageServer`]: the standby host's listener, one thread per connection.
//! - [`ImageStore`]: the on-disk store: per-app image manifests and packs of
//!   content-addressed 4 KiB chunks.
//!
//! The restart-point tag the application passes to storage is
//! [`restart_tag`]`(seq, &blake3(image))`: 40 bytes, `seq` little-endian then
//! the hash. The standby volume reports the tag of its last applied restart
//! point, and [`ImageStore::restore_tag`] finds the image saved with it.
//!
//! Chunking is fixed-size, [`CHUNK_SIZE`] = 4 KiB, aligned to offset 0: the
//! state the applications keep changes page by page, so a changed page is
//! exactly one changed chunk and an unchanged page is never resent, and the
//! delta is a list of chunk indices. Content-defined chunking would only win
//! for inserts that shift bytes, which page-granular state does not have.
//! The format is documented in `docs/execution-images.md`.

mod client;
mod conn;
mod server;
mod store;
pub mod wire;

pub use client::{ImageClient, TransferReport};
pub use server::ImageServer;
pub use store::{ImageStore, PruneReport};

use crate::le;
use std::path::PathBuf;

/// Bytes of one chunk (the last chunk of an image may be shorter).
pub const CHUNK_SIZE: usize = 4096;
/// Largest image accepted (4 GiB: chunk indices fit in a `u32`).
pub const IMAGE_BYTES_MAX: u64 = 1 << 32;
/// Most chunks one image may have.
pub const CHUNKS_MAX: u64 = IMAGE_BYTES_MAX / CHUNK_SIZE as u64;
/// Longest application name (names are also directory names in the store).
pub const APP_NAME_MAX: usize = 64;
/// Bytes of a restart-point tag.
pub const TAG_BYTES: usize = 40;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// The restart-point tag of image `seq` whose whole-image BLAKE3 is `hash`:
/// `seq` as u64 little-endian, then the 32 hash bytes.
pub fn restart_tag(seq: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut t = [0u8; TAG_BYTES];
    t[..8].copy_from_slice(&seq.to_le_bytes());
    t[8..].copy_from_slice(hash);
    t
}

/// Inverse of [`restart_tag`]; `None` unless `tag` is exactly 40 bytes.
pub fn parse_restart_tag(tag: &[u8]) -> Option<(u64, [u8; 32])> {
    if tag.len() != TAG_BYTES {
        return None;
    }
    let seq = le::u64_at(tag, 0);
    let hash: [u8; 32] = tag[8..].try_into().ok()?;
    Some((seq, hash))
}

/// Number of chunks of an image of `len` bytes.
pub fn chunk_count(len: u64) -> u64 {
    len.div_ceil(CHUNK_SIZE as u64)
}

/// Bytes of chunk `index` of an image of `len` bytes.
pub fn chunk_len(len: u64, index: u64) -> usize {
    let start = index * CHUNK_SIZE as u64;
    (len.saturating_sub(start)).min(CHUNK_SIZE as u64) as usize
}

/// BLAKE3 of each chunk of `image`, in order.
pub fn chunk_hashes(image: &[u8]) -> Vec<Hash> {
    image.chunks(CHUNK_SIZE).map(|c| *blake3::hash(c).as_bytes()).collect()
}

/// Lower-case hex of a hash (file names, error messages).
pub fn hex(h: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(h.len() * 2);
    for b in h {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Parses 64 hex digits.
pub(crate) fn unhex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, out) in h.iter_mut().enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *out = (d(b[2 * i])? << 4) | d(b[2 * i + 1])?;
    }
    Some(h)
}

/// Checks an application name: 1..=64 bytes of `[A-Za-z0-9._-]`, not
/// starting with `.` (it names a directory of the store).
pub fn check_app_name(app: &str) -> Result<(), ImageError> {
    let ok = !app.is_empty()
        && app.len() <= APP_NAME_MAX
        && !app.starts_with('.')
        && app
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadAppName(app.chars().take(80).collect()))
    }
}

/// Errors of the execution-image client, server and store, each naming what
/// was wrong and the value seen.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("wire: {0}")]
    Wire(#[from] wire::WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the peer closed the connection {0}")]
    Closed(&'static str),
    #[error("the standby host refused: {message} (code {code})")]
    Remote { code: u16, message: String },
    #[error("bad application name {0:?}: 1..=64 bytes of [A-Za-z0-9._-], not starting with '.'")]
    BadAppName(String),
    #[error("image of {len} bytes is larger than the {max} bytes allowed")]
    TooLarge { len: u64, max: u64 },
    #[error("image seq {seq} is not above the last transferred seq {last}")]
    SeqNotIncreasing { seq: u64, last: u64 },
    #[error("restart tag of {len} bytes: a tag is 40 bytes (seq u64 LE + BLAKE3)")]
    BadTag { len: usize },
    #[error("app {app}: no image seq {seq} with hash {hash}")]
    NotFound { app: String, seq: u64, hash: String },
    #[error("app {app} image seq {seq}: chunk {index} (hash {hash}) is corrupt in pack {pack} at offset {offset}")]
    CorruptChunk {
        app: String,
        seq: u64,
        index: u64,
        hash: String,
        pack: String,
        offset: u64,
    },
    #[error("app {app} image seq {seq}: chunk {index} (hash {hash}) is not in the store")]
    MissingChunk {
        app: String,
        seq: u64,
        index: u64,
        hash: String,
    },
    #[error("chunk {index} of image seq {seq} does not match its manifest hash {hash}")]
    ChunkMismatch { seq: u64, index: u64, hash: String },
    #[error("image seq {seq}: whole-image BLAKE3 is {actual}, the manifest says {expected}")]
    ImageHashMismatch { seq: u64, expected: String, actual: String },
    #[error("{path}: {why}")]
    CorruptFile { path: PathBuf, why: String },
}

impl ImageError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ImageError {
        ImageError::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trip_and_bad_lengths() {
        let h = *blake3::hash(b"x").as_bytes();
        let t = restart_tag(0x0102_0304_0506_0708, &h);
        assert_eq!(&t[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(parse_restart_tag(&t), Some((0x0102_0304_0506_0708, h)));
        assert_eq!(parse_restart_tag(&t[..39]), None);
        assert_eq!(parse_restart_tag(&[0u8; 41]), None);
        assert_eq!(parse_restart_tag(&[]), None);
    }

    #[test]
    fn chunk_geometry() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(4096), 1);
        assert_eq!(chunk_count(4097), 2);
        assert_eq!(chunk_len(4097, 0), 4096);
        assert_eq!(chunk_len(4097, 1), 1);
        assert_eq!(chunk_len(4096, 1), 0);
        assert_eq!(chunk_hashes(&[0u8; 8193]).len(), 3);
    }

    #[test]
    fn hex_round_trip_and_app_names() {
        let h = *blake3::hash(b"y").as_bytes();
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
        assert!(check_app_name("db-1.main_2").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_app_name(bad).is_err(), "{bad:?}");
        }
    }
}
