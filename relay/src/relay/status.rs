//! The `relay_get_status` snapshot: what the relay reports per volume, published by the
//! reactor every `STATUS_PERIOD_NS` (`docs/replication.md`, `docs/rpc.md`).

use engine::clock::now_ns;
use serde::Serialize;

use super::state::RelayState;
use super::ForwardPolicy;

/// A torn tail recovery cut, as reported.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CutReport {
    /// Segment.
    pub segment_id: u64,
    /// Offset where the log now ends.
    pub offset: u64,
    /// Bytes cut.
    pub bytes_cut: u64,
    /// Later segments deleted.
    pub segments_dropped: usize,
    /// Why.
    pub reason: String,
}

/// Per-volume state for `relay_get_status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RelayVolumeStatus {
    /// Volume name.
    pub name: String,
    /// Journal directory.
    pub dir: String,
    /// Generation.
    pub generation: u64,
    /// A primary is connected.
    pub primary_connected: bool,
    /// Times the standby's refusal named a newer generation that this relay took as its own
    /// (the standby was promoted; the primary of the older generation is fenced off).
    pub generation_adopted: u64,
    /// Fence orders taken from a standby starting a failover drain.
    pub fenced_by_standby: u64,
    /// Hellos and Ops/Base frames of a primary of an older generation refused (fencing).
    pub stale_primary_refusals: u64,
    /// Highest LSN appended.
    pub appended_lsn: u64,
    /// Highest durable (acknowledged) LSN.
    pub durable_lsn: u64,
    /// Highest LSN acknowledged to the primary.
    pub acked_lsn: u64,
    /// Journal bytes used.
    pub journal_used_bytes: u64,
    /// Journal bound.
    pub journal_bytes_max: u64,
    /// Live segments.
    pub segments: usize,
    /// Spare segment files ready for reuse.
    pub spare_segments: usize,
    /// Segments started in a reused (spare) file, and in a new file.
    pub segments_recycled: u64,
    /// See `segments_recycled`.
    pub segments_created: u64,
    /// O_DIRECT in use.
    pub direct_io: bool,
    /// The journal is on a memory file system (tmpfs): stored by inline pwrite, no
    /// fdatasync; it does not survive power loss.
    pub memory_media: bool,
    /// Frame records appended to the journal (one per Ops frame received).
    pub journal_records: u64,
    /// Group commits (one write, plus one fdatasync off memory media): records per commit
    /// is `journal_records / journal_commits`.
    pub journal_commits: u64,
    /// Appends refused because the journal was full (back-pressure events).
    pub journal_full_events: u64,
    /// The primary connection is not being read because the journal is full.
    pub backpressure: bool,
    /// Receives from the primary that found frames readiness had not reported (see the
    /// volume side's `late_reads`).
    pub primary_late_reads: u64,
    /// Standby link state: `none`, `connecting`, `handshake`, `up`, `refused`.
    pub standby: String,
    /// The standby link's lifetime counters (none without a standby).
    pub standby_link: Option<crate::volume::LinkCounters>,
    /// Highest LSN forwarded.
    pub forwarded_lsn: u64,
    /// Highest LSN the standby confirmed safe.
    pub safe_lsn: u64,
    /// Durable LSNs not yet forwarded.
    pub forward_lag_lsn: u64,
    /// Bytes appended and not yet forwarded (frame bytes).
    pub forward_lag_bytes: u64,
    /// Seconds forwarding has been behind (0 when caught up).
    pub forward_lag_seconds: f64,
    /// GapRequests answered.
    pub gap_requests: u64,
    /// What recovery found at start-up.
    pub recovered_records: u64,
    /// The torn tail recovery cut, if any.
    pub torn_tail: Option<CutReport>,
    /// Last error.
    pub last_error: String,
    /// The journal failed (see `last_error`): primaries are refused until the relay
    /// restarts and recovers it.
    pub journal_failed: bool,
    /// The journal's history base (resync): it holds no op between its records before
    /// the base record and this LSN; 0 when it never had one.
    pub base_lsn: u64,
}

