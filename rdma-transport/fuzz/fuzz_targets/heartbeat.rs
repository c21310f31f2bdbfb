//! Fuzz target for the direct heartbeat decoder: `cargo fuzz run heartbeat`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rdma_transport::liveness::fuzz_heartbeat(data);
});
