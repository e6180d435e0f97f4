//! The store contract, run against the memory store and the Redis store.
//!
//! Each test is written once against a [`Harness`] and instantiated five
//! times by `contract!`: memory; Redis on the caller's (fake) clock, whose
//! answers must equal memory's exactly; Redis on its own `TIME` clock
//! moved by a test offset, where only waits and resets may differ, by the
//! real time the test took (`slack`) — counts never, because every limit
//! here refills far slower than a test runs; and the same two on a
//! three-node Redis Cluster, where every decision that names a target and
//! `global` spans two hash slots (grouping, undo, lease records in a third
//! slot).

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Decision, Engine, FakeClock, Limit, LimitKind, LimitReport, MemoryStore, Per, Policy, Reason, Request,
    Scope, Side, Target, TargetKind,
};
use sluice_redis::{RedisStore, TimeSource};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

struct Harness {
    engine: Engine,
    clock: FakeClock,
    redis: Option<RedisStore>,
    _rt: Option<tokio::runtime::Runtime>,
    /// How far waits and resets may be from memory's (Redis TIME only).
    slack: Duration,
}

impl Harness {
    fn advance(&self, d: Duration) {
        self.clock.advance(d);
        if let Some(r) = &self.redis {
            r.advance_clock(d);
        }
    }

    fn assert_wait(&self, got: Duration, want: Duration) {
        assert!(
            got <= want && want - got <= self.slack,
            "wait {got:?}, expected {want:?} (slack {:?})",
            self.slack
        );
    }
}

fn memory(policy: Policy) -> Option<Harness> {
    let clock = FakeClock::new();
    let engine = Engine::new(
        policy,
        Arc::new(MemoryStore::new(1 << 12)),
        Arc::new(clock.clone()),
    );
    Some(Harness {
        engine,
        clock,
        redis: None,
        _rt: None,
        slack: Duration::ZERO,
    })
}

fn redis(policy: Policy, time: TimeSource) -> Option<Harness> {
    let url = common::redis_url()?;
    store_harness(policy, time, common::options(&url, "contract", time))
}

fn cluster(policy: Policy, time: TimeSource) -> Option<Harness> {
    let urls = common::redis_cluster_urls()?;
    store_harness(policy, time, common::cluster_options(&urls, "contract", time))
}

fn store_harness(policy: Policy, time: TimeSource, opts: sluice_redis::Options) -> Option<Harness> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(RedisStore::connect(opts)).unwrap();
    let clock = FakeClock::new();
    let engine = Engine::new(policy, Arc::new(store.clone()), Arc::new(clock.clone()));
    Some(Harness {
        engine,
        clock,
        redis: Some(store),
        _rt: Some(rt),
        slack: match time {
            TimeSource::Caller => Duration::ZERO,
            TimeSource::Server => Duration::from_secs(5),
        },
    })
}

fn redis_caller_clock(policy: Policy) -> Option<Harness> {
    redis(policy, TimeSource::Caller)
}

fn redis_server_clock(policy: Policy) -> Option<Harness> {
    redis(policy, TimeSource::Server)
}

fn cluster_caller_clock(policy: Policy) -> Option<Harness> {
    cluster(policy, TimeSource::Caller)
}

fn cluster_server_clock(policy: Policy) -> Option<Harness> {
    cluster(policy, TimeSource::Server)
}

/// One contract test, run against every store.
macro_rules! contract {
    ($name:ident, $policy:expr, |$h:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports, reason = "not every test uses every name")]
            use super::*;
            fn run(make: fn(Policy) -> Option<Harness>) {
                let Some($h) = make($policy) else { return };
                $body
            }
            #[test]
            fn memory() {
                run(super::memory)
            }
            #[test]
            fn redis_caller_clock() {
                run(super::redis_caller_clock)
            }
            #[test]
            fn redis_server_clock() {
                run(super::redis_server_clock)
            }
            #[test]
            fn cluster_caller_clock() {
                run(super::cluster_caller_clock)
            }
            #[test]
            fn cluster_server_clock() {
                run(super::cluster_server_clock)
            }
        }
    };
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn user(s: &str) -> Target {
    Target::user(s).unwrap()
}

fn rate(side: Side, action: &str, scope: Scope, r: &str) -> Limit {
    Limit::new(side, action, scope, LimitKind::Rate(r.parse().unwrap()))
}

fn per(k: TargetKind) -> Scope {
    Scope::Target(Per::Kind(k))
}

fn policy(limits: Vec<Limit>) -> Policy {
    let mut b = Policy::builder();
    for l in limits {
        b = b.limit(l).unwrap();
    }
    b.build()
}

