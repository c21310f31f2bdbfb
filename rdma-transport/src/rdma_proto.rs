//! The pure parts of the RDMA transport, compiled and tested in every build: the
//! connection parameters exchanged in rdma_cm's private data, credit accounting on both
//! sides, how frames are packed into SEND messages and how the receiver reassembles them.
//! `docs/rdma.md` gives the design and its reasons; [`crate::rdma`] (feature `rdma`) drives
//! these over verbs.
//!
//! Messages: each SEND carries up to the negotiated message size of bytes of the frame
//! stream, the same bytes TCP would carry. The sender starts a frame in a new message when
//! it does not fit in what is left of the current one but fits in a whole one, so a frame up
//! to the message size always arrives whole in one receive buffer and is parsed there, in
//! place; a larger frame (up to `wire::FRAME_BYTES_MAX`) spans several messages and is
//! copied into a reassembly buffer. The receiver does not trust that packing: any frame
//! that crosses a message boundary is reassembled.
//!
//! Credits: the receiver posts `recv_slots` receive buffers; the sender starts with that
//! many credits, spends one per SEND and never posts a SEND without one, so a SEND always
//! finds a posted receive (no receiver-not-ready retries). The receiver re-posts each
//! buffer once its frames are delivered and tells the sender its running total of grants
//! (initial slots + re-posts) by an RDMA WRITE into an 8-byte word the sender advertised:
//! credit returns use no receive buffer, so they can never be blocked by the flow they
//! unblock.

use crate::wire::{self, WireError, ENVELOPE_BYTES, FRAME_BYTES_MAX};

/// First bytes of our rdma_cm private data ("BRDM").
pub const PRIV_MAGIC: u32 = 0x4d44_5242;
/// Version of the RDMA message layer (not of the frame format, which has its own).
pub const PRIV_VERSION: u8 = 1;
/// Bytes of [`ConnParams`] on the wire (rdma_connect allows 56 bytes of private data).
pub const PRIV_BYTES: usize = 32;
/// Smallest message size a peer may announce.
pub const MSG_BYTES_MIN: u32 = 4096;
/// Largest message size a peer may announce.
pub const MSG_BYTES_MAX: u32 = 1 << 20;
/// Most receive slots a peer may announce.
pub const RECV_SLOTS_MAX: u16 = 4096;

/// What one side tells the other at connection setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnParams {
    /// Receive buffers this side keeps posted: the peer's initial credits.
    pub recv_slots: u16,
    /// Bytes of each receive buffer: the largest SEND the peer may post.
    pub msg_bytes: u32,
    /// Address of this side's credit word (the peer RDMA-WRITEs its grant total there).
    pub credit_addr: u64,
    /// Remote key of the credit word's memory region.
    pub credit_rkey: u32,
}

/// A peer's connection parameters or credit grants that make no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Private data missing, too short, or not ours.
    #[error("RDMA connection parameters from peer are invalid: {0}")]
    BadParams(&'static str),
    /// The peer granted more credits than it announced receive slots.
    #[error("peer granted credits up to {granted}, but only {limit} can be outstanding")]
    OverGrant {
        /// The grant total the peer wrote.
        granted: u64,
        /// Sent so far plus the peer's slots.
        limit: u64,
    },
}

impl ConnParams {
    /// Encodes for rdma_cm private data (little-endian).
    pub fn encode(&self) -> [u8; PRIV_BYTES] {
        let mut b = [0u8; PRIV_BYTES];
        b[0..4].copy_from_slice(&PRIV_MAGIC.to_le_bytes());
        b[4] = PRIV_VERSION;
        b[6..8].copy_from_slice(&self.recv_slots.to_le_bytes());
        b[8..12].copy_from_slice(&self.msg_bytes.to_le_bytes());
        b[12..16].copy_from_slice(&self.credit_rkey.to_le_bytes());
        b[16..24].copy_from_slice(&self.credit_addr.to_le_bytes());
        b
    }

    /// Decodes and checks a peer's private data (it may be longer: rdma_cm pads it).
    pub fn decode(b: &[u8]) -> Result<ConnParams, ProtoError> {
        let b: &[u8; PRIV_BYTES] = b
            .first_chunk()
            .ok_or(ProtoError::BadParams("shorter than our parameter block"))?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if u32_at(0) != PRIV_MAGIC {
            return Err(ProtoError::BadParams("wrong magic: not a baton RDMA peer"));
        }
        if b[4] != PRIV_VERSION {
            return Err(ProtoError::BadParams("unsupported RDMA message layer version"));
        }
        let recv_slots = u16::from_le_bytes([b[6], b[7]]);
        if !(2..=RECV_SLOTS_MAX).contains(&recv_slots) {
            return Err(ProtoError::BadParams("receive slots out of range"));
        }
        let msg_bytes = u32_at(8);
        if !(MSG_BYTES_MIN..=MSG_BYTES_MAX).contains(&msg_bytes) {
            return Err(ProtoError::BadParams("message size out of range"));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[16..24]);
        Ok(ConnParams {
            recv_slots,
            msg_bytes,
            credit_rkey: u32_at(12),
            credit_addr: u64::from_le_bytes(a),
        })
    }
}

/// The sender's view: how many SENDs the peer can take now.
#[derive(Debug, Clone, Copy)]
pub struct SendCredits {
    /// Peer's receive slots (most credits outstanding at once).
    slots: u64,
    /// Grant total seen so far (initially `slots`).
    granted: u64,
    /// SENDs posted so far.
    used: u64,
}

