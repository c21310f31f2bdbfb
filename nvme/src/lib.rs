//! NVMe and NVMe-oF: spec types, the NVMe/TCP PDU codec, the target and the host library.
//!
//! - [`spec`]: wire structs of the NVMe base and NVMe-oF specifications.
//! - [`tcp`]: the NVMe/TCP transport: PDU codec and streaming receiver.

pub mod host;
pub mod rpc;
pub mod spec;
pub mod target;
pub mod tcp;
