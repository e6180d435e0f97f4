//! Bounded memory: `max_keys` holds under a flood of fresh addresses, and
//! cache pressure makes limits stricter, never looser.
//!
//! What happens at the cap (documented in `memory.rs`): when both candidate
//! lines of a new key are full of live keys, the live key with the smallest
//! TAT is evicted and its TAT folded into a max-sketch; keys not in the table
//! start from the sketch's estimate, which never under-estimates their real
//! TAT. So an evicted abuser comes back at least as limited as it left, and a
//! fresh key may start *more* limited than it should (sketch collisions) —
//! but never by more than the largest debt folded, and once that debt has
//! lapsed everything starts fresh again.
//!
//! Which evicted keys are folded (see `memory.rs`): only *heavy* ones, that
//! have used more than half of their bucket at some point. Folding every
//! key made the estimates compound under a flood of distinct keys (a fresh
//! key inherited an inflated estimate, added its own cost and was folded
//! back), until every new client started with an empty bucket: measured at
//! 135k of 200k fresh keys denied here, 84% in the 10M-address benchmark.
//! With heavy-only folding a flood of one-off clients leaves the sketch
//! empty and every fresh key starts full, while a key at or near its limit
//! keeps its debt through any number of evictions. The price, asserted
//! below: a key evicted while it has used at most half of its bucket comes
//! back with a full one — at most burst/2 extra per eviction, and each
//! eviction costs whoever forces it a table's worth of fresh keys.

#![allow(clippy::unwrap_used, reason = "test helpers unwrap fixed, valid inputs")]

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Engine, FakeClock, Limit, LimitKind, MemoryStore, Per, Policy, Request, Scope, Side, Store, TargetKind,
};

fn engine(rate: &str, max_keys: usize) -> (Engine, Arc<MemoryStore>, FakeClock) {
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "login",
            Scope::Target(Per::Kind(TargetKind::Ip)),
            LimitKind::Rate(rate.parse().unwrap()),
        ))
        .unwrap()
        .build();
    let store = Arc::new(MemoryStore::new(max_keys));
    let clock = FakeClock::new();
    let e = Engine::new(policy, store.clone(), Arc::new(clock.clone()));
    (e, store, clock)
}

/// The `i`-th distinct /64 (host bits vary too, to show they are ignored).
fn net64(i: u64) -> IpAddr {
    let hi = 0x2001_0db8_0000_0000u64 | (i & 0xFFFF_FFFF);
    let lo = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    IpAddr::V6(Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo)))
}

fn login(ip: IpAddr) -> Request<'static> {
    Request::client("login").ip(ip)
}

#[test]
fn max_keys_holds_under_a_flood_of_fresh_ipv6_networks() {
    let (e, store, clock) = engine("10/1h", 4096);
    let stats0 = store.stats();
    assert_eq!(stats0.capacity, 4096);
    let mut denied = 0u64;
    for i in 0..200_000u64 {
        let d = e.check(&login(net64(i))).unwrap();
        if !d.allowed {
            denied += 1;
        }
        if i % 1000 == 999 {
            clock.advance(Duration::from_millis(1));
            let tracked = store.tracked_keys(e.now());
            assert!(tracked <= 4096, "{tracked} keys tracked after {i} fresh keys");
            assert_eq!(e.store().tracked_keys(e.now()), tracked);
        }
    }
    let stats = store.stats();
    assert_eq!(stats.capacity, 4096);
    assert_eq!(stats.bytes, stats0.bytes, "memory grew");
    assert!(
        stats.evictions >= 200_000 - 4096,
        "evictions: {}",
        stats.evictions
    );
    // The table is full of live keys; nothing beyond it.
    assert!(store.tracked_keys(e.now()) > 3000);
    let mut probe = [0u64; 11];
    for i in 0..1000 {
        let d = e.dry_run(&login(net64(2_000_000 + i))).unwrap();
        probe[d.limits[0].remaining as usize] += 1;
    }
    // A flood of one-off clients leaves nothing in the sketch: every new
    // client, during and right after it, starts with a full bucket.
    assert_eq!(denied, 0, "fresh keys denied during the flood");
    assert_eq!(
        probe[10], 1000,
        "fresh keys' remaining right after the flood: {probe:?}"
    );
    // Every debt lapses within one bucket window (tau = 1 h): nothing is
    // live and fresh keys are admitted with a full burst again.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(store.tracked_keys(e.now()), 0);
    for i in 0..100 {
        let ip = net64(1_000_000 + i);
        let d = e.check(&login(ip)).unwrap();
        assert!(d.allowed);
        assert_eq!(
            d.limits[0].remaining, 9,
            "fresh key after the flood started charged"
        );
    }
}

