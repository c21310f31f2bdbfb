//! The NVMe/TCP TLS data path allocates nothing per I/O: a target-side `TlsChannel` (keys
//! set directly, as after a handshake) receives 1000 sealed 4 KiB data PDUs' worth of bytes
//! and sends each back through its in-place record layer, under a counting allocator.

use engine::alloc_count::{thread_allocations, CountingAllocator};
use nvme::nvmf::tls::TlsChannel;
use rdma_transport::tls::record::{self, RecordLayer, HEADER, OVERHEAD};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const MSG: usize = 4096 + 24;

fn layers() -> (RecordLayer, RecordLayer) {
    let (k1, i1, k2, i2) = ([1u8; 16], [2u8; 12], [3u8; 16], [4u8; 12]);
    let alg = &ring::aead::AES_128_GCM;
    (
        RecordLayer::from_keys(alg, (&k1, &i1), (&k2, &i2)).unwrap(),
        RecordLayer::from_keys(alg, (&k2, &i2), (&k1, &i1)).unwrap(),
    )
}

/// One round: the client seals and sends MSG bytes, the server channel reads them and
/// writes them back, the client opens the answer.
#[allow(clippy::too_many_arguments)]
fn round(
    client: &mut TcpStream,
    cl: &mut RecordLayer,
    server: &mut TcpStream,
    chan: &mut TlsChannel,
    out: &mut [u8],
    plain: &mut [u8],
    inbuf: &mut [u8],
    seed: u8,
) {
    out[HEADER..HEADER + MSG].fill(seed);
    let n = cl.seal(out, MSG).unwrap();
    client.write_all(&out[..n]).unwrap();
    let mut got = 0;
    let mut lookup = |_: &[u8]| -> nvme::nvmf::tls::server::PskAnswer { Err(String::new()) };
    while got < MSG {
        match chan.read(server, &mut plain[got..], &mut lookup) {
            Ok(0) => panic!("eof"),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let mut sent = 0;
    while sent < MSG {
        match chan.write(server, &plain[sent..MSG]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    while chan.pending_out() {
        chan.flush_out(server).unwrap();
    }
    let mut have = 0;
    let len = loop {
        if let Some(l) = record::peek_len(&inbuf[..have]).unwrap() {
            if have >= l {
                break l;
            }
        }
        have += client.read(&mut inbuf[have..]).unwrap();
    };
    assert_eq!(have, len);
    let (_, r) = cl.open(&mut inbuf[..len]).unwrap();
    assert_eq!(r.len(), MSG);
    assert!(inbuf[r].iter().all(|&b| b == seed));
}

#[test]
fn tls_channel_round_trips_allocate_nothing() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, peer) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let (srv, mut cl) = layers();
    let mut chan = TlsChannel::established_with(peer, srv);
    let mut out = vec![0u8; MSG + OVERHEAD];
    let mut plain = vec![0u8; 256 * 1024];
    let mut inbuf = vec![0u8; 64 * 1024];
    for i in 0..10 {
        round(
            &mut client,
            &mut cl,
            &mut server,
            &mut chan,
            &mut out,
            &mut plain,
            &mut inbuf,
            i,
        );
    }
    let before = thread_allocations();
    for i in 0..1000u32 {
        round(
            &mut client,
            &mut cl,
            &mut server,
            &mut chan,
            &mut out,
            &mut plain,
            &mut inbuf,
            i as u8,
        );
    }
    let n = thread_allocations() - before;
    assert_eq!(n, 0, "{n} allocations over 1000 TLS round trips");
}
