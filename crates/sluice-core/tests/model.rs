//! Model-based property test: the real [`Engine`] (memory store, fake clock)
//! and a naive reference model run the same random operations, and every
//! answer must agree exactly — allowed, `retry_after` to the nanosecond, the
//! reason, and each limit's remaining, reset and outcome.
//!
//! The reference model is written independently of `gcra.rs` and
//! `memory.rs`: one exact token bucket per (limit, target) in integer
//! nanoseconds, `level = min(burst·T, level + elapsed)`, allowed iff
//! `level ≥ cost·T`, with `T = rate.emission()`. On top of that it implements
//! the engine's contract in the most obvious way: all-or-nothing across
//! buckets, shadow buckets consumed only when they allow and the request is
//! allowed (never denying), dry runs consuming nothing, bans (exact and
//! network, with expiry) winning over limits, and overrides (multiply,
//! replace, unlimited). Targets are grouped by hand-written tables, not by the
//! engine's normaliser.

#![allow(clippy::unwrap_used, reason = "test helpers unwrap fixed, valid inputs")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use sluice_core::store::{self, Batch, LeaseId, Outcome, Slot};
use sluice_core::{
    Clock, Decision, Effect, Engine, FakeClock, Limit, LimitKind, LimitOutcome, LimitReport, Matcher,
    MemoryStore, Nanos, Override, Per, Policy, Rate, Reason, Request, Scope, Side, Store, StoreError, Target,
    TargetKind,
};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

// ---------------------------------------------------------------- the fixed policy

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Ip,
    AnonIp,
    User,
    Server,
    Global,
}

struct Def {
    name: &'static str,
    side: Side,
    action: &'static str,
    who: Who,
    rate: &'static str,
    burst: Option<u64>,
    shadow: bool,
}

const DEFS: &[Def] = &[
    Def {
        name: "client.target.login.ip",
        side: Side::Client,
        action: "login",
        who: Who::Ip,
        rate: "4/8s",
        burst: None,
        shadow: false,
    },
    Def {
        name: "client.global.login",
        side: Side::Client,
        action: "login",
        who: Who::Global,
        rate: "10/10s",
        burst: None,
        shadow: false,
    },
    Def {
        name: "client.target.request.anonymous_ip",
        side: Side::Client,
        action: "request",
        who: Who::AnonIp,
        rate: "3/3s",
        burst: Some(5),
        shadow: false,
    },
    Def {
        name: "client.target.request.user",
        side: Side::Client,
        action: "request",
        who: Who::User,
        rate: "6/6s",
        burst: None,
        shadow: true,
    },
    Def {
        name: "client.global.request",
        side: Side::Client,
        action: "request",
        who: Who::Global,
        rate: "30/3s",
        burst: None,
        shadow: true,
    },
    Def {
        name: "client.target.media_create.user",
        side: Side::Client,
        action: "media_create",
        who: Who::User,
        rate: "1000B/10s",
        burst: None,
        shadow: false,
    },
    Def {
        name: "client.global.media_create",
        side: Side::Client,
        action: "media_create",
        who: Who::Global,
        rate: "3000B/10s",
        burst: None,
        shadow: false,
    },
    Def {
        name: "federation.target.transaction.server",
        side: Side::Federation,
        action: "transaction",
        who: Who::Server,
        rate: "3/1s",
        burst: None,
        shadow: false,
    },
    Def {
        name: "federation.global.transaction",
        side: Side::Federation,
        action: "transaction",
        who: Who::Global,
        rate: "8/1s",
        burst: Some(4),
        shadow: true,
    },
];

/// Actions requests are drawn from: `(side, action)`. `join` has no limit.
const ACTIONS: &[(Side, &str)] = &[
    (Side::Client, "login"),
    (Side::Client, "request"),
    (Side::Client, "media_create"),
    (Side::Federation, "transaction"),
    (Side::Client, "join"),
];

