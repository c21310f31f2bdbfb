//! The NVMe/TCP transport of the target: listeners, per-reactor poll groups and the
//! connection / request state machines (`docs/nvme-tcp.md`).
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
//!
//! This file holds the connection (`Conn`): its fields, its poll loop, the socket writer
//! and closing. The rest, in the order a command meets it:
//! - `group.rs`: the listener's accept poller and the per-reactor poll group.
//! - `rx.rs`: the PDU receive state machine (ICReq, command capsules, data PDUs) and the
//!   protocol errors that terminate the connection.
//! - `request.rs`: the request's states, routing a complete command by queue, and sending
//!   its response.
//! - `connect.rs`: Fabrics Connect (a new controller, or an I/O queue joining one).
//! - `admin.rs`: admin commands.
//! - `io_queue.rs`: I/O commands and the queue's namespace / bdev channel table.
//! - `driver.rs`: a request waiting for data buffers, and moving it on when it has them.
//! - `bdev_io.rs`: submitting a command's bdev operations and completing it.
//! - `transfer.rs`: data transfer (R2T, H2CData, C2HData).
//! - `restart_point.rs`: the restart point command (`docs/restart-points.md`).
//! - `buffers.rs`: the data buffer pools, made with the transport or listener.

mod admin;
mod auth;
mod bdev_io;
mod buffers;
mod connect;
mod driver;
mod group;
mod io_queue;
mod request;
mod restart_point;
mod rx;
mod sock;
mod transfer;

pub use buffers::{PoolGeometry, DEFAULT_BUF_CACHE_SIZE, DEFAULT_NUM_SHARED_BUFFERS};
pub(crate) use group::start_listener;
pub use group::{group_stats, GroupStats};
pub use request::{REQ_STATE_NAMES, REQ_STATE_NEED_BUFFER};

use super::channels::QueueChannels;
use super::ctrlr::Controller;
use super::keepalive::{self, TrafficNote};
use super::restart_wait::{next_queue_id, RestartWaits};
use super::{Target, TargetError, TransportOpts};
use crate::spec::Status;
use crate::tcp::pdu::{PduReceiver, RxLimits, Side, TxDigests};
use buffers::TcpPools;
pub(crate) use group::bump;
use request::Req;
use rx::RxSink;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Makes (or finds) the data buffer pools for transport options `o`: transport creation
/// and listener start, so the first I/O finds them ready (`buffers.rs`).
pub(crate) fn make_pools(o: &TransportOpts) -> Result<(), TargetError> {
    buffers::pools_for(o).map(|_| ())
}

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
/// Empty reads in a row after which a connection waits for its socket's readiness (the
/// receive gate, `group.rs`). Not the first: a busy queue at low depth would then pay a
/// readiness call and a read for every command where one read did (system calls cost
/// 2-4 µs each on this VM); after this many, it is idle, and one call for the whole
/// group is cheaper than a read per connection.
const RX_EMPTY_READS_BEFORE_GATE: u8 = 16;
/// Above this many queued bytes, stop reading commands until the socket drains.
const TX_HIGH_WATER_BYTES: usize = 4 * 1024 * 1024;
/// Initial capacity of a connection's send buffer, bytes.
const TX_INITIAL_BYTES: usize = 256 * 1024;
/// Connections accepted per accept poll.
const ACCEPTS_PER_POLL: usize = 16;
/// How often the accept poller runs.
const ACCEPT_POLL_PERIOD_US: u64 = 1000;

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

enum ConnPoll {
    Busy,
    Idle,
    Dead,
}

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
    /// Large read data sent from its own buffer, placed between the bytes of `tx`.
    tx_data: sock::TxData,
    dg: TxDigests,
    ctrlr: Option<Arc<Controller>>,
    qid: u16,
    sq_entries: u16,
    sqhd: u16,
    reqs: Vec<Req>,
    free: Vec<usize>,
    /// The data buffer pools of this connection's transport options.
    pools: &'static TcpPools,
    /// Requests waiting for a data buffer (`ReqState::NeedBuffer`), oldest first; holds
    /// room for every slot (sized at Connect), so a push never allocates.
    buf_wait: VecDeque<usize>,
    /// Parked Asynchronous Event Requests (CIDs), admin queue only.
    aers: Vec<u16>,
    /// Namespaces, bdev channels and the bdev retry queue (`nvmf::channels`).
    io: QueueChannels,
    stats: Option<Arc<GroupStats>>,
    /// Unique per process: restart point answers come back to it by message.
    id: u64,
    /// The reactor running this connection (set when it joins a poll group).
    core: u32,
    /// Requests in AwaitRestartPoint: their answers' numbers and deadlines.
    rp: RestartWaits,
    /// Commands arrived since the last poll (traffic-based keep-alive).
    traffic: bool,
    /// When this queue last restarted its controller's keep-alive timer.
    ka_note: TrafficNote,
    /// In-band authentication of this queue: Some while the host has to authenticate
    /// (and during a re-authentication); other commands are refused until it is done.
    auth: Option<Box<super::auth::Session>>,
    /// The queue authenticated (a re-authentication keeps it so while it runs).
    authenticated: bool,
    /// When a pending authentication times out (`engine::clock` ns).
    auth_deadline_ns: u64,
    /// TLS (a secure-channel listener): the handshake, then the record layer.
    tls: Option<Box<crate::nvmf::tls::TlsChannel>>,
    /// The poll group watches this socket's readability (`group.rs`, "receive gate").
    rx_watched: bool,
    /// The last `RX_EMPTY_READS_BEFORE_GATE` reads found the socket empty: skip reading
    /// until the group's readiness call reports it readable (only while `rx_watched`).
    rx_gated: bool,
    /// Reads in a row that found the socket empty.
    rx_empty_run: u8,
}

