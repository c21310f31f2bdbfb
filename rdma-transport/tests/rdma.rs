//! RDMA transport behaviour over a real (or Soft-RoCE) device: connect and accept through
//! rdma_cm, round trips both ways, frames larger than a message (fragmented and
//! reassembled), many more frames than credits (flow control), back-pressure, peer
//! disconnect, refused connect, a ping-pong latency figure, frames whose data lies in
//! the engine's buffer pools sent without a copy (zero-copy), and several connections on one
//! device sharing one protection domain and one registration of the pools.
//!
//! Needs the `rdma` feature, an RDMA device, and an IP address on an RDMA-capable
//! interface in `BATON_RDMA_ADDR` (rdma_cm does not work over 127.0.0.1 on Soft-RoCE;
//! `ci/rdma-e2e.sh` sets up a dummy interface with rxe on it). Without them every test
//! prints why it is skipped and passes.
#![cfg(feature = "rdma")]

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::{Duration, Instant};

use engine::alloc_count::{thread_allocations, CountingAllocator};
use engine::buf::{BufPool, DmaBuf};
use rdma_transport::rdma::{pd_stats, rdma_device_present, PdStats, RdmaAcceptor, RdmaConfig, RdmaConnection};
use rdma_transport::wire::{self, Frame, Heartbeat, Op};
use rdma_transport::{ConnState, Connection, OutFrame, SendError, TransportError};

type Conn = RdmaConnection<Vec<u8>>;

/// Counts heap allocations per thread, for the sender's no-allocation check.
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const WAIT: Duration = Duration::from_secs(30);

/// Says why a test is skipped, on the real stderr (libtest's capture hides `eprintln!` of
/// passing tests, and a skip must be seen).
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The address to test on, or None (with the reason printed) to skip.
fn test_addr(test: &str) -> Option<SocketAddr> {
    if !rdma_device_present() {
        skip(
            test,
            "no RDMA device (/sys/class/infiniband is empty); ci/rdma-e2e.sh runs it on Soft-RoCE",
        );
        return None;
    }
    match std::env::var("BATON_RDMA_ADDR") {
        Ok(a) => match format!("{a}:0").parse() {
            Ok(s) => Some(s),
            Err(_) => {
                skip(test, &format!("BATON_RDMA_ADDR={a:?} is not an IPv4 address"));
                None
            }
        },
        Err(_) => {
            skip(
                test,
                "set BATON_RDMA_ADDR to an IP address of an RDMA-capable interface",
            );
            None
        }
    }
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "no progress: {what}");
        std::thread::yield_now();
    }
}

fn connected_pair<B: Deref<Target = [u8]>>(
    addr: SocketAddr,
    cfg: RdmaConfig,
) -> (RdmaConnection<B>, RdmaConnection<B>) {
    let acc = RdmaAcceptor::bind(addr, cfg).unwrap();
    pair_on(&acc, cfg)
}

/// A client connected to `acc` and the accepted end, both open.
fn pair_on<B: Deref<Target = [u8]>>(acc: &RdmaAcceptor, cfg: RdmaConfig) -> (RdmaConnection<B>, RdmaConnection<B>) {
    let mut client = RdmaConnection::<B>::connect(acc.local_addr(), cfg).unwrap();
    let mut server: Option<RdmaConnection<B>> = None;
    until("accept and establish", || {
        if server.is_none() {
            server = acc.poll_accept().unwrap().map(|(c, _)| c);
        }
        let _ = client.poll_send(&mut |_| {});
        if let Some(s) = server.as_mut() {
            let _ = s.poll_recv(&mut |_| {});
        }
        server.as_ref().is_some_and(|s| s.state() == ConnState::Open) && client.state() == ConnState::Open
    });
    (client, server.unwrap())
}

fn write_frame(lsn: u64, blocks: u32) -> OutFrame<Vec<u8>> {
    let data: Vec<u8> = (0..blocks as usize * 4096).map(|i| (i as u64 ^ lsn) as u8).collect();
    let mut e = wire::BatchEncoder::ops(1, 4096);
    e.write(lsn, lsn * 8, blocks, data.len()).unwrap();
    let header = e.finish(&[&data]).unwrap();
    let mut f = OutFrame::control(header, lsn);
    f.data.push(data);
    f
}

fn heartbeat(nonce: u64, is_reply: bool) -> OutFrame<Vec<u8>> {
    OutFrame::control(
        wire::encode_heartbeat(&Heartbeat {
            nonce,
            time_ns: 0,
            is_reply,
        }),
        nonce,
    )
}

