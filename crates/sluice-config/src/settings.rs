//! The typed, validated sections of a configuration besides the policy.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use sluice_core::{Rate, Side};

/// `[server]`: the decision service's own listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the HTTP decision and admin API listens (default `127.0.0.1:8470`).
    pub listen: SocketAddr,
    /// A file holding the admin bearer token; without one the admin API
    /// answers loopback clients only.
    pub admin_token_file: Option<PathBuf>,
    /// Where bans are persisted across restarts (none: bans live in memory).
    pub state_dir: Option<PathBuf>,
    /// Largest request body the API reads (default 65536).
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8470)),
            admin_token_file: None,
            state_dir: None,
            max_body_bytes: 65_536,
        }
    }
}

/// Where counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process, bounded by `max_keys` (the default).
    #[default]
    Memory,
    /// Shared by several instances in Redis or Valkey.
    Redis,
}

/// What to decide when the store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail open: allow the request (the default; an outage of the limiter
    /// must not become an outage of the server).
    #[default]
    Allow,
    /// Fail closed: deny the request.
    Deny,
}

/// `[store]`: the counter store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Memory or Redis.
    pub kind: StoreKind,
    /// Redis URL (`redis://`, `rediss://`, `redis+unix://`, `unix://`,
    /// `valkey://`, `valkeys://`); required for Redis, refused for memory.
    pub url: Option<String>,
    /// Hard cap on tracked keys in memory (default 1 000 000).
    pub max_keys: usize,
    /// Decision when the store fails (default allow).
    pub on_error: OnError,
    /// Prefix of every Redis key (default `sluice:`).
    pub key_prefix: String,
    /// Whether the Redis URL names a Cluster.
    pub cluster: bool,
    /// Time allowed to connect to Redis (default 1s).
    pub connect_timeout: Duration,
    /// Time allowed for one Redis command (default 250ms).
    pub command_timeout: Duration,
    /// Local admission: each Redis call takes up to this many requests'
    /// worth of units per bucket, the rest are admitted here without Redis
    /// (default 1: off). Bounded overshoot; see `docs/redis.md`.
    pub local_admission: u32,
    /// How long units taken for local admission stay usable (default 1s).
    pub local_hold: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            url: None,
            max_keys: 1_000_000,
            on_error: OnError::Allow,
            key_prefix: "sluice:".to_owned(),
            cluster: false,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(250),
            local_admission: 1,
            local_hold: Duration::from_secs(1),
        }
    }
}

/// `[network]`: who may tell us a client's address, and how addresses group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Proxies whose PROXY header, `Forwarded` or `X-Forwarded-For` is
    /// believed. Empty (the default): the peer address is the client.
    pub trusted_proxies: Vec<IpNet>,
    /// IPv4 addresses are limited per /`ipv4_prefix` (default 32).
    pub ipv4_prefix: u8,
    /// IPv6 addresses are limited per /`ipv6_prefix` (default 64).
    pub ipv6_prefix: u8,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// `[privacy]`: what reaches logs and admin output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrivacyConfig {
    /// Log raw client addresses instead of keyed hashes (default false).
    pub log_ips: bool,
}

/// `[bandwidth.client]` and `[bandwidth.federation]`: byte rates for the
/// gateways' readers. A throttled reader is slowed down, never dropped.
///
/// `*_per_connection` is enforced by the gateway on each connection alone.
/// `*_per_ip` mirrors the policy limit `<side>.target.bandwidth.ip` (the
/// built-in `bandwidth` action, cost = bytes), which the engine enforces
/// across connections and instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BandwidthConfig {
    /// Each client connection's read rate.
    pub client_per_connection: Option<Rate>,
    /// Each federation connection's read rate.
    pub federation_per_connection: Option<Rate>,
    /// All client connections of one address together.
    pub client_per_ip: Option<Rate>,
    /// All federation connections of one address together.
    pub federation_per_ip: Option<Rate>,
}

impl BandwidthConfig {
    /// The per-connection rate of one side.
    pub fn per_connection(&self, side: Side) -> Option<Rate> {
        match side {
            Side::Client => self.client_per_connection,
            Side::Federation => self.federation_per_connection,
        }
    }

