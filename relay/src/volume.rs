//! The replicated volume: a bdev stacked over a local bdev that sends every write to every
//! configured relay at once (R1) and completes it when the local write is done and the
//! acknowledgement policy is met (R2, invariant 1 of DESIGN.md).
//!
//! Where it sits: the NVMe-oF target (or `perf`) opens a channel on each of its reactors and
//! submits I/O as to any bdev. Reads and flushes go to the local bdev. A write, write-zeroes
//! or unmap takes a slot of the channel, starts the local write with the caller's buffer, and
//! pushes a [`Submit`] through the volume's lock-free ring to the volume's **link reactor**,
//! the one reactor that owns every relay connection of the volume. The link reactor assigns
//! the LSN (so LSNs are assigned in one place, in the order ops reach it), puts the op into
//! its in-flight table and, in the same loop iteration, into an Ops frame for every relay
//! that is up (everything that accumulated since the last iteration goes into one frame:
//! batching under load, none at queue depth 1). Relay Acks carry the relay's contiguous
//! durable LSN; when an op meets the policy and no connection still holds its bytes, the link
//! reactor returns the slot through the channel's completion ring; the channel completes the
//! request to the caller once its local write has finished too.
//!
//! Zero copy: the relay frames carry [`DataRef`]s to the caller's buffer. The channel keeps
//! the `DmaBuf` (in the local write, then in the slot) until the link reactor returns the
//! slot, and the link reactor returns it only once every connection handed the reference
//! back. An op that some relay has not acknowledged when it completes (a relay down, or
//! behind under the quorum/any policies) is copied into the volume's **retention ring**, a
//! bounded byte ring from which a relay that comes back is caught up; in steady state with
//! every relay keeping up nothing is copied. See `docs/replication.md`.
//!
//! Threads: `ReplicatedVolume` is shared (`Bdev`); channels belong to the reactor that opened
//! them; the link state belongs to the link reactor (`VolumeConfig::core`); management calls
//! reach it through a control ring.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrayvec::ArrayVec;
use engine::bdev::{
    Bdev, BdevChannel, BdevError, ChannelBackend, Geometry, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
};
use engine::buf::DmaBuf;
use engine::clock::now_ns;
use engine::reactor::{self, PollStatus};
use engine::ring::Ring;
use rdma_transport::readiness::{Readiness, READY_EVENTS_MAX};
use rdma_transport::tcp::{TcpConfig, TcpConnection};
use rdma_transport::wire::{
    self, BatchEncoder, Frame, Heartbeat, Hello, HelloReply, OpKind, Role, FRAME_BYTES_MAX, FRAME_DATA_BYTES_MAX,
    OPS_PER_FRAME_MAX,
};
use rdma_transport::{ConnState, Connection, OutFrame, SendCompletion};
use serde::Serialize;

use crate::dataref::{DataRef, SegRef};
use crate::liveness::{HeartbeatSender, HeartbeatState};
use nvme::target::restart::{self as nvme_restart, RestartPointDone, RestartPointError, RestartPointSink, SinkToken};

mod channel;
mod demote;
mod dirty;
mod resync;
mod retention;
mod sync;
use channel::{relays_down, Slot, VolChannel};
pub use dirty::{DirtyError, DirtyStatus};
pub use resync::ResyncStatus;
use retention::Retention;
pub use sync::{SyncStatus, SYNC_CHUNK_BYTES};

