//! The NVMe/TCP target's listeners and poll groups: the accept poller hands each new
//! socket to a reactor, whose poll group polls its connections; and the per-group counters
//! `nvmf_get_stats` reports (`docs/nvme-tcp.md`).

use super::request::REQ_STATE_COUNTERS;
use super::{Conn, ConnPoll, ACCEPTS_PER_POLL, ACCEPT_POLL_PERIOD_US};
use crate::nvmf::{ListenerHandle, Target, TargetError};
use engine::reactor::{self, FdWatch, Interest, PollStatus, PollerId};
use engine::wait::{Epoll, ReadyEvent, NO_EVENT};
use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters of one poll group (SPDK `nvmf_get_stats` names). Written by its reactor only.
#[derive(Default)]
pub struct GroupStats {
    pub core: u32,
    pub admin_qpairs: AtomicU64,
    pub io_qpairs: AtomicU64,
    pub current_admin_qpairs: AtomicU64,
    pub current_io_qpairs: AtomicU64,
    pub pending_bdev_io: AtomicU64,
    pub completed_nvme_io: AtomicU64,
    pub connections: AtomicU64,
    pub term_reqs_sent: AtomicU64,
    /// Requests in each state now (`REQ_STATE_NAMES` order).
    pub req_states: [AtomicU64; REQ_STATE_COUNTERS],
    /// Times a request found its data buffer pool empty and waited (back-pressure).
    pub buffer_waits: AtomicU64,
    /// Socket reads that found nothing. The receive gate keeps these to at most 16 per
    /// stretch in which a connection has nothing to send (not one per poll).
    pub empty_reads: AtomicU64,
}

static GROUP_STATS: Mutex<Vec<Arc<GroupStats>>> = Mutex::new(Vec::new());

