//! TLS over a blocking `TcpStream`, for links off the data path (the execution-image
//! channel): rustls' own buffered connection, shared by a reader and a writer handle.
//!
//! The image protocol is request/response on one thread per connection, so the two
//! handles never wait on each other; the mutex only makes them `Send`. The handshake runs
//! on the first read or write.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::{describe, Role, TlsContext, TlsError};

enum Side {
    Client(ClientConnection),
    Server(ServerConnection),
}

struct Inner {
    conn: Side,
    sock: TcpStream,
}

/// Read and write in one object (rustls' `Stream` of either side).
trait Rw: Read + Write {}
impl<T: Read + Write> Rw for T {}

/// One handle of a blocking TLS stream (clone it for a second handle).
#[derive(Clone)]
pub struct BlockingTls {
    inner: Arc<Mutex<Inner>>,
}

impl BlockingTls {
    /// The connecting side, accepting only a peer of role `expect`.
    pub fn client(sock: TcpStream, ctx: &TlsContext, expect: Role) -> Result<Self, TlsError> {
        let name = ServerName::try_from("baton-peer").map_err(|e| TlsError::Config(e.to_string()))?;
        let c =
            ClientConnection::new(ctx.client_config(expect)?, name).map_err(|e| TlsError::Handshake(describe(&e)))?;
        Ok(Self::with(Side::Client(c), sock))
    }

    /// The accepting side, accepting only a peer of role `expect`.
    pub fn server(sock: TcpStream, ctx: &TlsContext, expect: Role) -> Result<Self, TlsError> {
        let c = ServerConnection::new(ctx.server_config(expect)?).map_err(|e| TlsError::Handshake(describe(&e)))?;
        Ok(Self::with(Side::Server(c), sock))
    }

    fn with(conn: Side, sock: TcpStream) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner { conn, sock })),
        }
    }

    fn run<T>(&self, f: impl FnOnce(&mut dyn Rw) -> io::Result<T>) -> io::Result<T> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { conn, sock } = &mut *g;
        let r = match conn {
            Side::Client(c) => f(&mut rustls::Stream::new(c, sock)),
            Side::Server(c) => f(&mut rustls::Stream::new(c, sock)),
        };
        // A refusal queues an alert: put it on the wire so the peer learns why.
        if r.is_err() {
            let _ = match conn {
                Side::Client(c) => c.write_tls(sock),
                Side::Server(c) => c.write_tls(sock),
            };
        }
        r.map_err(|e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(te) => io::Error::new(e.kind(), format!("TLS: {}", describe(te))),
            None => e,
        })
    }
}

impl BlockingTls {
    /// Runs the handshake to its end now (it otherwise runs inside the first read or
    /// write), e.g. to keep it out of a timed exchange.
    pub fn handshake(&mut self) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { conn, sock } = &mut *g;
        let r = match conn {
            Side::Client(c) => handshake_side(c, sock),
            Side::Server(c) => handshake_side(c, sock),
        };
        r.map_err(|e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(te) => io::Error::new(e.kind(), format!("TLS: {}", describe(te))),
            None => e,
        })
    }
}

fn handshake_side<D>(c: &mut rustls::ConnectionCommon<D>, sock: &mut TcpStream) -> io::Result<()> {
    while c.is_handshaking() {
        c.complete_io(sock)?;
    }
    while c.wants_write() {
        c.write_tls(sock)?;
    }
    Ok(())
}

impl Read for BlockingTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.run(|s| s.read(buf))
    }
}

impl Write for BlockingTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.run(|s| s.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.run(|s| s.flush())
    }
}
