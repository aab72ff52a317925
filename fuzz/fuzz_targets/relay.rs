#![no_main]
//! See rtmp_guard::fuzz::relay.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtmp_guard::fuzz::relay(data));
