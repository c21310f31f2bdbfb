//! NVMe and NVMe-oF: spec types, the NVMe/TCP PDU codec, the target and the host library.
