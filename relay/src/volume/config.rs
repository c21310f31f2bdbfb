//! The replicated volume's public types: acknowledgement policy, configuration, errors,
//! restart points and the status `replication_get_volumes` shows (`docs/replication.md`).

use std::net::SocketAddr;

use rdma_transport::Endpoint;

use serde::Serialize;

use super::*;

/// How many relays must hold an op before the host sees its write complete (R2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// Every relay (default).
    All,
    /// At least k relays.
    Quorum(u32),
    /// Any one relay.
    Any,
}

impl AckPolicy {
    /// The name used in RPC parameters.
    pub fn name(&self) -> &'static str {
        match self {
            AckPolicy::All => "all",
            AckPolicy::Quorum(_) => "quorum",
            AckPolicy::Any => "any",
        }
    }
}

/// What the volume does when a relay it needs is marked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRelayDown {
    /// Writes wait for the relay (in-flight ones) or fail at once with
    /// [`VolumeError::PolicyUnmet`] (new ones) while the policy cannot be met.
    Block,
    /// Go on with the relays that are up; a down relay is caught up when it returns.
    Degraded,
}

/// Settings of a replicated volume.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Bdev name of the volume.
    pub name: String,
    /// Relay addresses.
    pub relays: Vec<Endpoint>,
    /// Acknowledgement policy.
    pub ack_policy: AckPolicy,
    /// Time without an answer before a relay is marked down.
    pub relay_down_timeout_ms: u64,
    /// Block or go on degraded when a relay is down.
    pub on_relay_down: OnRelayDown,
    /// The primary's generation (fencing).
    pub generation: u64,
    /// Volume identity sent in the Hello (default: the base bdev's UUID).
    pub volume_id: Option<[u8; 16]>,
    /// Size of the retention ring.
    pub retain_bytes_max: u64,
    /// Unacknowledged bytes per relay before the volume stops sending to it.
    pub relay_bytes_in_flight_max: u64,
    /// Reactor owning the relay connections (`None`: the first reactor).
    pub core: Option<u32>,
    /// An NVMe Flush on this volume (through the NVMe/TCP target) also declares a restart
    /// point with an empty tag and completes once it is replicated.
    pub flush_is_restart_point: bool,
    /// Standby host to send direct heartbeats to (UDP, `docs/failover.md`); `None`: none.
    pub standby_heartbeat: Option<SocketAddr>,
    /// Interval of those heartbeats.
    pub standby_heartbeat_interval_ms: u64,
    /// File persisting the dirty-block record (`volume/dirty.rs`); `None`: memory only.
    pub dirty_map: Option<std::path::PathBuf>,
    /// The base bdev holds data no LSN wrote: once LSNs start, copy every block through
    /// the relays (an initial sync, `volume/sync.rs`) so the standby's image becomes the
    /// primary's. Start-up only (a restart does not copy again).
    pub initial_sync: bool,
    /// Rate cap of that copy (0: none).
    pub initial_sync_bytes_per_sec: u64,
    /// With `initial_sync`: copy only these (first block, blocks) runs, in chunks of the
    /// given blocks, instead of every block (a failback by delta, `docs/failback.md`).
    pub initial_sync_delta: Option<(Vec<(u64, u64)>, u64)>,
}

impl VolumeConfig {
    /// Defaults for `name` with `relays`.
    pub fn new<A: Into<Endpoint>>(name: &str, relays: impl IntoIterator<Item = A>) -> Self {
        Self {
            name: name.to_string(),
            relays: relays.into_iter().map(Into::into).collect(),
            ack_policy: AckPolicy::All,
            relay_down_timeout_ms: RELAY_DOWN_TIMEOUT_MS_DEFAULT,
            on_relay_down: OnRelayDown::Block,
            generation: 1,
            volume_id: None,
            retain_bytes_max: RETAIN_BYTES_MAX_DEFAULT,
            relay_bytes_in_flight_max: RELAY_BYTES_IN_FLIGHT_MAX_DEFAULT,
            core: None,
            flush_is_restart_point: false,
            standby_heartbeat: None,
            standby_heartbeat_interval_ms: crate::liveness::HEARTBEAT_INTERVAL_MS_DEFAULT,
            dirty_map: None,
            initial_sync: false,
            initial_sync_bytes_per_sec: 0,
            initial_sync_delta: None,
        }
    }
}

/// Errors of the replicated volume.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    /// A parameter is invalid.
    #[error("invalid parameter {param}: {why}")]
    InvalidParam {
        /// Parameter name.
        param: &'static str,
        /// Why.
        why: String,
    },
    /// The acknowledgement policy cannot be met (block mode).
    #[error("volume {volume}: acknowledgement policy cannot be met: {why}")]
    PolicyUnmet {
        /// Volume name.
        volume: String,
        /// Which relays are down.
        why: String,
    },
    /// The volume was deleted while the operation was in flight.
    #[error("volume {0} was deleted")]
    Deleted(String),
    /// A control message could not be delivered to the link reactor.
    #[error("volume {volume}: link reactor unreachable: {why}")]
    Unreachable {
        /// Volume name.
        volume: String,
        /// Why.
        why: String,
    },
    /// A relay address is already (or not) configured.
    #[error("relay {0}")]
    Relay(String),
    /// The volume is demoted (switchover): writes are refused.
    #[error("volume {0} is demoted (switchover): writes are refused")]
    Demoted(String),
    /// A relay named a newer generation: the standby was promoted and this primary is
    /// fenced off. Writes and restart points fail; nothing is acknowledged any more.
    #[error(
        "volume {volume}: superseded by generation {generation} (the standby was promoted): \
         this primary is fenced and refuses writes"
    )]
    Superseded {
        /// Volume name.
        volume: String,
        /// The newer generation.
        generation: u64,
    },
    /// The volume cannot do that now (a block sync runs, a demote is under way).
    #[error("{0}")]
    Busy(String),
}

