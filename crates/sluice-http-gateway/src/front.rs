//! The client side of HTTP/1.1 for the common request, as [`crate::h1`] is
//! the upstream side: a `GET` or `HEAD` with no body, no upgrade and no
//! `Expect`, sent as HTTP/1.1 in origin form. Everything else — and every
//! request after it on the same connection — goes to hyper's server,
//! which is handed the connection with the bytes already read.
//!
//! Why not hyper for these too: hyper's dispatcher, its per-request head
//! timer and the copies of its request and response types were about a
//! fifth of the gateway's user-space CPU per proxied request in `perf`
//! (docs/benchmarks.md, "HTTP gateway"); here the connection's task reads
//! the head, calls the gateway and writes the answer, usually in one
//! `write`, with the connection's one timer ([`crate::deadline`]).
//!
//! What is parsed is what hyper would parse: the head with `httparse`
//! (hyper's parser), field names and values with the `http` crate's
//! checks. A head that fails any check, a head over 64 KiB or with more
//! than 100 fields, goes to hyper unchanged, which answers it as it always
//! did (400, 431). So does a head that may break a framing rule — no
//! `Host`, two, or an invalid one — whose refusal is written in one
//! place, on hyper's side (`crate::framing`). A request is never read
//! twice: the decision to hand over is taken before anything of it is
//! used.
//!
//! As with hyper, the whole head must arrive within 30 s of the previous
//! answer. Unlike hyper, only a long poll's client is watched while the
//! request is handled: a client that closes its connection then drops its
//! request (and its long-poll slot and upstream exchange); any other
//! request runs to its answer, which `upstream_timeout` bounds.
//!
//! Answers: `Content-Length` when the length is known (the upstream's, or
//! an exact body size), chunked otherwise; no body for `HEAD`, 204 and 304;
//! `Date` added when the answer has none; `Connection: close` when the
//! client asked for it. A body that fails midway closes the connection, as
//! hyper does: the client sees a short answer, never a wrong one.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::body::Body as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::body::{self, ProxyBody};
use crate::h1;
use crate::proxy::ConnCtx;
use crate::Gateway;

