use super::*;
use crate::wire::{encode_heartbeat, frame_to_vec, parse, BatchEncoder, Heartbeat};

fn heartbeat(n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    frame_to_vec(
        &encode_heartbeat(&Heartbeat {
            nonce: n,
            time_ns: n * 7,
            is_reply: false,
        }),
        &[],
        &mut v,
    );
    v
}

fn ops_frame(lsn: u64, bytes: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..bytes).map(|i| (i as u64 * 31 + lsn) as u8).collect();
    let mut e = BatchEncoder::ops(1, 512);
    e.write(lsn, lsn * 8, (bytes / 512) as u32, bytes).unwrap();
    let hdr = e.finish(&[&data]).unwrap();
    let mut v = Vec::new();
    frame_to_vec(&hdr, &[&data], &mut v);
    v
}

/// Packs frames into messages the way the sender does.
fn pack(frames: &[Vec<u8>], msg_bytes: usize) -> Vec<Vec<u8>> {
    let mut msgs: Vec<Vec<u8>> = vec![Vec::new()];
    for f in frames {
        if place(msgs.last().unwrap().len(), f.len(), msg_bytes) == Place::FreshMessage {
            msgs.push(Vec::new());
        }
        let mut rest = &f[..];
        while !rest.is_empty() {
            let cur = msgs.last_mut().unwrap();
            let take = (msg_bytes - cur.len()).min(rest.len());
            cur.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if msgs.last().unwrap().len() == msg_bytes {
                msgs.push(Vec::new());
            }
        }
    }
    msgs.retain(|m| !m.is_empty());
    msgs
}

/// Feeds messages to a reassembler; returns each delivered frame's bytes and how many were
/// parsed in place.
fn unpack(msgs: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, usize), WireError> {
    let mut r = Reassembler::new();
    let mut out = Vec::new();
    let mut in_place = 0;
    for m in msgs {
        let mut off = 0;
        loop {
            match r.step(m, &mut off)? {
                Step::InPlace { start, len } => {
                    parse(&m[start..start + len])?;
                    out.push(m[start..start + len].to_vec());
                    in_place += 1;
                }
                Step::Reassembled(len) => {
                    parse(r.frame(len))?;
                    out.push(r.frame(len).to_vec());
                    r.consumed();
                }
                Step::MessageDone => break,
            }
        }
    }
    assert_eq!(r.partial(), 0, "no partial frame left");
    Ok((out, in_place))
}

#[test]
fn small_frames_are_packed_and_parsed_in_place() {
    let frames: Vec<Vec<u8>> = (0..200).map(heartbeat).collect();
    let msgs = pack(&frames, 4096);
    assert!(msgs.len() < 10, "packed: {} messages", msgs.len());
    let (out, in_place) = unpack(&msgs).unwrap();
    assert_eq!(out, frames);
    assert_eq!(in_place, frames.len(), "none crossed a message boundary");
}

#[test]
fn large_frames_span_messages_and_are_reassembled() {
    let frames = vec![
        heartbeat(1),
        ops_frame(2, 1024 * 1024),
        heartbeat(3),
        ops_frame(4, 4096),
        ops_frame(5, 512),
    ];
    for msg_bytes in [4096usize, 4096 * 3 + 100, 65536] {
        let msgs = pack(&frames, msg_bytes);
        let (out, in_place) = unpack(&msgs).unwrap();
        assert_eq!(out, frames, "msg_bytes {msg_bytes}");
        assert!(in_place >= 2, "small frames stay in place");
    }
}

