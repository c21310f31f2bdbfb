//! The replication wire format: frames exchanged by primary, relays and standby.
//!
//! Where it sits: every byte a transport ([`crate::tcp`], [`crate::inproc`], later RDMA verbs)
//! receives goes through [`parse`] exactly once, on the reactor that owns the connection, and
//! comes out as a typed [`Frame`] that borrows the receive buffer. Everything after `parse`
//! trusts the type. The sending side builds the frame header with the `encode_*` functions or
//! a [`BatchEncoder`] into an inline [`HeaderBuf`]; the data buffers travel beside it, never
//! copied into it. The byte-by-byte layout is in `docs/replication-wire.md`.
//!
//! Rules kept everywhere: versioned from the first byte, little-endian, every frame starts
//! with a 16-byte envelope holding its total length and two CRC32C (envelope and body), every
//! reserved field must be zero, every length and sum is checked arithmetic, and each rejected
//! rule is its own [`WireError`] variant.

use arrayvec::ArrayVec;

/// Wire version this build speaks; byte 0 of every frame.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of the envelope that starts every frame.
pub const ENVELOPE_BYTES: usize = 16;
/// Most operations one batch frame (Ops / Forward / GapReply) may carry.
pub const OPS_PER_FRAME_MAX: usize = 32;
/// Bytes of one operation descriptor inside a batch.
pub const OP_DESC_BYTES: usize = 32;
/// Bytes of the batch header (generation, block size, op count).
pub const BATCH_HDR_BYTES: usize = 16;
/// Bytes of the GapReply prefix that comes before its batch header.
pub const GAP_REPLY_PREFIX_BYTES: usize = 16;
/// Largest header (everything but the data segments) any frame can have.
pub const HEADER_BYTES_MAX: usize =
    ENVELOPE_BYTES + GAP_REPLY_PREFIX_BYTES + BATCH_HDR_BYTES + OPS_PER_FRAME_MAX * OP_DESC_BYTES;
/// Most data bytes (sum over the ops) one frame may carry.
pub const FRAME_DATA_BYTES_MAX: usize = 1024 * 1024;
/// Largest frame, envelope included. A receiver never buffers more than this per frame.
pub const FRAME_BYTES_MAX: usize = HEADER_BYTES_MAX + FRAME_DATA_BYTES_MAX;
/// Longest volume name carried in a Hello.
pub const VOLUME_NAME_BYTES_MAX: usize = 64;
/// Longest opaque tag a restart point may carry.
pub const RESTART_TAG_BYTES_MAX: usize = 256;
/// Smallest and largest block size a volume may declare.
pub const BLOCK_SIZE_MIN_BYTES: u32 = 512;
/// See [`BLOCK_SIZE_MIN_BYTES`].
pub const BLOCK_SIZE_MAX_BYTES: u32 = 64 * 1024;

/// Body sizes of the fixed-size frames.
pub const HELLO_BODY_BYTES: usize = 112;
/// See [`HELLO_BODY_BYTES`].
pub const HELLO_REPLY_BODY_BYTES: usize = 32;
/// See [`HELLO_BODY_BYTES`].
pub const ACK_BODY_BYTES: usize = 32;
/// See [`HELLO_BODY_BYTES`].
pub const HEARTBEAT_BODY_BYTES: usize = 24;
/// See [`HELLO_BODY_BYTES`].
pub const SAFE_UP_TO_BODY_BYTES: usize = 16;
/// See [`HELLO_BODY_BYTES`].
pub const GAP_REQUEST_BODY_BYTES: usize = 24;
/// See [`HELLO_BODY_BYTES`].
pub const PRIMARY_LIVENESS_BODY_BYTES: usize = 24;
/// See [`HELLO_BODY_BYTES`].
pub const BASE_BODY_BYTES: usize = 16;
/// `primary_age_ms` of a [`PrimaryLiveness`] from a relay that never heard the primary.
pub const PRIMARY_AGE_NEVER: u64 = u64::MAX;

/// The envelope as it lies on the wire (all fields little-endian). Parsing reads the fields
/// with explicit `from_le_bytes`, never by casting, so this struct documents the layout and
/// pins its size.
#[repr(C)]
pub struct EnvelopeWire {
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// [`FrameKind`] as `u8`.
    pub kind: u8,
    /// Must be zero in version 1.
    pub flags: u16,
    /// Total bytes of the frame, envelope included.
    pub frame_len: u32,
    /// CRC32C of bytes `[16, frame_len)`.
    pub body_crc: u32,
    /// CRC32C of bytes `[0, 12)`.
    pub envelope_crc: u32,
}
const _: () = assert!(size_of::<EnvelopeWire>() == ENVELOPE_BYTES);

/// One operation descriptor of a batch as it lies on the wire.
#[repr(C)]
pub struct OpDescWire {
    /// [`OpKind`] as `u8`.
    pub kind: u8,
    /// Must be zero.
    pub flags: u8,
    /// Must be zero.
    pub rsv: u16,
    /// Bytes of data belonging to this op, taken in order from the frame's data region.
    pub data_len: u32,
    /// The op's LSN (never 0).
    pub lsn: u64,
    /// Write/WriteZeroes/Deallocate: offset in blocks. RestartPoint: epoch.
    pub arg0: u64,
    /// Write/WriteZeroes/Deallocate: number of blocks. RestartPoint: last LSN covered.
    pub arg1: u64,
}
const _: () = assert!(size_of::<OpDescWire>() == OP_DESC_BYTES);

/// Frame types. `#[repr(u8)]`: the value is byte 1 of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Connection opener: who I am, which volume, which generation, where to resume.
    Hello = 1,
    /// Answer to a Hello: accepted or refused with a reason.
    HelloReply = 2,
    /// Primary -> relay: a batch of replicated operations.
    Ops = 3,
    /// Relay -> primary (and standby -> relay): what is durable.
    Ack = 4,
    /// Liveness, either direction.
    Heartbeat = 5,
    /// Relay -> standby: a batch of operations forwarded from the journal.
    Forward = 6,
    /// Standby -> relay: everything up to an LSN is safe at the standby; relay may reclaim.
    SafeUpTo = 7,
    /// Standby -> relay: please send again this LSN range.
    GapRequest = 8,
    /// Relay -> standby: the operations of a requested range.
    GapReply = 9,
    /// Relay -> standby: when the relay last heard the volume's primary (failure detection,
    /// `docs/failover.md`).
    PrimaryLiveness = 10,
    /// Primary -> relay: the relay's history restarts at an LSN (it holds nothing between
    /// its journal's end and that LSN: resync, `docs/replication.md`).
    Base = 11,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::HelloReply,
            3 => Self::Ops,
            4 => Self::Ack,
            5 => Self::Heartbeat,
            6 => Self::Forward,
            7 => Self::SafeUpTo,
            8 => Self::GapRequest,
            9 => Self::GapReply,
            10 => Self::PrimaryLiveness,
            11 => Self::Base,
            _ => return None,
        })
    }
}

/// Role named in a Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The primary, sending a volume's writes.
    Primary = 1,
    /// A relay, forwarding what it journaled.
    Relay = 2,
    /// A standby, receiving forwarded writes.
    Standby = 3,
}

/// Why a Hello was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RefuseReason {
    /// The Hello's generation is older than the responder's (fencing after failover).
    StaleGeneration = 1,
    /// The responder does not serve that volume.
    UnknownVolume = 2,
    /// The responder does not speak the Hello's wire version.
    Version = 3,
    /// The role is not accepted on this endpoint (e.g. a standby connecting to a relay's primary port).
    Role = 4,
    /// The responder has no room for another connection.
    Busy = 5,
    /// The responder holds that volume but cannot take its writes now (a relay whose
    /// journal failed: it stays so until the relay is restarted and recovers it).
    Unavailable = 6,
}

impl RefuseReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::StaleGeneration,
            2 => Self::UnknownVolume,
            3 => Self::Version,
            4 => Self::Role,
            5 => Self::Busy,
            6 => Self::Unavailable,
            _ => return None,
        })
    }
}

/// Operation types inside a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// Data write.
    Write = 1,
    /// Zero a block range.
    WriteZeroes = 2,
    /// Deallocate (unmap) a block range.
    Deallocate = 3,
    /// Restart point closing an epoch.
    RestartPoint = 4,
    /// Block-sync marker: where a block-level sync of the volume begins or ends
    /// (`docs/replication.md`, "Block sync").
    Sync = 5,
}

