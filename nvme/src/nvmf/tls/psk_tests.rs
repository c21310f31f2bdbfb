use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
const SUB: &str = "nqn.2014-08.org.nvmexpress:uuid:36ebf5a9-1df9-47b3-a6d0-e9ba32e428a2";

/// Keys made by nvme-cli 2.3's `nvme gen-tls-key` (`nvme check-tls-key` prints the CRC).
#[test]
fn nvme_cli_keys_parse() {
    for (k, hash, crc) in [
        (
            "NVMeTLSkey-1:01:D52ZIQmH+e5hlSckXELfvESlbpaCtvD/ndoeAegJ894FNSaG:",
            Hash::Sha256,
            0x86263505u32,
        ),
        (
            "NVMeTLSkey-1:02:6hG+1fihl9YdhJM6lPx1N7+Z8YYUrJ39TfHMWXoFBkaJLX4sS51AnNp0PaHuS9zw75qN4g==:",
            Hash::Sha384,
            0xe28d9aef,
        ),
        (
            "NVMeTLSkey-1:01:LFKHx3GLh/WxQ3Qix/hiXhgJO/Ixkvwbye6I1Ys3uH5JBiAx:",
            Hash::Sha256,
            0x31200649,
        ),
    ] {
        let p = ConfiguredPsk::parse(k).unwrap();
        assert_eq!(p.hash(), hash);
        assert_eq!(crc32_ieee(&p.key), crc, "{k}");
        assert_eq!(interchange(Some(hash), &p.key), k);
    }
}

#[test]
fn bad_keys_refused() {
    let good = "NVMeTLSkey-1:01:D52ZIQmH+e5hlSckXELfvESlbpaCtvD/ndoeAegJ894FNSaG:";
    assert_eq!(ConfiguredPsk::parse(&good.replace("D52Z", "D53Z")), Err(PskError::Crc));
    assert_eq!(
        ConfiguredPsk::parse(&good.replace(":01:", ":02:")),
        Err(PskError::Length(32))
    );
    assert!(matches!(
        ConfiguredPsk::parse(&good.replace(":01:", ":03:")),
        Err(PskError::Hash(_))
    ));
    assert_eq!(ConfiguredPsk::parse(&good[..good.len() - 1]), Err(PskError::Format));
    assert_eq!(ConfiguredPsk::parse("DHHC-1:00:abcd:"), Err(PskError::Format));
    assert_eq!(ConfiguredPsk::parse("NVMeTLSkey-1:01:D5*Z:"), Err(PskError::Base64));
}

/// Retained and TLS PSKs against `openssl kdf ... HKDF` (OpenSSL 3.0) with the HkdfLabel
/// SPDK builds (`nvme_tcp_derive_retained_psk` / `nvme_tcp_derive_tls_psk` in SPDK's
/// `include/spdk_internal/nvme_tcp.h`), for the example NQNs of the NVMe/TCP specification
/// and keys 00 01 02 ...
#[test]
fn derivation_matches_openssl_hkdf() {
    let k256: Vec<u8> = (0..32).collect();
    let p = ConfiguredPsk::parse(&interchange(Some(Hash::Sha256), &k256)).unwrap();
    assert_eq!(
        p.retained(HOST),
        hex("2777170cfb82b52c5ec8cb00cc26fa9145d942315f2c892822b0772f5debe85d")
    );
    let (psk, id) = p.tls_psk(HOST, SUB);
    assert_eq!(id, format!("NVMe0R01 {HOST} {SUB}"));
    assert_eq!(
        psk,
        hex("0a5109b866a33812e0a858c1e3a7a09a5b2422b0bd2056d3a4034b7b657c885d")
    );

    let k384: Vec<u8> = (0..48).collect();
    let p = ConfiguredPsk::parse(&interchange(Some(Hash::Sha384), &k384)).unwrap();
    assert_eq!(
        p.retained(HOST),
        hex("9199e9844a95310712a6436350cb36769e36bb02461989493acb7f9419f9d1ca81374a176479e87994f6c7c17c5f2800")
    );
    let (psk, id) = p.tls_psk(HOST, SUB);
    assert!(id.starts_with("NVMe0R02 "));
    assert_eq!(
        psk,
        hex("979f0d26cc075126bec2b7ad852ecf3cda6419078749234199e46615e2a4b2c69729b79e6a620b9a16c593b3e080d9b8")
    );
}

#[test]
fn identities() {
    let id = parse_identity(format!("NVMe0R01 {HOST} {SUB}").as_bytes()).unwrap();
    assert_eq!(
        (id.hash, id.hostnqn.as_str(), id.subnqn.as_str()),
        (Hash::Sha256, HOST, SUB)
    );
    assert_eq!(parse_identity(b"NVMe0R02 a b").unwrap().hash, Hash::Sha384);
    assert!(matches!(
        parse_identity(b"NVMe1R01 a b digest="),
        Err(PskError::IdentityVersion(_))
    ));
    assert!(matches!(
        parse_identity(b"NVMe0G01 a b"),
        Err(PskError::IdentityVersion(_))
    ));
    for bad in [
        &b"NVMe0R01 a"[..],
        b"NVMe0R03 a b",
        b"Client_identity",
        b"NVMe0R01 a b c",
        b"\xff\xfe",
    ] {
        assert!(parse_identity(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn base64_round_trip() {
    for n in 0..10 {
        let d: Vec<u8> = (0..n).map(|i: u32| (i * 37 + 1) as u8).collect();
        assert_eq!(base64_decode(&base64_encode(&d)).unwrap(), d);
    }
    assert_eq!(base64_decode("abc"), None);
    assert_eq!(base64_decode("a=bc"), None);
}
