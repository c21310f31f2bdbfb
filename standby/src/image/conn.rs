//! Blocking frame I/O over a TCP stream (TLS when the process has credentials), shared by
//! the client and the server.

use super::wire::{self, Msg, HEADER_BYTES};
use super::ImageError;
use rdma_transport::tls::blocking::BlockingTls;
use rdma_transport::tls::{self, Role};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::TcpStream;

/// The channel's bytes: plain TCP, or TLS over it when the process has a TLS identity
/// (`docs/security.md`). The raw socket stays reachable for timeouts and shutdown.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(BlockingTls, TcpStream),
}

impl Stream {
    /// The client's (primary host's) side: accepts only a standby.
    pub(crate) fn client(s: TcpStream) -> Result<Stream, ImageError> {
        Stream::wrap(s, |s, ctx| BlockingTls::client(s, ctx, Role::Standby))
    }

    /// The server's (standby host's) side: accepts only a primary.
    pub(crate) fn server(s: TcpStream) -> Result<Stream, ImageError> {
        Stream::wrap(s, |s, ctx| BlockingTls::server(s, ctx, Role::Primary))
    }

    fn wrap(
        s: TcpStream,
        f: impl FnOnce(TcpStream, &tls::TlsContext) -> Result<BlockingTls, tls::TlsError>,
    ) -> Result<Stream, ImageError> {
        let Some(ctx) = tls::process() else {
            return Ok(Stream::Plain(s));
        };
        let raw = s.try_clone().map_err(|e| ImageError::io("clone socket", e))?;
        let t = f(s, ctx).map_err(|e| ImageError::Protocol(e.to_string()))?;
        Ok(Stream::Tls(t, raw))
    }

    /// A second handle (reader and writer each hold one).
    pub(crate) fn try_clone(&self) -> Result<Stream, ImageError> {
        let clone = |s: &TcpStream| s.try_clone().map_err(|e| ImageError::io("clone socket", e));
        Ok(match self {
            Stream::Plain(s) => Stream::Plain(clone(s)?),
            Stream::Tls(t, s) => Stream::Tls(t.clone(), clone(s)?),
        })
    }

    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) | Stream::Tls(_, s) => s,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(t, _) => t.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(t, _) => t.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t, _) => t.flush(),
        }
    }
}

/// Reads whole frames; one body buffer, reused.
pub(crate) struct FrameReader {
    r: BufReader<Stream>,
    body: Vec<u8>,
}

impl FrameReader {
    pub(crate) fn new(s: Stream) -> FrameReader {
        FrameReader {
            r: BufReader::with_capacity(256 * 1024, s),
            body: Vec::new(),
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        self.r.get_ref().tcp()
    }

    /// The next frame; `Ok(None)` if the peer closed cleanly between frames.
    pub(crate) fn next_or_eof(&mut self) -> Result<Option<Msg<'_>>, ImageError> {
        let mut h = [0u8; HEADER_BYTES];
        let mut got = 0;
        while got < HEADER_BYTES {
            match self.r.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(ImageError::Closed("inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::io("read frame header", e)),
            }
        }
        let hdr = wire::parse_header(&h)?;
        self.body.resize(hdr.body_len, 0);
        self.r.read_exact(&mut self.body).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                ImageError::Closed("inside a frame body")
            } else {
                ImageError::io("read frame body", e)
            }
        })?;
        Ok(Some(wire::parse_body(&hdr, &self.body)?))
    }

    /// The next frame; the peer closing is an error.
    pub(crate) fn next(&mut self) -> Result<Msg<'_>, ImageError> {
        self.next_or_eof()?
            .ok_or(ImageError::Closed("where a frame was expected"))
    }
}

/// Counts the bytes handed to the socket.
pub(crate) struct Counting {
    s: Stream,
    pub(crate) bytes: u64,
}

impl Write for Counting {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.s.write(b)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

/// Buffered frame writer over a counted socket.
pub(crate) struct FrameWriter {
    w: BufWriter<Counting>,
    /// Encoding scratch, reused.
    pub(crate) out: Vec<u8>,
}

impl FrameWriter {
    pub(crate) fn new(s: Stream) -> FrameWriter {
        FrameWriter {
            w: BufWriter::with_capacity(256 * 1024, Counting { s, bytes: 0 }),
            out: Vec::new(),
        }
    }

    /// Bytes written to the socket so far (after a [`FrameWriter::flush`]).
    pub(crate) fn bytes(&self) -> u64 {
        self.w.get_ref().bytes
    }

    /// Queues the frames encoded in `self.out` and clears it.
    pub(crate) fn send(&mut self) -> Result<(), ImageError> {
        self.w
            .write_all(&self.out)
            .map_err(|e| ImageError::io("write frame", e))?;
        self.out.clear();
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), ImageError> {
        self.w.flush().map_err(|e| ImageError::io("write frame", e))
    }
}
