//! The fuzz body shared by the cargo-fuzz target `frame` and the unit tests.

use super::*;
use arrayvec::ArrayVec;

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

pub(super) fn reencode_check(frame: &Frame<'_>, original: &[u8]) {
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
        Frame::Fence(f) => Some(encode_fence(f)),
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