fn def_rate(d: &Def) -> Rate {
    let r: Rate = d.rate.parse().unwrap();
    match d.burst {
        Some(b) => r.with_burst(b).unwrap(),
        None => r,
    }
}

fn build_policy() -> Policy {
    let mut b = Policy::builder();
    for d in DEFS {
        let scope = match d.who {
            Who::Ip => Scope::Target(Per::Kind(TargetKind::Ip)),
            Who::AnonIp => Scope::Target(Per::AnonymousIp),
            Who::User => Scope::Target(Per::Kind(TargetKind::User)),
            Who::Server => Scope::Target(Per::Kind(TargetKind::Server)),
            Who::Global => Scope::Global,
        };
        let l = Limit::new(d.side, d.action, scope, LimitKind::Rate(def_rate(d))).shadow(d.shadow);
        assert_eq!(l.name, d.name);
        b = b.limit(l).unwrap();
    }
    b.override_limit(Override {
        matcher: Matcher::Network("10.0.0.0/8".parse().unwrap()),
        actions: vec!["login".into()],
        effect: Effect::Multiply(2.0),
    })
    .override_limit(Override {
        matcher: Matcher::Target(Target::user("@vip:example.org").unwrap()),
        actions: vec!["media_create".into()],
        effect: Effect::Replace("2000B/10s".parse().unwrap()),
    })
    .override_limit(Override {
        matcher: Matcher::Target(Target::server("trusted.example").unwrap()),
        actions: vec![],
        effect: Effect::Unlimited,
    })
    .build()
}

// ---------------------------------------------------------------- target pools (hand-grouped)

/// `(spelling, the target it is counted as)`.
const IPS: &[(&str, &str)] = &[
    ("203.0.113.7", "ip:203.0.113.7"),
    ("::ffff:203.0.113.7", "ip:203.0.113.7"),
    ("203.0.113.8", "ip:203.0.113.8"),
    ("2001:db8:1:2::1", "ip:2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:1:2:3", "ip:2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "ip:2001:db8:1:3::/64"),
    ("10.1.2.3", "ip:10.1.2.3"),
    ("::ffff:10.1.2.3", "ip:10.1.2.3"),
];
const USERS: &[(&str, &str)] = &[
    ("@a:example.org", "user:@a:example.org"),
    ("@a:EXAMPLE.org", "user:@a:example.org"),
    ("@b:example.org", "user:@b:example.org"),
    ("@vip:example.org", "user:@vip:example.org"),
];
const SERVERS: &[(&str, &str)] = &[
    ("a.example", "server:a.example"),
    ("A.Example.", "server:a.example"),
    ("b.example", "server:b.example"),
    ("trusted.example", "server:trusted.example"),
];

/// Bans the model knows: `(target, prefix length for IP networks, targets covered)`.
const BANS: &[(&str, u8, &[&str])] = &[
    ("ip:203.0.113.7", 32, &["ip:203.0.113.7"]),
    ("ip:2001:db8:1:2::/64", 64, &["ip:2001:db8:1:2::/64"]),
    (
        "ip:2001:db8:1::/48",
        48,
        &["ip:2001:db8:1:2::/64", "ip:2001:db8:1:3::/64"],
    ),
    ("server:a.example", 0, &["server:a.example"]),
];

/// Targets `inspect` is asked about: `(spelling, canonical)`.
const INSPECT: &[(&str, &str)] = &[
    ("ip:::ffff:203.0.113.7", "ip:203.0.113.7"),
    ("ip:2001:db8:1:2::5", "ip:2001:db8:1:2::/64"),
    ("ip:10.1.2.3", "ip:10.1.2.3"),
    ("user:@a:example.org", "user:@a:example.org"),
    ("user:@vip:example.org", "user:@vip:example.org"),
    ("server:A.example", "server:a.example"),
    ("server:trusted.example", "server:trusted.example"),
    ("global", "global"),
];

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

// ---------------------------------------------------------------- the reference model

/// Effective `(emission T, burst, period)` of a limit for a target, or
/// `None` when an override lifts it. Written from the override table above.
fn model_rate(d: &Def, target: &str) -> Option<(u64, u64, Duration)> {
    let base = def_rate(d);
    let r = match (d.name, target) {
        ("client.target.login.ip", "ip:10.1.2.3") => Rate::new(8, Duration::from_secs(8)).unwrap(),
        ("client.target.media_create.user", "user:@vip:example.org") => "2000B/10s".parse().unwrap(),
        ("federation.target.transaction.server", "server:trusted.example") => return None,
        _ => base,
    };
    Some((r.emission(), r.burst(), r.period()))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Nanoseconds of credit (`burst·T` when full).
    level: u64,
    /// When `level` was measured.
    at: u64,
}

#[derive(Default)]
struct Model {
    now: u64,
    buckets: HashMap<(usize, String), Bucket>,
    /// Ban index → expiry (`None`: permanent).
    bans: HashMap<usize, Option<u64>>,
}

#[derive(Debug, PartialEq, Eq)]
struct Expect {
    allowed: bool,
    retry_after: Duration,
    reason: String,
    limits: Vec<Row>,
}

/// One limit report, as compared.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    name: String,
    target: String,
    limit: u64,
    window: Option<Duration>,
    remaining: u64,
    reset: Duration,
    outcome: LimitOutcome,
    shadow: bool,
}

