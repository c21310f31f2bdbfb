//! baton's runtime, shared by every role (target, relay, standby, perf).
//!
//! - [`reactor`]: one pinned poller thread per core of a core mask, running a
//!   run-to-completion loop over its message ring, active pollers and timed
//!   pollers, with busy/idle accounting.
//! - [`ring`]: the bounded lock-free many-producer ring reactors receive
//!   messages through.
//! - [`buf`]: DMA-able buffer pools allocated up front (hugepage-backed when
//!   hugepages are reserved).
//! - [`bdev`]: the block-device layer: per-reactor channels with polled
//!   completion, and the `malloc`, `null` and `uring` back ends.
//! - [`env`]: whose rings and pools those are: baton's own, or DPDK's
//!   (`rte_ring`, `rte_mempool`) with the `dpdk` feature.
//! - [`metrics`]: microsecond latency histograms over `hdrhistogram`.
//! - [`clock`]: the monotonic nanosecond clock every timestamp uses.
//! - [`wait`]: `epoll` and `eventfd`, how idle reactors and the management thread sleep.
//!
//! Nothing here knows about NVMe or replication (`docs/architecture.md`: dependencies point
//! from those crates into this one).

pub mod alloc_count;
pub mod bdev;
pub mod buf;
pub mod clock;
pub mod cpumask;
pub mod env;
pub mod metrics;
pub mod reactor;
pub mod regionmap;
pub mod ring;
pub mod rpc;
mod sys;
pub mod testing;
pub mod wait;
/// Whether a file is on tmpfs/ramfs (see `sys`): the uring bdev and the relay journal copy inline there.
pub use sys::is_memory_fs;
/// Anonymous (optionally hugepage) memory mappings: the user-space NVMe driver's queues.
pub use sys::Mapping;
