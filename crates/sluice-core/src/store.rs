//! The store: where bucket state and concurrency counts live.
//!
//! One call, [`Store::decide`], carries *everything* a decision touches — all
//! rate buckets, all concurrency slots and the lease to take — so that a
//! remote store (Redis, in `sluice-redis`) answers a decision with one atomic
//! server-side script in one round trip. The engine splits a decision into
//! [`crate::Engine::plan`] (pure), the store call, and
//! [`crate::Engine::finish`] (pure), so an asynchronous store can run the
//! middle step on its own runtime without the engine knowing about it.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::gcra::{Gcra, Snapshot, Verdict};
use crate::target::Target;
use crate::time::Nanos;

/// One rate bucket of a decision.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Keyed hash of (limit name, target): the memory store's key. The hasher
    /// is randomly seeded per engine, so nobody can choose colliding keys.
    pub key: u64,
    /// The limit's name: with `target`, a remote store's stable key.
    pub limit: &'static str,
    /// The target counted (`Target::Global` for global limits).
    pub target: Target,
    /// Rate parameters (after overrides).
    pub gcra: Gcra,
    /// Units to take.
    pub cost: u64,
    /// Shadow buckets are evaluated and consumed when they allow, but never
    /// deny the request.
    pub shadow: bool,
}

impl Bucket {
    /// The bucket as a store that keys by hash alone sees it.
    #[inline]
    pub fn keyed(&self) -> KeyedBucket {
        KeyedBucket {
            key: self.key,
            gcra: self.gcra,
            cost: self.cost,
            shadow: self.shadow,
        }
    }
}

/// A rate bucket known by its key alone: all a store that keys by hash (the
/// memory store) needs. 40 bytes and `Copy`, so the engine's fast path
/// builds a decision's buckets on the stack instead of a [`Batch`] of
/// [`Bucket`]s that carry names and targets for remote stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedBucket {
    /// Keyed hash of (limit name, target).
    pub key: u64,
    /// Rate parameters (after overrides).
    pub gcra: Gcra,
    /// Units to take.
    pub cost: u64,
    /// Evaluated and consumed when it allows, never denies.
    pub shadow: bool,
}

/// One keyed bucket after [`Store::decide_keyed`]: its TAT, and whether
/// this decision's consumption is in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyedResult {
    /// The bucket's TAT after the decision (or as it was read).
    pub tat: Nanos,
    /// Whether this decision consumed from it (committed).
    pub applied: bool,
}

impl KeyedResult {
    /// The bucket's result as [`Store::decide`] reports it: a consumed
    /// bucket allowed, any other judged as it now stands.
    #[inline]
    pub fn judge(self, gcra: Gcra, now: Nanos, cost: u64) -> BucketResult {
        if self.applied {
            return BucketResult {
                allowed: true,
                retry_after: None,
                snapshot: gcra.snapshot(self.tat, now),
            };
        }
        BucketResult::judge(gcra, self.tat, now, cost)
    }
}

/// One concurrency slot of a decision.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Keyed hash of (limit name, target).
    pub key: u64,
    /// The limit's name.
    pub limit: &'static str,
    /// The target counted.
    pub target: Target,
    /// At most this many holders at once.
    pub max: u32,
    /// Shadow slots are counted but never deny.
    pub shadow: bool,
}

/// A decision's buckets: inline up to four (a decision rarely has more), so
/// the decision path does not allocate.
pub type Buckets = SmallVec<[Bucket; 4]>;

/// A decision's concurrency slots, inline up to two.
pub type Slots = SmallVec<[Slot; 2]>;

/// A lease's identity: chosen by the engine, unguessable.
pub type LeaseId = u128;

/// What a decision asks of the store.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Rate buckets, all-or-nothing.
    pub buckets: Buckets,
    /// Concurrency slots, all-or-nothing together with the buckets.
    pub slots: Slots,
    /// The lease to record when everything allows, with its expiry.
    pub lease: Option<(LeaseId, Nanos)>,
    /// Evaluate only; consume nothing (a dry run).
    pub dry_run: bool,
}

/// One bucket's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketResult {
    /// Whether this bucket alone would allow the request.
    pub allowed: bool,
    /// If not: how long until it would (`None`: never, the cost exceeds the burst).
    pub retry_after: Option<Nanos>,
    /// The bucket after the decision.
    pub snapshot: Snapshot,
}

impl BucketResult {
    /// A bucket with state `tat` judged as it stands at `now`: whether
    /// `cost` more would pass, how long until it would, and its snapshot.
    /// How every store reports a bucket it did not consume from.
    #[inline]
    pub fn judge(gcra: Gcra, tat: Nanos, now: Nanos, cost: u64) -> Self {
        let snapshot = gcra.snapshot(tat, now);
        match gcra.check(tat, now, cost) {
            Verdict::Allow { .. } => Self {
                allowed: true,
                retry_after: None,
                snapshot,
            },
            Verdict::Deny { retry_after } => Self {
                allowed: false,
                retry_after: Some(retry_after),
                snapshot,
            },
            Verdict::Impossible => Self {
                allowed: false,
                retry_after: None,
                snapshot,
            },
        }
    }
}