/// Requests one channel of the volume holds in flight.
pub const CHANNEL_SLOTS: usize = 256;
/// Ops the submission ring of a volume holds (all channels together).
pub const SUBMIT_RING_OPS: usize = 4096;
/// Ops the link reactor takes from the submission ring per poll (run at our own pace).
pub const SUBMITS_PER_POLL_MAX: usize = 512;
/// Ops in flight (LSN assigned, not yet completed) per volume.
pub const INFLIGHT_OPS_MAX: usize = 4096;
/// Default bound of unacknowledged bytes sent to one relay (flow control).
pub const RELAY_BYTES_IN_FLIGHT_MAX_DEFAULT: u64 = 16 * 1024 * 1024;
/// Default size of the retention ring (catch-up of relays that were down).
pub const RETAIN_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default time without an answer after which a relay is marked down.
pub const RELAY_DOWN_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Pause between reconnect attempts to a relay.
pub const RECONNECT_DELAY_MS: u64 = 100;
/// Pause before a relay that refused the Hello is asked again.
pub const REFUSED_RETRY_MS: u64 = 1_000;
/// Frames sent to one relay and not yet acknowledged that the link tracks.
pub const LINK_FRAMES_IN_FLIGHT_MAX: usize = 1024;
/// Data bytes after which `pump` closes a frame (a frame holds at least one op, so larger
/// writes still go one per frame). Under load the ops a queue depth's worth of
/// completions frees arrive together; packed into one frame they cross the socket, the
/// relay's journal and its Ack as one unit, stop-and-wait. Frames of 16 KiB let the relay
/// journal the first while the next is on the wire: 4 KiB randwrite QD 32, one relay on
/// /dev/shm, 47 K -> 63 K IOPS (three runs each; 64 KiB gave 59 K). QD 1 is unchanged.
const FRAME_BYTES_TARGET: usize = 16 * 1024;
/// A link whose socket is watched for readiness is read when the socket is readable, and
/// at least this often regardless (a safety net: a lost readiness costs latency, not a stall).
pub(crate) const RECV_UNREADY_PERIOD_NS: u64 = 1_000_000;
/// How often the status snapshot (read by RPC) is refreshed.
pub const STATUS_PERIOD_NS: u64 = 10_000_000;
/// Shortest staleness of the link reactor's status after which direct heartbeats stop.
pub const HEARTBEAT_STALE_MS_MIN: u64 = 250;
/// Largest restart point tag.
pub const RESTART_TAG_BYTES_MAX: usize = wire::RESTART_TAG_BYTES_MAX;

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
    pub relays: Vec<SocketAddr>,
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
    pub fn new(name: &str, relays: Vec<SocketAddr>) -> Self {
        Self {
            name: name.to_string(),
            relays,
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
    /// Receives that found frames although readiness had not reported the socket (the
    /// 1 ms safety net caught them): a handful from races, many would mean readiness is
    /// broken and every Ack waits up to a millisecond.
    pub late_reads: u64,
    /// Last error seen on the link.
    pub last_error: String,
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
    /// LSN of the final restart point behind which writes are fenced (0: none).
    pub fence_lsn: u64,
}

/// A channel's completion ring, shared with the link reactor.
struct ChanShared {
    /// (slot, result) pushed by the link reactor; sized to the slot count, so never full.
    done: Ring<(u32, Result<(), BdevError>)>,
    /// Per slot: the block range its write is writing to the base bdev ([`pack_busy`]),
    /// 0 when none. Written by the channel's reactor only (set before the local write
    /// starts, cleared when it completes); read by a block sync (`volume/sync.rs`).
    busy: Box<[AtomicU64]>,
}

/// A slot's range in flight as one word: offset in the high 40 bits, blocks (1..2^24) in
/// the low 24 (a larger range is recorded as the largest, which only widens the check's
/// overlap test for the sync; never narrower).
fn pack_busy(offset: u64, blocks: u64) -> u64 {
    (offset.min((1 << 40) - 1) << 24) | blocks.clamp(1, (1 << 24) - 1)
}

fn unpack_busy(v: u64) -> (u64, u64) {
    let (o, n) = (v >> 24, v & ((1 << 24) - 1));
    // An offset that did not fit was clamped: cover everything from there.
    if o == (1 << 40) - 1 {
        (0, u64::MAX / 2)
    } else if n == (1 << 24) - 1 {
        (o, u64::MAX / 2)
    } else {
        (o, n)
    }
}

/// An op on its way from a channel to the link reactor.
struct Submit {
    chan: Arc<ChanShared>,
    slot: u32,
    kind: OpKind,
    offset_blocks: u64,
    num_blocks: u32,
    data: DataRef,
}

type RestartDone = Box<dyn FnOnce(Result<RestartPoint, VolumeError>) + Send>;

type SyncDone = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Ctl {
    RestartPoint {
        tag: Vec<u8>,
        done: RestartDone,
    },
    Sync {
        full: bool,
        bytes_per_sec: u64,
        done: SyncDone,
    },
    AddRelay(SocketAddr),
    RemoveRelay(SocketAddr),
    Stop(Box<dyn FnOnce() + Send>),
    /// Fence writes behind a final restart point (`volume/demote.rs`).
    Demote {
        tag: Vec<u8>,
        done: RestartDone,
    },
    /// Lift the fence.
    Resume(Box<dyn FnOnce(Result<(), String>) + Send>),
}

struct Shared {
    cfg: VolumeConfig,
    volume_id: [u8; 16],
    base: Arc<dyn Bdev>,
    subq: Ring<Submit>,
    ctl: Ring<Ctl>,
    writes_blocked: AtomicBool,
    stopped: AtomicBool,
    /// Demoted for a switchover: new writes fail (`volume/demote.rs`).
    demoted: AtomicBool,
    /// The demote's final restart point is the last one declared (nothing written since).
    fence_reused: AtomicBool,
    /// `now_ns()` of the link reactor's last status publish (liveness of the reactor).
    published_ns: AtomicU64,
    status: Mutex<VolumeStatus>,
    relays: Mutex<Vec<SocketAddr>>,
    stats: StatsSet,
    /// Our registration as the NVMe target's restart point sink for this bdev name.
    sink_token: Mutex<Option<SinkToken>>,
    /// The dirty-block record's bits (written by the link reactor).
    dirty: Arc<dirty::DirtyShared>,
    /// Every channel opened (their `busy` slots, for a block sync). Locked when a channel
    /// opens and tried (never waited for) by the link reactor.
    chans: Mutex<Vec<std::sync::Weak<ChanShared>>>,
}

/// The replicated volume bdev. See the module docs.
pub struct ReplicatedVolume {
    shared: Arc<Shared>,
    /// Direct heartbeats to the standby host (`standby_heartbeat`).
    heartbeat: Mutex<Option<HeartbeatSender>>,
    /// Writer of the persisted dirty-block record (`dirty_map`).
    dirty_flusher: Mutex<Option<dirty::DirtyFlusher>>,
}

impl ReplicatedVolume {
    /// Creates the volume over `base` and starts its link reactor (`cfg.core`). Management
    /// path: validates, then sends the link state to its reactor. The volume accepts I/O at
    /// once; writes wait until the first handshakes have told the volume where its LSNs
    /// resume (at most `relay_down_timeout_ms`).
    pub fn create(cfg: VolumeConfig, base: Arc<dyn Bdev>) -> Result<Arc<ReplicatedVolume>, VolumeError> {
        if cfg.name.is_empty() || cfg.name.len() > wire::VOLUME_NAME_BYTES_MAX {
            return Err(VolumeError::InvalidParam {
                param: "name",
                why: format!("{:?} must be 1..={} bytes", cfg.name, wire::VOLUME_NAME_BYTES_MAX),
            });
        }
        if let AckPolicy::Quorum(k) = cfg.ack_policy {
            if k == 0 || k as usize > cfg.relays.len() {
                return Err(VolumeError::InvalidParam {
                    param: "quorum_k",
                    why: format!("{k} must be between 1 and the number of relays ({})", cfg.relays.len()),
                });
            }
        }
        if cfg.relay_down_timeout_ms == 0 {
            return Err(VolumeError::InvalidParam {
                param: "relay_down_timeout_ms",
                why: "must be greater than 0".into(),
            });
        }
        if cfg.generation == 0 {
            return Err(VolumeError::InvalidParam {
                param: "generation",
                why: "must be greater than 0".into(),
            });
        }
        if cfg.standby_heartbeat_interval_ms == 0 {
            return Err(VolumeError::InvalidParam {
                param: "standby_heartbeat_interval_ms",
                why: "must be greater than 0".into(),
            });
        }
        for (i, a) in cfg.relays.iter().enumerate() {
            if cfg.relays[..i].contains(a) {
                return Err(VolumeError::InvalidParam {
                    param: "relays",
                    why: format!("{a} is listed twice"),
                });
            }
        }
        let core = match cfg.core {
            Some(c) => c,
            None => *reactor::cores().first().ok_or_else(|| VolumeError::Unreachable {
                volume: cfg.name.clone(),
                why: "no reactors running".into(),
            })?,
        };
        let dirty_map = dirty::DirtyMap::open(base.num_blocks(), cfg.dirty_map.clone(), &cfg.name);
        let dirty_flusher =
            dirty::DirtyFlusher::start(&dirty_map.shared, &cfg.name).map_err(|e| VolumeError::InvalidParam {
                param: "dirty_map",
                why: e.to_string(),
            })?;
        let shared = Arc::new(Shared {
            dirty: dirty_map.shared.clone(),
            volume_id: cfg.volume_id.unwrap_or_else(|| base.uuid()),
            relays: Mutex::new(cfg.relays.clone()),
            cfg,
            base,
            subq: Ring::new(SUBMIT_RING_OPS),
            ctl: Ring::new(64),
            writes_blocked: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            demoted: AtomicBool::new(false),
            fence_reused: AtomicBool::new(false),
            published_ns: AtomicU64::new(0),
            status: Mutex::new(VolumeStatus::default()),
            stats: StatsSet::default(),
            sink_token: Mutex::new(None),
            chans: Mutex::new(Vec::new()),
        });
        // Before the link reactor starts: a failure here leaves nothing running.
        let heartbeat = match shared.cfg.standby_heartbeat {
            Some(addr) => Some(start_heartbeat(&shared, addr).map_err(|e| VolumeError::InvalidParam {
                param: "standby_heartbeat",
                why: format!("{addr}: {e}"),
            })?),
            None => None,
        };
        let s2 = shared.clone();
        reactor::send_msg(core, move || {
            let link = Rc::new(RefCell::new(LinkState::new(s2, dirty_map)));
            let l2 = link.clone();
            let id = reactor::register_poller("replication_link", None, move || l2.borrow_mut().poll());
            link.borrow_mut().poller = Some(id);
        })
        .map_err(|e| VolumeError::Unreachable {
            volume: shared.cfg.name.clone(),
            why: e.to_string(),
        })?;
        // In-band restart points: the NVMe/TCP target's opcode 81h (and Flush, if
        // configured) on a namespace over this bdev reaches the volume through this sink.
        let token = nvme_restart::register(&shared.cfg.name, Arc::new(VolumeSink(shared.clone())));
        *shared.sink_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(Arc::new(ReplicatedVolume {
            shared,
            heartbeat: Mutex::new(heartbeat),
            dirty_flusher: Mutex::new(dirty_flusher),
        }))
    }

    /// Declares a restart point with the application tag `tag` (R15). It is ordered after
    /// every write that completed before this call (those have LSNs already; the point takes
    /// the next). `done` runs on the link reactor once the point meets the acknowledgement
    /// policy, with its epoch and LSN. Any thread; never blocks.
    pub fn declare_restart_point(
        &self,
        tag: &[u8],
        done: impl FnOnce(Result<RestartPoint, VolumeError>) + Send + 'static,
    ) -> Result<(), VolumeError> {
        if tag.len() > RESTART_TAG_BYTES_MAX {
            return Err(VolumeError::InvalidParam {
                param: "tag",
                why: format!("{} bytes, at most {RESTART_TAG_BYTES_MAX}", tag.len()),
            });
        }
        self.shared
            .declare_restart_point(tag, Box::new(done))
            .map_err(|(e, _)| e)
    }

    /// Blocking form of [`Self::declare_restart_point`] for management threads (never a
    /// reactor): waits at most `timeout`.
    pub fn declare_restart_point_wait(&self, tag: &[u8], timeout: Duration) -> Result<RestartPoint, VolumeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.declare_restart_point(tag, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv_timeout(timeout).map_err(|_| VolumeError::PolicyUnmet {
            volume: self.shared.cfg.name.clone(),
            why: format!("restart point not acknowledged within {timeout:?}"),
        })?
    }

    /// Starts a block sync (`volume/sync.rs`): every block written since the dirty-block
    /// record's first LSN, or every block when `full`, sent again through every relay;
    /// `bytes_per_sec` caps it (0: no cap). Management path: waits for the link reactor
    /// to accept it (refused while another runs); progress is in [`Self::status`].
    pub fn start_sync(&self, full: bool, bytes_per_sec: u64, timeout: Duration) -> Result<(), VolumeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ctl(Ctl::Sync {
            full,
            bytes_per_sec,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })?;
        let r = rx.recv_timeout(timeout).map_err(|_| VolumeError::Unreachable {
            volume: self.shared.cfg.name.clone(),
            why: format!("the link reactor did not answer within {timeout:?}"),
        })?;
        r.map_err(|why| VolumeError::Relay(format!("volume {}: block sync: {why}", self.shared.cfg.name)))
    }

    /// Demotes the volume for a planned switchover (`volume/demote.rs`): new writes fail
    /// from now on, and every write that got an LSN is ordered before a final restart
    /// point tagged `tag`, returned once it meets the acknowledgement policy. Refused while
    /// a block sync runs. Management path: waits at most `timeout` (on a timeout the volume
    /// stays demoted; [`Self::resume`] lifts it).
    pub fn demote(&self, tag: &[u8], timeout: Duration) -> Result<RestartPoint, VolumeError> {
        if tag.len() > RESTART_TAG_BYTES_MAX {
            return Err(VolumeError::InvalidParam {
                param: "tag",
                why: format!("{} bytes, at most {RESTART_TAG_BYTES_MAX}", tag.len()),
            });
        }
        self.shared.demoted.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let done: RestartDone = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.ctl(Ctl::Demote {
            tag: tag.to_vec(),
            done,
        })?;
        rx.recv_timeout(timeout).map_err(|_| VolumeError::PolicyUnmet {
            volume: self.shared.cfg.name.clone(),
            why: format!("final restart point not acknowledged within {timeout:?} (the volume stays demoted)"),
        })?
    }

    /// Lifts a demotion: writes are accepted again (an aborted switchover).
    pub fn resume(&self, timeout: Duration) -> Result<(), VolumeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ctl(Ctl::Resume(Box::new(move |r| {
            let _ = tx.send(r);
        })))?;
        rx.recv_timeout(timeout)
            .map_err(|_| VolumeError::Unreachable {
                volume: self.shared.cfg.name.clone(),
                why: format!("the link reactor did not answer within {timeout:?}"),
            })?
            .map_err(VolumeError::Relay)
    }

    /// True when the last [`Self::demote`] reused the last restart point (nothing was
    /// written after it) rather than declaring a new one.
    pub fn fence_reused(&self) -> bool {
        self.shared.fence_reused.load(Ordering::Acquire)
    }

    /// True while demoted.
    pub fn demoted(&self) -> bool {
        self.shared.demoted.load(Ordering::Acquire)
    }

    /// Adds a relay (management path).
    pub fn add_relay(&self, addr: SocketAddr) -> Result<(), VolumeError> {
        let mut r = self.shared.relays.lock().unwrap_or_else(|e| e.into_inner());
        if r.contains(&addr) {
            return Err(VolumeError::Relay(format!(
                "{addr} is already a relay of {}",
                self.shared.cfg.name
            )));
        }
        self.ctl(Ctl::AddRelay(addr))?;
        r.push(addr);
        Ok(())
    }

    /// Removes a relay (management path). Its acknowledgements no longer count.
    pub fn remove_relay(&self, addr: SocketAddr) -> Result<(), VolumeError> {
        let mut r = self.shared.relays.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = r.iter().position(|a| *a == addr) else {
            return Err(VolumeError::Relay(format!(
                "{addr} is not a relay of {}",
                self.shared.cfg.name
            )));
        };
        if let AckPolicy::Quorum(k) = self.shared.cfg.ack_policy {
            if r.len() - 1 < k as usize {
                return Err(VolumeError::InvalidParam {
                    param: "addr",
                    why: format!("removing {addr} would leave fewer relays than quorum_k {k}"),
                });
            }
        }
        self.ctl(Ctl::RemoveRelay(addr))?;
        r.remove(i);
        Ok(())
    }

    /// Stops the link reactor's work for this volume: in-flight writes fail with
    /// `Deleted`, connections close. Blocks up to `timeout` for the link to confirm.
    pub fn stop(&self, timeout: Duration) -> Result<(), VolumeError> {
        if let Some(mut h) = self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.stop();
        }
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(t) = self.shared.sink_token.lock().unwrap_or_else(|e| e.into_inner()).take() {
            nvme_restart::unregister(&self.shared.cfg.name, t);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ctl(Ctl::Stop(Box::new(move || {
            let _ = tx.send(());
        })))?;
        let r = rx.recv_timeout(timeout).map_err(|_| VolumeError::Unreachable {
            volume: self.shared.cfg.name.clone(),
            why: "link reactor did not confirm the stop".into(),
        });
        // A last flush of the dirty-block record, once no op marks it any more.
        if let Some(mut f) = self.dirty_flusher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            f.stop();
        }
        r
    }

    fn ctl(&self, c: Ctl) -> Result<(), VolumeError> {
        self.shared.ctl.push(c).map_err(|_| VolumeError::Unreachable {
            volume: self.shared.cfg.name.clone(),
            why: "control ring full".into(),
        })
    }

    /// The latest status snapshot (refreshed by the link reactor every 10 ms).
    pub fn status(&self) -> VolumeStatus {
        let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        st.dirty = self.shared.dirty.status();
        st
    }

    /// The dirty-block record as (first block, blocks) runs: what was written by LSNs not
    /// every relay confirmed (what a block sync sends; management path).
    pub fn dirty_runs(&self) -> Vec<(u64, u64)> {
        self.shared.dirty.runs(self.shared.base.num_blocks())
    }

    /// The configured relays (management path).
    pub fn relays(&self) -> Vec<SocketAddr> {
        self.shared.relays.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &VolumeConfig {
        &self.shared.cfg
    }

    /// The base bdev.
    pub fn base(&self) -> &Arc<dyn Bdev> {
        &self.shared.base
    }

    /// Volume identity sent to relays.
    pub fn volume_id(&self) -> [u8; 16] {
        self.shared.volume_id
    }

    /// Heartbeats sent to the standby host so far (0 without `standby_heartbeat`).
    pub fn heartbeats_sent(&self) -> u64 {
        self.heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |h| h.stats().sent.load(Ordering::Relaxed))
    }
}