/// Which end of a block sync an [`Op::Sync`] marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMark {
    /// The sync begins at this op's LSN. Every block written by an op with an LSN in
    /// `covers_from..lsn` is sent again (as an ordinary write, at a later LSN) or
    /// overwritten by a later op before the matching `End`, so a standby that lacks
    /// some of those LSNs may skip them and is consistent again at the first restart
    /// point after the `End`. `full`: every block of the volume is sent.
    Begin {
        /// First LSN whose written blocks the sync covers.
        covers_from: u64,
        /// A full copy (every block), not a delta.
        full: bool,
    },
    /// The sync that began at `begin_lsn` sent its last block before this op.
    End {
        /// LSN of the matching `Begin`.
        begin_lsn: u64,
    },
}

/// `arg1` of a sync marker: the phase in bits 0..8, flags above.
const SYNC_PHASE_BEGIN: u64 = 1;
const SYNC_PHASE_END: u64 = 2;
const SYNC_FLAG_FULL: u64 = 1 << 8;

impl SyncMark {
    /// `(arg0, arg1)` of the op descriptor.
    pub fn args(&self) -> (u64, u64) {
        match *self {
            SyncMark::Begin { covers_from, full } => {
                (covers_from, SYNC_PHASE_BEGIN | if full { SYNC_FLAG_FULL } else { 0 })
            }
            SyncMark::End { begin_lsn } => (begin_lsn, SYNC_PHASE_END),
        }
    }

    /// Parses the descriptor's arguments of the op at `lsn`.
    pub fn from_args(lsn: u64, arg0: u64, arg1: u64) -> Result<SyncMark, WireError> {
        let bad = |why: &'static str| WireError::BadSyncMark { lsn, arg0, arg1, why };
        let m = match (arg1 & 0xff, arg1 & !0xff) {
            (SYNC_PHASE_BEGIN, f) if f & !SYNC_FLAG_FULL == 0 => SyncMark::Begin {
                covers_from: arg0,
                full: f & SYNC_FLAG_FULL != 0,
            },
            (SYNC_PHASE_END, 0) => SyncMark::End { begin_lsn: arg0 },
            _ => return Err(bad("unknown phase or flags")),
        };
        let first = match m {
            SyncMark::Begin { covers_from, .. } => covers_from,
            SyncMark::End { begin_lsn } => begin_lsn,
        };
        if first == 0 || first >= lsn {
            return Err(bad("the LSN it names must be between 1 and the marker's own LSN"));
        }
        Ok(m)
    }
}

/// How much of a requested gap range a relay could send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GapStatus {
    /// The batch carries the range (or its next part: the standby asks again for the rest).
    Complete = 0,
    /// The relay holds only a part of the range; the batch carries what it holds.
    Partial = 1,
    /// The relay holds nothing of the range (already released or never received).
    NotHeld = 2,
}

/// Parsed Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Who is connecting.
    pub role: Role,
    /// Volume block size in bytes.
    pub block_size: u32,
    /// Volume identity.
    pub volume_id: [u8; 16],
    /// Volume name (UTF-8, at most [`VOLUME_NAME_BYTES_MAX`]).
    pub volume_name: &'a str,
    /// The sender's generation.
    pub generation: u64,
    /// The first LSN the sender will send (primary) or wants (standby).
    pub resume_lsn: u64,
    /// Largest frame the sender accepts.
    pub frame_bytes_max: u32,
    /// Receive credits the sender posts (0: stream transport, no credit limit).
    pub recv_credits: u32,
}

/// Parsed HelloReply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloReply {
    /// The session is open.
    Accepted {
        /// Highest wire version the responder speaks.
        version_max: u8,
        /// The responder's generation (equal to the Hello's).
        generation: u64,
        /// The first LSN the responder wants next (its durable LSN + 1).
        resume_lsn: u64,
        /// Largest frame the responder accepts.
        frame_bytes_max: u32,
        /// Receive credits the responder posts (0: no credit limit).
        recv_credits: u32,
    },
    /// The session is refused; the responder closes after sending this.
    Refused {
        /// Why.
        reason: RefuseReason,
        /// The responder's generation (lets a stale primary learn it was fenced).
        generation: u64,
        /// Highest wire version the responder speaks.
        version_max: u8,
    },
}

/// One replicated operation, borrowing its data from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Write `data` (exactly `num_blocks * block_size` bytes) at `offset_blocks`.
    Write {
        /// LSN.
        lsn: u64,
        /// First block.
        offset_blocks: u64,
        /// Block count (>= 1).
        num_blocks: u32,
        /// The data.
        data: &'a [u8],
    },
    /// Zero `num_blocks` blocks at `offset_blocks`.
    WriteZeroes {
        /// LSN.
        lsn: u64,
        /// First block.
        offset_blocks: u64,
        /// Block count (>= 1).
        num_blocks: u32,
    },
    /// Deallocate `num_blocks` blocks at `offset_blocks`.
    Deallocate {
        /// LSN.
        lsn: u64,
        /// First block.
        offset_blocks: u64,
        /// Block count (>= 1).
        num_blocks: u32,
    },
    /// Restart point `epoch`, covering every LSN up to `last_lsn` (< `lsn`).
    RestartPoint {
        /// LSN of the restart point itself.
        lsn: u64,
        /// Epoch number this point closes.
        epoch: u64,
        /// Last LSN the epoch covers.
        last_lsn: u64,
        /// Opaque application tag (may be empty).
        tag: &'a [u8],
    },
    /// Block-sync marker (no data).
    Sync {
        /// LSN of the marker.
        lsn: u64,
        /// Which end.
        mark: SyncMark,
    },
}

impl Op<'_> {
    /// The op's LSN.
    pub fn lsn(&self) -> u64 {
        match *self {
            Op::Write { lsn, .. }
            | Op::WriteZeroes { lsn, .. }
            | Op::Deallocate { lsn, .. }
            | Op::RestartPoint { lsn, .. }
            | Op::Sync { lsn, .. } => lsn,
        }
    }
}

/// A parsed batch of operations (Ops, Forward, GapReply), LSNs strictly increasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    /// Generation of the primary that produced the ops.
    pub generation: u64,
    /// Volume block size.
    pub block_size: u32,
    /// The operations, in LSN order.
    pub ops: ArrayVec<Op<'a>, OPS_PER_FRAME_MAX>,
    /// The frame's body as received, up to the data (batch header and descriptors).
    pub wire_header: &'a [u8],
    /// The frame's data bytes as received (every op's data, in order).
    pub wire_data: &'a [u8],
    /// CRC32C of the whole body as received (verified by [`parse`]; 0 from [`parse_body`]
    /// callers that did not compute it).
    pub body_crc: u32,
}

impl Batch<'_> {
    /// LSN of the first op, or `None` for an empty batch (only a GapReply may be empty).
    pub fn lsn_first(&self) -> Option<u64> {
        self.ops.first().map(Op::lsn)
    }
    /// LSN of the last op.
    pub fn lsn_last(&self) -> Option<u64> {
        self.ops.last().map(Op::lsn)
    }
}

/// Parsed acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Every LSN up to and including this is durable at the sender (contiguous; 0 = none).
    pub durable_lsn: u64,
    /// First LSN of the frame this ack answers (0 when it answers no particular frame).
    pub frame_lsn_first: u64,
    /// Last LSN of the frame this ack answers.
    pub frame_lsn_last: u64,
    /// Sender's generation.
    pub generation: u64,
}

/// Parsed heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Echoed back in the reply.
    pub nonce: u64,
    /// Sender's clock (ns), echoed back, so the requester measures round trip.
    pub time_ns: u64,
    /// True on the echo.
    pub is_reply: bool,
}

/// Parsed relay report on the primary's liveness (relay -> standby, on the link of one
/// volume: the volume is the one named in that link's Hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryLiveness {
    /// Milliseconds since the relay last received anything from the volume's primary, as
    /// measured by the relay when it sent this; [`PRIMARY_AGE_NEVER`] if it never did.
    pub primary_age_ms: u64,
    /// Highest LSN the relay holds from the primary (journal appended).
    pub primary_lsn: u64,
    /// The relay has a primary connection for the volume right now.
    pub connected: bool,
    /// What the relay does with what it holds for this standby (forward policies: the
    /// standby does not fetch around a forwarder that holds ops back by policy).
    pub forward: ForwardState,
}

