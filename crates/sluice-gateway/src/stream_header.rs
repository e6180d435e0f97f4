//! The opening `<stream:stream …>` of an XMPP stream, read without
//! consuming it: the peer's `to` and `from`, and every byte read, so the
//! stream can be passed on (or replayed upstream) unchanged.
//!
//! Parsed with quick-xml's namespace-aware reader rather than by hand: an
//! XML declaration may come first, attribute values may use either quote
//! style and character references, and the stream namespace may be bound to
//! any prefix (`<stream:stream>`, `<s:stream>`, or none at all). What counts
//! is the element's resolved name, `{http://etherx.jabber.org/streams}stream`
//! (RFC 6120 §4.8). Anything else before it — text that is not whitespace
//! (binary garbage, a TLS ClientHello on a STARTTLS port), a comment, a
//! DTD, another element — is an error: RFC 6120 §11.1 forbids them.
//!
//! The parser is incremental: on a header not yet complete it says
//! [`Parsed::Incomplete`], never guesses; the caller bounds the bytes
//! ([`MAX_HEADER`]) and the time. [`read`] does both over any reader.
//!
//! ```
//! use sluice_gateway::stream_header::{parse, Parsed};
//!
//! let wire = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
//!     xmlns:stream='http://etherx.jabber.org/streams' to='b.example' from=\"a.example\" version='1.0'>";
//! let Parsed::Complete(h) = parse(wire)? else { unreachable!() };
//! assert_eq!(h.to.as_deref(), Some("b.example"));
//! assert_eq!(h.from.as_deref(), Some("a.example"));
//! assert_eq!(h.namespace.as_deref(), Some("jabber:server"));
//! assert_eq!(h.len, wire.len());
//! // Half a header is not an error, and not a guess either.
//! assert!(matches!(parse(&wire[..60])?, Parsed::Incomplete));
//! # Ok::<(), sluice_gateway::stream_header::StreamHeaderError>(())
//! ```

use std::time::Duration;

use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;
use tokio::io::AsyncRead;

/// The stream namespace (RFC 6120 §4.8.1).
pub const STREAMS_NS: &str = "http://etherx.jabber.org/streams";

/// Most bytes read while looking for the header. Real headers are 200–400
/// bytes; 4 KiB leaves room for long domain names and extra attributes,
/// and is too little to be worth holding a connection open for.
pub const MAX_HEADER: usize = 4096;

/// What a complete stream header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// The `to` attribute (unescaped, as written): the server the peer
    /// wants to reach.
    pub to: Option<String>,
    /// The `from` attribute: on s2s, the server the peer claims to be.
    pub from: Option<String>,
    /// The default namespace (`jabber:server`, `jabber:client`), if declared.
    pub namespace: Option<String>,
    /// The `version` attribute.
    pub version: Option<String>,
    /// The `xml:lang` attribute.
    pub lang: Option<String>,
    /// Bytes from the start of the input to the end of the opening tag.
    pub len: usize,
}

/// The parser's answer on the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete, valid header.
    Complete(StreamHeader),
    /// Nothing wrong yet, but the header is not complete: read more.
    Incomplete,
}

/// Why the bytes are not the opening of an XMPP stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamHeaderError {
    /// [`MAX_HEADER`] bytes and still no complete header.
    #[error("no stream header within {0} bytes")]
    TooLong(usize),
    /// Not well-formed XML, or something other than whitespace and an XML
    /// declaration before the header.
    #[error("not an XMPP stream header: {0}")]
    Malformed(String),
    /// The first element is not `{http://etherx.jabber.org/streams}stream`.
    #[error("first element is not a stream header")]
    NotAStream,
    /// `to` or `from` is not a domain name.
    #[error("stream header's `{attr}` is not a domain")]
    NotADomain {
        /// `to` or `from`.
        attr: &'static str,
    },
}

/// Parses the beginning of a stream. Bytes after the header are ignored
/// (a peer may pipeline), and `len` says where the header ends.
pub fn parse(buf: &[u8]) -> Result<Parsed, StreamHeaderError> {
    let mut reader = NsReader::from_reader(buf);
    loop {
        let (ns, event) = match reader.read_resolved_event() {
            Ok(e) => e,
            // The input ends inside a declaration or a tag: wait for more.
            Err(XmlError::Syntax(SyntaxError::UnclosedTag | SyntaxError::UnclosedPIOrXmlDecl)) => {
                return incomplete(buf)
            }
            Err(e) => return Err(StreamHeaderError::Malformed(e.to_string())),
        };
        match event {
            Event::Decl(_) => {}
            Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => {}
            Event::Eof => return incomplete(buf),
            Event::Start(start) => {
                let stream = matches!(ns, ResolveResult::Bound(Namespace(n)) if n == STREAMS_NS.as_bytes())
                    && start.local_name().as_ref() == b"stream";
                if !stream {
                    return Err(StreamHeaderError::NotAStream);
                }
                let mut h = StreamHeader {
                    to: None,
                    from: None,
                    namespace: None,
                    version: None,
                    lang: None,
                    len: usize::try_from(reader.buffer_position()).unwrap_or(buf.len()),
                };
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| StreamHeaderError::Malformed(e.to_string()))?;
                    let value = attr
                        .unescape_value()
                        .map_err(|e| StreamHeaderError::Malformed(e.to_string()))?
                        .into_owned();
                    let slot = match attr.key.as_ref() {
                        b"to" => &mut h.to,
                        b"from" => &mut h.from,
                        b"xmlns" => &mut h.namespace,
                        b"version" => &mut h.version,
                        b"xml:lang" => &mut h.lang,
                        _ => continue,
                    };
                    *slot = Some(value);
                }
                return Ok(Parsed::Complete(h));
            }
            Event::Text(_) => {
                return Err(StreamHeaderError::Malformed(
                    "text before the stream header".into(),
                ))
            }
            _ => return Err(StreamHeaderError::NotAStream),
        }
    }
}

