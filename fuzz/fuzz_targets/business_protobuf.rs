#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bizpilot_kafka::fuzz::business_protobuf(data));
