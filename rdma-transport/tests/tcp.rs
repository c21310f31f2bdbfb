//! TCP transport behaviour on 127.0.0.1: handshake and round trip, writev batching, partial
//! reads and writes, peer disconnect mid-frame, back-pressure, bad CRC, version mismatch.
//! Every wait loop is bounded by a deadline so a bug shows as a failure, never a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rdma_transport::handshake::{answer_hello, refusal_for, LocalVolume};
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::wire::{self, Frame, Hello, HelloReply, Op, RefuseReason, Role, WireError};
use rdma_transport::{ConnState, Connection, OutFrame, SendCompletion, SendError, TransportError};

type Conn = TcpConnection<Vec<u8>>;

const WAIT: Duration = Duration::from_secs(20);

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "no progress: {what}");
        std::thread::yield_now();
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn connected_pair(cfg: TcpConfig) -> (Conn, Conn) {
    let acc = TcpAcceptor::bind(loopback(), TcpConfig::default()).unwrap();
    let mut client = Conn::connect(acc.local_addr(), cfg).unwrap();
    let mut server = None;
    until("accept", || {
        if server.is_none() {
            server = acc.poll_accept().unwrap().map(|(c, _)| c);
        }
        let _ = client.poll_send(&mut |_| {});
        server.is_some() && client.state() == ConnState::Open
    });
    (client, server.unwrap())
}

/// An Ops frame of one write of `blocks` 4 KiB blocks, data filled with `lsn as u8`.
fn write_frame(lsn: u64, blocks: u32) -> OutFrame<Vec<u8>> {
    let data = vec![lsn as u8; blocks as usize * 4096];
    let mut e = wire::BatchEncoder::ops(1, 4096);
    e.write(lsn, lsn * 8, blocks, data.len()).unwrap();
    let header = e.finish(&[&data]).unwrap();
    let mut f = OutFrame::control(header, lsn);
    f.data.push(data);
    f
}

fn frame_bytes(f: &OutFrame<Vec<u8>>) -> Vec<u8> {
    let mut v = f.header.as_bytes().to_vec();
    for d in &f.data {
        v.extend_from_slice(d);
    }
    v
}

/// Receives until `n` frames arrived, recording the LSN of each write.
fn recv_lsns(c: &mut Conn, n: usize) -> Vec<u64> {
    let mut lsns = Vec::new();
    until("receive", || {
        c.poll_recv(&mut |f| {
            if let Frame::Ops(b) = f {
                for op in &b.ops {
                    if let Op::Write { lsn, data, .. } = *op {
                        assert!(data.iter().all(|&x| x == lsn as u8), "data of LSN {lsn} corrupted");
                        lsns.push(lsn);
                    }
                }
            }
        })
        .unwrap();
        lsns.len() >= n
    });
    lsns
}

fn hello() -> Hello<'static> {
    Hello {
        role: Role::Primary,
        block_size: 4096,
        volume_id: [3; 16],
        volume_name: "vol-a",
        generation: 7,
        resume_lsn: 1,
        frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    }
}

#[test]
fn handshake_write_and_ack_round_trip() {
    let (mut primary, mut relay) = connected_pair(TcpConfig::default());
    primary
        .send(OutFrame::control(wire::encode_hello(&hello()).unwrap(), 0))
        .unwrap();
    let local = LocalVolume {
        volume_id: [3; 16],
        block_size: 4096,
        generation: 7,
        durable_lsn: 41,
        frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    };
    let mut reply = None;
    until("hello", || {
        primary.poll_send(&mut |_| {}).unwrap();
        relay
            .poll_recv(&mut |f| {
                let Frame::Hello(h) = f else {
                    panic!("expected hello, got {f:?}")
                };
                assert_eq!(h.volume_name, "vol-a");
                reply = Some(answer_hello(&h, Role::Primary, Some(&local)));
            })
            .unwrap();
        reply.is_some()
    });
    relay
        .send(OutFrame::control(wire::encode_hello_reply(&reply.unwrap()), 0))
        .unwrap();
    let mut resume = 0;
    until("reply", || {
        relay.poll_send(&mut |_| {}).unwrap();
        primary
            .poll_recv(&mut |f| match f {
                Frame::HelloReply(HelloReply::Accepted { resume_lsn, .. }) => resume = resume_lsn,
                f => panic!("{f:?}"),
            })
            .unwrap();
        resume != 0
    });
    assert_eq!(resume, 42);

    primary.send(write_frame(42, 1)).unwrap();
    let mut done: Vec<SendCompletion<Vec<u8>>> = Vec::new();
    until("write sent", || {
        primary.poll_send(&mut |c| done.push(c)).unwrap();
        !done.is_empty()
    });
    assert!(done[0].sent && done[0].user_data == 42 && done[0].data[0].len() == 4096);
    assert_eq!(recv_lsns(&mut relay, 1), vec![42]);
    let ack = wire::encode_ack(&wire::Ack {
        durable_lsn: 42,
        frame_lsn_first: 42,
        frame_lsn_last: 42,
        generation: 7,
    });
    relay.send(OutFrame::control(ack, 0)).unwrap();
    let mut acked = 0;
    until("ack", || {
        relay.poll_send(&mut |_| {}).unwrap();
        primary
            .poll_recv(&mut |f| {
                if let Frame::Ack(a) = f {
                    acked = a.durable_lsn
                }
            })
            .unwrap();
        acked == 42
    });
}

