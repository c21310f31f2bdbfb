//! The standby's network receive side (what `baton standby` runs): relays
//! connect, say which volume they carry in their Hello, and stream `Forward`
//! frames; the standby confirms with `SafeUpTo` and fetches what it lacks with
//! `GapRequest`s.
//!
//! Threads (the choice documented in `docs/standby.md`):
//! - one **listener** poller, on the reactor given to [`StandbyNet::start`]
//!   (default the first), accepts without blocking and reads each new
//!   connection's Hello. It refuses what it can decide alone (wrong role, no
//!   standby of that name) and hands every other connection, with its Hello,
//!   to the reactor that owns the named volume by message
//!   ([`engine::reactor::send_msg`]; a [`rdma_transport::AnyConnection`] is `Send`);
//! - on the owning reactor the Hello is answered ([`answer_hello`]: block
//!   size, generation fencing, resume at [`StandbyVolume::next_lsn`]) and the
//!   connection becomes a **link** of that volume, driven by one "standby_net"
//!   poller per reactor, next to the volume's own poller. Every call into a
//!   [`StandbyVolume`] is therefore made on its reactor; nothing blocks there.
//!
//! Per volume, on every poll of its links:
//! 1. `Forward` and `GapReply` batches go to [`StandbyVolume::offer_batch`];
//!    the receiver de-duplicates and orders. A batch refused with
//!    [`Offer::Full`] is kept (copied) and offered again before the link is
//!    read further, so back-pressure reaches the relay through TCP and no op
//!    is dropped. A stale generation or a closed intake closes the link with
//!    the reason logged.
//! 2. When [`StandbyVolume::durable_lsn`] advances, `SafeUpTo` goes to every
//!    connected relay of the volume, so all of them release.
//! 3. A hole reported by [`StandbyVolume::gaps`] is requested from one relay,
//!    preferring relays that are not currently forwarding (a backup), in turn;
//!    a request not answered is retried on the next relay after
//!    [`GAP_RETRY_NS`].
//! 4. When the next LSN has not moved for [`STALL_NS`] (the forwarder died or
//!    stalled), every relay is asked for `next .. next + PULL_SPAN_LSN`; a
//!    reply that carried ops is followed at once by a request for what comes
//!    after it (a backup relay sends one frame per request), so a backup
//!    streams at one round trip per frame until it has nothing more. With no
//!    progress, the pull interval doubles up to [`PULL_INTERVAL_MAX_NS`]. Not
//!    when a forwarder reports it holds what is missing back by policy
//!    ([`pull::stall_pull_wanted`]): the WAN carries each byte once, at the
//!    policy's pace.
//! 5. While a failover drain runs ([`start_drain`]), every relay is pulled
//!    that way until it answers `not_held`, whatever its policy.
//!
//! A relay's role is not in its Hello: a link is shown as `forwarder` once it
//! sent a `Forward` frame, `backup` once it answered gap requests without ever
//! forwarding. Heartbeats and every other frame kind go to
//! [`on_other_frame`]; kinds a relay must not send close the link.
//!
//! Files: `listen.rs` (accepting, the Hello hand-off), `link.rs` (one relay's link: its
//! state and receive, step 1), this file (the volume's links: steps 2 to 5, status),
//! `pull.rs` (when to pull), `drain.rs` (the failover drain).

mod drain;
mod link;
mod listen;
pub mod pull;

use link::{drive_link, Link};
use listen::Listener;

pub use drain::{drain_progress, start_drain, DrainProgress};

use crate::registry;
use crate::{Offer, OwnedOp, StandbyVolume};
use engine::clock::now_ns;
use engine::reactor::{self, PollStatus};
use rdma_transport::handshake::{answer_hello, refusal_for, LocalVolume};
use rdma_transport::wire::{
    self, Batch, Fence, ForwardState, Frame, GapRequest, GapStatus, Heartbeat, Hello, HelloReply, RefuseReason, Role,
    SafeUpTo, FRAME_BYTES_MAX, WIRE_VERSION,
};
use rdma_transport::{AnyAcceptor, AnyConnection, Endpoint};
use rdma_transport::{ConnState, Connection, OutFrame, TransportError};
use serde::Serialize;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