/// A declared restart point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RestartPoint {
    /// The epoch it closes.
    pub epoch: u64,
    /// LSN of the restart point op itself.
    pub lsn: u64,
    /// Last LSN the epoch covers.
    pub last_lsn: u64,
}

/// A replication link's lifetime counters (`rdma_transport::link::Reconnect`), as the
/// status RPCs report them: a link that flaps shows it here even when it is up as the
/// status is read.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Connection attempts started.
    pub connects: u64,
    /// Attempts started after the link had been up (it was lost and redialled).
    pub reconnects: u64,
    /// Failed attempts, lost links and refusals.
    pub failures: u64,
    /// Hellos accepted (times the link came up).
    pub ups: u64,
}

impl From<&rdma_transport::link::Reconnect> for LinkCounters {
    fn from(r: &rdma_transport::link::Reconnect) -> Self {
        LinkCounters {
            connects: r.connects(),
            reconnects: r.reconnects(),
            failures: r.failures(),
            ups: r.ups(),
        }
    }
}

/// Per-relay state, as `replication_get_volumes` reports it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RelayStatus {
    /// Address.
    pub addr: String,
    /// `connecting`, `handshake`, `up`, `resyncing`, `refused`, `needs_resync`.
    pub state: String,
    /// Connected and accepted.
    pub connected: bool,
    /// Marked down after the timeout.
    pub down: bool,
    /// Highest LSN the relay acknowledged as durable.
    pub acked_lsn: u64,
    /// Highest LSN handed to its connection.
    pub sent_lsn: u64,
    /// Bytes sent and not yet acknowledged.
    pub bytes_in_flight: u64,
    /// LSNs assigned but not acknowledged by this relay.
    pub lag_lsn: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Write payload bytes the current connection copied into its transport's own send
    /// buffers, and those it sent straight from the write's buffer (RDMA sends from a
    /// registered engine pool: zero-copy). Both 0 on TCP, which does not count them.
    pub payload_bytes_copied: u64,
    /// See `payload_bytes_copied`.
    pub payload_bytes_zero_copy: u64,
    /// Receives that found frames although readiness had not reported the socket (the
    /// 1 ms safety net caught them): a handful from races, many would mean readiness is
    /// broken and every Ack waits up to a millisecond.
    pub late_reads: u64,
    /// Last error seen on the link.
    pub last_error: String,
    /// The link's lifetime counters.
    pub link: LinkCounters,
    /// The resync in progress (state `resyncing`), with its progress.
    pub resync: Option<ResyncStatus>,
    /// Resyncs started and completed on this link.
    pub resyncs: u64,
    /// See `resyncs`.
    pub resyncs_done: u64,
}

/// Volume state, as `replication_get_volumes` reports it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VolumeStatus {
    /// Volume name.
    pub name: String,
    /// Base bdev.
    pub base_bdev: String,
    /// Ack policy name.
    pub ack_policy: String,
    /// k of the quorum policy.
    pub quorum_k: u32,
    /// `block` or `degraded`.
    pub on_relay_down: String,
    /// Down timeout.
    pub relay_down_timeout_ms: u64,
    /// Generation.
    pub generation: u64,
    /// Next LSN to assign (0 until the first handshakes told where to start).
    pub next_lsn: u64,
    /// Highest LSN completed to its caller.
    pub completed_lsn: u64,
    /// Ops with an LSN not yet completed.
    pub inflight_ops: usize,
    /// Ops held in the retention ring.
    pub retained_ops: usize,
    /// Bytes of the retention ring in use.
    pub retained_bytes: u64,
    /// New writes are failing because the policy cannot be met (block mode).
    pub writes_blocked: bool,
    /// The relays.
    pub relays: Vec<RelayStatus>,
    /// Last restart point epoch declared.
    pub epoch: u64,
    /// The dirty-block record (regions written by LSNs not every relay confirmed).
    pub dirty: DirtyStatus,
    /// The current or last block sync (`docs/replication.md`, "Block sync").
    pub sync: Option<SyncStatus>,
    /// Demoted for a switchover: new writes fail (`docs/switchover.md`).
    pub demoted: bool,
    /// The newer generation a relay named (0: none): the standby was promoted, this
    /// primary is fenced and every write fails (`docs/faults.md`).
    pub superseded_by: u64,
    /// LSN of the final restart point behind which writes are fenced (0: none).
    pub fence_lsn: u64,
}
