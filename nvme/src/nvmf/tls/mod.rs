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

use super::Target;

impl Target {
    /// The TLS PSK for a PSK identity a host offers on a secure listener: the identity's
    /// hash and the TLS PSK derived from the key configured for (host, subsystem), or why
    /// there is none (logged by the handshake).
    pub fn tls_psk_for(&self, identity: &[u8]) -> server::PskAnswer {
        let id = psk::parse_identity(identity).map_err(|e| e.to_string())?;
        let s = self
            .nvme_subsystem(&id.subnqn)
            .map_err(|_| format!("no subsystem {}", id.subnqn))?;
        let name = s.state().host_psks.get(&id.hostnqn).cloned().ok_or_else(|| {
            format!(
                "host {} has no PSK for {} (nvmf_subsystem_add_host with psk)",
                id.hostnqn, id.subnqn
            )
        })?;
        let psk = self
            .keyring
            .get(&name)
            .and_then(|k| k.tls_psk())
            .map_err(|e| e.to_string())?;
        if psk.hash() != id.hash {
            return Err(format!(
                "identity asks for hash {:02}, key {name:?} is hash {:02}",
                id.hash.nvme_id(),
                psk.hash().nvme_id()
            ));
        }
        let (tls_psk, expected) = psk.tls_psk(&id.hostnqn, &id.subnqn);
        if expected.as_bytes() != identity {
            return Err("identity not in canonical form".into());
        }
        Ok((id.hash, tls_psk))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz body over deterministic mutations of a well-formed ClientHello prefix.
    #[test]
    fn fuzz_body_survives_mutations() {
        let mut base = vec![1u8, 0, 0, 60, 3, 3];
        base.extend_from_slice(&[9u8; 32]);
        base.extend_from_slice(&[
            0, 0, 2, 0x13, 0x01, 1, 0, 0, 16, 0, 43, 0, 3, 2, 3, 4, 0, 45, 0, 2, 1, 1, 0, 10, 0, 0,
        ]);
        let mut x = 0x9e37_79b9_u32;
        for i in 0..20_000 {
            let mut d = base.clone();
            for _ in 0..(i % 5) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = x as usize % d.len();
                d[at] = (x >> 8) as u8;
            }
            d.truncate(d.len() - (i % 7));
            fuzz_hello(&d);
        }
    }
}
