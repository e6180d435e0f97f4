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
//! 4. **Stream identity** (`protocol = "xmpp"`): the opening stream header
//!    (or on `direct_tls` ports the ClientHello's SNI) within
//!    `header_timeout` and a few KiB; bad input closes the connection with
//!    a counted reason. On the federation side a stream's `from` is then
//!    checked as `server:<domain>` — blocklist, bans, simultaneous and new
//!    connections per server — as a second all-or-nothing decision that
//!    skips the global limits the first one counted. A refusal here is
//!    answered with our stream header and a `<stream:error>`.
//! 5. **Upstream** within `connect_timeout`; then the PROXY header out
//!    (`send_proxy`) and whatever the client sent after its proxy's header.
//! 6. **Relay** both ways under the bandwidth budgets, until both sides
//!    finish, `idle_timeout` passes, or shutdown's drain time runs out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{ProxyVersion, TcpGateway, TcpProtocol};
use sluice_core::{
    Decision, Guard, LimitOutcome, Per, Reason, Request, Scope, Side, Target, TargetKind, Targets,
};
use sluice_server::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::addr::{ClientAddr, PeerAddr, Resolved, TrustedProxies};
use crate::metrics::{AddressOnly, Close, Direction, ListenerMetrics, Refusal};
use crate::outgoing::{Destinations, ResolveError};
use crate::proxy_protocol::{self, HeaderError, Parsed};
use crate::relay::{Activity, ConnBudget, IpBudget, Pump, Stop};
use crate::stream_header::{self, StreamHeader, StreamHeaderError};
use crate::tls_hello;
use crate::GatewayError;

