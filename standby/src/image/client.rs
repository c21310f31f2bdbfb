//! The primary host's side: sends execution images to the standby host.

use super::conn::{FrameReader, FrameWriter, Stream};
use super::wire::{self, Base, Msg, Propose, BODY_MAX, ENTRIES_PER_FRAME};
use super::{check_app_name, chunk_count, chunk_hashes, chunk_len, hex, Hash, ImageError};
use super::{CHUNK_SIZE, IMAGE_BYTES_MAX};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bound on connecting to the standby host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each wait for the standby host's answer (it verifies and
/// fsyncs the whole image before answering `Saved`).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// What one [`ImageClient::transfer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    pub seq: u64,
    /// Whole-image BLAKE3 (the hash in the restart tag).
    pub hash: [u8; 32],
    pub image_bytes: u64,
    pub chunks_total: u64,
    /// Chunks whose data went on the wire (the standby lacked them).
    pub chunks_sent: u64,
    /// Bytes of chunk data sent.
    pub data_bytes_sent: u64,
    /// Everything the client wrote on the socket for this transfer: frames
    /// headers, manifest entries, chunk data (and the Hello of a reconnect).
    pub wire_bytes_sent: u64,
    /// Entries of the manifest sent (changed chunks for a delta, every chunk
    /// for a full manifest; both if the standby asked for the full one).
    pub entries_sent: u64,
    /// The base seq the delta was accepted against; `None` if the full
    /// manifest was sent (first transfer, or the standby lacked the base).
    pub base: Option<u64>,
    pub elapsed: Duration,
}

struct Conn {
    rd: FrameReader,
    wr: FrameWriter,
}

/// The manifest of the last image the standby host saved.
struct Last {
    seq: u64,
    hash: Hash,
    chunks: Vec<Hash>,
}

/// A connection to the standby host's [`super::ImageServer`] for one
/// application. Blocking; not for a reactor thread.
pub struct ImageClient {
    addr: SocketAddr,
    app: String,
    conn: Option<Conn>,
    last: Option<Last>,
}

