//! End to end: the server modules operators install when they use the
//! decision API instead of a gateway — `examples/synapse/sluice_synapse.py`
//! and `examples/prosody/mod_sluice.lua` — loaded into a real Synapse and a
//! real Prosody that each test starts itself, pointed at a sluice started
//! in-process on a free port (with a fake clock: nothing refills during a
//! test, so limits of `N/1d` make the next one a refusal without waiting).
//!
//! Needs `SLUICE_TEST_SYNAPSE_PYTHON` (a Python with matrix-synapse, from
//! scripts/services/synapse.sh), `SLUICE_TEST_PROSODY` and
//! `SLUICE_TEST_XMPP_PYTHON` (slixmpp, from scripts/services/prosody.sh);
//! each test fails without its variables when `SLUICE_TEST_STRICT=1`
//! (scripts/test sets it) and skips otherwise.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

fn env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("SLUICE_TEST_STRICT").as_deref() != Ok("1"),
                "{name} is not set (scripts/test sets it up from scripts/services/)"
            );
            eprintln!("skipping: {name} not set");
            None
        }
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/modules")
        .join(name)
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits, bounded, until `port` accepts connections or `child` exits.
fn wait_listening(child: &mut Child, port: u16, within: Duration, log: &Path) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "server exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "nothing listening on {port} after {within:?}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The sluice the modules ask: limits that a second attempt exceeds.
fn sluice(dir: &Path, limits: &str) -> Server {
    Server::start(
        dir,
        &format!(
            "[server]\nstate_dir = {:?}\n\n{limits}",
            dir.join("state").display().to_string()
        ),
    )
}

// ----- Synapse -------------------------------------------------------------------------------

/// One Matrix client-server API call as from `client_ip` (Synapse trusts
/// `X-Forwarded-For` on the test's listener): status, body, `Retry-After`.
struct Matrix {
    base: String,
    agent: ureq::Agent,
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (Retry-After {:?})",
            self.status, self.body, self.retry_after
        )
    }
}

impl Matrix {
    fn call(&self, method: &str, path: &str, token: Option<&str>, client_ip: &str, body: Value) -> Answer {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("X-Forwarded-For", client_ip);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match req.send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let retry_after = resp.header("retry-after").map(str::to_owned);
        let body = resp.into_json().unwrap_or(Value::Null);
        Answer {
            status,
            body,
            retry_after,
        }
    }

    fn register(&self, user: &str, client_ip: &str) -> Answer {
        self.call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            client_ip,
            json!({"username": user, "password": "correct-horse", "auth": {"type": "m.login.dummy"}}),
        )
    }

    fn login(&self, user: &str, password: &str, client_ip: &str) -> Answer {
        self.call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            client_ip,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
    }

    fn send(&self, token: &str, room: &str, txn: &str) -> Answer {
        self.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            "127.0.0.2",
            json!({"msgtype": "m.text", "body": txn}),
        )
    }
}

fn token(a: &Answer) -> String {
    a.body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {a:?}"))
        .to_owned()
}

/// Synapse's own answer when its rate limiter refuses: 429, `M_LIMIT_EXCEEDED`,
/// `retry_after_ms`, `Retry-After` — here with the wait sluice computed.
#[track_caller]
fn assert_limited(a: &Answer, retry_after_ms: u64) {
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.body["errcode"], "M_LIMIT_EXCEEDED", "{a:?}");
    let ms = a.body["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms: {a:?}"));
    // sluice's clock is a fake one that does not move: the wait is exact.
    assert_eq!(ms, retry_after_ms, "{a:?}");
    assert_eq!(
        a.retry_after.as_deref(),
        Some(&*(retry_after_ms.div_ceil(1000)).to_string()),
        "{a:?}"
    );
}

const DAY_MS: u64 = 86_400_000;

