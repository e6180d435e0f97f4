//! Shared bans: one Redis hash, merged into each instance's [`Bans`].
//!
//! Every instance runs [`RedisStore::sync_bans`] every `interval`: it
//! reads the hash (`{prefix}bans`, field = target, value = encoded ban) and
//! merges three ways against what it saw last time, so neither side's
//! change is lost and nothing flaps:
//!
//! - a ban added or changed here (admin API, automatic ban) is written to
//!   the hash; one lifted or expired here is deleted from it;
//! - a ban added or changed in the hash (by another instance) is applied
//!   here; one deleted from the hash is lifted here.
//!
//! A ban placed on one instance is therefore in force on every other
//! within two intervals (one for the placer to write it, one for the others
//! to read it): 2 s with the default 1 s.
//!
//! A hash that vanished (Redis restarted without persistence, or was
//! flushed) is not a list of lifted bans: the hash carries its generation
//! (field `#generation`, a random value set once with `HSETNX`, so it goes
//! with the hash — on a Cluster too, and with no window between reading
//! one and the other), and an instance that sees a new generation forgets
//! what it saw last and publishes its bans again instead of lifting them. Changes taken
//! from the hash are reported to the caller (`sluice serve` then saves its
//! ban file), so a ban lifted elsewhere does not come back from an
//! instance's file when it restarts.
//!
//! [`Bans`]: sluice_core::Bans

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::{Ban, BanSource, Engine, Target};

use crate::store::RedisStore;

/// The hash's own field holding its generation (not a target: no `kind:`).
const GENERATION: &str = "#generation";

fn encode(b: &Ban) -> String {
    format!(
        "1|{}|{}|{}|{}",
        b.expires.map_or_else(|| "-".to_owned(), |e| e.to_string()),
        b.created,
        b.source.as_str(),
        b.reason
    )
}

fn decode(target: &str, v: &str) -> Option<Ban> {
    let mut it = v.splitn(5, '|');
    if it.next()? != "1" {
        return None;
    }
    let expires = match it.next()? {
        "-" => None,
        e => Some(e.parse().ok()?),
    };
    let created = it.next()?.parse().ok()?;
    let source = match it.next()? {
        "auto" => BanSource::Auto,
        _ => BanSource::Manual,
    };
    let reason = it.next()?;
    Some(Ban {
        target: target.parse::<Target>().ok()?,
        reason: reason.into(),
        created,
        expires,
        source,
    })
}

/// What one instance remembers between merges: the hash as it last saw
/// it, and the hash's generation.
#[derive(Debug, Default, Clone)]
pub struct BanSync {
    base: HashMap<String, String>,
    generation: Option<String>,
}

