//! End to end: Synapse (from PyPI, started by scripts/services/synapse.sh)
//! behind the gateway, driven by matrix-nio: registrations from one address
//! limited, the client honouring `M_LIMIT_EXCEEDED`, a password-guessing
//! loop banned. Needs `SLUICE_TEST_SYNAPSE_URL` and
//! `SLUICE_TEST_SYNAPSE_PYTHON`; fails without them when
//! `SLUICE_TEST_STRICT=1` (scripts/test sets it), skips otherwise.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::Value;

use common::service_env as env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_behind_sluice_with_matrix_nio() {
    let (Some(synapse), Some(python)) = (env("SLUICE_TEST_SYNAPSE_URL"), env("SLUICE_TEST_SYNAPSE_PYTHON"))
    else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n\n[limits.client.target]\nsend_event = \"2/1s\"\n\n\
         [[gateway.http]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{synapse}\"\nprotocol = \"matrix\"\n",
        state.path().display()
    );
    let config = sluice_config::parse(&text, "e2e.toml").unwrap();
    let app = sluice_server::App::new(config).unwrap();
    let gateway = sluice_http_gateway::start(&app).await.unwrap()[0];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/synapse/client.py");
    let url = format!("http://{gateway}");
    let run =
        tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).arg(url).output());
    // A bound on the whole run, not a wait for time to pass.
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("client finished within 5 minutes")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    eprintln!("{v}");

    // Registrations from one address: one per 6 minutes.
    assert_eq!(v["register_1"], "RegisterResponse");
    assert_eq!(v["register_2"]["code"], "M_LIMIT_EXCEEDED");
    assert!(v["register_2"]["retry_after_ms"].as_u64().unwrap() > 300_000);

    // The client waited as told and every message went through.
    assert_eq!(v["login"], "LoginResponse");
    assert_eq!(v["room_create"], "RoomCreateResponse");
    assert_eq!(v["sent"], 6);
    assert!(v["send_seconds"].as_f64().unwrap() >= 1.0, "no waiting: {v}");

    // Password guessing: refused by Synapse 5 times, then by sluice, then banned.
    let guesses: Vec<&str> = v["guesses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(&guesses[..5], &["M_FORBIDDEN"; 5], "{guesses:?}");
    assert!(
        guesses[5..].iter().all(|g| *g == "M_LIMIT_EXCEEDED"),
        "{guesses:?}"
    );
    let bans = app.engine().bans().list(app.now());
    assert!(
        bans.iter().any(|b| b.target.to_string() == "ip:127.0.0.1"),
        "no ban: {bans:?}"
    );
}
