//! Fetching blocklist sources from a real HTTP publisher on loopback,
//! scripted answer by answer: each answer leaves the right set in force,
//! and the refresh loop's timing (jitter, back-off, `Retry-After`,
//! staleness) runs on tokio's paused clock — hours in no time, no sleeps.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{Request, Target};
use sluice_server::refresh::Refreshed;
use sluice_server::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One scripted answer.
enum Answer {
    /// These bytes, then the connection closed.
    Full(Vec<u8>),
    /// These bytes, then nothing, the connection held open.
    Stall(Vec<u8>),
}

fn answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    Answer::Full(out)
}

/// A request as the publisher saw it: when (tokio's clock) and its head.
struct Seen {
    at: Instant,
    head: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The scripted publisher: answers from its script in order (a 500 when
/// it runs out), telling the test about each request.
struct Publisher {
    url: String,
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn start(path: &str) -> Publisher {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let (tx, seen) = mpsc::unbounded_channel();
        let s = script.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let next = s.lock().unwrap().pop_front();
                let next = next.unwrap_or_else(|| answer("500 Internal Server Error", &[], b"oops"));
                let _ = tx.send(Seen {
                    at: Instant::now(),
                    head: String::from_utf8_lossy(&head).into_owned(),
                });
                match next {
                    Answer::Full(bytes) => {
                        let _ = sock.write_all(&bytes).await;
                        let _ = sock.shutdown().await;
                    }
                    Answer::Stall(bytes) => {
                        let _ = sock.write_all(&bytes).await;
                        tokio::spawn(async move {
                            let _held = sock;
                            std::future::pending::<()>().await;
                        });
                    }
                }
            }
        });
        Publisher {
            url,
            script,
            seen,
            task,
        }
    }

    fn then(&self, a: Answer) {
        self.script.lock().unwrap().push_back(a);
    }

    async fn next(&mut self) -> Seen {
        self.seen.recv().await.unwrap()
    }

    /// Stops listening: connections are refused from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn app(dir: &std::path::Path, source: &str) -> App {
    let text = format!(
        "[server]\nstate_dir = {:?}\n\n[[blocklist.source]]\n{source}",
        dir.display().to_string()
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    App::new(sluice_config::load(&path).unwrap()).unwrap()
}

fn domains(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("d{i}.spam.example\n"))
        .collect::<String>()
        .into_bytes()
}

fn entries(app: &App, name: &str) -> Option<usize> {
    app.engine().blocklists().source(name).map(|s| s.len())
}

fn blocked(app: &App, target: Target) -> bool {
    !app.engine()
        .check(&Request::federation("transaction").server(target))
        .unwrap()
        .allowed
}

fn blocked_ip(app: &App, ip: &str) -> bool {
    !app.engine()
        .check(&Request::client("login").ip(ip.parse().unwrap()))
        .unwrap()
        .allowed
}

