//! In-band authentication (DH-HMAC-CHAP) over loopback: a small in-test host drives the
//! target's NVMe/TCP queues byte by byte — Connect, Authentication Send / Receive, then
//! commands. A good key passes on the admin and an I/O queue (also bidirectionally), a wrong
//! key gets Failure1 and the connection ends, commands before authentication are refused
//! with Authentication Required, and the keyring / host-key RPCs round-trip through
//! save_config without ever showing key bytes.

mod common;

use common::*;
use nvme::nvmf::HostKeyNames;
use nvme::spec::auth::{self, parse_ctrl_msg, AuthCmd, CtrlMsg, Hash, Secret};
use nvme::spec::cmd::{admin_opc, io_opc, sgl_type};
use nvme::spec::fabrics::{fctype, ConnectCmd, ConnectData};
use nvme::spec::{put_str, Cqe, Plain, Sgl, Sqe, Status};
use nvme::tcp::pdu::{self, Pdu, PduKind, PduReceiver, RxEvent, RxLimits, Side, TxDigests};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:baton-auth-host";
const HOST_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const CTRL_KEY: &str = "DHHC-1:02:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKTvGwQfg==:";

/// A hand-driven NVMe/TCP host.
struct Raw {
    s: TcpStream,
    rx: PduReceiver,
    pending: Vec<u8>,
    cid: u16,
}

enum Got {
    Pdu(Pdu, Vec<u8>),
    Eof,
}

impl Raw {
    fn new(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let limits = RxLimits {
            in_capsule_data_bytes: 0,
            h2c_data_bytes: 0,
            c2h_data_bytes: 1 << 20,
        };
        let mut r = Raw {
            s,
            rx: PduReceiver::new(Side::Host, limits),
            pending: Vec::new(),
            cid: 1,
        };
        let mut b = Vec::new();
        pdu::encode_ic_req(&mut b, 0, false, false, 0);
        r.s.write_all(&b).unwrap();
        assert!(matches!(
            r.recv(),
            Got::Pdu(
                Pdu {
                    kind: PduKind::IcResp { .. },
                    ..
                },
                _
            )
        ));
        r.rx.set_digests(false, false);
        r
    }

    fn recv(&mut self) -> Got {
        let mut cur: Option<(Pdu, Vec<u8>)> = None;
        loop {
            while !self.pending.is_empty() || cur.is_some() {
                let (n, ev) = self.rx.advance(&self.pending).expect("target sent a malformed PDU");
                let ev = ev.map(|e| match e {
                    RxEvent::Header(p) => (Some(p), Vec::new(), false),
                    RxEvent::Data(d) => (None, d.to_vec(), false),
                    RxEvent::DataEnd { .. } => (None, Vec::new(), true),
                });
                self.pending.drain(..n);
                match ev {
                    None => break,
                    Some((Some(p), _, _)) if p.data_len == 0 => return Got::Pdu(p, Vec::new()),
                    Some((Some(p), _, _)) => cur = Some((p, Vec::new())),
                    Some((None, d, false)) => cur.as_mut().unwrap().1.extend_from_slice(&d),
                    Some((None, _, true)) => {
                        let (p, d) = cur.take().unwrap();
                        return Got::Pdu(p, d);
                    }
                }
            }
            let mut b = vec![0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return Got::Eof,
                Ok(n) => self.pending.extend_from_slice(&b[..n]),
            }
        }
    }

    /// Sends a command; returns its response and the C2H data that came before it.
    fn cmd(&mut self, mut sqe: Sqe, data: &[u8]) -> (Cqe, Vec<u8>) {
        self.try_cmd(&mut sqe, data)
            .expect("connection closed while waiting for a response")
    }

    fn try_cmd(&mut self, sqe: &mut Sqe, data: &[u8]) -> Option<(Cqe, Vec<u8>)> {
        self.cid += 1;
        sqe.cid = self.cid;
        let mut b = Vec::new();
        pdu::encode_capsule_cmd(&mut b, sqe, data, TxDigests::default());
        let _ = self.s.write_all(&b);
        let mut got = Vec::new();
        loop {
            match self.recv() {
                Got::Pdu(
                    Pdu {
                        kind: PduKind::CapsuleResp { cqe },
                        ..
                    },
                    _,
                ) => return Some((cqe, got)),
                Got::Pdu(
                    Pdu {
                        kind: PduKind::C2HData { .. },
                        ..
                    },
                    d,
                ) => got.extend_from_slice(&d),
                Got::Pdu(p, _) => panic!("unexpected PDU {p:?}"),
                Got::Eof => return None,
            }
        }
    }

