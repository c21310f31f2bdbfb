//! The TCP transport's steady state allocates nothing: a counting global allocator watches
//! 1000 write-frame / ack exchanges over loopback (both ends polled on this thread), in
//! plaintext and over TLS 1.3.

use std::time::{Duration, Instant};

use engine::alloc_count::{thread_allocations, CountingAllocator};
use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::tls::{pki, Role, TlsContext, TlsSettings};
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
    steady_state(None);
}

/// The same over TLS 1.3: the record layer seals and opens in place.
#[test]
fn steady_state_over_tls_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("baton-tls-alloc-{}", std::process::id()));
    let g = pki::generate(&dir, &["primary.a".into(), "relay.b".into()]).unwrap();
    let load = |i: usize, role| {
        let (_, cert, key) = &g.certs[i];
        TlsContext::load(
            &TlsSettings::Certs {
                ca: g.ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            role,
        )
        .unwrap()
    };
    let (p, r) = (load(0, Role::Primary), load(1, Role::Relay));
    steady_state(Some((p, r)));
    let _ = std::fs::remove_dir_all(&dir);
}

fn steady_state(tls: Option<(TlsContext, TlsContext)>) {
    let mut acc = TcpAcceptor::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default()).unwrap();
    let mut c = match &tls {
        Some((p, r)) => {
            acc.set_tls(Some((r.clone(), Role::Primary)));
            Conn::connect_tls(acc.local_addr(), TcpConfig::default(), p, Role::Relay).unwrap()
        }
        None => Conn::connect(acc.local_addr(), TcpConfig::default()).unwrap(),
    };
    let mut s: Option<Conn> = None;
    let start = Instant::now();
    while s.as_ref().is_none_or(|s| s.state() != ConnState::Open) || c.state() != ConnState::Open {
        assert!(start.elapsed() < Duration::from_secs(20));
        if s.is_none() {
            s = acc.poll_accept().unwrap().map(|(x, _)| x);
        }
        let _ = c.poll_send(&mut |_| {});
        let _ = c.poll_recv(&mut |_| {});
        if let Some(s) = s.as_mut() {
            let _ = s.poll_recv(&mut |_| {});
            let _ = s.poll_send(&mut |_| {});
        }
    }
    let mut s = s.unwrap();
    assert_eq!(c.is_tls(), tls.is_some());
    assert_eq!(s.is_tls(), tls.is_some());
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
