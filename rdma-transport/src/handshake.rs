//! The handshake decision: what a relay or standby answers to a Hello.
//!
//! Where it sits: the accepting side of every replication connection runs this once, on the
//! first frame it receives, before any operation frame is accepted. It is a pure function of
//! the Hello and of what the responder knows about the volume, so the fencing rules
//! (generation) are tested without sockets.

use crate::transport::TransportError;
use crate::wire::{self, HeaderBuf, Hello, HelloReply, RefuseReason, Role, WireError, WIRE_VERSION};

/// What the responder knows of a volume it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVolume {
    /// Volume identity.
    pub volume_id: [u8; 16],
    /// Block size in bytes.
    pub block_size: u32,
    /// Newest generation the responder has seen for the volume.
    pub generation: u64,
    /// Every LSN up to this is durable at the responder (0 = none).
    pub durable_lsn: u64,
    /// Largest frame the responder accepts.
    pub frame_bytes_max: u32,
    /// Receive credits the responder posts (0 on stream transports).
    pub recv_credits: u32,
}

/// Decides the reply to `hello`. `expected_role` is the role this endpoint serves (a relay's
/// primary port expects `Primary`, a standby expects `Relay`); `volume` is what the responder
/// holds for the Hello's volume name, `None` when it does not serve it.
///
/// Rules, in order: wrong role -> `Role`; unknown volume, or same name but another id or
/// block size -> `UnknownVolume`; generation older than the responder's -> `StaleGeneration`
/// (fencing: a primary cut off by a failover cannot write); otherwise accepted, asking to
/// resume at `durable_lsn + 1`. A newer generation is accepted: the caller records it.
pub fn answer_hello(hello: &Hello<'_>, expected_role: Role, volume: Option<&LocalVolume>) -> HelloReply {
    let refuse = |reason, generation| HelloReply::Refused {
        reason,
        generation,
        version_max: WIRE_VERSION,
    };
    if hello.role != expected_role {
        return refuse(RefuseReason::Role, 0);
    }
    let Some(v) = volume else {
        return refuse(RefuseReason::UnknownVolume, 0);
    };
    if v.volume_id != hello.volume_id || v.block_size != hello.block_size {
        return refuse(RefuseReason::UnknownVolume, v.generation);
    }
    if hello.generation < v.generation {
        return refuse(RefuseReason::StaleGeneration, v.generation);
    }
    HelloReply::Accepted {
        version_max: WIRE_VERSION,
        generation: hello.generation,
        resume_lsn: v.durable_lsn.saturating_add(1),
        frame_bytes_max: v.frame_bytes_max,
        recv_credits: v.recv_credits,
    }
}

/// The refusal to send (with [`crate::Connection::send_last`]) when a connection's first
/// frame failed because it is of another wire version; `None` for other errors, which are
/// answered by closing.
pub fn refusal_for(err: &TransportError) -> Option<HeaderBuf> {
    match err {
        TransportError::Wire(WireError::UnsupportedVersion { .. }) => {
            Some(wire::encode_hello_reply(&HelloReply::Refused {
                reason: RefuseReason::Version,
                generation: 0,
                version_max: WIRE_VERSION,
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> LocalVolume {
        LocalVolume {
            volume_id: [1; 16],
            block_size: 4096,
            generation: 5,
            durable_lsn: 99,
            frame_bytes_max: 1 << 20,
            recv_credits: 0,
        }
    }
    fn hello(generation: u64) -> Hello<'static> {
        Hello {
            role: Role::Primary,
            block_size: 4096,
            volume_id: [1; 16],
            volume_name: "v",
            generation,
            resume_lsn: 1,
            frame_bytes_max: 1 << 20,
            recv_credits: 0,
        }
    }
    fn reason(r: HelloReply) -> Option<RefuseReason> {
        match r {
            HelloReply::Refused { reason, .. } => Some(reason),
            HelloReply::Accepted { .. } => None,
        }
    }

    #[test]
    fn fencing_and_resume() {
        let v = vol();
        assert_eq!(
            reason(answer_hello(&hello(4), Role::Primary, Some(&v))),
            Some(RefuseReason::StaleGeneration)
        );
        match answer_hello(&hello(5), Role::Primary, Some(&v)) {
            HelloReply::Accepted {
                resume_lsn, generation, ..
            } => {
                assert_eq!((resume_lsn, generation), (100, 5))
            }
            r => panic!("{r:?}"),
        }
        assert!(reason(answer_hello(&hello(6), Role::Primary, Some(&v))).is_none());
        assert_eq!(
            reason(answer_hello(&hello(5), Role::Relay, Some(&v))),
            Some(RefuseReason::Role)
        );
        assert_eq!(
            reason(answer_hello(&hello(5), Role::Primary, None)),
            Some(RefuseReason::UnknownVolume)
        );
        let mut other = v;
        other.block_size = 512;
        assert_eq!(
            reason(answer_hello(&hello(5), Role::Primary, Some(&other))),
            Some(RefuseReason::UnknownVolume)
        );
    }

    #[test]
    fn version_errors_get_a_refusal() {
        let e = TransportError::Wire(WireError::UnsupportedVersion { got: 2 });
        let h = refusal_for(&e).unwrap();
        match wire::parse(h.as_bytes()).unwrap() {
            wire::Frame::HelloReply(HelloReply::Refused {
                reason, version_max, ..
            }) => {
                assert_eq!((reason, version_max), (RefuseReason::Version, WIRE_VERSION))
            }
            f => panic!("{f:?}"),
        }
        assert!(refusal_for(&TransportError::PeerClosed).is_none());
    }
}
