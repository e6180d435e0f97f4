//! The client's address: the socket peer, or — only when the peer is a
//! trusted proxy — what the header that proxy writes says (`X-Forwarded-For`
//! by default, or RFC 7239 `Forwarded`: `real_ip_header`), walked right to
//! left past trusted proxies. Only that one header is read: proxies append
//! to the header they write and pass the other one through as the client
//! sent it, so a client could choose its address through the other.
//!
//! Each proxy appends the address it received the request from, so the
//! right end of the chain is the most trustworthy: the peer wrote the last
//! entry, a trusted proxy before it the one before, and so on. The first
//! address (from the right) that is not a trusted proxy is the client;
//! anything to its left was written by the client itself and is ignored.
//! An entry that is not an address (`unknown`, an obfuscated `_name`,
//! garbage) stops the walk: the proxy that wrote it could not say, so the
//! last trusted hop reached stands for the client.
//!
//! The parsers here read untrusted bytes: they never panic, bound their work
//! ([`MAX_HOPS`]) and are fuzzed (`fuzz/fuzz_targets/forwarded.rs`).

use std::net::{IpAddr, Ipv6Addr};

use hyper::header::HeaderMap;
use ipnet::IpNet;
use sluice_config::RealIpHeader;
use sluice_core::target::canonical_ip;

/// Entries read from forwarding headers at most; longer chains are cut at
/// the left (the client's end), which only a client can have made long.
pub const MAX_HOPS: usize = 64;

/// One entry of a forwarding chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// An address (port dropped, IPv4-mapped IPv6 made IPv4).
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or something unreadable.
    Unknown,
}

/// Where a request came from, as far as it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The client: the address every per-IP limit counts.
    pub client: IpAddr,
    /// The verified chain from the client to us, left to right: the client,
    /// each trusted proxy, and the peer (just the client when the peer is
    /// not a trusted proxy). This, and nothing a client wrote, goes upstream.
    pub chain: Vec<IpAddr>,
    /// Whether the socket peer is a trusted proxy (whose `X-Forwarded-Proto`
    /// and `X-Forwarded-Host` are believed too).
    pub peer_trusted: bool,
}

/// Parses one address as it appears in either header: `192.0.2.1`,
/// `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`,
/// optionally quoted.
pub fn parse_node(s: &str) -> Hop {
    let s = s.trim().trim_matches('"').trim();
    let addr = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once(']')
            .filter(|(_, after)| after.is_empty() || after.strip_prefix(':').is_some_and(port_ok))
            .and_then(|(v6, _)| v6.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        Some(ip)
    } else {
        // IPv4 with a port; a bare IPv6 address was handled above.
        s.rsplit_once(':')
            .filter(|(_, p)| port_ok(p))
            .and_then(|(h, _)| h.parse::<std::net::Ipv4Addr>().ok())
            .map(IpAddr::V4)
    };
    addr.map_or(Hop::Unknown, |a| Hop::Addr(canonical_ip(a)))
}

fn port_ok(p: &str) -> bool {
    // RFC 7239 also allows obfuscated ports (`_abc`): the address still counts.
    (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        || (p.starts_with('_')
            && p.len() > 1
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
}

/// Appends the entries of one `X-Forwarded-For` value.
pub fn parse_xff(value: &str, out: &mut Vec<Hop>) {
    for part in value.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        out.push(parse_node(part));
    }
}

/// Splits `s` at `sep` outside quoted strings (a backslash escapes inside quotes).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            let b = bytes[i];
            if quoted && b == b'\\' {
                i += 2;
                continue;
            }
            if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                let piece = s.get(start..i).unwrap_or("");
                i += 1;
                start = i;
                return Some(piece);
            }
            i += 1;
        }
        done = true;
        Some(s.get(start.min(s.len())..).unwrap_or(""))
    })
}

/// Unquotes an RFC 7230 quoted-string (or returns a token as it is).
fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"') {
        None => v.to_owned(),
        Some(rest) => {
            let mut out = String::with_capacity(rest.len());
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '"' => break,
                    c => out.push(c),
                }
            }
            out
        }
    }
}

/// Appends the `for=` of each element of one `Forwarded` value; an element
/// without `for` is [`Hop::Unknown`].
pub fn parse_forwarded(value: &str, out: &mut Vec<Hop>) {
    for element in split_unquoted(value, b',') {
        if element.trim().is_empty() {
            continue;
        }
        let mut hop = Hop::Unknown;
        for pair in split_unquoted(element, b';') {
            if let Some((k, v)) = pair.split_once('=') {
                if k.trim().eq_ignore_ascii_case("for") {
                    hop = parse_node(&unquote(v));
                }
            }
        }
        out.push(hop);
    }
}

