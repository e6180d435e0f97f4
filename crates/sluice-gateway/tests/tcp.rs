//! The TCP gateway over real loopback sockets: limits in order, PROXY
//! protocol in and out, timeouts, bandwidth, drain.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sluice_core::Target;
use sluice_gateway::crc32c::Crc32c;
use sluice_gateway::proxy_protocol::{self, Addresses, Version};
use sluice_gateway::{Close, Direction, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TRUST_2: &str = "[network]\ntrusted_proxies = [\"127.0.0.2/32\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_and_listener_cap_apply_independently() {
    let up = Upstream::echo(false).await;
    let gw = start(
        up.addr,
        "max_connections = 3",
        "[concurrency.client.target]\nconnection = 2\n",
    )
    .await;
    let mut a1 = connect_from("127.0.0.2", gw.addr).await;
    let mut a2 = connect_from("127.0.0.2", gw.addr).await;
    assert!(echoes(&mut a1).await && echoes(&mut a2).await);
    // The third from the same address: over its cap, while the listener has room.
    let mut a3 = connect_from("127.0.0.2", gw.addr).await;
    assert!(read_to_close(&mut a3).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::IpConnections), 1);
    // Another address fills the listener to its cap of 3 …
    let mut b1 = connect_from("127.0.0.3", gw.addr).await;
    assert!(echoes(&mut b1).await);
    // … after which a fresh address is refused by the listener's cap.
    let mut c1 = connect_from("127.0.0.4", gw.addr).await;
    assert!(read_to_close(&mut c1).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::ListenerFull), 1);
    assert_eq!(gw.metrics.open(), 3);
    // Closing one frees a place for anyone.
    drop(a1);
    assert!(eventually(|| gw.metrics.open() == 2).await);
    let mut c2 = connect_from("127.0.0.4", gw.addr).await;
    assert!(echoes(&mut c2).await);
    // The full listener consumed nothing of 127.0.0.4's budgets, and the
    // upstream never saw a refused connection.
    assert_eq!(up.seen().len(), 4);
    assert_eq!(gw.metrics.accepted(), 4);
}

/// A full lease table is not a store outage to ride through: admitting
/// would skip every connection limit, so the connection is refused even
/// with the default `on_error = "allow"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lease_table_refuses_connections() {
    let up = Upstream::echo(false).await;
    let gw = start(
        up.addr,
        "",
        "[store]\nmax_keys = 1024\n\n[concurrency.client.target]\nconnection = 2\n",
    )
    .await;
    // Every lease the store can hold, taken by other addresses.
    let mut held = Vec::new();
    for i in 0..1024u32 {
        let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
        let g = gw
            .app
            .engine()
            .acquire_guard(&sluice_core::Request::client("connection").ip(ip))
            .expect("the store answers")
            .unwrap_or_else(|d| panic!("lease {i} refused: {:?}", d.reason));
        held.push(g);
    }
    let mut c = connect_from("127.0.0.2", gw.addr).await;
    // Bounded: an admitted connection would stay open (the upstream echoes).
    let closed = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut c)).await;
    assert!(
        closed.is_ok_and(|b| b.is_empty()),
        "admitted past every connection limit"
    );
    assert_eq!(gw.metrics.refused(Refusal::StoreError), 1);
    assert!(up.seen().is_empty());
    // A lease given back makes room.
    held.pop();
    let mut d = connect_from("127.0.0.2", gw.addr).await;
    assert!(echoes(&mut d).await);
}