fn login(addr: &str) -> Request<'static> {
    Request::client("login").ip(ip(addr))
}

fn only(d: &Decision) -> &LimitReport {
    assert_eq!(d.limits.len(), 1, "{d:?}");
    &d.limits[0]
}

fn by_scope(d: &Decision, global: bool) -> &LimitReport {
    d.limits
        .iter()
        .find(|l| (l.target == Target::Global) == global)
        .unwrap()
}

contract!(
    n_at_once_then_one_per_interval,
    policy(vec![rate(Side::Client, "login", per(TargetKind::Ip), "10/1m")]),
    |h| {
        let req = login("203.0.113.7");
        for i in 0..10 {
            let d = h.engine.check(&req).unwrap();
            assert!(d.allowed, "request {i} denied");
            assert_eq!(only(&d).remaining, 9 - i);
        }
        let d = h.engine.check(&req).unwrap();
        assert!(!d.allowed);
        h.assert_wait(d.retry_after, 6 * SEC);
        assert_eq!(only(&d).remaining, 0);
        h.assert_wait(only(&d).reset, MIN);
        h.advance(6 * SEC);
        assert!(h.engine.check(&req).unwrap().allowed);
        assert!(!h.engine.check(&req).unwrap().allowed);
        // Another address has its own bucket.
        assert!(h.engine.check(&login("203.0.113.8")).unwrap().allowed);
    }
);