/// Default address relays connect to.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:4620";
/// Connections waiting for their Hello.
pub const PENDING_CONNS_MAX: usize = 64;
/// Time a new connection has to send its Hello.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;
/// Relay links per volume; more are refused with `Busy`.
pub const LINKS_PER_VOLUME_MAX: usize = 16;
/// No progress of the next LSN for this long: pull from every relay.
pub const STALL_NS: u64 = 200_000_000;
/// Longest pause between pulls while nothing progresses.
pub const PULL_INTERVAL_MAX_NS: u64 = 1_000_000_000;
/// LSNs asked for by one pull request (a relay answers one frame of it).
pub const PULL_SPAN_LSN: u64 = 4096;
/// A hole is asked for again (from the next relay) after this long.
pub const GAP_RETRY_NS: u64 = 200_000_000;
/// A gap request without an answer after this long is forgotten.
pub const GAP_REQUEST_TIMEOUT_NS: u64 = 2_000_000_000;
/// A relay's `PrimaryLiveness` (sent every 100 ms) counts this long (20 reports: a
/// loaded relay's reports arrive late, not lost).
pub const REPORT_FRESH_NS: u64 = 2_000_000_000;
/// A relay link that brought no frame for this long while the standby was reading it is
/// closed: a relay sends `PrimaryLiveness` every 100 ms, so silence means the path is cut
/// (a partition leaves the TCP connection looking established for minutes). The relay
/// reconnects once the path is back; a failover drain stops waiting for it.
pub const RELAY_SILENT_NS: u64 = 3_000_000_000;
/// A link count seen this recently is what a drain expects to find.
pub const PEAK_LINKS_WINDOW_NS: u64 = 10_000_000_000;
/// Closed links kept per volume for the status.
pub const CLOSED_LINKS_KEPT: usize = 8;
/// Holes looked at per poll.
const GAPS_PER_POLL: usize = 4;
/// Period of the listener poller.
const ACCEPT_PERIOD: Duration = Duration::from_millis(1);

type Conn = AnyConnection<Vec<u8>>;

/// Errors of the network side (setup).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: Endpoint, source: TransportError },
    #[error("standby network reactor unreachable: {0}")]
    Unreachable(String),
}

/// Settings of the listener.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Address relays connect to over TCP (port 0 picks one).
    pub listen: SocketAddr,
    /// Address relays connect to over RDMA, besides TCP (`rdma` feature).
    pub listen_rdma: Option<SocketAddr>,
    /// Reactor running the listener (`None`: the first).
    pub core: Option<u32>,
}

/// The running listener.
#[derive(Debug, Clone)]
pub struct StandbyNet {
    listen: SocketAddr,
    core: u32,
}

static LISTEN: Mutex<Option<SocketAddr>> = Mutex::new(None);

impl StandbyNet {
    /// Binds the listening socket and starts its poller. Relays of volumes
    /// that exist (now or later, by `standby_create`) are served from then on.
    pub fn start(cfg: NetConfig) -> Result<StandbyNet, NetError> {
        let mut eps = vec![Endpoint::Tcp(cfg.listen)];
        eps.extend(cfg.listen_rdma.map(Endpoint::Rdma));
        let mut acceptor = AnyAcceptor::bind(&eps).map_err(|(addr, source)| NetError::Listen { addr, source })?;
        acceptor.follow_process_tls(rdma_transport::tls::Role::Relay);
        let listen = acceptor.local_addr();
        let core = match cfg.core {
            Some(c) => c,
            None => *reactor::cores()
                .first()
                .ok_or_else(|| NetError::Unreachable("no reactor is running".into()))?,
        };
        let holder = Mutex::new(Some(acceptor));
        reactor::send_msg(core, move || {
            let Some(acceptor) = holder.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return;
            };
            let mut l = Listener::new(acceptor);
            let mut watch = reactor::WatchSet::new();
            let mut fds = Vec::new();
            // Paced by ACCEPT_PERIOD while the reactor is awake; asleep, a connection or a
            // handshake's bytes wake it.
            reactor::register_fd_poller("standby_listen", Some(ACCEPT_PERIOD), move || {
                let now = now_ns();
                let status = l.poll(now);
                let (all, buffered) = l.wait_list(&mut fds);
                watch.sync(&fds);
                arm(all, buffered, now);
                status
            });
        })
        .map_err(|e| NetError::Unreachable(e.to_string()))?;
        *LISTEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(listen);
        log::info!("standby: listening for relays on {listen}");
        Ok(StandbyNet { listen, core })
    }

    /// The bound address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The reactor running the listener.
    pub fn core(&self) -> u32 {
        self.core
    }
}

