//! Prometheus counters, lock-free on the decision path.
//!
//! Counter cells are pre-created for every action and limit of the policy
//! (and carried over on reload), so recording a decision is a few hash
//! lookups and relaxed atomic adds — no lock, no allocation. The adds go
//! to the calling thread's stripe ([`Striped`]): one counter every thread
//! adds to moves its cache line between cores on every add.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_core::{Decision, LimitOutcome, Policy, Side};

type Cells = Striped<3>;

/// Stripes per counter set: threads beyond this share stripes.
const STRIPES: usize = 8;

/// One thread's stripe, a cache line of its own.
#[repr(align(128))]
struct Stripe<const K: usize>([AtomicU64; K]);

/// `K` counters split in stripes, each thread adding to its own: reads
/// (a scrape) sum the stripes. For counters every request touches from
/// every thread (decisions, the gateways' outcomes).
pub struct Striped<const K: usize>([Stripe<K>; STRIPES]);

impl<const K: usize> Default for Striped<K> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| {
            Stripe(std::array::from_fn(|_| AtomicU64::new(0)))
        }))
    }
}

impl<const K: usize> std::fmt::Debug for Striped<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries((0..K).map(|i| self.get(i))).finish()
    }
}

impl<const K: usize> Striped<K> {
    /// Adds one to counter `i` (panics if `i >= K`: a caller's constant).
    #[inline]
    pub fn add(&self, i: usize) {
        self.0[stripe()].0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counter `i`, summed over the stripes.
    pub fn get(&self, i: usize) -> u64 {
        self.0.iter().map(|s| s.0[i].load(Ordering::Relaxed)).sum()
    }
}

/// The calling thread's stripe, dealt round-robin at its first use.
fn stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|m| *m)
}

fn outcome_ix(o: LimitOutcome) -> usize {
    match o {
        LimitOutcome::Allowed => 0,
        LimitOutcome::Denied => 1,
        LimitOutcome::ShadowDenied => 2,
    }
}

const OUTCOMES: [&str; 3] = ["allowed", "denied", "shadow_denied"];

/// Names from the config only (never from requests): foldhash's fast
/// hasher, not SipHash, since two lookups run on every decision recorded.
type Names<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Table {
    /// `[side][action]` → allowed / denied / (unused).
    actions: [Names<Arc<Cells>>; 2],
    limits: Names<(Side, Box<str>, Arc<Cells>)>,
}

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    table: ArcSwap<Table>,
    /// Store failures (remote stores).
    pub store_errors: AtomicU64,
    /// Automatic bans placed.
    pub autobans: AtomicU64,
    /// Requests refused with 400.
    pub bad_requests: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Gauges read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Keys with live state in the store.
    pub tracked_keys: u64,
    /// Leases held.
    pub active_leases: u64,
    /// Bans in force.
    pub bans: u64,
    /// Live keys evicted by the memory store so far.
    pub evictions: u64,
    /// The memory store's capacity.
    pub capacity: u64,
}

impl Metrics {
    /// Counters for `policy`.
    pub fn new(policy: &Policy) -> Self {
        let m = Self::default();
        m.update(policy);
        m
    }

    /// Adds cells for a new policy, keeping existing counts.
    pub fn update(&self, policy: &Policy) {
        let old = self.table.load();
        let mut t = Table::default();
        for (side, action, _) in policy.actions() {
            let cells = old.actions[side as usize]
                .get(action.as_str())
                .cloned()
                .unwrap_or_default();
            t.actions[side as usize].insert(action.into(), cells);
        }
        for l in policy.limits() {
            let cells = old.limits.get(l.name).map(|c| c.2.clone()).unwrap_or_default();
            t.limits
                .insert((*l.name).into(), (l.side, (*l.action).into(), cells));
        }
        // Limits removed by a reload keep their history on the scrape.
        for (name, v) in old.limits.iter() {
            t.limits.entry(name.clone()).or_insert_with(|| v.clone());
        }
        self.table.store(Arc::new(t));
    }

    /// Counts one decision.
    pub fn record(&self, side: Side, action: &str, d: &Decision) {
        let t = self.table.load();
        if let Some(c) = t.actions[side as usize].get(action) {
            c.add(usize::from(!d.allowed));
        }
        for l in &d.limits {
            if let Some((_, _, c)) = t.limits.get(l.name) {
                c.add(outcome_ix(l.outcome));
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: Gauges) -> String {
        let t = self.table.load();
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP sluice_decisions_total Decisions by side, action and outcome.\n");
        out.push_str("# TYPE sluice_decisions_total counter\n");
        for side in Side::ALL {
            let mut actions: Vec<_> = t.actions[side as usize].iter().collect();
            actions.sort_by(|a, b| a.0.cmp(b.0));
            for (action, c) in actions {
                for (i, o) in OUTCOMES[..2].iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "sluice_decisions_total{{side=\"{side}\",action=\"{action}\",outcome=\"{o}\"}} {}",
                        c.get(i)
                    );
                }
            }
        }
        out.push_str(
            "# HELP sluice_limit_decisions_total How each limit judged the requests it applied to.\n",
        );
        out.push_str("# TYPE sluice_limit_decisions_total counter\n");
        let mut limits: Vec<_> = t.limits.iter().collect();
        limits.sort_by(|a, b| a.0.cmp(b.0));
        for (name, (side, action, c)) in limits {
            for (i, o) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "sluice_limit_decisions_total{{side=\"{side}\",action=\"{action}\",limit=\"{name}\",outcome=\"{o}\"}} {}",
                    c.get(i)
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut out,
            "sluice_tracked_keys",
            "Keys holding live rate state.",
            "gauge",
            g.tracked_keys,
        );
        gauge(
            &mut out,
            "sluice_store_capacity",
            "Most keys the store can track.",
            "gauge",
            g.capacity,
        );
        gauge(
            &mut out,
            "sluice_store_evictions_total",
            "Live keys evicted into the over-estimating sketch.",
            "counter",
            g.evictions,
        );
        gauge(
            &mut out,
            "sluice_active_leases",
            "Concurrency leases held.",
            "gauge",
            g.active_leases,
        );
        gauge(&mut out, "sluice_bans", "Bans in force.", "gauge", g.bans);
        gauge(
            &mut out,
            "sluice_autobans_total",
            "Automatic bans placed.",
            "counter",
            self.autobans.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "sluice_store_errors_total",
            "Store failures.",
            "counter",
            self.store_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "sluice_bad_requests_total",
            "API requests refused as malformed.",
            "counter",
            self.bad_requests.load(Ordering::Relaxed),
        );
        out
    }
}
