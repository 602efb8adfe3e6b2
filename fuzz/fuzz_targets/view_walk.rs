#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bizpilot_core::fuzz::view_walk(data));
