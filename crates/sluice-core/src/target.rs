//! Targets: *who* is limited, normalised so that one client is one key.
//!
//! Written `kind:value` — `ip:203.0.113.7`, `ip:2001:db8::/64`,
//! `user:@alice:example.org`, `user:alice@example.org`, `server:example.org`,
//! `appservice:bridge`, `global`. Normalisation makes equivalent spellings one
//! key: IPv4-mapped IPv6 becomes IPv4, addresses are grouped to the configured
//! prefix (IPv6 /64 by default, so one host cannot mint 2^64 identities),
//! domains are lower-cased without a trailing dot, XMPP resources are dropped.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The kinds of target, in the order the engine checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    /// A client address or network.
    Ip,
    /// An account: Matrix `@local:server` or XMPP `local@domain`.
    User,
    /// A remote server (federation peer) or a destination.
    Server,
    /// A Matrix application service (bridge).
    Appservice,
    /// Everyone at once.
    Global,
}

impl TargetKind {
    /// Every kind.
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Ip,
        TargetKind::User,
        TargetKind::Server,
        TargetKind::Appservice,
        TargetKind::Global,
    ];

    /// The kind's name as written in targets and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Ip => "ip",
            TargetKind::User => "user",
            TargetKind::Server => "server",
            TargetKind::Appservice => "appservice",
            TargetKind::Global => "global",
        }
    }
}

impl FromStr for TargetKind {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TargetKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| TargetError::Kind(s.to_owned()))
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a target could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Unknown kind before the colon.
    #[error("unknown target kind {0:?}: expected ip, user, server, appservice or global")]
    Kind(String),
    /// Not `kind:value`.
    #[error("expected `kind:value` (e.g. ip:203.0.113.7), got {0:?}")]
    Syntax(String),
    /// Not an IP address or network.
    #[error("not an IP address or network: {0:?}")]
    Ip(String),
    /// Not a valid Matrix user ID or XMPP JID.
    #[error("not a Matrix user ID (@local:server) or XMPP address (local@domain): {0:?}")]
    User(String),
    /// Not a valid server name.
    #[error("not a valid server name: {0:?}")]
    Server(String),
    /// Empty or overlong appservice ID.
    #[error("appservice ID must be 1–255 printable characters: {0:?}")]
    Appservice(String),
}

/// How addresses are grouped: one key per IPv4 /`v4` and IPv6 /`v6` network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalizer {
    v4: u8,
    v6: u8,
}

