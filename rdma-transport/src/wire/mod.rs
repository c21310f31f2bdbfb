//! The replication wire format: frames exchanged by primary, relays and standby.
//!
//! Where it sits: every byte a transport ([`crate::tcp`], [`crate::inproc`], later RDMA verbs)
//! receives goes through [`parse`] exactly once, on the reactor that owns the connection, and
//! comes out as a typed [`Frame`] that borrows the receive buffer. Everything after `parse`
//! trusts the type. The sending side builds the frame header with the `encode_*` functions or
//! a [`BatchEncoder`] into an inline [`HeaderBuf`]; the data buffers travel beside it, never
//! copied into it. The byte-by-byte layout is in `docs/replication-wire.md`.
//!
//! Rules kept everywhere: versioned from the first byte, little-endian, every frame starts
//! with a 16-byte envelope holding its total length and two CRC32C (envelope and body), every
//! reserved field must be zero, every length and sum is checked arithmetic, and each rejected
//! rule is its own [`WireError`] variant.

mod encode;
mod error;
mod fuzz;
mod parse;
mod types;

pub use encode::*;
pub use error::*;
pub use fuzz::*;
pub use parse::*;
pub use types::*;

#[cfg(test)]
mod tests;
