//! Per-listener counters, rendered as Prometheus text on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a connection was closed before any byte reached the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client is banned.
    Banned,
    /// The client is on the blocklist.
    Blocked,
    /// Too many simultaneous connections from the client's address (group).
    IpConnections,
    /// Too many new connections from the client's address per period.
    IpRate,
    /// Too many new connections from everyone per period.
    GlobalRate,
    /// The policy's global concurrency cap on connections.
    GlobalConnections,
    /// The listener's `max_connections` is reached.
    ListenerFull,
    /// A PROXY listener was reached by a peer outside `trusted_proxies`.
    UntrustedProxy,
    /// The PROXY header was malformed or truncated.
    ProxyHeaderInvalid,
    /// The PROXY header did not arrive within `header_timeout`.
    ProxyHeaderTimeout,
    /// The upstream refused or failed the connection.
    UpstreamUnreachable,
    /// The upstream did not answer within `connect_timeout`.
    UpstreamTimeout,
    /// The counter store failed and `store.on_error = "deny"`.
    StoreError,
    /// The stream's server (`from`) is banned.
    ServerBanned,
    /// The stream's server is on the blocklist.
    ServerBlocked,
    /// Too many simultaneous connections from the stream's server.
    ServerConnections,
    /// Too many new connections from the stream's server per period.
    ServerRate,
    /// Not an XMPP stream header: malformed XML, binary garbage, another
    /// element first (`protocol = "xmpp"`).
    StreamHeaderInvalid,
    /// No complete stream header within its size bound.
    StreamHeaderTooLong,
    /// No complete stream header within `header_timeout` (or the peer
    /// closed first).
    StreamHeaderTimeout,
    /// The stream header's `to` or `from` is not a domain.
    StreamNameInvalid,
    /// Not a TLS ClientHello on a `direct_tls` port, or one rustls refuses.
    TlsHelloInvalid,
    /// No complete ClientHello within `header_timeout` (or the peer closed).
    TlsHelloTimeout,
    /// The outgoing relay's destination server is banned.
    DestinationBanned,
    /// The outgoing relay's destination is on the blocklist.
    DestinationBlocked,
    /// Too many simultaneous outgoing connections to the destination.
    DestinationConnections,
    /// Too many new outgoing connections to the destination per period.
    DestinationRate,
    /// An outgoing stream without a `to`: nowhere to relay it.
    NoDestination,
    /// The destination has no address in routes or DNS (or says it has no XMPP service).
    DestinationUnresolved,
    /// The destination resolves only into denied networks (loopback, private, link-local, `deny_networks`).
    DestinationDenied,
    /// A peer that is neither loopback nor in `network.trusted_proxies` tried the outgoing relay.
    RelayPeerUntrusted,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 31] = [
        Refusal::Banned,
        Refusal::Blocked,
        Refusal::IpConnections,
        Refusal::IpRate,
        Refusal::GlobalRate,
        Refusal::GlobalConnections,
        Refusal::ListenerFull,
        Refusal::UntrustedProxy,
        Refusal::ProxyHeaderInvalid,
        Refusal::ProxyHeaderTimeout,
        Refusal::UpstreamUnreachable,
        Refusal::UpstreamTimeout,
        Refusal::StoreError,
        Refusal::ServerBanned,
        Refusal::ServerBlocked,
        Refusal::ServerConnections,
        Refusal::ServerRate,
        Refusal::StreamHeaderInvalid,
        Refusal::StreamHeaderTooLong,
        Refusal::StreamHeaderTimeout,
        Refusal::StreamNameInvalid,
        Refusal::TlsHelloInvalid,
        Refusal::TlsHelloTimeout,
        Refusal::DestinationBanned,
        Refusal::DestinationBlocked,
        Refusal::DestinationConnections,
        Refusal::DestinationRate,
        Refusal::NoDestination,
        Refusal::DestinationUnresolved,
        Refusal::DestinationDenied,
        Refusal::RelayPeerUntrusted,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::Blocked => "blocked",
            Refusal::IpConnections => "ip_connections",
            Refusal::IpRate => "ip_rate",
            Refusal::GlobalRate => "global_rate",
            Refusal::GlobalConnections => "global_connections",
            Refusal::ListenerFull => "listener_full",
            Refusal::UntrustedProxy => "untrusted_proxy",
            Refusal::ProxyHeaderInvalid => "proxy_header_invalid",
            Refusal::ProxyHeaderTimeout => "proxy_header_timeout",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::StoreError => "store_error",
            Refusal::ServerBanned => "server_banned",
            Refusal::ServerBlocked => "server_blocked",
            Refusal::ServerConnections => "server_connections",
            Refusal::ServerRate => "server_rate",
            Refusal::StreamHeaderInvalid => "stream_header_invalid",
            Refusal::StreamHeaderTooLong => "stream_header_too_long",
            Refusal::StreamHeaderTimeout => "stream_header_timeout",
            Refusal::StreamNameInvalid => "stream_name_invalid",
            Refusal::TlsHelloInvalid => "tls_hello_invalid",
            Refusal::TlsHelloTimeout => "tls_hello_timeout",
            Refusal::DestinationBanned => "destination_banned",
            Refusal::DestinationBlocked => "destination_blocked",
            Refusal::DestinationConnections => "destination_connections",
            Refusal::DestinationRate => "destination_rate",
            Refusal::NoDestination => "no_destination",
            Refusal::DestinationUnresolved => "destination_unresolved",
            Refusal::DestinationDenied => "destination_denied",
            Refusal::RelayPeerUntrusted => "relay_peer_untrusted",
        }
    }

    /// Whether the policy refused (a stream error is worth sending), as
    /// opposed to a broken proxy or upstream.
    pub fn is_policy(self) -> bool {
        matches!(
            self,
            Refusal::Banned
                | Refusal::Blocked
                | Refusal::IpConnections
                | Refusal::IpRate
                | Refusal::GlobalRate
                | Refusal::GlobalConnections
                | Refusal::ListenerFull
                | Refusal::StoreError
                | Refusal::ServerBanned
                | Refusal::ServerBlocked
                | Refusal::ServerConnections
                | Refusal::ServerRate
                | Refusal::DestinationBanned
                | Refusal::DestinationBlocked
                | Refusal::DestinationConnections
                | Refusal::DestinationRate
        )
    }
}

