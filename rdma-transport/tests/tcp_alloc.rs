//! The TCP transport's steady state allocates nothing: a counting global allocator watches
//! 1000 write-frame / ack exchanges over loopback (both ends polled on this thread).

use std::time::{Duration, Instant};

use engine::alloc_count::{thread_allocations, CountingAllocator};
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::wire::{self, Frame};
use rdma_transport::{ConnState, Connection, OutFrame};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

type Conn = TcpConnection<Vec<u8>>;

fn exchange(c: &mut Conn, s: &mut Conn, lsn: u64, buf: &mut Option<Vec<u8>>) {
    let data = buf.take().expect("buffer returned by the previous round");
    let mut e = wire::BatchEncoder::ops(1, 4096);
    e.write(lsn, lsn, 1, data.len()).unwrap();
    let mut f = OutFrame::control(e.finish(&[&data]).unwrap(), lsn);
    f.data.push(data);
    c.send(f).unwrap();
    let start = Instant::now();
    let mut acked = false;
    while !acked || buf.is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "exchange {lsn} stuck");
        c.poll_send(&mut |mut d| *buf = d.data.pop()).unwrap();
        let mut got = 0;
        s.poll_recv(&mut |f| {
            if let Frame::Ops(b) = f {
                got = b.lsn_last().unwrap_or(0);
            }
        })
        .unwrap();
        if got != 0 {
            let ack = wire::encode_ack(&wire::Ack {
                durable_lsn: got,
                frame_lsn_first: got,
                frame_lsn_last: got,
                generation: 1,
            });
            s.send(OutFrame::control(ack, got)).unwrap();
        }
        s.poll_send(&mut |_| {}).unwrap();
        c.poll_recv(&mut |f| {
            if let Frame::Ack(a) = f {
                acked |= a.durable_lsn == lsn;
            }
        })
        .unwrap();
    }
}

#[test]
fn steady_state_send_and_receive_allocate_nothing() {
    let acc = TcpAcceptor::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default()).unwrap();
    let mut c = Conn::connect(acc.local_addr(), TcpConfig::default()).unwrap();
    let mut s = None;
    let start = Instant::now();
    while s.is_none() || c.state() != ConnState::Open {
        assert!(start.elapsed() < Duration::from_secs(20));
        if s.is_none() {
            s = acc.poll_accept().unwrap().map(|(x, _)| x);
        }
        let _ = c.poll_send(&mut |_| {});
    }
    let mut s = s.unwrap();
    let mut buf = Some(vec![7u8; 4096]);
    for lsn in 1..=100 {
        exchange(&mut c, &mut s, lsn, &mut buf);
    }
    // The counter itself works: one allocation is seen.
    let before = thread_allocations();
    drop(std::hint::black_box(Box::new(5u64)));
    assert_eq!(thread_allocations() - before, 1);
    let before = thread_allocations();
    for lsn in 101..=1100 {
        exchange(&mut c, &mut s, lsn, &mut buf);
    }
    assert_eq!(
        thread_allocations() - before,
        0,
        "allocations in 1000 steady-state exchanges"
    );
    assert_eq!(c.stats().frames_sent, 1100);
}