contract!(
    denied_request_consumes_nothing,
    policy(vec![
        rate(Side::Client, "login", per(TargetKind::Ip), "1/1h"),
        rate(Side::Client, "login", Scope::Global, "100/1h"),
    ]),
    |h| {
        assert!(h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        for _ in 0..5 {
            let d = h.engine.check(&login("203.0.113.7")).unwrap();
            assert!(!d.allowed);
            assert_eq!(
                by_scope(&d, true).remaining,
                99,
                "global charged by a denied request"
            );
        }
        let d = h.engine.check(&login("203.0.113.9")).unwrap();
        assert!(d.allowed);
        assert_eq!(by_scope(&d, true).remaining, 98);
    }
);

contract!(
    global_denial_spares_the_target,
    policy(vec![
        rate(Side::Client, "login", per(TargetKind::Ip), "5/1h"),
        rate(Side::Client, "login", Scope::Global, "2/1h"),
    ]),
    |h| {
        assert!(h.engine.check(&login("203.0.113.1")).unwrap().allowed);
        assert!(h.engine.check(&login("203.0.113.2")).unwrap().allowed);
        let d = h.engine.check(&login("203.0.113.3")).unwrap();
        assert!(!d.allowed);
        assert!(matches!(d.reason, Reason::Limited(_)));
        assert_eq!(
            by_scope(&d, false).remaining,
            5,
            "target charged by a globally denied request"
        );
        h.assert_wait(d.retry_after, 30 * MIN);
    }
);

contract!(
    cost_and_too_large,
    policy(vec![rate(
        Side::Client,
        "media_create",
        per(TargetKind::User),
        "5KiB/1h"
    )]),
    |h| {
        let req = |n: u64| {
            Request::client("media_create")
                .user(user("@a:example.org"))
                .cost(n)
        };
        let d = h.engine.check(&req(3 * 1024)).unwrap();
        assert!(d.allowed);
        assert_eq!(only(&d).remaining, 2 * 1024);
        let d = h.engine.check(&req(3 * 1024)).unwrap();
        assert!(!d.allowed);
        // 1 KiB of the 5 KiB/h refills in 12 minutes.
        h.assert_wait(d.retry_after, 12 * MIN);
        let d = h.engine.check(&req(6 * 1024)).unwrap();
        assert!(!d.allowed);
        assert!(matches!(d.reason, Reason::TooLarge(_)));
        assert_eq!(d.retry_after, Duration::MAX);
        assert!(h.engine.check(&req(2 * 1024)).unwrap().allowed);
    }
);

contract!(
    shadow_limits_count_but_never_deny,
    policy(vec![
        rate(Side::Client, "login", per(TargetKind::Ip), "3/1h"),
        rate(Side::Client, "login", Scope::Global, "1/1h").shadow(true),
    ]),
    |h| {
        for i in 0..3 {
            let d = h.engine.check(&login("203.0.113.7")).unwrap();
            assert!(d.allowed, "request {i}: shadow limit denied");
        }
        let d = h.engine.check(&login("203.0.113.7")).unwrap();
        assert!(!d.allowed);
        assert_eq!(by_scope(&d, true).outcome.as_str(), "shadow_denied");
        assert_eq!(by_scope(&d, true).remaining, 0);
    }
);

contract!(
    shadow_bucket_consumed_only_when_the_decision_is_allowed,
    policy(vec![
        rate(Side::Client, "login", per(TargetKind::Ip), "1/1h"),
        rate(Side::Client, "login", Scope::Global, "10/1h").shadow(true),
    ]),
    |h| {
        assert!(h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        for _ in 0..3 {
            assert!(!h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        }
        let d = h.engine.check(&login("203.0.113.8")).unwrap();
        assert_eq!(by_scope(&d, true).remaining, 8);
    }
);

contract!(
    dry_run_consumes_nothing,
    policy(vec![rate(Side::Client, "login", per(TargetKind::Ip), "2/1h")]),
    |h| {
        for _ in 0..5 {
            let d = h.engine.dry_run(&login("203.0.113.7")).unwrap();
            assert!(d.allowed);
            assert_eq!(only(&d).remaining, 2);
        }
        assert!(h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        assert_eq!(
            only(&h.engine.dry_run(&login("203.0.113.7")).unwrap()).remaining,
            1
        );
    }
);

contract!(
    idle_key_equals_no_key,
    policy(vec![rate(Side::Client, "login", per(TargetKind::Ip), "2/1m")]),
    |h| {
        assert!(h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        assert!(h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        assert!(!h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        h.advance(10 * MIN);
        let d = h.engine.check(&login("203.0.113.7")).unwrap();
        assert!(d.allowed);
        assert_eq!(only(&d).remaining, 1);
    }
);

contract!(
    inspect_reads_without_consuming,
    policy(vec![rate(Side::Client, "login", per(TargetKind::Ip), "10/1h")]),
    |h| {
        for _ in 0..3 {
            assert!(h.engine.check(&login("203.0.113.7")).unwrap().allowed);
        }
        let t: Target = "ip:203.0.113.7".parse().unwrap();
        for _ in 0..2 {
            let r = h.engine.inspect(&t).unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].remaining, 7);
            h.assert_wait(r[0].reset, 18 * MIN);
        }
    }
);

contract!(
    leases_cap_release_and_expire,
    policy(vec![Limit::new(
        Side::Client,
        "request",
        per(TargetKind::User),
        LimitKind::Concurrency(2),
    )]),
    |h| {
        let req = Request::client("request").user(user("@a:example.org"));
        let a = h.engine.acquire(&req, 30 * SEC).unwrap();
        assert!(a.allowed);
        assert_eq!(only(&a).remaining, 1);
        let b = h.engine.acquire(&req, 10 * MIN).unwrap();
        assert!(b.allowed);
        assert_eq!(only(&b).remaining, 0);
        let c = h.engine.acquire(&req, 30 * SEC).unwrap();
        assert!(!c.allowed && c.lease.is_none());
        // Another user is not affected.
        assert!(
            h.engine
                .acquire(&Request::client("request").user(user("@b:example.org")), 30 * SEC)
                .unwrap()
                .allowed
        );
        let b = b.lease.unwrap();
        assert!(h.engine.release(b.id).unwrap());
        assert!(!h.engine.release(b.id).unwrap(), "double release");
        assert!(!h.engine.release(12345).unwrap(), "unknown lease");
        let c = h.engine.acquire(&req, 10 * MIN).unwrap();
        assert!(c.allowed);
        assert!(!h.engine.acquire(&req, 10 * MIN).unwrap().allowed);
        // Lease a lapses at 30 s.
        h.advance(30 * SEC);
        assert!(h.engine.acquire(&req, 10 * MIN).unwrap().allowed);
        let t = user("@a:example.org");
        assert_eq!(h.engine.inspect(&t).unwrap()[0].remaining, 0);
    }
);

contract!(
    rates_and_slots_all_or_nothing,
    policy(vec![
        rate(Side::Client, "request", per(TargetKind::User), "2/1h"),
        Limit::new(
            Side::Client,
            "request",
            per(TargetKind::User),
            LimitKind::Concurrency(5)
        ),
    ]),
    |h| {
        let req = Request::client("request").user(user("@a:example.org"));
        assert!(h.engine.acquire(&req, 10 * MIN).unwrap().allowed);
        assert!(h.engine.acquire(&req, 10 * MIN).unwrap().allowed);
        // The rate denies: no slot is taken.
        let d = h.engine.acquire(&req, 10 * MIN).unwrap();
        assert!(!d.allowed && d.lease.is_none());
        let slot = d.limits.iter().find(|l| l.window.is_none()).unwrap();
        assert_eq!(slot.remaining, 3, "denied acquire took a slot");
    }
);
