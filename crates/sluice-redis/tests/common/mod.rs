//! Shared by the Redis tests: the test server's URL and store factories.

#![allow(dead_code, reason = "each test file uses part of it")]
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_redis::{Options, TimeSource};

/// The Redis that `scripts/test` started, or `None` (with a loud message)
/// outside it. Under `SLUICE_TEST_STRICT=1` a missing server fails the test.
pub fn redis_url() -> Option<String> {
    match std::env::var("SLUICE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("SLUICE_TEST_STRICT").as_deref() == Ok("1") {
                panic!("SLUICE_TEST_REDIS_URL is not set (scripts/test starts Redis and sets it)");
            }
            eprintln!("\n*** SKIPPED: no Redis (set SLUICE_TEST_REDIS_URL, or run ./scripts/test) ***\n");
            None
        }
    }
}

/// The first node of the Redis Cluster that `scripts/test` started
/// (`scripts/services/redis-cluster.sh`: three primaries, no replicas), or
/// `None` (with a loud message) outside it. Under `SLUICE_TEST_STRICT=1` a
/// missing Cluster fails the test.
pub fn redis_cluster_urls() -> Option<Vec<String>> {
    match std::env::var("SLUICE_TEST_REDIS_CLUSTER_URLS") {
        Ok(u) if !u.is_empty() => Some(u.split(',').map(str::to_owned).collect()),
        _ => {
            if std::env::var("SLUICE_TEST_STRICT").as_deref() == Ok("1") {
                panic!(
                    "SLUICE_TEST_REDIS_CLUSTER_URLS is not set (scripts/test starts a Redis Cluster and sets it)"
                );
            }
            eprintln!(
                "\n*** SKIPPED: no Redis Cluster (set SLUICE_TEST_REDIS_CLUSTER_URLS, or run ./scripts/test) ***\n"
            );
            None
        }
    }
}

/// Options for a Cluster store (seeded with one node; it finds the rest).
pub fn cluster_options(urls: &[String], name: &str, time: TimeSource) -> Options {
    let mut o = options(&urls[0], name, time);
    o.cluster = true;
    o
}

/// A key prefix no other test uses, so tests share one Redis in parallel.
pub fn unique_prefix(name: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t:{name}:{}:{nanos}:{n}:", std::process::id())
}

/// Options for tests: exact reports (no denied cache, no local admission).
pub fn options(url: &str, name: &str, time: TimeSource) -> Options {
    let mut o = Options::new(url);
    o.key_prefix = unique_prefix(name);
    o.deny_cache = false;
    o.time = time;
    o.command_timeout = std::time::Duration::from_secs(2);
    o
}
