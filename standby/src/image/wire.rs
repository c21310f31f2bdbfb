//! The execution-image transfer protocol: frames and messages (pure codec).
//!
//! Every frame is a 16-byte header then a body, all little-endian:
//!
//! ```text
//! 0  u8   version (1)          4  u32  body length (<= BODY_MAX)
//! 1  u8   kind                 8  u32  CRC32C of the body
//! 2  u16  reserved (0)         12 u32  CRC32C of header bytes 0..12
//! ```
//!
//! The header CRC is checked before the length is trusted, so a corrupted
//! length is an error at once, never a wait for bytes that will not come.
//! [`parse_header`] and [`parse_body`] turn bytes into a typed [`Msg`]: every
//! field is bounded and every rejection is a [`WireError`] naming the rule.
//! See `docs/execution-images.md` for the exchange.

use super::{check_app_name, chunk_count, Hash, APP_NAME_MAX, CHUNKS_MAX, IMAGE_BYTES_MAX};
use crate::le::{u16_at, u32_at, u64_at};

/// Version byte of every frame.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 16;
/// Largest body of any frame: 1 MiB (256 chunks of chunk data).
pub const BODY_MAX: usize = 1 << 20;
/// Bytes of one manifest entry in an `Entries` frame: index u32 + hash.
pub const ENTRY_BYTES: usize = 36;
/// Most entries in one `Entries` frame.
pub const ENTRIES_PER_FRAME: usize = (BODY_MAX - 4) / ENTRY_BYTES;
/// Bytes of one run in a `NeedRuns` frame: first chunk u32 + count u32.
pub const RUN_BYTES: usize = 8;
/// Most runs in one `NeedRuns` frame.
pub const RUNS_PER_FRAME: usize = (BODY_MAX - 4) / RUN_BYTES;
/// Longest error message.
pub const MESSAGE_MAX: usize = 1024;
/// Bytes of a `Propose` body.
pub const PROPOSE_BYTES: usize = 8 + 8 + 32 + 1 + 8 + 32 + 4;

/// Frame kinds. C = client (primary host), S = server (standby host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// C->S, first frame of a connection: the application name.
    Hello = 1,
    /// S->C: the name is accepted.
    HelloOk = 2,
    /// C->S: a new image (seq, length, whole hash, optional base), then
    /// `entry_count` entries in `Entries` frames.
    Propose = 3,
    /// C->S: manifest entries (chunk index, chunk hash), indices increasing.
    Entries = 4,
    /// S->C: the base is not held; propose again with the full manifest.
    NeedFull = 5,
    /// S->C: totals of the chunks the server lacks, then `NeedRuns` frames.
    Need = 6,
    /// S->C: runs (first chunk index, count) of chunks to send.
    NeedRuns = 7,
    /// C->S: whole chunks, concatenated, in the order of the runs.
    Chunks = 8,
    /// S->C: the image is verified, durable and visible.
    Saved = 9,
    /// S->C: the transfer or connection failed; the server closes after it.
    Error = 10,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::HelloOk,
            3 => Kind::Propose,
            4 => Kind::Entries,
            5 => Kind::NeedFull,
            6 => Kind::Need,
            7 => Kind::NeedRuns,
            8 => Kind::Chunks,
            9 => Kind::Saved,
            10 => Kind::Error,
            _ => return None,
        })
    }
}

/// Error codes of an `Error` frame.
pub mod code {
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const PROTOCOL: u16 = 1;
    /// The proposed image is inconsistent (hash mismatch, bad delta).
    pub const BAD_IMAGE: u16 = 2;
    /// The store failed (I/O, corruption found while verifying).
    pub const STORE: u16 = 3;
    /// The server is at its connection limit or stopping.
    pub const BUSY: u16 = 4;
}

