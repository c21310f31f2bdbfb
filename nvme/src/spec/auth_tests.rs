//! Tests of the DH-HMAC-CHAP formats and computations.
//!
//! The expected values were computed independently of this code, with Python's standard
//! library (`hmac`, `hashlib`, `zlib.crc32`, `base64`), following the formulas of the NVMe
//! base specification:
//!
//! ```text
//! secret(key, h)   = "DHHC-1:%02d:" % h + b64(key + crc32(key).to_bytes(4, "little")) + ":"
//! transform(k, h, nqn) = k if h == 0 else HMAC-h(k, nqn + b"NVMe-over-Fabrics")
//! host  = HMAC-H(transform(kh, host), c1 + le32(s1) + le16(tid) + b"\0" + b"HostHost"
//!                + host + b"\0" + sub)
//! ctrl  = HMAC-H(transform(kc, sub),  c2 + le32(s2) + le16(tid) + b"\0" + b"Controller"
//!                + sub + b"\0" + host)
//! ```
//!
//! with host = "nqn.2014-08.org.nvmexpress:uuid:baton-test-host", sub =
//! "nqn.2016-06.io.baton:auth", k32 = bytes(range(32)), k48 = bytes(range(100, 148)), k64 =
//! bytes((i * 7) & 255 for i in range(64)). Two secrets made by nvme-cli 2.3's
//! `nvme gen-dhchap-key` check the CRC against another implementation.

use super::*;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:baton-test-host";
const SUB: &str = "nqn.2016-06.io.baton:auth";
const S32: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const S48: &str = "DHHC-1:02:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKTvGwQfg==:";
const S64: &str =
    "DHHC-1:00:AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK+2vcTL0tng5+71/AMKERgfJi00O0JJUFdeZWxzeoGIj5adpKuyudSnJNM=:";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn k32() -> Vec<u8> {
    (0u8..32).collect()
}
fn k48() -> Vec<u8> {
    (100u8..148).collect()
}
fn k64() -> Vec<u8> {
    (0..64u32).map(|i| ((i * 7) & 255) as u8).collect()
}

#[test]
fn secrets_parse_in_all_lengths() {
    let s = Secret::parse(S32).unwrap();
    assert_eq!((s.hash, s.key.clone()), (1, k32()));
    assert_eq!(s.format(), S32);
    let s = Secret::parse(S48).unwrap();
    assert_eq!((s.hash, s.key.clone()), (2, k48()));
    assert_eq!(s.format(), S48);
    let s = Secret::parse(S64).unwrap();
    assert_eq!((s.hash, s.key.clone()), (0, k64()));
    assert_eq!(s.format(), S64);
    // Without the trailing ':' and with surrounding whitespace (a key file's newline).
    assert_eq!(
        Secret::parse(&format!("  {}\n", S32.trim_end_matches(':')))
            .unwrap()
            .key,
        k32()
    );
    // nvme-cli's own output.
    for s in [
        "DHHC-1:01:yxHEVh1vwY96B9xvjBtkKePTof7OfylJY59umGWDyuf30q6F:",
        "DHHC-1:03:YgsBKGlFsPOVNxOT9Yos3NvUeNLFgtbUmssjVXyGLW1RdJDITbXAas7OsplvYtE9yZxVoHkI5nsvjhAfLGOAAEfQyyk=:",
    ] {
        Secret::parse(s).unwrap();
    }
}

#[test]
fn bad_secrets_are_refused() {
    // One base64 character changed: the CRC no longer matches.
    let bad = S32.replace("AAEC", "AAED");
    assert_eq!(Secret::parse(&bad), Err(SecretError::Crc));
    assert_eq!(Secret::parse("DHHC-2:01:AAAA:"), Err(SecretError::Prefix));
    assert_eq!(Secret::parse("DHHC-1:01"), Err(SecretError::Prefix));
    assert!(matches!(Secret::parse("DHHC-1:04:AAAA:"), Err(SecretError::HashId(_))));
    assert!(matches!(Secret::parse("DHHC-1:1:AAAA:"), Err(SecretError::HashId(_))));
    assert_eq!(Secret::parse("DHHC-1:01:AA!A:"), Err(SecretError::Base64));
    assert_eq!(Secret::parse("DHHC-1:01:AAA:"), Err(SecretError::Base64));
    // 16-byte key + CRC = 20 bytes.
    let short = Secret {
        hash: 1,
        key: vec![1; 16],
    }
    .format();
    assert_eq!(Secret::parse(&short), Err(SecretError::Length(20)));
    // Debug never shows the key.
    assert!(!format!("{:?}", Secret::parse(S32).unwrap()).contains("1, 2"));
}

#[test]
fn base64_and_crc() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    for n in 0..10 {
        let d: Vec<u8> = (0..n).collect();
        assert_eq!(base64_decode(&base64_encode(&d)).unwrap(), d);
    }
    assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
    assert!(base64_decode("Zm9v=mFy").is_none());
    assert!(base64_decode("Z===").is_none());
}

#[test]
fn key_transformation() {
    let s = Secret::parse(S32).unwrap();
    assert_eq!(
        hex(&s.transform(HOST)),
        "20c7e731ba65547d5a4701fc52804e4dc2571b9bd35cd1ad3288450015f82333"
    );
    let s = Secret::parse(S48).unwrap();
    assert_eq!(
        hex(&s.transform(HOST)),
        "a28ded9e61d446ea28d732fb8afd3c242e0e8b96a21fffcdf5c614e5f5a2800d7b1028e1a2e5828246ab5b130dbf0518"
    );
    // Hash 0: no transformation.
    assert_eq!(Secret::parse(S64).unwrap().transform(HOST), k64());
}

