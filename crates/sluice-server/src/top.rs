//! The most active targets over a recent window, in bounded memory.
//!
//! Sixteen shards (by target hash) each keep at most `PER_SHARD` targets with
//! their request and denial counts for the current and the previous window.
//! When a shard is full, a new target replaces the one with the fewest
//! requests and inherits its counts (the *space-saving* algorithm): heavy
//! hitters are never lost under a flood of one-off addresses, and counts
//! can only over-estimate.
//!
//! Finding that replacement is a scan of the shard, so a full shard keeps a
//! short list of targets that held the minimum counts at the last scan. Counts
//! only grow and a newcomer starts above the minimum it replaced, so a listed
//! target whose counts are unchanged still holds the minimum: under a flood
//! of fresh addresses one scan serves up to `VICTIMS` replacements instead of
//! one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Duration;

use sluice_core::{Nanos, Target};

const SHARDS: usize = 16;
const PER_SHARD: usize = 256;
/// Replacement candidates kept per scan of a full shard.
const VICTIMS: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Counts {
    // Field order is the replacement order: fewest requests, then fewest
    // denials.
    requests: u64,
    denials: u64,
}

/// Targets come from clients: foldhash's keyed quality hasher, seeded per
/// process, not SipHash (three hashes per request recorded were ~2 % of
/// the HTTP gateway's CPU); each shard is bounded anyway.
type Counted = HashMap<Target, Counts, foldhash::quality::RandomState>;

#[derive(Debug, Default)]
struct Shard {
    started: Nanos,
    current: Counted,
    previous: Counted,
    /// Targets of `current` that held the minimum counts, `floor`, when
    /// last scanned.
    victims: Vec<Target>,
    floor: Counts,
}

impl Shard {
    /// Removes a target holding the minimum counts and returns its counts.
    fn take_victim(&mut self) -> Option<Counts> {
        loop {
            while let Some(t) = self.victims.pop() {
                if self.current.get(&t) == Some(&self.floor) {
                    self.current.remove(&t);
                    return Some(self.floor);
                }
            }
            let floor = self.current.values().min().copied()?;
            self.floor = floor;
            self.victims.extend(
                self.current
                    .iter()
                    .filter(|(_, c)| **c == floor)
                    .take(VICTIMS)
                    .map(|(t, _)| t.clone()),
            );
        }
    }
}

/// One row of `top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// The target.
    pub target: Target,
    /// Requests over the last one to two windows.
    pub requests: u64,
    /// Denials over the same span.
    pub denials: u64,
}

/// What to sort `top` by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    /// Most denied first.
    Denials,
    /// Most requests first.
    Requests,
}

/// Recent activity per target.
#[derive(Debug)]
pub struct TopTracker {
    shards: Vec<Mutex<Shard>>,
    window: Nanos,
    hasher: foldhash::quality::RandomState,
}

