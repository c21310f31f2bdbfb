//! TCP implementation of [`Connection`]: non-blocking std sockets, polled by one reactor.
//!
//! Where it sits: under the primary's relay links and the relay's standby link when the
//! network has no RDMA. Sending: `send` appends the frame to a bounded queue
//! (capacity fixed at connect time, so steady state allocates nothing); `poll_send` gathers
//! the queued frames' header and data slices into one `writev` (up to [`IOV_PER_WRITEV_MAX`]
//! slices), so frames queued during one reactor tick leave in one system call, and resumes a
//! partially written frame where the kernel stopped. Receiving: `poll_recv` reads into one
//! preallocated buffer of [`RX_BUF_BYTES`], peels off whole frames by their envelope length,
//! checks each with `wire::parse` and hands it to the caller borrowed, then moves the partial
//! tail (if any) to the front. TCP_NODELAY is set: a frame leaves as soon as it is polled.
//!
//! With TLS (`connect_tls`, [`TcpAcceptor::set_tls`]) the connection stays `Connecting`
//! until the handshake is done; then the same queue is sealed into records and received
//! records are opened into the same frame buffer ([`crate::tls::stream`]).

use core::ops::Deref;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::{Domain, Protocol, Socket, Type};

use crate::tls::stream::{ReadPlain, TlsStream};
use crate::tls::{Handshake, Role, TlsContext};
use crate::transport::{ConnState, ConnStats, Connection, OutFrame, SendCompletion, SendError, TransportError};
use crate::wire::{self, Frame, HeaderBuf, ENVELOPE_BYTES, FRAME_BYTES_MAX};

/// Default bound of the send queue, in frames.
pub const SEND_QUEUE_FRAMES_DEFAULT: usize = 256;
/// Most slices gathered into one `writev` (Linux allows 1024).
pub const IOV_PER_WRITEV_MAX: usize = 64;
/// Most `writev` calls per `poll_send` (run at our own pace; the next poll goes on).
pub const WRITEV_PER_POLL_MAX: usize = 8;
/// Most frames delivered per `poll_recv`.
pub const RECV_FRAMES_PER_POLL_MAX: usize = 64;
/// Receive buffer: one largest frame plus room to batch many small ones per `read`.
pub const RX_BUF_BYTES: usize = FRAME_BYTES_MAX + 64 * 1024;

/// Settings of a TCP connection, fixed at connect/accept time.
#[derive(Debug, Clone, Copy)]
pub struct TcpConfig {
    /// Send queue bound in frames; `send` returns `Full` beyond it.
    pub send_queue_frames: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            send_queue_frames: SEND_QUEUE_FRAMES_DEFAULT,
        }
    }
}

enum Sock {
    /// Non-blocking connect in progress.
    Connecting(Socket, SocketAddr),
    /// Connected.
    Open(TcpStream),
    /// Failed or closed; no socket.
    Gone,
}

/// One TCP replication connection. Owned by one reactor (see [`Connection`]).
pub struct TcpConnection<B> {
    sock: Sock,
    state: ConnState,
    /// Whether the failure was already returned from `poll_send` / `poll_recv`.
    error_reported: bool,
    sendq: VecDeque<OutFrame<B>>,
    sendq_cap: usize,
    /// Bytes of the head frame already written.
    head_written: usize,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    stats: ConnStats,
    /// TLS state when the link is encrypted.
    tls: Option<Box<TlsStream>>,
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError::Io { op, source }
}

impl<B: Deref<Target = [u8]>> TcpConnection<B> {
    fn with_sock(sock: Sock, state: ConnState, cfg: TcpConfig) -> Self {
        Self {
            sock,
            state,
            error_reported: false,
            sendq: VecDeque::with_capacity(cfg.send_queue_frames),
            sendq_cap: cfg.send_queue_frames,
            head_written: 0,
            rx: vec![0u8; RX_BUF_BYTES].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            stats: ConnStats::default(),
            tls: None,
        }
    }