impl Default for Normalizer {
    /// IPv4 per address (/32), IPv6 per /64 — one end site's usual allocation.
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl Normalizer {
    /// Groups IPv4 to `/v4` and IPv6 to `/v6`; `None` if a prefix is out of range.
    pub fn new(v4: u8, v6: u8) -> Option<Self> {
        (v4 <= 32 && v6 <= 128).then_some(Self { v4, v6 })
    }

    /// The IPv4 prefix length.
    pub fn ipv4_prefix(&self) -> u8 {
        self.v4
    }

    /// The IPv6 prefix length.
    pub fn ipv6_prefix(&self) -> u8 {
        self.v6
    }

    /// The network an address is limited as.
    #[inline]
    pub fn ip(&self, addr: IpAddr) -> IpNet {
        match canonical_ip(addr) {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, self.v4).unwrap_or_default().trunc()),
            IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, self.v6).unwrap_or_default().trunc()),
        }
    }

    /// The target for a client address.
    #[inline]
    pub fn ip_target(&self, addr: IpAddr) -> Target {
        Target::Ip(self.ip(addr))
    }

    /// Normalises an already-parsed target (re-grouping IP targets that are
    /// single addresses; explicit networks keep their prefix).
    pub fn normalize(&self, t: Target) -> Target {
        match t {
            Target::Ip(net) if net.prefix_len() == net.max_prefix_len() => self.ip_target(net.addr()),
            other => other,
        }
    }

    /// Normalises a ban's target: an IP target narrower than the grouping
    /// prefix (a single address, or say a /96 when IPv6 groups per /64)
    /// is widened to its group — requests are checked per group, so a ban
    /// on part of one could never match. Only for bans: an exemption or
    /// override on part of a group already applies to the group's requests
    /// (they are matched by overlap) and keeps the prefix it was given.
    pub fn normalize_ban(&self, t: Target) -> Target {
        match t {
            Target::Ip(net) if net.prefix_len() > self.group_len(&net) => self.ip_target(net.addr()),
            other => other,
        }
    }

    fn group_len(&self, net: &IpNet) -> u8 {
        match net {
            IpNet::V4(_) => self.v4,
            IpNet::V6(_) => self.v6,
        }
    }

    /// Parses `kind:value` and normalises it.
    pub fn parse(&self, s: &str) -> Result<Target, TargetError> {
        s.parse::<Target>().map(|t| self.normalize(t))
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it carries.
#[inline]
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Who is limited. Cheap to clone (names are shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// An address or network, already grouped to its prefix.
    Ip(IpNet),
    /// An account, normalised.
    User(Arc<str>),
    /// A server name, lower-cased.
    Server(Arc<str>),
    /// An application service ID.
    Appservice(Arc<str>),
    /// Everyone.
    Global,
}

impl Target {
    /// The target's kind.
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Ip(_) => TargetKind::Ip,
            Target::User(_) => TargetKind::User,
            Target::Server(_) => TargetKind::Server,
            Target::Appservice(_) => TargetKind::Appservice,
            Target::Global => TargetKind::Global,
        }
    }

    /// A user target from a Matrix ID or XMPP JID.
    pub fn user(s: &str) -> Result<Self, TargetError> {
        normalize_user(s).map(|u| Target::User(u.into()))
    }

    /// A server target from a domain (or IP literal, with optional port).
    pub fn server(s: &str) -> Result<Self, TargetError> {
        normalize_server(s)
            .map(|d| Target::Server(d.into()))
            .ok_or_else(|| TargetError::Server(s.to_owned()))
    }

    /// An appservice target.
    pub fn appservice(s: &str) -> Result<Self, TargetError> {
        let ok = !s.is_empty() && s.len() <= 255 && s.chars().all(|c| !c.is_control());
        if ok {
            Ok(Target::Appservice(s.into()))
        } else {
            Err(TargetError::Appservice(s.to_owned()))
        }
    }

    /// The value after `kind:`.
    pub fn value(&self) -> String {
        match self {
            Target::Ip(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
            Target::Ip(net) => net.to_string(),
            Target::User(s) | Target::Server(s) | Target::Appservice(s) => s.to_string(),
            Target::Global => String::new(),
        }
    }

    /// Whether this (IP) target lies within `net`.
    pub fn within(&self, net: &IpNet) -> bool {
        match self {
            Target::Ip(mine) => net.contains(mine),
            _ => false,
        }
    }

    /// Whether this (IP) target and `net` overlap: one contains the other.
    ///
    /// Requests are grouped (IPv6 per /64 by default), so a rule naming one
    /// address inside a group can only ever see the whole group: an
    /// exemption, override or blocklist entry for `2001:db8::1` applies to
    /// `2001:db8::/64`, the only identity sluice can tell apart.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        match self {
            Target::Ip(mine) => net.contains(mine) || mine.contains(net),
            _ => false,
        }
    }

    /// Feeds a stable, kind-tagged encoding to a hasher.
    pub fn hash_into<H: Hasher>(&self, h: &mut H) {
        match self {
            Target::Ip(IpNet::V4(n)) => {
                h.write_u8(4);
                h.write_u32(u32::from(n.addr()));
                h.write_u8(n.prefix_len());
            }
            Target::Ip(IpNet::V6(n)) => {
                h.write_u8(6);
                h.write_u128(u128::from(n.addr()));
                h.write_u8(n.prefix_len());
            }
            Target::User(s) => {
                h.write_u8(b'u');
                h.write(s.as_bytes());
            }
            Target::Server(s) => {
                h.write_u8(b's');
                h.write(s.as_bytes());
            }
            Target::Appservice(s) => {
                h.write_u8(b'a');
                h.write(s.as_bytes());
            }
            Target::Global => h.write_u8(b'g'),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Global => f.write_str("global"),
            t => write!(f, "{}:{}", t.kind(), t.value()),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({self})")
    }
}

impl FromStr for Target {
    type Err = TargetError;

    /// Parses `kind:value` without prefix grouping (see [`Normalizer::parse`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "global" {
            return Ok(Target::Global);
        }
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| TargetError::Syntax(s.to_owned()))?;
        match kind.parse::<TargetKind>()? {
            TargetKind::Ip => parse_ip_or_net(value).map(Target::Ip),
            TargetKind::User => Target::user(value),
            TargetKind::Server => Target::server(value),
            TargetKind::Appservice => Target::appservice(value),
            TargetKind::Global => Err(TargetError::Syntax(s.to_owned())),
        }
    }
}

/// Parses `203.0.113.7`, `2001:db8::/64` or `::ffff:10.0.0.1` into a network
/// (host bits cleared, IPv4-mapped addresses turned into IPv4).
pub fn parse_ip_or_net(s: &str) -> Result<IpNet, TargetError> {
    let bad = || TargetError::Ip(s.to_owned());
    if let Ok(addr) = s.parse::<IpAddr>() {
        let addr = canonical_ip(addr);
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = s.parse().map_err(|_| bad())?;
    Ok(match net {
        IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
            Some(v4) if n.prefix_len() >= 96 => {
                IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).map_err(|_| bad())?.trunc())
            }
            _ => IpNet::V6(n.trunc()),
        },
        IpNet::V4(n) => IpNet::V4(n.trunc()),
    })
}

