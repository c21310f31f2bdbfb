//! NVMe/TCP TLS (secure channel) against independent TLS 1.3 PSK clients: OpenSSL's
//! `s_client -psk` and GnuTLS's `gnutls-cli --pskkey` (skipped, saying so, when the tool is
//! missing). Each sends an ICReq through TLS and must get the ICResp back, which proves the
//! handshake and the record layer both ways. A wrong PSK, an identity of a host without a
//! PSK and a plaintext ICReq are refused; save_config keeps the flag and the key name, never
//! key bytes.

mod common;

use common::*;
use nvme::nvmf::tls::{psk, Hash};
use nvme::rpc::{
    config_entries, nvmf_subsystem_add_host, nvmf_subsystem_add_listener, HostParams, ListenAddress, ListenerParams,
};
use nvme::tcp::pdu;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:baton-tls-host";
const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:baton-tls-other";

struct Tls {
    f: Fixture,
    addr: SocketAddr,
    key: Vec<u8>,
}

fn setup() -> Tls {
    let f = fixture_with(false);
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(3)).collect();
    let dir = std::env::temp_dir().join(format!("baton-tls-test-{}-{}", std::process::id(), f.nqn.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.key", f.nqn.replace(':', "_")));
    std::fs::write(&path, psk::interchange(Some(Hash::Sha256), &key)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    f.target.keyring.add_file("tls0", path.to_str().unwrap()).unwrap();
    nvmf_subsystem_add_listener(
        &f.target,
        ListenerParams {
            nqn: f.nqn.clone(),
            listen_address: ListenAddress {
                trtype: "TCP".into(),
                adrfam: None,
                traddr: "127.0.0.1".into(),
                trsvcid: Some("0".into()),
            },
            secure_channel: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    let addr = f.target.listen_addrs().into_iter().find(|a| *a != f.addr).unwrap();
    for host in [HOST, OTHER] {
        let psk = (host == HOST).then(|| "tls0".to_string());
        nvmf_subsystem_add_host(
            &f.target,
            HostParams {
                nqn: f.nqn.clone(),
                host: host.into(),
                psk,
                ..Default::default()
            },
        )
        .unwrap();
    }
    Tls { f, addr, key }
}

impl Tls {
    /// The TLS PSK and identity a host derives (hex, string).
    fn client_psk(&self, host: &str, key: &[u8]) -> (String, String) {
        let p = psk::ConfiguredPsk::parse(&psk::interchange(Some(Hash::Sha256), key)).unwrap();
        let (tls, id) = p.tls_psk(host, &self.f.nqn);
        (tls.iter().map(|b| format!("{b:02x}")).collect(), id)
    }
}

fn ic_req() -> Vec<u8> {
    let mut b = Vec::new();
    pdu::encode_ic_req(&mut b, 0, false, false, 0);
    b
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("SKIP: {tool} is not installed (apt-get install openssl gnutls-bin)");
    }
    ok
}

/// Runs a TLS client command with the ICReq on its stdin; returns its stdout's first 128
/// bytes (the ICResp) or what it read before it ended.
fn exchange(mut cmd: Command) -> Vec<u8> {
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(&ic_req()).unwrap();
    stdin.flush().unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < 128 {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    drop(stdin);
    let _ = c.kill();
    let _ = c.wait();
    got
}

fn is_ic_resp(b: &[u8]) -> bool {
    b.len() >= 128 && b[0] == 0x01 && b[2] == 128
}

fn openssl(addr: SocketAddr, id: &str, psk_hex: &str, suite: &str) -> Command {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-quiet", "-ign_eof", "-tls1_3", "-connect"])
        .arg(addr.to_string())
        .args(["-psk_identity", id, "-psk", psk_hex, "-ciphersuites", suite]);
    c
}

#[test]
fn openssl_psk_client_gets_icresp() {
    if !have("openssl") {
        return;
    }
    let t = setup();
    let (psk_hex, id) = t.client_psk(HOST, &t.key);
    let got = exchange(openssl(t.addr, &id, &psk_hex, "TLS_AES_128_GCM_SHA256"));
    assert!(is_ic_resp(&got), "no ICResp through TLS: {got:?}");
}

#[test]
fn openssl_wrong_key_and_unknown_identity_refused() {
    if !have("openssl") {
        return;
    }
    let t = setup();
    let mut wrong = t.key.clone();
    wrong[0] ^= 1;
    let (psk_hex, id) = t.client_psk(HOST, &wrong);
    assert!(!is_ic_resp(&exchange(openssl(
        t.addr,
        &id,
        &psk_hex,
        "TLS_AES_128_GCM_SHA256"
    ))));
    // A host on the allow list without a PSK.
    let (psk_hex, id) = t.client_psk(OTHER, &t.key);
    assert!(!is_ic_resp(&exchange(openssl(
        t.addr,
        &id,
        &psk_hex,
        "TLS_AES_128_GCM_SHA256"
    ))));
    // The right key for the wrong suite (a SHA-256 PSK needs TLS_AES_128_GCM_SHA256).
    let (psk_hex, id) = t.client_psk(HOST, &t.key);
    assert!(!is_ic_resp(&exchange(openssl(
        t.addr,
        &id,
        &psk_hex,
        "TLS_AES_256_GCM_SHA384"
    ))));
    // The good one still works afterwards.
    assert!(is_ic_resp(&exchange(openssl(
        t.addr,
        &id,
        &psk_hex,
        "TLS_AES_128_GCM_SHA256"
    ))));
}

#[test]
fn gnutls_psk_client_gets_icresp() {
    if !have("gnutls-cli") {
        return;
    }
    let t = setup();
    let (psk_hex, id) = t.client_psk(HOST, &t.key);
    for kx in ["+ECDHE-PSK", "+PSK"] {
        let mut c = Command::new("gnutls-cli");
        c.args([
            "--logfile=/dev/null",
            "--pskusername",
            &id,
            "--pskkey",
            &psk_hex,
            "--port",
        ])
        .arg(t.addr.port().to_string())
        .arg("--priority")
        .arg(format!(
            "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:{kx}:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1"
        ))
        .arg("127.0.0.1");
        let got = exchange(c);
        assert!(is_ic_resp(&got), "{kx}: no ICResp through TLS: {got:?}");
    }
}

#[test]
fn plaintext_refused_on_secure_listener() {
    let t = setup();
    let mut s = TcpStream::connect(t.addr).unwrap();
    s.write_all(&ic_req()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // An unexpected_message alert, then the end of the stream: never an ICResp.
    assert_eq!(got, [21, 3, 3, 0, 2, 2, 10]);
    // The plain listener of the same subsystem still answers in plaintext.
    let mut p = TcpStream::connect(t.f.addr).unwrap();
    p.write_all(&ic_req()).unwrap();
    let mut r = [0u8; 128];
    p.read_exact(&mut r).unwrap();
    assert!(is_ic_resp(&r));
}

#[test]
fn save_config_keeps_flag_and_key_name_not_bytes() {
    let t = setup();
    let cfg = serde_json::to_string(&config_entries(&t.f.target)).unwrap();
    assert!(cfg.contains("\"secure_channel\":true"), "{cfg}");
    assert!(cfg.contains("\"psk\":\"tls0\""), "{cfg}");
    let b64 = psk::interchange(Some(Hash::Sha256), &t.key);
    let hex: String = t.key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !cfg.contains(&b64[16..40]) && !cfg.contains(&hex),
        "key bytes in save_config"
    );
    // Discovery: the secure listener's entry says a secure channel (TLS 1.3) is required.
    assert!(t.f.target.listener_secure(t.addr));
    assert!(!t.f.target.listener_secure(t.f.addr));
}