    fn connect(&mut self, nqn: &str, qid: u16, cntlid: u16, kato_ms: u32) -> Cqe {
        let mut s = fabrics_sqe(fctype::CONNECT);
        ConnectCmd {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato_ms,
        }
        .to_sqe(&mut s);
        in_capsule(&mut s, 1024);
        let mut cd = ConnectData::zeroed();
        cd.cntlid = cntlid;
        put_str(&mut cd.subnqn, nqn, 0);
        put_str(&mut cd.hostnqn, HOST, 0);
        self.cmd(s, cd.as_bytes()).0
    }

    fn auth_send(&mut self, d: &[u8]) -> Status {
        let mut s = fabrics_sqe(fctype::AUTH_SEND);
        AuthCmd::dhchap(d.len() as u32).to_sqe(&mut s);
        in_capsule(&mut s, d.len() as u32);
        Status::from_field(self.cmd(s, d).0.status)
    }

    fn auth_recv(&mut self) -> Vec<u8> {
        let mut s = fabrics_sqe(fctype::AUTH_RECV);
        AuthCmd::dhchap(4096).to_sqe(&mut s);
        s.set_sgl_psdt();
        s.sgl = Sgl {
            addr: 0,
            length: 4096,
            rsvd: [0; 3],
            sgl_type: sgl_type::TRANSPORT_DATA_BLOCK,
        };
        let (cqe, d) = self.cmd(s, &[]);
        assert!(Status::from_field(cqe.status).is_success());
        d
    }

    /// Runs the DH-HMAC-CHAP transaction with `key` (and `ctrl` for bidirectional);
    /// returns the controller's last message.
    fn authenticate(&mut self, nqn: &str, key: &Secret, ctrl: Option<&Secret>, hashes: &[u8]) -> Vec<u8> {
        let tid = self.cid;
        assert!(self
            .auth_send(&auth::encode_negotiate(tid, hashes, &[0, 1, 2, 3, 4, 5]))
            .is_success());
        let ch = self.auth_recv();
        let (h, c1, s1) = match parse_ctrl_msg(&ch).unwrap() {
            CtrlMsg::Challenge {
                hash,
                challenge,
                seqnum,
                dhgroup,
                ..
            } => {
                assert_eq!(dhgroup, auth::dh_group::NULL);
                (Hash::from_id(hash).unwrap(), challenge.to_vec(), seqnum)
            }
            m => panic!("expected a challenge, got {m:?}"),
        };
        let r = auth::host_response(h, key, &c1, s1, tid, HOST, nqn);
        let c2 = vec![0x33u8; h.digest_len()];
        let reply = auth::encode_reply(tid, &r, ctrl.map(|_| (&c2[..], 77)));
        assert!(self.auth_send(&reply).is_success());
        let last = self.auth_recv();
        if let Some(kc) = ctrl {
            if let Ok(CtrlMsg::Success1 { response, .. }) = parse_ctrl_msg(&last) {
                let want = auth::ctrl_response(h, kc, &c2, 77, tid, HOST, nqn);
                assert_eq!(response, Some(&want[..]), "controller response");
                assert!(self.auth_send(&auth::encode_success2(tid)).is_success());
            }
        }
        last
    }

    /// Property Set CC.EN=1 (a command that needs an authenticated admin queue).
    fn enable(&mut self) -> Status {
        let mut s = fabrics_sqe(fctype::PROPERTY_SET);
        s.cdw10 = 0; // 4-byte property
        s.cdw11 = 0x14; // CC
        s.cdw12 = 0x0046_0001;
        Status::from_field(self.cmd(s, &[]).0.status)
    }

    fn flush(&mut self) -> Status {
        let s = raw_sqe(io_opc::FLUSH, 1);
        Status::from_field(self.cmd(s, &[]).0.status)
    }

    /// True when the target closes the connection within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        let t0 = Instant::now();
        self.s.set_read_timeout(Some(within)).unwrap();
        loop {
            match self.recv() {
                Got::Eof => return t0.elapsed() <= within + Duration::from_secs(1),
                Got::Pdu(..) if t0.elapsed() < within => continue,
                Got::Pdu(..) => return false,
            }
        }
    }
}

fn fabrics_sqe(fct: u8) -> Sqe {
    Sqe {
        opc: admin_opc::FABRICS,
        nsid: u32::from(fct),
        ..Sqe::default()
    }
}

fn in_capsule(s: &mut Sqe, len: u32) {
    s.set_sgl_psdt();
    s.sgl = Sgl {
        addr: 0,
        length: len,
        rsvd: [0; 3],
        sgl_type: sgl_type::DATA_BLOCK_OFFSET,
    };
}