/// The stats of every poll group created so far (management path).
pub fn group_stats() -> Vec<Arc<GroupStats>> {
    GROUP_STATS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Adds `d` (which may be negative) to a poll group counter (both transports' groups).
pub(crate) fn bump(a: &AtomicU64, d: i64) {
    if d >= 0 {
        a.fetch_add(d as u64, Ordering::Relaxed);
    } else {
        a.fetch_sub((-d) as u64, Ordering::Relaxed);
    }
}

/// Binds `addr` and starts the accept poller on the first reactor. Management path.
pub(crate) fn start_listener(
    target: Arc<Target>,
    addr: SocketAddr,
    secure: bool,
) -> Result<ListenerHandle, TargetError> {
    let cores = reactor::cores();
    if cores.is_empty() {
        return Err(TargetError::NoReactors(
            "start reactors before adding a listener".into(),
        ));
    }
    // The data buffer pools exist before the first connection (made with the transport,
    // or here for a target that listens with the default options).
    super::make_pools(&target.transport_opts())?;
    let err = |e: std::io::Error| TargetError::Listen {
        addr,
        why: e.to_string(),
    };
    let l = TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    let bound = l.local_addr().map_err(err)?;
    let closed = Arc::new(AtomicBool::new(false));
    let c2 = closed.clone();
    reactor::send_msg(cores[0], move || {
        let id: Rc<Cell<Option<PollerId>>> = Rc::new(Cell::new(None));
        let id2 = id.clone();
        // An idle reactor sleeps until the listener is readable (a connection waits).
        let mut watch = reactor::watch_fd(l.as_raw_fd(), Interest::READABLE)
            .map_err(|e| log::warn!("nvmf: {e}; the accept poller keeps its reactor napping"))
            .ok();
        let mut l = Some(l);
        let register = if watch.is_some() {
            reactor::register_fd_poller
        } else {
            reactor::register_poller
        };
        let pid = register(
            "nvmf_tcp_accept",
            Some(Duration::from_micros(ACCEPT_POLL_PERIOD_US)),
            move || {
                if c2.load(Ordering::Acquire) {
                    if let Some(pid) = id2.get() {
                        reactor::unregister_poller(pid);
                    }
                    drop(watch.take());
                    l = None; // closes the socket
                    return PollStatus::Idle;
                }
                match l.as_ref() {
                    Some(l) => accept_some(l, &target, &cores, bound, secure),
                    None => PollStatus::Idle,
                }
            },
        );
        id.set(Some(pid));
    })
    .map_err(|e| TargetError::NoReactors(format!("{e:?}")))?;
    let tls = if secure {
        " (secure channel: TLS 1.3 with a PSK required)"
    } else {
        ""
    };
    log::info!("nvmf: TCP listener on {bound}{tls}");
    Ok(ListenerHandle {
        addr: bound,
        closed,
        secure,
        rdma: false,
    })
}

fn accept_some(l: &TcpListener, target: &Arc<Target>, cores: &[u32], listen: SocketAddr, secure: bool) -> PollStatus {
    let mut status = PollStatus::Idle;
    for _ in 0..ACCEPTS_PER_POLL {
        match l.accept() {
            Ok((sock, peer)) => {
                status = PollStatus::Busy;
                if sock.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let i = target.next_core.fetch_add(1, Ordering::Relaxed) as usize % cores.len();
                let t = target.clone();
                let add = move || match Conn::new(t, sock, listen, peer, secure) {
                    Ok(c) => group_add(c),
                    Err(e) => log::warn!("nvmf: dropping connection from {peer}: {e}"),
                };
                if let Err(e) = reactor::send_msg(cores[i], add) {
                    log::warn!(
                        "nvmf: dropping connection from {peer}: reactor {} unreachable: {e:?}",
                        cores[i]
                    );
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("nvmf: accept on {listen} failed: {e}");
                break;
            }
        }
    }
    status
}

/// Tells the reactor what `conn` waits for before it may sleep: its socket readable,
/// and writable too while replies are queued; bdev retries cannot be watched.
fn arm(conn: &Conn, watch: &mut Option<FdWatch>) {
    let Some(w) = watch else {
        reactor::cannot_watch();
        return;
    };
    let tls = conn.tls.as_deref();
    let queued = conn.tx_pos < conn.tx.len() || tls.is_some_and(|t| t.pending_out());
    w.set_interest(if queued { Interest::BOTH } else { Interest::READABLE });
    // Bytes already taken off the socket wake nothing: nap, and read them next pass.
    if conn.io.retry_pending() || tls.is_some_and(|t| t.buffered_in()) {
        reactor::cannot_watch();
    }
}

/// One reactor's connections.
pub(super) struct PollGroup {
    pub(super) conns: Vec<Conn>,
    /// `watches[i]` wakes the idle reactor for `conns[i]`'s socket (`None` if it could not
    /// be watched: the group then keeps its reactor napping instead of sleeping).
    watches: Vec<Option<FdWatch>>,
    /// The receive gate: every connection's socket, token = its index in `conns`.
    rx_ready: RxReady,
    stats: Arc<GroupStats>,
}

/// Events one readiness call of a poll group reports; more wait for the next poll.
const RX_READY_EVENTS: usize = 64;

/// The receive gate of a poll group. A connection whose reads found its socket empty
/// `RX_EMPTY_READS_BEFORE_GATE` times in a row is not read again until this set reports
/// the socket readable: one `epoll_wait` (zero timeout, no socket lock) per poll for the
/// whole group, instead of one empty `recv` per idle connection. A connection with
/// commands coming is read without asking, so its commands cost no extra call
/// (`docs/nvme-tcp.md`).
struct RxReady {
    /// `None` when epoll is unavailable: every connection is then read on every poll.
    epoll: Option<Epoll>,
    events: [ReadyEvent; RX_READY_EVENTS],
}

impl RxReady {
    fn new() -> RxReady {
        RxReady {
            epoll: Epoll::new()
                .map_err(|e| log::warn!("nvmf: no epoll for the receive gate ({e}); reading every poll"))
                .ok(),
            events: [NO_EVENT; RX_READY_EVENTS],
        }
    }

    /// Watches `conn`, at `index` in the group (setup path).
    fn add(&self, conn: &mut Conn, index: usize) {
        let Some(ep) = &self.epoll else { return };
        conn.rx_watched = ep
            .add_token(conn.sock.as_raw_fd(), index as u64, Interest::READABLE)
            .map_err(|e| log::warn!("nvmf: {}: not gated ({e}); read every poll", conn.peer))
            .is_ok();
    }

    /// `conn` moved to `index` (a removal swapped it there).
    fn moved(&self, conn: &mut Conn, index: usize) {
        if let (Some(ep), true) = (&self.epoll, conn.rx_watched) {
            if ep
                .modify_token(conn.sock.as_raw_fd(), index as u64, Interest::READABLE)
                .is_err()
            {
                conn.rx_watched = false;
                conn.rx_gated = false;
            }
        }
    }

    fn remove(&self, conn: &Conn) {
        if let (Some(ep), true) = (&self.epoll, conn.rx_watched) {
            ep.remove(conn.sock.as_raw_fd());
        }
    }

    /// Opens the gate of every gated connection whose socket is readable now.
    fn open(&mut self, conns: &mut [Conn]) {
        if !conns.iter().any(|c| c.rx_gated) {
            return;
        }
        let Some(ep) = &self.epoll else { return };
        match ep.ready(&mut self.events) {
            Ok(n) => {
                for ev in &self.events[..n] {
                    if let Some(c) = conns.get_mut(ev.u64 as usize) {
                        c.rx_gated = false;
                    }
                }
            }
            Err(e) => {
                log::warn!("nvmf: receive gate: {e}; reading every connection");
                conns.iter_mut().for_each(|c| c.rx_gated = false);
            }
        }
    }
}

/// How often a sleeping reactor with connections wakes anyway: state other threads
/// change without a message (a controller failed through its admin queue, an
/// asynchronous event to report) and the keep-alive and authentication timers are
/// checked this often. Far below any KATO; ten wake-ups a second cost nothing.
const IDLE_TICK_NS: u64 = 100_000_000;

thread_local! {
    pub(super) static GROUP: RefCell<Option<PollGroup>> = const { RefCell::new(None) };
}

/// Adds a connection to the calling reactor's poll group (creating the group and its
/// poller on first use). Runs on the reactor, from a message.
fn group_add(mut conn: Box<Conn>) {
    GROUP.with(|g| {
        let mut g = g.borrow_mut();
        let g = g.get_or_insert_with(|| {
            let stats = Arc::new(GroupStats {
                core: reactor::current_core().unwrap_or(0),
                ..GroupStats::default()
            });
            GROUP_STATS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stats.clone());
            reactor::register_fd_poller("nvmf_tcp_poll_group", None, group_poll);
            PollGroup {
                conns: Vec::new(),
                watches: Vec::new(),
                rx_ready: RxReady::new(),
                stats,
            }
        });
        conn.stats = Some(g.stats.clone());
        conn.core = reactor::current_core().unwrap_or(0);
        bump(&g.stats.connections, 1);
        let watch = reactor::watch_fd(conn.sock.as_raw_fd(), Interest::READABLE)
            .map_err(|e| {
                log::warn!(
                    "nvmf: {e}; this reactor will not sleep while {} is connected",
                    conn.peer
                )
            })
            .ok();
        g.watches.push(watch);
        g.rx_ready.add(&mut conn, g.conns.len());
        g.conns.push(*conn);
    });
}

fn group_poll() -> PollStatus {
    GROUP.with(|g| {
        let mut g = g.borrow_mut();
        let Some(g) = g.as_mut() else { return PollStatus::Idle };
        if g.conns.is_empty() {
            return PollStatus::Idle;
        }
        let now = engine::clock::now_ns();
        g.rx_ready.open(&mut g.conns);
        let mut busy = false;
        let mut i = 0;
        while i < g.conns.len() {
            match g.conns[i].poll(now) {
                ConnPoll::Busy => busy = true,
                ConnPoll::Idle => {}
                ConnPoll::Dead => {
                    bump(&g.stats.connections, -1);
                    g.rx_ready.remove(&g.conns[i]);
                    g.watches.swap_remove(i);
                    g.conns.swap_remove(i);
                    if let Some(c) = g.conns.get_mut(i) {
                        g.rx_ready.moved(c, i);
                    }
                    continue;
                }
            }
            arm(&g.conns[i], &mut g.watches[i]);
            i += 1;
        }
        reactor::wake_by(now + IDLE_TICK_NS);
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    })
}
