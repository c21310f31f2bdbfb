//! NVMe and NVMe-oF for baton: spec types, the NVMe/TCP PDU codec, the target and the host
//! library. Decisions and limits: `docs/nvme-tcp.md`.
//!
//! - [`spec`]: wire structs of the NVMe base and NVMe-oF specifications (sizes and offsets
//!   tested against the specs).
//! - [`tcp`]: the NVMe/TCP PDU codec and streaming receiver (fuzzed).
//! - [`nvmf`]: the NVMe-oF target (named as SPDK names it): subsystems, namespaces over bdevs, controllers, the
//!   discovery service and the TCP transport polled by the engine's reactors.
//! - [`host`]: the NVMe/TCP initiator: controllers, admin commands, polled I/O queue pairs.
//! - `pcie` (feature `vfio`): the user-space NVMe driver over VFIO and its bdev.
//! - `spdk` (feature `spdk`): SPDK's NVMe driver as the `spdk-nvme` bdev (`docs/spdk.md`).
//! - [`rpc`]: the SPDK-named `nvmf_*` JSON-RPC methods and their `save_config` entries.

pub mod host;
pub mod nvmf;
#[cfg(feature = "vfio")]
pub mod pcie;
pub mod rpc;
#[cfg(feature = "spdk")]
pub mod spdk;
pub mod spec;
pub mod tcp;
