//! The NVMe/TCP transport of the target: listeners, per-reactor poll groups and the
//! connection / request state machines.
//!
//! Data path: an accept poller (on the first reactor) takes new sockets and hands them
//! round-robin to the reactors with `send_msg`. Each reactor has one poll group, a poller that
//! walks its connections: read what the socket has, run it through the [`PduReceiver`], act
//! on each PDU (submit to the namespace's bdev channel, send an R2T, answer an admin
//! command), reap bdev completions, then write out what is queued. Sockets are non-blocking;
//! nothing here blocks, locks or allocates per I/O (buffers come from pools allocated once;
//! the admin path allocates, it is not the I/O path).
//!
//! One connection = one queue (admin or I/O) of one controller. A request moves through
//! `ReqState`; a connection through `Phase`.

use super::ctrlr::{data_out_len, AdminResult, Controller, QueueInfo, AER_MAX};
use super::io::{self, IoCmd, NsGeometry};
use super::keepalive::TrafficNote;
use super::restart::{self, RestartPointError, RestartPointSink};
use super::{ListenerHandle, Subsystem, SubsystemKind, Target, TargetError, TransportOpts};
use crate::spec::cmd::{admin_opc, io_opc, sgl_type};
use crate::spec::fabrics::{self, fctype, ConnectCmd, ConnectData};
use crate::spec::{get_str, Cqe, Plain, Sqe, Status};
use crate::tcp::pdu::{self, fes, PduError, PduKind, PduReceiver, RxEvent, RxLimits, Side, TxDigests};
use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use engine::buf::{BufPool, DmaBuf};
use engine::reactor::{self, PollStatus, PollerId};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// I/O queue entries (MQES + 1).
pub const QUEUE_DEPTH_MAX: u16 = 128;
/// Admin queue entries.
pub const ADMIN_QUEUE_DEPTH_MAX: u16 = 128;
/// I/O queues per controller.
pub const IO_QUEUES_MAX: u16 = 64;
/// In-capsule data per command, bytes (Linux sends up to 8 KiB in-capsule on the admin queue).
pub const IN_CAPSULE_DATA_BYTES: u32 = 8192;
/// Largest transfer per command `max_io_size` may set, bytes (MDTS 10 with 4 KiB pages).
pub const MAX_IO_BYTES: u32 = 4 * 1024 * 1024;
/// Default largest transfer per command, bytes (MDTS 8 with 4 KiB pages): what nvme-cli and
/// the kernel send as one command without splitting (`nvme read/write --data-size=1M`).
pub const DEFAULT_MAX_IO_BYTES: u32 = 1024 * 1024;
/// Largest C2HData payload the target sends; longer reads go out in several PDUs.
const C2H_PDU_BYTES: usize = 128 * 1024;
/// MAXH2CDATA announced in ICResp, bytes.
pub const MAXH2CDATA_BYTES: u32 = 128 * 1024;
/// Socket read size per call, bytes.
const RX_BUF_BYTES: usize = 256 * 1024;
/// Reads per connection per poll (bounds one connection's share of a poll).
const RX_READS_PER_POLL: usize = 4;
/// Above this many queued bytes, stop reading commands until the socket drains.
const TX_HIGH_WATER_BYTES: usize = 4 * 1024 * 1024;
/// Initial capacity of a connection's send buffer, bytes.
const TX_INITIAL_BYTES: usize = 256 * 1024;
/// Connections accepted per accept poll.
const ACCEPTS_PER_POLL: usize = 16;
/// How often the accept poller runs.
const ACCEPT_POLL_PERIOD_US: u64 = 1000;
/// Buffer pools shared by all poll groups: small buffers for in-capsule and admin data,
/// large ones for I/O up to 128 KiB, huge ones up to the default MDTS. Transfers above that
/// (only with a larger `max_io_size`) come from the heap.
const SMALL_BUF_BYTES: usize = IN_CAPSULE_DATA_BYTES as usize;
const SMALL_BUF_COUNT: usize = 4096;
const LARGE_BUF_BYTES: usize = 128 * 1024;
const LARGE_BUF_COUNT: usize = 512;
const HUGE_BUF_BYTES: usize = DEFAULT_MAX_IO_BYTES as usize;
const HUGE_BUF_COUNT: usize = 32;

type Pools = [Option<&'static BufPool>; 3];
static POOLS: OnceLock<Pools> = OnceLock::new();

/// Takes a buffer of `len` bytes from the shared pools (falls back to the heap when a
/// pool is exhausted, so a burst degrades to allocation instead of stalling).
pub(crate) fn get_buf(len: u32) -> DmaBuf {
    let [small, large, huge] = *POOLS.get_or_init(|| {
        [
            BufPool::new("nvmf_tcp_small", SMALL_BUF_COUNT, SMALL_BUF_BYTES).ok(),
            BufPool::new("nvmf_tcp_large", LARGE_BUF_COUNT, LARGE_BUF_BYTES).ok(),
            BufPool::new("nvmf_tcp_huge", HUGE_BUF_COUNT, HUGE_BUF_BYTES).ok(),
        ]
    });
    let len = len as usize;
    let pool = if len <= SMALL_BUF_BYTES {
        small
    } else if len <= LARGE_BUF_BYTES {
        large
    } else if len <= HUGE_BUF_BYTES {
        huge
    } else {
        None
    };
    let mut b = pool.and_then(|p| p.get()).unwrap_or_else(|| DmaBuf::alloc(len));
    b.set_len(len);
    b
}

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
}

static GROUP_STATS: Mutex<Vec<Arc<GroupStats>>> = Mutex::new(Vec::new());

