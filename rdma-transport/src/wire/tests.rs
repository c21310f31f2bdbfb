//! Unit tests of the wire codec: round trips, every rejection built by hand, and the
//! deterministic mutation run of the fuzz body.

use super::*;

fn hello() -> Hello<'static> {
    Hello {
        role: Role::Primary,
        block_size: 4096,
        volume_id: [7; 16],
        volume_name: "vol0",
        generation: 3,
        resume_lsn: 42,
        frame_bytes_max: FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    }
}

fn whole(hdr: &HeaderBuf, data: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    frame_to_vec(hdr, data, &mut v);
    v
}

/// Rewrites the envelope CRCs after a test edits a frame, so the edit reaches the field check.
fn reseal(buf: &mut [u8]) {
    let body = crc32c::crc32c(&buf[ENVELOPE_BYTES..]);
    buf[8..12].copy_from_slice(&body.to_le_bytes());
    let env = crc32c::crc32c(&buf[..12]);
    buf[12..16].copy_from_slice(&env.to_le_bytes());
}

fn sample_batch() -> Vec<u8> {
    let data = vec![0xAB; 8192];
    let tag = b"app-checkpoint-7";
    let mut e = BatchEncoder::ops(3, 4096);
    e.write(10, 100, 2, data.len()).unwrap();
    e.write_zeroes(11, 5, 8).unwrap();
    e.deallocate(12, 9, 1).unwrap();
    e.restart_point(13, 1, 12, tag.len()).unwrap();
    // Data cut at an odd place: segmentation must not matter.
    let hdr = e.finish(&[&data[..1000], &data[1000..], tag]).unwrap();
    whole(&hdr, &[&data, tag])
}

/// All valid frames used as seeds by the mutation test.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = vec![
        whole(&encode_hello(&hello()).unwrap(), &[]),
        whole(
            &encode_hello_reply(&HelloReply::Accepted {
                version_max: 1,
                generation: 3,
                resume_lsn: 43,
                frame_bytes_max: 1 << 20,
                recv_credits: 64,
            }),
            &[],
        ),
        whole(
            &encode_hello_reply(&HelloReply::Refused {
                reason: RefuseReason::StaleGeneration,
                generation: 4,
                version_max: 1,
            }),
            &[],
        ),
        whole(
            &encode_ack(&Ack {
                durable_lsn: 9,
                frame_lsn_first: 5,
                frame_lsn_last: 9,
                generation: 3,
            }),
            &[],
        ),
        whole(
            &encode_heartbeat(&Heartbeat {
                nonce: 1,
                time_ns: 2,
                is_reply: true,
            }),
            &[],
        ),
        whole(&encode_safe_up_to(&SafeUpTo { lsn: 77, generation: 3 }), &[]),
        whole(
            &encode_gap_request(&GapRequest {
                request_id: 5,
                lsn_first: 10,
                lsn_last: 20,
            }),
            &[],
        ),
        sample_batch(),
    ];
    let d = vec![1u8; 512];
    let mut f = BatchEncoder::forward(3, 512);
    f.write(1, 0, 1, 512).unwrap();
    v.push(whole(&f.finish(&[&d]).unwrap(), &[&d]));
    let g = BatchEncoder::gap_reply(9, GapStatus::NotHeld, 3, 4096);
    v.push(whole(&g.finish(&[]).unwrap(), &[]));
    v.push(whole(
        &encode_primary_liveness(&PrimaryLiveness {
            primary_age_ms: 250,
            primary_lsn: 99,
            connected: true,
            forward: ForwardState::Holding,
        }),
        &[],
    ));
    for (generation, journal_lsn, is_reply) in [(4, 0, false), (4, 812, true)] {
        let f = Fence {
            generation,
            journal_lsn,
            is_reply,
        };
        v.push(whole(&encode_fence(&f), &[]));
    }
    v.push(whole(
        &encode_base(&Base {
            lsn: 2005,
            generation: 3,
        }),
        &[],
    ));
    v
}