    /// The per-address rate of one side.
    pub fn per_ip(&self, side: Side) -> Option<Rate> {
        match side {
            Side::Client => self.client_per_ip,
            Side::Federation => self.federation_per_ip,
        }
    }
}

/// `[[gateway.tcp]]` and `[[gateway.http]]`: the edge gateways.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayConfig {
    /// TCP proxies (XMPP c2s/s2s).
    pub tcp: Vec<TcpGateway>,
    /// HTTP reverse proxies (Matrix, JMAP).
    pub http: Vec<HttpGateway>,
}

/// PROXY protocol version sent to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 …`).
    V1,
    /// The binary header.
    V2,
}

/// A TCP proxy in front of an XMPP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpGateway {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where connections go: `host:port`. Empty on an outgoing relay
    /// (`outgoing` is set instead): its destinations come from each stream.
    pub upstream: String,
    /// Client (c2s) or federation (s2s) limits.
    pub side: Side,
    /// Read a PROXY header (v1 or v2) from peers in `[network] trusted_proxies`.
    pub accept_proxy: bool,
    /// Send a PROXY header with the real client address to the upstream.
    pub send_proxy: Option<ProxyVersion>,
    /// Time a trusted proxy has to send its whole PROXY header (default 3s).
    pub header_timeout: Duration,
    /// Time allowed to connect to the upstream (default 5s).
    pub connect_timeout: Duration,
    /// A connection with no byte in either direction for this long is
    /// closed (default 10m; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long open connections may go on before they are
    /// closed (default 30s).
    pub drain_timeout: Duration,
    /// Open connections on this listener, all clients together (default 10000).
    pub max_connections: u32,
    /// When set, a refused connection is sent an XMPP stream error
    /// `policy-violation` with this text before it is closed.
    pub stream_error: Option<String>,
    /// Which directions `[bandwidth]` throttles (default: what clients send).
    pub throttle: Throttle,
    /// What the listener reads of each connection before it is admitted
    /// (default: nothing, a plain TCP relay).
    pub protocol: TcpProtocol,
    /// The port speaks TLS from the first byte (XEP-0368: 5223, 5270):
    /// an `xmpp` listener reads the ClientHello's SNI instead of a stream
    /// header, and sends no stream errors (it cannot, TLS is end to end).
    pub direct_tls: bool,
    /// `direction = "outgoing"`: the s2s-out relay (federation, `xmpp`),
    /// which connects to each stream's `to` instead of an upstream.
    pub outgoing: Option<OutgoingRelay>,
}

/// An outgoing relay's way to its destinations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingRelay {
    /// Static routes, domain (normalised) → `host:port`; they win over DNS
    /// and may point anywhere, private networks included.
    pub routes: std::collections::BTreeMap<String, String>,
    /// The DNS server to ask (`ip:port`); `None`: the system's
    /// (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Networks a destination found through DNS may not resolve into, on
    /// top of loopback, private, link-local and the other special ranges
    /// that are always denied.
    pub deny_networks: Vec<ipnet::IpNet>,
    /// Exceptions to the denied networks (built in and configured), for
    /// private federations found through DNS.
    pub allow_networks: Vec<ipnet::IpNet>,
}

/// What a `[[gateway.tcp]]` listener understands of the bytes it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpProtocol {
    /// Nothing: bytes are relayed as they come (the default).
    #[default]
    Tcp,
    /// XMPP: the opening stream header (or, with `direct_tls`, the TLS
    /// ClientHello) is read before the connection is admitted, so that
    /// federation limits can count the sending *server*, and refusals are
    /// XMPP stream errors.
    Xmpp,
}

/// Which directions of a TCP gateway's connections the bandwidth limits slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Throttle {
    /// Bytes from the client to the upstream (the default).
    #[default]
    In,
    /// Bytes from the upstream to the client.
    Out,
    /// Both directions, each with its own per-connection budget.
    Both,
    /// Neither.
    Off,
}

