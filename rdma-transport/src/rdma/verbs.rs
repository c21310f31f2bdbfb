//! The only code that calls `rdma-sys`: a small safe wrapper over rdma_cm and verbs, shaped
//! for one connection owned by one reactor. Every `unsafe` block of the RDMA transport, and
//! of the NVMe/RDMA target built on it (`baton-nvme`'s `rdma` feature), is here.
//!
//! - [`Channel`]: an rdma_cm event channel with its descriptor made non-blocking, so
//!   [`Channel::poll`] answers at once; events are copied out and acknowledged at once.
//! - [`CmId`]: an rdma_cm identifier (a connection end or a listener), destroyed on drop.
//! - [`Qp`]: what one RC connection needs from verbs, made on a [`CmId`] once its device is
//!   known: send and receive completion queues (no completion channel: the owner polls
//!   them), the queue pair, and the memory it owns and registered once ([`Region`]s), all
//!   on its device's shared protection domain. Work requests can only point into that
//!   memory, bounds-checked, so no posted request can outlive the memory it names: dropping
//!   a `Qp` destroys the queue pair before it deregisters and frees the regions.
//! - One protection domain per device (per `ibv_context`), shared by every [`Qp`] on it
//!   whatever reactor owns them: made by the first, reference-counted in a process-wide
//!   registry (a mutex taken on the setup path only), deallocated when the last `Qp` on
//!   the device is gone, after its queue pairs and registrations (module `pd`, the
//!   registry). [`pd_stats`] counts them.
//! - The engine's buffer pools ([`engine::buf::pools`]), registered once each per
//!   protection domain, so once per device, not per connection
//!   ([`Qp::register_new_pools`]), so a SEND can name a pool buffer's bytes directly
//!   ([`Qp::pool_sge`]) instead of a copy of them. The keys are published as an immutable
//!   table each `Qp` holds an `Arc` of: the per-I/O lookup takes no lock and allocates
//!   nothing. Pools live for the whole process, so an [`Sge`] into one can never outlive its
//!   memory.

use core::ptr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arrayvec::ArrayVec;
use rdma_sys as sys;

use super::pd::{pd_acquire, pd_register_pools, pd_release, PoolTable};
pub use super::pd::{pd_stats, PdStats};

/// Bytes of a peer's private data kept from an event.
pub const EVENT_PRIV_BYTES_MAX: usize = 64;
/// Work completions read per `ibv_poll_cq` call.
pub const WC_BATCH: usize = 32;

pub(super) fn last_err(op: &'static str) -> (&'static str, io::Error) {
    (op, io::Error::last_os_error())
}

fn check(op: &'static str, rc: i32) -> Result<(), (&'static str, io::Error)> {
    if rc == 0 {
        Ok(())
    } else if rc < 0 {
        Err(last_err(op))
    } else {
        // Verbs post calls return the error number itself.
        Err((op, io::Error::from_raw_os_error(rc)))
    }
}