#[test]
fn base_round_trip_and_rejections() {
    let b = Base { lsn: 2, generation: 7 };
    let f = whole(&encode_base(&b), &[]);
    assert_eq!(f.len(), ENVELOPE_BYTES + BASE_BODY_BYTES);
    assert_eq!(f[1], FrameKind::Base as u8);
    assert_eq!(parse(&f), Ok(Frame::Base(b)));
    // A base of 1 (or 0) skips nothing: refused.
    assert_eq!(parse(&edited(&f, 0, |b| *b = 1)), Err(WireError::BadBaseLsn { lsn: 1 }));
    assert_eq!(parse(&edited(&f, 0, |b| *b = 0)), Err(WireError::BadBaseLsn { lsn: 0 }));
    let mut short = f[..f.len() - 8].to_vec();
    let len = short.len() as u32;
    short[4..8].copy_from_slice(&len.to_le_bytes());
    reseal(&mut short);
    assert!(matches!(parse(&short), Err(WireError::BodyLength { .. })));
}

#[test]
fn primary_liveness_round_trip_and_rejections() {
    let p = PrimaryLiveness {
        primary_age_ms: PRIMARY_AGE_NEVER,
        primary_lsn: 0,
        connected: false,
        forward: ForwardState::Backup,
    };
    let f = whole(&encode_primary_liveness(&p), &[]);
    for fs in [ForwardState::Forwarding, ForwardState::Holding] {
        let q = PrimaryLiveness { forward: fs, ..p };
        assert_eq!(
            parse(&whole(&encode_primary_liveness(&q), &[])),
            Ok(Frame::PrimaryLiveness(q))
        );
    }
    assert_eq!(f.len(), ENVELOPE_BYTES + PRIMARY_LIVENESS_BODY_BYTES);
    assert_eq!(f[1], FrameKind::PrimaryLiveness as u8);
    assert_eq!(parse(&f), Ok(Frame::PrimaryLiveness(p)));
    assert_eq!(
        parse(&edited(&f, 16, |b| *b = 2)),
        Err(WireError::BadLivenessFlag { value: 2 })
    );
    assert_eq!(
        parse(&edited(&f, 17, |b| *b = 3)),
        Err(WireError::BadForwardState { value: 3 })
    );
    assert!(matches!(
        parse(&edited(&f, 23, |b| *b = 1)),
        Err(WireError::ReservedNonZero { .. })
    ));
    let mut short = f[..f.len() - 8].to_vec();
    let len = short.len() as u32;
    short[4..8].copy_from_slice(&len.to_le_bytes());
    reseal(&mut short);
    assert!(matches!(parse(&short), Err(WireError::BodyLength { .. })));
}

#[test]
fn round_trips_every_kind() {
    for s in seeds() {
        let f = parse(&s).unwrap();
        reencode_check(&f, &s);
    }
    let s = sample_batch();
    let Frame::Ops(b) = parse(&s).unwrap() else {
        panic!("not ops")
    };
    assert_eq!(b.generation, 3);
    assert_eq!(b.ops.len(), 4);
    assert_eq!(b.lsn_first(), Some(10));
    assert_eq!(b.lsn_last(), Some(13));
    match b.ops[0] {
        Op::Write {
            lsn: 10,
            offset_blocks: 100,
            num_blocks: 2,
            data,
        } => assert!(data.len() == 8192 && data.iter().all(|&x| x == 0xAB)),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        b.ops[3],
        Op::RestartPoint {
            lsn: 13,
            epoch: 1,
            last_lsn: 12,
            tag: b"app-checkpoint-7"
        }
    );
    let h = whole(&encode_hello(&hello()).unwrap(), &[]);
    assert_eq!(parse(&h).unwrap(), Frame::Hello(hello()));
}

#[test]
fn version_is_byte_zero_and_checked_first() {
    let mut s = seeds().remove(0);
    s[0] = 2;
    assert_eq!(parse(&s), Err(WireError::UnsupportedVersion { got: 2 }));
    // Even one byte is enough to tell a peer of another version.
    assert_eq!(peek_envelope(&[9]), Err(WireError::UnsupportedVersion { got: 9 }));
    assert_eq!(peek_envelope(&[1, 3]), Ok(None));
}

