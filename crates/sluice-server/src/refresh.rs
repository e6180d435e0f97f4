//! Keeping URL sources current: one task per source fetches it every
//! `refresh` (±10 %, so a fleet restarted together does not hit the
//! publisher in the same second), backs off after a failure — from
//! `max(1 min, refresh / 32)`, doubling, up to `refresh`, never sooner than
//! a `Retry-After` asked — and reports (optionally drops) a list that has
//! not been refreshed for `stale_after`. Every failure is logged once, at
//! its back-off step, with the wait before the next attempt.
//!
//! Time is tokio's, so tests pause the clock and run hours of refreshes
//! in no time.

use std::collections::HashMap;
use std::time::Duration;

use sluice_config::{BlocklistSource, SourceLocation};
use tokio::time::Instant;

use crate::app::App;
use crate::fetch::{self, Fetched, Get};

/// What one refresh of a source did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// A new body was taken: this many entries are in force.
    Accepted(usize),
    /// `304`: the set in force is current.
    NotModified,
    /// Nothing taken (the last good set stays): the kind counted, why,
    /// and the `Retry-After` the publisher asked.
    Failed {
        /// `sluice_blocklist_fetches_total`'s `result` label.
        kind: &'static str,
        /// Why.
        error: String,
        /// The publisher's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

/// A fraction in `[0, 1)`, from a randomly seeded hasher.
fn unit_random() -> f64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let h = foldhash::fast::RandomState::default().hash_one(N.fetch_add(1, Ordering::Relaxed));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` scaled by a factor in `[0.9, 1.1)`.
fn jitter(d: Duration, r: f64) -> Duration {
    d.mul_f64(0.9 + 0.2 * r)
}

/// The wait before the next fetch of a source refreshed every `refresh`,
/// after `failures` failures in a row (0: the last fetch worked), with the
/// publisher's `retry_after`; `r` in `[0, 1)` is the jitter.
pub fn next_delay(refresh: Duration, failures: u32, retry_after: Option<Duration>, r: f64) -> Duration {
    if failures == 0 {
        return jitter(refresh, r);
    }
    let first = (refresh / 32).max(Duration::from_secs(60)).min(refresh);
    let step = first
        .checked_mul(1u32 << (failures - 1).min(20))
        .unwrap_or(refresh)
        .min(refresh);
    jitter(step, r).max(retry_after.unwrap_or_default())
}

/// Stops the source tasks when the supervisor ends.
struct Tasks(HashMap<String, (BlocklistSource, tokio::task::AbortHandle)>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, (_, t)) in self.0.drain() {
            t.abort();
        }
    }
}

impl App {
    /// Fetches URL source `name` now (conditionally), and swaps the result
    /// in when a body is taken. Path sources are re-read.
    pub async fn refresh_source(&self, name: &str) -> Option<Refreshed> {
        let cfg = self.config();
        let c = cfg.blocklist.sources.iter().find(|s| s.name == name)?.clone();
        let SourceLocation::Url(url) = &c.location else {
            let app = self.clone();
            let n = name.to_owned();
            let _ = tokio::task::spawn_blocking(move || app.refresh_lists(Some(&n))).await;
            let st = self.lists().get(name)?;
            return Some(match st.last_error {
                None => Refreshed::Accepted(st.set.map_or(0, |s| s.len())),
                Some(error) => Refreshed::Failed {
                    kind: "refused",
                    error,
                    retry_after: None,
                },
            });
        };
        // One fetch of a source at a time (the loop and the admin API).
        let lock = self.lists().fetch_lock(name);
        let _one = lock.lock().await;
        let (_, validators) = self.lists().for_fetch(&c)?;
        let token = match c.token_file.as_deref().map(fetch::read_token).transpose() {
            Ok(t) => t,
            Err(e) => return Some(self.fetch_failed(&c, e.kind(), e.to_string(), None)),
        };
        let got = self
            .lists()
            .client()
            .get(Get {
                url,
                validators: validators.as_ref(),
                token: token.as_deref(),
                max_bytes: c.max_bytes,
                timeout: c.timeout,
            })
            .await;
        let outcome = match got {
            Ok(Fetched::NotModified) => {
                if self.lists().not_modified(&c) {
                    self.swap_lists();
                }
                Refreshed::NotModified
            }
            Ok(Fetched::Body { body, validators }) => {
                let app = self.clone();
                let c2 = c.clone();
                let taken =
                    tokio::task::spawn_blocking(move || app.lists().accept(&c2, &body, validators)).await;
                match taken {
                    Ok(Ok(n)) => {
                        self.swap_lists();
                        tracing::info!(source = %c.name, entries = n, "blocklist refreshed");
                        Refreshed::Accepted(n)
                    }
                    // (Counted by `accept`.)
                    Ok(Err(e)) => Refreshed::Failed {
                        kind: e.kind(),
                        error: e.to_string(),
                        retry_after: None,
                    },
                    Err(e) => self.fetch_failed(&c, "internal", e.to_string(), None),
                }
            }
            Err(e) => self.fetch_failed(&c, e.kind(), e.to_string(), e.retry_after()),
        };
        Some(outcome)
    }

    fn fetch_failed(
        &self,
        c: &BlocklistSource,
        kind: &'static str,
        error: String,
        retry_after: Option<Duration>,
    ) -> Refreshed {
        self.lists().failed(c, kind, error.clone());
        Refreshed::Failed {
            kind,
            error,
            retry_after,
        }
    }

    /// Swaps the sources' sets in force into the engine (under the reload
    /// lock, so a reload and a refresh do not interleave).
    pub(crate) fn swap_lists(&self) {
        let _one = self.inner.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = self.config();
        self.inner
            .engine
            .set_blocklists(self.inner.lists.current(&cfg.blocklist));
    }

    /// Drops stale IP lists that ask for it, logging each once.
    fn check_stale(&self) {
        let dropped = self.lists().drop_stale();
        for name in &dropped {
            tracing::warn!(source = %name, "blocklist stale: not refreshed within stale_after; drop_when_stale takes it out of force until a refresh succeeds");
        }
        if !dropped.is_empty() {
            self.swap_lists();
        }
    }

    /// `sluice blocklist refresh [NAME]`: every source (or `name`) fetched
    /// or re-read now.
    pub async fn refresh_now(&self, name: Option<&str>) {
        let cfg = self.config();
        for c in cfg
            .blocklist
            .sources
            .iter()
            .filter(|c| name.is_none_or(|n| n == c.name))
        {
            if let Some(Refreshed::Failed { error, .. }) = self.refresh_source(&c.name).await {
                tracing::warn!(source = %c.name, "blocklist refresh: nothing taken, the last good set stays: {error}");
            }
        }
    }

    /// One URL source's loop (ends when the source leaves the config).
    async fn source_loop(self, c: BlocklistSource) {
        let mut stale_said = false;
        // A set from the cache is due when its age reaches `refresh`;
        // without one, soon (a few seconds of jitter).
        let mut next = match self.lists().get(&c.name).and_then(|s| s.fresh_at) {
            Some(at) => at + jitter(c.refresh, unit_random()),
            None => Instant::now() + Duration::from_secs(5).mul_f64(unit_random()),
        };
        let mut failures = 0u32;
        loop {
            let fresh_at = self.lists().get(&c.name).and_then(|s| s.fresh_at);
            let stale_at = fresh_at.map(|t| t + c.stale_after);
            let wake = match stale_at {
                Some(s) if !stale_said && s < next => s + Duration::from_millis(1),
                _ => next,
            };
            tokio::time::sleep_until(wake).await;
            let stale = self.lists().get(&c.name).is_none_or(|s| s.stale());
            if stale && !stale_said {
                stale_said = true;
                tracing::warn!(source = %c.name, "blocklist stale: no successful refresh within stale_after");
            }
            self.check_stale();
            if Instant::now() < next {
                continue;
            }
            let Some(outcome) = self.refresh_source(&c.name).await else {
                return;
            };
            match outcome {
                Refreshed::Accepted(_) | Refreshed::NotModified => {
                    failures = 0;
                    stale_said = false;
                    next = Instant::now() + next_delay(c.refresh, 0, None, unit_random());
                }
                Refreshed::Failed {
                    kind,
                    error,
                    retry_after,
                } => {
                    failures += 1;
                    let wait = next_delay(c.refresh, failures, retry_after, unit_random());
                    tracing::warn!(source = %c.name, kind, attempt = failures, "blocklist fetch failed, the last good set stays; next attempt in {}s: {error}", wait.as_secs());
                    next = Instant::now() + wait;
                }
            }
            self.check_stale();
        }
    }

    /// Runs a refresh loop for every URL source, restarting those a reload
    /// changed; ends (and stops them) when dropped.
    pub async fn run_fetchers(self) {
        let mut tasks = Tasks(HashMap::new());
        loop {
            let cfg = self.config();
            let wanted: Vec<&BlocklistSource> = cfg
                .blocklist
                .sources
                .iter()
                .filter(|c| matches!(c.location, SourceLocation::Url(_)))
                .collect();
            tasks.0.retain(|name, (c, t)| {
                let keep = wanted.iter().any(|w| **w == *c);
                if !keep {
                    tracing::debug!(source = %name, "blocklist fetcher stopped");
                    t.abort();
                }
                keep
            });
            for c in wanted {
                if !tasks.0.contains_key(&c.name) {
                    let t = tokio::spawn(self.clone().source_loop(c.clone()));
                    tasks.0.insert(c.name.clone(), (c.clone(), t.abort_handle()));
                }
            }
            self.inner.lists_changed.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_the_refresh_and_honours_retry_after() {
        let h = Duration::from_secs(3600);
        assert_eq!(next_delay(h, 0, None, 0.5), h);
        assert_eq!(next_delay(h, 1, None, 0.5), Duration::from_millis(112_500));
        assert_eq!(next_delay(h, 2, None, 0.5), Duration::from_secs(225));
        assert_eq!(next_delay(h, 6, None, 0.5), h);
        assert_eq!(next_delay(h, 40, None, 0.5), h);
        let ra = Duration::from_secs(7200);
        assert_eq!(next_delay(h, 1, Some(ra), 0.5), ra);
        assert!(next_delay(h, 0, None, 0.0) >= h.mul_f64(0.9));
        assert!(next_delay(h, 0, None, 0.999_999) < h.mul_f64(1.1));
    }
}
