//! One `[[gateway.tcp]]` listener: accept, resolve, admit, connect, relay.
//!
//! Each connection goes through these steps in this order, and no byte
//! reaches the upstream before the last admission step has passed:
//!
//! 1. **PROXY header** (`accept_proxy`): the peer must be in
//!    `network.trusted_proxies`, and its header must be complete and valid
//!    within `header_timeout`; otherwise the connection is closed.
//! 2. **Bans and blocklist**, then **simultaneous connections per address**
//!    (the `connection` concurrency cap, prefix-grouped), then **new
//!    connections per period** (the `connection` rates, per address and
//!    global): one engine decision, all or nothing, so a refusal consumes
//!    nothing.
//! 3. **The listener's cap** on open connections (`max_connections`). It is
//!    tried first and held aside: when the listener is full the engine is
//!    only asked about bans, so a full listener burns no client's budget.
//! 4. **Upstream** within `connect_timeout`; then the PROXY header out
//!    (`send_proxy`) and whatever the client sent after its proxy's header.
//! 5. **Relay** both ways under the bandwidth budgets, until both sides
//!    finish, `idle_timeout` passes, or shutdown's drain time runs out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{ProxyVersion, TcpGateway};
use sluice_core::{Decision, Guard, LimitOutcome, Reason, Request, Side, Target, Targets};
use sluice_server::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::addr::{ClientAddr, PeerAddr, Resolved, TrustedProxies};
use crate::metrics::{Close, Direction, ListenerMetrics, Refusal};
use crate::proxy_protocol::{self, HeaderError, Parsed};
use crate::relay::{Activity, ConnBudget, IpBudget, Pump, Stop};
use crate::GatewayError;

/// What every connection task of a listener shares.
struct Ctx {
    app: App,
    cfg: TcpGateway,
    metrics: Arc<ListenerMetrics>,
    cap: Arc<Semaphore>,
    base: Instant,
}