/// How a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Both sides finished.
    Done,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// Shutdown's drain time ran out.
    Drain,
    /// The client was banned or blocked while connected.
    Banned,
    /// A read or write failed.
    Error,
}

impl Close {
    const ALL: [Close; 5] = [
        Close::Done,
        Close::Idle,
        Close::Drain,
        Close::Banned,
        Close::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Close::Done => "done",
            Close::Idle => "idle",
            Close::Drain => "drain",
            Close::Banned => "banned",
            Close::Error => "error",
        }
    }
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    In,
    /// Upstream to client.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// One listener's counters.
#[derive(Debug)]
pub struct ListenerMetrics {
    listener: String,
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    closed: [AtomicU64; Close::ALL.len()],
    open: AtomicI64,
    bytes: [AtomicU64; 2],
    throttled_nanos: [AtomicU64; 2],
    address_only: [AtomicU64; AddressOnly::ALL.len()],
}

/// Why an XMPP connection was checked by its address only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressOnly {
    /// The stream header had no `from`.
    NoFrom,
    /// The ClientHello of a `direct_tls` port had no SNI.
    NoSni,
}

impl AddressOnly {
    const ALL: [AddressOnly; 2] = [AddressOnly::NoFrom, AddressOnly::NoSni];

    fn as_str(self) -> &'static str {
        match self {
            AddressOnly::NoFrom => "no_from",
            AddressOnly::NoSni => "no_sni",
        }
    }
}

impl ListenerMetrics {
    /// Counters for the listener shown as `listener`.
    pub fn new(listener: String) -> Self {
        Self {
            listener,
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            closed: Default::default(),
            open: AtomicI64::new(0),
            bytes: Default::default(),
            throttled_nanos: Default::default(),
            address_only: Default::default(),
        }
    }

