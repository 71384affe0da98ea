//! The JMAP API request: envelope, result references, creation ids and method arguments.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| jmap::fuzzing::request(data));