#[test]
fn envelope_rejections() {
    let good = seeds().remove(3);
    let mut s = good.clone();
    s[5] ^= 1;
    assert!(matches!(parse(&s), Err(WireError::EnvelopeCrcMismatch { .. })));

    let set_env = |s: &mut Vec<u8>, f: &dyn Fn(&mut [u8])| {
        f(s);
        let c = crc32c::crc32c(&s[..12]);
        s[12..16].copy_from_slice(&c.to_le_bytes());
    };
    let mut s = good.clone();
    set_env(&mut s, &|b| b[2] = 1);
    assert_eq!(parse(&s), Err(WireError::EnvelopeFlags { flags: 1 }));
    let mut s = good.clone();
    set_env(&mut s, &|b| b[1] = 77);
    assert_eq!(parse(&s), Err(WireError::UnknownKind { kind: 77 }));
    let mut s = good.clone();
    set_env(&mut s, &|b| b[4..8].copy_from_slice(&3u32.to_le_bytes()));
    assert_eq!(parse(&s), Err(WireError::FrameTooShort { len: 3 }));
    let mut s = good.clone();
    set_env(&mut s, &|b| b[4..8].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert!(matches!(parse(&s), Err(WireError::FrameTooLarge { len: u32::MAX, .. })));
    let mut s = good.clone();
    s.push(0);
    assert!(matches!(parse(&s), Err(WireError::LengthMismatch { .. })));
    assert_eq!(parse(&good[..10]), Err(WireError::ShorterThanEnvelope { len: 10 }));
    let mut s = good.clone();
    let last = s.len() - 1;
    s[last] ^= 0x80;
    assert!(matches!(parse(&s), Err(WireError::BodyCrcMismatch { .. })));
}

/// Edits one byte of the body of a valid frame and reseals it, so the field check is reached.
fn edited(frame: &[u8], body_off: usize, f: impl Fn(&mut u8)) -> Vec<u8> {
    let mut s = frame.to_vec();
    f(&mut s[ENVELOPE_BYTES + body_off]);
    reseal(&mut s);
    s
}

#[test]
fn hello_rejections() {
    let h = seeds().remove(0);
    assert_eq!(
        parse(&edited(&h, 0, |b| *b = 9)),
        Err(WireError::UnknownRole { role: 9 })
    );
    assert_eq!(
        parse(&edited(&h, 1, |b| *b = 65)),
        Err(WireError::VolumeNameTooLong { len: 65 })
    );
    assert_eq!(parse(&edited(&h, 1, |b| *b = 0)), Err(WireError::VolumeNameEmpty));
    assert_eq!(
        parse(&edited(&h, 48 + 10, |b| *b = 1)),
        Err(WireError::VolumeNamePadding)
    );
    assert_eq!(parse(&edited(&h, 48, |b| *b = 0xFF)), Err(WireError::VolumeNameNotUtf8));
    assert!(matches!(
        parse(&edited(&h, 2, |b| *b = 1)),
        Err(WireError::ReservedNonZero { .. })
    ));
    assert_eq!(
        parse(&edited(&h, 5, |b| *b = 0x11)),
        Err(WireError::BadBlockSize { block_size: 0x1100 })
    );
    let mut short = h.clone();
    short.truncate(h.len() - 4);
    let l = short.len() as u32;
    short[4..8].copy_from_slice(&l.to_le_bytes());
    reseal(&mut short);
    assert!(matches!(
        parse(&short),
        Err(WireError::BodyLength {
            kind: FrameKind::Hello,
            ..
        })
    ));
}

#[test]
fn reply_and_control_rejections() {
    let s = seeds();
    let (acc, refd, hb, gap) = (&s[1], &s[2], &s[4], &s[6]);
    assert_eq!(
        parse(&edited(acc, 0, |b| *b = 7)),
        Err(WireError::UnknownReplyStatus { status: 7 })
    );
    assert_eq!(
        parse(&edited(acc, 1, |b| *b = 1)),
        Err(WireError::BadRefuseReason { status: 0, reason: 1 })
    );
    assert_eq!(
        parse(&edited(refd, 1, |b| *b = 99)),
        Err(WireError::BadRefuseReason { status: 1, reason: 99 })
    );
    assert!(matches!(
        parse(&edited(refd, 16, |b| *b = 1)),
        Err(WireError::ReservedNonZero { .. })
    ));
    assert_eq!(
        parse(&edited(hb, 16, |b| *b = 2)),
        Err(WireError::BadHeartbeatFlag { value: 2 })
    );
    assert!(matches!(
        parse(&edited(hb, 20, |b| *b = 2)),
        Err(WireError::ReservedNonZero { .. })
    ));
    let fence = whole(
        &encode_fence(&Fence {
            generation: 4,
            journal_lsn: 9,
            is_reply: true,
        }),
        &[],
    );
    assert_eq!(
        parse(&edited(&fence, 16, |b| *b = 2)),
        Err(WireError::BadFenceFlag { value: 2 })
    );
    assert!(matches!(
        parse(&edited(&fence, 17, |b| *b = 1)),
        Err(WireError::ReservedNonZero { .. })
    ));
    assert_eq!(
        parse(&edited(&fence, 0, |b| *b = 0)),
        Err(WireError::BadFenceGeneration)
    );
    // lsn_first (body 8..16) raised above lsn_last.
    assert!(matches!(
        parse(&edited(gap, 15, |b| *b = 1)),
        Err(WireError::BadGapRange { .. })
    ));
}

#[test]
fn batch_rejections() {
    let b = sample_batch();
    // Batch header at body 0: generation(8) block_size(4) count(2) rsv(2); ops from 16.
    let op = |i: usize, off: usize| BATCH_HDR_BYTES + i * OP_DESC_BYTES + off;
    assert_eq!(
        parse(&edited(&b, 12, |x| *x = 40)),
        Err(WireError::TooManyOps { count: 40 })
    );
    assert!(matches!(
        parse(&edited(&b, 14, |x| *x = 1)),
        Err(WireError::ReservedNonZero { .. })
    ));
    assert_eq!(
        parse(&edited(&b, 12, |x| *x = 0)),
        Err(WireError::EmptyBatch { kind: FrameKind::Ops })
    );
    assert_eq!(
        parse(&edited(&b, op(1, 0), |x| *x = 9)),
        Err(WireError::UnknownOpKind { index: 1, kind: 9 })
    );
    assert!(matches!(
        parse(&edited(&b, op(1, 1), |x| *x = 1)),
        Err(WireError::ReservedNonZero { field: "op.flags", .. })
    ));
    // LSN of op 1 set to 10 (equal to op 0).
    assert_eq!(
        parse(&edited(&b, op(1, 8), |x| *x = 10)),
        Err(WireError::LsnNotIncreasing { prev: 10, lsn: 10 })
    );
    assert_eq!(
        parse(&edited(&b, op(0, 8), |x| *x = 0)),
        Err(WireError::LsnZero { index: 0 })
    );
    // num_blocks of the write-zeroes to 0, then to 2^32.
    assert_eq!(
        parse(&edited(&b, op(1, 24), |x| *x = 0)),
        Err(WireError::ZeroBlocks { lsn: 11 })
    );
    assert!(matches!(
        parse(&edited(&b, op(1, 28), |x| *x = 1)),
        Err(WireError::NumBlocksTooLarge { lsn: 11, .. })
    ));
    // offset of the deallocate to near u64::MAX.
    let mut s = b.clone();
    s[ENVELOPE_BYTES + op(2, 16)..ENVELOPE_BYTES + op(2, 24)].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut s);
    assert!(matches!(parse(&s), Err(WireError::BlockRangeOverflow { lsn: 12, .. })));
    // Write data_len one block short.
    assert!(matches!(
        parse(&edited(&b, op(0, 5), |x| *x = 0x10)),
        Err(WireError::OpDataLength { lsn: 10, .. })
    ));
    // Write-zeroes claiming data.
    assert!(matches!(
        parse(&edited(&b, op(1, 4), |x| *x = 1)),
        Err(WireError::OpDataLength { lsn: 11, .. })
    ));
    // Restart point tag too long; covering its own LSN.
    assert!(matches!(
        parse(&edited(&b, op(3, 5), |x| *x = 2)),
        Err(WireError::TagTooLong { lsn: 13, .. })
    ));
    assert!(matches!(
        parse(&edited(&b, op(3, 24), |x| *x = 13)),
        Err(WireError::RestartCoversFuture { lsn: 13, last_lsn: 13 })
    ));
    // One data byte too many.
    let mut s = b.clone();
    s.push(0);
    let l = s.len() as u32;
    s[4..8].copy_from_slice(&l.to_le_bytes());
    reseal(&mut s);
    assert!(matches!(parse(&s), Err(WireError::DataLengthMismatch { .. })));
    // Descriptors cut short.
    let mut s = b[..ENVELOPE_BYTES + op(2, 7)].to_vec();
    let l = s.len() as u32;
    s[4..8].copy_from_slice(&l.to_le_bytes());
    reseal(&mut s);
    assert!(matches!(
        parse(&s),
        Err(WireError::BodyTruncated {
            kind: FrameKind::Ops,
            ..
        })
    ));
}

