//! Regression tests for the framing findings of issue 13 (a request
//! smuggling corpus found no desync, but these were loose), one per
//! finding, over raw sockets so that heads no client library would write
//! can be sent. Each checks what the client got, what the upstream saw and
//! whom `/metrics` blames. Rules: `docs/gateway-http.md`, "Framing rules".

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{start, Harness, TRUSTING};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PROTOCOLS: [&str; 3] = ["matrix", "jmap", "generic"];

/// Bound on every wait for the gateway.
const WAIT: Duration = Duration::from_secs(10);

/// One answer as read off the socket.
struct Answer {
    status: u16,
    /// Lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A connection to the gateway and what was read from it but not used.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// Reads one answer from `c` (no body for a `HEAD`'s, `head_only`):
/// `None` if the gateway closed the connection before a whole one.
async fn read_answer(c: &mut Conn, head_only: bool) -> Option<Answer> {
    let Conn { s, buf } = c;
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).to_lowercase();
                let rest = &buf[end + 4..];
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                let body = match length {
                    _ if head_only || status == 101 || status == 204 || status == 304 => {
                        Some((Vec::new(), 0))
                    }
                    Some(n) if rest.len() >= n => Some((rest[..n].to_vec(), n)),
                    Some(_) => None,
                    None if head.contains("transfer-encoding: chunked") => dechunk(rest),
                    None => None,
                };
                if let Some((body, used)) = body {
                    buf.drain(..end + 4 + used);
                    return Some(Answer { status, head, body });
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no answer and no close from the gateway")
}

/// A whole chunked body (no trailers) and the bytes it took, or `None`
/// if more is to come.
fn dechunk(all: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut raw = all;
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).ok()?, 16).ok()?;
        raw = &raw[eol + 2..];
        if n == 0 {
            raw = raw.strip_prefix(b"\r\n")?;
            return Some((out, all.len() - raw.len()));
        }
        if raw.len() < n + 2 {
            return None;
        }
        out.extend_from_slice(&raw[..n]);
        raw = &raw[n + 2..];
    }
}

/// Whether the gateway closes `c` (reading and dropping anything else).
async fn closes(c: &mut Conn) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, c.s.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

/// Sends `raw` on a new connection and reads one answer.
async fn send_raw(addr: SocketAddr, raw: &[u8], head_only: bool) -> (Conn, Option<Answer>) {
    let mut c = Conn {
        s: TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    };
    c.s.write_all(raw).await.unwrap();
    let a = read_answer(&mut c, head_only).await;
    (c, a)
}