/// A bound listener, ready to [`Listener::run`].
pub struct Listener {
    listener: TcpListener,
    local: SocketAddr,
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `cfg.listen`.
    pub async fn bind(app: &App, cfg: TcpGateway) -> Result<Self, GatewayError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                listen: cfg.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| GatewayError::Bind {
            listen: cfg.listen,
            source,
        })?;
        let metrics = Arc::new(ListenerMetrics::new(cfg.listen.to_string()));
        let cap = Arc::new(Semaphore::new(
            usize::try_from(cfg.max_connections).unwrap_or(Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            listener,
            local,
            ctx: Arc::new(Ctx {
                app: app.clone(),
                cfg,
                metrics,
                cap,
                base: Instant::now(),
            }),
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This listener's counters.
    pub fn metrics(&self) -> Arc<ListenerMetrics> {
        self.ctx.metrics.clone()
    }

    /// Accepts until the service shuts down, then drains: open connections
    /// get `drain_timeout` to finish before they are closed.
    pub async fn run(self) {
        let Listener { listener, local, ctx } = self;
        let mut shutdown = ctx.app.shutdown_watch();
        let stop = async move {
            // An error means the service is gone: stop as well.
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(stop);
        let mut conns = JoinSet::new();
        tracing::warn!(listen = %local, upstream = %ctx.cfg.upstream, side = %ctx.cfg.side, "tcp gateway listening");
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        conns.spawn(handle(ctx.clone(), stream, PeerAddr(peer)));
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely: back off
                        // rather than spin.
                        tracing::warn!(listen = %local, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        let open = conns.len();
        if open > 0 {
            tracing::warn!(listen = %local, open, "tcp gateway draining");
        }
        let drained = timeout(ctx.cfg.drain_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(listen = %local, left = conns.len(), "drain time over: closing connections");
            conns.shutdown().await;
        }
    }
}

/// Records how a proxied connection ended, also when its task is aborted
/// at the end of a drain.
struct Open {
    metrics: Arc<ListenerMetrics>,
    how: Close,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.closed(self.how);
    }
}

async fn handle(ctx: Arc<Ctx>, mut client: TcpStream, peer: PeerAddr) {
    let _ = client.set_nodelay(true);
    let Ok(local) = client.local_addr() else { return };
    let (resolved, early_data) = if ctx.cfg.accept_proxy {
        match read_proxy(&ctx, &mut client, peer, local).await {
            Ok(r) => r,
            Err(refusal) => {
                ctx.metrics.refuse(refusal);
                let who = ctx
                    .app
                    .privacy()
                    .show(&Target::Ip(peer.0.ip().to_canonical().into()));
                tracing::info!(listen = %ctx.cfg.listen, peer = %who, reason = refusal.as_str(), "PROXY header refused");
                return;
            }
        }
    } else {
        (Resolved::direct(peer, local), Vec::new())
    };
    let client_addr = resolved.client;
    let target = ctx
        .app
        .engine()
        .with_policy(|p| p.normalizer().ip_target(client_addr.ip()));
    let (guard, permit) = match admit(&ctx, client_addr, &target).await {
        Ok(a) => a,
        Err(refusal) => {
            ctx.metrics.refuse(refusal);
            if let Some(text) = ctx.cfg.stream_error.as_deref().filter(|_| refusal.is_policy()) {
                send_stream_error(client, ctx.cfg.side, text).await;
            }
            return;
        }
    };
    let mut upstream = match timeout(
        ctx.cfg.connect_timeout,
        TcpStream::connect(ctx.cfg.upstream.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.refuse(Refusal::UpstreamUnreachable);
            tracing::warn!(listen = %ctx.cfg.listen, upstream = %ctx.cfg.upstream, "upstream unreachable: {e}");
            return;
        }
        Err(_) => {
            ctx.metrics.refuse(Refusal::UpstreamTimeout);
            tracing::warn!(listen = %ctx.cfg.listen, upstream = %ctx.cfg.upstream, "upstream connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut first = Vec::with_capacity(64 + early_data.len());
    match ctx.cfg.send_proxy {
        Some(ProxyVersion::V1) => {
            proxy_protocol::write_v1(&mut first, client_addr.addr(), resolved.destination.0)
        }
        Some(ProxyVersion::V2) => {
            proxy_protocol::write_v2(&mut first, client_addr.addr(), resolved.destination.0)
        }
        None => {}
    }
    first.extend_from_slice(&early_data);
    if !first.is_empty() && upstream.write_all(&first).await.is_err() {
        ctx.metrics.refuse(Refusal::UpstreamUnreachable);
        return;
    }
    ctx.metrics.accept();
    ctx.metrics.add_bytes(Direction::In, early_data.len() as u64);
    ctx.metrics.opened();
    let mut open = Open {
        metrics: ctx.metrics.clone(),
        how: Close::Drain,
    };
    tracing::debug!(listen = %ctx.cfg.listen, client = %ctx.app.privacy().show(&target), "connection proxied");
    open.how = relay(&ctx, client, upstream, client_addr).await;
    drop(guard);
    drop(permit);
}

/// Reads and checks the PROXY header of a connection from a trusted proxy.
async fn read_proxy(
    ctx: &Ctx,
    client: &mut TcpStream,
    peer: PeerAddr,
    local: SocketAddr,
) -> Result<(Resolved, Vec<u8>), Refusal> {
    let config = ctx.app.config();
    let Some(trusted) = TrustedProxies::new(&config.network.trusted_proxies).check(peer) else {
        return Err(Refusal::UntrustedProxy);
    };
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            match proxy_protocol::parse(&buf) {
                Ok(Parsed::Complete(header, used)) => return Ok((header, buf.split_off(used))),
                Ok(Parsed::Incomplete) => {}
                Err(e) => return Err(Some(e)),
            }
            let n = client.read(&mut chunk).await.map_err(|_| None)?;
            if n == 0 {
                return Err(None::<HeaderError>);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match timeout(ctx.cfg.header_timeout, read).await {
        Err(_) => Err(Refusal::ProxyHeaderTimeout),
        Ok(Err(_)) => Err(Refusal::ProxyHeaderInvalid),
        Ok(Ok((header, rest))) => Ok((Resolved::from_header(trusted, local, &header), rest)),
    }
}

/// Steps 2 and 3 of the module docs. On Redis the decisions are awaited
/// (`App::decide_async`): a runtime thread is not held for the round trip.
async fn admit(
    ctx: &Ctx,
    client: ClientAddr,
    target: &Target,
) -> Result<(Option<Guard>, OwnedSemaphorePermit), Refusal> {
    let app = &ctx.app;
    let side = ctx.cfg.side;
    let req = Request {
        side,
        action: "connection",
        targets: Targets {
            ip: Some(client.ip()),
            ..Targets::default()
        },
        cost: 1,
    };
    let targets = std::slice::from_ref(target);
    let Ok(permit) = ctx.cap.clone().try_acquire_owned() else {
        if let Ok(d) = app.decide_async(&req, sluice_core::Mode::DryRun).await {
            if matches!(d.reason, Reason::Banned(_) | Reason::Blocked(_)) {
                app.observe(side, "connection", targets, &d);
                return Err(refusal_of(&d));
            }
        }
        return Err(Refusal::ListenerFull);
    };
    match app.acquire_guard_async(&req).await {
        Ok(Ok(guard)) => {
            app.observe(side, "connection", targets, guard.decision());
            Ok((Some(guard), permit))
        }
        Ok(Err(d)) if sluice_server::store_unavailable(&d) => {
            // Redis failed and `on_error = "deny"`: counted as the store's
            // refusal, not a limit's.
            Err(Refusal::StoreError)
        }
        Ok(Err(d)) => {
            app.observe(side, "connection", targets, &d);
            Err(refusal_of(&d))
        }
        Err(e) => {
            tracing::error!("connection decision failed: {e}");
            if app.refuse_on_error(&e) {
                Err(Refusal::StoreError)
            } else {
                Ok((None, permit))
            }
        }
    }
}

/// The reason to count, in the order the limits are meant to apply.
fn refusal_of(d: &Decision) -> Refusal {
    match d.reason {
        Reason::Banned(_) => return Refusal::Banned,
        Reason::Blocked(_) => return Refusal::Blocked,
        _ => {}
    }
    let rank = |r: Refusal| match r {
        Refusal::IpConnections => 0,
        Refusal::IpRate => 1,
        Refusal::GlobalRate => 2,
        _ => 3,
    };
    d.limits
        .iter()
        .filter(|l| l.outcome == LimitOutcome::Denied)
        .map(|l| match (l.window.is_none(), l.target == Target::Global) {
            (true, false) => Refusal::IpConnections,
            (false, false) => Refusal::IpRate,
            (false, true) => Refusal::GlobalRate,
            (true, true) => Refusal::GlobalConnections,
        })
        .min_by_key(|r| rank(*r))
        .unwrap_or(Refusal::IpRate)
}

/// Step 5: both directions under their budgets, with the idle timeout.
async fn relay(ctx: &Ctx, client: TcpStream, upstream: TcpStream, addr: ClientAddr) -> Close {
    let side = ctx.cfg.side;
    let config = ctx.app.config();
    let per_conn = config.bandwidth.per_connection(side);
    let per_ip = config.bandwidth.per_ip(side);
    let activity = Arc::new(Activity::new(ctx.base));
    let pump = |dir: Direction, on: bool| Pump {
        dir,
        conn: per_conn.filter(|_| on).map(|r| ConnBudget::new(r, ctx.base)),
        ip: per_ip.filter(|_| on).map(|_| IpBudget {
            app: ctx.app.clone(),
            side,
            ip: addr.ip(),
        }),
        ip_burst: per_ip.filter(|_| on).map(|r| r.burst()),
        metrics: ctx.metrics.clone(),
        activity: activity.clone(),
    };
    let inbound = pump(Direction::In, ctx.cfg.throttle.inbound());
    let outbound = pump(Direction::Out, ctx.cfg.throttle.outbound());
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let both = async { tokio::try_join!(inbound.run(cr, uw), outbound.run(ur, cw)) };
    let idle = async {
        match ctx.cfg.idle_timeout {
            Some(t) => activity.idle(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = both => match r {
            Ok(_) => Close::Done,
            Err(Stop::Banned) => Close::Banned,
            Err(Stop::Io) => Close::Error,
        },
        _ = idle => Close::Idle,
    }
}

/// The XMPP stream error for a refused connection (RFC 6120 §4.9: before
/// the client's stream header, we still open ours first).
pub fn stream_error(side: Side, text: &str) -> Vec<u8> {
    let ns = match side {
        Side::Client => "jabber:client",
        Side::Federation => "jabber:server",
    };
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\'' => escaped.push_str("&apos;"),
            '"' => escaped.push_str("&quot;"),
            c => escaped.push(c),
        }
    }
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
         <stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{escaped}</text></stream:error></stream:stream>"
    )
    .into_bytes()
}

async fn send_stream_error(mut client: TcpStream, side: Side, text: &str) {
    let msg = stream_error(side, text);
    // Bounded: a client that does not read is not worth waiting for.
    let _ = timeout(Duration::from_secs(1), async {
        client.write_all(&msg).await?;
        client.shutdown().await
    })
    .await;
}