/// A relay's forwarding state as it reports it in [`PrimaryLiveness`] (byte 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardState {
    /// Forwards nothing by itself (`--backup`): answers gap requests only.
    #[default]
    Backup = 0,
    /// Forwarder, delivering what is durable as its policy lets it (nothing held back).
    Forwarding = 1,
    /// Forwarder holding durable ops back by policy right now (closed window, interval
    /// not due, bandwidth bucket empty).
    Holding = 2,
}

impl ForwardState {
    /// The state for a wire byte; `None` for values this version does not know.
    pub fn from_u8(v: u8) -> Option<ForwardState> {
        match v {
            0 => Some(ForwardState::Backup),
            1 => Some(ForwardState::Forwarding),
            2 => Some(ForwardState::Holding),
            _ => None,
        }
    }
}

/// Parsed history base (primary -> relay): the primary no longer holds the LSNs between
/// the relay's journal end and `lsn`; the relay records that it holds nothing below `lsn`
/// after its journal end, and the primary sends ops from `lsn` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// First LSN of the relay's new history (>= 2: at least LSN 1 is skipped).
    pub lsn: u64,
    /// The primary's generation.
    pub generation: u64,
}

/// Parsed standby confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafeUpTo {
    /// Every LSN up to and including this is safe at the standby.
    pub lsn: u64,
    /// Standby's generation.
    pub generation: u64,
}

/// Parsed gap fetch request: send again LSNs `lsn_first..=lsn_last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapRequest {
    /// Matches the reply to the request.
    pub request_id: u64,
    /// First LSN wanted.
    pub lsn_first: u64,
    /// Last LSN wanted (>= `lsn_first`).
    pub lsn_last: u64,
}

/// Parsed gap reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapReply<'a> {
    /// The request this answers.
    pub request_id: u64,
    /// How much of the range is carried.
    pub status: GapStatus,
    /// The operations (may be empty when `status` is `NotHeld`).
    pub batch: Batch<'a>,
}

/// A frame, parsed and checked, borrowing the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`FrameKind::Hello`].
    Hello(Hello<'a>),
    /// See [`FrameKind::HelloReply`].
    HelloReply(HelloReply),
    /// See [`FrameKind::Ops`].
    Ops(Batch<'a>),
    /// See [`FrameKind::Ack`].
    Ack(Ack),
    /// See [`FrameKind::Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`FrameKind::Forward`].
    Forward(Batch<'a>),
    /// See [`FrameKind::SafeUpTo`].
    SafeUpTo(SafeUpTo),
    /// See [`FrameKind::GapRequest`].
    GapRequest(GapRequest),
    /// See [`FrameKind::GapReply`].
    GapReply(GapReply<'a>),
    /// See [`FrameKind::PrimaryLiveness`].
    PrimaryLiveness(PrimaryLiveness),
    /// See [`FrameKind::Base`].
    Base(Base),
}

impl Frame<'_> {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::HelloReply(_) => FrameKind::HelloReply,
            Frame::Ops(_) => FrameKind::Ops,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Heartbeat(_) => FrameKind::Heartbeat,
            Frame::Forward(_) => FrameKind::Forward,
            Frame::SafeUpTo(_) => FrameKind::SafeUpTo,
            Frame::GapRequest(_) => FrameKind::GapRequest,
            Frame::GapReply(_) => FrameKind::GapReply,
            Frame::PrimaryLiveness(_) => FrameKind::PrimaryLiveness,
            Frame::Base(_) => FrameKind::Base,
        }
    }
}

/// Every rule a frame can break, each its own variant naming the value received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than an envelope.
    #[error("frame of {len} bytes is shorter than the {ENVELOPE_BYTES}-byte envelope")]
    ShorterThanEnvelope {
        /// Bytes given.
        len: usize,
    },
    /// Byte 0 names a version this build does not speak.
    #[error("wire version {got} not supported (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// Byte 0 received.
        got: u8,
    },
    /// The envelope's own CRC does not match.
    #[error("envelope CRC32C mismatch: frame says {expected:#010x}, computed {computed:#010x}")]
    EnvelopeCrcMismatch {
        /// Value in the frame.
        expected: u32,
        /// Value computed.
        computed: u32,
    },
    /// Envelope flags must be zero in version 1.
    #[error("envelope flags {flags:#06x} not zero")]
    EnvelopeFlags {
        /// Value received.
        flags: u16,
    },
    /// Byte 1 names no frame kind.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// Value received.
        kind: u8,
    },
    /// Declared frame length below the envelope size.
    #[error("declared frame length {len} below the envelope size")]
    FrameTooShort {
        /// Value received.
        len: u32,
    },
    /// Declared frame length above [`FRAME_BYTES_MAX`] (or the negotiated maximum).
    #[error("declared frame length {len} above the maximum {max}")]
    FrameTooLarge {
        /// Value received.
        len: u32,
        /// Limit.
        max: usize,
    },
    /// The slice given to `parse` is not exactly the declared frame length.
    #[error("frame declares {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// Declared in the envelope.
        declared: u32,
        /// Bytes given.
        actual: usize,
    },
    /// The body CRC does not match: header or data corrupted.
    #[error("body CRC32C mismatch: frame says {expected:#010x}, computed {computed:#010x}")]
    BodyCrcMismatch {
        /// Value in the frame.
        expected: u32,
        /// Value computed.
        computed: u32,
    },
    /// A fixed-size body has the wrong length.
    #[error("{kind:?} body is {got} bytes, expected {expected}")]
    BodyLength {
        /// Frame kind.
        kind: FrameKind,
        /// Expected body bytes.
        expected: usize,
        /// Received body bytes.
        got: usize,
    },
    /// The body ends before a field it must hold.
    #[error("{kind:?} body truncated: needs {need} bytes, has {have}")]
    BodyTruncated {
        /// Frame kind.
        kind: FrameKind,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A reserved field is not zero.
    #[error("reserved field {field} is {value:#x}, must be zero")]
    ReservedNonZero {
        /// Field name.
        field: &'static str,
        /// Value received.
        value: u64,
    },
    /// Unknown role in a Hello.
    #[error("unknown role {role}")]
    UnknownRole {
        /// Value received.
        role: u8,
    },
    /// Volume name length above [`VOLUME_NAME_BYTES_MAX`].
    #[error("volume name length {len} above {VOLUME_NAME_BYTES_MAX}")]
    VolumeNameTooLong {
        /// Value received.
        len: u8,
    },
    /// Volume name is empty.
    #[error("volume name is empty")]
    VolumeNameEmpty,
    /// Volume name bytes are not UTF-8.
    #[error("volume name is not UTF-8")]
    VolumeNameNotUtf8,
    /// Bytes after the volume name are not zero.
    #[error("volume name padding not zero")]
    VolumeNamePadding,
    /// Block size not a power of two in [`BLOCK_SIZE_MIN_BYTES`]..=[`BLOCK_SIZE_MAX_BYTES`].
    #[error("block size {block_size} not a power of two in 512..=65536")]
    BadBlockSize {
        /// Value received.
        block_size: u32,
    },
    /// HelloReply status byte unknown.
    #[error("unknown hello reply status {status}")]
    UnknownReplyStatus {
        /// Value received.
        status: u8,
    },
    /// HelloReply refuse reason byte unknown, or a reason with an acceptance.
    #[error("hello reply reason {reason} invalid for status {status}")]
    BadRefuseReason {
        /// Status received.
        status: u8,
        /// Reason received.
        reason: u8,
    },
    /// Batch carries more ops than [`OPS_PER_FRAME_MAX`].
    #[error("batch carries {count} ops, at most {OPS_PER_FRAME_MAX}")]
    TooManyOps {
        /// Value received.
        count: u16,
    },
    /// An Ops or Forward batch carries no op.
    #[error("{kind:?} batch carries no op")]
    EmptyBatch {
        /// Frame kind.
        kind: FrameKind,
    },
    /// Op kind byte unknown.
    #[error("unknown op kind {kind} at op {index}")]
    UnknownOpKind {
        /// Index in the batch.
        index: usize,
        /// Value received.
        kind: u8,
    },
    /// LSN 0 is reserved for "nothing".
    #[error("op {index} has LSN 0")]
    LsnZero {
        /// Index in the batch.
        index: usize,
    },
    /// LSNs in a batch must strictly increase.
    #[error("op LSN {lsn} does not follow {prev}")]
    LsnNotIncreasing {
        /// Previous op's LSN.
        prev: u64,
        /// This op's LSN.
        lsn: u64,
    },
    /// A block op with zero blocks.
    #[error("op at LSN {lsn} covers zero blocks")]
    ZeroBlocks {
        /// The op's LSN.
        lsn: u64,
    },
    /// Block count does not fit in 32 bits.
    #[error("op at LSN {lsn} covers {num_blocks} blocks, above u32")]
    NumBlocksTooLarge {
        /// The op's LSN.
        lsn: u64,
        /// Value received.
        num_blocks: u64,
    },
    /// `offset_blocks + num_blocks` overflows.
    #[error("op at LSN {lsn}: offset {offset_blocks} + {num_blocks} blocks overflows")]
    BlockRangeOverflow {
        /// The op's LSN.
        lsn: u64,
        /// Offset received.
        offset_blocks: u64,
        /// Count received.
        num_blocks: u64,
    },
    /// An op's data length does not match what its kind requires.
    #[error("op at LSN {lsn} carries {got} data bytes, expected {expected}")]
    OpDataLength {
        /// The op's LSN.
        lsn: u64,
        /// Bytes required.
        expected: u64,
        /// Bytes declared.
        got: u32,
    },
    /// Restart point tag above [`RESTART_TAG_BYTES_MAX`].
    #[error("restart point at LSN {lsn} tag of {len} bytes above {RESTART_TAG_BYTES_MAX}")]
    TagTooLong {
        /// The op's LSN.
        lsn: u64,
        /// Value received.
        len: u32,
    },
    /// A restart point must cover only LSNs before its own.
    #[error("restart point at LSN {lsn} claims to cover up to LSN {last_lsn}")]
    RestartCoversFuture {
        /// The op's LSN.
        lsn: u64,
        /// Value received.
        last_lsn: u64,
    },
    /// A block-sync marker whose arguments make no sense.
    #[error("sync marker at LSN {lsn} (arg0 {arg0}, arg1 {arg1:#x}): {why}")]
    BadSyncMark {
        /// The op's LSN.
        lsn: u64,
        /// First argument received.
        arg0: u64,
        /// Second argument received.
        arg1: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// Sum of op data lengths differs from the data bytes present.
    #[error("ops declare {declared} data bytes, frame carries {actual}")]
    DataLengthMismatch {
        /// Sum of the descriptors' data lengths.
        declared: u64,
        /// Bytes after the descriptors.
        actual: usize,
    },
    /// Gap request with `lsn_first > lsn_last` or LSN 0.
    #[error("gap range {lsn_first}..={lsn_last} invalid")]
    BadGapRange {
        /// Value received.
        lsn_first: u64,
        /// Value received.
        lsn_last: u64,
    },
    /// Gap reply status byte unknown.
    #[error("unknown gap reply status {status}")]
    UnknownGapStatus {
        /// Value received.
        status: u8,
    },
    /// Heartbeat reply flag not 0 or 1.
    #[error("heartbeat reply flag {value} not 0 or 1")]
    BadHeartbeatFlag {
        /// Value received.
        value: u8,
    },
    /// PrimaryLiveness connected flag not 0 or 1.
    #[error("primary liveness connected flag {value} not 0 or 1")]
    BadLivenessFlag {
        /// Value received.
        value: u8,
    },
    /// PrimaryLiveness forward state not 0, 1 or 2.
    #[error("primary liveness forward state {value} not 0 (backup), 1 (forwarding) or 2 (holding)")]
    BadForwardState {
        /// Value received.
        value: u8,
    },
    /// Base LSN below 2 (a base of 1 skips nothing).
    #[error("base LSN {lsn} must be at least 2")]
    BadBaseLsn {
        /// Value received.
        lsn: u64,
    },
}

/// What the envelope says, once checked: enough to reassemble a frame from a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Frame kind.
    pub kind: FrameKind,
    /// Total frame bytes, envelope included, in `ENVELOPE_BYTES..=FRAME_BYTES_MAX`.
    pub frame_len: usize,
    /// CRC32C of the body.
    pub body_crc: u32,
}

