//! The store on a real three-node Redis Cluster
//! (`scripts/services/redis-cluster.sh`), where a decision's per-target and
//! global buckets live on *different nodes*: the grouping, the undo, lease
//! records in a third slot, script loading on every node, shared bans.
//! Proves the semantics `docs/redis.md` documents: never more admissions
//! than the limit, a denied request consumes nothing once its undo has run,
//! leases and bans work across instances.
//!
//! (`tests/contract.rs` also runs its whole suite on this Cluster.)

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Engine, FakeClock, Limit, LimitKind, Mode, Per, Policy, Request, Scope, Side, Target, TargetKind,
};
use sluice_redis::{BanSync, Options, RedisStore, TimeSource};

/// The cluster's slot ranges and their nodes (`CLUSTER SLOTS`), and a way
/// to tell which node holds a hash tag.
struct Topology {
    con: redis::Connection,
    ranges: Vec<(i64, i64, String)>,
}

impl Topology {
    fn new(url: &str) -> Self {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let raw: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
        let mut ranges = Vec::new();
        for r in raw {
            let redis::Value::Array(v) = r else {
                panic!("CLUSTER SLOTS: {r:?}")
            };
            let lo: i64 = redis::from_redis_value(v[0].clone()).unwrap();
            let hi: i64 = redis::from_redis_value(v[1].clone()).unwrap();
            let redis::Value::Array(node) = &v[2] else {
                panic!("CLUSTER SLOTS node")
            };
            let port: i64 = redis::from_redis_value(node[1].clone()).unwrap();
            ranges.push((lo, hi, port.to_string()));
        }
        assert_eq!(
            ranges
                .iter()
                .map(|r| &r.2)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3,
            "expected three primaries: {ranges:?}"
        );
        Self { con, ranges }
    }

    /// The node (its port) that holds every key tagged `{tag}`.
    fn node(&mut self, tag: &str) -> String {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{tag}}}"))
            .query(&mut self.con)
            .unwrap();
        self.ranges
            .iter()
            .find(|r| (r.0..=r.1).contains(&slot))
            .map(|r| r.2.clone())
            .unwrap()
    }

    /// `n` addresses 203.0.113.x whose keys live on other nodes than the
    /// global limits' (and, between them, on both of those nodes).
    fn ips_away_from_global(&mut self, n: usize) -> Vec<IpAddr> {
        let global = self.node("global");
        let mut out = Vec::new();
        let mut nodes = std::collections::HashSet::new();
        for x in 1..=254u8 {
            let ip: IpAddr = format!("203.0.113.{x}").parse().unwrap();
            let node = self.node(&format!("ip:{ip}"));
            if node != global {
                nodes.insert(node);
                out.push(ip);
                if out.len() == n {
                    break;
                }
            }
        }
        assert_eq!(out.len(), n, "not enough addresses away from {{global}}");
        if n >= 8 {
            assert_eq!(nodes.len(), 2, "targets should cover both other nodes");
        }
        out
    }
}

fn rate(action: &str, scope: Scope, r: &str) -> Limit {
    Limit::new(Side::Client, action, scope, LimitKind::Rate(r.parse().unwrap()))
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One sluice instance: its own store (connection, local state) and engine.
struct Instance {
    engine: Engine,
    store: RedisStore,
}

fn instance(rt: &tokio::runtime::Runtime, policy: &Policy, opts: Options) -> Instance {
    let store = rt.block_on(RedisStore::connect(opts)).unwrap();
    let engine = Engine::new(
        policy.clone(),
        Arc::new(store.clone()),
        Arc::new(FakeClock::new()),
    );
    Instance { engine, store }
}

fn remaining(engine: &Engine, t: &Target) -> u64 {
    let r = engine.inspect(t).unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].remaining
}