/// The gateway's `sluice_http_gateway_requests_total` for each of
/// `outcomes`. The API is served for it with the gateway's app and shut
/// down after, and the gateway with it: the last thing a test asks.
async fn requests_total<const N: usize>(h: &Harness, outcomes: [&str; N]) -> [u64; N] {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_server::serve(listener, h.app.clone(), async move {
        let _ = rx.await;
    }));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let resp = tokio::time::timeout(WAIT, client.get(format!("http://{api}/metrics").parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    let _ = tx.send(());
    let _ = server.await;
    outcomes.map(|outcome| {
        let key = format!("outcome=\"{outcome}\"}} ");
        text.lines()
            .filter(|l| l.starts_with("sluice_http_gateway_requests_total{"))
            .find_map(|l| l.split_once(&key).map(|(_, n)| n.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no {outcome} series in\n{text}"))
    })
}

/// `a` is a refusal with `status` in `protocol`'s error form, and says it
/// closes the connection.
fn assert_refusal(protocol: &str, a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{protocol} {what}: {}", a.head);
    assert_eq!(
        a.field("connection"),
        Some("close"),
        "{protocol} {what}: {}",
        a.head
    );
    let ctype = a.field("content-type").unwrap_or("");
    if protocol == "matrix" {
        assert_eq!(ctype, "application/json", "{what}");
    } else {
        assert_eq!(ctype, "application/problem+json", "{what}");
    }
}

/// The JSON of a refusal's body: Matrix's `errcode`, or the problem's
/// `status`.
fn assert_refusal_body(protocol: &str, a: &Answer, status: u16, errcode: &str, what: &str) {
    let j = a.json();
    if protocol == "matrix" {
        assert_eq!(j["errcode"], errcode, "{what}: {j}");
    } else {
        assert_eq!(j["status"], status, "{what}: {j}");
    }
}

/// Finding 1: a `GET` or `HEAD` with a chunked body had it dropped, one
/// with `Content-Length` had it forwarded. Both are now refused with 400
/// before anything reaches the upstream, and the connection closes.
#[tokio::test]
async fn get_with_chunked_body_is_handled_like_content_length() {
    for protocol in PROTOCOLS {
        let h = start(protocol, TRUSTING, "").await;
        let mut refused = 0;
        for method in ["GET", "HEAD"] {
            for framing in [
                "Content-Length: 5\r\n\r\nhello",
                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ] {
                let raw =
                    format!("{method} /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\n{framing}");
                let what = format!("{method} with {framing:?}");
                let (mut s, a) = send_raw(h.addr, raw.as_bytes(), method == "HEAD").await;
                let a = a.unwrap_or_else(|| panic!("{protocol} {what}: closed without an answer"));
                assert_refusal(protocol, &a, 400, &what);
                if method == "GET" {
                    assert_refusal_body(protocol, &a, 400, "M_UNKNOWN", &what);
                }
                assert!(closes(&mut s).await, "{protocol} {what}: left open");
                refused += 1;
            }
        }
        assert_eq!(h.seen.requests.load(Ordering::SeqCst), 0, "{protocol}: forwarded");
        assert_eq!(h.seen.body_bytes.load(Ordering::SeqCst), 0, "{protocol}");
        // A body of length 0 is no body: served, on the lean path too.
        let (_, a) = send_raw(
            h.addr,
            b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(a.unwrap().status, 200, "{protocol}");
        let [client, upstream] = requests_total(&h, ["client_error", "upstream_error"]).await;
        assert_eq!((client, upstream), (refused, 0), "{protocol}");
    }
}

/// Finding 2: a request body that ends early or is badly chunked was
/// answered 502 and counted as the upstream's error. It is the client's:
/// 400 in the protocol's form (when the client can still read it),
/// counted as `client_error`, never `upstream_error`.
#[tokio::test]
async fn truncated_request_body_is_the_clients_400() {
    for protocol in PROTOCOLS {
        let h = start(protocol, TRUSTING, "").await;
        let post = "POST /_matrix/client/v3/rooms/r/send/m.room.message/1 HTTP/1.1\r\nHost: x\r\n";
        // Badly chunked, the client still there: it gets the 400.
        for bad in ["zz\r\n", "5\r\nhelloXX0\r\n\r\n", "5\r\nhello\r\nzz\r\n"] {
            let raw = format!("{post}Transfer-Encoding: chunked\r\n\r\n{bad}");
            let (mut s, a) = send_raw(h.addr, raw.as_bytes(), false).await;
            let a = a.unwrap_or_else(|| panic!("{protocol} {bad:?}: closed without an answer"));
            assert_refusal(protocol, &a, 400, bad);
            assert_refusal_body(protocol, &a, 400, "M_UNKNOWN", bad);
            assert!(closes(&mut s).await, "{protocol} {bad:?}: left open");
        }
        // Short of its length or its last chunk, then the client stops
        // sending: a 400 if anything, never a 5xx.
        for short in [
            "Content-Length: 100\r\n\r\n{\"body\":",
            "Transfer-Encoding: chunked\r\n\r\n10\r\n{\"bo",
        ] {
            let mut c = Conn {
                s: TcpStream::connect(h.addr).await.unwrap(),
                buf: Vec::new(),
            };
            c.s.write_all(format!("{post}{short}").as_bytes()).await.unwrap();
            c.s.shutdown().await.unwrap();
            if let Some(a) = read_answer(&mut c, false).await {
                assert_refusal(protocol, &a, 400, short);
            }
        }
        assert_eq!(h.seen.body_bytes.load(Ordering::SeqCst), 0, "{protocol}");
        let [client, upstream] = requests_total(&h, ["client_error", "upstream_error"]).await;
        assert_eq!((client, upstream), (5, 0), "{protocol}");
    }
}

/// Opens a WebSocket through the gateway at `addr`: 101, then an echo.
async fn websocket_passes(addr: SocketAddr, protocol: &str) {
    let (mut s, a) = send_raw(
        addr,
        b"GET /jmap/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(a.unwrap().status, 101, "{protocol}: websocket");
    assert!(s.buf.is_empty(), "bytes before the splice");
    s.s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, s.s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
}

/// Finding 3: `Upgrade: h2c` reached the upstream, and an upstream that
/// accepted it (the test's answers 101 to any upgrade on `/ws`) had the
/// connection spliced: HTTP/2 requests on it would meet no limit. Only
/// WebSocket upgrades pass now; any other is removed, with
/// `HTTP2-Settings`, and the request is served as a plain HTTP/1.1 one.
#[tokio::test]
async fn h2c_upgrade_never_reaches_the_upstream() {
    for protocol in PROTOCOLS {
        let h = start(protocol, TRUSTING, "").await;
        for (what, fields) in [
            (
                "h2c",
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            ),
            (
                "h2c, settings not named",
                "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            ),
            ("websocket or h2c", "Connection: upgrade\r\nUpgrade: websocket, h2c\r\n"),
            ("something else", "Connection: upgrade\r\nUpgrade: irc/6.9\r\n"),
            ("settings alone", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
        ] {
            let raw = format!("GET /jmap/ws HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
            let (mut s, a) = send_raw(h.addr, raw.as_bytes(), false).await;
            let a = a.unwrap_or_else(|| panic!("{protocol} {what}: no answer"));
            assert_eq!(a.status, 200, "{protocol} {what}: {}", a.head);
            let seen = &a.json()["headers"];
            assert_eq!(seen["upgrade"], serde_json::Value::Null, "{protocol} {what}: {seen}");
            assert_eq!(seen["http2-settings"], serde_json::Value::Null, "{protocol} {what}: {seen}");
            assert_eq!(seen["connection"], serde_json::Value::Null, "{protocol} {what}: {seen}");
            // Still HTTP/1.1: the next request on the connection is served.
            s.s.write_all(b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let next = read_answer(&mut s, false).await.unwrap();
            assert_eq!(next.status, 200, "{protocol} {what}: then {}", next.head);
        }
        websocket_passes(h.addr, protocol).await;
        // Nor is one over HTTP/1.0.
        let (_, a) = send_raw(
            h.addr,
            b"GET /jmap/ws HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            false,
        )
        .await;
        let a = a.unwrap();
        assert_eq!(a.status, 200, "{protocol} HTTP/1.0 upgrade: {}", a.head);
        assert_eq!(a.json()["headers"]["upgrade"], serde_json::Value::Null);
        // A WebSocket asked with POST is no WebSocket handshake (RFC 6455
        // §4.1): not upgraded either.
        let (_, a) = send_raw(
            h.addr,
            b"POST /jmap/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let a = a.unwrap();
        assert_eq!(a.status, 200, "{protocol} POST upgrade: {}", a.head);
        assert_eq!(a.json()["headers"]["upgrade"], serde_json::Value::Null);
    }
}

/// Finding 4, first half: two `Host` fields were served (the gateway and
/// the upstream could each take another). RFC 9112 §3.2: 400 — on the
/// lean path (a plain GET) and hyper's (a POST) alike; an invalid `Host`
/// value too.
#[tokio::test]
async fn two_host_fields_are_a_400() {
    for protocol in PROTOCOLS {
        let h = start(protocol, TRUSTING, "").await;
        let mut n = 0;
        for (what, raw) in [
            ("GET, two", "GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
            ("GET, two equal", "GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\nhost: a.example\r\n\r\n"),
            ("HTTP/1.0 GET, two", "GET /_matrix/client/v3/capabilities HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
            ("POST, two", "POST /_matrix/client/v3/rooms/r/send/m/1 HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nContent-Length: 2\r\n\r\n{}"),
            ("GET, invalid", "GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: a.example/evil\r\n\r\n"),
            ("GET, userinfo", "GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: me@a.example\r\n\r\n"),
            ("POST, invalid", "POST /_matrix/client/v3/rooms/r/send/m/1 HTTP/1.1\r\nHost: a example\r\nContent-Length: 2\r\n\r\n{}"),
        ] {
            let (mut s, a) = send_raw(h.addr, raw.as_bytes(), false).await;
            let a = a.unwrap_or_else(|| panic!("{protocol} {what}: closed without an answer"));
            assert_refusal(protocol, &a, 400, what);
            assert_refusal_body(protocol, &a, 400, "M_UNKNOWN", what);
            assert!(closes(&mut s).await, "{protocol} {what}: left open");
            n += 1;
        }
        // On a connection whose earlier request had a valid one.
        let (mut s, a) = send_raw(
            h.addr,
            b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: a.example\r\n\r\n\
              GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: a.example@b.example\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(a.unwrap().status, 200, "{protocol}");
        let a = read_answer(&mut s, false).await.unwrap();
        assert_refusal(protocol, &a, 400, "after a valid one");
        n += 1;
        // After a hand-over to hyper, on the same connection.
        let (mut s, a) = send_raw(
            h.addr,
            b"POST /_matrix/client/v3/rooms/r/send/m/1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n\r\n{}\
              GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(a.unwrap().status, 200, "{protocol}");
        let a = read_answer(&mut s, false).await.unwrap();
        assert_refusal(protocol, &a, 400, "after a hand-over");
        n += 1;
        assert_eq!(h.seen.requests.load(Ordering::SeqCst), 2, "{protocol}: forwarded");
        // Hosts as the grammar has them pass.
        for host in [
            "a.example:8448",
            "[2001:db8::1]:443",
            "192.0.2.1",
            "xn--bcher-kva.example",
        ] {
            let raw = format!(
                "GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let (_, a) = send_raw(h.addr, raw.as_bytes(), false).await;
            assert_eq!(a.unwrap().status, 200, "{protocol} {host}");
        }
        let [client, upstream] = requests_total(&h, ["client_error", "upstream_error"]).await;
        assert_eq!((client, upstream), (n, 0), "{protocol}");
    }
}

/// Finding 4, second half: an HTTP/1.1 request without `Host` was served.
/// RFC 9112 §3.2: 400 (HTTP/1.0 has no such rule: served).
#[tokio::test]
async fn missing_host_on_http11_is_a_400() {
    for protocol in PROTOCOLS {
        let h = start(protocol, TRUSTING, "").await;
        for (what, raw) in [
            ("GET", "GET /_matrix/client/v3/capabilities HTTP/1.1\r\n\r\n"),
            (
                "HEAD",
                "HEAD /_matrix/client/v3/capabilities HTTP/1.1\r\nX-A: 1\r\n\r\n",
            ),
            (
                "POST",
                "POST /_matrix/client/v3/rooms/r/send/m/1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            ),
        ] {
            let (mut s, a) = send_raw(h.addr, raw.as_bytes(), what == "HEAD").await;
            let a = a.unwrap_or_else(|| panic!("{protocol} {what}: closed without an answer"));
            assert_refusal(protocol, &a, 400, what);
            assert!(closes(&mut s).await, "{protocol} {what}: left open");
        }
        assert_eq!(h.seen.requests.load(Ordering::SeqCst), 0, "{protocol}: forwarded");
        let (_, a) = send_raw(
            h.addr,
            b"GET /_matrix/client/v3/capabilities HTTP/1.0\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(a.unwrap().status, 200, "{protocol}: HTTP/1.0 without Host");
        let [client] = requests_total(&h, ["client_error"]).await;
        assert_eq!(client, 3, "{protocol}");
    }
}

/// Finding 5: `CONNECT` was forwarded as `CONNECT /`. The gateway opens no
/// tunnels: 405 with the methods it does pass on in `Allow`.
#[tokio::test]
async fn connect_is_refused() {
    for protocol in PROTOCOLS {
        let h = start(protocol, TRUSTING, "").await;
        for raw in [
            "CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n",
            "CONNECT [2001:db8::1]:8448 HTTP/1.1\r\nHost: [2001:db8::1]:8448\r\n\r\n",
        ] {
            let (mut s, a) = send_raw(h.addr, raw.as_bytes(), false).await;
            let a = a.unwrap_or_else(|| panic!("{protocol} {raw:?}: closed without an answer"));
            assert_refusal(protocol, &a, 405, raw);
            assert_refusal_body(protocol, &a, 405, "M_UNRECOGNIZED", raw);
            let allow = a.field("allow").unwrap_or_else(|| panic!("no Allow: {}", a.head));
            assert!(allow.contains("get") && !allow.contains("connect"), "{allow}");
            assert!(closes(&mut s).await, "{protocol}: left open");
        }
        // In origin form, as it was forwarded: refused the same.
        let (_, a) = send_raw(h.addr, b"CONNECT / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
        if let Some(a) = a {
            assert!((400..500).contains(&a.status), "{protocol}: {}", a.head);
        }
        assert_eq!(h.seen.requests.load(Ordering::SeqCst), 0, "{protocol}: forwarded");
        let [client] = requests_total(&h, ["client_error"]).await;
        assert_eq!(client, 3, "{protocol}");
    }
}