impl Row {
    fn of(r: &LimitReport) -> Self {
        Row {
            name: r.name.to_string(),
            target: r.target.to_string(),
            limit: r.limit,
            window: r.window,
            remaining: r.remaining,
            reset: r.reset,
            outcome: r.outcome,
            shadow: r.shadow,
        }
    }
}

fn got(d: &Decision) -> Expect {
    let reason = match &d.reason {
        Reason::Allowed => "allowed".to_owned(),
        Reason::Limited(n) => format!("limited {n}"),
        Reason::TooLarge(n) => format!("too large {n}"),
        Reason::Banned(b) => format!("banned {} until {:?}", b.target, b.expires),
        other => format!("{other:?}"),
    };
    Expect {
        allowed: d.allowed,
        retry_after: d.retry_after,
        reason,
        limits: d.limits.iter().map(Row::of).collect(),
    }
}

impl Model {
    fn level(&self, key: &(usize, String), tau: u64) -> u64 {
        match self.buckets.get(key) {
            None => tau,
            Some(b) => tau.min(b.level.saturating_add(self.now - b.at)),
        }
    }

    fn set(&mut self, key: (usize, String), level: u64) {
        self.buckets.insert(key, Bucket { level, at: self.now });
    }

    /// The ban in force on a target: for addresses, the shortest covering prefix first.
    fn ban_on(&self, target: &str) -> Option<(usize, Option<u64>)> {
        let mut hits: Vec<(u8, usize, Option<u64>)> = BANS
            .iter()
            .enumerate()
            .filter(|(_, (_, _, covers))| covers.contains(&target))
            .filter_map(|(i, (_, len, _))| {
                let exp = *self.bans.get(&i)?;
                exp.is_none_or(|e| e > self.now).then_some((*len, i, exp))
            })
            .collect();
        hits.sort();
        hits.first().map(|(_, i, e)| (*i, *e))
    }

