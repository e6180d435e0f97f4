#![no_main]
// The configuration parser: errors with file:line:col, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sluice_config::parse(text, "fuzz.toml");
    }
});