/// Why bytes were not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame truncated: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("frame version {0}, this side speaks version {WIRE_VERSION}")]
    BadVersion(u8),
    #[error("header CRC32C {found:#010x}, computed {computed:#010x}")]
    HeaderCrc { found: u32, computed: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header field is {0:#06x}, must be 0")]
    Reserved(u16),
    #[error("body of {len} bytes exceeds the {max} allowed")]
    BodyTooLong { len: usize, max: usize },
    #[error("body CRC32C {found:#010x}, computed {computed:#010x}")]
    BodyCrc { found: u32, computed: u32 },
    #[error("{kind:?} body of {len} bytes: {rule}")]
    BodyLength { kind: Kind, len: usize, rule: &'static str },
    #[error("{kind:?}: field {field} is {value}: {rule}")]
    Field {
        kind: Kind,
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
    #[error("{kind:?}: {field} is not valid: {why}")]
    Text {
        kind: Kind,
        field: &'static str,
        why: String,
    },
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub body_len: usize,
    pub body_crc: u32,
}

/// The base a delta is proposed against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub seq: u64,
    pub hash: Hash,
}

/// A proposed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propose {
    pub seq: u64,
    pub image_len: u64,
    pub image_hash: Hash,
    /// `None`: the entries are the full manifest (every index, in order).
    pub base: Option<Base>,
    /// Number of entries that follow in `Entries` frames.
    pub entry_count: u32,
}

/// Entries of an `Entries` frame (checked length; iterate with [`Entries::iter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries<'a>(&'a [u8]);

impl<'a> Entries<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / ENTRY_BYTES
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (u32, Hash)> + 'a {
        self.0.chunks_exact(ENTRY_BYTES).map(|e| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&e[4..]);
            (u32_at(e, 0), h)
        })
    }
}

/// Runs of a `NeedRuns` frame (checked: each count >= 1, no overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runs<'a>(&'a [u8]);

impl<'a> Runs<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / RUN_BYTES
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// (first chunk index, number of chunks).
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        self.0.chunks_exact(RUN_BYTES).map(|r| (u32_at(r, 0), u32_at(r, 4)))
    }
}

/// A parsed message, borrowing the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg<'a> {
    Hello { app: &'a str },
    HelloOk,
    Propose(Propose),
    Entries(Entries<'a>),
    NeedFull,
    Need { runs: u32, chunks: u32 },
    NeedRuns(Runs<'a>),
    Chunks(&'a [u8]),
    Saved { seq: u64, hash: Hash },
    Error { code: u16, message: &'a str },
}

impl Msg<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Msg::Hello { .. } => Kind::Hello,
            Msg::HelloOk => Kind::HelloOk,
            Msg::Propose(_) => Kind::Propose,
            Msg::Entries(_) => Kind::Entries,
            Msg::NeedFull => Kind::NeedFull,
            Msg::Need { .. } => Kind::Need,
            Msg::NeedRuns(_) => Kind::NeedRuns,
            Msg::Chunks(_) => Kind::Chunks,
            Msg::Saved { .. } => Kind::Saved,
            Msg::Error { .. } => Kind::Error,
        }
    }
}

/// Checks a frame header (the first 16 bytes of `b`): version, header CRC,
/// kind, reserved field, body length bound.
pub fn parse_header(b: &[u8]) -> Result<Header, WireError> {
    if b.len() < HEADER_BYTES {
        return Err(WireError::Truncated {
            have: b.len(),
            need: HEADER_BYTES,
        });
    }
    if b[0] != WIRE_VERSION {
        return Err(WireError::BadVersion(b[0]));
    }
    let found = u32_at(b, 12);
    let computed = crc32c::crc32c(&b[..12]);
    if found != computed {
        return Err(WireError::HeaderCrc { found, computed });
    }
    let kind = Kind::from_u8(b[1]).ok_or(WireError::UnknownKind(b[1]))?;
    let reserved = u16_at(b, 2);
    if reserved != 0 {
        return Err(WireError::Reserved(reserved));
    }
    let body_len = u32_at(b, 4) as usize;
    if body_len > BODY_MAX {
        return Err(WireError::BodyTooLong {
            len: body_len,
            max: BODY_MAX,
        });
    }
    Ok(Header {
        kind,
        body_len,
        body_crc: u32_at(b, 8),
    })
}

/// Checks the body CRC and every field of the body of a frame with header `h`.
pub fn parse_body<'a>(h: &Header, body: &'a [u8]) -> Result<Msg<'a>, WireError> {
    if body.len() != h.body_len {
        return Err(WireError::Truncated {
            have: body.len(),
            need: h.body_len,
        });
    }
    let computed = crc32c::crc32c(body);
    if computed != h.body_crc {
        return Err(WireError::BodyCrc {
            found: h.body_crc,
            computed,
        });
    }
    let kind = h.kind;
    let len_rule = |rule| len_rule(kind, body, rule);
    let field = |f, value, rule| field(kind, f, value, rule);
    Ok(match kind {
        Kind::Hello => parse_hello(body)?,
        Kind::HelloOk | Kind::NeedFull => {
            if !body.is_empty() {
                return Err(len_rule("must be empty"));
            }
            if kind == Kind::HelloOk {
                Msg::HelloOk
            } else {
                Msg::NeedFull
            }
        }
        Kind::Propose => Msg::Propose(parse_propose(body)?),
        Kind::Entries => {
            let n = counted(body, ENTRY_BYTES, ENTRIES_PER_FRAME)
                .ok_or(len_rule("must be 4 + 36 * count, count 1..=29126"))?;
            let e = Entries(&body[4..]);
            debug_assert_eq!(e.len(), n);
            Msg::Entries(e)
        }
        Kind::Need => {
            if body.len() != 8 {
                return Err(len_rule("must be 8"));
            }
            let runs = u32_at(body, 0);
            let chunks = u32_at(body, 4);
            if chunks as u64 > CHUNKS_MAX {
                return Err(field("chunks", chunks as u64, "more than an image can have"));
            }
            if runs > chunks {
                return Err(field("runs", runs as u64, "more runs than chunks"));
            }
            Msg::Need { runs, chunks }
        }
        Kind::NeedRuns => {
            counted(body, RUN_BYTES, RUNS_PER_FRAME).ok_or(len_rule("must be 4 + 8 * count, count 1..=131071"))?;
            let r = Runs(&body[4..]);
            for (start, count) in r.iter() {
                if count == 0 {
                    return Err(field("run count", 0, "a run has at least one chunk"));
                }
                let end = start as u64 + count as u64;
                if end > CHUNKS_MAX {
                    return Err(field("run end", end, "beyond the largest image"));
                }
            }
            Msg::NeedRuns(r)
        }
        Kind::Chunks => {
            if body.is_empty() {
                return Err(len_rule("must hold at least one byte of chunk data"));
            }
            Msg::Chunks(body)
        }
        Kind::Saved => {
            if body.len() != 40 {
                return Err(len_rule("must be 40"));
            }
            Msg::Saved {
                seq: u64_at(body, 0),
                hash: hash_at(body, 8),
            }
        }
        Kind::Error => parse_error(body)?,
    })
}