#[test]
fn queued_frames_leave_in_one_writev() {
    let (mut a, mut b) = connected_pair(TcpConfig::default());
    for lsn in 1..=16 {
        let hb = wire::encode_heartbeat(&wire::Heartbeat {
            nonce: lsn,
            time_ns: 0,
            is_reply: false,
        });
        a.send(OutFrame::control(hb, lsn)).unwrap();
    }
    let before = a.stats().send_calls;
    let mut n = 0;
    a.poll_send(&mut |c| {
        assert!(c.sent);
        n += 1
    })
    .unwrap();
    assert_eq!(n, 16);
    assert_eq!(
        a.stats().send_calls - before,
        1,
        "16 small frames should take one writev"
    );
    let mut nonces = Vec::new();
    until("heartbeats", || {
        b.poll_recv(&mut |f| {
            if let Frame::Heartbeat(h) = f {
                nonces.push(h.nonce)
            }
        })
        .unwrap();
        nonces.len() == 16
    });
    assert_eq!(nonces, (1..=16).collect::<Vec<_>>());
}

#[test]
fn reassembles_frames_from_partial_reads() {
    let listener = TcpListener::bind(loopback()).unwrap();
    let mut c = Conn::connect(listener.local_addr().unwrap(), TcpConfig::default()).unwrap();
    let (mut raw, _) = listener.accept().unwrap();
    raw.set_nodelay(true).unwrap();
    let mut bytes = frame_bytes(&write_frame(5, 1));
    bytes.extend_from_slice(&frame_bytes(&write_frame(6, 2)));
    bytes.extend_from_slice(&frame_bytes(&write_frame(7, 1)));
    let mut lsns = Vec::new();
    let poll = |c: &mut Conn, lsns: &mut Vec<u64>| {
        c.poll_recv(&mut |f| {
            if let Frame::Ops(b) = f {
                lsns.push(b.lsn_first().unwrap())
            }
        })
        .unwrap()
    };
    // Pieces of 1, 2, 5, 14, ... bytes: splits inside the envelope, the header and the data.
    let mut at = 0;
    let mut step = 1;
    while at < bytes.len() {
        let end = (at + step).min(bytes.len());
        raw.write_all(&bytes[at..end]).unwrap();
        at = end;
        step = if step > 3000 { 1 } else { step * 3 - 1 };
        // Let the kernel deliver the piece so the receiver really sees it alone.
        std::thread::sleep(Duration::from_micros(300));
        poll(&mut c, &mut lsns);
    }
    until("all frames", || {
        poll(&mut c, &mut lsns);
        lsns.len() == 3
    });
    assert_eq!(lsns, vec![5, 6, 7]);
    assert!(c.stats().recv_calls > 3, "test did not produce partial reads");
}

