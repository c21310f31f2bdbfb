//! NVMe/TCP TLS ("secure channel", `docs/security.md`): PSKs in the NVMe interchange
//! format and their derivation ([`psk`]), a TLS 1.3 external-PSK server handshake
//! ([`server`], [`hello`]) and the per-connection channel ([`channel`]) that feeds it and
//! then runs the replication links' allocation-free record layer
//! (`rdma_transport::tls::record`).

pub mod channel;
pub mod hello;
pub mod kdf;
pub mod psk;
pub mod server;

pub use channel::TlsChannel;
pub use kdf::Hash;
pub use psk::{ConfiguredPsk, PskError};

/// Fuzz body: arbitrary bytes as a ClientHello message, then as a stream of records fed to
/// a server whose lookup accepts the identity "id".
pub fn fuzz_hello(data: &[u8]) {
    let _ = hello::parse_client_hello(data);
    let mut s = server::PskServer::new();
    let mut out = Vec::new();
    let mut lookup = |id: &[u8]| -> server::PskAnswer {
        if id == b"id" {
            Ok((Hash::Sha256, vec![7u8; 32]))
        } else {
            Err("unknown".into())
        }
    };
    // As one handshake record, then the rest split into records by their own headers.
    let mut rec = vec![22u8, 3, 3];
    rec.extend_from_slice(&(data.len().min(0xffff) as u16).to_be_bytes());
    rec.extend_from_slice(&data[..data.len().min(0xffff)]);
    if s.feed(&mut rec, &mut out, &mut lookup).is_err() {
        return;
    }
    let mut rest = data.to_vec();
    while let Ok(Some(len)) = rdma_transport::tls::record::peek_len(&rest) {
        if len > rest.len() {
            break;
        }
        let mut r: Vec<u8> = rest.drain(..len).collect();
        if s.feed(&mut r, &mut out, &mut lookup).is_err() {
            break;
        }
    }
}
