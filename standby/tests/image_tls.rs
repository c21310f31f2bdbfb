//! The execution-image channel over TLS 1.3: this test process holds a pre-shared-key
//! identity (so one process can be both the primary host's client and the standby host's
//! server), transfers an image and a delta, and checks that a plaintext client and a client
//! holding another key are both refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rdma_transport::tls::blocking::BlockingTls;
use rdma_transport::tls::{self, pki, Role, TlsContext, TlsSettings};
use standby::image::{ImageClient, ImageServer};

fn psk(dir: &std::path::Path, name: &str, role: Role) -> TlsContext {
    let f = dir.join(name);
    pki::generate_psk(&f).unwrap();
    TlsContext::load(&TlsSettings::Psk { key_file: f }, role).unwrap()
}

#[test]
fn images_cross_over_tls_and_strangers_are_refused() {
    let dir = std::env::temp_dir().join(format!("baton-image-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tls::install(psk(&dir, "deployment.key", Role::Standby)).unwrap();
    let srv = ImageServer::start("127.0.0.1:0".parse().unwrap(), &dir.join("store")).unwrap();

    let mut img = vec![0u8; 64 * 4096];
    for (i, b) in img.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let mut c = ImageClient::connect(srv.addr(), "db").unwrap();
    let r1 = c.transfer(1, &img).unwrap();
    assert_eq!(r1.chunks_sent, 64);
    img[5 * 4096] ^= 0xff;
    let r2 = c.transfer(2, &img).unwrap();
    assert_eq!((r2.base, r2.chunks_sent), (Some(1), 1));
    assert_eq!(srv.store().list("db").len(), 2);

    // Plaintext: the server's TLS layer finds no handshake and closes; the client reads
    // nothing useful.
    let mut plain = TcpStream::connect(srv.addr()).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    plain.write_all(&[0u8; 64]).unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 21,
        "plaintext client got a non-alert answer: {:?}",
        &buf[..n]
    );

    // Another deployment's key: refused at the handshake.
    let other = psk(&dir, "other.key", Role::Primary);
    let s = TcpStream::connect(srv.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut t = BlockingTls::client(s, &other, Role::Standby).unwrap();
    let e = t
        .write_all(b"hello")
        .and_then(|_| t.flush())
        .and_then(|_| t.read(&mut buf).map(|_| ()));
    let e = e.expect_err("a client with another key was served").to_string();
    assert!(e.contains("TLS"), "{e}");
    assert_eq!(srv.store().list("db").len(), 2);
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