/// Sends `frames` from `a` to `b`, retrying on back-pressure, until `b` got every frame and
/// `a` handed every frame back (in either order: a receive may complete before the send
/// completion of the message it came in); returns the LSNs `b` got.
fn pump<B: Deref<Target = [u8]>>(
    a: &mut RdmaConnection<B>,
    b: &mut RdmaConnection<B>,
    frames: Vec<OutFrame<B>>,
) -> Vec<u64> {
    pump_counting(a, b, frames).0
}

/// [`pump`], also returning the heap allocations made inside `a.send` and `a.poll_send`.
fn pump_counting<B: Deref<Target = [u8]>>(
    a: &mut RdmaConnection<B>,
    b: &mut RdmaConnection<B>,
    frames: Vec<OutFrame<B>>,
) -> (Vec<u64>, u64) {
    let mut send_allocs = 0;
    let mut back = Vec::with_capacity(frames.len());
    let n = frames.len();
    let mut pending: std::collections::VecDeque<_> = frames.into();
    let mut got = Vec::new();
    let mut frames_got = 0;
    let mut completed = 0;
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < WAIT,
            "no progress: pump: {frames_got} of {n} frames received, {completed} handed back, \
             {} held, {} credits; sender {:?}; receiver {:?}",
            a.held_frames(),
            a.send_credits(),
            a.stats(),
            b.stats()
        );
        while let Some(f) = pending.pop_front() {
            let before = thread_allocations();
            let r = a.send(f);
            send_allocs += thread_allocations() - before;
            match r {
                Ok(()) => {}
                Err(SendError::Full(f)) => {
                    pending.push_front(f);
                    break;
                }
                Err(e) => panic!("send: {e:?}"),
            }
        }
        let before = thread_allocations();
        // Handed-back buffers are dropped after the count: returning them is not the
        // transport's allocation.
        let r = a.poll_send(&mut |c| {
            assert!(c.sent);
            completed += 1;
            back.push(c);
        });
        send_allocs += thread_allocations() - before;
        r.unwrap();
        back.clear();
        b.poll_recv(&mut |f| {
            if let Frame::Ops(batch) = f {
                frames_got += 1;
                for op in &batch.ops {
                    if let Op::Write { lsn, data, .. } = *op {
                        let ok = data.iter().enumerate().all(|(i, &x)| x == (i as u64 ^ lsn) as u8);
                        assert!(ok, "data of LSN {lsn} corrupted");
                        got.push(lsn);
                    }
                }
            }
        })
        .unwrap();
        if frames_got == n && completed == n {
            return (got, send_allocs);
        }
        std::thread::yield_now();
    }
}

#[test]
fn small_and_large_frames_both_ways() {
    let Some(addr) = test_addr("small_and_large_frames_both_ways") else {
        return;
    };
    let (mut c, mut s) = connected_pair(addr, RdmaConfig::default());
    // Small frames pack several to a message; 256-block (1 MiB) frames span 17 messages.
    let frames: Vec<_> = (1..=40)
        .map(|l| write_frame(l, if l % 5 == 0 { 256 } else { 1 }))
        .collect();
    assert_eq!(pump(&mut c, &mut s, frames), (1..=40).collect::<Vec<_>>());
    let back: Vec<_> = (100..110).map(|l| write_frame(l, 2)).collect();
    assert_eq!(pump(&mut s, &mut c, back), (100..110).collect::<Vec<_>>());
    assert_eq!(c.stats().frames_sent, 40);
    assert_eq!(s.stats().frames_received, 40);
}

#[test]
fn many_more_frames_than_credits_flow_without_overrun() {
    let Some(addr) = test_addr("many_more_frames_than_credits_flow_without_overrun") else {
        return;
    };
    // Tiny rings: 4 receive slots of 4 KiB; every 1-block frame needs two messages.
    let cfg = RdmaConfig {
        send_queue_frames: 16,
        msg_bytes: 4096,
        recv_slots: 4,
        send_slots: 8,
    };
    let (mut c, mut s) = connected_pair(addr, cfg);
    let frames: Vec<_> = (1..=2000).map(|l| write_frame(l, 1)).collect();
    let got = pump(&mut c, &mut s, frames);
    assert_eq!(got, (1..=2000).collect::<Vec<_>>());
    assert!(c.stats().send_full > 0, "the 16-frame queue pushed back");
}

