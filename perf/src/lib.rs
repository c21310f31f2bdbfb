//! baton's perf harness: drives a workload through any I/O queue (a bdev
//! channel now; an NVMe/TCP queue pair or a replicated volume through the
//! same trait) from one poller per reactor, keeps the queue depth full,
//! measures latency per I/O into hdrhistograms, and reports IOPS, MiB/s and
//! percentiles in µs as a table or JSON.
//!
//! The harness follows the engine's rules: buffers and per-I/O slots are
//! allocated before the clock starts, the loop allocates nothing, and it
//! takes one timestamp per poll batch (submissions of a batch share one,
//! completions reaped together share one), which is what `spdk_nvme_perf`
//! and `bdevperf` do too.

pub mod limits;
pub mod report;
pub mod sys;
pub mod workload;

pub use report::{CoreResult, Report};
pub use workload::{run_bdev, run_bdev_on, run_on, IoQueue, Pattern, WorkloadOpts, DRAIN_TIMEOUT_DEFAULT};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PerfError {
    #[error("invalid option {option}: {why}")]
    InvalidOption { option: &'static str, why: String },
    #[error("bdev: {0}")]
    Bdev(#[from] engine::bdev::BdevError),
    #[error("reactors: {0}")]
    Reactor(#[from] engine::reactor::ReactorError),
    #[error("buffers: {0}")]
    Buf(#[from] engine::buf::BufError),
    #[error("a worker stopped without reporting (core {0})")]
    WorkerLost(u32),
    #[error("core {core}: {in_flight} I/O still outstanding {waited_ms} ms after the run ended (the target stopped completing them)")]
    DrainTimeout {
        core: u32,
        in_flight: usize,
        waited_ms: u64,
    },
}