impl ImageClient {
    /// Connects to the image server at `addr` for application `app`
    /// (1..=64 bytes of `[A-Za-z0-9._-]`).
    pub fn connect(addr: SocketAddr, app: &str) -> Result<ImageClient, ImageError> {
        check_app_name(app)?;
        let mut c = ImageClient {
            addr,
            app: app.to_owned(),
            conn: None,
            last: None,
        };
        c.conn = Some(c.open()?);
        Ok(c)
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    /// (seq, hash) of the last image the standby host saved for this client,
    /// the base of the next delta.
    pub fn last_saved(&self) -> Option<(u64, [u8; 32])> {
        self.last.as_ref().map(|l| (l.seq, l.hash))
    }

    /// Makes the next transfer send the full manifest (chunks the standby
    /// holds are still not resent).
    pub fn forget_base(&mut self) {
        self.last = None;
    }

    fn open(&self) -> Result<Conn, ImageError> {
        let s = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)
            .map_err(|e| ImageError::io(format!("connect to {}", self.addr), e))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| ImageError::io("set read timeout", e))?;
        let s = Stream::client(s)?;
        let rd = FrameReader::new(s.try_clone()?);
        let mut c = Conn {
            rd,
            wr: FrameWriter::new(s),
        };
        wire::encode_hello(&mut c.wr.out, &self.app).map_err(|e| ImageError::Protocol(e.to_string()))?;
        c.wr.send()?;
        c.wr.flush()?;
        match c.rd.next()? {
            Msg::HelloOk => Ok(c),
            Msg::Error { code, message } => Err(ImageError::Remote {
                code,
                message: message.to_owned(),
            }),
            m => Err(ImageError::Protocol(format!("expected HelloOk, got {:?}", m.kind()))),
        }
    }

    /// Sends image `seq` (above every seq transferred before by this client)
    /// and returns once the standby host has it whole, verified against its
    /// BLAKE3 and durable: only then may the restart point with
    /// [`super::restart_tag`]`(seq, &report.hash)` be declared to storage.
    ///
    /// Sends a delta against the last saved image (changed chunk indices and
    /// hashes), then only the chunks the standby lacks. If the connection
    /// was broken since the last transfer (standby host restarted), it
    /// reconnects once. On error the connection is dropped (the next
    /// transfer reconnects) and the base is kept.
    pub fn transfer(&mut self, seq: u64, image: &[u8]) -> Result<TransferReport, ImageError> {
        let start = Instant::now();
        if image.len() as u64 > IMAGE_BYTES_MAX {
            return Err(ImageError::TooLarge {
                len: image.len() as u64,
                max: IMAGE_BYTES_MAX,
            });
        }
        if let Some(l) = &self.last {
            if seq <= l.seq {
                return Err(ImageError::SeqNotIncreasing { seq, last: l.seq });
            }
        }
        let chunks = chunk_hashes(image);
        let hash = *blake3::hash(image).as_bytes();
        let mut rep = TransferReport {
            seq,
            hash,
            image_bytes: image.len() as u64,
            chunks_total: chunks.len() as u64,
            chunks_sent: 0,
            data_bytes_sent: 0,
            wire_bytes_sent: 0,
            entries_sent: 0,
            base: None,
            elapsed: Duration::ZERO,
        };
        let reused = self.conn.is_some();
        let mut r = self.attempt(image, &chunks, &mut rep);
        if reused && matches!(r, Err(ImageError::Io { .. } | ImageError::Closed(_))) {
            // The standby host may have restarted since the last transfer.
            log::info!("image client {}: reconnecting to {}", self.app, self.addr);
            self.conn = None;
            r = self.attempt(image, &chunks, &mut rep);
        }
        match r {
            Ok(()) => {
                self.last = Some(Last { seq, hash, chunks });
                rep.elapsed = start.elapsed();
                Ok(rep)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn attempt(&mut self, image: &[u8], chunks: &[Hash], rep: &mut TransferReport) -> Result<(), ImageError> {
        if self.conn.is_none() {
            let c = self.open()?;
            rep.wire_bytes_sent += c.wr.bytes();
            self.conn = Some(c);
        }
        let c = self.conn.as_mut().expect("connected above");
        let before = c.wr.bytes();
        let r = exchange(c, self.last.as_ref(), image, chunks, rep);
        rep.wire_bytes_sent += c.wr.bytes() - before;
        r
    }
}

/// Proposes the image (delta against `last` if any), answers `NeedFull`
/// with the full manifest, sends the chunks asked for, waits for `Saved`.
fn exchange(
    c: &mut Conn,
    last: Option<&Last>,
    image: &[u8],
    chunks: &[Hash],
    rep: &mut TransferReport,
) -> Result<(), ImageError> {
    let len = image.len() as u64;
    let mut base = last;
    loop {
        propose(c, base, len, chunks, rep)?;
        let (runs_total, chunks_total) = match c.rd.next()? {
            Msg::NeedFull if base.is_some() => {
                base = None;
                continue;
            }
            Msg::Need { runs, chunks } => (runs, chunks),
            Msg::Error { code, message } => {
                return Err(ImageError::Remote {
                    code,
                    message: message.to_owned(),
                })
            }
            m => return Err(ImageError::Protocol(format!("expected Need, got {:?}", m.kind()))),
        };
        rep.base = base.map(|b| b.seq);
        let need = read_need(c, runs_total, chunks_total, chunk_count(len))?;
        send_chunks(c, image, &need, rep)?;
        return await_saved(c, rep);
    }
}

/// Sends the proposal: against `base`, the entries of the chunks that differ from it;
/// without, every chunk's.
fn propose(
    c: &mut Conn,
    base: Option<&Last>,
    len: u64,
    chunks: &[Hash],
    rep: &mut TransferReport,
) -> Result<(), ImageError> {
    let entries: Vec<(u32, Hash)> = match base {
        Some(b) => chunks
            .iter()
            .enumerate()
            .filter(|(i, h)| b.chunks.get(*i) != Some(h))
            .map(|(i, h)| (i as u32, *h))
            .collect(),
        None => chunks.iter().enumerate().map(|(i, h)| (i as u32, *h)).collect(),
    };
    wire::encode_propose(
        &mut c.wr.out,
        &Propose {
            seq: rep.seq,
            image_len: len,
            image_hash: rep.hash,
            base: base.map(|b| Base {
                seq: b.seq,
                hash: b.hash,
            }),
            entry_count: entries.len() as u32,
        },
    );
    c.wr.send()?;
    for part in entries.chunks(ENTRIES_PER_FRAME) {
        wire::encode_entries(&mut c.wr.out, part.iter().copied()).map_err(|e| ImageError::Protocol(e.to_string()))?;
        c.wr.send()?;
    }
    c.wr.flush()?;
    rep.entries_sent += entries.len() as u64;
    Ok(())
}

/// Reads the `runs_total` runs of chunks the server needs (`chunks_total` chunks of the
/// image's `n`), checking they ascend and stay in range.
fn read_need(c: &mut Conn, runs_total: u32, chunks_total: u32, n: u64) -> Result<Vec<u32>, ImageError> {
    let mut need: Vec<u32> = Vec::with_capacity(chunks_total as usize);
    let mut runs_seen = 0u64;
    while runs_seen < runs_total as u64 {
        match c.rd.next()? {
            Msg::NeedRuns(r) => {
                runs_seen += r.len() as u64;
                for (s, k) in r.iter() {
                    let end = s as u64 + k as u64;
                    if end > n || need.last().is_some_and(|&l| l >= s) {
                        return Err(ImageError::Protocol(format!(
                            "asked for chunks {s}..{end} of {n}, not ascending or out of range"
                        )));
                    }
                    need.extend(s..end as u32);
                    if need.len() as u64 > chunks_total as u64 {
                        return Err(ImageError::Protocol(format!(
                            "asked for more than the {chunks_total} chunks announced"
                        )));
                    }
                }
            }
            m => return Err(ImageError::Protocol(format!("expected NeedRuns, got {:?}", m.kind()))),
        }
    }
    if runs_seen != runs_total as u64 || need.len() != chunks_total as usize {
        return Err(ImageError::Protocol(format!(
            "{runs_seen} runs of {} chunks received, {runs_total} runs of {chunks_total} announced",
            need.len()
        )));
    }
    Ok(need)
}

/// Sends the chunks `need` names, whole, at most BODY_MAX bytes per frame.
fn send_chunks(c: &mut Conn, image: &[u8], need: &[u32], rep: &mut TransferReport) -> Result<(), ImageError> {
    let len = image.len() as u64;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(BODY_MAX / CHUNK_SIZE);
    let mut in_frame = 0usize;
    for &i in need {
        let at = i as usize * CHUNK_SIZE;
        let l = chunk_len(len, i as u64);
        if in_frame + l > BODY_MAX {
            wire::encode_chunks(&mut c.wr.out, &parts).map_err(|e| ImageError::Protocol(e.to_string()))?;
            c.wr.send()?;
            parts.clear();
            in_frame = 0;
        }
        parts.push(&image[at..at + l]);
        in_frame += l;
        rep.data_bytes_sent += l as u64;
    }
    if !parts.is_empty() {
        wire::encode_chunks(&mut c.wr.out, &parts).map_err(|e| ImageError::Protocol(e.to_string()))?;
        c.wr.send()?;
    }
    c.wr.flush()?;
    rep.chunks_sent += need.len() as u64;
    Ok(())
}

/// Waits for the server's `Saved` of this image.
fn await_saved(c: &mut Conn, rep: &TransferReport) -> Result<(), ImageError> {
    match c.rd.next()? {
        Msg::Saved { seq, hash } if seq == rep.seq && hash == rep.hash => Ok(()),
        Msg::Saved { seq, hash } => Err(ImageError::Protocol(format!(
            "Saved seq {seq} {}, expected seq {} {}",
            hex(&hash),
            rep.seq,
            hex(&rep.hash)
        ))),
        Msg::Error { code, message } => Err(ImageError::Remote {
            code,
            message: message.to_owned(),
        }),
        m => Err(ImageError::Protocol(format!("expected Saved, got {:?}", m.kind()))),
    }
}