/// The stats of every poll group created so far (management path).
pub fn group_stats() -> Vec<Arc<GroupStats>> {
    GROUP_STATS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn bump(a: &AtomicU64, d: i64) {
    if d >= 0 {
        a.fetch_add(d as u64, Ordering::Relaxed);
    } else {
        a.fetch_sub((-d) as u64, Ordering::Relaxed);
    }
}

/// Binds `addr` and starts the accept poller on the first reactor. Management path.
pub(crate) fn start_listener(target: Arc<Target>, addr: SocketAddr) -> Result<ListenerHandle, TargetError> {
    let cores = reactor::cores();
    if cores.is_empty() {
        return Err(TargetError::NoReactors(
            "start reactors before adding a listener".into(),
        ));
    }
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
        let mut l = Some(l);
        let pid = reactor::register_poller(
            "nvmf_tcp_accept",
            Some(Duration::from_micros(ACCEPT_POLL_PERIOD_US)),
            move || {
                if c2.load(Ordering::Acquire) {
                    if let Some(pid) = id2.get() {
                        reactor::unregister_poller(pid);
                    }
                    l = None; // closes the socket
                    return PollStatus::Idle;
                }
                match l.as_ref() {
                    Some(l) => accept_some(l, &target, &cores, bound),
                    None => PollStatus::Idle,
                }
            },
        );
        id.set(Some(pid));
    })
    .map_err(|e| TargetError::NoReactors(format!("{e:?}")))?;
    log::info!("nvmf: TCP listener on {bound}");
    Ok(ListenerHandle { addr: bound, closed })
}

fn accept_some(l: &TcpListener, target: &Arc<Target>, cores: &[u32], listen: SocketAddr) -> PollStatus {
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
                if let Err(e) = reactor::send_msg(cores[i], move || group_add(Conn::new(t, sock, listen, peer))) {
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

/// One reactor's connections.
struct PollGroup {
    conns: Vec<Conn>,
    stats: Arc<GroupStats>,
}

thread_local! {
    static GROUP: RefCell<Option<PollGroup>> = const { RefCell::new(None) };
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
            reactor::register_poller("nvmf_tcp_poll_group", None, group_poll);
            PollGroup {
                conns: Vec::new(),
                stats,
            }
        });
        conn.stats = Some(g.stats.clone());
        conn.core = reactor::current_core().unwrap_or(0);
        bump(&g.stats.connections, 1);
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
        let mut busy = false;
        let mut i = 0;
        while i < g.conns.len() {
            match g.conns[i].poll(now) {
                ConnPoll::Busy => busy = true,
                ConnPoll::Idle => {}
                ConnPoll::Dead => {
                    bump(&g.stats.connections, -1);
                    g.conns.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    })
}

/// Runs on the reactor of connection `conn` (a message from the sink's `done`): completes
/// its restart point in `slot` if the connection and the request are still there.
fn restart_point_answer(conn: u64, slot: usize, seq: u64, res: Result<u64, RestartPointError>) {
    GROUP.with(|g| {
        let Ok(mut g) = g.try_borrow_mut() else {
            log::error!("nvmf: restart point answer arrived inside the poll group; dropped");
            return;
        };
        if let Some(c) = g.as_mut().and_then(|g| g.conns.iter_mut().find(|c| c.id == conn)) {
            c.on_restart_point(slot, seq, res);
        }
    });
}

/// Lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for ICReq.
    AwaitIcReq,
    /// Initialized: capsules flow (Connect first, then the queue's commands).
    Ready,
    /// Closing: the socket is shut; waiting for in-flight bdev I/O before being dropped.
    Closing,
}

/// Lifecycle of one request (one command on this queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    /// Slot unused.
    Free,
    /// Command capsule received; its in-capsule data is arriving.
    RecvInCapsule,
    /// R2T sent; `received` of `total` bytes have arrived in H2CData PDUs.
    AwaitH2C { received: u32, total: u32 },
    /// Submitted to the bdev: `pending` bdev operations outstanding.
    Executing { pending: u32 },
    /// Handed to the namespace's restart point sink; waiting for its answer number `seq`
    /// of this connection (a late answer for an earlier use of the slot is ignored).
    AwaitRestartPoint { seq: u64 },
}

struct Req {
    state: ReqState,
    sqe: Sqe,
    /// In-capsule data bytes that came with the command.
    in_capsule: u32,
    /// Data from the host (write, compare, DSM, admin) or for the host (read).
    buf: Option<DmaBuf>,
    /// Compare: what the bdev read.
    buf2: Option<DmaBuf>,
    cmd: IoCmd,
    /// Index into the queue's channel table.
    chan: usize,
    /// First error seen (data digest, bdev error).
    status: Status,
    /// AwaitRestartPoint: when the command gives up waiting (`engine::clock` ns).
    deadline_ns: u64,
}

impl Req {
    fn new() -> Req {
        Req {
            state: ReqState::Free,
            sqe: Sqe::default(),
            in_capsule: 0,
            buf: None,
            buf2: None,
            cmd: IoCmd::Flush,
            chan: 0,
            status: Status::SUCCESS,
            deadline_ns: 0,
        }
    }
}

/// Where the data of the PDU being received goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxSink {
    None,
    Capsule { slot: usize, off: u32 },
    H2C { slot: usize, off: u32 },
    Discard,
}

/// A protocol violation that ends the connection with a C2HTermReq.
#[derive(Debug, Clone, Copy)]
struct Fatal {
    fes: u16,
    fei: u32,
}

impl From<PduError> for Fatal {
    fn from(e: PduError) -> Fatal {
        Fatal {
            fes: e.fes(),
            fei: e.fei(),
        }
    }
}

enum ConnPoll {
    Busy,
    Idle,
    Dead,
}

struct NsEntry {
    nsid: u32,
    geo: NsGeometry,
    chan: usize,
}

struct ChanEntry {
    bdev: Arc<dyn Bdev>,
    chan: BdevChannel,
    used: bool,
    /// The bdev's restart point sink (replicated volumes), as of `Conn::sink_gen`.
    sink: Option<Arc<dyn RestartPointSink>>,
}

/// User data bit marking the compare read (lands in `buf2`).
const UD_BUF2: u64 = 1 << 32;

/// Connection identities (restart point answers find their connection by it).
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