/// The chain a request's `from` header carries, left to right (the other
/// header is not read: see [`RealIpHeader`]). At most [`MAX_HOPS`]
/// entries, the rightmost kept.
pub fn hops(headers: &HeaderMap, from: RealIpHeader) -> Vec<Hop> {
    let mut out = Vec::new();
    let (name, parse): (&str, fn(&str, &mut Vec<Hop>)) = match from {
        RealIpHeader::XForwardedFor => ("x-forwarded-for", parse_xff),
        RealIpHeader::Forwarded => ("forwarded", parse_forwarded),
    };
    for v in headers.get_all(name) {
        // Non-UTF-8 bytes make the value unreadable: one unknown hop.
        match v.to_str() {
            Ok(s) => parse(s, &mut out),
            Err(_) => out.push(Hop::Unknown),
        }
    }
    if out.len() > MAX_HOPS {
        out.drain(..out.len() - MAX_HOPS);
    }
    out
}

/// Resolves the client of a request that arrived from `peer`, reading the
/// chain from the `from` header when the peer is a trusted proxy.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet], from: RealIpHeader) -> Origin {
    let peer = canonical_ip(peer);
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return Origin {
            client: peer,
            chain: vec![peer],
            peer_trusted: false,
        };
    }
    walk(peer, &hops(headers, from), is_trusted)
}

/// The walk itself from a trusted peer, for a chain already parsed (and for
/// property tests).
pub fn walk(peer: IpAddr, hops: &[Hop], is_trusted: impl Fn(&IpAddr) -> bool) -> Origin {
    // Right to left: `chain` collects verified hops from the peer outwards.
    let mut chain = vec![peer];
    let mut client = peer;
    for hop in hops.iter().rev() {
        match *hop {
            Hop::Addr(a) if is_trusted(&a) => {
                chain.push(a);
                client = a;
            }
            Hop::Addr(a) => {
                chain.push(a);
                client = a;
                break;
            }
            Hop::Unknown => break,
        }
    }
    chain.reverse();
    Origin {
        client,
        chain,
        peer_trusted: true,
    }
}