#[test]
fn peer_close_is_reported_and_queued_frames_come_back() {
    let Some(addr) = test_addr("peer_close_is_reported_and_queued_frames_come_back") else {
        return;
    };
    let (mut c, mut s) = connected_pair(addr, RdmaConfig::default());
    s.close();
    drop(s);
    let mut err = None;
    until("peer close seen", || match c.poll_recv(&mut |_| {}) {
        Ok(_) => false,
        Err(e) => {
            err = Some(e);
            true
        }
    });
    assert!(matches!(err, Some(TransportError::PeerClosed)), "{err:?}");
    assert_eq!(c.state(), ConnState::Failed);
    assert!(matches!(c.send(heartbeat(1, false)), Err(SendError::Closed(_))));
}

#[test]
fn connect_to_nothing_fails_cleanly() {
    let Some(addr) = test_addr("connect_to_nothing_fails_cleanly") else {
        return;
    };
    // A port nobody listens on: rdma_cm rejects.
    let target = SocketAddr::new(addr.ip(), 1);
    let mut c = Conn::connect(target, RdmaConfig::default()).unwrap();
    let mut err = None;
    until("connect refused", || match c.poll_send(&mut |_| {}) {
        Ok(_) => false,
        Err(e) => {
            err = Some(e);
            true
        }
    });
    assert!(matches!(err, Some(TransportError::Connect { .. })), "{err:?}");
}

#[test]
fn ping_pong_latency() {
    let Some(addr) = test_addr("ping_pong_latency") else {
        return;
    };
    let (mut c, mut s) = connected_pair(addr, RdmaConfig::default());
    let rounds = 2000;
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds as u64 {
        let t0 = Instant::now();
        c.send(heartbeat(i, false)).unwrap();
        let mut back = false;
        until("pong", || {
            c.poll_send(&mut |_| {}).unwrap();
            let mut ping = false;
            s.poll_recv(&mut |f| ping |= matches!(f, Frame::Heartbeat(h) if h.nonce == i))
                .unwrap();
            if ping {
                s.send(heartbeat(i, true)).unwrap();
            }
            s.poll_send(&mut |_| {}).unwrap();
            c.poll_recv(&mut |f| back |= matches!(f, Frame::Heartbeat(h) if h.is_reply))
                .unwrap();
            back
        });
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    let p = |q: f64| rtts[((rounds as f64 * q) as usize).min(rounds - 1)].as_secs_f64() * 1e6;
    eprintln!(
        "RDMA frame ping-pong over {rounds} rounds: median {:.1} us, p99 {:.1} us",
        p(0.5),
        p(0.99)
    );
    let t0 = Instant::now();
    let frames: Vec<_> = (1..=256).map(|l| write_frame(l, 16)).collect();
    pump(&mut c, &mut s, frames);
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "RDMA 64 KiB frames one way: {:.0} MB/s ({} frames in {:.3} s)",
        256.0 * 65536.0 / secs / 1e6,
        256,
        secs
    );
}

/// A write frame of `ops` writes, op `k` of `blocks[k]` blocks, each op's data in its own
/// buffer from `buf(len)`, filled with the pattern `pump` checks.
fn write_frame_in(lsn: u64, blocks: &[u32], mut buf: impl FnMut(usize) -> DmaBuf) -> OutFrame<DmaBuf> {
    let mut e = wire::BatchEncoder::ops(1, 4096);
    let mut data = Vec::new();
    for (k, &b) in blocks.iter().enumerate() {
        let l = lsn + k as u64;
        let mut d = buf(b as usize * 4096);
        for (i, x) in d.iter_mut().enumerate() {
            *x = (i as u64 ^ l) as u8;
        }
        e.write(l, l * 8, b, d.len()).unwrap();
        data.push(d);
    }
    let slices: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
    let header = e.finish(&slices).unwrap();
    let mut f = OutFrame::control(header, lsn);
    for d in data {
        f.data.push(d);
    }
    f
}

/// Rings small enough that 16 KiB-and-up frames span messages and credits run out.
const SMALL_RINGS: RdmaConfig = RdmaConfig {
    send_queue_frames: 32,
    msg_bytes: 16 * 1024,
    recv_slots: 8,
    send_slots: 8,
};

fn pool_buf(pool: &'static BufPool, len: usize) -> DmaBuf {
    let mut b = pool.get().expect("test pool has a free buffer");
    b.set_len(len);
    b
}