#[test]
fn synapse_module_limits_and_answers_m_limit_exceeded() {
    let Some(python) = env("SLUICE_TEST_SYNAPSE_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = sluice(
        dir.path(),
        "[limits.client.target]\nregistration = \"1/1d\"\nlogin = \"2/1d\"\ninvite = \"1/1d\"\n\
         join = \"1/1d\"\nsend_event = \"2/1d\"\n",
    );
    let synapse_dir = dir.path().join("synapse");
    std::fs::create_dir(&synapse_dir).unwrap();
    let port = free_port();
    let log = synapse_dir.join("synapse.log");
    let mut synapse = Child(
        Command::new(&python)
            .arg(helper("start_synapse.py"))
            .arg(&synapse_dir)
            .arg(port.to_string())
            .arg(format!("http://{}", server.addr))
            .arg(examples().join("synapse"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Bounded: Synapse generates its config and creates its database first.
    wait_listening(&mut synapse, port, Duration::from_secs(180), &log);
    let m = Matrix {
        base: format!("http://127.0.0.1:{port}"),
        agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build(),
    };

    // Registrations per address: the second from 127.0.0.2 is refused with
    // the wait sluice computed; another address still registers.
    let alice = m.register("alice", "127.0.0.2");
    assert_eq!(alice.status, 200, "{alice:?}");
    let alice = token(&alice);
    assert_limited(&m.register("mallory", "127.0.0.2"), DAY_MS);
    let bob = m.register("bob", "127.0.0.3");
    assert_eq!(bob.status, 200, "{bob:?}");
    let bob = token(&bob);
    let carol = m.register("carol", "127.0.0.4");
    assert_eq!(carol.status, 200, "{carol:?}");
    let carol = token(&carol);

    // Logins (2/1d per address and per user), counted once the password
    // was accepted; a wrong password is Synapse's own 403, unseen by sluice.
    assert_eq!(m.login("alice", "correct-horse", "127.0.0.5").status, 200);
    assert_eq!(m.login("alice", "correct-horse", "127.0.0.5").status, 200);
    assert_limited(&m.login("alice", "correct-horse", "127.0.0.5"), DAY_MS / 2);
    let wrong = m.login("alice", "wrong", "127.0.0.6");
    assert_eq!(
        (wrong.status, &wrong.body["errcode"]),
        (403, &json!("M_FORBIDDEN")),
        "{wrong:?}"
    );

    // Sent events (2/1d per user); creating the room is not one.
    let room = m.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&alice),
        "127.0.0.2",
        json!({"preset": "public_chat"}),
    );
    assert_eq!(room.status, 200, "{room:?}");
    let room = room.body["room_id"].as_str().unwrap().to_owned();
    assert_eq!(m.send(&alice, &room, "m1").status, 200);
    assert_eq!(m.send(&alice, &room, "m2").status, 200);
    assert_limited(&m.send(&alice, &room, "m3"), DAY_MS / 2);

    // Invites (1/1d per inviter).
    let invite = |who: &str| {
        m.call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice),
            "127.0.0.2",
            json!({"user_id": who}),
        )
    };
    assert_eq!(invite("@bob:localhost").status, 200);
    assert_limited(&invite("@carol:localhost"), DAY_MS);

    // Joins (1/1d per user): bob's second is refused.
    let join = |token: &str, room: &str| {
        m.call(
            "POST",
            &format!("/_matrix/client/v3/join/{room}"),
            Some(token),
            "127.0.0.3",
            json!({}),
        )
    };
    let room2 = m.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&carol),
        "127.0.0.4",
        json!({"preset": "public_chat"}),
    );
    assert_eq!(room2.status, 200, "{room2:?}");
    let room2 = room2.body["room_id"].as_str().unwrap().to_owned();
    assert_eq!(join(&bob, &room).status, 200);
    assert_limited(&join(&bob, &room2), DAY_MS);

    // sluice down: on_error is `deny` for registrations (429, retry in 1 s,
    // as sluice itself answers when its store fails) and `allow` for the
    // rest — alice's messages, over their limit a moment ago, now pass.
    server.stop();
    assert_limited(&m.register("dave", "127.0.0.9"), 1000);
    assert_eq!(m.send(&alice, &room, "m4").status, 200);

    // No client address in Synapse's log lines from the module.
    let text = std::fs::read_to_string(&log).unwrap();
    let module_lines: Vec<&str> = text.lines().filter(|l| l.contains("sluice_synapse")).collect();
    assert!(!module_lines.is_empty(), "the module logged nothing:\n{text}");
    for l in module_lines {
        assert!(!l.contains("127.0.0."), "address logged: {l}");
    }
}

