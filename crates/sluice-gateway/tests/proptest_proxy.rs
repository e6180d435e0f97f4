//! The PROXY parser on arbitrary input: never panics, never accepts a
//! header it would not write back the same way, never decides early.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use sluice_gateway::proxy_protocol::{
    add_crc32c, parse, write_v1, write_v2, Addresses, Parsed, V2_SIGNATURE,
};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, p)| {
            let v6 = Ipv6Addr::from(ip);
            // Mapped addresses are written as IPv4 on purpose; keep them out.
            let v6 = if v6.to_ipv4_mapped().is_some() {
                Ipv6Addr::LOCALHOST
            } else {
                v6
            };
            SocketAddr::new(IpAddr::V6(v6), p)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_signature_never_panic(
        v2 in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut b = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
        b.extend_from_slice(&rest);
        if let Ok(Parsed::Complete(_, used)) = parse(&b) {
            prop_assert!(used <= b.len());
        }
    }

    #[test]
    fn written_headers_parse_back_whole_and_never_early(
        s in addr(), d in addr(), v2 in any::<bool>(), crc in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut w = Vec::new();
        if v2 { write_v2(&mut w, s, d); if crc { add_crc32c(&mut w); } } else { write_v1(&mut w, s, d); }
        let len = w.len();
        for i in 0..len {
            prop_assert_eq!(parse(&w[..i]), Ok(Parsed::Incomplete));
        }
        w.extend_from_slice(&tail);
        match parse(&w) {
            Ok(Parsed::Complete(h, used)) => {
                prop_assert_eq!(used, len);
                let same = (s.is_ipv4() == d.is_ipv4()).then_some(Addresses::Tcp { source: s, destination: d });
                if let Some(expected) = same {
                    prop_assert_eq!(h.addresses, expected);
                }
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn a_flipped_bit_in_a_checksummed_header_is_caught(
        s in addr(), d in addr(), bit in 0usize..(8 * 60),
    ) {
        let mut w = Vec::new();
        write_v2(&mut w, s, d);
        add_crc32c(&mut w);
        // The address block and the checksum itself. (The fixed part has its
        // own checks; a flipped TLV type or length makes it another TLV or
        // a malformed one, which the other tests cover.)
        let positions: Vec<usize> = (16..w.len() - 7).chain(w.len() - 4..w.len()).collect();
        let at = positions[(bit / 8) % positions.len()];
        w[at] ^= 1 << (bit % 8);
        prop_assert!(!matches!(parse(&w), Ok(Parsed::Complete(..))), "a corrupted header was accepted");
    }
}
