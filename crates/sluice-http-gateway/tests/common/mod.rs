//! A small upstream started in-process, a gateway in front of it, and an
//! HTTP client: everything over real loopback sockets.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sluice_core::FakeClock;
use sluice_server::App;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the upstream saw.
pub struct Seen {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    pub whoami: AtomicU64,
    /// Requests being held (`/hold`, `/sync`, JMAP event source).
    pub held: AtomicU64,
    /// Held requests dropped unanswered (the gateway let their
    /// connection go).
    pub abandoned: AtomicU64,
    /// Permits to finish held requests, added by tests.
    pub release: Semaphore,
}

fn json_resp(status: StatusCode, v: Value) -> Response<UpBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|p| {
            p.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        })
    })
}

async fn upstream(req: Request<Incoming>, seen: Arc<Seen>) -> Response<UpBody> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let headers: serde_json::Map<String, Value> = [
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "x-forwarded-proto",
        "host",
        // What must not pass a hop (the framing tests).
        "upgrade",
        "http2-settings",
        "connection",
    ]
    .iter()
    .filter_map(|h| {
        req.headers()
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .map(|v| ((*h).to_owned(), Value::from(v)))
    })
    .collect();
    if path.ends_with("/ws") && req.headers().contains_key("upgrade") {
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(http_body_util::Empty::new().boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        return r;
    }
    if path.ends_with("/account/whoami") {
        seen.whoami.fetch_add(1, Ordering::SeqCst);
        return match auth.strip_prefix("Bearer good-") {
            Some(name) => json_resp(StatusCode::OK, json!({"user_id": format!("@{name}:example.org")})),
            None => json_resp(
                StatusCode::UNAUTHORIZED,
                json!({"errcode": "M_UNKNOWN_TOKEN", "error": "bad token"}),
            ),
        };
    }
    if path.ends_with("/hold") || path.ends_with("/sync") || path.ends_with("/eventsource/") {
        seen.held.fetch_add(1, Ordering::SeqCst);
        // Counts the request as abandoned unless it is answered: hyper
        // drops this future when the gateway closes the connection.
        struct Abandoned(Option<Arc<Seen>>);
        impl Drop for Abandoned {
            fn drop(&mut self) {
                if let Some(seen) = self.0.take() {
                    seen.abandoned.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let mut abandoned = Abandoned(Some(seen.clone()));
        if let Ok(p) = seen.release.acquire().await {
            p.forget();
        }
        abandoned.0 = None;
        return json_resp(StatusCode::OK, json!({"held": true}));
    }
    if path.ends_with("/fields") {
        // Fields of its own, one of them twice, for what the client gets.
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")).boxed());
        let h = r.headers_mut();
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("x-upstream", "yes".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.append("cache-control", "no-store".parse().unwrap());
        if query(&req, "own").is_some() {
            // Fields the gateway sets on its own answers too.
            h.append("ratelimit", "\"up\";r=1;t=1".parse().unwrap());
            h.append("retry-after", "7".parse().unwrap());
        }
        return r;
    }
    if path.ends_with("/trickle") {
        // One frame of body, then nothing more, ever.
        return Response::new(Stalled(false).boxed());
    }
    if path.contains("/download/") {
        let size: usize = query(&req, "size").and_then(|s| s.parse().ok()).unwrap_or(10);
        if query(&req, "chunked").is_some() {
            return Response::new(Chunks(size / 10).boxed());
        }
        return Response::new(Full::new(Bytes::from(vec![b'x'; size])).boxed());
    }
    // Everything below reads the body.
    let authn_ok = !auth.starts_with("Bearer bad") && auth != "Basic bWFsbG9yeTp3cm9uZw==";
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_resp(StatusCode::BAD_REQUEST, json!({"error": "body aborted"})),
    };
    seen.body_bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&body).into_owned();
    if path.ends_with("/missing") {
        return json_resp(
            StatusCode::NOT_FOUND,
            json!({"errcode": "M_UNRECOGNIZED", "error": "no such endpoint"}),
        );
    }
    if path.ends_with("/register") && text.contains("hold") {
        seen.held.fetch_add(1, Ordering::SeqCst);
        if let Ok(p) = seen.release.acquire().await {
            p.forget();
        }
    }
    if path.ends_with("/login") && method == hyper::Method::POST {
        return if text.contains("right") {
            json_resp(
                StatusCode::OK,
                json!({"user_id": "@alice:example.org", "access_token": "good-alice"}),
            )
        } else {
            json_resp(
                StatusCode::FORBIDDEN,
                json!({"errcode": "M_FORBIDDEN", "error": "Invalid password"}),
            )
        };
    }
    if path.ends_with("/register") && method == hyper::Method::POST {
        return if text.contains("auth") {
            json_resp(StatusCode::OK, json!({"user_id": "@new:example.org"}))
        } else {
            json_resp(
                StatusCode::UNAUTHORIZED,
                json!({"flows": [{"stages": ["m.login.dummy"]}], "session": "s1", "params": {}}),
            )
        };
    }
    if !authn_ok || auth.contains("sig=\"bad\"") {
        return json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"errcode": "M_UNKNOWN_TOKEN", "error": "no"}),
        );
    }
    json_resp(
        StatusCode::OK,
        json!({"method": method.as_str(), "path": path, "headers": headers, "len": body.len()}),
    )
}