#[test]
fn partial_writes_resume_where_the_kernel_stopped() {
    // The peer does not read at first: large frames fill the socket buffers and writev
    // returns short; then the peer reads everything and every byte must be in order.
    let listener = TcpListener::bind(loopback()).unwrap();
    let mut c = Conn::connect(listener.local_addr().unwrap(), TcpConfig::default()).unwrap();
    let (mut raw, _) = listener.accept().unwrap();
    let mut expected = Vec::new();
    let mut queued = 0u64;
    // 256 KiB each, 16 MiB in all: above what loopback socket buffers absorb even when
    // autotuned to their maximum (tcp_wmem 4 MiB + tcp_rmem 6 MiB by default).
    for lsn in 1..=64u64 {
        let f = write_frame(lsn, 64);
        expected.extend_from_slice(&frame_bytes(&f));
        c.send(f).unwrap();
        queued += 1;
    }
    let mut completed = 0u64;
    for _ in 0..50 {
        c.poll_send(&mut |s| {
            assert!(s.sent);
            completed += 1
        })
        .unwrap();
    }
    assert!(
        completed < queued,
        "socket buffers absorbed 16 MiB: test cannot show a short write"
    );
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        raw.read_exact(&mut got).unwrap();
        assert!(got == expected, "bytes on the wire differ from the frames queued");
    });
    until("all sent", || {
        c.poll_send(&mut |s| {
            assert!(s.sent);
            completed += 1
        })
        .unwrap();
        completed == queued
    });
    reader.join().unwrap();
}

#[test]
fn peer_disconnect_mid_frame_is_a_clear_error() {
    let listener = TcpListener::bind(loopback()).unwrap();
    let mut c = Conn::connect(listener.local_addr().unwrap(), TcpConfig::default()).unwrap();
    let (mut raw, _) = listener.accept().unwrap();
    let bytes = frame_bytes(&write_frame(9, 1));
    raw.write_all(&bytes[..1000]).unwrap();
    drop(raw);
    let mut err = None;
    until("error", || {
        match c.poll_recv(&mut |f| panic!("half a frame delivered: {f:?}")) {
            Ok(_) => false,
            Err(e) => {
                err = Some(e);
                true
            }
        }
    });
    match err.unwrap() {
        TransportError::PeerClosedMidFrame { have, need } => {
            assert_eq!((have, need), (1000, bytes.len()))
        }
        e => panic!("expected PeerClosedMidFrame, got {e}"),
    }
    assert_eq!(c.state(), ConnState::Failed);
    // Afterwards: no hang, sends refused, queued buffers come back.
    assert!(matches!(c.send(write_frame(10, 1)), Err(SendError::Closed(_))));
    assert!(matches!(c.poll_recv(&mut |_| {}), Err(TransportError::Closed)));

    // Clean close between frames is told apart.
    let mut c = Conn::connect(listener.local_addr().unwrap(), TcpConfig::default()).unwrap();
    let (raw, _) = listener.accept().unwrap();
    drop(raw);
    let mut err = None;
    until("close", || match c.poll_recv(&mut |_| {}) {
        Ok(_) => false,
        Err(e) => {
            err = Some(e);
            true
        }
    });
    assert!(matches!(err.unwrap(), TransportError::PeerClosed));
}

#[test]
fn sender_sees_peer_gone_and_gets_buffers_back() {
    let (mut a, b) = connected_pair(TcpConfig::default());
    drop(b);
    let mut returned = 0;
    let mut err = None;
    until("send error", || {
        if a.send_capacity() > 0 {
            let _ = a.send(write_frame(1, 16));
        }
        match a.poll_send(&mut |c| {
            if !c.sent {
                returned += 1
            }
        }) {
            Ok(_) => false,
            Err(e) => {
                err = Some(e);
                true
            }
        }
    });
    assert!(matches!(
        err.unwrap(),
        TransportError::PeerClosed | TransportError::Io { .. }
    ));
    assert_eq!(a.send_capacity(), 0);
    assert!(returned >= 1 || a.stats().frames_sent > 0);
}

