//! NVMe in-band authentication, DH-HMAC-CHAP (NVMe base specification, "Authentication";
//! NVMe-oF "Authentication Send / Receive"): the command fields, the message layouts both
//! sides exchange, the secret representation (`DHHC-1:xx:<base64>:`) and the hash
//! computations (key transformation, host and controller responses).
//!
//! Parsers take untrusted bytes and return typed errors; nothing here panics on input.
//! Only the NULL Diffie-Hellman group is implemented (no DH exponentials).

use super::Sqe;
use ring::hmac;
use thiserror::Error;

/// SECP of Authentication Send/Receive for DH-HMAC-CHAP.
pub const SECP_DHCHAP: u8 = 0xE9;
/// SPSP0 / SPSP1 of Authentication Send/Receive for DH-HMAC-CHAP.
pub const SPSP0: u8 = 0x01;
pub const SPSP1: u8 = 0x01;
/// AUTH-ID of the DH-HMAC-CHAP protocol in a negotiate descriptor.
pub const AUTHID_DHCHAP: u8 = 0x01;

/// AUTH-Type: common messages (negotiate, failure) and DH-HMAC-CHAP messages.
pub mod auth_type {
    pub const COMMON: u8 = 0x00;
    pub const DHCHAP: u8 = 0x01;
}

/// AUTH-ID of each message.
pub mod msg {
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xF0;
    pub const FAILURE1: u8 = 0x91;
}

/// Hash function identifiers (negotiate list, challenge HashID, secret `xx`).
pub mod hash_id {
    pub const SHA256: u8 = 0x01;
    pub const SHA384: u8 = 0x02;
    pub const SHA512: u8 = 0x03;
}

/// Diffie-Hellman group identifiers.
pub mod dh_group {
    pub const NULL: u8 = 0x00;
    pub const FFDHE2048: u8 = 0x01;
    pub const FFDHE8192: u8 = 0x05;
}

/// Failure reason code (the only one defined: "authentication failed") and explanations.
pub mod failure {
    pub const REASON_FAILED: u8 = 0x01;
    pub const FAILED: u8 = 0x01;
    pub const NOT_USABLE: u8 = 0x02;
    pub const CONCAT_MISMATCH: u8 = 0x03;
    pub const HASH_UNUSABLE: u8 = 0x04;
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    pub const INCORRECT_PROTOCOL: u8 = 0x07;
}

/// Connect response DW0 bit 17 (AUTHREQ.ATR): the host must authenticate this queue.
pub const CONNECT_AUTHREQ_ATR: u32 = 1 << 17;
/// Connect response DW0 bit 18 (AUTHREQ.ASCR): authentication and secure channel required
/// (never set: secure channel concatenation is not supported).
pub const CONNECT_AUTHREQ_ASCR: u32 = 1 << 18;

/// A hash function DH-HMAC-CHAP can negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn from_id(id: u8) -> Option<Hash> {
        match id {
            hash_id::SHA256 => Some(Hash::Sha256),
            hash_id::SHA384 => Some(Hash::Sha384),
            hash_id::SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }
    pub fn id(self) -> u8 {
        match self {
            Hash::Sha256 => hash_id::SHA256,
            Hash::Sha384 => hash_id::SHA384,
            Hash::Sha512 => hash_id::SHA512,
        }
    }
    /// Digest length in bytes (also the challenge and response length, HL).
    pub fn digest_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
        }
    }
    fn alg(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha384 => hmac::HMAC_SHA384,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }
    /// HMAC over the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(self.alg(), key));
        for p in parts {
            ctx.update(p);
        }
        ctx.sign().as_ref().to_vec()
    }
}

/// Why a `DHHC-1` secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("a DH-HMAC-CHAP secret starts with \"DHHC-1:\"")]
    Prefix,
    #[error("hash identifier {0:?}: expected 00, 01, 02 or 03")]
    HashId(String),
    #[error("the secret is not valid base64")]
    Base64,
    #[error("decoded length {0} bytes: expected 36, 52 or 68 (a 32, 48 or 64 byte key and its CRC-32)")]
    Length(usize),
    #[error("CRC-32 mismatch: the secret is damaged")]
    Crc,
}