/// Where every frame from a relay that is not a `Forward` or `GapReply` goes
/// (heartbeats, acks, and kinds a relay must not send, which then close the
/// link). Called on the volume's reactor. The hook for a primary-failure
/// detector.
pub fn on_other_frame(volume: &str, relay: SocketAddr, frame: &Frame<'_>) {
    log::debug!("standby {volume}: relay {relay}: {:?} frame", frame.kind());
}

// ---------------------------------------------------------------------------
// Links, on the volume's reactor
// ---------------------------------------------------------------------------

/// One relay link as `standby_get_status` shows it (`links`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkStatus {
    /// The relay's address (its outgoing socket).
    pub addr: String,
    pub connected: bool,
    /// `forwarder` (it sent Forward frames), `backup` (only gap replies) or `unknown`.
    pub role: &'static str,
    /// Generation in the relay's Hello.
    pub generation: u64,
    /// Seconds since the link was accepted (or until it closed).
    pub connected_seconds: f64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub forward_frames: u64,
    pub gap_replies: u64,
    pub gap_requests_sent: u64,
    /// Ops taken (or recognised as duplicates) from this relay.
    pub ops_offered: u64,
    /// Highest LSN this relay sent.
    pub lsn_offered_max: u64,
    /// `lsn_offered_max` minus the standby's durable LSN.
    pub lag_lsn: u64,
    /// Last `SafeUpTo` sent.
    pub safe_lsn_sent: u64,
    /// Ops refused for back-pressure and held until the receiver takes them.
    pub held_ops: usize,
    /// The relay's own report: `backup`, `forwarding`, `holding` (ops held back by its
    /// forward policy) or `unknown` (no report within the last 2 s).
    pub forward_state: &'static str,
    /// Highest LSN the relay reports holding (its journal).
    pub relay_held_lsn: u64,
    pub last_error: String,
}

#[derive(Default)]
struct VolNet {
    links: Vec<Link>,
    closed: VecDeque<LinkStatus>,
    /// Volume identity pinned by the first accepted relay (this process).
    volume_id: Option<[u8; 16]>,
    next_req_id: u64,
    progress_lsn: u64,
    progress_ns: u64,
    last_pull_ns: u64,
    pull_interval_ns: u64,
    /// (first LSN of a hole, when it was asked for).
    gap_asked: Vec<(u64, u64)>,
    rr: usize,
    /// A failover drain in progress (or its result, until the next one).
    drain: Option<drain::Drain>,
    /// Stall verdicts (`pull::StallVerdict`) taken, by kind: pulled, policy hold,
    /// nothing more held, waiting on a delivering forwarder; then (index 4) the pulls taken
    /// because some relay's report was not fresh (the fallback of `pull::stall_pull_wanted`).
    stall_verdicts: [u64; 5],
    /// Most relay links connected at once lately, and when that was last true: a drain
    /// waits (briefly) for relays that were connected a moment ago to come back.
    peak_links: usize,
    peak_ns: u64,
}

impl VolNet {
    fn remember_closed(&mut self, s: LinkStatus) {
        if self.closed.len() >= CLOSED_LINKS_KEPT {
            self.closed.pop_front();
        }
        self.closed.push_back(s);
    }

    fn req_id(&mut self) -> u64 {
        self.next_req_id = self.next_req_id.wrapping_add(1) & 0xffff_ffff;
        self.next_req_id
    }

