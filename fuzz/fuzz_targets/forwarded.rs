#![no_main]
// `Forwarded` (RFC 7239) and `X-Forwarded-For` values, as the HTTP gateway reads them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_http_gateway::forwarded::fuzz(data));
