//! The standby role: ordered receive and apply.