/// Time a client has to send a whole request head, from the end of the
/// previous answer (an idle kept-alive connection included): hyper's
/// `header_read_timeout` as the gateway sets it.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head taken here; larger ones go to hyper.
const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a request head taken here (hyper's own limit).
const MAX_FIELDS: usize = 100;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Body bytes copied behind the head into one write; more are written
/// on their own.
const COALESCE: usize = 16 * 1024;
/// Write buffer kept between a connection's answers; a larger one (grown
/// for a large answer) is let go.
const SMALL_ANSWER: usize = 4 * 1024;

/// How a connection left the lean path.
pub(crate) enum Outcome<S> {
    /// It is over: closed by either side, timed out, failed or shut down.
    Closed,
    /// A request this path does not take: hyper serves the connection from
    /// here, starting with these bytes (that request's head and whatever
    /// followed it).
    Handoff(S, Bytes),
}

/// Field lines an answer carries beside its map, filled by
/// [`Gateway::handle_parts`] for this side's writer: the upstream's as it
/// wrote them, and the gateway's own (`RateLimit`) already formatted. A
/// forwarded answer takes no header map of its own this way.
#[derive(Default)]
pub(crate) struct Lines {
    pub(crate) upstream: Option<h1::RawFields>,
    pub(crate) gateway: Vec<u8>,
}

impl Lines {
    fn clear(&mut self) {
        self.upstream = None;
        self.gateway.clear();
    }
}

/// A request head as parsed: where each part lies in the buffer.
struct Head {
    len: usize,
    method: Method,
    target: (usize, usize),
    fields: Vec<(usize, usize, usize, usize)>,
    /// The client asked to close after this answer.
    close: bool,
}

/// The last `Host` value found valid on a connection: a request with the
/// same one (a client's requests nearly always carry the same) is not
/// checked again, which was most of what the framing rules added to the
/// common request (`docs/benchmarks.md`, "The framing rules"). Inline, so
/// an idle connection holds no allocation for it; a longer value is
/// checked every time.
struct KnownHost {
    len: u8,
    bytes: [u8; KNOWN_HOST_MAX],
}

/// The longest [`KnownHost`] kept: a name and port
/// (`matrix.example.org:8448`), an address and port.
const KNOWN_HOST_MAX: usize = 47;

impl KnownHost {
    const fn new() -> Self {
        Self {
            len: 0,
            bytes: [0; KNOWN_HOST_MAX],
        }
    }

    /// `None` before the first (a valid value is never empty).
    fn get(&self) -> Option<&[u8]> {
        (self.len > 0).then(|| &self.bytes[..usize::from(self.len)])
    }

    fn remember(&mut self, v: &[u8]) {
        if let (Some(to), Ok(len)) = (self.bytes.get_mut(..v.len()), u8::try_from(v.len())) {
            to.copy_from_slice(v);
            self.len = len;
        }
    }
}

/// Serves requests on `io` until the connection ends or a request needs
/// hyper. `stopping` turns true at shutdown: the answer in progress is
/// finished, an idle connection closes.
pub(crate) async fn serve<S>(gw: &Gateway, mut io: S, ctx: &mut ConnCtx, stopping: &AtomicBool) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.lean = true;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut lines = Lines::default();
    let mut known_host = KnownHost::new();
    loop {
        // The whole head within HEAD_TIMEOUT of the previous answer (a
        // client trickling bytes does not move it), as hyper's
        // `header_read_timeout`.
        let end = tokio::time::Instant::now() + HEAD_TIMEOUT;
        let head = loop {
            if !buf.is_empty() {
                match parse(&buf, &mut known_host) {
                    Parse::Lean(h) if h.len <= MAX_HEAD => break h,
                    Parse::Partial if buf.len() <= MAX_HEAD => {}
                    Parse::Lean(_) | Parse::Partial | Parse::Other => {
                        return Outcome::Handoff(io, buf.freeze())
                    }
                }
            }
            if stopping.load(Ordering::Relaxed) {
                return Outcome::Closed;
            }
            buf.reserve(READ_CHUNK);
            let read = ctx.deadline.until(
                end,
                ReadOrStop {
                    io: &mut io,
                    buf: &mut buf,
                    stopping,
                },
            );
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed, stopped or too slow: nothing to answer
                // (hyper closes silently too).
                _ => return Outcome::Closed,
            }
        };
        let Some((parts, close)) = request(&mut buf, head) else {
            // A field or target the `http` crate refuses: hyper answers it.
            return Outcome::Handoff(io, buf.freeze());
        };
        let head_only = parts.method == Method::HEAD;
        let route = gw.route(&parts, false);
        let long_poll = route.long_poll;
        let handling = gw.handle_parts(parts, route, body::empty(), None, ctx, Some(&mut lines));
        let resp = if long_poll {
            // A long poll held open for a client that has gone would keep
            // its slot and its upstream exchange: the client's side is
            // watched, and a close drops the request with all it holds.
            // Other requests are answered soon anyway (`upstream_timeout`
            // bounds them), and the watch costs a readiness registration
            // per request.
            match unless_gone(&mut io, &mut buf, handling).await {
                Some(resp) => resp,
                None => return Outcome::Closed,
            }
        } else {
            handling.await
        };
        let keep = !close && !stopping.load(Ordering::Relaxed);
        let watch = long_poll.then_some(&mut buf);
        let written = write_response(&mut io, &mut out, resp, Some(&lines), head_only, keep, watch).await;
        // The upstream's head goes now, not at the next request: it shares
        // the upstream connection's read buffer, which an idle client
        // would otherwise hold (and that connection could not reuse).
        lines.clear();
        match written {
            Ok(true) if keep => {}
            _ => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
        }
        if out.capacity() > SMALL_ANSWER {
            // A large answer's buffer is not kept while the connection
            // idles: ten thousand idle clients would hold 16 KiB each.
            out = Vec::new();
        }
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            // Nor is a read buffer grown for a large head.
            buf = BytesMut::new();
        }
    }
}

