//! The framing rules a request meets before anything of it is used —
//! route, identity, limits or the upstream (`docs/gateway-http.md`,
//! "Framing rules"; issue 13's findings):
//!
//! - `CONNECT` is refused with 405: the gateway opens no tunnels.
//! - More than one `Host` field line, none on HTTP/1.1, or a value that is
//!   no `uri-host [":" port]`: 400 (RFC 9112 §3.2). sluice and the
//!   upstream must agree on the host the request is for.
//! - A `GET` or `HEAD` whose head announces a body (any `Transfer-Encoding`,
//!   a `Content-Length` other than 0): 400. Such a body has no meaning
//!   (RFC 9110 §9.3.1–2), and an upstream that ignored it on a kept-alive
//!   connection — which the gateway reuses for other clients — would read
//!   it as the next request.
//! - Only WebSocket upgrades pass ([`websocket`]); any other `Upgrade` is
//!   removed on the way, with `HTTP2-Settings` (a hop-by-hop field), and
//!   the request is served as HTTP/1.1, as RFC 9110 §7.8 lets a server do:
//!   a spliced HTTP/2 connection would carry requests that meet no limit.
//! - A request body that ends early or is badly framed is the client's
//!   error ([`crate::body::ClientBodyError`]): 400, counted as
//!   `client_error`, never the upstream's 502.
//!
//! One place for both sides of the gateway: the lean client side
//! ([`crate::front`]) takes only heads that cannot break these rules
//! (`GET`/`HEAD` without a body or an upgrade, one valid `Host`) and hands
//! every other one to hyper's side, where [`check`] applies them. The
//! common request pays for a 4-byte comparison per field and a comparison
//! of its `Host` with the connection's last valid one, nothing more.
//!
//! Every refusal closes the connection (`Connection: close`): a client
//! that sent one has lost track of the protocol, and what it sent after
//! the head (a body the gateway did not read) must not be taken for its
//! next request.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode, Version};
use sluice_config::HttpProtocol;

use crate::body::ProxyBody;
use crate::respond;

/// Why a request was refused for its form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// `CONNECT` (405).
    #[error("CONNECT is not served: this gateway opens no tunnels")]
    Connect,
    /// More than one `Host` field line.
    #[error("more than one Host field")]
    TwoHosts,
    /// No `Host` on an HTTP/1.1 request.
    #[error("no Host field")]
    NoHost,
    /// A `Host` value outside RFC 9112 §3.2's grammar.
    #[error("invalid Host field")]
    BadHost,
    /// A `GET` or `HEAD` whose head announces a body.
    #[error("a GET or HEAD request cannot have a body")]
    BodyOnBodiless,
    /// The request body was malformed or ended before its framing said.
    #[error("malformed or incomplete request body")]
    Body,
    /// A singleton field given twice (`Authorization`): sluice and the
    /// upstream could each take another.
    #[error("more than one Authorization field")]
    TwoAuthorizations,
}

/// The methods the gateway passes on, for a 405's `Allow`: what the
/// upstream serves per resource is its business; CONNECT is never served.
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::Connect => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The answer in `protocol`'s error form. Matrix's 405 is
    /// `M_UNRECOGNIZED` (the spec's code for a method an endpoint does
    /// not serve); every 400 `M_UNKNOWN`, as the gateway's other 400s.
    pub(crate) fn answer(self, protocol: HttpProtocol) -> Response<ProxyBody> {
        let errcode = match self {
            Refusal::Connect => "M_UNRECOGNIZED",
            _ => "M_UNKNOWN",
        };
        let mut resp = respond::refused(protocol, self.status(), errcode, &self.to_string());
        if self == Refusal::Connect {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        }
        resp
    }
}

/// The rules of a request head that hyper's server read ([`crate::front`]
/// hands every head that may break one to it).
pub(crate) fn check(method: &Method, version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    if method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Refusal::TwoHosts),
        (Some(h), None) if !valid_host(h.as_bytes()) => return Err(Refusal::BadHost),
        // HTTP/1.0 has no Host rule: the upstream's name is sent.
        (None, _) if version != Version::HTTP_10 => return Err(Refusal::NoHost),
        _ => {}
    }
    if (method == Method::GET || method == Method::HEAD) && announces_body(headers) {
        return Err(Refusal::BodyOnBodiless);
    }
    Ok(())
}