fn incomplete(buf: &[u8]) -> Result<Parsed, StreamHeaderError> {
    if buf.len() >= MAX_HEADER {
        Err(StreamHeaderError::TooLong(MAX_HEADER))
    } else {
        Ok(Parsed::Incomplete)
    }
}

/// A domain name as the limits count it (lower-cased, no trailing dot), or
/// `None` if `s` is not one — an XMPP address with a local part or a
/// resource is not a server's name.
pub fn domain(s: &str) -> Option<String> {
    // normalize_server also takes `host:port`; a JID's domain has no port.
    let port = if s.starts_with('[') {
        !s.ends_with(']')
    } else {
        s.contains(':')
    };
    if port || s.contains(['@', '/']) {
        return None;
    }
    sluice_core::target::normalize_server(s)
}

/// Why [`read`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a stream header.
    #[error(transparent)]
    Header(#[from] StreamHeaderError),
    /// No complete header within the time allowed.
    #[error("no stream header within {0:?}")]
    Timeout(Duration),
    /// The peer closed or the read failed before the header was complete.
    #[error("connection closed before the stream header")]
    Closed,
}

/// Reads from `r` until `buf` (which may hold bytes already read, such as
/// what followed a PROXY header) starts with a complete stream header, for
/// at most `limit`. Returns the header; `buf` then holds every byte read,
/// header and anything after it, to be passed on unchanged.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<StreamHeader, ReadError> {
    let parsed = crate::prefix::read(r, buf, MAX_HEADER, limit, |b| {
        Ok(match parse(b)? {
            Parsed::Complete(h) => Some(h),
            _ => None,
        })
    });
    parsed.await.map_err(|e| match e {
        crate::prefix::Stop::Parse(e) => ReadError::Header(e),
        crate::prefix::Stop::Timeout => ReadError::Timeout(limit),
        crate::prefix::Stop::Closed => ReadError::Closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(s: &str) -> StreamHeader {
        match parse(s.as_bytes()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn any_prefix_either_quotes_references_and_no_declaration() {
        let h = complete(
            "<s:stream xmlns:s=\"http://etherx.jabber.org/streams\" xmlns=\"jabber:server\" \
             from=\"a&#46;example\" to='b.example'>",
        );
        assert_eq!(h.from.as_deref(), Some("a.example"));
        assert_eq!(h.to.as_deref(), Some("b.example"));
        let h = complete(
            "  <stream xmlns='http://etherx.jabber.org/streams' to='x.example' version='1.0'><features/>",
        );
        assert_eq!(h.to.as_deref(), Some("x.example"));
        assert_eq!(h.from, None);
        assert!(h.len < 90);
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let wire = "<?xml version='1.0' encoding='UTF-8'?>\n<stream:stream xmlns='jabber:server' \
                    xmlns:stream='http://etherx.jabber.org/streams' to='b.example' from='a.example' version='1.0'>";
        for i in 0..wire.len() {
            assert_eq!(parse(&wire.as_bytes()[..i]), Ok(Parsed::Incomplete), "prefix {i}");
        }
        assert_eq!(complete(wire).len, wire.len());
    }

    #[test]
    fn not_a_stream() {
        let bad = [
            "<stream:stream xmlns:stream='urn:other' to='b.example'>",
            "<stream:stream to='b.example'>",
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>",
        ];
        for b in bad {
            assert!(parse(b.as_bytes()).is_err(), "{b}");
        }
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Err(StreamHeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"<!-- hi --><stream:stream>"),
            Err(StreamHeaderError::NotAStream)
        ));
        assert!(
            parse(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='a' to='b'>").is_err()
        );
    }

    #[test]
    fn bounded() {
        let mut long = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x='".to_vec();
        long.resize(MAX_HEADER, b'a');
        assert_eq!(parse(&long), Err(StreamHeaderError::TooLong(MAX_HEADER)));
        let spaces = vec![b' '; MAX_HEADER];
        assert_eq!(parse(&spaces), Err(StreamHeaderError::TooLong(MAX_HEADER)));
    }

    #[test]
    fn domains() {
        assert_eq!(domain("A.Example.").as_deref(), Some("a.example"));
        for bad in [
            "alice@a.example",
            "a.example/res",
            "",
            "a b",
            "exa<mple",
            "a.example:5269",
            "[::1]:1",
        ] {
            assert_eq!(domain(bad), None, "{bad}");
        }
    }
}