/// A DH-HMAC-CHAP secret: the key and the hash its transformation uses (0 = none).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub hash: u8,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {{ hash: {}, key: <{} bytes> }}", self.hash, self.key.len())
    }
}

impl Secret {
    /// Parses `DHHC-1:xx:<base64 of key || CRC-32 LE>:` (the trailing ':' optional).
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let rest = s.trim().strip_prefix("DHHC-1:").ok_or(SecretError::Prefix)?;
        let (hx, b64) = rest.split_once(':').ok_or(SecretError::Prefix)?;
        let hash = match hx {
            "00" | "01" | "02" | "03" => hx.as_bytes()[1] - b'0',
            _ => return Err(SecretError::HashId(hx.chars().take(8).collect())),
        };
        let b64 = b64.strip_suffix(':').unwrap_or(b64);
        let raw = base64_decode(b64).ok_or(SecretError::Base64)?;
        if !matches!(raw.len(), 36 | 52 | 68) {
            return Err(SecretError::Length(raw.len()));
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        if crc32(key).to_le_bytes() != crc {
            return Err(SecretError::Crc);
        }
        Ok(Secret {
            hash,
            key: key.to_vec(),
        })
    }

    /// The text form of this secret.
    pub fn format(&self) -> String {
        let mut raw = self.key.clone();
        raw.extend_from_slice(&crc32(&self.key).to_le_bytes());
        format!("DHHC-1:{:02}:{}:", self.hash, base64_encode(&raw))
    }

    /// The transformed key: the key itself for hash 0, else HMAC-hash(key, nqn ||
    /// "NVMe-over-Fabrics"). The host key is transformed with the host NQN, the
    /// controller key with the subsystem NQN.
    pub fn transform(&self, nqn: &str) -> Vec<u8> {
        match Hash::from_id(self.hash) {
            None => self.key.clone(),
            Some(h) => h.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
        }
    }
}

/// The host's response: HMAC(Kh', C1 || S1 || TID || SC_C || "HostHost" || hostnqn || 0 ||
/// subnqn), Kh' the host key transformed with the host NQN (NULL DH group: C1 as sent).
pub fn host_response(h: Hash, key: &Secret, c1: &[u8], s1: u32, tid: u16, hostnqn: &str, subnqn: &str) -> Vec<u8> {
    let k = key.transform(hostnqn);
    h.hmac(
        &k,
        &[
            c1,
            &s1.to_le_bytes(),
            &tid.to_le_bytes(),
            &[0],
            b"HostHost",
            hostnqn.as_bytes(),
            &[0],
            subnqn.as_bytes(),
        ],
    )
}

/// The controller's response: HMAC(Kc', C2 || S2 || TID || SC_C || "Controller" || subnqn
/// || 0 || hostnqn), Kc' the controller key transformed with the subsystem NQN.
pub fn ctrl_response(h: Hash, key: &Secret, c2: &[u8], s2: u32, tid: u16, hostnqn: &str, subnqn: &str) -> Vec<u8> {
    let k = key.transform(subnqn);
    h.hmac(
        &k,
        &[
            c2,
            &s2.to_le_bytes(),
            &tid.to_le_bytes(),
            &[0],
            b"Controller",
            subnqn.as_bytes(),
            &[0],
            hostnqn.as_bytes(),
        ],
    )
}

/// Authentication Send / Receive command fields (CDW10: SPSP0 15:8, SPSP1 23:16, SECP
/// 31:24; CDW11: TL for send, AL for receive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthCmd {
    pub secp: u8,
    pub spsp0: u8,
    pub spsp1: u8,
    pub len: u32,
}