fn le_u16(b: &[u8; ENVELOPE_BYTES], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le_u32_env(b: &[u8; ENVELOPE_BYTES], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Checks the envelope at the start of `buf`. `Ok(None)`: fewer than [`ENVELOPE_BYTES`] bytes,
/// wait for more. A stream receiver calls this to learn how many bytes the frame needs before
/// it calls [`parse`]. Checks, in this order: version (byte 0, so a peer of another version
/// gets `UnsupportedVersion` and nothing else), envelope CRC, flags, kind, length bounds.
pub fn peek_envelope(buf: &[u8]) -> Result<Option<Envelope>, WireError> {
    let Some(first) = buf.first_chunk::<ENVELOPE_BYTES>() else {
        if let Some(&v) = buf.first() {
            if v != WIRE_VERSION {
                return Err(WireError::UnsupportedVersion { got: v });
            }
        }
        return Ok(None);
    };
    if first[0] != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { got: first[0] });
    }
    let expected = le_u32_env(first, 12);
    let computed = crc32c::crc32c(&first[..12]);
    if expected != computed {
        return Err(WireError::EnvelopeCrcMismatch { expected, computed });
    }
    let flags = le_u16(first, 2);
    if flags != 0 {
        return Err(WireError::EnvelopeFlags { flags });
    }
    let kind = FrameKind::from_u8(first[1]).ok_or(WireError::UnknownKind { kind: first[1] })?;
    let len = le_u32_env(first, 4);
    if (len as usize) < ENVELOPE_BYTES {
        return Err(WireError::FrameTooShort { len });
    }
    if len as usize > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(Some(Envelope {
        kind,
        frame_len: len as usize,
        body_crc: le_u32_env(first, 8),
    }))
}

/// Little-endian cursor over a frame body; every read is bounds-checked.
struct Reader<'a> {
    kind: FrameKind,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(WireError::BodyTruncated {
                kind: self.kind,
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            }),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

fn reserved(field: &'static str, value: u64) -> Result<(), WireError> {
    if value != 0 {
        return Err(WireError::ReservedNonZero { field, value });
    }
    Ok(())
}

fn fixed_len(kind: FrameKind, body: &[u8], expected: usize) -> Result<(), WireError> {
    if body.len() != expected {
        return Err(WireError::BodyLength {
            kind,
            expected,
            got: body.len(),
        });
    }
    Ok(())
}

fn check_block_size(block_size: u32) -> Result<(), WireError> {
    if !block_size.is_power_of_two() || !(BLOCK_SIZE_MIN_BYTES..=BLOCK_SIZE_MAX_BYTES).contains(&block_size) {
        return Err(WireError::BadBlockSize { block_size });
    }
    Ok(())
}

/// Turns exactly one frame's bytes into a typed [`Frame`] borrowing `buf`. Checks the
/// envelope, that `buf` is exactly the declared length, the body CRC, and every field.
/// Pure function: callable from any thread; never panics on any input.
pub fn parse(buf: &[u8]) -> Result<Frame<'_>, WireError> {
    let env = peek_envelope(buf)?.ok_or(WireError::ShorterThanEnvelope { len: buf.len() })?;
    if env.frame_len != buf.len() {
        return Err(WireError::LengthMismatch {
            declared: env.frame_len as u32,
            actual: buf.len(),
        });
    }
    let body = &buf[ENVELOPE_BYTES..];
    let computed = crc32c::crc32c(body);
    if computed != env.body_crc {
        return Err(WireError::BodyCrcMismatch {
            expected: env.body_crc,
            computed,
        });
    }
    let mut f = parse_body(env.kind, body)?;
    if let Frame::Ops(b) | Frame::Forward(b) | Frame::GapReply(GapReply { batch: b, .. }) = &mut f {
        b.body_crc = computed;
    }
    Ok(f)
}

