//! NVMe/TCP transport.
pub mod pdu;
