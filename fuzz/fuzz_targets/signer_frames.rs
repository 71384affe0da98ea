//! The signer's side of its socket: frames, and the requests and answers they hold.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keys::fuzzing::signer_frames(data));
