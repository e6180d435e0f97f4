//! A lean HTTP/1.1 exchange with the upstream for the common request: a
//! `GET` or `HEAD` with no body and no upgrade (Matrix `/sync`,
//! `/messages`, media downloads, JMAP downloads; the benchmark's request).
//!
//! hyper's client runs each connection as a task of its own and hands every
//! request to it over a channel and every response back over another: two
//! task wake-ups, two channel operations and a second copy of hyper's
//! dispatcher per request, about a quarter of the gateway's user-space CPU
//! per proxied request in `perf` (docs/benchmarks.md, "HTTP gateway"). Here
//! the request's own task writes the head and parses the answer
//! (`httparse`, which hyper uses too), and the response body reads the
//! connection as the client takes it — no task, no channel. Everything else
//! (request bodies, upgrades, other methods) keeps hyper's client, which
//! also handles an upstream answering before it has read a whole upload.
//!
//! Framing follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304;
//! chunked when `Transfer-Encoding` ends in `chunked` (trailers are read
//! and dropped); `Content-Length` when given (conflicting values are an
//! error); otherwise until the upstream closes. A connection goes back to
//! the worker's stack only when its body was read to the end, the answer
//! was HTTP/1.1 without `Connection: close`, and nothing followed it.
//!
//! What the gateway does not forward is dropped while parsing: the
//! answer's `Connection` (when it only says `close` or `keep-alive`) and
//! `Keep-Alive`. Field values share the head's bytes. A body that came
//! with its head is taken whole, and its connection goes back at once. A
//! body still to come times its own silences
//! ([`LeanBody::limit_silence`]).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, BytesMut};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::body::{BoxError, IdleTimer};
use crate::upstream::IdleStack;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line or trailer line.
const MAX_LINE: usize = 4 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// A connection and what was read from it but not yet used.
pub(crate) struct Conn<T> {
    io: T,
    buf: BytesMut,
}

impl<T> Conn<T> {
    /// A connection with nothing read yet.
    pub(crate) fn new(io: T) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> Conn<T> {
    /// Whether an idle connection is still fit to carry a request: nothing
    /// to read on it (one read attempt that would block). An end of stream
    /// or an error means the upstream closed it; bytes mean the upstream
    /// sent something nobody asked for, which the next request would take
    /// for its answer.
    pub(crate) fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut scratch = [0u8; 64];
        let mut buf = tokio::io::ReadBuf::new(&mut scratch);
        self.buf.is_empty() && Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }
}

/// Where finished connections go back (a worker's idle stack).
pub(crate) type Pool<T> = Arc<Mutex<IdleStack<Conn<T>>>>;

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The connection closed before a single byte of answer: a kept-alive
    /// connection the upstream had closed meanwhile. Safe to send again
    /// on a new connection (the lean path carries only `GET` and `HEAD`).
    Stale(BoxError),
    /// Anything else: the exchange is lost.
    Failed(BoxError),
}

fn io_error(kind: std::io::ErrorKind, why: &'static str) -> BoxError {
    BoxError::new(std::io::Error::new(kind, why))
}

fn invalid(why: &'static str) -> BoxError {
    io_error(std::io::ErrorKind::InvalidData, why)
}

