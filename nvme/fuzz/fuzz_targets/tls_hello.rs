//! Fuzz target: the NVMe/TCP TLS ClientHello parser and the PSK server handshake fed
//! arbitrary records (`nvme::nvmf::tls::fuzz_hello`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::nvmf::tls::fuzz_hello(data));
