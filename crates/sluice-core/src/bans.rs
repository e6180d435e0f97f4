//! Bans: targets refused outright until an expiry, with a reason.
//!
//! An IP ban may cover a network (`ip:203.0.113.0/24`): lookups try each
//! prefix length that has a ban, so the cost is one probe per distinct
//! banned prefix length, not per ban.
//!
//! Every decision checks its targets, and under attack the list holds
//! thousands of bans that almost never match. So a lookup first asks a
//! Bloom filter of the banned targets, read without any lock; only a
//! possible match takes the read lock and probes the map. When no ban
//! exists the check is one atomic load. (Measured with `sluice-bench`'s
//! `bans` contender: 10,000 bans cost every decision +15 ns on one thread
//! and +39 ns on two behind the lock alone — see docs/benchmarks.md.)

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
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

#[derive(Debug)]
struct Index {
    map: HashMap<Target, Ban>,
    /// Bans per IPv4 prefix length, and per IPv6 prefix length: the lengths
    /// a lookup must try (counts, so adding and removing are O(1)).
    v4_lens: [u32; 33],
    v6_lens: [u32; 129],
    /// Bans removed since the filter was built (their bits linger).
    stale: usize,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            v4_lens: [0; 33],
            v6_lens: [0; 129],
            stale: 0,
        }
    }
}

impl Index {
    fn count(&mut self, t: &Target, add: bool) {
        let slot = match t {
            Target::Ip(IpNet::V4(n)) => &mut self.v4_lens[usize::from(n.prefix_len())],
            Target::Ip(IpNet::V6(n)) => &mut self.v6_lens[usize::from(n.prefix_len())],
            _ => return,
        };
        *slot = if add { *slot + 1 } else { slot.saturating_sub(1) };
    }

    /// The prefix lengths to try for an address grouped to `len`, longest
    /// last (any order finds the ban; the map decides which).
    fn lens(counts: &[u32], len: u8) -> impl Iterator<Item = u8> + '_ {
        counts
            .iter()
            .take(usize::from(len) + 1)
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(l, _)| l as u8)
    }
}

/// A Bloom filter of banned targets (two bits per target) plus the banned
/// prefix lengths as bit masks. Bits are only ever set while the list's
/// write lock is held; removals leave them (a false positive costs one
/// locked probe) until enough are stale to rebuild, which swaps in a new
/// filter — so a reader never sees a banned target's bits missing.
#[derive(Debug)]
struct Filter {
    bits: Box<[AtomicU64]>,
    /// `bits.len() * 64 - 1`: the bit count is a power of two.
    mask: u64,
    /// Bit `l` set: some IPv4 ban is a /l.
    v4_lens: AtomicU64,
    /// Bit `l` of word `l / 64` set: some IPv6 ban is a /l.
    v6_lens: [AtomicU64; 3],
    /// Targets the filter was sized for (a rebuild grows it past this).
    capacity: usize,
}

impl Filter {
    /// Room for `capacity` targets at 16 bits each (a false-positive rate
    /// around 1.4% with two bits per target), at least 64 Kib.
    fn new(capacity: usize) -> Self {
        let bits = (capacity.max(4096) * 16).next_power_of_two();
        Self {
            bits: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(),
            mask: bits as u64 - 1,
            v4_lens: AtomicU64::new(0),
            v6_lens: Default::default(),
            capacity: capacity.max(4096),
        }
    }

    #[inline]
    fn positions(&self, h: u64) -> [u64; 2] {
        [h & self.mask, h.rotate_left(39) & self.mask]
    }

    fn add(&self, h: u64, t: &Target) {
        for p in self.positions(h) {
            self.bits[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Release);
        }
        match t {
            Target::Ip(IpNet::V4(n)) => {
                self.v4_lens.fetch_or(1 << n.prefix_len(), Ordering::Release);
            }
            Target::Ip(IpNet::V6(n)) => {
                let l = usize::from(n.prefix_len());
                self.v6_lens[l / 64].fetch_or(1 << (l % 64), Ordering::Release);
            }
            _ => {}
        }
    }

    #[inline]
    fn may_hold(&self, h: u64) -> bool {
        self.positions(h)
            .iter()
            .all(|p| self.bits[(p / 64) as usize].load(Ordering::Acquire) & (1 << (p % 64)) != 0)
    }

    /// Whether a ban may match `t`: an exact ban on it, or for an IP a ban
    /// on a network containing it.
    #[inline]
    fn may_match(&self, t: &Target, hash: impl Fn(&Target) -> u64) -> bool {
        match t {
            Target::Ip(IpNet::V4(n)) => {
                let mut lens = self.v4_lens.load(Ordering::Acquire);
                while lens != 0 {
                    let l = lens.trailing_zeros() as u8;
                    lens &= lens - 1;
                    if l > n.prefix_len() {
                        break;
                    }
                    if let Ok(net) = Ipv4Net::new(n.addr(), l) {
                        if self.may_hold(hash(&Target::Ip(IpNet::V4(net.trunc())))) {
                            return true;
                        }
                    }
                }
                false
            }
            Target::Ip(IpNet::V6(n)) => {
                for (w, word) in self.v6_lens.iter().enumerate() {
                    let mut lens = word.load(Ordering::Acquire);
                    while lens != 0 {
                        let l = (w * 64) as u8 + lens.trailing_zeros() as u8;
                        lens &= lens - 1;
                        if l > n.prefix_len() {
                            return false;
                        }
                        if let Ok(net) = Ipv6Net::new(n.addr(), l) {
                            if self.may_hold(hash(&Target::Ip(IpNet::V6(net.trunc())))) {
                                return true;
                            }
                        }
                    }
                }
                false
            }
            other => self.may_hold(hash(other)),
        }
    }
}

