//! The controller's DH-HMAC-CHAP transaction driven message by message, and random
//! Authentication Send payloads that must never panic.

use super::*;
use crate::spec::auth::{parse_ctrl_msg, CtrlMsg};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:baton-test-host";
const SUB: &str = "nqn.2016-06.io.baton:auth";

fn key(hash: u8, fill: u8, n: usize) -> Arc<Secret> {
    Arc::new(Secret {
        hash,
        key: vec![fill; n],
    })
}

fn keys(ctrl: bool) -> HostKeys {
    HostKeys {
        host: key(1, 7, 32),
        ctrl: ctrl.then(|| key(2, 9, 48)),
    }
}

const SEND: AuthCmd = AuthCmd {
    secp: auth::SECP_DHCHAP,
    spsp0: auth::SPSP0,
    spsp1: auth::SPSP1,
    len: 0,
};

fn send(s: &mut Session, d: &[u8]) -> (Status, Outcome) {
    s.send(
        &AuthCmd {
            len: d.len() as u32,
            ..SEND
        },
        d,
    )
}

fn recv(s: &mut Session) -> (Vec<u8>, Outcome) {
    let (st, d, o) = s.recv(&AuthCmd { len: 4096, ..SEND });
    assert_eq!(st, Status::SUCCESS);
    (d, o)
}

