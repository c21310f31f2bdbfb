//! Blocking frame I/O over a TCP stream, shared by the client and the server.

use super::wire::{self, Msg, HEADER_BYTES};
use super::ImageError;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::TcpStream;

/// Reads whole frames; one body buffer, reused.
pub(crate) struct FrameReader {
    r: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl FrameReader {
    pub(crate) fn new(s: TcpStream) -> FrameReader {
        FrameReader {
            r: BufReader::with_capacity(256 * 1024, s),
            body: Vec::new(),
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        self.r.get_ref()
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
    s: TcpStream,
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
    pub(crate) fn new(s: TcpStream) -> FrameWriter {
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