struct Conn {
    target: Arc<Target>,
    opts: TransportOpts,
    sock: TcpStream,
    listen: SocketAddr,
    peer: SocketAddr,
    phase: Phase,
    rx: PduReceiver,
    rx_buf: Box<[u8]>,
    sink: RxSink,
    tx: Vec<u8>,
    tx_pos: usize,
    dg: TxDigests,
    ctrlr: Option<Arc<Controller>>,
    qid: u16,
    sq_entries: u16,
    sqhd: u16,
    reqs: Vec<Req>,
    free: Vec<usize>,
    /// Parked Asynchronous Event Requests (CIDs), admin queue only.
    aers: Vec<u16>,
    ns: Vec<NsEntry>,
    ns_gen: u64,
    chans: Vec<ChanEntry>,
    /// Requests the bdev channel handed back as full, resubmitted after the next poll.
    retry: VecDeque<(usize, IoRequest)>,
    done: Vec<IoCompletion>,
    stats: Option<Arc<GroupStats>>,
    /// Unique per process: restart point answers come back to it by message.
    id: u64,
    /// The reactor running this connection (set when it joins a poll group).
    core: u32,
    /// Restart points handed out so far (tags the answers).
    rp_seq: u64,
    /// Requests in AwaitRestartPoint.
    rp_pending: u32,
    /// `restart::generation()` the channels' sinks were looked up at.
    sink_gen: u64,
    /// Commands arrived since the last poll (traffic-based keep-alive).
    traffic: bool,
    /// When this queue last restarted its controller's keep-alive timer.
    ka_note: TrafficNote,
}

impl Conn {
    fn new(target: Arc<Target>, sock: TcpStream, listen: SocketAddr, peer: SocketAddr) -> Box<Conn> {
        let opts = target.transport_opts();
        let limits = RxLimits {
            in_capsule_data_bytes: opts.in_capsule_data_size,
            h2c_data_bytes: opts.io_unit_size,
            c2h_data_bytes: 0,
        };
        log::debug!("nvmf: connection from {peer} on {listen}");
        Box::new(Conn {
            target,
            opts,
            sock,
            listen,
            peer,
            phase: Phase::AwaitIcReq,
            rx: PduReceiver::new(Side::Target, limits),
            rx_buf: vec![0u8; RX_BUF_BYTES].into_boxed_slice(),
            sink: RxSink::None,
            tx: Vec::with_capacity(TX_INITIAL_BYTES),
            tx_pos: 0,
            dg: TxDigests::default(),
            ctrlr: None,
            qid: 0,
            sq_entries: 1,
            sqhd: 0,
            reqs: vec![Req::new()],
            free: vec![0],
            aers: Vec::new(),
            ns: Vec::new(),
            ns_gen: 0,
            chans: Vec::new(),
            retry: VecDeque::new(),
            done: Vec::with_capacity(usize::from(QUEUE_DEPTH_MAX)),
            stats: None,
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            core: 0,
            rp_seq: 0,
            rp_pending: 0,
            sink_gen: 0,
            traffic: false,
            ka_note: TrafficNote::default(),
        })
    }

    fn poll(&mut self, now: u64) -> ConnPoll {
        if self.phase == Phase::Closing {
            return self.poll_closing();
        }
        let mut busy = false;
        if self.ctrlr.as_ref().is_some_and(|c| c.failed()) {
            self.close("controller failed");
            return ConnPoll::Busy;
        }
        if self.tx.len() - self.tx_pos < TX_HIGH_WATER_BYTES {
            for _ in 0..RX_READS_PER_POLL {
                match self.sock.read(&mut self.rx_buf) {
                    Ok(0) => {
                        self.close("peer closed the connection");
                        return ConnPoll::Busy;
                    }
                    Ok(n) => {
                        busy = true;
                        if let Err(f) = self.process(n) {
                            self.terminate(f);
                            return ConnPoll::Busy;
                        }
                        if self.phase == Phase::Closing {
                            return ConnPoll::Busy;
                        }
                        if n < self.rx_buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::info!("nvmf: read from {} failed: {e}", self.peer);
                        self.close("socket error");
                        return ConnPoll::Busy;
                    }
                }
            }
        }
        // Keep-alive after reading: commands (a Keep Alive among them) that waited in the
        // socket while this process was not scheduled count before the timer is judged.
        if let Some(c) = &self.ctrlr {
            if std::mem::take(&mut self.traffic) {
                self.ka_note.note(&c.ka, now);
            }
            if self.qid == 0 && c.keep_alive_expired(now) {
                c.fail("keep alive timeout (KATO + grace without a command)");
                self.close("keep alive timeout");
                return ConnPoll::Busy;
            }
        }
        busy |= self.poll_bdev();
        if self.rp_pending > 0 {
            busy |= self.expire_restart_points(now);
        }
        if !self.aers.is_empty() {
            if let Some(c) = self.ctrlr.clone() {
                while !self.aers.is_empty() {
                    let Some(ev) = c.take_event() else { break };
                    let cid = self.aers.remove(0);
                    self.respond(cid, Status::SUCCESS, ev, 0);
                    busy = true;
                }
            }
        }
        busy |= self.flush();
        if busy {
            ConnPoll::Busy
        } else {
            ConnPoll::Idle
        }
    }

    /// Runs the first `n` bytes of the receive buffer through the PDU receiver.
    fn process(&mut self, n: usize) -> Result<(), Fatal> {
        let buf = std::mem::take(&mut self.rx_buf);
        let mut input = &buf[..n];
        let res = loop {
            match self.rx.advance(input) {
                Err(e) => {
                    log::warn!("nvmf: {}: PDU error: {e}", self.peer);
                    break Err(Fatal::from(e));
                }
                Ok((used, ev)) => {
                    input = &input[used..];
                    match ev {
                        None => break Ok(()),
                        Some(ev) => {
                            if let Err(f) = self.on_event(ev) {
                                break Err(f);
                            }
                            if self.phase == Phase::Closing {
                                break Ok(());
                            }
                        }
                    }
                }
            }
        };
        self.rx_buf = buf;
        res
    }