/// Runs `handling` while watching the client's side of the connection:
/// `None` if the client closes it (or it fails) first. Bytes a client sends
/// meanwhile (its next requests) are kept in `buf`, up to `MAX_HEAD`; past
/// that the socket is left unread until the answer is out.
///
/// Free in the common case: tokio clears a socket's readiness after a short
/// read, so the watch is no system call until the client sends or closes.
async fn unless_gone<S, F>(io: &mut S, buf: &mut BytesMut, handling: F) -> Option<F::Output>
where
    S: AsyncRead + Unpin,
    F: std::future::Future,
{
    let mut handling = std::pin::pin!(handling);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        while buf.len() <= MAX_HEAD {
            buf.reserve(READ_CHUNK);
            let mut read = std::pin::pin!(io.read_buf(buf));
            match read.as_mut().poll(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

enum Parse {
    Lean(Head),
    Partial,
    /// Not for this path: malformed, or a request hyper must serve.
    Other,
}

/// Parses a request head at the start of `buf`; a `Host` value equal to
/// `known_host` (found valid before) is not checked again, and one found
/// valid becomes it.
fn parse(buf: &[u8], known_host: &mut KnownHost) -> Parse {
    // Uninitialised slots: no 3 KiB of zeroes written per request.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Other,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parse::Other,
    };
    let target = req.path.unwrap_or("");
    if req.version != Some(1) || !target.starts_with('/') {
        return Parse::Other;
    }
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + s.len())
    };
    let mut close = false;
    // Exactly one valid `Host`, or hyper's side refuses the request
    // (`crate::framing`): here only counted and looked at.
    let mut hosts = 0u32;
    let mut out = Vec::with_capacity(req.headers.len());
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        if is_host(name) {
            hosts += 1;
            if !known_host.get().is_some_and(|k| same(k, f.value)) {
                if !crate::framing::valid_host(f.value) {
                    return Parse::Other;
                }
                known_host.remember(f.value);
            }
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || (name.eq_ignore_ascii_case(b"content-length") && f.value != b"0")
        {
            return Parse::Other;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            close |= f
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        let (ns, ne) = at(name);
        let (vs, ve) = at(f.value);
        out.push((ns, ne, vs, ve));
    }
    if hosts != 1 {
        return Parse::Other;
    }
    Parse::Lean(Head {
        len,
        method,
        target: at(target.as_bytes()),
        fields: out,
        close,
    })
}

/// Whether a field name is `Host`, in any case: one 4-byte comparison
/// (setting bit 5 lower-cases a letter, and only `H` and `h` give `h`, and
/// so on), where `eq_ignore_ascii_case` folds byte by byte — this runs for
/// every field of every request.
fn is_host(name: &[u8]) -> bool {
    <[u8; 4]>::try_from(name)
        .is_ok_and(|n| u32::from_le_bytes(n) | 0x2020_2020 == u32::from_le_bytes(*b"host"))
}

/// `a == b`, for a `Host` value and the connection's known one: for the
/// usual lengths (8 to 16 bytes) two overlapping 8-byte words each, not
/// a call to `memcmp`.
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    if (8..=16).contains(&n) {
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a == b
}

/// The request of `head`, taken off the front of `buf`: its target and
/// field values share the head's bytes. `None` (and `buf` as it was) if
/// the `http` crate refuses a part of it.
fn request(buf: &mut BytesMut, head: Head) -> Option<(hyper::http::request::Parts, bool)> {
    let bytes = buf.split_to(head.len).freeze();
    match build(&bytes, &head) {
        Some(parts) => Some((parts, head.close)),
        None => {
            // Refused (rare: a malformed request): the bytes go back whole
            // for hyper, which answers it.
            let mut whole = BytesMut::with_capacity(bytes.len() + buf.len());
            whole.extend_from_slice(&bytes);
            whole.extend_from_slice(buf);
            *buf = whole;
            None
        }
    }
}

fn build(bytes: &Bytes, head: &Head) -> Option<hyper::http::request::Parts> {
    // Nothing is added to this map: the forwarding fields are written by
    // the upstream exchange, and `Host`, when missing, into a copy.
    let mut headers = HeaderMap::with_capacity(head.fields.len());
    for &(ns, ne, vs, ve) in &head.fields {
        let name = HeaderName::from_bytes(&bytes[ns..ne]).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vs..ve)).ok()?;
        // The body is empty: no length goes on (hyper would keep one of
        // several `Content-Length: 0`; none is as good for a GET).
        if name != header::CONTENT_LENGTH {
            headers.append(name, value);
        }
    }
    let (ts, te) = head.target;
    let uri = Uri::from_maybe_shared(bytes.slice(ts..te)).ok()?;
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req.into_parts().0)
}