/// Whether a request may take the lean path: `GET` or `HEAD`, no body
/// (`Content-Length` absent or 0, no `Transfer-Encoding`), no upgrade.
pub(crate) fn eligible(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && !headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// The request head: `METHOD target HTTP/1.1`, the fields, then `extra`
/// (those given a value), a blank line.
pub(crate) fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: &[(HeaderName, Option<HeaderValue>)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let extra = extra.iter().filter_map(|(n, v)| v.as_ref().map(|v| (n, v)));
    for (name, value) in headers.iter().chain(extra) {
        crate::front::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the upstream closes.
    Eof,
    /// Read to the end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines until a blank one.
    Trailers,
}

/// The response body: reads the connection as it is polled.
pub(crate) struct LeanBody<T> {
    conn: Option<Conn<T>>,
    framing: Framing,
    keep_alive: bool,
    pool: Option<Pool<T>>,
    /// The whole body, when it came with the head (most small answers):
    /// its upstream connection is back in the pool before the client is
    /// written to.
    ready: Option<Bytes>,
    /// The longest silence of the upstream between parts of the body
    /// ([`LeanBody::limit_silence`]).
    idle: Option<IdleTimer>,
    /// The answer's fields as the upstream wrote them, when they go on so
    /// (its map is empty then): for the exchange's caller to take
    /// ([`LeanBody::take_fields`]).
    raw: Option<RawFields>,
}

impl<T> LeanBody<T> {
    /// Fails the body once the upstream has sent nothing of it for
    /// `limit` (`upstream_timeout`), as `body::IdleLimited` does around
    /// other bodies: the timer is this body's own, so an answer needs no
    /// wrapper, and one that came whole never makes a timer.
    pub(crate) fn limit_silence(&mut self, limit: std::time::Duration) {
        self.idle = Some(IdleTimer::new(limit));
    }

    /// The answer's [`RawFields`], if its fields were kept as written:
    /// its map holds none of them then. Carried here rather than in the
    /// response's extensions, whose first insert allocates and hashes.
    pub(crate) fn take_fields(&mut self) -> Option<RawFields> {
        self.raw.take()
    }
}

/// Sends `head` on `conn` and reads the response head. `head_only`: the
/// request was `HEAD` (no body follows whatever the fields say). The body
/// returns the connection to `pool` when it has been read to the end.
pub(crate) async fn exchange<T>(
    mut conn: Conn<T>,
    head: &[u8],
    head_only: bool,
    pool: Option<Pool<T>>,
) -> Result<Response<LeanBody<T>>, ExchangeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    conn.io
        .write_all(head)
        .await
        .map_err(|e| ExchangeError::Stale(BoxError::new(e)))?;
    // A TLS stream may hold the record's tail until flushed.
    conn.io
        .flush()
        .await
        .map_err(|e| ExchangeError::Stale(BoxError::new(e)))?;
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf).map_err(ExchangeError::Failed)? {
                Some(Parsed::Interim(n)) => {
                    // 100 Continue, 103 Early Hints: not forwarded.
                    conn.buf.advance(n);
                    continue;
                }
                Some(Parsed::Final(status, fields, said)) => {
                    return respond(conn, status, fields, said, head_only, pool)
                        .map_err(ExchangeError::Failed);
                }
                None if conn.buf.len() > MAX_HEAD => {
                    return Err(ExchangeError::Failed(invalid("upstream response head too large")))
                }
                None => {}
            }
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) | Err(_) if !received => {
                return Err(ExchangeError::Stale(io_error(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection before answering",
                )))
            }
            Ok(0) => {
                return Err(ExchangeError::Failed(io_error(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection in the response head",
                )))
            }
            Ok(_) => received = true,
            Err(e) => return Err(ExchangeError::Failed(BoxError::new(e))),
        }
    }
}

enum Parsed {
    /// A 1xx answer of this many bytes, to skip.
    Interim(usize),
    /// The final answer (taken off the buffer): status, fields, and what
    /// the head said of its connection.
    Final(StatusCode, Fields, Head),
}

/// An answer's fields: as the upstream wrote them when they can go to
/// the client as they are, otherwise in a map.
enum Fields {
    Raw(RawFields),
    Map(HeaderMap),
}

/// Most runs of field lines a [`RawFields`] keeps: each `Connection` or
/// `Keep-Alive` line left out splits one run in two.
const RUNS: usize = 4;

/// The usual answer's fields, passed on to the client as the upstream
/// wrote them: its field lines, less `Connection` (`close` or
/// `keep-alive` only) and `Keep-Alive`.
///
/// Why: building a header map of the answer (a checked name and a hashed
/// insert per field), then writing it out field by field and dropping it,
/// was a fifth of the lean path's instructions per proxied request
/// (docs/benchmarks.md, "HTTP gateway"). An answer qualifies when nothing
/// in it needs changing on the way: lines ending in CRLF, no hop-by-hop
/// field but those two, no transfer coding, at most one `Content-Length`
/// in canonical form, none of the fields the gateway sets itself
/// (`RateLimit`, `RateLimit-Policy`, `Retry-After`), and a status other
/// than 204 and 304 (whose length fields the gateway may have to drop).
/// Any other answer is parsed into a map as before. `httparse` has
/// checked every name and value (token names; no CR, LF or other control
/// byte in values; no obs-fold), as hyper does before trusting them.
///
/// It travels beside the response, whose map is then empty
/// ([`LeanBody::take_fields`]): the lean client side writes these lines
/// with the gateway's own ([`crate::front::Lines`]); for hyper's server
/// they go into the map ([`RawFields::into_map`]).
#[derive(Clone, Debug)]
pub(crate) struct RawFields {
    /// The whole head, status line to blank line.
    head: Bytes,
    /// Byte ranges of `head` passed on, each whole CRLF-ended lines.
    runs: [(u32, u32); RUNS],
    used: u8,
    length: Option<u64>,
    date: bool,
}

