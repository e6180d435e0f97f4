//! Concurrency: caps are never exceeded and rates never over-admit when many
//! threads decide at once.
//!
//! The clock is a frozen [`FakeClock`], so the exact number a limit admits is
//! known, and nothing sleeps: threads just hammer. Each counted key is
//! touched once before the threads start, because the memory store documents
//! one benign race on a *brand-new* key (two threads may both claim a cell
//! for it, and one racing request goes uncounted); that race is measured
//! separately in `first_touch_race_is_at_most_one_per_racing_thread`.

#![allow(clippy::unwrap_used, reason = "test helpers unwrap fixed, valid inputs")]

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use sluice_core::{
    Engine, FakeClock, Limit, LimitKind, MemoryStore, Per, Policy, PolicyBuilder, Request, Scope, Side,
    Target, TargetKind,
};

const THREADS: usize = 4;

fn rate(side: Side, action: &str, scope: Scope, r: &str) -> Limit {
    Limit::new(side, action, scope, LimitKind::Rate(r.parse().unwrap()))
}

fn per_ip() -> Scope {
    Scope::Target(Per::Kind(TargetKind::Ip))
}

fn engine(b: PolicyBuilder) -> Engine {
    Engine::new(
        b.build(),
        Arc::new(MemoryStore::new(1 << 14)),
        Arc::new(FakeClock::new()),
    )
}

fn thread_ip(i: usize) -> IpAddr {
    format!("198.51.100.{}", i + 1).parse().unwrap()
}

/// Runs `f(thread index)` on `THREADS` threads started together.
fn hammer<F>(f: F)
where
    F: Fn(usize) + Send + Sync,
{
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let (f, barrier) = (&f, &barrier);
            s.spawn(move || {
                barrier.wait();
                f(i);
            });
        }
    });
}