    fn decide(&mut self, req: &Req, dry: bool) -> Expect {
        let (side, action) = ACTIONS[req.action];
        let ip = req.ip.map(|i| IPS[i].1);
        let user = req.user.map(|i| USERS[i].1);
        let server = req.server.map(|i| SERVERS[i].1);
        let appservice = req.appservice.then_some("appservice:bridge");

        for target in [ip, user, server, appservice].into_iter().flatten() {
            if let Some((i, exp)) = self.ban_on(target) {
                let wait = exp.map_or(Duration::MAX, |e| Duration::from_nanos(e - self.now));
                return Expect {
                    allowed: false,
                    retry_after: wait,
                    reason: format!("banned {} until {exp:?}", t(BANS[i].0)),
                    limits: vec![],
                };
            }
        }

        struct Eval {
            key: (usize, String),
            t: u64,
            tau: u64,
            level: u64,
            ok: bool,
            shadow: bool,
            retry: Duration,
            period: Duration,
            burst: u64,
        }
        let anonymous = user.is_none() && appservice.is_none();
        let mut evals = Vec::new();
        for (i, d) in DEFS.iter().enumerate() {
            if d.side != side || d.action != action {
                continue;
            }
            let target = match d.who {
                Who::Ip => ip,
                Who::AnonIp => ip.filter(|_| anonymous),
                Who::User => user,
                Who::Server => server,
                Who::Global => Some("global"),
            };
            let Some(target) = target else { continue };
            let Some((t, burst, period)) = model_rate(d, target) else {
                continue;
            };
            let tau = t * burst;
            let key = (i, target.to_owned());
            let level = self.level(&key, tau);
            let need = u128::from(req.cost) * u128::from(t);
            let ok = need <= u128::from(level);
            let retry = if req.cost > burst {
                Duration::MAX
            } else if ok {
                Duration::ZERO
            } else {
                Duration::from_nanos((need - u128::from(level)) as u64)
            };
            evals.push(Eval {
                key,
                t,
                tau,
                level,
                ok,
                shadow: d.shadow,
                retry,
                period,
                burst,
            });
        }

        let allowed = evals.iter().all(|e| e.ok || e.shadow);
        let mut worst: Option<(Duration, usize)> = None;
        for e in evals.iter().filter(|e| !e.ok && !e.shadow) {
            if worst.is_none_or(|(w, _)| e.retry > w) {
                worst = Some((e.retry, e.key.0));
            }
        }
        let mut rows = Vec::new();
        for e in &evals {
            let mut level = e.level;
            if allowed && !dry && e.ok {
                level -= req.cost * e.t;
                self.set(e.key.clone(), level);
            }
            rows.push(Row {
                name: DEFS[e.key.0].name.to_owned(),
                target: e.key.1.clone(),
                limit: e.burst,
                window: Some(e.period),
                remaining: (level / e.t).min(e.burst),
                reset: Duration::from_nanos(e.tau - level),
                outcome: match (e.ok, e.shadow) {
                    (true, _) => LimitOutcome::Allowed,
                    (false, true) => LimitOutcome::ShadowDenied,
                    (false, false) => LimitOutcome::Denied,
                },
                shadow: e.shadow,
            });
        }
        let (retry_after, reason) = match worst {
            None => (Duration::ZERO, "allowed".to_owned()),
            Some((r, i)) if r == Duration::MAX => (r, format!("too large {}", DEFS[i].name)),
            Some((r, i)) => (r, format!("limited {}", DEFS[i].name)),
        };
        Expect {
            allowed,
            retry_after,
            reason,
            limits: rows,
        }
    }

    fn inspect(&self, canonical: &str) -> Vec<Row> {
        let kind = canonical.split(':').next().unwrap();
        let mut rows = Vec::new();
        for (i, d) in DEFS.iter().enumerate() {
            let applies = match d.who {
                Who::Ip | Who::AnonIp => kind == "ip",
                Who::User => kind == "user",
                Who::Server => kind == "server",
                Who::Global => kind == "global",
            };
            if !applies {
                continue;
            }
            let Some((t, burst, period)) = model_rate(d, canonical) else {
                continue;
            };
            let tau = t * burst;
            let level = self.level(&(i, canonical.to_owned()), tau);
            let remaining = (level / t).min(burst);
            rows.push(Row {
                name: d.name.to_owned(),
                target: canonical.to_owned(),
                limit: burst,
                window: Some(period),
                remaining,
                reset: Duration::from_nanos(tau - level),
                outcome: if remaining == 0 {
                    LimitOutcome::Denied
                } else {
                    LimitOutcome::Allowed
                },
                shadow: d.shadow,
            });
        }
        rows
    }
}