/// Writes `secret` to a private key file and adds it to the target's keyring as `name`.
fn add_key(f: &Fixture, name: &str, secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("baton-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", f.nqn.rsplit(':').next().unwrap()));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = path.to_str().unwrap().to_string();
    f.target.keyring.add_file(name, &p).unwrap();
    p
}

fn auth_fixture(ctrl: bool) -> Fixture {
    let f = fixture_with(false);
    add_key(&f, "key0", HOST_KEY);
    add_key(&f, "ckey0", CTRL_KEY);
    f.target
        .add_host_keys(
            &f.nqn,
            HOST,
            Some(HostKeyNames {
                dhchap_key: "key0".into(),
                dhchap_ctrlr_key: ctrl.then(|| "ckey0".into()),
            }),
        )
        .unwrap();
    f
}

#[test]
fn good_key_authenticates_admin_and_io_queues() {
    let f = auth_fixture(false);
    let key = Secret::parse(HOST_KEY).unwrap();
    let mut a = Raw::new(f.addr);
    let c = a.connect(&f.nqn, 0, 0xFFFF, 0);
    assert!(Status::from_field(c.status).is_success());
    assert_ne!(
        c.dw0 & auth::CONNECT_AUTHREQ_ATR,
        0,
        "Connect must ask for authentication"
    );
    assert_eq!(c.dw0 & auth::CONNECT_AUTHREQ_ASCR, 0);
    let cntlid = c.dw0 as u16;
    // Before authentication: refused.
    assert_eq!(a.enable(), Status::AUTH_REQUIRED);
    let last = a.authenticate(&f.nqn, &key, None, &[1, 2, 3]);
    assert!(matches!(
        parse_ctrl_msg(&last).unwrap(),
        CtrlMsg::Success1 {
            hl: 64,
            response: None,
            ..
        }
    ));
    assert!(a.enable().is_success());
    // The I/O queue authenticates too (SHA-256 only this time).
    let mut q = Raw::new(f.addr);
    let c = q.connect(&f.nqn, 1, cntlid, 0);
    assert!(Status::from_field(c.status).is_success());
    assert_ne!(c.dw0 & auth::CONNECT_AUTHREQ_ATR, 0);
    assert_eq!(q.flush(), Status::AUTH_REQUIRED);
    let last = q.authenticate(&f.nqn, &key, None, &[1]);
    assert!(matches!(
        parse_ctrl_msg(&last).unwrap(),
        CtrlMsg::Success1 { hl: 32, .. }
    ));
    assert!(q.flush().is_success());
    // Re-authentication on an authenticated queue keeps it working.
    q.authenticate(&f.nqn, &key, None, &[2]);
    assert!(q.flush().is_success());
}

#[test]
fn bidirectional_authentication() {
    let f = auth_fixture(true);
    let mut a = Raw::new(f.addr);
    let c = a.connect(&f.nqn, 0, 0xFFFF, 0);
    assert_ne!(c.dw0 & auth::CONNECT_AUTHREQ_ATR, 0);
    let last = a.authenticate(
        &f.nqn,
        &Secret::parse(HOST_KEY).unwrap(),
        Some(&Secret::parse(CTRL_KEY).unwrap()),
        &[2],
    );
    assert!(matches!(
        parse_ctrl_msg(&last).unwrap(),
        CtrlMsg::Success1 { response: Some(_), .. }
    ));
    assert!(a.enable().is_success());
}

#[test]
fn wrong_key_gets_failure1_and_the_connection_ends() {
    let f = auth_fixture(false);
    let mut a = Raw::new(f.addr);
    a.connect(&f.nqn, 0, 0xFFFF, 0);
    let wrong = Secret {
        hash: 1,
        key: vec![0x55; 32],
    };
    let last = a.authenticate(&f.nqn, &wrong, None, &[1]);
    match parse_ctrl_msg(&last).unwrap() {
        CtrlMsg::Failure1 {
            reason, explanation, ..
        } => assert_eq!(
            (reason, explanation),
            (auth::failure::REASON_FAILED, auth::failure::FAILED)
        ),
        m => panic!("expected Failure1, got {m:?}"),
    }
    assert!(a.closed_within(Duration::from_secs(5)));
    // The target still serves: the right key works on a new connection.
    let mut b = Raw::new(f.addr);
    b.connect(&f.nqn, 0, 0xFFFF, 0);
    b.authenticate(&f.nqn, &Secret::parse(HOST_KEY).unwrap(), None, &[1]);
    assert!(b.enable().is_success());
}