    /// Like [`TcpConnection::connect`], then a TLS 1.3 handshake as the client, accepting
    /// only a peer of role `expect` (or holding the deployment's pre-shared key).
    pub fn connect_tls(
        addr: SocketAddr,
        cfg: TcpConfig,
        tls: &TlsContext,
        expect: Role,
    ) -> Result<Self, TransportError> {
        let hs = Handshake::client(tls.client_config(expect)?)?;
        let mut c = Self::connect(addr, cfg)?;
        c.tls = Some(Box::new(TlsStream::new(hs)));
        c.state = ConnState::Connecting;
        Ok(c)
    }

    /// Like [`TcpConnection::from_stream`], then a TLS 1.3 handshake as the server.
    pub fn from_stream_tls(
        stream: TcpStream,
        cfg: TcpConfig,
        tls: &TlsContext,
        expect: Role,
    ) -> Result<Self, TransportError> {
        let hs = Handshake::server(tls.server_config(expect)?)?;
        let mut c = Self::from_stream(stream, cfg)?;
        c.tls = Some(Box::new(TlsStream::new(hs)));
        c.state = ConnState::Connecting;
        Ok(c)
    }

    /// Whether the link is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Starts a non-blocking connect to `addr` (setup path: allocates the buffers). Returns
    /// at once in state `Connecting` (or `Open`); the polls complete the connect. Frames may
    /// be queued before it completes.
    pub fn connect(addr: SocketAddr, cfg: TcpConfig) -> Result<Self, TransportError> {
        let err = |source| TransportError::Connect { addr, source };
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        s.set_nodelay(true).map_err(err)?;
        match s.connect(&addr.into()) {
            Ok(()) => Ok(Self::with_sock(Sock::Open(s.into()), ConnState::Open, cfg)),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                Ok(Self::with_sock(Sock::Connecting(s, addr), ConnState::Connecting, cfg))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Wraps an accepted stream (made non-blocking, TCP_NODELAY).
    pub fn from_stream(stream: TcpStream, cfg: TcpConfig) -> Result<Self, TransportError> {
        stream.set_nonblocking(true).map_err(io_err("set_nonblocking"))?;
        stream.set_nodelay(true).map_err(io_err("set_nodelay"))?;
        Ok(Self::with_sock(Sock::Open(stream), ConnState::Open, cfg))
    }

    /// The socket's descriptor while there is one (for [`crate::readiness::Readiness`]).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.sock {
            Sock::Connecting(s, _) => Some(s.as_raw_fd()),
            Sock::Open(s) => Some(s.as_raw_fd()),
            Sock::Gone => None,
        }
    }

    /// What this connection waits for while its owner has nothing else to do (for the
    /// reactor's `engine::reactor::WatchSet`): bytes to read, and room to write while a
    /// connect is in progress or frames or sealed records wait to go out. None once closed.
    pub fn wait_interest(&self) -> Option<(std::os::fd::RawFd, engine::reactor::Interest)> {
        use engine::reactor::Interest;
        let fd = self.raw_fd()?;
        let out = matches!(self.sock, Sock::Connecting(..))
            || !self.sendq.is_empty()
            || self.tls.as_ref().is_some_and(|t| t.has_output());
        Some((fd, if out { Interest::BOTH } else { Interest::READABLE }))
    }

