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

    /// Extra units to ask Redis for, per bucket.
    pub(crate) fn extras(&self, batch: &Batch) -> smallvec::SmallVec<[u64; 4]> {
        let eligible = self.eligible(batch);
        batch
            .buckets
            .iter()
            .map(|b| {
                if eligible {
                    (self.batch - 1).saturating_mul(b.cost)
                } else {
                    0
                }
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
                    let left = sh
                        .pools
                        .get(&b.key)
                        .filter(|p| p.until > now)
                        .map_or(0, |p| p.units);
                    sh.pools.insert(
                        b.key,
                        Pool {
                            units: left.saturating_add(got),
                            tat: now.saturating_add(r.snapshot.reset),
                            until: now.saturating_add(self.hold),
                        },
                    );
                }
            }
        }
    }
}