#[test]
fn decisions_spanning_nodes_undo_exactly() {
    let Some(urls) = common::redis_cluster_urls() else {
        return;
    };
    let mut topo = Topology::new(&urls[0]);
    let ips = topo.ips_away_from_global(5);
    let rt = runtime();
    let p = policy(vec![
        rate("login", per(TargetKind::Ip), "3/1h"),
        rate("login", Scope::Global, "4/1h"),
    ]);
    let i = instance(
        &rt,
        &p,
        common::cluster_options(&urls, "span", TimeSource::Server),
    );
    let login = |ip: IpAddr| Request::client("login").ip(ip);
    let target = |ip: IpAddr| Target::Ip(ip.into());

    // The target denies first (narrowest first): the global bucket, on
    // another node, is never touched.
    for _ in 0..3 {
        assert!(i.engine.check(&login(ips[0])).unwrap().allowed);
    }
    for _ in 0..3 {
        assert!(!i.engine.check(&login(ips[0])).unwrap().allowed);
    }
    assert_eq!(remaining(&i.engine, &Target::Global), 1);

    // The global bucket denies after the target's group committed on its
    // node: the undo gives the target back exactly what it took.
    assert!(i.engine.check(&login(ips[1])).unwrap().allowed);
    assert_eq!(remaining(&i.engine, &Target::Global), 0);
    for _ in 0..5 {
        let d = i.engine.check(&login(ips[2])).unwrap();
        assert!(!d.allowed);
    }
    assert_eq!(remaining(&i.engine, &target(ips[2])), 3, "undo left consumption");
    assert_eq!(remaining(&i.engine, &target(ips[1])), 2);
    // An idle bucket undone is no key at all (the undo deletes it).
    let mut con = redis::cluster::ClusterClient::new(urls.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    let key = format!(
        "{}r:{}:{{ip:{}}}",
        i.store.options().key_prefix,
        "client.target.login.ip",
        ips[2]
    );
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut con).unwrap();
    assert_eq!(exists, 0, "{key} left behind by the undo");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(key.replace(&ips[2].to_string(), &ips[1].to_string()))
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, 1, "the layout this test assumes changed");

    // Time refills the global bucket (one per 15 min): the target that
    // was denied only globally has its full burst.
    i.store.advance_clock(Duration::from_secs(15 * 60));
    let d = i.engine.check(&login(ips[2])).unwrap();
    assert!(d.allowed);
    assert_eq!(remaining(&i.engine, &target(ips[2])), 2);
}

/// Many concurrent decisions from two instances, every one spanning two
/// nodes: the global limit admits exactly its count, never more; every
/// denied decision's target consumption is undone, so each target's bucket
/// holds exactly its own admissions.
#[test]
fn storm_from_two_instances_never_over_admits() {
    let Some(urls) = common::redis_cluster_urls() else {
        return;
    };
    let mut topo = Topology::new(&urls[0]);
    let ips = topo.ips_away_from_global(40);
    let rt = runtime();
    const GLOBAL: u64 = 50;
    let p = policy(vec![
        rate("login", per(TargetKind::Ip), "3/1h"),
        rate("login", Scope::Global, &format!("{GLOBAL}/1h")),
    ]);
    let a = common::cluster_options(&urls, "storm", TimeSource::Server);
    let mut b = a.clone();
    // The second instance seeds from another node.
    b.url.clone_from(&urls[1]);
    let inst = [instance(&rt, &p, a), instance(&rt, &p, b)];
    let started = std::time::Instant::now();
    let results: Vec<(IpAddr, bool)> = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..400usize {
            let ip = ips[n % ips.len()];
            let Instance { engine, store } = &inst[n % 2];
            let (engine, store) = (engine.clone(), store.clone());
            tasks.spawn(async move {
                let plan = engine
                    .plan(&Request::client("login").ip(ip), Mode::Check)
                    .unwrap();
                let out = store.decide_async(plan.batch(), plan.now()).await.unwrap();
                (ip, engine.finish(plan, out).allowed)
            });
        }
        let mut v = Vec::new();
        while let Some(r) = tasks.join_next().await {
            v.push(r.unwrap());
        }
        v
    });
    let took = started.elapsed();
    let allowed = results.iter().filter(|r| r.1).count() as u64;
    eprintln!("storm: 400 decisions over 2 instances in {took:?}, {allowed} allowed");
    assert!(allowed <= GLOBAL, "{allowed} admitted, limit {GLOBAL}");
    let global = remaining(&inst[0].engine, &Target::Global);
    assert_eq!(global, GLOBAL - allowed, "global consumption != admissions");
    let mut per_ip: HashMap<IpAddr, u64> = HashMap::new();
    for (ip, ok) in &results {
        *per_ip.entry(*ip).or_default() += u64::from(*ok);
    }
    for ip in &ips {
        let t = Target::Ip((*ip).into());
        let want = 3 - per_ip.get(ip).copied().unwrap_or(0);
        assert_eq!(
            remaining(&inst[1].engine, &t),
            want,
            "{ip}: denied decisions left consumption behind"
        );
    }
    // Transient over-denial may leave global units unused during the storm;
    // sequentially, exactly the rest is admitted and not one more.
    let mut more = 0;
    for ip in &ips {
        while inst[0]
            .engine
            .check(&Request::client("login").ip(*ip))
            .unwrap()
            .allowed
        {
            more += 1;
        }
    }
    assert_eq!(allowed + more, GLOBAL);
    assert_eq!(remaining(&inst[0].engine, &Target::Global), 0);
}