#[test]
fn full_send_queue_pushes_back_and_never_grows() {
    let cap = 8;
    let listener = TcpListener::bind(loopback()).unwrap();
    let mut c = Conn::connect(listener.local_addr().unwrap(), TcpConfig { send_queue_frames: cap }).unwrap();
    let (mut raw, _) = listener.accept().unwrap();
    // Fill the queue without polling: the 9th is refused and handed back intact.
    for lsn in 1..=cap as u64 {
        c.send(write_frame(lsn, 16)).unwrap();
    }
    match c.send(write_frame(99, 16)) {
        Err(SendError::Full(f)) => assert_eq!(f.user_data, 99),
        r => panic!("expected Full, got {:?}", r.err()),
    }
    // Keep offering frames while the peer reads nothing: acceptance must stop.
    let mut accepted = cap as u64;
    let mut next = cap as u64 + 1;
    let mut full_in_a_row = 0;
    let mut done = 0;
    while full_in_a_row < 1000 {
        c.poll_send(&mut |_| done += 1).unwrap();
        match c.send(write_frame(next, 16)) {
            Ok(()) => {
                accepted += 1;
                next += 1;
                full_in_a_row = 0;
            }
            Err(SendError::Full(_)) => full_in_a_row += 1,
            Err(e) => panic!("{e:?}"),
        }
        assert!(accepted < 10_000, "sender kept accepting while the peer read nothing");
    }
    assert_eq!(c.send_capacity(), 0);
    // Now the peer drains: every accepted frame arrives, in order.
    let total = accepted as usize;
    let reader = std::thread::spawn(move || {
        let mut lsn = 1u64;
        let mut hdr = [0u8; 16];
        while lsn <= total as u64 {
            raw.read_exact(&mut hdr).unwrap();
            let env = wire::peek_envelope(&hdr).unwrap().unwrap();
            let mut rest = vec![0u8; env.frame_len - 16];
            raw.read_exact(&mut rest).unwrap();
            let mut whole = hdr.to_vec();
            whole.extend_from_slice(&rest);
            let Frame::Ops(b) = wire::parse(&whole).unwrap() else {
                panic!()
            };
            assert_eq!(b.lsn_first(), Some(lsn));
            lsn += 1;
        }
    });
    until("drain", || {
        c.poll_send(&mut |_| done += 1).unwrap();
        done == total
    });
    reader.join().unwrap();
}

#[test]
fn bad_crc_is_rejected() {
    let listener = TcpListener::bind(loopback()).unwrap();
    let mut c = Conn::connect(listener.local_addr().unwrap(), TcpConfig::default()).unwrap();
    let (mut raw, _) = listener.accept().unwrap();
    let good = frame_bytes(&write_frame(1, 1));
    let mut bad = frame_bytes(&write_frame(2, 1));
    let n = bad.len();
    bad[n - 100] ^= 0x40; // a data byte: the body CRC must catch it
    raw.write_all(&good).unwrap();
    raw.write_all(&bad).unwrap();
    let mut lsns = Vec::new();
    let mut err = None;
    until("crc error", || {
        match c.poll_recv(&mut |f| {
            if let Frame::Ops(b) = f {
                lsns.push(b.lsn_first().unwrap())
            }
        }) {
            Ok(_) => false,
            Err(e) => {
                err = Some(e);
                true
            }
        }
    });
    assert_eq!(
        lsns,
        vec![1],
        "the good frame before the bad one is delivered, the bad one is not"
    );
    assert!(matches!(
        err.unwrap(),
        TransportError::Wire(WireError::BodyCrcMismatch { .. })
    ));
}

#[test]
fn version_mismatch_is_refused_with_a_reason() {
    let acc = TcpAcceptor::bind(loopback(), TcpConfig::default()).unwrap();
    let mut raw = TcpStream::connect(acc.local_addr()).unwrap();
    let mut relay: Option<Conn> = None;
    until("accept", || {
        relay = acc.poll_accept().unwrap().map(|(c, _)| c);
        relay.is_some()
    });
    let mut relay = relay.unwrap();
    // A Hello from a future version 2 peer.
    let mut h = wire::encode_hello(&hello()).unwrap().as_bytes().to_vec();
    h[0] = 2;
    raw.write_all(&h).unwrap();
    let mut err = None;
    until("version error", || match relay.poll_recv(&mut |_| {}) {
        Ok(_) => false,
        Err(e) => {
            err = Some(e);
            true
        }
    });
    let err = err.unwrap();
    assert!(matches!(
        err,
        TransportError::Wire(WireError::UnsupportedVersion { got: 2 })
    ));
    let refusal = refusal_for(&err).expect("a version error gets a refusal");
    assert!(relay.send_last(refusal));
    // The old peer reads a version-1 HelloReply refusing with reason Version, then EOF.
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).unwrap();
    let reply = wire::parse(&buf).unwrap();
    match reply {
        Frame::HelloReply(HelloReply::Refused {
            reason, version_max, ..
        }) => assert_eq!((reason, version_max), (RefuseReason::Version, 1)),
        f => panic!("{f:?}"),
    }
}

#[test]
fn connect_to_closed_port_fails_without_blocking() {
    let addr = {
        let l = TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    let mut c = Conn::connect(addr, TcpConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut err = None;
    until("refused", || match c.poll_send(&mut |_| {}) {
        Ok(_) => false,
        Err(e) => {
            err = Some(e);
            true
        }
    });
    assert!(matches!(err.unwrap(), TransportError::Connect { .. }));
}
