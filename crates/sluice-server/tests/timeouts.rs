//! The decision API's accept loop: a request head must arrive within
//! `HEADER_READ_TIMEOUT`, and an idle kept-alive connection is closed
//! after it too. Time is tokio's paused clock: nothing sleeps.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

async fn start() -> (std::net::SocketAddr, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    let config = sluice_config::parse(&text, "t.toml").unwrap();
    let app = sluice_server::App::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sluice_server::serve(listener, app, std::future::pending()));
    (addr, state)
}

/// Reads until the server closes; what it sent.
async fn until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(300), s.read_to_end(&mut out))
        .await
        .expect("the server kept the connection open")
        .unwrap_or_default();
    out
}

#[tokio::test(start_paused = true)]
async fn a_trickled_head_and_an_idle_connection_are_closed_on_time() {
    let (addr, _state) = start().await;

    // Half a head, then nothing more.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    until_closed(&mut s).await;
    let waited = start.elapsed();
    assert!(
        waited >= sluice_server::HEADER_READ_TIMEOUT && waited < 2 * sluice_server::HEADER_READ_TIMEOUT,
        "closed after {waited:?}"
    );

    // A whole request is answered; the connection, kept alive and idle
    // afterwards, is closed after the same time.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let start = Instant::now();
    until_closed(&mut s).await;
    let waited = start.elapsed();
    assert!(
        waited >= sluice_server::HEADER_READ_TIMEOUT && waited < 2 * sluice_server::HEADER_READ_TIMEOUT,
        "closed after {waited:?}"
    );
}
