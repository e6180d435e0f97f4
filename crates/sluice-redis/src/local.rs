//! What an instance keeps locally to spare Redis round trips: targets known
//! to be denied, and (optionally) tokens taken from Redis in advance.
//!
//! # Denied cache
//!
//! When Redis denies a bucket, the bucket's TAT at that moment is remembered
//! (in this instance's clock) until it passes. A later request whose GCRA
//! check against that remembered TAT already denies is denied here, without
//! asking Redis: the real TAT can only be later (other instances consume,
//! nothing refunds), so Redis would deny it too. It never denies what Redis
//! would allow, and a denied request consumes nothing anyway. Limits of the
//! decision that the cache does not know are reported as full.
//!
//! # Local admission
//!
//! With `local_admission = n > 1`, a decision that goes to Redis asks, for
//! every bucket, for up to `n − 1` extra requests' worth of units beyond its
//! own cost; the script grants what the bucket holds. Later decisions of the
//! same buckets are admitted from those units without Redis until they run
//! out or `local_hold` passes. Units are taken from Redis *before* they are
//! handed out, so the shared count is never exceeded; what changes is *when*
//! they are spent. Bounds, per instance and bucket:
//!
//! - overshoot: in any window, at most `(n − 1)·cost` admissions more than an
//!   exact limiter would allow (units taken earlier, spent in the window);
//! - undershoot: at most `(n − 1)·cost` units taken and never used (they
//!   lapse after `local_hold`), so other instances may be denied early.
//!
//! Only plain rate decisions use it: no concurrency slots, no lease, no
//! shadow limits, no dry runs.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_core::gcra::{Snapshot, Verdict};
use sluice_core::store::{Batch, BucketResult, Outcome, SlotResult};
use sluice_core::Nanos;

const SHARDS: usize = 16;
/// Entries per shard, each kind: bounded memory under a flood of targets.
const SHARD_CAP: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Pool {
    units: u64,
    /// The bucket's TAT after the fetch, in local time.
    tat: Nanos,
    until: Nanos,
}

#[derive(Debug, Default)]
struct Shard {
    denied: HashMap<u64, Nanos>,
    pools: HashMap<u64, Pool>,
}

#[derive(Debug)]
pub(crate) struct Local {
    shards: Box<[Mutex<Shard>]>,
    deny_cache: bool,
    batch: u64,
    hold: Nanos,
}

