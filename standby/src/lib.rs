//! The standby role: ordered receive and apply.

pub mod receive;