#[test]
fn concurrency_cap_never_exceeded_with_guards() {
    let e = engine(
        Policy::builder()
            .limit(Limit::new(
                Side::Client,
                "request",
                Scope::Target(Per::Kind(TargetKind::User)),
                LimitKind::Concurrency(3),
            ))
            .unwrap(),
    );
    let req = Request::client("request").user(Target::user("@a:example.org").unwrap());
    let live = AtomicUsize::new(0);
    let max_live = AtomicUsize::new(0);
    let granted = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    hammer(|_| {
        for _ in 0..3_000 {
            match e.acquire_guard(&req).unwrap() {
                Ok(guard) => {
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    max_live.fetch_max(now, Ordering::SeqCst);
                    granted.fetch_add(1, Ordering::Relaxed);
                    std::hint::spin_loop();
                    // Leave before releasing, so `live` never under-counts holders.
                    live.fetch_sub(1, Ordering::SeqCst);
                    drop(guard);
                }
                Err(d) => {
                    assert!(!d.allowed);
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let max = max_live.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} holders of a cap of 3");
    assert!(granted.load(Ordering::Relaxed) > 0);
    assert_eq!(
        granted.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed),
        THREADS * 3_000
    );
    assert_eq!(
        e.store().active_leases(e.now()),
        0,
        "a dropped guard leaked its slot"
    );
}

#[test]
fn concurrency_cap_with_leases_and_rates_together() {
    // Cap 3 at once, and 200 acquisitions per hour per address in total.
    let e = engine(
        Policy::builder()
            .limit(Limit::new(
                Side::Client,
                "connection",
                per_ip(),
                LimitKind::Concurrency(3),
            ))
            .unwrap()
            .limit(rate(Side::Client, "connection", per_ip(), "200/1h"))
            .unwrap(),
    );
    let req = Request::client("connection").ip("203.0.113.7".parse().unwrap());
    let first = e.acquire(&req, Duration::from_secs(60)).unwrap();
    assert!(e.release(first.lease.unwrap().id).unwrap());
    let live = AtomicUsize::new(0);
    let max_live = AtomicUsize::new(0);
    let granted = AtomicUsize::new(1);
    hammer(|_| {
        for _ in 0..2_000 {
            let d = e.acquire(&req, Duration::from_secs(60)).unwrap();
            if let Some(lease) = d.lease {
                assert!(d.allowed);
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                max_live.fetch_max(now, Ordering::SeqCst);
                granted.fetch_add(1, Ordering::Relaxed);
                live.fetch_sub(1, Ordering::SeqCst);
                assert!(e.release(lease.id).unwrap(), "own lease unknown");
            } else {
                assert!(!d.allowed);
            }
        }
    });
    assert!(max_live.load(Ordering::SeqCst) <= 3);
    assert_eq!(
        granted.load(Ordering::Relaxed),
        200,
        "rate over- or under-admitted"
    );
    assert_eq!(e.store().active_leases(e.now()), 0);
}

#[test]
fn one_bucket_admits_exactly_its_burst() {
    let e = engine(
        Policy::builder()
            .limit(rate(Side::Client, "login", per_ip(), "100/1h"))
            .unwrap(),
    );
    let req = Request::client("login").ip("203.0.113.7".parse().unwrap());
    assert!(e.check(&req).unwrap().allowed);
    let admitted = AtomicU64::new(1);
    hammer(|_| {
        for _ in 0..1_000 {
            if e.check(&req).unwrap().allowed {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
    let state = e.inspect(&"ip:203.0.113.7".parse().unwrap()).unwrap();
    assert_eq!(state[0].remaining, 0);
    assert_eq!(state[0].reset, Duration::from_secs(3600));
}

#[test]
fn byte_costs_admit_at_most_the_burst() {
    // 10 KiB at once; threads ask for odd sizes.
    let e = engine(
        Policy::builder()
            .limit(rate(
                Side::Client,
                "media_create",
                Scope::Target(Per::Kind(TargetKind::User)),
                "10KiB/1h",
            ))
            .unwrap(),
    );
    let user = Target::user("@a:example.org").unwrap();
    let first = Request::client("media_create").user(user.clone()).cost(1);
    assert!(e.check(&first).unwrap().allowed);
    let bytes = AtomicU64::new(1);
    hammer(|i| {
        let req = Request::client("media_create")
            .user(user.clone())
            .cost(97 + 64 * i as u64);
        for _ in 0..500 {
            if e.check(&req).unwrap().allowed {
                bytes.fetch_add(req.cost, Ordering::Relaxed);
            }
        }
    });
    let taken = bytes.load(Ordering::Relaxed);
    assert!(taken <= 10_240, "{taken} bytes through a 10 KiB bucket");
    // Exact accounting: what is left is exactly what was not taken.
    let left = e.inspect(&user).unwrap()[0].remaining;
    assert_eq!(left, 10_240 - taken);
}

/// Target and global buckets in one decision, in both orders (the first
/// one's consumption must be undone when the second denies).
#[test]
fn target_and_global_admit_exactly_the_global_limit() {
    for global_first in [true, false] {
        let target = rate(Side::Client, "login", per_ip(), "1000/1h");
        let global = rate(Side::Client, "login", Scope::Global, "100/1h");
        let (a, b) = if global_first {
            (global, target)
        } else {
            (target, global)
        };
        let e = engine(Policy::builder().limit(a).unwrap().limit(b).unwrap());
        // Touch every key once from this thread (see the module docs).
        assert!(
            e.check(&Request::client("login").ip("203.0.113.1".parse().unwrap()))
                .unwrap()
                .allowed
        );
        let per_thread: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(0)).collect();
        // Warm the per-thread keys without consuming: claim their cells with
        // a zero-cost check.
        for i in 0..THREADS {
            let req = Request::client("login").ip(thread_ip(i)).cost(0);
            assert!(e.check(&req).unwrap().allowed);
        }
        hammer(|i| {
            let req = Request::client("login").ip(thread_ip(i));
            for _ in 0..500 {
                if e.check(&req).unwrap().allowed {
                    per_thread[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let total: u64 = per_thread.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        assert_eq!(total + 1, 100, "global_first={global_first}");
        // Every undo was exact: each address's bucket holds exactly what it was admitted.
        for (i, n) in per_thread.iter().enumerate() {
            let t = Target::Ip(thread_ip(i).into());
            let r = e.inspect(&t).unwrap();
            assert_eq!(r[0].remaining, 1000 - n.load(Ordering::Relaxed), "thread {i}");
        }
        let g = e.inspect(&Target::Global).unwrap();
        assert_eq!(g[0].remaining, 0);
    }
}

#[test]
fn two_binding_limits_never_over_admit() {
    // Two addresses shared by four threads: 30 per address, 50 in total.
    let e = engine(
        Policy::builder()
            .limit(rate(Side::Client, "login", per_ip(), "30/1h"))
            .unwrap()
            .limit(rate(Side::Client, "login", Scope::Global, "50/1h"))
            .unwrap(),
    );
    for i in 0..2 {
        let req = Request::client("login").ip(thread_ip(i)).cost(0);
        assert!(e.check(&req).unwrap().allowed);
    }
    let per_ip: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
    hammer(|i| {
        let req = Request::client("login").ip(thread_ip(i % 2));
        for _ in 0..200 {
            if e.check(&req).unwrap().allowed {
                per_ip[i % 2].fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let counts: Vec<u64> = per_ip.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    assert!(counts.iter().all(|c| *c <= 30), "{counts:?}");
    assert!(counts.iter().sum::<u64>() <= 50, "{counts:?}");
    // And exact accounting afterwards.
    let g = e.inspect(&Target::Global).unwrap()[0].remaining;
    assert_eq!(g, 50 - counts.iter().sum::<u64>());
    for (i, c) in counts.iter().enumerate() {
        let r = e.inspect(&Target::Ip(thread_ip(i).into())).unwrap()[0].remaining;
        assert_eq!(r, 30 - c);
    }
}

#[test]
fn shadow_limits_never_deny_under_threads() {
    let e = engine(
        Policy::builder()
            .limit(rate(Side::Client, "login", Scope::Global, "10/1h").shadow(true))
            .unwrap()
            .limit(rate(Side::Client, "login", per_ip(), "100/1h"))
            .unwrap(),
    );
    assert!(
        e.check(&Request::client("login").ip(thread_ip(9)))
            .unwrap()
            .allowed
    );
    for i in 0..THREADS {
        assert!(
            e.check(&Request::client("login").ip(thread_ip(i)).cost(0))
                .unwrap()
                .allowed
        );
    }
    let admitted = AtomicU64::new(0);
    hammer(|i| {
        let req = Request::client("login").ip(thread_ip(i));
        for _ in 0..100 {
            let d = e.check(&req).unwrap();
            assert!(d.allowed, "shadow or own limit denied within 100");
            admitted.fetch_add(1, Ordering::Relaxed);
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 400);
    // The shadow bucket was consumed only while it allowed: exactly 10 in all.
    let g = e.inspect(&Target::Global).unwrap();
    assert_eq!(g[0].remaining, 0);
    assert_eq!(g[0].reset, Duration::from_secs(3600));
}

/// Several threads touch a brand-new key at the same instant. Before the
/// fix in `MemoryStore::claim`, a claimer could take a second cell for a key
/// another thread had just claimed, or overwrite a consumption that landed
/// between publishing the key and setting its TAT: in every run, some of 300
/// fresh keys (up to 30) admitted 6 through a limit of 5.
#[test]
fn first_touch_by_racing_threads_is_counted() {
    let e = engine(
        Policy::builder()
            .limit(rate(Side::Client, "login", per_ip(), "5/1h"))
            .unwrap(),
    );
    let keys = 300u32;
    let counts: Vec<AtomicU64> = (0..keys).map(|_| AtomicU64::new(0)).collect();
    let barrier = Barrier::new(THREADS);
    let ip = |k: u32| -> IpAddr { format!("10.{}.{}.1", k / 256, k % 256).parse().unwrap() };
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (e, counts, barrier) = (&e, &counts, &barrier);
            s.spawn(move || {
                for k in 0..keys {
                    barrier.wait();
                    let req = Request::client("login").ip(ip(k));
                    for _ in 0..3 {
                        if e.check(&req).unwrap().allowed {
                            counts[k as usize].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let counts: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let over: Vec<(usize, u64)> = counts
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, c)| *c > 5)
        .collect();
    assert!(over.is_empty(), "keys admitting more than 5: {over:?}");
    assert!(counts.iter().all(|c| *c == 5), "{counts:?}");
    for k in 0..keys {
        let state = e.inspect(&Target::Ip(ip(k).into())).unwrap();
        assert_eq!(state[0].remaining, 0, "key {k}");
    }
}
