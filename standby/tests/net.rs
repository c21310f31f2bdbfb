//! The network side of the standby (`standby::net`) against hand-driven relays over
//! loopback TCP: handshake and resume LSN, SafeUpTo to every relay, gap requests for a
//! hole, a bad frame and a mid-frame disconnect closing only their own link, a
//! reconnect resuming where the standby is, and the refusals (unknown volume, stale
//! generation, wrong block size, wrong role). Every read has a timeout.

use engine::reactor::{IdleMode, ReactorOpts, Reactors};
use engine::rpc::Registry;
use rdma_transport::wire::{
    self, BatchEncoder, Frame, GapStatus, Hello, HelloReply, RefuseReason, Role, ENVELOPE_BYTES,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const BS: u32 = 512;
const ID: [u8; 16] = [5; 16];
const VOL: &str = "n_vol";

fn call(reg: &Registry, m: &str, p: Value) -> Value {
    reg.call_blocking(m, Some(p), 100_000, Duration::from_micros(100))
        .unwrap_or_else(|e| panic!("{m}: {e:?}"))
}

/// A hand-driven relay.
struct FakeRelay {
    s: TcpStream,
}

impl FakeRelay {
    fn connect(
        addr: SocketAddr,
        volume: &str,
        generation: u64,
        block_size: u32,
        role: Role,
    ) -> (FakeRelay, HelloReply) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let h = Hello {
            role,
            block_size,
            volume_id: ID,
            volume_name: volume,
            generation,
            resume_lsn: 1,
            frame_bytes_max: wire::FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        };
        s.write_all(wire::encode_hello(&h).unwrap().as_bytes()).unwrap();
        let mut r = FakeRelay { s };
        let buf = r.read_frame().expect("a HelloReply");
        let reply = match wire::parse(&buf).unwrap() {
            Frame::HelloReply(x) => x,
            f => panic!("expected a HelloReply, got {f:?}"),
        };
        (r, reply)
    }

    /// One whole frame, or `None` when the standby closed the connection.
    fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut env = [0u8; ENVELOPE_BYTES];
        match self.s.read_exact(&mut env) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
        let e = wire::peek_envelope(&env).unwrap().unwrap();
        let mut buf = env.to_vec();
        buf.resize(e.frame_len, 0);
        self.s.read_exact(&mut buf[ENVELOPE_BYTES..]).unwrap();
        Some(buf)
    }

    /// Reads frames until `pred` matches one (bounded by the read timeout).
    fn until(&mut self, what: &str, mut pred: impl FnMut(&Frame<'_>) -> bool) {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: not seen");
            let buf = self
                .read_frame()
                .unwrap_or_else(|| panic!("{what}: standby closed the link"));
            if pred(&wire::parse(&buf).unwrap()) {
                return;
            }
        }
    }

    /// Forward (or GapReply when `gap` is Some(request_id)) of writes at `lsns` (block
    /// lsn % 8, filled with the LSN's low byte) and, if `rp` = (lsn, epoch, last_lsn), a
    /// restart point.
    fn frame(lsns: &[u64], rp: Option<(u64, u64, u64)>, gap: Option<u64>) -> Vec<u8> {
        let mut enc = match gap {
            Some(id) => BatchEncoder::gap_reply(id, GapStatus::Complete, 1, BS),
            None => BatchEncoder::forward(1, BS),
        };
        let mut data = Vec::new();
        for &l in lsns {
            enc.write(l, l % 8, 1, BS as usize).unwrap();
            data.extend(std::iter::repeat_n(l as u8, BS as usize));
        }
        if let Some((lsn, epoch, last)) = rp {
            enc.restart_point(lsn, epoch, last, 0).unwrap();
        }
        let h = enc.finish(&[&data]).unwrap();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&data);
        out
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn until_safe(&mut self, lsn: u64) {
        self.until(
            &format!("SafeUpTo {lsn}"),
            |f| matches!(f, Frame::SafeUpTo(s) if s.lsn >= lsn),
        );
    }
}

fn accepted_resume(r: &HelloReply) -> u64 {
    match *r {
        HelloReply::Accepted { resume_lsn, .. } => resume_lsn,
        r => panic!("expected acceptance, got {r:?}"),
    }
}

fn refusal(r: &HelloReply) -> RefuseReason {
    match *r {
        HelloReply::Refused { reason, .. } => reason,
        r => panic!("expected a refusal, got {r:?}"),
    }
}

fn links(reg: &Registry) -> Vec<Value> {
    let st = call(reg, "standby_get_status", json!({"name": VOL}));
    st[0]["links"].as_array().cloned().unwrap_or_default()
}