#[test]
fn pool_buffer_frames_are_sent_without_copying() {
    let Some(addr) = test_addr("pool_buffer_frames_are_sent_without_copying") else {
        return;
    };
    // Made before the connection: registered at setup.
    let early = BufPool::new("rdma-zc-early", 192, 64 * 1024).unwrap();
    // Small rings so frames span messages and credits run out; 64 KiB pool buffers.
    let cfg = SMALL_RINGS;
    let (mut c, mut s) = connected_pair::<DmaBuf>(addr, cfg);
    if c.send_sge() < 2 {
        skip(
            "pool_buffer_frames_are_sent_without_copying",
            "the device grants one scatter/gather entry per SEND: zero-copy is off",
        );
        return;
    }
    assert!(c.pools_registered().0 >= 1, "{:?}", c.pools_registered());

    // 1) Pool data only: every payload byte goes zero-copy, none is copied. Frames of one
    // small write (packed several to a message), of 16 blocks (spanning messages), and of
    // several writes in separate buffers (several entries per message).
    let mut frames = Vec::new();
    let mut lsn = 1;
    let mut payload = 0u64;
    for i in 0..60u64 {
        let blocks: &[u32] = match i % 4 {
            0 => &[1],
            1 => &[16],
            2 => &[2, 1, 3, 1, 4],
            _ => &[16, 16, 16, 16],
        };
        payload += blocks.iter().map(|&b| b as u64 * 4096).sum::<u64>();
        frames.push(write_frame_in(lsn, blocks, |len| pool_buf(early, len)));
        lsn += blocks.len() as u64;
    }
    let ops = lsn - 1;
    // `pump` checks every write's bytes; `wire::parse` checked each frame's body CRC.
    let (got, allocs) = pump_counting(&mut c, &mut s, frames);
    assert_eq!(got, (1..=ops).collect::<Vec<_>>());
    assert_eq!(allocs, 0, "the sender allocated while sending");
    let st = c.stats();
    assert_eq!(st.payload_bytes_copied, 0, "{st:?}");
    assert_eq!(st.payload_bytes_zero_copy, payload, "{st:?}");
    assert_eq!(c.held_frames(), 0);
    assert_eq!(early.free(), early.len(), "every pool buffer came back");

    // 2) A pool made after the connection: registered when first seen, zero-copy too.
    let late = BufPool::new("rdma-zc-late", 32, 64 * 1024).unwrap();
    let frames: Vec<_> = (0..20u64)
        .map(|i| write_frame_in(1000 + i, &[8], |len| pool_buf(late, len)))
        .collect();
    assert_eq!(pump(&mut c, &mut s, frames), (1000..1020).collect::<Vec<_>>());
    let st = c.stats();
    assert_eq!(st.payload_bytes_copied, 0, "{st:?}");
    assert_eq!(st.payload_bytes_zero_copy, payload + 20 * 8 * 4096, "{st:?}");
    assert!(c.pools_registered().0 >= 2, "{:?}", c.pools_registered());
    assert_eq!(late.free(), late.len());

    // 3) Buffers outside any pool (heap) are still copied, byte for byte, beside pool ones.
    let frames: Vec<_> = (0..10u64)
        .map(|i| {
            write_frame_in(2000 + 2 * i, &[1, 2], |len| {
                if len == 4096 {
                    DmaBuf::alloc(len)
                } else {
                    pool_buf(early, len)
                }
            })
        })
        .collect();
    let (got, allocs) = pump_counting(&mut c, &mut s, frames);
    assert_eq!(got.len(), 20);
    assert_eq!(allocs, 0, "the sender allocated while sending");
    let st = c.stats();
    assert_eq!(st.payload_bytes_copied, 10 * 4096, "{st:?}");
    assert_eq!(
        st.payload_bytes_zero_copy,
        payload + 20 * 8 * 4096 + 10 * 2 * 4096,
        "{st:?}"
    );
    assert_eq!(early.free(), early.len());
    eprintln!(
        "RDMA zero-copy: {} payload bytes sent in place, {} copied (the heap buffers), {} SEND entries allowed",
        st.payload_bytes_zero_copy,
        st.payload_bytes_copied,
        c.send_sge()
    );
}

/// Bytes of every engine pool in the process (what registering each once pins).
fn all_pool_bytes() -> u64 {
    engine::buf::pools().iter().map(|p| p.region().1 as u64).sum()
}

