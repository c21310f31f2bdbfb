//! The TLS state of one TCP replication connection: the handshake, then the buffers the
//! record layer seals into and opens from. Made when the connection is made; the data path
//! allocates nothing.
//!
//! Sending: plaintext is gathered from the send queue straight into the output buffer, up
//! to [`OUT_RECORDS`] records of at most 16 KiB, sealed in place, and written with one
//! `write`. Small frames queued together share a record. Receiving: ciphertext is read
//! into the input buffer, each whole record is opened in place and its plaintext copied to
//! the connection's frame buffer, which peels frames off as it does without TLS.

use std::io::{self, Read, Write};

use super::handshake::{Handshake, Progress};
use super::record::{self, RecordLayer, CT_ALERT, CT_APP, CT_HANDSHAKE, HEADER, OVERHEAD, PLAIN_MAX, RECORD_MAX};
use super::TlsError;
use crate::transport::TransportError;

/// Records sealed ahead of the socket, at most.
pub const OUT_RECORDS: usize = 4;
/// Ciphertext read per system call, at most (plus room for one partial record).
const IN_BYTES: usize = 64 * 1024 + RECORD_MAX;

enum Phase {
    Handshaking(Box<Handshake>),
    Open(Box<RecordLayer>),
}

/// What one [`TlsStream::read_plain`] produced.
pub enum ReadPlain {
    /// Plaintext bytes copied; `short` when the socket gave less than asked (it is empty).
    Data { n: usize, short: bool },
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed (`clean`: with a close_notify alert); `partial` ciphertext bytes of an
    /// unfinished record were pending.
    Eof { partial: usize },
}

/// One connection's TLS state.
pub struct TlsStream {
    phase: Phase,
    out: Box<[u8]>,
    out_start: usize,
    out_end: usize,
    inb: Box<[u8]>,
    in_start: usize,
    in_end: usize,
}

impl TlsStream {
    /// Wraps a handshake that has not started (setup path: allocates the buffers).
    pub fn new(hs: Handshake) -> Self {
        Self {
            phase: Phase::Handshaking(Box::new(hs)),
            out: vec![0u8; OUT_RECORDS * (PLAIN_MAX + OVERHEAD)].into_boxed_slice(),
            out_start: 0,
            out_end: 0,
            inb: vec![0u8; IN_BYTES].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
        }
    }

    /// Drives the handshake; `Ok(true)` once records flow.
    pub fn ready<S: Read + Write>(&mut self, sock: &mut S) -> Result<bool, TransportError> {
        let Phase::Handshaking(hs) = &mut self.phase else {
            return Ok(true);
        };
        match hs.advance(sock)? {
            Progress::Pending => Ok(false),
            Progress::Done(rl) => {
                let left = hs.leftover();
                self.inb[..left.len()].copy_from_slice(left);
                self.in_start = 0;
                self.in_end = left.len();
                self.phase = Phase::Open(rl);
                Ok(true)
            }
        }
    }

    /// Whether sealed bytes wait for the socket.
    pub fn has_output(&self) -> bool {
        self.out_start < self.out_end
    }

    /// Writes sealed bytes; `Ok(true)` when none are left.
    pub fn flush<S: Write>(&mut self, sock: &mut S) -> io::Result<bool> {
        while self.out_start < self.out_end {
            match sock.write(&self.out[self.out_start..self.out_end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out_start = 0;
        self.out_end = 0;
        Ok(true)
    }

    /// Seals records while the output buffer has room: `gather(skip, dst)` copies plaintext
    /// from `skip` bytes into what is queued and returns how many it copied. Returns the
    /// plaintext bytes sealed. Only called with an empty output buffer.
    pub fn seal_from(&mut self, mut gather: impl FnMut(usize, &mut [u8]) -> usize) -> Result<usize, TlsError> {
        let Phase::Open(rl) = &mut self.phase else {
            return Ok(0);
        };
        let mut sealed = 0;
        while self.out.len() - self.out_end >= PLAIN_MAX + OVERHEAD {
            let rec = &mut self.out[self.out_end..self.out_end + PLAIN_MAX + OVERHEAD];
            let n = gather(sealed, &mut rec[HEADER..HEADER + PLAIN_MAX]);
            if n == 0 {
                break;
            }
            self.out_end += rl.seal(rec, n)?;
            sealed += n;
        }
        Ok(sealed)
    }

    /// Whether a whole record waits to be opened (the socket may have nothing new).
    pub fn has_buffered(&self) -> bool {
        match record::peek_len(&self.inb[self.in_start..self.in_end]) {
            Ok(Some(len)) => len <= self.in_end - self.in_start,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Opens buffered records into `dst` and reads the socket when none is whole.
    pub fn read_plain<S: Read>(&mut self, sock: &mut S, dst: &mut [u8]) -> Result<ReadPlain, TransportError> {
        let mut short = false;
        loop {
            let n = self.open_into(dst)?;
            if n > 0 || dst.len() < PLAIN_MAX {
                return Ok(ReadPlain::Data { n, short });
            }
            if self.in_start > 0 {
                self.inb.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            let space = self.inb.len() - self.in_end;
            match sock.read(&mut self.inb[self.in_end..]) {
                Ok(0) => {
                    return Ok(ReadPlain::Eof {
                        partial: self.in_end - self.in_start,
                    })
                }
                Ok(k) => {
                    self.in_end += k;
                    short = k < space;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadPlain::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TransportError::Io { op: "read", source: e }),
            }
        }
    }

    /// Opens whole records while `dst` has room for a full one; returns plaintext bytes copied.
    fn open_into(&mut self, dst: &mut [u8]) -> Result<usize, TransportError> {
        let Phase::Open(rl) = &mut self.phase else {
            return Ok(0);
        };
        let mut n = 0;
        while dst.len() - n >= PLAIN_MAX {
            let avail = &mut self.inb[self.in_start..self.in_end];
            let Some(len) = record::peek_len(avail)? else { break };
            if len > avail.len() {
                break;
            }
            let (ct, range) = rl.open(&mut avail[..len])?;
            let plain = &avail[range];
            match ct {
                CT_APP => {
                    dst[n..n + plain.len()].copy_from_slice(plain);
                    n += plain.len();
                }
                CT_ALERT if plain.len() == 2 && plain[1] == 0 => return Err(TransportError::PeerClosed),
                CT_ALERT if plain.len() == 2 => return Err(alert(plain[1]).into()),
                CT_HANDSHAKE => return Err(TlsError::PostHandshake.into()),
                _ => return Err(TlsError::BadRecord("unknown content type").into()),
            }
            self.in_start += len;
        }
        Ok(n)
    }
}

fn alert(code: u8) -> TlsError {
    let hint = match code {
        42 | 43 | 46 | 48 | 49 | 116 => ": the peer refused this process's certificate or key",
        _ => "",
    };
    TlsError::PeerAlert {
        name: record::alert_name(code),
        code,
        hint,
    }
}
