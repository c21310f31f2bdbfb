//! The primary side of replication and the relay role.
//!
//! - [`volume`]: the replicated volume bdev on the primary (fans every write out to the
//!   relays, completes on the acknowledgement policy, catches relays up).
//! - [`relay`]: the relay role (accepts primaries, journals before acknowledging, forwards
//!   to the standby at its own timing, releases what the standby holds).
//! - [`forward_policy`]: when a forwarder relay may forward (the `--forward` policies,
//!   pure, with explicit clocks).
//! - [`journal`]: the relay's non-volatile journal (segment files, group commit through
//!   io_uring, crash recovery, read-back for forwarding, release once the standby has it).
//! - [`limits`]: the ranges of the relay's settings, checked before anything is opened.
//! - [`liveness`]: the direct heartbeat a replicated volume sends to its standby host.
//! - [`plan`]: the relay placement planner (R6): which relay sets meet a write-latency
//!   budget outside the disaster radius (pure model).
//! - [`probe`]: measures the round trip to a running relay through its replication port.
//! - [`rpc`]: the `replication_*` and `relay_*` JSON-RPC methods.
//! - [`dataref`]: zero-copy views of write buffers shared by the local write and the sends.

pub mod dataref;
pub mod forward_policy;
pub mod journal;
pub mod limits;
pub mod liveness;
pub mod plan;
pub mod probe;
pub mod relay;
pub mod rpc;
mod tls_rpc;
pub mod volume;
