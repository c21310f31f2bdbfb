//! The data buffers of the NVMe/TCP target: three pools shared by every poll group, sized
//! once, with the heap as the fallback (`docs/nvme-tcp.md`).

use super::{DEFAULT_MAX_IO_BYTES, IN_CAPSULE_DATA_BYTES};
use engine::buf::{BufPool, DmaBuf};
use std::sync::OnceLock;

/// Buffer pools shared by all poll groups: small buffers for in-capsule and admin data,
/// large ones for I/O up to 128 KiB, huge ones up to the default MDTS. Transfers above that
/// (only with a larger `max_io_size`) come from the heap.
pub(super) const SMALL_BUF_BYTES: usize = IN_CAPSULE_DATA_BYTES as usize;
pub(super) const SMALL_BUF_COUNT: usize = 4096;
pub(super) const LARGE_BUF_BYTES: usize = 128 * 1024;
pub(super) const LARGE_BUF_COUNT: usize = 512;
pub(super) const HUGE_BUF_BYTES: usize = DEFAULT_MAX_IO_BYTES as usize;
pub(super) const HUGE_BUF_COUNT: usize = 32;

type Pools = [Option<&'static BufPool>; 3];
static POOLS: OnceLock<Pools> = OnceLock::new();

/// Takes a buffer of `len` bytes from the shared pools (falls back to the heap when a
/// pool is exhausted, so a burst degrades to allocation instead of stalling).
pub(crate) fn get_buf(len: u32) -> DmaBuf {
    let [small, large, huge] = *POOLS.get_or_init(|| {
        [
            BufPool::new("nvmf_tcp_small", SMALL_BUF_COUNT, SMALL_BUF_BYTES).ok(),
            BufPool::new("nvmf_tcp_large", LARGE_BUF_COUNT, LARGE_BUF_BYTES).ok(),
            BufPool::new("nvmf_tcp_huge", HUGE_BUF_COUNT, HUGE_BUF_BYTES).ok(),
        ]
    });
    let len = len as usize;
    let pool = if len <= SMALL_BUF_BYTES {
        small
    } else if len <= LARGE_BUF_BYTES {
        large
    } else if len <= HUGE_BUF_BYTES {
        huge
    } else {
        None
    };
    let mut b = pool.and_then(|p| p.get()).unwrap_or_else(|| DmaBuf::alloc(len));
    b.set_len(len);
    b
}
