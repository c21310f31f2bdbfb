//! Primary-failure detection on the standby host: pure logic, no threads, no clock of its
//! own (every call takes `now_ns`, the caller's monotonic clock). [`crate::host`] feeds it
//! and acts on its decision; `docs/failover.md` explains the rule.
//!
//! Two kinds of evidence that the primary lives, per primary volume:
//! - **direct**: heartbeats the primary sends to this host
//!   ([`rdma_transport::liveness`], [`Detector::heartbeat`]);
//! - **through the relays**: each relay's `PrimaryLiveness` report, "I last heard the
//!   primary of volume V `age` ms ago" ([`Detector::relay_report`]). A report is turned into
//!   an absolute time at arrival (`arrival - age`), so a relay that stops reporting ages out
//!   by itself.
//!
//! The rule: the primary has failed when, for every configured volume, the direct path has
//! been silent for `timeout_ms` AND no relay has heard the primary within
//! `relay_timeout_ms`. A cut standby-primary link alone (relays still hear the primary)
//! never fails over: that is the split-brain guard. A primary never heard at all (the
//! standby host started first) is not declared failed by timeout; an operator can still
//! declare it ([`Detector::declare`]).

use rdma_transport::liveness::PrimaryHeartbeat;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Default silence after which the primary is considered failed.
pub const PRIMARY_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Relays tracked per volume (bounds memory against a flood of reports).
pub const RELAYS_PER_VOLUME_MAX: usize = 64;

/// Settings of the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Direct-path silence that counts as "not heard".
    pub timeout_ms: u64,
    /// Relay-path age that counts as "not heard" (relays hear an idle primary only every
    /// `relay_down_timeout_ms / 4` of the primary: keep this above that).
    pub relay_timeout_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            timeout_ms: PRIMARY_TIMEOUT_MS_DEFAULT,
            relay_timeout_ms: PRIMARY_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// Why failure was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// Both paths silent for the timeout.
    Timeout,
    /// Declared by an operator (RPC) with this reason.
    Declared(String),
}

/// The decision [`Detector::poll`] returns once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureDecision {
    /// Caller's clock at the decision.
    pub at_ns: u64,
    pub cause: FailureCause,
    /// Per volume: (name, ms since the last direct heartbeat, ms since a relay last heard
    /// the primary); `None`: never.
    pub silence: Vec<(String, Option<u64>, Option<u64>)>,
}

#[derive(Debug, Clone, Default)]
struct RelayView {
    /// When the relay last heard the primary, on our clock (`arrival - age`).
    heard_ns: Option<u64>,
    report_ns: u64,
    connected: bool,
    reports: u64,
}

#[derive(Debug, Clone, Default)]
struct VolumeLiveness {
    direct_ns: Option<u64>,
    seq: u64,
    generation: u64,
    last_lsn: u64,
    epoch: u64,
    direct_count: u64,
    relays: BTreeMap<SocketAddr, RelayView>,
}

/// Per-relay view in [`DetectorStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct RelayLivenessStatus {
    pub relay: String,
    /// ms since the relay last heard the primary (None: never).
    pub primary_age_ms: Option<u64>,
    /// ms since the relay's last report arrived.
    pub report_age_ms: u64,
    pub connected: bool,
    pub reports: u64,
}

/// Per-volume view in [`DetectorStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct VolumeLivenessStatus {
    pub volume: String,
    /// ms since the last direct heartbeat (None: never).
    pub direct_age_ms: Option<u64>,
    pub heartbeats: u64,
    pub generation: u64,
    pub last_lsn: u64,
    pub epoch: u64,
    pub relays: Vec<RelayLivenessStatus>,
    /// Heard on either path within its timeout.
    pub alive: bool,
}

/// What `standby_host_get_status` shows of the detector.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorStatus {
    pub timeout_ms: u64,
    pub relay_timeout_ms: u64,
    /// The primary was heard at least once (only then can silence mean failure).
    pub armed: bool,
    pub primary_alive: bool,
    pub decided: Option<FailureDecision>,
    pub volumes: Vec<VolumeLivenessStatus>,
    /// Heartbeats or reports for volumes not configured here (ignored).
    pub unknown_volume: u64,
    /// Direct heartbeats received after the decision (the old primary still lives: it must
    /// be fenced, which the generation bump at promotion does for the relays).
    pub heard_after_decision: u64,
}

