#![no_main]
// The decision API's body parser: never panics, whatever the bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let policy = sluice_config::Config::default().policy;
    let _ = sluice_server::input::ask(data, &policy, data.first().is_some_and(|b| b & 1 == 1));
});
