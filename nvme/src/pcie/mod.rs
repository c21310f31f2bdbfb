//! A user-space NVMe driver over VFIO (feature `vfio`): pinned pollers drive NVMe queues
//! directly, as SPDK's driver does. `docs/nvme-pcie.md` explains the queue layout, the
//! memory and IOVA map, a command's life and what happens on timeout and on a fatal
//! controller.
//!
//! - `vfio.rs`: container, group, device, BAR0, config space, IOMMU mappings (the unsafe
//!   kernel calls).
//! - `mem.rs`: DMA memory, the IOVA allocator, the engine's buffer pools mapped once, PRPs.
//! - `queue.rs`: one SQ/CQ pair polled by phase tag, doorbells at CAP.DSTRD stride.
//! - `ctrlr.rs`: reset/enable, admin commands, I/O queue creation, Abort, fatal handling.
//! - `bdev.rs`: one bdev per namespace; each channel owns an I/O queue pair.

pub mod bdev;
pub mod ctrlr;
pub mod mem;
pub mod queue;
pub mod vfio;

pub use bdev::PcieBdev;
pub use ctrlr::PcieCtrlr;

use crate::spec::Status;
use thiserror::Error;

/// Errors of the PCIe driver; each says what failed and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PcieError {
    #[error("no PCI device {0} (give the address as DDDD:BB:DD.F, e.g. 0000:00:04.0)")]
    NoDevice(String),
    #[error("VFIO: {0}")]
    Vfio(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("controller answered {0}")]
    Status(Status),
    #[error("controller broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("a {0}-byte transfer does not fit one PRP list")]
    TooLarge(usize),
}
