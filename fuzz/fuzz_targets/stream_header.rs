#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = sluice_gateway::stream_header::parse(data); });
