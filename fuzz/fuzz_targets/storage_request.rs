#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kindling_worker::fuzz::storage_request(data));