/// One slot's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotResult {
    /// Whether a place was free.
    pub allowed: bool,
    /// Holders after the decision.
    pub held: u32,
}

/// The store's answer, index-aligned with the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Per bucket.
    pub buckets: SmallVec<[BucketResult; 4]>,
    /// Per slot.
    pub slots: SmallVec<[SlotResult; 2]>,
    /// Whether anything was consumed (and the lease recorded).
    pub committed: bool,
}

/// The largest nanosecond count a double holds exactly (2^53 − 1, about
/// 104 days): a store computing in doubles (Redis' Lua) is exact for
/// bucket spans up to this, so a policy on such a store must not go
/// beyond it.
pub const DOUBLE_EXACT_NANOS: u64 = (1 << 53) - 1;

/// Whether a store computing in doubles keeps this bucket exact (its span
/// at most [`DOUBLE_EXACT_NANOS`]). The config check and the service's
/// reload both ask this, for a Redis store.
pub fn exact_in_doubles(g: &crate::gcra::Gcra) -> bool {
    g.span() <= DOUBLE_EXACT_NANOS
}

/// A store failed (remote stores only; memory never fails).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something we do not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// Too many leases are held; refusing rather than growing without bound.
    #[error("lease table full ({0} leases)")]
    LeasesFull(usize),
}

/// State of one bucket for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// The stored TAT (0 when untracked).
    pub tat: Nanos,
}

/// Where decisions' state lives. Memory and Redis implement it; the same
/// contract tests run against both.
pub trait Store: Send + Sync + 'static {
    /// Decides a batch atomically: if every non-shadow bucket and slot allows,
    /// consume them all (plus every shadow bucket and slot that allows) and
    /// record the lease; otherwise change nothing.
    fn decide(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError>;

    /// Releases a lease; `false` if it was unknown or already expired.
    fn release(&self, lease: LeaseId, now: Nanos) -> Result<bool, StoreError>;

    /// Releases a lease without waiting for the answer: what a dropped
    /// [`crate::Guard`] does. A remote store sends the release and returns
    /// (a guard dropped on an event loop must not hold the loop for a
    /// round trip); the default is [`Store::release`], answer ignored.
    fn release_detached(&self, lease: LeaseId, now: Nanos) {
        let _ = self.release(lease, now);
    }

    /// The stored TAT of a bucket (for `inspect`), without changing it.
    fn peek(&self, bucket: &Bucket, now: Nanos) -> Result<Nanos, StoreError>;

    /// Current holders of a slot.
    fn held(&self, slot: &Slot, now: Nanos) -> Result<u32, StoreError>;

    /// Keys holding live state (an estimate is fine; used for metrics).
    fn tracked_keys(&self, now: Nanos) -> u64;

    /// Leases currently held.
    fn active_leases(&self, now: Nanos) -> u64;

    /// A hint, given as soon as a decision knows a bucket's key and before
    /// it asks [`Store::decide`]: start fetching that key's state. A memory
    /// store touches the key's cache line so the miss overlaps with the rest
    /// of the planning; remote stores ignore it.
    #[inline]
    fn prefetch(&self, _key: u64) {}

    /// The fast path for stores that key by hash alone: decides rate
    /// buckets only (no slots, no lease) with [`Store::decide`]'s
    /// all-or-nothing semantics, writes each bucket's [`KeyedResult`] to
    /// `results` (same length as `buckets`) and answers whether it
    /// committed. `None` (the default): this store needs limit names and
    /// targets (Redis builds its keys from them); the engine then plans a
    /// full [`Batch`] and calls [`Store::decide`].
    #[inline]
    fn decide_keyed(
        &self,
        _buckets: &[KeyedBucket],
        _dry_run: bool,
        _now: Nanos,
        _results: &mut [KeyedResult],
    ) -> Option<bool> {
        None
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn decide(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError> {
        (**self).decide(batch, now)
    }
    fn release(&self, lease: LeaseId, now: Nanos) -> Result<bool, StoreError> {
        (**self).release(lease, now)
    }
    fn peek(&self, bucket: &Bucket, now: Nanos) -> Result<Nanos, StoreError> {
        (**self).peek(bucket, now)
    }
    fn held(&self, slot: &Slot, now: Nanos) -> Result<u32, StoreError> {
        (**self).held(slot, now)
    }
    fn tracked_keys(&self, now: Nanos) -> u64 {
        (**self).tracked_keys(now)
    }
    fn active_leases(&self, now: Nanos) -> u64 {
        (**self).active_leases(now)
    }
    fn prefetch(&self, key: u64) {
        (**self).prefetch(key)
    }
    fn decide_keyed(
        &self,
        buckets: &[KeyedBucket],
        dry_run: bool,
        now: Nanos,
        results: &mut [KeyedResult],
    ) -> Option<bool> {
        (**self).decide_keyed(buckets, dry_run, now, results)
    }
}