impl Local {
    pub(crate) fn new(deny_cache: bool, local_admission: u32, hold: Nanos) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            deny_cache,
            batch: u64::from(local_admission.max(1)),
            hold,
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(key >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A denial known without Redis, if any.
    pub(crate) fn denied(&self, batch: &Batch, now: Nanos) -> Option<Outcome> {
        if !self.deny_cache || batch.dry_run {
            return None;
        }
        let mut tats: smallvec::SmallVec<[Nanos; 4]> = smallvec::SmallVec::new();
        let mut hit = false;
        for b in &batch.buckets {
            let mut sh = self.shard(b.key);
            let tat = match sh.denied.get(&b.key).copied() {
                Some(t) if t <= now => {
                    sh.denied.remove(&b.key);
                    0
                }
                Some(t) => t,
                None => 0,
            };
            if !b.shadow && tat > 0 && !matches!(b.gcra.check(tat, now, b.cost), Verdict::Allow { .. }) {
                hit = true;
            }
            tats.push(tat);
        }
        if !hit {
            return None;
        }
        Some(Outcome {
            buckets: batch
                .buckets
                .iter()
                .zip(&tats)
                .map(|(b, &t)| BucketResult::judge(b.gcra, t, now, b.cost))
                .collect(),
            slots: batch
                .slots
                .iter()
                .map(|_| SlotResult {
                    allowed: true,
                    held: 0,
                })
                .collect(),
            committed: false,
        })
    }

    fn eligible(&self, batch: &Batch) -> bool {
        self.batch > 1
            && !batch.dry_run
            && batch.slots.is_empty()
            && batch.lease.is_none()
            && !batch.buckets.is_empty()
            && batch.buckets.iter().all(|b| !b.shadow && b.cost > 0)
    }

    /// The most units a bucket's pool may hold: `(n − 1)·cost`.
    fn pool_cap(&self, cost: u64) -> u64 {
        (self.batch - 1).saturating_mul(cost)
    }

    /// Extra units to ask Redis for, per bucket: what tops its pool up to
    /// `(n − 1)·cost` (a bucket whose decisions keep going to Redis because
    /// another bucket of theirs has run dry must not pile up units).
    pub(crate) fn extras(&self, batch: &Batch, now: Nanos) -> smallvec::SmallVec<[u64; 4]> {
        let eligible = self.eligible(batch);
        batch
            .buckets
            .iter()
            .map(|b| {
                if !eligible {
                    return 0;
                }
                let held = self
                    .shard(b.key)
                    .pools
                    .get(&b.key)
                    .filter(|p| p.until > now)
                    .map_or(0, |p| p.units);
                self.pool_cap(b.cost).saturating_sub(held)
            })
            .collect()
    }

    /// Admits from units taken earlier, if every bucket has enough.
    pub(crate) fn admit(&self, batch: &Batch, now: Nanos) -> Option<Outcome> {
        if !self.eligible(batch) {
            return None;
        }
        let ok = batch.buckets.iter().all(|b| {
            self.shard(b.key)
                .pools
                .get(&b.key)
                .is_some_and(|p| p.until > now && p.units >= b.cost)
        });
        if !ok {
            return None;
        }
        let mut buckets = smallvec::SmallVec::new();
        for b in &batch.buckets {
            let mut sh = self.shard(b.key);
            let p = sh.pools.get_mut(&b.key)?;
            // Another thread may have spent them since the check: then
            // this decision goes to Redis (units already taken stay spent,
            // stricter).
            if p.units < b.cost {
                return None;
            }
            p.units -= b.cost;
            let s = b.gcra.snapshot(p.tat, now);
            buckets.push(BucketResult {
                allowed: true,
                retry_after: None,
                snapshot: Snapshot {
                    remaining: s.remaining.saturating_add(p.units).min(b.gcra.burst()),
                    reset: s.reset,
                },
            });
        }
        Some(Outcome {
            buckets,
            slots: smallvec::SmallVec::new(),
            committed: true,
        })
    }

    /// Learns from Redis' answer: denied buckets' TATs, granted units.
    pub(crate) fn learn(&self, batch: &Batch, out: &Outcome, granted: &[u64], now: Nanos) {
        for (i, (b, r)) in batch.buckets.iter().zip(&out.buckets).enumerate() {
            if self.deny_cache && !b.shadow && !r.allowed && r.retry_after.is_some() && r.snapshot.reset > 0 {
                let mut sh = self.shard(b.key);
                if sh.denied.len() >= SHARD_CAP {
                    sh.denied.retain(|_, t| *t > now);
                }
                if sh.denied.len() < SHARD_CAP {
                    sh.denied.insert(b.key, now.saturating_add(r.snapshot.reset));
                }
            }
            let got = granted.get(i).copied().unwrap_or(0);
            if got > 0 {
                let mut sh = self.shard(b.key);
                if sh.pools.len() >= SHARD_CAP {
                    sh.pools.retain(|_, p| p.until > now);
                }
                if sh.pools.len() < SHARD_CAP {
                    // Units held stay to their first deadline (topping up
                    // does not extend it), and never above the cap: what
                    // concurrent fetches granted beyond it lapses unused
                    // (stricter, never looser).
                    let (left, until) = sh
                        .pools
                        .get(&b.key)
                        .filter(|p| p.until > now)
                        .map_or((0, now.saturating_add(self.hold)), |p| (p.units, p.until));
                    sh.pools.insert(
                        b.key,
                        Pool {
                            units: left.saturating_add(got).min(self.pool_cap(b.cost)),
                            tat: now.saturating_add(r.snapshot.reset),
                            until,
                        },
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::store::Bucket;
    use sluice_core::{Rate, Target};

    fn bucket(key: u64) -> Bucket {
        Bucket {
            key,
            limit: sluice_core::policy::intern("client.target.login.ip"),
            target: Target::Global,
            gcra: Rate::new(1000, std::time::Duration::from_secs(1))
                .expect("a rate")
                .gcra(),
            cost: 1,
            shadow: false,
        }
    }

    /// A bucket whose decisions keep going to Redis (its partner bucket
    /// has run dry) never holds more than `(n − 1)·cost` units, and topping
    /// up does not extend how long they are held.
    #[test]
    fn pools_hold_at_most_n_minus_one_costs() {
        let local = Local::new(false, 5, 1_000);
        let batch = Batch {
            buckets: smallvec::smallvec![bucket(1), bucket(2)],
            ..Batch::default()
        };
        let out = |allowed: [bool; 2]| Outcome {
            buckets: allowed
                .iter()
                .map(|&a| BucketResult {
                    allowed: a,
                    retry_after: None,
                    snapshot: Snapshot {
                        remaining: 0,
                        reset: 0,
                    },
                })
                .collect(),
            slots: smallvec::SmallVec::new(),
            committed: false,
        };
        for t in 0..50u64 {
            let extras = local.extras(&batch, t);
            // Redis grants bucket 1 everything asked, bucket 2 nothing.
            local.learn(&batch, &out([true, true]), &[extras[0], 0], t);
            let held = local.shard(1).pools.get(&1).map_or(0, |p| p.units);
            assert!(held <= 4, "pool grew to {held} at {t}");
            // And again, as if two fetches had raced.
            local.learn(&batch, &out([true, true]), &[4, 0], t);
            let p = local.shard(1).pools.get(&1).copied().expect("a pool");
            assert!(p.units <= 4, "raced pool grew to {}", p.units);
            assert_eq!(p.until, 1_000, "topping up extended the hold");
        }
    }
}
