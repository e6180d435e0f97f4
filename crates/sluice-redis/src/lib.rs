//! sluice's shared store: the engine's [`Store`](sluice_core::Store) on
//! Redis or Valkey, so that several sluice instances behind a load balancer
//! enforce one limit together.
//!
//! - **One atomic script per decision.** A [`Batch`](sluice_core::store::Batch)
//!   — every bucket and concurrency slot of a decision, and its lease — goes
//!   to Redis as one `EVALSHA` (loaded on first use), which checks
//!   everything and, only if all allow, consumes everything: a denied
//!   request consumes nothing, shadow limits never deny, exactly as the
//!   memory store. The GCRA maths is the engine's, on nanosecond TATs
//!   (exact for limits whose bucket spans under 2^53 ns ≈ 104 days), with
//!   Redis' `TIME` as the one clock of all instances. Keys expire at their
//!   TAT: an idle bucket is no key.
//! - **Leases** are sorted sets per slot, scored by expiry and pruned by the
//!   script; a lease record lists the slots a lease holds, for release.
//! - **Bans** are shared through a Redis hash merged into each instance's
//!   ban list every second ([`RedisStore::sync_bans`]).
//! - **Cluster.** Keys carry their target as hash tag; a decision whose
//!   targets live in different slots runs one script per slot, narrowest
//!   first, and undoes the committed ones if a later one denies (see
//!   `docs/redis.md` for what that guarantees).
//! - **Throughput.** Concurrent decisions share one multiplexed connection
//!   (pipelined on the wire); a local cache denies targets known to be
//!   denied without a round trip; optional local admission takes units in
//!   batches (module `local` docs: bounded overshoot).
//! - **Failure.** Every decision has `command_timeout`; on failure
//!   [`RedisStore::decide_or_fallback`] answers `on_error` (allow or deny),
//!   counts it in [`RedisStats::errors`] and logs it; the connection comes
//!   back by itself.
//!
//! The engine is synchronous; an async server plans with
//! [`Engine::plan`](sluice_core::Engine::plan), awaits
//! [`RedisStore::decide_async`] and finishes with
//! [`Engine::finish`](sluice_core::Engine::finish):
//!
//! ```no_run
//! use std::sync::Arc;
//! use sluice_core::{CoarseClock, Engine, Mode, Policy, Request};
//! use sluice_redis::{Options, RedisStore};
//!
//! # async fn demo(policy: Policy) -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect(Options::new("redis://127.0.0.1:6379")).await?;
//! let engine = Engine::new(policy, Arc::new(store.clone()), Arc::new(CoarseClock::new()));
//! // Merge shared bans every second (the callback runs when local bans changed).
//! store.sync_bans(engine.clone(), std::time::Duration::from_secs(1), || {});
//!
//! let req = Request::client("registration").ip("203.0.113.7".parse()?);
//! let plan = engine.plan(&req, Mode::Check)?;
//! let outcome = if plan.needs_store() {
//!     store.decide_or_fallback(plan.batch(), plan.now()).await
//! } else {
//!     Default::default()
//! };
//! let decision = engine.finish(plan, outcome);
//! println!("allowed: {}", decision.allowed);
//! # Ok(()) }
//! ```

mod bans;
mod keys;
mod local;
mod store;

pub use bans::BanSync;
pub use store::{ConnectError, FailMode, Options, RedisStats, RedisStore, TimeSource};
