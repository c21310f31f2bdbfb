//! The relay role (`baton relay`): accepts primaries' volumes, journals every op frame on
//! non-volatile storage before acknowledging it (R3), forwards to the standby at its own
//! timing (R4) and keeps every record until the standby confirms it (`SafeUpTo`).
//!
//! Where it sits: between a primary's replicated volumes and the standby, at a site apart
//! from both (R5). One reactor (the relay's `core`) owns the listening socket, every
//! connection and every volume's [`Journal`]; one poller drives them all, in a fixed order:
//! accept, handshakes, primary frames -> journal appends, journal poll -> Acks, standby
//! frames (SafeUpTo -> release, GapRequest -> GapReply), forwarding reads -> Forward frames.
//!
//! Acknowledgement: an Ack carries the journal's contiguous durable LSN and is sent only
//! after the group commit (write + fdatasync) that covers it completed. A full journal is
//! never a drop: the frame that did not fit is kept (one receive buffer's worth at most),
//! the connection is not read again until it fits, the TCP window closes and the primary's
//! sends stop: back-pressure all the way to the host.
//!
//! Several relays (who forwards what): a relay started as the **forwarder** pushes Forward
//! frames; a **backup** relay journals and acknowledges the same ops but forwards nothing
//! on its own: it answers the standby's GapRequests. So in steady state the long-distance
//! link carries each byte once; if the forwarder dies, the standby pulls what it lacks from
//! a backup with GapRequests (it drives the failover; see `docs/replication.md`). Every
//! relay releases on SafeUpTo, which the standby sends to all of them.
//!
//! Threads: the relay state lives on its reactor; management reaches it through a control
//! ring; the status snapshot is published every 10 ms for `relay_get_status`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrayvec::ArrayVec;
use engine::buf::DmaBuf;
use engine::clock::now_ns;
use engine::reactor::{self, PollStatus};
use engine::ring::Ring;
use rdma_transport::handshake::{answer_hello, refusal_for, LocalVolume};
use rdma_transport::readiness::{Readiness, READY_EVENTS_MAX};

use crate::volume::RECV_UNREADY_PERIOD_NS;
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection, RX_BUF_BYTES};
use rdma_transport::wire::{
    self, Ack, Batch, BatchEncoder, Frame, GapRequest, GapStatus, Heartbeat, Hello, HelloReply, Op, RefuseReason, Role,
    FRAME_BYTES_MAX, FRAME_DATA_BYTES_MAX, OPS_PER_FRAME_MAX, WIRE_VERSION,
};
use rdma_transport::{ConnState, Connection, OutFrame, TransportError};
use serde::{Deserialize, Serialize};

use crate::forward_policy::ForwardGate;
pub use crate::forward_policy::{in_window, parse_window, ForwardPolicy};
use crate::journal::lock::DirLock;
use crate::journal::{Journal, JournalConfig, JournalError, ReadCursor, RecoveryReport, READ_BUF_BYTES_MIN};
use crate::limits::LimitError;

/// Default segment size of relay journals (smaller than the journal's own default so
/// gap replies, which read whole segments, stay cheap).
pub const RELAY_SEGMENT_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;
/// Connections waiting for their Hello.
pub const PENDING_CONNS_MAX: usize = 64;
/// Time a new connection has to send its Hello.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;
/// GapRequests queued per standby link (more are answered NotHeld... never: the link is
/// not read while the queue is full).
pub const GAP_QUEUE_MAX: usize = 16;
/// Forward frame buffers per volume (each up to one frame's data).
pub const FWD_BUFS_MAX: usize = 64;
/// Pause between reconnect attempts to the standby.
pub const STANDBY_RECONNECT_MS: u64 = 200;
/// How often a relay tells the standby when it last heard each volume's primary
/// (`PrimaryLiveness`, `docs/failover.md`).
pub const LIVENESS_REPORT_MS: u64 = 100;
/// Status snapshot period.
pub const STATUS_PERIOD_NS: u64 = 10_000_000;
/// Name of the per-volume metadata file in a journal directory.
pub const VOLUME_META_FILE: &str = "volume.json";

/// Settings of a relay process.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address primaries connect to.
    pub listen: SocketAddr,
    /// Directory holding one journal directory per volume.
    pub journal_root: PathBuf,
    /// Bound of each volume's journal.
    pub journal_bytes_max: u64,
    /// Segment size.
    pub segment_bytes: u64,
    /// Try O_DIRECT.
    pub direct_io: bool,
    /// Released segment files each volume's journal keeps for reuse.
    pub spare_segments: usize,
    /// Bytes of spare segments each volume's journal creates when it is opened (space
    /// reserved up front, and appends into allocated pages/blocks from the first one).
    pub journal_preallocate_bytes: u64,
    /// The standby to forward to (none: hold only).
    pub standby: Option<SocketAddr>,
    /// Forwarding timing.
    pub forward: ForwardPolicy,
    /// Forwarder (pushes) or backup (answers GapRequests only).
    pub forwarder: bool,
    /// Reactor to run on (`None`: the first).
    pub core: Option<u32>,
}

impl RelayConfig {
    /// Defaults.
    pub fn new(listen: SocketAddr, journal_root: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            journal_root: journal_root.into(),
            journal_bytes_max: crate::journal::JOURNAL_BYTES_MAX_DEFAULT,
            segment_bytes: RELAY_SEGMENT_BYTES_DEFAULT,
            direct_io: true,
            spare_segments: crate::journal::SPARE_SEGMENTS_DEFAULT,
            journal_preallocate_bytes: 0,
            standby: None,
            forward: ForwardPolicy::Immediate,
            forwarder: true,
            core: None,
        }
    }
}

/// Relay errors (setup and management).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: TransportError,
    },
    /// A journal could not be opened.
    #[error("volume {volume}: journal: {source}")]
    Journal {
        /// Volume.
        volume: String,
        /// Why.
        source: JournalError,
    },
    /// Metadata file problem.
    #[error("volume metadata {path}: {why}")]
    Meta {
        /// File.
        path: String,
        /// Why.
        why: String,
    },
    /// A parameter is invalid.
    #[error("invalid parameter {param}: {why}")]
    InvalidParam {
        /// Name.
        param: &'static str,
        /// Why.
        why: String,
    },
    /// The relay reactor is not reachable.
    #[error("relay reactor unreachable: {0}")]
    Unreachable(String),
    /// The volume exists already.
    #[error("volume {0} already has a journal")]
    Exists(String),
    /// A setting is out of range ([`crate::limits`]).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The journal directory is another relay's (its lock is held), or cannot be locked.
    #[error(transparent)]
    DirLock(JournalError),
}

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
}