impl BanSync {
    /// Nothing seen yet: the first merge publishes every local ban.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RedisStore {
    /// Keeps `engine`'s bans and the shared hash in step, every `interval`,
    /// until the runtime shuts down; `changed` is called after a merge that
    /// changed the local bans (to save them). Also refreshes the key count
    /// and the live lease count for metrics. Errors are logged and retried
    /// at the next tick. Runs on the store's runtime, so it may be called
    /// from any thread.
    pub fn sync_bans(
        &self,
        engine: Engine,
        interval: Duration,
        changed: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        self.runtime().spawn(async move {
            let mut state = BanSync::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match this.sync_once(&engine, &mut state).await {
                    Ok(true) => changed(),
                    Ok(false) => {}
                    Err(e) => tracing::debug!("ban sync: {e}"),
                }
                let _ = this.count_keys().await;
                let _ = this.count_leases(engine.now()).await;
            }
        })
    }

    /// Sets the hash's generation if it has none (a new or emptied hash)
    /// and returns the one in force.
    async fn new_ban_generation(&self, key: &str) -> Result<String, sluice_core::StoreError> {
        let fresh = format!(
            "{:x}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        );
        let mut set = redis::cmd("HSETNX");
        set.arg(key).arg(GENERATION).arg(&fresh);
        self.conn_cmd::<i64>(set).await?;
        // Whoever set it first, everyone reads the same one.
        let mut get = redis::cmd("HGET");
        get.arg(key).arg(GENERATION);
        Ok(self.conn_cmd::<Option<String>>(get).await?.unwrap_or(fresh))
    }

    /// Counts the keys in Redis now (`DBSIZE`, summed over a Cluster's
    /// primaries) and keeps the figure for [`RedisStore::stats`] and the
    /// `sluice_tracked_keys` metric; [`RedisStore::sync_bans`] does this on
    /// every tick.
    pub async fn count_keys(&self) -> Result<u64, sluice_core::StoreError> {
        let n = self.conn_cmd::<u64>(redis::cmd("DBSIZE")).await?;
        self.set_db_keys(n);
        Ok(n)
    }

    /// One merge; `state` is what this instance saw at the last one.
    /// Returns whether the local bans changed.
    pub async fn sync_once(
        &self,
        engine: &Engine,
        state: &mut BanSync,
    ) -> Result<bool, sluice_core::StoreError> {
        let key = self.keys().bans();
        let mut remote: HashMap<String, String> = {
            let mut c = redis::cmd("HGETALL");
            c.arg(&key);
            self.conn_cmd(c).await?
        };
        let generation = match remote.remove(GENERATION) {
            Some(g) => g,
            None => self.new_ban_generation(&key).await?,
        };
        if state.generation.as_deref() != Some(generation.as_str()) {
            // A new hash: nothing in it was lifted by anyone.
            if state.generation.is_some() {
                tracing::warn!("shared bans were lost from Redis (restarted or flushed): publishing this instance's again");
            }
            state.base.clear();
        }
        let base = &state.base;
        let mut changed = false;
        let now = engine.now();
        let local: HashMap<String, String> = engine
            .bans()
            .list(now)
            .iter()
            .map(|b| (b.target.to_string(), encode(b)))
            .collect();
        // Changes made elsewhere come in first.
        for (t, rv) in &remote {
            if base.get(t) != Some(rv) && local.get(t) != Some(rv) {
                if let Some(b) = decode(t, rv) {
                    if b.active(now) {
                        engine.bans().insert(b);
                        changed = true;
                    }
                }
            }
        }
        for (t, _) in base.iter().filter(|(t, _)| !remote.contains_key(*t)) {
            if local.contains_key(t) {
                if let Ok(target) = t.parse::<Target>() {
                    changed |= engine.bans().remove(&target).is_some();
                }
            }
        }
        // Then changes made here, where the hash still has what we last saw.
        let mut put: Vec<(String, String)> = Vec::new();
        for (t, lv) in &local {
            let changed_here = base.get(t) != Some(lv);
            let untouched_there = remote.get(t) == base.get(t);
            if changed_here && untouched_there {
                put.push((t.clone(), lv.clone()));
            }
        }
        let mut del: Vec<String> = Vec::new();
        for (t, bv) in base {
            if !local.contains_key(t) && remote.get(t) == Some(bv) {
                del.push(t.clone());
            }
        }
        if !put.is_empty() {
            let mut c = redis::cmd("HSET");
            c.arg(&key);
            for (t, v) in &put {
                c.arg(t).arg(v);
                remote.insert(t.clone(), v.clone());
            }
            self.conn_cmd::<i64>(c).await?;
        }
        if !del.is_empty() {
            let mut c = redis::cmd("HDEL");
            c.arg(&key);
            for t in &del {
                c.arg(t);
                remote.remove(t);
            }
            self.conn_cmd::<i64>(c).await?;
        }
        state.base = remote;
        state.generation = Some(generation);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_round_trips() {
        let b = Ban {
            target: "ip:203.0.113.0/24".parse().expect("target"),
            reason: "spam | and more".into(),
            created: 5,
            expires: Some(99),
            source: BanSource::Auto,
        };
        assert_eq!(decode(&b.target.to_string(), &encode(&b)), Some(b.clone()));
        let forever = Ban { expires: None, ..b };
        assert_eq!(
            decode(&forever.target.to_string(), &encode(&forever)),
            Some(forever)
        );
    }
}