fn parse_body(kind: FrameKind, body: &[u8]) -> Result<Frame<'_>, WireError> {
    let mut r = Reader {
        kind,
        buf: body,
        pos: 0,
    };
    match kind {
        FrameKind::Hello => {
            fixed_len(kind, body, HELLO_BODY_BYTES)?;
            let role = r.u8()?;
            let role = match role {
                1 => Role::Primary,
                2 => Role::Relay,
                3 => Role::Standby,
                _ => return Err(WireError::UnknownRole { role }),
            };
            let name_len = r.u8()?;
            reserved("hello.rsv", r.u16()?.into())?;
            let block_size = r.u32()?;
            check_block_size(block_size)?;
            let volume_id = r.array::<16>()?;
            let generation = r.u64()?;
            let resume_lsn = r.u64()?;
            let frame_bytes_max = r.u32()?;
            let recv_credits = r.u32()?;
            let name_field = r.take(VOLUME_NAME_BYTES_MAX)?;
            if name_len as usize > VOLUME_NAME_BYTES_MAX {
                return Err(WireError::VolumeNameTooLong { len: name_len });
            }
            if name_len == 0 {
                return Err(WireError::VolumeNameEmpty);
            }
            let (name, pad) = name_field.split_at(name_len as usize);
            if pad.iter().any(|&b| b != 0) {
                return Err(WireError::VolumeNamePadding);
            }
            let volume_name = core::str::from_utf8(name).map_err(|_| WireError::VolumeNameNotUtf8)?;
            Ok(Frame::Hello(Hello {
                role,
                block_size,
                volume_id,
                volume_name,
                generation,
                resume_lsn,
                frame_bytes_max,
                recv_credits,
            }))
        }
        FrameKind::HelloReply => {
            fixed_len(kind, body, HELLO_REPLY_BODY_BYTES)?;
            let status = r.u8()?;
            let reason = r.u8()?;
            let version_max = r.u16()?;
            let version_max = u8::try_from(version_max).map_err(|_| WireError::ReservedNonZero {
                field: "hello_reply.version_max.high",
                value: u64::from(version_max >> 8),
            })?;
            let frame_bytes_max = r.u32()?;
            let generation = r.u64()?;
            let resume_lsn = r.u64()?;
            let recv_credits = r.u32()?;
            reserved("hello_reply.rsv", r.u32()?.into())?;
            match status {
                0 => {
                    if reason != 0 {
                        return Err(WireError::BadRefuseReason { status, reason });
                    }
                    Ok(Frame::HelloReply(HelloReply::Accepted {
                        version_max,
                        generation,
                        resume_lsn,
                        frame_bytes_max,
                        recv_credits,
                    }))
                }
                1 => {
                    let reason = RefuseReason::from_u8(reason).ok_or(WireError::BadRefuseReason { status, reason })?;
                    // A refusal carries no session parameters.
                    reserved("hello_reply.frame_bytes_max", frame_bytes_max.into())?;
                    reserved("hello_reply.resume_lsn", resume_lsn)?;
                    reserved("hello_reply.recv_credits", recv_credits.into())?;
                    Ok(Frame::HelloReply(HelloReply::Refused {
                        reason,
                        generation,
                        version_max,
                    }))
                }
                _ => Err(WireError::UnknownReplyStatus { status }),
            }
        }
        FrameKind::Ops => Ok(Frame::Ops(parse_batch(kind, &mut r)?)),
        FrameKind::Forward => Ok(Frame::Forward(parse_batch(kind, &mut r)?)),
        FrameKind::GapReply => {
            let request_id = r.u64()?;
            let status = r.u8()?;
            let status = match status {
                0 => GapStatus::Complete,
                1 => GapStatus::Partial,
                2 => GapStatus::NotHeld,
                _ => return Err(WireError::UnknownGapStatus { status }),
            };
            let rsv = r.array::<7>()?;
            let mut rsv8 = [0u8; 8];
            rsv8[..7].copy_from_slice(&rsv);
            reserved("gap_reply.rsv", u64::from_le_bytes(rsv8))?;
            let batch = parse_batch(kind, &mut r)?;
            Ok(Frame::GapReply(GapReply {
                request_id,
                status,
                batch,
            }))
        }
        FrameKind::Ack => {
            fixed_len(kind, body, ACK_BODY_BYTES)?;
            Ok(Frame::Ack(Ack {
                durable_lsn: r.u64()?,
                frame_lsn_first: r.u64()?,
                frame_lsn_last: r.u64()?,
                generation: r.u64()?,
            }))
        }
        FrameKind::Heartbeat => {
            fixed_len(kind, body, HEARTBEAT_BODY_BYTES)?;
            let nonce = r.u64()?;
            let time_ns = r.u64()?;
            let flag = r.u8()?;
            let is_reply = match flag {
                0 => false,
                1 => true,
                value => return Err(WireError::BadHeartbeatFlag { value }),
            };
            let rsv = r.array::<7>()?;
            let mut rsv8 = [0u8; 8];
            rsv8[..7].copy_from_slice(&rsv);
            reserved("heartbeat.rsv", u64::from_le_bytes(rsv8))?;
            Ok(Frame::Heartbeat(Heartbeat {
                nonce,
                time_ns,
                is_reply,
            }))
        }
        FrameKind::PrimaryLiveness => {
            fixed_len(kind, body, PRIMARY_LIVENESS_BODY_BYTES)?;
            let primary_age_ms = r.u64()?;
            let primary_lsn = r.u64()?;
            let connected = match r.u8()? {
                0 => false,
                1 => true,
                value => return Err(WireError::BadLivenessFlag { value }),
            };
            let fwd = r.u8()?;
            let forward = ForwardState::from_u8(fwd).ok_or(WireError::BadForwardState { value: fwd })?;
            let rsv = r.array::<6>()?;
            let mut rsv8 = [0u8; 8];
            rsv8[..6].copy_from_slice(&rsv);
            reserved("primary_liveness.rsv", u64::from_le_bytes(rsv8))?;
            Ok(Frame::PrimaryLiveness(PrimaryLiveness {
                primary_age_ms,
                primary_lsn,
                connected,
                forward,
            }))
        }
        FrameKind::Base => {
            fixed_len(kind, body, BASE_BODY_BYTES)?;
            let lsn = r.u64()?;
            if lsn < 2 {
                return Err(WireError::BadBaseLsn { lsn });
            }
            Ok(Frame::Base(Base {
                lsn,
                generation: r.u64()?,
            }))
        }
        FrameKind::SafeUpTo => {
            fixed_len(kind, body, SAFE_UP_TO_BODY_BYTES)?;
            Ok(Frame::SafeUpTo(SafeUpTo {
                lsn: r.u64()?,
                generation: r.u64()?,
            }))
        }
        FrameKind::GapRequest => {
            fixed_len(kind, body, GAP_REQUEST_BODY_BYTES)?;
            let request_id = r.u64()?;
            let lsn_first = r.u64()?;
            let lsn_last = r.u64()?;
            if lsn_first == 0 || lsn_first > lsn_last {
                return Err(WireError::BadGapRange { lsn_first, lsn_last });
            }
            Ok(Frame::GapRequest(GapRequest {
                request_id,
                lsn_first,
                lsn_last,
            }))
        }
    }
}

/// A checked op descriptor before its data is attached.
struct Desc {
    kind: OpKind,
    data_len: u32,
    lsn: u64,
    arg0: u64,
    arg1: u64,
}

