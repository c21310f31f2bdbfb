//! The NVMe/TCP transport's wire layer, shared by the target (`crate::nvmf::tcp`) and the
//! host (`crate::host`): PDU layouts, the encoder and the streaming receiver.
pub mod pdu;