impl RawFields {
    /// Appends the field lines to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.runs[..usize::from(self.used)] {
            out.extend_from_slice(&self.head[start as usize..end as usize]);
        }
    }

    /// The answer's `Content-Length`.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.length
    }

    /// Whether the answer has a `Date`.
    pub(crate) fn has_date(&self) -> bool {
        self.date
    }

    /// Puts the fields into `map`, before those already there (hyper's
    /// server writes the map).
    pub(crate) fn into_map(self, map: &mut HeaderMap) {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let mut all = HeaderMap::with_capacity(8 + map.len());
        // It parsed once: it parses again.
        let parsed = resp.parse(&self.head);
        debug_assert!(parsed.is_ok(), "a head that parsed once did not parse again");
        if parsed.is_ok() {
            for f in resp.headers.iter() {
                let name = f.name.as_bytes();
                if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive") {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name),
                    HeaderValue::from_maybe_shared(self.head.slice_ref(f.value)),
                ) {
                    all.append(n, v);
                }
            }
        }
        let mut last = None;
        for (name, value) in std::mem::take(map) {
            // `into_iter` gives a name only with a field's first value.
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                all.append(name.clone(), value);
            }
        }
        *map = all;
    }
}

/// The [`RawFields`] of a final answer's `head`, for other modules'
/// tests.
#[cfg(test)]
pub(crate) fn raw_fields(head: &[u8]) -> RawFields {
    match parse_head(&mut BytesMut::from(head)) {
        Ok(Some(Parsed::Final(_, Fields::Raw(raw), _))) => raw,
        _ => panic!("not kept raw: {:?}", String::from_utf8_lossy(head)),
    }
}

/// Names of the hop-by-hop fields an answer passed on raw must not have:
/// the gateway's list, less `Connection` and `Keep-Alive` (its first two),
/// which are dropped from it instead.
fn hop_by_hop(name: &[u8]) -> bool {
    crate::proxy::hop_by_hop_index(name).is_some_and(|i| i > 1)
}

/// Names of the fields the gateway sets on a forwarded answer, replacing
/// the upstream's: an answer that has one goes through a map.
fn gateways(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        9 => &[b"ratelimit"],
        11 => &[b"retry-after"],
        16 => &[b"ratelimit-policy"],
        _ => return false,
    };
    candidates.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// What a `Connection` value says: `close` among its tokens, and whether
/// it names anything but `close` and `keep-alive` (fields for
/// `strip_hop_by_hop` to remove).
fn connection_tokens(value: &[u8]) -> (bool, bool) {
    let (mut close, mut other) = (false, false);
    for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
            other = true;
        }
    }
    (close, other)
}

/// A `Content-Length` value in canonical form (digits only, no leading
/// zero, short enough not to overflow).
fn canonical_digits(b: &[u8]) -> Option<u64> {
    ((1..=19).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1))
        .then(|| b.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Parses a response head at the start of `buf`: `None` if incomplete. A
/// final answer's head is taken off `buf`; its fields stay as written
/// ([`RawFields`]) or go into a map whose values share the head's bytes
/// (no copy, no allocation per field).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, BoxError> {
    // Uninitialised slots: no 4 KiB of zeroes written per answer.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(invalid("malformed upstream response head")),
    };
    let code = resp.code.unwrap_or(0);
    if (100..200).contains(&code) {
        if code == 101 {
            // Never asked for: upgrades take hyper's client.
            return Err(invalid("unexpected 101 from the upstream"));
        }
        return Ok(Some(Parsed::Interim(n)));
    }
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid upstream status"))?;
    let said_http11 = resp.version == Some(1);
    let base = buf.as_ptr() as usize;
    let bytes: &[u8] = buf;

    // First pass: what the head says of its connection, and whether its
    // lines can go on as they are.
    let mut close = false;
    let mut raw = status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
        && bytes[..n].ends_with(b"\r\n\r\n");
    let mut runs = [(0u32, 0u32); RUNS];
    let mut used = 0;
    // Start of the run being gathered; `None` after a line left out.
    let mut run: Option<usize> = None;
    let mut length = None;
    let mut date = false;
    // Whether a `Connection` names more than `close` and `keep-alive`.
    let mut named = false;
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        let start = name.as_ptr() as usize - base;
        raw &= start >= 2 && &bytes[start - 2..start] == b"\r\n";
        let run_start = *run.get_or_insert(start);
        // This hop's own fields, in their usual form, are read here and
        // not passed on: `Connection: keep-alive` or `close` (anything
        // else it names is left for `strip_hop_by_hop`) and `Keep-Alive`.
        let mut drop = false;
        if name.eq_ignore_ascii_case(b"connection") {
            let (says_close, other) = connection_tokens(f.value);
            close |= says_close;
            named |= other;
            drop = !other;
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            drop = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match canonical_digits(f.value) {
                Some(v) if length.is_none() => length = Some(v),
                _ => raw = false,
            }
        } else if name.eq_ignore_ascii_case(b"date") {
            date = true;
        } else if hop_by_hop(name) || gateways(name) {
            raw = false;
        }
        if drop {
            if start > run_start {
                if used == RUNS {
                    raw = false;
                } else {
                    runs[used] = (run_start as u32, start as u32);
                    used += 1;
                }
            }
            run = None;
        }
    }
    if let Some(run_start) = run {
        if used == RUNS {
            raw = false;
        } else if n - 2 > run_start {
            runs[used] = (run_start as u32, (n - 2) as u32);
            used += 1;
        }
    }
    raw &= !named && u32::try_from(n).is_ok();
    if raw {
        let head = buf.split_to(n).freeze();
        return Ok(Some(Parsed::Final(
            status,
            Fields::Raw(RawFields {
                head,
                runs,
                used: used as u8,
                length,
                date,
            }),
            Head {
                http11: said_http11,
                close,
            },
        )));
    }

    let mut kept = Vec::with_capacity(resp.headers.len());
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") && !connection_tokens(f.value).1 {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| invalid("invalid upstream header name"))?;
        let start = f.value.as_ptr() as usize - base;
        kept.push((name, start, start + f.value.len()));
    }
    let head = buf.split_to(n).freeze();
    // Room for what the gateway adds (the RateLimit fields): a full map
    // would grow, rehashing every field, on the first insert.
    let mut headers = HeaderMap::with_capacity(kept.len() + ADDED_FIELDS);
    for (name, start, end) in kept {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| invalid("invalid upstream header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Parsed::Final(
        status,
        Fields::Map(headers),
        Head {
            http11: said_http11,
            close,
        },
    )))
}