#[test]
fn any_cut_of_the_stream_reassembles() {
    // A peer need not follow our packing rule: cuts anywhere, envelope split included.
    let frames = vec![ops_frame(1, 8192), heartbeat(2), heartbeat(3), ops_frame(4, 512)];
    let stream: Vec<u8> = frames.concat();
    for cut in [1usize, 5, 15, 16, 17, 100, 4095, 5000] {
        let msgs: Vec<Vec<u8>> = stream.chunks(cut).map(|c| c.to_vec()).collect();
        let (out, _) = unpack(&msgs).unwrap();
        assert_eq!(out, frames, "cut {cut}");
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut bad = heartbeat(1);
    bad[5] ^= 0xff; // length byte: envelope CRC no longer matches
    assert!(unpack(&[bad]).is_err());
    assert!(unpack(&[vec![9u8; 3]]).is_err(), "wrong version in a short message");
    let mut r = Reassembler::new();
    let mut off = 0;
    // Split envelope whose second half is bad.
    let hb = heartbeat(1);
    assert_eq!(r.step(&hb[..10], &mut off).unwrap(), Step::MessageDone);
    let mut tail = hb[10..].to_vec();
    tail[0] ^= 1;
    off = 0;
    assert!(r.step(&tail, &mut off).is_err());
}

#[test]
fn params_round_trip_and_reject_nonsense() {
    let p = ConnParams {
        recv_slots: 64,
        msg_bytes: 65536,
        credit_addr: 0xdead_beef_0000,
        credit_rkey: 77,
    };
    let mut b = p.encode().to_vec();
    assert_eq!(ConnParams::decode(&b).unwrap(), p);
    b.extend_from_slice(&[0; 24]); // rdma_cm pads private data
    assert_eq!(ConnParams::decode(&b).unwrap(), p);
    assert!(ConnParams::decode(&b[..10]).is_err());
    let mut m = p.encode();
    m[0] ^= 1;
    assert!(ConnParams::decode(&m).is_err());
    let mut v = p.encode();
    v[4] = 9;
    assert!(ConnParams::decode(&v).is_err());
    for (slots, msg) in [(0u16, 65536u32), (1, 65536), (64, 100), (64, 2 << 20), (5000, 65536)] {
        let q = ConnParams {
            recv_slots: slots,
            msg_bytes: msg,
            ..p
        };
        assert!(ConnParams::decode(&q.encode()).is_err(), "{slots} {msg}");
    }
}

#[test]
fn sender_never_exceeds_the_receivers_slots() {
    let mut s = SendCredits::new(8);
    let mut r = RecvCredits::new(8, 2);
    let mut in_flight = 0u64;
    let mut posted = 0u64;
    for round in 0..1000u64 {
        // Send as much as credits allow.
        while s.take() {
            in_flight += 1;
            posted += 1;
            assert!(in_flight <= 8, "overran posted receives");
        }
        assert_eq!(s.available(), 0);
        // Receiver consumes some (1..=in_flight) and re-posts them.
        let consume = 1 + round % in_flight;
        for _ in 0..consume {
            in_flight -= 1;
            r.reposted();
        }
        if let Some(total) = r.due() {
            s.observe(total).unwrap();
            r.reported(total);
        }
        // Stale (smaller) values are ignored.
        s.observe(3).unwrap();
    }
    assert!(posted > 1000);
}

#[test]
fn grants_are_returned_before_the_sender_runs_dry() {
    // With the threshold capped at a quarter of the slots, a sender whose every message was
    // consumed has at least three quarters of its credits.
    let mut s = SendCredits::new(16);
    let mut r = RecvCredits::new(16, 1000);
    for _ in 0..16 {
        assert!(s.take());
    }
    for _ in 0..16 {
        r.reposted();
        if let Some(t) = r.due() {
            s.observe(t).unwrap();
            r.reported(t);
        }
    }
    assert!(s.available() >= 12, "{}", s.available());
}

#[test]
fn over_grant_is_refused() {
    let mut s = SendCredits::new(4);
    assert!(s.take());
    assert!(matches!(
        s.observe(6),
        Err(ProtoError::OverGrant { granted: 6, limit: 5 })
    ));
    s.observe(5).unwrap();
    assert_eq!(s.available(), 4);
}

#[test]
fn packing_rule() {
    assert_eq!(place(0, 10_000, 4096), Place::Append);
    assert_eq!(place(100, 4000, 4096), Place::FreshMessage);
    assert_eq!(place(96, 4000, 4096), Place::Append);
    assert_eq!(
        place(100, 10_000, 4096),
        Place::Append,
        "too large for any message: spill"
    );
}