#[test]
fn leases_span_nodes_and_instances() {
    let Some(urls) = common::redis_cluster_urls() else {
        return;
    };
    let rt = runtime();
    let p = policy(vec![
        Limit::new(
            Side::Client,
            "request",
            per(TargetKind::User),
            LimitKind::Concurrency(2),
        ),
        Limit::new(Side::Client, "request", Scope::Global, LimitKind::Concurrency(3)),
    ]);
    let a = common::cluster_options(&urls, "lease", TimeSource::Server);
    let mut b = a.clone();
    b.url.clone_from(&urls[2]);
    let (a, b) = (instance(&rt, &p, a), instance(&rt, &p, b));
    let req = |u: &str| Request::client("request").user(Target::user(u).unwrap());
    let min = Duration::from_secs(60);

    let l1 = a.engine.acquire(&req("@a:example.org"), min).unwrap();
    let l2 = b.engine.acquire(&req("@a:example.org"), 10 * min).unwrap();
    assert!(l1.allowed && l2.allowed);
    // The user's own cap.
    assert!(!a.engine.acquire(&req("@a:example.org"), min).unwrap().allowed);
    let l3 = a.engine.acquire(&req("@b:example.org"), 10 * min).unwrap();
    assert!(l3.allowed);
    // Every instance counts every instance's leases (the index is shared).
    assert_eq!(rt.block_on(b.store.count_leases(0)).unwrap(), 3);
    // The global cap denies after @c's slot was taken on its node: undone.
    for _ in 0..3 {
        let d = b.engine.acquire(&req("@c:example.org"), min).unwrap();
        assert!(!d.allowed && d.lease.is_none());
    }
    let c = Target::user("@c:example.org").unwrap();
    let held = |e: &Engine, t: &Target| {
        e.inspect(t)
            .unwrap()
            .iter()
            .find(|l| l.window.is_none())
            .map(|l| l.remaining)
            .unwrap()
    };
    assert_eq!(held(&a.engine, &c), 2, "a denied acquire kept @c's slot");
    assert_eq!(held(&a.engine, &Target::Global), 0);

    // Released through the other instance (the record lives in a third slot).
    let l2 = l2.lease.unwrap();
    assert!(a.engine.release(l2.id).unwrap());
    assert!(!b.engine.release(l2.id).unwrap(), "double release");
    assert_eq!(held(&b.engine, &Target::Global), 1);
    let lc = b.engine.acquire(&req("@c:example.org"), 10 * min).unwrap();
    assert!(lc.allowed);
    // l1 lapses after its minute: its slots free themselves.
    assert!(!a.engine.acquire(&req("@c:example.org"), min).unwrap().allowed);
    a.store.advance_clock(min + Duration::from_secs(1));
    b.store.advance_clock(min + Duration::from_secs(1));
    assert!(
        !b.engine.release(l1.lease.unwrap().id).unwrap(),
        "lapsed lease released"
    );
    assert!(a.engine.acquire(&req("@c:example.org"), min).unwrap().allowed);
}

#[test]
fn bans_are_shared_on_a_cluster() {
    let Some(urls) = common::redis_cluster_urls() else {
        return;
    };
    let rt = runtime();
    let p = policy(vec![rate("login", per(TargetKind::Ip), "10/1m")]);
    let a = common::cluster_options(&urls, "bans", TimeSource::Server);
    let mut b = a.clone();
    b.url.clone_from(&urls[1]);
    let (a, b) = (instance(&rt, &p, a), instance(&rt, &p, b));
    let t: Target = "ip:198.51.100.0/24".parse().unwrap();
    a.engine.ban(t.clone(), None, "spam");
    rt.block_on(async {
        let mut base_a = BanSync::new();
        let mut base_b = BanSync::new();
        a.store.sync_once(&a.engine, &mut base_a).await.unwrap();
        b.store.sync_once(&b.engine, &mut base_b).await.unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(b
            .engine
            .bans()
            .find(&Target::Ip(ip.into()), b.engine.now())
            .is_some());
        b.engine.bans().remove(&t);
        b.store.sync_once(&b.engine, &mut base_b).await.unwrap();
        a.store.sync_once(&a.engine, &mut base_a).await.unwrap();
        assert!(
            a.engine.bans().list(a.engine.now()).is_empty(),
            "unban not shared"
        );
    });
}

#[test]
fn cluster_tracks_db_keys_across_nodes() {
    let Some(urls) = common::redis_cluster_urls() else {
        return;
    };
    let rt = runtime();
    let p = policy(vec![rate("login", per(TargetKind::Ip), "10/1h")]);
    let i = instance(
        &rt,
        &p,
        common::cluster_options(&urls, "dbsize", TimeSource::Server),
    );
    let mut topo = Topology::new(&urls[0]);
    let ips = topo.ips_away_from_global(10);
    for ip in &ips {
        assert!(i.engine.check(&Request::client("login").ip(*ip)).unwrap().allowed);
    }
    // DBSIZE is summed over every primary; each check's script has run, so
    // the keys are there now.
    let n = rt.block_on(i.store.count_keys()).unwrap();
    assert!(n >= ips.len() as u64, "DBSIZE {n} for {} keys", ips.len());
    assert_eq!(i.store.stats().db_keys, n);
}
