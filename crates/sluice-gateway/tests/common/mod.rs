//! Shared helpers: a gateway on loopback, an upstream that records the PROXY
//! header it receives, and clients bound to distinct loopback addresses
//! (127.0.0.2, 127.0.0.3, … are all loopback on Linux).

#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_gateway::proxy_protocol::{self, Header, Parsed};
use sluice_gateway::{Gateways, ListenerMetrics, TokioClock};
use sluice_server::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub struct Gw {
    pub app: App,
    pub addr: SocketAddr,
    pub metrics: Arc<ListenerMetrics>,
    pub gateways_registry: Arc<sluice_gateway::Registry>,
    _state: tempfile::TempDir,
}

/// A config with one `[[gateway.tcp]]` to `upstream`; `listener` adds keys
/// to it and `rest` adds sections after it.
pub fn config(
    upstream: SocketAddr,
    listener: &str,
    rest: &str,
) -> (sluice_config::Config, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("tempdir");
    // `side = "federation"` in `listener` replaces the default client side.
    let fed = "side = \"federation\"";
    let side = if listener.contains(fed) {
        "federation"
    } else {
        "client"
    };
    let listener = listener.replace(fed, "");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\n{rest}\n\n[[gateway.tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nside = \"{side}\"\n{listener}\n",
        state.path().display().to_string()
    );
    match sluice_config::parse(&text, "test.toml") {
        Ok(c) => (c, state),
        Err(e) => panic!("{e}\n{text}"),
    }
}

/// Starts the app's gateways on tokio's clock (so paused tests hold).
pub async fn start(upstream: SocketAddr, listener: &str, rest: &str) -> Gw {
    let (config, state) = config(upstream, listener, rest);
    let tcp = config.gateway.tcp.clone();
    let app = App::with_clock(config, Arc::new(TokioClock::new())).expect("app");
    let gws = Gateways::bind(&app, &tcp).await.expect("bind");
    let addr = gws.local_addrs()[0];
    let metrics = gws.metrics()[0].clone();
    let gateways_registry = gws.registry();
    gws.spawn(&app);
    Gw {
        app,
        addr,
        metrics,
        gateways_registry,
        _state: state,
    }
}

/// Starts the gateways of a whole configuration `text` (with `[server]`
/// filled in) on tokio's clock; the first listener's address and counters.
pub async fn start_text(text: &str) -> Gw {
    let state = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\n{text}",
        state.path().display().to_string()
    );
    let config = match sluice_config::parse(&text, "test.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{text}"),
    };
    let tcp = config.gateway.tcp.clone();
    let app = App::with_clock(config, Arc::new(TokioClock::new())).expect("app");
    let gws = Gateways::bind(&app, &tcp).await.expect("bind");
    let addr = gws.local_addrs()[0];
    let metrics = gws.metrics()[0].clone();
    let gateways_registry = gws.registry();
    gws.spawn(&app);
    Gw {
        app,
        addr,
        metrics,
        gateways_registry,
        _state: state,
    }
}

/// What the upstream saw on one connection.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub header: Option<Header>,
    pub peer: Option<SocketAddr>,
}

/// An upstream that, per connection, reads a PROXY header if told to,
/// records it, then echoes everything back.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn echo(expect_proxy: bool) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, peer)) = l.accept().await {
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut header = None;
                    if expect_proxy {
                        let mut chunk = [0u8; 1024];
                        loop {
                            match proxy_protocol::parse(&buf) {
                                Ok(Parsed::Complete(h, used)) => {
                                    header = Some(h);
                                    buf.drain(..used);
                                    break;
                                }
                                Ok(Parsed::Incomplete) => {}
                                Err(_) => return,
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                    }
                    seen.lock().expect("lock").push(Seen {
                        header,
                        peer: Some(peer),
                    });
                    if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A TCP connection from `ip` (a loopback address) to `to`.
pub async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(ip.parse().expect("ip"), 0))
        .expect("bind client");
    s.connect(to).await.expect("connect")
}

/// Whether the connection echoes a line (i.e. it was admitted and proxied).
pub async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping\n"
    )
}

/// Reads until the peer closes; what was read (a reset counts as a close).
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Polls `cond` until it holds: for events in other tasks and processes (a
/// connection's teardown, a service binding its port), never for time to
/// pass. Gives up after ~5 s. Real-time tests only.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The path of a real service's binary from the environment, or `None`
/// (a skip), or a failure under `SLUICE_TEST_STRICT=1`.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("SLUICE_TEST_STRICT").as_deref() == Ok("1") => {
            panic!("{var} is not set and SLUICE_TEST_STRICT=1 (run scripts/test)")
        }
        _ => {
            eprintln!("skipped: {var} not set (scripts/services provide it)");
            None
        }
    }
}

/// Whether something listens on TCP `port` (read from /proc, so that no
/// probe connection goes through a proxy and counts against a limit).
pub fn listening(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
            })
        })
    })
}
