//! A TLS 1.3 server handshake with an external PSK (RFC 8446 §2.2, §4), no certificates:
//! ClientHello with `pre_shared_key` and `psk_key_exchange_modes` → binder check →
//! ServerHello (with an x25519 or secp256r1 key share for psk_dhe_ke, none for psk_ke),
//! EncryptedExtensions, server Finished → the client's Finished checked → application
//! traffic keys for the in-place record layer.
//!
//! Not done: 0-RTT (early data is never accepted), session tickets, HelloRetryRequest (a
//! client whose key shares hold neither x25519 nor secp256r1 gets a handshake_failure
//! alert), certificates. The server is fed whole records as they arrive and never blocks.

use super::hello::{alert, parse_client_hello, ClientHello, HandshakeError};
use super::kdf::Hash;
use rdma_transport::tls::record::{self, RecordLayer, CT_ALERT, CT_APP, CT_HANDSHAKE, HEADER};
use ring::agreement;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Change cipher spec (middlebox compatibility, RFC 8446 §D.4).
const CT_CCS: u8 = 20;
/// Largest ClientHello accepted.
const HELLO_MAX: usize = 64 * 1024;
const X25519: u16 = 0x001d;
const SECP256R1: u16 = 0x0017;

/// What the PSK lookup answers for an offered identity: the PSK's hash and the TLS PSK, or
/// why the identity is not accepted.
pub type PskAnswer = Result<(Hash, Vec<u8>), String>;

/// The result of a finished handshake.
pub struct Established {
    pub records: RecordLayer,
    /// The identity the client used (as sent).
    pub identity: Vec<u8>,
    pub hash: Hash,
    /// "x25519", "secp256r1" or "psk_ke".
    pub kx: &'static str,
}

enum State {
    AwaitHello,
    AwaitFinished {
        hs: Box<RecordLayer>,
        hash: Hash,
        expect: Vec<u8>,
        app: Box<(Vec<u8>, Vec<u8>)>,
        identity: Vec<u8>,
        kx: &'static str,
    },
    Failed,
}

/// One connection's server handshake.
pub struct PskServer {
    state: State,
    /// A handshake message split over records (the ClientHello).
    pending: Vec<u8>,
}

impl Default for PskServer {
    fn default() -> Self {
        Self::new()
    }
}

impl PskServer {
    pub fn new() -> Self {
        Self {
            state: State::AwaitHello,
            pending: Vec::new(),
        }
    }

    /// Feeds one whole record (header included); records to send are appended to `out`.
    /// `Ok(Some)` when the handshake is complete. On `Err`, append [`PskServer::alert`] to
    /// the output and close.
    pub fn feed(
        &mut self,
        rec: &mut [u8],
        out: &mut Vec<u8>,
        lookup: &mut dyn FnMut(&[u8]) -> PskAnswer,
    ) -> Result<Option<Established>, HandshakeError> {
        let r = self.step(rec, out, lookup);
        if r.is_err() {
            // Keep the handshake keys for the alert; no more input is taken.
            if let State::AwaitHello = self.state {
                self.state = State::Failed;
            }
        }
        r
    }

    fn step(
        &mut self,
        rec: &mut [u8],
        out: &mut Vec<u8>,
        lookup: &mut dyn FnMut(&[u8]) -> PskAnswer,
    ) -> Result<Option<Established>, HandshakeError> {
        let ct = rec[0];
        if ct == CT_ALERT && rec.len() >= HEADER + 2 {
            let d = rec[HEADER + 1];
            return Err(HandshakeError::new(
                alert::HANDSHAKE_FAILURE,
                format!("client sent alert {} ({d})", record::alert_name(d)),
            ));
        }
        match &mut self.state {
            State::Failed => Err(HandshakeError::new(
                alert::UNEXPECTED_MESSAGE,
                "handshake already failed",
            )),
            State::AwaitHello => {
                if ct != CT_HANDSHAKE {
                    return Err(HandshakeError::new(alert::UNEXPECTED_MESSAGE, "expected a ClientHello"));
                }
                self.pending.extend_from_slice(&rec[HEADER..]);
                if self.pending.len() > HELLO_MAX {
                    return Err(HandshakeError::new(alert::DECODE_ERROR, "ClientHello too long"));
                }
                if self.pending.len() < 4 {
                    return Ok(None);
                }
                let p = &self.pending;
                let len = 4 + (usize::from(p[1]) << 16 | usize::from(p[2]) << 8 | usize::from(p[3]));
                if p.len() < len {
                    return Ok(None);
                }
                if p.len() > len {
                    return Err(HandshakeError::new(
                        alert::UNEXPECTED_MESSAGE,
                        "data after the ClientHello",
                    ));
                }
                let msg = std::mem::take(&mut self.pending);
                self.state = hello(&msg, out, lookup)?;
                Ok(None)
            }
            State::AwaitFinished { .. } => self.finished(rec),
        }
    }

