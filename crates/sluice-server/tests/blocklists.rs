//! Blocklist sources in the service: loaded from files and from the cache
//! under `state_dir` (so a restart with the publisher down still blocks),
//! kept across reloads, refused bodies leaving the last good set.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use sluice_core::{Reason, Request, Target};
use sluice_server::App;

fn config(dir: &std::path::Path, extra: &str) -> sluice_config::Config {
    let text = format!(
        "[server]\nstate_dir = {:?}\n\n[[blocklist.source]]\nname = \"jabberspam\"\nurl = \"https://lists.example/blacklist.txt\"\nformat = \"domains\"\nmatch = \"subdomains\"\n\n[[blocklist.source]]\nname = \"local\"\npath = {:?}\nformat = \"cidr\"\n{extra}",
        dir.display().to_string(),
        dir.join("local.txt").display().to_string(),
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    sluice_config::load(&path).unwrap()
}

fn blocked_by(app: &App, req: &Request<'_>) -> Option<(String, String)> {
    match app.engine().check(req).unwrap().reason {
        Reason::Blocked(b) => b.list.map(|h| (h.source.to_string(), h.entry)),
        _ => None,
    }
}

#[test]
fn a_restart_with_the_publisher_down_blocks_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.txt"), "192.0.2.0/24 ; abuse\n").unwrap();
    let app = App::new(config(dir.path(), "")).unwrap();
    // Nothing cached yet: the URL source has no set, the file source does.
    let server = Request::federation("transaction").server(Target::server("xmpp.spam.example").unwrap());
    assert_eq!(blocked_by(&app, &server), None);
    let ip = Request::client("login").ip("192.0.2.9".parse().unwrap());
    assert_eq!(
        blocked_by(&app, &ip),
        Some(("local".into(), "192.0.2.0/24".into()))
    );
    // What a fetch accepted last time, as it writes it.
    let cache = app.lists().cache_path("jabberspam").unwrap();
    sluice_server::lists::write_atomic(&cache, b"spam.example\nbad.example\n").unwrap();
    drop(app);
    let app = App::new(config(dir.path(), "")).unwrap();
    assert_eq!(
        blocked_by(&app, &server),
        Some(("jabberspam".into(), "spam.example".into()))
    );
    let status = app.lists().status(&app.config().blocklist);
    assert_eq!(status.len(), 2);
    assert!(status.iter().all(|s| s.set.is_some() && s.last_error.is_none()));
}

#[test]
fn refused_bodies_keep_the_last_good_set_and_reloads_keep_unchanged_sources() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.txt");
    let body: String = (0..100).map(|i| format!("198.51.100.{i}\n")).collect();
    std::fs::write(&local, body).unwrap();
    let app = App::new(config(dir.path(), "")).unwrap();
    let ip = Request::client("login").ip("198.51.100.50".parse().unwrap());
    assert!(blocked_by(&app, &ip).is_some());
    let before = app.engine().blocklists().source("local").unwrap().clone();
    for bad in [
        &b"<!DOCTYPE html><html>maintenance</html>"[..],
        b"",
        b"198.51.100.1\n",
    ] {
        std::fs::write(&local, bad).unwrap();
        app.refresh_lists(Some("local"));
        assert!(
            blocked_by(&app, &ip).is_some(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        let st = app.lists().status(&app.config().blocklist);
        assert!(st[1].last_error.is_some());
    }
    // A reload with the same settings keeps the compiled set itself.
    app.reload().unwrap();
    let after = app.engine().blocklists().source("local").unwrap().clone();
    assert!(std::sync::Arc::ptr_eq(&before, &after));
    // Changed settings rebuild it (the file now has one entry; no shrink
    // check against a set built with other settings).
    config(dir.path(), "action = \"shadow\"\n");
    app.reload().unwrap();
    assert!(app.engine().check(&ip).unwrap().allowed);
    assert!(
        app.engine()
            .check(&Request::client("login").ip("198.51.100.1".parse().unwrap()))
            .unwrap()
            .allowed
    );
}

/// A decision refused by a list names the source, the entry and the list's
/// reason in `/v1/check` (the contract fields unchanged), in the admin
/// inspect answer, and the per-source metrics count it.
#[test]
fn a_listed_target_is_explained_in_the_answer_inspect_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spam.txt"), "spam.example\n").unwrap();
    let text = format!(
        "[server]\nstate_dir = {:?}\n\n[[blocklist.source]]\nname = \"jabberspam\"\npath = {:?}\nformat = \"domains\"\nmatch = \"subdomains\"\nreason = \"open registration, spam\"\n",
        dir.path().display().to_string(),
        dir.path().join("spam.txt").display().to_string(),
    );
    let server = common::Server::start(dir.path(), &text);
    let v = server.check(
        r#"{"action": "transaction", "side": "federation", "targets": {"server": "xmpp.spam.example"}}"#,
    );
    assert_eq!(v["allowed"], false);
    assert_eq!(v["reason"], "blocked");
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(v["limits"].is_array());
    assert_eq!(
        v["blocklist"],
        serde_json::json!({"source": "jabberspam", "entry": "spam.example", "reason": "open registration, spam", "action": "deny"})
    );
    // Not listed: no field at all.
    let ok = server
        .check(r#"{"action": "transaction", "side": "federation", "targets": {"server": "example.org"}}"#);
    assert_eq!(ok["reason"], "allowed");
    assert!(ok.get("blocklist").is_none());

    let (status, r) = server.get("/v1/admin/targets/server:a.spam.example");
    assert_eq!(status, 200);
    let m = &r.json()["blocklist"]["matches"][0];
    assert_eq!(
        (m["source"].as_str(), m["entry"].as_str()),
        (Some("jabberspam"), Some("spam.example"))
    );

    let (_, metrics) = server.get("/metrics");
    for line in [
        "sluice_blocklist_entries{source=\"jabberspam\"} 1",
        "sluice_blocklist_matches_total{source=\"jabberspam\",action=\"deny\"} 1",
        "sluice_blocklist_stale{source=\"jabberspam\"} 0",
        "sluice_blocklist_fetches_total{source=\"jabberspam\",result=\"ok\"}",
    ] {
        assert!(metrics.text.contains(line), "{line} in\n{}", metrics.text);
    }
    server.stop();
}