#[test]
fn encoder_refuses_bad_batches() {
    let mut e = BatchEncoder::ops(1, 4096);
    assert_eq!(e.write(0, 0, 1, 4096), Err(EncodeError::LsnOrder { prev: 0, lsn: 0 }));
    e.write(5, 0, 1, 4096).unwrap();
    assert_eq!(e.write(5, 0, 1, 4096), Err(EncodeError::LsnOrder { prev: 5, lsn: 5 }));
    assert!(matches!(
        e.write(6, 0, 1, FRAME_DATA_BYTES_MAX),
        Err(EncodeError::DataTooLarge { .. })
    ));
    assert!(matches!(
        BatchEncoder::ops(1, 512).finish(&[]),
        Err(EncodeError::EmptyBatch)
    ));
    let mut e = BatchEncoder::ops(1, 512);
    for i in 0..OPS_PER_FRAME_MAX as u64 {
        e.write_zeroes(i + 1, 0, 1).unwrap();
    }
    assert_eq!(e.write_zeroes(99, 0, 1), Err(EncodeError::BatchFull));
    let mut e = BatchEncoder::ops(1, 512);
    e.write(1, 0, 1, 512).unwrap();
    assert!(matches!(
        e.finish(&[&[0u8; 100]]),
        Err(EncodeError::DataLengthMismatch { .. })
    ));
    let mut h = hello();
    h.volume_name = "";
    assert!(encode_hello(&h).is_err());
}

