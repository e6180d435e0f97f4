//! HAProxy (Debian's) as the real PROXY protocol sender in front of sluice:
//! v1, v2, and v2 with a CRC32c TLV. Needs `SLUICE_TEST_HAPROXY` (set by
//! `scripts/services/haproxy.sh`).

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::*;
use sluice_gateway::proxy_protocol::Addresses;
use sluice_gateway::Refusal;

/// A running haproxy, killed when dropped.
pub struct Haproxy {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts haproxy with `config` and waits until every port in `ports` accepts.
async fn haproxy(bin: &str, config: &str, ports: &[u16]) -> Haproxy {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).expect("write config");
    let child = tokio::process::Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    for &p in ports {
        assert!(
            eventually(|| listening(p)).await,
            "haproxy did not listen on {p}:\n{config}"
        );
    }
    Haproxy {
        _child: child,
        _dir: dir,
    }
}

/// Frontends on three free ports, each to `to` with one PROXY flavour.
fn senders(to: SocketAddr) -> (String, [u16; 3]) {
    let ports = [free_port(), free_port(), free_port()];
    let mut cfg = String::from(
        "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n",
    );
    for (i, (port, send)) in ports
        .iter()
        .zip([
            "send-proxy",
            "send-proxy-v2",
            "send-proxy-v2 proxy-v2-options crc32c",
        ])
        .enumerate()
    {
        cfg.push_str(&format!(
            "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\nbackend b{i}\n  server s {to} {send}\n"
        ));
    }
    (cfg, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_v1_v2_and_crc32c_headers_name_the_real_client() {
    let Some(bin) = service("SLUICE_TEST_HAPROXY") else {
        return;
    };
    let up = Upstream::echo(true).await;
    let gw = start(
        up.addr,
        "accept_proxy = true\nsend_proxy = \"v1\"",
        "[network]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[concurrency.client.target]\nconnection = 1\n",
    )
    .await;
    let (cfg, ports) = senders(gw.addr);
    let _hap = haproxy(&bin, &cfg, &ports).await;
    let fe = |i: usize| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], ports[i])) };

    // One client per flavour, each from its own address.
    let mut held = Vec::new();
    for (i, ip) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().enumerate() {
        let mut s = connect_from(ip, fe(i)).await;
        let local = s.local_addr().expect("local");
        assert!(echoes(&mut s).await, "flavour {i}");
        let seen = up.seen();
        let h = seen.last().and_then(|s| s.header.clone()).expect("header");
        match h.addresses {
            Addresses::Tcp { source, destination } => {
                assert_eq!(
                    source, local,
                    "flavour {i}: sluice passed on the client haproxy saw"
                );
                assert_eq!(destination, fe(i), "flavour {i}: and where it connected");
            }
            other => panic!("flavour {i}: {other:?}"),
        }
        held.push(s);
    }
    // The per-IP cap of 1 counts real clients, not haproxy: a second
    // connection from 127.0.0.2 (through another flavour) is refused …
    let mut again = connect_from("127.0.0.2", fe(1)).await;
    assert!(read_to_close(&mut again).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::IpConnections), 1);
    // … while a new address still gets in.
    let mut other = connect_from("127.0.0.5", fe(2)).await;
    assert!(echoes(&mut other).await);
    assert_eq!(gw.metrics.refused(Refusal::ProxyHeaderInvalid), 0);
    assert_eq!(gw.metrics.accepted(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_as_an_untrusted_sender_is_refused() {
    let Some(bin) = service("SLUICE_TEST_HAPROXY") else {
        return;
    };
    let up = Upstream::echo(true).await;
    // haproxy connects from 127.0.0.1, which is not trusted here.
    let gw = start(
        up.addr,
        "accept_proxy = true",
        "[network]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    )
    .await;
    let (cfg, ports) = senders(gw.addr);
    let _hap = haproxy(&bin, &cfg, &ports).await;
    let mut s = connect_from("127.0.0.2", SocketAddr::from(([127, 0, 0, 1], ports[1]))).await;
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::UntrustedProxy), 1);
    assert!(up.seen().is_empty());
}
