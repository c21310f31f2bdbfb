//! Runs rustls' TLS 1.3 handshake over a non-blocking socket, one record at a time, and
//! hands the traffic keys to the [`RecordLayer`] once it is done.
//!
//! Records are fed to rustls whole and only while it is handshaking: the bytes after the
//! last handshake record (the peer's first frames may follow in the same read) stay here as
//! [`Handshake::leftover`] for the record layer, and rustls never holds application data.
//! The server sends no session tickets, so nothing but application records and alerts
//! follows the handshake. A refusal (an unknown CA, the wrong role, another pre-shared key)
//! is reported on this side by rustls' error and on the peer's by the alert rustls sends.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::record::{self, RecordLayer, RECORD_MAX};
use super::{describe, TlsError};
use crate::transport::TransportError;

/// A handshake in progress.
pub struct Handshake {
    conn: Option<Connection>,
    inbuf: Box<[u8]>,
    in_end: usize,
}

/// What [`Handshake::advance`] got to.
pub enum Progress {
    /// Waiting for the socket.
    Pending,
    /// Done: records flow.
    Done(Box<RecordLayer>),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError::Io { op, source }
}

impl Handshake {
    /// The connecting side. Peers are checked by role or key, not by host name: the name
    /// sent is a fixed placeholder.
    pub fn client(cfg: Arc<ClientConfig>) -> Result<Self, TlsError> {
        let name = ServerName::try_from("baton-peer").map_err(|e| TlsError::Config(e.to_string()))?;
        let c = ClientConnection::new(cfg, name).map_err(|e| TlsError::Handshake(describe(&e)))?;
        Ok(Self::with(c.into()))
    }

    /// The accepting side.
    pub fn server(cfg: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let c = ServerConnection::new(cfg).map_err(|e| TlsError::Handshake(describe(&e)))?;
        Ok(Self::with(c.into()))
    }

    fn with(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            inbuf: vec![0u8; 2 * RECORD_MAX].into_boxed_slice(),
            in_end: 0,
        }
    }

    /// Bytes received after the handshake's last record: the start of the record stream.
    pub fn leftover(&self) -> &[u8] {
        &self.inbuf[..self.in_end]
    }

    /// Moves the handshake on as far as the socket allows.
    pub fn advance<S: Read + Write>(&mut self, sock: &mut S) -> Result<Progress, TransportError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(TransportError::Closed);
            };
            while conn.wants_write() {
                match conn.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Pending),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err("write (TLS handshake)")(e)),
                }
            }
            if !conn.is_handshaking() {
                let conn = self.conn.take().ok_or(TransportError::Closed)?;
                let secrets = conn
                    .dangerous_extract_secrets()
                    .map_err(|e| TlsError::Handshake(describe(&e)))?;
                return Ok(Progress::Done(Box::new(RecordLayer::new(secrets)?)));
            }
            if self.feed_records(sock)? {
                continue;
            }
            if self.in_end == self.inbuf.len() {
                return Err(TlsError::BadRecord("handshake record too long").into());
            }
            match sock.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(TransportError::PeerClosed),
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(TransportError::PeerClosed),
                Err(e) => return Err(io_err("read (TLS handshake)")(e)),
            }
        }
    }

    /// Feeds every whole record buffered to rustls while it handshakes. Returns whether any
    /// was fed. On a refusal, the alert rustls queued goes out before the error returns.
    fn feed_records<S: Write>(&mut self, sock: &mut S) -> Result<bool, TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(TransportError::Closed);
        };
        let mut fed = false;
        while conn.is_handshaking() {
            let Some(len) = record::peek_len(&self.inbuf[..self.in_end])? else {
                break;
            };
            if len > self.in_end {
                break;
            }
            let mut rd = &self.inbuf[..len];
            while !rd.is_empty() {
                conn.read_tls(&mut rd).map_err(io_err("TLS handshake input"))?;
            }
            self.inbuf.copy_within(len..self.in_end, 0);
            self.in_end -= len;
            fed = true;
            if let Err(e) = conn.process_new_packets() {
                let _ = conn.write_tls(sock);
                return Err(TlsError::Handshake(describe(&e)).into());
            }
        }
        Ok(fed)
    }
}
