//! Shared bans through one real Redis: a lost hash is refilled, not read as
//! every ban lifted; bans lifted elsewhere are reported as local changes
//! (so `sluice serve` saves its file and cannot bring them back).

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use sluice_core::{Engine, FakeClock, Policy, Target};
use sluice_redis::{BanSync, RedisStore, TimeSource};

struct Instance {
    engine: Engine,
    store: RedisStore,
    sync: BanSync,
}

fn instance(rt: &tokio::runtime::Runtime, opts: sluice_redis::Options) -> Instance {
    let store = rt.block_on(RedisStore::connect(opts)).unwrap();
    let engine = Engine::new(
        Policy::builder().build(),
        Arc::new(store.clone()),
        Arc::new(FakeClock::new()),
    );
    Instance {
        engine,
        store,
        sync: BanSync::new(),
    }
}

impl Instance {
    fn sync(&mut self, rt: &tokio::runtime::Runtime) -> bool {
        rt.block_on(self.store.sync_once(&self.engine, &mut self.sync))
            .unwrap()
    }

    fn banned(&self, t: &Target) -> bool {
        self.engine
            .bans()
            .list(self.engine.now())
            .iter()
            .any(|b| &b.target == t)
    }
}

#[test]
fn a_lost_hash_is_refilled_and_lifts_nothing() {
    let Some(url) = common::redis_url() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let opts = common::options(&url, "bans", TimeSource::Server);
    let prefix = opts.key_prefix.clone();
    let (mut a, mut b) = (instance(&rt, opts.clone()), instance(&rt, opts));
    let t: Target = "ip:198.51.100.0/24".parse().unwrap();
    a.engine.ban(t.clone(), None, "spam");
    assert!(!a.sync(&rt), "publishing changes nothing here");
    assert!(b.sync(&rt), "taking a ban from the hash is a local change");
    assert!(b.banned(&t));

    // Redis loses everything of ours (a restart without persistence).
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}bans"))
        .query(&mut raw)
        .unwrap();
    // Neither instance reads the empty hash as "every ban lifted".
    b.sync(&rt);
    a.sync(&rt);
    assert!(a.banned(&t) && b.banned(&t), "a lost hash lifted bans");
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}bans"))
        .query(&mut raw)
        .unwrap();
    assert!(
        fields.contains_key(&t.to_string()),
        "the ban was not published again"
    );
    assert!(
        fields.contains_key("#generation"),
        "the refilled hash has its generation"
    );

    // A ban lifted on one instance is lifted on the other, reported as a
    // change there.
    b.engine.bans().remove(&t);
    b.sync(&rt);
    assert!(a.sync(&rt), "a lift taken from the hash is a local change");
    assert!(!a.banned(&t));
}
