#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = sluice_gateway::proxy_protocol::parse(data); });