    fn poll(&mut self, name: &str, v: &mut StandbyVolume, now: u64) -> bool {
        let mut busy = false;
        for l in &mut self.links {
            busy |= drive_link(name, l, v, now);
            let frames = l.conn.stats().frames_received;
            if frames != l.rx_frames || !l.held.is_empty() {
                // Heard, or not read (ops held back by the receive window): not silent.
                l.rx_frames = frames;
                l.heard_ns = now;
            } else if now.saturating_sub(l.heard_ns) > RELAY_SILENT_NS {
                l.close
                    .get_or_insert_with(|| format!("relay silent for {} ms", RELAY_SILENT_NS / 1_000_000));
            }
            if v.promoted() {
                // Relays reconnect and are refused: their generation is older now.
                l.close
                    .get_or_insert_with(|| format!("the standby was promoted (generation {})", v.generation()));
            }
        }
        let durable = v.durable_lsn();
        let mut i = 0;
        while i < self.links.len() {
            if let Some(why) = self.links[i].close.clone() {
                let mut l = self.links.swap_remove(i);
                log::warn!("standby {name}: relay {}: link closed: {why}", l.peer);
                l.life.down(&why, now);
                if v.promoted() {
                    // Say why, with the new generation: the relay takes it as its own and
                    // fences the old primary off now, not at its next reconnect.
                    let r = listen::refused(RefuseReason::StaleGeneration, v.generation());
                    l.conn.send_last(wire::encode_hello_reply(&r));
                } else {
                    l.conn.close();
                }
                let _ = l.conn.poll_send(&mut |_| {});
                self.remember_closed(l.status(durable, now));
                busy = true;
                continue;
            }
            i += 1;
        }
        let next = v.next_lsn();
        if !self.links.is_empty() && self.links.iter().all(|l| l.lacks == next) && v.skip_unheld_hole().is_some() {
            busy = true;
        }
        if self.links.len() >= self.peak_links || now.saturating_sub(self.peak_ns) > PEAK_LINKS_WINDOW_NS {
            self.peak_links = self.links.len();
            self.peak_ns = now;
        }
        let next = v.next_lsn();
        if next != self.progress_lsn || self.progress_ns == 0 {
            self.progress_lsn = next;
            self.progress_ns = now;
            self.pull_interval_ns = STALL_NS;
        }
        // Every relay of the volume learns what is safe.
        let generation = v.generation();
        for l in &mut self.links {
            if durable > l.safe_sent {
                let s = SafeUpTo {
                    lsn: durable,
                    generation,
                };
                if l.conn.send(OutFrame::control(wire::encode_safe_up_to(&s), 0)).is_ok() {
                    l.safe_sent = durable;
                    busy = true;
                }
            }
            if l.pull
                .as_ref()
                .is_some_and(|p| now.saturating_sub(p.sent_ns) > GAP_REQUEST_TIMEOUT_NS)
            {
                l.pull = None;
            }
        }
        if v.intake_open() && !self.links.is_empty() {
            busy |= self.fetch_holes(v, now);
            if self.drain.as_ref().is_some_and(|d| d.active()) {
                busy |= self.pull_drain(v, now);
            } else {
                busy |= self.pull_on_stall(v, now);
            }
        }
        for l in &mut self.links {
            if let Err(e) = l.conn.poll_send(&mut |_| {}) {
                l.close.get_or_insert_with(|| e.to_string());
            }
        }
        busy
    }

    /// Failover drain: every relay is first fenced (told the generation the standby will
    /// be promoted to; it drops the old primary and answers); then every relay fenced, not
    /// yet drained and without a request outstanding is asked for what follows the next
    /// LSN, whatever its forward policy; replies that carry ops are chained (one round
    /// trip per frame) until it answers `not_held`.
    fn pull_drain(&mut self, v: &StandbyVolume, now: u64) -> bool {
        let first = v.next_lsn();
        let generation = self.drain.as_ref().map_or(0, |d| d.generation());
        let mut busy = false;
        for i in 0..self.links.len() {
            if !self.links[i].fence_sent {
                busy |= self.links[i].fence(generation);
            }
            if !self.links[i].fenced(generation) || self.links[i].drained || self.links[i].pull.is_some() {
                continue;
            }
            let id = self.req_id();
            busy |= self.links[i].request(id, first, first + PULL_SPAN_LSN - 1, true, now);
        }
        busy
    }

    /// Asks one relay (backups first, in turn) for each hole `gaps()` reports.
    fn fetch_holes(&mut self, v: &StandbyVolume, now: u64) -> bool {
        self.gap_asked.retain(|&(_, at)| now.saturating_sub(at) < GAP_RETRY_NS);
        let mut busy = false;
        for g in v.gaps(now, GAPS_PER_POLL) {
            if self.gap_asked.iter().any(|&(f, _)| f == g.lsn_first) {
                continue;
            }
            let Some(li) = pick_link(&self.links, self.rr, now) else {
                break;
            };
            self.rr = li + 1;
            let id = self.req_id();
            if self.links[li].request(id, g.lsn_first, g.lsn_last, false, now) {
                self.gap_asked.push((g.lsn_first, now));
                busy = true;
            }
        }
        busy
    }

