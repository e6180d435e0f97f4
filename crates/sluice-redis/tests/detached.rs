//! Releases sent without waiting (a dropped guard's) reach Redis, and
//! `settle` waits for them: what the service does at shutdown.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Engine, FakeClock, Limit, LimitKind, Per, Policy, Request, Scope, Side, Target, TargetKind,
};
use sluice_redis::{RedisStore, TimeSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_guards_are_released_and_settled() {
    let Some(url) = common::redis_url() else { return };
    let store = RedisStore::connect(common::options(&url, "detached", TimeSource::Caller))
        .await
        .unwrap();
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "request",
            Scope::Target(Per::Kind(TargetKind::User)),
            LimitKind::Concurrency(2),
        ))
        .unwrap()
        .build();
    let engine = Engine::new(policy, Arc::new(store.clone()), Arc::new(FakeClock::new()));
    let alice = Target::user("@a:example.org").unwrap();
    let req = Request::client("request").user(alice.clone());
    // Guards are the engine's synchronous path: taken off the runtime's
    // own threads.
    let take = |engine: Engine, req: Request<'static>| {
        tokio::task::spawn_blocking(move || engine.acquire_guard(&req).unwrap().ok())
    };
    let a = take(engine.clone(), req.clone()).await.unwrap().unwrap();
    let b = take(engine.clone(), req.clone()).await.unwrap().unwrap();
    assert!(
        take(engine.clone(), req.clone()).await.unwrap().is_none(),
        "a third slot"
    );
    // Dropped: each release is sent, nobody waits for it.
    drop(a);
    drop(b);
    assert!(store.settle(Duration::from_secs(5)).await, "releases still out");
    // Both slots are free again in Redis.
    let e = engine.clone();
    let t = alice.clone();
    let report = tokio::task::spawn_blocking(move || e.inspect(&t).unwrap())
        .await
        .unwrap();
    assert_eq!(report[0].remaining, 2, "{report:?}");
    // Nothing out: settles at once.
    assert!(store.settle(Duration::ZERO).await);
}
