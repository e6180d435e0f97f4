//! End to end: `sluice serve` with its Matrix gateway in front of the real
//! Synapse of the test suite (scripts/services/synapse.sh), a Matrix
//! policy-list fixture as a source: a federation transaction whose
//! `X-Matrix` origin the list bans is refused with `M_FORBIDDEN` before it
//! reaches Synapse, and `sluice blocklist check` names the rule. The only
//! origin this suite can really sign for is Synapse's own (`localhost`, with
//! its signing key through `signedjson` from Synapse's venv), so the
//! fixture bans it. Needs `SLUICE_TEST_SYNAPSE_URL`, `_PYTHON` and
//! `_CONFIG`; fails without them when `SLUICE_TEST_STRICT=1`
//! (scripts/test sets it), skips otherwise.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn up(url: &str) -> bool {
    ureq::get(url).timeout(Duration::from_millis(500)).call().is_ok()
}

/// The policy room's state as `/rooms/{id}/state` answers it: a server
/// rule banning a whole domain, a user rule, an allow-everything rule that
/// must not exempt anyone, and a removed rule.
const POLICY: &str = r#"[
  {"type": "m.policy.rule.server", "state_key": "rule0", "sender": "@mod:example.org",
   "content": {"entity": "localhost", "recommendation": "m.ban", "reason": "spam wave"}},
  {"type": "m.policy.rule.server", "state_key": "rule1", "sender": "@mod:example.org",
   "content": {"entity": "*.evil.example", "recommendation": "m.ban", "reason": "spam relay"}},
  {"type": "m.policy.rule.user", "state_key": "rule2", "sender": "@mod:example.org",
   "content": {"entity": "@spammer:*", "recommendation": "m.ban", "reason": "spam"}},
  {"type": "m.policy.rule.server", "state_key": "rule3", "sender": "@mod:example.org",
   "content": {"entity": "*", "recommendation": "org.example.allow"}},
  {"type": "m.policy.rule.server", "state_key": "rule4", "sender": "@mod:example.org", "content": {}}
]"#;

/// Signs a federation request as Synapse's own server (its signing key,
/// read from its config): the one origin this suite can really prove.
const SIGN: &str = r#"
import json, sys, yaml, signedjson.key, signedjson.sign
cfg = yaml.safe_load(open(sys.argv[1]))
alg, version, seed = open(cfg["signing_key_path"]).read().split()[:3]
key = signedjson.key.decode_signing_key_base64(alg, version, seed)
name = cfg["server_name"]
req = {"method": sys.argv[2], "uri": sys.argv[3], "origin": name, "destination": name, "content": json.loads(sys.argv[4])}
sig = signedjson.sign.sign_json(req, name, key)["signatures"][name]
kid, s = next(iter(sig.items()))
print(f'X-Matrix origin="{name}",destination="{name}",key="{kid}",sig="{s}"')
"#;

fn signed(python: &str, config: &str, uri: &str, body: &str) -> String {
    let out = Command::new(python)
        .args(["-c", SIGN, config, "PUT", uri, body])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const BODY: &str = r#"{"origin":"localhost","origin_server_ts":1,"pdus":[],"edus":[]}"#;

fn send_transaction(gateway: &str, txn: &str, auth: &str) -> (u16, serde_json::Value) {
    let r = ureq::put(&format!("{gateway}/_matrix/federation/v1/send/{txn}"))
        .timeout(Duration::from_secs(30))
        .set("Authorization", auth)
        .set("Content-Type", "application/json")
        .send_string(BODY);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    (status, resp.into_json().unwrap_or(serde_json::Value::Null))
}

fn env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("SLUICE_TEST_STRICT").as_deref() != Ok("1"),
                "{name} is not set (scripts/services/synapse.sh starts Synapse)"
            );
            eprintln!("skipping: {name} not set");
            None
        }
    }
}

#[test]
fn the_matrix_gateway_refuses_an_origin_a_policy_list_bans() {
    let (Some(synapse), Some(python), Some(synapse_config)) = (
        env("SLUICE_TEST_SYNAPSE_URL"),
        env("SLUICE_TEST_SYNAPSE_PYTHON"),
        env("SLUICE_TEST_SYNAPSE_CONFIG"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let (api, gw) = (free_port(), free_port());
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{api}\"\nstate_dir = {:?}\n\n\
             [[blocklist.source]]\nname = \"coc-bans\"\npath = {:?}\nformat = \"matrix_policy\"\nside = \"federation\"\n\n\
             [[gateway.http]]\nlisten = \"127.0.0.1:{gw}\"\nupstream = \"{synapse}\"\nprotocol = \"matrix\"\n",
            dir.path().join("state").display().to_string(),
            policy.display().to_string(),
        ),
    )
    .unwrap();
    let _service = Service(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{api}");
    let gateway = format!("http://127.0.0.1:{gw}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(up(&format!("{api}/healthz")) && up(&format!("{gateway}/_matrix/federation/v1/version"))) {
        assert!(Instant::now() < deadline, "sluice did not come up");
        // Polling for readiness of a real process, not waiting on a limit.
        std::thread::yield_now();
    }

    // Synapse answers through the gateway.
    let v: serde_json::Value = ureq::get(&format!("{gateway}/_matrix/federation/v1/version"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(v["server"]["name"], "Synapse", "{v}");

    // A forged claim of a listed origin proves nothing: counted as the
    // sending address, it reaches Synapse, which refuses the signature (the
    // gateway trusts an origin only once Synapse has).
    let forged =
        "X-Matrix origin=\"hs.evil.example\",destination=\"localhost\",key=\"ed25519:a\",sig=\"c2ln\"";
    let (status, body) = send_transaction(&gateway, "t0", forged);
    assert_eq!(status, 401, "{body}");

    // Synapse's own origin, really signed, which the list bans: the first
    // transaction proves the origin (Synapse accepts it), the next is
    // checked as `server:localhost` and refused by sluice, Matrix-style.
    let uri = |t: &str| format!("/_matrix/federation/v1/send/{t}");
    let (status, body) = send_transaction(
        &gateway,
        "t1",
        &signed(&python, &synapse_config, &uri("t1"), BODY),
    );
    assert_eq!(status, 200, "Synapse accepts its own signature: {body}");
    let (status, body) = send_transaction(
        &gateway,
        "t2",
        &signed(&python, &synapse_config, &uri("t2"), BODY),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");

    // The operator's view names the rule.
    let check = |target: &str| {
        Command::new(BIN)
            .args(["blocklist", "check", target, "--server", &api])
            .output()
            .unwrap()
    };
    for (target, entry, reason) in [
        ("server:localhost", "localhost", "spam wave"),
        ("server:hs.evil.example", "*.evil.example", "spam relay"),
    ] {
        let out = check(target);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains("coc-bans") && stdout.contains(entry) && stdout.contains(reason),
            "{stdout}"
        );
    }
    let out = check("server:good.example");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The denial is counted per source.
    let metrics = ureq::get(&format!("{api}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("sluice_blocklist_matches_total{source=\"coc-bans\",action=\"deny\"} 1"),
        "{metrics}"
    );
}
