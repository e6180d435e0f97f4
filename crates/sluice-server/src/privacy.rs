//! How targets appear in logs and admin output.
//!
//! By default a client address never appears raw: it is shown as a keyed
//! hash (`ip#3f2a9c1d5e7b8a90`), stable for the life of the process, so an
//! operator can follow one client across log lines and act on it (`sluice
//! ban ip#…` resolves the hash through recent activity and the ban list)
//! without the log holding personal data. `privacy.log_ips = true` shows
//! addresses as they are.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use sluice_core::Target;

/// Renders targets for humans, hashing addresses unless told otherwise.
#[derive(Debug, Clone)]
pub struct Privacy {
    log_ips: bool,
    // std's RandomState is SipHash-1-3 with a random 128-bit key: a keyed
    // hash nobody outside the process can invert by enumerating addresses.
    key: RandomState,
}

impl Privacy {
    /// Hash addresses (`log_ips = false`) or show them.
    pub fn new(log_ips: bool) -> Self {
        Self {
            log_ips,
            key: RandomState::new(),
        }
    }

    /// The same key with a different `log_ips` (reload keeps hashes stable).
    pub fn with_log_ips(&self, log_ips: bool) -> Self {
        Self {
            log_ips,
            key: self.key.clone(),
        }
    }

    /// Whether addresses are shown raw.
    pub fn log_ips(&self) -> bool {
        self.log_ips
    }

    /// The keyed hash label of an IP target (`ip#…`).
    pub fn hashed(&self, t: &Target) -> String {
        format!("ip#{:016x}", self.key.hash_one(t))
    }

    /// A target as logs and admin output show it: addresses hashed, and
    /// so are servers and accounts named by an address (`server:203.0.113.7`,
    /// `user:alice@203.0.113.7` — federation from a bare address, unconfirmed
    /// `X-Matrix` origins).
    pub fn show(&self, t: &Target) -> String {
        if !self.log_ips && carries_address(t) {
            self.hashed(t)
        } else {
            t.to_string()
        }
    }

    /// Whether `label` is the hashed form of `t`.
    pub fn matches(&self, label: &str, t: &Target) -> bool {
        carries_address(t) && self.hashed(t) == label
    }
}

/// Whether a target is, or is named by, an IP address.
fn carries_address(t: &Target) -> bool {
    let host = match t {
        Target::Ip(_) => return true,
        Target::Server(s) => &**s,
        // `@local:domain` (Matrix) or `local@domain` (XMPP).
        Target::User(s) => match s.strip_prefix('@') {
            Some(m) => m.split_once(':').map_or("", |(_, d)| d),
            None => s.rsplit_once('@').map_or("", |(_, d)| d),
        },
        Target::Appservice(_) | Target::Global => return false,
    };
    is_address(host)
}

/// An IPv4 or bracketed IPv6 literal, with or without a port.
fn is_address(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(v6, _)| v6.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let bare = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    bare.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn targets_named_by_an_address_are_hashed() {
        let p = Privacy::new(false);
        for t in [
            "ip:203.0.113.7",
            "server:203.0.113.7",
            "server:203.0.113.7:8448",
            "server:[2001:db8::1]:8448",
            "user:@alice:203.0.113.7",
            "user:alice@203.0.113.7",
        ] {
            let t: Target = t.parse().expect("a target");
            let shown = p.show(&t);
            assert!(
                shown.starts_with("ip#") && !shown.contains("203.0.113") && !shown.contains("2001"),
                "{t}: {shown}"
            );
            assert!(p.matches(&shown, &t));
        }
        for t in [
            "server:matrix.org",
            "user:@alice:example.org",
            "user:alice@example.org",
        ] {
            let t: Target = t.parse().expect("a target");
            assert_eq!(p.show(&t), t.to_string());
        }
        assert_eq!(
            Privacy::new(true).show(&"server:203.0.113.7".parse().expect("a target")),
            "server:203.0.113.7"
        );
    }
}
