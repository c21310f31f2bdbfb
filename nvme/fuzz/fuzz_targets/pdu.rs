//! Fuzz target: the NVMe/TCP PDU receiver (`nvme::tcp::pdu::fuzz_pdu`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::tcp::pdu::fuzz_pdu(data));
