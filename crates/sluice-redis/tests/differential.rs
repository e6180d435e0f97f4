//! Redis (on the caller's clock) answers exactly as the memory store, for
//! random sequences of batches: rates, costs, shadow buckets, dry runs,
//! concurrency slots and leases, time moving in uneven steps.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::sync::Arc;

use sluice_core::gcra::Gcra;
use sluice_core::policy::intern;
use sluice_core::store::{Batch, Bucket, Slot, Store};
use sluice_core::{MemoryStore, Nanos, Target};
use sluice_redis::{RedisStore, TimeSource};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// The memory store's key: one per (limit, target), as the engine's keyed hash.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn redis_matches_memory_exactly() {
    let Some(url) = common::redis_url() else { return };
    run(common::options(&url, "diff", TimeSource::Caller));
}

/// On a Cluster, batches naming several targets span slots (and nodes):
/// grouping, undo and lease records must not change a single answer.
#[test]
fn cluster_matches_memory_exactly() {
    let Some(urls) = common::redis_cluster_urls() else {
        return;
    };
    run(common::cluster_options(&urls, "diff", TimeSource::Caller));
}

fn run(opts: sluice_redis::Options) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(RedisStore::connect(opts)).unwrap();
    let memory = Arc::new(MemoryStore::new(1 << 12));
    let targets: Vec<Target> = [
        "ip:203.0.113.1",
        "ip:203.0.113.2",
        "user:@a:example.org",
        "global",
    ]
    .iter()
    .map(|t| t.parse().unwrap())
    .collect();
    // (name, emission, burst): odd emissions exercise non-round TATs.
    let rates = [
        ("a", 6 * S, 10),
        ("b", 97_656, 10_240),
        ("c", 360 * S, 1),
        ("d", 1_234_567, 7),
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut now: Nanos = 1_700_000_000 * S + 123_456_789;
    let mut lease_seq = 1u128;
    let mut leases: Vec<u128> = Vec::new();
    for step in 0..1500 {
        now += match rng.below(4) {
            0 => 0,
            1 => rng.below(10 * MS) * 1000,
            2 => rng.below(10 * S),
            _ => rng.below(400) * S,
        };
        let mut batch = Batch::default();
        for _ in 0..1 + rng.below(3) {
            let (name, em, burst) = rates[rng.below(4) as usize];
            let t = targets[rng.below(4) as usize].clone();
            let key = fnv(&format!("r|{name}|{t}"));
            if batch.buckets.iter().any(|b: &Bucket| b.key == key) {
                continue;
            }
            let g = Gcra::new(em, burst);
            let cost = match rng.below(5) {
                0 => burst + 1,
                1 => 1 + rng.below(burst),
                _ => 1,
            };
            batch.buckets.push(Bucket {
                key,
                limit: intern(name),
                target: t,
                gcra: g,
                cost,
                shadow: rng.below(5) == 0,
            });
        }
        let mode = rng.below(6);
        if mode == 0 {
            batch.dry_run = true;
        } else if mode == 1 {
            let t = targets[rng.below(2) as usize].clone();
            batch.slots.push(Slot {
                key: fnv(&format!("c|{t}")),
                limit: intern("conc"),
                target: t,
                max: 3,
                shadow: rng.below(4) == 0,
            });
            batch.lease = Some((lease_seq, now + (1 + rng.below(600)) * S));
            lease_seq += 1;
        } else if mode == 2 && !leases.is_empty() {
            let id = leases.swap_remove(rng.below(leases.len() as u64) as usize);
            assert_eq!(
                memory.release(id, now).unwrap(),
                redis.release(id, now).unwrap(),
                "release {id} at step {step}"
            );
        }
        let m = memory.decide(&batch, now).unwrap();
        let r = redis.decide(&batch, now).unwrap();
        assert_eq!(m, r, "step {step}: {batch:?}");
        if r.committed {
            if let Some((id, _)) = batch.lease {
                leases.push(id);
            }
        }
        for b in &batch.buckets {
            // A TAT at or before now is "full" however it is written.
            let seen = |tat: Nanos| b.gcra.snapshot(tat, now);
            assert_eq!(
                seen(memory.peek(b, now).unwrap()),
                seen(redis.peek(b, now).unwrap()),
                "peek at step {step}"
            );
        }
        if step % 100 == 99 {
            assert_eq!(
                memory.active_leases(now),
                rt.block_on(redis.count_leases(now)).unwrap(),
                "live leases at step {step}"
            );
        }
    }
}