/// "15 of 30 through a limit of 10 under cache pressure": an abuser at its
/// limit, evicted again and again by a flood of fresh keys, must not get a
/// fresh burst when it comes back.
#[test]
fn an_evicted_limited_key_stays_limited() {
    let (e, store, clock) = engine("10/1h", 256);
    let abuser = login("203.0.113.66".parse().unwrap());
    let mut fresh = 0u64;
    let mut flood = |n: usize| {
        for _ in 0..n {
            e.check(&login(net64(fresh))).unwrap();
            fresh += 1;
        }
    };
    let mut passed = 0;
    for _ in 0..30 {
        passed += usize::from(e.check(&abuser).unwrap().allowed);
    }
    assert_eq!(passed, 10);
    // Twice the table's capacity of fresh keys between two attempts.
    for _ in 0..20 {
        flood(512);
        assert!(
            !e.check(&abuser).unwrap().allowed,
            "evicted abuser got a fresh burst"
        );
    }
    assert!(store.stats().evictions > 20 * 256, "no cache pressure");
    // Tight, too: the sketch gives the debt back exactly — one interval to wait.
    let d = e.check(&abuser).unwrap();
    assert_eq!(d.retry_after, Duration::from_secs(360));
    clock.advance(Duration::from_secs(360));
    flood(512);
    assert!(e.check(&abuser).unwrap().allowed);
    assert!(!e.check(&abuser).unwrap().allowed);
}

#[test]
fn an_evicted_key_keeps_its_debt_as_time_passes() {
    // 10 per minute; the abuser spends its burst, then retries every second
    // for a minute and a half while a flood keeps evicting it. GCRA admits
    // at most 10 + 90/6 = 25.
    let (e, store, clock) = engine("10/1m", 256);
    let abuser = login("2001:db8:dead:beef::1".parse().unwrap());
    let mut passed = 0;
    for _ in 0..10 {
        passed += usize::from(e.check(&abuser).unwrap().allowed);
    }
    let mut fresh = 0u64;
    for _ in 0..=90 {
        passed += usize::from(e.check(&abuser).unwrap().allowed);
        for _ in 0..300 {
            e.check(&login(net64(fresh))).unwrap();
            fresh += 1;
        }
        clock.advance(Duration::from_secs(1));
    }
    assert!(store.stats().evictions > 0);
    assert!(passed <= 25, "{passed} admitted where GCRA allows 25");
}

#[test]
fn a_multi_limit_abuser_stays_limited_under_pressure() {
    // Per-IP and per-user limits of one action, both at their limit.
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "request",
            Scope::Target(Per::Kind(TargetKind::Ip)),
            LimitKind::Rate("100/1h".parse().unwrap()),
        ))
        .unwrap()
        .limit(Limit::new(
            Side::Client,
            "request",
            Scope::Target(Per::Kind(TargetKind::User)),
            LimitKind::Rate("5/1h".parse().unwrap()),
        ))
        .unwrap()
        .build();
    let store = Arc::new(MemoryStore::new(128));
    let e = Engine::new(policy, store.clone(), Arc::new(FakeClock::new()));
    let user = sluice_core::Target::user("@spammer:example.org").unwrap();
    let mut passed = 0;
    for round in 0..40u64 {
        // The abuser hops addresses but not accounts.
        let req = Request::client("request")
            .ip(net64(1 << 40 | round))
            .user(user.clone());
        passed += usize::from(e.check(&req).unwrap().allowed);
        for i in 0..300 {
            let flood = Request::client("request").ip(net64(round * 1000 + i));
            e.check(&flood).unwrap();
        }
    }
    assert!(store.stats().evictions > 0);
    assert!(passed <= 5, "{passed} through a per-user limit of 5");
}

