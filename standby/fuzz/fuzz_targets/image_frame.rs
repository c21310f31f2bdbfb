//! Fuzz target for the execution-image frame decoder: `cargo fuzz run image_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    standby::image::wire::fuzz_frames(data);
});