    /// No progress for a while: ask every free relay for what follows, unless that is
    /// the forwarder's policy at work (see [`pull::stall_pull_wanted`]).
    fn pull_on_stall(&mut self, v: &StandbyVolume, now: u64) -> bool {
        if now.saturating_sub(self.progress_ns) < STALL_NS
            || now.saturating_sub(self.last_pull_ns) < self.pull_interval_ns
        {
            return false;
        }
        let reports: Vec<pull::RelayReport> = self
            .links
            .iter()
            .map(|l| pull::RelayReport {
                forward: l.fresh_fwd(now),
                held_lsn: l.held_lsn,
                first_due: l.fwd.is_none() && now.saturating_sub(l.since_ns) < REPORT_FRESH_NS,
            })
            .collect();
        let verdict = pull::stall_pull_wanted(&reports, v.next_lsn(), now.saturating_sub(self.progress_ns));
        self.stall_verdicts[verdict as usize] += 1;
        if verdict == pull::StallVerdict::Pull && reports.iter().any(|r| r.forward.is_none()) {
            self.stall_verdicts[4] += 1;
        }
        if verdict == pull::StallVerdict::PolicyHold {
            // Held back by policy is not stalled: once the forwarder delivers again it gets
            // its full FORWARDER_STALL_NS from here, not from the last op before the hold
            // (else the first check after a window opens pulls what is on its way).
            self.progress_ns = now;
        }
        if verdict != pull::StallVerdict::Pull {
            // Look again after one more stall period.
            self.last_pull_ns = now;
            return false;
        }
        self.last_pull_ns = now;
        let first = v.next_lsn();
        let view: Vec<pull::StallLink> = self
            .links
            .iter()
            .map(|l| pull::StallLink {
                free: l.pull.is_none(),
                chain_pull: l.pull.as_ref().is_some_and(|p| p.chain),
                reported: l.fresh_fwd(now).is_some(),
                held_lsn: l.held_lsn,
            })
            .collect();
        let Some(t) = pull::stall_targets(&view, self.rr, first) else {
            return false;
        };
        self.pull_interval_ns = (self.pull_interval_ns * 2).min(PULL_INTERVAL_MAX_NS);
        let mut busy = false;
        for i in t.ask {
            let id = self.req_id();
            busy |= self.links[i].request(id, first, first + PULL_SPAN_LSN - 1, true, now);
        }
        if let Some(b) = t.best {
            self.rr = b + 1;
        }
        busy
    }
}

/// The link to ask for a hole: the first without a request outstanding from
/// `start` on (wrapping), preferring links that are not forwarding now.
fn pick_link(links: &[Link], start: usize, now: u64) -> Option<usize> {
    let n = links.len();
    let free = |i: &usize| links[*i].pull.is_none();
    let mut order = (0..n).map(|k| (start + k) % n);
    order
        .clone()
        .filter(free)
        .find(|&i| !links[i].forwarding(now))
        .or_else(|| order.find(free))
}

struct ReactorNet {
    vols: BTreeMap<String, VolNet>,
}

/// How often an idle standby reactor wakes even if no socket does: gap requests, stall
/// verdicts, silent-relay and drain time-outs are timers (`docs/architecture.md`, "Idle
/// reactors"). Relays send `PrimaryLiveness` every 100 ms anyway.
pub const IDLE_TICK_NS: u64 = 10_000_000;

/// After a pass of an fd-driven standby poller: nap only if something could not be
/// watched, run again at once if frames wait in a buffer, else within the tick.
fn arm(all: bool, buffered: bool, now: u64) {
    if !all {
        reactor::cannot_watch();
    }
    reactor::wake_by(if buffered { now } else { now + IDLE_TICK_NS });
}

