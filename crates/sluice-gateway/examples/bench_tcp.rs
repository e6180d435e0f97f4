//! Loopback benchmark of the TCP gateway: bulk throughput and new
//! connections per second, direct vs through `sluice serve` vs through
//! HAProxy with equivalent per-IP rules. Run by `scripts/bench-tcp`.
//!
//! Usage: bench_tcp SLUICE_BIN HAPROXY_BIN [SECONDS]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

const STREAMS: usize = 4;
const CONNECTORS: usize = 8;

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sink for bulk streams (counts bytes) and 1-byte echo for handshakes.
async fn upstream(received: Arc<AtomicU64>) -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                let mut first = true;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if first && n == 1 && buf[0] == b'?' {
                                let _ = s.write_all(b"!").await;
                            }
                            first = false;
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn wait_listening(addr: SocketAddr) -> Result<(), Error> {
    for _ in 0..1000 {
        if std::fs::read_to_string("/proc/net/tcp")?.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&format!(":{:04X}", addr.port())))
                && l.split_whitespace().nth(3) == Some("0A")
        }) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("nothing listens on {addr}").into())
}

async fn bulk(to: SocketAddr, received: &AtomicU64, secs: f64) -> Result<f64, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let s = TcpSocket::new_v4()?;
            s.bind(SocketAddr::from(([127, 0, 0, 10 + i as u8], 0)))?;
            let mut s = s.connect(to).await?;
            let buf = vec![0x5au8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&buf).await?;
            }
            Ok::<(), std::io::Error>(())
        }));
    }
    // Let the streams ramp up, then measure a window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let bytes = received.load(Ordering::Relaxed) - start;
    let took = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(bytes as f64 / took / 1e6 * 8.0 / 1000.0) // Gbit/s
}

async fn connects(to: SocketAddr, secs: f64) -> Result<(f64, u64), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..CONNECTORS {
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = w;
            while Instant::now() < deadline {
                // Spread over 200 client addresses: realistic, and no
                // source-port exhaustion on one address.
                let ip = [127, 0, 1 + (k / 200 % 50) as u8, 2 + (k % 200) as u8];
                k += CONNECTORS;
                let r = async {
                    let s = TcpSocket::new_v4()?;
                    s.bind(SocketAddr::from((ip, 0)))?;
                    let mut s: TcpStream = s.connect(to).await?;
                    s.set_nodelay(true)?;
                    s.write_all(b"?").await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Ok::<(), std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(2), r).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    ))
}

/// `GET /metrics` of the sluice under test, as text.
async fn metrics(api: SocketAddr) -> Result<String, Error> {
    let mut s = TcpStream::connect(api).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(sluice), Some(haproxy)) = (args.get(1), args.get(2)) else {
        return Err("usage: bench_tcp SLUICE_BIN HAPROXY_BIN [SECONDS]".into());
    };
    let secs: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let received = Arc::new(AtomicU64::new(0));
    let up = upstream(received.clone()).await?;
    let dir = tempfile::tempdir()?;

    // Equivalent rules: at most 50 open connections per client address and
    // 1 000 000 new ones per hour (high enough never to fire, so the cost of
    // checking is measured, not the refusals); no bandwidth limit (HAProxy
    // 2.6 has none).
    let sl_port = free_port()?;
    let api_port = free_port()?;
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{api_port}\"\nstate_dir = {:?}\n\
         [limits.client.target]\nconnection = \"1000000/1h\"\n[concurrency.client.target]\nconnection = 50\n\
         [bandwidth.client]\nper_connection = \"off\"\nper_ip = \"off\"\n\
         [[gateway.tcp]]\nlisten = \"127.0.0.1:{sl_port}\"\nupstream = \"{up}\"\nside = \"client\"\nthrottle = \"off\"\nmax_connections = 100000\n",
        dir.path().display().to_string()
    );
    let cfg_path = dir.path().join("sluice.toml");
    std::fs::write(&cfg_path, cfg)?;
    let mut sl = tokio::process::Command::new(sluice)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let hp_port = free_port()?;
    let hcfg = format!(
        "global\n  maxconn 8000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 127.0.0.1:{hp_port}\n  stick-table type ip size 1m expire 1h store conn_cur,conn_rate(1h)\n\
         \x20 tcp-request connection track-sc0 src\n\
         \x20 tcp-request connection reject if {{ sc0_conn_cur gt 50 }} || {{ sc0_conn_rate gt 1000000 }}\n\
         \x20 default_backend be\nbackend be\n  server s {up}\n"
    );
    let hcfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&hcfg_path, hcfg)?;
    let mut hp = tokio::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&hcfg_path)
        .kill_on_drop(true)
        .spawn()?;
    let sl_addr = SocketAddr::from(([127, 0, 0, 1], sl_port));
    let hp_addr = SocketAddr::from(([127, 0, 0, 1], hp_port));
    wait_listening(sl_addr).await?;
    wait_listening(hp_addr).await?;

    println!(
        "| path | bulk, {STREAMS} streams (Gbit/s) | new connections/s ({CONNECTORS} connectors) | failed |"
    );
    println!("|---|---|---|---|");
    for (name, addr) in [("direct", up), ("sluice", sl_addr), ("haproxy", hp_addr)] {
        let gbps = bulk(addr, &received, secs).await?;
        let (cps, failed) = connects(addr, secs).await?;
        println!("| {name} | {gbps:.2} | {cps:.0} | {failed} |");
        if name == "sluice" {
            // Why sluice closed what it closed: its own refusal counters.
            for line in metrics(SocketAddr::from(([127, 0, 0, 1], api_port)))
                .await?
                .lines()
            {
                if line.starts_with("sluice_gateway_tcp_refused_total") && !line.ends_with(" 0") {
                    eprintln!("  {line}");
                }
            }
        }
    }
    let _ = sl.start_kill();
    let _ = hp.start_kill();
    Ok(())
}
