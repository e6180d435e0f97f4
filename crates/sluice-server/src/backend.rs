//! Where the engine's state lives for this service: the in-process memory
//! store, or Redis shared by every instance (`[store] kind = "redis"`).
//!
//! The engine is synchronous. With memory, a decision is one engine call.
//! With Redis, the handler plans in the engine, awaits the store's script
//! on the runtime (so concurrent decisions pipeline over one connection
//! instead of blocking workers), and finishes in the engine; when Redis
//! fails, `store.on_error` decides, and the failure is counted in
//! `sluice_store_errors_total` and logged by the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{Config, OnError, StoreKind};
use sluice_core::store::LeaseId;
use sluice_core::{Decision, Engine, EngineError, LimitReport, MemoryStore, Mode, Request, Store, Target};
use sluice_redis::{FailMode, Options, RedisStore};

use crate::app::{App, ServerError};

/// The store behind the engine.
pub(crate) enum Backend {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

/// How often shared bans are merged (see `sluice_redis` docs).
const BAN_SYNC: Duration = Duration::from_secs(1);

impl Backend {
    /// The backend `config` asks for. Redis needs a tokio runtime.
    pub(crate) fn open(config: &Config) -> Result<Self, ServerError> {
        Ok(match config.store.kind {
            StoreKind::Memory => Backend::Memory(Arc::new(MemoryStore::new(config.store.max_keys))),
            StoreKind::Redis => {
                let c = &config.store;
                let mut o = Options::new(c.url.clone().unwrap_or_default());
                o.cluster = c.cluster;
                o.key_prefix = c.key_prefix.clone();
                o.connect_timeout = c.connect_timeout;
                o.command_timeout = c.command_timeout;
                o.local_admission = c.local_admission;
                o.local_hold = c.local_hold;
                o.on_error = match c.on_error {
                    OnError::Allow => FailMode::Allow,
                    OnError::Deny => FailMode::Deny,
                };
                Backend::Redis(RedisStore::open(o).map_err(|e| ServerError::Store(format!("redis: {e}")))?)
            }
        })
    }

