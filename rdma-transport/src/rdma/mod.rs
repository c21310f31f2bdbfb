//! RDMA verbs implementation of [`Connection`] (feature `rdma`): RC queue pairs set up by
//! rdma_cm, polled by the owning reactor (`docs/rdma.md`).
//!
//! Where it sits: beside [`crate::tcp`], under the primary's relay links and the relay's
//! listener when an address is `rdma://`. The same frames, handshake and CRCs travel; only
//! the way bytes move differs.
//!
//! Sending: `send` queues the frame (bounded queue, as TCP); `poll_send` reaps send
//! completions (freeing staging slots), reads the credit word the peer writes, then lays
//! queued frames out message by message ([`rdma_proto::place`]) and posts a SEND per full
//! (or last) message while credits last. A message is a gather list: headers and data
//! segments outside the engine's buffer pools are copied into the registered staging ring;
//! data segments inside a pool (registered once per connection) are named in place by a
//! scatter/gather entry, no copy (zero-copy). Only every [`SIGNAL_EVERY`]-th work request
//! asks for a completion, and the last SEND of a burst when it carries zero-copy data. A
//! frame that was only copied is handed back as soon as its bytes are in the staging ring;
//! a frame with zero-copy bytes is held until the SEND carrying its last byte is known
//! complete (a send completion, never a receive: an Ack for it may arrive first).
//! Receiving: `poll_recv` reads receive completions
//! into a ready list, hands frames to the caller (in place in the receive buffer, or from
//! the reassembly buffer for a frame that spans messages), re-posts each buffer once its
//! frames are delivered and returns credits by RDMA WRITE. Setup (`connect`, the acceptor)
//! allocates and registers everything once; the data path does neither, nor any system call
//! except rdma_cm's event check every [`CM_POLL_PERIOD_NS`].

mod pd;
#[cfg(test)]
mod rw_tests;
mod setup;
pub mod verbs;

use core::ops::Deref;
use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::rdma_proto::{self, ConnParams, Reassembler, RecvCredits, SendCredits, Step};
use crate::transport::{ConnState, ConnStats, Connection, OutFrame, Segs, SendCompletion, SendError, TransportError};
use crate::wire::{self, Frame, HeaderBuf};
use arrayvec::ArrayVec;
use verbs::{Channel, CmId, Mem, Qp, Sge, Wc, SEND_SGE_MAX};

pub use setup::RdmaAcceptor;
pub use verbs::{pd_stats, rdma_device_present, PdStats};

/// Default bound of the send queue, in frames (as TCP).
pub const SEND_QUEUE_FRAMES_DEFAULT: usize = 256;
/// Default bytes of one message (one SEND, one receive buffer).
pub const MSG_BYTES_DEFAULT: u32 = 64 * 1024;
/// Default receive buffers kept posted (the peer's credits).
pub const RECV_SLOTS_DEFAULT: u16 = 32;
/// Default send staging slots.
pub const SEND_SLOTS_DEFAULT: u16 = 32;
/// Credit-return RDMA WRITEs that may be outstanding (each has its own source word).
pub const CREDIT_WRITES_MAX: usize = 16;
/// One work request in this many is signalled (asks for a completion).
pub const SIGNAL_EVERY: u64 = 8;
/// How often an open connection checks rdma_cm for DISCONNECTED (a system call).
pub const CM_POLL_PERIOD_NS: u64 = 1_000_000;
/// Most frames delivered per `poll_recv` (as TCP).
pub const RECV_FRAMES_PER_POLL_MAX: usize = 64;
/// Scatter/gather entries asked for per SEND (the device may grant fewer; with 1 every
/// byte is copied). Bounds the zero-copy segments of one message.
pub const ZC_SGE_WANT: u32 = 8;
/// Offset of the credit word (the peer writes its grant total here) in the control region.
const CREDIT_WORD_OFF: usize = 0;
/// Offset of the credit-return source words in the control region.
const CREDIT_SRC_OFF: usize = 64;