impl TopTracker {
    /// A tracker over windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window: sluice_core::time::nanos(window).max(1),
            hasher: Default::default(),
        }
    }

    fn shard(&self, t: &Target) -> &Mutex<Shard> {
        let mut h = self.hasher.build_hasher();
        t.hash(&mut h);
        let i = (std::hash::Hasher::finish(&h) as usize) % SHARDS;
        &self.shards[i]
    }

    fn rotate(&self, s: &mut Shard, now: Nanos) {
        if now.saturating_sub(s.started) >= self.window {
            let two_windows_ago = now.saturating_sub(s.started) >= 2 * self.window;
            s.previous = if two_windows_ago {
                Counted::default()
            } else {
                std::mem::take(&mut s.current)
            };
            s.current.clear();
            s.victims.clear();
            s.started = now;
        }
    }

    /// Counts one request by `t` (denied or not).
    pub fn record(&self, t: &Target, denied: bool, now: Nanos) {
        let mut s = self.shard(t).lock().unwrap_or_else(|p| p.into_inner());
        self.rotate(&mut s, now);
        let add = Counts {
            requests: 1,
            denials: u64::from(denied),
        };
        if let Some(c) = s.current.get_mut(t) {
            c.requests += add.requests;
            c.denials += add.denials;
            return;
        }
        let mut start = Counts::default();
        if s.current.len() >= PER_SHARD {
            start = s.take_victim().unwrap_or_default();
        }
        s.current.insert(
            t.clone(),
            Counts {
                requests: start.requests + add.requests,
                denials: start.denials + add.denials,
            },
        );
    }

    /// The `limit` most active targets by `by`.
    pub fn top(&self, by: TopBy, limit: usize, now: Nanos) -> Vec<Activity> {
        let mut all: HashMap<Target, Counts> = HashMap::new();
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            self.rotate(&mut s, now);
            for (t, c) in s.current.iter().chain(s.previous.iter()) {
                let e = all.entry(t.clone()).or_default();
                e.requests += c.requests;
                e.denials += c.denials;
            }
        }
        let mut v: Vec<Activity> = all
            .into_iter()
            .map(|(target, c)| Activity {
                target,
                requests: c.requests,
                denials: c.denials,
            })
            .collect();
        v.sort_by(|a, b| {
            let key = |x: &Activity| match by {
                TopBy::Denials => (x.denials, x.requests),
                TopBy::Requests => (x.requests, x.denials),
            };
            key(b).cmp(&key(a)).then_with(|| a.target.cmp(&b.target))
        });
        v.truncate(limit);
        v
    }

    /// Every tracked target satisfying `pred` (to resolve hashed labels).
    pub fn find(&self, pred: impl Fn(&Target) -> bool) -> Option<Target> {
        for shard in &self.shards {
            let s = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = s.current.keys().chain(s.previous.keys()).find(|t| pred(t)) {
                return Some(t.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_survive_a_flood_of_one_offs() {
        let top = TopTracker::new(Duration::from_secs(60));
        let heavy: Target = "ip:203.0.113.7".parse().unwrap();
        for i in 0..100_000u32 {
            if i % 10 == 0 {
                top.record(&heavy, true, 1);
            }
            let t = Target::Ip(std::net::IpAddr::from(i.to_be_bytes()).into());
            top.record(&t, false, 1);
        }
        let rows = top.top(TopBy::Denials, 3, 2);
        assert_eq!(rows[0].target, heavy);
        assert!(rows[0].denials >= 10_000);
    }

    #[test]
    fn counts_only_over_estimate_and_sum_to_the_requests() {
        let top = TopTracker::new(Duration::from_secs(60));
        let mut truth: HashMap<Target, u64> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let n = 50_000u64;
        for _ in 0..n {
            // xorshift: a skewed mix of repeat and one-off addresses.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = if x % 4 == 0 { x % 50 } else { x % 100_000 } as u32;
            let t = Target::Ip(std::net::IpAddr::from(id.to_be_bytes()).into());
            top.record(&t, id % 2 == 0, 1);
            *truth.entry(t).or_default() += 1;
        }
        let rows = top.top(TopBy::Requests, usize::MAX, 2);
        assert_eq!(rows.len(), SHARDS * PER_SHARD);
        assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), n);
        for r in &rows {
            assert!(r.requests >= truth[&r.target], "{r:?}");
        }
        let mut heavy: Vec<_> = truth.iter().filter(|(_, c)| **c > 300).collect();
        heavy.sort();
        assert!(!heavy.is_empty());
        for (t, _) in heavy {
            assert!(rows.iter().any(|r| r.target == *t), "{t} lost");
        }
    }

    #[test]
    fn windows_rotate() {
        let top = TopTracker::new(Duration::from_secs(60));
        let t: Target = "user:@a:example.org".parse().unwrap();
        top.record(&t, false, 0);
        assert_eq!(
            top.top(TopBy::Requests, 10, 61_000_000_000).len(),
            1,
            "previous window kept"
        );
        assert!(
            top.top(TopBy::Requests, 10, 200_000_000_000).is_empty(),
            "old windows dropped"
        );
    }
}