    fn on_event(&mut self, ev: RxEvent<'_>) -> Result<(), Fatal> {
        match ev {
            RxEvent::Header(p) => match p.kind {
                PduKind::IcReq { hpda, hdgst, ddgst, .. } => {
                    if hpda > 31 {
                        return Err(Fatal {
                            fes: fes::UNSUPPORTED_PARAMETER,
                            fei: 10,
                        });
                    }
                    self.dg = TxDigests {
                        hdgst,
                        ddgst,
                        data_align: (usize::from(hpda) + 1) * 4,
                    };
                    pdu::encode_ic_resp(&mut self.tx, 0, hdgst, ddgst, self.opts.io_unit_size);
                    self.rx.set_digests(hdgst, ddgst);
                    self.phase = Phase::Ready;
                    Ok(())
                }
                PduKind::TermReq { fes, fei } => {
                    log::info!("nvmf: {} sent H2CTermReq fes={fes:#x} fei={fei:#x}", self.peer);
                    self.close("host terminated the connection");
                    Ok(())
                }
                PduKind::CapsuleCmd { sqe } => {
                    self.on_capsule(sqe, p.data_len);
                    Ok(())
                }
                PduKind::H2CData { cccid, ttag, datao, .. } => self.on_h2c(cccid, ttag, datao, p.data_len),
                // The receiver rejects controller-to-host types on the target side.
                PduKind::IcResp { .. }
                | PduKind::CapsuleResp { .. }
                | PduKind::C2HData { .. }
                | PduKind::R2T { .. } => Err(Fatal {
                    fes: fes::INVALID_HEADER_FIELD,
                    fei: 0,
                }),
            },
            RxEvent::Data(d) => {
                match &mut self.sink {
                    RxSink::Capsule { slot, off } | RxSink::H2C { slot, off } => {
                        let o = *off as usize;
                        if let Some(b) = self.reqs[*slot].buf.as_mut() {
                            b[o..o + d.len()].copy_from_slice(d);
                        }
                        *off += d.len() as u32;
                    }
                    RxSink::Discard | RxSink::None => {}
                }
                Ok(())
            }
            RxEvent::DataEnd { digest_ok } => {
                let sink = std::mem::replace(&mut self.sink, RxSink::None);
                match sink {
                    RxSink::Capsule { slot, .. } => {
                        if !digest_ok {
                            self.reqs[slot].status = Status::TRANSIENT_TRANSPORT_ERROR;
                        }
                        self.dispatch(slot);
                    }
                    RxSink::H2C { slot, off } => {
                        if !digest_ok {
                            self.reqs[slot].status = Status::TRANSIENT_TRANSPORT_ERROR;
                        }
                        if let ReqState::AwaitH2C { total, .. } = self.reqs[slot].state {
                            self.reqs[slot].state = ReqState::AwaitH2C { received: off, total };
                            if off == total {
                                if self.reqs[slot].status.is_success() {
                                    self.execute(slot);
                                } else {
                                    let s = self.reqs[slot].status;
                                    self.complete(slot, s, 0, 0);
                                }
                            }
                        }
                    }
                    RxSink::Discard | RxSink::None => {}
                }
                Ok(())
            }
        }
    }