/// `relay_get_status` result.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RelayStatus {
    /// Listening address (TCP).
    pub listen: String,
    /// RDMA listening address (`rdma://IP:PORT`), when the relay listens over RDMA too.
    pub listen_rdma: Option<String>,
    /// Forwarder or backup.
    pub role: String,
    /// Standby address.
    pub standby: Option<String>,
    /// Forward policy.
    pub forward_policy: Option<ForwardPolicy>,
    /// Volumes.
    pub volumes: Vec<RelayVolumeStatus>,
    /// Volumes whose journal is being opened for a primary's first Hello (off the
    /// reactor; the Hello is answered once it is open).
    pub journals_opening: Vec<String>,
}

impl RelayState {
    pub(super) fn publish(&self) {
        let now = now_ns();
        let st = RelayStatus {
            listen: self.acceptor.local_addr().to_string(),
            listen_rdma: self
                .acceptor
                .local_endpoints()
                .iter()
                .find(|e| e.is_rdma())
                .map(|e| e.to_string()),
            role: if self.cfg.forwarder { "forwarder" } else { "backup" }.to_string(),
            standby: self.cfg.standby.map(|s| s.to_string()),
            forward_policy: Some(self.cfg.forward.clone()),
            volumes: self
                .volumes
                .iter()
                .map(|v| {
                    let durable = v.journal.durable_lsn();
                    let fwd = v.fwd_next.saturating_sub(1);
                    RelayVolumeStatus {
                        name: v.meta.name.clone(),
                        dir: v.dir.display().to_string(),
                        generation: v.meta.generation,
                        primary_connected: v.primary.is_some(),
                        generation_adopted: v.generation_adopted,
                        fenced_by_standby: v.fenced_by_standby,
                        stale_primary_refusals: v.stale_primary_refusals,
                        appended_lsn: v.journal.appended_lsn(),
                        durable_lsn: durable,
                        acked_lsn: v.primary.as_ref().map_or(0, |p| p.acked),
                        journal_used_bytes: v.journal.used_bytes(),
                        journal_bytes_max: v.journal.bytes_max(),
                        segments: v.journal.segment_count(),
                        spare_segments: v.journal.spare_count(),
                        segments_recycled: v.journal.stats().segments_recycled,
                        segments_created: v.journal.stats().segments_created,
                        direct_io: v.journal.direct_io(),
                        memory_media: v.journal.memory_media(),
                        journal_records: v.journal.stats().records_appended,
                        journal_commits: v.journal.stats().batches_committed,
                        journal_full_events: v.journal.stats().full,
                        backpressure: v.primary.as_ref().is_some_and(|p| !p.stashed.is_empty()),
                        primary_late_reads: v.primary_late_reads,
                        standby: v.standby_link.as_ref().map_or("none", |l| l.state_name()).to_string(),
                        standby_link: v.standby_link.as_ref().map(crate::volume::LinkCounters::from),
                        forwarded_lsn: fwd,
                        safe_lsn: v.safe_lsn,
                        forward_lag_lsn: if self.cfg.forwarder {
                            durable.saturating_sub(fwd)
                        } else {
                            0
                        },
                        forward_lag_bytes: v.bytes_appended.saturating_sub(v.bytes_forwarded),
                        forward_lag_seconds: v.behind_since_ns.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9),
                        gap_requests: v.gap_requests,
                        recovered_records: v.recovery.records,
                        torn_tail: v.recovery.torn_tail.map(|t| CutReport {
                            segment_id: t.segment_id,
                            offset: t.offset,
                            bytes_cut: t.bytes_cut,
                            segments_dropped: t.segments_dropped,
                            reason: format!("{:?}", t.reason),
                        }),
                        last_error: v.last_error.clone(),
                        journal_failed: v.journal_failed.is_some(),
                        base_lsn: v.journal.base_lsn(),
                    }
                })
                .collect(),
            journals_opening: self.opening.iter().map(|o| o.name.clone()).collect(),
        };
        if let Ok(mut s) = self.shared.status.try_lock() {
            *s = st;
        }
    }
}