/// Runs negotiate + challenge; returns (hash, c1, s1).
fn start(s: &mut Session, tid: u16, hashes: &[u8]) -> (Hash, Vec<u8>, u32) {
    assert_eq!(
        send(s, &auth::encode_negotiate(tid, hashes, &[0, 1, 2])),
        (Status::SUCCESS, Outcome::Pending)
    );
    let (d, o) = recv(s);
    assert_eq!(o, Outcome::Pending);
    match parse_ctrl_msg(&d).unwrap() {
        CtrlMsg::Challenge {
            tid: t,
            hash,
            dhgroup,
            seqnum,
            challenge,
            dhv,
        } => {
            assert_eq!((t, dhgroup, dhv.len()), (tid, 0, 0));
            let h = Hash::from_id(hash).unwrap();
            assert_eq!(challenge.len(), h.digest_len());
            (h, challenge.to_vec(), seqnum)
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn unidirectional_success_with_each_hash() {
    for (id, h) in [(1, Hash::Sha256), (2, Hash::Sha384), (3, Hash::Sha512)] {
        let k = keys(false);
        let mut s = Session::new(Some(k.clone()), HOST, SUB);
        let (got, c1, s1) = start(&mut s, 5, &[id]);
        assert_eq!(got, h);
        let r = auth::host_response(h, &k.host, &c1, s1, 5, HOST, SUB);
        assert_eq!(send(&mut s, &auth::encode_reply(5, &r, None)).1, Outcome::Pending);
        let (d, o) = recv(&mut s);
        assert_eq!(o, Outcome::Authenticated);
        assert_eq!(
            parse_ctrl_msg(&d).unwrap(),
            CtrlMsg::Success1 {
                tid: 5,
                hl: h.digest_len() as u8,
                response: None
            }
        );
        assert!(s.authenticated());
    }
    // The strongest offered hash is chosen.
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    assert_eq!(start(&mut s, 1, &[1, 3, 2, 9]).0, Hash::Sha512);
}

#[test]
fn bidirectional_success() {
    let k = keys(true);
    let mut s = Session::new(Some(k.clone()), HOST, SUB);
    let (h, c1, s1) = start(&mut s, 2, &[1]);
    let r = auth::host_response(h, &k.host, &c1, s1, 2, HOST, SUB);
    let c2 = [0x5Au8; 32];
    send(&mut s, &auth::encode_reply(2, &r, Some((&c2, 42))));
    let (d, o) = recv(&mut s);
    assert_eq!(o, Outcome::Pending);
    let want = auth::ctrl_response(h, k.ctrl.as_ref().unwrap(), &c2, 42, 2, HOST, SUB);
    assert_eq!(
        parse_ctrl_msg(&d).unwrap(),
        CtrlMsg::Success1 {
            tid: 2,
            hl: 32,
            response: Some(&want[..])
        }
    );
    assert_eq!(send(&mut s, &auth::encode_success2(2)).1, Outcome::Authenticated);
}

fn expect_failure1(s: &mut Session, explanation: u8) {
    let (d, o) = recv(s);
    assert_eq!(o, Outcome::Failed);
    match parse_ctrl_msg(&d).unwrap() {
        CtrlMsg::Failure1 {
            reason, explanation: e, ..
        } => assert_eq!((reason, e), (failure::REASON_FAILED, explanation)),
        m => panic!("{m:?}"),
    }
}

#[test]
fn wrong_key_gets_failure1() {
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    let (h, c1, s1) = start(&mut s, 1, &[1]);
    let r = auth::host_response(h, &key(1, 8, 32), &c1, s1, 1, HOST, SUB);
    send(&mut s, &auth::encode_reply(1, &r, None));
    expect_failure1(&mut s, failure::FAILED);
}

#[test]
fn protocol_errors_get_failure1() {
    // Missing reply: receive where the reply should have come.
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    start(&mut s, 1, &[1]);
    expect_failure1(&mut s, failure::INCORRECT_PROTOCOL);
    // Wrong transaction ID in the reply.
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    let (h, c1, s1) = start(&mut s, 1, &[1]);
    let r = auth::host_response(h, &keys(false).host, &c1, s1, 1, HOST, SUB);
    send(&mut s, &auth::encode_reply(2, &r, None));
    expect_failure1(&mut s, failure::INCORRECT_PAYLOAD);
    // Reply before negotiate.
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    send(&mut s, &auth::encode_reply(0, &[0; 32], None));
    expect_failure1(&mut s, failure::INCORRECT_PROTOCOL);
    // No usable hash / no NULL group / secure channel / no key / bidirectional without key.
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    send(&mut s, &auth::encode_negotiate(1, &[9], &[0]));
    expect_failure1(&mut s, failure::HASH_UNUSABLE);
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    send(&mut s, &auth::encode_negotiate(1, &[1], &[1, 2]));
    expect_failure1(&mut s, failure::DHGROUP_UNUSABLE);
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    let mut n = auth::encode_negotiate(1, &[1], &[0]);
    n[6] = 1;
    send(&mut s, &n);
    expect_failure1(&mut s, failure::CONCAT_MISMATCH);
    let mut s = Session::new(None, HOST, SUB);
    send(&mut s, &auth::encode_negotiate(1, &[1], &[0]));
    expect_failure1(&mut s, failure::NOT_USABLE);
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    let (h, c1, s1) = start(&mut s, 1, &[1]);
    let r = auth::host_response(h, &keys(false).host, &c1, s1, 1, HOST, SUB);
    send(&mut s, &auth::encode_reply(1, &r, Some((&[1; 32], 1))));
    expect_failure1(&mut s, failure::FAILED);
    // Truncated message.
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    send(&mut s, &auth::encode_negotiate(1, &[1], &[0])[..20]);
    expect_failure1(&mut s, failure::INCORRECT_PAYLOAD);
}

#[test]
fn malformed_commands_get_an_error_status() {
    let mut s = Session::new(Some(keys(false)), HOST, SUB);
    let n = auth::encode_negotiate(1, &[1], &[0]);
    let bad = AuthCmd { secp: 0xEA, ..SEND };
    assert_eq!(s.send(&AuthCmd { len: 72, ..bad }, &n).0, Status::INVALID_FIELD);
    assert_eq!(s.send(&AuthCmd { len: 0, ..SEND }, &n).0, Status::INVALID_FIELD);
    // TL beyond the data that came.
    assert_eq!(s.send(&AuthCmd { len: 200, ..SEND }, &n).0, Status::INVALID_FIELD);
    assert_eq!(s.recv(&AuthCmd { len: 0, ..SEND }).0, Status::INVALID_FIELD);
    // Nothing changed: the transaction still starts.
    start(&mut s, 1, &[1]);
}

/// A fixed-seed xorshift: reproducible "random" payloads without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_auth_send_payloads_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let templates = [
        auth::encode_negotiate(1, &[1, 2, 3], &[0, 1]),
        auth::encode_reply(1, &[3; 48], Some((&[4; 48], 9))),
        auth::encode_success2(1),
        auth::encode_failure(msg::FAILURE2, 1, 1),
    ];
    for i in 0..20_000 {
        let mut s = Session::new(Some(keys(i % 2 == 0)), HOST, SUB);
        if i % 3 == 0 {
            start(&mut s, 1, &[1, 2, 3]);
        }
        for _ in 0..4 {
            let mut d = if rng.next().is_multiple_of(2) {
                templates[(rng.next() % 4) as usize].clone()
            } else {
                let n = (rng.next() % 200) as usize;
                (0..n).map(|_| rng.next() as u8).collect()
            };
            // Flip a few bytes, then cut or extend.
            for _ in 0..(rng.next() % 4) {
                if !d.is_empty() {
                    let at = (rng.next() as usize) % d.len();
                    d[at] = rng.next() as u8;
                }
            }
            d.truncate((rng.next() % 220) as usize);
            let tl = match rng.next() % 4 {
                0 => rng.next() as u32,
                _ => d.len() as u32,
            };
            let _ = s.send(&AuthCmd { len: tl, ..SEND }, &d);
            let (st, out, _) = s.recv(&AuthCmd {
                len: (rng.next() % 300) as u32,
                ..SEND
            });
            if st.is_success() {
                assert!(out.len() <= 300);
            }
        }
    }
}
