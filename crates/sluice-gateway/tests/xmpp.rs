//! End to end with a real XMPP server and client: slixmpp logs in to
//! Prosody (Debian) through sluice, from 127.0.0.7.
//!
//! Prosody reads PROXY headers only with the community module
//! mod_net_proxy, which Debian 12's prosody-modules does not ship. So the
//! real-address hand-off is checked with another real PROXY-aware peer in
//! between: sluice sends PROXY v2 to HAProxy (`accept-proxy`), which logs
//! the client address it was told and forwards to Prosody.
//!
//!   slixmpp (127.0.0.7) ─► sluice ─(PROXY v2)─► HAProxy accept-proxy ─► Prosody
//!
//! Needs SLUICE_TEST_PROSODY, SLUICE_TEST_XMPP_PYTHON (scripts/services/prosody.sh)
//! and SLUICE_TEST_HAPROXY (scripts/services/haproxy.sh).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use sluice_core::Target;
use sluice_gateway::Refusal;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_session_through_sluice_hands_on_the_real_address() {
    let Some(prosody) = service("SLUICE_TEST_PROSODY") else {
        return;
    };
    let Some(python) = service("SLUICE_TEST_XMPP_PYTHON") else {
        return;
    };
    let Some(haproxy) = service("SLUICE_TEST_HAPROXY") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let xmpp_port = free_port();
    let cfg = dir.path().join("prosody.cfg.lua");
    std::fs::write(
        &cfg,
        format!(
            r#"run_as_root = true
prosody_user = "root"
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}"
log = {{ info = "{d}/prosody.log" }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "presence" }}
modules_disabled = {{ "s2s" }}
c2s_ports = {{ {xmpp_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
VirtualHost "localhost"
"#
        ),
    )
    .expect("write prosody config");
    let ctl = std::path::Path::new(&prosody).with_file_name("prosodyctl");
    let reg = Command::new(&ctl)
        .arg("--config")
        .arg(&cfg)
        .args(["register", "alice", "localhost", "s3cretpw"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("prosodyctl");
    assert!(reg.success(), "prosodyctl register failed");
    let _prosody = Command::new(&prosody)
        .arg("--config")
        .arg(&cfg)
        .arg("-F")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prosody");
    assert!(
        eventually(|| listening(xmpp_port)).await,
        "prosody did not listen"
    );

    // HAProxy believes sluice's PROXY header and logs the client it names.
    let hp_port = free_port();
    let hcfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        format!(
            "global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  log global\n  option logasap\n  \
             timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend xmpp\n  bind 127.0.0.1:{hp_port} accept-proxy\n  log-format \"client=%ci\"\n  default_backend p\n\
             backend p\n  server prosody 127.0.0.1:{xmpp_port}\n"
        ),
    )
    .expect("write haproxy config");
    let mut hap = Command::new(&haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&hcfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    assert!(eventually(|| listening(hp_port)).await, "haproxy did not listen");
    let mut log = tokio::io::BufReader::new(hap.stdout.take().expect("stdout")).lines();

    let upstream = format!("127.0.0.1:{hp_port}").parse().expect("addr");
    let gw = start(upstream, "send_proxy = \"v2\"", "").await;
    let client = dir.path().join("client.py");
    std::fs::write(&client, include_str!("xmpp/client.py")).expect("write client");
    let run = |src: &'static str| {
        let mut c = Command::new(&python);
        c.arg(&client)
            .args([
                "127.0.0.1",
                &gw.addr.port().to_string(),
                "alice@localhost",
                "s3cretpw",
                src,
            ])
            .stderr(Stdio::null())
            .kill_on_drop(true);
        async move { tokio::time::timeout(Duration::from_secs(30), c.output()).await }
    };

    let out = run("127.0.0.7")
        .await
        .expect("client in time")
        .expect("client ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SESSION OK alice@localhost/"),
        "{stdout}"
    );
    let line = tokio::time::timeout(Duration::from_secs(10), log.next_line())
        .await
        .expect("haproxy logged in time")
        .expect("read log")
        .expect("a log line");
    assert_eq!(
        line.trim(),
        "client=127.0.0.7",
        "the server side saw the real client"
    );

    // A banned address never reaches the server.
    gw.app
        .engine()
        .ban(Target::Ip("127.0.0.8/32".parse().expect("net")), None, "test");
    let out = run("127.0.0.8")
        .await
        .expect("client in time")
        .expect("client ran");
    assert!(!out.status.success());
    assert_eq!(gw.metrics.refused(Refusal::Banned), 1);
    assert_eq!(gw.metrics.accepted(), 1);
}
