//! Connection setup over rdma_cm, non-blocking: the active side's address and route
//! resolution and connect, the acceptor's connection requests, and the resources both sides
//! create once (queue pair, registered staging ring, receive ring and control words, the
//! receives posted before the peer may send).

use core::ops::Deref;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::io;
use std::net::SocketAddr;

use super::verbs::{cm_event, Channel, CmId, Mem, Qp, QpSizes};
use super::{rdma_err, Phase, RdmaConfig, RdmaConnection, CREDIT_SRC_OFF, CREDIT_WORD_OFF, CREDIT_WRITES_MAX};
use crate::rdma_proto::{ConnParams, SendCredits};
use crate::transport::{ConnState, TransportError};

/// rdma_cm resolution timeouts.
const RESOLVE_TIMEOUT_MS: i32 = 2000;
/// Listen backlog.
const LISTEN_BACKLOG: i32 = 64;
/// How long an acceptor that found no request waits before it asks rdma_cm again.
pub const ACCEPT_POLL_PERIOD_NS: u64 = 200_000;

fn connect_err(addr: SocketAddr, what: &str, status: i32) -> TransportError {
    let source = if status < 0 {
        io::Error::from_raw_os_error(-status)
    } else {
        io::Error::other(format!("{what} (status {status})"))
    };
    TransportError::Connect { addr, source }
}

impl<B: Deref<Target = [u8]>> RdmaConnection<B> {
    /// Starts connecting to `addr` (setup path). Returns at once in state `Connecting`; the
    /// polls resolve address and route, create the queue pair and connect. Frames may be
    /// queued before it completes.
    pub fn connect(addr: SocketAddr, cfg: RdmaConfig) -> Result<Self, TransportError> {
        let ch = Channel::new().map_err(rdma_err)?;
        let id = CmId::new(&ch).map_err(rdma_err)?;
        id.resolve_addr(addr, RESOLVE_TIMEOUT_MS)
            .map_err(|(_, source)| TransportError::Connect { addr, source })?;
        Ok(Self::new_raw(id, ch, addr, cfg, Phase::ResolvingAddr))
    }

    /// Accepts a connection request (from [`RdmaAcceptor`]): own channel, resources, accept.
    fn accepted(id: CmId, peer: ConnParams, cfg: RdmaConfig) -> Result<Self, TransportError> {
        let addr = id.peer_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let ch = match Channel::new() {
            Ok(ch) => ch,
            Err(e) => {
                id.reject();
                return Err(rdma_err(e));
            }
        };
        if let Err(e) = id.migrate(&ch) {
            id.reject();
            return Err(rdma_err(e));
        }
        let mut c = Self::new_raw(id, ch, addr, cfg, Phase::Establishing);
        c.peer = Some(peer);
        let private = match c.create_resources() {
            Ok(p) => p,
            Err(e) => {
                c.id.reject();
                c.phase = Phase::Gone;
                return Err(e);
            }
        };
        c.id.accept(&private).map_err(rdma_err)?;
        Ok(c)
    }

    /// Creates the queue pair and regions and posts every receive. Returns our parameters
    /// encoded for the private data.
    fn create_resources(&mut self) -> Result<[u8; crate::rdma_proto::PRIV_BYTES], TransportError> {
        let cfg = self.cfg;
        let msg = cfg.msg_bytes as usize;
        let sizes = QpSizes {
            send_wr: cfg.sq_depth() as u32,
            recv_wr: cfg.recv_slots as u32,
            send_bytes: cfg.send_slots as usize * msg,
            recv_bytes: cfg.recv_slots as usize * msg,
            ctl_bytes: CREDIT_SRC_OFF + CREDIT_WRITES_MAX * 8,
            data_bytes: 0,
            send_sge: super::ZC_SGE_WANT,
        };
        let mut qp = Qp::new(&self.id, sizes).map_err(rdma_err)?;
        // Once per connection (per protection domain): the pools that exist now; later ones
        // when `poll_send` first sees the pool count change.
        self.pool_reg_failures += qp.register_new_pools() as u64;
        self.sge_cap = qp.send_sge();
        for slot in 0..cfg.recv_slots as usize {
            qp.post_recv(slot as u64, slot * msg, msg).map_err(rdma_err)?;
        }
        let (credit_addr, credit_rkey) = qp.remote_ref(Mem::Ctl, CREDIT_WORD_OFF);
        self.qp = Some(qp);
        Ok(ConnParams {
            recv_slots: cfg.recv_slots,
            msg_bytes: cfg.msg_bytes,
            credit_addr,
            credit_rkey,
        }
        .encode())
    }

    /// Both sides know each other's parameters: credits and message size.
    fn open(&mut self) {
        if let Some(p) = self.peer {
            self.credits = SendCredits::new(p.recv_slots);
            self.msg = (p.msg_bytes as usize).min(self.cfg.msg_bytes as usize);
        }
        self.phase = Phase::Open;
        self.state = ConnState::Open;
    }

