#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| { use sluice_core::blocklist::parse::{source, ListFormat::*}; if let Some((f, body)) = data.split_first() { let _ = source("fuzz", [Domains, Cidr, SpamhausJson, Sha256, MatrixPolicy][usize::from(*f) % 5], body); } });
