//! Fuzz target: the host's ANA log page decoder (`nvme::spec::log::fuzz_ana_log`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::spec::log::fuzz_ana_log(data));
