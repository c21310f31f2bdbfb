//! The primary side of replication and the relay role.