/// Reads into `buf`, or ends with 0 bytes when `stopping` turns true (the
/// connection's task is woken for it: see `worker::Stop`).
struct ReadOrStop<'a, S> {
    io: &'a mut S,
    buf: &'a mut BytesMut,
    stopping: &'a AtomicBool,
}

impl<S: AsyncRead + Unpin> std::future::Future for ReadOrStop<'_, S> {
    type Output = std::io::Result<usize>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.stopping.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let mut read = std::pin::pin!(this.io.read_buf(this.buf));
        read.as_mut().poll(cx)
    }
}

/// How the answer's body is delimited towards the client.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes `resp`, with the field `lines` beside it; `Ok(true)` if the
/// connection can carry another request.
///
/// `watch` (a long poll's): while the body is silent the client's side is
/// read into this buffer, and a client that closes ends the answer (and
/// with it what the body holds: the long-poll slot, the upstream
/// exchange) — an event stream's head comes at once, then nothing for
/// minutes.
pub(crate) async fn write_response<S>(
    io: &mut S,
    out: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    lines: Option<&Lines>,
    head_only: bool,
    keep: bool,
    mut watch: Option<&mut BytesMut>,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status.as_u16()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // The upstream's field lines as it wrote them, when they need no
    // change ([`h1::RawFields`]); the map then holds none of them.
    let raw = lines.and_then(|l| l.upstream.as_ref());
    let declared = match raw {
        Some(raw) => raw.content_length(),
        None => parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.parse::<u64>().ok()),
    };
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless || head_only {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else {
        Framing::Chunked
    };
    if let Some(raw) = raw {
        raw.write(out);
    }
    for (name, value) in &parts.headers {
        // Framing is this hop's: the gateway writes its own. A 204 has no
        // length at all (RFC 9110 §8.6).
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (status == StatusCode::NO_CONTENT && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(lines) = lines {
        out.extend_from_slice(&lines.gateway);
    }
    match framing {
        Framing::Length(n) if declared.is_none() => {
            field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
        Framing::None if head_only && declared.is_none() && !bodiless => {
            // The gateway's own answers (a 429) say their length; an
            // upstream's HEAD answer without one (its GET would be chunked)
            // must not turn into "empty".
            if let Some(n) = body.size_hint().exact().filter(|&n| n > 0) {
                field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
            }
        }
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !raw.is_some_and(h1::RawFields::has_date) && !parts.headers.contains_key(header::DATE) {
        date(out);
    }
    if !keep {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    let mut left = match framing {
        Framing::None => {
            // The body is dropped unread: its guards go, and an upstream
            // connection it had not finished is not reused.
            io.write_all(out).await?;
            io.flush().await?;
            return Ok(true);
        }
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    let mut complete = true;
    loop {
        if left == Some(0) {
            break;
        }
        // What is ready now joins the head; before waiting for more, what
        // is pending goes out (a long poll's head must not wait for its
        // body).
        let frame = match std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(f) => Poll::Ready(Some(f)),
        })
        .await
        {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                }
                let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                match watch.as_deref_mut() {
                    None => next.await,
                    Some(buf) => match unless_gone(io, buf, next).await {
                        Some(frame) => frame,
                        None => return Ok(false),
                    },
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => {
                complete = false;
                break;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers: HTTP/1.1 clients get none (as from hyper).
                Err(_) => continue,
            },
        };
        let mut data: Bytes = data;
        if let Some(n) = &mut left {
            // Never more than announced.
            if data.len() as u64 > *n {
                data.truncate(usize::try_from(*n).unwrap_or(usize::MAX));
            }
            *n -= data.len() as u64;
        } else if !data.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if left.is_none() && !data.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
    }
    if left.is_none() && complete {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    out.clear();
    // Short of its length or cut: the client must see the connection end.
    Ok(complete && left.is_none_or(|n| n == 0))
}

/// One field line: `name: value` and CRLF.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a `Date` field: formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        field(out, b"date", c.1.as_bytes());
    });
}

/// A connection with bytes already read in front: what hyper reads first.
/// (hyper has the same type inside; it is not public.)
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(io: S, prefix: Bytes) -> Self {
        Self { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Let the read buffer go: the connection may live for hours.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(raw: &str) -> Option<Head> {
        match parse(raw.as_bytes(), &mut KnownHost::new()) {
            Parse::Lean(h) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn only_plain_bodiless_gets_and_heads_are_taken() {
        assert!(lean("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").is_some());
        assert!(lean("HEAD /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").is_some());
        for other in [
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
            "GET /a HTTP/1.0\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n",
            "GARBAGE\r\n\r\n",
            // What hyper's side refuses (`crate::framing`).
            "GET /a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x/y\r\n\r\n",
        ] {
            assert!(lean(other).is_none(), "{other:?}");
        }
        assert!(matches!(
            parse(b"GET /a HTTP/1.1\r\nHost:", &mut KnownHost::new()),
            Parse::Partial
        ));
    }

    /// A `Host` is checked unless it is the connection's known one; any
    /// other, an empty one included, is checked and refused if invalid.
    #[test]
    fn hosts_are_checked_unless_known() {
        let head = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let mut known = KnownHost::new();
        assert!(matches!(
            parse(head("a.example").as_bytes(), &mut known),
            Parse::Lean(_)
        ));
        assert_eq!(known.get(), Some(&b"a.example"[..]), "a valid host is remembered");
        assert!(matches!(
            parse(head("b.example").as_bytes(), &mut known),
            Parse::Lean(_)
        ));
        assert_eq!(known.get(), Some(&b"b.example"[..]), "and the next one");
        for bad in ["a/b", "a@b", ""] {
            let mut fresh = KnownHost::new();
            for k in [&mut known, &mut fresh] {
                assert!(matches!(parse(head(bad).as_bytes(), k), Parse::Other), "{bad:?}");
            }
            assert_eq!(known.get(), Some(&b"b.example"[..]), "{bad:?} remembered");
        }
        for (a, b) in [
            ("a.example", "a.example"),
            ("127.0.0.1:8008", "127.0.0.1:8008"),
            ("ab", "ab"),
        ] {
            assert!(same(a.as_bytes(), b.as_bytes()), "{a}");
        }
        for (a, b) in [
            ("a.example", "b.example"),
            ("127.0.0.1:8008", "127.0.0.1:8009"),
            ("127.0.0.1:8008", "127.0.0.2:8008"),
            ("a.example", "a.example:1"),
            ("ab", "ac"),
        ] {
            assert!(!same(a.as_bytes(), b.as_bytes()), "{a} {b}");
        }
        for name in ["host", "Host", "HOST", "hOsT"] {
            assert!(is_host(name.as_bytes()), "{name}");
        }
        for name in ["hos", "hosts", "post", "h\x0fst", "(ost", "hos\x14"] {
            assert!(!is_host(name.as_bytes()), "{name:?}");
        }
        let mut k = KnownHost::new();
        assert_eq!(k.get(), None);
        k.remember(b"a.example");
        assert_eq!(k.get(), Some(&b"a.example"[..]));
        k.remember(&[b'x'; KNOWN_HOST_MAX + 1]);
        assert_eq!(k.get(), Some(&b"a.example"[..]), "too long to keep");
    }

    #[test]
    fn requests_share_the_heads_bytes_and_leave_what_follows() {
        let raw = "GET /x?y=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next";
        let mut buf = BytesMut::from(raw);
        let head = lean(raw).unwrap();
        let (parts, close) = request(&mut buf, head).unwrap();
        assert!(close);
        assert_eq!(parts.uri, "/x?y=1");
        assert_eq!(parts.headers["host"], "h");
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"GET /next");
        // Lengths of an empty body go no further (two would reach the
        // upstream as two).
        let raw = "GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        let (parts, _) = request(&mut BytesMut::from(raw), lean(raw).unwrap()).unwrap();
        assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_value_the_http_crate_refuses_leaves_the_buffer_whole() {
        let raw = "GET /x HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n";
        let mut buf = BytesMut::from(raw);
        if let Some(head) = lean(raw) {
            assert!(request(&mut buf, head).is_none());
        }
        assert_eq!(&buf[..], raw.as_bytes());
    }

    /// A client trickling its head a byte at a time does not move the
    /// head timeout: the connection closes 30 s after it opened.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_when_its_time_is_up() {
        use tokio::io::AsyncWriteExt as _;
        let state = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\nstate_dir = \"{}\"\n[[gateway.http]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nprotocol = \"matrix\"\n",
            state.path().display()
        );
        let config = sluice_config::parse(&text, "t.toml").unwrap();
        let app = sluice_server::App::new(config.clone()).unwrap();
        let gw = Gateway::new(app, config.gateway.http[0].clone()).unwrap();
        let (mut client, server) = tokio::io::duplex(4096);
        let stopping = AtomicBool::new(false);
        let mut ctx = ConnCtx::new(&gw, "192.0.2.1:5000".parse().unwrap(), None);
        let start = tokio::time::Instant::now();
        let serving = serve(&gw, server, &mut ctx, &stopping);
        let trickle = async {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
                .await
                .unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if client.write_all(b"a").await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            out = serving => assert!(matches!(out, Outcome::Closed)),
            () = trickle => panic!("the gateway closed nothing"),
        }
        assert_eq!(tokio::time::Instant::now() - start, HEAD_TIMEOUT);
    }

    async fn written(resp: Response<ProxyBody>, head_only: bool, keep: bool) -> (String, bool) {
        written_with(resp, None, head_only, keep).await
    }

    async fn written_with(
        resp: Response<ProxyBody>,
        lines: Option<&Lines>,
        head_only: bool,
        keep: bool,
    ) -> (String, bool) {
        let mut io = tokio::io::join(tokio::io::empty(), Vec::new());
        let mut out = Vec::new();
        let again = write_response(&mut io, &mut out, resp, lines, head_only, keep, None)
            .await
            .unwrap();
        (String::from_utf8(io.into_inner().1).unwrap(), again)
    }

    /// An upstream's lines kept as written go first, then the map's
    /// fields, then the gateway's lines; the upstream's length and date
    /// are used, not made again.
    #[tokio::test]
    async fn raw_lines_then_the_map_then_the_gateways() {
        let lines = |head: &[u8]| Lines {
            upstream: Some(h1::raw_fields(head)),
            gateway: b"ratelimit: \"p\";r=1;t=1\r\n".to_vec(),
        };
        let known = lines(b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: D\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n");
        let mut resp = Response::new(body::full("hello"));
        resp.headers_mut().insert("x-map", HeaderValue::from_static("1"));
        let (s, again) = written_with(resp, Some(&known), false, true).await;
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: D\r\nContent-Length: 5\r\nx-map: 1\r\nratelimit: \"p\";r=1;t=1\r\n\r\nhello"
        );
        assert!(again);
        // HEAD: the upstream's length stays, once, and no body follows.
        let (s, _) = written_with(Response::new(body::empty()), Some(&known), true, false).await;
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: D\r\nContent-Length: 5\r\nratelimit: \"p\";r=1;t=1\r\nconnection: close\r\n\r\n"
        );
        // No length, no date: chunked, and a date is added.
        let unknown = lines(b"HTTP/1.1 200 OK\r\nServer: up\r\n\r\n");
        let (s, _) = written_with(Response::new(frames(vec![Ok("ab")])), Some(&unknown), false, true).await;
        assert!(
            s.starts_with("HTTP/1.1 200 OK\r\nServer: up\r\nratelimit: \"p\";r=1;t=1\r\ntransfer-encoding: chunked\r\ndate: "),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\n2\r\nab\r\n0\r\n\r\n"), "{s}");
    }

    /// A long poll's client that closes while the body is silent ends the
    /// answer, and the body (with what it holds) is dropped.
    #[tokio::test]
    async fn a_silent_long_poll_ends_when_its_client_leaves() {
        struct Silent {
            _held: std::sync::Arc<()>,
        }
        impl hyper::body::Body for Silent {
            type Data = Bytes;
            type Error = body::BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, body::BoxError>>> {
                Poll::Pending
            }
        }
        let held = std::sync::Arc::new(());
        let resp = Response::new(http_body_util::BodyExt::boxed(Silent { _held: held.clone() }));
        let (mut client, mut server) = tokio::io::duplex(4096);
        // The client reads the head, then leaves.
        let leaving = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 256];
                let n = client.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
            }
        });
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let writing = write_response(&mut server, &mut out, resp, None, false, true, Some(&mut buf));
        let again = tokio::time::timeout(Duration::from_secs(10), writing)
            .await
            .expect("the answer went on after its client left")
            .unwrap();
        assert!(!again);
        assert_eq!(std::sync::Arc::strong_count(&held), 1, "the body was not dropped");
        leaving.await.unwrap();
    }

    /// A body of frames given up front, of unknown size.
    struct Frames(std::collections::VecDeque<Result<hyper::body::Frame<Bytes>, body::BoxError>>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = body::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, body::BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn frames(parts: Vec<Result<&'static str, &'static str>>) -> ProxyBody {
        let f = parts
            .into_iter()
            .map(|p| match p {
                Ok(d) => Ok(hyper::body::Frame::data(Bytes::from_static(d.as_bytes()))),
                Err(e) => Err(body::BoxError::new(std::io::Error::other(e))),
            })
            .collect();
        http_body_util::BodyExt::boxed(Frames(f))
    }

    #[tokio::test]
    async fn answers_are_framed_for_this_hop() {
        // Exact size: a length; a Date is added.
        let (s, again) = written(Response::new(body::full("hello")), false, true).await;
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(s.contains("content-length: 5\r\n") && s.contains("date: "), "{s}");
        assert!(s.ends_with("\r\n\r\nhello") && again, "{s}");
        // Unknown size: chunked.
        let (s, again) = written(
            Response::new(frames(vec![Ok("ab"), Ok(""), Ok("cde")])),
            false,
            true,
        )
        .await;
        assert!(s.contains("transfer-encoding: chunked\r\n"), "{s}");
        assert!(
            s.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n") && again,
            "{s}"
        );
        // HEAD: the length, no body; closing: said so.
        let (s, again) = written(Response::new(body::full("hello")), true, false).await;
        assert!(
            s.contains("content-length: 5\r\n") && s.contains("connection: close\r\n"),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\n") && again, "{s}");
        // A declared length is kept, and a hop's own fields are not passed on.
        let mut resp = Response::new(body::full("0123456789"));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(4));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("x-y"));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        let (s, _) = written(resp, false, true).await;
        assert!(
            s.starts_with("HTTP/1.1 404 Not Found\r\n") && !s.contains("x-y"),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\n0123"), "never more than announced: {s}");
        // An upstream's HEAD answer without a length is not made "empty";
        // a 204 has no length.
        let (s, _) = written(Response::new(body::empty()), true, true).await;
        assert!(!s.contains("content-length"), "{s}");
        let mut resp = Response::new(body::empty());
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let (s, _) = written(resp, false, true).await;
        assert!(!s.contains("content-length") && s.ends_with("\r\n\r\n"), "{s}");
    }

    #[tokio::test]
    async fn a_body_that_fails_closes_the_connection() {
        let (s, again) = written(Response::new(frames(vec![Ok("ab"), Err("cut")])), false, true).await;
        assert!(!again, "{s}");
        assert!(!s.ends_with("0\r\n\r\n"), "no end of chunks after a failure: {s}");
        // Short of its declared length: closed too.
        let mut resp = Response::new(frames(vec![Ok("ab")]));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(4));
        let (_, again) = written(resp, false, true).await;
        assert!(!again);
    }
}