/// What every connection task of a listener shares.
struct Ctx {
    app: App,
    cfg: TcpGateway,
    /// The outgoing relay's routes and resolver (`direction = "outgoing"`).
    destinations: Option<Destinations>,
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
        let destinations = match &cfg.outgoing {
            None => None,
            Some(o) => Some(Destinations::new(o).map_err(|source| GatewayError::Resolver {
                listen: cfg.listen,
                source,
            })?),
        };
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
                destinations,
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

/// Writes `first` (a PROXY header if any, then the `early` bytes already
/// read from the client) to the upstream and counts the connection as
/// proxied from then on; `None`, counted, when the upstream is gone.
async fn hand_on(ctx: &Ctx, upstream: &mut TcpStream, first: &[u8], early: usize) -> Option<Open> {
    if !first.is_empty() && upstream.write_all(first).await.is_err() {
        ctx.metrics.refuse(Refusal::UpstreamUnreachable);
        return None;
    }
    ctx.metrics.accept();
    ctx.metrics.add_bytes(Direction::In, early as u64);
    ctx.metrics.opened();
    Some(Open {
        metrics: ctx.metrics.clone(),
        how: Close::Drain,
    })
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
    if ctx.destinations.is_some() {
        return handle_outgoing(ctx, client, peer, early_data).await;
    }
    let client_addr = resolved.client;
    let target = ctx
        .app
        .engine()
        .with_policy(|p| p.normalizer().ip_target(client_addr.ip()));
    let (guard, permit) = match admit(&ctx, client_addr, &target).await {
        Ok(a) => a,
        Err(refusal) => {
            ctx.metrics.refuse(refusal);
            if refusal.is_policy() && !ctx.cfg.direct_tls {
                let xmpp = ctx.cfg.protocol == TcpProtocol::Xmpp;
                let text = ctx
                    .cfg
                    .stream_error
                    .as_deref()
                    .or(xmpp.then(|| refusal_text(refusal)));
                if let Some(text) = text {
                    send_stream_error(client, stream_error(ctx.cfg.side, text)).await;
                }
            }
            return;
        }
    };
    let mut early_data = early_data;
    let mut server = None;
    if ctx.cfg.protocol == TcpProtocol::Xmpp {
        match identify(&ctx, &mut client, &mut early_data).await {
            Ok(Identity { header, from }) => server = from.map(|d| (d, header)),
            Err((refusal, why)) => {
                ctx.metrics.refuse(refusal);
                let who = ctx.app.privacy().show(&target);
                tracing::info!(listen = %ctx.cfg.listen, client = %who, reason = refusal.as_str(), "stream refused: {why}");
                return;
            }
        }
    }
    let server_target = server.as_ref().and_then(|(d, _)| Target::server(d).ok());
    let server_guard = match (&server, &server_target) {
        (Some((domain, header)), Some(st)) => match admit_server(&ctx, st).await {
            Ok(g) => g,
            Err(refusal) => {
                ctx.metrics.refuse(refusal);
                tracing::info!(listen = %ctx.cfg.listen, server = %domain, reason = refusal.as_str(), "stream refused for its server");
                let text = match refusal {
                    Refusal::ServerBanned => format!("server {domain} is banned"),
                    Refusal::ServerBlocked => format!("server {domain} is blocklisted"),
                    Refusal::ServerConnections => format!("too many connections from server {domain}"),
                    Refusal::ServerRate => format!("too many new connections from server {domain}"),
                    other => refusal_text(other).to_owned(),
                };
                send_stream_error(client, stream_error_reply(ctx.cfg.side, Some(header), &text)).await;
                return;
            }
        },
        _ => None,
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
    let Some(mut open) = hand_on(&ctx, &mut upstream, &first, early_data.len()).await else {
        return;
    };
    tracing::debug!(listen = %ctx.cfg.listen, client = %ctx.app.privacy().show(&target), "connection proxied");
    open.how = relay(&ctx, client, upstream, client_addr, server_target).await;
    drop(server_guard);
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

/// Step 6: both directions under their budgets, with the idle timeout.
async fn relay(
    ctx: &Ctx,
    client: TcpStream,
    upstream: TcpStream,
    addr: ClientAddr,
    server: Option<Target>,
) -> Close {
    let side = ctx.cfg.side;
    let config = ctx.app.config();
    let per_conn = config.bandwidth.per_connection(side);
    // The engine's shared budgets: per address, and per server when the
    // stream named one and the policy limits bandwidth per server.
    let per_server = server.as_ref().and_then(|_| {
        ctx.app.engine().with_policy(|p| {
            p.limits_for(side, "bandwidth")
                .filter(|l| l.scope == Scope::Target(Per::Kind(TargetKind::Server)))
                .filter_map(|l| match l.kind {
                    sluice_core::LimitKind::Rate(r) => Some(r),
                    sluice_core::LimitKind::Concurrency(_) => None,
                })
                .min_by_key(|r| r.burst())
        })
    });
    let per_ip = match (config.bandwidth.per_ip(side), per_server) {
        (Some(a), Some(b)) => Some(if a.burst() <= b.burst() { a } else { b }),
        (a, b) => a.or(b),
    };
    let shared = per_ip.map(|r| {
        (
            IpBudget {
                app: ctx.app.clone(),
                side,
                action: "bandwidth",
                ip: Some(addr.ip()),
                server,
            },
            r.burst(),
        )
    });
    pump_both(ctx, client, upstream, per_conn, shared).await
}

/// Copies both ways, each direction the listener throttles under a budget
/// of its own (`per_conn`) and the engine's shared one, until both finish,
/// a ban stops them, or the idle timeout passes.
async fn pump_both(
    ctx: &Ctx,
    client: TcpStream,
    upstream: TcpStream,
    per_conn: Option<sluice_core::Rate>,
    shared: Option<(IpBudget, u64)>,
) -> Close {
    let activity = Arc::new(Activity::new(ctx.base));
    let pump = |dir: Direction, on: bool| Pump {
        dir,
        conn: per_conn.filter(|_| on).map(|r| ConnBudget::new(r, ctx.base)),
        ip: shared.as_ref().filter(|_| on).map(|(b, _)| b.clone()),
        ip_burst: shared.as_ref().filter(|_| on).map(|(_, burst)| *burst),
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
    stream_error_reply(side, None, text)
}

/// The stream error for a refused stream, as a receiving entity sends it
/// (RFC 6120 §4.9.1.1): our own opening header first — answering the
/// peer's `header` when it was read (`from` our name it asked for, `to` the
/// name it gave, its namespace) — then `<policy-violation/>` with `text`,
/// then the close of the stream.
pub fn stream_error_reply(side: Side, header: Option<&StreamHeader>, text: &str) -> Vec<u8> {
    stream_error_condition(side, header, "policy-violation", text)
}

/// [`stream_error_reply`] with another defined condition (RFC 6120
/// §4.9.3), such as `remote-connection-failed` from the outgoing relay.
pub fn stream_error_condition(
    side: Side,
    header: Option<&StreamHeader>,
    condition: &str,
    text: &str,
) -> Vec<u8> {
    let default_ns = match side {
        Side::Client => "jabber:client",
        Side::Federation => "jabber:server",
    };
    let ns = header
        .and_then(|h| h.namespace.as_deref())
        .filter(|n| *n == "jabber:client" || *n == "jabber:server")
        .unwrap_or(default_ns);
    let mut attrs = String::new();
    if let Some(h) = header {
        // Only names that passed as domains are echoed back.
        if let Some(to) = h.to.as_deref().and_then(stream_header::domain) {
            attrs.push_str(&format!(" from='{to}'"));
        }
        if let Some(from) = h.from.as_deref().and_then(stream_header::domain) {
            attrs.push_str(&format!(" to='{from}'"));
        }
    }
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams'{attrs} version='1.0'>\
         <stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{}</text></stream:error></stream:stream>",
        escape(text)
    )
    .into_bytes()
}

fn escape(text: &str) -> String {
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
    escaped
}

/// The text of an address-level refusal on an `xmpp` listener with no
/// `stream_error` of its own.
fn refusal_text(r: Refusal) -> &'static str {
    match r {
        Refusal::Banned => "your address is banned",
        Refusal::Blocked => "your address is blocklisted",
        Refusal::ListenerFull => "the server is full, try again later",
        Refusal::StoreError => "temporarily unavailable, try again later",
        _ => "too many connections from your address",
    }
}

/// What an `xmpp` listener learnt of a stream before admitting it.
struct Identity {
    /// The peer's header (none on `direct_tls` ports).
    header: StreamHeader,
    /// The server the stream claims to come from, as a domain: federation
    /// streams with a `from` only.
    from: Option<String>,
}

/// Step 4: reads the stream header (or the ClientHello) into `buf`, which
/// keeps every byte read for the upstream.
async fn identify(
    ctx: &Ctx,
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Identity, (Refusal, String)> {
    let limit = ctx.cfg.header_timeout;
    let empty = StreamHeader {
        to: None,
        from: None,
        namespace: None,
        version: None,
        lang: None,
        len: 0,
    };
    if ctx.cfg.direct_tls {
        use tls_hello::ReadError as E;
        return match tls_hello::read(client, buf, limit).await {
            Ok(sni) => {
                if sni.is_none() {
                    ctx.metrics.address_only(AddressOnly::NoSni);
                }
                // SNI names where the peer goes (`to`), never who it is.
                Ok(Identity {
                    header: StreamHeader { to: sni, ..empty },
                    from: None,
                })
            }
            Err(e @ (E::Timeout(_) | E::Closed)) => Err((Refusal::TlsHelloTimeout, e.to_string())),
            Err(e @ E::Hello(_)) => Err((Refusal::TlsHelloInvalid, e.to_string())),
        };
    }
    use stream_header::ReadError as E;
    let header = match stream_header::read(client, buf, limit).await {
        Ok(h) => h,
        Err(e @ E::Header(StreamHeaderError::TooLong(_))) => {
            return Err((Refusal::StreamHeaderTooLong, e.to_string()))
        }
        Err(e @ E::Header(StreamHeaderError::NotADomain { .. })) => {
            return Err((Refusal::StreamNameInvalid, e.to_string()))
        }
        Err(e @ E::Header(_)) => return Err((Refusal::StreamHeaderInvalid, e.to_string())),
        Err(e @ (E::Timeout(_) | E::Closed)) => return Err((Refusal::StreamHeaderTimeout, e.to_string())),
    };
    let bad_name = |attr: &'static str| {
        (
            Refusal::StreamNameInvalid,
            StreamHeaderError::NotADomain { attr }.to_string(),
        )
    };
    if header
        .to
        .as_deref()
        .is_some_and(|t| stream_header::domain(t).is_none())
    {
        return Err(bad_name("to"));
    }
    // A client's `from` is an account it has not proved yet: not a server.
    let from = match (ctx.cfg.side, header.from.as_deref()) {
        (Side::Federation, Some(f)) => Some(stream_header::domain(f).ok_or_else(|| bad_name("from"))?),
        _ => None,
    };
    if from.is_none() && ctx.cfg.side == Side::Federation {
        ctx.metrics.address_only(AddressOnly::NoFrom);
    }
    Ok(Identity { header, from })
}

/// The second decision of step 4: the stream's server, on its own
/// (`without_global`: the address's decision counted this connection
/// globally already).
async fn admit_server(ctx: &Ctx, server: &Target) -> Result<Option<Guard>, Refusal> {
    let app = &ctx.app;
    let side = ctx.cfg.side;
    let req = Request {
        side,
        action: "connection",
        targets: Targets {
            server: Some(server.clone()),
            without_global: true,
            ..Targets::default()
        },
        cost: 1,
    };
    let targets = std::slice::from_ref(server);
    match app.acquire_guard_async(&req).await {
        Ok(Ok(guard)) => {
            app.observe(side, "connection", targets, guard.decision());
            Ok(Some(guard))
        }
        Ok(Err(d)) if sluice_server::store_unavailable(&d) => Err(Refusal::StoreError),
        Ok(Err(d)) => {
            app.observe(side, "connection", targets, &d);
            Err(match refusal_of(&d) {
                Refusal::Banned => Refusal::ServerBanned,
                Refusal::Blocked => Refusal::ServerBlocked,
                Refusal::IpConnections | Refusal::GlobalConnections => Refusal::ServerConnections,
                _ => Refusal::ServerRate,
            })
        }
        Err(e) => {
            tracing::error!("server connection decision failed: {e}");
            if app.refuse_on_error(&e) {
                Err(Refusal::StoreError)
            } else {
                Ok(None)
            }
        }
    }
}

async fn send_stream_error(mut client: TcpStream, msg: Vec<u8>) {
    // Bounded: a client that does not read is not worth waiting for.
    let _ = timeout(Duration::from_secs(1), async {
        client.write_all(&msg).await?;
        client.shutdown().await
    })
    .await;
}

/// The outgoing relay (`direction = "outgoing"`): our own server's s2s-out
/// stream, relayed to the server its header names. In order, and nothing
/// leaves for the destination before the last check has passed:
///
/// 1. the peer must be loopback or in `network.trusted_proxies` (the
///    relay is no open relay), and the listener's cap must have room;
/// 2. the stream header within `header_timeout`: `to` is the destination,
///    `from` our vhost;
/// 3. one all-or-nothing decision on `outgoing_connection` for
///    `server:<to>`: bans and the blocklist, new connections per
///    destination and globally, simultaneous connections per destination;
/// 4. a static route, else DNS (SRV, then A/AAAA on 5269), without the
///    denied networks; each address tried within `connect_timeout`;
/// 5. the bytes read, then the relay under `outgoing_bandwidth`.
///
/// Every refusal after the header is answered with our stream header and
/// `<remote-connection-failed/>`, so the local server bounces the stanzas
/// it queued instead of retrying in a loop.
async fn handle_outgoing(ctx: Arc<Ctx>, mut client: TcpStream, peer: PeerAddr, mut early: Vec<u8>) {
    let Some(destinations) = ctx.destinations.as_ref() else {
        return;
    };
    let ip = peer.0.ip().to_canonical();
    let trusted = ip.is_loopback()
        || ctx
            .app
            .config()
            .network
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&ip));
    if !trusted {
        ctx.metrics.refuse(Refusal::RelayPeerUntrusted);
        tracing::warn!(listen = %ctx.cfg.listen, peer = %ctx.app.privacy().show(&Target::Ip(ip.into())), "outgoing relay refused: the peer is neither loopback nor a trusted proxy");
        return;
    }
    let Ok(permit) = ctx.cap.clone().try_acquire_owned() else {
        ctx.metrics.refuse(Refusal::ListenerFull);
        send_stream_error(
            client,
            stream_error(Side::Federation, refusal_text(Refusal::ListenerFull)),
        )
        .await;
        return;
    };
    let header = match identify(&ctx, &mut client, &mut early).await {
        Ok(Identity { header, .. }) => header,
        Err((refusal, why)) => {
            ctx.metrics.refuse(refusal);
            tracing::info!(listen = %ctx.cfg.listen, reason = refusal.as_str(), "outgoing stream refused: {why}");
            return;
        }
    };
    let fail = |refusal: Refusal, text: String| {
        ctx.metrics.refuse(refusal);
        stream_error_condition(Side::Federation, Some(&header), "remote-connection-failed", &text)
    };
    let dest = header.to.as_deref().and_then(stream_header::domain);
    let Some((dest, target)) = dest.and_then(|d| Target::server(&d).ok().map(|t| (d, t))) else {
        let msg = fail(
            Refusal::NoDestination,
            "no destination: the stream header has no to".into(),
        );
        tracing::info!(listen = %ctx.cfg.listen, reason = Refusal::NoDestination.as_str(), "outgoing stream refused");
        send_stream_error(client, msg).await;
        return;
    };
    let vhost = header.from.clone().unwrap_or_default();
    let guard = match admit_outgoing(&ctx, &target).await {
        Ok(g) => g,
        Err(refusal) => {
            let text = match refusal {
                Refusal::DestinationBanned => format!("server {dest} is banned here"),
                Refusal::DestinationBlocked => format!("server {dest} is blocklisted here"),
                Refusal::DestinationConnections => format!("too many connections to {dest}"),
                Refusal::DestinationRate => format!("too many new connections to {dest}"),
                Refusal::GlobalConnections | Refusal::GlobalRate => {
                    "too many new outgoing connections".to_owned()
                }
                other => refusal_text(other).to_owned(),
            };
            tracing::info!(listen = %ctx.cfg.listen, from = %vhost, to = %dest, reason = refusal.as_str(), "outgoing stream refused");
            send_stream_error(client, fail(refusal, text)).await;
            return;
        }
    };
    let candidates = match destinations.candidates(&dest).await {
        Ok(c) => c,
        Err(e) => {
            let refusal = match e {
                ResolveError::Denied { .. } => Refusal::DestinationDenied,
                ResolveError::Unresolved { .. } | ResolveError::NoService { .. } => {
                    Refusal::DestinationUnresolved
                }
            };
            tracing::info!(listen = %ctx.cfg.listen, from = %vhost, to = %dest, reason = refusal.as_str(), "outgoing stream refused: {e}");
            send_stream_error(client, fail(refusal, e.to_string())).await;
            return;
        }
    };
    let mut upstream = None;
    let mut timed_out = false;
    for addr in &candidates {
        match timeout(ctx.cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                upstream = Some(s);
                break;
            }
            Ok(Err(e)) => tracing::debug!(to = %dest, %addr, "connect failed: {e}"),
            Err(_) => timed_out = true,
        }
    }
    let Some(mut upstream) = upstream else {
        let refusal = if timed_out {
            Refusal::UpstreamTimeout
        } else {
            Refusal::UpstreamUnreachable
        };
        tracing::warn!(listen = %ctx.cfg.listen, from = %vhost, to = %dest, tried = candidates.len(), reason = refusal.as_str(), "outgoing stream: no address of the destination answered");
        send_stream_error(client, fail(refusal, format!("cannot connect to {dest}"))).await;
        return;
    };
    let _ = upstream.set_nodelay(true);
    let Some(mut open) = hand_on(&ctx, &mut upstream, &early, early.len()).await else {
        return;
    };
    tracing::debug!(listen = %ctx.cfg.listen, from = %vhost, to = %dest, "outgoing stream relayed");
    // Bytes to the destination, per destination and globally; the burst
    // of the smallest bucket bounds each chunk.
    let burst = ctx.app.engine().with_policy(|p| {
        p.limits_for(Side::Federation, "outgoing_bandwidth")
            .filter_map(|l| match l.kind {
                sluice_core::LimitKind::Rate(r) => Some(r.burst()),
                sluice_core::LimitKind::Concurrency(_) => None,
            })
            .min()
    });
    let shared = burst.map(|b| {
        (
            IpBudget {
                app: ctx.app.clone(),
                side: Side::Federation,
                action: "outgoing_bandwidth",
                ip: None,
                server: Some(target.clone()),
            },
            b,
        )
    });
    open.how = pump_both(&ctx, client, upstream, None, shared).await;
    drop(guard);
    drop(permit);
}