/// A body whose length breaks `rule`.
fn len_rule(kind: Kind, body: &[u8], rule: &'static str) -> WireError {
    WireError::BodyLength {
        kind,
        len: body.len(),
        rule,
    }
}

/// A field whose `value` breaks `rule`.
fn field(kind: Kind, field: &'static str, value: u64, rule: &'static str) -> WireError {
    WireError::Field {
        kind,
        field,
        value,
        rule,
    }
}

fn parse_hello(body: &[u8]) -> Result<Msg<'_>, WireError> {
    let kind = Kind::Hello;
    let len_rule = |rule| len_rule(kind, body, rule);
    let field = |f, value, rule| field(kind, f, value, rule);
    let n = *body.first().ok_or(len_rule("needs the name length byte"))? as usize;
    if body.len() != 1 + n {
        return Err(len_rule("must be 1 + name length"));
    }
    if n > APP_NAME_MAX {
        return Err(field("app name length", n as u64, "at most 64"));
    }
    let app = std::str::from_utf8(&body[1..]).map_err(|e| WireError::Text {
        kind,
        field: "app name",
        why: e.to_string(),
    })?;
    check_app_name(app).map_err(|e| WireError::Text {
        kind,
        field: "app name",
        why: e.to_string(),
    })?;
    Ok(Msg::Hello { app })
}

fn parse_propose(body: &[u8]) -> Result<Propose, WireError> {
    let kind = Kind::Propose;
    let len_rule = |rule| len_rule(kind, body, rule);
    let field = |f, value, rule| field(kind, f, value, rule);
    if body.len() != PROPOSE_BYTES {
        return Err(len_rule("must be 93"));
    }
    let seq = u64_at(body, 0);
    let image_len = u64_at(body, 8);
    let image_hash = hash_at(body, 16);
    let has_base = body[48];
    let base_seq = u64_at(body, 49);
    let base_hash = hash_at(body, 57);
    let entry_count = u32_at(body, 89);
    if image_len > IMAGE_BYTES_MAX {
        return Err(field("image length", image_len, "at most 4 GiB"));
    }
    let chunks = chunk_count(image_len);
    let base = match has_base {
        0 => {
            if base_seq != 0 || base_hash != [0; 32] {
                return Err(field("base", base_seq, "must be zero without a base"));
            }
            if entry_count as u64 != chunks {
                return Err(field(
                    "entry count",
                    entry_count as u64,
                    "a full manifest has one entry per chunk",
                ));
            }
            None
        }
        1 => {
            if entry_count as u64 > chunks {
                return Err(field("entry count", entry_count as u64, "more entries than chunks"));
            }
            Some(Base {
                seq: base_seq,
                hash: base_hash,
            })
        }
        v => return Err(field("has base", v as u64, "must be 0 or 1")),
    };
    Ok(Propose {
        seq,
        image_len,
        image_hash,
        base,
        entry_count,
    })
}