fn is_domain_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Lower-cases and validates a server name: a DNS name, `[IPv6]` or IPv4
/// literal, with an optional `:port`; a trailing dot is dropped.
pub fn normalize_server(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 255 {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        match after {
            "" => (&s[..v6.len() + 2], None),
            p => (&s[..v6.len() + 2], Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        p.parse::<u16>().ok().filter(|p| *p != 0)?;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    // IDNs compare in A-label form: `bücher.example` is `xn--bcher-kva.example`.
    let host = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(host).ok()?
    };
    if !host.starts_with('[') && host.parse::<Ipv4Addr>().is_err() {
        let labels_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(is_domain_label_char)
            });
        if !labels_ok {
            return None;
        }
    }
    Some(match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// Normalises a Matrix user ID (`@local:server`, server lower-cased) or an
/// XMPP address (`local@domain/resource` → `local@domain`, lower-cased, as
/// nodeprep case-folds the localpart).
pub fn normalize_user(s: &str) -> Result<String, TargetError> {
    let bad = || TargetError::User(s.to_owned());
    if s.len() > 1023 {
        return Err(bad());
    }
    if let Some(rest) = s.strip_prefix('@') {
        // Matrix: historical user IDs allow any printable ASCII but ':' in the
        // localpart, and are case-sensitive; only the server name is folded.
        if s.len() > 255 {
            return Err(bad());
        }
        let (local, server) = rest.split_once(':').ok_or_else(bad)?;
        let local_ok = !local.is_empty() && local.chars().all(|c| c.is_ascii_graphic() && c != ':');
        let server = normalize_server(server).ok_or_else(bad)?;
        if !local_ok {
            return Err(bad());
        }
        return Ok(format!("@{local}:{server}"));
    }
    let bare = s.split_once('/').map_or(s, |(bare, _resource)| bare);
    let (local, domain) = bare.split_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 1023
        && local
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !"\"&'/:<>@".contains(c));
    let domain = normalize_server(domain).ok_or_else(bad)?;
    if !local_ok {
        return Err(bad());
    }
    Ok(format!("{}@{domain}", local.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Normalizer {
        Normalizer::default()
    }

    #[test]
    fn ipv4_mapped_is_ipv4() {
        let a: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(n().ip_target(a).to_string(), "ip:203.0.113.7");
        assert_eq!(
            n().parse("ip:::ffff:203.0.113.7").unwrap().to_string(),
            "ip:203.0.113.7"
        );
    }

    #[test]
    fn ipv6_grouped_to_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        assert_eq!(n().ip_target(a), n().ip_target(b));
        assert_eq!(n().ip_target(a).to_string(), "ip:2001:db8:1:2::/64");
        let n48 = Normalizer::new(24, 48).unwrap();
        assert_eq!(n48.ip_target(a).to_string(), "ip:2001:db8:1::/48");
        assert_eq!(
            n48.ip_target("10.1.2.3".parse().unwrap()).to_string(),
            "ip:10.1.2.0/24"
        );
        assert!(Normalizer::new(33, 64).is_none());
    }

    #[test]
    fn explicit_networks_keep_their_prefix() {
        let t = n().parse("ip:2001:db8::/32").unwrap();
        assert_eq!(t.to_string(), "ip:2001:db8::/32");
        assert_eq!(n().parse("ip:10.0.0.7/8").unwrap().to_string(), "ip:10.0.0.0/8");
    }

    #[test]
    fn users_normalised() {
        assert_eq!(
            n().parse("user:@alice:Example.ORG").unwrap().to_string(),
            "user:@alice:example.org"
        );
        assert_eq!(
            n().parse("user:Alice@Example.org/phone").unwrap().to_string(),
            "user:alice@example.org"
        );
        assert_eq!(
            n().parse("user:@a:example.org:8448").unwrap().to_string(),
            "user:@a:example.org:8448"
        );
        for bad in [
            "user:@:example.org",
            "user:@alice",
            "user:alice",
            "user:@al ice:x.org",
            "user:a@",
            "user:@a:exa mple.org",
        ] {
            assert!(n().parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn servers_normalised() {
        assert_eq!(
            n().parse("server:Example.org.").unwrap().to_string(),
            "server:example.org"
        );
        assert_eq!(
            n().parse("server:[2001:db8::1]:8448").unwrap().to_string(),
            "server:[2001:db8::1]:8448"
        );
        assert_eq!(n().parse("server:1.2.3.4").unwrap().to_string(), "server:1.2.3.4");
        for bad in [
            "server:",
            "server:a..b",
            "server:x.org:0",
            "server:x.org:99999",
            "server:a b",
        ] {
            assert!(n().parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rules_naming_one_address_cover_its_group() {
        let group = n().parse("ip:2001:db8:1:2::99").unwrap();
        let host: IpNet = "2001:db8:1:2::1/128".parse().unwrap();
        let wide: IpNet = "2001:db8::/32".parse().unwrap();
        let other: IpNet = "2001:db8:1:3::1/128".parse().unwrap();
        assert!(group.overlaps(&host) && group.overlaps(&wide) && !group.overlaps(&other));
        assert!(!group.within(&host));
    }

    #[test]
    fn kinds_and_syntax() {
        assert_eq!(n().parse("global").unwrap(), Target::Global);
        assert_eq!(
            n().parse("appservice:bridge").unwrap().to_string(),
            "appservice:bridge"
        );
        assert!(matches!(n().parse("mac:00:11"), Err(TargetError::Kind(_))));
        assert!(matches!(n().parse("nothing"), Err(TargetError::Syntax(_))));
        assert!(n().parse("ip:300.1.1.1").is_err());
    }
}