    fn finished(&mut self, rec: &mut [u8]) -> Result<Option<Established>, HandshakeError> {
        let State::AwaitFinished { hs, expect, .. } = &mut self.state else {
            return Ok(None);
        };
        match rec[0] {
            CT_CCS if rec.len() == HEADER + 1 && rec[HEADER] == 1 => return Ok(None),
            CT_APP => {}
            _ => {
                return Err(HandshakeError::new(
                    alert::UNEXPECTED_MESSAGE,
                    "expected the client's Finished",
                ))
            }
        }
        let (ct, range) = hs
            .open(rec)
            .map_err(|_| HandshakeError::new(alert::DECRYPT_ERROR, "client's handshake record does not decrypt"))?;
        let m = &rec[range];
        if ct == CT_ALERT && m.len() == 2 {
            return Err(HandshakeError::new(
                alert::HANDSHAKE_FAILURE,
                format!("client sent alert {} ({})", record::alert_name(m[1]), m[1]),
            ));
        }
        if ct != CT_HANDSHAKE || m.len() != 4 + expect.len() || m[0] != 20 || m[1..4] != [0, 0, expect.len() as u8] {
            return Err(HandshakeError::new(
                alert::UNEXPECTED_MESSAGE,
                "expected the client's Finished",
            ));
        }
        if !ct_eq(&m[4..], expect) {
            return Err(HandshakeError::new(
                alert::DECRYPT_ERROR,
                "client's Finished does not verify",
            ));
        }
        let State::AwaitFinished {
            hash,
            app,
            identity,
            kx,
            ..
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Ok(None);
        };
        let (c_ap, s_ap) = *app;
        let (alg, klen) = hash.aead();
        let keys = |s: &[u8]| {
            (
                hash.expand_label(s, b"key", b"", klen),
                hash.expand_label(s, b"iv", b"", 12),
            )
        };
        let (sk, si) = keys(&s_ap);
        let (ck, ci) = keys(&c_ap);
        let records = RecordLayer::from_keys(alg, (&sk, &si), (&ck, &ci))
            .map_err(|e| HandshakeError::new(alert::INTERNAL_ERROR, e.to_string()))?;
        Ok(Some(Established {
            records,
            identity,
            hash,
            kx,
        }))
    }

