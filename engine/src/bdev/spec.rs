//! Bdev specifications on the command line: `KIND[:PATH][,size=N][,bs=N]`, as
//! `baton target --bdev`, `baton standby --bdev` and `baton perf --bdev` take them.
//!
//! - `malloc,size=64M` — a RAM bdev (default 64 MiB, 512-byte blocks)
//! - `null,size=1G,bs=4096` — a null bdev (default 1 GiB)
//! - `uring:/dev/shm/f,size=256M` — a file through io_uring; `size` creates
//!   or extends the file first (default: its current size)
//!
//! Sizes take K/M/G/T suffixes (powers of two).
//!
//! Crates above the engine add kinds of their own with [`register_kind`]
//! (e.g. `spdk-nvme:TRID` from `nvme`, feature `spdk`): such a spec is
//! `KIND:REST`, and `REST` (which may hold colons, spaces and commas) goes to
//! the kind's constructor as it is.

use super::{malloc, null, uring, Bdev, BdevError};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Why a bdev spec was refused.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The spec does not parse (or names no kind, or a file that cannot be sized).
    #[error("invalid option --bdev: {0}")]
    Invalid(String),
    /// The back end refused to create the bdev.
    #[error("bdev: {0}")]
    Bdev(#[from] BdevError),
}

/// A size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a size (e.g. 4096, 64M, 1G)")]
pub struct SizeError(pub String);

impl From<SizeError> for SpecError {
    fn from(e: SizeError) -> SpecError {
        SpecError::Invalid(e.to_string())
    }
}

/// Parses `64M`-style sizes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| SizeError(s.to_string()))
}

/// A constructor for a bdev kind registered by a crate above the engine:
/// `(name, rest of the spec after "KIND:")`.
pub type KindFn = fn(&str, &str) -> Result<Arc<dyn Bdev>, SpecError>;

static KINDS: Mutex<Vec<(&'static str, KindFn)>> = Mutex::new(Vec::new());

/// Adds (or replaces) the bdev kind `kind`, written `kind:REST` in a spec.
/// Management path: process start-up.
pub fn register_kind(kind: &'static str, f: KindFn) {
    let mut k = KINDS.lock().unwrap_or_else(|e| e.into_inner());
    k.retain(|(n, _)| *n != kind);
    k.push((kind, f));
}

fn registered_kind(kind: &str) -> Option<KindFn> {
    let k = KINDS.lock().unwrap_or_else(|e| e.into_inner());
    k.iter().find(|(n, _)| *n == kind).map(|&(_, f)| f)
}

/// Creates (without registering) the bdev `spec` describes, named `name`.
pub fn create_bdev(name: &str, spec: &str) -> Result<Arc<dyn Bdev>, SpecError> {
    let bad = SpecError::Invalid;
    if let Some((kind, rest)) = spec.split_once(':') {
        if let Some(f) = registered_kind(kind) {
            return f(name, rest);
        }
    }
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or("");
    let (kind, path) = match head.split_once(':') {
        Some((k, p)) => (k, Some(p)),
        None => (head, None),
    };
    let mut size: Option<u64> = None;
    let mut bs: Option<u32> = None;
    for p in parts {
        match p.split_once('=') {
            Some(("size", v)) => size = Some(parse_size(v)?),
            Some(("bs", v)) => {
                bs = Some(
                    parse_size(v)?
                        .try_into()
                        .map_err(|_| bad(format!("block size {v} too large")))?,
                )
            }
            _ => return Err(bad(format!("unknown part {p:?} in {spec:?} (expected size=N or bs=N)"))),
        }
    }
    let blocks = |default: u64, bs: u32| size.unwrap_or(default) / bs as u64;
    Ok(match kind {
        "malloc" => {
            let bs = bs.unwrap_or(512);
            malloc::create(name, blocks(64 << 20, bs), bs, None)?
        }
        "null" => {
            let bs = bs.unwrap_or(512);
            null::create(name, blocks(1 << 30, bs), bs, None)?
        }
        "uring" => {
            let path = path
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad(format!("{spec:?}: uring needs a path, e.g. uring:/dev/shm/f,size=256M")))?;
            if let Some(sz) = size {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .map_err(|e| bad(format!("cannot create {path}: {e}")))?;
                if f.metadata().map(|m| m.len() < sz).unwrap_or(true) {
                    f.set_len(sz).map_err(|e| bad(format!("cannot size {path}: {e}")))?;
                }
            }
            uring::create(name, std::path::Path::new(path), bs, None)?
        }
        _ => return Err(bad(format!("{kind:?} is not a bdev kind (malloc, null, uring)"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn specs() {
        let b = create_bdev("s1", "malloc,size=1M,bs=4096").unwrap();
        assert_eq!((b.block_size(), b.num_blocks()), (4096, 256));
        let b = create_bdev("s2", "null").unwrap();
        assert_eq!(b.num_blocks(), (1 << 30) / 512);
        assert!(create_bdev("s3", "uring").is_err());
        assert!(create_bdev("s4", "floppy").is_err());
        assert!(create_bdev("s5", "malloc,colour=red").is_err());
    }

    #[test]
    fn registered_kinds_get_the_rest_of_the_spec() {
        fn kind(name: &str, rest: &str) -> Result<Arc<dyn Bdev>, SpecError> {
            // The rest arrives whole, colons, spaces and commas included.
            if rest != "a:b c,d=1" {
                return Err(SpecError::Invalid(format!("rest {rest:?}")));
            }
            Ok(super::null::create(name, 8, 512, None)?)
        }
        register_kind("test-kind", kind);
        let b = create_bdev("k1", "test-kind:a:b c,d=1").unwrap();
        assert_eq!(b.num_blocks(), 8);
        assert!(create_bdev("k2", "test-kind:other").is_err());
        assert!(create_bdev("k3", "other-kind:a").is_err());
    }
}
