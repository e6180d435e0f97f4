//! The Generic Cell Rate Algorithm on one `u64` of state.
//!
//! The state of a bucket is its *theoretical arrival time* (TAT): the instant
//! at which the bucket will be full again. A TAT at or before `now` means
//! "full" — exactly the same as no state at all — which is why idle keys can
//! be dropped and why memory follows active keys only.
//!
//! A request of cost `n` at `now` is allowed iff
//! `max(tat, now) + n·T − now ≤ burst·T`, where `T` is the emission interval
//! (period ÷ count). Allowed: `tat ← max(tat, now) + n·T`. Denied: nothing
//! changes, and the caller may retry after `max(tat, now) + n·T − burst·T − now`.

use crate::time::Nanos;

/// GCRA parameters: emission interval `T` and bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    emission: Nanos,
    burst: u64,
    tau: Nanos,
}

/// What a bucket looks like after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Units that could still be taken right now.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again (0 when full).
    pub reset: Nanos,
}

/// The outcome of one bucket's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the new TAT to store.
    Allow {
        /// The TAT after consuming.
        new_tat: Nanos,
    },
    /// Denied; retry after this many nanoseconds.
    Deny {
        /// Wait at least this long before the same request can pass.
        retry_after: Nanos,
    },
    /// The cost exceeds the bucket size: this request can never pass.
    Impossible,
}

impl Gcra {
    /// GCRA with emission interval `emission` ns and a bucket of `burst` units.
    pub fn new(emission: Nanos, burst: u64) -> Self {
        let emission = emission.max(1);
        let burst = burst.max(1);
        Self {
            emission,
            burst,
            tau: emission.saturating_mul(burst),
        }
    }

    /// Emission interval in nanoseconds.
    pub fn emission(&self) -> Nanos {
        self.emission
    }

    /// Bucket size in units.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// How long an empty bucket takes to refill (burst × emission
    /// interval, saturating): the span of time a bucket's state covers.
    pub fn span(&self) -> Nanos {
        self.tau
    }

    /// Decides a request of `cost` units against state `tat` at `now`.
    #[inline]
    pub fn check(&self, tat: Nanos, now: Nanos, cost: u64) -> Verdict {
        if cost > self.burst {
            return Verdict::Impossible;
        }
        let base = tat.max(now);
        let new_tat = base.saturating_add(cost.saturating_mul(self.emission));
        let allow_at = new_tat.saturating_sub(self.tau);
        if allow_at <= now {
            Verdict::Allow { new_tat }
        } else {
            Verdict::Deny {
                retry_after: allow_at - now,
            }
        }
    }

    /// The bucket as seen at `now` with state `tat`.
    #[inline]
    pub fn snapshot(&self, tat: Nanos, now: Nanos) -> Snapshot {
        let reset = tat.saturating_sub(now);
        let remaining = self.tau.saturating_sub(reset) / self.emission;
        Snapshot {
            remaining: remaining.min(self.burst),
            reset,
        }
    }

    /// Whether more than half of the bucket is used at `now` (a division-free
    /// test for the memory store's hot path).
    #[inline]
    pub fn half_used(&self, tat: Nanos, now: Nanos) -> bool {
        tat.saturating_sub(now) > self.tau / 2
    }

    /// The TAT before consuming `cost` units, given the TAT after: used to
    /// undo a consumption when a later bucket of the same decision denies.
    #[inline]
    pub fn undo(&self, tat: Nanos, cost: u64) -> Nanos {
        tat.saturating_sub(cost.saturating_mul(self.emission))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn n_at_once_then_one_per_interval() {
        // 10 per minute: 10 at once, then one every 6 s.
        let g = Gcra::new(6 * S, 10);
        let mut tat = 0;
        let now = 1_000 * S;
        for i in 0..10 {
            match g.check(tat, now, 1) {
                Verdict::Allow { new_tat } => tat = new_tat,
                v => panic!("request {i} denied: {v:?}"),
            }
        }
        assert_eq!(g.check(tat, now, 1), Verdict::Deny { retry_after: 6 * S });
        assert_eq!(
            g.snapshot(tat, now),
            Snapshot {
                remaining: 0,
                reset: 60 * S
            }
        );
        assert_eq!(g.check(tat, now + 6 * S - 1, 1), Verdict::Deny { retry_after: 1 });
        assert!(matches!(g.check(tat, now + 6 * S, 1), Verdict::Allow { .. }));
    }

    #[test]
    fn cost_n_and_impossible() {
        let g = Gcra::new(S, 5);
        assert!(matches!(g.check(0, 100 * S, 5), Verdict::Allow { .. }));
        assert_eq!(g.check(0, 100 * S, 6), Verdict::Impossible);
        let Verdict::Allow { new_tat } = g.check(0, 100 * S, 3) else {
            panic!()
        };
        assert_eq!(g.snapshot(new_tat, 100 * S).remaining, 2);
        assert_eq!(g.check(new_tat, 100 * S, 3), Verdict::Deny { retry_after: S });
        assert_eq!(g.undo(new_tat, 3), 100 * S);
    }

    #[test]
    fn idle_state_equals_no_state() {
        let g = Gcra::new(S, 3);
        let now = 50 * S;
        for stale in [0, 10 * S, now] {
            assert_eq!(g.check(stale, now, 2), g.check(0, now, 2));
            assert_eq!(
                g.snapshot(stale, now),
                Snapshot {
                    remaining: 3,
                    reset: 0
                }
            );
        }
    }
}