fn parse_batch<'a>(kind: FrameKind, r: &mut Reader<'a>) -> Result<Batch<'a>, WireError> {
    let generation = r.u64()?;
    let block_size = r.u32()?;
    check_block_size(block_size)?;
    let count = r.u16()?;
    reserved("batch.rsv", r.u16()?.into())?;
    if count as usize > OPS_PER_FRAME_MAX {
        return Err(WireError::TooManyOps { count });
    }
    if count == 0 && kind != FrameKind::GapReply {
        return Err(WireError::EmptyBatch { kind });
    }
    let mut descs: ArrayVec<Desc, OPS_PER_FRAME_MAX> = ArrayVec::new();
    let mut data_total: u64 = 0;
    let mut prev_lsn: u64 = 0;
    for index in 0..count as usize {
        let op_kind = r.u8()?;
        let op_kind = match op_kind {
            1 => OpKind::Write,
            2 => OpKind::WriteZeroes,
            3 => OpKind::Deallocate,
            4 => OpKind::RestartPoint,
            5 => OpKind::Sync,
            _ => return Err(WireError::UnknownOpKind { index, kind: op_kind }),
        };
        reserved("op.flags", r.u8()?.into())?;
        reserved("op.rsv", r.u16()?.into())?;
        let data_len = r.u32()?;
        let lsn = r.u64()?;
        let arg0 = r.u64()?;
        let arg1 = r.u64()?;
        if lsn == 0 {
            return Err(WireError::LsnZero { index });
        }
        if index > 0 && lsn <= prev_lsn {
            return Err(WireError::LsnNotIncreasing { prev: prev_lsn, lsn });
        }
        prev_lsn = lsn;
        match op_kind {
            OpKind::Write | OpKind::WriteZeroes | OpKind::Deallocate => {
                if arg1 == 0 {
                    return Err(WireError::ZeroBlocks { lsn });
                }
                if arg1 > u64::from(u32::MAX) {
                    return Err(WireError::NumBlocksTooLarge { lsn, num_blocks: arg1 });
                }
                if arg0.checked_add(arg1).is_none() {
                    return Err(WireError::BlockRangeOverflow {
                        lsn,
                        offset_blocks: arg0,
                        num_blocks: arg1,
                    });
                }
                let expected = if op_kind == OpKind::Write {
                    // Cannot overflow: both factors fit in 32 bits.
                    arg1 * u64::from(block_size)
                } else {
                    0
                };
                if u64::from(data_len) != expected {
                    return Err(WireError::OpDataLength {
                        lsn,
                        expected,
                        got: data_len,
                    });
                }
            }
            OpKind::RestartPoint => {
                if data_len as usize > RESTART_TAG_BYTES_MAX {
                    return Err(WireError::TagTooLong { lsn, len: data_len });
                }
                if arg1 >= lsn {
                    return Err(WireError::RestartCoversFuture { lsn, last_lsn: arg1 });
                }
            }
            OpKind::Sync => {
                if data_len != 0 {
                    return Err(WireError::OpDataLength {
                        lsn,
                        expected: 0,
                        got: data_len,
                    });
                }
                SyncMark::from_args(lsn, arg0, arg1)?;
            }
        }
        data_total = data_total
            .checked_add(data_len.into())
            .ok_or(WireError::DataLengthMismatch {
                declared: u64::MAX,
                actual: 0,
            })?;
        descs.push(Desc {
            kind: op_kind,
            data_len,
            lsn,
            arg0,
            arg1,
        });
    }
    let data = r.rest();
    if data_total != data.len() as u64 {
        return Err(WireError::DataLengthMismatch {
            declared: data_total,
            actual: data.len(),
        });
    }
    let mut ops = ArrayVec::new();
    let mut pos = 0usize;
    for d in descs {
        // In bounds: the data lengths sum to exactly data.len() (checked above).
        let end = pos + d.data_len as usize;
        let bytes = &data[pos..end];
        pos = end;
        let op = match d.kind {
            OpKind::Write => Op::Write {
                lsn: d.lsn,
                offset_blocks: d.arg0,
                num_blocks: d.arg1 as u32,
                data: bytes,
            },
            OpKind::WriteZeroes => Op::WriteZeroes {
                lsn: d.lsn,
                offset_blocks: d.arg0,
                num_blocks: d.arg1 as u32,
            },
            OpKind::Deallocate => Op::Deallocate {
                lsn: d.lsn,
                offset_blocks: d.arg0,
                num_blocks: d.arg1 as u32,
            },
            OpKind::RestartPoint => Op::RestartPoint {
                lsn: d.lsn,
                epoch: d.arg0,
                last_lsn: d.arg1,
                tag: bytes,
            },
            OpKind::Sync => Op::Sync {
                lsn: d.lsn,
                // Checked by the descriptor pass above.
                mark: SyncMark::from_args(d.lsn, d.arg0, d.arg1)?,
            },
        };
        ops.push(op);
    }
    Ok(Batch {
        generation,
        block_size,
        ops,
        wire_header: &r.buf[..r.buf.len() - data.len()],
        wire_data: data,
        body_crc: 0,
    })
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// A frame's header bytes (envelope, fixed body or batch header and descriptors), built inline
/// so sending a frame allocates nothing. The frame's data segments follow it on the wire.
#[derive(Clone)]
pub struct HeaderBuf {
    bytes: [u8; HEADER_BYTES_MAX],
    len: usize,
}

impl HeaderBuf {
    fn new() -> Self {
        Self {
            bytes: [0; HEADER_BYTES_MAX],
            len: ENVELOPE_BYTES,
        }
    }
    /// The encoded header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    /// Total frame length (header + data) written in the envelope.
    pub fn frame_len(&self) -> usize {
        u32::from_le_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]]) as usize
    }
    fn put(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
    /// Writes the envelope: kind, length, body CRC over header body + `data`, envelope CRC.
    fn seal(&mut self, kind: FrameKind, data: &[&[u8]], data_len: usize) {
        let mut crc = crc32c::crc32c(&self.bytes[ENVELOPE_BYTES..self.len]);
        for d in data {
            crc = crc32c::crc32c_append(crc, d);
        }
        self.seal_with_crc(kind, data_len, crc);
    }

    /// `seal` with the body CRC already known.
    fn seal_with_crc(&mut self, kind: FrameKind, data_len: usize, crc: u32) {
        let frame_len = self.len + data_len;
        self.bytes[0] = WIRE_VERSION;
        self.bytes[1] = kind as u8;
        self.bytes[2..4].copy_from_slice(&0u16.to_le_bytes());
        self.bytes[4..8].copy_from_slice(&(frame_len as u32).to_le_bytes());
        self.bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        let env_crc = crc32c::crc32c(&self.bytes[..12]);
        self.bytes[12..16].copy_from_slice(&env_crc.to_le_bytes());
    }
}

impl core::fmt::Debug for HeaderBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeaderBuf").field("len", &self.len).finish()
    }
}

/// Why an encoder refused to build a frame (a bug in the caller, reported instead of sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A sync marker's arguments are not a valid [`SyncMark`].
    #[error("sync marker at LSN {lsn} has invalid arguments")]
    BadSyncMark {
        /// The op's LSN.
        lsn: u64,
    },
    /// More than [`OPS_PER_FRAME_MAX`] ops.
    #[error("batch full: at most {OPS_PER_FRAME_MAX} ops")]
    BatchFull,
    /// Data bytes above [`FRAME_DATA_BYTES_MAX`].
    #[error("batch data would be {bytes} bytes, above {FRAME_DATA_BYTES_MAX}")]
    DataTooLarge {
        /// Bytes the batch would carry.
        bytes: usize,
    },
    /// The data slices given to `finish` do not add up to the ops' declared data.
    #[error("ops declare {declared} data bytes, {given} given")]
    DataLengthMismatch {
        /// Sum of the ops' data lengths.
        declared: usize,
        /// Bytes given.
        given: usize,
    },
    /// LSN not above the previous op's, or 0.
    #[error("op LSN {lsn} does not follow {prev}")]
    LsnOrder {
        /// Previous LSN.
        prev: u64,
        /// Offending LSN.
        lsn: u64,
    },
    /// Volume name empty, too long, or a Tag too long.
    #[error("field {field} has invalid length {len}")]
    FieldLength {
        /// Field name.
        field: &'static str,
        /// Length given.
        len: usize,
    },
    /// An Ops/Forward batch with no op.
    #[error("empty batch")]
    EmptyBatch,
}

fn control(kind: FrameKind, body: &[u8]) -> HeaderBuf {
    let mut h = HeaderBuf::new();
    h.put(body);
    h.seal(kind, &[], 0);
    h
}

/// Encodes a Hello.
pub fn encode_hello(hello: &Hello<'_>) -> Result<HeaderBuf, EncodeError> {
    let name = hello.volume_name.as_bytes();
    if name.is_empty() || name.len() > VOLUME_NAME_BYTES_MAX {
        return Err(EncodeError::FieldLength {
            field: "volume_name",
            len: name.len(),
        });
    }
    let mut b = [0u8; HELLO_BODY_BYTES];
    b[0] = hello.role as u8;
    b[1] = name.len() as u8;
    b[4..8].copy_from_slice(&hello.block_size.to_le_bytes());
    b[8..24].copy_from_slice(&hello.volume_id);
    b[24..32].copy_from_slice(&hello.generation.to_le_bytes());
    b[32..40].copy_from_slice(&hello.resume_lsn.to_le_bytes());
    b[40..44].copy_from_slice(&hello.frame_bytes_max.to_le_bytes());
    b[44..48].copy_from_slice(&hello.recv_credits.to_le_bytes());
    b[48..48 + name.len()].copy_from_slice(name);
    Ok(control(FrameKind::Hello, &b))
}