/// Step 3 of [`handle_outgoing`].
async fn admit_outgoing(ctx: &Ctx, dest: &Target) -> Result<Option<Guard>, Refusal> {
    let app = &ctx.app;
    let req = Request {
        side: Side::Federation,
        action: "outgoing_connection",
        targets: Targets {
            server: Some(dest.clone()),
            ..Targets::default()
        },
        cost: 1,
    };
    let targets = std::slice::from_ref(dest);
    match app.acquire_guard_async(&req).await {
        Ok(Ok(guard)) => {
            app.observe(Side::Federation, "outgoing_connection", targets, guard.decision());
            Ok(Some(guard))
        }
        Ok(Err(d)) if sluice_server::store_unavailable(&d) => Err(Refusal::StoreError),
        Ok(Err(d)) => {
            app.observe(Side::Federation, "outgoing_connection", targets, &d);
            Err(match refusal_of(&d) {
                Refusal::Banned => Refusal::DestinationBanned,
                Refusal::Blocked => Refusal::DestinationBlocked,
                Refusal::IpConnections => Refusal::DestinationConnections,
                Refusal::IpRate => Refusal::DestinationRate,
                other => other,
            })
        }
        Err(e) => {
            tracing::error!("outgoing connection decision failed: {e}");
            if app.refuse_on_error(&e) {
                Err(Refusal::StoreError)
            } else {
                Ok(None)
            }
        }
    }
}
