//! RDMA verbs implementation of [`Connection`] (feature `rdma`): RC queue pairs set up by
//! rdma_cm, polled by the owning reactor (`docs/rdma.md`).
//!
//! Where it sits: beside [`crate::tcp`], under the primary's relay links and the relay's
//! listener when an address is `rdma://`. The same frames, handshake and CRCs travel; only
//! the way bytes move differs.
//!
//! Sending: `send` queues the frame (bounded queue, as TCP); `poll_send` reaps send
//! completions (freeing staging slots), reads the credit word the peer writes, then copies
//! queued frames into the registered staging ring, message by message ([`rdma_proto::place`])
//! and posts a SEND per full (or last) message while credits last. Only every
//! [`SIGNAL_EVERY`]-th work request asks for a completion. A frame is handed back as soon
//! as its bytes are in the staging ring. Receiving: `poll_recv` reads receive completions
//! into a ready list, hands frames to the caller (in place in the receive buffer, or from
//! the reassembly buffer for a frame that spans messages), re-posts each buffer once its
//! frames are delivered and returns credits by RDMA WRITE. Setup (`connect`, the acceptor)
//! allocates and registers everything once; the data path does neither, nor any system call
//! except rdma_cm's event check every [`CM_POLL_PERIOD_NS`].

#[cfg(test)]
mod rw_tests;
mod setup;
pub mod verbs;

use core::ops::Deref;
use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::rdma_proto::{self, ConnParams, Reassembler, RecvCredits, SendCredits, Step};
use crate::transport::{ConnState, ConnStats, Connection, OutFrame, SendCompletion, SendError, TransportError};
use crate::wire::{self, Frame, HeaderBuf};
use verbs::{Channel, CmId, Mem, Qp, Wc};

pub use setup::RdmaAcceptor;
pub use verbs::rdma_device_present;

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
    /// Bytes of the head frame already copied to staging.
    head_copied: usize,
    credits: SendCredits,
    /// Messages posted so far; the open slot is `tx_next % send_slots`.
    tx_next: u64,
    /// Posted SENDs not yet known complete.
    tx_inflight: usize,
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
            credits: SendCredits::new(0),
            tx_next: 0,
            tx_inflight: 0,
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
        let n = self.sendq.len();
        self.head_copied = 0;
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
                WrKind::Send => self.tx_inflight -= 1,
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

    /// Posts the open slot as one SEND. False when there is no credit or no queue room.
    fn flush(&mut self) -> Result<bool, TransportError> {
        if self.fill == 0 {
            return Ok(true);
        }
        if !self.wr_room() || self.credits.available() == 0 {
            return Ok(false);
        }
        self.credits.take();
        let slot = (self.tx_next % self.cfg.send_slots as u64) as usize;
        let (id, signalled) = self.next_wr(WrKind::Send);
        let off = slot * self.cfg.msg_bytes as usize;
        let len = self.fill;
        let Some(qp) = self.qp.as_mut() else {
            return Err(TransportError::Closed);
        };
        qp.post_send(id, off, len, signalled).map_err(rdma_err)?;
        self.stats.send_calls += 1;
        self.tx_next += 1;
        self.tx_inflight += 1;
        self.fill = 0;
        Ok(true)
    }

    /// Copies as much of the head frame as fits into the open slot. Returns bytes copied.
    fn copy_head(&mut self) -> usize {
        let Some(f) = self.sendq.front() else { return 0 };
        let Some(qp) = self.qp.as_mut() else { return 0 };
        let slot = (self.tx_next % self.cfg.send_slots as u64) as usize;
        let base = slot * self.cfg.msg_bytes as usize;
        let dst = &mut qp.mem_mut(Mem::Send)[base + self.fill..base + self.msg];
        let mut skip = self.head_copied;
        let mut n = 0;
        for seg in core::iter::once(f.header.as_bytes()).chain(f.data.iter().map(|d| &**d)) {
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let take = (seg.len() - skip).min(dst.len() - n);
            dst[n..n + take].copy_from_slice(&seg[skip..skip + take]);
            n += take;
            skip = 0;
            if n == dst.len() {
                break;
            }
        }
        self.fill += n;
        self.head_copied += n;
        n
    }

    /// Moves queued frames into staging and posts SENDs. Returns frames completed.
    fn push_frames(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError> {
        let mut completed = 0;
        while let Some(f) = self.sendq.front() {
            let len = f.wire_len();
            let fresh =
                self.head_copied == 0 && rdma_proto::place(self.fill, len, self.msg) == rdma_proto::Place::FreshMessage;
            if fresh && !self.flush()? {
                break;
            }
            if self.tx_inflight >= self.cfg.send_slots as usize {
                break;
            }
            self.copy_head();
            if self.head_copied == len {
                if let Some(f) = self.sendq.pop_front() {
                    self.head_copied = 0;
                    self.stats.frames_sent += 1;
                    self.stats.bytes_sent += len as u64;
                    completed += 1;
                    done(SendCompletion {
                        user_data: f.user_data,
                        data: f.data,
                        sent: true,
                    });
                }
            }
            if self.fill == self.msg && !self.flush()? {
                break;
            }
        }
        self.flush()?;
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
            let Some(qp) = self.qp.as_ref() else {
                return Err(TransportError::Closed);
            };
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
            if self.tx_inflight < self.cfg.send_slots as usize {
                let slot = (self.tx_next % self.cfg.send_slots as u64) as usize;
                let base = slot * self.cfg.msg_bytes as usize;
                if let Some(qp) = self.qp.as_mut() {
                    qp.mem_mut(Mem::Send)[base..base + b.len()].copy_from_slice(b);
                    self.fill = b.len();
                    sent = matches!(self.flush(), Ok(true));
                }
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
