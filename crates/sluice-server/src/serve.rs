//! Running the service: listener in, shutdown signal in, drain, flush.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::app::{App, ServerError};

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish, and writes the ban list.
///
/// The listener is passed in so tests bind port 0 and read the address.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let persist = tokio::spawn(app.clone().persist_loop());
    let service = crate::http::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let signal = app.clone();
    let shutdown = async move {
        shutdown.await;
        // Gateways stop accepting and drain at the same time as the API.
        signal.inner.shutdown.send_replace(true);
    };
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await;
    app.inner.shutdown.send_replace(true);
    let tasks = std::mem::take(&mut *app.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
    for t in tasks {
        let _ = t.await;
    }
    persist.abort();
    app.flush_bans()?;
    result.map_err(ServerError::Io)
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
