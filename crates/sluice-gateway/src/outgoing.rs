//! Where the s2s-out relay connects: a static route, else DNS the way XMPP
//! resolves a server (RFC 6120 §3.2.1): the `_xmpp-server._tcp` SRV
//! records ordered by priority and weight (RFC 2782), each target's
//! addresses; without SRV records the domain's own A/AAAA on 5269.
//!
//! Addresses found through DNS into loopback, private, link-local and the
//! other special ranges (or the configured `deny_networks`) are dropped:
//! anyone can publish a record pointing at `127.0.0.1`, and the relay must
//! not become a way into our own hosts. A static route is the operator's
//! word and may point anywhere; `allow_networks` lets DNS answers into
//! chosen private ranges through (private federations).

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use sluice_config::OutgoingRelay;

/// The default XMPP server-to-server port, when no SRV record names one.
pub const XMPP_SERVER_PORT: u16 = 5269;

/// Most addresses tried for one destination: a hostile zone may list many.
pub const MAX_CANDIDATES: usize = 8;

/// Why a destination has nowhere to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Neither a route nor DNS gave an address.
    #[error("{domain} does not resolve")]
    Unresolved {
        /// The destination.
        domain: String,
    },
    /// The domain's SRV record is `.`: it says it offers no XMPP service.
    #[error("{domain} publishes no XMPP server-to-server service (SRV target \".\")")]
    NoService {
        /// The destination.
        domain: String,
    },
    /// Every address found is in a denied network.
    #[error("{domain} resolves only into denied networks ({addr})")]
    Denied {
        /// The destination.
        domain: String,
        /// The first denied address.
        addr: IpAddr,
    },
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverSetupError(String);

/// How one outgoing relay finds its destinations.
pub struct Destinations {
    routes: BTreeMap<String, String>,
    resolver: TokioResolver,
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations")
            .field("routes", &self.routes)
            .field("deny", &self.deny)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl Destinations {
    /// The relay's routes and resolver: the configured DNS server, or the
    /// system's (`/etc/resolv.conf`).
    pub fn new(cfg: &OutgoingRelay) -> Result<Self, ResolverSetupError> {
        let err = |e: &dyn std::fmt::Display| ResolverSetupError(e.to_string());
        let provider = TokioRuntimeProvider::default();
        let mut builder = match cfg.resolver {
            Some(addr) => {
                let conn = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                let server = NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                );
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    provider,
                );
                // A configured server answers alone: /etc/hosts is the
                // machine's view, not the federation's.
                b.options_mut().use_hosts_file = ResolveHosts::Never;
                b
            }
            None => TokioResolver::builder(provider).map_err(|e| err(&e))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.attempts = 2;
        let resolver = builder.build().map_err(|e| err(&e))?;
        Ok(Self {
            routes: cfg.routes.clone(),
            resolver,
            deny: cfg.deny_networks.clone(),
            allow: cfg.allow_networks.clone(),
        })
    }

    /// Whether DNS may send the relay to `ip`.
    pub fn denied(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        special(ip) || self.deny.iter().any(|n| n.contains(&ip))
    }

    /// Whether `domain` has a static route.
    pub fn routed(&self, domain: &str) -> bool {
        self.routes.contains_key(domain)
    }

