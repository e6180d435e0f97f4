//! The four contenders, each deciding "per-target bucket + global bucket".

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use sluice_core::store::{Batch, Bucket, KeyedBucket, KeyedResult};
use sluice_core::{
    Clock, CoarseClock, Engine, Limit, LimitKind, MemoryStore, Per, Policy, Rate, Request, Scope, Side,
    Store, Target, TargetKind,
};

use crate::harness::Contender;

/// The action every contender limits: per client IP, plus a global bucket.
pub const ACTION: &str = "login";

/// Per-key rate of the timing runs: generous, so every request is allowed.
pub const TARGET_PER_SEC: u32 = 1_000_000;
/// Global rate of the timing runs.
pub const GLOBAL_PER_SEC: u32 = 1_000_000_000;

/// splitmix64: a tiny, good-enough generator for key orders and key hashes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n` > 0; the bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// splitmix64's finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The client address of key `i` (distinct for `i` < 2^24).
pub fn ip_of(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000u32.wrapping_add(i)))
}

/// The store key of key `i` for the store-only runs (never 0: 0 marks an empty cell).
pub fn store_key(seed: u64, i: u32) -> u64 {
    mix64(seed ^ u64::from(i).wrapping_mul(0xA24B_AED4_963E_E407)).max(1)
}

/// `client.target.login.ip` + `client.global.login`.
pub fn policy(target: Rate, global: Rate) -> Policy {
    Policy::builder()
        .limit(Limit::new(
            Side::Client,
            ACTION,
            Scope::Target(Per::Kind(TargetKind::Ip)),
            LimitKind::Rate(target),
        ))
        .and_then(|b| {
            b.limit(Limit::new(
                Side::Client,
                ACTION,
                Scope::Global,
                LimitKind::Rate(global),
            ))
        })
        .expect("the bench policy is valid: a built-in action, two distinct limits")
        .build()
}

/// Rate of `n` per second.
pub fn per_sec(n: u32) -> Rate {
    Rate::new(u64::from(n), Duration::from_secs(1)).expect("a positive count per second")
}

/// Per-thread key sequences (random draws from `keys` keys), in the form each
/// contender needs, so no contender pays for translating keys in the loop.
pub struct Seqs {
    /// Key indexes (the raw table's slots).
    pub idx: Vec<Vec<u32>>,
    /// Client addresses (engine, governor).
    pub ips: Vec<Vec<IpAddr>>,
    /// Store keys (store-only runs).
    pub hashes: Vec<Vec<u64>>,
}

impl Seqs {
    /// `threads` sequences of `len` (a power of two) random keys out of `keys`.
    pub fn new(keys: u32, threads: usize, len: usize, seed: u64) -> Self {
        debug_assert!(len.is_power_of_two());
        let idx: Vec<Vec<u32>> = (0..threads)
            .map(|t| {
                let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                (0..len).map(|_| rng.below(u64::from(keys)) as u32).collect()
            })
            .collect();
        let ips = idx
            .iter()
            .map(|s| s.iter().map(|&i| ip_of(i)).collect())
            .collect();
        let hashes = idx
            .iter()
            .map(|s| s.iter().map(|&i| store_key(seed, i)).collect())
            .collect();
        Self { idx, ips, hashes }
    }
}

#[inline]
fn at<T: Copy>(seq: &[T], i: usize) -> T {
    seq[i & (seq.len() - 1)]
}

/// sluice's whole decision path: `Engine::check`.
pub struct EngineBench<'a> {
    /// The engine.
    pub engine: Engine,
    /// Its store, for stats.
    pub store: Arc<MemoryStore>,
    seqs: &'a Seqs,
}

impl<'a> EngineBench<'a> {
    /// An engine with a memory store of `max_keys` and a coarse clock.
    pub fn new(max_keys: usize, clock: &CoarseClock, seqs: &'a Seqs) -> Self {
        let store = Arc::new(MemoryStore::new(max_keys));
        let engine = Engine::new(
            policy(per_sec(TARGET_PER_SEC), per_sec(GLOBAL_PER_SEC)),
            store.clone(),
            Arc::new(clock.clone()),
        );
        Self { engine, store, seqs }
    }

