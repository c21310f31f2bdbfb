//! The standby host's settings: the application's volumes, the export, the restart
//! command and the failover policies.

use super::DRAIN_TIMEOUT_MS_DEFAULT;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Default bound on the rollback after failure is declared.
pub const ROLLBACK_TIMEOUT_MS_DEFAULT: u64 = 60_000;

/// One standby volume of the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverVolume {
    /// Name of the primary's replicated volume (in its heartbeats and the relays' Hello).
    pub primary_volume: String,
    /// Name of the standby volume replicating it (`standby_create` name).
    pub standby: String,
    /// Snapshot mode: name of the writable head bdev (default `<standby>_head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_bdev: Option<String>,
    /// NSID in the exported subsystem (default: the next free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
}

/// Where the promoted volumes are exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Subsystem NQN (created if absent).
    pub nqn: String,
    /// NVMe/TCP listen address (port 0: a free port, reported in the status).
    pub listen: SocketAddr,
    /// Let any host connect (default true; otherwise add hosts with `nvmf_subsystem_add_host`).
    #[serde(default = "yes")]
    pub allow_any_host: bool,
}

fn yes() -> bool {
    true
}

/// Settings of the standby host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyHostConfig {
    /// UDP address the primaries' direct heartbeats arrive on (`None`: relays only).
    pub heartbeat_listen: Option<SocketAddr>,
    /// Direct-path silence after which the primary counts as not heard.
    pub timeout_ms: u64,
    /// Relay-path age after which a relay's evidence no longer counts (default `timeout_ms`).
    pub relay_timeout_ms: Option<u64>,
    /// The application's volumes, in order (the first one's restart tag names the image).
    pub volumes: Vec<FailoverVolume>,
    /// NVMe/TCP export of the promoted volumes (`None`: promote only).
    pub export: Option<ExportConfig>,
    /// Shell command that restarts the application (`sh -c`), with `BATON_*` variables.
    pub restart_cmd: Option<String>,
    /// Fail over on a timeout decision (false: detect and report only; an operator
    /// declares with `standby_host_declare_failure`).
    pub auto_failover: bool,
    /// Bound on the rollback of each volume.
    pub rollback_timeout_ms: u64,
    /// Bound on the relay drain before the rollback (0: no drain; restart points held only
    /// at the relays are then lost whenever the standby lags them).
    pub drain_timeout_ms: u64,
    /// What a failover does with a standby that is not a valid failover target (an
    /// initial sync not complete).
    pub syncing_failover: SyncingFailover,
}

/// Policy for failing over to a standby whose initial sync is not complete
/// (`docs/failover.md`, "Syncing standbys").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncingFailover {
    /// Refuse: the failover fails with the reason; a declaration with `force` overrides.
    #[default]
    Refuse,
    /// Promote anyway, with a warning in the report and the log.
    Warn,
}

impl std::str::FromStr for SyncingFailover {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(SyncingFailover::Refuse),
            "warn" => Ok(SyncingFailover::Warn),
            _ => Err(format!("{s:?}: expected refuse or warn")),
        }
    }
}

impl StandbyHostConfig {
    /// Defaults (1 s timeout, automatic failover, no export, no command) for `volumes`.
    pub fn new(volumes: Vec<FailoverVolume>) -> StandbyHostConfig {
        StandbyHostConfig {
            heartbeat_listen: None,
            timeout_ms: crate::failover::PRIMARY_TIMEOUT_MS_DEFAULT,
            relay_timeout_ms: None,
            volumes,
            export: None,
            restart_cmd: None,
            auto_failover: true,
            rollback_timeout_ms: ROLLBACK_TIMEOUT_MS_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            syncing_failover: SyncingFailover::Refuse,
        }
    }
}
