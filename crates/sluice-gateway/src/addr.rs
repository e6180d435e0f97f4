//! Addresses as distinct types, so a proxy's address is never taken for a
//! client's (the mistake that turns a per-IP limit into a global one).
//!
//! A [`PeerAddr`] is whoever holds the TCP connection: a client, or a proxy
//! in front of one. A [`ClientAddr`] is who the limits count. The only ways
//! to get one are [`ClientAddr::direct`] (no PROXY protocol on the listener:
//! the peer *is* the client) and [`Resolved::from_header`], which needs a
//! [`TrustedPeer`] — and only [`TrustedProxies::check`] makes one of those.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::proxy_protocol::{Addresses, Header};

/// The remote end of an accepted TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client the limits apply to, and the address handed to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(SocketAddr);

/// Where the client connected: our listener, or what a trusted proxy said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestinationAddr(pub SocketAddr);

/// A peer found in `network.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedPeer(PeerAddr);

/// `network.trusted_proxies`.
#[derive(Debug, Clone, Copy)]
pub struct TrustedProxies<'a>(&'a [IpNet]);

impl<'a> TrustedProxies<'a> {
    /// The networks whose PROXY headers are believed.
    pub fn new(nets: &'a [IpNet]) -> Self {
        Self(nets)
    }

    /// The peer, vouched for, if it is inside a trusted network.
    pub fn check(&self, peer: PeerAddr) -> Option<TrustedPeer> {
        let ip = peer.0.ip().to_canonical();
        self.0
            .iter()
            .any(|n| n.contains(&ip))
            .then_some(TrustedPeer(peer))
    }
}

impl ClientAddr {
    /// The peer itself: for listeners that read no PROXY header.
    pub fn direct(peer: PeerAddr) -> Self {
        Self(peer.0)
    }

    /// The socket address (IPv4-mapped IPv6 shown as IPv4).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.0.ip().to_canonical(), self.0.port())
    }

    /// The IP address the limits count.
    pub fn ip(&self) -> IpAddr {
        self.0.ip().to_canonical()
    }
}

/// A connection's client and destination, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Who the limits count.
    pub client: ClientAddr,
    /// Where the client connected.
    pub destination: DestinationAddr,
}

impl Resolved {
    /// No PROXY header: the connection's own endpoints.
    pub fn direct(peer: PeerAddr, local: SocketAddr) -> Self {
        Self {
            client: ClientAddr::direct(peer),
            destination: DestinationAddr(local),
        }
    }

    /// What a trusted proxy's header says. `LOCAL`, `UNKNOWN`/`UNSPEC` and
    /// UNIX-socket headers carry no client IP: the spec says to use the real
    /// endpoints, so the proxy itself is the client then.
    pub fn from_header(peer: TrustedPeer, local: SocketAddr, header: &Header) -> Self {
        match header.addresses {
            Addresses::Tcp { source, destination } => Self {
                client: ClientAddr(source),
                destination: DestinationAddr(destination),
            },
            Addresses::Local | Addresses::Unknown | Addresses::Unix { .. } => Self::direct(peer.0, local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::Version;

    #[test]
    fn only_trusted_peers_can_name_a_client() {
        let nets = vec!["10.0.0.0/8".parse().expect("net")];
        let trusted = TrustedProxies::new(&nets);
        let proxy = PeerAddr("10.1.2.3:4000".parse().expect("addr"));
        let mapped = PeerAddr("[::ffff:10.1.2.3]:4000".parse().expect("addr"));
        let stranger = PeerAddr("192.0.2.9:4000".parse().expect("addr"));
        assert!(trusted.check(stranger).is_none());
        assert!(trusted.check(mapped).is_some());
        let header = Header {
            version: Version::V1,
            addresses: Addresses::Tcp {
                source: "203.0.113.7:5555".parse().expect("addr"),
                destination: "192.0.2.1:5222".parse().expect("addr"),
            },
            tlvs: vec![],
        };
        let peer = trusted.check(proxy).expect("trusted");
        let local = "10.0.0.1:5222".parse().expect("addr");
        let r = Resolved::from_header(peer, local, &header);
        assert_eq!(r.client.ip(), "203.0.113.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.destination.0, "192.0.2.1:5222".parse().expect("addr"));
        let local_hdr = Header {
            addresses: Addresses::Local,
            ..header
        };
        assert_eq!(
            Resolved::from_header(peer, local, &local_hdr).client.ip(),
            proxy.0.ip()
        );
    }
}
