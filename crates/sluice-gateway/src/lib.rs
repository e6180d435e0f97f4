//! sluice's edge gateway for XMPP: a TCP proxy in front of an unmodified
//! server (c2s on 5222, s2s on 5269) that enforces binding-level limits and
//! hands the real client address on.
//!
//! Each `[[gateway.tcp]]` listener of the configuration becomes a
//! [`Listener`]. A connection is resolved to its real client — from a
//! PROXY protocol v1/v2 header ([`proxy_protocol`]) when the listener
//! `accept_proxy`s and the peer is in `network.trusted_proxies`, else the
//! peer itself — then admitted or refused by the engine's `connection`
//! limits (bans and blocklist, simultaneous connections per address, new
//! connections per period) and the listener's cap, all before any byte
//! reaches the upstream. Admitted connections are relayed under the
//! `[bandwidth]` budgets, throttled by pausing reads, with the real address
//! sent on in a PROXY header (`send_proxy`). See `listener.rs` for the
//! steps in order and `docs/gateway-tcp.md` for recipes.
//!
//! Addresses are types of their own ([`addr`]): a [`addr::PeerAddr`] never
//! becomes a [`addr::ClientAddr`] without a trusted proxy's word for it.
//!
//! The gateway hooks into [`sluice_server::App`]: decisions go through
//! [`App::observe`] (metrics, `sluice top`, logs with hashed addresses),
//! counters are appended to `/metrics`, and listeners drain when the service
//! shuts down.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = sluice_config::parse(
//!     r#"
//! [network]
//! trusted_proxies = ["10.0.0.0/8"]
//!
//! [[gateway.tcp]]
//! listen = "0.0.0.0:5222"
//! upstream = "127.0.0.1:15222"
//! side = "client"
//! accept_proxy = true
//! send_proxy = "v2"
//! "#,
//!     "sluice.toml",
//! )?;
//! let app = sluice_server::App::new(config)?;
//! // Binds every [[gateway.tcp]] now (a bind failure is an error here),
//! // and runs them alongside the decision service.
//! sluice_gateway::start(&app).await?;
//! sluice_server::run(app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`App::observe`]: sluice_server::App::observe

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_config::TcpGateway;
use sluice_server::App;

pub mod addr;
mod clock;
pub mod crc32c;
mod listener;
pub mod metrics;
pub mod outgoing;
mod prefix;
pub mod proxy_protocol;
mod relay;
pub mod stream_header;
pub mod tls_hello;

pub use clock::TokioClock;
pub use listener::{stream_error, stream_error_condition, Listener};
pub use metrics::{AddressOnly, Close, Direction, ListenerMetrics, Refusal, Registry};
pub use relay::ConnBudget;

/// Why the gateways could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener's address could not be bound.
    #[error("gateway.tcp listen {listen}: cannot bind")]
    Bind {
        /// The configured address.
        listen: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An outgoing relay's resolver could not be set up (no usable
    /// `/etc/resolv.conf` and no `resolver` configured).
    #[error("gateway.tcp listen {listen}")]
    Resolver {
        /// The configured address.
        listen: SocketAddr,
        /// Why.
        #[source]
        source: outgoing::ResolverSetupError,
    },
}

/// Bound listeners, not yet running.
#[derive(Debug)]
pub struct Gateways {
    listeners: Vec<Listener>,
    registry: Arc<Registry>,
}

impl Gateways {
    /// Binds every listener of `configs` and registers their metrics with
    /// `app`. Nothing is accepted until [`Gateways::spawn`].
    pub async fn bind(app: &App, configs: &[TcpGateway]) -> Result<Self, GatewayError> {
        let mut listeners = Vec::with_capacity(configs.len());
        for cfg in configs {
            listeners.push(Listener::bind(app, cfg.clone()).await?);
        }
        let registry = Arc::new(Registry::default());
        for l in &listeners {
            registry.add(l.metrics());
        }
        if !listeners.is_empty() {
            let r = registry.clone();
            app.add_metrics(Arc::new(move |out: &mut String| r.render(out)));
        }
        Ok(Self { listeners, registry })
    }

    /// The addresses bound, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// Each listener's counters, in configuration order.
    pub fn metrics(&self) -> Vec<Arc<ListenerMetrics>> {
        self.listeners.iter().map(Listener::metrics).collect()
    }

    /// All listeners' counters as one Prometheus source.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Runs every listener as a task of `app`, which waits for them to
    /// drain at shutdown.
    pub fn spawn(self, app: &App) {
        for l in self.listeners {
            app.spawn(l.run());
        }
    }
}

/// Binds and runs the `[[gateway.tcp]]` listeners of `app`'s configuration;
/// returns the addresses bound.
pub async fn start(app: &App) -> Result<Vec<SocketAddr>, GatewayError> {
    let config = app.config();
    let gateways = Gateways::bind(app, &config.gateway.tcp).await?;
    let addrs = gateways.local_addrs();
    gateways.spawn(app);
    Ok(addrs)
}
