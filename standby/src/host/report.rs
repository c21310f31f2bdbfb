//! What the standby host reports: the failover's timeline and outcome
//! (`standby_host_get_status`).

use super::VolumeDrain;
use crate::failover::{DetectorStatus, FailureCause};
use serde::Serialize;

/// Progress of a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverState {
    Running,
    Done,
    Failed,
}

/// A promoted volume.
#[derive(Debug, Clone, Serialize)]
pub struct PromotedVolume {
    pub primary_volume: String,
    pub standby: String,
    pub bdev: String,
    /// Generation after promotion.
    pub generation: u64,
    /// Restart point the volume shows.
    pub epoch: u64,
    pub last_lsn: u64,
    /// Its tag, hex.
    pub tag: String,
    /// NSID when exported.
    pub nsid: Option<u32>,
}

/// The started application.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub pid: u32,
    pub running: bool,
    /// Exit code once it ended (None while running or when killed by a signal).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Timeline and outcome of the failover; step times are µs after detection.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub state: FailoverState,
    pub cause: FailureCause,
    /// Wall clock of the detection, ms since the UNIX epoch.
    pub detected_unix_ms: u64,
    /// The relays were drained (or the drain gave up), µs after detection.
    pub drained_us: Option<u64>,
    /// Per volume: what the drain brought (`docs/failover.md`); empty when disabled.
    pub drain: Vec<VolumeDrain>,
    pub rolled_back_us: Option<u64>,
    pub promoted_us: Option<u64>,
    pub exported_us: Option<u64>,
    pub image_resolved_us: Option<u64>,
    pub app_started_us: Option<u64>,
    /// Detection -> application started (the part of the RTO after detection).
    pub rto_us: Option<u64>,
    pub volumes: Vec<PromotedVolume>,
    pub nqn: Option<String>,
    pub traddr: Option<String>,
    pub trsvcid: Option<u16>,
    pub image: Option<String>,
    pub app: Option<AppStatus>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// `standby_host_get_status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub heartbeat_listen: Option<String>,
    pub auto_failover: bool,
    /// Datagrams on the heartbeat port that were not valid heartbeats.
    pub bad_datagrams: u64,
    pub detector: DetectorStatus,
    pub failover: Option<FailoverReport>,
}
