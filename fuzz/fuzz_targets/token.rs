//! Token parsing: the strict compact-JWS parser and the realm hint.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        tokens::fuzzing::token(s);
    }
});