/// Deterministic xorshift so CI runs the same cases every time.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_body_survives_100k_mutations() {
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted_changed = 0usize;
    for i in 0..100_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let mut m = seed.clone();
        match i % 5 {
            0 => {
                // One byte changed: CRC32C catches every burst of at most 32 bits.
                let at = rng.below(m.len());
                let v = (rng.next() as u8) | 1;
                m[at] ^= v;
                assert!(parse(&m).is_err(), "single-byte change at {at} accepted");
            }
            1 => m.truncate(rng.below(m.len())),
            2 => {
                // Change then reseal: reaches the field checks.
                for _ in 0..1 + rng.below(4) {
                    let at = ENVELOPE_BYTES + rng.below(m.len() - ENVELOPE_BYTES);
                    if at < m.len() {
                        m[at] = rng.next() as u8;
                    }
                }
                reseal(&mut m);
                if m != *seed && parse(&m).is_ok() {
                    accepted_changed += 1;
                }
            }
            3 => {
                // Two frames back to back, then random cut: the stream path.
                let other = &seeds[rng.below(seeds.len())];
                m.extend_from_slice(other);
                m.truncate(m.len() - rng.below(other.len()));
            }
            _ => {
                let n = rng.below(64);
                m = (0..n).map(|_| rng.next() as u8).collect();
                if n > 0 {
                    m[0] = WIRE_VERSION;
                }
            }
        }
        fuzz_frame(&m);
    }
    // Resealed edits of value fields (LSNs, offsets, generation) are legitimately accepted.
    assert!(accepted_changed > 0);
}