impl Conn {
    fn new(
        target: Arc<Target>,
        sock: TcpStream,
        listen: SocketAddr,
        peer: SocketAddr,
        secure: bool,
    ) -> Result<Box<Conn>, TargetError> {
        let opts = target.transport_opts();
        let pools = buffers::pools_for(&opts)?;
        let limits = RxLimits {
            in_capsule_data_bytes: opts.in_capsule_data_size,
            h2c_data_bytes: opts.io_unit_size,
            c2h_data_bytes: 0,
        };
        log::debug!("nvmf: connection from {peer} on {listen}");
        Ok(Box::new(Conn {
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
            tx_data: sock::TxData::new(),
            dg: TxDigests::default(),
            ctrlr: None,
            qid: 0,
            sq_entries: 1,
            sqhd: 0,
            // The Connect command's slot (its data comes in-capsule).
            reqs: vec![Req::new(pools.slot_buf())],
            free: vec![0],
            pools,
            buf_wait: VecDeque::with_capacity(1),
            aers: Vec::new(),
            io: QueueChannels::new(usize::from(QUEUE_DEPTH_MAX)),
            stats: None,
            id: next_queue_id(),
            core: 0,
            rp: RestartWaits::default(),
            traffic: false,
            ka_note: TrafficNote::default(),
            auth: None,
            authenticated: false,
            auth_deadline_ns: 0,
            tls: secure.then(|| crate::nvmf::tls::TlsChannel::new(peer)),
            rx_watched: false,
            rx_gated: false,
            rx_empty_run: 0,
        }))
    }

    /// The TLS session's PSK identity, on a secure channel.
    fn tls_identity(&self) -> Option<&str> {
        self.tls.as_ref()?.session.as_ref().map(|s| s.identity.as_str())
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
        if !self.rx_gated && self.tx.len() - self.tx_pos < TX_HIGH_WATER_BYTES {
            for _ in 0..RX_READS_PER_POLL {
                match self.read_some() {
                    Ok(got) if got.read == 0 => {
                        self.close("peer closed the connection");
                        return ConnPoll::Busy;
                    }
                    Ok(got) => {
                        busy = true;
                        self.rx_empty_run = 0;
                        if let Err(f) = self.process(got.buffered) {
                            self.terminate(f);
                            return ConnPoll::Busy;
                        }
                        if self.phase == Phase::Closing {
                            return ConnPoll::Busy;
                        }
                        if !got.more {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        // Empty long enough: until readiness says otherwise, reading again
                        // would only take the socket lock to find nothing. Bytes TLS holds
                        // undecrypted wake nothing, so such a channel keeps reading.
                        self.rx_empty_run = self.rx_empty_run.saturating_add(1);
                        self.rx_gated = self.rx_watched
                            && self.rx_empty_run >= RX_EMPTY_READS_BEFORE_GATE
                            && !self.tls.as_ref().is_some_and(|t| t.buffered_in());
                        self.stat(|s| &s.empty_reads, 1);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::InvalidData => {
                        self.close("TLS refused");
                        return ConnPoll::Busy;
                    }
                    Err(e) => {
                        log::info!("nvmf: read from {} failed: {e}", self.peer);
                        self.close("socket error");
                        return ConnPoll::Busy;
                    }
                }
            }
        }
        if self.auth.is_some() && !self.authenticated && now > self.auth_deadline_ns {
            self.auth_failed("authentication timed out");
            return ConnPoll::Busy;
        }
        // Keep-alive after reading: commands (a Keep Alive among them) that waited in the
        // socket while this process was not scheduled count before the timer is judged.
        if let Some(c) = &self.ctrlr {
            if keepalive::queue_poll(c, &mut self.ka_note, &mut self.traffic, self.qid == 0, now) {
                self.close("keep alive timeout");
                return ConnPoll::Busy;
            }
        }
        busy |= self.poll_bdev();
        if !self.buf_wait.is_empty() {
            // Buffers come back with completions (here or on other reactors): a queue
            // with waiting requests keeps its reactor polling.
            self.retry_buffer_waits();
            busy = true;
        }
        busy |= self.expire_restart_points(now);
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

    fn stat(&self, f: impl Fn(&GroupStats) -> &AtomicU64, d: i64) {
        if let Some(s) = &self.stats {
            bump(f(s), d);
        }
    }

    fn close(&mut self, why: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        log::debug!("nvmf: closing connection from {}: {why}", self.peer);
        self.phase = Phase::Closing;
        self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
        self.tx_data.clear();
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
        let dropped = self.io.close();
        self.stat(|s| &s.pending_bdev_io, -(dropped as i64));
        self.rp.clear();
        self.aers.clear();
        self.buf_wait.clear();
    }

    fn poll_closing(&mut self) -> ConnPoll {
        let (n, idle) = self.io.drain();
        self.stat(|s| &s.pending_bdev_io, -(n as i64));
        if idle {
            ConnPoll::Dead
        } else {
            ConnPoll::Busy
        }
    }
}

impl Drop for Conn {
    /// Takes the requests still in a state out of the poll group's per-state counts.
    fn drop(&mut self) {
        if let Some(s) = &self.stats {
            for r in &self.reqs {
                if let Some(i) = r.state.counter() {
                    driver::add_own(&s.req_states[i], -1);
                }
            }
        }
    }
}
