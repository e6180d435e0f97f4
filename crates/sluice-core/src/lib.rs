//! sluice's rate-limiting engine: no I/O, no async runtime.
//!
//! A [`Request`] says who ([`Targets`]: client address, user, server,
//! appservice) wants to do what (an action such as `registration`, on the
//! `client` or `federation` [`Side`]). The [`Engine`] checks it against every
//! [`Limit`] of the [`Policy`] that applies — per target and global — after
//! exemptions, blocklists, bans and overrides, and answers with a
//! [`Decision`]: allowed or not, how long to wait, and each limit's state.
//! A denied request consumes nothing from any bucket.
//!
//! Rates use GCRA ([`gcra`]) on one `u64` per key, kept in a bounded,
//! lock-free [`MemoryStore`] (or any other [`Store`], such as Redis). Time
//! comes from an injected [`Clock`], so tests move a [`FakeClock`] instead of
//! sleeping.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sluice_core::{Engine, FakeClock, Limit, LimitKind, MemoryStore, Per, Policy, Request, Scope, Side, TargetKind};
//!
//! // One registration per 6 minutes per client address.
//! let policy = Policy::builder()
//!     .limit(Limit::new(
//!         Side::Client,
//!         "registration",
//!         Scope::Target(Per::Kind(TargetKind::Ip)),
//!         LimitKind::Rate("1/6m".parse()?),
//!     ))?
//!     .build();
//! let clock = FakeClock::new();
//! let engine = Engine::new(policy, Arc::new(MemoryStore::new(10_000)), Arc::new(clock.clone()));
//!
//! let req = Request::client("registration").ip("203.0.113.7".parse()?);
//! assert!(engine.check(&req)?.allowed);
//! let denied = engine.check(&req)?;
//! assert!(!denied.allowed);
//! assert_eq!(denied.retry_after, Duration::from_secs(360));
//!
//! clock.advance(Duration::from_secs(360));
//! assert!(engine.check(&req)?.allowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bans;
pub mod blocklist;
mod engine;
pub mod gcra;
pub mod memory;
pub mod policy;
pub mod rate;
pub mod store;
pub mod target;
pub mod time;

pub use bans::{Ban, BanSource, Bans};
pub use engine::{
    Admission, Blocked, Decision, Engine, EngineError, Guard, Lease, LimitOutcome, LimitReport, Mode, Plan,
    Reason, Request, Targets, MAX_AUTO_BANS,
};
pub use memory::{MemoryStats, MemoryStore};
pub use policy::{
    AutobanRule, Effect, Limit, LimitKind, Matcher, Override, Per, Policy, PolicyBuilder, PolicyError, Scope,
    Side,
};
pub use rate::{Rate, RateError, Unit};
pub use store::{Store, StoreError};
pub use target::{Normalizer, Target, TargetError, TargetKind};
pub use time::{Clock, CoarseClock, FakeClock, MonotonicClock, Nanos};
