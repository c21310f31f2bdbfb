//! The data buffers of the NVMe/TCP target (`docs/nvme-tcp.md`, "Buffers and
//! back-pressure"): pools sized from the transport options and made when the transport is
//! created or a listener starts, never at the first I/O; nothing on the data path falls back
//! to the heap.
//!
//! - small (`IN_CAPSULE_DATA_BYTES`): one per request slot, taken when a queue's request
//!   table is sized (Connect) and kept by the slot for its life: in-capsule data lands in it,
//!   and any transfer that fits (reads, R2T writes) uses it, so small I/O never waits. A
//!   queue that finds the pool used up takes heap buffers then (connection set-up, not I/O).
//! - large (`LARGE_BUF_BYTES`, `num_shared_buffers` of them): transfers above the slot's
//!   buffer up to 128 KiB.
//! - huge (`max_io_size` bytes, only when that is above 128 KiB): the rest, so no transfer
//!   the transport allows is without a pool.
//!
//! A request that finds its pool empty waits (`ReqState::NeedBuffer`) and is retried as
//! buffers come back.

use super::IN_CAPSULE_DATA_BYTES;
use crate::nvmf::{TargetError, TransportOpts};
use engine::buf::{BufPool, DmaBuf};
use std::sync::Mutex;

/// A slot's own buffer: the largest in-capsule data any queue accepts.
pub(super) const SMALL_BUF_BYTES: usize = IN_CAPSULE_DATA_BYTES as usize;
/// Slot buffers made at start-up: 32 queues of 128 entries.
pub(super) const SMALL_BUF_COUNT: usize = 4096;
pub(super) const LARGE_BUF_BYTES: usize = 128 * 1024;
/// Default `num_shared_buffers`: large buffers (64 MiB).
pub const DEFAULT_NUM_SHARED_BUFFERS: u32 = 512;
/// Default `buf_cache_size` (accepted and reported; baton's pools size their per-reactor
/// caches themselves).
pub const DEFAULT_BUF_CACHE_SIZE: u32 = 32;
/// The huge pool holds half the large pool's bytes (32 MiB by default: 32 buffers of the
/// default 1 MiB `max_io_size`), and at least `HUGE_BUF_COUNT_MIN` buffers.
const HUGE_SHARE_BYTES_PER_SHARED_BUFFER: usize = LARGE_BUF_BYTES / 2;
const HUGE_BUF_COUNT_MIN: usize = 2;

/// How many buffers of which size the pools hold, derived from the transport options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub small_count: usize,
    pub large_count: usize,
    /// (buffer bytes, count); None when `max_io_size` fits a large buffer.
    pub huge: Option<(usize, usize)>,
}

impl PoolGeometry {
    /// The pools `o` needs (`o` already validated by `Target::create_transport`).
    pub fn of(o: &TransportOpts) -> Result<PoolGeometry, TargetError> {
        if o.num_shared_buffers == 0 {
            return Err(TargetError::InvalidParam {
                param: "num_shared_buffers",
                why: "0: at least one shared buffer is needed".into(),
            });
        }
        let max_io = o.max_io_size as usize;
        let large_count = o.num_shared_buffers as usize;
        let huge = (max_io > LARGE_BUF_BYTES).then(|| {
            let share = large_count.saturating_mul(HUGE_SHARE_BYTES_PER_SHARED_BUFFER);
            (max_io, (share / max_io).max(HUGE_BUF_COUNT_MIN))
        });
        Ok(PoolGeometry {
            small_count: SMALL_BUF_COUNT,
            large_count,
            huge,
        })
    }
}

/// The pools one transport configuration uses (shared by every poll group).
pub(super) struct TcpPools {
    small: Option<&'static BufPool>,
    large: &'static BufPool,
    huge: Option<&'static BufPool>,
}

impl TcpPools {
    /// A data buffer of `len` bytes from the large or huge pool; None when that pool is
    /// empty for now (the caller waits) or `len` is beyond every pool (cannot happen for a
    /// transfer `parse_io` accepted: the huge pool's buffers are `max_io_size`).
    pub(super) fn take(&self, len: u32) -> Option<DmaBuf> {
        let len = len as usize;
        let pool = if len <= LARGE_BUF_BYTES {
            self.large
        } else {
            self.huge.filter(|h| len <= h.buf_size())?
        };
        let mut b = pool.get()?;
        b.set_len(len);
        Some(b)
    }