impl AuthCmd {
    pub fn from_sqe(sqe: &Sqe) -> AuthCmd {
        AuthCmd {
            spsp0: (sqe.cdw10 >> 8) as u8,
            spsp1: (sqe.cdw10 >> 16) as u8,
            secp: (sqe.cdw10 >> 24) as u8,
            len: sqe.cdw11,
        }
    }
    /// The DH-HMAC-CHAP fields with length `len`.
    pub fn dhchap(len: u32) -> AuthCmd {
        AuthCmd {
            secp: SECP_DHCHAP,
            spsp0: SPSP0,
            spsp1: SPSP1,
            len,
        }
    }
    pub fn to_sqe(self, sqe: &mut Sqe) {
        sqe.cdw10 = (u32::from(self.spsp0) << 8) | (u32::from(self.spsp1) << 16) | (u32::from(self.secp) << 24);
        sqe.cdw11 = self.len;
    }
    pub fn is_dhchap(&self) -> bool {
        self.secp == SECP_DHCHAP && self.spsp0 == SPSP0 && self.spsp1 == SPSP1
    }
}

/// Why a received authentication message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsgError {
    #[error("message of {got} bytes, shorter than the {need} its fields need")]
    Short { need: usize, got: usize },
    #[error("unknown message AUTH-Type {auth_type:#04x} AUTH-ID {auth_id:#04x}")]
    Unknown { auth_type: u8, auth_id: u8 },
    #[error("negotiate: {0}")]
    Negotiate(&'static str),
    #[error("HL {0}: not the length of a supported hash")]
    HashLength(u8),
}

/// A message the host sends (Authentication Send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg<'a> {
    Negotiate {
        tid: u16,
        sc_c: u8,
        /// Hash IDs and DH group IDs the host offers for DH-HMAC-CHAP.
        hashes: &'a [u8],
        dhgroups: &'a [u8],
    },
    Reply {
        tid: u16,
        hl: u8,
        /// The host asks the controller to authenticate itself (bidirectional).
        cvalid: bool,
        /// S2 (bidirectional).
        seqnum: u32,
        response: &'a [u8],
        /// C2 (bidirectional).
        c2: &'a [u8],
        dhv: &'a [u8],
    },
    Success2 {
        tid: u16,
    },
    Failure2 {
        tid: u16,
        reason: u8,
        explanation: u8,
    },
}

fn need(d: &[u8], n: usize) -> Result<(), MsgError> {
    if d.len() < n {
        Err(MsgError::Short { need: n, got: d.len() })
    } else {
        Ok(())
    }
}

fn le16(d: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([d[o], d[o + 1]])
}

fn le32(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
}

/// Negotiate header bytes and one protocol descriptor's.
const NEGOTIATE_HDR: usize = 8;
const DESCRIPTOR: usize = 64;
/// Reply, challenge, success1, success2 header bytes; failure message bytes.
const DHCHAP_HDR: usize = 16;
const FAILURE_LEN: usize = 8;

