//! The PROXY protocol (HAProxy's spec, versions 1 and 2): parser and writer.
//!
//! Hand-written rather than taken from a crate because the gateway needs
//! three things together: an incremental parser that says "not yet" on a
//! partial header (so a slow sender meets the header timeout, never a
//! guess), strict rejection of anything the spec does not allow (v1 past 107
//! bytes, v2 families and transports that do not describe a stream,
//! truncated TLVs, a wrong CRC32c), and no allocation-heavy types on the
//! accept path. It is small, and fuzzed (`fuzz/`) and property-tested.
//!
//! ```
//! use sluice_gateway::proxy_protocol::{parse, write_v2, Addresses, Parsed};
//!
//! let mut wire = Vec::new();
//! write_v2(&mut wire, "203.0.113.7:40000".parse()?, "192.0.2.1:5222".parse()?);
//! wire.extend_from_slice(b"<stream:stream ...>");
//! match parse(&wire)? {
//!     Parsed::Complete(header, used) => {
//!         assert_eq!(
//!             header.addresses,
//!             Addresses::Tcp { source: "203.0.113.7:40000".parse()?, destination: "192.0.2.1:5222".parse()? }
//!         );
//!         assert_eq!(&wire[used..], b"<stream:stream ...>");
//!     }
//!     Parsed::Incomplete => unreachable!("the whole header is there"),
//! }
//! // Half a header is not an error, and not a guess either.
//! assert!(matches!(parse(&wire[..10])?, Parsed::Incomplete));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::crc32c::Crc32c;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest v2 header: 16 bytes and a 16-bit length.
pub const V2_MAX: usize = 16 + 65_535;

const V1_PREFIX: &[u8] = b"PROXY ";

/// TLV types of the spec (section 2.2.x).
pub mod tlv {
    /// Application-Layer Protocol Negotiation.
    pub const ALPN: u8 = 0x01;
    /// The host name the client asked for (SNI).
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32c of the whole header.
    pub const CRC32C: u8 = 0x03;
    /// Padding.
    pub const NOOP: u8 = 0x04;
    /// A connection identifier, at most 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS information (with sub-TLVs).
    pub const SSL: u8 = 0x20;
    /// Network namespace.
    pub const NETNS: u8 = 0x30;
}

/// Which version a header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// What a header says about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    /// v2 `LOCAL`: the proxy's own connection (a health check). The spec
    /// says to use the real endpoints.
    Local,
    /// v1 `UNKNOWN` or v2 `UNSPEC`: a protocol the proxy could not describe.
    /// The spec says to use the real endpoints.
    Unknown,
    /// A TCP connection over IPv4 or IPv6.
    Tcp {
        /// The client.
        source: SocketAddr,
        /// Where the client connected.
        destination: SocketAddr,
    },
    /// A UNIX stream socket (v2 only): paths, NUL padding removed.
    Unix {
        /// The client's path.
        source: Vec<u8>,
        /// The path connected to.
        destination: Vec<u8>,
    },
}

/// A type-length-value extension of a v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// Its type (see [`tlv`]).
    pub kind: u8,
    /// Its value.
    pub value: Vec<u8>,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// v1 or v2.
    pub version: Version,
    /// The addresses, or why there are none.
    pub addresses: Addresses,
    /// v2 TLVs in order (empty for v1 and for `LOCAL`).
    pub tlvs: Vec<Tlv>,
}

/// The parser's answer on the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing wrong yet, but the header is not complete: read more.
    Incomplete,
    /// A header, and how many bytes it took (the rest is the client's data).
    Complete(Header, usize),
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither the v1 nor the v2 signature.
    #[error("no PROXY protocol signature")]
    Signature,
    /// A v1 header the spec does not allow.
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    /// A v2 header the spec does not allow.
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    /// The CRC32c TLV does not match the header.
    #[error("PROXY v2 header fails its CRC32c check")]
    Checksum,
}