/// Encodes a HelloReply.
pub fn encode_hello_reply(reply: &HelloReply) -> HeaderBuf {
    let mut b = [0u8; HELLO_REPLY_BODY_BYTES];
    match *reply {
        HelloReply::Accepted {
            version_max,
            generation,
            resume_lsn,
            frame_bytes_max,
            recv_credits,
        } => {
            b[2..4].copy_from_slice(&u16::from(version_max).to_le_bytes());
            b[4..8].copy_from_slice(&frame_bytes_max.to_le_bytes());
            b[8..16].copy_from_slice(&generation.to_le_bytes());
            b[16..24].copy_from_slice(&resume_lsn.to_le_bytes());
            b[24..28].copy_from_slice(&recv_credits.to_le_bytes());
        }
        HelloReply::Refused {
            reason,
            generation,
            version_max,
        } => {
            b[0] = 1;
            b[1] = reason as u8;
            b[2..4].copy_from_slice(&u16::from(version_max).to_le_bytes());
            b[8..16].copy_from_slice(&generation.to_le_bytes());
        }
    }
    control(FrameKind::HelloReply, &b)
}

/// Encodes an Ack.
pub fn encode_ack(ack: &Ack) -> HeaderBuf {
    let mut b = [0u8; ACK_BODY_BYTES];
    b[0..8].copy_from_slice(&ack.durable_lsn.to_le_bytes());
    b[8..16].copy_from_slice(&ack.frame_lsn_first.to_le_bytes());
    b[16..24].copy_from_slice(&ack.frame_lsn_last.to_le_bytes());
    b[24..32].copy_from_slice(&ack.generation.to_le_bytes());
    control(FrameKind::Ack, &b)
}

/// Encodes a Heartbeat.
pub fn encode_heartbeat(hb: &Heartbeat) -> HeaderBuf {
    let mut b = [0u8; HEARTBEAT_BODY_BYTES];
    b[0..8].copy_from_slice(&hb.nonce.to_le_bytes());
    b[8..16].copy_from_slice(&hb.time_ns.to_le_bytes());
    b[16] = u8::from(hb.is_reply);
    control(FrameKind::Heartbeat, &b)
}

/// Encodes a PrimaryLiveness.
pub fn encode_primary_liveness(p: &PrimaryLiveness) -> HeaderBuf {
    let mut b = [0u8; PRIMARY_LIVENESS_BODY_BYTES];
    b[0..8].copy_from_slice(&p.primary_age_ms.to_le_bytes());
    b[8..16].copy_from_slice(&p.primary_lsn.to_le_bytes());
    b[16] = u8::from(p.connected);
    b[17] = p.forward as u8;
    control(FrameKind::PrimaryLiveness, &b)
}

/// Encodes a Base.
pub fn encode_base(b: &Base) -> HeaderBuf {
    let mut body = [0u8; BASE_BODY_BYTES];
    body[0..8].copy_from_slice(&b.lsn.to_le_bytes());
    body[8..16].copy_from_slice(&b.generation.to_le_bytes());
    control(FrameKind::Base, &body)
}

/// Encodes a SafeUpTo.
pub fn encode_safe_up_to(s: &SafeUpTo) -> HeaderBuf {
    let mut b = [0u8; SAFE_UP_TO_BODY_BYTES];
    b[0..8].copy_from_slice(&s.lsn.to_le_bytes());
    b[8..16].copy_from_slice(&s.generation.to_le_bytes());
    control(FrameKind::SafeUpTo, &b)
}

/// Encodes a GapRequest.
pub fn encode_gap_request(g: &GapRequest) -> HeaderBuf {
    let mut b = [0u8; GAP_REQUEST_BODY_BYTES];
    b[0..8].copy_from_slice(&g.request_id.to_le_bytes());
    b[8..16].copy_from_slice(&g.lsn_first.to_le_bytes());
    b[16..24].copy_from_slice(&g.lsn_last.to_le_bytes());
    control(FrameKind::GapRequest, &b)
}

/// Builds the header of a batch frame (Ops, Forward or GapReply) op by op; the data of the
/// ops is given to [`BatchEncoder::finish`] as slices in op order (any segmentation), which
/// only reads them to compute the body CRC. Lives on the stack; allocates nothing.
pub struct BatchEncoder {
    kind: FrameKind,
    hdr: HeaderBuf,
    count_at: usize,
    count: u16,
    data_bytes: usize,
    prev_lsn: u64,
}

impl BatchEncoder {
    /// Starts an Ops frame (primary -> relay).
    pub fn ops(generation: u64, block_size: u32) -> Self {
        Self::start(FrameKind::Ops, None, generation, block_size)
    }
    /// Starts a Forward frame (relay -> standby).
    pub fn forward(generation: u64, block_size: u32) -> Self {
        Self::start(FrameKind::Forward, None, generation, block_size)
    }
    /// Starts a GapReply frame.
    pub fn gap_reply(request_id: u64, status: GapStatus, generation: u64, block_size: u32) -> Self {
        Self::start(FrameKind::GapReply, Some((request_id, status)), generation, block_size)
    }

    fn start(kind: FrameKind, gap: Option<(u64, GapStatus)>, generation: u64, block_size: u32) -> Self {
        let mut hdr = HeaderBuf::new();
        if let Some((id, status)) = gap {
            let mut p = [0u8; GAP_REPLY_PREFIX_BYTES];
            p[0..8].copy_from_slice(&id.to_le_bytes());
            p[8] = status as u8;
            hdr.put(&p);
        }
        let mut b = [0u8; BATCH_HDR_BYTES];
        b[0..8].copy_from_slice(&generation.to_le_bytes());
        b[8..12].copy_from_slice(&block_size.to_le_bytes());
        let count_at = hdr.len + 12;
        hdr.put(&b);
        Self {
            kind,
            hdr,
            count_at,
            count: 0,
            data_bytes: 0,
            prev_lsn: 0,
        }
    }