impl ReactorNet {
    fn wait_list(&self, out: &mut Vec<(std::os::fd::RawFd, engine::reactor::Interest)>) -> (bool, bool) {
        out.clear();
        let mut all = true;
        let mut buffered = false;
        for l in self.vols.values().flat_map(|v| v.links.iter()) {
            match l.conn.wait_interest() {
                Some(w) => out.push(w),
                None => all &= !l.conn.is_rdma(),
            }
            buffered |= l.conn.has_buffered();
        }
        (all, buffered)
    }

    fn poll(&mut self) -> PollStatus {
        let now = now_ns();
        let mut busy = false;
        let mut gone: Vec<String> = Vec::new();
        for (name, vn) in self.vols.iter_mut() {
            let Some(vol) = registry::local_volume(name) else {
                gone.push(name.clone());
                continue;
            };
            let Ok(mut v) = vol.try_borrow_mut() else {
                continue;
            };
            busy |= vn.poll(name, &mut v, now);
        }
        for name in gone {
            if let Some(vn) = self.vols.remove(&name) {
                for mut l in vn.links {
                    log::warn!(
                        "standby {name}: relay {}: link closed: the standby volume was deleted",
                        l.peer
                    );
                    l.conn.close();
                }
            }
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

thread_local! {
    static NET: RefCell<Option<Rc<RefCell<ReactorNet>>>> = const { RefCell::new(None) };
}

/// This reactor's link table, created (with its poller) on first use.
fn reactor_net() -> Rc<RefCell<ReactorNet>> {
    NET.with(|n| {
        n.borrow_mut()
            .get_or_insert_with(|| {
                let rn = Rc::new(RefCell::new(ReactorNet { vols: BTreeMap::new() }));
                let r2 = rn.clone();
                let mut watch = reactor::WatchSet::new();
                let mut fds = Vec::new();
                reactor::register_fd_poller("standby_net", None, move || match r2.try_borrow_mut() {
                    Ok(mut r) => {
                        let status = r.poll();
                        let (all, buffered) = r.wait_list(&mut fds);
                        watch.sync(&fds);
                        arm(all, buffered, now_ns());
                        status
                    }
                    Err(_) => {
                        reactor::cannot_watch();
                        PollStatus::Idle
                    }
                });
                rn
            })
            .clone()
    })
}

/// Status of the links of `volume` (open ones first, then recently closed).
/// Call on the volume's reactor.
pub fn link_status(volume: &str, durable_lsn: u64) -> Vec<LinkStatus> {
    let now = now_ns();
    NET.with(|n| {
        let n = n.borrow();
        let Some(rn) = n.as_ref() else { return Vec::new() };
        let Ok(rn) = rn.try_borrow() else { return Vec::new() };
        let Some(vn) = rn.vols.get(volume) else {
            return Vec::new();
        };
        vn.links
            .iter()
            .map(|l| l.status(durable_lsn, now))
            .chain(vn.closed.iter().cloned())
            .collect()
    })
}

/// Adds the network side to a `standby_get_status` object: `listen`,
/// `links`, and `relay_lsn_max` / `relay_lag_lsn` (highest LSN a connected
/// relay sent, and how far the durable LSN is behind it).
pub fn annotate_status(v: &StandbyVolume, status: &mut Value) {
    let durable = v.durable_lsn();
    let links = link_status(v.name(), durable);
    let verdicts = NET.with(|n| {
        let n = n.borrow();
        let rn = n.as_ref()?.try_borrow().ok()?;
        rn.vols.get(v.name()).map(|vn| vn.stall_verdicts)
    });
    let relay_max = links
        .iter()
        .filter(|l| l.connected)
        .map(|l| l.lsn_offered_max)
        .max()
        .unwrap_or(0);
    if let Value::Object(m) = status {
        let listen = *LISTEN.lock().unwrap_or_else(|e| e.into_inner());
        m.insert("listen".into(), listen.map(|a| a.to_string()).into());
        m.insert("relay_lsn_max".into(), relay_max.into());
        m.insert("relay_lag_lsn".into(), relay_max.saturating_sub(durable).into());
        m.insert("links".into(), serde_json::to_value(links).unwrap_or(Value::Null));
        let [pulls, holds, nothing, waits, stale] = verdicts.unwrap_or_default();
        m.insert(
            "stall_verdicts".into(),
            serde_json::json!({"pulled": pulls, "policy_hold": holds, "nothing_more": nothing,
                               "forwarder_delivering": waits, "pulled_report_stale": stale}),
        );
    }
}
