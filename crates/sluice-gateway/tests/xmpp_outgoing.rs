//! The outgoing relay (`direction = "outgoing"`) over real loopback
//! sockets: static routes, the `outgoing_connection` decision (caps, rates,
//! bans, blocklist), denied networks, and RFC 6120 §3.2 resolution against
//! a real DNS server (dnsmasq, started here on a free loopback port).

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sluice_core::Target;
use sluice_gateway::Refusal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn header(from: &str, to: Option<&str>) -> String {
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}'{to} version='1.0'>"
    )
}

/// An outgoing relay with `keys` on its listener and `rest` after it.
async fn relay(keys: &str, rest: &str) -> Gw {
    start_text(&format!(
        "{rest}\n\n[[gateway.tcp]]\nlisten = \"127.0.0.1:0\"\nside = \"federation\"\nprotocol = \"xmpp\"\n\
         direction = \"outgoing\"\nheader_timeout = \"2s\"\nconnect_timeout = \"2s\"\n{keys}\n"
    ))
    .await
}

/// Opens a stream to `to` through the relay; the connection if the header
/// came back through the echoing destination.
async fn open(gw: SocketAddr, to: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(gw).await.expect("connect");
    let h = header("a.example", Some(to));
    s.write_all(h.as_bytes()).await.ok()?;
    let mut back = vec![0u8; h.len()];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await {
        Ok(Ok(_)) if back == h.as_bytes() => Some(s),
        _ => None,
    }
}

/// What a refused stream to `to` is answered.
async fn refused(gw: SocketAddr, to: Option<&str>) -> String {
    let mut s = TcpStream::connect(gw).await.expect("connect");
    let _ = s.write_all(header("a.example", to).as_bytes()).await;
    let got = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut s))
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&got).into_owned()
}