/// Settings of an RDMA connection, fixed at connect/accept time.
#[derive(Debug, Clone, Copy)]
pub struct RdmaConfig {
    /// Send queue bound in frames; `send` returns `Full` beyond it.
    pub send_queue_frames: usize,
    /// Bytes of one message; the connection uses the smaller of both sides'.
    pub msg_bytes: u32,
    /// Receive buffers kept posted.
    pub recv_slots: u16,
    /// Send staging slots (at least [`SIGNAL_EVERY`]).
    pub send_slots: u16,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        Self {
            send_queue_frames: SEND_QUEUE_FRAMES_DEFAULT,
            msg_bytes: MSG_BYTES_DEFAULT,
            recv_slots: RECV_SLOTS_DEFAULT,
            send_slots: SEND_SLOTS_DEFAULT,
        }
    }
}

impl RdmaConfig {
    fn normalized(mut self) -> Self {
        self.msg_bytes = self
            .msg_bytes
            .clamp(rdma_proto::MSG_BYTES_MIN, rdma_proto::MSG_BYTES_MAX);
        self.recv_slots = self.recv_slots.clamp(4, rdma_proto::RECV_SLOTS_MAX);
        self.send_slots = self.send_slots.clamp(SIGNAL_EVERY as u16, 1024);
        self.send_queue_frames = self.send_queue_frames.max(1);
        self
    }
    fn sq_depth(&self) -> usize {
        self.send_slots as usize + CREDIT_WRITES_MAX
    }
}

/// Where setup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ResolvingAddr,
    ResolvingRoute,
    /// connect/accept issued; waiting for ESTABLISHED.
    Establishing,
    Open,
    Gone,
}

/// Kinds of outstanding send-queue work requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WrKind {
    Send,
    CreditWrite,
}

/// A piece of the open message: bytes of the staging slot, or a pool segment in place.
#[derive(Clone, Copy)]
enum Piece {
    /// `len` bytes at `off` of the send region.
    Staging { off: usize, len: usize },
    /// Bytes of a registered engine pool.
    Pool(Sge),
}

/// A sent frame whose data is still read by the device: its buffers go back once message
/// `msg` (the one with its last byte) is known complete.
struct Held<B> {
    msg: u64,
    user_data: u64,
    data: Segs<B>,
}

/// One RDMA replication connection. Owned by one reactor (see [`Connection`]).
pub struct RdmaConnection<B> {
    // Field order is drop order: the queue pair before its id, the id before its channel.
    qp: Option<Qp>,
    id: CmId,
    ch: Channel,
    phase: Phase,
    state: ConnState,
    error_reported: bool,
    cfg: RdmaConfig,
    addr: SocketAddr,
    /// The peer's parameters, once known.
    peer: Option<ConnParams>,
    /// Message size in use: min of both sides'.
    msg: usize,
    sendq: VecDeque<OutFrame<B>>,
    /// Bytes of the head frame already laid out in messages.
    head_copied: usize,
    /// The head frame has zero-copy pieces (posted or in the open message).
    head_zc: bool,
    /// Sent frames whose zero-copy bytes the device may still read, in send order.
    held: VecDeque<Held<B>>,
    /// Bound of `held` (it never reaches it; see `held_max`).
    held_max: usize,
    /// A frame was held since the last signalled work request: the last SEND of a burst
    /// must ask for a completion, or the frame would wait for the next burst.
    zc_unsignalled: bool,
    /// Pieces of the open message (at most `sge_cap`).
    pieces: ArrayVec<Piece, SEND_SGE_MAX>,
    /// Scatter/gather entries per SEND the queue pair allows.
    sge_cap: usize,
    /// Bytes used in the open staging slot (`fill` minus zero-copy bytes).
    stage_fill: usize,
    /// Pool registrations that failed (their buffers are copied).
    pool_reg_failures: u64,
    credits: SendCredits,
    /// Messages posted so far; the open slot is `tx_next % send_slots`.
    tx_next: u64,
    /// Posted SENDs not yet known complete.
    tx_inflight: usize,
    /// SENDs known complete (messages below this number).
    tx_retired: u64,
    /// Bytes in the open slot.
    fill: usize,
    /// Work requests posted so far (the next one's id).
    wr_seq: u64,
    /// Work requests known complete (ids below this).
    wr_retired: u64,
    /// Kind of each outstanding work request, by id modulo the queue depth.
    wr_kinds: Box<[WrKind]>,
    writes_inflight: usize,
    credit_writes: u64,
    /// Received messages not fully delivered: (slot, bytes).
    rx_ready: VecDeque<(u32, u32)>,
    /// Offset in the head ready message.
    rx_off: usize,
    reasm: Reassembler,
    rcredits: RecvCredits,
    /// No rdma_cm event check before this time (`engine::clock::now_ns`).
    next_cm_poll_ns: u64,
    /// A last frame was posted by `send_last`: do not disconnect before drop.
    last_posted: bool,
    stats: ConnStats,
}