#[test]
fn idle_keys_are_reused_without_evictions() {
    let (e, store, clock) = engine("1/1s", 4096);
    for i in 0..200_000u64 {
        // 64 new keys per second: each goes idle one second after its request,
        // so the 4096-cell table never holds more than 64 live keys (few
        // enough that two full lines for one key are out of reach: the
        // hasher's seed is random per run).
        if i % 64 == 0 {
            clock.advance(Duration::from_secs(1));
        }
        let d = e.check(&login(net64(i))).unwrap();
        assert!(d.allowed, "key {i} denied");
    }
    assert_eq!(store.stats().evictions, 0, "idle keys were not reused");
    assert!(store.tracked_keys(e.now()) <= 64);
}

#[test]
fn dry_runs_and_inspect_claim_no_cells() {
    let (e, store, _clock) = engine("10/1h", 64);
    for i in 0..10_000 {
        assert!(e.dry_run(&login(net64(i))).unwrap().allowed);
        e.inspect(&sluice_core::Target::Ip(net64(i).into())).unwrap();
    }
    assert_eq!(store.tracked_keys(e.now()), 0);
    assert_eq!(store.stats().evictions, 0);
}

#[test]
fn lease_table_is_bounded_too() {
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "connection",
            Scope::Target(Per::Kind(TargetKind::Ip)),
            LimitKind::Concurrency(2),
        ))
        .unwrap()
        .build();
    let store = Arc::new(MemoryStore::new(64));
    let clock = FakeClock::new();
    let e = Engine::new(policy, store.clone(), Arc::new(clock.clone()));
    let mut refused = 0;
    for i in 0..1000 {
        match e.acquire(
            &Request::client("connection").ip(net64(i)),
            Duration::from_secs(60),
        ) {
            Ok(d) => assert!(d.allowed),
            Err(sluice_core::EngineError::Store(sluice_core::StoreError::LeasesFull(n))) => {
                assert_eq!(n, 64);
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(refused, 1000 - 64);
    assert_eq!(store.active_leases(e.now()), 64);
    // Expired leases make room again.
    clock.advance(Duration::from_secs(60));
    assert_eq!(store.active_leases(e.now()), 0);
    assert!(
        e.acquire(
            &Request::client("connection").ip(net64(5000)),
            Duration::from_secs(1)
        )
        .unwrap()
        .allowed
    );
}

/// Regression: line A was only ever chosen from the first half of the table
/// (the fingerprint's top bit is always clear and the line index was taken
/// from the top bits), so live keys were evicted at a third full.
#[test]
fn regression_table_fills_before_evicting() {
    let store = MemoryStore::new(40_000);
    let rate: sluice_core::Rate = "10/1h".parse().unwrap();
    for i in 0..26_000u64 {
        let key = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678;
        let bucket = sluice_core::store::Bucket {
            key,
            limit: "regression",
            target: sluice_core::Target::Global,
            gcra: rate.gcra(),
            cost: 1,
            shadow: false,
        };
        let batch = sluice_core::store::Batch {
            buckets: [bucket].into_iter().collect(),
            ..Default::default()
        };
        assert!(store.decide(&batch, 1_000_000_000_000).unwrap().committed);
    }
    // 65% full: two choices of four cells leave every key a place.
    assert_eq!(store.stats().evictions, 0);
}