    /// The alert record for `e`, sealed under the handshake keys once the server has sent
    /// its ServerHello (the client then only reads encrypted records).
    pub fn alert(&mut self, code: u8, out: &mut Vec<u8>) {
        if let State::AwaitFinished { hs, .. } = &mut self.state {
            let at = out.len();
            out.resize(at + HEADER + 2 + record::OVERHEAD, 0);
            out[at + HEADER..at + HEADER + 2].copy_from_slice(&[2, code]);
            match hs.seal_as(&mut out[at..], 2, CT_ALERT) {
                Ok(n) => out.truncate(at + n),
                Err(_) => out.truncate(at),
            }
        } else {
            out.extend_from_slice(&[CT_ALERT, 3, 3, 0, 2, 2, code]);
        }
        self.state = State::Failed;
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The first identity the lookup accepts: (index, hash, TLS PSK).
fn choose_psk(
    ch: &ClientHello<'_>,
    lookup: &mut dyn FnMut(&[u8]) -> PskAnswer,
) -> Result<(usize, Hash, Vec<u8>), HandshakeError> {
    let mut why = Vec::new();
    for (i, id) in ch.identities.iter().enumerate() {
        match lookup(id) {
            Ok((h, psk)) => return Ok((i, h, psk)),
            Err(e) => why.push(e),
        }
    }
    Err(HandshakeError::new(
        alert::UNKNOWN_PSK_IDENTITY,
        format!("no PSK for the offered identities: {}", why.join("; ")),
    ))
}

/// Handles the ClientHello: checks, binder, ServerHello and the server's encrypted flight.
fn hello(msg: &[u8], out: &mut Vec<u8>, lookup: &mut dyn FnMut(&[u8]) -> PskAnswer) -> Result<State, HandshakeError> {
    let ch = parse_client_hello(msg)?;
    let modes = check_offer(&ch)?;
    let (idx, hash, psk) = choose_psk(&ch, lookup)?;
    if !ch.suites.contains(&hash.suite()) {
        return Err(HandshakeError::new(
            alert::HANDSHAKE_FAILURE,
            format!(
                "client does not offer cipher suite {:#06x}, which its PSK's hash needs",
                hash.suite()
            ),
        ));
    }
    let early = hash.extract(None, &psk);
    verify_binder(msg, &ch, idx, hash, &early)?;
    let (kx, share, shared) = key_exchange(&ch, modes)?;
    let rng = SystemRandom::new();
    let mut random = [0u8; 32];
    rng.fill(&mut random)
        .map_err(|_| HandshakeError::new(alert::INTERNAL_ERROR, "no randomness"))?;
    let sh = server_hello(&random, ch.session_id, hash, idx as u16, share.as_ref());
    let mut th = digest::Context::new(hash.digest_alg());
    th.update(msg);
    th.update(&sh);
    record_plain(out, CT_HANDSHAKE, &sh);
    if !ch.session_id.is_empty() {
        out.extend_from_slice(&[CT_CCS, 3, 3, 0, 1, 1]);
    }
    let hlen = hash.out_len();
    let derived = hash.derive_secret(&early, b"derived", &hash.empty_hash());
    let hs_secret = hash.extract(Some(&derived), shared.as_deref().unwrap_or(&vec![0u8; hlen]));
    let t_sh = th.clone().finish();
    let c_hs = hash.derive_secret(&hs_secret, b"c hs traffic", t_sh.as_ref());
    let s_hs = hash.derive_secret(&hs_secret, b"s hs traffic", t_sh.as_ref());
    let (alg, klen) = hash.aead();
    let keys = |s: &[u8]| {
        (
            hash.expand_label(s, b"key", b"", klen),
            hash.expand_label(s, b"iv", b"", 12),
        )
    };
    let ((sk, si), (ck, ci)) = (keys(&s_hs), keys(&c_hs));
    let mut hs = RecordLayer::from_keys(alg, (&sk, &si), (&ck, &ci))
        .map_err(|e| HandshakeError::new(alert::INTERNAL_ERROR, e.to_string()))?;
    // EncryptedExtensions (empty) and Finished, one record.
    let ee = [8u8, 0, 0, 2, 0, 0];
    th.update(&ee);
    let s_fk = hash.expand_label(&s_hs, b"finished", b"", hlen);
    let s_fin_data = hash.hmac(&s_fk, &[th.clone().finish().as_ref()]);
    let mut flight = ee.to_vec();
    flight.extend_from_slice(&[20, 0, 0, hlen as u8]);
    flight.extend_from_slice(&s_fin_data);
    th.update(&flight[ee.len()..]);
    let at = out.len();
    out.resize(at + HEADER + flight.len() + record::OVERHEAD, 0);
    out[at + HEADER..at + HEADER + flight.len()].copy_from_slice(&flight);
    let n = hs
        .seal_as(&mut out[at..], flight.len(), CT_HANDSHAKE)
        .map_err(|e| HandshakeError::new(alert::INTERNAL_ERROR, e.to_string()))?;
    out.truncate(at + n);
    // Application secrets and the client's expected Finished, over CH..server Finished.
    let t_sf = th.finish();
    let derived2 = hash.derive_secret(&hs_secret, b"derived", &hash.empty_hash());
    let master = hash.extract(Some(&derived2), &vec![0u8; hlen]);
    let c_ap = hash.derive_secret(&master, b"c ap traffic", t_sf.as_ref());
    let s_ap = hash.derive_secret(&master, b"s ap traffic", t_sf.as_ref());
    let c_fk = hash.expand_label(&c_hs, b"finished", b"", hlen);
    let expect = hash.hmac(&c_fk, &[t_sf.as_ref()]);
    Ok(State::AwaitFinished {
        hs: Box::new(hs),
        hash,
        expect,
        app: Box::new((c_ap, s_ap)),
        identity: ch.identities[idx].to_vec(),
        kx,
    })
}

/// The ClientHello offers TLS 1.3 and a PSK: returns its PSK key exchange modes.
fn check_offer<'a>(ch: &ClientHello<'a>) -> Result<&'a [u8], HandshakeError> {
    if !ch.tls13 {
        return Err(HandshakeError::new(
            alert::PROTOCOL_VERSION,
            "client does not offer TLS 1.3",
        ));
    }
    let Some(modes) = ch.psk_modes else {
        return Err(HandshakeError::new(
            alert::MISSING_EXTENSION,
            "client offers no PSK (no psk_key_exchange_modes / pre_shared_key): this listener needs TLS with a PSK",
        ));
    };
    if ch.identities.is_empty() {
        return Err(HandshakeError::new(
            alert::MISSING_EXTENSION,
            "client offers no PSK (no pre_shared_key): this listener needs TLS with a PSK",
        ));
    }
    Ok(modes)
}

