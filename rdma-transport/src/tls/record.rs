//! The TLS 1.3 record layer of an established link (RFC 8446 §5), in place and without
//! allocation.
//!
//! rustls runs the handshake; its traffic keys are then taken out of it (the same export kTLS
//! uses) and every application record is sealed and opened here with `ring`'s AEAD. rustls'
//! own buffered and unbuffered connections copy each received record into a fresh `Vec`,
//! which would put an allocation on every replicated write; this layer writes each sealed
//! record straight into the link's output buffer and opens each received record where it lies.
//!
//! Keys are never updated in place: a direction that has carried [`KEY_BYTES_LIMIT`] bytes
//! fails the link, which reconnects with a fresh handshake (new keys). For AES-GCM RFC 8446
//! §5.5 bounds a key to 2^24.5 full-size records; the limit here is 2^24 full-size records'
//! worth of bytes, whatever the record sizes.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

use super::TlsError;

/// Largest plaintext of one record (2^14, RFC 8446 §5.1).
pub const PLAIN_MAX: usize = 16 * 1024;
/// Record header bytes.
pub const HEADER: usize = 5;
/// AEAD tag bytes (all TLS 1.3 suites).
pub const TAG: usize = 16;
/// Bytes a record adds to its plaintext: header, inner content type, tag.
pub const OVERHEAD: usize = HEADER + 1 + TAG;
/// Largest record accepted from a peer (RFC 8446 §5.2: 2^14 + 256 of ciphertext).
pub const RECORD_MAX: usize = HEADER + PLAIN_MAX + 256;
/// Bytes one key may protect before the link must reconnect for new keys.
pub const KEY_BYTES_LIMIT: u64 = (1 << 24) * PLAIN_MAX as u64;

/// Content types (RFC 8446 §5.1).
pub const CT_ALERT: u8 = 21;
/// Handshake messages (after the handshake: NewSessionTicket, KeyUpdate).
pub const CT_HANDSHAKE: u8 = 22;
/// Application data.
pub const CT_APP: u8 = 23;

struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    bytes: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, TlsError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(TlsError::Suite),
        };
        Self::from_raw(seq, alg, key.as_ref(), iv.as_ref())
    }

    fn from_raw(seq: u64, alg: &'static aead::Algorithm, key: &[u8], iv: &[u8]) -> Result<Self, TlsError> {
        let key = UnboundKey::new(alg, key).map_err(|_| TlsError::Suite)?;
        let iv: [u8; 12] = iv.try_into().map_err(|_| TlsError::Suite)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
            bytes: 0,
        })
    }

    /// The per-record nonce: the sequence number, big-endian in the low 8 bytes, XOR the IV.
    fn nonce(&mut self, len: usize) -> Result<Nonce, TlsError> {
        self.bytes += len as u64;
        if self.bytes > KEY_BYTES_LIMIT || self.seq == u64::MAX {
            return Err(TlsError::KeyExhausted);
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// Both directions of an established TLS 1.3 link.
pub struct RecordLayer {
    tx: Direction,
    rx: Direction,
}

impl RecordLayer {
    /// From the traffic secrets rustls hands over at the end of the handshake.
    pub fn new(secrets: rustls::ExtractedSecrets) -> Result<Self, TlsError> {
        Ok(Self {
            tx: Direction::new(secrets.tx.0, secrets.tx.1)?,
            rx: Direction::new(secrets.rx.0, secrets.rx.1)?,
        })
    }

    /// From raw traffic keys and IVs (a handshake run outside rustls: the NVMe/TCP target's
    /// external-PSK server in `baton-nvme`), both directions starting at sequence number 0.
    /// `alg` is the suite's AEAD (`ring::aead::AES_128_GCM`, `AES_256_GCM`, ...).
    pub fn from_keys(alg: &'static aead::Algorithm, tx: (&[u8], &[u8]), rx: (&[u8], &[u8])) -> Result<Self, TlsError> {
        Ok(Self {
            tx: Direction::from_raw(0, alg, tx.0, tx.1)?,
            rx: Direction::from_raw(0, alg, rx.0, rx.1)?,
        })
    }

    /// Seals one application-data record in place. `rec[HEADER..HEADER + plain_len]` holds the
    /// plaintext; `rec` must have room for [`OVERHEAD`] more bytes. Returns the record's length.
    pub fn seal(&mut self, rec: &mut [u8], plain_len: usize) -> Result<usize, TlsError> {
        self.seal_as(rec, plain_len, CT_APP)
    }

    /// [`RecordLayer::seal`] with the inner content type `ct` (handshake messages and alerts
    /// under the handshake keys).
    pub fn seal_as(&mut self, rec: &mut [u8], plain_len: usize, ct: u8) -> Result<usize, TlsError> {
        debug_assert!(plain_len <= PLAIN_MAX && rec.len() >= plain_len + OVERHEAD);
        let inner = plain_len + 1;
        let body = inner + TAG;
        rec[0] = CT_APP;
        rec[1..3].copy_from_slice(&[3, 3]);
        rec[3..5].copy_from_slice(&(body as u16).to_be_bytes());
        rec[HEADER + plain_len] = ct;
        let nonce = self.tx.nonce(plain_len)?;
        let (hdr, rest) = rec.split_at_mut(HEADER);
        let aad = Aad::from(<[u8; HEADER]>::try_from(&hdr[..]).unwrap_or_default());
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, aad, &mut rest[..inner])
            .map_err(|_| TlsError::Seal)?;
        rest[inner..body].copy_from_slice(tag.as_ref());
        Ok(HEADER + body)
    }

    /// Opens the whole record `rec` (header included) in place. Returns its inner content type
    /// and the plaintext's range within `rec`.
    pub fn open(&mut self, rec: &mut [u8]) -> Result<(u8, core::ops::Range<usize>), TlsError> {
        if rec.len() < HEADER + 1 + TAG || rec[0] != CT_APP {
            return Err(TlsError::BadRecord("not an encrypted application-data record"));
        }
        let (hdr, body) = rec.split_at_mut(HEADER);
        let nonce = self.rx.nonce(body.len())?;
        let aad = Aad::from(<[u8; HEADER]>::try_from(&hdr[..]).unwrap_or_default());
        let plain = self
            .rx
            .key
            .open_in_place(nonce, aad, body)
            .map_err(|_| TlsError::Open)?;
        // TLSInnerPlaintext: content, content type, zero padding.
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(TlsError::BadRecord("record without a content type"));
        };
        Ok((plain[end], HEADER..HEADER + end))
    }
}

