//! A TLS connection's bytes between the socket and the NVMe/TCP connection: the handshake
//! is fed whole records as they arrive (non-blocking, on the reactor), then records are
//! opened in place into the connection's receive buffer and the connection's send bytes
//! sealed in place into a buffer allocated once: no allocation per I/O.

use super::server::{PskAnswer, PskServer};
use rdma_transport::tls::record::{self, RecordLayer, CT_ALERT, CT_APP, HEADER, OVERHEAD, PLAIN_MAX, RECORD_MAX, TAG};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// Ciphertext read per call.
const CIPHER_IN_BYTES: usize = 64 * 1024 + RECORD_MAX;
/// Records sealed per write.
const RECORDS_PER_WRITE: usize = 4;

/// How a finished handshake went (logged, and kept for the Connect check).
#[derive(Debug, Clone)]
pub struct Session {
    /// The PSK identity the host used.
    pub identity: String,
}

/// One TLS connection of the target.
pub struct TlsChannel {
    peer: SocketAddr,
    hs: Option<Box<PskServer>>,
    rec: Option<RecordLayer>,
    cin: Box<[u8]>,
    cin_len: usize,
    cout: Vec<u8>,
    cout_pos: usize,
    closed: bool,
    pub session: Option<Session>,
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, why.into())
}

impl TlsChannel {
    pub fn new(peer: SocketAddr) -> Box<Self> {
        Box::new(Self {
            peer,
            hs: Some(Box::new(PskServer::new())),
            rec: None,
            cin: vec![0u8; CIPHER_IN_BYTES].into_boxed_slice(),
            cin_len: 0,
            cout: Vec::with_capacity(RECORDS_PER_WRITE * (PLAIN_MAX + OVERHEAD)),
            cout_pos: 0,
            closed: false,
            session: None,
        })
    }

    /// A channel whose handshake is already done, with `records` (allocation tests).
    #[doc(hidden)]
    pub fn established_with(peer: SocketAddr, records: RecordLayer) -> Box<Self> {
        let mut c = Self::new(peer);
        c.hs = None;
        c.rec = Some(records);
        c
    }

    /// Whether the handshake is done.
    pub fn established(&self) -> bool {
        self.rec.is_some()
    }