/// A body that sends one frame of 10 bytes, then stalls for ever.
pub struct Stalled(bool);

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
    }
}

/// A body of `n` frames of 10 bytes with no length announced (chunked).
pub struct Chunks(pub usize);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 10])))))
    }
}

/// Starts the upstream; returns its address.
pub async fn start_upstream() -> (SocketAddr, Arc<Seen>) {
    start_upstream_with(None).await
}

/// The upstream's TLS acceptor: the test certificate for `localhost`.
#[cfg(feature = "tls")]
pub fn test_acceptor() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let certs = CertificateDer::pem_file_iter(format!("{data}/localhost.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{data}/localhost.key")).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[cfg(feature = "tls")]
type UpTls = Option<tokio_rustls::TlsAcceptor>;
#[cfg(not(feature = "tls"))]
type UpTls = Option<std::convert::Infallible>;

/// Starts the upstream, over TLS when `tls` is given; returns its address.
pub async fn start_upstream_with(tls: UpTls) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen {
        requests: AtomicU64::new(0),
        body_bytes: AtomicU64::new(0),
        whoami: AtomicU64::new(0),
        held: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        release: Semaphore::new(0),
    });
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(upstream(req, s).await) }
                });
                let conn = http1::Builder::new();
                #[cfg(feature = "tls")]
                if let Some(acceptor) = tls {
                    // A handshake the gateway refuses ends here.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = conn
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    }
                    return;
                }
                #[cfg(not(feature = "tls"))]
                let _ = tls;
                let _ = conn
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

pub struct Harness {
    pub url: String,
    pub addr: SocketAddr,
    pub app: App,
    pub clock: FakeClock,
    pub seen: Arc<Seen>,
    _state: tempfile::TempDir,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, UpBody>,
}

/// A gateway for `protocol` with extra config `extra` (TOML appended after
/// the gateway table, so `[[gateway.http.rule]]` etc. attach to it).
pub async fn start(protocol: &str, head: &str, extra: &str) -> Harness {
    let (up, seen) = start_upstream().await;
    start_with(&format!("http://{up}"), seen, protocol, head, extra).await
}

/// A gateway in front of the upstream at `upstream` (a base URL).
pub async fn start_with(upstream: &str, seen: Arc<Seen>, protocol: &str, head: &str, extra: &str) -> Harness {
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n{head}\n[[gateway.http]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nprotocol = \"{protocol}\"\n{extra}\n",
        state.path().display()
    );
    let config = sluice_config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let clock = FakeClock::new();
    let app = App::with_clock(config, Arc::new(clock.clone())).unwrap();
    let bound = sluice_http_gateway::start(&app).await.unwrap();
    let addr = bound[0];
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    Harness {
        url: format!("http://{addr}"),
        addr,
        app,
        clock,
        seen,
        _state: state,
        client,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Harness {
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_owned())).boxed()).unwrap();
        self.finish(req).await
    }

    /// Sends a chunked body of `frames` × 10 bytes (no Content-Length).
    pub async fn send_chunked(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        frames: usize,
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.finish(b.body(Chunks(frames).boxed()).unwrap()).await
    }

    /// Sends one 10-byte frame of body, then nothing more, ever.
    pub async fn send_stalled(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.finish(b.body(Stalled(false).boxed()).unwrap()).await
    }

    async fn finish(&self, req: Request<UpBody>) -> Reply {
        match self.try_finish(req).await {
            Ok(r) => r,
            Err(e) => panic!("request failed: {e}"),
        }
    }

    /// A GET that may fail (the gateway may close before answering).
    pub async fn try_get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.try_finish(b.body(Full::new(Bytes::new()).boxed()).unwrap())
            .await
    }

    async fn try_finish(&self, req: Request<UpBody>) -> Result<Reply, String> {
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => return Err(format!("{e:?}")),
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Whether one of `t`'s buckets is empty (a limit it has spent).
    pub fn spent(&self, t: &sluice_core::Target) -> bool {
        self.app
            .engine()
            .inspect(t)
            .unwrap()
            .iter()
            .any(|l| l.remaining == 0)
    }

    /// Waits until `n` requests are held by the upstream.
    pub async fn wait_held(&self, n: u64) {
        while self.seen.held.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, "").await
    }
}

/// The common config head: the test client (loopback) is a trusted proxy,
/// so `X-Forwarded-For` picks each test's client address; connection
/// limits off (one test opens many).
pub const TRUSTING: &str = "[network]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";

/// A service variable set by scripts/services/*.sh: `None` (the test skips)
/// when missing, except under `SLUICE_TEST_STRICT=1` (scripts/test), where a
/// missing service fails the test instead of hiding it.
pub fn service_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("SLUICE_TEST_STRICT").as_deref() != Ok("1"),
                "{name} is not set (scripts/services/synapse.sh starts Synapse)"
            );
            eprintln!("skipping: {name} not set");
            None
        }
    }
}
