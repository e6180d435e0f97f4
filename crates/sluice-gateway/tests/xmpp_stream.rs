//! Stream-aware listeners (`protocol = "xmpp"`) over real loopback sockets:
//! the stream header's `from` as `server:<domain>`, stream errors, the
//! address-only fallbacks, SNI on direct-TLS ports, and bad input.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_core::Target;
use sluice_gateway::{AddressOnly, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn header(from: Option<&str>, to: &str) -> String {
    let from = from.map(|f| format!(" from=\"{f}\"")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}'{from} version='1.0'>"
    )
}

async fn federation(up: SocketAddr, listener: &str, rest: &str) -> Gw {
    start(
        up,
        &format!("protocol = \"xmpp\"\nheader_timeout = \"300ms\"\n{listener}"),
        rest,
    )
    .await
}

/// Sends `hello` and reads it back through the echoing upstream: the bytes
/// read for the header went on unchanged.
async fn passes(gw: SocketAddr, ip: &str, hello: &[u8]) -> bool {
    let mut s = connect_from(ip, gw).await;
    if s.write_all(hello).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; hello.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == hello
    )
}

async fn refused_with(gw: SocketAddr, ip: &str, hello: &[u8]) -> String {
    let mut s = connect_from(ip, gw).await;
    let _ = s.write_all(hello).await;
    String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_passes_on_unchanged_and_from_is_the_server() {
    let up = Upstream::echo(false).await;
    let gw = federation(up.addr, "side = \"federation\"", "").await;
    // Either quote style, another prefix, the header split over writes.
    let h = "<s:stream xmlns:s=\"http://etherx.jabber.org/streams\" xmlns=\"jabber:server\" from=\"A.Example\" to='b.example'><db:result/>";
    assert!(passes(gw.addr, "127.0.0.2", h.as_bytes()).await);
    let mut s = connect_from("127.0.0.3", gw.addr).await;
    let whole = header(Some("a.example"), "b.example");
    let (one, two) = whole.split_at(40);
    s.write_all(one.as_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    s.write_all(two.as_bytes()).await.expect("write");
    let mut back = vec![0u8; whole.len()];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, whole.as_bytes());
    assert_eq!(gw.metrics.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocklisted_or_banned_server_gets_a_stream_error_saying_so() {
    let up = Upstream::echo(false).await;
    let gw = federation(
        up.addr,
        "side = \"federation\"",
        "[blocklist]\nservers = [\"spam.example\"]\n",
    )
    .await;
    let text = refused_with(
        gw.addr,
        "127.0.0.2",
        header(Some("spam.example"), "b.example").as_bytes(),
    )
    .await;
    assert!(
        text.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:server'"),
        "{text}"
    );
    // Our header answers theirs (RFC 6120 §4.9.1.1), then the error.
    assert!(text.contains("from='b.example' to='spam.example'"), "{text}");
    assert!(text.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));
    assert!(text.contains("server spam.example is blocklisted"), "{text}");
    assert!(text.ends_with("</stream:stream>"));
    gw.app
        .engine()
        .ban(Target::server("bad.example").expect("server"), None, "test");
    let text = refused_with(
        gw.addr,
        "127.0.0.3",
        header(Some("bad.example"), "b.example").as_bytes(),
    )
    .await;
    assert!(text.contains("server bad.example is banned"), "{text}");
    assert_eq!(gw.metrics.refused(Refusal::ServerBlocked), 1);
    assert_eq!(gw.metrics.refused(Refusal::ServerBanned), 1);
    assert!(up.seen().is_empty(), "no refused stream reached the server");
    // Another server from the same address is fine.
    assert!(
        passes(
            gw.addr,
            "127.0.0.2",
            header(Some("ok.example"), "b.example").as_bytes()
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connections_per_server_across_addresses() {
    let up = Upstream::echo(false).await;
    let gw = federation(
        up.addr,
        "side = \"federation\"",
        "[concurrency.federation.target]\nconnection = [{ max = 20 }, { max = 1, per = \"server\" }]\n",
    )
    .await;
    let h = header(Some("a.example"), "b.example");
    let mut first = connect_from("127.0.0.2", gw.addr).await;
    first.write_all(h.as_bytes()).await.expect("write");
    let mut back = vec![0u8; h.len()];
    first.read_exact(&mut back).await.expect("echo");
    // The same server from another address: over its cap.
    let text = refused_with(gw.addr, "127.0.0.3", h.as_bytes()).await;
    assert!(
        text.contains("too many connections from server a.example"),
        "{text}"
    );
    assert_eq!(gw.metrics.refused(Refusal::ServerConnections), 1);
    // A stream without `from` is held by its address only.
    assert!(passes(gw.addr, "127.0.0.3", header(None, "b.example").as_bytes()).await);
    assert_eq!(gw.metrics.address_only_count(AddressOnly::NoFrom), 1);
    drop(first);
    assert!(eventually(|| gw.metrics.open() == 0).await);
    assert!(passes(gw.addr, "127.0.0.3", h.as_bytes()).await);
}

#[tokio::test(start_paused = true)]
async fn new_connections_per_server_per_period_counted_once_globally() {
    let up = Upstream::echo(false).await;
    let gw = federation(
        up.addr,
        "side = \"federation\"",
        "[limits.federation.target]\nconnection = [{ rate = \"100/1h\" }, { rate = \"2/1h\", per = \"server\" }]\n\
         [limits.federation.global]\nconnection = \"4/1h\"\n",
    )
    .await;
    let h = header(Some("a.example"), "b.example");
    assert!(passes(gw.addr, "127.0.0.2", h.as_bytes()).await);
    assert!(passes(gw.addr, "127.0.0.3", h.as_bytes()).await);
    let text = refused_with(gw.addr, "127.0.0.4", h.as_bytes()).await;
    let why: Vec<_> = Refusal::ALL
        .iter()
        .filter(|r| gw.metrics.refused(**r) > 0)
        .collect();
    assert!(
        text.contains("too many new connections from server a.example"),
        "{text} {why:?}"
    );
    assert_eq!(gw.metrics.refused(Refusal::ServerRate), 1);
    // Three connections so far, each counted once globally: one more fits.
    assert!(
        passes(
            gw.addr,
            "127.0.0.5",
            header(Some("c.example"), "b.example").as_bytes()
        )
        .await
    );
    let s = refused_with(
        gw.addr,
        "127.0.0.6",
        header(Some("d.example"), "b.example").as_bytes(),
    )
    .await;
    assert!(s.contains("policy-violation"), "{s}");
    assert_eq!(gw.metrics.refused(Refusal::GlobalRate), 1);
    // Half an hour gives a.example one connection back.
    tokio::time::advance(Duration::from_secs(1800)).await;
    assert!(passes(gw.addr, "127.0.0.7", h.as_bytes()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_that_connection_with_a_counted_reason() {
    let up = Upstream::echo(false).await;
    let gw = federation(up.addr, "side = \"federation\"", "").await;
    let cases: Vec<(Vec<u8>, Refusal)> = vec![
        (
            b"<stream:stream xmlns:stream='urn:nope' to='b.example'>".to_vec(),
            Refusal::StreamHeaderInvalid,
        ),
        (
            b"\x16\x03\x01\x00\x10\x01\x00\x00\x0c garbage \xff\xfe".to_vec(),
            Refusal::StreamHeaderInvalid,
        ),
        (b"<a><b>".to_vec(), Refusal::StreamHeaderInvalid),
        (
            [
                b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x='".to_vec(),
                vec![b'a'; 5000],
            ]
            .concat(),
            Refusal::StreamHeaderTooLong,
        ),
        (
            header(Some("a.example"), "not a domain").into_bytes(),
            Refusal::StreamNameInvalid,
        ),
        (
            header(Some("alice@a.example"), "b.example").into_bytes(),
            Refusal::StreamNameInvalid,
        ),
        (
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='b.exa".to_vec(),
            Refusal::StreamHeaderTimeout,
        ),
    ];
    for (i, (bytes, reason)) in cases.iter().enumerate() {
        let mut s = connect_from("127.0.0.2", gw.addr).await;
        let _ = s.write_all(bytes).await;
        let got = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut s))
            .await
            .expect("closed in time");
        assert!(got.is_empty(), "case {i}: {got:?}");
        assert_eq!(
            gw.metrics.refused(*reason),
            cases[..=i].iter().filter(|c| c.1 == *reason).count() as u64,
            "case {i}"
        );
    }
    // Silence: closed at header_timeout.
    let mut s = connect_from("127.0.0.2", gw.addr).await;
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(gw.metrics.refused(Refusal::StreamHeaderTimeout), 2);
    assert!(up.seen().is_empty());
    // Nothing else disturbed.
    assert!(
        passes(
            gw.addr,
            "127.0.0.2",
            header(Some("a.example"), "b.example").as_bytes()
        )
        .await
    );
}

fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.enable_sni = sni.is_some();
    let name = rustls::pki_types::ServerName::try_from(sni.unwrap_or("x.example").to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_reads_sni_from_a_split_hello_and_falls_back_without_it() {
    let up = Upstream::echo(false).await;
    let gw = federation(up.addr, "side = \"federation\"\ndirect_tls = true", "").await;
    let hello = client_hello(Some("B.example"));
    assert!(matches!(
        sluice_gateway::tls_hello::parse(&hello),
        Ok(sluice_gateway::tls_hello::Hello::Complete { sni: Some(s) }) if s == "b.example"
    ));
    // Split over three writes; the upstream gets it whole and unchanged.
    let mut s: TcpStream = connect_from("127.0.0.2", gw.addr).await;
    s.set_nodelay(true).expect("nodelay");
    for part in hello.chunks(hello.len() / 3 + 1) {
        s.write_all(part).await.expect("write");
        tokio::task::yield_now().await;
    }
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, hello);
    let bare = client_hello(None);
    assert!(passes(gw.addr, "127.0.0.3", &bare).await);
    assert_eq!(gw.metrics.address_only_count(AddressOnly::NoSni), 1);
    // Plain XMPP on a TLS port, and garbage: closed, counted, no stream error.
    for bytes in [
        header(Some("a.example"), "b.example").into_bytes(),
        b"\x16\x03\x01\x00\x05hello".to_vec(),
    ] {
        let mut s = connect_from("127.0.0.4", gw.addr).await;
        let _ = s.write_all(&bytes).await;
        assert!(read_to_close(&mut s).await.is_empty());
    }
    assert_eq!(gw.metrics.refused(Refusal::TlsHelloInvalid), 2);
}

#[test]
fn every_split_of_a_client_hello_is_incomplete_until_whole() {
    use sluice_gateway::tls_hello::{parse, Hello};
    let hello = client_hello(Some("b.example"));
    for i in 0..hello.len() {
        assert_eq!(parse(&hello[..i]), Ok(Hello::Incomplete), "prefix {i}");
    }
    assert_eq!(parse(&client_hello(None)), Ok(Hello::Complete { sni: None }));
}
