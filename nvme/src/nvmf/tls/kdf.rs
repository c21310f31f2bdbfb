//! HMAC, HKDF (RFC 5869) and TLS 1.3's HKDF-Expand-Label / Derive-Secret (RFC 8446 §7.1)
//! over `ring`'s HMAC, for the two hashes NVMe/TCP TLS uses. Handshake and key set-up
//! only: these allocate, the record layer does not.

use ring::{digest, hmac};

/// The hash of a PSK and of the cipher suite it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256: TLS_AES_128_GCM_SHA256.
    Sha256,
    /// SHA-384: TLS_AES_256_GCM_SHA384.
    Sha384,
}

impl Hash {
    /// Output bytes.
    pub fn out_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
        }
    }

    /// The NVMe hash indicator of PSK identities and interchange keys ("01", "02").
    pub fn nvme_id(self) -> u8 {
        match self {
            Hash::Sha256 => 1,
            Hash::Sha384 => 2,
        }
    }

    /// The TLS 1.3 cipher suite of this hash (RFC 8446 §B.4).
    pub fn suite(self) -> u16 {
        match self {
            Hash::Sha256 => 0x1301,
            Hash::Sha384 => 0x1302,
        }
    }

    /// The suite's AEAD and its key length.
    pub fn aead(self) -> (&'static ring::aead::Algorithm, usize) {
        match self {
            Hash::Sha256 => (&ring::aead::AES_128_GCM, 16),
            Hash::Sha384 => (&ring::aead::AES_256_GCM, 32),
        }
    }

    pub(crate) fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha384 => hmac::HMAC_SHA384,
        }
    }

    /// HMAC(key, parts concatenated).
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut c = hmac::Context::with_key(&hmac::Key::new(self.hmac_alg(), key));
        for p in parts {
            c.update(p);
        }
        c.sign().as_ref().to_vec()
    }

    /// The hash of nothing (Derive-Secret's context for "derived" and "ext binder").
    pub fn empty_hash(self) -> Vec<u8> {
        digest::digest(self.digest_alg(), b"").as_ref().to_vec()
    }

    /// HKDF-Extract; no salt = a string of zeros as long as the hash (RFC 5869 §2.2).
    pub fn extract(self, salt: Option<&[u8]>, ikm: &[u8]) -> Vec<u8> {
        let zeros = [0u8; 48];
        self.hmac(salt.unwrap_or(&zeros[..self.out_len()]), &[ikm])
    }

    /// HKDF-Expand (RFC 5869 §2.3), `len` at most 255 hash lengths.
    pub fn expand(self, prk: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + self.out_len());
        let mut t: Vec<u8> = Vec::new();
        let mut i = 1u8;
        while out.len() < len {
            t = self.hmac(prk, &[&t, info, &[i]]);
            out.extend_from_slice(&t);
            i = i.wrapping_add(1);
        }
        out.truncate(len);
        out
    }

    /// HKDF-Expand-Label(secret, label, context, len) with the "tls13 " prefix.
    pub fn expand_label(self, secret: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
        let mut info = Vec::with_capacity(4 + 6 + label.len() + context.len());
        info.extend_from_slice(&(len as u16).to_be_bytes());
        info.push((6 + label.len()) as u8);
        info.extend_from_slice(b"tls13 ");
        info.extend_from_slice(label);
        info.push(context.len() as u8);
        info.extend_from_slice(context);
        self.expand(secret, &info, len)
    }

    /// Derive-Secret(secret, label, transcript hash).
    pub fn derive_secret(self, secret: &[u8], label: &[u8], transcript_hash: &[u8]) -> Vec<u8> {
        self.expand_label(secret, label, transcript_hash, self.out_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869 appendix A.1 (SHA-256).
    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let prk = Hash::Sha256.extract(Some(&salt), &ikm);
        assert_eq!(
            prk,
            hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        );
        let okm = Hash::Sha256.expand(&prk, &info, 42);
        assert_eq!(
            okm,
            hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );
    }

    /// RFC 8448 §3 (simple 1-RTT handshake): the early secret of no PSK and the "derived" step.
    #[test]
    fn rfc8448_early_secret() {
        let early = Hash::Sha256.extract(None, &[0u8; 32]);
        assert_eq!(
            early,
            hex("33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a")
        );
        let derived = Hash::Sha256.derive_secret(&early, b"derived", &Hash::Sha256.empty_hash());
        assert_eq!(
            derived,
            hex("6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba")
        );
    }
}