    /// The addresses to try for `domain` (a normalised domain), in order,
    /// at most [`MAX_CANDIDATES`].
    pub async fn candidates(&self, domain: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(route) = self.routes.get(domain) {
            return self.route(domain, route).await;
        }
        let unresolved = || ResolveError::Unresolved {
            domain: domain.to_owned(),
        };
        // An IP literal as the domain (RFC 6120 §3.2.1 allows it): no DNS.
        let literal = domain.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if self.denied(ip) {
                return Err(ResolveError::Denied {
                    domain: domain.to_owned(),
                    addr: ip,
                });
            }
            return Ok(vec![SocketAddr::new(ip, XMPP_SERVER_PORT)]);
        }
        let mut targets = Vec::new();
        if let Ok(srv) = self
            .resolver
            .srv_lookup(format!("_xmpp-server._tcp.{domain}."))
            .await
        {
            let records: Vec<Srv> = srv
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii(),
                    }),
                    _ => None,
                })
                .collect();
            if records.len() == 1 && records[0].target == "." {
                return Err(ResolveError::NoService {
                    domain: domain.to_owned(),
                });
            }
            let state = RandomState::new();
            let mut n = 0u64;
            let ordered = order(records, |below| {
                n += 1;
                (state.hash_one(n) % u64::from(below.max(1))) as u32
            });
            targets.extend(ordered.into_iter().map(|s| (s.target, s.port)));
        }
        if targets.is_empty() {
            // RFC 6120 §3.2.2: no SRV answer, the domain itself on 5269.
            targets.push((format!("{domain}."), XMPP_SERVER_PORT));
        }
        let mut out = Vec::new();
        let mut first_denied = None;
        for (host, port) in targets {
            if out.len() >= MAX_CANDIDATES {
                break;
            }
            let Ok(ips) = self.resolver.lookup_ip(host.as_str()).await else {
                continue;
            };
            for ip in ips.iter() {
                if self.denied(ip) {
                    first_denied.get_or_insert(ip);
                    continue;
                }
                let a = SocketAddr::new(ip, port);
                if !out.contains(&a) && out.len() < MAX_CANDIDATES {
                    out.push(a);
                }
            }
        }
        match (out.is_empty(), first_denied) {
            (false, _) => Ok(out),
            (true, Some(addr)) => Err(ResolveError::Denied {
                domain: domain.to_owned(),
                addr,
            }),
            (true, None) => Err(unresolved()),
        }
    }

    /// A static route: an address as written, or a host name resolved
    /// (never filtered: the operator named it).
    async fn route(&self, domain: &str, route: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(a) = route.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let unresolved = || ResolveError::Unresolved {
            domain: domain.to_owned(),
        };
        let (host, port) = route.rsplit_once(':').ok_or_else(unresolved)?;
        let port: u16 = port.parse().map_err(|_| unresolved())?;
        let ips = self.resolver.lookup_ip(host).await.map_err(|_| unresolved())?;
        let out: Vec<SocketAddr> = ips
            .iter()
            .take(MAX_CANDIDATES)
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if out.is_empty() {
            return Err(unresolved());
        }
        Ok(out)
    }
}

/// Special-purpose ranges no public XMPP server lives in (RFC 6890).
fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Share of the traffic within a priority.
    pub weight: u16,
    /// The port.
    pub port: u16,
    /// The host, as a name.
    pub target: String,
}

/// RFC 2782's order: by priority; within one priority, a weighted random
/// draw without replacement, records of weight 0 first so that they are
/// picked only rarely. `random(n)` returns a number in `0..n`.
pub fn order(mut records: Vec<Srv>, mut random: impl FnMut(u32) -> u32) -> Vec<Srv> {
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let end = rest
            .iter()
            .position(|r| r.priority != first.priority)
            .unwrap_or(rest.len());
        let (group, after) = rest.split_at(end);
        let mut group: Vec<&Srv> = group.iter().collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total + 1);
            let mut running = 0u32;
            let i = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i).clone());
        }
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5269,
            target: target.into(),
        }
    }

    #[test]
    fn priority_first_then_weight() {
        let records = vec![srv(20, 0, "c"), srv(10, 1, "b"), srv(10, 100, "a")];
        // Drawing the largest number picks the last of the running sum.
        let names = |o: Vec<Srv>| o.into_iter().map(|s| s.target).collect::<Vec<_>>();
        assert_eq!(names(order(records.clone(), |n| n - 1)), ["a", "b", "c"]);
        // Drawing 1 picks the first record with weight: b, then a.
        assert_eq!(names(order(records, |_| 1)), ["b", "a", "c"]);
    }

    #[test]
    fn weights_share_the_first_place() {
        let records = vec![srv(0, 90, "heavy"), srv(0, 10, "light")];
        let mut seed = 7u32;
        let mut heavy = 0;
        for _ in 0..1000 {
            let first = order(records.clone(), |n| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 8) % n
            });
            heavy += usize::from(first[0].target == "heavy");
        }
        assert!((850..950).contains(&heavy), "{heavy}");
    }

    #[test]
    fn special_ranges_are_denied() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(special(ip.to_canonical()), "{ip}");
        }
        for ip in ["192.0.2.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!special(ip.parse().unwrap()), "{ip}");
        }
    }
}
