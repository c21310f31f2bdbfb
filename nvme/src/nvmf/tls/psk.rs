//! NVMe/TCP pre-shared keys: the PSK interchange format, the retained PSK, PSK identities
//! and the TLS PSK (NVMe/TCP transport specification, "TLS PSK and PSK identity
//! derivation"), as Linux, nvme-cli and SPDK compute them:
//!
//! - interchange: `NVMeTLSkey-1:<hh>:<base64(key || crc32)>:`, `hh` = 00 (the key is used
//!   as is), 01 (SHA-256, 32-byte key) or 02 (SHA-384, 48-byte key); the CRC-32 (IEEE,
//!   little-endian) covers the key;
//! - retained PSK = HKDF-Expand-Label(HKDF-Extract(0, key), "HostNQN", host NQN, L);
//! - identity (version 0) = `NVMe0R<hh> <host NQN> <subsystem NQN>`;
//! - TLS PSK = HKDF-Expand-Label(HKDF-Extract(0, retained), "nvme-tls-psk", identity, L);
//!
//! with L the key's length and the hash of `hh`.

use super::kdf::Hash;
use thiserror::Error;

/// Why a key or an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PskError {
    #[error("not a PSK in interchange format (NVMeTLSkey-1:<hash>:<base64>:)")]
    Format,
    #[error("hash indicator {0:?}: 00, 01 (SHA-256) or 02 (SHA-384)")]
    Hash(String),
    #[error("bad base64 in the key")]
    Base64,
    #[error("key of {0} bytes: 32 (01) or 48 (02) bytes, plus the CRC")]
    Length(usize),
    #[error("CRC-32 of the key does not match (a mistyped key?)")]
    Crc,
    #[error("PSK identity {0:?} is not NVMe<v><R|G><hh> <hostnqn> <subnqn>")]
    Identity(String),
    #[error("PSK identity {0:?}: only version 0 retained-PSK identities (NVMe0R01/NVMe0R02) are supported")]
    IdentityVersion(String),
}

/// A configured PSK (from a key file in interchange format).
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredPsk {
    /// None for "00": the key is the retained PSK itself.
    transform: Option<Hash>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfiguredPsk({:?}, {} bytes)", self.transform, self.key.len())
    }
}

impl ConfiguredPsk {
    /// Parses and checks (length, CRC) a key in interchange format.
    pub fn parse(text: &str) -> Result<Self, PskError> {
        let t = text.trim();
        let rest = t.strip_prefix("NVMeTLSkey-1:").ok_or(PskError::Format)?;
        let (hh, rest) = rest.split_once(':').ok_or(PskError::Format)?;
        let b64 = rest.strip_suffix(':').ok_or(PskError::Format)?;
        let transform = match hh {
            "00" => None,
            "01" => Some(Hash::Sha256),
            "02" => Some(Hash::Sha384),
            _ => return Err(PskError::Hash(hh.chars().take(8).collect())),
        };
        let raw = base64_decode(b64).ok_or(PskError::Base64)?;
        let klen = raw.len().saturating_sub(4);
        let ok_len = match transform {
            Some(h) => klen == h.out_len(),
            None => klen == 32 || klen == 48,
        };
        if !ok_len {
            return Err(PskError::Length(klen));
        }
        let (key, crc) = raw.split_at(klen);
        if crc32_ieee(key).to_le_bytes() != crc {
            return Err(PskError::Crc);
        }
        Ok(Self {
            transform,
            key: key.to_vec(),
        })
    }

    /// The hash of the PSK: the cipher suite it is used with.
    pub fn hash(&self) -> Hash {
        match self.transform {
            Some(h) => h,
            None if self.key.len() == 48 => Hash::Sha384,
            None => Hash::Sha256,
        }
    }

    /// The retained PSK of `hostnqn`.
    pub fn retained(&self, hostnqn: &str) -> Vec<u8> {
        match self.transform {
            None => self.key.clone(),
            Some(h) => {
                let prk = h.extract(None, &self.key);
                h.expand_label(&prk, b"HostNQN", hostnqn.as_bytes(), self.key.len())
            }
        }
    }

    /// The TLS PSK of the version 0 identity for `hostnqn` and `subnqn`, and that identity.
    pub fn tls_psk(&self, hostnqn: &str, subnqn: &str) -> (Vec<u8>, String) {
        let h = self.hash();
        let identity = identity_v0(h, hostnqn, subnqn);
        let retained = self.retained(hostnqn);
        let prk = h.extract(None, &retained);
        let psk = h.expand_label(&prk, b"nvme-tls-psk", identity.as_bytes(), retained.len());
        (psk, identity)
    }
}

/// `NVMe0R<hh> <hostnqn> <subnqn>`.
pub fn identity_v0(h: Hash, hostnqn: &str, subnqn: &str) -> String {
    format!("NVMe0R{:02} {hostnqn} {subnqn}", h.nvme_id())
}

/// A parsed PSK identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hash: Hash,
    pub hostnqn: String,
    pub subnqn: String,
}

/// Parses a PSK identity a host offered. Version 1 (with a PSK digest) and generated PSKs
/// (`G`, from DH-HMAC-CHAP secure concatenation) are refused with a clear error.
pub fn parse_identity(id: &[u8]) -> Result<Identity, PskError> {
    let shown = || String::from_utf8_lossy(&id[..id.len().min(300)]).into_owned();
    let s = std::str::from_utf8(id).map_err(|_| PskError::Identity(shown()))?;
    let mut parts = s.split(' ');
    let head = parts.next().unwrap_or_default();
    let (host, sub) = (parts.next(), parts.next());
    let b = head.as_bytes();
    if b.len() != 8 || !head.starts_with("NVMe") {
        return Err(PskError::Identity(shown()));
    }
    if &b[4..6] != b"0R" {
        return Err(PskError::IdentityVersion(shown()));
    }
    let hash = match &head[6..8] {
        "01" => Hash::Sha256,
        "02" => Hash::Sha384,
        _ => return Err(PskError::Identity(shown())),
    };
    match (host, sub, parts.next()) {
        (Some(h), Some(n), None) if !h.is_empty() && !n.is_empty() => Ok(Identity {
            hash,
            hostnqn: h.to_string(),
            subnqn: n.to_string(),
        }),
        _ => Err(PskError::Identity(shown())),
    }
}

/// The key formats' CRC-32 and base64 are DH-HMAC-CHAP's (same IEEE CRC, same padded base64).
pub use crate::spec::auth::{base64_decode, base64_encode, crc32 as crc32_ieee};

/// A key in interchange format (tests, tools): `hash` None writes "00".
pub fn interchange(transform: Option<Hash>, key: &[u8]) -> String {
    let mut raw = key.to_vec();
    raw.extend_from_slice(&crc32_ieee(key).to_le_bytes());
    let hh = transform.map_or(0, |h| h.nvme_id());
    format!("NVMeTLSkey-1:{hh:02}:{}:", base64_encode(&raw))
}

#[cfg(test)]
#[path = "psk_tests.rs"]
mod tests;
