#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesync_fuzzing::batch_plain(data));
