//! Fuzz target: the DH-HMAC-CHAP message parser and transaction (`nvme::nvmf::auth::fuzz_auth`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::nvmf::auth::fuzz_auth(data));
