//! TLS 1.3 on TCP replication links, over 127.0.0.1: frames of every size both ways,
//! and a refusal on both sides for every wrong credential (another CA, the wrong role,
//! another pre-shared key, no TLS at all). Every wait is bounded by a count of polls.

use std::path::{Path, PathBuf};

use rdma_transport::tcp::{TcpAcceptor, TcpConfig, TcpConnection};
use rdma_transport::tls::{pki, Role, TlsContext, TlsSettings};
use rdma_transport::wire::{self, Frame, Op};
use rdma_transport::{ConnState, Connection, OutFrame, TransportError};

type Conn = TcpConnection<Vec<u8>>;

/// Polls without progress allowed before a test gives up (each poll is non-blocking).
const POLLS: usize = 2_000_000;

struct Pki {
    dir: PathBuf,
    g: pki::Generated,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("baton-tls-{tag}-{}", std::process::id()));
        let g = pki::generate(
            &dir,
            &["primary.tokyo".into(), "relay.osaka".into(), "standby.osaka".into()],
        )
        .unwrap();
        Self { dir, g }
    }
    fn ctx(&self, name: &str, role: Role) -> TlsContext {
        let (_, cert, key) = self.g.certs.iter().find(|c| c.0 == name).unwrap();
        TlsContext::load(
            &TlsSettings::Certs {
                ca: self.g.ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            role,
        )
        .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn psk(dir: &Path, name: &str, role: Role) -> TlsContext {
    let f = dir.join(name);
    if !f.exists() {
        std::fs::create_dir_all(dir).unwrap();
        pki::generate_psk(&f).unwrap();
    }
    TlsContext::load(&TlsSettings::Psk { key_file: f }, role).unwrap()
}

/// What each end of a connection attempt ended with.
struct Outcome {
    client: Result<Conn, TransportError>,
    server: Result<Conn, TransportError>,
}

/// Connects `client` (expecting `expect_server`) to a listener using `server` (expecting
/// `expect_client`), polling both until both are open or both failed.
fn attempt(client: Option<(&TlsContext, Role)>, server: Option<(&TlsContext, Role)>) -> Outcome {
    let mut acc = TcpAcceptor::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default()).unwrap();
    acc.set_tls(server.map(|(c, r)| (c.clone(), r)));
    let mut c = match client {
        Some((ctx, r)) => Conn::connect_tls(acc.local_addr(), TcpConfig::default(), ctx, r).unwrap(),
        None => Conn::connect(acc.local_addr(), TcpConfig::default()).unwrap(),
    };
    if client.is_none() {
        let hello = wire::encode_ack(&wire::Ack {
            durable_lsn: 0,
            frame_lsn_first: 0,
            frame_lsn_last: 0,
            generation: 1,
        });
        c.send(OutFrame::control(hello, 0)).unwrap();
    }
    let mut s: Option<Conn> = None;
    let (mut cerr, mut serr) = (None, None);
    for _ in 0..POLLS {
        if s.is_none() {
            s = acc.poll_accept().unwrap().map(|(x, _)| x);
        }
        if cerr.is_none() {
            if let Err(e) = c.poll_send(&mut |_| {}).and_then(|_| c.poll_recv(&mut |_| {})) {
                cerr = Some(e);
            }
        }
        if let (Some(sc), None) = (s.as_mut(), &serr) {
            if let Err(e) = sc.poll_recv(&mut |_| {}).and_then(|_| sc.poll_send(&mut |_| {})) {
                serr = Some(e);
            }
        }
        let open = |x: &Conn| x.state() == ConnState::Open;
        let done_c = cerr.is_some() || open(&c);
        let done_s = serr.is_some() || s.as_ref().is_some_and(open);
        // A client whose certificate is refused learns it from the server's alert, which
        // arrives after its own handshake is done: keep polling it until the alert lands.
        if done_c && done_s && (cerr.is_some() == serr.is_some() || client.is_none() || server.is_none()) {
            break;
        }
        if done_s && serr.is_some() && open(&c) {
            // Send a frame so the client reads (and reports) the server's alert.
            let _ = c.send(OutFrame::control(
                wire::encode_ack(&wire::Ack {
                    durable_lsn: 0,
                    frame_lsn_first: 0,
                    frame_lsn_last: 0,
                    generation: 1,
                }),
                0,
            ));
        }
    }
    Outcome {
        client: cerr.map_or(Ok(c), Err),
        server: match (serr, s) {
            (Some(e), _) => Err(e),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(TransportError::Closed),
        },
    }
}

fn refused_both(o: Outcome, what: &str) -> (String, String) {
    let c = o
        .client
        .err()
        .unwrap_or_else(|| panic!("{what}: client was not refused"));
    let s = o
        .server
        .err()
        .unwrap_or_else(|| panic!("{what}: server was not refused"));
    (c.to_string(), s.to_string())
}

#[test]
fn frames_of_every_size_cross_both_ways() {
    let k = Pki::new("sizes");
    let (p, r) = (k.ctx("primary.tokyo", Role::Primary), k.ctx("relay.osaka", Role::Relay));
    let o = attempt(Some((&p, Role::Relay)), Some((&r, Role::Primary)));
    let (mut c, mut s) = (o.client.unwrap(), o.server.unwrap());
    assert!(c.is_tls() && s.is_tls());
    // 1 block to 64 blocks: records of 16 KiB split frames, small frames share records.
    let sizes = [1u32, 3, 4, 5, 16, 64, 1, 1, 2];
    let mut want = Vec::new();
    for (i, &blocks) in sizes.iter().enumerate() {
        let lsn = i as u64 + 1;
        let data = vec![lsn as u8; blocks as usize * 4096];
        let mut e = wire::BatchEncoder::ops(1, 4096);
        e.write(lsn, lsn * 64, blocks, data.len()).unwrap();
        let mut f = OutFrame::control(e.finish(&[&data]).unwrap(), lsn);
        f.data.push(data);
        c.send(f).unwrap();
        want.push((lsn, blocks));
    }
    let mut got = Vec::new();
    let mut acks = 0;
    for _ in 0..POLLS {
        c.poll_send(&mut |_| {}).unwrap();
        s.poll_recv(&mut |f| {
            if let Frame::Ops(b) = f {
                for op in &b.ops {
                    if let Op::Write { lsn, data, .. } = *op {
                        assert!(data.iter().all(|&x| x == lsn as u8), "payload of lsn {lsn}");
                        got.push((lsn, (data.len() / 4096) as u32));
                    }
                }
            }
        })
        .unwrap();
        while acks < got.len() {
            let lsn = got[acks].0;
            let ack = wire::encode_ack(&wire::Ack {
                durable_lsn: lsn,
                frame_lsn_first: lsn,
                frame_lsn_last: lsn,
                generation: 1,
            });
            s.send(OutFrame::control(ack, lsn)).unwrap();
            acks += 1;
        }
        s.poll_send(&mut |_| {}).unwrap();
        let mut acked = 0;
        c.poll_recv(&mut |f| {
            if let Frame::Ack(a) = f {
                acked = a.durable_lsn;
            }
        })
        .unwrap();
        if acked == sizes.len() as u64 {
            break;
        }
    }
    assert_eq!(got, want);
}

#[test]
fn a_certificate_from_another_ca_is_refused_on_both_sides() {
    let (k, other) = (Pki::new("ca1"), Pki::new("ca2"));
    let p = other.ctx("primary.tokyo", Role::Primary);
    let r = k.ctx("relay.osaka", Role::Relay);
    let (c, s) = refused_both(attempt(Some((&p, Role::Relay)), Some((&r, Role::Primary))), "other CA");
    assert!(c.contains("TLS"), "client: {c}");
    assert!(s.contains("TLS handshake failed"), "server: {s}");
}

#[test]
fn the_wrong_role_is_refused_on_both_sides() {
    let k = Pki::new("role");
    // A standby's certificate cannot open a primary's stream at a relay.
    let st = k.ctx("standby.osaka", Role::Standby);
    let r = k.ctx("relay.osaka", Role::Relay);
    let (c, s) = refused_both(attempt(Some((&st, Role::Relay)), Some((&r, Role::Primary))), "role");
    assert!(s.contains("accepts a primary"), "server: {s}");
    assert!(c.contains("TLS"), "client: {c}");
    // A primary that reaches a standby where it expected a relay refuses it itself.
    let p = k.ctx("primary.tokyo", Role::Primary);
    let (c, s) = refused_both(
        attempt(Some((&p, Role::Relay)), Some((&st, Role::Primary))),
        "server role",
    );
    assert!(c.contains("accepts a relay"), "client: {c}");
    assert!(s.contains("TLS"), "server: {s}");
}

#[test]
fn psk_links_open_with_the_same_key_only() {
    let dir = std::env::temp_dir().join(format!("baton-tls-psk-{}", std::process::id()));
    let a = psk(&dir, "k1", Role::Primary);
    let b = psk(&dir, "k1", Role::Relay);
    let o = attempt(Some((&a, Role::Relay)), Some((&b, Role::Primary)));
    assert!(o.client.is_ok() && o.server.is_ok());
    let other = psk(&dir, "k2", Role::Relay);
    let (c, s) = refused_both(attempt(Some((&a, Role::Relay)), Some((&other, Role::Primary))), "psk");
    assert!(c.contains("pre-shared-key"), "client: {c}");
    assert!(s.contains("TLS"), "server: {s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plaintext_and_tls_do_not_mix() {
    let k = Pki::new("plain");
    let r = k.ctx("relay.osaka", Role::Relay);
    let p = k.ctx("primary.tokyo", Role::Primary);
    // A plaintext primary at a TLS relay: the relay sees no TLS record.
    let o = attempt(None, Some((&r, Role::Primary)));
    let e = o.server.err().expect("TLS listener accepted plaintext").to_string();
    assert!(e.contains("not TLS"), "{e}");
    // A TLS primary at a plaintext relay: the primary gets no TLS answer.
    let o = attempt(Some((&p, Role::Relay)), None);
    assert!(o.client.is_err() || o.client.as_ref().is_ok_and(|c| c.state() != ConnState::Open));
}

#[test]
fn own_certificate_must_name_the_process_role() {
    let k = Pki::new("own");
    let (_, cert, key) = k.g.certs.iter().find(|c| c.0 == "relay.osaka").unwrap();
    let e = TlsContext::load(
        &TlsSettings::Certs {
            ca: k.g.ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
        Role::Primary,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("primary"), "{e}");
    let short = k.dir.join("short.key");
    std::fs::write(&short, b"too short").unwrap();
    let e = TlsContext::load(&TlsSettings::Psk { key_file: short }, Role::Relay)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 32"), "{e}");
}
