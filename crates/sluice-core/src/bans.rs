//! Bans: targets refused outright until an expiry, with a reason.
//!
//! An IP ban may cover a network (`ip:203.0.113.0/24`): lookups try each
//! prefix length that has a ban, so the cost is one hash lookup per distinct
//! banned prefix length, not per ban. When no ban exists the check is one
//! relaxed atomic load.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::target::Target;
use crate::time::Nanos;

/// Who put a ban in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanSource {
    /// An operator (admin API or CLI).
    Manual,
    /// An automatic-ban rule.
    Auto,
}

impl BanSource {
    /// `manual` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            BanSource::Manual => "manual",
            BanSource::Auto => "auto",
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The banned target (an IP target may be a network).
    pub target: Target,
    /// Why, for operators and logs.
    pub reason: Arc<str>,
    /// When it was placed.
    pub created: Nanos,
    /// When it ends (`None`: never).
    pub expires: Option<Nanos>,
    /// Manual or automatic.
    pub source: BanSource,
}

impl Ban {
    /// Whether the ban is in force at `now`.
    pub fn active(&self, now: Nanos) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Debug, Default)]
struct Index {
    map: HashMap<Target, Ban>,
    v4_lens: BTreeSet<u8>,
    v6_lens: BTreeSet<u8>,
}

impl Index {
    fn reindex(&mut self) {
        self.v4_lens.clear();
        self.v6_lens.clear();
        for t in self.map.keys() {
            match t {
                Target::Ip(IpNet::V4(n)) => {
                    self.v4_lens.insert(n.prefix_len());
                }
                Target::Ip(IpNet::V6(n)) => {
                    self.v6_lens.insert(n.prefix_len());
                }
                _ => {}
            }
        }
    }
}

/// The ban list. Thread-safe; cheap to check when empty.
#[derive(Debug, Default)]
pub struct Bans {
    index: RwLock<Index>,
    len: AtomicUsize,
}

impl Bans {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a ban. Returns the previous ban of that target.
    pub fn insert(&self, ban: Ban) -> Option<Ban> {
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        let old = ix.map.insert(ban.target.clone(), ban);
        ix.reindex();
        self.len.store(ix.map.len(), Ordering::Release);
        old
    }

    /// Removes a ban on exactly this target.
    pub fn remove(&self, target: &Target) -> Option<Ban> {
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        let old = ix.map.remove(target);
        ix.reindex();
        self.len.store(ix.map.len(), Ordering::Release);
        old
    }

    /// The ban in force for `t` at `now`: an exact ban, or for an IP target a
    /// ban on any network containing it.
    pub fn find(&self, t: &Target, now: Nanos) -> Option<Ban> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let ix = self.index.read().unwrap_or_else(|p| p.into_inner());
        let hit = |key: &Target| ix.map.get(key).filter(|b| b.active(now)).cloned();
        match t {
            Target::Ip(IpNet::V4(n)) => ix.v4_lens.iter().filter(|l| **l <= n.prefix_len()).find_map(|l| {
                let net = Ipv4Net::new(n.addr(), *l).ok()?.trunc();
                hit(&Target::Ip(IpNet::V4(net)))
            }),
            Target::Ip(IpNet::V6(n)) => ix.v6_lens.iter().filter(|l| **l <= n.prefix_len()).find_map(|l| {
                let net = Ipv6Net::new(n.addr(), *l).ok()?.trunc();
                hit(&Target::Ip(IpNet::V6(net)))
            }),
            other => hit(other),
        }
    }

    /// Every ban in force, sorted by target; expired ones are dropped.
    pub fn list(&self, now: Nanos) -> Vec<Ban> {
        self.purge(now);
        let ix = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Ban> = ix.map.values().cloned().collect();
        v.sort_by(|a, b| a.target.cmp(&b.target));
        v
    }

    /// Drops expired bans.
    pub fn purge(&self, now: Nanos) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        let before = ix.map.len();
        ix.map.retain(|_, b| b.active(now));
        if ix.map.len() != before {
            ix.reindex();
            self.len.store(ix.map.len(), Ordering::Release);
        }
    }

    /// Number of bans held (including any not yet purged).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(t: &str, expires: Option<Nanos>) -> Ban {
        Ban {
            target: t.parse().unwrap(),
            reason: "test".into(),
            created: 0,
            expires,
            source: BanSource::Manual,
        }
    }

    #[test]
    fn network_bans_cover_addresses() {
        let b = Bans::new();
        b.insert(ban("ip:203.0.113.0/24", None));
        b.insert(ban("ip:2001:db8::/32", Some(100)));
        assert!(b.find(&"ip:203.0.113.7".parse().unwrap(), 0).is_some());
        assert!(b.find(&"ip:203.0.114.7".parse().unwrap(), 0).is_none());
        let v6: Target = "ip:2001:db8:5:6::/64".parse().unwrap();
        assert!(b.find(&v6, 99).is_some());
        assert!(b.find(&v6, 100).is_none(), "expired ban still applied");
        assert_eq!(b.list(100).len(), 1);
    }

    #[test]
    fn exact_bans_for_other_kinds() {
        let b = Bans::new();
        b.insert(ban("server:evil.example", None));
        assert!(b.find(&"server:evil.example".parse().unwrap(), 0).is_some());
        assert!(b.find(&"server:good.example".parse().unwrap(), 0).is_none());
        assert!(b.remove(&"server:evil.example".parse().unwrap()).is_some());
        assert!(b.is_empty());
    }
}
