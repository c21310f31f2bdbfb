//! The replication transport and wire format shared by primary, relays and standby.
//!
//! - [`wire`]: the frame format (parse / encode), the only code that reads network bytes.
//! - [`crc`]: CRC32C of a concatenation from its parts' CRCs (frames sealed without re-reading data).
//! - [`transport`]: the connection interface a reactor drives by polling.
//! - [`tcp`]: its implementation over non-blocking TCP sockets.
//! - [`tls`]: TLS 1.3 on TCP links: rustls handshake, allocation-free record layer.
//! - [`inproc`]: its in-process implementation over lock-free rings, with fault injection.
//! - [`link`]: the lifecycle every link shares (connect, Hello, up, reconnect with back-off).
//! - [`liveness`]: the direct primary -> standby-host heartbeat datagram.
//! - [`endpoint`]: `HOST:PORT` / `rdma://HOST:PORT` addresses.
//! - [`any`]: one connection and one acceptor type over TCP and (feature `rdma`) RDMA.
//! - [`rdma_proto`]: the RDMA transport's pure parts (credits, message packing, reassembly).
//! - `rdma` (feature `rdma`): its implementation over RDMA verbs and rdma_cm (`docs/rdma.md`).
//! - [`readiness`]: which of many sockets have bytes to read, in one call (epoll).

pub mod any;
pub mod crc;
pub mod endpoint;
pub mod handshake;
pub mod inproc;
pub mod link;
pub mod liveness;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod rdma_proto;
pub mod readiness;
pub mod tcp;
pub mod tls;
pub mod transport;
pub mod wire;

pub use any::{AnyAcceptor, AnyConnection};
pub use endpoint::Endpoint;
pub use transport::{
    ConnState, ConnStats, Connection, OutFrame, Segs, SendCompletion, SendError, TransportError, SEGS_PER_FRAME_MAX,
};