fn wait_links(reg: &Registry, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let start = Instant::now();
    loop {
        let l = links(reg);
        if pred(&l) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: links {l:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn relay_links_handshake_safe_gaps_bad_frames_reconnect() {
    let _r = Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle: IdleMode::Poll,
    })
    .unwrap();
    let mut reg = Registry::new();
    engine::rpc::methods::register_rpcs(&mut reg);
    standby::rpc::register_rpcs(&mut reg);
    for (n, b) in [("n_v", 64), ("n_s", 512)] {
        call(
            &reg,
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": b, "block_size": BS}),
        );
    }
    call(
        &reg,
        "standby_create",
        json!({"name": VOL, "mode": "delayed", "volume_bdev": "n_v", "staging_bdev": "n_s"}),
    );
    let net = standby::net::StandbyNet::start(standby::net::NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        listen_rdma: None,
        core: None,
    })
    .unwrap();
    let addr = net.listen_addr();

    // Refusals: unknown volume, wrong role, wrong block size.
    let (_, r) = FakeRelay::connect(addr, "nosuch", 1, BS, Role::Relay);
    assert_eq!(refusal(&r), RefuseReason::UnknownVolume);
    let (_, r) = FakeRelay::connect(addr, VOL, 1, BS, Role::Primary);
    assert_eq!(refusal(&r), RefuseReason::Role);
    let (_, r) = FakeRelay::connect(addr, VOL, 1, 4096, Role::Relay);
    assert_eq!(refusal(&r), RefuseReason::UnknownVolume);

    // Two relays; epoch 1 from the first; both learn it is safe.
    let (mut a, r) = FakeRelay::connect(addr, VOL, 1, BS, Role::Relay);
    assert_eq!(accepted_resume(&r), 1);
    let (mut b, r) = FakeRelay::connect(addr, VOL, 1, BS, Role::Relay);
    assert_eq!(accepted_resume(&r), 1);
    a.send(&FakeRelay::frame(&[1, 2, 3], Some((4, 1, 3)), None));
    a.until_safe(4);
    b.until_safe(4);

    // A corrupt frame closes b's link only.
    let mut bad = FakeRelay::frame(&[5], None, None);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    b.send(&bad);
    let start = Instant::now();
    while b.read_frame().is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "b's link not closed");
    }
    wait_links(&reg, "b closed with a CRC error", |l| {
        l.iter()
            .any(|x| x["connected"] == false && x["last_error"].as_str().unwrap_or("").contains("CRC"))
    });

    // A relay that dies mid-frame: its link closes with that reason.
    let (mut c, r) = FakeRelay::connect(addr, VOL, 1, BS, Role::Relay);
    assert_eq!(accepted_resume(&r), 5);
    let f = FakeRelay::frame(&[5, 6], None, None);
    c.send(&f[..f.len() / 2]);
    drop(c);
    wait_links(&reg, "c closed mid-frame", |l| {
        l.iter()
            .any(|x| x["connected"] == false && x["last_error"].as_str().unwrap_or("").contains("mid-frame"))
    });

    // a still works: epoch 2.
    a.send(&FakeRelay::frame(&[5, 6], Some((7, 2, 6)), None));
    a.until_safe(7);

    // A hole (8, 9 missing): the standby asks for it, the answer fills it.
    a.send(&FakeRelay::frame(&[10, 11], Some((12, 3, 11)), None));
    let mut req = None;
    a.until("GapRequest for 8..=9", |f| match f {
        Frame::GapRequest(g) if g.lsn_first == 8 && g.lsn_last >= 9 => {
            req = Some(g.request_id);
            true
        }
        _ => false,
    });
    a.send(&FakeRelay::frame(&[8, 9], None, req));
    a.until_safe(12);

    // A reconnect resumes where the standby is.
    drop(a);
    wait_links(&reg, "a closed", |l| l.iter().all(|x| x["connected"] == false));
    let (mut a, r) = FakeRelay::connect(addr, VOL, 1, BS, Role::Relay);
    assert_eq!(accepted_resume(&r), 13);
    // Resending what the standby holds is harmless (duplicates), new ops go on.
    a.send(&FakeRelay::frame(&[10, 11], Some((12, 3, 11)), None));
    a.send(&FakeRelay::frame(&[13], Some((14, 4, 13)), None));
    a.until_safe(14);
    let start = Instant::now();
    while standby::registry::with_standby(VOL, |v| v.applied().0).unwrap() < 4 {
        assert!(start.elapsed() < Duration::from_secs(20), "epoch 4 not applied");
        std::thread::sleep(Duration::from_millis(5));
    }
    let dups = standby::registry::with_standby(VOL, |v| v.status().duplicates).unwrap();
    assert!(dups >= 3, "the resent ops were counted as duplicates: {dups}");

    // A newer generation is adopted; from then on the older one is refused.
    let (mut d, r) = FakeRelay::connect(addr, VOL, 2, BS, Role::Relay);
    assert_eq!(accepted_resume(&r), 15);
    let mut enc = BatchEncoder::forward(2, BS);
    enc.restart_point(15, 5, 14, 0).unwrap();
    d.send(enc.finish(&[]).unwrap().as_bytes());
    d.until_safe(15);
    let (_, r) = FakeRelay::connect(addr, VOL, 1, BS, Role::Relay);
    assert_eq!(refusal(&r), RefuseReason::StaleGeneration);
    // And the old-generation link still open is cut at its next batch.
    a.send(&FakeRelay::frame(&[16], None, None));
    let start = Instant::now();
    while a.read_frame().is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "stale link not closed");
    }
    wait_links(&reg, "a fenced", |l| {
        l.iter()
            .any(|x| x["connected"] == false && x["last_error"].as_str().unwrap_or("").contains("fenced"))
    });
}
