//! The connection interface of the replication transport: message-oriented, polled.
//!
//! Where it sits: the primary's replicated volume, the relay and the standby each own their
//! connections on one reactor and drive them from a poller: [`Connection::send`] queues a
//! frame (header bytes plus owned data buffers, never copied), [`Connection::poll_send`]
//! moves queued frames towards the peer and hands the buffers back once the transport no
//! longer needs them, [`Connection::poll_recv`] delivers whole, checked frames as typed
//! [`Frame`]s borrowing the transport's receive buffer. Nothing blocks, nothing completes
//! inline inside `send`, and every queue has a fixed bound: a full queue is back-pressure
//! returned to the caller with its frame.
//!
//! The shape is that of RDMA verbs, so a verbs implementation fits without changing callers:
//! the data buffers are owned (registered memory regions), `send` is a posted SEND work
//! request, the send completion is the work completion that says the buffer may be reused,
//! the receive buffer borrowed during the `poll_recv` callback is a posted receive buffer
//! that is re-posted when the callback returns, and the send queue bound is the credit count
//! the peer granted in its Hello (see `docs/replication-wire.md`).

use core::ops::Deref;
use std::io;

use arrayvec::ArrayVec;

use crate::wire::{Frame, HeaderBuf, WireError};

/// Most data segments (buffers) one frame may carry besides its header. An RDMA SEND has a
/// bounded scatter-gather list too; 32 covers one buffer per op of a full batch.
pub const SEGS_PER_FRAME_MAX: usize = 32;

/// The data segments of one frame.
pub type Segs<B> = ArrayVec<B, SEGS_PER_FRAME_MAX>;

/// A frame to send: its encoded header and the data buffers that follow it on the wire.
/// The transport owns the buffers from `send` until it hands them back in a
/// [`SendCompletion`]; it never writes to them.
pub struct OutFrame<B> {
    /// Encoded header (`wire::encode_*` or `wire::BatchEncoder`), envelope CRCs included.
    pub header: HeaderBuf,
    /// Data segments, in wire order; their lengths add up to the frame's data bytes.
    pub data: Segs<B>,
    /// Returned in the completion; the transport does not look at it.
    pub user_data: u64,
}

impl<B: Deref<Target = [u8]>> OutFrame<B> {
    /// A frame with no data (Hello, Ack, Heartbeat, ...).
    pub fn control(header: HeaderBuf, user_data: u64) -> Self {
        Self {
            header,
            data: ArrayVec::new(),
            user_data,
        }
    }
    /// Bytes this frame puts on the wire: header plus data.
    pub fn wire_len(&self) -> usize {
        self.header.as_bytes().len() + self.data.iter().map(|d| d.len()).sum::<usize>()
    }
    /// True when the envelope's length matches header plus data (a caller bug otherwise).
    pub(crate) fn is_consistent(&self) -> bool {
        self.header.frame_len() == self.wire_len()
    }
}

/// A frame the transport is done with; its buffers are the caller's again.
pub struct SendCompletion<B> {
    /// From the [`OutFrame`].
    pub user_data: u64,
    /// The frame's data buffers, handed back.
    pub data: Segs<B>,
    /// True when every byte went to the peer (TCP: into the socket; in-process: the peer
    /// consumed it); false when the connection failed or closed first.
    pub sent: bool,
}

/// Why `send` handed a frame back; the frame comes back inside so no buffer is lost.
pub enum SendError<B> {
    /// The send queue is full: back-pressure. Poll, then try again.
    Full(OutFrame<B>),
    /// The connection is closed or failed.
    Closed(OutFrame<B>),
    /// The envelope's length does not match header plus data: a caller bug.
    Inconsistent(OutFrame<B>),
}

impl<B> SendError<B> {
    /// Takes the frame back.
    pub fn into_frame(self) -> OutFrame<B> {
        match self {
            SendError::Full(f) | SendError::Closed(f) | SendError::Inconsistent(f) => f,
        }
    }
}

impl<B> core::fmt::Debug for SendError<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (what, fr) = match self {
            SendError::Full(fr) => ("Full", fr),
            SendError::Closed(fr) => ("Closed", fr),
            SendError::Inconsistent(fr) => ("Inconsistent", fr),
        };
        write!(f, "SendError::{what}(user_data={})", fr.user_data)
    }
}