/// The data slices of `b`'s ops, as a relay re-encoding them passes them.
fn op_slices<'a>(ops: &[&Op<'a>]) -> Vec<&'a [u8]> {
    ops.iter()
        .filter_map(|o| match *o {
            Op::Write { data, .. } => Some(*data),
            Op::RestartPoint { tag, .. } => Some(*tag),
            _ => None,
        })
        .filter(|d| !d.is_empty())
        .collect()
}

#[test]
fn re_encoding_a_received_batch_reuses_its_crc_only_when_the_bytes_are_the_same() {
    let frame = sample_batch();
    let Frame::Ops(b) = parse(&frame).unwrap() else {
        panic!()
    };
    assert_ne!(b.body_crc, 0);
    let reencode = |ops: &[&Op<'_>], data: &[&[u8]]| {
        let mut e = BatchEncoder::ops(b.generation, b.block_size);
        for o in ops {
            e.op(o).unwrap();
        }
        let fast = {
            let mut e2 = BatchEncoder::ops(b.generation, b.block_size);
            for o in ops {
                e2.op(o).unwrap();
            }
            e2.finish_as_received(data, &b).unwrap()
        };
        let slow = e.finish(data).unwrap();
        assert_eq!(fast.as_bytes(), slow.as_bytes(), "same frame either way");
        whole(&fast, data)
    };
    // Every op, the received data: the very frame received, CRC taken over.
    let all: Vec<&Op<'_>> = b.ops.iter().collect();
    let data = op_slices(&all);
    assert_eq!(reencode(&all, &data), frame);
    // A subset (ops already held dropped): the header differs, the CRC is computed.
    let tail: Vec<&Op<'_>> = b.ops.iter().skip(1).collect();
    let out = reencode(&tail, &op_slices(&tail));
    let Frame::Ops(t) = parse(&out).unwrap() else { panic!() };
    assert_eq!(t.ops.len(), 3);
    // The same ops over other memory holding other bytes: not taken for the received data.
    let mut other: Vec<Vec<u8>> = data.iter().map(|d| d.to_vec()).collect();
    other[0][0] ^= 1;
    let other_slices: Vec<&[u8]> = other.iter().map(|v| v.as_slice()).collect();
    let out = reencode(&all, &other_slices);
    assert!(parse(&out).is_ok(), "a CRC computed over the bytes given");
    assert_ne!(out, frame);
}

#[test]
fn sealing_from_per_slice_crcs_gives_the_same_frame() {
    let a = vec![0x11u8; 4096];
    let b: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    let tag = b"rp-1";
    let build = || {
        let mut e = BatchEncoder::ops(2, 4096);
        e.write(5, 0, 1, a.len()).unwrap();
        e.write_zeroes(6, 3, 2).unwrap();
        e.write(7, 9, 2, b.len()).unwrap();
        e.restart_point(8, 1, 7, tag.len()).unwrap();
        e
    };
    let data: [&[u8]; 3] = [&a, &b, tag];
    let crcs: Vec<u32> = data.iter().map(|d| crc32c::crc32c(d)).collect();
    let fast = build().finish_with_crcs(&data, &crcs).unwrap();
    let slow = build().finish(&data).unwrap();
    assert_eq!(fast.as_bytes(), slow.as_bytes());
    assert!(parse(&whole(&fast, &data)).is_ok());
    // A wrong CRC: the receiver refuses the frame.
    let mut bad = crcs.clone();
    bad[1] ^= 1;
    let lie = build().finish_with_crcs(&data, &bad).unwrap();
    assert!(matches!(
        parse(&whole(&lie, &data)),
        Err(WireError::BodyCrcMismatch { .. })
    ));
    // Mismatched counts are refused.
    assert!(build().finish_with_crcs(&data, &crcs[..2]).is_err());
}

