#![no_main]
// Target parsing and normalisation (`kind:value` from the admin API and CLI).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sluice_core::Normalizer::default().parse(text);
    }
});