/// Starts the direct heartbeat of a volume. Its source reads the published status and
/// answers nothing once the volume stopped or its link reactor has not published for
/// [`HEARTBEAT_STALE_MS_MIN`] or 5 intervals, whichever is longer (a stuck reactor is
/// as good as dead to the standby host).
fn start_heartbeat(shared: &Arc<Shared>, addr: SocketAddr) -> std::io::Result<HeartbeatSender> {
    let weak = Arc::downgrade(shared);
    let interval = shared.cfg.standby_heartbeat_interval_ms;
    let stale_ns = (interval * 5).max(HEARTBEAT_STALE_MS_MIN) * 1_000_000;
    HeartbeatSender::start(&shared.cfg.name, addr, interval, move || {
        let s = weak.upgrade()?;
        if s.stopped.load(Ordering::Acquire) {
            return None;
        }
        let published = s.published_ns.load(Ordering::Acquire);
        if published == 0 || now_ns().saturating_sub(published) > stale_ns {
            return None;
        }
        let st = s.status.lock().unwrap_or_else(|e| e.into_inner());
        Some(HeartbeatState {
            generation: s.cfg.generation,
            last_lsn: st.next_lsn.saturating_sub(1),
            epoch: st.epoch,
        })
    })
}

impl Bdev for ReplicatedVolume {
    fn name(&self) -> &str {
        &self.shared.cfg.name
    }
    fn product_name(&self) -> &str {
        "Replicated volume"
    }
    fn driver(&self) -> &'static str {
        "replicated"
    }
    fn uuid(&self) -> [u8; 16] {
        self.shared.volume_id
    }
    fn block_size(&self) -> u32 {
        self.shared.base.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.shared.base.num_blocks()
    }
    fn supports(&self, op: IoOp) -> bool {
        self.shared.base.supports(op)
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let base = self.shared.base.open_channel()?;
        let ops: Vec<IoOp> = IoOp::ALL.into_iter().filter(|&o| self.supports(o)).collect();
        let geo = base.geometry();
        let me = Arc::new(ChanShared {
            done: Ring::new(CHANNEL_SLOTS),
            busy: (0..CHANNEL_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        });
        {
            let mut chans = self.shared.chans.lock().unwrap_or_else(|e| e.into_inner());
            chans.retain(|w| w.strong_count() > 0);
            chans.push(Arc::downgrade(&me));
        }
        Ok(BdevChannel::new(
            self.name(),
            Geometry::new(geo.block_size, geo.num_blocks, geo.buf_align, &ops),
            self.shared.stats.new_channel(),
            Box::new(VolChannel {
                shared: self.shared.clone(),
                me,
                base,
                slots: (0..CHANNEL_SLOTS).map(|_| Slot::default()).collect(),
                free: (0..CHANNEL_SLOTS as u32).rev().collect(),
                ready: VecDeque::with_capacity(CHANNEL_SLOTS),
                parked: VecDeque::with_capacity(CHANNEL_SLOTS),
                unpushed: VecDeque::with_capacity(CHANNEL_SLOTS),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.shared.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        None // emitted by the "replication" config provider, after the base bdev
    }
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::to_value(self.status()).unwrap_or_default()
    }
}

impl Shared {
    /// Queues a restart point for the link reactor; on failure hands `done` back unrun.
    fn declare_restart_point(&self, tag: &[u8], done: RestartDone) -> Result<(), (VolumeError, RestartDone)> {
        if tag.len() > RESTART_TAG_BYTES_MAX {
            let e = VolumeError::InvalidParam {
                param: "tag",
                why: format!("{} bytes, at most {RESTART_TAG_BYTES_MAX}", tag.len()),
            };
            return Err((e, done));
        }
        let c = Ctl::RestartPoint {
            tag: tag.to_vec(),
            done,
        };
        self.ctl.push(c).map_err(|c| {
            let e = VolumeError::Unreachable {
                volume: self.cfg.name.clone(),
                why: "control ring full".into(),
            };
            match c {
                Ctl::RestartPoint { done, .. } => (e, done),
                _ => unreachable!("the ring hands back what was pushed"),
            }
        })
    }
}

/// The volume as the NVMe/TCP target sees it for opcode 81h (`nvme::target::restart`).
/// Unlike [`ReplicatedVolume::declare_restart_point`], it fails at once with `PolicyUnmet`
/// while new writes would (block mode with too few relays up), as an I/O command should.
struct VolumeSink(Arc<Shared>);

impl RestartPointSink for VolumeSink {
    fn declare(&self, tag: &[u8], done: RestartPointDone) {
        let s = &self.0;
        if s.stopped.load(Ordering::Acquire) {
            return done(Err(RestartPointError::Failed(format!("volume {} deleted", s.cfg.name))));
        }
        if s.writes_blocked.load(Ordering::Acquire) {
            let down = s.status.try_lock().map(|st| relays_down(&st)).unwrap_or_default();
            return done(Err(RestartPointError::PolicyUnmet(format!(
                "volume {}: relays down: {down}",
                s.cfg.name
            ))));
        }
        let r = s.declare_restart_point(
            tag,
            Box::new(move |r: Result<RestartPoint, VolumeError>| done(r.map(|p| p.epoch).map_err(sink_error))),
        );
        if let Err((e, d)) = r {
            d(Err(e));
        }
    }

    fn flush_is_restart_point(&self) -> bool {
        self.0.cfg.flush_is_restart_point
    }

    /// Twice the relay down timeout (a relay that stops answering is marked down by then,
    /// and a degraded volume goes on without it), between 1 s and 25 s (below the usual 30 s
    /// host I/O timeout).
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.0.cfg.relay_down_timeout_ms.saturating_mul(2).clamp(1_000, 25_000))
    }
}

fn sink_error(e: VolumeError) -> RestartPointError {
    match e {
        VolumeError::PolicyUnmet { .. } => RestartPointError::PolicyUnmet(e.to_string()),
        VolumeError::InvalidParam { .. } => RestartPointError::InvalidTag(e.to_string()),
        e => RestartPointError::Failed(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Link reactor
// ---------------------------------------------------------------------------------------

use std::cell::RefCell;
use std::rc::Rc;

/// Who is told when an op completes.
enum Owner {
    Chan {
        chan: Arc<ChanShared>,
        slot: u32,
    },
    Restart {
        done: Option<RestartDone>,
        point: RestartPoint,
        _tag: Vec<u8>,
    },
    /// A block sync's Begin or End marker.
    SyncMark {
        end: bool,
    },
    /// A block sync's write: owns the data it read.
    SyncWrite {
        _buf: DmaBuf,
    },
}

/// An op with an LSN. `arg0`/`arg1` as on the wire (offset/blocks, or epoch/last LSN).
#[derive(Clone, Copy)]
struct OpMeta {
    lsn: u64,
    kind: OpKind,
    arg0: u64,
    arg1: u64,
    data: DataRef,
    /// CRC32C of `data`, computed once when the op gets its LSN: every relay's frame is
    /// sealed from it (`BatchEncoder::finish_with_crcs`) instead of each reading the data.
    crc: u32,
}

struct InFlight {
    op: OpMeta,
    owner: Owner,
    /// Data references held by connections.
    refs: u32,
    /// Dirty-record mark the op waits to see persisted before it completes (0: none).
    dirty_mark: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkPhase {
    /// No connection; next attempt at `retry_at_ns`.
    Disconnected { retry_at_ns: u64 },
    /// Hello queued, waiting for the HelloReply.
    Handshake,
    /// Accepted: ops flow.
    Up,
    /// Refused by the relay (stale generation, unknown volume, ...): retried after a pause.
    Refused,
    /// The relay lacks ops the primary no longer holds: it needs a full resync.
    NeedsResync,
}

struct Link {
    addr: SocketAddr,
    conn: Option<TcpConnection<SegRef>>,
    phase: LinkPhase,
    /// Marked down (timeout).
    down: bool,
    removed: bool,
    acked_lsn: u64,
    sent_lsn: u64,
    /// (last LSN of a frame, its data bytes), oldest first: unacknowledged frames.
    frames: VecDeque<(u64, u64)>,
    bytes_in_flight: u64,
    /// Last time the relay was heard from (or the link came up / was created).
    heard_ns: u64,
    /// Last heartbeat sent.
    hb_sent_ns: u64,
    frames_sent: u64,
    last_error: String,
    /// Readiness token of this link's socket.
    token: u64,
    /// The socket is in the link reactor's readiness set.
    watched: bool,
    /// Last `poll_recv`.
    recv_ns: u64,
    /// See [`RelayStatus::late_reads`].
    late_reads: u64,
    /// `now_ns()` of the last refusal of this link's Hello (for the slow retry).
    refused_ns: u64,
    /// Resync in progress (`volume/resync.rs`).
    resync: Option<resync::Resync>,
    resyncs: u64,
    resyncs_done: u64,
    /// The primary dropped ops this relay lacks (said once; cleared when a resync starts).
    beyond_retention: bool,
    /// A resync base skipped LSNs from here on: the relay never confirms their writes, so
    /// the dirty-block record keeps them (until a block sync that covers them ended).
    hole_from: Option<u64>,
}

impl Link {
    fn new(addr: SocketAddr, now: u64, token: u64) -> Self {
        Self {
            addr,
            token,
            watched: false,
            recv_ns: 0,
            late_reads: 0,
            refused_ns: 0,
            resync: None,
            resyncs: 0,
            resyncs_done: 0,
            beyond_retention: false,
            hole_from: None,
            conn: None,
            phase: LinkPhase::Disconnected { retry_at_ns: now },
            down: false,
            removed: false,
            acked_lsn: 0,
            sent_lsn: 0,
            frames: VecDeque::with_capacity(LINK_FRAMES_IN_FLIGHT_MAX),
            bytes_in_flight: 0,
            heard_ns: now,
            hb_sent_ns: now,
            frames_sent: 0,
            last_error: String::new(),
        }
    }
    fn phase_name(&self) -> &'static str {
        match self.phase {
            LinkPhase::Disconnected { .. } => "connecting",
            LinkPhase::Handshake => "handshake",
            LinkPhase::Up if self.resync.is_some() => "resyncing",
            LinkPhase::Up => "up",
            LinkPhase::Refused => "refused",
            LinkPhase::NeedsResync => "needs_resync",
        }
    }
    fn counts(&self, degraded: bool) -> bool {
        !self.removed && !(degraded && (self.down || self.phase == LinkPhase::NeedsResync || self.resyncing()))
    }
}

struct LinkState {
    s: Arc<Shared>,
    poller: Option<reactor::PollerId>,
    links: Vec<Link>,
    inflight: VecDeque<InFlight>,
    retention: Retention,
    /// Next LSN to assign; 0 until the first handshakes said where to resume.
    next_lsn: u64,
    completed_lsn: u64,
    epoch: u64,
    created_ns: u64,
    status_ns: u64,
    /// Restart points waiting for an LSN (before `next_lsn` is known).
    pending_ctl: VecDeque<Ctl>,
    stopped: bool,
    /// Which links' sockets are readable (None: epoll unavailable, every link is read on
    /// every poll).
    readiness: Option<Readiness>,
    /// Tokens found readable by this poll.
    ready: ArrayVec<u64, READY_EVENTS_MAX>,
    next_token: u64,
    /// The dirty-block record (`volume/dirty.rs`).
    dirty: dirty::DirtyMap,
    /// The current or last block sync (`volume/sync.rs`).
    sync: Option<sync::BlockSync>,
    /// The switchover fence (`volume/demote.rs`).
    fence: demote::Fence,
    /// The last restart point numbered (since this process started).
    last_rp: Option<RestartPoint>,
}

/// A completion of a send on link `i`: which op references come back.
type SendDone = SendCompletion<SegRef>;

impl LinkState {
    fn new(s: Arc<Shared>, dirty: dirty::DirtyMap) -> Self {
        let now = now_ns();
        let links: Vec<Link> = s
            .cfg
            .relays
            .iter()
            .enumerate()
            .map(|(k, &a)| Link::new(a, now, k as u64))
            .collect();
        let next_token = links.len() as u64;
        let readiness = Readiness::new()
            .map_err(|e| {
                log::warn!(
                    "volume {}: no epoll ({e}): every link is read on every poll",
                    s.cfg.name
                )
            })
            .ok();
        let retention = Retention::new(s.cfg.retain_bytes_max as usize);
        Self {
            s,
            poller: None,
            links,
            inflight: VecDeque::with_capacity(INFLIGHT_OPS_MAX),
            retention,
            next_lsn: 0,
            completed_lsn: 0,
            epoch: 0,
            created_ns: now,
            status_ns: 0,
            pending_ctl: VecDeque::new(),
            stopped: false,
            readiness,
            ready: ArrayVec::new(),
            next_token,
            dirty,
            sync: None,
            fence: demote::Fence::None,
            last_rp: None,
        }
    }

    fn timeout_ns(&self) -> u64 {
        self.s.cfg.relay_down_timeout_ms * 1_000_000
    }

    fn degraded(&self) -> bool {
        self.s.cfg.on_relay_down == OnRelayDown::Degraded
    }

    fn poll(&mut self) -> PollStatus {
        if self.stopped {
            return PollStatus::Idle;
        }
        let now = now_ns();
        let mut busy = false;
        while let Some(c) = self.s.ctl.pop() {
            busy = true;
            self.pending_ctl.push_back(c);
        }
        self.run_ctl();
        if self.stopped {
            return PollStatus::Busy;
        }
        if self.next_lsn == 0 {
            self.try_start(now);
        }
        let mut took_new = false;
        if self.fence.fenced() {
            self.fail_fenced_submits();
        } else if self.next_lsn != 0 {
            let mut n = 0;
            while n < SUBMITS_PER_POLL_MAX && self.inflight.len() < INFLIGHT_OPS_MAX {
                let Some(sub) = self.s.subq.pop() else { break };
                n += 1;
                let lsn = self.next_lsn;
                self.next_lsn += 1;
                let crc = crc32c::crc32c(&sub.data);
                let dirty_mark = self.dirty.mark(sub.offset_blocks, sub.num_blocks.into());
                if let Some(s) = self.sync.as_mut() {
                    s.on_write(sub.offset_blocks, sub.num_blocks.into());
                }
                self.inflight.push_back(InFlight {
                    dirty_mark,
                    op: OpMeta {
                        lsn,
                        kind: sub.kind,
                        arg0: sub.offset_blocks,
                        arg1: sub.num_blocks.into(),
                        data: sub.data,
                        crc,
                    },
                    owner: Owner::Chan {
                        chan: sub.chan,
                        slot: sub.slot,
                    },
                    refs: 0,
                });
            }
            took_new = n > 0;
            took_new |= self.drive_sync(now);
            took_new |= self.try_fence();
            busy |= took_new;
        }
        if took_new {
            // New ops go out before the readiness check: at QD 1 the write the last Ack
            // released is on the wire one epoll_wait sooner.
            for i in 0..self.links.len() {
                if self.links[i].phase == LinkPhase::Up && self.pump(i) {
                    self.flush_link(i, now);
                }
            }
        }
        self.ready.clear();
        if let Some(r) = self.readiness.as_mut() {
            if let Err(e) = r.poll(&mut self.ready) {
                log::warn!(
                    "volume {}: epoll_wait: {e}; reading every link on every poll",
                    self.s.cfg.name
                );
                self.readiness = None;
                for l in &mut self.links {
                    l.watched = false;
                }
            }
        }
        for i in 0..self.links.len() {
            busy |= self.drive_link(i, now);
        }
        busy |= self.retire();
        self.links.retain(|l| !(l.removed && l.conn.is_none()));
        self.update_blocked();
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

    /// Sets the first LSN once every relay answered its first Hello or the down timeout
    /// passed: a primary that restarts resumes after the highest LSN any relay holds.
    fn try_start(&mut self, now: u64) {
        let answered = self
            .links
            .iter()
            .all(|l| l.phase == LinkPhase::Up || l.phase == LinkPhase::Refused);
        if answered || now.saturating_sub(self.created_ns) >= self.timeout_ns() {
            let resume = self.links.iter().map(|l| l.acked_lsn).max().unwrap_or(0);
            self.next_lsn = resume + 1;
            self.completed_lsn = resume;
            self.dirty.begin(self.next_lsn);
            let rate = self.s.cfg.initial_sync_bytes_per_sec;
            if self.resume_sync(rate) {
                // A sync cut short by a restart goes on where it was (`volume/sync.rs`).
                self.drive_sync(now);
            } else if self.s.cfg.initial_sync {
                let delta = self.s.cfg.initial_sync_delta.clone();
                let (full, why) = match &delta {
                    Some(_) => (false, "failback: the blocks that differ from the other site"),
                    None => (true, "initial sync of the base bdev's data"),
                };
                match self.start_sync_with(full, true, rate, why.into(), delta) {
                    // Its marker takes the first LSN, ahead of any write waiting to be
                    // numbered: no restart point precedes it.
                    Ok(()) => {
                        self.drive_sync(now);
                    }
                    Err(e) => log::error!("volume {}: cannot start the initial sync: {e}", self.s.cfg.name),
                }
            }
            for i in 0..self.links.len() {
                let l = &mut self.links[i];
                l.sent_lsn = l.sent_lsn.max(resume);
                if l.phase == LinkPhase::Up && l.acked_lsn < resume {
                    // This relay missed LSNs an earlier incarnation sent to others.
                    let why = format!("relay holds up to LSN {} but others hold up to {resume}", l.acked_lsn);
                    self.start_resync(i, resume + 1, &why, now);
                }
            }
            log::info!("volume {}: LSNs resume at {}", self.s.cfg.name, self.next_lsn);
        }
    }

    fn run_ctl(&mut self) {
        let mut keep = VecDeque::new();
        while let Some(c) = self.pending_ctl.pop_front() {
            match c {
                Ctl::RestartPoint { done, .. } if self.fence.active() => {
                    done(Err(VolumeError::Demoted(self.s.cfg.name.clone())));
                }
                Ctl::RestartPoint { tag, done } => {
                    if let Err((tag, done)) = self.issue_restart_point(tag, done) {
                        keep.push_back(Ctl::RestartPoint { tag, done });
                    }
                }
                Ctl::Demote { tag, done } => {
                    if let Err((tag, done)) = self.start_demote(tag, done) {
                        keep.push_back(Ctl::Demote { tag, done });
                    }
                }
                Ctl::Resume(done) => done(self.resume_writes()),
                Ctl::Sync { done, .. } if self.fence.active() => {
                    done(Err(format!("volume {} is demoted", self.s.cfg.name)));
                }
                Ctl::Sync {
                    full,
                    bytes_per_sec,
                    done,
                } => {
                    let r = self.start_block_sync(full, bytes_per_sec, "requested".into());
                    done(r);
                }
                Ctl::AddRelay(addr) => {
                    let mut l = Link::new(addr, now_ns(), self.next_token);
                    self.next_token += 1;
                    // A new relay starts at the oldest LSN the primary can still send it;
                    // its Hello reply says what it already has.
                    l.sent_lsn = self.completed_lsn;
                    l.acked_lsn = 0;
                    self.links.push(l);
                }
                Ctl::RemoveRelay(addr) => {
                    for l in self.links.iter_mut().filter(|l| l.addr == addr) {
                        l.removed = true;
                        if let Some(c) = l.conn.as_mut() {
                            c.close();
                        }
                    }
                }
                Ctl::Stop(done) => {
                    self.persist_sync_at_stop();
                    self.stop();
                    done();
                    return;
                }
            }
        }
        self.pending_ctl = keep;
    }

    /// Numbers a restart point now, or hands it back when it must wait (no LSN known yet,
    /// in-flight table full).
    fn issue_restart_point(&mut self, tag: Vec<u8>, done: RestartDone) -> Result<(), (Vec<u8>, RestartDone)> {
        if self.next_lsn == 0 || self.inflight.len() >= INFLIGHT_OPS_MAX {
            return Err((tag, done));
        }
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.epoch += 1;
        let point = RestartPoint {
            epoch: self.epoch,
            lsn,
            last_lsn: lsn - 1,
        };
        self.last_rp = Some(point);
        // SAFETY: the tag's heap bytes live in `Owner::Restart::_tag` until the
        // entry is retired, which waits for `refs == 0`; moving a Vec does not
        // move its heap bytes.
        let data = unsafe { DataRef::new(&tag) };
        self.inflight.push_back(InFlight {
            op: OpMeta {
                lsn,
                kind: OpKind::RestartPoint,
                arg0: point.epoch,
                arg1: point.last_lsn,
                crc: crc32c::crc32c(&data),
                data,
            },
            owner: Owner::Restart {
                done: Some(done),
                point,
                _tag: tag,
            },
            refs: 0,
            dirty_mark: 0,
        });
        Ok(())
    }

    fn stop(&mut self) {
        self.stopped = true;
        for l in &mut self.links {
            if let Some(c) = l.conn.as_mut() {
                c.close();
                // Hand back every queued frame's references.
                let _ = c.poll_send(&mut |_| {});
            }
            l.conn = None;
        }
        let name = self.s.cfg.name.clone();
        while let Some(e) = self.inflight.pop_front() {
            complete(e.owner, Err(VolumeError::Deleted(name.clone())));
        }
        // Channels may still submit: fail those submits too.
        while let Some(sub) = self.s.subq.pop() {
            let _ = sub
                .chan
                .done
                .push((sub.slot, Err(BdevError::Io(format!("volume {name} deleted")))));
        }
        if let Some(id) = self.poller.take() {
            reactor::unregister_poller(id);
        }
        self.publish();
    }

    /// Finds an op with `lsn` in the in-flight table or the retention ring, taking a
    /// reference for a connection.
    fn take_ref(&mut self, lsn: u64) -> Option<OpMeta> {
        if let Some(first) = self.inflight.front().map(|e| e.op.lsn) {
            if lsn >= first {
                let e = self.inflight.get_mut((lsn - first) as usize)?;
                e.refs += 1;
                return Some(e.op);
            }
        }
        let r = self.retention.get_mut(lsn)?;
        r.refs += 1;
        Some(r.op)
    }

    fn drop_ref(&mut self, lsn: u64) {
        if let Some(first) = self.inflight.front().map(|e| e.op.lsn) {
            if lsn >= first {
                if let Some(e) = self.inflight.get_mut((lsn - first) as usize) {
                    e.refs -= 1;
                }
                return;
            }
        }
        if let Some(r) = self.retention.get_mut(lsn) {
            r.refs -= 1;
        }
    }

    fn link_failed(&mut self, i: usize, why: String, now: u64) {
        let l = &mut self.links[i];
        if l.watched {
            l.watched = false;
            if let (Some(r), Some(fd)) = (self.readiness.as_mut(), l.conn.as_ref().and_then(|c| c.raw_fd())) {
                r.remove(fd);
            }
        }
        if let Some(mut c) = l.conn.take() {
            c.close();
            let mut back: ArrayVec<u64, 1024> = ArrayVec::new();
            let _ = c.poll_send(&mut |d: SendDone| {
                for seg in &d.data {
                    let _ = back.try_push(seg.lsn);
                }
            });
            for lsn in back.drain(..) {
                self.drop_ref(lsn);
            }
        }
        let l = &mut self.links[i];
        if !why.is_empty() && l.phase != LinkPhase::Refused {
            log::warn!("volume {}: relay {}: {why}", self.s.cfg.name, l.addr);
            l.last_error = why;
        }
        if l.phase != LinkPhase::NeedsResync && l.phase != LinkPhase::Refused {
            l.phase = LinkPhase::Disconnected {
                retry_at_ns: now + RECONNECT_DELAY_MS * 1_000_000,
            };
        }
        l.frames.clear();
        l.bytes_in_flight = 0;
        l.sent_lsn = l.acked_lsn;
    }

    /// Drives link `i`: connect, handshake, acks, heartbeats, sends. Returns "did work".
    fn drive_link(&mut self, i: usize, now: u64) -> bool {
        let timeout = self.timeout_ns();
        let gen = self.s.cfg.generation;
        let bs = self.s.base.block_size();
        let mut busy = false;
        if self.links[i].removed {
            if self.links[i].conn.is_some() {
                self.link_failed(i, String::new(), now);
            }
            return false;
        }
        // Down detection: silent for the timeout while something is expected of it.
        {
            let l = &mut self.links[i];
            let silent = now.saturating_sub(l.heard_ns) >= timeout;
            if silent && !l.down && l.phase != LinkPhase::Up {
                l.down = true;
                log::warn!(
                    "volume {}: relay {} marked down ({})",
                    self.s.cfg.name,
                    l.addr,
                    l.phase_name()
                );
            }
        }
        if self.links[i].phase == LinkPhase::Up && now.saturating_sub(self.links[i].heard_ns) >= timeout {
            self.links[i].down = true;
            let why = format!("no answer for {} ms: marked down", self.s.cfg.relay_down_timeout_ms);
            self.link_failed(i, why, now);
        }
        let due = match self.links[i].phase {
            LinkPhase::Disconnected { retry_at_ns } => now >= retry_at_ns,
            // Refusals (stale generation, unknown volume) are retried slowly.
            LinkPhase::Refused => now >= self.links[i].refused_ns + REFUSED_RETRY_MS * 1_000_000,
            _ => false,
        };
        if due {
            let addr = self.links[i].addr;
            match TcpConnection::connect(addr, TcpConfig::default()) {
                Ok(mut c) => {
                    let hello = Hello {
                        role: Role::Primary,
                        block_size: bs,
                        volume_id: self.s.volume_id,
                        volume_name: &self.s.cfg.name,
                        generation: gen,
                        resume_lsn: self.links[i].acked_lsn + 1,
                        frame_bytes_max: FRAME_BYTES_MAX as u32,
                        recv_credits: 0,
                    };
                    match wire::encode_hello(&hello) {
                        Ok(h) => {
                            let _ = c.send(OutFrame::control(h, 0));
                            let l = &mut self.links[i];
                            if let (Some(r), Some(fd)) = (self.readiness.as_mut(), c.raw_fd()) {
                                l.watched = r.add(fd, l.token).is_ok();
                            }
                            self.links[i].conn = Some(c);
                            self.links[i].phase = LinkPhase::Handshake;
                        }
                        Err(e) => self.links[i].last_error = e.to_string(),
                    }
                }
                Err(e) => {
                    self.links[i].last_error = e.to_string();
                    self.links[i].phase = LinkPhase::Disconnected {
                        retry_at_ns: now + RECONNECT_DELAY_MS * 1_000_000,
                    };
                }
            }
            busy = true;
        }
        let l = &mut self.links[i];
        let Some(conn) = l.conn.as_mut() else {
            return busy;
        };
        // Receive: a watched socket only when it is readable (or bytes wait in the buffer),
        // and every RECV_UNREADY_PERIOD_NS regardless.
        let expected = !l.watched || l.phase != LinkPhase::Up || self.ready.contains(&l.token) || conn.has_buffered();
        let read = expected || now.saturating_sub(l.recv_ns) >= RECV_UNREADY_PERIOD_NS;
        if read {
            l.recv_ns = now;
        }
        let mut frames: ArrayVec<RxEvent, 64> = ArrayVec::new();
        let r = if !read {
            Ok(0)
        } else {
            conn.poll_recv(&mut |f: Frame<'_>| {
                let ev = match f {
                    Frame::HelloReply(r) => RxEvent::Reply(r),
                    Frame::Ack(a) => RxEvent::Ack(a.durable_lsn, a.generation),
                    Frame::Heartbeat(h) => RxEvent::Heartbeat(h),
                    other => RxEvent::Unexpected(other.kind() as u8),
                };
                let _ = frames.try_push(ev);
            })
        };
        if !expected && !frames.is_empty() {
            self.links[i].late_reads += 1;
        }
        if let Err(e) = r {
            self.link_failed(i, format!("receive: {e}"), now);
            return true;
        }
        let mut resync_at: Option<(u64, String)> = None;
        let mut acked_bytes = 0u64;
        for ev in frames.drain(..) {
            busy = true;
            let l = &mut self.links[i];
            if matches!(ev, RxEvent::Reply(HelloReply::Refused { .. })) {
                // A relay that refuses this volume holds none of its writes: not an answer
                // for down detection, so the volume's policy applies once the timeout passes.
                l.refused_ns = now;
            } else {
                l.heard_ns = now;
                if l.down {
                    log::info!("volume {}: relay {} answers again", self.s.cfg.name, l.addr);
                    l.down = false;
                }
            }
            match ev {
                RxEvent::Reply(HelloReply::Accepted { resume_lsn, .. }) => {
                    let have = resume_lsn.saturating_sub(1);
                    // What the relay holds now: less than it acknowledged before if its
                    // journal lost a tail (recovery cut it), which then needs a resync.
                    l.acked_lsn = have;
                    l.beyond_retention = false;
                    l.sent_lsn = l.acked_lsn;
                    l.phase = LinkPhase::Up;
                    l.last_error.clear();
                    // Can it be caught up from what the primary still holds? If not, its
                    // history restarts at the oldest LSN the primary holds (resync).
                    let oldest = self.oldest_held();
                    let l = &mut self.links[i];
                    if self.next_lsn != 0 && have + 1 < oldest && have < self.completed_lsn {
                        resync_at = Some((
                            oldest,
                            format!("relay holds up to LSN {have}; the primary holds LSNs from {oldest} on only"),
                        ));
                    } else if self.next_lsn != 0 && have >= self.next_lsn {
                        l.phase = LinkPhase::NeedsResync;
                        l.last_error = format!("relay holds LSN {have}, beyond this primary's {}", self.next_lsn - 1);
                        log::error!("volume {}: relay {}: {}", self.s.cfg.name, l.addr, l.last_error);
                    } else {
                        log::info!(
                            "volume {}: relay {} up, resumes at LSN {resume_lsn}",
                            self.s.cfg.name,
                            l.addr
                        );
                    }
                }
                RxEvent::Reply(HelloReply::Refused { reason, generation, .. }) => {
                    l.last_error = format!("refused: {reason:?} (relay generation {generation})");
                    log::error!("volume {}: relay {}: {}", self.s.cfg.name, l.addr, l.last_error);
                    l.phase = LinkPhase::Refused;
                }
                RxEvent::Ack(durable, _gen) => {
                    if durable > l.acked_lsn {
                        l.acked_lsn = durable;
                        while let Some(&(last, bytes)) = l.frames.front() {
                            if last > durable {
                                break;
                            }
                            l.bytes_in_flight -= bytes;
                            acked_bytes += bytes;
                            l.frames.pop_front();
                        }
                        l.resync_acked(std::mem::take(&mut acked_bytes), &self.s.cfg.name);
                    }
                }
                RxEvent::Heartbeat(h) => {
                    if !h.is_reply {
                        if let Some(c) = l.conn.as_mut() {
                            let _ = c.send(OutFrame::control(
                                wire::encode_heartbeat(&Heartbeat { is_reply: true, ..h }),
                                0,
                            ));
                        }
                    }
                }
                RxEvent::Unexpected(k) => {
                    let why = format!("unexpected frame kind {k} from relay");
                    self.link_failed(i, why, now);
                    return true;
                }
            }
            if let Some((base, why)) = resync_at.take() {
                if !self.start_resync(i, base, &why, now) {
                    return true;
                }
            }
        }
        if self.links[i].phase == LinkPhase::Refused {
            self.link_failed(i, String::new(), now);
            self.links[i].phase = LinkPhase::Refused;
            return true;
        }
        if self.links[i].phase == LinkPhase::Up && self.next_lsn != 0 {
            busy |= self.pump(i);
            let l = &mut self.links[i];
            if now.saturating_sub(l.hb_sent_ns) >= timeout / 4 {
                l.hb_sent_ns = now;
                if let Some(c) = l.conn.as_mut() {
                    let _ = c.send(OutFrame::control(
                        wire::encode_heartbeat(&Heartbeat {
                            nonce: now,
                            time_ns: now,
                            is_reply: false,
                        }),
                        0,
                    ));
                }
            }
        }
        busy | self.flush_link(i, now)
    }

    /// Pushes link `i`'s queued bytes to its socket and takes back the references of
    /// frames the transport is done with. Returns whether anything happened.
    fn flush_link(&mut self, i: usize, now: u64) -> bool {
        let mut back: ArrayVec<u64, 1024> = ArrayVec::new();
        let r = match self.links[i].conn.as_mut() {
            Some(c) => c.poll_send(&mut |d: SendDone| {
                for seg in &d.data {
                    let _ = back.try_push(seg.lsn);
                }
            }),
            None => Ok(0),
        };
        let busy = !back.is_empty();
        for lsn in back.drain(..) {
            self.drop_ref(lsn);
        }
        if let Err(e) = r {
            self.link_failed(i, format!("send: {e}"), now);
            return true;
        }
        if self.links[i]
            .conn
            .as_ref()
            .is_some_and(|c| c.state() == ConnState::Failed)
        {
            self.link_failed(i, "connection failed".into(), now);
        }
        busy
    }

    /// Sends link `i` every op after its `sent_lsn` that is available, up to its flow
    /// control bound, in frames of up to `OPS_PER_FRAME_MAX` ops.
    fn pump(&mut self, i: usize) -> bool {
        let gen = self.s.cfg.generation;
        let bs = self.s.base.block_size();
        let cap = self.s.cfg.relay_bytes_in_flight_max;
        let mut sent = false;
        loop {
            let l = &self.links[i];
            let Some(c) = l.conn.as_ref() else { break };
            if c.send_capacity() == 0 || l.bytes_in_flight >= cap || l.frames.len() >= LINK_FRAMES_IN_FLIGHT_MAX {
                break;
            }
            let mut lsn = l.sent_lsn + 1;
            if lsn >= self.next_lsn {
                break;
            }
            let mut enc = BatchEncoder::ops(gen, bs);
            let mut segs: ArrayVec<SegRef, OPS_PER_FRAME_MAX> = ArrayVec::new();
            let mut crcs: ArrayVec<u32, OPS_PER_FRAME_MAX> = ArrayVec::new();
            let mut bytes = 0usize;
            while enc.len() < OPS_PER_FRAME_MAX && lsn < self.next_lsn {
                let Some(op) = self.peek(lsn) else { break };
                let len = bytes + op.data.len();
                if len > FRAME_DATA_BYTES_MAX || (bytes > 0 && len > FRAME_BYTES_TARGET) {
                    break;
                }
                let Some(op) = self.take_ref(lsn) else { break };
                let r = match op.kind {
                    OpKind::Write => enc.write(lsn, op.arg0, op.arg1 as u32, op.data.len()),
                    OpKind::WriteZeroes => enc.write_zeroes(lsn, op.arg0, op.arg1 as u32),
                    OpKind::Deallocate => enc.deallocate(lsn, op.arg0, op.arg1 as u32),
                    OpKind::RestartPoint => enc.restart_point(lsn, op.arg0, op.arg1, op.data.len()),
                    OpKind::Sync => enc.sync_args(lsn, op.arg0, op.arg1),
                };
                if let Err(e) = r {
                    // A bug: the op was checked when it was made.
                    self.drop_ref(lsn);
                    log::error!("volume {}: cannot encode LSN {lsn}: {e}", self.s.cfg.name);
                    break;
                }
                bytes += op.data.len();
                // Every op gets a segment (possibly empty) so its reference comes back.
                segs.push(SegRef { data: op.data, lsn });
                crcs.push(op.crc);
                lsn += 1;
            }
            if enc.is_empty() {
                // The next LSN is neither in flight nor retained: the relay cannot be
                // caught up by this primary.
                let l = &mut self.links[i];
                if l.phase == LinkPhase::Up && l.sent_lsn + 1 < self.next_lsn {
                    let why = format!("LSN {} no longer held by the primary", l.sent_lsn + 1);
                    l.lost_history(why, &self.s.cfg.name);
                }
                break;
            }
            let slices: ArrayVec<&[u8], OPS_PER_FRAME_MAX> = segs.iter().map(|s| &*s.data).collect();
            let hdr = match enc.finish_with_crcs(&slices, &crcs) {
                Ok(h) => h,
                Err(e) => {
                    log::error!("volume {}: cannot seal frame: {e}", self.s.cfg.name);
                    for s in &segs {
                        self.drop_ref(s.lsn);
                    }
                    break;
                }
            };
            drop(slices);
            let last = lsn - 1;
            let mut data = rdma_transport::Segs::new();
            for s in segs.drain(..) {
                data.push(s);
            }
            let l = &mut self.links[i];
            let Some(c) = l.conn.as_mut() else { break };
            match c.send(OutFrame {
                header: hdr,
                data,
                user_data: last,
            }) {
                Ok(()) => {
                    l.sent_lsn = last;
                    l.frames.push_back((last, bytes as u64));
                    l.bytes_in_flight += bytes as u64;
                    l.frames_sent += 1;
                    sent = true;
                }
                Err(e) => {
                    let f = e.into_frame();
                    let lsns: ArrayVec<u64, OPS_PER_FRAME_MAX> = f.data.iter().map(|s| s.lsn).collect();
                    for lsn in lsns {
                        self.drop_ref(lsn);
                    }
                    break;
                }
            }
        }
        sent
    }

    fn peek(&self, lsn: u64) -> Option<OpMeta> {
        if let Some(first) = self.inflight.front().map(|e| e.op.lsn) {
            if lsn >= first {
                return self.inflight.get((lsn - first) as usize).map(|e| e.op);
            }
        }
        let first = self.retention.first_lsn()?;
        self.retention
            .entries
            .get(lsn.checked_sub(first)? as usize)
            .map(|e| e.op)
    }

    /// (acks needed, relays that count) for the policy, or None when it cannot be met.
    fn policy_met(&self, lsn: u64) -> bool {
        // Called on every poll while an op waits: counts in place (no collected Vec).
        let degraded = self.degraded();
        let (mut counting, mut acks) = (0, 0);
        for l in self.links.iter().filter(|l| l.counts(degraded)) {
            counting += 1;
            acks += usize::from(l.acked_lsn >= lsn);
        }
        acks >= self.needed(counting)
    }

    fn needed(&self, counting: usize) -> usize {
        let degraded = self.degraded();
        let want = match self.s.cfg.ack_policy {
            AckPolicy::All => counting,
            AckPolicy::Quorum(k) => k as usize,
            AckPolicy::Any => 1.min(counting.max(usize::from(!degraded))),
        };
        if degraded {
            want.min(counting)
        } else {
            want
        }
    }

    /// Completes ops at the front that meet the policy and that no connection references,
    /// copying into the retention ring the ones some relay still lacks.
    fn retire(&mut self) -> bool {
        let mut n = 0;
        while let Some(front) = self.inflight.front() {
            if front.refs > 0 || front.dirty_mark > self.dirty.flushed() || !self.policy_met(front.op.lsn) {
                break;
            }
            let lsn = front.op.lsn;
            let lacking = self
                .links
                .iter()
                .any(|l| !l.removed && l.phase != LinkPhase::NeedsResync && l.acked_lsn < lsn);
            if lacking {
                let op = front.op;
                let (ok, dropped) = self.retention.push(&op);
                if dropped != 0 || !ok {
                    let upto = if ok { dropped } else { lsn };
                    for l in &mut self.links {
                        if !l.removed && l.phase != LinkPhase::NeedsResync && l.acked_lsn < upto {
                            let why = format!(
                                "retention ring ({} bytes) overflowed: LSN {upto} dropped before the relay had it",
                                self.s.cfg.retain_bytes_max
                            );
                            l.lost_history(why, &self.s.cfg.name);
                        }
                    }
                }
            }
            let Some(e) = self.inflight.pop_front() else { break };
            self.completed_lsn = lsn;
            match e.owner {
                Owner::SyncWrite { .. } => {
                    if let Some(s) = self.sync.as_mut() {
                        s.retired();
                    }
                }
                Owner::SyncMark { end: true } => self.sync_ended(lsn),
                _ => {}
            }
            complete(e.owner, Ok(()));
            n += 1;
        }
        // Retained ops every relay now has are no longer needed.
        let min_acked = self
            .links
            .iter()
            .filter(|l| !l.removed && l.phase != LinkPhase::NeedsResync)
            .map(|l| l.acked_lsn)
            .min()
            .unwrap_or(u64::MAX);
        self.retention.trim(min_acked.min(self.completed_lsn));
        // Writes every relay confirmed (a skipped hole never is) leave the dirty record.
        let confirmed = self
            .links
            .iter()
            .filter(|l| !l.removed)
            .map(|l| {
                l.hole_from
                    .map_or(l.acked_lsn, |h| h.saturating_sub(1).min(l.acked_lsn))
            })
            .min()
            .unwrap_or(self.completed_lsn)
            .min(self.completed_lsn);
        self.dirty.rotate(confirmed, self.next_lsn, now_ns());
        n > 0
    }

    fn update_blocked(&self) {
        let blocked = if self.degraded() {
            false
        } else {
            let live = self
                .links
                .iter()
                .filter(|l| !l.removed && !l.down && l.phase != LinkPhase::NeedsResync)
                .count();
            let counting = self.links.iter().filter(|l| !l.removed).count();
            live < self.needed(counting)
        };
        if self.s.writes_blocked.swap(blocked, Ordering::AcqRel) != blocked {
            if blocked {
                log::error!(
                    "volume {}: acknowledgement policy cannot be met: new writes fail",
                    self.s.cfg.name
                );
            } else {
                log::info!("volume {}: acknowledgement policy can be met again", self.s.cfg.name);
            }
        }
    }

    fn publish(&self) {
        let cfg = &self.s.cfg;
        let st = VolumeStatus {
            name: cfg.name.clone(),
            base_bdev: self.s.base.name().to_string(),
            ack_policy: cfg.ack_policy.name().to_string(),
            quorum_k: match cfg.ack_policy {
                AckPolicy::Quorum(k) => k,
                _ => 0,
            },
            on_relay_down: match cfg.on_relay_down {
                OnRelayDown::Block => "block",
                OnRelayDown::Degraded => "degraded",
            }
            .to_string(),
            relay_down_timeout_ms: cfg.relay_down_timeout_ms,
            generation: cfg.generation,
            next_lsn: self.next_lsn,
            completed_lsn: self.completed_lsn,
            inflight_ops: self.inflight.len(),
            retained_ops: self.retention.entries.len(),
            retained_bytes: self.retention.used,
            writes_blocked: self.s.writes_blocked.load(Ordering::Acquire),
            epoch: self.epoch,
            // Read by `ReplicatedVolume::status` off the reactor (its error string is
            // behind a lock the reactor never takes).
            dirty: DirtyStatus::default(),
            sync: self.sync.as_ref().map(|s| s.status()),
            demoted: self.s.demoted.load(Ordering::Acquire),
            fence_lsn: self.fence.lsn(),
            relays: self
                .links
                .iter()
                .filter(|l| !l.removed)
                .map(|l| RelayStatus {
                    addr: l.addr.to_string(),
                    state: l.phase_name().to_string(),
                    connected: l.phase == LinkPhase::Up,
                    down: l.down,
                    acked_lsn: l.acked_lsn,
                    sent_lsn: l.sent_lsn,
                    bytes_in_flight: l.bytes_in_flight,
                    lag_lsn: self.next_lsn.saturating_sub(1).saturating_sub(l.acked_lsn),
                    frames_sent: l.frames_sent,
                    late_reads: l.late_reads,
                    last_error: l.last_error.clone(),
                    resync: l.resync.map(|r| r.status(l.acked_lsn)),
                    resyncs: l.resyncs,
                    resyncs_done: l.resyncs_done,
                })
                .collect(),
        };
        // Never block the reactor: a reader holding the lock only delays the snapshot.
        if let Ok(mut s) = self.s.status.try_lock() {
            *s = st;
        }
        self.s.published_ns.store(now_ns().max(1), Ordering::Release);
    }
}

enum RxEvent {
    Reply(HelloReply),
    Ack(u64, u64),
    Heartbeat(Heartbeat),
    Unexpected(u8),
}

fn complete(owner: Owner, r: Result<(), VolumeError>) {
    match owner {
        Owner::Chan { chan, slot } => {
            let r = r.map_err(|e| BdevError::Io(e.to_string()));
            // Sized to the channel's slot count: cannot be full.
            let _ = chan.done.push((slot, r));
        }
        Owner::Restart { done, point, .. } => {
            if let Some(d) = done {
                d(r.map(|()| point));
            }
        }
        Owner::SyncMark { .. } | Owner::SyncWrite { .. } => {}
    }
}
