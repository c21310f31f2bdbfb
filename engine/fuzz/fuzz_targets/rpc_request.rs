//! JSON-RPC framing and request parsing over arbitrary byte streams split at
//! arbitrary points (engine::rpc::request::fuzz_request).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::rpc::request::fuzz_request(data);
});