// ---------------------------------------------------------------- operations

#[derive(Debug, Clone)]
struct Req {
    action: usize,
    ip: Option<usize>,
    user: Option<usize>,
    server: Option<usize>,
    appservice: bool,
    cost: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Check(Req),
    DryRun(Req),
    Advance(u64),
    Ban(usize, Option<u64>),
    Unban(usize),
    Inspect(usize),
    Reload,
}

fn req_strategy() -> impl Strategy<Value = Req> {
    (
        0..ACTIONS.len(),
        proptest::option::weighted(0.8, 0..IPS.len()),
        proptest::option::weighted(0.5, 0..USERS.len()),
        proptest::option::weighted(0.6, 0..SERVERS.len()),
        proptest::bool::weighted(0.1),
        0u64..100,
    )
        .prop_map(|(action, ip, user, server, appservice, sel)| {
            let cost = if ACTIONS[action].1 == "media_create" {
                // 0 to 2 500 bytes: fits, exceeds what is left, exceeds the burst.
                sel * 25
            } else {
                match sel {
                    0..=84 => 1,
                    85..=89 => 0,
                    _ => sel - 88, // 2..=11: some exceed every burst
                }
            };
            Req {
                action,
                ip,
                user,
                server,
                appservice,
                cost,
            }
        })
}

/// Emission intervals of every effective rate: advances land on their multiples.
fn emissions() -> Vec<u64> {
    let mut v: Vec<u64> = DEFS.iter().map(|d| def_rate(d).emission()).collect();
    v.push(S); // login override 8/8s
    v.push(5 * MS); // media override 2000B/10s
    v
}

fn advance_strategy() -> impl Strategy<Value = u64> {
    let em = emissions();
    prop_oneof![
        2 => Just(0u64),
        2 => 0u64..1_000,
        4 => 0u64..30 * S,
        6 => (proptest::sample::select(em), 0u64..6, -1i64..=1).prop_map(|(t, k, d)| {
            (t * k).saturating_add_signed(d)
        }),
        1 => proptest::sample::select(vec![S, 3 * S, 8 * S, 10 * S, 60 * S]),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => req_strategy().prop_map(Op::Check),
        3 => req_strategy().prop_map(Op::DryRun),
        6 => advance_strategy().prop_map(Op::Advance),
        1 => (0..BANS.len(), proptest::option::weighted(0.8, 1u64..20 * S)).prop_map(|(i, d)| Op::Ban(i, d)),
        1 => (0..BANS.len()).prop_map(Op::Unban),
        2 => (0..INSPECT.len()).prop_map(Op::Inspect),
        1 => Just(Op::Reload),
    ]
}

fn request(r: &Req) -> Request<'static> {
    let (side, action) = ACTIONS[r.action];
    let mut q = match side {
        Side::Client => Request::client(action),
        Side::Federation => Request::federation(action),
    };
    if let Some(i) = r.ip {
        q = q.ip(IPS[i].0.parse().unwrap());
    }
    if let Some(i) = r.user {
        q = q.user(Target::user(USERS[i].0).unwrap());
    }
    if let Some(i) = r.server {
        q = q.server(Target::server(SERVERS[i].0).unwrap());
    }
    if r.appservice {
        q = q.appservice(Target::appservice("bridge").unwrap());
    }
    q.cost(r.cost)
}

/// The memory store without its keyed fast path: an engine over it plans
/// full batches, so running both engines side by side checks that the
/// engine's fast path and its general path decide exactly alike.
struct FullBatches(MemoryStore);

