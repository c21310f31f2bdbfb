//! Sending: [`HeaderBuf`], the `encode_*` functions of the control frames and the
//! [`BatchEncoder`] of Ops, Forward and GapReply frames.

use super::*;

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

/// Encodes a Fence (order or reply).
pub fn encode_fence(f: &Fence) -> HeaderBuf {
    let mut b = [0u8; FENCE_BODY_BYTES];
    b[0..8].copy_from_slice(&f.generation.to_le_bytes());
    b[8..16].copy_from_slice(&f.journal_lsn.to_le_bytes());
    b[16] = u8::from(f.is_reply);
    control(FrameKind::Fence, &b)
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
