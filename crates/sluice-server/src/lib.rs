//! sluice's decision service: `sluice serve`.
//!
//! Servers, proxies and modules ask over HTTP/JSON whether a target may do an
//! action (`POST /v1/check`), take and return concurrency leases
//! (`/v1/acquire`, `/v1/release`), and operators inspect and act through the
//! admin API (`/v1/admin/…`: top targets, one target's state, bans, reload).
//! `/metrics` speaks Prometheus text. Bans persist in the state directory;
//! SIGHUP reloads the policy keeping counters and bans; SIGTERM drains.
//!
//! The engine is [`sluice_core`]; this crate adds HTTP, observation and
//! persistence, nothing about limits themselves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_server::ServerError> {
//! let app = sluice_server::App::new(sluice_config::Config::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! sluice_server::serve(listener, app, sluice_server::shutdown_signal()).await
//! # }
//! ```

mod app;
mod backend;
pub mod fetch;
mod http;
pub mod input;
pub mod lists;
mod metrics;
pub mod persist;
pub mod privacy;
pub mod refresh;
mod serve;
pub mod top;

pub use app::{default_state_dir, App, MetricsSource, ServerError};
pub use http::{ms as retry_ms, rate_headers, rate_lines, router};
pub use metrics::Striped;

/// The name a decision is denied under when the store could not decide
/// and `store.on_error = "deny"` ([`App::decide_async`]): no limit's
/// denial, so callers that fail open on a store error (a bandwidth
/// budget) can tell it apart.
pub const STORE_UNAVAILABLE: &str = "store.unavailable";

/// Whether `d` is the denial of a store that could not decide
/// ([`STORE_UNAVAILABLE`]), not a limit's.
pub fn store_unavailable(d: &sluice_core::Decision) -> bool {
    matches!(d.reason, sluice_core::Reason::Limited(n) if n == STORE_UNAVAILABLE)
}
pub use serve::{run, serve, shutdown_signal, HEADER_READ_TIMEOUT};
