//! The replicated volume: a bdev stacked over a local bdev that sends every write to every
//! configured relay at once (R1) and completes it when the local write is done and the
//! acknowledgement policy is met (R2, invariant 1 in `docs/requirements.md`).
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrayvec::ArrayVec;
use engine::bdev::{
    Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
};
use engine::buf::DmaBuf;
use engine::clock::now_ns;
use engine::reactor::{self, PollStatus};
use engine::ring::Ring;
use rdma_transport::link::{heartbeat_echo, Backoff, Reconnect, Schedule};
use rdma_transport::readiness::{Readiness, READY_EVENTS_MAX};
use rdma_transport::wire::{
    self, BatchEncoder, Frame, Heartbeat, Hello, HelloReply, OpKind, RefuseReason, Role, FRAME_BYTES_MAX,
    FRAME_DATA_BYTES_MAX, OPS_PER_FRAME_MAX,
};
use rdma_transport::{AnyConnection, ConnState, Connection, Endpoint, OutFrame, SendCompletion};

use crate::dataref::{DataRef, SegRef};
use crate::liveness::{HeartbeatSender, HeartbeatState};
use engine::bdev::restart::{self as rp_sinks, RestartPointDone, RestartPointError, RestartPointSink, SinkToken};

mod channel;
mod config;
mod demote;
mod dirty;
mod link;
mod relay_link;
mod resync;
mod retention;
mod supersede;
mod sync;
use channel::{relays_down, Slot, VolChannel};
pub use config::*;
pub use dirty::{DirtyError, DirtyStatus};
use link::*;
use relay_link::*;
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
/// A relay link's schedule: a fixed [`RECONNECT_DELAY_MS`] between attempts,
/// [`REFUSED_RETRY_MS`] after a refused Hello.
pub const RELAY_LINK_SCHEDULE: Schedule = Schedule {
    backoff: Backoff::fixed_ms(RECONNECT_DELAY_MS),
    refused_retry_ns: REFUSED_RETRY_MS * 1_000_000,
};
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
    AddRelay(Endpoint),
    RemoveRelay(Endpoint),
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
    /// A newer generation a relay named (0: none): the standby was promoted, this primary
    /// is fenced and every write fails (`volume/supersede.rs`).
    superseded: AtomicU64,
    /// `now_ns()` of the link reactor's last status publish (liveness of the reactor).
    published_ns: AtomicU64,
    /// The link reactor's core: channels wake it after pushing to `subq`.
    link_core: u32,
    status: Mutex<VolumeStatus>,
    relays: Mutex<Vec<Endpoint>>,
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
    /// The base bdev's size and operations under the volume's name and id.
    info: BdevInfo,
    shared: Arc<Shared>,
    /// Direct heartbeats to the standby host (`standby_heartbeat`).
    heartbeat: Mutex<Option<HeartbeatSender>>,
    /// Writer of the persisted dirty-block record (`dirty_map`).
    dirty_flusher: Mutex<Option<dirty::DirtyFlusher>>,
}

/// The settings [`ReplicatedVolume::create`] refuses, each named with why.
fn check_config(cfg: &VolumeConfig) -> Result<(), VolumeError> {
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
    Ok(())
}

impl ReplicatedVolume {
    /// Creates the volume over `base` and starts its link reactor (`cfg.core`). Management
    /// path: validates, then sends the link state to its reactor. The volume accepts I/O at
    /// once; writes wait until the first handshakes have told the volume where its LSNs
    /// resume (at most `relay_down_timeout_ms`).
    pub fn create(cfg: VolumeConfig, base: Arc<dyn Bdev>) -> Result<Arc<ReplicatedVolume>, VolumeError> {
        check_config(&cfg)?;
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
            superseded: AtomicU64::new(0),
            published_ns: AtomicU64::new(0),
            link_core: core,
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
            let mut watch = reactor::WatchSet::new();
            let mut fds = Vec::new();
            let id = reactor::register_fd_poller("replication_link", None, move || {
                let status = l2.borrow_mut().poll();
                let (all, buffered) = l2.borrow().wait_list(&mut fds);
                watch.sync(&fds);
                if !all {
                    reactor::cannot_watch();
                }
                let now = now_ns();
                reactor::wake_by(if buffered { now } else { now + link::IDLE_TICK_NS });
                status
            });
            link.borrow_mut().poller = Some(id);
        })
        .map_err(|e| VolumeError::Unreachable {
            volume: shared.cfg.name.clone(),
            why: e.to_string(),
        })?;
        // In-band restart points: the NVMe/TCP target's opcode 81h (and Flush, if
        // configured) on a namespace over this bdev reaches the volume through this sink.
        let token = rp_sinks::register(&shared.cfg.name, Arc::new(VolumeSink(shared.clone())));
        *shared.sink_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(Arc::new(ReplicatedVolume {
            info: BdevInfo {
                uuid: shared.volume_id,
                ..BdevInfo::wrapping(&*shared.base, &shared.cfg.name, "Replicated volume", "replicated")
            },
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

    /// The newer generation a relay named, once this primary is superseded (the standby was
    /// promoted): every write fails from then on. 0 while it is not.
    pub fn superseded(&self) -> u64 {
        self.shared.superseded.load(Ordering::Acquire)
    }

    /// Adds a relay (management path).
    pub fn add_relay(&self, addr: impl Into<Endpoint>) -> Result<(), VolumeError> {
        let addr = addr.into();
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
    pub fn remove_relay(&self, addr: impl Into<Endpoint>) -> Result<(), VolumeError> {
        let addr = addr.into();
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
            rp_sinks::unregister(&self.shared.cfg.name, t);
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
    pub fn relays(&self) -> Vec<Endpoint> {
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
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let base = self.shared.base.open_channel()?;
        let geometry = self.info.geometry(base.geometry().buf_align);
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
            geometry,
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

/// The volume as a restart-point sink (`engine::bdev::restart`): what the NVMe/TCP target calls for opcode 81h.
/// Unlike [`ReplicatedVolume::declare_restart_point`], it fails at once with `PolicyUnmet`
/// while new writes would (block mode with too few relays up), as an I/O command should.
struct VolumeSink(Arc<Shared>);

impl RestartPointSink for VolumeSink {
    fn declare(&self, tag: &[u8], done: RestartPointDone) {
        let s = &self.0;
        if s.stopped.load(Ordering::Acquire) {
            return done(Err(RestartPointError::Failed(format!("volume {} deleted", s.cfg.name))));
        }
        let newer = s.superseded.load(Ordering::Acquire);
        if newer != 0 {
            return done(Err(RestartPointError::Failed(
                VolumeError::superseded(&s.cfg.name, newer).to_string(),
            )));
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