fn failed(r: Option<Refreshed>) -> &'static str {
    match r {
        Some(Refreshed::Failed { kind, .. }) => kind,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn every_answer_of_the_publisher_leaves_the_right_set_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Publisher::start("/blacklist.txt").await;
    let app = app(
        dir.path(),
        &format!(
            "name = \"spam\"\nurl = {:?}\nformat = \"domains\"\nmax_bytes = 65536\ntimeout = \"10s\"\n",
            p.url
        ),
    );
    let listed = || Target::server("d7.spam.example").unwrap();
    assert_eq!(entries(&app, "spam"), None);

    // 200 with an ETag: taken, cached with its validators.
    p.then(answer(
        "200 OK",
        &[
            ("ETag", "\"v1\""),
            ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ],
        &domains(100),
    ));
    assert_eq!(app.refresh_source("spam").await, Some(Refreshed::Accepted(100)));
    let first = p.next().await;
    assert_eq!(first.header("if-none-match"), None);
    assert!(first.head.starts_with("GET /blacklist.txt HTTP/1.1\r\n"));
    assert_eq!(entries(&app, "spam"), Some(100));
    assert!(blocked(&app, listed()));
    let cached = app.lists().cache_path("spam").unwrap();
    assert_eq!(std::fs::read(&cached).unwrap(), domains(100));
    let before = app.engine().blocklists().source("spam").unwrap().clone();

    // 304 to the conditional GET: the same set stays.
    p.then(answer("304 Not Modified", &[("ETag", "\"v1\"")], b""));
    assert_eq!(app.refresh_source("spam").await, Some(Refreshed::NotModified));
    let cond = p.next().await;
    assert_eq!(cond.header("if-none-match"), Some("\"v1\""));
    assert_eq!(
        cond.header("if-modified-since"),
        Some("Tue, 01 Dec 2026 10:00:00 GMT")
    );
    assert!(Arc::ptr_eq(
        &before,
        app.engine().blocklists().source("spam").unwrap()
    ));

    // Every failure and every refused body keeps the last good set.
    let mut huge = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    huge.extend(domains(5000)); // ~95 KiB, no Content-Length: read until over the cap
    let cases: Vec<(Answer, &str)> = vec![
        (answer("500 Internal Server Error", &[], b"down"), "status_5xx"),
        (
            answer("429 Too Many Requests", &[("Retry-After", "7200")], b""),
            "status_429",
        ),
        (
            answer("200 OK", &[("Content-Type", "text/html")], b"<html>portal</html>"),
            "html",
        ),
        (
            answer(
                "200 OK",
                &[],
                b"<!DOCTYPE html><html><body>maintenance</body></html>",
            ),
            "html",
        ),
        (answer("200 OK", &[], b""), "empty"),
        (answer("200 OK", &[], &vec![b'a'; 70_000]), "too_large"),
        (Answer::Full(huge), "too_large"),
        (answer("200 OK", &[], &domains(10)), "shrunk"),
        (
            Answer::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nd1.spam.example\n".to_vec()),
            "timeout",
        ),
    ];
    for (a, kind) in cases {
        p.then(a);
        let started = Instant::now();
        let r = app.refresh_source("spam").await;
        if let Some(Refreshed::Failed {
            kind: "status_429",
            retry_after,
            ..
        }) = &r
        {
            assert_eq!(*retry_after, Some(Duration::from_secs(7200)));
        }
        assert_eq!(failed(r), kind);
        let _ = p.next().await;
        assert!(
            Arc::ptr_eq(&before, app.engine().blocklists().source("spam").unwrap()),
            "{kind}"
        );
        assert!(blocked(&app, listed()), "{kind}");
        if kind == "timeout" {
            // Abandoned after the source's timeout, on the paused clock.
            assert_eq!(started.elapsed(), Duration::from_secs(10));
        }
    }
    let st = app.lists().get("spam").unwrap();
    assert!(
        st.last_error.as_deref().unwrap().contains("10s"),
        "{:?}",
        st.last_error
    );
    assert_eq!(st.fetches.get("html"), Some(&2));
    assert_eq!(st.fetches.get("too_large"), Some(&2));
    assert_eq!(st.fetches.get("ok"), Some(&1));
    assert_eq!(st.fetches.get("not_modified"), Some(&1));

    // A refused connection: the same.
    let url = p.url.clone();
    p.stop().await;
    assert_eq!(failed(app.refresh_source("spam").await), "connect");
    assert!(blocked(&app, listed()));
    assert_eq!(std::fs::read(&cached).unwrap(), domains(100));

    // A restart with the publisher down blocks from the cache, and the
    // next GET will be conditional.
    drop(app);
    let app = self::app(
        dir.path(),
        &format!(
            "name = \"spam\"\nurl = {url:?}\nformat = \"domains\"\nmax_bytes = 65536\ntimeout = \"10s\"\n"
        ),
    );
    assert_eq!(entries(&app, "spam"), Some(100));
    assert!(blocked(&app, listed()));
    let v = app.lists().get("spam").unwrap().validators.unwrap();
    assert_eq!(v.etag.as_deref(), Some("\"v1\""));
}

#[tokio::test(start_paused = true)]
async fn the_loop_jitters_backs_off_and_honours_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Publisher::start("/drop.txt").await;
    let app = app(
        dir.path(),
        &format!(
            "name = \"drop\"\nurl = {:?}\nformat = \"cidr\"\nrefresh = \"1h\"\n",
            p.url
        ),
    );
    let start = Instant::now();
    p.then(answer(
        "200 OK",
        &[("ETag", "\"a\"")],
        b"192.0.2.0/24 ; SBL1\n198.51.100.0/24\n",
    ));
    p.then(answer("500 Internal Server Error", &[], b""));
    p.then(answer("503 Service Unavailable", &[], b""));
    p.then(answer("429 Too Many Requests", &[("Retry-After", "7200")], b""));
    p.then(answer("304 Not Modified", &[], b""));
    let fetchers = tokio::spawn(app.clone().run_fetchers());
    let t0 = p.next().await.at;
    // The first fetch (nothing cached) within a few seconds of the start.
    assert!(t0 - start <= Duration::from_secs(5));
    let t1 = p.next().await.at;
    assert!(blocked_ip(&app, "192.0.2.9"));
    let within = |gap: Duration, d: Duration| gap >= d.mul_f64(0.9) && gap < d.mul_f64(1.1);
    let h = Duration::from_secs(3600);
    assert!(within(t1 - t0, h), "{:?}", t1 - t0);
    // Back-off from refresh / 32, doubling.
    let t2 = p.next().await.at;
    assert!(within(t2 - t1, h / 32), "{:?}", t2 - t1);
    let s3 = p.next().await;
    assert!(within(s3.at - t2, h / 16), "{:?}", s3.at - t2);
    // Retry-After asked two hours: not a second sooner.
    let s4 = p.next().await;
    assert!(s4.at - s3.at >= Duration::from_secs(7200), "{:?}", s4.at - s3.at);
    assert!(s4.at - s3.at < Duration::from_secs(7201));
    assert_eq!(s4.header("if-none-match"), Some("\"a\""));
    // 304: back to the refresh period.
    let t5 = p.next().await.at;
    assert!(within(t5 - s4.at, h), "{:?}", t5 - s4.at);
    let st = app.lists().get("drop").unwrap();
    assert_eq!(st.fetches.get("status_5xx"), Some(&2), "{:?}", st.fetches);
    assert_eq!(st.fetches.get("status_429"), Some(&1));
    assert!(blocked_ip(&app, "198.51.100.1"));
    fetchers.abort();
}