/// Length of the record at the front of `buf` once its header is there: `Ok(None)` while the
/// header is incomplete; an error for a length no TLS 1.3 peer sends.
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, TlsError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    if !(20..=23).contains(&buf[0]) || buf[1] != 3 {
        return Err(TlsError::BadRecord(
            "not TLS (the peer speaks plaintext or another protocol)",
        ));
    }
    let len = HEADER + u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > RECORD_MAX {
        return Err(TlsError::BadRecord("record longer than TLS allows"));
    }
    Ok(Some(len))
}

/// A readable name of a TLS alert description (RFC 8446 §6).
pub fn alert_name(code: u8) -> &'static str {
    match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        80 => "internal_error",
        109 => "missing_extension",
        116 => "certificate_required",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn pair() -> (RecordLayer, RecordLayer) {
        let s = |k: u8, i: u8| ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([k; 32]),
            iv: Iv::from([i; 12]),
        };
        let a = RecordLayer::new(rustls::ExtractedSecrets {
            tx: (0, s(1, 2)),
            rx: (0, s(3, 4)),
        })
        .unwrap();
        let b = RecordLayer::new(rustls::ExtractedSecrets {
            tx: (0, s(3, 4)),
            rx: (0, s(1, 2)),
        })
        .unwrap();
        (a, b)
    }

    #[test]
    fn seal_open_round_trip_in_sequence() {
        let (mut a, mut b) = pair();
        for round in 0..3u8 {
            let mut rec = vec![0u8; 100 + OVERHEAD];
            rec[HEADER..HEADER + 100].fill(round + 7);
            let n = a.seal(&mut rec, 100).unwrap();
            assert_eq!(n, 100 + OVERHEAD);
            assert_eq!(peek_len(&rec).unwrap(), Some(n));
            let (ct, r) = b.open(&mut rec[..n]).unwrap();
            assert_eq!(ct, CT_APP);
            assert!(rec[r].iter().all(|&x| x == round + 7));
        }
    }

    #[test]
    fn tampered_replayed_or_reordered_records_fail() {
        let (mut a, mut b) = pair();
        let mut r1 = vec![0u8; 10 + OVERHEAD];
        let mut r2 = vec![0u8; 10 + OVERHEAD];
        a.seal(&mut r1, 10).unwrap();
        a.seal(&mut r2, 10).unwrap();
        let mut bad = r1.clone();
        bad[HEADER + 3] ^= 1;
        assert!(matches!(b.open(&mut bad), Err(TlsError::Open)));
        // After a failure the sequence moved on: the real first record no longer opens either,
        // which is fine, as the link is failed by then. A fresh receiver shows reordering.
        let (_, mut fresh) = pair();
        assert!(matches!(fresh.open(&mut r2.clone()), Err(TlsError::Open)));
        let (_, mut fresh) = pair();
        fresh.open(&mut r1).unwrap();
        fresh.open(&mut r2).unwrap();
    }

    #[test]
    fn lengths_beyond_tls_are_refused() {
        assert_eq!(peek_len(&[23, 3, 3]).unwrap(), None);
        assert!(peek_len(&[23, 3, 3, 0xff, 0xff]).is_err());
        let (_, mut b) = pair();
        assert!(matches!(b.open(&mut [22, 3, 3, 0, 20]), Err(TlsError::BadRecord(_))));
    }
}