impl Origin {
    /// The `X-Forwarded-For` value sent upstream: the verified chain, the
    /// client leftmost (where Synapse and most servers look) and the peer
    /// rightmost, as `$proxy_add_x_forwarded_for` would have it.
    pub fn x_forwarded_for(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(16 * self.chain.len());
        for (i, a) in self.chain.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{a}");
        }
        s
    }

    /// The RFC 7239 `Forwarded` value sent upstream: one element per
    /// verified hop, `proto` on the last (ours).
    pub fn forwarded(&self, proto: &str, host: Option<&str>) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(48 * self.chain.len());
        let n = self.chain.len();
        for (i, a) in self.chain.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            match a {
                IpAddr::V4(v4) => {
                    let _ = write!(s, "for={v4}");
                }
                IpAddr::V6(v6) => {
                    let _ = write!(s, "for=\"[{v6}]\"");
                }
            }
            if i + 1 == n {
                s.push_str(";proto=");
                s.push_str(proto);
                if let Some(h) =
                    host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
                {
                    s.push_str(";host=\"");
                    s.push_str(h);
                    s.push('"');
                }
            }
        }
        s
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/forwarded.rs`): both parsers
/// and the walk on arbitrary bytes, checking what must always hold.
pub fn fuzz(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut hops = Vec::new();
    parse_forwarded(&text, &mut hops);
    parse_xff(&text, &mut hops);
    let peer = IpAddr::from([10, 0, 0, 1]);
    let trusted = |a: &IpAddr| matches!(a, IpAddr::V4(v4) if v4.octets()[0] == 10);
    let o = walk(peer, &hops, trusted);
    // The peer always ends the chain, and the client is in it.
    assert_eq!(o.chain.last(), Some(&peer));
    assert!(o.chain.contains(&o.client));
    let _ = o.forwarded("https", Some(&text));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use proptest::prelude::*;

    const XFF: RealIpHeader = RealIpHeader::XForwardedFor;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn trusted() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8:ffff::/48".parse().expect("net"),
        ]
    }

    #[test]
    fn nodes() {
        assert_eq!(parse_node("192.0.2.1"), Hop::Addr(ip("192.0.2.1")));
        assert_eq!(parse_node(" 192.0.2.1:8080 "), Hop::Addr(ip("192.0.2.1")));
        assert_eq!(parse_node("\"[2001:db8::1]:4711\""), Hop::Addr(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]"), Hop::Addr(ip("2001:db8::1")));
        assert_eq!(parse_node("2001:db8::1"), Hop::Addr(ip("2001:db8::1")));
        assert_eq!(parse_node("::ffff:192.0.2.9"), Hop::Addr(ip("192.0.2.9")));
        assert_eq!(parse_node("192.0.2.1:_port"), Hop::Addr(ip("192.0.2.1")));
        for bad in [
            "unknown",
            "_hidden",
            "",
            "[2001:db8::1",
            "192.0.2.1:99999999",
            "example.org",
            "[::1]x",
        ] {
            assert_eq!(parse_node(bad), Hop::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_rfc7239_examples() {
        let mut out = Vec::new();
        parse_forwarded(
            "for=\"_gazonk\", For=\"[2001:db8:cafe::17]:4711\", for=192.0.2.60;proto=http;by=203.0.113.43, for=198.51.100.17;by=\"a,b;c\"",
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                Hop::Unknown,
                Hop::Addr(ip("2001:db8:cafe::17")),
                Hop::Addr(ip("192.0.2.60")),
                Hop::Addr(ip("198.51.100.17")),
            ]
        );
        let mut out = Vec::new();
        parse_forwarded("proto=https, for=\"192.0.2.1\\x\"", &mut out);
        assert_eq!(out, vec![Hop::Unknown, Hop::Unknown]);
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        let o = resolve(ip("203.0.113.7"), &h, &trusted(), XFF);
        assert_eq!(o.client, ip("203.0.113.7"));
        assert_eq!(o.x_forwarded_for(), "203.0.113.7");
    }

    #[test]
    fn trusted_chain_walked_right_to_left() {
        // The client made up "6.6.6.6"; 198.51.100.1 connected to proxy 10.0.0.2,
        // which connected to proxy 10.0.0.1 (our peer).
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let o = resolve(ip("10.0.0.1"), &h, &trusted(), XFF);
        assert_eq!(o.client, ip("198.51.100.1"));
        assert_eq!(o.chain, vec![ip("198.51.100.1"), ip("10.0.0.2"), ip("10.0.0.1")]);
        assert_eq!(o.x_forwarded_for(), "198.51.100.1, 10.0.0.2, 10.0.0.1");
        assert_eq!(
            o.forwarded("https", Some("matrix.example.org")),
            "for=198.51.100.1, for=10.0.0.2, for=10.0.0.1;proto=https;host=\"matrix.example.org\""
        );
    }

    #[test]
    fn only_the_named_header_is_read() {
        // The proxy writes one header and passes the other through as the
        // client made it up.
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=\"[2001:db8::5]:1\""),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted(), XFF).client,
            ip("198.51.100.1")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted(), RealIpHeader::Forwarded).client,
            ip("2001:db8::5")
        );
        // The named header absent: the peer itself, whatever the other says.
        let h = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted(), XFF).client,
            ip("10.0.0.1")
        );
    }

    #[test]
    fn unknown_hop_stops_at_the_last_trusted_proxy() {
        let h = headers(&[("forwarded", "for=1.2.3.4, for=unknown, for=10.9.9.9")]);
        let o = resolve(ip("10.0.0.1"), &h, &trusted(), RealIpHeader::Forwarded);
        assert_eq!(o.client, ip("10.9.9.9"));
    }

    #[test]
    fn all_trusted_means_the_leftmost() {
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted(), XFF).client,
            ip("10.1.1.1")
        );
        // No header from a trusted peer: the peer itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted(), XFF).client,
            ip("10.0.0.1")
        );
    }

    #[test]
    fn long_chains_are_cut_at_the_client_end() {
        let long = vec!["10.3.3.3"; 500].join(",");
        let h = headers(&[("x-forwarded-for", &long)]);
        assert_eq!(hops(&h, XFF).len(), MAX_HOPS);
    }

    proptest! {
        #[test]
        fn fuzz_body_holds_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz(&data);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,200}") {
            let mut out = Vec::new();
            parse_forwarded(&s, &mut out);
            parse_xff(&s, &mut out);
            let _ = parse_node(&s);
        }

        #[test]
        fn parsers_never_panic_on_header_like_bytes(s in "[\\[\\]\"\\\\,;=:._a-fA-F0-9 forFOR]{0,120}") {
            let mut out = Vec::new();
            parse_forwarded(&s, &mut out);
            parse_xff(&s, &mut out);
            prop_assert!(out.len() <= 2 * s.len() + 2);
        }

        #[test]
        fn a_client_cannot_choose_its_address(
            spoof in proptest::collection::vec(any::<[u8; 4]>(), 0..6),
            real in any::<[u8; 4]>(),
            proxies in 0usize..4,
        ) {
            // Whatever an untrusted client prepends, the result is the address
            // the first trusted proxy saw (or a trusted proxy).
            let real = IpAddr::from(real);
            prop_assume!(!trusted().iter().any(|n| n.contains(&real)));
            let mut parts: Vec<String> = spoof.iter().map(|a| IpAddr::from(*a).to_string()).collect();
            parts.push(real.to_string());
            for i in 0..proxies {
                parts.push(format!("10.0.0.{}", i + 10));
            }
            let h = headers(&[("x-forwarded-for", &parts.join(", "))]);
            let o = resolve(ip("10.0.0.1"), &h, &trusted(), XFF);
            prop_assert_eq!(o.client, real);
            prop_assert_eq!(o.chain.len(), proxies + 2);
        }
    }
}
