//! Running the service: listener in, shutdown signal in, drain, flush.

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::Service as _;

use crate::app::{App, ServerError};

/// Time a client has to send a whole request head, counted from the
/// connection's start or the end of the previous answer on a kept-alive
/// connection: hyper's `header_read_timeout`, which covers both. A client
/// that trickles a head, or idles on its connection, is closed after it.
/// 75 s, nginx's `keepalive_timeout`: the API's callers are servers that
/// keep pools of connections (an idle one closed under a client that is
/// just reusing it fails that request), so an idle connection is kept
/// longer than the gateway's 30 s; what matters against slow clients is
/// that the time is bounded.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Longest wait at shutdown for the API's connections to finish.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish, and writes the ban list.
///
/// The listener is passed in so tests bind port 0 and read the address.
///
/// The accept loop is this crate's own rather than `axum::serve`, which
/// sets no timeout for a request head: a client that opens connections
/// and sends nothing (or a byte a minute) would hold them, and their
/// file descriptors, for ever. Here hyper's HTTP/1 server closes it after
/// [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let persist = tokio::spawn(app.clone().persist_loop());
    let fetchers = tokio::spawn(app.clone().run_fetchers());
    let router = crate::http::router(app.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait, as axum does,
                    // rather than spin; the connections open still close.
                    tracing::error!("decision API: accept failed: {e}");
                    tokio::select! {
                        () = &mut shutdown => break Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // What the handlers read as `ConnectInfo` (the admin guard).
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(req)
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection
            // only.
            let _ = conn.await;
        });
    };
    // New connections are refused from now on (not left in the backlog
    // while the rest drains), so a caller can fail over at once.
    drop(listener);
    // Gateways stop accepting and drain at the same time as the API.
    app.inner.shutdown.send_replace(true);
    // Idle connections close now; those with a request in flight after
    // its answer — within `DRAIN`: a client that stops reading its answer
    // does not hold the shutdown (the gateways drain within the same
    // time).
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("decision API: connections still open after {DRAIN:?}; closing them");
    }
    let tasks = std::mem::take(&mut *app.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
    for t in tasks {
        let _ = t.await;
    }
    // Slots the gateways gave back without waiting reach Redis before
    // the runtime (and those releases with it) ends.
    crate::backend::settle(&app).await;
    persist.abort();
    fetchers.abort();
    app.flush_bans()?;
    result
}

/// Errors of one connection that `accept` reports (it was reset before
/// being taken, say): the listener is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Binds `config.server.listen` and serves until SIGTERM or SIGINT;
/// SIGHUP reloads the config file.
pub async fn run(app: App) -> Result<(), ServerError> {
    let addr = app.config().server.listen;
    let listener = TcpListener::bind(addr).await?;
    tracing::warn!(%addr, "sluice serving");
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let reloader = app.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // Errors are logged by reload; the old config stays.
                let _ = reloader.reload();
            }
        });
    }
    serve(listener, app, shutdown_signal()).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::warn!("shutting down: draining in-flight requests");
}