    /// Like `Read::read` on the socket, in plaintext: `Ok(0)` at the end of the stream
    /// (EOF or close_notify), `WouldBlock` when nothing is there yet (the handshake runs
    /// inside), `InvalidData` when the peer is refused or breaks the protocol.
    pub fn read(
        &mut self,
        sock: &mut TcpStream,
        dst: &mut [u8],
        lookup: &mut dyn FnMut(&[u8]) -> PskAnswer,
    ) -> io::Result<usize> {
        loop {
            let produced = self.drain_records(sock, dst, lookup)?;
            if produced > 0 {
                return Ok(produced);
            }
            if self.closed {
                return Ok(0);
            }
            self.flush_out(sock)?;
            match sock.read(&mut self.cin[self.cin_len..]) {
                Ok(0) => {
                    if self.hs.is_some() && self.cin_len == 0 {
                        log::warn!("nvmf: TLS: {} closed the connection during the handshake", self.peer);
                    }
                    return Ok(0);
                }
                Ok(n) => self.cin_len += n,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the whole records in the input buffer: handshake records to the handshake,
    /// application records opened into `dst`. Returns the plaintext bytes written.
    fn drain_records(
        &mut self,
        sock: &mut TcpStream,
        dst: &mut [u8],
        lookup: &mut dyn FnMut(&[u8]) -> PskAnswer,
    ) -> io::Result<usize> {
        let (mut start, mut produced) = (0, 0);
        while !self.closed {
            let Some(len) = record::peek_len(&self.cin[start..self.cin_len]).map_err(|e| self.refuse_plain(sock, e))?
            else {
                break;
            };
            if start + len > self.cin_len {
                break;
            }
            if self.hs.is_some() {
                self.handshake(sock, start, len, lookup)?;
            } else {
                if produced + len.saturating_sub(HEADER + TAG) > dst.len() {
                    break;
                }
                produced += self.open(start, len, &mut dst[produced..])?;
            }
            start += len;
        }
        self.cin.copy_within(start..self.cin_len, 0);
        self.cin_len -= start;
        Ok(produced)
    }

    fn refuse_plain(&mut self, sock: &mut TcpStream, e: rdma_transport::tls::TlsError) -> io::Error {
        let why = format!(
            "TLS: refusing {}: {e} (this listener requires TLS 1.3 with a PSK)",
            self.peer
        );
        log::warn!("nvmf: {why}");
        if self.hs.is_some() && self.cout.is_empty() {
            self.cout.extend_from_slice(&[CT_ALERT, 3, 3, 0, 2, 2, 10]);
            let _ = self.flush_out(sock);
        }
        bad(why)
    }

    fn handshake(
        &mut self,
        sock: &mut TcpStream,
        start: usize,
        len: usize,
        lookup: &mut dyn FnMut(&[u8]) -> PskAnswer,
    ) -> io::Result<()> {
        let Some(hs) = self.hs.as_mut() else { return Ok(()) };
        let rec = &mut self.cin[start..start + len];
        match hs.feed(rec, &mut self.cout, lookup) {
            Ok(None) => self.flush_out(sock).map(|_| ()),
            Ok(Some(est)) => {
                let identity = String::from_utf8_lossy(&est.identity).into_owned();
                log::info!(
                    "nvmf: TLS 1.3 with {}: PSK identity {identity:?}, {:#06x}, {}",
                    self.peer,
                    est.hash.suite(),
                    est.kx
                );
                self.rec = Some(est.records);
                self.session = Some(Session { identity });
                self.hs = None;
                Ok(())
            }
            Err(e) => {
                log::warn!("nvmf: TLS handshake with {} failed: {e}", self.peer);
                hs.alert(e.alert, &mut self.cout);
                let _ = self.flush_out(sock);
                Err(bad(format!("TLS handshake failed: {}", e.why)))
            }
        }
    }

    /// Opens the record at `cin[start..start + len]` and copies its data into `dst`.
    fn open(&mut self, start: usize, len: usize, dst: &mut [u8]) -> io::Result<usize> {
        let Some(rl) = self.rec.as_mut() else { return Ok(0) };
        let rec = &mut self.cin[start..start + len];
        if rec[0] == CT_ALERT {
            return Err(bad("peer sent an unencrypted alert after the handshake"));
        }
        if rec[0] != CT_APP {
            return Err(bad("unexpected unencrypted record after the handshake"));
        }
        let (ct, range) = rl.open(rec).map_err(|e| bad(e.to_string()))?;
        match ct {
            CT_APP => {
                let n = range.len();
                dst[..n].copy_from_slice(&rec[range]);
                Ok(n)
            }
            CT_ALERT => {
                let d = rec.get(range.start + 1).copied().unwrap_or(0);
                if d == 0 {
                    self.closed = true;
                    return Ok(0);
                }
                Err(bad(format!("peer sent TLS alert {} ({d})", record::alert_name(d))))
            }
            _ => Err(bad("post-handshake messages (key update, tickets) are not supported")),
        }
    }

    /// Seals up to four records of `src` and sends what the socket takes; returns the
    /// plaintext bytes taken. `WouldBlock` while earlier records are still unsent.
    pub fn write(&mut self, sock: &mut TcpStream, src: &[u8]) -> io::Result<usize> {
        if self.rec.is_none() {
            return Err(ErrorKind::WouldBlock.into());
        }
        if self.cout_pos < self.cout.len() {
            self.flush_out(sock)?;
            if self.cout_pos < self.cout.len() {
                return Err(ErrorKind::WouldBlock.into());
            }
        }
        let Some(rl) = self.rec.as_mut() else {
            return Err(ErrorKind::WouldBlock.into());
        };
        self.cout.clear();
        self.cout_pos = 0;
        let mut used = 0;
        while used < src.len() && self.cout.len() + PLAIN_MAX + OVERHEAD <= self.cout.capacity() {
            let n = PLAIN_MAX.min(src.len() - used);
            let at = self.cout.len();
            self.cout.resize(at + n + OVERHEAD, 0);
            self.cout[at + HEADER..at + HEADER + n].copy_from_slice(&src[used..used + n]);
            let l = rl.seal(&mut self.cout[at..], n).map_err(|e| bad(e.to_string()))?;
            self.cout.truncate(at + l);
            used += n;
        }
        self.flush_out(sock)?;
        Ok(used)
    }

    /// Writes sealed bytes still queued; returns whether any went out.
    pub fn flush_out(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        let mut wrote = false;
        while self.cout_pos < self.cout.len() {
            match sock.write(&self.cout[self.cout_pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.cout_pos += n;
                    wrote = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.cout_pos == self.cout.len() {
            self.cout.clear();
            self.cout_pos = 0;
        }
        Ok(wrote)
    }

    /// Received bytes not yet opened (a partial record, or whole ones a full `dst` left).
    pub fn buffered_in(&self) -> bool {
        self.cin_len > 0
    }

    /// Whether sealed bytes wait for the socket.
    pub fn pending_out(&self) -> bool {
        self.cout_pos < self.cout.len()
    }
}
