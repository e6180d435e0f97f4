//! A real server on a free loopback port, with a fake clock, for tests.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_core::FakeClock;
use sluice_server::App;

pub struct Server {
    pub addr: SocketAddr,
    pub app: App,
    pub clock: FakeClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), sluice_server::ServerError>>>,
}

impl Server {
    /// Starts a server for `config_text` (written to `dir/sluice.toml` so reload works).
    pub fn start(dir: &std::path::Path, config_text: &str) -> Server {
        let path = dir.join("sluice.toml");
        std::fs::write(&path, config_text).unwrap();
        let config = sluice_config::load(&path).unwrap();
        Self::start_with(config, FakeClock::new())
    }

    pub fn start_with(config: sluice_config::Config, clock: FakeClock) -> Server {
        let app = App::with_clock(config, Arc::new(clock.clone())).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let served = app.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).unwrap();
                sluice_server::serve(listener, served, async move {
                    let _ = rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Server {
            addr,
            app,
            clock,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build()
    }

    /// POST JSON; returns (status, headers-of-interest, body).
    pub fn post(&self, path: &str, body: &str) -> (u16, Response) {
        let r = Self::agent()
            .post(&self.url(path))
            .set("content-type", "application/json")
            .send_string(body);
        Response::from(r)
    }

    pub fn get(&self, path: &str) -> (u16, Response) {
        Response::from(Self::agent().get(&self.url(path)).call())
    }

    pub fn delete(&self, path: &str) -> (u16, Response) {
        Response::from(Self::agent().delete(&self.url(path)).call())
    }

    pub fn check(&self, body: &str) -> Value {
        let (status, r) = self.post("/v1/check", body);
        assert_eq!(status, 200, "{}", r.text);
        r.json()
    }

    /// Stops the server gracefully and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shutdown();
        }
    }
}

pub struct Response {
    pub text: String,
    pub retry_after: Option<String>,
    pub ratelimit: Option<String>,
    pub ratelimit_policy: Option<String>,
}

impl Response {
    fn from(r: Result<ureq::Response, ureq::Error>) -> (u16, Response) {
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let h = |n: &str| resp.header(n).map(str::to_owned);
        let out = Response {
            retry_after: h("retry-after"),
            ratelimit: h("ratelimit"),
            ratelimit_policy: h("ratelimit-policy"),
            text: String::new(),
        };
        let text = resp.into_string().unwrap();
        (status, Response { text, ..out })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}