/// Whether a head announces a body (RFC 9112 §6.3): any
/// `Transfer-Encoding` (hyper has refused one that does not end in
/// `chunked`), or a `Content-Length` other than 0 (hyper has refused
/// conflicting or invalid ones).
fn announces_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// Whether a request is a WebSocket handshake (RFC 6455 §4.1): an
/// HTTP/1.1 `GET` whose `Connection` has `upgrade` and whose `Upgrade`
/// names `websocket` and nothing else. The only upgrade the gateway's
/// protocols need (JMAP over WebSocket, RFC 8887); its limits apply to the
/// handshake, and the spliced connection holds the client's connection
/// slot. (hyper upgrades no HTTP/1.0 connection: one passed on as an
/// upgrade would have the upstream switch protocols on a connection the
/// gateway cannot splice.)
pub(crate) fn websocket(method: &Method, version: Version, h: &HeaderMap) -> bool {
    let mut offered = h
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    method == Method::GET
        && version == Version::HTTP_11
        && offered.peek().is_some()
        && offered.all(|t| t.eq_ignore_ascii_case(b"websocket"))
        && crate::h1::has_token(h, &header::CONNECTION, "upgrade")
}

/// The bytes of a `Host` value: RFC 3986's `reg-name` (unreserved,
/// sub-delims, `%` of pct-encoded), the brackets of an IP literal and the
/// port's colon. Not a parser of IP literals: what matters is that no
/// byte can end the authority elsewhere for another reader (`/`, `?`,
/// `#`, `@`), or be no URI byte at all (spaces, quotes, controls,
/// non-ASCII).
static HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

/// Whether `v` can be a `Host` value (RFC 9112 §3.2, `uri-host [":"
/// port]`); empty is not (RFC 9110 §4.2.1: an `http` URI has a host).
pub(crate) fn valid_host(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`check`] of a head with these fields.
    fn checked(head: &[(&str, &str)], method: Method, version: Version) -> Result<(), Refusal> {
        let mut h = HeaderMap::new();
        for (n, v) in head {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        check(&method, version, &h)
    }

    #[test]
    fn hosts_one_valid_or_none_on_http10() {
        let get = |h: &[(&str, &str)], v| checked(h, Method::GET, v);
        assert_eq!(get(&[("host", "a.example")], Version::HTTP_11), Ok(()));
        assert_eq!(get(&[], Version::HTTP_10), Ok(()));
        assert_eq!(get(&[], Version::HTTP_11), Err(Refusal::NoHost));
        assert_eq!(
            get(&[("host", "a"), ("host", "a")], Version::HTTP_10),
            Err(Refusal::TwoHosts)
        );
        for bad in ["", "a/b", "a@b", "a b", "a?b", "a#b", "\"a\"", "a\\b", "ä"] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        for good in ["a.example:8448", "[2001:db8::1]:443", "192.0.2.1", "a_b", "x%41"] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
    }

    #[test]
    fn gets_and_heads_announce_no_body() {
        let host = ("host", "x");
        for m in [Method::GET, Method::HEAD] {
            let with = |f: (&str, &str)| checked(&[host, f], m.clone(), Version::HTTP_11);
            assert_eq!(with(("content-length", "0")), Ok(()));
            assert_eq!(with(("content-length", "5")), Err(Refusal::BodyOnBodiless));
            assert_eq!(
                with(("transfer-encoding", "chunked")),
                Err(Refusal::BodyOnBodiless)
            );
        }
        let post = checked(&[host, ("content-length", "5")], Method::POST, Version::HTTP_11);
        assert_eq!(post, Ok(()));
        let connect = checked(&[host], Method::CONNECT, Version::HTTP_11);
        assert_eq!(connect, Err(Refusal::Connect));
    }

    #[test]
    fn only_websocket_upgrades() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(
                    header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let ws = h(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(websocket(&Method::GET, Version::HTTP_11, &ws));
        assert!(!websocket(&Method::POST, Version::HTTP_11, &ws));
        assert!(!websocket(&Method::GET, Version::HTTP_10, &ws));
        for other in [
            h(&[("connection", "upgrade"), ("upgrade", "h2c")]),
            h(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]),
            h(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
            ]),
            h(&[("connection", "upgrade"), ("upgrade", "")]),
            h(&[("upgrade", "websocket")]),
        ] {
            assert!(!websocket(&Method::GET, Version::HTTP_11, &other), "{other:?}");
        }
    }
}