/// Parses the start of a connection. Never reads past the header; never
/// decides on fewer bytes than the spec needs.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    if first == V2_SIGNATURE[0] {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(HeaderError::Signature);
        }
        if n < V2_SIGNATURE.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v2(buf)
    } else {
        let n = buf.len().min(V1_PREFIX.len());
        if buf[..n] != V1_PREFIX[..n] {
            return Err(HeaderError::Signature);
        }
        if n < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v1(buf)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Err(HeaderError::V1("CR not followed by LF")),
                None if window.len() == V1_MAX => return Err(HeaderError::V1("longer than 107 bytes")),
                None => return Ok(Parsed::Incomplete),
            },
            0x20..=0x7e => {}
            _ => return Err(HeaderError::V1("byte outside printable ASCII")),
        }
    }
    let Some(end) = end else {
        return if window.len() == V1_MAX {
            Err(HeaderError::V1("longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    // Printable ASCII was checked above, so this cannot fail.
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| HeaderError::V1("not ASCII"))?;
    let mut parts = line.split(' ');
    let addresses = match parts.next() {
        Some("UNKNOWN") => Addresses::Unknown,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(HeaderError::V1("expected four fields after TCP4/TCP6"));
            };
            let (src, dst): (IpAddr, IpAddr) = if proto == "TCP4" {
                (
                    src.parse::<Ipv4Addr>()
                        .map_err(|_| HeaderError::V1("bad IPv4 source"))?
                        .into(),
                    dst.parse::<Ipv4Addr>()
                        .map_err(|_| HeaderError::V1("bad IPv4 destination"))?
                        .into(),
                )
            } else {
                (
                    src.parse::<Ipv6Addr>()
                        .map_err(|_| HeaderError::V1("bad IPv6 source"))?
                        .into(),
                    dst.parse::<Ipv6Addr>()
                        .map_err(|_| HeaderError::V1("bad IPv6 destination"))?
                        .into(),
                )
            };
            Addresses::Tcp {
                source: SocketAddr::new(src, port(sport)?),
                destination: SocketAddr::new(dst, port(dport)?),
            }
        }
        _ => return Err(HeaderError::V1("protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete(
        Header {
            version: Version::V1,
            addresses,
            tlvs: Vec::new(),
        },
        end + 2,
    ))
}

fn port(s: &str) -> Result<u16, HeaderError> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(HeaderError::V1("bad port"));
    }
    s.parse().map_err(|_| HeaderError::V1("port out of range"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::V2("version must be 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(HeaderError::V2("command must be LOCAL or PROXY")),
    };
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let header = &buf[..total];
    if local {
        // "The receiver must accept this connection as valid and must use
        // the real connection endpoints and discard the protocol block
        // including the family."
        return Ok(Parsed::Complete(
            Header {
                version: Version::V2,
                addresses: Addresses::Local,
                tlvs: Vec::new(),
            },
            total,
        ));
    }
    let body = &header[16..];
    let (af, transport) = (fam >> 4, fam & 0x0f);
    if transport > 2 {
        return Err(HeaderError::V2("unknown transport"));
    }
    let addr_len = match af {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(HeaderError::V2("unknown address family")),
    };
    if af != 0 && transport != 1 {
        return Err(HeaderError::V2("not a stream connection"));
    }
    if body.len() < addr_len {
        return Err(HeaderError::V2("address block shorter than its family needs"));
    }
    let a = &body[..addr_len];
    let addresses = match af {
        1 => Addresses::Tcp {
            source: SocketAddr::new(Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(), be16(&a[8..10])),
            destination: SocketAddr::new(Ipv4Addr::new(a[4], a[5], a[6], a[7]).into(), be16(&a[10..12])),
        },
        2 => Addresses::Tcp {
            source: SocketAddr::new(ipv6(&a[0..16]).into(), be16(&a[32..34])),
            destination: SocketAddr::new(ipv6(&a[16..32]).into(), be16(&a[34..36])),
        },
        3 => Addresses::Unix {
            source: until_nul(&a[..108]),
            destination: until_nul(&a[108..]),
        },
        _ => Addresses::Unknown,
    };
    let mut tlvs = Vec::new();
    let mut crc_at = None;
    let mut off = 16 + addr_len;
    while off < total {
        let Some(head) = header.get(off..off + 3) else {
            return Err(HeaderError::V2("truncated TLV"));
        };
        let kind = head[0];
        let n = usize::from(be16(&head[1..3]));
        let Some(value) = header.get(off + 3..off + 3 + n) else {
            return Err(HeaderError::V2("TLV longer than the header"));
        };
        match kind {
            tlv::CRC32C if n != 4 => return Err(HeaderError::V2("CRC32c TLV must hold 4 bytes")),
            tlv::CRC32C => crc_at = Some(off + 3),
            tlv::UNIQUE_ID if n > 128 => return Err(HeaderError::V2("unique ID longer than 128 bytes")),
            _ => {}
        }
        tlvs.push(Tlv {
            kind,
            value: value.to_vec(),
        });
        off += 3 + n;
    }
    if let Some(at) = crc_at {
        let expected = u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let mut c = Crc32c::new();
        c.update(&header[..at]);
        c.update(&[0; 4]);
        c.update(&header[at + 4..]);
        if c.finish() != expected {
            return Err(HeaderError::Checksum);
        }
    }
    Ok(Parsed::Complete(
        Header {
            version: Version::V2,
            addresses,
            tlvs,
        },
        total,
    ))
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

fn until_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// Both addresses in one family: IPv4 when both are (or map to) IPv4,
/// otherwise IPv6 with IPv4 mapped, as HAProxy does for mixed pairs.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canon(a), canon(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() && b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// Appends a v1 header for a TCP connection from `source` to `destination`.
pub fn write_v1(out: &mut Vec<u8>, source: SocketAddr, destination: SocketAddr) {
    use std::io::Write as _;
    let (s, d) = same_family(source, destination);
    let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "PROXY {proto} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    );
}

/// Appends a v2 `PROXY` header for a TCP connection from `source` to
/// `destination`, with no TLVs.
pub fn write_v2(out: &mut Vec<u8>, source: SocketAddr, destination: SocketAddr) {
    let (s, d) = same_family(source, destination);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (s.ip(), d.ip()) {
        (IpAddr::V4(si), IpAddr::V4(di)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&si.octets());
            out.extend_from_slice(&di.octets());
        }
        (si, di) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v) => v,
                IpAddr::V4(v) => v.to_ipv6_mapped(),
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(si).octets());
            out.extend_from_slice(&v6(di).octets());
        }
    }
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
}

