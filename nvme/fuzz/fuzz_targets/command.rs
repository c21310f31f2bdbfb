//! Fuzz target: admin command handling and the I/O command parser
//! (`nvme::nvmf::ctrlr::fuzz_command`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::nvmf::ctrlr::fuzz_command(data));
