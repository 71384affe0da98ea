//! Message ingestion: delivery metadata and every JMAP view of a message.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mail::fuzzing::ingest(data));