/// Fields the gateway may add to an answer (`RateLimit`, `RateLimit-Policy`,
/// `Retry-After` and a few more), reserved up front.
const ADDED_FIELDS: usize = 6;

/// What the response head said of its connection.
#[derive(Debug, Clone, Copy)]
struct Head {
    http11: bool,
    /// `Connection: close`.
    close: bool,
}

/// Whether a comma-separated field (all its lines) holds `token`.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn respond<T>(
    conn: Conn<T>,
    status: StatusCode,
    fields: Fields,
    said: Head,
    head_only: bool,
    pool: Option<Pool<T>>,
) -> Result<Response<LeanBody<T>>, BoxError> {
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (mut headers, raw) = match fields {
        Fields::Raw(raw) => (HeaderMap::new(), Some(raw)),
        Fields::Map(headers) => (headers, None),
    };
    let framing = if let Some(raw) = &raw {
        // No transfer coding, one canonical length at most.
        match raw.length {
            _ if bodiless => Framing::Done,
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked only when it is the last coding; otherwise the body runs
        // until the connection closes (RFC 9112 §6.3).
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        // A length beside a transfer coding is ignored, and an
        // intermediary removes it (RFC 9112 §6.3): the client must not
        // frame the decoded body by it.
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        headers.remove(header::CONTENT_LENGTH);
        if bodiless {
            Framing::Done
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Eof
        }
    } else {
        match canonical_length(&mut headers) {
            Ok(_) if bodiless => Framing::Done,
            // A bodiless answer's length only informs: a bad one is dropped
            // rather than failing the answer.
            Err(_) if bodiless => {
                headers.remove(header::CONTENT_LENGTH);
                Framing::Done
            }
            Ok(Some(0)) => Framing::Done,
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => Framing::Eof,
            Err(e) => return Err(e),
        }
    };
    let keep_alive = said.http11 && framing != Framing::Eof && !said.close;
    let mut conn = conn;
    // The whole body already read with the head: taken now.
    let ready = match framing {
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            usize::try_from(n).ok().map(|n| conn.buf.split_to(n).freeze())
        }
        _ => None,
    };
    let mut body = LeanBody {
        conn: Some(conn),
        framing: if ready.is_some() { Framing::Done } else { framing },
        keep_alive,
        pool,
        ready,
        idle: None,
        raw,
    };
    if body.framing == Framing::Done {
        body.finish();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The answer's `Content-Length`, checked (digits only; several values
/// must agree) and left as one canonical value (`5, 5` was one length).
fn canonical_length(headers: &mut HeaderMap) -> Result<Option<u64>, BoxError> {
    // The usual case first: one value, digits only, no leading zero, short
    // enough not to overflow — passed on as it is.
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(v), None) => {
            if let Some(n) = canonical_digits(v.as_bytes()) {
                return Ok(Some(n));
            }
        }
        _ => {}
    }
    let mut length: Option<u64> = None;
    let mut canonical = true;
    for (i, v) in headers.get_all(header::CONTENT_LENGTH).into_iter().enumerate() {
        // One value in canonical form: passed on as it is.
        canonical &= i == 0 && canonical_digits(v.as_bytes()).is_some();
        for part in v
            .to_str()
            .map_err(|_| invalid("invalid upstream Content-Length"))?
            .split(',')
        {
            // Digits only (`+5` parses as a u64 but is no length).
            let part = part.trim();
            let n = part
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| invalid("invalid upstream Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting upstream Content-Length"));
            }
            length = Some(n);
        }
    }
    if let (Some(n), false) = (length, canonical) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