/// Parses a message the host sent (Authentication Send data).
pub fn parse_host_msg(d: &[u8]) -> Result<HostMsg<'_>, MsgError> {
    need(d, 6)?;
    let (ty, id, tid) = (d[0], d[1], le16(d, 4));
    match (ty, id) {
        (auth_type::COMMON, msg::NEGOTIATE) => {
            need(d, NEGOTIATE_HDR)?;
            let napd = usize::from(d[7]);
            if napd == 0 {
                return Err(MsgError::Negotiate("no protocol descriptor (NAPD 0)"));
            }
            need(d, NEGOTIATE_HDR + napd * DESCRIPTOR)?;
            // The first DH-HMAC-CHAP descriptor is the one that counts.
            for i in 0..napd {
                let p = &d[NEGOTIATE_HDR + i * DESCRIPTOR..NEGOTIATE_HDR + (i + 1) * DESCRIPTOR];
                if p[0] != AUTHID_DHCHAP {
                    continue;
                }
                let (halen, dhlen) = (usize::from(p[2]), usize::from(p[3]));
                if halen > 30 || dhlen > 30 {
                    return Err(MsgError::Negotiate("HALEN or DHLEN above 30"));
                }
                return Ok(HostMsg::Negotiate {
                    tid,
                    sc_c: d[6],
                    hashes: &p[4..4 + halen],
                    dhgroups: &p[34..34 + dhlen],
                });
            }
            Err(MsgError::Negotiate("no DH-HMAC-CHAP protocol descriptor"))
        }
        (auth_type::DHCHAP, msg::REPLY) => {
            need(d, DHCHAP_HDR)?;
            let hl = d[6];
            if !matches!(hl, 32 | 48 | 64) {
                return Err(MsgError::HashLength(hl));
            }
            let h = usize::from(hl);
            let dhvlen = usize::from(le16(d, 10));
            need(d, DHCHAP_HDR + 2 * h + dhvlen)?;
            let body = &d[DHCHAP_HDR..];
            Ok(HostMsg::Reply {
                tid,
                hl,
                cvalid: d[8] != 0,
                seqnum: le32(d, 12),
                response: &body[..h],
                c2: &body[h..2 * h],
                dhv: &body[2 * h..2 * h + dhvlen],
            })
        }
        (auth_type::DHCHAP, msg::SUCCESS2) => {
            need(d, DHCHAP_HDR)?;
            Ok(HostMsg::Success2 { tid })
        }
        (auth_type::COMMON, msg::FAILURE2) => {
            need(d, FAILURE_LEN)?;
            Ok(HostMsg::Failure2 {
                tid,
                reason: d[6],
                explanation: d[7],
            })
        }
        _ => Err(MsgError::Unknown {
            auth_type: ty,
            auth_id: id,
        }),
    }
}

/// A message the controller sends (Authentication Receive data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtrlMsg<'a> {
    Challenge {
        tid: u16,
        hash: u8,
        dhgroup: u8,
        seqnum: u32,
        challenge: &'a [u8],
        dhv: &'a [u8],
    },
    Success1 {
        tid: u16,
        hl: u8,
        /// The controller's response (bidirectional), else None.
        response: Option<&'a [u8]>,
    },
    Failure1 {
        tid: u16,
        reason: u8,
        explanation: u8,
    },
}

/// Encodes a challenge (NULL DH group: no DH value).
pub fn encode_challenge(tid: u16, h: Hash, seqnum: u32, c1: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; DHCHAP_HDR];
    v[0] = auth_type::DHCHAP;
    v[1] = msg::CHALLENGE;
    v[4..6].copy_from_slice(&tid.to_le_bytes());
    v[6] = c1.len() as u8;
    v[8] = h.id();
    v[9] = dh_group::NULL;
    v[12..16].copy_from_slice(&seqnum.to_le_bytes());
    v.extend_from_slice(c1);
    v
}

/// Encodes Success1: HL, and the controller's response when the host asked for one.
pub fn encode_success1(tid: u16, h: Hash, response: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![0u8; DHCHAP_HDR];
    v[0] = auth_type::DHCHAP;
    v[1] = msg::SUCCESS1;
    v[4..6].copy_from_slice(&tid.to_le_bytes());
    v[6] = h.digest_len() as u8;
    if let Some(r) = response {
        v[8] = 1;
        v.extend_from_slice(r);
    }
    v
}

/// Encodes a failure message (Failure1 from the controller, Failure2 from the host).
pub fn encode_failure(id: u8, tid: u16, explanation: u8) -> Vec<u8> {
    let mut v = vec![0u8; FAILURE_LEN];
    v[0] = auth_type::COMMON;
    v[1] = id;
    v[4..6].copy_from_slice(&tid.to_le_bytes());
    v[6] = failure::REASON_FAILED;
    v[7] = explanation;
    v
}