#[tokio::test(start_paused = true)]
async fn new_connections_per_ip_and_global_per_period() {
    let up = Upstream::echo(false).await;
    let gw = start(
        up.addr,
        "",
        "[limits.client.target]\nconnection = \"2/1h\"\n[limits.client.global]\nconnection = \"3/1h\"\n",
    )
    .await;
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.2", gw.addr).await;
        assert!(echoes(&mut s).await);
    }
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::IpRate), 1);
    // Another address still has its own budget, until the global one runs out.
    let mut s = connect_from("127.0.0.3", gw.addr).await;
    assert!(echoes(&mut s).await);
    let mut s = connect_from("127.0.0.4", gw.addr).await;
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::GlobalRate), 1);
    // Half an hour refills one per-IP connection and 1.5 global ones.
    tokio::time::advance(Duration::from_secs(1800)).await;
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    assert!(echoes(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_and_blocklist_refuse_first_with_an_optional_stream_error() {
    let up = Upstream::echo(false).await;
    let gw = start(
        up.addr,
        "stream_error = \"Too many connections <from> you\"",
        "[blocklist]\nnetworks = [\"127.0.0.6/32\"]\n[concurrency.client.target]\nconnection = 1\n",
    )
    .await;
    gw.app
        .engine()
        .ban(Target::Ip("127.0.0.5/32".parse().expect("net")), None, "test");
    let mut banned = connect_from("127.0.0.5", gw.addr).await;
    let text = String::from_utf8(read_to_close(&mut banned).await).expect("utf-8");
    assert!(
        text.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client'"),
        "{text}"
    );
    assert!(text.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));
    assert!(text.contains("Too many connections &lt;from&gt; you"));
    assert!(text.ends_with("</stream:stream>"));
    let mut blocked = connect_from("127.0.0.6", gw.addr).await;
    assert!(!read_to_close(&mut blocked).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::Banned), 1);
    assert_eq!(gw.metrics.refused(Refusal::Blocked), 1);
    assert!(up.seen().is_empty());
    let mut out = String::new();
    gw.gateways_registry.render(&mut out);
    assert!(
        out.contains("sluice_gateway_tcp_refused_total{listener=\"127.0.0.1:0\",reason=\"banned\"} 1"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_a_trusted_peer_is_believed_and_passed_on() {
    let up = Upstream::echo(true).await;
    let gw = start(up.addr, "accept_proxy = true\nsend_proxy = \"v2\"", TRUST_2).await;
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    let mut hello = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 5222\r\n".to_vec();
    hello.extend_from_slice(b"ping\n");
    s.write_all(&hello).await.expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping\n");
    let seen = up.seen();
    let h = seen[0].header.as_ref().expect("header");
    assert_eq!(h.version, Version::V2);
    assert_eq!(
        h.addresses,
        Addresses::Tcp {
            source: "203.0.113.7:40000".parse().expect("addr"),
            destination: "192.0.2.1:5222".parse().expect("addr"),
        }
    );
    // The limits counted the real client, not the proxy.
    let state = gw
        .app
        .engine()
        .inspect(&Target::Ip("203.0.113.7/32".parse().expect("net")))
        .expect("inspect");
    assert!(state
        .iter()
        .any(|l| l.name == "client.concurrent.connection.ip" && l.remaining + 1 == l.limit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_untrusted_peers_and_malformed_ones_are_refused() {
    let up = Upstream::echo(true).await;
    let gw = start(up.addr, "accept_proxy = true\nsend_proxy = \"v1\"", TRUST_2).await;
    let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 5222\r\n";
    let mut s = connect_from("127.0.0.3", gw.addr).await;
    let _ = s.write_all(header).await;
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::UntrustedProxy), 1);
    for bad in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",
        b"PROXY TCP4 203.0.113.777 192.0.2.1 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c000000000000",
        b"PROXY TCP4 203.0.113.7",
    ] {
        let mut s = connect_from("127.0.0.2", gw.addr).await;
        let _ = s.write_all(bad).await;
        // The truncated one ends with our half-close: never a guess.
        let _ = s.shutdown().await;
        assert!(read_to_close(&mut s).await.is_empty());
    }
    assert_eq!(gw.metrics.refused(Refusal::ProxyHeaderInvalid), 5);
    assert!(up.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test(start_paused = true)]
async fn a_slow_header_is_closed_at_the_timeout() {
    let up = Upstream::echo(true).await;
    let gw = start(up.addr, "accept_proxy = true\nheader_timeout = \"3s\"", TRUST_2).await;
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    let t0 = Instant::now();
    s.write_all(b"PROXY TCP4 203.0.").await.expect("write");
    assert!(read_to_close(&mut s).await.is_empty());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
        "{took:?}"
    );
    assert_eq!(gw.metrics.refused(Refusal::ProxyHeaderTimeout), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed() {
    let up = Upstream::echo(false).await;
    let gw = start(up.addr, "idle_timeout = \"20s\"", "").await;
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    assert!(echoes(&mut s).await);
    let t0 = Instant::now();
    assert!(read_to_close(&mut s).await.is_empty());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(20) && took < Duration::from_secs(21),
        "{took:?}"
    );
    drop(s);
    // The close is recorded once the connection task has returned.
    for _ in 0..100 {
        if gw.metrics.closed_as(Close::Idle) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(gw.metrics.closed_as(Close::Idle), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_closes_cleanly_and_counts() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let gw = start(dead, "", "").await;
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::UpstreamUnreachable), 1);
    // The connection slot was given back.
    let state = gw
        .app
        .engine()
        .inspect(&Target::Ip("127.0.0.2/32".parse().expect("net")))
        .expect("inspect");
    assert!(state
        .iter()
        .any(|l| l.name == "client.concurrent.connection.ip" && l.remaining == l.limit));
}

/// Sends `total` pseudo-random bytes through one connection and returns
/// (virtual seconds taken, sent checksum, received checksum, bytes received).
async fn push_through(gw: SocketAddr, from: &str, total: usize, seed: u8) -> (Duration, u32, u32, usize) {
    let mut s = connect_from(from, gw).await;
    let data: Vec<u8> = (0..total)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut sent = Crc32c::new();
    sent.update(&data);
    let (mut r, mut w) = s.split();
    let t0 = Instant::now();
    let writer = async {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let reader = async {
        let mut got = Crc32c::new();
        let mut n = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    got.update(&buf[..k]);
                    n += k;
                }
            }
        }
        (got.finish(), n)
    };
    let ((), (got, n)) = tokio::join!(writer, reader);
    (t0.elapsed(), sent.finish(), got, n)
}

#[tokio::test(start_paused = true)]
async fn bandwidth_per_connection_is_held_within_ten_percent_without_loss() {
    let up = Upstream::echo(false).await;
    let gw = start(
        up.addr,
        "throttle = \"in\"\nidle_timeout = \"off\"",
        "[bandwidth.client]\nper_connection = \"64KiB/1s\"\nper_ip = \"off\"\n",
    )
    .await;
    let total = 640 * 1024;
    let (took, sent, got, n) = push_through(gw.addr, "127.0.0.2", total, 7).await;
    assert_eq!((n, got), (total, sent), "every byte crossed, in order");
    // A full bucket of 64 KiB passes at once, then 64 KiB/s: 9 s for 640 KiB.
    let expected = 9.0;
    let secs = took.as_secs_f64();
    assert!(
        (secs - expected).abs() <= expected * 0.1,
        "took {secs:.2}s, expected ~{expected}s"
    );
    assert!(gw.metrics.throttled(Direction::In) >= Duration::from_secs(8));
    assert_eq!(gw.metrics.throttled(Direction::Out), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn bandwidth_per_ip_is_shared_by_an_address_connections_both_ways() {
    let up = Upstream::echo(false).await;
    let gw = start(
        up.addr,
        "throttle = \"out\"\nidle_timeout = \"off\"",
        "[bandwidth.client]\nper_connection = \"off\"\nper_ip = \"32KiB/1s\"\n",
    )
    .await;
    let total = 160 * 1024;
    // Two connections of one address, and one of another, at once: the
    // first address's two share 32 KiB/s; the other has its own.
    let (a, b, c) = tokio::join!(
        push_through(gw.addr, "127.0.0.2", total, 1),
        push_through(gw.addr, "127.0.0.2", total, 2),
        push_through(gw.addr, "127.0.0.3", total, 3),
    );
    for (_, sent, got, n) in [a, b, c] {
        assert_eq!((n, got), (total, sent));
    }
    // 320 KiB at 32 KiB/s after a 32 KiB burst: 9 s for the pair …
    let pair = a.0.max(b.0).as_secs_f64();
    assert!((pair - 9.0).abs() <= 0.9, "pair took {pair:.2}s");
    // … and 4 s for the address alone.
    let alone = c.0.as_secs_f64();
    assert!((alone - 4.0).abs() <= 0.4, "alone took {alone:.2}s");
    assert_eq!(gw.metrics.throttled(Direction::In), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_accepting_and_drains_then_closes() {
    let up = Upstream::echo(false).await;
    let (config, _state) = common::config(up.addr, "drain_timeout = \"5s\"\nidle_timeout = \"off\"", "");
    let app = sluice_server::App::with_clock(config, std::sync::Arc::new(sluice_gateway::TokioClock::new()))
        .expect("app");
    let addrs = sluice_gateway::start(&app).await.expect("start");
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind api");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_server::serve(api, app, async move {
        let _ = stop_rx.await;
    }));
    let mut open = connect_from("127.0.0.2", addrs[0]).await;
    assert!(echoes(&mut open).await);
    let t0 = Instant::now();
    stop_tx.send(()).expect("signal");
    // Still served while draining.
    assert!(echoes(&mut open).await);
    // Closed when the drain time is over, and the service exits then.
    assert!(read_to_close(&mut open).await.is_empty());
    server.await.expect("join").expect("serve");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // No longer accepting.
    let refused = tokio::net::TcpStream::connect(addrs[0]).await;
    assert!(refused.is_err());
}

#[test]
fn header_written_for_upstream_parses_back() {
    let mut w = Vec::new();
    proxy_protocol::write_v1(
        &mut w,
        "127.0.0.2:1".parse().expect("a"),
        "127.0.0.1:2".parse().expect("a"),
    );
    assert_eq!(w, b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2\r\n");
}