/// The failure detector. See the module docs.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    volumes: BTreeMap<String, VolumeLiveness>,
    declared: Option<String>,
    decided: Option<FailureDecision>,
    unknown_volume: u64,
    heard_after_decision: u64,
}

fn age_ms(now_ns: u64, t: Option<u64>) -> Option<u64> {
    t.map(|t| now_ns.saturating_sub(t) / 1_000_000)
}

impl Detector {
    /// A detector for the primary volumes named `volumes`.
    pub fn new(cfg: DetectorConfig, volumes: impl IntoIterator<Item = String>) -> Detector {
        Detector {
            cfg,
            volumes: volumes.into_iter().map(|v| (v, VolumeLiveness::default())).collect(),
            declared: None,
            decided: None,
            unknown_volume: 0,
            heard_after_decision: 0,
        }
    }

    pub fn config(&self) -> DetectorConfig {
        self.cfg
    }

    /// A direct heartbeat arrived at `now_ns`. Returns false for a volume not configured.
    pub fn heartbeat(&mut self, hb: &PrimaryHeartbeat<'_>, now_ns: u64) -> bool {
        let Some(v) = self.volumes.get_mut(hb.volume) else {
            self.unknown_volume += 1;
            return false;
        };
        if self.decided.is_some() {
            self.heard_after_decision += 1;
        }
        v.direct_ns = Some(v.direct_ns.map_or(now_ns, |t| t.max(now_ns)));
        v.direct_count += 1;
        // A late datagram still proves life, but its fields are older: keep the newest.
        // seq 1 is a restarted sender.
        if hb.seq > v.seq || hb.seq <= 1 {
            v.seq = hb.seq;
            v.generation = hb.generation;
            v.last_lsn = hb.last_lsn;
            v.epoch = hb.epoch;
        }
        true
    }

    /// A relay's report arrived at `now_ns`: it last heard the primary of `volume`
    /// `primary_age_ms` ago ([`rdma_transport::wire::PRIMARY_AGE_NEVER`]: never), and has
    /// (`connected`) a primary connection now. Returns false when ignored.
    pub fn relay_report(
        &mut self,
        relay: SocketAddr,
        volume: &str,
        primary_age_ms: u64,
        connected: bool,
        now_ns: u64,
    ) -> bool {
        let Some(v) = self.volumes.get_mut(volume) else {
            self.unknown_volume += 1;
            return false;
        };
        if !v.relays.contains_key(&relay) && v.relays.len() >= RELAYS_PER_VOLUME_MAX {
            return false;
        }
        let r = v.relays.entry(relay).or_default();
        let heard = if primary_age_ms == rdma_transport::wire::PRIMARY_AGE_NEVER {
            None
        } else {
            Some(now_ns.saturating_sub(primary_age_ms.saturating_mul(1_000_000)))
        };
        // Keep the newest evidence: a report that says less than an earlier one (sent
        // before it, arriving after) does not move the time back.
        r.heard_ns = match (r.heard_ns, heard) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        r.report_ns = now_ns;
        r.connected = connected;
        r.reports += 1;
        true
    }

    /// An operator declares the primary failed (takes effect at the next [`Detector::poll`]).
    pub fn declare(&mut self, reason: &str) {
        if self.decided.is_none() && self.declared.is_none() {
            self.declared = Some(reason.to_string());
        }
    }

    fn alive(&self, v: &VolumeLiveness, now_ns: u64) -> bool {
        let fresh = |t: Option<u64>, ms: u64| t.is_some_and(|t| now_ns.saturating_sub(t) < ms * 1_000_000);
        fresh(v.direct_ns, self.cfg.timeout_ms)
            || v.relays.values().any(|r| fresh(r.heard_ns, self.cfg.relay_timeout_ms))
    }

    fn armed(&self) -> bool {
        self.volumes
            .values()
            .any(|v| v.direct_ns.is_some() || v.relays.values().any(|r| r.heard_ns.is_some()))
    }

    /// True when some configured volume was heard on some path within its timeout.
    pub fn primary_alive(&self, now_ns: u64) -> bool {
        self.volumes.values().any(|v| self.alive(v, now_ns))
    }