/// The binder of identity `idx` (RFC 8446 §4.2.11.2), over the ClientHello up to the
/// binders list, proves the host holds the same PSK (`early`: its early secret).
fn verify_binder(msg: &[u8], ch: &ClientHello<'_>, idx: usize, hash: Hash, early: &[u8]) -> Result<(), HandshakeError> {
    let binder_key = hash.derive_secret(early, b"ext binder", &hash.empty_hash());
    let fk = hash.expand_label(&binder_key, b"finished", b"", hash.out_len());
    let partial = digest::digest(hash.digest_alg(), &msg[..ch.binders_at]);
    if !ct_eq(&hash.hmac(&fk, &[partial.as_ref()]), ch.binders[idx]) {
        return Err(HandshakeError::new(
            alert::DECRYPT_ERROR,
            "PSK binder does not verify: the host's key differs from the one configured for it",
        ));
    }
    Ok(())
}

/// The server's key share and the shared secret: (name, (group, public key), secret).
type Kx = (&'static str, Option<(u16, Vec<u8>)>, Option<Vec<u8>>);

fn key_exchange(ch: &ClientHello<'_>, modes: &[u8]) -> Result<Kx, HandshakeError> {
    if modes.contains(&1) {
        for (group, alg, name) in [
            (X25519, &agreement::X25519, "x25519"),
            (SECP256R1, &agreement::ECDH_P256, "secp256r1"),
        ] {
            let Some((_, peer)) = ch.key_shares.iter().find(|(g, _)| *g == group) else {
                continue;
            };
            let rng = SystemRandom::new();
            let bad = |_| HandshakeError::new(alert::INTERNAL_ERROR, "key generation failed");
            let mine = agreement::EphemeralPrivateKey::generate(alg, &rng).map_err(bad)?;
            let public = mine.compute_public_key().map_err(bad)?.as_ref().to_vec();
            let shared =
                agreement::agree_ephemeral(mine, &agreement::UnparsedPublicKey::new(alg, peer), |s| s.to_vec())
                    .map_err(|_| {
                        HandshakeError::new(
                            alert::ILLEGAL_PARAMETER,
                            format!("client's {name} key share is invalid"),
                        )
                    })?;
            return Ok((name, Some((group, public)), Some(shared)));
        }
    }
    if modes.contains(&0) {
        return Ok(("psk_ke", None, None));
    }
    if modes.contains(&1) {
        return Err(HandshakeError::new(
            alert::HANDSHAKE_FAILURE,
            "client's key shares hold neither x25519 nor secp256r1 (no HelloRetryRequest is sent)",
        ));
    }
    Err(HandshakeError::new(
        alert::HANDSHAKE_FAILURE,
        "client offers no PSK key exchange mode this server knows",
    ))
}

fn server_hello(random: &[u8; 32], session_id: &[u8], hash: Hash, idx: u16, share: Option<&(u16, Vec<u8>)>) -> Vec<u8> {
    let mut ext = Vec::with_capacity(128);
    ext.extend_from_slice(&[0, 43, 0, 2, 3, 4]);
    ext.extend_from_slice(&[0, 41, 0, 2]);
    ext.extend_from_slice(&idx.to_be_bytes());
    if let Some((group, key)) = share {
        ext.extend_from_slice(&[0, 51]);
        ext.extend_from_slice(&((4 + key.len()) as u16).to_be_bytes());
        ext.extend_from_slice(&group.to_be_bytes());
        ext.extend_from_slice(&(key.len() as u16).to_be_bytes());
        ext.extend_from_slice(key);
    }
    let mut body = Vec::with_capacity(80 + ext.len());
    body.extend_from_slice(&[3, 3]);
    body.extend_from_slice(random);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&hash.suite().to_be_bytes());
    body.push(0);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut m = vec![2u8, 0, 0, 0];
    m[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&body);
    m
}

fn record_plain(out: &mut Vec<u8>, ct: u8, body: &[u8]) {
    out.extend_from_slice(&[ct, 3, 3]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}