#[test]
fn sync_markers_round_trip_and_rejections() {
    let begin = SyncMark::Begin {
        covers_from: 7,
        full: true,
    };
    let end = SyncMark::End { begin_lsn: 20 };
    let mut e = BatchEncoder::ops(3, 4096);
    e.sync_mark(20, begin).unwrap();
    e.write_zeroes(21, 0, 16).unwrap();
    e.sync_mark(22, end).unwrap();
    let frame = whole(&e.finish(&[]).unwrap(), &[]);
    let Ok(Frame::Ops(b)) = parse(&frame) else {
        panic!("parses")
    };
    assert_eq!(b.ops[0], Op::Sync { lsn: 20, mark: begin });
    assert_eq!(b.ops[2], Op::Sync { lsn: 22, mark: end });
    // Forwarded as received.
    let mut f = BatchEncoder::forward(3, 4096);
    for op in &b.ops {
        f.op(op).unwrap();
    }
    let again = whole(&f.finish(&[]).unwrap(), &[]);
    let Ok(Frame::Forward(b2)) = parse(&again) else {
        panic!("forward parses")
    };
    assert_eq!(b2.ops, b.ops);
    // Descriptor 0 at body 16: kind(1) flags(1) rsv(2) len(4) lsn(8) arg0(8) arg1(8).
    let arg0 = BATCH_HDR_BYTES + 16;
    let arg1 = BATCH_HDR_BYTES + 24;
    for (what, at, v) in [
        ("covers_from 0", arg0, 0u8),
        ("covers_from at its own LSN", arg0, 20),
        ("unknown phase", arg1, 3),
        ("unknown flag", arg1 + 2, 1),
    ] {
        let bad = edited(&frame, at, |x| *x = v);
        assert!(
            matches!(parse(&bad), Err(WireError::BadSyncMark { lsn: 20, .. })),
            "{what}: {:?}",
            parse(&bad)
        );
    }
    // Data on a marker.
    let mut e = BatchEncoder::ops(3, 4096);
    e.sync_mark(20, begin).unwrap();
    let mut bad = whole(&e.finish(&[]).unwrap(), &[]);
    bad.extend_from_slice(&[0; 4]);
    let at = ENVELOPE_BYTES + BATCH_HDR_BYTES + 4;
    bad[at] = 4;
    let len = bad.len() as u32;
    bad[4..8].copy_from_slice(&len.to_le_bytes());
    reseal(&mut bad);
    assert!(
        matches!(parse(&bad), Err(WireError::OpDataLength { lsn: 20, .. })),
        "{:?}",
        parse(&bad)
    );
    // An initial sync's marker names no LSN and may be the volume's first op.
    let mut e = BatchEncoder::ops(3, 4096);
    e.sync_mark(1, SyncMark::Initial).unwrap();
    let f = whole(&e.finish(&[]).unwrap(), &[]);
    let Ok(Frame::Ops(b)) = parse(&f) else { panic!("parses") };
    assert_eq!(
        b.ops[0],
        Op::Sync {
            lsn: 1,
            mark: SyncMark::Initial
        }
    );
    assert!(matches!(
        parse(&edited(&f, arg0, |x| *x = 1)),
        Err(WireError::BadSyncMark { lsn: 1, .. })
    ));
    // The encoder refuses what the parser would.
    let mut e = BatchEncoder::ops(3, 4096);
    assert_eq!(e.sync_args(5, 5, 1), Err(EncodeError::BadSyncMark { lsn: 5 }));
    assert_eq!(e.sync_args(5, 1, 0x201), Err(EncodeError::BadSyncMark { lsn: 5 }));
}