#[test]
fn responses_match_independent_vectors() {
    let c1: Vec<u8> = (0x40u8..0x60).collect();
    let r = host_response(
        Hash::Sha256,
        &Secret::parse(S32).unwrap(),
        &c1,
        0x0102_0304,
        7,
        HOST,
        SUB,
    );
    assert_eq!(
        hex(&r),
        "9bd417edc90629c1ec49f7c1d4d7c3a42fae1692ec22abf06b44e8874ab62c10"
    );
    let c2: Vec<u8> = (0x80u8..0xB0).collect();
    let r = ctrl_response(
        Hash::Sha384,
        &Secret::parse(S48).unwrap(),
        &c2,
        0x0a0b_0c0d,
        9,
        HOST,
        SUB,
    );
    assert_eq!(
        hex(&r),
        "70dc05b0c27b4883a06b41cfc447530074b1054024400e41ac60d9752aa9114886a4bb238b4fba569cd180bd9490cddc"
    );
    let c3: Vec<u8> = (0xA0u8..0xE0).collect();
    let r = host_response(Hash::Sha512, &Secret::parse(S64).unwrap(), &c3, 5, 0x1234, HOST, SUB);
    assert_eq!(hex(&r), "b99b97b5f86e46f9605058ac33ffabfb028a79bdf8ff5ac7bc3b12c109e56f4cab75ada37531a7dfc68fed69a3731a82224c72d1b7597900e3e8200c713caa82");
}

#[test]
fn messages_round_trip() {
    let n = encode_negotiate(3, &[1, 2, 3], &[0, 1, 2, 3, 4, 5]);
    assert_eq!(n.len(), 72);
    assert_eq!(
        parse_host_msg(&n).unwrap(),
        HostMsg::Negotiate {
            tid: 3,
            sc_c: 0,
            hashes: &[1, 2, 3],
            dhgroups: &[0, 1, 2, 3, 4, 5]
        }
    );
    let resp = [0xAAu8; 32];
    let c2 = [0xBBu8; 32];
    let r = encode_reply(3, &resp, Some((&c2, 77)));
    assert_eq!(r.len(), 16 + 64);
    match parse_host_msg(&r).unwrap() {
        HostMsg::Reply {
            tid,
            hl,
            cvalid,
            seqnum,
            response,
            c2: got,
            dhv,
        } => {
            assert_eq!((tid, hl, cvalid, seqnum), (3, 32, true, 77));
            assert_eq!((response, got, dhv.len()), (&resp[..], &c2[..], 0));
        }
        m => panic!("{m:?}"),
    }
    let r = encode_reply(3, &resp, None);
    assert!(matches!(
        parse_host_msg(&r).unwrap(),
        HostMsg::Reply { cvalid: false, .. }
    ));
    assert_eq!(
        parse_host_msg(&encode_success2(9)).unwrap(),
        HostMsg::Success2 { tid: 9 }
    );
    assert_eq!(
        parse_host_msg(&encode_failure(msg::FAILURE2, 9, failure::FAILED)).unwrap(),
        HostMsg::Failure2 {
            tid: 9,
            reason: failure::REASON_FAILED,
            explanation: failure::FAILED
        }
    );
    let c = encode_challenge(4, Hash::Sha384, 11, &[5; 48]);
    assert_eq!(
        parse_ctrl_msg(&c).unwrap(),
        CtrlMsg::Challenge {
            tid: 4,
            hash: hash_id::SHA384,
            dhgroup: dh_group::NULL,
            seqnum: 11,
            challenge: &[5; 48],
            dhv: &[]
        }
    );
    let s = encode_success1(4, Hash::Sha256, Some(&[1; 32]));
    assert_eq!(
        parse_ctrl_msg(&s).unwrap(),
        CtrlMsg::Success1 {
            tid: 4,
            hl: 32,
            response: Some(&[1; 32])
        }
    );
    let f = encode_failure(msg::FAILURE1, 4, failure::INCORRECT_PAYLOAD);
    assert_eq!(f, [0, 0x91, 0, 0, 4, 0, 1, 6]);
}

#[test]
fn short_and_odd_messages_are_errors() {
    let n = encode_negotiate(3, &[1], &[0]);
    for cut in 0..n.len() {
        assert!(parse_host_msg(&n[..cut]).is_err(), "cut {cut}");
    }
    let r = encode_reply(3, &[1; 48], None);
    for cut in 0..r.len() {
        assert!(parse_host_msg(&r[..cut]).is_err(), "cut {cut}");
    }
    let mut bad = r.clone();
    bad[6] = 33;
    assert_eq!(parse_host_msg(&bad), Err(MsgError::HashLength(33)));
    let mut bad = n.clone();
    bad[8] = 2; // another protocol
    assert!(matches!(parse_host_msg(&bad), Err(MsgError::Negotiate(_))));
    let mut bad = n.clone();
    bad[10] = 31;
    assert!(matches!(parse_host_msg(&bad), Err(MsgError::Negotiate(_))));
    assert!(matches!(
        parse_host_msg(&[7, 7, 0, 0, 0, 0]),
        Err(MsgError::Unknown { .. })
    ));
}

#[test]
fn command_fields() {
    let mut sqe = Sqe::default();
    AuthCmd::dhchap(72).to_sqe(&mut sqe);
    // Byte 41 SPSP0, 42 SPSP1, 43 SECP: CDW10 bits 15:8, 23:16, 31:24.
    assert_eq!(sqe.cdw10, 0xE901_0100);
    let c = AuthCmd::from_sqe(&sqe);
    assert!(c.is_dhchap());
    assert_eq!(c.len, 72);
}