/// Most frames held at once. A held frame's last byte is in an incomplete message (at most
/// `send_slots` posted, plus the open one), and each message ends at most one held frame
/// per zero-copy piece plus one that started earlier: `(send_slots + 1) * (sge + 1)`.
/// Frames of completed messages are released before any new one is laid out.
fn held_max(cfg: &RdmaConfig) -> usize {
    (cfg.send_slots as usize + 1) * (ZC_SGE_WANT as usize + 1)
}

fn rdma_err((op, source): verbs::VerbsError) -> TransportError {
    TransportError::Rdma { op, source }
}

impl<B: Deref<Target = [u8]>> RdmaConnection<B> {
    fn new_raw(id: CmId, ch: Channel, addr: SocketAddr, cfg: RdmaConfig, phase: Phase) -> Self {
        let cfg = cfg.normalized();
        Self {
            qp: None,
            id,
            ch,
            phase,
            state: ConnState::Connecting,
            error_reported: false,
            cfg,
            addr,
            peer: None,
            msg: cfg.msg_bytes as usize,
            sendq: VecDeque::with_capacity(cfg.send_queue_frames),
            head_copied: 0,
            head_zc: false,
            held: VecDeque::with_capacity(held_max(&cfg)),
            held_max: held_max(&cfg),
            zc_unsignalled: false,
            pieces: ArrayVec::new(),
            sge_cap: 1,
            stage_fill: 0,
            pool_reg_failures: 0,
            credits: SendCredits::new(0),
            tx_next: 0,
            tx_inflight: 0,
            tx_retired: 0,
            fill: 0,
            wr_seq: 0,
            wr_retired: 0,
            wr_kinds: vec![WrKind::Send; cfg.sq_depth()].into_boxed_slice(),
            writes_inflight: 0,
            credit_writes: 0,
            rx_ready: VecDeque::with_capacity(cfg.recv_slots as usize),
            rx_off: 0,
            reasm: Reassembler::new(),
            rcredits: RecvCredits::new(cfg.recv_slots, cfg.recv_slots / 4),
            next_cm_poll_ns: 0,
            last_posted: false,
            stats: ConnStats::default(),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Local address, once resolved.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.id.local_addr()
    }

    /// Whether received messages wait to be delivered (a poll stops at its frame limit).
    pub fn has_buffered(&self) -> bool {
        !self.rx_ready.is_empty()
    }

    /// Message size in use (valid once open).
    pub fn msg_bytes(&self) -> usize {
        self.msg
    }

    /// Engine buffer pools registered with this connection's protection domain, and the
    /// registrations that failed (those pools' buffers are copied).
    pub fn pools_registered(&self) -> (usize, u64) {
        (
            self.qp.as_ref().map_or(0, |q| q.pools_registered()),
            self.pool_reg_failures,
        )
    }

    /// Scatter/gather entries per SEND granted by the device (1: zero-copy is off).
    pub fn send_sge(&self) -> usize {
        self.sge_cap
    }

    /// Sent frames whose buffers the device may still read (returned on a later
    /// `poll_send`, once their SEND is known complete).
    pub fn held_frames(&self) -> usize {
        self.held.len()
    }

    /// Credits the peer granted that are not used yet.
    pub fn send_credits(&self) -> u64 {
        self.credits.available()
    }

    fn fail(&mut self) {
        if self.phase != Phase::Gone && !self.last_posted {
            self.id.disconnect();
        }
        self.phase = Phase::Gone;
        if self.state != ConnState::Closed {
            self.state = ConnState::Failed;
        }
    }

    /// Reports an error once; afterwards the connection is failed and returns `Closed`.
    /// After an invalid frame the connection stays up until `close`/`send_last`, so a
    /// refusal can still be sent (as TCP).
    fn report(&mut self, e: TransportError) -> TransportError {
        if matches!(e, TransportError::Wire(_)) {
            if self.state != ConnState::Closed {
                self.state = ConnState::Failed;
            }
        } else {
            self.fail();
        }
        self.error_reported = true;
        e
    }

    fn gone_error(&mut self) -> TransportError {
        self.error_reported = true;
        TransportError::Closed
    }

    fn closed_error(&self) -> TransportError {
        if self.reasm.partial() > 0 {
            TransportError::PeerClosedMidFrame {
                have: self.reasm.partial(),
                need: self.reasm.partial_need(),
            }
        } else {
            TransportError::PeerClosed
        }
    }

    fn drain_unsent(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> usize {
        // Posted frames the device may still read: the connection is failed or closed and
        // its queue pair going to the error state. Their bytes went out (or never will).
        while let Some(h) = self.held.pop_front() {
            done(SendCompletion {
                user_data: h.user_data,
                data: h.data,
                sent: true,
            });
        }
        let n = self.sendq.len();
        self.head_copied = 0;
        self.head_zc = false;
        while let Some(f) = self.sendq.pop_front() {
            done(SendCompletion {
                user_data: f.user_data,
                data: f.data,
                sent: false,
            });
        }
        n
    }

    /// Retires outstanding work requests up to and including `wr_id`.
    fn retire(&mut self, wr_id: u64) {
        let depth = self.wr_kinds.len() as u64;
        while self.wr_retired <= wr_id && self.wr_retired < self.wr_seq {
            match self.wr_kinds[(self.wr_retired % depth) as usize] {
                WrKind::Send => {
                    self.tx_inflight -= 1;
                    self.tx_retired += 1;
                }
                WrKind::CreditWrite => self.writes_inflight -= 1,
            }
            self.wr_retired += 1;
        }
    }

    fn wr_room(&self) -> bool {
        ((self.wr_seq - self.wr_retired) as usize) < self.wr_kinds.len()
    }

    /// Id and signalled flag of the next work request, recorded as `kind`.
    fn next_wr(&mut self, kind: WrKind) -> (u64, bool) {
        let id = self.wr_seq;
        let depth = self.wr_kinds.len() as u64;
        self.wr_kinds[(id % depth) as usize] = kind;
        self.wr_seq += 1;
        (id, id % SIGNAL_EVERY == SIGNAL_EVERY - 1)
    }

    /// Reads send completions; an error status fails the connection.
    fn reap_send_cq(&mut self) -> Result<(), TransportError> {
        let Some(qp) = self.qp.as_mut() else { return Ok(()) };
        let mut last_ok: Option<u64> = None;
        let mut bad: Option<Wc> = None;
        loop {
            let n = qp
                .poll_send_cq(&mut |wc| {
                    if wc.ok {
                        last_ok = Some(wc.wr_id);
                    } else if bad.is_none() {
                        bad = Some(wc);
                    }
                })
                .map_err(rdma_err)?;
            if n < verbs::WC_BATCH || bad.is_some() {
                break;
            }
        }
        if let Some(id) = last_ok {
            self.retire(id);
        }
        match bad {
            None => Ok(()),
            Some(wc) if wc.status == rdma_sys::ibv_wc_status::IBV_WC_WR_FLUSH_ERR => Err(self.closed_error()),
            Some(wc) => Err(TransportError::RdmaCompletion {
                what: "send",
                status: wc.status,
                text: verbs::wc_status_str(wc.status),
            }),
        }
    }

    /// Posts the open message as one SEND. False when there is no credit or no queue room.
    /// `tail`: nothing more follows in this poll, so a SEND after a held frame asks for a
    /// completion even off the every-[`SIGNAL_EVERY`] rule.
    fn flush(&mut self, tail: bool) -> Result<bool, TransportError> {
        if self.fill == 0 {
            return Ok(true);
        }
        if !self.wr_room() || self.credits.available() == 0 {
            return Ok(false);
        }
        let Some(qp) = self.qp.as_ref() else {
            return Err(TransportError::Closed);
        };
        let mut sges = ArrayVec::<Sge, SEND_SGE_MAX>::new();
        for p in &self.pieces {
            sges.push(match *p {
                Piece::Staging { off, len } => qp.staging_sge(off, len).map_err(rdma_err)?,
                Piece::Pool(sge) => sge,
            });
        }
        self.credits.take();
        let (id, every_n) = self.next_wr(WrKind::Send);
        let signalled = every_n || (tail && self.zc_unsignalled);
        let Some(qp) = self.qp.as_mut() else {
            return Err(TransportError::Closed);
        };
        qp.post_send_sges(id, &sges, signalled).map_err(rdma_err)?;
        if signalled {
            self.zc_unsignalled = false;
        }
        self.stats.send_calls += 1;
        self.tx_next += 1;
        self.tx_inflight += 1;
        self.fill = 0;
        self.stage_fill = 0;
        self.pieces.clear();
        Ok(true)
    }

    /// Appends `b` to the open staging slot as a piece of the open message (the caller
    /// checked the room).
    fn stage(&mut self, b: &[u8]) {
        let Some(qp) = self.qp.as_mut() else { return };
        let base = (self.tx_next % self.cfg.send_slots as u64) as usize * self.cfg.msg_bytes as usize;
        let off = base + self.stage_fill;
        qp.mem_mut(Mem::Send)[off..off + b.len()].copy_from_slice(b);
        match self.pieces.last_mut() {
            Some(Piece::Staging { len, .. }) => *len += b.len(),
            _ => self.pieces.push(Piece::Staging { off, len: b.len() }),
        }
        self.stage_fill += b.len();
        self.fill += b.len();
    }

    /// Scatter/gather entries `f` needs when laid out whole in one message (an upper bound:
    /// its header may join the staging piece before it).
    fn pieces_needed(&self, f: &OutFrame<B>) -> usize {
        let Some(qp) = self.qp.as_ref() else { return 1 };
        let mut n = 1;
        let mut last_staging = true;
        for d in &f.data {
            if self.sge_cap > 1 && qp.pool_sge(d).is_some() {
                n += 1;
                last_staging = false;
            } else if !last_staging {
                n += 1;
                last_staging = true;
            }
        }
        n
    }

    /// Lays out as much of the head frame as fits in the open message: header and data
    /// outside the pools copied into staging, pool data as entries of its own. Stops when
    /// the message is full or out of entries. Returns bytes laid out.
    fn place_head(&mut self) -> usize {
        let Some(f) = self.sendq.front() else { return 0 };
        let Some(qp) = self.qp.as_mut() else { return 0 };
        let base = (self.tx_next % self.cfg.send_slots as u64) as usize * self.cfg.msg_bytes as usize;
        let mut skip = self.head_copied;
        let mut n = 0;
        for (i, seg) in core::iter::once(f.header.as_bytes())
            .chain(f.data.iter().map(|d| &**d))
            .enumerate()
        {
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let room = self.msg - self.fill;
            if room == 0 {
                break;
            }
            let take = (seg.len() - skip).min(room);
            let part = &seg[skip..skip + take];
            skip = 0;
            let zc = if i > 0 && self.sge_cap > 1 {
                qp.pool_sge(part)
            } else {
                None
            };
            if let Some(sge) = zc {
                if self.pieces.len() >= self.sge_cap {
                    break;
                }
                self.pieces.push(Piece::Pool(sge));
                self.fill += take;
                self.head_zc = true;
                self.stats.payload_bytes_zero_copy += take as u64;
            } else {
                let joins = matches!(self.pieces.last(), Some(Piece::Staging { .. }));
                if !joins && self.pieces.len() >= self.sge_cap {
                    break;
                }
                let off = base + self.stage_fill;
                qp.mem_mut(Mem::Send)[off..off + take].copy_from_slice(part);
                match self.pieces.last_mut() {
                    Some(Piece::Staging { len, .. }) => *len += take,
                    _ => self.pieces.push(Piece::Staging { off, len: take }),
                }
                self.stage_fill += take;
                self.fill += take;
                if i > 0 {
                    self.stats.payload_bytes_copied += take as u64;
                }
            }
            n += take;
        }
        self.head_copied += n;
        n
    }

    /// Hands back held frames whose last message is known complete.
    fn release_held(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> usize {
        let mut n = 0;
        while self.held.front().is_some_and(|h| h.msg < self.tx_retired) {
            if let Some(h) = self.held.pop_front() {
                n += 1;
                done(SendCompletion {
                    user_data: h.user_data,
                    data: h.data,
                    sent: true,
                });
            }
        }
        n
    }

    /// Lays queued frames out in messages and posts SENDs. Returns frames completed.
    fn push_frames(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError> {
        // First, so `held` only holds frames of incomplete messages (its bound).
        let mut completed = self.release_held(done);
        while let Some(f) = self.sendq.front() {
            if self.held.len() >= self.held_max {
                debug_assert!(false, "held frames beyond their bound");
                break;
            }
            let len = f.wire_len();
            if self.head_copied == 0 {
                let fresh = rdma_proto::place(self.fill, len, self.msg) == rdma_proto::Place::FreshMessage || {
                    // Fits in a whole message but not in the entries left in this one.
                    let need = self.pieces_needed(f);
                    self.fill > 0 && len <= self.msg && need <= self.sge_cap && need > self.sge_cap - self.pieces.len()
                };
                if fresh && !self.flush(false)? {
                    break;
                }
            }
            if self.tx_inflight >= self.cfg.send_slots as usize {
                break;
            }
            self.place_head();
            if self.head_copied == len {
                if let Some(f) = self.sendq.pop_front() {
                    self.head_copied = 0;
                    self.stats.frames_sent += 1;
                    self.stats.bytes_sent += len as u64;
                    if core::mem::take(&mut self.head_zc) {
                        // Its last byte is in the open message, posted as `tx_next`.
                        self.held.push_back(Held {
                            msg: self.tx_next,
                            user_data: f.user_data,
                            data: f.data,
                        });
                        self.zc_unsignalled = true;
                    } else {
                        completed += 1;
                        done(SendCompletion {
                            user_data: f.user_data,
                            data: f.data,
                            sent: true,
                        });
                    }
                }
            } else if !self.flush(false)? {
                // The message is full (bytes or entries) and the frame goes on in the next.
                break;
            }
        }
        self.flush(true)?;
        Ok(completed)
    }

    /// Reads receive completions into the ready list.
    fn reap_recv_cq(&mut self) -> Result<(), TransportError> {
        let Some(qp) = self.qp.as_mut() else { return Ok(()) };
        let ready = &mut self.rx_ready;
        let mut bad: Option<Wc> = None;
        loop {
            self.stats.recv_calls += 1;
            let n = qp
                .poll_recv_cq(&mut |wc| {
                    if wc.ok {
                        // At most recv_slots receives are posted: the list never grows.
                        ready.push_back((wc.wr_id as u32, wc.byte_len));
                    } else if bad.is_none() {
                        bad = Some(wc);
                    }
                })
                .map_err(rdma_err)?;
            if n < verbs::WC_BATCH || bad.is_some() {
                break;
            }
        }
        match bad {
            None => Ok(()),
            Some(wc) if wc.status == rdma_sys::ibv_wc_status::IBV_WC_WR_FLUSH_ERR => Err(self.closed_error()),
            Some(wc) => Err(TransportError::RdmaCompletion {
                what: "receive",
                status: wc.status,
                text: verbs::wc_status_str(wc.status),
            }),
        }
    }

    /// Hands ready frames to `on_frame`, re-posting used buffers. Returns frames delivered.
    fn deliver(&mut self, on_frame: &mut dyn FnMut(Frame<'_>)) -> Result<usize, TransportError> {
        let mut delivered = 0;
        let msg = self.cfg.msg_bytes as usize;
        while delivered < RECV_FRAMES_PER_POLL_MAX {
            let Some(&(slot, len)) = self.rx_ready.front() else {
                break;
            };
            let Some(qp) = self.qp.as_mut() else { break };
            let base = slot as usize * msg;
            let bytes = &qp.mem(Mem::Recv)[base..base + (len as usize).min(msg)];
            let frame_len = match self.reasm.step(bytes, &mut self.rx_off)? {
                Step::InPlace { start, len } => {
                    on_frame(wire::parse(&bytes[start..start + len])?);
                    len
                }
                Step::Reassembled(len) => {
                    on_frame(wire::parse(self.reasm.frame(len))?);
                    self.reasm.consumed();
                    len
                }
                Step::MessageDone => {
                    self.rx_ready.pop_front();
                    self.rx_off = 0;
                    qp.post_recv(slot as u64, base, msg).map_err(rdma_err)?;
                    self.rcredits.reposted();
                    continue;
                }
            };
            delivered += 1;
            self.stats.frames_received += 1;
            self.stats.bytes_received += frame_len as u64;
        }
        Ok(delivered)
    }

    /// Writes the grant total to the peer when enough buffers were re-posted.
    fn return_credits(&mut self) -> Result<(), TransportError> {
        let Some(total) = self.rcredits.due() else {
            return Ok(());
        };
        let Some(peer) = self.peer else { return Ok(()) };
        if self.writes_inflight >= CREDIT_WRITES_MAX || !self.wr_room() {
            // A side that only receives never calls poll_send: retire its writes here.
            self.reap_send_cq()?;
            if self.writes_inflight >= CREDIT_WRITES_MAX || !self.wr_room() {
                return Ok(());
            }
        }
        let off = CREDIT_SRC_OFF + (self.credit_writes % CREDIT_WRITES_MAX as u64) as usize * 8;
        let (id, signalled) = self.next_wr(WrKind::CreditWrite);
        let Some(qp) = self.qp.as_mut() else {
            return Err(TransportError::Closed);
        };
        qp.mem_mut(Mem::Ctl)[off..off + 8].copy_from_slice(&total.to_le_bytes());
        qp.post_write_ctl(id, off, 8, (peer.credit_addr, peer.credit_rkey), signalled)
            .map_err(rdma_err)?;
        self.writes_inflight += 1;
        self.credit_writes += 1;
        self.rcredits.reported(total);
        Ok(())
    }

    /// Checks rdma_cm for a disconnect, at most every [`CM_POLL_PERIOD_NS`].
    fn check_cm(&mut self) -> Result<(), TransportError> {
        let now = engine::clock::now_ns();
        if now < self.next_cm_poll_ns {
            return Ok(());
        }
        self.next_cm_poll_ns = now + CM_POLL_PERIOD_NS;
        while let Some(ev) = self.ch.poll().map_err(rdma_err)? {
            if matches!(
                ev.kind,
                verbs::cm_event::RDMA_CM_EVENT_DISCONNECTED | verbs::cm_event::RDMA_CM_EVENT_DEVICE_REMOVAL
            ) {
                return Err(self.closed_error());
            }
        }
        Ok(())
    }
}

impl<B: Deref<Target = [u8]>> Connection<B> for RdmaConnection<B> {
    fn send(&mut self, frame: OutFrame<B>) -> Result<(), SendError<B>> {
        if matches!(self.state, ConnState::Failed | ConnState::Closed) {
            return Err(SendError::Closed(frame));
        }
        if !frame.is_consistent() {
            return Err(SendError::Inconsistent(frame));
        }
        if self.sendq.len() >= self.cfg.send_queue_frames {
            self.stats.send_full += 1;
            return Err(SendError::Full(frame));
        }
        // Never reallocates: capacity reserved at setup, length bounded above.
        self.sendq.push_back(frame);
        Ok(())
    }

    fn send_capacity(&self) -> usize {
        match self.state {
            ConnState::Failed | ConnState::Closed => 0,
            _ => self.cfg.send_queue_frames - self.sendq.len(),
        }
    }

    fn poll_send(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError> {
        if matches!(self.state, ConnState::Failed | ConnState::Closed) {
            self.drain_unsent(done);
            return Err(self.gone_error());
        }
        match self.advance_setup() {
            Ok(true) => {}
            Ok(false) => return Ok(0),
            Err(e) => {
                let e = self.report(e);
                self.drain_unsent(done);
                return Err(e);
            }
        }
        let r = self.reap_send_cq().and_then(|()| {
            let Some(qp) = self.qp.as_mut() else {
                return Err(TransportError::Closed);
            };
            // One atomic load per poll; a system call only when a pool was made since the
            // last look (once per new pool per connection, not per I/O).
            self.pool_reg_failures += qp.register_new_pools() as u64;
            let granted = qp.read_remote_written_u64(CREDIT_WORD_OFF);
            self.credits.observe(granted)?;
            self.push_frames(done)
        });
        r.map_err(|e| {
            let e = self.report(e);
            self.drain_unsent(done);
            e
        })
    }

    fn poll_recv(&mut self, on_frame: &mut dyn FnMut(Frame<'_>)) -> Result<usize, TransportError> {
        if matches!(self.state, ConnState::Failed | ConnState::Closed) {
            return Err(self.gone_error());
        }
        match self.advance_setup() {
            Ok(true) => {}
            Ok(false) => return Ok(0),
            Err(e) => return Err(self.report(e)),
        }
        let r = self
            .reap_recv_cq()
            .and_then(|()| self.deliver(on_frame))
            .and_then(|n| self.return_credits().map(|()| n));
        match r {
            // Only an idle connection pays for the disconnect check.
            Ok(0) if self.rx_ready.is_empty() => match self.check_cm() {
                Ok(()) => Ok(0),
                Err(e) => Err(self.report(e)),
            },
            Ok(n) => Ok(n),
            Err(e) => Err(self.report(e)),
        }
    }

    fn state(&self) -> ConnState {
        self.state
    }

    fn close(&mut self) {
        self.state = ConnState::Closed;
        self.fail();
    }

    fn stats(&self) -> ConnStats {
        self.stats
    }

    fn send_last(&mut self, header: HeaderBuf) -> bool {
        let b = header.as_bytes();
        let mut sent = false;
        // Only between frames, into an empty open slot, with a credit: else give up.
        if self.phase == Phase::Open && self.head_copied == 0 && self.fill == 0 && b.len() <= self.msg {
            let _ = self.reap_send_cq();
            if self.tx_inflight < self.cfg.send_slots as usize && self.qp.is_some() {
                self.stage(b);
                sent = matches!(self.flush(true), Ok(true));
            }
        }
        // Leave the queue pair up until drop so the SEND can leave (best effort, as TCP).
        self.last_posted = sent;
        self.close();
        sent
    }
}

impl<B> Drop for RdmaConnection<B> {
    fn drop(&mut self) {
        if self.phase != Phase::Gone || self.last_posted {
            self.id.disconnect();
        }
    }
}