    fn check(&self, ip: IpAddr) -> bool {
        let req = Request::client(ACTION).ip(ip);
        self.engine.check(&req).is_ok_and(|d| d.allowed)
    }

    /// One decision for key `i` (to populate the store).
    pub fn touch(&self, i: u32) {
        self.check(ip_of(i));
    }
}

/// `n` bans on addresses no contender's key uses (`192.168.0.0/16` and up),
/// half single addresses and half /24 networks, as an attack leaves them.
pub fn ban_others(engine: &Engine, n: u32) {
    for i in 0..n {
        let base = 0xC0A8_0000u32.wrapping_add(i << 8);
        let target = if i % 2 == 0 {
            Target::Ip(ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(base | 7), 32).expect("a /32 is valid"),
            ))
        } else {
            Target::Ip(ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(base), 24).expect("a /24 is valid"),
            ))
        };
        engine.ban(target, None, "bench");
    }
}

/// The same decision as [`EngineBench`] on an engine holding bans that do
/// not match: the cost of looking bans up on every decision.
pub struct BansBench<'a, 'b>(pub &'b EngineBench<'a>);

impl Contender for BansBench<'_, '_> {
    fn name(&self) -> &'static str {
        "sluice Engine::check, 10k bans"
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        let seq = &self.0.seqs.ips[t];
        (0..ops)
            .map(|j| u64::from(self.0.check(at(seq, start + j))))
            .sum()
    }
}

impl Contender for EngineBench<'_> {
    fn name(&self) -> &'static str {
        "sluice Engine::check"
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        let seq = &self.seqs.ips[t];
        (0..ops).map(|j| u64::from(self.check(at(seq, start + j)))).sum()
    }
}

/// The same engine answering the verdict only (`Engine::admit`): no
/// per-limit report, as an embedder that needs none would call it.
pub struct AdmitBench<'a, 'b>(pub &'b EngineBench<'a>);

impl Contender for AdmitBench<'_, '_> {
    fn name(&self) -> &'static str {
        "sluice Engine::admit"
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        let seq = &self.0.seqs.ips[t];
        (0..ops)
            .map(|j| {
                let req = Request::client(ACTION).ip(at(seq, start + j));
                u64::from(self.0.engine.admit(&req).is_ok_and(|a| a.allowed))
            })
            .sum()
    }
}

/// sluice's store alone: `MemoryStore::decide_keyed` (the memory store's
/// path for the engine's common decision) on two pre-built buckets.
pub struct StoreBench<'a> {
    /// The store.
    pub store: MemoryStore,
    clock: CoarseClock,
    batch: Batch,
    seqs: &'a Seqs,
}

impl<'a> StoreBench<'a> {
    /// A store of `max_keys`; the batch's first bucket's key changes per decision.
    pub fn new(max_keys: usize, clock: &CoarseClock, seqs: &'a Seqs, seed: u64) -> Self {
        let bucket = |key: u64, limit: &str, rate: Rate| Bucket {
            key,
            limit: sluice_core::policy::intern(limit),
            target: Target::Global,
            gcra: rate.gcra(),
            cost: 1,
            shadow: false,
        };
        let batch = Batch {
            buckets: [
                bucket(1, "client.target.login.ip", per_sec(TARGET_PER_SEC)),
                bucket(
                    mix64(seed ^ 0x676C_6F62_616C).max(1),
                    "client.global.login",
                    per_sec(GLOBAL_PER_SEC),
                ),
            ]
            .into_iter()
            .collect(),
            ..Batch::default()
        };
        Self {
            store: MemoryStore::new(max_keys),
            clock: clock.clone(),
            batch,
            seqs,
        }
    }

    fn decide(&self, buckets: &mut [KeyedBucket; 2], key: u64) -> bool {
        buckets[0].key = key;
        let mut results = [KeyedResult::default(); 2];
        self.store
            .decide_keyed(buckets, false, self.clock.now(), &mut results)
            .unwrap_or(false)
    }

    fn buckets(&self) -> [KeyedBucket; 2] {
        [self.batch.buckets[0].keyed(), self.batch.buckets[1].keyed()]
    }
}