    fn on_capsule(&mut self, sqe: Sqe, data_len: u32) {
        self.traffic = true;
        self.sqhd = (self.sqhd + 1) % self.sq_entries.max(1);
        let Some(slot) = self.free.pop() else {
            log::warn!(
                "nvmf: {}: command {} exceeds the queue depth of {}",
                self.peer,
                sqe.cid,
                self.reqs.len()
            );
            self.respond(sqe.cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            if data_len > 0 {
                self.sink = RxSink::Discard;
            }
            return;
        };
        let r = &mut self.reqs[slot];
        debug_assert_eq!(r.state, ReqState::Free);
        r.sqe = sqe;
        r.in_capsule = data_len;
        r.status = Status::SUCCESS;
        if data_len > 0 {
            r.buf = Some(get_buf(data_len));
            r.state = ReqState::RecvInCapsule;
            self.sink = RxSink::Capsule { slot, off: 0 };
        } else {
            r.state = ReqState::Executing { pending: 0 };
            self.dispatch(slot);
        }
    }

    fn on_h2c(&mut self, cccid: u16, ttag: u16, datao: u32, len: u32) -> Result<(), Fatal> {
        let slot = usize::from(ttag);
        let Some(r) = self.reqs.get(slot) else {
            log::warn!("nvmf: {}: H2CData for unknown transfer tag {ttag}", self.peer);
            return Err(Fatal {
                fes: fes::INVALID_HEADER_FIELD,
                fei: 10,
            });
        };
        let ReqState::AwaitH2C { received, total } = r.state else {
            log::warn!("nvmf: {}: H2CData for tag {ttag} that awaits no data", self.peer);
            return Err(Fatal {
                fes: fes::INVALID_HEADER_FIELD,
                fei: 10,
            });
        };
        if r.sqe.cid != cccid {
            log::warn!(
                "nvmf: {}: H2CData tag {ttag} names command {cccid}, expected {}",
                self.peer,
                r.sqe.cid
            );
            return Err(Fatal {
                fes: fes::INVALID_HEADER_FIELD,
                fei: 8,
            });
        }
        if datao != received {
            log::warn!("nvmf: {}: H2CData offset {datao}, expected {received}", self.peer);
            return Err(Fatal {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: 12,
            });
        }
        if datao.checked_add(len).is_none_or(|end| end > total) {
            log::warn!(
                "nvmf: {}: H2CData {datao}+{len} beyond the R2T's {total} bytes",
                self.peer
            );
            return Err(Fatal {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: 16,
            });
        }
        self.sink = RxSink::H2C { slot, off: datao };
        Ok(())
    }

    /// A command with all its in-capsule data: route it by queue.
    fn dispatch(&mut self, slot: usize) {
        let sqe = self.reqs[slot].sqe;
        if !self.reqs[slot].status.is_success() {
            let s = self.reqs[slot].status;
            return self.complete(slot, s, 0, 0);
        }
        if self.ctrlr.is_none() {
            if sqe.opc == admin_opc::FABRICS && sqe.fctype() == fctype::CONNECT {
                return self.connect(slot);
            }
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        }
        if self.qid == 0 {
            self.admin_cmd(slot)
        } else {
            self.io_cmd(slot)
        }
    }

    fn connect(&mut self, slot: usize) {
        match self.try_connect(slot) {
            Ok(cntlid) => self.complete(slot, Status::SUCCESS, u32::from(cntlid), 0),
            Err((status, dw0)) => self.complete(slot, status, dw0, 0),
        }
    }

    fn try_connect(&mut self, slot: usize) -> Result<u16, (Status, u32)> {
        let invalid = |in_data, off| {
            (
                Status::CONNECT_INVALID_PARAMETERS,
                fabrics::connect_invalid_param_dw0(in_data, off),
            )
        };
        let r = &self.reqs[slot];
        let cmd = ConnectCmd::from_sqe(&r.sqe);
        if cmd.recfmt != 0 {
            return Err((Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
        }
        if r.sqe.sgl.sgl_type != sgl_type::DATA_BLOCK_OFFSET {
            // Connect data must come in-capsule (it always fits).
            return Err((Status::SGL_DESCRIPTOR_TYPE_INVALID, 0));
        }
        let data =
            ConnectData::read_from(r.buf.as_deref().unwrap_or(&[])).ok_or((Status::DATA_SGL_LENGTH_INVALID, 0))?;
        let subnqn = get_str(&data.subnqn);
        let hostnqn = get_str(&data.hostnqn);
        let subsys: Arc<Subsystem> = match self.target.subsystem(&subnqn) {
            Ok(s) if !s.deleted.load(Ordering::Acquire) => s,
            _ => {
                log::info!("nvmf: {}: Connect to unknown subsystem {subnqn:?}", self.peer);
                return Err(invalid(true, 256));
            }
        };
        if subsys.kind == SubsystemKind::Nvme && !subsys.state().listeners.contains(&self.listen) {
            log::info!(
                "nvmf: {}: subsystem {subnqn} does not listen on {}",
                self.peer,
                self.listen
            );
            return Err(invalid(true, 256));
        }
        if !subsys.host_allowed(&hostnqn) {
            log::info!("nvmf: {}: host {hostnqn:?} not allowed on {subnqn}", self.peer);
            return Err((
                Status::CONNECT_INVALID_HOST,
                fabrics::connect_invalid_param_dw0(true, 512),
            ));
        }
        let entries = u32::from(cmd.sqsize) + 1;
        if cmd.qid == 0 {
            self.connect_admin(&subsys, &cmd, &data, hostnqn)?;
        } else {
            self.connect_io(&subsys, &cmd, &data, &hostnqn)?;
        }
        // Size the request table to the queue (setup path: allocates once).
        self.sq_entries = entries as u16;
        while self.reqs.len() < entries as usize {
            self.free.push(self.reqs.len());
            self.reqs.push(Req::new());
        }
        let mut limits = RxLimits {
            in_capsule_data_bytes: self.opts.in_capsule_data_size,
            h2c_data_bytes: self.opts.io_unit_size,
            c2h_data_bytes: 0,
        };
        if self.qid == 0 {
            limits.in_capsule_data_bytes = IN_CAPSULE_DATA_BYTES;
        }
        self.rx.set_limits(limits);
        if let Some(c) = &self.ctrlr {
            c.add_queue(QueueInfo {
                qid: self.qid,
                listen: self.listen,
                peer: self.peer,
                core: self.core,
            });
        }
        Ok(self.ctrlr.as_ref().map(|c| c.cntlid).unwrap_or(0))
    }

    /// Admin queue Connect: a new controller.
    fn connect_admin(
        &mut self,
        subsys: &Arc<Subsystem>,
        cmd: &ConnectCmd,
        data: &ConnectData,
        hostnqn: String,
    ) -> Result<(), (Status, u32)> {
        let invalid = |in_data, off| {
            (
                Status::CONNECT_INVALID_PARAMETERS,
                fabrics::connect_invalid_param_dw0(in_data, off),
            )
        };
        if cmd.sqsize == 0 || u32::from(cmd.sqsize) + 1 > u32::from(self.opts.max_aq_depth) {
            return Err(invalid(false, 44));
        }
        if data.cntlid != 0xFFFF {
            return Err(invalid(true, 16));
        }
        let c = Arc::new(Controller::new(
            self.target.alloc_cntlid(),
            subsys.clone(),
            hostnqn,
            data.hostid,
            cmd.kato_ms,
            self.opts.clone(),
        ));
        subsys.state().controllers.push(Arc::downgrade(&c));
        log::info!(
            "nvmf: {}: controller {} of {} for host {} (KATO {} ms)",
            self.peer,
            c.cntlid,
            subsys.nqn,
            c.hostnqn,
            cmd.kato_ms
        );
        self.stat(|s| &s.admin_qpairs, 1);
        self.stat(|s| &s.current_admin_qpairs, 1);
        self.ctrlr = Some(c);
        self.qid = 0;
        Ok(())
    }

    /// I/O queue Connect: joins the live controller the Connect data names.
    fn connect_io(
        &mut self,
        subsys: &Arc<Subsystem>,
        cmd: &ConnectCmd,
        data: &ConnectData,
        hostnqn: &str,
    ) -> Result<(), (Status, u32)> {
        let invalid = |in_data, off| {
            (
                Status::CONNECT_INVALID_PARAMETERS,
                fabrics::connect_invalid_param_dw0(in_data, off),
            )
        };
        // A controller that failed (keep-alive timeout, ...) is gone for new queues.
        let c = subsys
            .state()
            .controllers
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|c| c.cntlid == data.cntlid && c.hostnqn == hostnqn && !c.failed())
            .ok_or(invalid(true, 16))?;
        if !c.ready() {
            return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
        }
        if cmd.sqsize == 0 || u32::from(cmd.sqsize) + 1 > u32::from(self.opts.max_queue_depth) {
            return Err(invalid(false, 44));
        }
        c.claim_io_qid(cmd.qid).map_err(|_| invalid(false, 42))?;
        self.stat(|s| &s.io_qpairs, 1);
        self.stat(|s| &s.current_io_qpairs, 1);
        self.qid = cmd.qid;
        self.ctrlr = Some(c);
        self.refresh_ns(subsys);
        Ok(())
    }

    fn stat(&self, f: impl Fn(&GroupStats) -> &AtomicU64, d: i64) {
        if let Some(s) = &self.stats {
            bump(f(s), d);
        }
    }

    fn admin_cmd(&mut self, slot: usize) {
        let Some(c) = self.ctrlr.clone() else {
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        };
        let sqe = self.reqs[slot].sqe;
        let res = c.admin(
            &self.target,
            &sqe,
            self.reqs[slot].buf.as_deref().unwrap_or(&[]),
            self.listen,
        );
        match res {
            AdminResult::ParkAer => {
                if self.aers.len() >= AER_MAX {
                    return self.complete(slot, Status::ASYNC_EVENT_REQUEST_LIMIT, 0, 0);
                }
                self.aers.push(sqe.cid);
                self.release(slot);
            }
            AdminResult::Reply { status, dw0, dw1, data } => {
                if status.is_success() && !data.is_empty() {
                    match data_out_len(&sqe) {
                        Err(s) => return self.complete(slot, s, 0, 0),
                        Ok(n) => {
                            let n = n.min(data.len());
                            if n > 0 {
                                pdu::encode_c2h_data(&mut self.tx, sqe.cid, 0, &data[..n], true, false, self.dg);
                            }
                        }
                    }
                }
                self.complete(slot, status, dw0, dw1)
            }
        }
    }

    /// Rebuilds this I/O queue's namespace table from the subsystem (connect and after a
    /// namespace change). Opens channels for new bdevs; keeps channels with I/O in flight.
    fn refresh_ns(&mut self, subsys: &Subsystem) {
        self.ns_gen = subsys.ns_generation.load(Ordering::Acquire);
        let nss: Vec<_> = subsys.state().namespaces.values().cloned().collect();
        self.ns.clear();
        for c in self.chans.iter_mut() {
            c.used = false;
        }
        for ns in nss {
            let idx = match self.chans.iter().position(|c| Arc::ptr_eq(&c.bdev, &ns.bdev)) {
                Some(i) => i,
                None => match ns.bdev.open_channel() {
                    Ok(chan) => {
                        self.chans.push(ChanEntry {
                            bdev: ns.bdev.clone(),
                            chan,
                            used: false,
                            sink: None,
                        });
                        self.chans.len() - 1
                    }
                    Err(e) => {
                        log::warn!("nvmf: cannot open a channel to bdev {}: {e}", ns.bdev.name());
                        continue;
                    }
                },
            };
            self.chans[idx].used = true;
            self.ns.push(NsEntry {
                nsid: ns.nsid,
                geo: NsGeometry {
                    block_size: ns.bdev.block_size(),
                    num_blocks: ns.bdev.num_blocks(),
                },
                chan: idx,
            });
        }
        self.refresh_sinks();
    }

    /// Looks up every channel's restart point sink again (after a registry change).
    fn refresh_sinks(&mut self) {
        self.sink_gen = restart::generation();
        for c in self.chans.iter_mut() {
            c.sink = restart::lookup(c.bdev.name());
        }
    }

    fn io_cmd(&mut self, slot: usize) {
        let Some(c) = self.ctrlr.clone() else { return };
        let subsys = &c.subsys;
        // Safe with I/O in flight: refresh_ns never removes or reorders channels, so the
        // channel index a request holds stays valid.
        if subsys.ns_generation.load(Ordering::Acquire) != self.ns_gen {
            self.refresh_ns(subsys);
        }
        let sqe = self.reqs[slot].sqe;
        let in_capsule = self.reqs[slot].in_capsule;
        if sqe.opc == admin_opc::FABRICS {
            return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
        }
        let Some(ns) = self.ns.iter().find(|n| n.nsid == sqe.nsid) else {
            return self.complete(slot, Status::INVALID_NAMESPACE, 0, 0);
        };
        let (geo, chan) = (ns.geo, ns.chan);
        if sqe.opc == io_opc::RESTART_POINT || sqe.opc == io_opc::FLUSH {
            if restart::generation() != self.sink_gen {
                self.refresh_sinks();
            }
            if sqe.opc == io_opc::RESTART_POINT && self.chans[chan].sink.is_none() {
                // Only replicated volumes take restart points.
                return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
            }
        }
        let cmd = match io::parse_io(&sqe, geo, in_capsule, self.opts.max_io_size) {
            Ok(cmd) => cmd,
            Err(s) => return self.complete(slot, s, 0, 0),
        };
        let r = &mut self.reqs[slot];
        r.cmd = cmd;
        r.chan = chan;
        let hb = cmd.host_bytes();
        if hb > 0 && r.in_capsule == 0 {
            r.buf = Some(get_buf(hb));
            r.state = ReqState::AwaitH2C { received: 0, total: hb };
            pdu::encode_r2t(&mut self.tx, sqe.cid, slot as u16, 0, hb, self.dg);
            return;
        }
        if hb > 0 {
            if let Some(b) = r.buf.as_mut() {
                b.set_len(hb as usize);
            }
        }
        self.execute(slot);
    }

    /// All data is here: submit the command's bdev operations.
    fn execute(&mut self, slot: usize) {
        let r = &mut self.reqs[slot];
        let ch = &self.chans[r.chan];
        let supports = |op| ch.bdev.supports(op);
        let ud = slot as u64;
        let mut ios: [Option<IoRequest>; 1] = [None];
        match r.cmd {
            IoCmd::Read { slba, nlb, bytes } => {
                ios[0] = Some(IoRequest {
                    op: IoOp::Read,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: Some(get_buf(bytes)),
                    user_data: ud,
                });
            }
            IoCmd::Write { slba, nlb, .. } => {
                ios[0] = Some(IoRequest {
                    op: IoOp::Write,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: r.buf.take(),
                    user_data: ud,
                });
            }
            IoCmd::Compare { slba, nlb, bytes } => {
                ios[0] = Some(IoRequest {
                    op: IoOp::Read,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: Some(get_buf(bytes)),
                    user_data: ud | UD_BUF2,
                });
            }
            IoCmd::RestartPoint { tag_len } => return self.start_restart_point(slot, tag_len),
            IoCmd::Flush => {
                if !supports(IoOp::Flush) {
                    return self.flush_done(slot);
                }
                ios[0] = Some(IoRequest {
                    op: IoOp::Flush,
                    offset_blocks: 0,
                    num_blocks: 0,
                    buf: None,
                    user_data: ud,
                });
            }
            IoCmd::WriteZeroes { slba, nlb } => {
                if !supports(IoOp::WriteZeroes) {
                    return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
                }
                ios[0] = Some(IoRequest {
                    op: IoOp::WriteZeroes,
                    offset_blocks: slba,
                    num_blocks: nlb,
                    buf: None,
                    user_data: ud,
                });
            }
            IoCmd::Dsm { ranges, deallocate } => {
                if !deallocate || !supports(IoOp::Unmap) {
                    return self.complete(slot, Status::SUCCESS, 0, 0);
                }
                let geo = self.ns.iter().find(|n| n.chan == r.chan).map(|n| n.geo);
                let Some(geo) = geo else {
                    return self.complete(slot, Status::INVALID_NAMESPACE, 0, 0);
                };
                let data = r.buf.take();
                let data = data.as_deref().unwrap_or(&[]);
                for i in 0..ranges as usize {
                    let (nlb, slba) = io::dsm_range(data, i);
                    if let Err(s) = io::check_dsm_range(nlb, slba, geo) {
                        return self.complete(slot, s, 0, 0);
                    }
                }
                let mut pending = 0;
                for i in 0..ranges as usize {
                    let (nlb, slba) = io::dsm_range(data, i);
                    if nlb == 0 {
                        continue;
                    }
                    pending += 1;
                    let io = IoRequest {
                        op: IoOp::Unmap,
                        offset_blocks: slba,
                        num_blocks: nlb,
                        buf: None,
                        user_data: ud,
                    };
                    self.submit(slot, io);
                }
                if pending == 0 {
                    return self.complete(slot, Status::SUCCESS, 0, 0);
                }
                self.reqs[slot].state = ReqState::Executing { pending };
                return;
            }
        }
        self.reqs[slot].state = ReqState::Executing { pending: 1 };
        if let Some(io) = ios[0].take() {
            self.submit(slot, io);
        }
    }

    fn submit(&mut self, slot: usize, io: IoRequest) {
        let chan = self.reqs[slot].chan;
        if !self.retry.is_empty() {
            self.retry.push_back((chan, io));
            return;
        }
        if let Err(io) = self.chans[chan].chan.submit(io) {
            self.retry.push_back((chan, io));
        }
        self.stat(|s| &s.pending_bdev_io, 1);
    }

    fn poll_bdev(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.done);
        for c in self.chans.iter_mut() {
            if c.chan.outstanding() > 0 {
                c.chan.poll(&mut |cpl| done.push(cpl));
            }
        }
        let busy = !done.is_empty();
        self.stat(|s| &s.pending_bdev_io, -(done.len() as i64));
        for cpl in done.drain(..) {
            self.on_bdev_done(cpl);
        }
        self.done = done;
        while let Some((chan, io)) = self.retry.pop_front() {
            if let Err(io) = self.chans[chan].chan.submit(io) {
                self.retry.push_front((chan, io));
                break;
            }
        }
        busy
    }

    fn on_bdev_done(&mut self, cpl: IoCompletion) {
        let slot = (cpl.user_data & 0xFFFF_FFFF) as usize;
        let Some(r) = self.reqs.get_mut(slot) else { return };
        let ReqState::Executing { pending } = r.state else {
            return;
        };
        if let Err(e) = &cpl.result {
            let op = match r.cmd {
                IoCmd::Read { .. } | IoCmd::Compare { .. } => IoOp::Read,
                IoCmd::WriteZeroes { .. } => IoOp::WriteZeroes,
                IoCmd::Dsm { .. } => IoOp::Unmap,
                IoCmd::Flush => IoOp::Flush,
                IoCmd::Write { .. } | IoCmd::RestartPoint { .. } => IoOp::Write,
            };
            if r.status.is_success() {
                log::debug!("nvmf: bdev {op:?} failed: {e}");
                r.status = io::status_of(op, e);
            }
        }
        if cpl.user_data & UD_BUF2 != 0 {
            r.buf2 = cpl.buf;
        } else if cpl.buf.is_some() {
            r.buf = cpl.buf;
        }
        let pending = pending.saturating_sub(1);
        r.state = ReqState::Executing { pending };
        if pending == 0 {
            self.finish(slot);
        }
    }

    /// Every bdev operation of the request finished: send data and the response.
    fn finish(&mut self, slot: usize) {
        let r = &self.reqs[slot];
        let status = r.status;
        let cid = r.sqe.cid;
        if status.is_success() && r.cmd == IoCmd::Flush {
            return self.flush_done(slot);
        }
        self.stat(|s| &s.completed_nvme_io, 1);
        if !status.is_success() {
            return self.complete(slot, status, 0, 0);
        }
        match r.cmd {
            IoCmd::Read { bytes, .. } => {
                let success = self.opts.c2h_success;
                if let Some(b) = r.buf.as_deref() {
                    // One C2HData PDU per 128 KiB: hosts size their receive limits for
                    // that, whatever MDTS allows.
                    let mut chunks = b[..bytes as usize].chunks(C2H_PDU_BYTES).peekable();
                    let mut off = 0u32;
                    while let Some(d) = chunks.next() {
                        let last = chunks.peek().is_none();
                        pdu::encode_c2h_data(&mut self.tx, cid, off, d, last, success && last, self.dg);
                        off += d.len() as u32;
                    }
                }
                if success {
                    self.release(slot);
                } else {
                    self.complete(slot, Status::SUCCESS, 0, 0);
                }
            }
            IoCmd::Compare { .. } => {
                let same = match (r.buf.as_deref(), r.buf2.as_deref()) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                self.complete(slot, if same { Status::SUCCESS } else { Status::COMPARE_FAILURE }, 0, 0)
            }
            _ => self.complete(slot, Status::SUCCESS, 0, 0),
        }
    }

    /// The local flush is done (or the bdev has none): complete, or, on a namespace whose
    /// sink makes Flush a restart point, declare one with an empty tag first.
    fn flush_done(&mut self, slot: usize) {
        let chan = self.reqs[slot].chan;
        if self.chans[chan]
            .sink
            .as_ref()
            .is_some_and(|s| s.flush_is_restart_point())
        {
            return self.start_restart_point(slot, 0);
        }
        self.stat(|s| &s.completed_nvme_io, 1);
        self.complete(slot, Status::SUCCESS, 0, 0)
    }

    /// Hands the request's tag (its data, `tag_len` bytes) to the namespace's sink. The
    /// answer comes back to this reactor by message ([`restart_point_answer`]); the command
    /// completes then, or at its deadline with Namespace Not Ready.
    ///
    /// Ordering: every write this queue completed before the command arrived has been
    /// completed by the bdev, so the sink has already ordered it (a replicated volume gave it
    /// an LSN); writes still outstanding on the queue are not ordered against the point, as
    /// NVMe orders no outstanding commands.
    fn start_restart_point(&mut self, slot: usize, tag_len: u32) {
        let chan = self.reqs[slot].chan;
        let Some(sink) = self.chans[chan].sink.clone() else {
            return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
        };
        self.rp_seq += 1;
        self.rp_pending += 1;
        let seq = self.rp_seq;
        let r = &mut self.reqs[slot];
        let tag = r.buf.take();
        let tag = tag.as_deref().unwrap_or(&[]);
        let tag = &tag[..(tag_len as usize).min(tag.len())];
        r.state = ReqState::AwaitRestartPoint { seq };
        let timeout = u64::try_from(sink.timeout().as_nanos()).unwrap_or(u64::MAX);
        r.deadline_ns = engine::clock::now_ns().saturating_add(timeout);
        let (core, conn) = (self.core, self.id);
        sink.declare(
            tag,
            Box::new(move |res| {
                if let Err(e) = reactor::send_msg(core, move || restart_point_answer(conn, slot, seq, res)) {
                    log::warn!("nvmf: restart point answer for reactor {core} lost: {e:?}");
                }
            }),
        );
    }

    /// The sink answered restart point `seq` of `slot`.
    fn on_restart_point(&mut self, slot: usize, seq: u64, res: Result<u64, RestartPointError>) {
        if self.phase == Phase::Closing {
            return;
        }
        let Some(r) = self.reqs.get(slot) else { return };
        if r.state != (ReqState::AwaitRestartPoint { seq }) {
            return; // timed out already; the slot may be in use again
        }
        self.rp_pending -= 1;
        self.stat(|s| &s.completed_nvme_io, 1);
        match res {
            Ok(epoch) => self.complete(slot, Status::SUCCESS, epoch as u32, (epoch >> 32) as u32),
            Err(e) => {
                log::info!("nvmf: {}: restart point failed: {e}", self.peer);
                self.complete(slot, e.status(), 0, 0)
            }
        }
    }

    /// Completes restart points whose sink did not answer in time.
    fn expire_restart_points(&mut self, now: u64) -> bool {
        let mut any = false;
        for slot in 0..self.reqs.len() {
            let r = &self.reqs[slot];
            if matches!(r.state, ReqState::AwaitRestartPoint { .. }) && now >= r.deadline_ns {
                log::warn!(
                    "nvmf: {}: restart point (command {}) not replicated in time",
                    self.peer,
                    r.sqe.cid
                );
                self.rp_pending -= 1;
                self.stat(|s| &s.completed_nvme_io, 1);
                self.complete(slot, Status::NAMESPACE_NOT_READY, 0, 0);
                any = true;
            }
        }
        any
    }

    fn respond(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: self.sqhd,
            sqid: self.qid,
            cid,
            status: status.to_field(),
        };
        pdu::encode_capsule_resp(&mut self.tx, &cqe, self.dg);
    }

