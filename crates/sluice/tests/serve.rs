//! `sluice serve` and the admin commands, as operators run them: real
//! processes, real sockets, SIGTERM, restart.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Service {
    child: Child,
    url: String,
}

impl Service {
    fn start(config: &Path, port: u16) -> Service {
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = ureq::get(&format!("{url}/healthz"))
                .timeout(Duration::from_millis(500))
                .call()
                .is_ok();
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "service did not come up");
            // Polling for readiness of a real process, not waiting on a limit.
            std::thread::yield_now();
        }
        Service { child, url }
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).args(["--server", &self.url]);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// SIGTERM, then wait: a graceful stop exits 0.
    fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bans_from_the_cli_survive_sigterm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n"),
    )
    .unwrap();
    let s = Service::start(&cfg, port);
    let out = s.cli(
        &["ban", "server:evil.example", "--for", "1h", "--reason", "spam"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("server:evil.example"));
    // Bulk: targets on stdin.
    let out = s.cli(
        &["ban", "--for", "2h"],
        Some("ip:192.0.2.1\n# comment\nip:192.0.2.2\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.cli(&["bans", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bans"].as_array().unwrap().len(), 3, "{v}");
    let out = s.cli(&["unban", "ip:192.0.2.2"], None);
    assert!(out.status.success());
    let status = s.terminate();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    assert!(dir.path().join("state/bans.json").exists());

    let s = Service::start(&cfg, port);
    let out = s.cli(&["bans"], None);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("server:evil.example") && table.contains("spam"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "header + two bans: {table}");
    let out = s.cli(&["inspect", "server:evil.example"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("spam"));
    let out = s.cli(&["inspect", "bogus"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"));
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[limits.client.target]\nregistration = \"1/eon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2:"), "{err}");
}

#[test]
fn admin_commands_report_an_unreachable_service() {
    let port = free_port();
    let out = Command::new(BIN)
        .args(["bans", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1"));
}

#[test]
fn completions_are_generated() {
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sluice"));
}