impl Contender for StoreBench<'_> {
    fn name(&self) -> &'static str {
        "sluice MemoryStore::decide_keyed"
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        let seq = &self.seqs.hashes[t];
        let mut buckets = self.buckets();
        (0..ops)
            .map(|j| u64::from(self.decide(&mut buckets, at(seq, start + j))))
            .sum()
    }
}

/// governor: a keyed limiter (DashMap state store) plus a direct limiter for
/// the global bucket. Not all-or-nothing: a request the global bucket denies
/// has already consumed from its key's bucket.
pub struct GovernorBench<'a> {
    keyed: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
    seqs: &'a Seqs,
}

impl<'a> GovernorBench<'a> {
    /// Limiters with the same rates as the others.
    pub fn new(seqs: &'a Seqs) -> Self {
        Self {
            keyed: RateLimiter::keyed(governor_quota(TARGET_PER_SEC)),
            global: RateLimiter::direct(governor_quota(GLOBAL_PER_SEC)),
            seqs,
        }
    }

    /// Keys held by the keyed limiter.
    pub fn keys(&self) -> usize {
        self.keyed.len()
    }

    fn check(&self, ip: &IpAddr) -> bool {
        self.keyed.check_key(ip).is_ok() && self.global.check().is_ok()
    }
}

/// `n` per second with a burst of `n`, as governor spells it.
pub fn governor_quota(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).expect("rates are positive constants"))
}

impl Contender for GovernorBench<'_> {
    fn name(&self) -> &'static str {
        "governor keyed + direct"
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        let seq = &self.seqs.ips[t];
        (0..ops).map(|j| u64::from(self.check(&at(seq, start + j)))).sum()
    }
}

#[repr(align(128))]
struct Padded(AtomicU64);

/// The floor: a pre-sized `Vec<AtomicU64>` indexed directly by key (no
/// hashing, no lookup, no key stored), one GCRA CAS per slot, a target slot
/// and a global slot per decision, time from a coarse clock.
pub struct RawBench<'a> {
    slots: Box<[AtomicU64]>,
    global: Padded,
    clock: CoarseClock,
    target: (u64, u64),
    global_gcra: (u64, u64),
    seqs: &'a Seqs,
}

/// GCRA on one slot: `(emission, tau)`; false (and unchanged) if denied.
#[inline]
fn gcra_cas(slot: &AtomicU64, now: u64, (emission, tau): (u64, u64)) -> bool {
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let new = cur.max(now) + emission;
        if new.saturating_sub(tau) > now {
            return false;
        }
        match slot.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

impl<'a> RawBench<'a> {
    /// A table of `keys` slots.
    pub fn new(keys: u32, clock: &CoarseClock, seqs: &'a Seqs) -> Self {
        let params = |r: Rate| (r.emission(), r.emission() * r.burst());
        Self {
            slots: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            global: Padded(AtomicU64::new(0)),
            clock: clock.clone(),
            target: params(per_sec(TARGET_PER_SEC)),
            global_gcra: params(per_sec(GLOBAL_PER_SEC)),
            seqs,
        }
    }

    #[inline]
    fn check(&self, slot: u32) -> bool {
        let now = self.clock.now();
        let slot = &self.slots[slot as usize];
        if !gcra_cas(slot, now, self.target) {
            return false;
        }
        if !gcra_cas(&self.global.0, now, self.global_gcra) {
            slot.fetch_sub(self.target.0, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl Contender for RawBench<'_> {
    fn name(&self) -> &'static str {
        "raw Vec<AtomicU64>"
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        let seq = &self.seqs.idx[t];
        (0..ops).map(|j| u64::from(self.check(at(seq, start + j)))).sum()
    }
}

/// Touches every key once, in order, so each contender starts with `keys` active keys.
pub fn populate(
    keys: u32,
    engine: &EngineBench<'_>,
    store: &StoreBench<'_>,
    gov: &GovernorBench<'_>,
    raw: &RawBench<'_>,
    seed: u64,
) {
    let mut buckets = store.buckets();
    for i in 0..keys {
        engine.check(ip_of(i));
        store.decide(&mut buckets, store_key(seed, i));
        gov.check(&ip_of(i));
        raw.check(i);
    }
}