/// What can go wrong on a connection. After any of these the connection is failed: queued
/// frames come back with `sent: false` from the next `poll_send`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection between two frames.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer closed (or reset) the connection in the middle of a frame.
    #[error("peer closed the connection mid-frame: {have} of {need} bytes received")]
    PeerClosedMidFrame {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needed (the envelope's length, or the envelope size).
        need: usize,
    },
    /// The peer sent bytes that are not a valid frame (CRC mismatch, frame too large,
    /// version mismatch, ...). The stream cannot be resynchronised: the connection fails.
    #[error("invalid frame from peer: {0}")]
    Wire(#[from] WireError),
    /// A socket call failed.
    #[error("socket {op} failed: {source}")]
    Io {
        /// Which call.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Connecting failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Address connected to.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The connection was closed locally or already failed.
    #[error("connection closed")]
    Closed,
    /// TLS refused the peer, or a record failed (`docs/security.md`).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// In-process transport: a test dropped the connection.
    #[error("connection dropped by fault injection")]
    InjectedDrop,
    /// An `rdma://` address in a build without the `rdma` cargo feature.
    #[error("{addr}: this build of baton lacks RDMA support (build with the cargo feature `rdma`)")]
    RdmaNotBuilt {
        /// The address refused.
        addr: std::net::SocketAddr,
    },
    /// An rdma_cm or verbs call failed (connection setup, posting, polling).
    #[error("RDMA {op} failed: {source}")]
    Rdma {
        /// Which call.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A work request completed with an error status (other than a flush after the peer
    /// went away, which is reported as `PeerClosed`).
    #[error("RDMA {what} completed with status {status} ({text})")]
    RdmaCompletion {
        /// Send or receive.
        what: &'static str,
        /// `ibv_wc_status`.
        status: u32,
        /// Its text.
        text: &'static str,
    },
    /// The peer's RDMA connection parameters or credit grants are invalid.
    #[error(transparent)]
    RdmaProto(#[from] crate::rdma_proto::ProtoError),
}

/// Connection lifecycle, advanced by the polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Non-blocking connect under way; `send` queues, the polls finish the connect.
    Connecting,
    /// Frames flow.
    Open,
    /// An error was reported; queued frames come back unsent.
    Failed,
    /// Closed locally.
    Closed,
}

/// Counters of one connection (cheap, plain integers: read by the owning reactor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Frames fully sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Frames delivered to `poll_recv` callers.
    pub frames_received: u64,
    /// Bytes of frames delivered.
    pub bytes_received: u64,
    /// Send system calls (TCP `writev`) or ring pushes (in-process).
    pub send_calls: u64,
    /// Receive system calls (TCP `read`) or ring pops.
    pub recv_calls: u64,
    /// `send` calls refused with `Full`.
    pub send_full: u64,
    /// Data-segment (payload) bytes the transport copied into its own send buffers (RDMA:
    /// the registered staging ring; 0 on TCP and in-process, which do not count it).
    pub payload_bytes_copied: u64,
    /// Data-segment bytes sent straight from the caller's buffers (RDMA: segments inside a
    /// registered engine buffer pool, posted as scatter/gather entries).
    pub payload_bytes_zero_copy: u64,
}

// The frame comes back by value in `SendError` so a refused send loses no buffer and
// allocates nothing; its ~1 KiB inline header is the price.
#[allow(clippy::result_large_err)]
/// A polled, message-oriented connection. Owned by one reactor: every method is called on
/// that reactor's thread only (implementations are `Send` so the connection can be set up
/// elsewhere and moved there, never shared).
pub trait Connection<B: Deref<Target = [u8]>> {
    /// Queues `frame`; never blocks and never completes inline. The transport owns the
    /// buffers until a [`SendCompletion`] returns them. `Err(Full)` is back-pressure.
    fn send(&mut self, frame: OutFrame<B>) -> Result<(), SendError<B>>;

    /// Free slots in the send queue (the sender's credits).
    fn send_capacity(&self) -> usize;

    /// Moves queued frames towards the peer (TCP: batched into `writev` calls) and calls
    /// `done` once for every frame the transport is finished with, in send order. Returns the
    /// number of completions. On a failed connection, hands back every queued frame with
    /// `sent: false` and then returns the error (`Closed` if it was already reported).
    fn poll_send(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError>;

    /// Delivers received frames, in order, each checked by `wire::parse`, at most a bounded
    /// batch per call. The frame borrows the receive buffer only during the callback: copy
    /// what must outlive it. Returns the number delivered.
    fn poll_recv(&mut self, on_frame: &mut dyn FnMut(Frame<'_>)) -> Result<usize, TransportError>;

    /// Current lifecycle state.
    fn state(&self) -> ConnState;

    /// Closes locally; the peer sees `PeerClosed`. Queued frames come back from `poll_send`.
    fn close(&mut self);

    /// Best effort, then close: puts one control frame (typically a HelloReply refusal) on
    /// the wire even when the connection failed because the peer's frame was invalid (e.g. of
    /// another wire version), so the peer learns why it is cut off. Returns whether the frame
    /// went out; never blocks. Queued frames come back unsent from `poll_send`.
    fn send_last(&mut self, header: HeaderBuf) -> bool;

    /// Counters.
    fn stats(&self) -> ConnStats;
}
