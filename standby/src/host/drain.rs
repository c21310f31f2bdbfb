//! Step 0 of the failover sequence: drain the relays before rolling back.
//!
//! A standby normally lags its relays (forward policies hold ops back; a WAN is slower
//! than the primary's writes). Restart points the primary saw acknowledged are durable at
//! the relays, so before any volume is rolled back the host asks every relay it reaches
//! for everything they hold ([`crate::net::start_drain`]) and waits until each connected
//! relay is drained, bounded by `drain_timeout_ms`. Then the rollback applies every epoch
//! received in full, which now includes what the relays held. See `docs/failover.md`.

use super::StandbyHost;
use crate::net::{drain_progress, start_drain, DrainProgress};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Default bound on the drain.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// With no relay link at all, wait this long (bounded by the drain timeout) for one to
/// connect: relays reconnect to the standby within a few hundred milliseconds.
pub const DRAIN_NO_RELAY_GRACE_MS: u64 = 1_000;
/// Poll period of the drain's progress.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// The drain of one volume, as the failover status reports it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeDrain {
    pub standby: String,
    #[serde(flatten)]
    pub progress: DrainProgress,
    /// Restart points the volume shows after the rollback that it had not taken in when
    /// the drain started (filled after the rollback).
    pub restart_points_gained: u64,
    /// The drain stopped at `drain_timeout_ms` with relays not drained.
    pub timed_out: bool,
    /// No relay was connected: restart points held only at the relays may be lost.
    pub relays_unreachable: bool,
}

impl StandbyHost {
    /// Drains every configured volume's relays (all volumes at once), bounded by the
    /// drain timeout. Returns one entry per volume; warnings go to the report.
    pub(super) fn drain_relays(&self) -> Result<Vec<VolumeDrain>, super::HostError> {
        let timeout = Duration::from_millis(self.cfg.drain_timeout_ms);
        let vol_err = |standby: &str, why: String| super::HostError::Volume {
            standby: standby.to_string(),
            why,
        };
        for v in &self.cfg.volumes {
            crate::registry::with_standby(&v.standby, |s| {
                if s.intake_open() {
                    start_drain(s)
                }
            })
            .map_err(|e| vol_err(&v.standby, e.message))?;
        }
        let t0 = Instant::now();
        let grace = Duration::from_millis(DRAIN_NO_RELAY_GRACE_MS).min(timeout);
        let mut out: Vec<Option<VolumeDrain>> = vec![None; self.cfg.volumes.len()];
        loop {
            let elapsed = t0.elapsed();
            let mut pending = 0;
            for (i, v) in self.cfg.volumes.iter().enumerate() {
                if out[i].is_some() {
                    continue;
                }
                let p = crate::registry::with_standby(&v.standby, |s| drain_progress(s, false))
                    .map_err(|e| vol_err(&v.standby, e.message))?;
                let Some(p) = p else {
                    // Intake already closed (a restarted host, a volume failed over before).
                    out[i] = Some(finished(&v.standby, DrainProgress::default(), false, false));
                    continue;
                };
                let unreachable = p.relays == 0 && elapsed >= grace;
                // Relays that were connected a moment ago get the grace to come back.
                let present_drained = p.relays > 0 && p.relays_drained == p.relays && elapsed >= grace;
                let timed_out = !p.done && !present_drained && elapsed >= timeout;
                if p.done || present_drained || unreachable || timed_out {
                    let p = crate::registry::with_standby(&v.standby, |s| drain_progress(s, true))
                        .map_err(|e| vol_err(&v.standby, e.message))?
                        .unwrap_or(p);
                    out[i] = Some(finished(&v.standby, p, timed_out && !unreachable, unreachable));
                } else {
                    pending += 1;
                }
            }
            if pending == 0 {
                break;
            }
            std::thread::sleep(DRAIN_POLL);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

fn finished(standby: &str, progress: DrainProgress, timed_out: bool, unreachable: bool) -> VolumeDrain {
    log::warn!(
        "standby {standby}: relay drain {}: {} of {} relays drained, LSN {} -> {} (relays hold up to {}), {} bytes in {} us",
        if unreachable {
            "found no relay"
        } else if timed_out {
            "timed out"
        } else {
            "done"
        },
        progress.relays_drained,
        progress.relays,
        progress.lsn_start,
        progress.lsn_reached,
        progress.relay_lsn_max,
        progress.bytes_drained,
        progress.elapsed_us
    );
    VolumeDrain {
        standby: standby.to_string(),
        progress,
        restart_points_gained: 0,
        timed_out,
        relays_unreachable: unreachable,
    }
}
