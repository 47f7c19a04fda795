#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesync_fuzzing::bridge_config(data));