impl Store for FullBatches {
    fn decide(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError> {
        self.0.decide(batch, now)
    }
    fn release(&self, lease: LeaseId, now: Nanos) -> Result<bool, StoreError> {
        self.0.release(lease, now)
    }
    fn peek(&self, bucket: &store::Bucket, now: Nanos) -> Result<Nanos, StoreError> {
        self.0.peek(bucket, now)
    }
    fn held(&self, slot: &Slot, now: Nanos) -> Result<u32, StoreError> {
        self.0.held(slot, now)
    }
    fn tracked_keys(&self, now: Nanos) -> u64 {
        self.0.tracked_keys(now)
    }
    fn active_leases(&self, now: Nanos) -> u64 {
        self.0.active_leases(now)
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = FakeClock::new();
    let engine = Engine::new(
        build_policy(),
        Arc::new(MemoryStore::new(1 << 12)),
        Arc::new(clock.clone()),
    );
    let general = Engine::new(
        build_policy(),
        Arc::new(FullBatches(MemoryStore::new(1 << 12))),
        Arc::new(clock.clone()),
    );
    let mut model = Model {
        now: clock.now(),
        ..Model::default()
    };
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Check(r) | Op::DryRun(r) => {
                let dry = matches!(op, Op::DryRun(_));
                let req = request(r);
                let decide = |e: &Engine| if dry { e.dry_run(&req) } else { e.check(&req) };
                let d = decide(&engine).unwrap();
                let g = decide(&general).unwrap();
                prop_assert_eq!(&d, &g, "step {}: fast and general paths differ on {:?}", step, op);
                prop_assert!(d.lease.is_none() && d.banned.is_none());
                let want = model.decide(r, dry);
                prop_assert_eq!(got(&d), want, "step {}: {:?}", step, op);
            }
            Op::Advance(n) => {
                clock.advance_nanos(*n);
                model.now += n;
            }
            Op::Ban(i, dur) => {
                let ban = engine.ban(t(BANS[*i].0), dur.map(Duration::from_nanos), "model");
                general.ban(t(BANS[*i].0), dur.map(Duration::from_nanos), "model");
                prop_assert_eq!(ban.target, t(BANS[*i].0));
                model.bans.insert(*i, dur.map(|d| model.now + d));
            }
            Op::Unban(i) => {
                let lifted = engine.unban(&t(BANS[*i].0));
                general.unban(&t(BANS[*i].0));
                match model.bans.remove(i) {
                    None => prop_assert!(lifted.is_none(), "step {}: unban of nothing", step),
                    Some(exp) if exp.is_none_or(|e| e > model.now) => {
                        prop_assert!(lifted.is_some(), "step {}: active ban not found", step)
                    }
                    Some(_) => {} // expired: may or may not have been purged
                }
            }
            Op::Inspect(i) => {
                let (spelled, canonical) = INSPECT[*i];
                let rows: Vec<Row> = engine.inspect(&t(spelled)).unwrap().iter().map(Row::of).collect();
                prop_assert_eq!(
                    rows,
                    model.inspect(canonical),
                    "step {}: inspect {}",
                    step,
                    spelled
                );
            }
            Op::Reload => {
                engine.reload(build_policy());
                general.reload(build_policy());
            }
        }
    }
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/model.txt"
        )))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Engine and model agree on every answer, over long random histories.
    #[test]
    fn engine_matches_reference_model(ops in proptest::collection::vec(op_strategy(), 1..250)) {
        run(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Dense bursts with little time passing: most decisions are at the edge.
    #[test]
    fn engine_matches_model_under_pressure(
        ops in proptest::collection::vec(
            prop_oneof![
                10 => req_strategy().prop_map(Op::Check),
                2 => req_strategy().prop_map(Op::DryRun),
                3 => (0u64..2 * S).prop_map(Op::Advance),
                1 => (0..INSPECT.len()).prop_map(Op::Inspect),
            ],
            1..120,
        )
    ) {
        run(&ops)?;
    }
}

/// Hand-picked histories that once mattered (kept even if the seeds file is lost).
#[test]
fn model_sanity_examples() {
    let login = |ip| Req {
        action: 0,
        ip: Some(ip),
        user: None,
        server: None,
        appservice: false,
        cost: 1,
    };
    let mut ops = vec![];
    for _ in 0..6 {
        ops.push(Op::Check(login(0)));
        ops.push(Op::Check(login(1)));
    }
    ops.push(Op::Advance(2 * S - 1));
    ops.push(Op::Check(login(1)));
    ops.push(Op::Advance(1));
    ops.push(Op::Check(login(0)));
    ops.push(Op::Inspect(0));
    ops.push(Op::Ban(2, Some(S)));
    ops.push(Op::Check(login(4)));
    ops.push(Op::Advance(S));
    ops.push(Op::Check(login(4)));
    run(&ops).unwrap();
}

/// In-process guards (`acquire_guard`) take the fast path when no
/// concurrency cap applies to the request (anonymous requests under a
/// per-user cap, here): the decisions must equal the general path's, the
/// cap must hold for users, and guards dropped in any order must give
/// their slots back.
#[test]
fn guards_decide_alike_on_both_paths() {
    use sluice_core::Guard;
    let policy = || {
        Policy::builder()
            .limit(Limit::new(
                Side::Client,
                "request",
                Scope::Target(Per::AnonymousIp),
                LimitKind::Rate("5/1s".parse().unwrap()),
            ))
            .unwrap()
            .limit(Limit::new(
                Side::Client,
                "request",
                Scope::Target(Per::Kind(TargetKind::User)),
                LimitKind::Rate("8/1s".parse().unwrap()),
            ))
            .unwrap()
            .limit(Limit::new(
                Side::Client,
                "request",
                Scope::Global,
                LimitKind::Rate("40/1s".parse().unwrap()),
            ))
            .unwrap()
            .limit(Limit::new(
                Side::Client,
                "request",
                Scope::Target(Per::Kind(TargetKind::User)),
                LimitKind::Concurrency(2),
            ))
            .unwrap()
            .build()
    };
    let clock = FakeClock::new();
    let fast = Engine::new(
        policy(),
        Arc::new(MemoryStore::new(1 << 10)),
        Arc::new(clock.clone()),
    );
    let general = Engine::new(
        policy(),
        Arc::new(FullBatches(MemoryStore::new(1 << 10))),
        Arc::new(clock.clone()),
    );
    let mut held: Vec<(Guard, Guard)> = Vec::new();
    let mut rng = 0x9E37_79B9_u64;
    for step in 0..2_000 {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = rng >> 33;
        let mut req = Request::client("request").ip(format!("10.0.0.{}", r % 3).parse().unwrap());
        if r % 5 < 2 {
            req = req.user(Target::user(["@a:x", "@b:x"][(r % 2) as usize]).unwrap());
        }
        let a = fast.acquire_guard(&req).unwrap();
        let b = general.acquire_guard(&req).unwrap();
        let strip = |d: &Decision| Decision {
            lease: None,
            ..d.clone()
        };
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(strip(a.decision()), strip(b.decision()), "step {step}");
                if req.targets.user.is_none() {
                    assert!(a.decision().lease.is_none(), "an anonymous guard holds no lease");
                }
                if r % 4 == 0 {
                    held.push((a, b));
                }
            }
            (Err(a), Err(b)) => assert_eq!(strip(&a), strip(&b), "step {step}"),
            (a, b) => panic!("step {step}: fast {:?} vs general {:?}", a.is_ok(), b.is_ok()),
        }
        if r % 7 == 0 && !held.is_empty() {
            held.swap_remove((r as usize / 7) % held.len());
        }
        if r % 11 == 0 {
            clock.advance_nanos(150_000_000);
        }
    }
    drop(held);
    assert_eq!(fast.store().active_leases(fast.now()), 0);
    assert_eq!(general.store().active_leases(general.now()), 0);
}
