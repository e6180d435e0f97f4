//! Time, injected: the engine never reads a clock it was not given.
//!
//! All engine times are [`Nanos`]: nanoseconds on a monotonic clock anchored to
//! the Unix epoch when the clock was created. Anchoring to the epoch lets ban
//! expiries be persisted and compared across restarts and across instances,
//! while staying monotonic inside one process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, as seen by a [`Clock`].
pub type Nanos = u64;

/// Converts a duration to nanoseconds, saturating at `u64::MAX` (584 years).
pub fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A source of time for the engine.
///
/// Implementations must be monotonic: `now()` never goes backwards.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Nanos;
}

fn unix_now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(nanos)
        .unwrap_or(0)
}

/// A precise monotonic clock: `Instant::now()` offset to the Unix epoch at creation.
///
/// Costs a `clock_gettime` per call (~15–25 ns); see [`CoarseClock`] for the hot path.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    base_instant: Instant,
    base_unix: Nanos,
}

impl MonotonicClock {
    /// A clock reading the system's monotonic time.
    pub fn new() -> Self {
        Self {
            base_instant: Instant::now(),
            base_unix: unix_now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        self.base_unix.saturating_add(nanos(self.base_instant.elapsed()))
    }
}

/// A clock that is read with one relaxed atomic load (~0.5 ns).
///
/// A background thread refreshes it every `resolution` (1 ms by default). The
/// engine's limits are seconds to days long, so a millisecond of staleness is
/// far below anything a caller can observe, and it turns the hottest call on
/// the decision path into a load. The thread stops when the last handle drops.
#[derive(Debug, Clone)]
pub struct CoarseClock {
    now: Arc<AtomicU64>,
    /// Set only when the refresher thread could not be started: then every
    /// read is precise rather than frozen.
    fallback: Option<MonotonicClock>,
}

impl CoarseClock {
    /// Starts a coarse clock refreshed every millisecond.
    pub fn new() -> Self {
        Self::with_resolution(Duration::from_millis(1))
    }

    /// Starts a coarse clock refreshed every `resolution`.
    pub fn with_resolution(resolution: Duration) -> Self {
        let precise = MonotonicClock::new();
        let now = Arc::new(AtomicU64::new(precise.now()));
        let weak = Arc::downgrade(&now);
        let updater = precise.clone();
        // The refresher holds only a weak reference, so dropping every handle stops it.
        let spawned = std::thread::Builder::new()
            .name("sluice-clock".into())
            .spawn(move || loop {
                std::thread::sleep(resolution);
                let Some(now) = weak.upgrade() else { break };
                now.fetch_max(updater.now(), Ordering::Relaxed);
            });
        Self {
            now,
            fallback: spawned.is_err().then_some(precise),
        }
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Nanos {
        match &self.fallback {
            None => self.now.load(Ordering::Relaxed),
            Some(precise) => precise.now(),
        }
    }
}

/// A clock that moves only when told to: for tests and simulations.
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock starting at a fixed, realistic instant (2026-01-01T00:00:00Z).
    pub fn new() -> Self {
        Self::starting_at(1_767_225_600 * 1_000_000_000)
    }

    /// A fake clock starting at `start`.
    pub fn starting_at(start: Nanos) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start)),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(nanos(d), Ordering::SeqCst);
    }

    /// Moves the clock forward by `n` nanoseconds.
    pub fn advance_nanos(&self, n: Nanos) {
        self.now.fetch_add(n, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(6));
        assert_eq!(c.now() - t0, 6_000_000_000);
    }

    #[test]
    fn monotonic_clock_is_near_wall_time_and_monotonic() {
        let c = MonotonicClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        let wall = unix_now();
        assert!(wall.abs_diff(a) < 5_000_000_000);
    }

    #[test]
    fn coarse_clock_reads_near_precise_time() {
        let c = CoarseClock::new();
        let p = MonotonicClock::new();
        // Anchors differ by at most the creation gap plus one refresh period.
        assert!(c.now().abs_diff(p.now()) < 1_000_000_000);
    }
}