    /// Ops added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }
    /// True when no op was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Data bytes the ops added so far declare.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    fn push(&mut self, kind: OpKind, data_len: usize, lsn: u64, a0: u64, a1: u64) -> Result<(), EncodeError> {
        if self.count as usize >= OPS_PER_FRAME_MAX {
            return Err(EncodeError::BatchFull);
        }
        if lsn == 0 || lsn <= self.prev_lsn {
            return Err(EncodeError::LsnOrder {
                prev: self.prev_lsn,
                lsn,
            });
        }
        let bytes = self
            .data_bytes
            .checked_add(data_len)
            .filter(|&b| b <= FRAME_DATA_BYTES_MAX)
            .ok_or(EncodeError::DataTooLarge {
                bytes: self.data_bytes.saturating_add(data_len),
            })?;
        let mut d = [0u8; OP_DESC_BYTES];
        d[0] = kind as u8;
        d[4..8].copy_from_slice(&(data_len as u32).to_le_bytes());
        d[8..16].copy_from_slice(&lsn.to_le_bytes());
        d[16..24].copy_from_slice(&a0.to_le_bytes());
        d[24..32].copy_from_slice(&a1.to_le_bytes());
        self.hdr.put(&d);
        self.count += 1;
        self.data_bytes = bytes;
        self.prev_lsn = lsn;
        Ok(())
    }

    /// Adds a write of `data_len` bytes (must be `num_blocks * block_size`, checked by the receiver).
    pub fn write(&mut self, lsn: u64, offset_blocks: u64, num_blocks: u32, data_len: usize) -> Result<(), EncodeError> {
        self.push(OpKind::Write, data_len, lsn, offset_blocks, num_blocks.into())
    }
    /// Adds a write-zeroes.
    pub fn write_zeroes(&mut self, lsn: u64, offset_blocks: u64, num_blocks: u32) -> Result<(), EncodeError> {
        self.push(OpKind::WriteZeroes, 0, lsn, offset_blocks, num_blocks.into())
    }
    /// Adds a deallocate.
    pub fn deallocate(&mut self, lsn: u64, offset_blocks: u64, num_blocks: u32) -> Result<(), EncodeError> {
        self.push(OpKind::Deallocate, 0, lsn, offset_blocks, num_blocks.into())
    }
    /// Adds a restart point whose tag (`tag_len` bytes) is given with the data in `finish`.
    pub fn restart_point(&mut self, lsn: u64, epoch: u64, last_lsn: u64, tag_len: usize) -> Result<(), EncodeError> {
        if tag_len > RESTART_TAG_BYTES_MAX {
            return Err(EncodeError::FieldLength {
                field: "restart_point.tag",
                len: tag_len,
            });
        }
        self.push(OpKind::RestartPoint, tag_len, lsn, epoch, last_lsn)
    }
    /// Adds a block-sync marker.
    pub fn sync_mark(&mut self, lsn: u64, mark: SyncMark) -> Result<(), EncodeError> {
        let (a0, a1) = mark.args();
        self.sync_args(lsn, a0, a1)
    }
    /// Adds a block-sync marker from its descriptor arguments (as journaled), checked as
    /// the receiver checks them.
    pub fn sync_args(&mut self, lsn: u64, a0: u64, a1: u64) -> Result<(), EncodeError> {
        SyncMark::from_args(lsn, a0, a1).map_err(|_| EncodeError::BadSyncMark { lsn })?;
        self.push(OpKind::Sync, 0, lsn, a0, a1)
    }
    /// Adds any parsed op (its data or tag goes to `finish`): used to forward what was received.
    pub fn op(&mut self, op: &Op<'_>) -> Result<(), EncodeError> {
        match *op {
            Op::Write {
                lsn,
                offset_blocks,
                num_blocks,
                data,
            } => self.write(lsn, offset_blocks, num_blocks, data.len()),
            Op::WriteZeroes {
                lsn,
                offset_blocks,
                num_blocks,
            } => self.write_zeroes(lsn, offset_blocks, num_blocks),
            Op::Deallocate {
                lsn,
                offset_blocks,
                num_blocks,
            } => self.deallocate(lsn, offset_blocks, num_blocks),
            Op::RestartPoint {
                lsn,
                epoch,
                last_lsn,
                tag,
            } => self.restart_point(lsn, epoch, last_lsn, tag.len()),
            Op::Sync { lsn, mark } => self.sync_mark(lsn, mark),
        }
    }

    /// Seals the header; `data` are the ops' data bytes in op order, cut into any slices.
    pub fn finish(mut self, data: &[&[u8]]) -> Result<HeaderBuf, EncodeError> {
        let given = self.close(data)?;
        self.hdr.seal(self.kind, data, given);
        Ok(self.hdr)
    }

    /// [`BatchEncoder::finish`] for a frame that re-encodes a received `batch` (a relay
    /// journaling what it received, minus ops it already holds): when the header built is
    /// byte for byte the received one and `data` is exactly the received data (the same
    /// memory, in order), the body is the received body, so its verified CRC is reused
    /// instead of computing it over the data again. Otherwise the same as `finish`.
    pub fn finish_as_received(mut self, data: &[&[u8]], batch: &Batch<'_>) -> Result<HeaderBuf, EncodeError> {
        let given = self.close(data)?;
        let same = batch.body_crc != 0
            && self.hdr.bytes[ENVELOPE_BYTES..self.hdr.len] == *batch.wire_header
            && covers(data, batch.wire_data);
        if same {
            self.hdr.seal_with_crc(self.kind, given, batch.body_crc);
        } else {
            self.hdr.seal(self.kind, data, given);
        }
        Ok(self.hdr)
    }

    /// [`BatchEncoder::finish`] with the CRC32C of every data slice already known
    /// (`crcs[i]` of `data[i]`): the body CRC is combined from them
    /// ([`crate::crc::combine`]) instead of read from the data. A primary sending the same
    /// op to several relays computes its CRC once. A wrong CRC given here makes a frame the
    /// receiver refuses (body CRC mismatch), never one it takes for good.
    pub fn finish_with_crcs(mut self, data: &[&[u8]], crcs: &[u32]) -> Result<HeaderBuf, EncodeError> {
        let given = self.close(data)?;
        if crcs.len() != data.len() {
            return Err(EncodeError::DataLengthMismatch {
                declared: self.data_bytes,
                given,
            });
        }
        let mut crc = crc32c::crc32c(&self.hdr.bytes[ENVELOPE_BYTES..self.hdr.len]);
        for (d, &c) in data.iter().zip(crcs) {
            crc = crate::crc::combine(crc, c, d.len() as u64);
        }
        self.hdr.seal_with_crc(self.kind, given, crc);
        Ok(self.hdr)
    }

    /// The checks every `finish*` makes (a batch with ops, data of the declared length),
    /// then the op count written into the header. Returns the data bytes.
    fn close(&mut self, data: &[&[u8]]) -> Result<usize, EncodeError> {
        if self.count == 0 && self.kind != FrameKind::GapReply {
            return Err(EncodeError::EmptyBatch);
        }
        let given: usize = data.iter().map(|d| d.len()).sum();
        if given != self.data_bytes {
            return Err(EncodeError::DataLengthMismatch {
                declared: self.data_bytes,
                given,
            });
        }
        let at = self.count_at;
        self.hdr.bytes[at..at + 2].copy_from_slice(&self.count.to_le_bytes());
        Ok(given)
    }
}

/// Whether the slices are `whole`'s memory, contiguous and in order, all of it.
fn covers(parts: &[&[u8]], whole: &[u8]) -> bool {
    let mut at = whole.as_ptr() as usize;
    for p in parts {
        if p.as_ptr() as usize != at {
            return false;
        }
        at += p.len();
    }
    at == whole.as_ptr() as usize + whole.len()
}

/// Encodes a whole frame (header then data) into `out`: tests, fuzzing and the journal use it.
pub fn frame_to_vec(hdr: &HeaderBuf, data: &[&[u8]], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(hdr.as_bytes());
    for d in data {
        out.extend_from_slice(d);
    }
}

/// Fuzz body: parses arbitrary bytes as one frame, as the same bytes with length and CRCs
/// made right (so random input reaches the field checks behind the CRCs), and as a stream.
/// Must never panic, and every accepted frame must re-encode to exactly the same bytes.
pub fn fuzz_frame(data: &[u8]) {
    if let Ok(frame) = parse(data) {
        reencode_check(&frame, data);
    }
    if (ENVELOPE_BYTES..=FRAME_BYTES_MAX).contains(&data.len()) {
        let mut v = data.to_vec();
        v[0] = WIRE_VERSION;
        let len = v.len() as u32;
        v[4..8].copy_from_slice(&len.to_le_bytes());
        let body = crc32c::crc32c(&v[ENVELOPE_BYTES..]);
        v[8..12].copy_from_slice(&body.to_le_bytes());
        let env = crc32c::crc32c(&v[..12]);
        v[12..16].copy_from_slice(&env.to_le_bytes());
        let parsed = parse(&v);
        if let Ok(frame) = &parsed {
            reencode_check(frame, &v);
        }
    }
    // As a stream: peel frames off the front the way a TCP receiver does.
    let mut rest = data;
    while let Ok(Some(env)) = peek_envelope(rest) {
        if env.frame_len > rest.len() {
            break;
        }
        let (one, tail) = rest.split_at(env.frame_len);
        let _ = parse(one);
        rest = tail;
    }
}

fn reencode_check(frame: &Frame<'_>, original: &[u8]) {
    let mut data: ArrayVec<&[u8], OPS_PER_FRAME_MAX> = ArrayVec::new();
    let hdr = match frame {
        Frame::Hello(h) => encode_hello(h).ok(),
        Frame::HelloReply(r) => Some(encode_hello_reply(r)),
        Frame::Ack(a) => Some(encode_ack(a)),
        Frame::Heartbeat(h) => Some(encode_heartbeat(h)),
        Frame::SafeUpTo(s) => Some(encode_safe_up_to(s)),
        Frame::GapRequest(g) => Some(encode_gap_request(g)),
        Frame::PrimaryLiveness(p) => Some(encode_primary_liveness(p)),
        Frame::Base(b) => Some(encode_base(b)),
        Frame::Ops(b) | Frame::Forward(b) | Frame::GapReply(GapReply { batch: b, .. }) => {
            let mut enc = match frame {
                Frame::Ops(_) => BatchEncoder::ops(b.generation, b.block_size),
                Frame::Forward(_) => BatchEncoder::forward(b.generation, b.block_size),
                Frame::GapReply(g) => BatchEncoder::gap_reply(g.request_id, g.status, b.generation, b.block_size),
                _ => return,
            };
            for op in &b.ops {
                if enc.op(op).is_err() {
                    return;
                }
                match *op {
                    Op::Write { data: d, .. } => data.push(d),
                    Op::RestartPoint { tag, .. } => data.push(tag),
                    _ => {}
                }
            }
            enc.finish(&data).ok()
        }
    };
    let Some(hdr) = hdr else { return };
    let mut out = Vec::with_capacity(original.len());
    frame_to_vec(&hdr, &data, &mut out);
    assert_eq!(out, original, "accepted frame does not re-encode to the same bytes");
}

#[cfg(test)]
mod tests;
