//! The `sluice` binary's configuration commands, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("the sluice binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory unique to this test process and name, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = Scratch::new("ok");
    let f = dir.file(
        "sluice.toml",
        "preset = \"public_medium\"\n[limits.client.target]\nregistration = \"1/6m\"\n",
    );
    let o = sluice(&["check-config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with(&format!("{}: ok\n", f.display())), "{out}");
    assert!(out.contains("preset public_medium"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn check_config_accepts_every_example() {
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = sluice(&["check-config", path.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(0), "{}: {}", path.display(), stderr(&o));
        }
    }
}

#[test]
fn check_config_reports_file_line_col_and_exits_64() {
    let dir = Scratch::new("bad");
    let f = dir.file(
        "bad.toml",
        "preset = \"public_medium\"\n\n[limits.client.target]\nregistration = \"1/6 minutes\"\n",
    );
    let o = sluice(&["check-config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!("{}:4:16: bad period", f.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(stdout(&o).is_empty());
}

#[test]
fn check_config_rejects_unknown_keys() {
    let dir = Scratch::new("unknown");
    let f = dir.file("u.toml", "[store]\nkind = \"memory\"\nmax_key = 10\n");
    let o = sluice(&["check-config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).starts_with(&format!("{}:3:1: unknown field `max_key`", f.display())),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_config_missing_file_exits_64() {
    let o = sluice(&["check-config", "/nonexistent/sluice.toml"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("/nonexistent/sluice.toml: cannot read"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_config_needs_a_file() {
    let o = sluice(&["check-config"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn presets_lists_all_four() {
    let o = sluice(&["presets"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let header = out.lines().next().unwrap();
    for p in ["private_small", "private_medium", "public_medium", "public_large"] {
        assert!(header.contains(p), "{header}");
    }
    for row in [
        "client.target.registration.ip",
        "client.global.invite",
        "client.concurrent.connection.ip",
        "federation.target.outgoing.server",
        "bandwidth.federation.per_connection",
    ] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    let reg = out
        .lines()
        .find(|l| l.starts_with("client.global.registration "))
        .unwrap();
    let cells: Vec<&str> = reg.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "client.global.registration",
            "10/1d",
            "50/1d",
            "200/1d",
            "1000/1d"
        ]
    );
}

#[test]
fn explain_shows_limits_targets_and_overrides() {
    let dir = Scratch::new("explain");
    let f = dir.file(
        "e.toml",
        "preset = \"public_medium\"\n[[override]]\ntarget = \"ip:10.0.0.0/8\"\nactions = [\"registration\"]\nmultiply = 3\n[limits.client.target]\nregistration = { rate = \"1/6m\", shadow = true }\n",
    );
    let o = sluice(&[
        "explain",
        "--config",
        f.to_str().unwrap(),
        "--action",
        "registration",
        "--ip",
        "10.20.30.40",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.contains("client.target.registration.ip"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("ip:10.20.30.40"), "{line}");
    assert!(line.contains("3/6m"), "{line}");
    assert!(line.contains("shadow"), "{line}");
    assert!(line.contains("configured 1/6m"), "{line}");
    let global = out
        .lines()
        .find(|l| l.contains("client.global.registration"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(global.contains("global") && global.contains("200/1d"), "{global}");
}

#[test]
fn explain_federation_and_exemption() {
    let o = sluice(&[
        "explain",
        "--preset",
        "public_large",
        "--side",
        "federation",
        "--action",
        "transaction",
        "--server",
        "Example.ORG",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("federation.target.transaction.server"), "{out}");
    assert!(out.contains("server:example.org"), "{out}");
    assert!(out.contains("50/1s"), "{out}");

    let dir = Scratch::new("exempt");
    let f = dir.file("x.toml", "[exempt]\ntargets = [\"user:@admin:example.org\"]\n");
    let o = sluice(&[
        "explain",
        "--config",
        f.to_str().unwrap(),
        "--action",
        "send_event",
        "--user",
        "@admin:example.org",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("user:@admin:example.org is exempt"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_unknown_action_exits_64() {
    let o = sluice(&["explain", "--action", "teleport"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("unknown client action \"teleport\""),
        "{}",
        stderr(&o)
    );
    let o = sluice(&["explain", "--action", "outgoing"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("--side federation"), "{}", stderr(&o));
}

#[test]
fn explain_rejects_bad_targets_as_usage_errors() {
    for args in [
        ["--ip", "300.1.1.1"],
        ["--user", "bob"],
        ["--server", "bad host"],
        ["--cost", "0"],
        ["--side", "server"],
    ] {
        let mut all = vec!["explain", "--action", "login"];
        all.extend(args);
        let o = sluice(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn explain_with_a_bad_config_exits_64() {
    let dir = Scratch::new("explain-bad");
    let f = dir.file("b.toml", "preset = \"enormous\"\n");
    let o = sluice(&["explain", "--config", f.to_str().unwrap(), "--action", "login"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).starts_with(&format!("{}:1:10: unknown preset", f.display())));
}
