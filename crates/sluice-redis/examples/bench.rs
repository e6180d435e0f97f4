//! Decisions per second and latency of the Redis store, as `scripts/bench-redis`
//! runs it: `cargo run --release -p sluice-redis --example bench -- URL`.
//!
//! 1. unpipelined: one decision at a time (one task);
//! 2. concurrent: 64 tasks on one multiplexed connection (pipelined on the wire);
//! 3. local admission: two stores (two "instances") share one global limit,
//!    taking units in batches; admitted vs. what an exact limiter allows.

#![allow(clippy::unwrap_used, reason = "a benchmark")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::gcra::Gcra;
use sluice_core::policy::intern;
use sluice_core::store::{Batch, Bucket};
use sluice_core::{Clock, MonotonicClock, Target};
use sluice_redis::{Options, RedisStore};

fn batch(i: u64, g: Gcra, global: Option<Gcra>) -> Batch {
    let mut b = Batch::default();
    let t: Target = format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
        .parse()
        .unwrap();
    b.buckets.push(Bucket {
        key: i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        limit: intern("bench"),
        target: t,
        gcra: g,
        cost: 1,
        shadow: false,
    });
    if let Some(gg) = global {
        b.buckets.push(Bucket {
            key: 7,
            limit: intern("bench_global"),
            target: Target::Global,
            gcra: gg,
            cost: 1,
            shadow: false,
        });
    }
    b
}

async fn run(store: &RedisStore, tasks: u64, dur: Duration, keys: u64) -> (f64, Vec<u64>) {
    let clock = Arc::new(MonotonicClock::new());
    let g = Gcra::new(60_000_000, 1000); // 1000/1m per key: allows
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut hs = Vec::new();
    for t in 0..tasks {
        let (store, clock, done) = (store.clone(), clock.clone(), done.clone());
        hs.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while start.elapsed() < dur {
                let b = batch(i % keys, g, None);
                let t0 = Instant::now();
                store.decide_async(&b, clock.now()).await.unwrap();
                lat.push(t0.elapsed().as_micros() as u64);
                i += tasks;
                done.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in hs {
        lat.extend(h.await.unwrap());
    }
    lat.sort_unstable();
    (
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        lat,
    )
}

fn pct(l: &[u64], p: f64) -> u64 {
    l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dur = Duration::from_secs(secs);
    let mut o = Options::new(&url);
    o.key_prefix = format!("bench:{}:", std::process::id());
    o.command_timeout = Duration::from_secs(2);
    let store = RedisStore::open(o.clone()).unwrap();
    for (name, tasks) in [
        ("unpipelined (1 in flight)", 1),
        ("concurrent (16 in flight)", 16),
        ("concurrent (64 in flight)", 64),
    ] {
        let (rate, lat) = run(&store, tasks, dur, 100_000).await;
        println!(
            "sluice {name:28} {rate:>9.0} decisions/s  p50 {:>5} µs  p99 {:>6} µs",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }

    // Local admission: a global 20000/1s limit (burst 20000), two instances, 64 tasks each.
    let rate_per_s = 20_000u64;
    let g = Gcra::new(1_000_000_000 / rate_per_s, rate_per_s);
    let per_key = Gcra::new(1, u64::MAX / 4); // per-target bucket that never denies
    for batch_n in [1u32, 50] {
        let mut o2 = o.clone();
        o2.key_prefix = format!("bench:la:{}:{batch_n}:", std::process::id());
        o2.local_admission = batch_n;
        o2.local_hold = Duration::from_millis(100);
        let a = RedisStore::open(o2.clone()).unwrap();
        let b = RedisStore::open(o2).unwrap();
        let clock = Arc::new(MonotonicClock::new());
        let admitted = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut hs = Vec::new();
        for t in 0..128u64 {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            let (clock, admitted, total) = (clock.clone(), admitted.clone(), total.clone());
            hs.push(tokio::spawn(async move {
                while start.elapsed() < dur {
                    let bt = batch(t, per_key, Some(g));
                    if store.decide_async(&bt, clock.now()).await.unwrap().committed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        let el = start.elapsed().as_secs_f64();
        let exact = rate_per_s as f64 * (1.0 + el); // burst + refill over the run
        let adm = admitted.load(Ordering::Relaxed) as f64;
        let (sa, sb) = (a.stats(), b.stats());
        println!(
            "local admission batch {batch_n:>3}: {:>9.0} decisions/s, admitted {adm:.0} of exact bound {exact:.0} (overshoot {:+.0}, bound 2×{}), redis calls {}, local admits {}",
            total.load(Ordering::Relaxed) as f64 / el,
            adm - exact,
            batch_n.saturating_sub(1),
            sa.remote + sb.remote,
            sa.local_admits + sb.local_admits,
        );
    }
}