/// An error from a verbs or rdma_cm call: the call's name and the OS error.
pub type VerbsError = (&'static str, io::Error);

/// True when the kernel lists at least one RDMA device (Soft-RoCE included).
pub fn rdma_device_present() -> bool {
    std::fs::read_dir("/sys/class/infiniband")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// A connection-manager event, copied out of rdma_cm and already acknowledged.
pub struct CmEvent {
    /// `rdma_cm_event_type`.
    pub kind: u32,
    /// The event's status (a negative errno on errors, a reject reason on REJECTED).
    pub status: i32,
    /// A new connection's identifier (CONNECT_REQUEST on a listener), now owned.
    pub new_id: Option<CmId>,
    /// The peer's private data (CONNECT_REQUEST, ESTABLISHED on the active side).
    pub private: ArrayVec<u8, EVENT_PRIV_BYTES_MAX>,
    /// CONNECT_REQUEST: how many RDMA READs the requester lets us have outstanding
    /// towards it (its responder resources, as rdma_cm reports them to the recipient);
    /// 0 when it serves none.
    pub initiator_depth: u8,
}

pub use sys::rdma_cm_event_type as cm_event;

/// The RDMA READ depths a connection negotiates (rdma_cm's connection parameters; the
/// queue pair's `max_dest_rd_atomic` and `max_rd_atomic` follow from them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadDepth {
    /// READs the peer may have outstanding towards us (we answer them).
    pub responder_resources: u8,
    /// READs we may have outstanding towards the peer.
    pub initiator_depth: u8,
}

impl ReadDepth {
    /// One each way: enough for a protocol that reads nothing (replication frames).
    pub const ONE: ReadDepth = ReadDepth {
        responder_resources: 1,
        initiator_depth: 1,
    };
}

/// An rdma_cm event channel, non-blocking.
pub struct Channel {
    ch: *mut sys::rdma_event_channel,
}

// SAFETY: the channel is a kernel handle plus a descriptor; it is used by one thread at a
// time (the owning reactor), and rdma_cm allows using it from any thread.
unsafe impl Send for Channel {}

impl Channel {
    /// Creates the channel and makes its descriptor non-blocking.
    pub fn new() -> Result<Channel, VerbsError> {
        // SAFETY: no arguments; the result is checked for null.
        let ch = unsafe { sys::rdma_create_event_channel() };
        if ch.is_null() {
            return Err(last_err("rdma_create_event_channel"));
        }
        let c = Channel { ch };
        // SAFETY: `ch` is a valid channel until `c` drops; fcntl takes no pointers.
        let fd = unsafe { (*c.ch).fd };
        // SAFETY: plain fcntl calls on a descriptor the channel owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(last_err("fcntl(O_NONBLOCK)"));
        }
        Ok(c)
    }

    /// The next event, if one is waiting; never blocks.
    pub fn poll(&self) -> Result<Option<CmEvent>, VerbsError> {
        let mut ev: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: `self.ch` is valid; `ev` receives a pointer owned by rdma_cm until acked.
        let rc = unsafe { sys::rdma_get_cm_event(self.ch, &mut ev) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(("rdma_get_cm_event", e)),
            };
        }
        // SAFETY: rc == 0 so `ev` points at a valid event until rdma_ack_cm_event below; the
        // private data pointer is valid for `private_data_len` bytes while the event is held.
        let out = unsafe {
            let e = &*ev;
            let mut private = ArrayVec::new();
            let conn = &e.param.conn;
            if !conn.private_data.is_null() {
                let n = (conn.private_data_len as usize).min(EVENT_PRIV_BYTES_MAX);
                let s = core::slice::from_raw_parts(conn.private_data as *const u8, n);
                private.try_extend_from_slice(s).ok();
            }
            // Lazily: a CmId made and dropped here would destroy the event's own id.
            let is_request = e.event == cm_event::RDMA_CM_EVENT_CONNECT_REQUEST && !e.id.is_null();
            let new_id = if is_request { Some(CmId { id: e.id }) } else { None };
            CmEvent {
                kind: e.event,
                status: e.status,
                new_id,
                private,
                initiator_depth: conn.initiator_depth,
            }
        };
        // SAFETY: `ev` came from rdma_get_cm_event and is acknowledged exactly once.
        unsafe { sys::rdma_ack_cm_event(ev) };
        Ok(Some(out))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: every id on this channel is destroyed before it (owners drop ids first).
        unsafe { sys::rdma_destroy_event_channel(self.ch) };
    }
}

/// An rdma_cm identifier.
pub struct CmId {
    id: *mut sys::rdma_cm_id,
}

// SAFETY: an rdma_cm id is used by one thread at a time (its owner); rdma_cm does not tie
// it to the creating thread.
unsafe impl Send for CmId {}

fn to_sockaddr(addr: SocketAddr) -> socket2::SockAddr {
    socket2::SockAddr::from(addr)
}

/// Reads a socket address rdma_cm stored (IPv4 or IPv6).
fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it can contain.
            let sin6 = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

impl CmId {
    /// A new identifier on `ch` for reliable connections (RDMA_PS_TCP).
    pub fn new(ch: &Channel) -> Result<CmId, VerbsError> {
        let mut id = ptr::null_mut();
        // SAFETY: `ch.ch` is valid; `id` receives the new identifier.
        let rc = unsafe { sys::rdma_create_id(ch.ch, &mut id, ptr::null_mut(), sys::rdma_port_space::RDMA_PS_TCP) };
        check("rdma_create_id", rc)?;
        Ok(CmId { id })
    }

    /// Starts resolving `dst` to a device and address (event ADDR_RESOLVED follows).
    pub fn resolve_addr(&self, dst: SocketAddr, timeout_ms: i32) -> Result<(), VerbsError> {
        let sa = to_sockaddr(dst);
        // SAFETY: `sa` outlives the call, which copies it; `self.id` is valid.
        let rc = unsafe { sys::rdma_resolve_addr(self.id, ptr::null_mut(), sa.as_ptr() as *mut _, timeout_ms) };
        check("rdma_resolve_addr", rc)
    }

