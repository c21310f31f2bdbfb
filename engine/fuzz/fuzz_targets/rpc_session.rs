//! A whole management connection (framing, parsing, dispatch, responses) fed
//! arbitrary bytes (engine::rpc::session::fuzz_session).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::rpc::session::fuzz_session(data);
});