impl<T> LeanBody<T> {
    /// The body has been read to the end: the connection goes back to the
    /// pool if it can carry another exchange.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let Some(conn) = self.conn.take() else { return };
        if !self.keep_alive || !conn.buf.is_empty() {
            return;
        }
        if let Some(pool) = &self.pool {
            pool.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn, Instant::now());
        }
    }

    /// Takes up to `max` buffered bytes as a data frame.
    fn take(&mut self, max: u64) -> Option<Bytes> {
        let conn = self.conn.as_mut()?;
        if conn.buf.is_empty() {
            return None;
        }
        let n = usize::try_from(max).unwrap_or(usize::MAX).min(conn.buf.len());
        Some(conn.buf.split_to(n).freeze())
    }
}

impl<T: AsyncRead + Unpin> LeanBody<T> {
    /// Reads more from the connection: the number of bytes read (0: the
    /// upstream closed it).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, BoxError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(READ_CHUNK);
        let read = conn.io.read_buf(&mut conn.buf);
        tokio::pin!(read);
        read.poll(cx).map_err(BoxError::new)
    }

    /// Fails unless more bytes came: a body cut short is an error, not an end.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match ready!(self.poll_fill(cx)) {
            Ok(0) => {
                self.framing = Framing::Done;
                self.conn = None;
                Poll::Ready(Err(io_error(
                    std::io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection mid-body",
                )))
            }
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => {
                self.framing = Framing::Done;
                self.conn = None;
                Poll::Ready(Err(e))
            }
        }
    }

    fn buffered(&self) -> &[u8] {
        self.conn.as_ref().map_or(&[][..], |c| &c.buf[..])
    }

    fn advance(&mut self, n: usize) {
        if let Some(c) = self.conn.as_mut() {
            c.buf.advance(n);
        }
    }
}

