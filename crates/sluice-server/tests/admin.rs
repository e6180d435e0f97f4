//! The admin API: bans, inspect, top, reload, and who may use it.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::json;

fn base(dir: &std::path::Path) -> String {
    format!(
        "[server]\nstate_dir = {:?}\n",
        dir.join("state").display().to_string()
    )
}

#[test]
fn bans_bulk_add_remove_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base(dir.path());
    let s = Server::start(dir.path(), &cfg);
    let body = json!({"targets": ["ip:203.0.113.0/24", "user:@spam:example.org", "server:evil.example"],
                      "duration": "1h", "reason": "spam wave"});
    let (status, r) = s.post("/v1/admin/bans", &body.to_string());
    assert_eq!(status, 200, "{}", r.text);
    assert_eq!(r.json()["banned"].as_array().unwrap().len(), 3);
    let d = s.check(r#"{"action":"login","targets":{"ip":"203.0.113.99"}}"#);
    assert_eq!(
        (d["allowed"].clone(), d["reason"].clone()),
        (json!(false), json!("banned"))
    );
    assert_eq!(d["retry_after_ms"], 3_600_000);
    assert_eq!(d["ban"]["reason"], "spam wave");
    // Bans win over limits; exempt targets would win over bans (see core tests).
    let (_, r) = s.get("/v1/admin/bans");
    let listed = r.json();
    assert_eq!(listed["bans"].as_array().unwrap().len(), 3);
    // Addresses are hashed in admin output by default.
    assert!(!r.text.contains("203.0.113"), "{}", r.text);
    assert!(r.text.contains("ip#"));
    let (_, r) = s.post(
        "/v1/admin/bans/remove",
        r#"{"targets":["server:evil.example","server:nice.example"]}"#,
    );
    let out = r.json();
    assert_eq!(out["removed"].as_array().unwrap().len(), 1);
    assert_eq!(out["not_banned"], json!(["server:nice.example"]));
    s.stop();

    // A restart on the same state directory restores the bans still in force.
    let s = Server::start(dir.path(), &cfg);
    let (_, r) = s.get("/v1/admin/bans");
    assert_eq!(r.json()["bans"].as_array().unwrap().len(), 2, "{}", r.text);
    let d = s.check(r#"{"action":"login","targets":{"user":"@spam:example.org"}}"#);
    assert_eq!(d["reason"], "banned");
    // Unban one through its hashed label, as an operator copying from `sluice bans` would.
    let (_, r) = s.get("/v1/admin/bans");
    let label = r.json()["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap().to_owned())
        .find(|t| t.starts_with("ip#"))
        .unwrap();
    let (status, r) = s.delete(&format!("/v1/admin/bans/{}", label.replace('#', "%23")));
    assert_eq!(status, 200, "{}", r.text);
    assert_eq!(r.json()["removed"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.check(r#"{"action":"login","targets":{"ip":"203.0.113.99"}}"#)["allowed"],
        true
    );
}

#[test]
fn ban_expiry_follows_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    s.post(
        "/v1/admin/bans",
        r#"{"targets":["ip:192.0.2.1"],"duration":"10m"}"#,
    );
    assert_eq!(
        s.check(r#"{"action":"login","targets":{"ip":"192.0.2.1"}}"#)["allowed"],
        false
    );
    s.clock.advance(Duration::from_secs(600));
    assert_eq!(
        s.check(r#"{"action":"login","targets":{"ip":"192.0.2.1"}}"#)["allowed"],
        true
    );
}

#[test]
fn bad_admin_input_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    for (body, field) in [
        (r#"{"targets":[]}"#, "targets"),
        (r#"{"targets":["ip:nope"]}"#, "targets[0]"),
        (r#"{"targets":["ip:1.2.3.4", 5]}"#, "targets[1]"),
        (r#"{"targets":["ip:1.2.3.4"],"duration":"soon"}"#, "duration"),
        (r#"{"targets":["ip#0000000000000000"]}"#, "targets[0]"),
        (r#"{"targets":["ip:1.2.3.4"],"why":"x"}"#, "why"),
    ] {
        let (status, r) = s.post("/v1/admin/bans", body);
        assert_eq!(status, 400, "{body}: {}", r.text);
        assert_eq!(r.json()["field"], field, "{body}");
    }
    let (status, _) = s.get("/v1/admin/top?by=size");
    assert_eq!(status, 400);
    let (status, _) = s.get("/v1/admin/targets/nonsense");
    assert_eq!(status, 400);
    // Not UTF-8 once decoded: still the API's JSON error, naming the field.
    let (status, r) = s.get("/v1/admin/targets/%FF");
    assert_eq!(status, 400);
    assert_eq!(r.json()["field"], "target", "{}", r.text);
}

#[test]
fn inspect_and_top_show_state_without_raw_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &base(dir.path()));
    for _ in 0..3 {
        s.check(r#"{"action":"login","targets":{"ip":"198.51.100.7"}}"#);
    }
    s.check(r#"{"action":"registration","targets":{"ip":"198.51.100.7"}}"#);
    s.check(r#"{"action":"registration","targets":{"ip":"198.51.100.7"}}"#);
    let (status, r) = s.get("/v1/admin/targets/ip:198.51.100.7");
    assert_eq!(status, 200, "{}", r.text);
    let v = r.json();
    let login = v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "client.target.login.ip")
        .unwrap()
        .clone();
    assert_eq!(login["remaining"], 7, "{v}");
    assert!(!r.text.contains("198.51.100.7"));
    let (_, r) = s.get("/v1/admin/top?by=denials&limit=5");
    let top = r.json();
    assert_eq!(top["targets"][0]["requests"], 5, "{top}");
    assert_eq!(top["targets"][0]["denials"], 1);
    assert!(!r.text.contains("198.51.100.7"));
    // The hashed label from `top` is accepted wherever a target is.
    let label = top["targets"][0]["target"].as_str().unwrap().to_owned();
    let (status, r) = s.get(&format!("/v1/admin/targets/{}", label.replace('#', "%23")));
    assert_eq!(status, 200, "{}", r.text);
}

#[test]
fn reload_keeps_counters_and_refuses_invalid_configs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base(dir.path());
    let s = Server::start(dir.path(), &cfg);
    let login = r#"{"action":"login","targets":{"ip":"198.51.100.9"}}"#;
    for _ in 0..10 {
        assert_eq!(s.check(login)["allowed"], true);
    }
    assert_eq!(s.check(login)["allowed"], false);
    s.post("/v1/admin/bans", r#"{"targets":["user:@x:example.org"]}"#);
    // A new policy: registration tightened; login's limit (same name) keeps its counter.
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{cfg}[limits.client.global]\nregistration = \"2/1d\"\n"),
    )
    .unwrap();
    let (status, r) = s.post("/v1/admin/reload", "");
    assert_eq!(status, 200, "{}", r.text);
    assert_eq!(s.check(login)["allowed"], false, "counter lost on reload");
    let d = s.check(r#"{"action":"registration","targets":{"ip":"198.51.100.20"}}"#);
    assert!(
        d["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "client.global.registration" && l["limit"] == 2),
        "{d}"
    );
    assert_eq!(
        s.check(r#"{"action":"login","targets":{"user":"@x:example.org"}}"#)["reason"],
        "banned"
    );
    // An invalid file is refused with its location; the running policy stays.
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{cfg}[limits.client.global]\nregistration = \"2/fortnight\"\n"),
    )
    .unwrap();
    let (status, r) = s.post("/v1/admin/reload", "");
    assert_eq!(status, 400);
    let err = r.json()["error"].as_str().unwrap().to_owned();
    assert!(err.contains("sluice.toml:4:"), "{err}");
    let d = s.check(r#"{"action":"registration","targets":{"ip":"198.51.100.21"}}"#);
    assert!(d["limits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "client.global.registration" && l["limit"] == 2));
}

#[test]
fn admin_needs_loopback_or_the_token() {
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let cfg = format!(
        "{}admin_token_file = {:?}\n",
        base(dir.path()),
        token_file.display().to_string()
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, cfg).unwrap();
    let config = sluice_config::load(&path).unwrap();
    let app =
        sluice_server::App::with_clock(config, std::sync::Arc::new(sluice_core::FakeClock::new())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = |peer: &str, auth: Option<&str>, path: &str| {
        let router = sluice_server::router(app.clone())
            .layer(MockConnectInfo(peer.parse::<std::net::SocketAddr>().unwrap()));
        let mut req = axum::http::Request::get(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        rt.block_on(router.oneshot(req.body(Body::empty()).unwrap()))
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(call("203.0.113.5:4000", None, "/v1/admin/bans"), 401);
    assert_eq!(
        call(
            "203.0.113.5:4000",
            Some("Bearer wrong-token-wrong-token"),
            "/v1/admin/bans"
        ),
        401
    );
    assert_eq!(
        call(
            "203.0.113.5:4000",
            Some("Bearer 0123456789abcdef0123"),
            "/v1/admin/bans"
        ),
        200
    );
    assert_eq!(call("127.0.0.1:4000", None, "/v1/admin/bans"), 200);
    assert_eq!(call("[::1]:4000", None, "/v1/admin/top"), 200);
    assert_eq!(call("[::ffff:127.0.0.1]:4000", None, "/v1/admin/top"), 200);
    // The decision API itself is open to any peer.
    assert_eq!(call("203.0.113.5:4000", None, "/healthz"), 200);
}
