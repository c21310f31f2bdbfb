//! Micro-benchmark (ignored by default): busy-polled TCP transport ping-pong of a 4 KiB write
//! frame and its Ack over loopback, beside raw non-blocking sockets doing the same exchange
//! in the same run, so the transport's cost is a ratio to this machine's limit.
//!
//! `cargo test --release -p baton-rdma-transport --test bench -- --ignored --nocapture`

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use engine::clock::now_ns;
use engine::metrics::LatencyHistogram;
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::wire::{self, Frame};
use rdma_transport::{Connection, OutFrame};

const ROUNDS: usize = 20_000;
const WARMUP: usize = 2_000;

fn spin_read(s: &mut TcpStream, buf: &mut [u8]) {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => panic!("peer closed"),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn spin_write(s: &mut TcpStream, buf: &[u8]) {
    let mut at = 0;
    while at < buf.len() {
        match s.write(&buf[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Raw sockets: client writes `req` bytes, server answers `resp` bytes; both spin.
fn raw_round_trip(req: usize, resp: usize) -> LatencyHistogram {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut inb = vec![0u8; req];
        let out = vec![1u8; resp];
        for _ in 0..ROUNDS + WARMUP {
            spin_read(&mut s, &mut inb);
            spin_write(&mut s, &out);
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_nonblocking(true).unwrap();
    let out = vec![2u8; req];
    let mut inb = vec![0u8; resp];
    let mut h = LatencyHistogram::new();
    for i in 0..ROUNDS + WARMUP {
        let t = now_ns();
        spin_write(&mut c, &out);
        spin_read(&mut c, &mut inb);
        if i >= WARMUP {
            h.record_ns(now_ns() - t);
        }
    }
    server.join().unwrap();
    h
}

/// The transport: primary sends an Ops frame with one 4 KiB write, relay answers with an Ack.
fn transport_round_trip() -> LatencyHistogram {
    let acc = TcpAcceptor::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap(), TcpConfig::default()).unwrap();
    let addr = acc.local_addr();
    let server = std::thread::spawn(move || {
        let mut conn: TcpConnection<Vec<u8>> = loop {
            if let Some((c, _)) = acc.poll_accept().unwrap() {
                break c;
            }
        };
        let mut served = 0;
        while served < ROUNDS + WARMUP {
            let mut acks = [0u64; 64];
            let mut n = 0;
            conn.poll_recv(&mut |f| {
                if let Frame::Ops(b) = f {
                    acks[n] = b.lsn_last().unwrap_or(0);
                    n += 1;
                }
            })
            .unwrap();
            for &lsn in &acks[..n] {
                let ack = wire::encode_ack(&wire::Ack {
                    durable_lsn: lsn,
                    frame_lsn_first: lsn,
                    frame_lsn_last: lsn,
                    generation: 1,
                });
                conn.send(OutFrame::control(ack, lsn)).unwrap();
                served += 1;
            }
            conn.poll_send(&mut |_| {}).unwrap();
        }
        // Let the last ack drain.
        while conn.poll_send(&mut |_| {}).is_ok_and(|n| n > 0) {}
        conn
    });
    let mut c: TcpConnection<Vec<u8>> = TcpConnection::connect(addr, TcpConfig::default()).unwrap();
    let mut buf = Some(vec![0x5Au8; 4096]);
    let mut h = LatencyHistogram::new();
    for i in 0..ROUNDS + WARMUP {
        let lsn = i as u64 + 1;
        let data = buf.take().expect("buffer back from the previous round");
        let mut e = wire::BatchEncoder::ops(1, 4096);
        e.write(lsn, lsn % 1000, 1, data.len()).unwrap();
        let header = e.finish(&[&data]).unwrap();
        let mut f = OutFrame::control(header, lsn);
        f.data.push(data);
        let t = now_ns();
        c.send(f).unwrap();
        let mut acked = false;
        while !acked || buf.is_none() {
            c.poll_send(&mut |mut done| buf = done.data.pop()).unwrap();
            c.poll_recv(&mut |f| {
                if let Frame::Ack(a) = f {
                    acked = a.durable_lsn == lsn;
                }
            })
            .unwrap();
        }
        if i >= WARMUP {
            h.record_ns(now_ns() - t);
        }
    }
    drop(server.join().unwrap());
    h
}

fn line(name: &str, h: &LatencyHistogram) {
    println!(
        "{name:<44} p50 {:>7.2} us  p99 {:>7.2} us  mean {:>7.2} us",
        h.percentile_us(50.0),
        h.percentile_us(99.0),
        h.mean_us()
    );
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, ideally --release"]
fn bench_tcp_transport_round_trip() {
    let raw_echo = raw_round_trip(4096, 4096);
    let frame_len = 16 + 16 + 32 + 4096;
    let raw_same = raw_round_trip(frame_len, 48);
    let ours = transport_round_trip();
    println!("TCP loopback round trips, busy-polled, {ROUNDS} rounds each:");
    line("raw sockets, 4 KiB each way (BENCHMARKS.md row)", &raw_echo);
    line("raw sockets, 4160 B -> 48 B (same bytes as ours)", &raw_same);
    line("transport: 4 KiB write frame -> Ack", &ours);
    println!(
        "ratio transport / raw same bytes: p50 {:.2}x; transport / raw 4 KiB echo: p50 {:.2}x",
        ours.percentile_us(50.0) / raw_same.percentile_us(50.0),
        ours.percentile_us(50.0) / raw_echo.percentile_us(50.0)
    );
}
