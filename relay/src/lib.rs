//! The primary side of replication and the relay role.
//!
//! - [`journal`]: the relay's non-volatile journal (segment files, group commit through
//!   io_uring, crash recovery, read-back for forwarding, release once the standby has it).

pub mod journal;