impl<T: AsyncRead + Unpin> Body for LeanBody<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_body(cx);
        match &mut this.idle {
            Some(timer) => timer.watch(cx, polled),
            None => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(data) = &self.ready {
            return SizeHint::with_exact(data.len() as u64);
        }
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> LeanBody<T> {
    /// The next frame, read from the connection as needed.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if let Some(data) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(n) => {
                    if let Some(data) = this.take(n) {
                        this.framing = Framing::Length(n - data.len() as u64);
                        if this.framing == Framing::Length(0) {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if let Err(e) = ready!(this.poll_more(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Framing::Eof => {
                    if let Some(data) = this.take(u64::MAX) {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(this.poll_fill(cx)) {
                        Ok(0) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.framing = Framing::Done;
                            this.conn = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Framing::Chunked(state) => match step(state, this.buffered()) {
                    Ok(Step::More) => {
                        if this.buffered().len() > MAX_LINE && matches!(state, Chunk::Size | Chunk::Trailers)
                        {
                            this.framing = Framing::Done;
                            this.conn = None;
                            return Poll::Ready(Some(Err(invalid("upstream chunk line too long"))));
                        }
                        if let Err(e) = ready!(this.poll_more(cx)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Ok(Step::Skip(n, next)) => {
                        this.advance(n);
                        match next {
                            Some(s) => this.framing = Framing::Chunked(s),
                            None => this.finish(),
                        }
                    }
                    Ok(Step::Data(left)) => {
                        if let Some(data) = this.take(left) {
                            let rest = left - data.len() as u64;
                            this.framing = Framing::Chunked(if rest == 0 {
                                Chunk::DataEnd
                            } else {
                                Chunk::Data(rest)
                            });
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if let Err(e) = ready!(this.poll_more(cx)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Err(e) => {
                        this.framing = Framing::Done;
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }
}

/// What the chunked decoder does next with the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Needs more bytes.
    More,
    /// Drop this many bytes, then be in this state (`None`: the body ended).
    Skip(usize, Option<Chunk>),
    /// Pass on up to this many bytes of chunk data.
    Data(u64),
}

/// One step of the chunked decoder in `state` over `buf`.
fn step(state: Chunk, buf: &[u8]) -> Result<Step, BoxError> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((n, 0))) => Ok(Step::Skip(n, Some(Chunk::Trailers))),
            Ok(httparse::Status::Complete((n, size))) => Ok(Step::Skip(n, Some(Chunk::Data(size)))),
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err(invalid("malformed upstream chunk size")),
        },
        Chunk::Data(left) => Ok(Step::Data(left)),
        Chunk::DataEnd => match buf {
            [b'\r', b'\n', ..] => Ok(Step::Skip(2, Some(Chunk::Size))),
            [] | [b'\r'] => Ok(Step::More),
            _ => Err(invalid("malformed upstream chunk end")),
        },
        Chunk::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
            // A blank line ends the body; a trailer line is dropped.
            Some(0) => Ok(Step::Skip(2, None)),
            Some(i) => Ok(Step::Skip(i + 2, Some(Chunk::Trailers))),
            None => Ok(Step::More),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::time::Duration;
    use tokio::io::duplex;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// One exchange against `answer` written by the far end; the body, and
    /// whether the connection went back to the pool.
    async fn run(answer: &[u8], head_only: bool) -> (Result<(StatusCode, HeaderMap, Bytes), String>, usize) {
        let (near, mut far) = duplex(1 << 20);
        let pool: Pool<tokio::io::DuplexStream> = Arc::default();
        let answer = answer.to_vec();
        let writer = tokio::spawn(async move {
            let mut seen = vec![0u8; GET.len()];
            far.read_exact(&mut seen).await.unwrap();
            assert_eq!(seen, GET);
            // Two writes, split inside the head, to exercise partial reads.
            let cut = answer.len().min(7);
            far.write_all(&answer[..cut]).await.unwrap();
            far.write_all(&answer[cut..]).await.unwrap();
            // Closing is the end of an EOF-delimited body.
        });
        let out = match exchange(Conn::new(near), GET, head_only, Some(pool.clone())).await {
            Ok(resp) => {
                let (mut parts, mut body) = resp.into_parts();
                if let Some(raw) = body.take_fields() {
                    raw.into_map(&mut parts.headers);
                }
                match body.collect().await {
                    Ok(c) => Ok((parts.status, parts.headers, c.to_bytes())),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(ExchangeError::Stale(e)) => Err(format!("stale: {e}")),
            Err(ExchangeError::Failed(e)) => Err(e.to_string()),
        };
        writer.await.unwrap();
        let kept = pool.lock().unwrap().len();
        (out, kept)
    }

    /// An answer whose body came with its head is marked complete, and its
    /// connection is back in the pool before the body is read.
    #[tokio::test]
    async fn a_body_read_with_its_head_frees_the_connection_at_once() {
        let (near, mut far) = duplex(1 << 16);
        let pool: Pool<tokio::io::DuplexStream> = Arc::default();
        // The answer is there before the request is sent (the pipe holds
        // both).
        far.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let resp = exchange(Conn::new(near), GET, false, Some(pool.clone()))
            .await
            .map_err(|_| "exchange failed")
            .unwrap();
        assert_eq!(
            pool.lock().unwrap().len(),
            1,
            "the connection waited for the body"
        );
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    /// A body whose upstream goes silent for longer than its limit fails;
    /// one that keeps sending does not.
    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_its_limit() {
        let (near, mut far) = duplex(1 << 16);
        far.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let resp = exchange(Conn::new(near), GET, false, None)
            .await
            .map_err(|_| "exchange failed")
            .unwrap();
        let mut body = resp.into_body();
        body.limit_silence(Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        // Four seconds of silence, then more: still going.
        let feed = async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            far.write_all(b"de").await.unwrap();
            far
        };
        let (next, mut far) = tokio::join!(body.frame(), feed);
        assert_eq!(&next.unwrap().unwrap().into_data().unwrap()[..], b"de");
        // Then silence for good: cut once the limit has passed.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.caused_by::<crate::body::BodyTimeout>(), "{err}");
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(9));
        far.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn content_length_bodies_and_reuse() {
        let (r, kept) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            false,
        )
        .await;
        let (status, headers, body) = r.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["x-a"], "1");
        assert_eq!(body, "hello");
        assert_eq!(kept, 1, "a complete keep-alive answer returns its connection");
        let (r, kept) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            false,
        )
        .await;
        assert_eq!(r.unwrap().2, "hello");
        assert_eq!(kept, 0, "Connection: close");
        let (r, kept) = run(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", false).await;
        assert_eq!(r.unwrap().2, "hi");
        assert_eq!(kept, 0, "HTTP/1.0");
    }

    #[tokio::test]
    async fn chunked_bodies_with_extensions_and_trailers() {
        let (r, kept) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(r.unwrap().2, "hello world");
        assert_eq!(kept, 1);
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false,
        )
        .await;
        assert!(r.is_err(), "a bad chunk size is an error");
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            false,
        )
        .await;
        assert!(r.is_err(), "data must end in CRLF");
    }

    #[tokio::test]
    async fn bodies_until_close_and_no_bodies() {
        let (r, kept) = run(b"HTTP/1.1 200 OK\r\n\r\nall of it", false).await;
        assert_eq!(r.unwrap().2, "all of it");
        assert_eq!(kept, 0, "a body delimited by close cannot be followed");
        let (r, kept) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).await;
        assert_eq!(r.unwrap().2, "", "HEAD: no body whatever the length says");
        assert_eq!(kept, 1);
        let (r, kept) = run(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false).await;
        assert_eq!(r.unwrap().0, 304);
        assert_eq!(kept, 1);
        let (r, _) = run(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(r.unwrap().0, 204, "1xx answers are skipped");
    }

    #[tokio::test]
    async fn bad_answers_are_errors() {
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            false,
        )
        .await;
        assert!(r.unwrap_err().contains("conflicting"));
        let (r, _) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", false).await;
        assert!(r.unwrap_err().contains("mid-body"));
        let (r, _) = run(b"NOT HTTP\r\n\r\n", false).await;
        assert!(r.unwrap_err().contains("malformed"));
        let (r, _) = run(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).await;
        assert!(r.is_err());
        let (r, _) = run(b"", false).await;
        assert!(
            r.unwrap_err().starts_with("stale"),
            "no answer at all: safe to send again"
        );
    }

    #[tokio::test]
    async fn lengths_are_strict_and_canonical() {
        let (r, _) = run(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", false).await;
        assert!(r.is_err(), "a signed length");
        let (r, kept) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", false).await;
        let (_, headers, body) = r.unwrap();
        assert_eq!(
            (headers["content-length"].as_bytes(), &body[..]),
            (&b"5"[..], &b"hello"[..])
        );
        assert_eq!(kept, 1);
        // With a transfer coding the length is ignored and removed.
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            false,
        )
        .await;
        let (_, headers, body) = r.unwrap();
        assert!(!headers.contains_key("content-length"));
        assert_eq!(body, "hi");
        // A HEAD's answer: lengths made one value, a bad one dropped.
        let (r, _) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            true,
        )
        .await;
        let (_, headers, _) = r.unwrap();
        assert_eq!(headers.get_all("content-length").iter().count(), 1);
        assert_eq!(headers["content-length"], "5");
        let (r, _) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", true).await;
        assert!(!r.unwrap().1.contains_key("content-length"));
    }

    /// A kept connection is used only if nothing arrived on it while idle.
    #[tokio::test]
    async fn idle_connections_that_closed_or_spoke_are_not_reused() {
        let (near, far) = duplex(1024);
        let mut c = Conn::new(near);
        assert!(c.quiet(), "an idle, open connection");
        drop(far);
        assert!(!c.quiet(), "the upstream closed it");
        let (near, mut far) = duplex(1024);
        let mut c = Conn::new(near);
        far.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
            .await
            .unwrap();
        assert!(!c.quiet(), "bytes nobody asked for");
    }

    /// The head is flushed: a buffered (or TLS) stream does not keep it.
    #[tokio::test]
    async fn the_head_is_flushed() {
        let (near, mut far) = duplex(1 << 16);
        let answer = tokio::spawn(async move {
            let mut seen = vec![0u8; GET.len()];
            far.read_exact(&mut seen).await.unwrap();
            far.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            far
        });
        let conn = Conn::new(tokio::io::BufWriter::new(near));
        let exchange = exchange(conn, GET, false, None);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .expect("the head never left the buffer")
            .map_err(|_| "failed")
            .unwrap();
        assert_eq!(resp.status(), 204);
        drop(answer.await.unwrap());
    }

    #[test]
    fn only_bodiless_gets_and_heads_are_eligible() {
        let mut h = HeaderMap::new();
        assert!(eligible(&Method::GET, &h));
        assert!(eligible(&Method::HEAD, &h));
        assert!(!eligible(&Method::POST, &h));
        assert!(!eligible(&Method::DELETE, &h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(eligible(&Method::GET, &h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(!eligible(&Method::GET, &h));
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(!eligible(&Method::GET, &h));
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!eligible(&Method::GET, &h));
    }

    #[test]
    fn heads_are_encoded_as_sent() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hs.example"));
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let mut out = Vec::new();
        // Extra fields follow the map's; those without a value are left out.
        let extra = [
            (
                HeaderName::from_static("x-real-ip"),
                Some(HeaderValue::from_static("203.0.113.7")),
            ),
            (HeaderName::from_static("forwarded"), None),
        ];
        encode_head(
            &Method::GET,
            "/_matrix/client/v3/sync?since=s1",
            &h,
            &extra,
            &mut out,
        );
        assert_eq!(
            out,
            b"GET /_matrix/client/v3/sync?since=s1 HTTP/1.1\r\nhost: hs.example\r\nx-forwarded-for: 203.0.113.7\r\nx-real-ip: 203.0.113.7\r\n\r\n"
        );
    }

    /// The fields of a parsed final answer, and what is left in the buffer.
    fn fields_of(head: &[u8]) -> (Fields, Head) {
        let mut buf = BytesMut::from(head);
        match parse_head(&mut buf) {
            Ok(Some(Parsed::Final(_, fields, said))) => (fields, said),
            _ => panic!("not a final answer: {:?}", String::from_utf8_lossy(head)),
        }
    }

    fn raw_of(head: &[u8]) -> RawFields {
        match fields_of(head).0 {
            Fields::Raw(raw) => raw,
            Fields::Map(_) => panic!("not passed raw: {:?}", String::from_utf8_lossy(head)),
        }
    }

    fn written(raw: &RawFields) -> String {
        let mut out = Vec::new();
        raw.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn usual_answers_pass_on_as_written_less_this_hops_fields() {
        let raw = raw_of(b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: Mon, 07 Dec 2026 09:00:00 GMT\r\nContent-Length: 19\r\n\r\n");
        assert_eq!(
            written(&raw),
            "Server: up\r\nDate: Mon, 07 Dec 2026 09:00:00 GMT\r\nContent-Length: 19\r\n"
        );
        assert_eq!(raw.content_length(), Some(19));
        assert!(raw.has_date());

        // `Connection` and `Keep-Alive` lines are left out wherever they
        // are; what they said is kept.
        let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nA: 1\r\nKeep-Alive: timeout=5\r\nB:  2 \r\nconnection: close\r\nC: 3\r\n\r\n";
        let (fields, said) = fields_of(head);
        let Fields::Raw(raw) = fields else {
            panic!("not raw")
        };
        assert_eq!(written(&raw), "A: 1\r\nB:  2 \r\nC: 3\r\n");
        assert!(said.close);
        assert_eq!(raw.content_length(), None);
        assert!(!raw.has_date());

        // Dropped lines in a row, a dropped last line, a length with
        // trailing space (clients trim it too), and exactly as many runs
        // as kept.
        let raw = raw_of(b"HTTP/1.1 200 OK\r\nA: 1\r\nKeep-Alive: 1\r\nConnection: close\r\nB: 2\r\nContent-Length: 5 \r\nKeep-Alive: 2\r\n\r\n");
        assert_eq!(written(&raw), "A: 1\r\nB: 2\r\nContent-Length: 5 \r\n");
        assert_eq!(raw.content_length(), Some(5));
        let raw = raw_of(b"HTTP/1.1 200 OK\r\nA: 1\r\nKeep-Alive: 1\r\nB: 2\r\nKeep-Alive: 2\r\nC: 3\r\nKeep-Alive: 3\r\nD: 4\r\n\r\n");
        assert_eq!(written(&raw), "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n");

        // Nothing at all to pass on.
        let raw = raw_of(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(written(&raw), "");
        let raw = raw_of(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(written(&raw), "");
    }

    #[test]
    fn answers_that_need_a_change_are_parsed_into_a_map() {
        for head in [
            // A transfer coding: the gateway frames the body itself.
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            // Lengths to check or to make canonical.
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCONTENT-length: 5\r\n\r\n",
            // Statuses whose length the gateway may drop.
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
            // Hop-by-hop fields to remove, or named by `Connection`.
            b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTrailer: Expires\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nProxy-Authenticate: Basic\r\n\r\n",
            // Fields the gateway sets in place of the upstream's.
            b"HTTP/1.1 200 OK\r\nRateLimit: \"x\";r=1;t=1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nratelimit-policy: \"x\";q=1;w=1\r\n\r\n",
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n\r\n",
            // Lines not ended by CRLF are not copied to a client.
            b"HTTP/1.1 200 OK\nA: 1\n\n",
            b"HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n",
        ] {
            assert!(
                matches!(fields_of(head).0, Fields::Map(_)),
                "{:?} passed raw",
                String::from_utf8_lossy(head)
            );
        }
        // More runs than kept: a map too, with nothing lost.
        let head = b"HTTP/1.1 200 OK\r\nA: 1\r\nKeep-Alive: 1\r\nB: 2\r\nKeep-Alive: 2\r\nC: 3\r\nKeep-Alive: 3\r\nD: 4\r\nKeep-Alive: 4\r\nE: 5\r\n\r\n";
        let Fields::Map(map) = fields_of(head).0 else {
            panic!("raw")
        };
        assert_eq!(map.len(), 5);
        assert!(!map.contains_key("keep-alive"));
    }

    #[test]
    fn raw_fields_go_into_a_map_before_the_gateways() {
        let raw = raw_of(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\n\r\n");
        let mut map = HeaderMap::new();
        map.append("ratelimit", HeaderValue::from_static("\"p\";r=1;t=1"));
        map.append("ratelimit-policy", HeaderValue::from_static("\"p\";q=2;w=60"));
        raw.into_map(&mut map);
        let all: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let pairs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("content-length", "3"),
                ("ratelimit", "\"p\";r=1;t=1"),
                ("ratelimit-policy", "\"p\";q=2;w=60"),
            ]
        );
    }
}
