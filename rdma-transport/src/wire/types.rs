//! Constants, the on-wire layouts and the typed frames `parse` gives and the encoders take.

use arrayvec::ArrayVec;

use super::WireError;

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
/// Fence body: generation u64, journal LSN u64, flags u8, 7 reserved.
pub const FENCE_BODY_BYTES: usize = 24;
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
    /// Standby -> relay at the start of a failover drain: take this generation now and
    /// fence the old primary off; relay -> standby, the same frame flagged as the reply,
    /// once it has (`docs/failover.md`, "Fencing before the drain").
    Fence = 12,
}

impl FrameKind {
    pub(super) fn from_u8(v: u8) -> Option<Self> {
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
            12 => Self::Fence,
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
    pub(super) fn from_u8(v: u8) -> Option<Self> {
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
    /// An initial sync begins at this op's LSN: the volume held data no LSN wrote (a
    /// replicated volume created over a bdev with data), and every block of it is sent
    /// before the matching `End`. Until then no standby's image is the primary's at any
    /// restart point, whatever it received.
    Initial,
    /// The sync that began at `begin_lsn` sent its last block before this op.
    End {
        /// LSN of the matching `Begin`.
        begin_lsn: u64,
    },
}

/// `arg1` of a sync marker: the phase in bits 0..8, flags above.
const SYNC_PHASE_BEGIN: u64 = 1;
const SYNC_PHASE_END: u64 = 2;
const SYNC_PHASE_INITIAL: u64 = 3;
const SYNC_FLAG_FULL: u64 = 1 << 8;

impl SyncMark {
    /// `(arg0, arg1)` of the op descriptor.
    pub fn args(&self) -> (u64, u64) {
        match *self {
            SyncMark::Begin { covers_from, full } => {
                (covers_from, SYNC_PHASE_BEGIN | if full { SYNC_FLAG_FULL } else { 0 })
            }
            SyncMark::End { begin_lsn } => (begin_lsn, SYNC_PHASE_END),
            SyncMark::Initial => (0, SYNC_PHASE_INITIAL),
        }
    }

    /// Parses the descriptor's arguments of the op at `lsn`.
    pub fn from_args(lsn: u64, arg0: u64, arg1: u64) -> Result<SyncMark, WireError> {
        let bad = |why: &'static str| WireError::BadSyncMark { lsn, arg0, arg1, why };
        let (m, names) = match (arg1 & 0xff, arg1 & !0xff) {
            (SYNC_PHASE_BEGIN, f) if f & !SYNC_FLAG_FULL == 0 => (
                SyncMark::Begin {
                    covers_from: arg0,
                    full: f & SYNC_FLAG_FULL != 0,
                },
                true,
            ),
            (SYNC_PHASE_END, 0) => (SyncMark::End { begin_lsn: arg0 }, true),
            (SYNC_PHASE_INITIAL, 0) if arg0 == 0 => (SyncMark::Initial, false),
            (SYNC_PHASE_INITIAL, 0) => return Err(bad("an initial sync names no LSN (arg0 must be 0)")),
            _ => return Err(bad("unknown phase or flags")),
        };
        // Begin and End name an LSN below their own.
        if names && (arg0 == 0 || arg0 >= lsn) {
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

/// Parsed fence order (standby -> relay) or its confirmation (relay -> standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The generation the standby will be promoted to; the relay takes it as its own and
    /// refuses the older primary from then on.
    pub generation: u64,
    /// On the reply: the highest LSN the relay has journaled (every op it ever
    /// acknowledged is at or below it). 0 on the order.
    pub journal_lsn: u64,
    /// True on the relay's reply.
    pub is_reply: bool,
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
    /// See [`FrameKind::Fence`].
    Fence(Fence),
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
            Frame::Fence(_) => FrameKind::Fence,
        }
    }
}