fn remote_connection_failed(text: &str, saying: &str) {
    assert!(
        text.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:server'"),
        "{text}"
    );
    assert!(
        text.contains("<remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{text}"
    );
    assert!(text.contains(saying), "{text:?} lacks {saying:?}");
    assert!(text.ends_with("</stream:stream>"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_route_relays_the_header_and_the_stream() {
    let up = Upstream::echo(false).await;
    let gw = relay(&format!("routes = {{ \"b.example\" = \"{}\" }}", up.addr), "").await;
    let mut s = open(gw.addr, "B.Example").await.expect("relayed");
    // The stream goes on both ways after the header.
    s.write_all(b"<db:result from='a.example' to='b.example'>key</db:result>")
        .await
        .expect("write");
    let mut back = [0u8; 58];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(
        &back[..],
        b"<db:result from='a.example' to='b.example'>key</db:result>"
    );
    assert_eq!(gw.metrics.accepted(), 1);
    // The route named loopback: allowed, as the operator's word. The
    // upstream sees no PROXY header (the relay sends none).
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_outgoing_connections_are_capped_per_destination() {
    let up = Upstream::echo(false).await;
    let gw = relay(
        &format!(
            "routes = {{ \"b.example\" = \"{0}\", \"c.example\" = \"{0}\" }}",
            up.addr
        ),
        "[concurrency.federation.target]\noutgoing_connection = 1\n\n\
         [limits.federation.target]\noutgoing_connection = \"2/1h\"\n",
    )
    .await;
    let first = open(gw.addr, "b.example").await.expect("first relayed");
    let text = refused(gw.addr, Some("b.example")).await;
    remote_connection_failed(&text, "too many connections to b.example");
    // Our header answers as the destination would.
    assert!(text.contains("from='b.example' to='a.example'"), "{text}");
    assert_eq!(gw.metrics.refused(Refusal::DestinationConnections), 1);
    // Another destination is not held by b.example's cap.
    let other = open(gw.addr, "c.example").await.expect("c.example relayed");
    drop(other);
    drop(first);
    // Once closed, the cap has room; the rate (2 per hour) then holds.
    // (Waiting for the relay's teardown, an event in another task.)
    assert!(eventually(|| gw.metrics.open() == 0).await);
    let second = open(gw.addr, "b.example").await;
    drop(second.expect("second relayed once the first closed"));
    assert!(eventually(|| gw.metrics.open() == 0).await);
    let text = refused(gw.addr, Some("b.example")).await;
    assert!(text.contains("too many new connections to b.example"), "{text}");
    assert!(gw.metrics.refused(Refusal::DestinationRate) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocklisted_or_banned_destination_is_refused_before_connecting() {
    let up = Upstream::echo(false).await;
    let gw = relay(
        &format!(
            "routes = {{ \"spam.example\" = \"{0}\", \"bad.example\" = \"{0}\", \"ok.example\" = \"{0}\" }}",
            up.addr
        ),
        "[blocklist]\nservers = [\"spam.example\"]\n",
    )
    .await;
    remote_connection_failed(
        &refused(gw.addr, Some("spam.example")).await,
        "server spam.example is blocklisted here",
    );
    gw.app
        .engine()
        .ban(Target::server("bad.example").expect("server"), None, "test");
    remote_connection_failed(
        &refused(gw.addr, Some("bad.example")).await,
        "server bad.example is banned here",
    );
    assert_eq!(gw.metrics.refused(Refusal::DestinationBlocked), 1);
    assert_eq!(gw.metrics.refused(Refusal::DestinationBanned), 1);
    assert!(up.seen().is_empty(), "nothing reached a refused destination");
    assert!(open(gw.addr, "ok.example").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_counted_close() {
    let gw = relay("resolver = \"127.0.0.1:9\"", "").await;
    // No `to`: nowhere to go.
    remote_connection_failed(&refused(gw.addr, None).await, "no destination");
    assert_eq!(gw.metrics.refused(Refusal::NoDestination), 1);
    // Not a stream header at all.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"\x16\x03\x01\x00\x05hello").await.expect("write");
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::StreamHeaderInvalid), 1);
    // An IP literal destination into loopback: denied without DNS.
    remote_connection_failed(&refused(gw.addr, Some("127.0.0.1")).await, "denied networks");
    assert_eq!(gw.metrics.refused(Refusal::DestinationDenied), 1);
}

/// dnsmasq on a free loopback port answering for `.test` only, with
/// `records` (dnsmasq options such as `--srv-host=…`); stopped on drop.
struct Dns {
    addr: SocketAddr,
    child: tokio::process::Child,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn dnsmasq(records: &[String]) -> Option<Dns> {
    let bin = service("SLUICE_TEST_DNSMASQ")?;
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        s.local_addr().expect("addr").port()
    };
    let child = tokio::process::Command::new(bin)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            "--local=/test/",
            &format!("--port={port}"),
        ])
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq starts");
    let want = format!(":{port:04X} ");
    let up = eventually(|| std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| t.contains(&want))).await;
    assert!(up, "dnsmasq did not bind udp {port}");
    Some(Dns {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
    })
}

/// An echoing destination on `addr`.
async fn echo_at(addr: &str) -> SocketAddr {
    let l = TcpListener::bind(addr).await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_are_followed_by_priority_then_a_records_on_5269() {
    let live = echo_at("127.0.0.1:0").await;
    let dead = free_port();
    // c.test has no SRV record: its own address on 5269, on a loopback
    // address of its own so that nothing else on the machine is in the way.
    let fallback = echo_at("127.0.0.77:5269").await;
    let Some(dns) = dnsmasq(&[
        format!("--srv-host=_xmpp-server._tcp.b.test,dead.b.test,{dead},0,10"),
        format!(
            "--srv-host=_xmpp-server._tcp.b.test,live.b.test,{},10,10",
            live.port()
        ),
        "--host-record=dead.b.test,127.0.0.1".into(),
        "--host-record=live.b.test,127.0.0.1".into(),
        format!("--host-record=c.test,{}", fallback.ip()),
        "--srv-host=_xmpp-server._tcp.none.test".into(),
        "--host-record=private.test,10.11.12.13".into(),
        "--host-record=doc.test,192.0.2.7".into(),
    ])
    .await
    else {
        return;
    };
    // Loopback is allowed here only so that the test can reach its
    // destinations; the next test shows the default.
    let gw = relay(
        &format!(
            "resolver = \"{}\"\nallow_networks = [\"127.0.0.0/8\"]\ndeny_networks = [\"192.0.2.0/24\"]",
            dns.addr
        ),
        "",
    )
    .await;
    // Priority 0 refuses the connection; priority 10 answers.
    assert!(
        open(gw.addr, "b.test").await.is_some(),
        "SRV fallback to priority 10"
    );
    assert!(open(gw.addr, "c.test").await.is_some(), "A record on 5269");
    // A destination that does not resolve, or says it has no service.
    remote_connection_failed(
        &refused(gw.addr, Some("nx.test")).await,
        "nx.test does not resolve",
    );
    remote_connection_failed(&refused(gw.addr, Some("none.test")).await, "no XMPP");
    assert_eq!(gw.metrics.refused(Refusal::DestinationUnresolved), 2);
    // Into a private network, or a configured denied one.
    remote_connection_failed(
        &refused(gw.addr, Some("private.test")).await,
        "denied networks (10.11.12.13)",
    );
    remote_connection_failed(
        &refused(gw.addr, Some("doc.test")).await,
        "denied networks (192.0.2.7)",
    );
    assert_eq!(gw.metrics.refused(Refusal::DestinationDenied), 2);
    // Nothing else was disturbed.
    assert!(open(gw.addr, "b.test").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_into_loopback_is_refused_unless_a_static_route_names_it() {
    let live = echo_at("127.0.0.1:0").await;
    let Some(dns) = dnsmasq(&[
        format!(
            "--srv-host=_xmpp-server._tcp.b.test,live.b.test,{},0,10",
            live.port()
        ),
        "--host-record=live.b.test,127.0.0.1".into(),
    ])
    .await
    else {
        return;
    };
    let gw = relay(
        &format!(
            "resolver = \"{}\"\nroutes = {{ \"routed.test\" = \"{live}\" }}",
            dns.addr
        ),
        "",
    )
    .await;
    remote_connection_failed(
        &refused(gw.addr, Some("b.test")).await,
        "denied networks (127.0.0.1)",
    );
    assert_eq!(gw.metrics.refused(Refusal::DestinationDenied), 1);
    assert!(open(gw.addr, "routed.test").await.is_some());
}