/// The ban list. Thread-safe; cheap to check when empty, and without a
/// lock when nothing matches.
#[derive(Debug)]
pub struct Bans {
    index: RwLock<Index>,
    len: AtomicUsize,
    filter: ArcSwap<Filter>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Bans {
    fn default() -> Self {
        Self {
            index: RwLock::default(),
            len: AtomicUsize::new(0),
            filter: ArcSwap::from_pointee(Filter::new(0)),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Bans {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn hash(&self, t: &Target) -> u64 {
        let mut h = self.hasher.build_hasher();
        t.hash(&mut h);
        std::hash::Hasher::finish(&h)
    }

    /// Adds or replaces a ban. Returns the previous ban of that target.
    pub fn insert(&self, ban: Ban) -> Option<Ban> {
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        let target = ban.target.clone();
        let old = ix.map.insert(target.clone(), ban);
        if old.is_none() {
            ix.count(&target, true);
        }
        let filter = self.filter.load();
        if ix.map.len() > filter.capacity {
            self.rebuild(&mut ix);
        } else {
            filter.add(self.hash(&target), &target);
        }
        self.len.store(ix.map.len(), Ordering::Release);
        old
    }

    /// Removes a ban on exactly this target.
    pub fn remove(&self, target: &Target) -> Option<Ban> {
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        let old = ix.map.remove(target);
        if old.is_some() {
            ix.count(target, false);
            ix.stale += 1;
            self.tidy(&mut ix);
        }
        self.len.store(ix.map.len(), Ordering::Release);
        old
    }

    /// Rebuilds the filter once as many bits are stale as live.
    fn tidy(&self, ix: &mut Index) {
        if ix.stale > ix.map.len().max(64) {
            self.rebuild(ix);
        }
    }

    /// A new filter from the map (write lock held: no insert races it).
    fn rebuild(&self, ix: &mut Index) {
        let f = Filter::new(ix.map.len() * 2);
        for t in ix.map.keys() {
            f.add(self.hash(t), t);
        }
        self.filter.store(Arc::new(f));
        ix.stale = 0;
    }

    /// The ban in force for `t` at `now`: an exact ban, or for an IP target a
    /// ban on any network containing it.
    pub fn find(&self, t: &Target, now: Nanos) -> Option<Ban> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        if !self.filter.load().may_match(t, |c| self.hash(c)) {
            return None;
        }
        let ix = self.index.read().unwrap_or_else(|p| p.into_inner());
        let hit = |key: &Target| ix.map.get(key).filter(|b| b.active(now)).cloned();
        match t {
            Target::Ip(IpNet::V4(n)) => Index::lens(&ix.v4_lens, n.prefix_len()).find_map(|l| {
                let net = Ipv4Net::new(n.addr(), l).ok()?.trunc();
                hit(&Target::Ip(IpNet::V4(net)))
            }),
            Target::Ip(IpNet::V6(n)) => Index::lens(&ix.v6_lens, n.prefix_len()).find_map(|l| {
                let net = Ipv6Net::new(n.addr(), l).ok()?.trunc();
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

    /// Every ban held, expired or not (tests).
    #[cfg(test)]
    fn list_all(&self) -> Vec<Ban> {
        let ix = self.index.read().unwrap_or_else(|p| p.into_inner());
        ix.map.values().cloned().collect()
    }

    /// Drops expired bans.
    pub fn purge(&self, now: Nanos) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<Target> = ix
            .map
            .iter()
            .filter(|(_, b)| !b.active(now))
            .map(|(t, _)| t.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for t in &expired {
            ix.map.remove(t);
            ix.count(t, false);
        }
        ix.stale += expired.len();
        self.tidy(&mut ix);
        self.len.store(ix.map.len(), Ordering::Release);
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

    /// The filter only ever skips targets no ban matches: random inserts,
    /// removals and expiries (enough to trigger rebuilds and growth),
    /// checked against a scan of every ban after each step.
    #[test]
    fn filtered_lookups_match_a_full_scan() {
        let mut rng = 0x5EED_u64;
        let mut next = move || {
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^ (z >> 27)
        };
        let target = |r: u64| -> Target {
            let a = (r >> 8) as u32 & 0x0000_0FFF; // a small space, so bans and lookups meet
            match r % 5 {
                0 => format!("ip:10.0.{}.{}", a >> 8, a & 255).parse().unwrap(),
                1 => format!("ip:10.0.{}.0/24", a >> 8).parse().unwrap(),
                2 => format!("ip:2001:db8:{:x}::/48", a >> 4).parse().unwrap(),
                3 => format!("ip:2001:db8:{:x}:{:x}::/64", a >> 4, a & 15)
                    .parse()
                    .unwrap(),
                _ => format!("server:s{}.example", a & 63).parse().unwrap(),
            }
        };
        let b = Bans::new();
        for step in 0..6_000u64 {
            let r = next();
            let now = step;
            match r % 7 {
                0..=2 => {
                    let expires = (r % 3 == 0).then_some(now + (r >> 40) % 500);
                    b.insert(ban(&target(r).to_string(), expires));
                }
                3 => {
                    b.remove(&target(r));
                }
                4 => b.purge(now),
                _ => {}
            }
            let probe = target(next());
            let all = b.list_all();
            let want = all.iter().any(|x| {
                x.active(now)
                    && match (&x.target, &probe) {
                        (Target::Ip(net), Target::Ip(p)) => net.contains(p),
                        (t, p) => t == p,
                    }
            });
            assert_eq!(b.find(&probe, now).is_some(), want, "step {step}: {probe}");
        }
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