#[tokio::test(start_paused = true)]
async fn a_stale_ip_list_is_reported_and_dropped_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Publisher::start("/drop.txt").await;
    let app = app(
        dir.path(),
        &format!(
            "name = \"drop\"\nurl = {:?}\nformat = \"cidr\"\nrefresh = \"1h\"\nstale_after = \"2h\"\ndrop_when_stale = true\n",
            p.url
        ),
    );
    let listed = "192.0.2.9";
    let body = b"192.0.2.0/24\n";
    p.then(answer("200 OK", &[], body));
    let fetchers = tokio::spawn(app.clone().run_fetchers());
    let t0 = p.next().await.at;
    // Then 500s. Within two hours of the success the list stays in force.
    let mut at = p.next().await.at;
    assert!(blocked_ip(&app, listed));
    assert!(!app.lists().get("drop").unwrap().stale());
    while at - t0 <= Duration::from_secs(2 * 3600) {
        at = p.next().await.at;
    }
    let st = app.lists().get("drop").unwrap();
    assert!(st.stale() && st.dropped, "{:?}", st.fetches);
    assert!(!blocked_ip(&app, listed));
    // The next success brings it back.
    p.then(answer("200 OK", &[], body));
    let _ = p.next().await;
    let _ = p.next().await;
    let st = app.lists().get("drop").unwrap();
    assert!(!st.stale() && !st.dropped);
    assert!(blocked_ip(&app, listed));
    fetchers.abort();
}

#[tokio::test(start_paused = true)]
async fn a_policy_room_is_fetched_with_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "syt_sekrit\n").unwrap();
    let mut p = Publisher::start("/_matrix/client/v3/rooms/!policy:example.org/state").await;
    let app = app(
        dir.path(),
        &format!(
            "name = \"policy\"\nurl = {:?}\nformat = \"matrix_policy\"\ntoken_file = {:?}\n",
            p.url,
            token.display().to_string()
        ),
    );
    let events = r#"[{"type":"m.policy.rule.server","state_key":"r1","content":{"entity":"*.evil.example","recommendation":"m.ban","reason":"spam"}}]"#;
    p.then(answer(
        "200 OK",
        &[("Content-Type", "application/json")],
        events.as_bytes(),
    ));
    assert_eq!(app.refresh_source("policy").await, Some(Refreshed::Accepted(1)));
    let seen = p.next().await;
    assert_eq!(seen.header("authorization"), Some("Bearer syt_sekrit"));
    assert!(blocked(&app, Target::server("hs.evil.example").unwrap()));
    assert!(!blocked(&app, Target::server("evil.example").unwrap()));
}

/// `sluice blocklist refresh NAME` (the admin endpoint behind it) fetches
/// now and answers once the body is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_refresh_fetches_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Publisher::start("/list.txt").await;
    for _ in 0..3 {
        p.then(answer("200 OK", &[("ETag", "\"x\"")], &domains(3)));
    }
    let text = format!(
        "[server]\nstate_dir = {:?}\n\n[[blocklist.source]]\nname = \"spam\"\nurl = {:?}\nformat = \"domains\"\n",
        dir.path().display().to_string(),
        p.url
    );
    let server = common::Server::start(dir.path(), &text);
    let (status, body) = tokio::task::spawn_blocking(move || {
        let r = server.post("/v1/admin/blocklist/refresh", r#"{"name": "spam"}"#);
        server.stop();
        r
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", body.text);
    let v = body.json();
    let s = &v["sources"][0];
    assert_eq!(s["name"], "spam");
    assert_eq!(s["entries"], 3);
    assert_eq!(s["stale"], false);
    assert!(s["fetches"]["ok"].as_u64().unwrap() >= 1, "{s}");
    assert!(p.next().await.head.starts_with("GET /list.txt "));
}