    /// Whether a whole received frame (or a malformed one, to report) waits in the buffer (a
    /// poll stops at its frame limit): `poll_recv` has work even if the socket has nothing
    /// new. A partial frame does not count: the rest makes the socket readable.
    pub fn has_buffered(&self) -> bool {
        if self.tls.as_ref().is_some_and(|t| t.has_buffered()) {
            return true;
        }
        let avail = &self.rx[self.rx_start..self.rx_end];
        match wire::peek_envelope(avail) {
            Ok(Some(env)) => env.frame_len <= avail.len(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Local address, once connected.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.sock {
            Sock::Open(s) => s.local_addr().ok(),
            _ => None,
        }
    }

    fn fail(&mut self) {
        if let Sock::Open(s) = &self.sock {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.sock = Sock::Gone;
        if self.state != ConnState::Closed {
            self.state = ConnState::Failed;
        }
    }

    /// Reports an error once; afterwards the connection is failed and returns `Closed`.
    /// After an invalid frame the socket stays open until `close`/`send_last`, so a refusal
    /// can still be sent; after any other error it is shut at once.
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

    /// Advances a pending connect. Ok(true) when open.
    fn advance_connect(&mut self) -> Result<bool, TransportError> {
        if !self.advance_tcp_connect()? {
            return Ok(false);
        }
        if self.state == ConnState::Open {
            return Ok(true);
        }
        let (Some(tls), Sock::Open(stream)) = (self.tls.as_mut(), &mut self.sock) else {
            return Ok(true);
        };
        match tls.ready(stream) {
            Ok(true) => {
                self.state = ConnState::Open;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(self.report(e)),
        }
    }

    /// Advances a pending TCP connect. Ok(true) when the socket is connected.
    fn advance_tcp_connect(&mut self) -> Result<bool, TransportError> {
        let Sock::Connecting(s, addr) = &self.sock else {
            return Ok(matches!(self.sock, Sock::Open(_)));
        };
        let addr = *addr;
        match s.take_error() {
            Ok(Some(source)) | Err(source) => return Err(self.report(TransportError::Connect { addr, source })),
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {
                let Sock::Connecting(s, _) = std::mem::replace(&mut self.sock, Sock::Gone) else {
                    return Ok(false);
                };
                self.sock = Sock::Open(s.into());
                if self.tls.is_none() {
                    self.state = ConnState::Open;
                }
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
            Err(source) => Err(self.report(TransportError::Connect { addr, source })),
        }
    }

    fn drain_unsent(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> usize {
        let n = self.sendq.len();
        self.head_written = 0;
        while let Some(f) = self.sendq.pop_front() {
            done(SendCompletion {
                user_data: f.user_data,
                data: f.data,
                sent: false,
            });
        }
        n
    }

    /// One `writev` of as much of the queue as fits in [`IOV_PER_WRITEV_MAX`] slices.
    /// Returns bytes written (0 on WouldBlock).
    fn write_once(&mut self) -> io::Result<usize> {
        if self.tls.is_some() {
            return self.write_once_tls();
        }
        let Sock::Open(stream) = &mut self.sock else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut iov = [IoSlice::new(&[]); IOV_PER_WRITEV_MAX];
        let mut n = 0usize;
        let mut skip = self.head_written;
        'frames: for f in &self.sendq {
            let segs = core::iter::once(f.header.as_bytes()).chain(f.data.iter().map(|d| &**d));
            for seg in segs {
                if skip >= seg.len() {
                    skip -= seg.len();
                    continue;
                }
                iov[n] = IoSlice::new(&seg[skip..]);
                skip = 0;
                n += 1;
                if n == IOV_PER_WRITEV_MAX {
                    break 'frames;
                }
            }
        }
        if n == 0 {
            return Ok(0);
        }
        self.stats.send_calls += 1;
        match stream.write_vectored(&iov[..n]) {
            Ok(w) => Ok(w),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// With TLS: writes what was sealed before; once that is out, seals up to
    /// [`crate::tls::stream::OUT_RECORDS`] records of the queue and writes them. Returns the
    /// plaintext bytes sealed (the frames they finish are done: their bytes are copied).
    fn write_once_tls(&mut self) -> io::Result<usize> {
        let (Some(tls), Sock::Open(stream)) = (self.tls.as_mut(), &mut self.sock) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if !tls.flush(stream)? {
            return Ok(0);
        }
        let (q, head) = (&self.sendq, self.head_written);
        let sealed = tls
            .seal_from(|skip, dst| gather(q, head + skip, dst))
            .map_err(io::Error::other)?;
        self.stats.send_calls += 1;
        tls.flush(stream)?;
        Ok(sealed)
    }

    /// Writes sealed records left over when the queue emptied.
    fn flush_tls(&mut self) -> io::Result<()> {
        if let (Some(tls), Sock::Open(stream)) = (self.tls.as_mut(), &mut self.sock) {
            if tls.has_output() {
                tls.flush(stream)?;
            }
        }
        Ok(())
    }

    /// Retires the frames that `written` more bytes completed.
    fn advance_sent(&mut self, mut written: usize, done: &mut dyn FnMut(SendCompletion<B>)) -> usize {
        let mut completed = 0;
        self.stats.bytes_sent += written as u64;
        while written > 0 {
            let Some(head) = self.sendq.front() else { break };
            let left = head.wire_len() - self.head_written;
            if written >= left {
                written -= left;
                self.head_written = 0;
                if let Some(f) = self.sendq.pop_front() {
                    self.stats.frames_sent += 1;
                    completed += 1;
                    done(SendCompletion {
                        user_data: f.user_data,
                        data: f.data,
                        sent: true,
                    });
                }
            } else {
                self.head_written += written;
                written = 0;
            }
        }
        completed
    }

    /// Delivers every whole frame already buffered (up to the per-poll cap, counted in
    /// `delivered`); returns how many bytes the next frame needs buffered.
    fn deliver_buffered(
        &mut self,
        on_frame: &mut dyn FnMut(Frame<'_>),
        delivered: &mut usize,
    ) -> Result<usize, TransportError> {
        while *delivered < RECV_FRAMES_PER_POLL_MAX {
            let avail = &self.rx[self.rx_start..self.rx_end];
            let env = match wire::peek_envelope(avail) {
                Ok(Some(env)) => env,
                Ok(None) => break,
                Err(e) => return Err(self.report(e.into())),
            };
            if env.frame_len > avail.len() {
                return Ok(env.frame_len);
            }
            // The frame borrows the buffer: report a parse error only once it is gone.
            let parsed = wire::parse(&avail[..env.frame_len]).map(&mut *on_frame);
            if let Err(e) = parsed {
                return Err(self.report(e.into()));
            }
            self.rx_start += env.frame_len;
            *delivered += 1;
            self.stats.frames_received += 1;
            self.stats.bytes_received += env.frame_len as u64;
        }
        Ok(ENVELOPE_BYTES)
    }

    /// Makes room to receive: the partial frame moves to the front when the next frame
    /// (`need` bytes) or a whole TLS record would not fit behind it.
    fn make_room(&mut self, need: usize) {
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if self.rx.len() - self.rx_start < need
            || self.rx_end == self.rx.len()
            || (self.tls.is_some() && self.rx.len() - self.rx_end < crate::tls::record::PLAIN_MAX)
        {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
    }

    /// One read from the socket (through TLS when the link has it) into the buffer's free
    /// end: `Some(drained)` when bytes came (`drained`: the socket had no more), `None`
    /// when it would block (or was interrupted with nothing read: the caller reads again).
    /// End of stream and errors are reported, naming a frame cut in the middle.
    fn read_more(&mut self, need: usize) -> Result<Option<bool>, TransportError> {
        let Sock::Open(stream) = &mut self.sock else {
            return Err(self.gone_error());
        };
        let space = self.rx.len() - self.rx_end;
        self.stats.recv_calls += 1;
        let closed = |have: usize| {
            if have == 0 {
                TransportError::PeerClosed
            } else {
                TransportError::PeerClosedMidFrame { have, need }
            }
        };
        if let Some(tls) = self.tls.as_mut() {
            return match tls.read_plain(stream, &mut self.rx[self.rx_end..]) {
                Ok(ReadPlain::Data { n, short }) => {
                    self.rx_end += n;
                    Ok(Some(short || n == 0))
                }
                Ok(ReadPlain::WouldBlock) => Ok(None),
                Ok(ReadPlain::Eof { partial }) => {
                    let have = self.rx_end - self.rx_start + partial;
                    Err(self.report(closed(have)))
                }
                Err(e) => Err(self.report(e)),
            };
        }
        match stream.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => {
                let have = self.rx_end - self.rx_start;
                Err(self.report(closed(have)))
            }
            Ok(n) => {
                self.rx_end += n;
                // A short read means the socket is empty: deliver, then stop.
                Ok(Some(n < space))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(false)),
            Err(e) => {
                let have = self.rx_end - self.rx_start;
                let err = match e.kind() {
                    io::ErrorKind::ConnectionReset if have == 0 => TransportError::PeerClosed,
                    io::ErrorKind::ConnectionReset => TransportError::PeerClosedMidFrame { have, need },
                    _ => TransportError::Io { op: "read", source: e },
                };
                Err(self.report(err))
            }
        }
    }
}

impl<B: Deref<Target = [u8]>> Connection<B> for TcpConnection<B> {
    fn send(&mut self, frame: OutFrame<B>) -> Result<(), SendError<B>> {
        if matches!(self.state, ConnState::Failed | ConnState::Closed) {
            return Err(SendError::Closed(frame));
        }
        if !frame.is_consistent() {
            return Err(SendError::Inconsistent(frame));
        }
        if self.sendq.len() >= self.sendq_cap {
            self.stats.send_full += 1;
            return Err(SendError::Full(frame));
        }
        // Never reallocates: capacity reserved at connect, length bounded above.
        self.sendq.push_back(frame);
        Ok(())
    }

    fn send_capacity(&self) -> usize {
        match self.state {
            ConnState::Failed | ConnState::Closed => 0,
            _ => self.sendq_cap - self.sendq.len(),
        }
    }

    fn poll_send(&mut self, done: &mut dyn FnMut(SendCompletion<B>)) -> Result<usize, TransportError> {
        if matches!(self.state, ConnState::Failed | ConnState::Closed) {
            self.drain_unsent(done);
            return Err(self.gone_error());
        }
        if !self.advance_connect()? {
            return Ok(0);
        }
        let mut completed = 0;
        for i in 0..=WRITEV_PER_POLL_MAX {
            let step = if i == WRITEV_PER_POLL_MAX || self.sendq.is_empty() {
                match self.flush_tls() {
                    Ok(()) => break,
                    Err(e) => Err(e),
                }
            } else {
                self.write_once()
            };
            match step {
                Ok(0) => break,
                Ok(w) => completed += self.advance_sent(w, done),
                Err(e) => {
                    let err = if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                        TransportError::PeerClosed
                    } else {
                        TransportError::Io {
                            op: "writev",
                            source: e,
                        }
                    };
                    let err = self.report(err);
                    self.drain_unsent(done);
                    return Err(err);
                }
            }
        }
        Ok(completed)
    }

    fn poll_recv(&mut self, on_frame: &mut dyn FnMut(Frame<'_>)) -> Result<usize, TransportError> {
        if matches!(self.state, ConnState::Failed | ConnState::Closed) {
            return Err(self.gone_error());
        }
        if !self.advance_connect()? {
            return Ok(0);
        }
        let mut delivered = 0;
        let mut drained = false;
        loop {
            let need = self.deliver_buffered(on_frame, &mut delivered)?;
            if delivered >= RECV_FRAMES_PER_POLL_MAX || drained {
                break;
            }
            self.make_room(need);
            match self.read_more(need)? {
                Some(d) => drained = d,
                None => break,
            }
        }
        Ok(delivered)
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
        let mut sent = false;
        // A partly written frame cannot be followed by another: the stream would be garbage.
        if self.head_written == 0 {
            if let (Some(tls), Sock::Open(s)) = (self.tls.as_mut(), &mut self.sock) {
                let b = header.as_bytes();
                if matches!(tls.flush(s), Ok(true)) {
                    let sealed = tls.seal_from(|skip, dst| {
                        let n = b.len().saturating_sub(skip).min(dst.len());
                        dst[..n].copy_from_slice(&b[skip..skip + n]);
                        n
                    });
                    sent = matches!(sealed, Ok(n) if n == b.len()) && matches!(tls.flush(s), Ok(true));
                }
            } else if let Sock::Open(s) = &mut self.sock {
                let b = header.as_bytes();
                sent = matches!(s.write(b), Ok(n) if n == b.len());
            }
        }
        self.close();
        sent
    }
}

/// Copies queued plaintext from `skip` bytes into the queue (frame headers and data, in
/// order) into `dst`; returns the bytes copied.
fn gather<B: Deref<Target = [u8]>>(q: &VecDeque<OutFrame<B>>, mut skip: usize, dst: &mut [u8]) -> usize {
    let mut n = 0;
    for f in q {
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
                return n;
            }
        }
    }
    n
}

/// How long a [`TcpAcceptor`] that found no connection waits before it asks the kernel
/// again. An `accept4` on an empty queue is not cheap: Linux allocates a socket, an inode
/// and a file descriptor before it finds the queue empty and frees them again (~2 µs
/// here); a relay polled it on every reactor iteration, which put that cost on every hop
/// of every replicated write. A new connection now waits at most this long.
pub const ACCEPT_POLL_PERIOD_NS: u64 = 200_000;

/// A listening socket that accepts replication connections without blocking.
pub struct TcpAcceptor {
    listener: TcpListener,
    cfg: TcpConfig,
    /// TLS for accepted connections, and the role their peers must have.
    tls: Option<(TlsContext, Role)>,
    /// Or: the process's identity at each accept, whenever it is installed.
    follow: Option<Role>,
    /// No `accept4` before this time (`engine::clock::now_ns`); 0 = ask now.
    next_poll_ns: core::sync::atomic::AtomicU64,
}

impl TcpAcceptor {
    /// Binds and listens on `addr` (port 0 picks one; see [`TcpAcceptor::local_addr`]).
    pub fn bind(addr: SocketAddr, cfg: TcpConfig) -> Result<Self, TransportError> {
        let listener = TcpListener::bind(addr).map_err(io_err("bind"))?;
        listener.set_nonblocking(true).map_err(io_err("set_nonblocking"))?;
        Ok(Self {
            listener,
            cfg,
            tls: None,
            follow: None,
            next_poll_ns: core::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Every connection accepted from now on runs a TLS handshake as the server and accepts
    /// only peers of role `expect` (`None`: plaintext again).
    pub fn set_tls(&mut self, tls: Option<(TlsContext, Role)>) {
        self.tls = tls;
    }

    /// Every connection accepted uses the process's TLS identity ([`crate::tls::process`])
    /// if one is installed by then (at start-up or later by JSON-RPC), accepting only peers
    /// of role `expect`; plaintext while none is.
    pub fn follow_process_tls(&mut self, expect: Role) {
        self.follow = Some(expect);
    }

    /// The listening socket's descriptor (readable when a connection waits).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.listener.as_raw_fd()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address; fall back to unspecified otherwise.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts one pending connection, if any (setup path: allocates its buffers). Cheap to
    /// call on every reactor iteration: after finding the queue empty it answers `None`
    /// without a system call for [`ACCEPT_POLL_PERIOD_NS`].
    pub fn poll_accept<B: Deref<Target = [u8]>>(
        &self,
    ) -> Result<Option<(TcpConnection<B>, SocketAddr)>, TransportError> {
        use core::sync::atomic::Ordering::Relaxed;
        let now = engine::clock::now_ns();
        if now < self.next_poll_ns.load(Relaxed) {
            return Ok(None);
        }
        match self.listener.accept() {
            Ok((s, peer)) => {
                let process = self.follow.and_then(|r| crate::tls::process().map(|c| (c, r)));
                let c = match (&self.tls, process) {
                    (Some((ctx, expect)), _) => TcpConnection::from_stream_tls(s, self.cfg, ctx, *expect)?,
                    (None, Some((ctx, expect))) => TcpConnection::from_stream_tls(s, self.cfg, ctx, expect)?,
                    (None, None) => TcpConnection::from_stream(s, self.cfg)?,
                };
                Ok(Some((c, peer)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.next_poll_ns.store(now + ACCEPT_POLL_PERIOD_NS, Relaxed);
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(source) => Err(TransportError::Io { op: "accept", source }),
        }
    }
}