fn parse_error(body: &[u8]) -> Result<Msg<'_>, WireError> {
    let kind = Kind::Error;
    let len_rule = |rule| len_rule(kind, body, rule);
    let field = |f, value, rule| field(kind, f, value, rule);
    if body.len() < 4 {
        return Err(len_rule("must be at least 4"));
    }
    let code = u16_at(body, 0);
    let n = u16_at(body, 2) as usize;
    if n > MESSAGE_MAX {
        return Err(field("message length", n as u64, "at most 1024"));
    }
    if body.len() != 4 + n {
        return Err(len_rule("must be 4 + message length"));
    }
    let message = std::str::from_utf8(&body[4..]).map_err(|e| WireError::Text {
        kind,
        field: "message",
        why: e.to_string(),
    })?;
    Ok(Msg::Error { code, message })
}

/// Parses one whole frame at the front of `b`; returns it and its length.
pub fn parse_frame(b: &[u8]) -> Result<(Msg<'_>, usize), WireError> {
    let h = parse_header(b)?;
    let end = HEADER_BYTES + h.body_len;
    if b.len() < end {
        return Err(WireError::Truncated {
            have: b.len(),
            need: end,
        });
    }
    Ok((parse_body(&h, &b[HEADER_BYTES..end])?, end))
}

/// `count u32` then `count` items of `item` bytes, 1 <= count <= max.
fn counted(body: &[u8], item: usize, max: usize) -> Option<usize> {
    if body.len() < 4 {
        return None;
    }
    let n = u32_at(body, 0) as usize;
    if n == 0 || n > max || body.len() != 4 + n * item {
        return None;
    }
    Some(n)
}

fn hash_at(b: &[u8], at: usize) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(&b[at..at + 32]);
    h
}

// ---- encoding ----

/// Appends a frame of `kind` whose body `body` writes to `out`; the header is
/// filled after. Panics only if `body` writes more than [`BODY_MAX`] bytes,
/// which the encoders below never do (they take bounded inputs).
fn frame(out: &mut Vec<u8>, kind: Kind, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    body(out);
    let body_len = out.len() - start - HEADER_BYTES;
    assert!(body_len <= BODY_MAX, "encoder wrote a {body_len}-byte body");
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    let h = &mut out[start..start + HEADER_BYTES];
    h[0] = WIRE_VERSION;
    h[1] = kind as u8;
    h[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    let hc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&hc.to_le_bytes());
}

/// Encoding errors: an input the protocol cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what}: {len} items, at most {max} fit one frame")]
    TooMany { what: &'static str, len: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}

pub fn encode_hello(out: &mut Vec<u8>, app: &str) -> Result<(), EncodeError> {
    check_app_name(app).map_err(|e| EncodeError::Invalid(e.to_string()))?;
    frame(out, Kind::Hello, |b| {
        b.push(app.len() as u8);
        b.extend_from_slice(app.as_bytes());
    });
    Ok(())
}

pub fn encode_empty(out: &mut Vec<u8>, kind: Kind) -> Result<(), EncodeError> {
    match kind {
        Kind::HelloOk | Kind::NeedFull => {
            frame(out, kind, |_| {});
            Ok(())
        }
        k => Err(EncodeError::Invalid(format!("{k:?} has a body"))),
    }
}

pub fn encode_propose(out: &mut Vec<u8>, p: &Propose) {
    frame(out, Kind::Propose, |b| {
        b.extend_from_slice(&p.seq.to_le_bytes());
        b.extend_from_slice(&p.image_len.to_le_bytes());
        b.extend_from_slice(&p.image_hash);
        match p.base {
            None => b.extend_from_slice(&[0u8; 41]),
            Some(base) => {
                b.push(1);
                b.extend_from_slice(&base.seq.to_le_bytes());
                b.extend_from_slice(&base.hash);
            }
        }
        b.extend_from_slice(&p.entry_count.to_le_bytes());
    });
}

/// `entries`: 1..=ENTRIES_PER_FRAME (index, hash) pairs.
pub fn encode_entries(
    out: &mut Vec<u8>,
    entries: impl ExactSizeIterator<Item = (u32, Hash)>,
) -> Result<(), EncodeError> {
    let n = entries.len();
    if n == 0 || n > ENTRIES_PER_FRAME {
        return Err(EncodeError::TooMany {
            what: "entries",
            len: n,
            max: ENTRIES_PER_FRAME,
        });
    }
    frame(out, Kind::Entries, |b| {
        b.extend_from_slice(&(n as u32).to_le_bytes());
        for (i, h) in entries {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(&h);
        }
    });
    Ok(())
}

pub fn encode_need(out: &mut Vec<u8>, runs: u32, chunks: u32) {
    frame(out, Kind::Need, |b| {
        b.extend_from_slice(&runs.to_le_bytes());
        b.extend_from_slice(&chunks.to_le_bytes());
    });
}

/// `runs`: 1..=RUNS_PER_FRAME (first, count) pairs.
pub fn encode_runs(out: &mut Vec<u8>, runs: &[(u32, u32)]) -> Result<(), EncodeError> {
    if runs.is_empty() || runs.len() > RUNS_PER_FRAME {
        return Err(EncodeError::TooMany {
            what: "runs",
            len: runs.len(),
            max: RUNS_PER_FRAME,
        });
    }
    frame(out, Kind::NeedRuns, |b| {
        b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (s, c) in runs {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&c.to_le_bytes());
        }
    });
    Ok(())
}