impl SendCredits {
    /// Credits for a peer that posted `slots` receives.
    pub fn new(slots: u16) -> Self {
        Self {
            slots: slots as u64,
            granted: slots as u64,
            used: 0,
        }
    }

    /// Takes in the grant total the peer last wrote. A smaller value than seen before is a
    /// stale read and ignored; a value beyond what the peer could have re-posted is an error.
    pub fn observe(&mut self, granted: u64) -> Result<(), ProtoError> {
        let limit = self.used + self.slots;
        if granted > limit {
            return Err(ProtoError::OverGrant { granted, limit });
        }
        if granted > self.granted {
            self.granted = granted;
        }
        Ok(())
    }

    /// SENDs that may be posted now.
    pub fn available(&self) -> u64 {
        self.granted - self.used
    }

    /// Spends one credit; false (and nothing spent) when there is none.
    pub fn take(&mut self) -> bool {
        if self.used < self.granted {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// The receiver's view: re-posted buffers not yet reported to the sender.
#[derive(Debug, Clone, Copy)]
pub struct RecvCredits {
    slots: u64,
    reposted: u64,
    reported: u64,
    threshold: u64,
}

impl RecvCredits {
    /// For `slots` posted receives; grants are written back once `threshold` re-posts
    /// accumulate (at least 1, at most a quarter of the slots so the sender never waits
    /// on the receiver's batching: three quarters of its credits are always back).
    pub fn new(slots: u16, threshold: u16) -> Self {
        let slots = slots as u64;
        Self {
            slots,
            reposted: 0,
            reported: 0,
            threshold: (threshold as u64).clamp(1, (slots / 4).max(1)),
        }
    }

    /// One buffer was re-posted.
    pub fn reposted(&mut self) {
        self.reposted += 1;
    }

    /// The grant total to write to the sender now, if enough re-posts accumulated.
    pub fn due(&self) -> Option<u64> {
        (self.reposted - self.reported >= self.threshold).then_some(self.slots + self.reposted)
    }

    /// The write of `total` (from [`RecvCredits::due`]) was posted.
    pub fn reported(&mut self, total: u64) {
        self.reported = total - self.slots;
    }
}

/// Where the next frame goes in the sender's current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Append to the current message.
    Append,
    /// Close (post) the current message first, then start the frame in a fresh one.
    FreshMessage,
}

/// Packing rule: a frame that fits in a whole message but not in what is left of the
/// current one starts a fresh message; anything else is appended (a frame larger than a
/// message spills over as many messages as it needs).
pub fn place(fill: usize, frame_len: usize, msg_bytes: usize) -> Place {
    if fill > 0 && fill + frame_len > msg_bytes && frame_len <= msg_bytes {
        Place::FreshMessage
    } else {
        Place::Append
    }
}

/// One step of reading a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A whole frame at `start..start + len` of the message: parse it in place.
    InPlace {
        /// Offset in the message.
        start: usize,
        /// Frame bytes.
        len: usize,
    },
    /// A frame was completed in the reassembly buffer: parse `Reassembler::frame(len)`.
    Reassembled(usize),
    /// The message is used up (its tail, if any, waits in the reassembly buffer).
    MessageDone,
}

/// Turns the message stream back into frames: in place when a frame lies in one message,
/// through a copy when it spans several.
pub struct Reassembler {
    buf: Box<[u8]>,
    have: usize,
    /// Frame length once the envelope is known, else 0.
    need: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reassembler {
    /// Allocates the reassembly buffer (setup path: one largest frame).
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; FRAME_BYTES_MAX].into_boxed_slice(),
            have: 0,
            need: 0,
        }
    }

    /// Bytes of a partial frame held (0: between frames).
    pub fn partial(&self) -> usize {
        self.have
    }

    /// Bytes the partial frame needs in all, when known.
    pub fn partial_need(&self) -> usize {
        self.need.max(ENVELOPE_BYTES)
    }

    /// The frame completed by [`Step::Reassembled`]; call [`Reassembler::consumed`] after.
    pub fn frame(&self, len: usize) -> &[u8] {
        &self.buf[..len]
    }

    /// The reassembled frame was delivered.
    pub fn consumed(&mut self) {
        self.have = 0;
        self.need = 0;
    }

    /// Reads the next step from `msg` at `*off`, advancing `*off`. An invalid envelope is an
    /// error (the stream cannot be resynchronised).
    pub fn step(&mut self, msg: &[u8], off: &mut usize) -> Result<Step, WireError> {
        let rest = msg.get(*off..).unwrap_or(&[]);
        if self.have == 0 {
            if rest.is_empty() {
                return Ok(Step::MessageDone);
            }
            if let Some(env) = wire::peek_envelope(rest)? {
                if env.frame_len <= rest.len() {
                    let start = *off;
                    *off += env.frame_len;
                    return Ok(Step::InPlace {
                        start,
                        len: env.frame_len,
                    });
                }
                self.need = env.frame_len;
            }
        }
        // Continue (or begin) a frame that crosses the message boundary.
        let want = if self.need > 0 { self.need } else { ENVELOPE_BYTES };
        let take = (want - self.have).min(rest.len());
        self.buf[self.have..self.have + take].copy_from_slice(&rest[..take]);
        self.have += take;
        *off += take;
        if self.need == 0 {
            if let Some(env) = wire::peek_envelope(&self.buf[..self.have])? {
                self.need = env.frame_len;
                return self.step(msg, off);
            }
            return Ok(Step::MessageDone);
        }
        if self.have == self.need {
            return Ok(Step::Reassembled(self.need));
        }
        Ok(Step::MessageDone)
    }
}

#[cfg(test)]
#[path = "rdma_proto_tests.rs"]
mod tests;