    /// Refuses a policy this store cannot keep exact: on Redis, a rate
    /// whose bucket spans more than ~104 days ("5/365d" is one) would be
    /// admitted by the script and judged denied by the engine. The config
    /// check refuses such a policy for the store its own file names; this
    /// covers a reload whose file names another store than the running one.
    pub(crate) fn check_policy(&self, policy: &sluice_core::Policy) -> Result<(), ServerError> {
        if let Backend::Redis(_) = self {
            for l in policy.limits() {
                if let sluice_core::LimitKind::Rate(r) = &l.kind {
                    if !sluice_core::store::exact_in_doubles(&r.gcra()) {
                        return Err(ServerError::Store(format!(
                            "limit {} ({r}): its bucket spans more than the Redis store keeps exact (about 104 days); use a shorter period or a smaller burst",
                            l.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Memory(m) => m.clone(),
            Backend::Redis(r) => Arc::new(r.clone()),
        }
    }

    pub(crate) fn memory(&self) -> Option<Arc<MemoryStore>> {
        match self {
            Backend::Memory(m) => Some(m.clone()),
            Backend::Redis(_) => None,
        }
    }

    /// Background work: merging shared bans; `changed` runs when the
    /// merge changed the local ones (the ban file is then saved).
    pub(crate) fn start(&self, engine: &Engine, changed: impl Fn() + Send + Sync + 'static) {
        if let Backend::Redis(r) = self {
            r.sync_bans(engine.clone(), BAN_SYNC, changed);
        }
    }
}

/// One decision, on whichever store. `elsewhere`: the caller runs on a
/// runtime of its own (a gateway worker), so the Redis call is run on the
/// store's ([`RedisStore::decide_spawned`]).
pub(crate) async fn decide(
    app: &App,
    req: &Request<'_>,
    mode: Mode,
    elsewhere: bool,
) -> Result<Decision, EngineError> {
    let Backend::Redis(store) = &app.inner.backend else {
        return app.engine().decide(req, mode);
    };
    let engine = app.engine();
    let plan = engine.plan(req, mode)?;
    if !plan.needs_store() {
        return Ok(engine.finish(plan, Default::default()));
    }
    let answer = if elsewhere {
        store.decide_spawned(plan.batch(), plan.now()).await
    } else {
        store.decide_async(plan.batch(), plan.now()).await
    };
    match answer {
        Ok(outcome) => Ok(engine.finish(plan, outcome)),
        Err(_) => {
            app.inner.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            if matches!(mode, Mode::Acquire { ttl: Some(_) }) && app.config().store.on_error == OnError::Allow
            {
                // An API lease under `allow`: granted with its lease token,
                // as callers expect one to release (Redis does not know
                // it: the release answers `released: false`). Everything
                // allows here, so nothing is denied or banned.
                let granted = store.fallback(plan.batch(), plan.now());
                return Ok(engine.finish(plan, granted));
            }
            Ok(unavailable(app))
        }
    }
}

/// What a decision the store could not take answers: `store.on_error`,
/// allowed (nothing reported, no lease) or denied for a second as
/// `store.unavailable`. Never a limit's denial: no limit is reported as
/// spent, and no automatic ban counts it — an outage must not ban the
/// clients who happened to log in during it.
fn unavailable(app: &App) -> Decision {
    match app.config().store.on_error {
        OnError::Allow => Decision::allow(),
        OnError::Deny => Decision {
            allowed: false,
            retry_after: Duration::from_secs(1),
            reason: sluice_core::Reason::Limited(crate::STORE_UNAVAILABLE),
            limits: Default::default(),
            lease: None,
            banned: None,
        },
    }
}

/// At shutdown: waits (a little) for the releases dropped guards sent to
/// Redis without waiting, so their slots are not left held until the
/// lease's TTL.
pub(crate) async fn settle(app: &App) {
    if let Backend::Redis(store) = &app.inner.backend {
        let within = (store.options().command_timeout * 2).max(Duration::from_secs(1));
        if !store.settle(within).await {
            tracing::warn!(
                "redis store: releases still unanswered at shutdown; their slots lapse with their leases"
            );
        }
    }
}

/// Reads the store-wide gauges now, before a scrape renders them. Redis
/// counts keys and live leases with two small commands (bounded by the
/// command timeout; on failure the last figures stand); the memory store's
/// are always current.
pub(crate) async fn refresh_gauges(app: &App) {
    if let Backend::Redis(store) = &app.inner.backend {
        let _ = store.count_keys().await;
        let _ = store.count_leases(app.now()).await;
    }
}

/// Releases a lease on whichever store.
pub(crate) async fn release(app: &App, id: LeaseId) -> Result<bool, EngineError> {
    let Backend::Redis(store) = &app.inner.backend else {
        return app.engine().release(id);
    };
    store.release_async(id, app.now()).await.map_err(|e| {
        app.inner.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        EngineError::Store(e)
    })
}

/// One target's state (admin inspect). On Redis the engine's inspect makes
/// sync store calls that wait for Redis, so it runs on the blocking pool:
/// a slow Redis then delays this admin request only, never the workers
/// that serve decisions.
pub(crate) async fn inspect(app: &App, target: Target) -> Result<Vec<LimitReport>, EngineError> {
    if !matches!(app.inner.backend, Backend::Redis(_)) {
        return app.engine().inspect(&target);
    }
    let engine = app.engine().clone();
    tokio::task::spawn_blocking(move || engine.inspect(&target))
        .await
        .unwrap_or_else(|e| {
            Err(EngineError::Store(sluice_core::StoreError::Unavailable(format!(
                "inspect task: {e}"
            ))))
        })
}