/// Encodes a negotiate message with one DH-HMAC-CHAP descriptor (host side).
pub fn encode_negotiate(tid: u16, hashes: &[u8], dhgroups: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; NEGOTIATE_HDR + DESCRIPTOR];
    v[0] = auth_type::COMMON;
    v[1] = msg::NEGOTIATE;
    v[4..6].copy_from_slice(&tid.to_le_bytes());
    v[7] = 1;
    let p = &mut v[NEGOTIATE_HDR..];
    p[0] = AUTHID_DHCHAP;
    let (ha, dh) = (hashes.len().min(30), dhgroups.len().min(30));
    p[2] = ha as u8;
    p[3] = dh as u8;
    p[4..4 + ha].copy_from_slice(&hashes[..ha]);
    p[34..34 + dh].copy_from_slice(&dhgroups[..dh]);
    v
}

/// Encodes a reply (host side): response, then C2 (zeros when not bidirectional).
pub fn encode_reply(tid: u16, response: &[u8], c2: Option<(&[u8], u32)>) -> Vec<u8> {
    let hl = response.len();
    let mut v = vec![0u8; DHCHAP_HDR];
    v[0] = auth_type::DHCHAP;
    v[1] = msg::REPLY;
    v[4..6].copy_from_slice(&tid.to_le_bytes());
    v[6] = hl as u8;
    v.extend_from_slice(response);
    match c2 {
        Some((c, s2)) => {
            v[8] = 1;
            v[12..16].copy_from_slice(&s2.to_le_bytes());
            v.extend_from_slice(c);
        }
        None => v.resize(DHCHAP_HDR + 2 * hl, 0),
    }
    v
}

/// Encodes Success2 (host side).
pub fn encode_success2(tid: u16) -> Vec<u8> {
    let mut v = vec![0u8; DHCHAP_HDR];
    v[0] = auth_type::DHCHAP;
    v[1] = msg::SUCCESS2;
    v[4..6].copy_from_slice(&tid.to_le_bytes());
    v
}

/// Parses a message the controller sent (host side and tests).
pub fn parse_ctrl_msg(d: &[u8]) -> Result<CtrlMsg<'_>, MsgError> {
    need(d, 6)?;
    let (ty, id, tid) = (d[0], d[1], le16(d, 4));
    match (ty, id) {
        (auth_type::DHCHAP, msg::CHALLENGE) => {
            need(d, DHCHAP_HDR)?;
            let hl = usize::from(d[6]);
            let dhvlen = usize::from(le16(d, 10));
            need(d, DHCHAP_HDR + hl + dhvlen)?;
            Ok(CtrlMsg::Challenge {
                tid,
                hash: d[8],
                dhgroup: d[9],
                seqnum: le32(d, 12),
                challenge: &d[DHCHAP_HDR..DHCHAP_HDR + hl],
                dhv: &d[DHCHAP_HDR + hl..DHCHAP_HDR + hl + dhvlen],
            })
        }
        (auth_type::DHCHAP, msg::SUCCESS1) => {
            need(d, DHCHAP_HDR)?;
            let hl = d[6];
            let response = if d[8] != 0 {
                need(d, DHCHAP_HDR + usize::from(hl))?;
                Some(&d[DHCHAP_HDR..DHCHAP_HDR + usize::from(hl)])
            } else {
                None
            };
            Ok(CtrlMsg::Success1 { tid, hl, response })
        }
        (auth_type::COMMON, msg::FAILURE1) => {
            need(d, FAILURE_LEN)?;
            Ok(CtrlMsg::Failure1 {
                tid,
                reason: d[6],
                explanation: d[7],
            })
        }
        _ => Err(MsgError::Unknown {
            auth_type: ty,
            auth_id: id,
        }),
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`): the check value of a secret.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64_encode(d: &[u8]) -> String {
    let mut s = String::with_capacity(d.len().div_ceil(3) * 4);
    for ch in d.chunks(3) {
        let n =
            (u32::from(ch[0]) << 16) | (u32::from(*ch.get(1).unwrap_or(&0)) << 8) | u32::from(*ch.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= ch.len() {
                s.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decodes standard base64 (padding required to a multiple of 4); None if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, q) in b.chunks(4).enumerate() {
        let last = i + 1 == b.len() / 4;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            let v = B64.iter().position(|&x| x == c)? as u32;
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
