//! One volume's state on the relay: its journal, the primary and standby connections,
//! forwarding position and counters ([`VolumeJournal`]), and the `volume.json` kept next to
//! the journal across restarts ([`VolumeMeta`]) (`docs/replication.md`, relay role).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use engine::buf::DmaBuf;
use engine::clock::now_ns;
use rdma_transport::handshake::LocalVolume;
use rdma_transport::link::Reconnect;
use rdma_transport::wire::{self, GapRequest, FRAME_BYTES_MAX};
use serde::{Deserialize, Serialize};

use super::primary::PrimaryConn;
use super::state::Conn;
use super::{JournalSpec, RelayConfig, RelayError, FWD_BUFS_MAX, GAP_QUEUE_MAX, STANDBY_SCHEDULE, VOLUME_META_FILE};
use crate::forward_policy::ForwardGate;
use crate::journal::{Journal, JournalConfig, ReadCursor, RecoveryReport, READ_BUF_BYTES_MIN};

/// What the relay keeps about a volume across restarts, next to its journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeMeta {
    /// Volume name.
    pub name: String,
    /// Volume id, 32 hex digits.
    pub volume_id: String,
    /// Block size.
    pub block_size: u32,
    /// Newest generation seen.
    pub generation: u64,
    /// A standby starting a failover drain fenced primaries of a generation below this off
    /// (0: never). Kept apart from `generation`, which labels the ops this relay forwards:
    /// the ops journaled before the fence are the old primary's and reach the draining
    /// standby under its generation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fenced_below: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