    /// Starts resolving the route (event ROUTE_RESOLVED follows).
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<(), VerbsError> {
        // SAFETY: `self.id` is valid.
        check("rdma_resolve_route", unsafe {
            sys::rdma_resolve_route(self.id, timeout_ms)
        })
    }

    /// Binds to `addr` and listens.
    pub fn listen(&self, addr: SocketAddr, backlog: i32) -> Result<(), VerbsError> {
        let sa = to_sockaddr(addr);
        // SAFETY: `sa` outlives the call, which copies it; `self.id` is valid.
        check("rdma_bind_addr", unsafe {
            sys::rdma_bind_addr(self.id, sa.as_ptr() as *mut _)
        })?;
        // SAFETY: `self.id` is valid and bound.
        check("rdma_listen", unsafe { sys::rdma_listen(self.id, backlog) })
    }

    /// Moves the identifier's events to `ch` (an accepted connection gets its own channel).
    pub fn migrate(&self, ch: &Channel) -> Result<(), VerbsError> {
        // SAFETY: both are valid; every event of this id was acknowledged (Channel::poll
        // acknowledges at once), so rdma_migrate_id does not wait.
        check("rdma_migrate_id", unsafe { sys::rdma_migrate_id(self.id, ch.ch) })
    }

    fn conn_param(private: &[u8], depth: ReadDepth) -> sys::rdma_conn_param {
        sys::rdma_conn_param {
            private_data: private.as_ptr() as *const _,
            private_data_len: private.len().min(56) as u8,
            responder_resources: depth.responder_resources,
            initiator_depth: depth.initiator_depth,
            flow_control: 0,
            retry_count: 7,
            rnr_retry_count: 7,
            srq: 0,
            qp_num: 0,
        }
    }

    /// Connects (active side, after ROUTE_RESOLVED and `Qp::new`); ESTABLISHED follows.
    pub fn connect(&self, private: &[u8]) -> Result<(), VerbsError> {
        self.connect_with(private, ReadDepth::ONE)
    }

    /// As [`CmId::connect`], with the RDMA READ depths to negotiate.
    pub fn connect_with(&self, private: &[u8], depth: ReadDepth) -> Result<(), VerbsError> {
        let mut p = Self::conn_param(private, depth);
        // SAFETY: `p` and the private data it points at outlive the call, which copies them.
        check("rdma_connect", unsafe { sys::rdma_connect(self.id, &mut p) })
    }

    /// Accepts (passive side, after `Qp::new`); ESTABLISHED follows.
    pub fn accept(&self, private: &[u8]) -> Result<(), VerbsError> {
        self.accept_with(private, ReadDepth::ONE)
    }

    /// As [`CmId::accept`], with the RDMA READ depths to grant: `initiator_depth` at most
    /// the request's [`CmEvent::initiator_depth`] and the device's [`Qp::max_init_rd_atom`].
    pub fn accept_with(&self, private: &[u8], depth: ReadDepth) -> Result<(), VerbsError> {
        let mut p = Self::conn_param(private, depth);
        // SAFETY: as in `connect`.
        check("rdma_accept", unsafe { sys::rdma_accept(self.id, &mut p) })
    }

    /// Refuses a connection request.
    pub fn reject(&self) {
        // SAFETY: `self.id` is valid; no private data.
        unsafe { sys::rdma_reject(self.id, ptr::null(), 0) };
    }

    /// Refuses a connection request with private data telling the peer why (NVMe/RDMA
    /// puts a record format and a status there); at most 56 bytes are sent.
    pub fn reject_with(&self, private: &[u8]) {
        let n = private.len().min(56) as u8;
        // SAFETY: `self.id` is valid; `private` outlives the call, which copies `n` bytes.
        unsafe { sys::rdma_reject(self.id, private.as_ptr() as *const _, n) };
    }

    /// Starts an orderly disconnect (the peer sees DISCONNECTED); errors are ignored.
    pub fn disconnect(&self) {
        // SAFETY: `self.id` is valid.
        unsafe { sys::rdma_disconnect(self.id) };
    }

    /// Local address (bound or resolved).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: `self.id` is valid; the route's address storage is plain data.
        from_storage(unsafe { &(*self.id).route.addr.src_addr_union.src_storage })
    }

    /// Peer address (resolved or of an accepted request).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as in `local_addr`.
        from_storage(unsafe { &(*self.id).route.addr.dst_addr_union.dst_storage })
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: destroyed once; any queue pair on it was destroyed first (a `Qp` borrows
        // its id's lifetime through `Conn` field order), and its events were acknowledged.
        unsafe { sys::rdma_destroy_id(self.id) };
    }
}

