//! Regression tests of the route audit (issue 13): ways around the Matrix
//! gateway's limits found by sending each limited request twice from one
//! address under every spelling Synapse serves. Each test is named after
//! its finding; tests/synapse_routes.rs checks the whole table against the
//! real Synapse.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{start, Harness, TRUSTING};

const TIGHT: &str = r#"
[limits.client.target]
login = "1/1h"
send_event = "1/1h"
join = "1/1h"
invite = "2/1h"
knock = "1/1h"
[limits.federation.target]
transaction = "1/1h"
"#;

/// Sends `method path` twice as a fresh user from a fresh address: the
/// first passes, the second is refused by `limit`.
async fn twice(h: &Harness, n: usize, method: &str, path: &str, body: &str, limit: &str) {
    let token = format!("Bearer good-e{n}");
    let ip = format!("198.51.100.{n}");
    let headers = [
        ("authorization", token.as_str()),
        ("x-forwarded-for", ip.as_str()),
    ];
    let first = h.send(method, path, &headers, body).await;
    assert_eq!(first.status, 200, "{method} {path}: {:?}", first.json());
    let second = h.send(method, path, &headers, body).await;
    assert_eq!(
        second.status,
        429,
        "{method} {path} not limited: {:?}",
        second.json()
    );
    let j = second.json();
    assert_eq!(j["errcode"], "M_LIMIT_EXCEEDED");
    assert!(
        j["error"].as_str().unwrap().contains(limit),
        "{method} {path}: {j}"
    );
    assert!(j["retry_after_ms"].as_u64().unwrap() > 0);
}

/// Finding 1: the `api/v1` prefix.
#[tokio::test]
async fn api_v1_prefix_is_limited_like_v3() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    let cases = [
        (
            "PUT",
            "/_matrix/client/api/v1/rooms/!r:x/send/m.room.message/t1",
            "send_event",
        ),
        (
            "PUT",
            "/_matrix/client/api/v1/rooms/!r:x/state/m.room.topic",
            "send_event",
        ),
        ("POST", "/_matrix/client/api/v1/join/!r:x", "join"),
        ("POST", "/_matrix/client/api/v1/rooms/!r:x/join", "join"),
    ];
    for (n, (method, path, limit)) in cases.into_iter().enumerate() {
        twice(&h, n, method, path, "{}", limit).await;
    }
}

/// Finding 2: the transaction-id forms of join and invite (an empty txnId
/// too).
#[tokio::test]
async fn txn_id_forms_of_join_and_invite_are_limited() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    let cases = [
        ("/_matrix/client/v3/join/!r:x/t1", "join"),
        ("/_matrix/client/v3/rooms/!r:x/join/", "join"),
        ("/_matrix/client/r0/rooms/!r:x/join/t1", "join"),
    ];
    for (n, (path, limit)) in cases.into_iter().enumerate() {
        twice(&h, n, "PUT", path, "{}", limit).await;
    }
    // Invites: two an hour.
    let headers = [
        ("authorization", "Bearer good-inviter"),
        ("x-forwarded-for", "198.51.100.90"),
    ];
    for path in [
        "/_matrix/client/v3/rooms/!r:x/invite/t1",
        "/_matrix/client/v3/rooms/!r:x/invite/",
    ] {
        assert_eq!(h.send("PUT", path, &headers, "{}").await.status, 200, "{path}");
    }
    let third = h
        .send("PUT", "/_matrix/client/v3/rooms/!r:x/invite/t3", &headers, "{}")
        .await;
    assert_eq!(third.status, 429);
}

/// Finding 3a: a redaction creates an event each time.
#[tokio::test]
async fn redactions_are_events() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    twice(
        &h,
        1,
        "PUT",
        "/_matrix/client/v3/rooms/!r:x/redact/$e/t1",
        "{}",
        "send_event",
    )
    .await;
}

/// Finding 3b: `createRoom` with an `invite` list sends invites; each is
/// charged as one, and a room refused for its invites costs nothing.
#[tokio::test]
async fn create_room_invites_are_invites() {
    let h = start(
        "matrix",
        &format!("{TRUSTING}[limits.client.target]\nsend_event = \"10/1h\"\ninvite = \"2/1h\"\n"),
        "",
    )
    .await;
    let headers = [
        ("authorization", "Bearer good-creator"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let path = "/_matrix/client/v3/createRoom";
    let three = r#"{"invite":["@a:x","@b:x"],"invite_3pid":[{"medium":"email","address":"c@x"}]}"#;
    // More invites than the bucket ever holds: refused as too large.
    let r = h.send("POST", path, &headers, three).await;
    assert_eq!(r.status, 413, "{:?}", r.json());
    assert!(
        r.json()["error"].as_str().unwrap().contains("invite"),
        "{:?}",
        r.json()
    );
    let before = h.seen.requests.load(std::sync::atomic::Ordering::SeqCst);
    // The refused room charged nothing: two invites still pass, in the txn
    // form too, and the body reaches the upstream as sent.
    let two = r#"{"invite":["@a:x","@b:x"],"name":"n"}"#;
    let r = h
        .send("PUT", "/_matrix/client/v3/createRoom/t1", &headers, two)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        h.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    let r = h.send("POST", path, &headers, r#"{"invite":["@c:x"]}"#).await;
    assert_eq!(r.status, 429, "{:?}", r.json());
    // A room without invites is not an invite.
    assert_eq!(h.send("POST", path, &headers, "{}").await.status, 200);
    // A body sluice cannot read is the client's 400, not uncounted.
    let r = h
        .send("POST", path, &headers, r#"{"invite":["@d:x"],"x":NaN}"#)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errcode"], "M_NOT_JSON");
    // Padding does not hide invites: past the bound it is refused.
    let padded = format!(
        "{{\"invite\":[\"@e:x\"],\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let r = h.send("POST", path, &headers, &padded).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
}

/// Failing closed: spellings Synapse itself does not serve, but an
/// intermediary that normalises, or a server with another router, could.
#[tokio::test]
async fn normalised_and_unknown_prefix_spellings_are_limited() {
    let h = start("matrix", &format!("{TRUSTING}{TIGHT}"), "").await;
    let cases = [
        (
            "PUT",
            "/_matrix/client/v3//rooms/!r:x/send/m.room.message/t1",
            "send_event",
        ),
        ("POST", "/_matrix/client/v3/%6Aoin/!r:x", "join"),
        (
            "POST",
            "/_matrix/client/unstable/org.example.msc0000/knock/!r:x",
            "knock",
        ),
    ];
    for (n, (method, path, limit)) in cases.into_iter().enumerate() {
        twice(&h, n + 10, method, path, "{}", limit).await;
    }
    // Federation `send/{txnId}/?$`: the trailing slash Synapse serves.
    let xm = [(
        "authorization",
        "X-Matrix origin=\"evil.example\",destination=\"us\",key=\"ed25519:a\",sig=\"s\"",
    )];
    // The first request counts as the sending address and, answered 200,
    // confirms the origin; the origin's own bucket then holds one.
    for path in [
        "/_matrix/federation/v1/send/t1/",
        "/_matrix/federation/v1/send/t2/",
    ] {
        assert_eq!(h.send("PUT", path, &xm, "{}").await.status, 200, "{path}");
    }
    let second = h.send("PUT", "/_matrix/federation/v1/send//", &xm, "{}").await;
    assert_eq!(second.status, 429, "{:?}", second.json());
}
