//! The decision API over real HTTP on loopback.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::json;

const REG: &str = r#"{"action":"registration","targets":{"ip":"203.0.113.7"}}"#;

fn base(dir: &std::path::Path) -> String {
    format!(
        "[server]\nstate_dir = {:?}\n",
        dir.join("state").display().to_string()
    )
}

#[test]
fn registration_limit_with_exact_retry_after_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    let d = s.check(REG);
    assert_eq!(d["allowed"], true, "{d}");
    let (status, r) = s.post("/v1/check", REG);
    assert_eq!(status, 200);
    let d = r.json();
    assert_eq!(d["allowed"], false);
    assert_eq!(d["reason"], "limited");
    assert_eq!(d["limit"], "client.target.registration.ip");
    // private_small: 1 registration per 6 minutes per IP.
    assert_eq!(d["retry_after_ms"], 360_000);
    assert_eq!(r.retry_after.as_deref(), Some("360"));
    let policy = r.ratelimit_policy.unwrap();
    assert!(
        policy.contains("\"client.target.registration.ip\";q=1;w=360"),
        "{policy}"
    );
    assert!(r
        .ratelimit
        .unwrap()
        .contains("\"client.target.registration.ip\";r=0;t=360"));
    // Another address is not affected.
    assert_eq!(
        s.check(r#"{"action":"registration","targets":{"ip":"203.0.113.8"}}"#)["allowed"],
        true
    );
    // One second early: still denied, exactly one second to go.
    s.clock.advance(Duration::from_secs(359));
    assert_eq!(s.check(REG)["retry_after_ms"], 1000);
    s.clock.advance(Duration::from_secs(1));
    assert_eq!(s.check(REG)["allowed"], true);
}

#[test]
fn dry_run_consumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    let dry = r#"{"action":"registration","targets":{"ip":"203.0.113.7"},"dry_run":true}"#;
    for _ in 0..5 {
        let d = s.check(dry);
        assert_eq!(d["allowed"], true);
    }
    assert_eq!(s.check(REG)["allowed"], true);
    let d = s.check(dry);
    assert_eq!(d["allowed"], false, "dry run reports the real state");
    assert_eq!(d["retry_after_ms"], 360_000);
}

#[test]
fn every_malformed_field_is_a_400_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    let cases = [
        ("{", "body"),
        ("[1]", "body"),
        (r#"{"targets":{}}"#, "action"),
        (r#"{"action":"nope"}"#, "action"),
        (r#"{"action":"login","side":"both"}"#, "side"),
        (r#"{"action":"login","cost":0}"#, "cost"),
        (r#"{"action":"login","cost":1.5}"#, "cost"),
        (r#"{"action":"login","dry_run":"yes"}"#, "dry_run"),
        (r#"{"action":"login","targets":{"ip":"1.2.3"}}"#, "targets.ip"),
        (r#"{"action":"login","targets":{"user":"@nope"}}"#, "targets.user"),
        (r#"{"action":"login","targets":{"server":"-"}}"#, "targets.server"),
        (
            r#"{"action":"login","targets":{"colour":"red"}}"#,
            "targets.colour",
        ),
        (r#"{"action":"login","surprise":true}"#, "surprise"),
    ];
    for (body, field) in cases {
        let (status, r) = s.post("/v1/check", body);
        assert_eq!(status, 400, "{body} → {}", r.text);
        assert_eq!(r.json()["field"], field, "{body}");
    }
    let huge = format!(r#"{{"action":"login","pad":"{}"}}"#, "x".repeat(100_000));
    let (status, r) = s.post("/v1/check", &huge);
    assert_eq!((status, r.json()["field"].clone()), (400, json!("body")));
    let (status, r) = s.post("/v1/acquire", r#"{"action":"connection"}"#);
    assert_eq!((status, r.json()["field"].clone()), (400, json!("ttl_ms")));
    let (status, r) = s.post("/v1/release", r#"{"lease":"zz"}"#);
    assert_eq!((status, r.json()["field"].clone()), (400, json!("lease")));
    let (status, _) = s.get("/nowhere");
    assert_eq!(status, 404);
    let (_, m) = s.get("/metrics");
    assert!(m.text.contains("sluice_bad_requests_total 16"), "{}", m.text);
}

#[test]
fn leases_cap_release_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[concurrency.client.target]\nconnection = 2\n",
        base(dir.path())
    );
    let s = Server::start(dir.path(), &cfg);
    let acq = r#"{"action":"connection","targets":{"ip":"198.51.100.1"},"ttl_ms":30000}"#;
    let take = || {
        let (status, r) = s.post("/v1/acquire", acq);
        assert_eq!(status, 200, "{}", r.text);
        r.json()
    };
    let a = take();
    let b = take();
    assert_eq!(
        (a["allowed"].clone(), b["allowed"].clone()),
        (json!(true), json!(true))
    );
    let c = take();
    assert_eq!(c["allowed"], false);
    assert_eq!(c["lease"], serde_json::Value::Null);
    let (_, r) = s.post("/v1/release", &json!({"lease": a["lease"]}).to_string());
    assert_eq!(r.json()["released"], true);
    let (_, r) = s.post("/v1/release", &json!({"lease": a["lease"]}).to_string());
    assert_eq!(r.json()["released"], false, "a lease is released once");
    assert_eq!(take()["allowed"], true);
    assert_eq!(take()["allowed"], false);
    // Leases not released lapse at their TTL.
    s.clock.advance(Duration::from_secs(30));
    assert_eq!(take()["allowed"], true);
    let (_, m) = s.get("/metrics");
    assert!(m.text.contains("sluice_active_leases 1"), "{}", m.text);
}

#[test]
fn metrics_count_decisions_by_action_limit_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    s.check(REG);
    s.check(REG);
    let (status, m) = s.get("/metrics");
    assert_eq!(status, 200);
    for line in [
        "sluice_decisions_total{side=\"client\",action=\"registration\",outcome=\"allowed\"} 1",
        "sluice_decisions_total{side=\"client\",action=\"registration\",outcome=\"denied\"} 1",
        "limit=\"client.target.registration.ip\",outcome=\"denied\"} 1",
        "sluice_tracked_keys 2",
        "sluice_bans 0",
    ] {
        assert!(m.text.contains(line), "missing {line} in\n{}", m.text);
    }
    let (status, h) = s.get("/healthz");
    assert_eq!((status, h.text.as_str()), (200, "ok\n"));
}

#[test]
fn auth_request_answers_204_then_403_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    let path = "/v1/auth?action=registration&ip=203.0.113.50&user=";
    let (status, _) = s.get(path);
    assert_eq!(status, 204);
    let (status, r) = s.get(path);
    assert_eq!(status, 403);
    assert_eq!(r.retry_after.as_deref(), Some("360"));
    assert!(r.ratelimit.unwrap().contains("r=0"));
    for (query, field) in [
        ("action=nope&ip=1.2.3.4", "action"),
        ("action=login&ip=1.2.3", "ip"),
        ("action=login&cost=x", "cost"),
        ("action=login&action=login", "action"),
        ("action=login&colour=red", "colour"),
    ] {
        let (status, r) = s.get(&format!("/v1/auth?{query}"));
        assert_eq!(status, 400, "{query}");
        assert_eq!(r.json()["field"], field, "{query}");
    }
}