    /// Advances setup by the rdma_cm events waiting. Ok(true) once open.
    pub(super) fn advance_setup(&mut self) -> Result<bool, TransportError> {
        if self.phase == Phase::Open {
            return Ok(true);
        }
        let addr = self.addr;
        while let Some(ev) = self.ch.poll().map_err(rdma_err)? {
            match (self.phase, ev.kind) {
                (Phase::ResolvingAddr, cm_event::RDMA_CM_EVENT_ADDR_RESOLVED) => {
                    self.id.resolve_route(RESOLVE_TIMEOUT_MS).map_err(rdma_err)?;
                    self.phase = Phase::ResolvingRoute;
                }
                (Phase::ResolvingRoute, cm_event::RDMA_CM_EVENT_ROUTE_RESOLVED) => {
                    let private = self.create_resources()?;
                    self.id.connect(&private).map_err(rdma_err)?;
                    self.phase = Phase::Establishing;
                }
                (Phase::Establishing, cm_event::RDMA_CM_EVENT_ESTABLISHED) => {
                    if self.peer.is_none() {
                        self.peer = Some(ConnParams::decode(&ev.private)?);
                    }
                    self.open();
                    return Ok(true);
                }
                (_, cm_event::RDMA_CM_EVENT_ADDR_ERROR) => {
                    return Err(connect_err(
                        addr,
                        "address resolution failed (no RDMA device for it?)",
                        ev.status,
                    ))
                }
                (_, cm_event::RDMA_CM_EVENT_ROUTE_ERROR) => {
                    return Err(connect_err(addr, "route resolution failed", ev.status))
                }
                (_, cm_event::RDMA_CM_EVENT_UNREACHABLE) | (_, cm_event::RDMA_CM_EVENT_CONNECT_ERROR) => {
                    return Err(connect_err(addr, "peer unreachable", ev.status))
                }
                (_, cm_event::RDMA_CM_EVENT_REJECTED) => {
                    let source = io::Error::from(io::ErrorKind::ConnectionRefused);
                    return Err(TransportError::Connect { addr, source });
                }
                (_, cm_event::RDMA_CM_EVENT_DISCONNECTED) | (_, cm_event::RDMA_CM_EVENT_DEVICE_REMOVAL) => {
                    return Err(TransportError::PeerClosed)
                }
                _ => {}
            }
        }
        Ok(false)
    }
}

/// An rdma_cm listener that accepts replication connections without blocking.
pub struct RdmaAcceptor {
    // Field order is drop order: the id before its channel. Held, never read: dropping it
    // stops listening.
    _listener: CmId,
    ch: Channel,
    cfg: RdmaConfig,
    local: SocketAddr,
    next_poll_ns: AtomicU64,
}

impl RdmaAcceptor {
    /// Binds and listens on `addr` (an address of an RDMA-capable interface; port 0 picks
    /// one, see [`RdmaAcceptor::local_addr`]).
    pub fn bind(addr: SocketAddr, cfg: RdmaConfig) -> Result<Self, TransportError> {
        let ch = Channel::new().map_err(rdma_err)?;
        let listener = CmId::new(&ch).map_err(rdma_err)?;
        listener.listen(addr, LISTEN_BACKLOG).map_err(rdma_err)?;
        let local = listener.local_addr().unwrap_or(addr);
        Ok(Self {
            _listener: listener,
            ch,
            cfg,
            local,
            next_poll_ns: AtomicU64::new(0),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts one pending connection request, if any (setup path: allocates and registers
    /// its memory). The connection is returned `Connecting` and opens when rdma_cm reports
    /// it established (its polls see to that). A request whose parameters are invalid is
    /// rejected and reported as an error.
    pub fn poll_accept<B: Deref<Target = [u8]>>(
        &self,
    ) -> Result<Option<(RdmaConnection<B>, SocketAddr)>, TransportError> {
        let now = engine::clock::now_ns();
        if now < self.next_poll_ns.load(Relaxed) {
            return Ok(None);
        }
        loop {
            let Some(ev) = self.ch.poll().map_err(rdma_err)? else {
                self.next_poll_ns.store(now + ACCEPT_POLL_PERIOD_NS, Relaxed);
                return Ok(None);
            };
            let Some(id) = ev.new_id else { continue };
            let params = match ConnParams::decode(&ev.private) {
                Ok(p) => p,
                Err(e) => {
                    id.reject();
                    return Err(e.into());
                }
            };
            let conn = RdmaConnection::accepted(id, params, self.cfg)?;
            let peer = conn.peer_addr();
            return Ok(Some((conn, peer)));
        }
    }
}