/// Most scatter/gather entries a SEND of [`Qp::post_send_sges`] may carry.
pub const SEND_SGE_MAX: usize = 16;

/// One scatter/gather entry of a SEND, made only by [`Qp::staging_sge`] (bounds-checked
/// in the send region) or [`Qp::pool_sge`] (inside a registered engine pool).
#[derive(Clone, Copy)]
pub struct Sge(sys::ibv_sge);

impl Sge {
    /// Bytes this entry names.
    pub fn len(&self) -> usize {
        self.0.length as usize
    }
    /// True for an entry of no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.length == 0
    }
}

/// Memory registered with the protection domain, owned by a [`Qp`].
struct Region {
    buf: Box<[u8]>,
    mr: *mut sys::ibv_mr,
}

/// Which of a [`Qp`]'s regions a work request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    /// The send staging ring.
    Send = 0,
    /// The receive ring.
    Recv = 1,
    /// Control words (credit word, credit sources): remotely writable.
    Ctl = 2,
    /// Data the peer reads and writes by RDMA READ / WRITE under its rkey, and the local
    /// side moves by RDMA READ / WRITE to and from the peer's memory (present when
    /// `QpSizes::data_bytes` is not 0).
    Data = 3,
}

/// An RDMA transfer between a local region and the peer's memory named by address and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdmaOp {
    /// Peer memory into the local region.
    Read,
    /// The local region into peer memory.
    Write,
}

/// A work completion, reduced to what the transport reads.
#[derive(Debug, Clone, Copy)]
pub struct Wc {
    pub wr_id: u64,
    pub ok: bool,
    pub status: u32,
    pub byte_len: u32,
}

/// Sizes of a connection's queues and regions.
#[derive(Debug, Clone, Copy)]
pub struct QpSizes {
    pub send_wr: u32,
    pub recv_wr: u32,
    pub send_bytes: usize,
    pub recv_bytes: usize,
    pub ctl_bytes: usize,
    /// The data region's bytes; 0: none.
    pub data_bytes: usize,
    /// Scatter/gather entries wanted per SEND (at least 1); the queue pair gets the
    /// smaller of this, [`SEND_SGE_MAX`] and the device's limit ([`Qp::send_sge`]).
    pub send_sge: u32,
}

/// A connection's verbs resources on its [`CmId`].
pub struct Qp {
    id: *mut sys::rdma_cm_id,
    /// The device, the key of its shared protection domain.
    verbs: *mut sys::ibv_context,
    /// The device's shared protection domain (null until acquired).
    pd: *mut sys::ibv_pd,
    send_cq: *mut sys::ibv_cq,
    recv_cq: *mut sys::ibv_cq,
    qp: *mut sys::ibv_qp,
    regions: ArrayVec<Region, 4>,
    /// The device's engine pool keys as last published (address range → lkey).
    pools: Arc<PoolTable>,
    send_sge: u32,
    wcs: [sys::ibv_wc; WC_BATCH],
    /// The device can invalidate a remote key with a SEND (memory management extensions).
    send_inv: bool,
    /// The device's `max_qp_init_rd_atom` (RDMA READs one queue pair may have outstanding),
    /// at most 255; 1 when the device could not be asked.
    max_init_rd_atom: u8,
    /// The device's `max_qp_rd_atom` (RDMA READs one queue pair may serve at once), as
    /// above.
    max_rd_atom: u8,
}

// SAFETY: all of it is used by one thread at a time (the owning reactor); verbs objects are
// not tied to the creating thread.
unsafe impl Send for Qp {}