/// `parts`: chunk data, 1..=BODY_MAX bytes in all.
pub fn encode_chunks(out: &mut Vec<u8>, parts: &[&[u8]]) -> Result<(), EncodeError> {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    if n == 0 || n > BODY_MAX {
        return Err(EncodeError::TooMany {
            what: "chunk bytes",
            len: n,
            max: BODY_MAX,
        });
    }
    frame(out, Kind::Chunks, |b| {
        for p in parts {
            b.extend_from_slice(p);
        }
    });
    Ok(())
}

pub fn encode_saved(out: &mut Vec<u8>, seq: u64, hash: &Hash) {
    frame(out, Kind::Saved, |b| {
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(hash);
    });
}

/// The message is cut to [`MESSAGE_MAX`] bytes at a character boundary.
pub fn encode_error(out: &mut Vec<u8>, code: u16, message: &str) {
    let mut end = message.len().min(MESSAGE_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let m = &message[..end];
    frame(out, Kind::Error, |b| {
        b.extend_from_slice(&code.to_le_bytes());
        b.extend_from_slice(&(m.len() as u16).to_le_bytes());
        b.extend_from_slice(m.as_bytes());
    });
}

/// Encodes any parsed message again (used to check that parse and encode agree).
pub fn encode_msg(out: &mut Vec<u8>, m: &Msg<'_>) -> Result<(), EncodeError> {
    match *m {
        Msg::Hello { app } => encode_hello(out, app)?,
        Msg::HelloOk => encode_empty(out, Kind::HelloOk)?,
        Msg::NeedFull => encode_empty(out, Kind::NeedFull)?,
        Msg::Propose(p) => encode_propose(out, &p),
        Msg::Entries(e) => encode_entries(out, e.iter().collect::<Vec<_>>().into_iter())?,
        Msg::Need { runs, chunks } => encode_need(out, runs, chunks),
        Msg::NeedRuns(r) => encode_runs(out, &r.iter().collect::<Vec<_>>())?,
        Msg::Chunks(d) => encode_chunks(out, &[d])?,
        Msg::Saved { seq, hash } => encode_saved(out, seq, &hash),
        Msg::Error { code, message } => encode_error(out, code, message),
    }
    Ok(())
}

/// Fuzz body: parses arbitrary bytes as a stream of frames, and once more
/// with the header and body CRCs and the length made right (so random bytes
/// reach the field checks behind the CRCs). Must never panic; every accepted
/// frame must re-encode to exactly the bytes it was parsed from.
pub fn fuzz_frames(data: &[u8]) {
    let mut rest = data;
    while let Ok((m, used)) = parse_frame(rest) {
        reencode_check(&m, &rest[..used]);
        rest = &rest[used..];
    }
    if data.len() >= HEADER_BYTES && data.len() - HEADER_BYTES <= BODY_MAX {
        let mut v = data.to_vec();
        v[0] = WIRE_VERSION;
        let body_len = (v.len() - HEADER_BYTES) as u32;
        v[4..8].copy_from_slice(&body_len.to_le_bytes());
        let bc = crc32c::crc32c(&v[HEADER_BYTES..]);
        v[8..12].copy_from_slice(&bc.to_le_bytes());
        let hc = crc32c::crc32c(&v[..12]);
        v[12..16].copy_from_slice(&hc.to_le_bytes());
        if let Ok((m, used)) = parse_frame(&v) {
            assert_eq!(used, v.len());
            reencode_check(&m, &v);
        }
    }
}

fn reencode_check(m: &Msg<'_>, bytes: &[u8]) {
    let mut out = Vec::new();
    encode_msg(&mut out, m).expect("an accepted frame re-encodes");
    assert_eq!(out, bytes, "re-encoding of {:?} differs", m.kind());
}

#[cfg(test)]
mod tests;