pub(super) fn hex16(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl VolumeMeta {
    pub(super) fn save(&self, dir: &std::path::Path) -> Result<(), RelayError> {
        let path = dir.join(VOLUME_META_FILE);
        let tmp = dir.join(format!("{VOLUME_META_FILE}.tmp"));
        let meta_err = |why: String| RelayError::Meta {
            path: path.display().to_string(),
            why,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| meta_err(e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(|e| meta_err(e.to_string()))?;
        let f = std::fs::File::create(&tmp).map_err(|e| meta_err(e.to_string()))?;
        (&f).write_all(&bytes).map_err(|e| meta_err(e.to_string()))?;
        f.sync_all().map_err(|e| meta_err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| meta_err(e.to_string()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
    pub(super) fn load(dir: &std::path::Path) -> Result<VolumeMeta, RelayError> {
        let path = dir.join(VOLUME_META_FILE);
        let meta_err = |why: String| RelayError::Meta {
            path: path.display().to_string(),
            why,
        };
        let bytes = std::fs::read(&path).map_err(|e| meta_err(e.to_string()))?;
        let m: VolumeMeta = serde_json::from_slice(&bytes).map_err(|e| meta_err(e.to_string()))?;
        if parse_hex16(&m.volume_id).is_none() {
            return Err(meta_err(format!("volume_id {:?} is not 32 hex digits", m.volume_id)));
        }
        Ok(m)
    }
}

pub(super) struct VolumeJournal {
    pub(super) meta: VolumeMeta,
    pub(super) volume_id: [u8; 16],
    pub(super) dir: PathBuf,
    pub(super) journal: Journal,
    pub(super) recovery: RecoveryReport,
    pub(super) primary: Option<PrimaryConn>,
    pub(super) standby: Option<Conn>,
    /// The standby link's lifecycle (`None`: no standby configured).
    pub(super) standby_link: Option<Reconnect>,
    /// Next LSN to forward.
    pub(super) fwd_next: u64,
    pub(super) fwd_cursor: Option<ReadCursor>,
    pub(super) read_buf: Option<DmaBuf>,
    pub(super) fwd_bufs: Vec<Vec<u8>>,
    pub(super) fwd_bufs_made: usize,
    pub(super) safe_lsn: u64,
    /// Receives from the primary that found frames readiness had not reported.
    pub(super) primary_late_reads: u64,
    pub(super) gaps: VecDeque<GapRequest>,
    pub(super) gap_requests: u64,
    pub(super) bytes_appended: u64,
    pub(super) bytes_forwarded: u64,
    pub(super) behind_since_ns: Option<u64>,
    /// The forward policy's state (interval openings, bandwidth bucket).
    pub(super) gate: ForwardGate,
    pub(super) last_error: String,
    /// The journal failed to append or to make records durable (not back-pressure): the
    /// primary is disconnected and refused (`Unavailable`) from then on, so it resends
    /// from the last durable LSN to a relay that can hold it, and its liveness policy
    /// (block or go on degraded) applies instead of waiting for Acks that never come.
    pub(super) journal_failed: Option<String>,
    /// `now_ns()` when the primary was last heard (Hello or any frame); 0: never.
    pub(super) primary_heard_ns: u64,
    /// Last `PrimaryLiveness` sent to the standby.
    pub(super) liveness_sent_ns: u64,
    /// What the last forwarding pass did, reported to the standby in `PrimaryLiveness` so
    /// it does not fetch around ops held back by policy.
    pub(super) fwd_state: wire::ForwardState,
    /// Times the standby's refusal named a newer generation this relay then took as its own
    /// (a promotion: the old primary is fenced off).
    pub(super) generation_adopted: u64,
    /// Fence orders taken from a standby starting a failover drain.
    pub(super) fenced_by_standby: u64,
    /// Hellos and Ops/Base frames of a primary of an older generation refused (fencing).
    pub(super) stale_primary_refusals: u64,
}

/// Marks a volume's journal failed, logged and kept as its last error. The first failure
/// is the one kept: it is the cause, what follows are its echoes.
pub(super) fn fail_journal(failed: &mut Option<String>, last_error: &mut String, volume: &str, why: String) {
    if failed.is_none() {
        log::error!("relay: volume {volume}: {why}; primaries are refused until the relay restarts");
        *last_error = why.clone();
        *failed = Some(why);
    }
}

impl VolumeJournal {
    /// The standby link is up (its Hello accepted).
    pub(super) fn standby_up(&self) -> bool {
        self.standby_link.as_ref().is_some_and(Reconnect::is_up)
    }

    /// Opens (recovers) the volume's journal; `save_meta`: a new volume, whose
    /// `volume.json` is written once the journal (and so the directory's lock) is open.
    pub(super) fn open(
        cfg: &RelayConfig,
        meta: VolumeMeta,
        dir: PathBuf,
        spec: Option<&JournalSpec>,
        save_meta: bool,
    ) -> Result<Self, RelayError> {
        let mut jc = JournalConfig::new(&dir);
        jc.journal_bytes_max = spec.and_then(|s| s.journal_bytes_max).unwrap_or(cfg.journal_bytes_max);
        jc.segment_bytes = spec.and_then(|s| s.segment_bytes).unwrap_or(cfg.segment_bytes);
        jc.direct_io = cfg.direct_io;
        jc.spare_segments = cfg.spare_segments;
        jc.preallocate_bytes = cfg.journal_preallocate_bytes;
        let (journal, recovery) = Journal::open(jc).map_err(|source| RelayError::Journal {
            volume: meta.name.clone(),
            source,
        })?;
        if save_meta {
            meta.save(&dir)?;
        }
        if let Some(t) = &recovery.torn_tail {
            log::warn!(
                "volume {}: journal tail cut at segment {:#x} offset {} ({} bytes, {} later segments dropped): {:?}",
                meta.name,
                t.segment_id,
                t.offset,
                t.bytes_cut,
                t.segments_dropped,
                t.reason
            );
        }
        log::info!(
            "volume {}: journal {} recovered {} records, LSNs {}..={}",
            meta.name,
            dir.display(),
            recovery.records,
            recovery.lsn_first,
            recovery.lsn_last
        );
        let volume_id = parse_hex16(&meta.volume_id).unwrap_or_default();
        Ok(Self {
            volume_id,
            dir,
            fwd_next: recovery.lsn_first.max(1),
            journal,
            recovery,
            primary: None,
            standby: None,
            standby_link: cfg.standby.map(|_| Reconnect::new(STANDBY_SCHEDULE, 0)),
            fwd_cursor: None,
            read_buf: Some(DmaBuf::alloc(READ_BUF_BYTES_MIN)),
            fwd_bufs: Vec::with_capacity(FWD_BUFS_MAX),
            fwd_bufs_made: 0,
            safe_lsn: 0,
            primary_late_reads: 0,
            gaps: VecDeque::with_capacity(GAP_QUEUE_MAX),
            gap_requests: 0,
            bytes_appended: 0,
            bytes_forwarded: 0,
            behind_since_ns: None,
            gate: ForwardGate::new(now_ns()),
            last_error: String::new(),
            journal_failed: None,
            primary_heard_ns: 0,
            liveness_sent_ns: 0,
            // A forwarder says so from its first report on: reports go out as soon as the
            // standby connection exists, before the link is up and the policy first runs,
            // and a standby told "backup" by every relay would fetch around the forwarder.
            fwd_state: if cfg.forwarder {
                wire::ForwardState::Forwarding
            } else {
                wire::ForwardState::Backup
            },
            generation_adopted: 0,
            fenced_by_standby: 0,
            stale_primary_refusals: 0,
            meta,
        })
    }

    /// The oldest generation of a primary this relay takes: its own, or a standby's fence.
    pub(super) fn primary_floor(&self) -> u64 {
        self.meta.generation.max(self.meta.fenced_below)
    }

    /// What a primary's Hello is answered against (generation: [`Self::primary_floor`]).
    pub(super) fn local(&self) -> LocalVolume {
        LocalVolume {
            volume_id: self.volume_id,
            block_size: self.meta.block_size,
            generation: self.primary_floor(),
            durable_lsn: self.journal.durable_lsn(),
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_hex() {
        let id = [0xab; 16];
        assert_eq!(parse_hex16(&hex16(&id)), Some(id));
        assert_eq!(parse_hex16("zz"), None);
        let dir = std::env::temp_dir().join(format!("baton-relay-meta-{}", std::process::id()));
        let m = VolumeMeta {
            name: "v".into(),
            volume_id: hex16(&id),
            block_size: 4096,
            generation: 3,
            fenced_below: 0,
        };
        m.save(&dir).unwrap();
        assert_eq!(VolumeMeta::load(&dir).unwrap(), m);
        assert!(!std::fs::read_to_string(dir.join(VOLUME_META_FILE))
            .unwrap()
            .contains("fenced_below"));
        let fenced = VolumeMeta { fenced_below: 4, ..m };
        fenced.save(&dir).unwrap();
        assert_eq!(VolumeMeta::load(&dir).unwrap(), fenced);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
