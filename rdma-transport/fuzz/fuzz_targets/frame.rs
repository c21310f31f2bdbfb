//! Fuzz target for the replication frame parser: `cargo fuzz run frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rdma_transport::wire::fuzz_frame(data);
});