fn hex16(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
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
    fn save(&self, dir: &std::path::Path) -> Result<(), RelayError> {
        let path = dir.join(VOLUME_META_FILE);
        let tmp = dir.join(format!("{VOLUME_META_FILE}.tmp"));
        let meta_err = |why: String| RelayError::Meta {
            path: path.display().to_string(),
            why,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| meta_err(e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(|e| meta_err(e.to_string()))?;
        let f = std::fs::File::create(&tmp).map_err(|e| meta_err(e.to_string()))?;
        use std::io::Write;
        (&f).write_all(&bytes).map_err(|e| meta_err(e.to_string()))?;
        f.sync_all().map_err(|e| meta_err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| meta_err(e.to_string()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
    fn load(dir: &std::path::Path) -> Result<VolumeMeta, RelayError> {
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
    /// Listening address.
    pub listen: String,
    /// Forwarder or backup.
    pub role: String,
    /// Standby address.
    pub standby: Option<String>,
    /// Forward policy.
    pub forward_policy: Option<ForwardPolicy>,
    /// Volumes.
    pub volumes: Vec<RelayVolumeStatus>,
}

/// Per-volume journal settings given by `relay_create_journal` before the primary connects.
#[derive(Debug, Clone)]
pub struct JournalSpec {
    /// Volume name.
    pub volume: String,
    /// Directory (default: `<journal_root>/<volume>`).
    pub dir: Option<PathBuf>,
    /// Bound.
    pub journal_bytes_max: Option<u64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
}

enum RelayCtl {
    SetForward(ForwardPolicy),
    Stop(Box<dyn FnOnce() + Send>),
}

struct RelayShared {
    ctl: Ring<RelayCtl>,
    status: Mutex<RelayStatus>,
    specs: Mutex<Vec<JournalSpec>>,
    forward: Mutex<ForwardPolicy>,
}

/// A running relay: the handle management holds.
pub struct Relay {
    shared: Arc<RelayShared>,
    cfg: RelayConfig,
    listen: SocketAddr,
}

impl Relay {
    /// Binds the listener, opens (recovers) every volume journal under the root, and
    /// starts the relay poller on its reactor. Setup path: blocks for recovery.
    pub fn start(cfg: RelayConfig) -> Result<Arc<Relay>, RelayError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.journal_root).map_err(|e| RelayError::Meta {
            path: cfg.journal_root.display().to_string(),
            why: e.to_string(),
        })?;
        // Before listening or recovering anything: a second relay on this directory would
        // recover the live relay's journals and collide with its next segments.
        let root_lock = DirLock::acquire(&cfg.journal_root).map_err(RelayError::DirLock)?;
        let acceptor = TcpAcceptor::bind(cfg.listen, TcpConfig::default()).map_err(|source| RelayError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let listen = acceptor.local_addr();
        let mut volumes = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cfg.journal_root)
            .map_err(|e| RelayError::Meta {
                path: cfg.journal_root.display().to_string(),
                why: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(VOLUME_META_FILE).is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let meta = VolumeMeta::load(&dir)?;
            let v = VolumeJournal::open(&cfg, meta, dir, None, false)?;
            volumes.push(v);
        }
        let shared = Arc::new(RelayShared {
            ctl: Ring::new(64),
            status: Mutex::new(RelayStatus::default()),
            specs: Mutex::new(Vec::new()),
            forward: Mutex::new(cfg.forward.clone()),
        });
        let core = match cfg.core {
            Some(c) => c,
            None => *reactor::cores()
                .first()
                .ok_or_else(|| RelayError::Unreachable("no reactors running".into()))?,
        };
        let state = RelayState {
            cfg: cfg.clone(),
            shared: shared.clone(),
            acceptor,
            pending: Vec::with_capacity(PENDING_CONNS_MAX),
            volumes,
            status_ns: 0,
            poller: None,
            stopped: false,
            readiness: Readiness::new()
                .map_err(|e| log::warn!("relay: no epoll ({e}): every primary connection is read on every poll"))
                .ok(),
            ready: ArrayVec::new(),
            next_token: 0,
            root_lock: Some(root_lock),
        };
        state.publish();
        let holder = Arc::new(Mutex::new(Some(state)));
        reactor::send_msg(core, move || {
            let Some(state) = holder.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return;
            };
            let st = std::rc::Rc::new(std::cell::RefCell::new(state));
            let s2 = st.clone();
            let id = reactor::register_poller("relay", None, move || s2.borrow_mut().poll());
            st.borrow_mut().poller = Some(id);
        })
        .map_err(|e| RelayError::Unreachable(e.to_string()))?;
        log::info!(
            "relay listening on {listen}, journals under {}",
            cfg.journal_root.display()
        );
        Ok(Arc::new(Relay { shared, cfg, listen }))
    }

    /// The bound listening address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// Latest status snapshot.
    pub fn status(&self) -> RelayStatus {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current forward policy.
    pub fn forward_policy(&self) -> ForwardPolicy {
        self.shared.forward.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the forwarding timing (management path).
    pub fn set_forward_policy(&self, p: ForwardPolicy) -> Result<(), RelayError> {
        p.check()
            .map_err(|why| RelayError::InvalidParam { param: "mode", why })?;
        *self.shared.forward.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
        self.shared
            .ctl
            .push(RelayCtl::SetForward(p))
            .map_err(|_| RelayError::Unreachable("control ring full".into()))
    }

    /// Registers journal settings for a volume whose primary has not connected yet.
    pub fn create_journal(&self, spec: JournalSpec) -> Result<(), RelayError> {
        if spec.volume.is_empty() || spec.volume.len() > wire::VOLUME_NAME_BYTES_MAX || spec.volume.contains('/') {
            return Err(RelayError::InvalidParam {
                param: "volume",
                why: format!("{:?}: 1..=64 bytes, no '/'", spec.volume),
            });
        }
        let mut jc = JournalConfig::new(spec.dir.clone().unwrap_or_default());
        jc.journal_bytes_max = spec.journal_bytes_max.unwrap_or(self.cfg.journal_bytes_max);
        jc.segment_bytes = spec.segment_bytes.unwrap_or(self.cfg.segment_bytes);
        jc.preallocate_bytes = self.cfg.journal_preallocate_bytes;
        jc.validate()?;
        if self.status().volumes.iter().any(|v| v.name == spec.volume) {
            return Err(RelayError::Exists(spec.volume));
        }
        if let Some(dir) = spec.dir.as_deref().filter(|d| d.is_dir()) {
            // Early word when another process journals there (the lock is taken for good
            // when the primary's Hello opens the journal).
            if let Err(e @ JournalError::InUse { .. }) = DirLock::acquire(dir) {
                return Err(RelayError::DirLock(e));
            }
        }
        let mut specs = self.shared.specs.lock().unwrap_or_else(|e| e.into_inner());
        if specs.iter().any(|s| s.volume == spec.volume) {
            return Err(RelayError::Exists(spec.volume));
        }
        specs.push(spec);
        Ok(())
    }

    /// Journal settings registered so far (for `save_config`).
    pub fn journal_specs(&self) -> Vec<JournalSpec> {
        self.shared.specs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the relay poller (closes connections; journals are dropped, which waits for
    /// writes in flight). Blocks up to `timeout`.
    pub fn stop(&self, timeout: Duration) -> Result<(), RelayError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.shared
            .ctl
            .push(RelayCtl::Stop(Box::new(move || {
                let _ = tx.send(());
            })))
            .map_err(|_| RelayError::Unreachable("control ring full".into()))?;
        rx.recv_timeout(timeout)
            .map_err(|_| RelayError::Unreachable("relay did not confirm the stop".into()))
    }
}

// ---------------------------------------------------------------------------------------
// Relay reactor
// ---------------------------------------------------------------------------------------

type Conn = TcpConnection<Vec<u8>>;

struct PendingConn {
    conn: Conn,
    peer: SocketAddr,
    since_ns: u64,
}

/// The primary's connection to one volume.
struct PrimaryConn {
    conn: Conn,
    peer: SocketAddr,
    /// Frames received but not yet appended (journal full or busy), as re-encoded frame
    /// bytes, with their LSN ranges; at most one receive buffer's worth.
    stash: Vec<u8>,
    stashed: VecDeque<(usize, usize, u64, u64)>,
    /// Highest LSN acknowledged on this connection.
    acked: u64,
    /// Readiness token; `watched` when the socket is in the relay's readiness set.
    token: u64,
    watched: bool,
    /// Last `poll_recv`.
    recv_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StandbyPhase {
    None,
    Disconnected { retry_at_ns: u64 },
    Handshake,
    Up,
    Refused { retry_at_ns: u64 },
}

struct VolumeJournal {
    meta: VolumeMeta,
    volume_id: [u8; 16],
    dir: PathBuf,
    journal: Journal,
    recovery: RecoveryReport,
    primary: Option<PrimaryConn>,
    standby: Option<Conn>,
    standby_phase: StandbyPhase,
    /// Next LSN to forward.
    fwd_next: u64,
    fwd_cursor: Option<ReadCursor>,
    read_buf: Option<DmaBuf>,
    fwd_bufs: Vec<Vec<u8>>,
    fwd_bufs_made: usize,
    safe_lsn: u64,
    /// Receives from the primary that found frames readiness had not reported.
    primary_late_reads: u64,
    gaps: VecDeque<GapRequest>,
    gap_requests: u64,
    bytes_appended: u64,
    bytes_forwarded: u64,
    behind_since_ns: Option<u64>,
    /// The forward policy's state (interval openings, bandwidth bucket).
    gate: ForwardGate,
    last_error: String,
    /// The journal failed to append or to make records durable (not back-pressure): the
    /// primary is disconnected and refused (`Unavailable`) from then on, so it resends
    /// from the last durable LSN to a relay that can hold it, and its liveness policy
    /// (block or go on degraded) applies instead of waiting for Acks that never come.
    journal_failed: Option<String>,
    /// `now_ns()` when the primary was last heard (Hello or any frame); 0: never.
    primary_heard_ns: u64,
    /// Last `PrimaryLiveness` sent to the standby.
    liveness_sent_ns: u64,
    /// What the last forwarding pass did, reported to the standby in `PrimaryLiveness` so
    /// it does not fetch around ops held back by policy.
    fwd_state: wire::ForwardState,
}

/// Marks a volume's journal failed, logged and kept as its last error. The first failure
/// is the one kept: it is the cause, what follows are its echoes.
fn fail_journal(failed: &mut Option<String>, last_error: &mut String, volume: &str, why: String) {
    if failed.is_none() {
        log::error!("relay: volume {volume}: {why}; primaries are refused until the relay restarts");
        *last_error = why.clone();
        *failed = Some(why);
    }
}

impl VolumeJournal {
    /// Opens (recovers) the volume's journal; `save_meta`: a new volume, whose
    /// `volume.json` is written once the journal (and so the directory's lock) is open.
    fn open(
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
            standby_phase: if cfg.standby.is_some() {
                StandbyPhase::Disconnected { retry_at_ns: 0 }
            } else {
                StandbyPhase::None
            },
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
            fwd_state: wire::ForwardState::Backup,
            meta,
        })
    }

    fn local(&self) -> LocalVolume {
        LocalVolume {
            volume_id: self.volume_id,
            block_size: self.meta.block_size,
            generation: self.meta.generation,
            durable_lsn: self.journal.durable_lsn(),
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        }
    }
}

struct RelayState {
    cfg: RelayConfig,
    shared: Arc<RelayShared>,
    acceptor: TcpAcceptor,
    pending: Vec<PendingConn>,
    volumes: Vec<VolumeJournal>,
    status_ns: u64,
    poller: Option<reactor::PollerId>,
    stopped: bool,
    /// Which primary connections are readable (None: epoll unavailable, all read every
    /// poll). A busy `recv` loop on a socket also contends for the socket's lock with the
    /// primary's side delivering into it (loopback delivery runs in the sender's context).
    readiness: Option<Readiness>,
    ready: ArrayVec<u64, READY_EVENTS_MAX>,
    next_token: u64,
    /// The lock of `journal_root`, held until the relay stops (each volume's journal holds
    /// its own directory's).
    root_lock: Option<DirLock>,
}

/// What a primary connection's receive produced.
enum PrimaryEvent {
    Heartbeat(Heartbeat),
    Unexpected(u8),
    Fenced(u64),
}

impl RelayState {
    fn poll(&mut self) -> PollStatus {
        if self.stopped {
            return PollStatus::Idle;
        }
        let now = now_ns();
        let mut busy = false;
        while let Some(c) = self.shared.ctl.pop() {
            busy = true;
            match c {
                RelayCtl::SetForward(p) => {
                    log::info!("relay: forward policy now {p:?}");
                    self.cfg.forward = p;
                }
                RelayCtl::Stop(done) => {
                    self.stopped = true;
                    for v in &mut self.volumes {
                        if let Some(p) = v.primary.as_mut() {
                            p.conn.close();
                        }
                        if let Some(s) = v.standby.as_mut() {
                            s.close();
                        }
                    }
                    self.volumes.clear();
                    self.root_lock = None;
                    self.pending.clear();
                    if let Some(id) = self.poller.take() {
                        reactor::unregister_poller(id);
                    }
                    done();
                    return PollStatus::Busy;
                }
            }
        }
        busy |= self.accept(now);
        busy |= self.handshakes(now);
        self.ready.clear();
        if let Some(r) = self.readiness.as_mut() {
            if let Err(e) = r.poll(&mut self.ready) {
                log::warn!("relay: epoll_wait: {e}; reading every primary connection on every poll");
                self.readiness = None;
                for p in self.volumes.iter_mut().filter_map(|v| v.primary.as_mut()) {
                    p.watched = false;
                }
            }
        }
        for i in 0..self.volumes.len() {
            busy |= self.drive_primary(i, now);
            busy |= self.drive_journal(i);
            busy |= self.drive_standby(i, now);
        }
        if now.saturating_sub(self.status_ns) >= STATUS_PERIOD_NS {
            self.status_ns = now;
            self.publish();
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn accept(&mut self, now: u64) -> bool {
        let mut busy = false;
        while self.pending.len() < PENDING_CONNS_MAX {
            match self.acceptor.poll_accept::<Vec<u8>>() {
                Ok(Some((conn, peer))) => {
                    busy = true;
                    self.pending.push(PendingConn {
                        conn,
                        peer,
                        since_ns: now,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("relay: accept: {e}");
                    break;
                }
            }
        }
        busy
    }

    fn handshakes(&mut self, now: u64) -> bool {
        let mut busy = false;
        let mut i = 0;
        while i < self.pending.len() {
            let mut hello: Option<(Hello<'static>, String)> = None;
            let mut bad: Option<String> = None;
            let p = &mut self.pending[i];
            let r = p.conn.poll_recv(&mut |f: Frame<'_>| {
                if hello.is_some() || bad.is_some() {
                    return;
                }
                match f {
                    Frame::Hello(h) => {
                        let name = h.volume_name.to_string();
                        hello = Some((Hello { volume_name: "", ..h }, name));
                    }
                    other => bad = Some(format!("first frame is {:?}, not Hello", other.kind())),
                }
            });
            let _ = p.conn.poll_send(&mut |_| {});
            if let Err(e) = r {
                if let Some(h) = refusal_for(&e) {
                    p.conn.send_last(h);
                }
                log::warn!("relay: connection from {}: {e}", p.peer);
                self.pending.swap_remove(i);
                continue;
            }
            if let Some(why) = bad {
                log::warn!("relay: connection from {}: {why}", p.peer);
                self.pending.swap_remove(i);
                continue;
            }
            let Some((h, name)) = hello else {
                if now.saturating_sub(p.since_ns) > HELLO_TIMEOUT_MS * 1_000_000 {
                    log::warn!(
                        "relay: connection from {} sent no Hello in {HELLO_TIMEOUT_MS} ms",
                        p.peer
                    );
                    self.pending.swap_remove(i);
                } else {
                    i += 1;
                }
                continue;
            };
            busy = true;
            let pc = self.pending.swap_remove(i);
            self.on_hello(pc, h, name);
        }
        busy
    }

    fn on_hello(&mut self, mut pc: PendingConn, h: Hello<'static>, name: String) {
        let hello = Hello {
            volume_name: &name,
            ..h
        };
        let expected = Role::Primary;
        let mut vi = self.volumes.iter().position(|v| v.meta.name == name);
        if vi.is_none() && hello.role == expected {
            // First contact: create the volume's journal.
            let spec = self
                .shared
                .specs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|s| s.volume == name)
                .cloned();
            let dir = spec
                .as_ref()
                .and_then(|s| s.dir.clone())
                .unwrap_or_else(|| self.cfg.journal_root.join(&name));
            let meta = VolumeMeta {
                name: name.clone(),
                volume_id: hex16(&hello.volume_id),
                block_size: hello.block_size,
                generation: hello.generation,
            };
            let opened = VolumeJournal::open(&self.cfg, meta, dir, spec.as_ref(), true);
            match opened {
                Ok(v) => {
                    self.volumes.push(v);
                    vi = Some(self.volumes.len() - 1);
                }
                Err(e) => log::error!("relay: volume {name}: {e}"),
            }
        }
        let local = vi.map(|i| self.volumes[i].local());
        let mut reply = answer_hello(&hello, expected, local.as_ref());
        if let (HelloReply::Accepted { generation, .. }, Some(i)) = (&reply, vi) {
            if let Some(why) = &self.volumes[i].journal_failed {
                log::warn!("relay: volume {name}: refusing primary {}: {why}", pc.peer);
                reply = HelloReply::Refused {
                    reason: RefuseReason::Unavailable,
                    generation: *generation,
                    version_max: WIRE_VERSION,
                };
            }
        }
        let _ = pc.conn.send(OutFrame::control(wire::encode_hello_reply(&reply), 0));
        let _ = pc.conn.poll_send(&mut |_| {});
        match (reply, vi) {
            (HelloReply::Accepted { resume_lsn, .. }, Some(i)) => {
                let v = &mut self.volumes[i];
                if hello.generation > v.meta.generation {
                    v.meta.generation = hello.generation;
                    if let Err(e) = v.meta.save(&v.dir) {
                        log::error!("relay: volume {name}: {e}");
                    }
                }
                if let Some(mut old) = v.primary.take() {
                    log::warn!(
                        "relay: volume {name}: new primary connection from {} replaces {}",
                        pc.peer,
                        old.peer
                    );
                    old.conn.close();
                }
                log::info!(
                    "relay: volume {name}: primary {} (generation {}) resumes at LSN {resume_lsn}",
                    pc.peer,
                    hello.generation
                );
                v.primary_heard_ns = now_ns();
                let token = self.next_token;
                self.next_token += 1;
                let watched = match (self.readiness.as_mut(), pc.conn.raw_fd()) {
                    (Some(r), Some(fd)) => r.add(fd, token).is_ok(),
                    _ => false,
                };
                v.primary = Some(PrimaryConn {
                    conn: pc.conn,
                    peer: pc.peer,
                    stash: Vec::with_capacity(RX_BUF_BYTES),
                    stashed: VecDeque::with_capacity(64),
                    acked: resume_lsn - 1,
                    token,
                    watched,
                    recv_ns: 0,
                });
            }
            (r, _) => {
                log::warn!("relay: volume {name}: refused Hello from {}: {r:?}", pc.peer);
                pc.conn.close();
            }
        }
    }

    /// Reads the primary's frames into the journal (stash first; not read while stashed).
    fn drive_primary(&mut self, i: usize, now: u64) -> bool {
        let v = &mut self.volumes[i];
        let Some(p) = v.primary.as_mut() else {
            return false;
        };
        let mut busy = false;
        // Stashed frames first, in order.
        while let Some(&(off, len, first, last)) = p.stashed.front() {
            match v.journal.append_frame(first, last, &[&p.stash[off..off + len]]) {
                Ok(_) => {
                    v.bytes_appended += len as u64;
                    p.stashed.pop_front();
                    busy = true;
                }
                Err(JournalError::Full { .. } | JournalError::Busy) => break,
                Err(e) => {
                    let why = format!("journal append failed: {e}");
                    fail_journal(&mut v.journal_failed, &mut v.last_error, &v.meta.name, why);
                    p.conn.close();
                    v.primary = None;
                    return true;
                }
            }
        }
        if p.stashed.is_empty() {
            p.stash.clear();
        } else {
            let _ = v.journal.poll();
            return busy;
        }
        // Read a watched socket only when it is readable (or a whole frame waits in the
        // buffer), and at least every RECV_UNREADY_PERIOD_NS regardless.
        let expected = !p.watched || self.ready.contains(&p.token) || p.conn.has_buffered();
        let read = expected || now.saturating_sub(p.recv_ns) >= RECV_UNREADY_PERIOD_NS;
        if !read {
            return busy;
        }
        p.recv_ns = now;
        let mut events: ArrayVec<PrimaryEvent, 64> = ArrayVec::new();
        let generation = v.meta.generation;
        let bs = v.meta.block_size;
        let journal = &mut v.journal;
        let stash = &mut p.stash;
        let stashed = &mut p.stashed;
        let mut appended = 0u64;
        // (journal failure, what): a frame that could not be re-encoded is the primary's
        // fault (close); one the journal could not take is the relay's (fail the journal).
        let mut errors: ArrayVec<(bool, String), 4> = ArrayVec::new();
        let r = p.conn.poll_recv(&mut |f: Frame<'_>| match f {
            Frame::Ops(batch) => {
                if batch.generation < generation {
                    let _ = events.try_push(PrimaryEvent::Fenced(batch.generation));
                    return;
                }
                // Drop ops already held (a primary resending after a reconnect).
                let have = journal.appended_lsn().max(stashed.back().map_or(0, |s| s.3));
                let new: ArrayVec<&Op<'_>, OPS_PER_FRAME_MAX> = batch.ops.iter().filter(|o| o.lsn() > have).collect();
                if new.is_empty() {
                    return;
                }
                let (hdr, data) = match reencode_ops(&batch, &new, bs) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = errors.try_push((false, format!("re-encode: {e}")));
                        return;
                    }
                };
                let (first, last) = (new[0].lsn(), new[new.len() - 1].lsn());
                let mut parts: ArrayVec<&[u8], { OPS_PER_FRAME_MAX + 1 }> = ArrayVec::new();
                parts.push(hdr.as_bytes());
                for d in &data {
                    parts.push(d);
                }
                let len: usize = parts.iter().map(|p| p.len()).sum();
                if stashed.is_empty() {
                    match journal.append_frame(first, last, &parts) {
                        Ok(_) => {
                            appended += len as u64;
                            return;
                        }
                        Err(JournalError::Full { .. } | JournalError::Busy) => {}
                        Err(e) => {
                            let _ = errors.try_push((true, e.to_string()));
                            return;
                        }
                    }
                }
                let off = stash.len();
                for p in &parts {
                    stash.extend_from_slice(p);
                }
                stashed.push_back((off, len, first, last));
            }
            // The primary no longer holds the LSNs between this journal's end and the base:
            // journal the frame as the record covering them (resync, journal/base.rs), in
            // order with the Ops frames around it, then the ops from the base on follow.
            Frame::Base(b) => {
                if b.generation < generation {
                    let _ = events.try_push(PrimaryEvent::Fenced(b.generation));
                    return;
                }
                let have = journal.appended_lsn().max(stashed.back().map_or(0, |s| s.3));
                if b.lsn <= have + 1 {
                    return;
                }
                let hdr = wire::encode_base(&b);
                let (first, last) = (have + 1, b.lsn - 1);
                if stashed.is_empty() {
                    match journal.append_frame(first, last, &[hdr.as_bytes()]) {
                        Ok(_) => return,
                        Err(JournalError::Full { .. } | JournalError::Busy) => {}
                        Err(e) => {
                            let _ = errors.try_push((true, e.to_string()));
                            return;
                        }
                    }
                }
                let off = stash.len();
                stash.extend_from_slice(hdr.as_bytes());
                stashed.push_back((off, hdr.as_bytes().len(), first, last));
            }
            Frame::Heartbeat(h) => {
                let _ = events.try_push(PrimaryEvent::Heartbeat(h));
            }
            other => {
                let _ = events.try_push(PrimaryEvent::Unexpected(other.kind() as u8));
            }
        });
        v.bytes_appended += appended;
        busy |= appended > 0;
        if matches!(r, Ok(n) if n > 0) {
            v.primary_heard_ns = now_ns();
            if !expected {
                v.primary_late_reads += 1;
            }
        }
        let mut close = false;
        for (journal, e) in errors {
            // Frames this relay could not journal must not be skipped over: close, and the
            // primary resends from the journal's end (or, if the journal failed, elsewhere).
            if journal {
                let why = format!("journal append failed: {e}");
                fail_journal(&mut v.journal_failed, &mut v.last_error, &v.meta.name, why);
            } else {
                log::error!("relay: volume {}: primary {}: {e}", v.meta.name, p.peer);
                v.last_error = e;
            }
            close = true;
        }
        if let Err(e) = r {
            log::warn!("relay: volume {}: primary {}: {e}", v.meta.name, p.peer);
            close = true;
        }
        for ev in events.drain(..) {
            busy = true;
            match ev {
                PrimaryEvent::Heartbeat(h) if !h.is_reply => {
                    let _ = p.conn.send(OutFrame::control(
                        wire::encode_heartbeat(&Heartbeat { is_reply: true, ..h }),
                        0,
                    ));
                }
                PrimaryEvent::Heartbeat(_) => {}
                PrimaryEvent::Fenced(g) => {
                    log::error!(
                        "relay: volume {}: ops of stale generation {g} (volume is at {}): primary fenced off",
                        v.meta.name,
                        v.meta.generation
                    );
                    close = true;
                }
                PrimaryEvent::Unexpected(k) => {
                    log::warn!("relay: volume {}: unexpected frame kind {k} from primary", v.meta.name);
                    close = true;
                }
            }
        }
        if close || p.conn.state() == ConnState::Failed {
            p.conn.close();
            v.primary = None;
        }
        busy
    }

    /// Group commit, then Acks for what became durable.
    fn drive_journal(&mut self, i: usize) -> bool {
        let v = &mut self.volumes[i];
        let durable = match v.journal.poll() {
            Ok(d) => d,
            Err(e) => {
                // A failed journal fails every poll: say so once (no string per poll).
                if v.journal_failed.is_none() {
                    let why = format!("journal commit failed: {e}");
                    fail_journal(&mut v.journal_failed, &mut v.last_error, &v.meta.name, why);
                }
                if let Some(mut p) = v.primary.take() {
                    p.conn.close();
                    return true;
                }
                return false;
            }
        };
        let mut busy = false;
        if let Some(p) = v.primary.as_mut() {
            if durable > p.acked && p.conn.send_capacity() > 0 {
                let ack = Ack {
                    durable_lsn: durable,
                    frame_lsn_first: 0,
                    frame_lsn_last: 0,
                    generation: v.meta.generation,
                };
                if p.conn.send(OutFrame::control(wire::encode_ack(&ack), 0)).is_ok() {
                    p.acked = durable;
                    busy = true;
                }
            }
            if p.conn.poll_send(&mut |_| {}).is_err() {
                v.primary = None;
            }
        }
        busy
    }

    /// Whether volume `i` may start a forwarding read now (`forward_policy.rs`).
    fn forward_gate(&mut self, i: usize, now: u64) -> bool {
        let unix_secs = if matches!(self.cfg.forward, ForwardPolicy::Windows { .. }) {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        } else {
            0
        };
        self.volumes[i].gate.open(&self.cfg.forward, now, unix_secs)
    }

    fn drive_standby(&mut self, i: usize, now: u64) -> bool {
        let Some(standby_addr) = self.cfg.standby else {
            // No standby: keep records until a standby is configured.
            return false;
        };
        let mut busy = false;
        let v = &mut self.volumes[i];
        // Connect.
        match v.standby_phase {
            StandbyPhase::Disconnected { retry_at_ns } | StandbyPhase::Refused { retry_at_ns }
                if now >= retry_at_ns =>
            {
                match TcpConnection::connect(standby_addr, TcpConfig::default()) {
                    Ok(mut c) => {
                        let hello = Hello {
                            role: Role::Relay,
                            block_size: v.meta.block_size,
                            volume_id: v.volume_id,
                            volume_name: &v.meta.name,
                            generation: v.meta.generation,
                            resume_lsn: v.recovery.lsn_first.max(1),
                            frame_bytes_max: FRAME_BYTES_MAX as u32,
                            recv_credits: 0,
                        };
                        if let Ok(h) = wire::encode_hello(&hello) {
                            let _ = c.send(OutFrame::control(h, 0));
                        }
                        v.standby = Some(c);
                        v.standby_phase = StandbyPhase::Handshake;
                    }
                    Err(e) => {
                        v.last_error = e.to_string();
                        v.standby_phase = StandbyPhase::Disconnected {
                            retry_at_ns: now + STANDBY_RECONNECT_MS * 1_000_000,
                        };
                    }
                }
            }
            _ => {}
        }
        let Some(conn) = v.standby.as_mut() else {
            return busy;
        };
        // Receive (not while the gap queue is full).
        let mut replies: ArrayVec<StandbyEvent, 64> = ArrayVec::new();
        let room = GAP_QUEUE_MAX - v.gaps.len();
        let r = if room > 0 {
            conn.poll_recv(&mut |f: Frame<'_>| {
                let ev = match f {
                    Frame::HelloReply(r) => StandbyEvent::Reply(r),
                    Frame::SafeUpTo(s) => StandbyEvent::Safe(s.lsn),
                    Frame::GapRequest(g) => StandbyEvent::Gap(g),
                    Frame::Heartbeat(h) => StandbyEvent::Heartbeat(h),
                    Frame::Ack(_) => StandbyEvent::Ignore,
                    other => StandbyEvent::Unexpected(other.kind() as u8),
                };
                let _ = replies.try_push(ev);
            })
        } else {
            Ok(0)
        };
        let mut failed = r.err().map(|e| e.to_string());
        for ev in replies.drain(..) {
            busy = true;
            match ev {
                StandbyEvent::Reply(HelloReply::Accepted { resume_lsn, .. }) => {
                    v.standby_phase = StandbyPhase::Up;
                    v.fwd_next = resume_lsn.max(1);
                    v.fwd_cursor = None;
                    v.safe_lsn = v.safe_lsn.max(resume_lsn.saturating_sub(1));
                    log::info!("relay: volume {}: standby up, wants LSN {resume_lsn} on", v.meta.name);
                    release(v);
                }
                StandbyEvent::Reply(HelloReply::Refused { reason, .. }) => {
                    v.last_error = format!("standby refused: {reason:?}");
                    log::warn!("relay: volume {}: {}", v.meta.name, v.last_error);
                    v.standby_phase = StandbyPhase::Refused {
                        retry_at_ns: now + 5 * STANDBY_RECONNECT_MS * 1_000_000,
                    };
                    failed = Some(String::new());
                }
                StandbyEvent::Safe(lsn) => {
                    if lsn > v.safe_lsn {
                        v.safe_lsn = lsn;
                        release(v);
                    }
                }
                StandbyEvent::Gap(g) => {
                    if v.gaps.len() < GAP_QUEUE_MAX {
                        v.gaps.push_back(g);
                    }
                }
                StandbyEvent::Heartbeat(h) => {
                    if !h.is_reply {
                        if let Some(c) = v.standby.as_mut() {
                            let _ = c.send(OutFrame::control(
                                wire::encode_heartbeat(&Heartbeat { is_reply: true, ..h }),
                                0,
                            ));
                        }
                    }
                }
                StandbyEvent::Ignore => {}
                StandbyEvent::Unexpected(k) => failed = Some(format!("unexpected frame kind {k} from standby")),
            }
        }
        if v.standby_phase == StandbyPhase::Up {
            busy |= serve_gap(v);
            busy |= report_liveness(v, now);
        }
        // Forward.
        let gate = if v.standby_phase == StandbyPhase::Up && self.cfg.forwarder {
            let durable = self.volumes[i].journal.durable_lsn();
            let behind = self.volumes[i].fwd_next <= durable;
            let v = &mut self.volumes[i];
            if behind {
                v.behind_since_ns.get_or_insert(now);
            } else {
                v.behind_since_ns = None;
            }
            let ready = behind && v.read_buf.is_some();
            let open = ready && self.forward_gate(i, now);
            self.volumes[i].fwd_state = if ready && !open {
                wire::ForwardState::Holding
            } else {
                wire::ForwardState::Forwarding
            };
            open
        } else {
            false
        };
        let v = &mut self.volumes[i];
        if gate {
            if let Some(buf) = v.read_buf.take() {
                let mut cursor = v.fwd_cursor.unwrap_or_else(|| v.journal.read_cursor(v.fwd_next));
                match v.journal.submit_read(&mut cursor, buf, i as u64) {
                    Ok(None) => {
                        v.fwd_cursor = Some(cursor);
                        busy = true;
                    }
                    Ok(Some(buf)) => {
                        v.fwd_cursor = Some(cursor);
                        v.read_buf = Some(buf);
                    }
                    Err((buf, e)) => {
                        v.read_buf = Some(buf);
                        v.fwd_cursor = None;
                        if !matches!(e, JournalError::ReadsBusy) {
                            v.last_error = format!("forward read: {e}");
                        }
                    }
                }
            }
        }
        let mut done = None;
        v.journal.poll_reads(&mut |d| done = Some(d));
        if let Some(d) = done {
            busy = true;
            let mut out: ArrayVec<(wire::HeaderBuf, Vec<u8>, u64), 8> = ArrayVec::new();
            let mut stopped_early = false;
            let mut next = v.fwd_next;
            // A base record (resync) declares the LSNs it covers not held: forwarding moves
            // past them; the standby fetches them from another relay.
            let mut base_skip = 0u64;
            let block_size = v.meta.block_size;
            let generation = v.meta.generation;
            let mut enc: Option<BatchEncoder> = None;
            let mut buf: Option<Vec<u8>> = None;
            let capacity = v.standby.as_ref().map_or(0, |c| c.send_capacity()).min(8);
            let mut bufs = std::mem::take(&mut v.fwd_bufs);
            let mut made = v.fwd_bufs_made;
            let mut get_buf = |bufs: &mut Vec<Vec<u8>>| {
                bufs.pop().or_else(|| {
                    (made < FWD_BUFS_MAX).then(|| {
                        made += 1;
                        Vec::with_capacity(FRAME_DATA_BYTES_MAX)
                    })
                })
            };
            let res = d.for_each_record(v.fwd_next, &mut |rec| {
                if stopped_early {
                    return;
                }
                let batch = match wire::parse(rec.payload) {
                    Ok(Frame::Ops(batch)) => batch,
                    Ok(Frame::Base(_)) => {
                        base_skip = rec.lsn_last + 1;
                        next = next.max(base_skip);
                        return;
                    }
                    _ => {
                        log::error!("relay: journal record {} is not an Ops frame", rec.seq);
                        return;
                    }
                };
                for op in batch.ops.iter() {
                    if op.lsn() < next {
                        continue;
                    }
                    let dlen = op_data(op).len();
                    let full = enc
                        .as_ref()
                        .is_some_and(|e| e.len() >= OPS_PER_FRAME_MAX || e.data_bytes() + dlen > FRAME_DATA_BYTES_MAX);
                    if full {
                        if let (Some(e), Some(b)) = (enc.take(), buf.take()) {
                            seal_into(&mut out, e, b, next - 1);
                        }
                    }
                    if enc.is_none() {
                        if out.len() >= capacity {
                            stopped_early = true;
                            return;
                        }
                        let Some(mut b) = get_buf(&mut bufs) else {
                            stopped_early = true;
                            return;
                        };
                        b.clear();
                        buf = Some(b);
                        enc = Some(BatchEncoder::forward(generation, block_size));
                    }
                    if let (Some(e), Some(b)) = (enc.as_mut(), buf.as_mut()) {
                        if e.op(op).is_ok() {
                            b.extend_from_slice(op_data(op));
                            next = op.lsn() + 1;
                        }
                    }
                }
            });
            if let (Some(e), Some(b)) = (enc.take(), buf.take()) {
                if e.is_empty() {
                    bufs.push(b);
                } else {
                    seal_into(&mut out, e, b, next - 1);
                }
            }
            v.fwd_bufs = bufs;
            v.fwd_bufs_made = made;
            let skip_base = res.is_ok() && !stopped_early && base_skip > v.fwd_next;
            match res {
                Ok(c) if !stopped_early => v.fwd_cursor = Some(c),
                Ok(_) => v.fwd_cursor = None,
                Err(e) => {
                    v.last_error = format!("forward read: {e}");
                    v.fwd_cursor = None;
                }
            }
            v.read_buf = Some(d.buf);
            for (hdr, data, last) in out.drain(..) {
                let len = data.len();
                let mut segs = rdma_transport::Segs::new();
                segs.push(data);
                if let Some(c) = v.standby.as_mut() {
                    match c.send(OutFrame {
                        header: hdr,
                        data: segs,
                        user_data: last,
                    }) {
                        Ok(()) => {
                            v.fwd_next = last + 1;
                            v.bytes_forwarded += len as u64;
                            v.gate.spent(&self.cfg.forward, len as u64);
                        }
                        Err(e) => {
                            let mut f = e.into_frame();
                            v.fwd_bufs.extend(f.data.drain(..));
                            v.fwd_cursor = None;
                            base_skip = 0;
                            break;
                        }
                    }
                }
            }
            if skip_base && base_skip > v.fwd_next {
                v.fwd_next = base_skip;
            }
        }
        // Push bytes; buffers come back for reuse.
        let v = &mut self.volumes[i];
        if let Some(c) = v.standby.as_mut() {
            let bufs = &mut v.fwd_bufs;
            if let Err(e) = c.poll_send(&mut |d| bufs.extend(d.data)) {
                failed.get_or_insert(e.to_string());
            }
            if c.state() == ConnState::Failed {
                failed.get_or_insert_with(|| "connection failed".into());
            }
        }
        if let Some(why) = failed {
            if let Some(mut c) = v.standby.take() {
                c.close();
                let bufs = &mut v.fwd_bufs;
                let _ = c.poll_send(&mut |d| bufs.extend(d.data));
            }
            if !why.is_empty() {
                log::warn!("relay: volume {}: standby: {why}", v.meta.name);
                v.last_error = why;
            }
            if !matches!(v.standby_phase, StandbyPhase::Refused { .. }) {
                v.standby_phase = StandbyPhase::Disconnected {
                    retry_at_ns: now + STANDBY_RECONNECT_MS * 1_000_000,
                };
            }
            v.gaps.clear();
            busy = true;
        }
        busy
    }

    fn publish(&self) {
        let now = now_ns();
        let st = RelayStatus {
            listen: self.acceptor.local_addr().to_string(),
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
                        standby: match v.standby_phase {
                            StandbyPhase::None => "none",
                            StandbyPhase::Disconnected { .. } => "connecting",
                            StandbyPhase::Handshake => "handshake",
                            StandbyPhase::Up => "up",
                            StandbyPhase::Refused { .. } => "refused",
                        }
                        .to_string(),
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
        };
        if let Ok(mut s) = self.shared.status.try_lock() {
            *s = st;
        }
    }
}

enum StandbyEvent {
    Reply(HelloReply),
    Safe(u64),
    Gap(GapRequest),
    Heartbeat(Heartbeat),
    Ignore,
    Unexpected(u8),
}

fn op_data<'a>(op: &Op<'a>) -> &'a [u8] {
    match *op {
        Op::Write { data, .. } => data,
        Op::RestartPoint { tag, .. } => tag,
        _ => &[],
    }
}

fn seal_into(out: &mut ArrayVec<(wire::HeaderBuf, Vec<u8>, u64), 8>, e: BatchEncoder, b: Vec<u8>, last: u64) {
    match e.finish(&[&b]) {
        Ok(h) => {
            let _ = out.try_push((h, b, last));
        }
        Err(err) => log::error!("relay: cannot seal forward frame: {err}"),
    }
}

/// An Ops frame holding `ops` (a subset of `batch`), as header + data slices.
fn reencode_ops<'a>(
    batch: &Batch<'a>,
    ops: &[&Op<'a>],
    bs: u32,
) -> Result<(wire::HeaderBuf, ArrayVec<&'a [u8], OPS_PER_FRAME_MAX>), wire::EncodeError> {
    let mut enc = BatchEncoder::ops(batch.generation, bs);
    let mut data: ArrayVec<&'a [u8], OPS_PER_FRAME_MAX> = ArrayVec::new();
    for op in ops {
        enc.op(op)?;
        let d = op_data(op);
        if !d.is_empty() {
            data.push(d);
        }
    }
    // The common case, nothing already held: the received frame's CRC stands.
    let hdr = enc.finish_as_received(&data, batch)?;
    Ok((hdr, data))
}

/// Tells the standby, every [`LIVENESS_REPORT_MS`], when this relay last heard the
/// volume's primary (its failure detector needs it to tell a dead primary from a cut
/// standby-primary link).
fn report_liveness(v: &mut VolumeJournal, now: u64) -> bool {
    if now.saturating_sub(v.liveness_sent_ns) < LIVENESS_REPORT_MS * 1_000_000 {
        return false;
    }
    let Some(c) = v.standby.as_mut() else {
        return false;
    };
    if c.send_capacity() == 0 {
        return false;
    }
    let p = wire::PrimaryLiveness {
        primary_age_ms: if v.primary_heard_ns == 0 {
            wire::PRIMARY_AGE_NEVER
        } else {
            now.saturating_sub(v.primary_heard_ns) / 1_000_000
        },
        primary_lsn: v.journal.appended_lsn(),
        connected: v.primary.is_some(),
        forward: v.fwd_state,
    };
    if c.send(OutFrame::control(wire::encode_primary_liveness(&p), 0)).is_ok() {
        v.liveness_sent_ns = now;
        return true;
    }
    false
}

fn release(v: &mut VolumeJournal) {
    match v.journal.release(v.safe_lsn) {
        Ok(0) => {}
        Ok(n) => log::debug!(
            "relay: volume {}: released {n} bytes up to LSN {}",
            v.meta.name,
            v.safe_lsn
        ),
        Err(e) => {
            v.last_error = format!("release: {e}");
            log::warn!("relay: volume {}: release: {e}", v.meta.name);
        }
    }
}

/// Answers the oldest queued GapRequest with one GapReply (at most one frame's worth; the
/// standby asks again for the rest). Blocking journal reads (`read_range`): recovery path.
fn serve_gap(v: &mut VolumeJournal) -> bool {
    let Some(c) = v.standby.as_ref() else { return false };
    if c.send_capacity() == 0 {
        return false;
    }
    let Some(g) = v.gaps.pop_front() else { return false };
    v.gap_requests += 1;
    let mut data: Vec<u8> = v.fwd_bufs.pop().unwrap_or_default();
    data.clear();
    let mut descs: Vec<(u8, u64, u64, u64, u32)> = Vec::new();
    let mut next = g.lsn_first;
    let mut first_held: Option<u64> = None;
    // The reply is contiguous: it ends at the first op that does not fit. (Skipping that op
    // and taking smaller ones after it, such as restart points, sent the standby points
    // without their writes; its drain chained past the hole and rolled back before it.)
    let mut full = false;
    let r = v.journal.read_range(g.lsn_first, g.lsn_last, &mut |rec| {
        let Ok(Frame::Ops(batch)) = wire::parse(rec.payload) else {
            return;
        };
        for op in &batch.ops {
            let lsn = op.lsn();
            if full || lsn < next || lsn > g.lsn_last {
                continue;
            }
            // A reply is one contiguous run: a journal with a base (resync) holds nothing
            // between its older records and the base; the standby asks again from there.
            if first_held.is_some() && lsn != next {
                continue;
            }
            let d = op_data(op);
            if descs.len() >= OPS_PER_FRAME_MAX || data.len() + d.len() > FRAME_DATA_BYTES_MAX {
                full = true;
                continue;
            }
            first_held.get_or_insert(lsn);
            let (kind, a0, a1) = match *op {
                Op::Write {
                    offset_blocks,
                    num_blocks,
                    ..
                } => (1, offset_blocks, u64::from(num_blocks)),
                Op::WriteZeroes {
                    offset_blocks,
                    num_blocks,
                    ..
                } => (2, offset_blocks, u64::from(num_blocks)),
                Op::Deallocate {
                    offset_blocks,
                    num_blocks,
                    ..
                } => (3, offset_blocks, u64::from(num_blocks)),
                Op::RestartPoint { epoch, last_lsn, .. } => (4, epoch, last_lsn),
                Op::Sync { mark, .. } => {
                    let (a0, a1) = mark.args();
                    (5, a0, a1)
                }
            };
            descs.push((kind, lsn, a0, a1, d.len() as u32));
            data.extend_from_slice(d);
            next = lsn + 1;
        }
    });
    if let Err(e) = r {
        v.last_error = format!("gap read: {e}");
    }
    let status = match first_held {
        None => GapStatus::NotHeld,
        Some(f) if f > g.lsn_first => GapStatus::Partial,
        Some(_) => GapStatus::Complete,
    };
    let mut enc = BatchEncoder::gap_reply(g.request_id, status, v.meta.generation, v.meta.block_size);
    for &(kind, lsn, a0, a1, len) in &descs {
        let r = match kind {
            1 => enc.write(lsn, a0, a1 as u32, len as usize),
            2 => enc.write_zeroes(lsn, a0, a1 as u32),
            3 => enc.deallocate(lsn, a0, a1 as u32),
            5 => enc.sync_args(lsn, a0, a1),
            _ => enc.restart_point(lsn, a0, a1, len as usize),
        };
        if r.is_err() {
            break;
        }
    }
    let Ok(hdr) = enc.finish(&[&data]) else {
        return false;
    };
    let mut segs = rdma_transport::Segs::new();
    segs.push(data);
    if let Some(c) = v.standby.as_mut() {
        if let Err(e) = c.send(OutFrame {
            header: hdr,
            data: segs,
            user_data: 0,
        }) {
            let mut f = e.into_frame();
            v.fwd_bufs.extend(f.data.drain(..));
        }
    }
    true
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
        };
        m.save(&dir).unwrap();
        assert_eq!(VolumeMeta::load(&dir).unwrap(), m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
