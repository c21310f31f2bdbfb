//! The replication transport and wire format shared by primary, relays and standby.
//!
//! - [`wire`]: the frame format (parse / encode), the only code that reads network bytes.
//! - [`crc`]: CRC32C of a concatenation from its parts' CRCs (frames sealed without re-reading data).
//! - [`transport`]: the connection interface a reactor drives by polling.
//! - [`tcp`]: its implementation over non-blocking TCP sockets.
//! - [`tls`]: TLS 1.3 on TCP links: rustls handshake, allocation-free record layer.
//! - [`inproc`]: its in-process implementation over lock-free rings, with fault injection.
//! - [`liveness`]: the direct primary -> standby-host heartbeat datagram.
//! - [`readiness`]: which of many sockets have bytes to read, in one call (epoll).

pub mod crc;
pub mod handshake;
pub mod inproc;
pub mod liveness;
pub mod readiness;
pub mod tcp;
pub mod tls;
pub mod transport;
pub mod wire;

pub use transport::{
    ConnState, ConnStats, Connection, OutFrame, Segs, SendCompletion, SendError, TransportError, SEGS_PER_FRAME_MAX,
};