    /// Sends the response for the request in `slot` and frees the slot.
    fn complete(&mut self, slot: usize, status: Status, dw0: u32, dw1: u32) {
        let cid = self.reqs[slot].sqe.cid;
        self.respond(cid, status, dw0, dw1);
        self.release(slot);
    }

    fn release(&mut self, slot: usize) {
        let r = &mut self.reqs[slot];
        if r.state != ReqState::Free {
            r.state = ReqState::Free;
            r.buf = None;
            r.buf2 = None;
            self.free.push(slot);
        }
    }

    /// Writes queued bytes; returns whether any were written.
    fn flush(&mut self) -> bool {
        let mut wrote = false;
        while self.tx_pos < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_pos += n;
                    wrote = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::info!("nvmf: write to {} failed: {e}", self.peer);
                    self.tx.clear();
                    self.tx_pos = 0;
                    self.close("socket error");
                    return wrote;
                }
            }
        }
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        } else if self.tx_pos > TX_INITIAL_BYTES {
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
        wrote
    }

    /// Ends the connection with a C2HTermReq carrying the offending header.
    fn terminate(&mut self, f: Fatal) {
        log::warn!(
            "nvmf: {}: terminating connection, fes={:#x} fei={}",
            self.peer,
            f.fes,
            f.fei
        );
        self.stat(|s| &s.term_reqs_sent, 1);
        let hdr: Vec<u8> = self.rx.header_bytes().to_vec();
        pdu::encode_term_req(&mut self.tx, Side::Target, f.fes, f.fei, &hdr);
        self.flush();
        self.close("protocol error");
    }

    fn close(&mut self, why: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        log::debug!("nvmf: closing connection from {}: {why}", self.peer);
        self.phase = Phase::Closing;
        self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(c) = &self.ctrlr {
            c.remove_queue(self.qid, self.peer);
            if self.qid == 0 {
                c.fail("admin queue disconnected");
                self.stat(|s| &s.current_admin_qpairs, -1);
            } else {
                c.release_io_qid(self.qid);
                self.stat(|s| &s.current_io_qpairs, -1);
            }
        }
        self.retry.clear();
        self.aers.clear();
    }

    fn poll_closing(&mut self) -> ConnPoll {
        let mut n = 0;
        for c in self.chans.iter_mut() {
            n += c.chan.poll(&mut |_| {});
        }
        self.stat(|s| &s.pending_bdev_io, -(n as i64));
        if self.chans.iter().all(|c| c.chan.outstanding() == 0) {
            ConnPoll::Dead
        } else {
            ConnPoll::Busy
        }
    }
}