impl Qp {
    /// Takes the device's shared protection domain (made by the first `Qp` on the device),
    /// creates CQs and the RC queue pair on `id` and registers the regions. `id` must have a
    /// device (address resolved, or a connection request) and must outlive the `Qp`.
    pub fn new(id: &CmId, s: QpSizes) -> Result<Qp, VerbsError> {
        // SAFETY: `id.id` is valid; `verbs` is its device context once resolved.
        let verbs = unsafe { (*id.id).verbs };
        if verbs.is_null() {
            return Err(("rdma_cm_id.verbs", io::Error::from_raw_os_error(libc::ENODEV)));
        }
        let mut q = Qp {
            id: id.id,
            verbs,
            pd: ptr::null_mut(),
            send_cq: ptr::null_mut(),
            recv_cq: ptr::null_mut(),
            qp: ptr::null_mut(),
            regions: ArrayVec::new(),
            pools: Arc::default(),
            send_sge: 1,
            // SAFETY: ibv_wc is plain old data; all-zero is a valid value.
            wcs: unsafe { core::mem::zeroed() },
            send_inv: false,
            max_init_rd_atom: 1,
            max_rd_atom: 1,
        };
        // SAFETY: ibv_device_attr is plain old data (all-zero valid); `verbs` is a valid
        // device context and `attr` outlives the call.
        let attr = unsafe {
            let mut attr: sys::ibv_device_attr = core::mem::zeroed();
            (sys::ibv_query_device(verbs, &mut attr) == 0).then_some(attr)
        };
        let mem_mgt = sys::ibv_device_cap_flags::IBV_DEVICE_MEM_MGT_EXTENSIONS.0;
        q.send_inv = attr.is_some_and(|a| a.device_cap_flags & mem_mgt != 0);
        let want_sge = s.send_sge.clamp(1, SEND_SGE_MAX as u32);
        q.send_sge = attr.map_or(1, |a| want_sge.min(a.max_sge.max(1) as u32));
        q.max_init_rd_atom = attr.map_or(1, |a| a.max_qp_init_rd_atom.clamp(1, 255) as u8);
        q.max_rd_atom = attr.map_or(1, |a| a.max_qp_rd_atom.clamp(1, 255) as u8);
        // Released by `Drop for Qp` (after the queue pair and regions), also on failure below.
        (q.pd, q.pools) = pd_acquire(verbs)?;
        // SAFETY: `verbs` is a valid device context and `q.pd` its live protection domain;
        // results are checked for null and freed by `Drop for Qp` in reverse order.
        unsafe {
            q.send_cq = sys::ibv_create_cq(verbs, s.send_wr as i32, ptr::null_mut(), ptr::null_mut(), 0);
            if q.send_cq.is_null() {
                return Err(last_err("ibv_create_cq(send)"));
            }
            q.recv_cq = sys::ibv_create_cq(verbs, s.recv_wr as i32, ptr::null_mut(), ptr::null_mut(), 0);
            if q.recv_cq.is_null() {
                return Err(last_err("ibv_create_cq(recv)"));
            }
            let mut attr: sys::ibv_qp_init_attr = core::mem::zeroed();
            attr.send_cq = q.send_cq;
            attr.recv_cq = q.recv_cq;
            attr.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
            attr.sq_sig_all = 0;
            attr.cap.max_send_wr = s.send_wr;
            attr.cap.max_recv_wr = s.recv_wr;
            attr.cap.max_send_sge = q.send_sge;
            attr.cap.max_recv_sge = 1;
            let mut rc = sys::rdma_create_qp(id.id, q.pd, &mut attr);
            if rc != 0 && q.send_sge > 1 {
                // A device whose send queues take fewer entries than its `max_sge` says:
                // one entry, every byte copied, rather than no connection.
                q.send_sge = 1;
                attr.cap.max_send_sge = 1;
                attr.cap.max_send_wr = s.send_wr;
                attr.cap.max_recv_wr = s.recv_wr;
                attr.cap.max_recv_sge = 1;
                rc = sys::rdma_create_qp(id.id, q.pd, &mut attr);
            }
            check("rdma_create_qp", rc)?;
            q.qp = (*id.id).qp;
        }
        let local = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        let remote = local | sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        let remote_rw = remote | sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
        let mut want = ArrayVec::<(usize, u32), 4>::new();
        want.extend([(s.send_bytes, local), (s.recv_bytes, local), (s.ctl_bytes, remote)]);
        if s.data_bytes > 0 {
            want.push((s.data_bytes, remote_rw));
        }
        for (bytes, access) in want {
            let mut buf = vec![0u8; bytes.max(64)].into_boxed_slice();
            // SAFETY: `buf` is live memory of that length; it stays allocated (and does not
            // move: a boxed slice) until the region is deregistered in `Drop for Qp`.
            let mr = unsafe { sys::ibv_reg_mr(q.pd, buf.as_mut_ptr() as *mut _, buf.len(), access as i32) };
            if mr.is_null() {
                return Err(last_err("ibv_reg_mr"));
            }
            q.regions.push(Region { buf, mr });
        }
        Ok(q)
    }

