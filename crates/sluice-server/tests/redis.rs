//! The service on Redis, in process: admin inspect does not stall the
//! runtime when Redis is slow; inspect, local admission and the live lease
//! gauge on a real Redis (`scripts/test` starts it).
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::FakeClock;
use sluice_server::App;

/// A runtime with ONE worker, as a small deployment has: a worker blocked
/// by a sync Redis call would stop every request.
fn serve_one_worker(config: &str) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = sluice_config::parse(config, "test.toml").unwrap();
    let addr = rt.block_on(async {
        let app = App::with_clock(config, Arc::new(FakeClock::new())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(sluice_server::serve(listener, app, std::future::pending()));
        addr
    });
    (addr, rt)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build()
}

fn redis_config(url: &str, extra: &str) -> String {
    let prefix = format!(
        "server-test:{}:{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n{extra}\n\n[limits.client.target]\nlogin = \"5/1h\"\n"
    )
}

#[test]
fn slow_redis_does_not_stall_the_runtime_during_inspect() {
    // A "Redis" that accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in hole.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
            let _ = s.read(&mut buf);
            held.push(s);
        }
    });
    let (addr, _rt) = serve_one_worker(&redis_config(
        &format!("redis://127.0.0.1:{port}"),
        "command_timeout = \"1500ms\"\nconnect_timeout = \"1500ms\"",
    ));
    let url = format!("http://{addr}");
    let inspect = {
        let url = url.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = agent()
                .get(&format!("{url}/v1/admin/targets/ip:203.0.113.7"))
                .call();
            (
                t.elapsed(),
                r.map(|r| r.status()).unwrap_or_else(|e| match e {
                    ureq::Error::Status(s, _) => s,
                    ureq::Error::Transport(_) => 0,
                }),
            )
        })
    };
    // While inspect waits for Redis (its timeouts take well over a
    // second), the one worker keeps answering: health checks back to back
    // for as long as inspect is out, each quick.
    let started = Instant::now();
    let mut answered = 0;
    while !inspect.is_finished() {
        let t = Instant::now();
        let r = agent().get(&format!("{url}/healthz")).call().unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "healthz took {:?} while inspect waited for Redis",
            t.elapsed()
        );
        answered += 1;
        assert!(started.elapsed() < Duration::from_secs(10), "inspect never ended");
    }
    assert!(
        answered >= 3,
        "only {answered} health checks while inspect was out"
    );
    let (took, status) = inspect.join().unwrap();
    assert!(took < Duration::from_secs(6), "inspect hung for {took:?}");
    assert!(status >= 500, "inspect on an unreachable Redis answered {status}");
}

fn redis_url() -> Option<String> {
    match std::env::var("SLUICE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("SLUICE_TEST_STRICT").as_deref() != Ok("1"),
                "SLUICE_TEST_REDIS_URL is not set (scripts/test starts Redis and sets it)"
            );
            eprintln!("\n*** SKIPPED: no Redis (run ./scripts/test) ***\n");
            None
        }
    }
}

fn post(url: &str, body: &str) -> serde_json::Value {
    agent()
        .post(url)
        .set("content-type", "application/json")
        .send_string(body)
        .unwrap()
        .into_json()
        .unwrap()
}

#[test]
fn inspect_local_admission_and_lease_gauge_on_redis() {
    let Some(redis) = redis_url() else { return };
    let (addr, _rt) = serve_one_worker(&redis_config(
        &redis,
        "local_admission = 3\nlocal_hold = \"10s\"\n\n[concurrency.client.target]\nrequest = 4",
    ));
    let url = format!("http://{addr}");
    let check = r#"{"action":"login","targets":{"ip":"203.0.113.7"}}"#;
    let mut allowed = 0;
    for _ in 0..7 {
        if post(&format!("{url}/v1/check"), check)["allowed"] == true {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "local admission must not exceed the shared count");
    let v: serde_json::Value = agent()
        .get(&format!("{url}/v1/admin/targets/ip:203.0.113.7"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let login = v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "client.target.login.ip")
        .unwrap();
    assert_eq!(login["remaining"], 0, "{v}");

    let acquire = r#"{"action":"request","targets":{"user":"@a:example.org"},"ttl_ms":60000}"#;
    for _ in 0..2 {
        assert_eq!(post(&format!("{url}/v1/acquire"), acquire)["allowed"], true);
    }
    // A scrape reads the gauge from Redis there and then.
    let m = agent()
        .get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        m.lines().any(|l| l == "sluice_active_leases 2"),
        "sluice_active_leases is not 2:\n{m}"
    );
}