impl Throttle {
    /// Whether client → upstream bytes are throttled.
    pub fn inbound(self) -> bool {
        matches!(self, Throttle::In | Throttle::Both)
    }

    /// Whether upstream → client bytes are throttled.
    pub fn outbound(self) -> bool {
        matches!(self, Throttle::Out | Throttle::Both)
    }
}

/// What an HTTP gateway proxies, which decides how requests map to actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpProtocol {
    /// Matrix client-server and federation APIs.
    Matrix,
    /// JMAP (RFC 8620).
    Jmap,
    /// Anything else: every request is the `request` action.
    Generic,
}

/// An HTTP reverse proxy in front of a Matrix or JMAP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGateway {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The upstream's base URL: `http://host:port` or `https://host:port`.
    pub upstream: String,
    /// For an `https://` upstream: the PEM certificates its certificate must
    /// chain to, instead of the system's roots (a private CA).
    pub upstream_ca: Option<PathBuf>,
    /// Matrix, JMAP or generic.
    pub protocol: HttpProtocol,
    /// Serve TLS with this certificate chain (PEM); set with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How an access token becomes a user target.
    pub user_identity: UserIdentity,
    /// The header trusted proxies write the client's address into.
    pub real_ip_header: RealIpHeader,
    /// Application services known by their tokens (`[[gateway.http.appservice]]`).
    pub appservices: Vec<AppserviceToken>,
    /// Method and path rules, tried before the protocol's own table
    /// (`[[gateway.http.rule]]`).
    pub rules: Vec<HttpRule>,
    /// Simultaneous long polls (Matrix `/sync`, JMAP push) per account,
    /// counted apart from the account's other requests (default 8).
    pub long_polls_per_account: u32,
    /// A request body's longest silence: a client that sends nothing for
    /// this long has its request ended with 408 (nginx's
    /// `client_body_timeout`; default 60 s), so a trickled upload cannot
    /// hold its slots and an upstream connection.
    pub body_timeout: std::time::Duration,
    /// How long the upstream may take to start answering a request that
    /// is not a long poll (nginx's `proxy_read_timeout`; default 60 s):
    /// past it the client gets 504 and its slots are freed. Long polls
    /// (`/sync`, JMAP push) wait as long as the upstream holds them.
    pub upstream_timeout: std::time::Duration,
    /// Threads serving this gateway's connections, each with its own
    /// single-threaded runtime and upstream connections; `None`: one per
    /// core.
    pub workers: Option<u16>,
}

/// The header a trusted proxy in front of an HTTP gateway writes the
/// client's address into. Only that one is read: a proxy passes the other
/// through as the client sent it (nginx's `proxy_add_x_forwarded_for`,
/// Caddy and HAProxy append to `X-Forwarded-For` and leave a `Forwarded`
/// alone), so reading both would let a client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealIpHeader {
    /// `X-Forwarded-For` (the default: what the usual proxies write).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (`for=` parameters).
    Forwarded,
}

/// How an HTTP gateway turns an access token into a user target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIdentity {
    /// Ask the Matrix upstream's `whoami` once per token and cache the user
    /// ID (the default for Matrix): every device of a user shares one budget.
    #[default]
    Whoami,
    /// A keyed hash of the token: no extra upstream call, one budget per
    /// token (device).
    TokenHash,
}

/// An application service's token (`[[gateway.http.appservice]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppserviceToken {
    /// The appservice target's name.
    pub id: String,
    /// A file holding the `as_token`.
    pub token_file: PathBuf,
}

/// One `[[gateway.http.rule]]`: requests it matches count as `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// The method (upper case); `None` matches any.
    pub method: Option<String>,
    /// The path: exact, or a prefix when it ends in `*`.
    pub path: String,
    /// Client or federation.
    pub side: Side,
    /// The action charged (besides `request`).
    pub action: String,
    /// Charge the body's bytes (uploads) rather than 1.
    pub bytes: bool,
    /// A long poll: it takes a long-poll slot instead of a request slot,
    /// and `upstream_timeout` does not apply.
    pub long_poll: bool,
}