    /// Returns the failure decision the first time it is reached, then `None`.
    pub fn poll(&mut self, now_ns: u64) -> Option<FailureDecision> {
        if self.decided.is_some() {
            return None;
        }
        let cause = if let Some(r) = self.declared.take() {
            FailureCause::Declared(r)
        } else if !self.volumes.is_empty() && self.armed() && !self.primary_alive(now_ns) {
            FailureCause::Timeout
        } else {
            return None;
        };
        let silence = self
            .volumes
            .iter()
            .map(|(n, v)| {
                let relay = v.relays.values().filter_map(|r| r.heard_ns).max();
                (n.clone(), age_ms(now_ns, v.direct_ns), age_ms(now_ns, relay))
            })
            .collect();
        let d = FailureDecision {
            at_ns: now_ns,
            cause,
            silence,
        };
        self.decided = Some(d.clone());
        Some(d)
    }

    /// The decision taken, if any.
    pub fn decided(&self) -> Option<&FailureDecision> {
        self.decided.as_ref()
    }

    /// Last (generation, last LSN, epoch) a direct heartbeat of `volume` carried.
    pub fn last_heartbeat(&self, volume: &str) -> Option<(u64, u64, u64)> {
        self.volumes
            .get(volume)
            .filter(|v| v.direct_count > 0)
            .map(|v| (v.generation, v.last_lsn, v.epoch))
    }