    /// A request slot's own buffer. Connection set-up only: falls back to the heap when the
    /// small pool is used up.
    pub(super) fn slot_buf(&self) -> DmaBuf {
        self.small
            .and_then(|p| p.get())
            .unwrap_or_else(|| DmaBuf::alloc(SMALL_BUF_BYTES))
    }
}

/// Pools made so far, by (buffer bytes, count): transports with the same geometry share
/// them (a process has at most `engine::buf::POOLS_MAX` pools).
static POOLS: Mutex<Vec<(usize, usize, &'static BufPool)>> = Mutex::new(Vec::new());
/// Pool sets made so far, by geometry.
static SETS: Mutex<Vec<(PoolGeometry, &'static TcpPools)>> = Mutex::new(Vec::new());

fn pool(name: &str, bytes: usize, count: usize) -> Result<&'static BufPool, TargetError> {
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, _, p)) = pools.iter().find(|(b, c, _)| *b == bytes && *c == count) {
        return Ok(p);
    }
    let p = BufPool::new(name, count, bytes).map_err(|e| TargetError::BufferPools(e.to_string()))?;
    pools.push((bytes, count, p));
    Ok(p)
}

/// The pools for transport options `o`, made now if no transport with the same geometry
/// made them before. Management path (transport creation, listener start, connection
/// set-up): maps memory and takes locks.
pub(super) fn pools_for(o: &TransportOpts) -> Result<&'static TcpPools, TargetError> {
    let g = PoolGeometry::of(o)?;
    let mut sets = SETS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, s)) = sets.iter().find(|(sg, _)| *sg == g) {
        return Ok(s);
    }
    // The slot buffers are optional (the heap serves when they cannot be mapped).
    let small = pool("nvmf_tcp_small", SMALL_BUF_BYTES, g.small_count)
        .map_err(|e| log::warn!("nvmf: {e}; request slots take heap buffers"))
        .ok();
    let large = pool("nvmf_tcp_large", LARGE_BUF_BYTES, g.large_count)?;
    let huge = match g.huge {
        Some((bytes, count)) => Some(pool("nvmf_tcp_huge", bytes, count)?),
        None => None,
    };
    let s: &'static TcpPools = Box::leak(Box::new(TcpPools { small, large, huge }));
    sets.push((g, s));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_MAX_IO_BYTES;
    use super::*;

    #[test]
    fn defaults_are_the_former_constants() {
        let g = PoolGeometry::of(&TransportOpts::default()).unwrap();
        assert_eq!(g.small_count, 4096);
        assert_eq!(g.large_count, 512);
        assert_eq!(g.huge, Some((DEFAULT_MAX_IO_BYTES as usize, 32)));
    }

    #[test]
    fn huge_buffers_are_max_io_size() {
        let o = |max_io_size, num_shared_buffers| TransportOpts {
            max_io_size,
            num_shared_buffers,
            ..TransportOpts::default()
        };
        assert_eq!(PoolGeometry::of(&o(4 << 20, 512)).unwrap().huge, Some((4 << 20, 8)));
        assert_eq!(PoolGeometry::of(&o(64 << 10, 512)).unwrap().huge, None);
        assert_eq!(PoolGeometry::of(&o(128 << 10, 512)).unwrap().huge, None);
        assert_eq!(PoolGeometry::of(&o(1 << 20, 4)).unwrap().huge, Some((1 << 20, 2)));
        assert_eq!(PoolGeometry::of(&o(1 << 20, 4)).unwrap().large_count, 4);
    }

    #[test]
    fn zero_shared_buffers_is_refused_by_name() {
        let o = TransportOpts {
            num_shared_buffers: 0,
            ..TransportOpts::default()
        };
        match PoolGeometry::of(&o) {
            Err(TargetError::InvalidParam { param, .. }) => assert_eq!(param, "num_shared_buffers"),
            other => panic!("{other:?}"),
        }
    }
}
