//! Receiving: the envelope check ([`peek_envelope`]) and [`parse`], which turns one whole
//! frame into a typed [`Frame`] borrowing the receive buffer.

use super::*;
use arrayvec::ArrayVec;

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
    /// `N` (at most 8) reserved bytes, which must all be zero.
    fn reserved_bytes<const N: usize>(&mut self, field: &'static str) -> Result<(), WireError> {
        let rsv = self.array::<N>()?;
        let mut rsv8 = [0u8; 8];
        rsv8[..N].copy_from_slice(&rsv);
        reserved(field, u64::from_le_bytes(rsv8))
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

/// The body of a frame of `kind`: fixed-size bodies are checked for their exact length
/// first, then each kind's fields in wire order.
fn parse_body(kind: FrameKind, body: &[u8]) -> Result<Frame<'_>, WireError> {
    let mut r = Reader {
        kind,
        buf: body,
        pos: 0,
    };
    match kind {
        FrameKind::Hello => {
            fixed_len(kind, body, HELLO_BODY_BYTES)?;
            parse_hello(&mut r)
        }
        FrameKind::HelloReply => {
            fixed_len(kind, body, HELLO_REPLY_BODY_BYTES)?;
            parse_hello_reply(&mut r)
        }
        FrameKind::Ops => Ok(Frame::Ops(parse_batch(kind, &mut r)?)),
        FrameKind::Forward => Ok(Frame::Forward(parse_batch(kind, &mut r)?)),
        FrameKind::GapReply => parse_gap_reply(&mut r),
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
            parse_heartbeat(&mut r)
        }
        FrameKind::PrimaryLiveness => {
            fixed_len(kind, body, PRIMARY_LIVENESS_BODY_BYTES)?;
            parse_primary_liveness(&mut r)
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
            parse_gap_request(&mut r)
        }
        FrameKind::Fence => {
            fixed_len(kind, body, FENCE_BODY_BYTES)?;
            parse_fence(&mut r)
        }
    }
}

fn parse_hello<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
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

fn parse_hello_reply<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
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

fn parse_gap_reply<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
    let request_id = r.u64()?;
    let status = r.u8()?;
    let status = match status {
        0 => GapStatus::Complete,
        1 => GapStatus::Partial,
        2 => GapStatus::NotHeld,
        _ => return Err(WireError::UnknownGapStatus { status }),
    };
    r.reserved_bytes::<7>("gap_reply.rsv")?;
    let batch = parse_batch(FrameKind::GapReply, r)?;
    Ok(Frame::GapReply(GapReply {
        request_id,
        status,
        batch,
    }))
}

fn parse_fence<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
    let generation = r.u64()?;
    let journal_lsn = r.u64()?;
    let is_reply = match r.u8()? {
        0 => false,
        1 => true,
        value => return Err(WireError::BadFenceFlag { value }),
    };
    r.reserved_bytes::<7>("fence.rsv")?;
    if generation == 0 {
        return Err(WireError::BadFenceGeneration);
    }
    Ok(Frame::Fence(Fence {
        generation,
        journal_lsn,
        is_reply,
    }))
}

fn parse_heartbeat<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
    let nonce = r.u64()?;
    let time_ns = r.u64()?;
    let flag = r.u8()?;
    let is_reply = match flag {
        0 => false,
        1 => true,
        value => return Err(WireError::BadHeartbeatFlag { value }),
    };
    r.reserved_bytes::<7>("heartbeat.rsv")?;
    Ok(Frame::Heartbeat(Heartbeat {
        nonce,
        time_ns,
        is_reply,
    }))
}

fn parse_primary_liveness<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
    let primary_age_ms = r.u64()?;
    let primary_lsn = r.u64()?;
    let connected = match r.u8()? {
        0 => false,
        1 => true,
        value => return Err(WireError::BadLivenessFlag { value }),
    };
    let fwd = r.u8()?;
    let forward = ForwardState::from_u8(fwd).ok_or(WireError::BadForwardState { value: fwd })?;
    r.reserved_bytes::<6>("primary_liveness.rsv")?;
    Ok(Frame::PrimaryLiveness(PrimaryLiveness {
        primary_age_ms,
        primary_lsn,
        connected,
        forward,
    }))
}

fn parse_gap_request<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
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

/// A checked op descriptor before its data is attached.
struct Desc {
    kind: OpKind,
    data_len: u32,
    lsn: u64,
    arg0: u64,
    arg1: u64,
}

/// A batch (Ops, Forward, or the part of a GapReply after its prefix): the batch header,
/// `count` descriptors, then their data back to back.
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
        let d = parse_desc(r, index, prev_lsn)?;
        d.check(block_size)?;
        prev_lsn = d.lsn;
        data_total = data_total
            .checked_add(d.data_len.into())
            .ok_or(WireError::DataLengthMismatch {
                declared: u64::MAX,
                actual: 0,
            })?;
        descs.push(d);
    }
    let data = r.rest();
    if data_total != data.len() as u64 {
        return Err(WireError::DataLengthMismatch {
            declared: data_total,
            actual: data.len(),
        });
    }
    Ok(Batch {
        generation,
        block_size,
        ops: attach_data(descs, data),
        wire_header: &r.buf[..r.buf.len() - data.len()],
        wire_data: data,
        body_crc: 0,
    })
}

/// Descriptor `index` of a batch: its kind, reserved fields and LSN (non-zero, above
/// `prev_lsn`, the previous descriptor's).
fn parse_desc(r: &mut Reader<'_>, index: usize, prev_lsn: u64) -> Result<Desc, WireError> {
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
    Ok(Desc {
        kind: op_kind,
        data_len,
        lsn,
        arg0,
        arg1,
    })
}

impl Desc {
    /// The rules of the op's own kind: a block range that exists and data of exactly its
    /// size (writes), or a bounded tag and a last LSN before the point (restart points).
    fn check(&self, block_size: u32) -> Result<(), WireError> {
        let Desc {
            kind,
            data_len,
            lsn,
            arg0,
            arg1,
        } = *self;
        match kind {
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
                let expected = if kind == OpKind::Write {
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
        Ok(())
    }
}

/// The typed ops, each with its slice of `data` (whose length the descriptors' data
/// lengths sum to exactly: checked by the caller).
fn attach_data<'a>(descs: ArrayVec<Desc, OPS_PER_FRAME_MAX>, data: &'a [u8]) -> ArrayVec<Op<'a>, OPS_PER_FRAME_MAX> {
    let mut ops = ArrayVec::new();
    let mut pos = 0usize;
    for d in descs {
        // In bounds: the data lengths sum to exactly data.len() (checked by the caller).
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
                // Checked by `Desc::check`: the fallback is never taken.
                mark: SyncMark::from_args(d.lsn, d.arg0, d.arg1).unwrap_or(SyncMark::End { begin_lsn: d.arg0 }),
            },
        };
        ops.push(op);
    }
    ops
}