    pub(crate) fn address_only(&self, why: AddressOnly) {
        self.address_only[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// XMPP connections checked by address only, for `why`.
    pub fn address_only_count(&self, why: AddressOnly) -> u64 {
        self.address_only[why as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refuse(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, c: Close) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, d: Direction, n: u64) {
        self.bytes[d as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_throttled(&self, d: Direction, t: Duration) {
        let n = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        self.throttled_nanos[d as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Connections proxied so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused for `r`.
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }

    /// Connections that ended as `c`.
    pub fn closed_as(&self, c: Close) -> u64 {
        self.closed[c as usize].load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Bytes forwarded in direction `d`.
    pub fn bytes(&self, d: Direction) -> u64 {
        self.bytes[d as usize].load(Ordering::Relaxed)
    }

    /// Time readers in direction `d` spent paused by bandwidth limits.
    pub fn throttled(&self, d: Direction) -> Duration {
        Duration::from_nanos(self.throttled_nanos[d as usize].load(Ordering::Relaxed))
    }
}

/// Every TCP listener's counters, rendered as one set of families.
#[derive(Debug, Default)]
pub struct Registry {
    listeners: Mutex<Vec<Arc<ListenerMetrics>>>,
}

impl Registry {
    pub(crate) fn add(&self, m: Arc<ListenerMetrics>) {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).push(m);
    }

    /// Appends the Prometheus families.
    pub fn render(&self, out: &mut String) {
        let ls = self.listeners.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if ls.is_empty() {
            return;
        }
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            out,
            "sluice_gateway_tcp_accepted_total",
            "counter",
            "Connections admitted and proxied.",
        );
        for m in &ls {
            let _ = writeln!(
                out,
                "sluice_gateway_tcp_accepted_total{{listener=\"{}\"}} {}",
                m.listener,
                m.accepted()
            );
        }
        family(
            out,
            "sluice_gateway_tcp_refused_total",
            "counter",
            "Connections closed before reaching the upstream, by reason.",
        );
        for m in &ls {
            for r in Refusal::ALL {
                let _ = writeln!(
                    out,
                    "sluice_gateway_tcp_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    m.listener,
                    r.as_str(),
                    m.refused(r)
                );
            }
        }
        family(
            out,
            "sluice_gateway_tcp_closed_total",
            "counter",
            "Proxied connections ended, by how.",
        );
        for m in &ls {
            for c in Close::ALL {
                let _ = writeln!(
                    out,
                    "sluice_gateway_tcp_closed_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    m.listener,
                    c.as_str(),
                    m.closed_as(c)
                );
            }
        }
        family(
            out,
            "sluice_gateway_tcp_open_connections",
            "gauge",
            "Connections being proxied now.",
        );
        for m in &ls {
            let _ = writeln!(
                out,
                "sluice_gateway_tcp_open_connections{{listener=\"{}\"}} {}",
                m.listener,
                m.open()
            );
        }
        family(
            out,
            "sluice_gateway_tcp_bytes_total",
            "counter",
            "Bytes forwarded (in: client to upstream).",
        );
        for m in &ls {
            for d in [Direction::In, Direction::Out] {
                let _ = writeln!(
                    out,
                    "sluice_gateway_tcp_bytes_total{{listener=\"{}\",direction=\"{}\"}} {}",
                    m.listener,
                    d.as_str(),
                    m.bytes(d)
                );
            }
        }
        family(
            out,
            "sluice_gateway_tcp_address_only_total",
            "counter",
            "XMPP connections checked by address only (no server name to count), by why.",
        );
        for m in &ls {
            for a in AddressOnly::ALL {
                let _ = writeln!(
                    out,
                    "sluice_gateway_tcp_address_only_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    m.listener,
                    a.as_str(),
                    m.address_only_count(a)
                );
            }
        }
        family(
            out,
            "sluice_gateway_tcp_throttled_seconds_total",
            "counter",
            "Time readers spent paused by bandwidth limits.",
        );
        for m in &ls {
            for d in [Direction::In, Direction::Out] {
                let _ = writeln!(
                    out,
                    "sluice_gateway_tcp_throttled_seconds_total{{listener=\"{}\",direction=\"{}\"}} {:.3}",
                    m.listener,
                    d.as_str(),
                    m.throttled(d).as_secs_f64()
                );
            }
        }
    }
}
