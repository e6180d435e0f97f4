//! The server name (SNI) of a TLS ClientHello, read without terminating TLS:
//! on direct-TLS XMPP ports (XEP-0368: 5223 for clients, 5270 for servers)
//! the name the peer asks for is all there is to see before the handshake.
//!
//! The ClientHello is read by rustls' own [`rustls::server::Acceptor`], a
//! maintained parser that reassembles a hello split over several TLS
//! records and TCP segments. The bytes are copied into it, never consumed:
//! the caller passes them on unchanged and the TLS session stays end to end.
//!
//! SNI names where the peer is going (our own domain), not who it is: on a
//! direct-TLS port a server's `from` is inside the encrypted stream, so
//! incoming connections there are held by the address limits only. A hello
//! without SNI is not an error.
//!
//! ```
//! use sluice_gateway::tls_hello::{parse, Hello};
//!
//! // Not TLS at all: said at once.
//! assert!(parse(b"<?xml version='1.0'?>").is_err());
//! // A record header and nothing more yet: wait.
//! assert_eq!(parse(&[0x16, 0x03, 0x01, 0x00, 0x40]).unwrap(), Hello::Incomplete);
//! ```

use std::time::Duration;

use tokio::io::AsyncRead;

/// Most bytes read while looking for the ClientHello. Hellos with
/// post-quantum key shares are about 1.8 KiB; 16 KiB is the largest single
/// TLS record, and more than any client sends before the server answers.
pub const MAX_HELLO: usize = 16 * 1024 + 5;

/// The parser's answer on the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A complete ClientHello, with the server name it asks for.
    Complete {
        /// The SNI host name, lower-cased; `None` when the hello has none.
        sni: Option<String>,
    },
    /// Nothing wrong yet, but the hello is not complete: read more.
    Incomplete,
}

/// Why the bytes are not a TLS ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first byte is not a TLS handshake record.
    #[error("not TLS: the first record is not a handshake")]
    NotTls,
    /// [`MAX_HELLO`] bytes and still no complete ClientHello.
    #[error("no ClientHello within {0} bytes")]
    TooLong(usize),
    /// rustls refused the hello.
    #[error("invalid ClientHello: {0}")]
    Invalid(String),
}

/// Parses the beginning of a TLS connection.
pub fn parse(buf: &[u8]) -> Result<Hello, HelloError> {
    // A handshake record (22) first, or this is not TLS: checked here so
    // that plain text fails at its first byte, not at the size bound.
    match buf.first() {
        None => return Ok(Hello::Incomplete),
        Some(0x16) => {}
        Some(_) => return Err(HelloError::NotTls),
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(HelloError::Invalid(e.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(None) if buf.len() >= MAX_HELLO => Err(HelloError::TooLong(MAX_HELLO)),
        Ok(None) => Ok(Hello::Incomplete),
        Ok(Some(accepted)) => Ok(Hello::Complete {
            sni: accepted
                .client_hello()
                .server_name()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase()),
        }),
        Err((e, _alert)) => Err(HelloError::Invalid(e.to_string())),
    }
}

/// Why [`read`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a ClientHello.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// No complete ClientHello within the time allowed.
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    /// The peer closed or the read failed before the hello was complete.
    #[error("connection closed before the ClientHello")]
    Closed,
}

/// Reads from `r` until `buf` (which may hold bytes already read) holds a
/// complete ClientHello, for at most `limit`. Returns its SNI; `buf` then
/// holds every byte read, to be passed on unchanged.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Option<String>, ReadError> {
    let parsed = crate::prefix::read(r, buf, MAX_HELLO, limit, |b| {
        Ok(match parse(b)? {
            Hello::Complete { sni } => Some(sni),
            _ => None,
        })
    });
    parsed.await.map_err(|e| match e {
        crate::prefix::Stop::Parse(e) => ReadError::Hello(e),
        crate::prefix::Stop::Timeout => ReadError::Timeout(limit),
        crate::prefix::Stop::Closed => ReadError::Closed,
    })
}
