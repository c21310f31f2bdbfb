//! The TLS 1.3 ClientHello (RFC 8446 §4.1.2) as far as an external-PSK server needs it:
//! versions, suites, the PSK modes, key shares, the PSK identities and binders. Bytes from
//! the network: every length is checked, nothing panics.

use thiserror::Error;

/// Alert descriptions this server sends (RFC 8446 §6).
pub mod alert {
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const DECRYPT_ERROR: u8 = 51;
    pub const PROTOCOL_VERSION: u8 = 70;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const MISSING_EXTENSION: u8 = 109;
    pub const UNKNOWN_PSK_IDENTITY: u8 = 115;
}

/// A refused handshake: the alert to send and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{why} (alert {alert})")]
pub struct HandshakeError {
    pub alert: u8,
    pub why: String,
}

impl HandshakeError {
    pub fn new(alert: u8, why: impl Into<String>) -> Self {
        Self { alert, why: why.into() }
    }
}

fn decode(why: &str) -> HandshakeError {
    HandshakeError::new(alert::DECODE_ERROR, format!("malformed ClientHello: {why}"))
}

/// Extension types.
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;

/// The parts of a ClientHello the server uses.
#[derive(Debug, Default)]
pub struct ClientHello<'a> {
    pub session_id: &'a [u8],
    /// Cipher suites offered.
    pub suites: Vec<u16>,
    /// supported_versions lists TLS 1.3.
    pub tls13: bool,
    /// psk_key_exchange_modes (0 = psk_ke, 1 = psk_dhe_ke), if sent.
    pub psk_modes: Option<&'a [u8]>,
    /// (group, key) of every key share.
    pub key_shares: Vec<(u16, &'a [u8])>,
    /// supported_groups, if sent.
    pub groups: Vec<u16>,
    /// PSK identities, in order, and their binders.
    pub identities: Vec<&'a [u8]>,
    pub binders: Vec<&'a [u8]>,
    /// Offset (in the whole message, header included) where the binders list starts: the
    /// binders cover the message up to here.
    pub binders_at: usize,
}

struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], HandshakeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| decode(what))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, HandshakeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, HandshakeError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn vec8(&mut self, what: &str) -> Result<&'a [u8], HandshakeError> {
        let n = self.u8(what)?;
        self.take(n.into(), what)
    }
    fn vec16(&mut self, what: &str) -> Result<&'a [u8], HandshakeError> {
        let n = self.u16(what)?;
        self.take(n.into(), what)
    }
    fn done(&self) -> bool {
        self.at == self.b.len()
    }
}

fn u16s(b: &[u8], what: &str) -> Result<Vec<u16>, HandshakeError> {
    if !b.len().is_multiple_of(2) {
        return Err(decode(what));
    }
    Ok(b.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
}

/// Parses one whole ClientHello message (its 4-byte handshake header included).
pub fn parse_client_hello(msg: &[u8]) -> Result<ClientHello<'_>, HandshakeError> {
    let mut r = Rd { b: msg, at: 0 };
    if r.u8("type")? != 1 {
        return Err(HandshakeError::new(
            alert::UNEXPECTED_MESSAGE,
            "first handshake message is not a ClientHello",
        ));
    }
    let l = r.take(3, "length")?;
    if usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]) != msg.len() - 4 {
        return Err(decode("length"));
    }
    let mut ch = ClientHello::default();
    r.u16("legacy_version")?;
    r.take(32, "random")?;
    ch.session_id = r.vec8("session id")?;
    if ch.session_id.len() > 32 {
        return Err(decode("session id longer than 32"));
    }
    ch.suites = u16s(r.vec16("cipher suites")?, "cipher suites")?;
    if r.vec8("compression methods")? != [0] {
        return Err(HandshakeError::new(alert::ILLEGAL_PARAMETER, "compression offered"));
    }
    if r.done() {
        return Err(HandshakeError::new(
            alert::PROTOCOL_VERSION,
            "no extensions: not a TLS 1.3 client",
        ));
    }
    let ext_len = usize::from(r.u16("extensions")?);
    if r.at + ext_len != msg.len() {
        return Err(decode("extensions length"));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !r.done() {
        if seen.contains(&EXT_PRE_SHARED_KEY) {
            return Err(HandshakeError::new(
                alert::ILLEGAL_PARAMETER,
                "pre_shared_key is not the last extension",
            ));
        }
        let ty = r.u16("extension type")?;
        if seen.contains(&ty) {
            return Err(HandshakeError::new(
                alert::ILLEGAL_PARAMETER,
                format!("extension {ty} sent twice"),
            ));
        }
        seen.push(ty);
        let body_at = r.at + 2;
        let body = r.vec16("extension")?;
        extension(&mut ch, ty, body, body_at)?;
    }
    Ok(ch)
}

fn extension<'a>(ch: &mut ClientHello<'a>, ty: u16, body: &'a [u8], body_at: usize) -> Result<(), HandshakeError> {
    let mut e = Rd { b: body, at: 0 };
    match ty {
        EXT_SUPPORTED_VERSIONS => {
            ch.tls13 = u16s(e.vec8("supported_versions")?, "supported_versions")?.contains(&0x0304)
        }
        EXT_PSK_MODES => ch.psk_modes = Some(e.vec8("psk_key_exchange_modes")?),
        EXT_SUPPORTED_GROUPS => ch.groups = u16s(e.vec16("supported_groups")?, "supported_groups")?,
        EXT_KEY_SHARE => {
            let mut s = Rd {
                b: e.vec16("key_share")?,
                at: 0,
            };
            while !s.done() {
                let g = s.u16("key share group")?;
                ch.key_shares.push((g, s.vec16("key share")?));
            }
        }
        EXT_PRE_SHARED_KEY => {
            let mut ids = Rd {
                b: e.vec16("psk identities")?,
                at: 0,
            };
            while !ids.done() {
                ch.identities.push(ids.vec16("psk identity")?);
                ids.take(4, "obfuscated ticket age")?;
            }
            ch.binders_at = body_at + e.at;
            let mut bs = Rd {
                b: e.vec16("psk binders")?,
                at: 0,
            };
            while !bs.done() {
                ch.binders.push(bs.vec8("psk binder")?);
            }
            if ch.identities.is_empty() || ch.identities.len() != ch.binders.len() {
                return Err(HandshakeError::new(
                    alert::ILLEGAL_PARAMETER,
                    "PSK identities and binders do not pair up",
                ));
            }
        }
        _ => return Ok(()),
    }
    if !e.done() {
        return Err(decode("trailing bytes in an extension"));
    }
    Ok(())
}
