//! The HTTP gateway over real sockets, against a small upstream started
//! in-process: every table entry, identity, forwarding headers, streaming
//! and byte limits, concurrency, protocol-native errors, login and
//! registration flows. Time moves only through the engine's `FakeClock`.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{start, Harness, TRUSTING};

const ALICE: (&str, &str) = ("authorization", "Bearer good-alice");

fn from(ip: &str) -> (&'static str, String) {
    ("x-forwarded-for", ip.to_owned())
}

/// Sends twice; the first must pass and the second be refused by `limit`.
async fn second_is_limited(h: &Harness, method: &str, path: &str, headers: &[(&str, &str)], limit: &str) {
    // A `GET` has no body (a framing rule: `tests/framing.rs`).
    let body = if method == "GET" { "" } else { "{}" };
    let first = h.send(method, path, headers, body).await;
    assert_eq!(first.status, 200, "{method} {path}: {:?}", first.json());
    let second = h.send(method, path, headers, body).await;
    assert_eq!(
        second.status,
        429,
        "{method} {path} not limited: {:?}",
        second.json()
    );
    let j = second.json();
    assert_eq!(j["errcode"], "M_LIMIT_EXCEEDED", "{method} {path}");
    assert!(
        j["error"].as_str().unwrap().contains(limit),
        "{method} {path}: {j} does not name {limit}"
    );
    assert!(j["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(second.header("retry-after").is_some());
    assert!(second.header("ratelimit").unwrap().contains(limit));
    assert!(second.header("ratelimit-policy").is_some());
}

const TIGHT: &str = r#"
[limits.client.target]
send_event = "1/1h"
join = "1/1h"
invite = "1/1h"
knock = "1/1h"
report = "1/1h"
create_alias = "1/1h"
registration_token_validity = "1/1h"

[limits.federation.target]
transaction = "1/1h"
join = "1/1h"
knock = "1/1h"
invite = "1/1h"
"#;

#[tokio::test]
async fn matrix_client_table_every_version() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    let entries: &[(&str, &str, &str)] = &[
        (
            "PUT",
            "rooms/!r:x/send/m.room.message/t1",
            "client.target.send_event.user",
        ),
        (
            "PUT",
            "rooms/!r:x/state/m.room.topic/",
            "client.target.send_event.user",
        ),
        ("POST", "join/!r:x", "client.target.join.user"),
        ("POST", "rooms/!r:x/join", "client.target.join.user"),
        ("POST", "rooms/!r:x/invite", "client.target.invite.user"),
        ("POST", "knock/!r:x", "client.target.knock.user"),
        ("POST", "rooms/!r:x/report/$e", "client.target.report.user"),
        ("PUT", "directory/room/%23a:x", "client.target.create_alias.user"),
        (
            "GET",
            "register/m.login.registration_token/validity?token=abc",
            "client.target.registration_token_validity.ip",
        ),
    ];
    for (i, v) in ["r0", "v1", "v3", "unstable"].iter().enumerate() {
        for (j, (method, path, limit)) in entries.iter().enumerate() {
            // A fresh user and address per entry and version: buckets apart.
            let token = format!("Bearer good-u{i}x{j}");
            let ip = format!("198.51.{i}.{j}");
            let headers = [
                ("authorization", token.as_str()),
                ("x-forwarded-for", ip.as_str()),
            ];
            second_is_limited(
                &h,
                method,
                &format!("/_matrix/client/{v}/{path}"),
                &headers,
                limit,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn media_upload_and_download_count_bytes() {
    let limits = "[limits.client.target]\nmedia_create = \"100B/1h\"\nmedia_download = \"100B/1h\"\n";
    let h = start("matrix", &format!("{TRUSTING}{limits}"), "").await;
    let body = "x".repeat(60);
    let up = |v: &'static str| format!("/_matrix/media/{v}/upload?filename=a");
    // Declared lengths are charged up front: 60 fits, 60 more does not.
    let r = h.send("POST", &up("v3"), &[ALICE], &body).await;
    assert_eq!(r.status, 200);
    let before = h.seen.requests.load(Ordering::SeqCst);
    let r = h.send("POST", &up("r0"), &[ALICE], &body).await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"].as_str().unwrap().contains("media_create"));
    assert_eq!(
        h.seen.requests.load(Ordering::SeqCst),
        before,
        "refused upload reached the upstream"
    );
    // More than the bucket can ever hold: 413 M_TOO_LARGE.
    let r = h.send("POST", &up("v3"), &[ALICE], &"x".repeat(101)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");

    // Downloads: 60 declared bytes pass, the next 60 are refused.
    let ip = from("203.0.113.50");
    let hd = [(ip.0, ip.1.as_str())];
    let r = h.get("/_matrix/media/v3/download/x/y?size=60", &hd).await;
    assert_eq!((r.status, r.body.len()), (200, 60));
    let r = h.get("/_matrix/client/v1/media/download/x/y?size=60", &hd).await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("client.target.media_download.ip"));
}

const BYTE_LIMITS: &str =
    "[limits.client.target]\nmedia_create = \"100B/1h\"\nmedia_download = \"100B/1h\"\n";

#[tokio::test]
async fn chunked_bodies_are_metered_as_they_flow() {
    let h = start("matrix", &format!("{TRUSTING}{BYTE_LIMITS}"), "").await;
    metered_as_they_flow(&h).await;
}

/// Bodies of unknown length, with `BYTE_LIMITS`: charged frame by frame.
async fn metered_as_they_flow(h: &Harness) {
    // 5 × 10 bytes with no Content-Length: counted frame by frame.
    let r = h
        .send_chunked("POST", "/_matrix/media/v3/upload", &[ALICE], 5)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h.seen.body_bytes.load(Ordering::SeqCst), 50);
    // 10 more frames: the bucket runs dry after 5 — the upload is cut and
    // answered 429, and the upstream never gets the rest.
    let r = h
        .send_chunked("POST", "/_matrix/media/v3/upload", &[ALICE], 10)
        .await;
    assert_eq!(r.status, 429, "{:?}", r.json());
    assert_eq!(r.json()["errcode"], "M_LIMIT_EXCEEDED");
    assert!(h.seen.body_bytes.load(Ordering::SeqCst) <= 100);

    // A chunked download past the limit is cut short.
    let ip = from("203.0.113.51");
    let hd = [(ip.0, ip.1.as_str())];
    let r = h
        .get("/_matrix/media/v3/download/x/y?size=80&chunked=1", &hd)
        .await;
    assert_eq!((r.status, r.body.len()), (200, 80));
    // Cut: the client sees the body end early, or — when the whole body
    // was already at hand before the head went out — no answer at all.
    match h
        .try_get("/_matrix/media/v3/download/x/y?size=80&chunked=1", &hd)
        .await
    {
        Ok(r) => assert!(r.body.len() <= 20, "download not cut: {} bytes", r.body.len()),
        Err(e) => assert!(e.contains("IncompleteMessage"), "{e}"),
    }
}

#[tokio::test]
async fn federation_table_and_unverified_origins() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    let xm = |origin: &str, sig: &str| {
        format!("X-Matrix origin=\"{origin}\",destination=\"us\",key=\"ed25519:a\",sig=\"{sig}\"")
    };
    let entries: &[(&str, &str, &str)] = &[
        (
            "PUT",
            "/_matrix/federation/v1/send/t1",
            "federation.target.transaction.server",
        ),
        (
            "PUT",
            "/_matrix/federation/v2/send_join/!r:x/$e",
            "federation.target.join.server",
        ),
        (
            "PUT",
            "/_matrix/federation/v1/send_knock/!r:x/$e",
            "federation.target.knock.server",
        ),
        (
            "PUT",
            "/_matrix/federation/v2/invite/!r:x/$e",
            "federation.target.invite.server",
        ),
    ];
    for (i, (method, path, limit)) in entries.iter().enumerate() {
        let origin = format!("s{i}.example.org");
        let ip = format!("192.0.2.{i}");
        let auth = xm(&origin, "good");
        let headers = [("authorization", auth.as_str()), ("x-forwarded-for", ip.as_str())];
        // First request: the origin is unconfirmed and counts as the
        // sending address; the upstream accepts it, which confirms it.
        let r = h.send(method, path, &headers, "{}").await;
        assert_eq!(r.status, 200);
        // From now on the origin's own bucket: one more passes, then refused.
        second_is_limited(&h, method, path, &headers, limit).await;
    }
    // A forger claiming a busy server from elsewhere with a bad signature
    // spends its own address's budget, not the server's.
    let forged = xm("s0.example.org", "bad");
    let headers = [
        ("authorization", forged.as_str()),
        ("x-forwarded-for", "192.0.2.99"),
    ];
    let r = h
        .send("PUT", "/_matrix/federation/v1/send/t9", &headers, "{}")
        .await;
    assert_eq!(r.status, 401);
    let r = h
        .send("PUT", "/_matrix/federation/v1/send/t9", &headers, "{}")
        .await;
    assert_eq!(r.status, 429);
    let target: sluice_core::Target = "server:192.0.2.99".parse().unwrap();
    assert!(h.spent(&target));
}

/// An `X-Matrix` origin is confirmed only by a success from an endpoint
/// that checks signatures: not by a 404 (Synapse answers unknown paths
/// before it looks at the signature). A repeated `origin` is never
/// confirmed, and two `Authorization` fields are refused.
#[tokio::test]
async fn only_authenticated_successes_confirm_an_origin() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    let claim = "X-Matrix origin=\"victim.example.org\",destination=\"us\",key=\"ed25519:a\",sig=\"x\"";
    let from_attacker = [("authorization", claim), ("x-forwarded-for", "192.0.2.66")];
    let r = h.get("/_matrix/federation/v1/missing", &from_attacker).await;
    assert_eq!(r.status, 404);
    // Still unconfirmed: a transaction (its signature refused, so it
    // confirms nothing either) is charged to the attacker's address, not
    // to the victim.
    let bad = "X-Matrix origin=\"victim.example.org\",destination=\"us\",key=\"ed25519:a\",sig=\"bad\"";
    let hd = [("authorization", bad), ("x-forwarded-for", "192.0.2.66")];
    let r = h.send("PUT", "/_matrix/federation/v1/send/t1", &hd, "{}").await;
    assert_eq!(r.status, 401);
    let attacker: sluice_core::Target = "server:192.0.2.66".parse().unwrap();
    assert!(h.spent(&attacker));
    let victim: sluice_core::Target = "server:victim.example.org".parse().unwrap();
    assert!(!h.spent(&victim));

    // `origin` twice: the upstream may verify the other one.
    let twice = "X-Matrix origin=\"victim.example.org\",origin=\"evil.example\",key=\"ed25519:a\",sig=\"x\"";
    let hd = [("authorization", twice), ("x-forwarded-for", "192.0.2.67")];
    assert_eq!(
        h.send("PUT", "/_matrix/federation/v1/send/t2", &hd, "{}")
            .await
            .status,
        200
    );
    assert!(!h.spent(&victim));
    // Counted as its sending address, not let through uncounted: the
    // address's transaction budget (1/1h) is spent.
    let r = h.send("PUT", "/_matrix/federation/v1/send/t2b", &hd, "{}").await;
    assert_eq!(r.status, 429, "{:?}", r.json());
    let sender: sluice_core::Target = "server:192.0.2.67".parse().unwrap();
    assert!(h.spent(&sender));

    // Two Authorization fields: refused before anything is counted.
    let hd = [
        ("authorization", "Bearer good-alice"),
        ("authorization", claim),
        ("x-forwarded-for", "192.0.2.68"),
    ];
    let r = h.send("PUT", "/_matrix/federation/v1/send/t3", &hd, "{}").await;
    assert_eq!(r.status, 400, "{:?}", r.json());
}

/// A percent-encoded query key is the same key to the upstream: the token
/// behind `access%5Ftoken` is found and its user counted.
#[tokio::test]
async fn encoded_query_tokens_are_found() {
    let limits = "[limits.client.target]\nrequest = [{ rate = \"100/1h\", per = \"anonymous_ip\" }, { rate = \"1/1h\", per = \"user\" }]\n";
    let h = start("matrix", &format!("{TRUSTING}{limits}"), "").await;
    let hd = [("x-forwarded-for", "203.0.113.70")];
    let path = "/_matrix/client/v3/capabilities?access%5Ftoken=good-alice";
    assert_eq!(h.get(path, &hd).await.status, 200);
    let r = h.get(path, &hd).await;
    assert_eq!(r.status, 429, "the user's budget, not the address's");
    assert!(r.json()["error"].as_str().unwrap().contains("request.user"));
}

/// Registration steps sent at the same moment cannot all pass the check
/// before the first success is charged: one in flight per address.
#[tokio::test]
async fn concurrent_registrations_are_one_at_a_time() {
    let h = std::sync::Arc::new(start("matrix", TRUSTING, "").await);
    let first = {
        let h = h.clone();
        tokio::spawn(async move {
            let hd = [("x-forwarded-for", "203.0.113.80")];
            h.send(
                "POST",
                "/_matrix/client/v3/register",
                &hd,
                "{\"auth\":{},\"hold\":1}",
            )
            .await
            .status
        })
    };
    h.wait_held(1).await;
    // The first is at the upstream, not yet charged: the others wait.
    let hd = [("x-forwarded-for", "203.0.113.80")];
    let r = h
        .send("POST", "/_matrix/client/v3/register", &hd, "{\"auth\":{}}")
        .await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("registration_in_flight"));
    // Another address is not held up.
    let other = [("x-forwarded-for", "203.0.113.81")];
    assert_eq!(
        h.send("POST", "/_matrix/client/v3/register", &other, "{\"auth\":{}}")
            .await
            .status,
        200
    );
    h.seen.release.add_permits(1);
    assert_eq!(first.await.unwrap(), 200);
    // Charged: the address's registration budget is spent.
    let r = h
        .send("POST", "/_matrix/client/v3/register", &hd, "{\"auth\":{}}")
        .await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"].as_str().unwrap().contains("registration"));
}

#[tokio::test]
async fn registration_charged_on_success_only() {
    let h = start("matrix", TRUSTING, "").await;
    let ip = from("203.0.113.9");
    let hd = [(ip.0, ip.1.as_str())];
    // The user-interactive first step (401 with flows) is neither charged
    // nor a failure, however often it is repeated.
    for _ in 0..3 {
        let r = h
            .send("POST", "/_matrix/client/v3/register", &hd, "{\"username\":\"n\"}")
            .await;
        assert_eq!(r.status, 401);
        assert!(r.json()["flows"].is_array());
    }
    let r = h
        .send("POST", "/_matrix/client/r0/register", &hd, "{\"auth\":{}}")
        .await;
    assert_eq!(r.status, 200);
    // Preset: 1 registration per 6 minutes per address.
    let r = h
        .send("POST", "/_matrix/client/v3/register", &hd, "{\"username\":\"m\"}")
        .await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("client.target.registration.ip"));
    h.clock.advance(Duration::from_secs(360));
    let r = h
        .send("POST", "/_matrix/client/v3/register", &hd, "{\"auth\":{}}")
        .await;
    assert_eq!(r.status, 200);
    // Another address is not affected.
    let r = h
        .send(
            "POST",
            "/_matrix/client/v3/register",
            &[("x-forwarded-for", "203.0.113.10")],
            "{\"auth\":{}}",
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn password_guessing_is_banned() {
    let h = start("matrix", TRUSTING, "").await;
    let ip = from("203.0.113.66");
    let hd = [(ip.0, ip.1.as_str())];
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = h
            .send(
                "POST",
                "/_matrix/client/v3/login",
                &hd,
                "{\"password\":\"wrong\"}",
            )
            .await;
        statuses.push(r.status);
    }
    // Wrong passwords reach the upstream until 5 failures in 30 s; then the
    // address is refused, and the refusals lead to a ban.
    assert_eq!(&statuses[..5], &[403; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let bans = h.app.engine().bans().list(h.app.now());
    assert_eq!(bans.len(), 1, "no automatic ban");
    assert_eq!(bans[0].target.to_string(), "ip:203.0.113.66");
    // Banned: even the right password and other endpoints are refused.
    let r = h
        .send(
            "POST",
            "/_matrix/client/v3/login",
            &hd,
            "{\"password\":\"right\"}",
        )
        .await;
    assert_eq!(r.status, 429);
    let r = h.get("/_matrix/client/v3/capabilities", &hd).await;
    assert_eq!(r.status, 429);
    assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 60_000);
    // A correct login from elsewhere is fine, and charged.
    let r = h
        .send(
            "POST",
            "/_matrix/client/v3/login",
            &[("x-forwarded-for", "203.0.113.67")],
            "{\"password\":\"right\"}",
        )
        .await;
    assert_eq!(r.status, 200);
    let t: sluice_core::Target = "ip:203.0.113.67".parse().unwrap();
    let login = h.app.engine().inspect(&t).unwrap();
    let l = login.iter().find(|l| l.name == "client.target.login.ip").unwrap();
    assert_eq!(l.remaining, l.limit - 1);
}

#[tokio::test]
async fn bad_tokens_count_as_authentication_failures() {
    let h = start("matrix", TRUSTING, "").await;
    let hd = [
        ("authorization", "Bearer bad-token"),
        ("x-forwarded-for", "203.0.113.70"),
    ];
    for _ in 0..5 {
        assert_eq!(h.get("/_matrix/client/v3/joined_rooms", &hd).await.status, 401);
    }
    let t: sluice_core::Target = "ip:203.0.113.70".parse().unwrap();
    let state = h.app.engine().inspect(&t).unwrap();
    let f = state
        .iter()
        .find(|l| l.name == "client.target.authentication_failure.ip")
        .unwrap();
    assert_eq!(f.remaining, 0);
}

#[tokio::test]
async fn whoami_resolves_once_and_users_share_a_budget() {
    let h = start(
        "matrix",
        &format!("{TRUSTING}[limits.client.target]\nsend_event = \"3/1h\"\n"),
        "",
    )
    .await;
    let path = "/_matrix/client/v3/rooms/!r:x/send/m.room.message/";
    for i in 0..3 {
        // Different addresses (devices), one user.
        let ip = format!("198.18.0.{i}");
        let r = h
            .send(
                "PUT",
                &format!("{path}{i}"),
                &[ALICE, ("x-forwarded-for", &ip)],
                "{}",
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = h.send("PUT", &format!("{path}9"), &[ALICE], "{}").await;
    assert_eq!(r.status, 429);
    assert_eq!(h.seen.whoami.load(Ordering::SeqCst), 1, "whoami not cached");
    let u: sluice_core::Target = "user:@alice:example.org".parse().unwrap();
    assert!(h
        .app
        .engine()
        .inspect(&u)
        .unwrap()
        .iter()
        .any(|l| l.name == "client.target.send_event.user" && l.remaining == 0));
}

#[tokio::test]
async fn token_hash_identity_and_query_tokens() {
    let h = start(
        "matrix",
        &format!("{TRUSTING}[limits.client.target]\nsend_event = \"1/1h\"\n"),
        "user_identity = \"token_hash\"\n",
    )
    .await;
    let path = "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1";
    let r = h
        .send("PUT", &format!("{path}?access_token=good-bob"), &[], "{}")
        .await;
    assert_eq!(r.status, 200);
    // The same token in the header is the same identity.
    let r = h
        .send("PUT", path, &[("authorization", "Bearer good-bob")], "{}")
        .await;
    assert_eq!(r.status, 429);
    // Another token is another identity.
    let r = h
        .send("PUT", path, &[("authorization", "Bearer good-carol")], "{}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h.seen.whoami.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn appservice_tokens_and_masquerading() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("irc.token");
    std::fs::write(&token_file, "as-secret\n").unwrap();
    let extra = format!(
        "[[gateway.http.appservice]]\nid = \"irc\"\ntoken_file = \"{}\"\n",
        token_file.display()
    );
    let h = start(
        "matrix",
        &format!("{TRUSTING}[limits.client.target]\nsend_event = \"1/1h\"\n"),
        &extra,
    )
    .await;
    let path = "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1";
    let auth = [("authorization", "Bearer as-secret")];
    for user in ["%40irc_a%3Aexample.org", "%40irc_b%3Aexample.org"] {
        let p = format!("{path}?user_id={user}");
        assert_eq!(h.send("PUT", &p, &auth, "{}").await.status, 200);
        assert_eq!(h.send("PUT", &p, &auth, "{}").await.status, 429);
    }
    assert_eq!(
        h.seen.whoami.load(Ordering::SeqCst),
        0,
        "appservice tokens need no whoami"
    );
    let t: sluice_core::Target = "user:@irc_a:example.org".parse().unwrap();
    assert!(h.spent(&t));
}

#[tokio::test]
async fn forwarding_headers_are_rewritten() {
    let h = start("matrix", TRUSTING, "").await;
    // A real client behind our trusted proxy (127.0.0.1), which forwarded
    // a chain the client partly made up.
    let r = h
        .get(
            "/_matrix/client/v3/capabilities",
            &[
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                ("host", "matrix.example.org"),
            ],
        )
        .await;
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(seen["x-real-ip"], "198.51.100.7");
    assert_eq!(
        seen["forwarded"],
        "for=198.51.100.7, for=127.0.0.1;proto=http;host=\"matrix.example.org\""
    );
    assert_eq!(seen["host"], "matrix.example.org");

    // An untrusted peer's headers are ignored entirely.
    let h = start("matrix", "", "").await;
    let r = h
        .get(
            "/_matrix/client/v3/capabilities",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=7.7.7.7"),
                ("x-real-ip", "8.8.8.8"),
            ],
        )
        .await;
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert!(seen["forwarded"]
        .as_str()
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http;host="));

    // A client naming the forwarding fields in `Connection` cannot strip
    // the ones sluice writes; nor `Host`.
    let r = h
        .get(
            "/_matrix/client/v3/capabilities",
            &[
                ("host", "matrix.example.org"),
                (
                    "connection",
                    "keep-alive, X-Forwarded-For, X-Real-IP, Forwarded, X-Forwarded-Proto, Host",
                ),
            ],
        )
        .await;
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["host"], "matrix.example.org");
    assert!(seen["forwarded"].as_str().unwrap().starts_with("for=127.0.0.1;"));
}

#[tokio::test]
async fn spoofed_addresses_do_not_escape_per_ip_limits() {
    // Behind a trusted proxy that writes X-Forwarded-For (the default
    // `real_ip_header`), a `Forwarded` the proxy passed through as the
    // client made it up is not read: a fresh one each time escapes nothing.
    let h = start("matrix", TRUSTING, "").await;
    for (i, want) in [(1, 200), (2, 429)] {
        let made_up = format!("for=203.0.113.{i}");
        let r = h
            .send(
                "POST",
                "/_matrix/client/v3/register",
                &[
                    ("x-forwarded-for", "198.51.100.1"),
                    ("forwarded", made_up.as_str()),
                ],
                "{\"auth\":{}}",
            )
            .await;
        assert_eq!(r.status, want, "registration {i}");
    }
    // With `real_ip_header = "forwarded"` it is the other way round.
    let h = start("matrix", TRUSTING, "real_ip_header = \"forwarded\"\n").await;
    for (i, want) in [(1, 200), (2, 429)] {
        let made_up = format!("203.0.113.{i}");
        let r = h
            .send(
                "POST",
                "/_matrix/client/v3/register",
                &[
                    ("x-forwarded-for", made_up.as_str()),
                    ("forwarded", "for=198.51.100.1"),
                ],
                "{\"auth\":{}}",
            )
            .await;
        assert_eq!(r.status, want, "registration {i} (Forwarded)");
    }

    // Untrusted peer: registering with a fresh X-Forwarded-For each time
    // still counts against the peer.
    let h = start("matrix", "", "").await;
    let r = h
        .send(
            "POST",
            "/_matrix/client/v3/register",
            &[("x-forwarded-for", "1.1.1.1")],
            "{\"auth\":{}}",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h
        .send(
            "POST",
            "/_matrix/client/v3/register",
            &[("x-forwarded-for", "2.2.2.2")],
            "{\"auth\":{}}",
        )
        .await;
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn long_polls_do_not_starve_requests() {
    let h = start("matrix", TRUSTING, "long_polls_per_account = 5\n").await;
    let h = std::sync::Arc::new(h);
    // Resolve the token first, so every sync below needs no whoami.
    assert_eq!(
        h.get("/_matrix/client/v3/capabilities", &[ALICE]).await.status,
        200
    );
    // Five syncs held open by the upstream — more than the account's 4
    // request slots.
    let mut held = Vec::new();
    for _ in 0..5 {
        let h = h.clone();
        held.push(tokio::spawn(async move {
            h.get("/_matrix/client/v3/sync", &[ALICE]).await.status
        }));
    }
    h.wait_held(5).await;
    // Other requests still pass.
    assert_eq!(
        h.get("/_matrix/client/v3/capabilities", &[ALICE]).await.status,
        200
    );
    // A sixth long poll is one too many.
    let r = h.get("/_matrix/client/v3/sync", &[ALICE]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["errcode"], "M_LIMIT_EXCEEDED");
    h.seen.release.add_permits(5);
    for t in held {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Slots came back.
    let h2 = h.clone();
    let again = tokio::spawn(async move { h2.get("/_matrix/client/v3/sync", &[ALICE]).await.status });
    h.wait_held(6).await;
    h.seen.release.add_permits(1);
    assert_eq!(again.await.unwrap(), 200);
}

#[tokio::test]
async fn concurrent_requests_per_account_are_capped() {
    let h = std::sync::Arc::new(start("generic", TRUSTING, "").await);
    let bearer = [("authorization", "Bearer t1")];
    let mut held = Vec::new();
    for _ in 0..4 {
        let h = h.clone();
        held.push(tokio::spawn(async move {
            h.get("/hold", &[("authorization", "Bearer t1")]).await.status
        }));
    }
    h.wait_held(4).await;
    let r = h.get("/other", &bearer).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["limit"], "client.concurrent.request.user");
    // Another account is not affected.
    assert_eq!(
        h.get("/other", &[("authorization", "Bearer t2")]).await.status,
        200
    );
    h.seen.release.add_permits(4);
    for t in held {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.get("/other", &bearer).await.status, 200);
}

#[tokio::test]
async fn jmap_table_identity_and_problem_json() {
    let limits = "[limits.client.target]\nmedia_create = \"100B/1h\"\nmedia_download = \"100B/1h\"\nrequest = \"3/1h\"\n";
    let h = start("jmap", &format!("{TRUSTING}{limits}"), "").await;
    // alice:pw — unconfirmed until the upstream accepts it once.
    let basic = ("authorization", "Basic YWxpY2U6cHc=");
    let host = ("host", "mail.example.org");
    let r = h.send("POST", "/jmap/", &[basic, host], "{}").await;
    assert_eq!(r.status, 200);
    // Now confirmed: counted as the user.
    for _ in 0..3 {
        h.send("POST", "/jmap/", &[basic, host], "{}").await;
    }
    let r = h.send("POST", "/jmap/", &[basic, host], "{}").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let j = r.json();
    assert_eq!(j["type"], "urn:ietf:params:jmap:error:limit");
    assert_eq!(j["status"], 429);
    assert_eq!(j["limit"], "client.target.request.user");
    let u: sluice_core::Target = "user:alice@mail.example.org".parse().unwrap();
    assert!(h.spent(&u));

    // Someone typing alice's name with a wrong password does not spend
    // her budget: unconfirmed, per address, and a 401 is a failure.
    let mallory = [
        ("authorization", "Basic bWFsbG9yeTp3cm9uZw=="),
        ("x-forwarded-for", "203.0.113.80"),
    ];
    assert_eq!(h.send("POST", "/jmap/", &mallory, "{}").await.status, 401);

    // Upload (bytes) and download.
    let bob = [("authorization", "Bearer bob-token")];
    assert_eq!(
        h.send("POST", "/jmap/upload/a1/", &bob, &"x".repeat(90))
            .await
            .status,
        200
    );
    let r = h.send("POST", "/jmap/upload/a1/", &bob, &"x".repeat(20)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "client.target.media_create.user");
    let hd = [("x-forwarded-for", "203.0.113.81")];
    assert_eq!(h.get("/jmap/download/a1/b1/n?size=90", &hd).await.status, 200);
    assert_eq!(h.get("/jmap/download/a1/b1/n?size=20", &hd).await.status, 429);
}

/// A generic rule for downloads charges the answer's bytes (its default:
/// `bytes` follows the action), not the request's empty body.
#[tokio::test]
async fn generic_download_rules_charge_the_answer() {
    let limits = "[limits.client.target]\nmedia_download = \"100B/1h\"\n";
    let rule = "[[gateway.http.rule]]\npath = \"/files/*\"\naction = \"media_download\"\n";
    let h = start("generic", &format!("{TRUSTING}{limits}"), rule).await;
    let hd = [("x-forwarded-for", "203.0.113.95")];
    let r = h.get("/files/download/a?size=80", &hd).await;
    assert_eq!((r.status, r.body.len()), (200, 80));
    let r = h.get("/files/download/b?size=80", &hd).await;
    assert_eq!(r.status, 429, "the first download was not counted");
}

#[tokio::test]
async fn generic_rules_and_rate_limit_fields() {
    let extra =
        "[[gateway.http.rule]]\nmethod = \"POST\"\npath = \"/api/signup\"\naction = \"registration\"\n";
    let h = start("generic", TRUSTING, extra).await;
    let r = h
        .send(
            "POST",
            "/api/signup",
            &[("x-forwarded-for", "203.0.113.90")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    // Limited routes carry the IETF fields even when allowed.
    assert!(r
        .header("ratelimit-policy")
        .unwrap()
        .contains("client.target.registration.ip"));
    let r = h
        .send(
            "POST",
            "/api/signup",
            &[("x-forwarded-for", "203.0.113.90")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["type"], "about:blank");
    assert_eq!(r.json()["limit"], "client.target.registration.ip");
    // GET is not the rule's method: only `request`.
    let r = h.get("/api/signup", &[("x-forwarded-for", "203.0.113.90")]).await;
    assert_eq!(r.status, 200);
}

/// What a new connection to `addr` reads before it is closed (a refused
/// connection's only answer).
async fn refusal_text(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a WebSocket to the upstream's echo through the gateway at `addr`:
/// the 101 read, and one message echoed through the splice.
async fn open_websocket(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /jmap/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    s
}

#[tokio::test]
async fn websocket_upgrades_pass() {
    let h = start("jmap", TRUSTING, "").await;
    open_websocket(h.addr).await;
}

/// An upgraded connection keeps its per-address connection lease for as
/// long as it is open: a WebSocket does not free its client's slot.
#[tokio::test]
async fn websockets_hold_their_connection_slot() {
    let h = start("jmap", "[concurrency.client.target]\nconnection = 1\n", "").await;
    // The splice is running (and the HTTP connection it came from is over).
    let _ws = open_websocket(h.addr).await;
    let text = refusal_text(h.addr).await;
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains("client.concurrent.connection.ip"), "{text}");
}

/// A client that stops sending its upload is answered 408 once the body
/// has been silent for `body_timeout` (real time: 200 ms here), and its
/// slot is free again.
#[tokio::test]
async fn stalled_uploads_time_out() {
    let caps = "[concurrency.client.target]\nmedia_create = 1\n";
    let h = start(
        "matrix",
        &format!("{TRUSTING}{caps}"),
        "body_timeout = \"200ms\"\n",
    )
    .await;
    // Bounded: without the timeout this request would wait for ever.
    let stalled = h.send_stalled("POST", "/_matrix/media/v3/upload", &[ALICE]);
    let r = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("no answer to a stalled upload");
    assert_eq!(r.status, 408, "{:?}", r.json());
    assert_eq!(r.json()["errcode"], "M_UNKNOWN");
    // The account's only upload slot was given back.
    let r = h.send("POST", "/_matrix/media/v3/upload", &[ALICE], "{}").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

/// An upstream that does not start answering within `upstream_timeout`
/// (real time: 200 ms here) gets the client a 504; a long poll is not cut.
#[tokio::test]
async fn a_silent_upstream_is_answered_504() {
    let h = start("matrix", TRUSTING, "upstream_timeout = \"200ms\"\n").await;
    let hold = h.get("/_matrix/client/v3/hold", &[]);
    let r = tokio::time::timeout(Duration::from_secs(10), hold)
        .await
        .expect("no answer while the upstream holds the request");
    assert_eq!(r.status, 504, "{:?}", r.json());
    assert_eq!(r.json()["errcode"], "M_UNKNOWN");
    // A body that stalls after its first frame is cut after as long.
    let trickle = h.try_get("/_matrix/client/v3/trickle", &[]);
    match tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .expect("a stalled body was never cut")
    {
        Ok(r) => assert!(r.body.len() <= 10, "{:?}", r.body),
        Err(e) => assert!(e.contains("IncompleteMessage") || e.contains("Body"), "{e}"),
    }
    // A sync held longer than that is still answered by the upstream.
    let h = std::sync::Arc::new(h);
    let sync = {
        let h = h.clone();
        tokio::spawn(async move { h.get("/_matrix/client/v3/sync", &[ALICE]).await.status })
    };
    h.wait_held(2).await;
    // Another request timing out proves upstream_timeout has passed since
    // the sync was held (no sleeping): the sync is still held, not cut.
    assert_eq!(h.get("/_matrix/client/v3/hold", &[]).await.status, 504);
    assert!(!sync.is_finished(), "a long poll was cut by upstream_timeout");
    h.seen.release.add_permits(3);
    assert_eq!(sync.await.unwrap(), 200);
}

#[tokio::test]
async fn metrics_and_top_see_gateway_decisions() {
    let h = start("matrix", TRUSTING, "").await;
    let hd = [("x-forwarded-for", "203.0.113.99")];
    h.send("POST", "/_matrix/client/v3/register", &hd, "{\"auth\":{}}")
        .await;
    h.send("POST", "/_matrix/client/v3/register", &hd, "{\"auth\":{}}")
        .await;
    let mut text = String::new();
    // The app's extra metric sources include this gateway's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let app = h.app.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_server::serve(listener, app, async move {
        let _ = rx.await;
    }));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let resp = client
        .get(format!("http://{api}/metrics").parse().unwrap())
        .await
        .unwrap();
    use http_body_util::BodyExt as _;
    text.push_str(&String::from_utf8_lossy(
        &resp.into_body().collect().await.unwrap().to_bytes(),
    ));
    assert!(text.contains("outcome=\"denied\"} 1"), "{text}");
    assert!(text.contains("sluice_http_gateway_requests_total"), "{text}");
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// TLS on the listener from PEM files (a self-signed test certificate for
/// `localhost`, valid for a century, in tests/data).
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_listener_serves_https() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let extra = format!("tls_cert = \"{data}/localhost.pem\"\ntls_key = \"{data}/localhost.key\"\n");
    let h = start("matrix", "", &extra).await;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(format!("{data}/localhost.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The upstream is told the client came over HTTPS.
    assert!(text.contains("\"x-forwarded-proto\":\"https\""), "{text}");
}

/// A direct client over its per-address connection limit: on a plain
/// listener one answer in the protocol's form, then the connection closes;
/// on a TLS listener the connection closes before any handshake.
#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let limits = "[limits.client.target]\nconnection = \"1/1h\"\n";
    let h = start("matrix", limits, "").await;
    let mut first = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    first
        .write_all(b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    first.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let text = refusal_text(h.addr).await;
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(
        text.contains("M_LIMIT_EXCEEDED") && text.contains("retry_after_ms"),
        "{text}"
    );

    #[cfg(feature = "tls")]
    {
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        // One worker: connections are admitted in the order they came (two
        // workers could admit the second first, which would then wait out
        // the handshake timeout).
        let extra =
            format!("workers = 1\ntls_cert = \"{data}/localhost.pem\"\ntls_key = \"{data}/localhost.key\"\n");
        let h = start("matrix", limits, &extra).await;
        let _first = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        // A ClientHello's first bytes; the answer is the end of the stream.
        let _ = second.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).await;
        let mut out = Vec::new();
        let _ = second.read_to_end(&mut out).await;
        assert!(out.is_empty(), "{} plain bytes on a TLS listener", out.len());
    }
}

/// An `https://` upstream with a private CA (`upstream_ca`): requests go
/// through over TLS, on kept-alive connections.
#[cfg(feature = "tls")]
#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let (up, seen) = common::start_upstream_with(Some(common::test_acceptor())).await;
    let base = format!("https://localhost:{}", up.port());
    let extra = format!("upstream_ca = \"{data}/localhost.pem\"\n");
    let h = common::start_with(&base, seen, "matrix", "", &extra).await;
    for _ in 0..3 {
        let r = h.get("/_matrix/client/v3/capabilities", &[]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(h.seen.requests.load(Ordering::SeqCst), 3);
}

/// The upstream's certificate is verified: one from another CA, or one
/// that does not name the host in the base URL, is refused (502, nothing
/// reaches the upstream's handler).
#[cfg(feature = "tls")]
#[tokio::test]
async fn https_upstream_certificates_are_verified() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    for (host, ca) in [("localhost", "other-ca.pem"), ("127.0.0.1", "localhost.pem")] {
        let (up, seen) = common::start_upstream_with(Some(common::test_acceptor())).await;
        let base = format!("https://{host}:{}", up.port());
        let extra = format!("upstream_ca = \"{data}/{ca}\"\n");
        let h = common::start_with(&base, seen, "matrix", "", &extra).await;
        let r = h.get("/_matrix/client/v3/capabilities", &[]).await;
        assert_eq!(r.status, 502, "{host} with {ca}: {:?}", r.body);
        assert_eq!(h.seen.requests.load(Ordering::SeqCst), 0, "{host} with {ca}");
    }
}

#[tokio::test]
async fn made_up_tokens_cannot_flood_whoami() {
    let limits = "[limits.client.target]\nrequest = [{ rate = \"5/1h\", per = \"anonymous_ip\" }, { rate = \"1000/1h\", per = \"user\" }]\n";
    let h = start("matrix", &format!("{TRUSTING}{limits}"), "").await;
    for i in 0..20 {
        let auth = format!("Bearer bad-{i}");
        let hd = [
            ("authorization", auth.as_str()),
            ("x-forwarded-for", "203.0.113.120"),
        ];
        h.get("/_matrix/client/v3/capabilities", &hd).await;
    }
    // Each lookup costs an anonymous request of the address: at most 5.
    assert!(
        h.seen.whoami.load(Ordering::SeqCst) <= 5,
        "{}",
        h.seen.whoami.load(Ordering::SeqCst)
    );
}

/// Every worker serves, and they share one engine (one limit for the
/// address, whichever worker a connection lands on) and one metrics series.
#[tokio::test]
async fn workers_serve_and_share_one_limit() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;

    let limits = "[limits.client.target]\nrequest = [{ rate = \"6/1h\", per = \"anonymous_ip\" }, { rate = \"1000/1h\", per = \"user\" }]\n";
    let h = start("matrix", &format!("{TRUSTING}{limits}"), "workers = 3\n").await;
    #[cfg(target_os = "linux")]
    {
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect();
        assert!(names.iter().any(|n| n.trim() == "sluice-http-2"), "{names:?}");
    }
    // Three connections open at once: the accept loop gives each to the
    // worker with the fewest, so each lands on its own worker.
    let mut senders = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let (tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        senders.push(tx);
    }
    let mut statuses = Vec::new();
    for round in 0..3 {
        for tx in &mut senders {
            let req = hyper::Request::get("/_matrix/client/v3/capabilities")
                .header("host", "localhost")
                .header("x-forwarded-for", "203.0.113.50")
                .body(Empty::new())
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            statuses.push((round, resp.status().as_u16()));
            resp.into_body().collect().await.unwrap();
        }
    }
    let ok = statuses.iter().filter(|(_, s)| *s == 200).count();
    let limited = statuses.iter().filter(|(_, s)| *s == 429).count();
    assert_eq!((ok, limited), (6, 3), "{statuses:?}");
    assert!(
        statuses.iter().all(|(round, s)| (*s == 200) == (*round < 2)),
        "{statuses:?}"
    );

    // One series for the gateway, whatever the number of workers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_server::serve(listener, h.app.clone(), async move {
        let _ = stopped.await;
    }));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("http://{api}/metrics").parse().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sluice_http_gateway_requests_total{"))
        .collect();
    // One per outcome: forwarded, denied, upstream_error, client_error.
    assert_eq!(series.len(), 4, "{text}");
    assert!(text.contains("outcome=\"forwarded\"} 6"), "{text}");
    assert!(text.contains("outcome=\"denied\"} 3"), "{text}");
    // Shutdown drains the workers' connections and returns.
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// An upstream that closes every connection after one answer (or drops idle
/// ones): each request still gets through, on a new connection when the
/// kept one has gone.
#[tokio::test]
async fn upstream_closing_its_connections_is_reopened() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = up.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // No `Connection: close`: the gateway learns only from the
                // socket closing.
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n{TRUSTING}\n[[gateway.http]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up_addr}\"\nprotocol = \"matrix\"\nworkers = 1\n",
        state.path().display()
    );
    let config = sluice_config::parse(&text, "test.toml").unwrap();
    let app = sluice_server::App::new(config).unwrap();
    let gw = sluice_http_gateway::start(&app).await.unwrap()[0];
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    for i in 0..5 {
        let resp = client
            .get(
                format!("http://{gw}/_matrix/client/v3/capabilities")
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        use http_body_util::BodyExt as _;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}");
        // Let the upstream's close reach the gateway for some requests,
        // not for others (those find the kept connection closed or closing).
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

/// Reads what the gateway sends on `s` until it closes the connection.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    out
}

/// Splits `raw` into answers, one per method in `methods` (a `HEAD`'s has
/// no body whatever its length says): each answer's head and body.
fn answers(mut raw: &[u8], methods: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in methods {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head for {m} in {:?}", String::from_utf8_lossy(raw)))
            + 4;
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        raw = &raw[end..];
        let mut body = Vec::new();
        if *m != "HEAD" {
            if let Some(n) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|n| n.trim().parse::<usize>().unwrap())
            {
                body = raw[..n].to_vec();
                raw = &raw[n..];
            } else {
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                loop {
                    let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
                    let n = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
                    raw = &raw[eol + 2..];
                    body.extend_from_slice(&raw[..n]);
                    raw = &raw[n + 2..];
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        out.push((head, body));
    }
    assert!(raw.is_empty(), "left over: {:?}", String::from_utf8_lossy(raw));
    out
}

/// Requests sent back to back on one connection: the lean path answers
/// the GET and the HEAD, the POST hands the connection (with the bytes
/// already read) to hyper, which answers it and the rest.
#[tokio::test]
async fn pipelined_requests_and_the_hand_over_to_hyper() {
    use tokio::io::AsyncWriteExt as _;
    let h = start("matrix", TRUSTING, "").await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /_matrix/media/v3/download/s/m?size=25&chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /_matrix/client/v3/rooms/r/send/m/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}\
          GET /_matrix/client/v3/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let raw = read_to_close(&mut s).await;
    let got = answers(&raw, &["GET", "HEAD", "GET", "POST", "GET"]);
    for (head, _) in &got {
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(head.contains("\r\nratelimit: "), "{head}");
    }
    let get: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(get["method"], "GET");
    // The HEAD's answer keeps the length of the body it would have had
    // (the upstream echoes the method: one byte longer), and has none.
    assert!(
        got[1]
            .0
            .contains(&format!("content-length: {}\r\n", got[0].1.len() + 1)),
        "{}",
        got[1].0
    );
    // A body of unknown length reaches the client chunked, whole.
    assert_eq!(got[2].1, vec![b'x'; 20]);
    let post: serde_json::Value = serde_json::from_slice(&got[3].1).unwrap();
    assert_eq!(
        (post["method"].as_str(), post["len"].as_u64()),
        (Some("POST"), Some(2))
    );
    assert!(got[4].0.contains("connection: close"), "{}", got[4].0);
    assert_eq!(h.seen.requests.load(Ordering::SeqCst), 5);
}

/// What the lean path does not take is answered as hyper always did: a
/// malformed head 400, HTTP/1.0, a head larger than the lean path's limit
/// read in many pieces.
#[tokio::test]
async fn heads_the_lean_path_leaves_are_answered_by_hyper() {
    use tokio::io::AsyncWriteExt as _;
    let h = start("matrix", TRUSTING, "").await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut s).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /_matrix/client/v3/capabilities HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut s).await;
    assert!(
        raw.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let big = "y".repeat(100 * 1024);
    let head = format!("GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    for piece in head.as_bytes().chunks(7000) {
        s.write_all(piece).await.unwrap();
    }
    let raw = read_to_close(&mut s).await;
    let got = answers(&raw, &["GET"]);
    assert!(got[0].0.starts_with("http/1.1 200"), "{}", got[0].0);
}

/// The upstream's own fields reach the client once each, with the
/// gateway's `RateLimit` fields, whichever side serves the client: the
/// lean one (which passes the usual answer's lines on as written) or
/// hyper's (here for HTTP/1.0), and on a HEAD too.
#[tokio::test]
async fn upstream_fields_reach_the_client_the_same_on_both_sides() {
    use tokio::io::AsyncWriteExt as _;
    let h = start("matrix", TRUSTING, "").await;
    let path = "/_matrix/client/v3/fields";
    let mut heads = Vec::new();
    for (version, method) in [("HTTP/1.1", "GET"), ("HTTP/1.0", "GET"), ("HTTP/1.1", "HEAD")] {
        let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        s.write_all(format!("{method} {path} {version}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let raw = read_to_close(&mut s).await;
        let got = answers(&raw, &[method]);
        let (head, body) = &got[0];
        if method == "GET" {
            assert_eq!(body, b"{}", "{head}");
        }
        // Field lines, less what each side writes its own way.
        let mut fields: Vec<String> = head
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty() && !l.starts_with("date:") && !l.starts_with("connection:"))
            .map(|l| {
                // The remaining count moves with each request.
                l.split(";r=").next().unwrap().to_owned()
            })
            .collect();
        fields.sort();
        assert!(
            head.starts_with(&format!("{} 200", version.to_lowercase())),
            "{head}"
        );
        assert_eq!(head.matches("\r\ndate: ").count(), 1, "{head}");
        heads.push(fields);
    }
    let want = [
        "cache-control: no-store",
        "content-length: 2",
        "ratelimit-policy: \"client.target.request.anonymous_ip\";q=100;w=60",
        "ratelimit: \"client.target.request.anonymous_ip\"",
        "set-cookie: a=1",
        "set-cookie: b=2",
        "x-upstream: yes",
    ];
    for fields in &heads {
        assert_eq!(fields, &want, "{heads:?}");
    }

    // An upstream's own `RateLimit` is replaced by the gateway's; its
    // `Retry-After` (nothing was denied here) goes on.
    let r = h.get(&format!("{path}?own=1"), &[]).await;
    let all: Vec<&str> = r
        .headers
        .get_all("ratelimit")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].starts_with("\"client.target.request.anonymous_ip\";r="),
        "{all:?}"
    );
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-upstream"), Some("yes"));
}

/// At shutdown an idle kept-alive connection is closed at once, on the
/// lean path and after the hand-over to hyper alike (the drain would
/// otherwise wait for the clients to leave).
#[tokio::test]
async fn shutdown_closes_idle_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = start("matrix", TRUSTING, "").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_server::serve(listener, h.app.clone(), async move {
        let _ = stopped.await;
    }));
    let mut lean = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut handed = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    lean.write_all(b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    handed
        .write_all(
            b"POST /_matrix/client/v3/rooms/r/send/m/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    for s in [&mut lean, &mut handed] {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shutdown waited for idle connections")
        .unwrap()
        .unwrap();
    for s in [&mut lean, &mut handed] {
        let rest = read_to_close(s).await;
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
}

/// A client that closes its connection while its long poll is held drops
/// the request: its long-poll slot is free for the reconnecting client.
#[tokio::test]
async fn a_client_that_leaves_frees_its_long_poll() {
    use tokio::io::AsyncWriteExt as _;
    let h = start("matrix", TRUSTING, "long_polls_per_account = 1\n").await;
    let h = std::sync::Arc::new(h);
    assert_eq!(
        h.get("/_matrix/client/v3/capabilities", &[ALICE]).await.status,
        200
    );
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET /_matrix/client/v3/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good-alice\r\n\r\n",
    )
    .await
    .unwrap();
    h.wait_held(1).await;
    drop(s);
    // The gateway drops the request (its slot with it) and so its upstream
    // exchange: the upstream sees its held request abandoned.
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.seen.abandoned.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the request of a closed connection was never dropped");
    let h2 = h.clone();
    let mut again = tokio::spawn(async move { h2.get("/_matrix/client/v3/sync", &[ALICE]).await.status });
    tokio::select! {
        () = h.wait_held(2) => {}
        status = &mut again => panic!("the reconnecting client's sync was answered {status:?}, not held"),
    }
    h.seen.release.add_permits(1);
    assert_eq!(again.await.unwrap(), 200);
}

/// The Redis the test script started, or `None` (the test is skipped, and
/// fails under `scripts/test`, which sets `SLUICE_TEST_STRICT`).
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

/// On a shared Redis the gateway decides as on memory — rates and the
/// per-account cap on requests in flight — with each round trip awaited
/// on the worker instead of holding its thread.
/// A request's slot is given back after its answer without the worker
/// waiting for Redis to confirm.
#[tokio::test]
async fn decisions_on_redis_are_the_same() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("gwtest{}x{}:", std::process::id(), line!());
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n");
    let h = std::sync::Arc::new(start("matrix", &format!("{TRUSTING}{TIGHT}{store}"), "").await);

    // A rate, through the Redis script.
    second_is_limited(
        &h,
        "PUT",
        "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t1",
        &[ALICE, ("x-forwarded-for", "198.51.100.7")],
        "client.target.send_event.user",
    )
    .await;

    // The preset's four requests in flight per account, held in Redis.
    let bob = ("authorization", "Bearer good-bob");
    let mut held = Vec::new();
    for i in 0..4 {
        let h = h.clone();
        held.push(tokio::spawn(async move {
            h.get(
                &format!("/_matrix/client/v3/x{i}/hold"),
                &[("authorization", "Bearer good-bob")],
            )
            .await
            .status
        }));
    }
    h.wait_held(4).await;
    let r = h.get("/_matrix/client/v3/capabilities", &[bob]).await;
    assert_eq!(r.status, 429, "{:?}", r.json());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("client.concurrent.request.user"));
    h.seen.release.add_permits(4);
    for t in held {
        assert_eq!(t.await.unwrap(), 200);
    }
    // The slots come back once the detached releases reach Redis: a few
    // round trips at most.
    let mut tries = 0;
    while h.get("/_matrix/client/v3/capabilities", &[bob]).await.status != 200 {
        tries += 1;
        assert!(tries < 200, "the held slots were never released");
        tokio::task::yield_now().await;
    }

    // Bodies of unknown length, charged frame by frame through Redis
    // (each charge awaited inside the body).
    let prefix = format!("gwtest{}x{}:", std::process::id(), line!());
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n");
    let h = start("matrix", &format!("{TRUSTING}{BYTE_LIMITS}{store}"), "").await;
    metered_as_they_flow(&h).await;
}

/// A Redis that cannot be reached answers `store.on_error`, for every
/// step of a request, and bans nobody: under `allow` a login goes through
/// (its checks without consuming included); under `deny` everything is
/// refused as `store.unavailable`, and thirty login attempts from one
/// address are no automatic ban.
#[tokio::test]
async fn a_redis_outage_answers_on_error_and_bans_nobody() {
    // Nothing listens on port 1: every call fails at once.
    let store = |on_error: &str| {
        format!("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\non_error = \"{on_error}\"\ncommand_timeout = \"200ms\"\nconnect_timeout = \"200ms\"\n")
    };
    let hd = [("x-forwarded-for", "203.0.113.67")];

    let h = start("matrix", &format!("{TRUSTING}{}", store("allow")), "").await;
    let r = h
        .send(
            "POST",
            "/_matrix/client/v3/login",
            &hd,
            "{\"password\":\"right\"}",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(h.get("/_matrix/client/v3/capabilities", &hd).await.status, 200);

    let h = start("matrix", &format!("{TRUSTING}{}", store("deny")), "").await;
    let r = h.get("/_matrix/client/v3/capabilities", &hd).await;
    assert_eq!(r.status, 429);
    assert!(
        r.json()["error"].as_str().unwrap().contains("store.unavailable"),
        "{:?}",
        r.json()
    );
    for _ in 0..30 {
        let r = h
            .send(
                "POST",
                "/_matrix/client/v3/login",
                &hd,
                "{\"password\":\"wrong\"}",
            )
            .await;
        assert_eq!(r.status, 429);
    }
    assert!(
        h.app.engine().bans().list(h.app.now()).is_empty(),
        "an outage banned a client"
    );
    assert_eq!(h.seen.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}