/// The module against a sluice that is unreachable, silent (slower than
/// `timeout_s`) or answering garbage (not HTTP, not JSON, no boolean
/// `allowed`, a 5xx, too long): each follows `on_error`, within the timeout.
/// Needs Synapse importable, not running (the script stands in for ModuleApi).
#[test]
fn synapse_module_failures_of_sluice_follow_on_error() {
    let Some(python) = env("SLUICE_TEST_SYNAPSE_PYTHON") else {
        return;
    };
    let out = Command::new(python)
        .arg(helper("synapse_unit.py"))
        .arg(examples().join("synapse"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ----- Prosody -------------------------------------------------------------------------------

/// Starts Prosody (foreground, killed with the returned guard) on a free
/// port with mod_sluice loaded and pointed at `sluice_url`.
fn prosody(bin: &str, dir: &Path, sluice_url: &str, extra: &str) -> (Child, u16) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let d = dir.display();
    let port = free_port();
    let plugins = examples().join("prosody");
    let cfg = dir.join("prosody.cfg.lua");
    std::fs::write(
        &cfg,
        format!(
            r#"run_as_root = true
prosody_user = "root"
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}"
log = {{ info = "{d}/prosody.log" }}
plugin_paths = {{ "{plugins}" }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "presence", "register", "sluice" }}
modules_disabled = {{ "s2s" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = true
authentication = "internal_hashed"
sluice_url = "{sluice_url}"
{extra}
VirtualHost "localhost"
"#,
            plugins = plugins.display()
        ),
    )
    .unwrap();
    let mut child = Child(
        Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(
        &mut child,
        port,
        Duration::from_secs(30),
        &dir.join("prosody.log"),
    );
    (child, port)
}

/// One registration or login by the raw client from `src`: what the server answered.
fn xmpp(python: &str, port: u16, src: &str, what: &str, user: &str, password: &str) -> Value {
    let out = Command::new(python)
        .arg(helper("xmpp_client.py"))
        .args([&port.to_string(), src, what, user, password])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} {user} from {src}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn prosody_module_limits_registrations_and_bans_password_guessers() {
    let (Some(bin), Some(python)) = (env("SLUICE_TEST_PROSODY"), env("SLUICE_TEST_XMPP_PYTHON")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = sluice(
        dir.path(),
        "[limits.client.target]\nregistration = \"1/1d\"\nauthentication_failure = \"2/1d\"\n\n\
         [[autoban]]\naction = \"authentication_failure\"\ndenials = 2\nwithin = \"1h\"\nban = \"1h\"\n",
    );
    let p1 = dir.path().join("prosody1");
    let (_prosody, port) = prosody(
        &bin,
        &p1,
        &format!("http://{}", server.addr),
        "sluice_timeout = 2\nsluice_on_error = \"allow\"",
    );
    let x = |src: &str, what: &str, user: &str, pw: &str| xmpp(&python, port, src, what, user, pw);

    // Registrations per address: the second from 127.0.0.2 gets the answer
    // of Prosody's own throttle (mod_register_limits), with when to retry.
    assert_eq!(
        x("127.0.0.2", "register", "alice", "s3cretpw"),
        json!({"ok": true})
    );
    assert_eq!(
        x("127.0.0.2", "register", "bob", "s3cretpw"),
        json!({"ok": false, "type": "wait", "condition": "policy-violation",
               "text": "Too many registrations from this IP address recently, try again in 24 hours"})
    );
    assert_eq!(x("127.0.0.3", "register", "bob", "s3cretpw"), json!({"ok": true}));
    assert_eq!(x("127.0.0.4", "login", "alice", "s3cretpw"), json!({"ok": true}));

    // Password guessing from 127.0.0.5: two failures (2/1d) answered by
    // Prosody, then refused before the password is looked at, and the
    // refusals (2 within 1h) ban the address — even the right password.
    for _ in 0..2 {
        assert_eq!(
            x("127.0.0.5", "login", "alice", "guess")["condition"],
            "not-authorized"
        );
    }
    assert_eq!(
        x("127.0.0.5", "login", "alice", "guess"),
        json!({"ok": false, "condition": "temporary-auth-failure",
               "text": "Too many failed authentication attempts from this IP address, try again in 12 hours"})
    );
    assert_eq!(
        x("127.0.0.5", "login", "alice", "guess")["condition"],
        "temporary-auth-failure"
    );
    let bans = server.app.engine().bans().list(server.app.now());
    assert!(
        bans.iter().any(|b| b.target.to_string() == "ip:127.0.0.5"),
        "no ban: {bans:?}"
    );
    assert_eq!(
        x("127.0.0.5", "login", "alice", "s3cretpw"),
        json!({"ok": false, "condition": "temporary-auth-failure",
               "text": "Too many failed authentication attempts from this IP address, try again in 60 minutes"})
    );
    assert_eq!(x("127.0.0.4", "login", "alice", "s3cretpw"), json!({"ok": true}));

    // sluice down, sluice_on_error = "allow": registrations and logins pass.
    server.stop();
    assert_eq!(
        x("127.0.0.6", "register", "carol", "s3cretpw"),
        json!({"ok": true})
    );
    assert_eq!(x("127.0.0.6", "login", "carol", "s3cretpw"), json!({"ok": true}));

    // A sluice that accepts and never answers, sluice_on_error = "deny":
    // refused once sluice_timeout has passed, as a `wait` error with a text.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_prosody2, port2) = prosody(
        &bin,
        &dir.path().join("prosody2"),
        &format!("http://{}", silent.local_addr().unwrap()),
        "sluice_timeout = 0.5\nsluice_on_error = \"deny\"",
    );
    let t0 = Instant::now();
    assert_eq!(
        xmpp(&python, port2, "127.0.0.7", "register", "dave", "s3cretpw"),
        json!({"ok": false, "type": "wait", "condition": "resource-constraint",
               "text": "Registration is unavailable for a moment, try again later"})
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // No client address in Prosody's log lines from the module.
    let log = std::fs::read_to_string(p1.join("prosody.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("sluice")).collect();
    assert!(!lines.is_empty(), "the module logged nothing:\n{log}");
    for l in lines {
        assert!(!l.contains("127.0.0."), "address logged: {l}");
    }
}
