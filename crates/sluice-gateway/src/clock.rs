//! Time on tokio's clock, so tests can pause and advance it.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_core::{Clock, Nanos};
use tokio::time::Instant;

/// Nanoseconds since `base` on tokio's clock (at least 1, so a fresh GCRA
/// state of 0 always reads as "full").
pub(crate) fn since(base: Instant) -> Nanos {
    u64::try_from(Instant::now().saturating_duration_since(base).as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// An engine [`Clock`] that reads tokio's clock, anchored to the Unix epoch
/// when created. Under `tokio::time::pause()` the engine's limits (the
/// per-IP `bandwidth` and `connection` rates) then follow paused time, as
/// the gateway's own per-connection budgets do. Production uses the
/// engine's coarse clock; this one is for tests and embedders that want
/// one time source.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: Instant,
    base_unix: Nanos,
}

impl TokioClock {
    /// A clock reading tokio's time from now on.
    pub fn new() -> Self {
        let base_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            base: Instant::now(),
            base_unix,
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Nanos {
        self.base_unix.saturating_add(since(self.base))
    }
}