#[test]
fn no_authentication_means_no_commands() {
    let f = auth_fixture(false);
    let mut a = Raw::new(f.addr);
    a.connect(&f.nqn, 0, 0xFFFF, 0);
    assert_eq!(a.enable(), Status::AUTH_REQUIRED);
    let mut s = raw_sqe(admin_opc::IDENTIFY, 0);
    s.cdw10 = 1;
    assert_eq!(Status::from_field(a.cmd(s, &[]).0.status), Status::AUTH_REQUIRED);
    // Receive where the negotiate should have been sent: Failure1, then the end.
    let d = a.auth_recv();
    assert!(matches!(parse_ctrl_msg(&d).unwrap(), CtrlMsg::Failure1 { .. }));
    assert!(a.closed_within(Duration::from_secs(5)));
    // A host that never authenticates is dropped at KATO.
    let mut b = Raw::new(f.addr);
    b.connect(&f.nqn, 0, 0xFFFF, 500);
    assert!(b.closed_within(Duration::from_secs(5)));
    // A host without keys (allowed through allow_any_host) is not asked to authenticate.
    f.target.allow_any_host(&f.nqn, true).unwrap();
    let mut c = Raw::new(f.addr);
    let mut s = fabrics_sqe(fctype::CONNECT);
    ConnectCmd {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 0,
    }
    .to_sqe(&mut s);
    in_capsule(&mut s, 1024);
    let mut cd = ConnectData::zeroed();
    cd.cntlid = 0xFFFF;
    put_str(&mut cd.subnqn, &f.nqn, 0);
    put_str(&mut cd.hostnqn, "nqn.2014-08.org.nvmexpress:uuid:other", 0);
    let r = c.cmd(s, cd.as_bytes()).0;
    assert_eq!(r.dw0 & auth::CONNECT_AUTHREQ_ATR, 0);
    assert!(c.enable().is_success());
}

#[test]
fn keyring_and_host_key_rpcs() {
    use nvme::rpc::*;
    let f = fixture_with(false);
    let path = add_key(&f, "k1", HOST_KEY);
    f.target.keyring.remove("k1").unwrap();
    // Through the RPC functions, as SPDK's rpc.py sends them.
    keyring_file_add_key(
        &f.target,
        AddKey {
            name: "k1".into(),
            path: path.clone(),
        },
    )
    .unwrap();
    let e = keyring_file_add_key(
        &f.target,
        AddKey {
            name: "k1".into(),
            path: path.clone(),
        },
    )
    .unwrap_err();
    assert!(e.message.contains("already exists"), "{}", e.message);
    let keys = serde_json::to_string(&keyring_get_keys(&f.target, None).unwrap()).unwrap();
    assert!(keys.contains("\"k1\"") && keys.contains(&path));
    assert!(!keys.contains("AAECAwQF"), "key bytes must never be listed");
    // A world-readable file is refused.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = keyring_file_add_key(
            &f.target,
            AddKey {
                name: "k2".into(),
                path: path.clone(),
            },
        )
        .unwrap_err();
        assert!(e.message.contains("0600"), "{}", e.message);
    }
    let host = |key: Option<&str>| HostParams {
        nqn: f.nqn.clone(),
        host: HOST.into(),
        dhchap_key: key.map(String::from),
        ..Default::default()
    };
    let e = nvmf_subsystem_add_host(&f.target, host(Some("nokey"))).unwrap_err();
    assert!(e.message.contains("nokey"), "{}", e.message);
    nvmf_subsystem_add_host(&f.target, host(Some("k1"))).unwrap();
    let cfg = serde_json::to_string(&config_entries(&f.target)).unwrap();
    assert!(cfg.contains("\"dhchap_key\":\"k1\""), "{cfg}");
    let kc = keyring_config_entries(&f.target);
    assert_eq!(kc[0].0, "keyring_file_add_key");
    assert_eq!(kc[0].1["name"], "k1");
    // Removing the key: the host must still authenticate, and fails.
    keyring_file_remove_key(&f.target, RemoveKey { name: "k1".into() }).unwrap();
    let mut a = Raw::new(f.addr);
    let c = a.connect(&f.nqn, 0, 0xFFFF, 0);
    assert_ne!(c.dw0 & auth::CONNECT_AUTHREQ_ATR, 0);
    assert!(a.auth_send(&auth::encode_negotiate(1, &[1], &[0])).is_success());
    let d = a.auth_recv();
    assert!(matches!(
        parse_ctrl_msg(&d).unwrap(),
        CtrlMsg::Failure1 {
            explanation: auth::failure::NOT_USABLE,
            ..
        }
    ));
    assert!(a.closed_within(Duration::from_secs(5)));
    nvmf_subsystem_remove_host(&f.target, host(None)).unwrap();
}
