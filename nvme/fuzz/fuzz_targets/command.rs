//! Fuzz target: admin command handling and the I/O command parser
//! (`nvme::target::ctrlr::fuzz_command`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::target::ctrlr::fuzz_command(data));
