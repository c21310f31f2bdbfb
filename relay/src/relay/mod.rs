//! The relay role (`baton relay`): accepts primaries' volumes, journals every op frame on
//! non-volatile storage before acknowledging it (R3), forwards to the standby at its own
//! timing (R4) and keeps every record until the standby confirms it (`SafeUpTo`).
//!
//! Where it sits: between a primary's replicated volumes and the standby, at a site apart
//! from both (R5). One reactor (the relay's `core`) owns the listening socket, every
//! connection and every volume's [`Journal`](crate::journal::Journal); one poller drives them all, in a fixed order:
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
//!
//! This file holds the relay's settings, errors and the handle management holds
//! ([`Relay`]). The reactor side, in the order the poller runs it:
//! - `state.rs`: the relay's state on its reactor and the poll that drives it.
//! - `accept.rs`: new connections, their Hello, and a volume's journal at first contact.
//! - `primary.rs`: a primary's stream: Ops and Base frames into the journal (stashed under
//!   back-pressure), then Acks for what became durable.
//! - `standby.rs`: the link to the standby: connect, SafeUpTo (release), GapRequests,
//!   liveness reports, failure and reconnect.
//! - `forward.rs`: forwarding: journal reads re-encoded as Forward frames, at the pace the
//!   forward policy allows.
//! - `gap.rs`: answering a GapRequest from the journal.
//! - `volume_journal.rs`: one volume's journal, its connections and its metadata file.
//! - `status.rs`: the `relay_get_status` snapshot.

mod accept;
mod forward;
mod gap;
mod primary;
mod standby;
mod state;
mod status;
mod volume_journal;

pub use status::{CutReport, RelayStatus, RelayVolumeStatus};
pub use volume_journal::VolumeMeta;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrayvec::ArrayVec;
use engine::reactor;
use engine::ring::Ring;
use rdma_transport::readiness::Readiness;
use rdma_transport::wire;
use rdma_transport::TransportError;
use rdma_transport::{AnyAcceptor, Endpoint};

pub use crate::forward_policy::{in_window, parse_window, ForwardPolicy};
use crate::journal::lock::DirLock;
use crate::journal::{JournalConfig, JournalError};
use crate::limits::LimitError;
use state::RelayState;
use volume_journal::VolumeJournal;

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
/// The standby link's schedule: a fixed [`STANDBY_RECONNECT_MS`] between attempts, five
/// times that after a refused Hello.
pub const STANDBY_SCHEDULE: rdma_transport::link::Schedule = rdma_transport::link::Schedule {
    backoff: rdma_transport::link::Backoff::fixed_ms(STANDBY_RECONNECT_MS),
    refused_retry_ns: 5 * STANDBY_RECONNECT_MS * 1_000_000,
};
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
    /// Address primaries connect to over TCP.
    pub listen: SocketAddr,
    /// Address primaries connect to over RDMA, besides TCP (`rdma` feature; refused
    /// without it).
    pub listen_rdma: Option<SocketAddr>,
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
    /// The standby to forward to, over TCP or RDMA (none: hold only).
    pub standby: Option<Endpoint>,
    /// Forwarding timing.
    pub forward: ForwardPolicy,
    /// Forwarder (pushes) or backup (answers GapRequests only).
    pub forwarder: bool,
    /// Reactor to run on (`None`: the first).
    pub core: Option<u32>,
    /// Called with the volume's name on the thread that opens a new volume's journal,
    /// before it opens it (tests hold an open there; `None` in service).
    pub journal_open_hook: Option<JournalOpenHook>,
}

/// See [`RelayConfig::journal_open_hook`].
#[derive(Clone)]
pub struct JournalOpenHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for JournalOpenHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalOpenHook")
    }
}

impl RelayConfig {
    /// Defaults.
    pub fn new(listen: SocketAddr, journal_root: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            listen_rdma: None,
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
            journal_open_hook: None,
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
        addr: Endpoint,
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
        let mut eps = vec![Endpoint::Tcp(cfg.listen)];
        eps.extend(cfg.listen_rdma.map(Endpoint::Rdma));
        let mut acceptor = AnyAcceptor::bind(&eps).map_err(|(addr, source)| RelayError::Listen { addr, source })?;
        // Primaries only: a relay's listener takes the primary's stream (and probes).
        acceptor.follow_process_tls(rdma_transport::tls::Role::Primary);
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
            opening: Vec::new(),
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
            let mut watch = reactor::WatchSet::new();
            let mut fds = Vec::new();
            let id = reactor::register_fd_poller("relay", None, move || {
                let status = s2.borrow_mut().poll();
                let (all, buffered) = s2.borrow().wait_list(&mut fds);
                watch.sync(&fds);
                if !all {
                    reactor::cannot_watch();
                }
                let now = engine::clock::now_ns();
                reactor::wake_by(if buffered { now } else { now + state::IDLE_TICK_NS });
                status
            });
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