    fn sge(&self, m: Mem, off: usize, len: usize) -> Result<sys::ibv_sge, VerbsError> {
        let Some(r) = self.regions.get(m as usize) else {
            return Err(("work request region", io::Error::from_raw_os_error(libc::EINVAL)));
        };
        if off.checked_add(len).is_none_or(|end| end > r.buf.len()) || len > u32::MAX as usize {
            return Err(("work request bounds", io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // SAFETY: `r.mr` is a live registration of `r.buf`.
        let lkey = unsafe { (*r.mr).lkey };
        Ok(sys::ibv_sge {
            addr: r.buf.as_ptr() as u64 + off as u64,
            length: len as u32,
            lkey,
        })
    }

    /// Scatter/gather entries a SEND may carry on this queue pair.
    pub fn send_sge(&self) -> usize {
        self.send_sge as usize
    }

    /// Registers every engine buffer pool made since the last look with the device's
    /// shared protection domain, once per device (a pool another connection on the device
    /// registered already is only looked up): `ibv_reg_mr` pins the pool and is a system
    /// call, so call it at setup and when [`engine::buf::pool_count`] changes, not per I/O
    /// (without a new pool it is one atomic load). A pool whose registration fails (e.g.
    /// `RLIMIT_MEMLOCK`) is not retried; its buffers are copied. Returns how many of the
    /// pools new to this `Qp` are not registered.
    pub fn register_new_pools(&mut self) -> usize {
        let before = self.pools.seen;
        if before >= engine::buf::pool_count() || self.pd.is_null() {
            return 0;
        }
        if let Some(t) = pd_register_pools(self.verbs) {
            self.pools = t;
        }
        let t = &self.pools;
        let registered = t.keys.iter().filter(|k| k.pool >= before && k.pool < t.seen).count();
        t.seen.saturating_sub(before) - registered
    }

    /// Engine pools registered with this queue pair's (shared) protection domain.
    pub fn pools_registered(&self) -> usize {
        self.pools.keys.len()
    }

    /// An entry naming `bytes` in place when they lie inside a registered engine pool (a
    /// scan of at most [`engine::buf::POOLS_MAX`] ranges); `None` otherwise (copy them).
    #[inline]
    pub fn pool_sge(&self, bytes: &[u8]) -> Option<Sge> {
        let a = bytes.as_ptr() as usize;
        let len = bytes.len();
        if len == 0 || len > u32::MAX as usize {
            return None;
        }
        let p = self
            .pools
            .keys
            .iter()
            .find(|p| a >= p.start && a.checked_add(len).is_some_and(|end| end <= p.start + p.len))?;
        Some(Sge(sys::ibv_sge {
            addr: a as u64,
            length: len as u32,
            lkey: p.lkey,
        }))
    }

    /// An entry naming `len` bytes at `off` of the send staging region (bounds-checked).
    pub fn staging_sge(&self, off: usize, len: usize) -> Result<Sge, VerbsError> {
        self.sge(Mem::Send, off, len).map(Sge)
    }

    /// Posts one SEND gathering `sges` in order (at most [`Qp::send_sge`] of them). The
    /// caller keeps the bytes they name unchanged until the SEND is known complete.
    pub fn post_send_sges(&mut self, wr_id: u64, sges: &[Sge], signalled: bool) -> Result<(), VerbsError> {
        if sges.is_empty() || sges.len() > self.send_sge as usize {
            return Err(("send sge count", io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let mut list = [sys::ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        }; SEND_SGE_MAX];
        for (d, s) in list.iter_mut().zip(sges) {
            *d = s.0;
        }
        // Each entry was made by `staging_sge` (inside the send region, which outlives the
        // queue pair) or `pool_sge` (inside an engine pool, mapped for the whole process).
        // Pool keys belong to the device's shared protection domain, so an entry made by
        // another `Qp` on the same device is as good; one made on another device carries a
        // key of another protection domain: the device refuses it with an error completion,
        // it never reads through it.
        let op = sys::ibv_wr_opcode::IBV_WR_SEND;
        self.post_send_wr(wr_id, &mut list[..sges.len()], op, None, signalled, 0)
    }

    /// Address and remote key of `off` in a region (advertised to the peer).
    pub fn remote_ref(&self, m: Mem, off: usize) -> (u64, u32) {
        let r = &self.regions[m as usize];
        // SAFETY: `r.mr` is a live registration of `r.buf`.
        let rkey = unsafe { (*r.mr).rkey };
        (r.buf.as_ptr() as u64 + off as u64, rkey)
    }

    /// A region's bytes, for reading completed receives and writing unposted send slots.
    pub fn mem(&self, m: Mem) -> &[u8] {
        &self.regions[m as usize].buf
    }

    /// As [`Qp::mem`], writable (the send ring's free slots, credit sources).
    pub fn mem_mut(&mut self, m: Mem) -> &mut [u8] {
        &mut self.regions[m as usize].buf
    }

    /// Reads a little-endian u64 the peer writes by RDMA WRITE (volatile: the NIC changes
    /// it behind the compiler's back).
    pub fn read_remote_written_u64(&self, off: usize) -> u64 {
        let b = &self.regions[Mem::Ctl as usize].buf;
        let w: &[u8; 8] = b[off..off + 8].try_into().unwrap_or(&[0; 8]);
        // SAFETY: `w` is a valid, initialised 8-byte array (alignment 1) borrowed from the
        // region; a volatile read keeps the compiler from caching it across polls.
        u64::from_le_bytes(unsafe { ptr::read_volatile(w) })
    }

    /// Posts one send-queue work request; `invalidate_rkey` is used by SEND with
    /// Invalidate only.
    fn post_send_wr(
        &mut self,
        wr_id: u64,
        sges: &mut [sys::ibv_sge],
        opcode: u32,
        remote: Option<(u64, u32)>,
        signalled: bool,
        invalidate_rkey: u32,
    ) -> Result<(), VerbsError> {
        // SAFETY: ibv_send_wr is plain old data; all-zero is a valid value.
        let mut wr: sys::ibv_send_wr = unsafe { core::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = sges.as_mut_ptr();
        wr.num_sge = sges.len() as i32;
        wr.opcode = opcode;
        wr.send_flags = if signalled {
            sys::ibv_send_flags::IBV_SEND_SIGNALED.0
        } else {
            0
        };
        if let Some((addr, rkey)) = remote {
            wr.wr.rdma = sys::rdma_t {
                remote_addr: addr,
                rkey,
            };
        }
        if opcode == sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV {
            wr.imm_data_invalidated_rkey_union = sys::imm_data_invalidated_rkey_union_t {
                invalidated_rkey: invalidate_rkey,
            };
        }
        let mut bad = ptr::null_mut();
        // SAFETY: `wr` and `sges` live across the call (the provider copies them); each
        // entry names registered memory that outlives the queue pair (a region this Qp owns,
        // bounds-checked by `sge`, or an engine pool, see `post_send_sges`), and `num_sge`
        // is within the queue pair's `max_send_sge` (callers post one entry or check it).
        let rc = unsafe { sys::ibv_post_send(self.qp, &mut wr, &mut bad) };
        check("ibv_post_send", rc)
    }

    /// Posts a SEND of `len` bytes at `off` of the send region.
    pub fn post_send(&mut self, wr_id: u64, off: usize, len: usize, signalled: bool) -> Result<(), VerbsError> {
        let sge = self.sge(Mem::Send, off, len)?;
        self.post_send_wr(wr_id, &mut [sge], sys::ibv_wr_opcode::IBV_WR_SEND, None, signalled, 0)
    }

    /// RDMA READs this queue pair's device lets one queue pair have outstanding (at most
    /// 255, the connection parameters' width).
    pub fn max_init_rd_atom(&self) -> u8 {
        self.max_init_rd_atom
    }

    /// RDMA READs this queue pair's device serves at once for one queue pair (its
    /// responder resources; at most 255).
    pub fn max_rd_atom(&self) -> u8 {
        self.max_rd_atom
    }

    /// Whether the device can invalidate a remote key with a SEND ([`Qp::post_send_inv`]).
    pub fn can_send_with_invalidate(&self) -> bool {
        self.send_inv
    }

    /// Posts a SEND of `len` bytes at `off` of the send region that also invalidates the
    /// peer's remote key `rkey` (SEND with Invalidate), or a plain SEND when the device
    /// cannot ([`Qp::can_send_with_invalidate`]). Returns whether it invalidates.
    pub fn post_send_inv(
        &mut self,
        wr_id: u64,
        off: usize,
        len: usize,
        signalled: bool,
        rkey: u32,
    ) -> Result<bool, VerbsError> {
        let sge = self.sge(Mem::Send, off, len)?;
        if !self.send_inv {
            self.post_send_wr(wr_id, &mut [sge], sys::ibv_wr_opcode::IBV_WR_SEND, None, signalled, 0)?;
            return Ok(false);
        }
        let op = sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV;
        self.post_send_wr(wr_id, &mut [sge], op, None, signalled, rkey)?;
        Ok(true)
    }

    /// Posts an RDMA READ or WRITE of `len` bytes between `off` of the local region `m` and
    /// the peer's memory at `remote` (address, rkey). The peer's memory is the peer's to
    /// bound-check (its NIC refuses an access outside the registration with a completion
    /// error); the local side is checked here.
    #[allow(clippy::too_many_arguments)]
    pub fn post_rdma(
        &mut self,
        wr_id: u64,
        op: RdmaOp,
        m: Mem,
        off: usize,
        len: usize,
        remote: (u64, u32),
        signalled: bool,
    ) -> Result<(), VerbsError> {
        let sge = self.sge(m, off, len)?;
        let opcode = match op {
            RdmaOp::Read => sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
            RdmaOp::Write => sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
        };
        self.post_send_wr(wr_id, &mut [sge], opcode, Some(remote), signalled, 0)
    }

    /// Posts an RDMA WRITE of `len` bytes at `off` of the control region to the peer's
    /// `remote` (address, rkey).
    pub fn post_write_ctl(
        &mut self,
        wr_id: u64,
        off: usize,
        len: usize,
        remote: (u64, u32),
        signalled: bool,
    ) -> Result<(), VerbsError> {
        let sge = self.sge(Mem::Ctl, off, len)?;
        self.post_send_wr(
            wr_id,
            &mut [sge],
            sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            Some(remote),
            signalled,
            0,
        )
    }

    /// Posts a receive of up to `len` bytes into `off` of the receive region.
    pub fn post_recv(&mut self, wr_id: u64, off: usize, len: usize) -> Result<(), VerbsError> {
        let mut sge = self.sge(Mem::Recv, off, len)?;
        let mut wr = sys::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: as in `post_send_wr`: the sge names owned, registered, bounds-checked memory.
        let rc = unsafe { sys::ibv_post_recv(self.qp, &mut wr, &mut bad) };
        check("ibv_post_recv", rc)
    }

    fn poll(&mut self, send: bool, out: &mut dyn FnMut(Wc)) -> Result<usize, VerbsError> {
        let cq = if send { self.send_cq } else { self.recv_cq };
        // SAFETY: `cq` is live; the provider writes at most WC_BATCH entries into `self.wcs`.
        let n = unsafe { sys::ibv_poll_cq(cq, WC_BATCH as i32, self.wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(("ibv_poll_cq", io::Error::from_raw_os_error(-n)));
        }
        for wc in &self.wcs[..n as usize] {
            out(Wc {
                wr_id: wc.wr_id,
                ok: wc.status == sys::ibv_wc_status::IBV_WC_SUCCESS,
                status: wc.status,
                byte_len: wc.byte_len,
            });
        }
        Ok(n as usize)
    }

    /// Reads up to [`WC_BATCH`] send completions.
    pub fn poll_send_cq(&mut self, out: &mut dyn FnMut(Wc)) -> Result<usize, VerbsError> {
        self.poll(true, out)
    }

    /// Reads up to [`WC_BATCH`] receive completions.
    pub fn poll_recv_cq(&mut self, out: &mut dyn FnMut(Wc)) -> Result<usize, VerbsError> {
        self.poll(false, out)
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: each object was created above and is freed once, queue pair first, so no
        // posted work request can reach a deregistered region; the id outlives us.
        unsafe {
            if !self.qp.is_null() {
                sys::rdma_destroy_qp(self.id);
            }
            for r in self.regions.drain(..) {
                sys::ibv_dereg_mr(r.mr);
                drop(r.buf);
            }
            if !self.recv_cq.is_null() {
                sys::ibv_destroy_cq(self.recv_cq);
            }
            if !self.send_cq.is_null() {
                sys::ibv_destroy_cq(self.send_cq);
            }
        }
        // Nothing of ours is on the protection domain any more: the last user frees it (and
        // the device's pool registrations).
        if !self.pd.is_null() {
            pd_release(self.verbs);
        }
    }
}

/// Human text of a work completion status.
pub fn wc_status_str(status: u32) -> &'static str {
    // SAFETY: ibv_wc_status_str returns a static string for any value.
    let p = unsafe { sys::ibv_wc_status_str(status) };
    if p.is_null() {
        return "unknown status";
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { core::ffi::CStr::from_ptr(p) }
        .to_str()
        .unwrap_or("unknown status")
}
