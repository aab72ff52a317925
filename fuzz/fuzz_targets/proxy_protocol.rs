#![no_main]
//! See rtmp_guard::fuzz::proxy_protocol.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtmp_guard::fuzz::proxy_protocol(data));
