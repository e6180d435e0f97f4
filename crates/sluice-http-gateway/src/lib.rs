//! sluice's HTTP gateway: a reverse proxy in front of an unmodified Matrix
//! homeserver (Synapse, Conduit) or JMAP server (Stalwart) that knows which
//! endpoint a request hits and who is asking, applies the policy's limits,
//! answers in the protocol's own error format, and hands the real client
//! address on.
//!
//! It is run by `sluice serve` for each `[[gateway.http]]` of the config,
//! next to the decision API, with the same engine — so admin commands,
//! bans, `/metrics`, `sluice top` and reload cover it. The TCP gateway
//! (XMPP) lives in `sluice-gateway`; this crate is separate so that one
//! does not compile an HTTP client stack.
//!
//! The parts, in the order a request meets them: `framing` (the rules a
//! head must keep: one `Host`, no `CONNECT`, no body on a `GET`, no
//! upgrade but WebSocket), [`forwarded`] (the client address), [`route`]
//! (endpoint → action tables), [`identity`] (token, appservice,
//! `X-Matrix` origin, Basic), then [`Gateway::handle`] (limits,
//! forwarding, watching the answer) with [`body`] (streaming byte meters)
//! and [`respond`] (protocol-native errors). Connections run on worker
//! threads, each a single-threaded runtime with its own upstream
//! connections (`worker`, `upstream`). See `docs/gateway-http.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = sluice_config::parse(
//!     r#"
//! [[gateway.http]]
//! listen = "127.0.0.1:8008"
//! upstream = "http://127.0.0.1:18008"
//! protocol = "matrix"
//! "#,
//!     "sluice.toml",
//! )?;
//! let app = sluice_server::App::new(config)?;
//! // Binds every [[gateway.http]] and runs it until the app shuts down.
//! sluice_http_gateway::start(&app).await?;
//! let api = tokio::net::TcpListener::bind("127.0.0.1:8470").await?;
//! sluice_server::serve(api, app, sluice_server::shutdown_signal()).await?;
//! # Ok(())
//! # }
//! ```

pub mod body;
mod deadline;
pub mod forwarded;
mod framing;
mod front;
mod h1;
pub mod identity;
mod proxy;
pub mod respond;
pub mod route;
#[cfg(feature = "tls")]
mod tls;
mod upstream;
mod worker;

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_config::HttpGateway;
use sluice_core::Request as Ask;
use sluice_server::App;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub use proxy::Gateway;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen address could not be bound.
    #[error("gateway.http {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file named in the config could not be used.
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    File(PathBuf, std::io::Error),
    /// TLS could not be set up from the files given.
    #[error("TLS: {0}")]
    Tls(String),
    /// This build has no TLS (the `tls` feature is off).
    #[error("gateway.http {0}: TLS configured but this build has no TLS support")]
    NoTls(SocketAddr),
    /// A worker thread or its runtime could not be started.
    #[error("gateway.http {addr}: cannot start a worker: {source}")]
    Worker {
        /// The gateway's listen address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The upstream's base URL cannot be used.
    #[error("upstream {0}: {1}")]
    Upstream(String, String),
}

/// How long connections may finish their requests at shutdown.
const DRAIN: Duration = Duration::from_secs(30);
/// Time a client has for the TLS handshake.
#[cfg(feature = "tls")]
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Binds every `[[gateway.http]]` of `app`'s config, starts its workers
/// and runs its accept loop with [`App::spawn`], so `sluice_server::serve`
/// drains them at shutdown. Returns the bound addresses (port 0 resolved).
pub async fn start(app: &App) -> Result<Vec<SocketAddr>, GatewayError> {
    let mut bound = Vec::new();
    let mut gateways = Vec::new();
    for cfg in app.config().gateway.http.clone() {
        let addr = cfg.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let gw = Gateway::new(app.clone(), cfg)?;
        let acceptor = acceptor(&gw.shared.cfg)?;
        let n = gw
            .shared
            .cfg
            .workers
            .map_or_else(worker::default_count, usize::from);
        let workers = worker::Workers::start(&gw, &acceptor, n, app.shutdown_watch()).await?;
        tracing::warn!(listen = %local, upstream = %gw.shared.cfg.upstream, protocol = ?gw.shared.cfg.protocol, workers = n, "http gateway serving");
        gateways.push((gw, local));
        app.spawn(serve(listener, workers, app.shutdown_watch()));
        bound.push(local);
    }
    if !gateways.is_empty() {
        app.add_metrics(metrics_source(gateways));
    }
    Ok(bound)
}

#[cfg(feature = "tls")]
type Acceptor = Option<tokio_rustls::TlsAcceptor>;
#[cfg(not(feature = "tls"))]
type Acceptor = Option<Infallible>;

#[cfg(feature = "tls")]
fn acceptor(cfg: &HttpGateway) -> Result<Acceptor, GatewayError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => tls::acceptor(c, k).map(Some),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "tls"))]
fn acceptor(cfg: &HttpGateway) -> Result<Acceptor, GatewayError> {
    match cfg.tls_cert {
        Some(_) => Err(GatewayError::NoTls(cfg.listen)),
        None => Ok(None),
    }
}

/// Accepts on `listener` and hands each connection to the least busy
/// worker until `shutdown` turns true, then lets open requests finish (at
/// most 30 s) and stops the workers.
async fn serve(
    listener: TcpListener,
    workers: worker::Workers,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Each connection holds a sender; when all are dropped, the drain is over.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, go on.
                    tracing::warn!("http gateway accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        // The socket leaves this runtime's reactor for the worker's.
        match stream.into_std() {
            Ok(stream) => workers.dispatch(stream, peer, open_tx.clone()),
            Err(e) => tracing::debug!("http gateway: cannot hand a connection over: {e}"),
        }
    }
    drop(listener);
    drop(open_tx);
    let _ = tokio::time::timeout(DRAIN, open_rx.recv()).await;
    // Closing the workers' queues ends each thread; waited for, so the
    // slots of connections still open are released before the service
    // settles its store.
    workers.stop().await;
}