/// Appends a v2 `LOCAL` header (a connection of the proxy's own).
pub fn write_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
}

/// Appends a `PP2_TYPE_CRC32C` TLV to a complete v2 header in `header`
/// (fixing its length) and fills in the checksum.
pub fn add_crc32c(header: &mut Vec<u8>) {
    if header.len() < 16 {
        return;
    }
    header.extend_from_slice(&[tlv::CRC32C, 0, 4, 0, 0, 0, 0]);
    let len = u16::try_from(header.len() - 16).unwrap_or(u16::MAX);
    header[14..16].copy_from_slice(&len.to_be_bytes());
    let mut c = Crc32c::new();
    c.update(header);
    let at = header.len() - 4;
    header[at..].copy_from_slice(&c.finish().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete(h, n)) => (h, n),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let (h, n) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 5222\r\nhello");
        assert_eq!(n, 46);
        assert_eq!(
            h.addresses,
            Addresses::Tcp {
                source: sa("192.0.2.1:56324"),
                destination: sa("198.51.100.2:5222")
            }
        );
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(
            h.addresses,
            Addresses::Tcp {
                source: sa("[2001:db8::1]:1"),
                destination: sa("[2001:db8::2]:65535")
            }
        );
        let (h, n) = complete(b"PROXY UNKNOWN whatever follows\r\nX");
        assert_eq!((h.addresses, n), (Addresses::Unknown, 32));
        // The longest legal header.
        let longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(complete(longest.as_bytes()).1, V1_MAX);
    }

    #[test]
    fn v1_rejects() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 5222 x\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 080 1\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 1\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 1\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 1\rX",
            b"PROXY TCP4 192.0.2.1\x00 198.51.100.2 1 1\r\n",
            b"proxy TCP4 192.0.2.1 198.51.100.2 1 1\r\n",
            b"GET / HTTP/1.1\r\n",
            b"<stream:stream>",
        ] {
            assert!(parse(bad).is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(parse(&long), Err(HeaderError::V1("longer than 107 bytes")));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let mut v2 = Vec::new();
        write_v2(&mut v2, sa("[2001:db8::1]:4000"), sa("[2001:db8::2]:5269"));
        add_crc32c(&mut v2);
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 5222\r\n".to_vec();
        for h in [v1, v2] {
            for i in 0..h.len() {
                assert_eq!(parse(&h[..i]), Ok(Parsed::Incomplete), "prefix {i}");
            }
            assert_eq!(complete(&h).1, h.len());
        }
    }

    #[test]
    fn v2_round_trips() {
        for (s, d) in [
            ("192.0.2.1:40000", "198.51.100.2:5222"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:5269"),
        ] {
            let mut w = Vec::new();
            write_v2(&mut w, sa(s), sa(d));
            let (h, n) = complete(&w);
            assert_eq!(n, w.len());
            assert_eq!(
                h.addresses,
                Addresses::Tcp {
                    source: sa(s),
                    destination: sa(d)
                }
            );
            let mut w1 = Vec::new();
            write_v1(&mut w1, sa(s), sa(d));
            assert_eq!(complete(&w1).0.addresses, h.addresses);
        }
        // Mixed families go out as IPv6 with the IPv4 address mapped.
        let mut w = Vec::new();
        write_v1(&mut w, sa("192.0.2.1:1"), sa("[2001:db8::2]:2"));
        assert_eq!(w, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n");
        // A mapped client on a dual-stack socket goes out as IPv4.
        let mut w = Vec::new();
        write_v1(&mut w, sa("[::ffff:192.0.2.1]:1"), sa("[::ffff:198.51.100.2]:2"));
        assert_eq!(w, b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n");
    }

    #[test]
    fn v2_local_unspec_unix_tlvs() {
        let mut w = Vec::new();
        write_v2_local(&mut w);
        assert_eq!(complete(&w).0.addresses, Addresses::Local);
        // LOCAL with an address block: the block is skipped.
        let mut w = Vec::new();
        write_v2(&mut w, sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        w[12] = 0x20;
        assert_eq!(
            complete(&w),
            (
                Header {
                    version: Version::V2,
                    addresses: Addresses::Local,
                    tlvs: vec![]
                },
                w.len()
            )
        );
        // UNSPEC with a TLV.
        let mut w = V2_SIGNATURE.to_vec();
        w.extend_from_slice(&[0x21, 0x00, 0, 7, tlv::AUTHORITY, 0, 4, b'x', b'm', b'p', b'p']);
        let (h, _) = complete(&w);
        assert_eq!(h.addresses, Addresses::Unknown);
        assert_eq!(
            h.tlvs,
            vec![Tlv {
                kind: tlv::AUTHORITY,
                value: b"xmpp".to_vec()
            }]
        );
        // UNIX stream.
        let mut w = V2_SIGNATURE.to_vec();
        w.extend_from_slice(&[0x21, 0x31, 0, 216]);
        let mut a = [0u8; 216];
        a[..4].copy_from_slice(b"/src");
        a[108..112].copy_from_slice(b"/dst");
        w.extend_from_slice(&a);
        assert_eq!(
            complete(&w).0.addresses,
            Addresses::Unix {
                source: b"/src".to_vec(),
                destination: b"/dst".to_vec()
            }
        );
    }

    #[test]
    fn v2_rejects() {
        let mut base = Vec::new();
        write_v2(&mut base, sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut w = base.clone();
            f(&mut w);
            parse(&w)
        };
        assert_eq!(bad(&|w| w[12] = 0x11), Err(HeaderError::V2("version must be 2")));
        assert_eq!(
            bad(&|w| w[12] = 0x22),
            Err(HeaderError::V2("command must be LOCAL or PROXY"))
        );
        assert_eq!(
            bad(&|w| w[13] = 0x12),
            Err(HeaderError::V2("not a stream connection"))
        );
        assert_eq!(
            bad(&|w| w[13] = 0x41),
            Err(HeaderError::V2("unknown address family"))
        );
        assert_eq!(bad(&|w| w[13] = 0x13), Err(HeaderError::V2("unknown transport")));
        assert_eq!(
            bad(&|w| {
                w[15] = 8;
                w.truncate(24)
            }),
            Err(HeaderError::V2("address block shorter than its family needs"))
        );
        assert_eq!(
            bad(&|w| {
                w[15] = 14;
                w.extend_from_slice(&[1, 0]);
            }),
            Err(HeaderError::V2("truncated TLV"))
        );
        assert_eq!(
            bad(&|w| {
                w[15] = 16;
                w.extend_from_slice(&[1, 0, 9, 0]);
            }),
            Err(HeaderError::V2("TLV longer than the header"))
        );
        assert_eq!(bad(&|w| w[3] = b'X'), Err(HeaderError::Signature));
    }

    #[test]
    fn v2_crc32c_is_checked() {
        let mut w = Vec::new();
        write_v2(&mut w, sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        add_crc32c(&mut w);
        let (h, _) = complete(&w);
        assert_eq!(h.tlvs.len(), 1);
        let mut flipped = w.clone();
        flipped[17] ^= 1; // a source address bit
        assert_eq!(parse(&flipped), Err(HeaderError::Checksum));
        let mut crc = w.clone();
        let last = crc.len() - 1;
        crc[last] ^= 0x80;
        assert_eq!(parse(&crc), Err(HeaderError::Checksum));
    }
}