/// Three connections (six queue pairs: both ends are in this process) on one device share
/// one protection domain and register the engine pools once, a pool made later once too;
/// closing one connection leaves the others working; the protection domain and the pool
/// registrations go with the last queue pair. Reads process-wide counters: run it alone in
/// its process (`ci/rdma-e2e.sh` runs each device test by itself).
#[test]
fn connections_on_one_device_share_one_protection_domain() {
    let Some(addr) = test_addr("connections_on_one_device_share_one_protection_domain") else {
        return;
    };
    assert_eq!(
        pd_stats().pds,
        0,
        "another test's connections are alive: {:?}",
        pd_stats()
    );
    let early = BufPool::new("rdma-pd-early", 64, 64 * 1024).unwrap();
    let cfg = SMALL_RINGS;
    let acc = RdmaAcceptor::bind(addr, cfg).unwrap();
    let mut pairs: Vec<(RdmaConnection<DmaBuf>, RdmaConnection<DmaBuf>)> = (0..3).map(|_| pair_on(&acc, cfg)).collect();
    let pools = engine::buf::pool_count();
    let st = pd_stats();
    eprintln!("RDMA-PD three connections: {st:?} ({pools} engine pools)");
    assert_eq!(st.pds, 1, "one protection domain for the device: {st:?}");
    assert_eq!(st.users, 6, "six queue pairs on it: {st:?}");
    assert_eq!(st.pool_registrations, pools, "each pool registered once: {st:?}");
    assert_eq!(st.pool_registrations_total, pools as u64, "and never again: {st:?}");
    assert_eq!(st.pool_bytes_pinned, all_pool_bytes(), "{st:?}");
    for (c, _) in &pairs {
        assert_eq!(c.pools_registered(), (pools, 0));
    }

    // Every connection sends pool buffers under the shared keys (in place when the device
    // grants more than one entry per SEND), bytes checked by `pump`.
    let zero_copy = pairs[0].0.send_sge() >= 2;
    let mut lsn = 1;
    for (c, s) in pairs.iter_mut() {
        let frames: Vec<_> = (0..12u64)
            .map(|i| write_frame_in(lsn + i, &[4], |len| pool_buf(early, len)))
            .collect();
        assert_eq!(pump(c, s, frames), (lsn..lsn + 12).collect::<Vec<_>>());
        if zero_copy {
            assert_eq!(c.stats().payload_bytes_copied, 0, "{:?}", c.stats());
        }
        lsn += 12;
    }

    // A pool made now is registered once, when the first connection sees it.
    let late = BufPool::new("rdma-pd-late", 16, 64 * 1024).unwrap();
    for (c, s) in pairs.iter_mut() {
        let frames: Vec<_> = (0..4u64)
            .map(|i| write_frame_in(lsn + i, &[2], |len| pool_buf(late, len)))
            .collect();
        assert_eq!(pump(c, s, frames), (lsn..lsn + 4).collect::<Vec<_>>());
        lsn += 4;
    }
    let st = pd_stats();
    eprintln!("RDMA-PD after a new pool: {st:?}");
    assert_eq!(st.pds, 1, "{st:?}");
    assert_eq!(st.pool_registrations, pools + 1, "{st:?}");
    assert_eq!(
        st.pool_registrations_total,
        pools as u64 + 1,
        "the new pool once: {st:?}"
    );
    assert_eq!(st.pool_bytes_pinned, all_pool_bytes(), "{st:?}");

    // One connection closes: the others keep the protection domain and keep working.
    let (c0, s0) = pairs.remove(0);
    drop(c0);
    drop(s0);
    let st = pd_stats();
    eprintln!("RDMA-PD one connection closed: {st:?}");
    assert_eq!((st.pds, st.users, st.pool_registrations), (1, 4, pools + 1), "{st:?}");
    for (c, s) in pairs.iter_mut() {
        let frames: Vec<_> = (0..12u64)
            .map(|i| {
                write_frame_in(lsn + 2 * i, &[1, 3], |len| {
                    pool_buf(if len == 4096 { early } else { late }, len)
                })
            })
            .collect();
        let got = pump(c, s, frames);
        assert_eq!(
            got,
            (lsn..lsn + 24).collect::<Vec<_>>(),
            "after another connection closed"
        );
        lsn += 24;
        if zero_copy {
            assert_eq!(c.stats().payload_bytes_copied, 0, "{:?}", c.stats());
        }
    }
    assert_eq!(early.free(), early.len());
    assert_eq!(late.free(), late.len());

    // The last queue pair takes the protection domain and the pool registrations with it.
    drop(pairs);
    let st = pd_stats();
    eprintln!("RDMA-PD all connections closed: {st:?}");
    assert_eq!(
        st,
        PdStats {
            pool_registrations_total: pools as u64 + 1,
            ..PdStats::default()
        }
    );
    drop(acc);
}