/// Serves one accepted connection on the current (worker) runtime: the
/// per-address connection limit, the TLS handshake, then HTTP/1.
async fn accepted(
    gw: Gateway,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Acceptor,
    stop: Arc<worker::Stop>,
) {
    // Direct clients (not trusted proxies) are held to the per-address
    // connection limits, as the TCP gateway does.
    let slot = match connection_slot(&gw, peer).await {
        Ok(slot) => slot,
        Err(d) => {
            // One answer in the protocol's form (a client library reads
            // `retry_after_ms` from it), then close. Not on a TLS listener:
            // plain bytes would be garbage to a TLS client, and a handshake
            // for every refused connection is the work the limit saves.
            if acceptor.is_none() {
                let protocol = gw.shared.cfg.protocol;
                let resp = respond::denied(protocol, protocol == sluice_config::HttpProtocol::Matrix, &d);
                let mut stream = stream;
                let _ =
                    front::write_response(&mut stream, &mut Vec::new(), resp, None, false, false, None).await;
            }
            return;
        }
    };
    // Shared with upgraded connections, which outlive this one.
    let slot = slot.map(Arc::new);
    match acceptor {
        #[cfg(feature = "tls")]
        Some(acc) => match tokio::time::timeout(HANDSHAKE, acc.accept(stream)).await {
            Ok(Ok(tls)) => connection(gw, tls, peer, slot.clone(), stop).await,
            _ => tracing::debug!("http gateway: TLS handshake failed"),
        },
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
        None => connection(gw, stream, peer, slot.clone(), stop).await,
    }
    drop(slot);
}

/// A connection slot for a direct client (none needed for a trusted proxy).
async fn connection_slot(
    gw: &Gateway,
    peer: SocketAddr,
) -> Result<Option<sluice_core::Guard>, Box<sluice_core::Decision>> {
    let app = &gw.shared.app;
    let ip = sluice_core::target::canonical_ip(peer.ip());
    if app.with_config(|c| c.network.trusted_proxies.iter().any(|n| n.contains(&ip))) {
        return Ok(None);
    }
    match app.acquire_guard_async(&Ask::client("connection").ip(ip)).await {
        Ok(Ok(g)) => Ok(Some(g)),
        Ok(Err(d)) => {
            let t = app.engine().with_policy(|p| p.normalizer().ip_target(ip));
            app.observe(sluice_core::Side::Client, "connection", &[t], &d);
            Err(Box::new(d))
        }
        Err(e) => {
            tracing::error!("http gateway: connection decision failed: {e}");
            if app.refuse_on_error(&e) {
                Err(Box::new(proxy::synthetic_denial(
                    "gateway.connection_unavailable",
                    Duration::from_secs(1),
                )))
            } else {
                Ok(None)
            }
        }
    }
}

async fn connection<S>(
    gw: Gateway,
    io: S,
    peer: SocketAddr,
    slot: Option<Arc<sluice_core::Guard>>,
    stop: Arc<worker::Stop>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _registered = stop.register().await;
    // The common request on the lean path; the first other one hands the
    // connection to hyper for good.
    let mut ctx = proxy::ConnCtx::new(&gw, peer, slot.clone());
    let (io, prefix) = match front::serve(&gw, io, &mut ctx, stop.flag()).await {
        front::Outcome::Closed => return,
        front::Outcome::Handoff(io, prefix) => (io, prefix),
    };
    drop(ctx);
    let svc = service_fn(move |req| {
        let gw = gw.clone();
        let mut ctx = proxy::ConnCtx::new(&gw, peer, slot.clone());
        async move { Ok::<_, Infallible>(gw.handle_hyper(req, &mut ctx).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(front::HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(front::Rewind::new(io, prefix)), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut graceful = false;
    let result = std::future::poll_fn(|cx| {
        if !graceful && stop.flag().load(Ordering::Relaxed) {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            graceful = true;
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!("http gateway connection: {e}");
    }
}

/// One source for every gateway of the process: each family's `# TYPE`
/// line once, then one sample per gateway.
fn metrics_source(gws: Vec<(Gateway, SocketAddr)>) -> sluice_server::MetricsSource {
    Arc::new(move |out: &mut String| {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE sluice_http_gateway_requests_total counter");
        for (gw, l) in &gws {
            let c = &gw.shared.counters;
            for (outcome, v) in [
                ("forwarded", proxy::Count::Forwarded),
                ("denied", proxy::Count::Denied),
                ("upstream_error", proxy::Count::UpstreamErrors),
                ("client_error", proxy::Count::ClientErrors),
            ] {
                let _ = writeln!(
                    out,
                    "sluice_http_gateway_requests_total{{listen=\"{l}\",outcome=\"{outcome}\"}} {}",
                    c.get(v)
                );
            }
        }
        for (family, count) in [
            ("auth_failures", proxy::Count::AuthFailures),
            ("whoami", proxy::Count::Whoami),
        ] {
            let _ = writeln!(out, "# TYPE sluice_http_gateway_{family}_total counter");
            for (gw, l) in &gws {
                let v = gw.shared.counters.get(count);
                let _ = writeln!(out, "sluice_http_gateway_{family}_total{{listen=\"{l}\"}} {v}");
            }
        }
    })
}
