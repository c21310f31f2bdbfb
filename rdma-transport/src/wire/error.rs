//! [`WireError`]: every rule a received frame can break, one variant each.

use super::*;

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
    /// Fence reply flag not 0 or 1.
    #[error("fence reply flag {value} not 0 or 1")]
    BadFenceFlag {
        /// Value received.
        value: u8,
    },
    /// A fence to generation 0 (generations start at 1).
    #[error("fence to generation 0")]
    BadFenceGeneration,
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
