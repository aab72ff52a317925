#![no_main]
//! See rtmp_guard::rtmp::fuzz::handshake.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtmp_guard::rtmp::fuzz::handshake(data));
