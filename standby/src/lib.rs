//! The standby role: ordered receive and apply of the replicated stream, in
//! delayed-write or copy-on-write snapshot mode, with rollback on primary
//! failure and promotion.
//!
//! Data path (one reactor owns a [`StandbyVolume`] and calls its
//! [`StandbyVolume::poll`] from a poller):
//!
//! ```text
//! relay streams --(wire::Batch)--> StandbyVolume::offer_batch
//!     -> receive::Receiver   dedup by LSN, reorder window, gaps, fencing
//!     -> delayed::Delayed    staging log -> apply epoch N to the volume
//!      | snapshot::Snapshot  allocate-on-write -> form snapshot N
//! ```
//!
//! - [`receive`]: ordered receive (pure logic).
//! - [`delayed`]: delayed-write mode (claims 17-19).
//! - [`snapshot`]: snapshot mode (claims 20, 22, 23), snapshot and head bdevs.
//! - [`volume`]: [`StandbyVolume`], the one object the network side drives.
//! - [`sync_skip`]: skipping a hole no relay holds when a block sync covers it.
//! - [`net`]: the network receive side (relay links: Hello, SafeUpTo, GapRequest).
//! - [`registry`]: the process's standby registry: which reactor owns each volume, and
//!   how it was created.
//! - [`rpc`]: typed JSON-RPC handlers.
//! - [`failover`]: the primary-failure detector (pure logic).
//! - [`host`]: the standby host: heartbeat listener, failover sequence, its RPC.
//! - [`image`]: execution images: transfer from the primary host, store, restore.
//!
//! Invariant 2 of `docs/requirements.md` (what the standby shows is exactly the primary's
//! image at some restart point) and 3 (after failover it is at the newest
//! restart point fully received) are what the tests in `tests/` check.

pub mod changed;
pub mod delayed;
pub mod failover;
pub mod host;
pub mod image;
mod io;
mod le;
pub mod net;
pub mod receive;
pub mod registry;
pub mod rpc;
pub mod snapshot;
pub mod superblock;
pub mod sync_skip;
pub mod volume;

pub use receive::{Gap, Offer, OpBody, OwnedOp, Receiver};
pub use volume::{ModeConfig, Readiness, StandbyConfig, StandbyStatus, StandbyVolume};

use engine::bdev::BdevError;

/// Errors of the standby, each naming what was wrong and the value seen.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("bdev {bdev}: {source}")]
    Bdev { bdev: String, source: BdevError },
    #[error("bdev geometry: {0}")]
    Geometry(String),
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("bdev {bdev} holds a standby of mode {found}, not {wanted}")]
    WrongMode {
        bdev: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("op at LSN {lsn} needs more than the whole staging log ({staging_blocks} blocks)")]
    TooLargeForStaging { lsn: u64, staging_blocks: u64 },
    #[error(
        "op at LSN {lsn} writes {num_blocks} blocks at {offset_blocks}, beyond the volume ({volume_blocks} blocks)"
    )]
    OutOfRange {
        lsn: u64,
        offset_blocks: u64,
        num_blocks: u32,
        volume_blocks: u64,
    },
    #[error(
        "restart point for epoch {epoch} (last LSN {last_lsn}) out of order: expected epoch {expected}, previous last LSN {prev_last_lsn}"
    )]
    EpochOrder {
        epoch: u64,
        expected: u64,
        last_lsn: u64,
        prev_last_lsn: u64,
    },
    #[error("primary failure has not been declared and completed: promote needs a rolled-back volume")]
    NotFailedOver,
    #[error("the standby is promoted: {0}")]
    Promoted(&'static str),
    #[error("no snapshot of epoch {0}")]
    NoSnapshot(u64),
    #[error("snapshot of epoch {epoch} cannot be deleted: {why}")]
    SnapshotBusy { epoch: u64, why: &'static str },
    #[error("data bdev is full: {needed} blocks needed, {free} free")]
    NoSpace { needed: u64, free: u64 },
    #[error("metadata bdev too small: {0}")]
    MetadataFull(String),
    #[error("the standby stopped on an earlier error: {0}")]
    Stopped(String),
    #[error("wrong mode: {0}")]
    Mode(&'static str),
}