    pub fn status(&self, now_ns: u64) -> DetectorStatus {
        DetectorStatus {
            timeout_ms: self.cfg.timeout_ms,
            relay_timeout_ms: self.cfg.relay_timeout_ms,
            armed: self.armed(),
            primary_alive: self.primary_alive(now_ns),
            decided: self.decided.clone(),
            volumes: self
                .volumes
                .iter()
                .map(|(n, v)| VolumeLivenessStatus {
                    volume: n.clone(),
                    direct_age_ms: age_ms(now_ns, v.direct_ns),
                    heartbeats: v.direct_count,
                    generation: v.generation,
                    last_lsn: v.last_lsn,
                    epoch: v.epoch,
                    relays: v
                        .relays
                        .iter()
                        .map(|(a, r)| RelayLivenessStatus {
                            relay: a.to_string(),
                            primary_age_ms: age_ms(now_ns, r.heard_ns),
                            report_age_ms: now_ns.saturating_sub(r.report_ns) / 1_000_000,
                            connected: r.connected,
                            reports: r.reports,
                        })
                        .collect(),
                    alive: self.alive(v, now_ns),
                })
                .collect(),
            unknown_volume: self.unknown_volume,
            heard_after_decision: self.heard_after_decision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdma_transport::wire::PRIMARY_AGE_NEVER;

    const MS: u64 = 1_000_000;

    fn hb(volume: &str, seq: u64) -> PrimaryHeartbeat<'_> {
        PrimaryHeartbeat {
            volume,
            interval_ms: 100,
            seq,
            generation: 1,
            last_lsn: seq * 10,
            epoch: seq,
            time_ns: 0,
        }
    }

    fn det() -> Detector {
        Detector::new(DetectorConfig::default(), ["vol".to_string()])
    }

    fn relay(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], n))
    }

    #[test]
    fn both_paths_silent_fails_over_after_the_timeout() {
        let mut d = det();
        assert!(d.heartbeat(&hb("vol", 1), 1_000 * MS));
        assert!(d.relay_report(relay(1), "vol", 5, true, 1_000 * MS));
        assert_eq!(d.poll(1_500 * MS), None);
        assert_eq!(d.poll(1_999 * MS), None, "just under the timeout");
        let dec = d
            .poll(2_001 * MS)
            .expect("failure after 1000 ms of silence on both paths");
        assert_eq!(dec.cause, FailureCause::Timeout);
        assert_eq!(dec.silence, vec![("vol".to_string(), Some(1_001), Some(1_006))]);
        assert_eq!(d.poll(3_000 * MS), None, "decided once");
        assert!(d.decided().is_some());
        d.heartbeat(&hb("vol", 2), 3_100 * MS);
        assert_eq!(d.status(3_100 * MS).heard_after_decision, 1);
    }

    #[test]
    fn direct_silent_but_relays_hear_the_primary_is_no_failure() {
        let mut d = det();
        d.heartbeat(&hb("vol", 1), 0);
        // The standby<->primary link is cut at t=0; relays keep hearing the primary.
        for t in (100..20_000).step_by(100) {
            d.relay_report(relay(1), "vol", 40, true, t * MS);
            assert_eq!(d.poll(t * MS), None, "relay hears the primary at {t} ms");
        }
        let st = d.status(20_000 * MS);
        assert!(st.primary_alive && st.volumes[0].alive);
        assert_eq!(st.volumes[0].direct_age_ms, Some(20_000));
        // One of two relays loses the primary too: the other still hears it.
        d.relay_report(relay(2), "vol", PRIMARY_AGE_NEVER, false, 20_000 * MS);
        d.relay_report(relay(1), "vol", 40, true, 20_050 * MS);
        assert_eq!(d.poll(20_500 * MS), None);
        // Now relay 1 stops reporting (or reports growing ages): failure.
        d.relay_report(relay(1), "vol", 600, false, 20_600 * MS);
        assert_eq!(d.poll(20_900 * MS), None, "heard 890 ms ago through relay 1");
        let dec = d.poll(21_011 * MS).expect("relay evidence aged out");
        assert_eq!(dec.silence[0].2, Some(1_001));
    }

    #[test]
    fn heartbeats_resuming_before_the_timeout_are_no_failure() {
        let mut d = det();
        d.heartbeat(&hb("vol", 1), 0);
        assert_eq!(d.poll(900 * MS), None);
        d.heartbeat(&hb("vol", 2), 950 * MS);
        assert_eq!(d.poll(1_900 * MS), None, "a heartbeat 950 ms ago");
        assert_eq!(d.last_heartbeat("vol"), Some((1, 20, 2)));
        // Late, reordered datagram: counts as life but its older fields are not taken.
        d.heartbeat(&hb("vol", 1), 1_900 * MS);
        assert_eq!(d.last_heartbeat("vol"), Some((1, 10, 1)), "seq 1 = restarted sender");
        d.heartbeat(&hb("vol", 5), 1_910 * MS);
        d.heartbeat(&hb("vol", 4), 1_920 * MS);
        assert_eq!(d.last_heartbeat("vol"), Some((1, 50, 5)));
        assert_eq!(d.poll(2_800 * MS), None);
        assert!(d.poll(2_921 * MS).is_some());
    }

    #[test]
    fn never_heard_is_not_failed_but_may_be_declared() {
        let mut d = det();
        assert_eq!(d.poll(60_000 * MS), None, "not armed");
        assert!(!d.status(60_000 * MS).armed);
        // Unknown volumes are ignored and do not arm.
        assert!(!d.heartbeat(&hb("other", 1), 60_000 * MS));
        assert!(!d.relay_report(relay(1), "other", 1, true, 60_000 * MS));
        assert_eq!(d.status(60_000 * MS).unknown_volume, 2);
        // A relay that never heard the primary does not arm either.
        d.relay_report(relay(1), "vol", PRIMARY_AGE_NEVER, false, 60_000 * MS);
        assert_eq!(d.poll(90_000 * MS), None);
        d.declare("operator drill");
        let dec = d.poll(90_001 * MS).unwrap();
        assert_eq!(dec.cause, FailureCause::Declared("operator drill".into()));
        assert_eq!(dec.silence[0].1, None);
        d.declare("again");
        assert_eq!(d.poll(90_002 * MS), None);
    }

    #[test]
    fn declaring_while_the_primary_is_alive_still_fails_over() {
        let mut d = det();
        d.heartbeat(&hb("vol", 1), 0);
        d.declare("planned");
        assert!(matches!(d.poll(10 * MS).unwrap().cause, FailureCause::Declared(_)));
    }

    #[test]
    fn any_volume_heard_keeps_the_primary_alive() {
        let mut d = Detector::new(DetectorConfig::default(), ["a".to_string(), "b".to_string()]);
        d.heartbeat(&hb("a", 1), 0);
        d.heartbeat(&hb("b", 1), 0);
        for t in (100..5_000).step_by(100) {
            d.heartbeat(&hb("b", t), t * MS);
            assert_eq!(d.poll(t * MS), None);
        }
        assert!(!d.status(5_000 * MS).volumes[0].alive);
        assert!(d.poll(5_901 * MS).is_some());
    }

    #[test]
    fn relay_report_newest_evidence_wins_and_table_is_bounded() {
        let mut d = det();
        d.relay_report(relay(1), "vol", 10, true, 1_000 * MS); // heard at 990
        d.relay_report(relay(1), "vol", 500, true, 1_010 * MS); // says 510: older, kept 990
        assert_eq!(d.status(1_010 * MS).volumes[0].relays[0].primary_age_ms, Some(20));
        for n in 0..(RELAYS_PER_VOLUME_MAX as u16 + 10) {
            d.relay_report(relay(100 + n), "vol", 1, true, 1_010 * MS);
        }
        assert_eq!(d.status(1_010 * MS).volumes[0].relays.len(), RELAYS_PER_VOLUME_MAX);
    }
}
