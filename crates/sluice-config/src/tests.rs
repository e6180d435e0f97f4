//! Unit tests: every value form, every error with its exact position.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::{Effect, Engine, LimitKind, Matcher, Mode, Per, Request, Scope, Side, Target, TargetKind};

use super::*;

fn ok(text: &str) -> Config {
    match parse(text, "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}\n---\n{text}"),
    }
}

/// `(line, col, message)` of the error `text` must produce.
fn err(text: &str) -> (usize, usize, String) {
    match parse(text, "t.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigError::Invalid {
            file,
            line,
            col,
            message,
        }) => {
            assert_eq!(file, "t.toml");
            assert!(!message.contains('\n'), "multi-line message: {message}");
            (line, col, message)
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

/// Asserts the error is at `line:col` and mentions `needle`.
#[track_caller]
fn err_at(text: &str, line: usize, col: usize, needle: &str) {
    let (l, c, m) = err(text);
    assert_eq!((l, c), (line, col), "wrong position for {m:?}");
    assert!(m.contains(needle), "{m:?} does not mention {needle:?}");
}

fn kind(c: &Config, name: &str) -> Option<LimitKind> {
    c.policy.limits().iter().find(|l| l.name == name).map(|l| l.kind)
}

fn rate(s: &str) -> LimitKind {
    LimitKind::Rate(s.parse().unwrap())
}

fn names(c: &Config, side: Side, action: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .policy
        .limits_for(side, action)
        .map(|l| l.name.to_string())
        .collect();
    v.sort();
    v
}

// ----- whole documents -----------------------------------------------------------------

#[test]
fn empty_config_is_private_small_with_defaults() {
    let c = ok("");
    assert_eq!(c.preset, Preset::PrivateSmall);
    assert_eq!(c.server.listen, "127.0.0.1:8470".parse::<SocketAddr>().unwrap());
    assert_eq!(c.server.max_body_bytes, 65_536);
    assert_eq!(c.store, StoreConfig::default());
    assert_eq!(c.store.max_keys, 1_000_000);
    assert_eq!(c.store.key_prefix, "sluice:");
    assert_eq!(c.store.command_timeout, Duration::from_millis(250));
    assert_eq!(c.network.ipv6_prefix, 64);
    assert!(!c.privacy.log_ips);
    assert_eq!(c.source, None);
    let d = Config::default();
    assert_eq!(d.preset, Preset::PrivateSmall);
    assert_eq!(d.policy.limits(), c.policy.limits());
}

#[test]
fn contract_keys_parse() {
    let c = ok(r#"
preset = "public_medium"
[server]
listen = "127.0.0.1:8470"
[store]
kind = "memory"
max_keys = 5000
[network]
trusted_proxies = ["10.0.0.0/8"]
[limits.client.target]
registration = "1/6m"
[limits.federation.global]
transaction = "1000/1s"
[[gateway.tcp]]
listen = "0.0.0.0:5222"
upstream = "127.0.0.1:15222"
side = "client"
accept_proxy = true
send_proxy = "v2"
[[gateway.http]]
listen = "0.0.0.0:8008"
upstream = "http://127.0.0.1:18008"
protocol = "matrix"
"#);
    assert_eq!(c.preset, Preset::PublicMedium);
    assert_eq!(c.store.max_keys, 5000);
    assert_eq!(c.network.trusted_proxies, vec!["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(kind(&c, "federation.global.transaction"), Some(rate("1000/1s")));
    assert_eq!(c.gateway.tcp.len(), 1);
    assert_eq!(c.gateway.tcp[0].side, Side::Client);
    assert_eq!(c.gateway.tcp[0].send_proxy, Some(ProxyVersion::V2));
    assert!(c.gateway.tcp[0].accept_proxy);
    assert_eq!(c.gateway.http[0].protocol, HttpProtocol::Matrix);
}

#[test]
fn every_section_parses() {
    let c = ok(r#"
[server]
admin_token_file = "token"
state_dir = "/var/lib/sluice"
max_body_bytes = 4096
[store]
kind = "redis"
url = "redis://127.0.0.1:6379/0"
cluster = true
on_error = "deny"
key_prefix = "s1:"
connect_timeout = "2s"
command_timeout = "100ms"
local_admission = 50
local_hold = "500ms"
[network]
ipv4_prefix = 24
ipv6_prefix = 56
[privacy]
log_ips = true
"#);
    assert_eq!(c.server.admin_token_file, Some("token".into()));
    assert_eq!(c.server.max_body_bytes, 4096);
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert!(c.store.cluster);
    assert_eq!(c.store.on_error, OnError::Deny);
    assert_eq!(c.store.key_prefix, "s1:");
    assert_eq!(c.store.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.store.command_timeout, Duration::from_millis(100));
    assert_eq!(c.store.local_admission, 50);
    assert_eq!(c.store.local_hold, Duration::from_millis(500));
    assert_eq!(c.policy.normalizer().ipv4_prefix(), 24);
    assert_eq!(c.policy.normalizer().ipv6_prefix(), 56);
    assert!(c.privacy.log_ips);
}

// ----- limit value forms -----------------------------------------------------------------

#[test]
fn string_rate_uses_the_action_default_target_and_replaces_all_preset_limits() {
    let c = ok("[limits.client.target]\nrequest = \"50/1m\"\n");
    // Both preset request rates (anonymous_ip and user) are replaced by one per user;
    // the concurrency cap is untouched.
    assert_eq!(
        names(&c, Side::Client, "request"),
        ["client.concurrent.request.user", "client.target.request.user"]
    );
    assert_eq!(kind(&c, "client.target.request.user"), Some(rate("50/1m")));
}

#[test]
fn table_form_with_burst_shadow_and_per() {
    let c = ok(
        "[limits.client.target]\nlogin = { rate = \"10/1m\", burst = 20, shadow = true, per = \"user\" }\n",
    );
    let l = c
        .policy
        .limits()
        .iter()
        .find(|l| l.name == "client.target.login.user")
        .unwrap();
    assert!(l.shadow);
    assert_eq!(l.scope, Scope::Target(Per::Kind(TargetKind::User)));
    match l.kind {
        LimitKind::Rate(r) => assert_eq!((r.count(), r.burst()), (10, 20)),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&c, Side::Client, "login"), ["client.target.login.user"]);
}

#[test]
fn array_form_gives_several_per_kind_limits() {
    let c = ok(r#"
[limits.client.target]
request = [
  { rate = "30/1m", per = "anonymous_ip" },
  { rate = "600/1m", per = "user" },
  { rate = "5000/1m", per = "appservice" },
]
"#);
    assert_eq!(
        kind(&c, "client.target.request.anonymous_ip"),
        Some(rate("30/1m"))
    );
    assert_eq!(kind(&c, "client.target.request.user"), Some(rate("600/1m")));
    assert_eq!(
        kind(&c, "client.target.request.appservice"),
        Some(rate("5000/1m"))
    );
}

#[test]
fn off_removes_the_preset_limits() {
    let c = ok("[limits.client.global]\ninvite = \"off\"\n[limits.client.target]\nrequest = \"off\"\n");
    assert_eq!(kind(&c, "client.global.invite"), None);
    assert!(kind(&c, "client.target.invite.user").is_some());
    assert_eq!(
        names(&c, Side::Client, "request"),
        ["client.concurrent.request.user"]
    );
}

#[test]
fn global_limits_and_byte_rates() {
    let c = ok(r#"
[limits.client.global]
registration = "5/1d"
media_create = "1GiB/1h"
[limits.federation.target]
media_download = { rate = "1GiB/1d", burst = 104857600 }
"#);
    assert_eq!(kind(&c, "client.global.registration"), Some(rate("5/1d")));
    assert_eq!(kind(&c, "client.global.media_create"), Some(rate("1GiB/1h")));
    // The preset's target registration limit stays: only global was configured.
    assert_eq!(kind(&c, "client.target.registration.ip"), Some(rate("1/6m")));
    match kind(&c, "federation.target.media_download.server") {
        Some(LimitKind::Rate(r)) => assert_eq!(r.burst(), 100 << 20),
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrency_forms() {
    let c = ok(r#"
[concurrency.client.target]
connection = 8
request = { max = 2, shadow = true }
media_create = "off"
[concurrency.federation.global]
connection = 1000
[concurrency.federation.target]
transaction = [{ max = 3, per = "server" }, { max = 10, per = "ip" }]
"#);
    assert_eq!(
        kind(&c, "client.concurrent.connection.ip"),
        Some(LimitKind::Concurrency(8))
    );
    assert_eq!(
        kind(&c, "client.concurrent.request.user"),
        Some(LimitKind::Concurrency(2))
    );
    assert!(c
        .policy
        .limits()
        .iter()
        .any(|l| l.name == "client.concurrent.request.user" && l.shadow));
    assert_eq!(kind(&c, "client.concurrent.media_create.user"), None);
    assert_eq!(
        kind(&c, "federation.concurrent.connection.global"),
        Some(LimitKind::Concurrency(1000))
    );
    // The global cap is added next to the preset's per-IP cap, not instead of it.
    assert!(kind(&c, "federation.concurrent.connection.ip").is_some());
    assert_eq!(
        kind(&c, "federation.concurrent.transaction.server"),
        Some(LimitKind::Concurrency(3))
    );
    assert_eq!(
        kind(&c, "federation.concurrent.transaction.ip"),
        Some(LimitKind::Concurrency(10))
    );
    // Rate limits of the action are untouched.
    assert!(kind(&c, "client.target.connection.ip").is_some());
}

#[test]
fn custom_actions() {
    let c = ok(r#"
[actions.client]
password_reset = "ip"
[actions.federation]
profile_query = "server"
[limits.client.target]
password_reset = "3/1h"
[limits.federation.target]
profile_query = "100/1m"
"#);
    assert_eq!(kind(&c, "client.target.password_reset.ip"), Some(rate("3/1h")));
    assert_eq!(
        kind(&c, "federation.target.profile_query.server"),
        Some(rate("100/1m"))
    );
    assert_eq!(
        c.policy.action(Side::Client, "password_reset"),
        Some(Per::Kind(TargetKind::Ip))
    );
}

#[test]
fn exemptions_blocklist_overrides() {
    let c = ok(r#"
[exempt]
networks = ["192.0.2.0/24"]
targets = ["user:@admin:example.org", "ip:2001:db8::1"]
[blocklist]
servers = ["Evil.Example"]
networks = ["198.51.100.0/24"]
[[override]]
target = "ip:10.0.0.0/8"
actions = ["login"]
multiply = 4
[[override]]
target = "user:@bot:example.org"
actions = ["send_event"]
rate = "100/1s"
[[override]]
target = "appservice:bridge"
unlimited = true
"#);
    let p = &c.policy;
    assert!(p.is_exempt(&"ip:192.0.2.7".parse().unwrap()));
    assert!(p.is_exempt(&"user:@admin:example.org".parse().unwrap()));
    // An exempt IPv6 address covers its /64, as requests are grouped that way.
    assert!(p.is_exempt(&p.normalizer().ip_target("2001:db8::2".parse().unwrap())));
    assert!(p.blocked(&"server:evil.example".parse().unwrap()).is_some());
    assert!(p.blocked(&"ip:198.51.100.9".parse().unwrap()).is_some());
    let o = p.override_for(&"ip:10.1.2.3".parse().unwrap(), "login").unwrap();
    assert_eq!(o.effect, Effect::Multiply(4.0));
    assert!(p
        .override_for(&"ip:10.1.2.3".parse().unwrap(), "register")
        .is_none());
    let o = p
        .override_for(&"user:@bot:example.org".parse().unwrap(), "send_event")
        .unwrap();
    assert_eq!(o.effect, Effect::Replace("100/1s".parse().unwrap()));
    let o = p
        .override_for(&"appservice:bridge".parse().unwrap(), "join")
        .unwrap();
    assert_eq!(o.effect, Effect::Unlimited);
    assert_eq!(
        p.overrides()[0].matcher,
        Matcher::Network("10.0.0.0/8".parse().unwrap())
    );
}

#[test]
fn overrides_take_effect_in_the_engine() {
    let c = ok(r#"
[[override]]
target = "ip:10.0.0.0/8"
actions = ["login"]
multiply = 4
"#);
    let engine = Engine::in_memory(c.policy, 1024);
    let req = Request::client("login").ip("10.9.9.9".parse().unwrap());
    let plan = engine.plan(&req, Mode::DryRun).unwrap();
    let applied = plan.applied();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].0, "client.target.login.ip");
    assert_eq!(applied[0].2, rate("40/1m"));
}

#[test]
fn autoban_forms() {
    let c = ok(r#"
[[autoban]]
action = "login"
side = "client"
per = "ip"
denials = 20
within = "1h"
ban = "1h"
max_ban = "7d"
forget_after = "30d"
"#);
    let rules = c.policy.autobans();
    assert_eq!(rules.len(), 2, "{rules:?}");
    let r = &rules[1];
    assert_eq!(
        (&*r.action, r.side, r.per, r.denials),
        ("login", Some(Side::Client), TargetKind::Ip, 20)
    );
    assert_eq!(r.max_ban, Duration::from_secs(7 * 86_400));
    assert_eq!(r.forget_after, Duration::from_secs(30 * 86_400));

    // A rule for the preset's action replaces it; `off` removes it.
    let c =
        ok("[[autoban]]\naction = \"authentication_failure\"\ndenials = 3\nwithin = \"1m\"\nban = \"5m\"\n");
    assert_eq!(c.policy.autobans().len(), 1);
    assert_eq!(c.policy.autobans()[0].denials, 3);
    assert_eq!(c.policy.autobans()[0].max_ban, Duration::from_secs(300));
    let c = ok("[[autoban]]\naction = \"authentication_failure\"\noff = true\n");
    assert!(c.policy.autobans().is_empty());
}

#[test]
fn bandwidth_sections() {
    let c = ok(r#"
preset = "public_large"
[bandwidth.client]
per_connection = "20KiB/1s"
per_ip = "1MiB/1s"
[bandwidth.federation]
per_connection = "off"
"#);
    assert_eq!(
        c.bandwidth.client_per_connection,
        Some("20KiB/1s".parse().unwrap())
    );
    assert_eq!(c.bandwidth.client_per_ip, Some("1MiB/1s".parse().unwrap()));
    assert_eq!(kind(&c, "client.target.bandwidth.ip"), Some(rate("1MiB/1s")));
    assert_eq!(c.bandwidth.federation_per_connection, None);
    assert_eq!(c.bandwidth.federation_per_ip, Some("900KiB/1s".parse().unwrap()));
    // The limits table is the other spelling of per_ip.
    let c = ok("[limits.client.target]\nbandwidth = \"off\"\n");
    assert_eq!(c.bandwidth.client_per_ip, None);
    assert_eq!(
        c.bandwidth.client_per_connection,
        Some("10KiB/1s".parse().unwrap())
    );
}

#[test]
fn presets_differ_where_the_design_says() {
    let small = Config::from_preset(Preset::PrivateSmall);
    let large = Config::from_preset(Preset::PublicLarge);
    assert_eq!(kind(&small, "client.global.registration"), Some(rate("10/1d")));
    assert_eq!(kind(&large, "client.global.registration"), Some(rate("1000/1d")));
    assert_eq!(
        kind(&small, "client.concurrent.connection.ip"),
        Some(LimitKind::Concurrency(20))
    );
    assert_eq!(
        kind(&large, "federation.target.outgoing.server"),
        Some(rate("100/1s"))
    );
    assert_eq!(
        small.bandwidth.client_per_connection,
        Some("10KiB/1s".parse().unwrap())
    );
    assert_eq!(
        large.bandwidth.federation_per_connection,
        Some("300KiB/1s".parse().unwrap())
    );
}

#[test]
fn preset_plus_override_merge_keeps_the_rest() {
    let base = Config::from_preset(Preset::PublicMedium);
    let c = ok("preset = \"public_medium\"\n[limits.client.target]\nregistration = \"1/10m\"\n");
    let changed: Vec<_> = c
        .policy
        .limits()
        .iter()
        .filter(|l| !base.policy.limits().contains(l))
        .map(|l| l.name.to_string())
        .collect();
    assert_eq!(changed, ["client.target.registration.ip"]);
    assert_eq!(c.policy.limits().len(), base.policy.limits().len());
}

#[test]
fn load_resolves_relative_paths_and_records_the_source() {
    let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sluice.toml");
    std::fs::write(
        &file,
        "[server]\nadmin_token_file = \"token\"\nstate_dir = \"/abs\"\n",
    )
    .unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.server.admin_token_file, Some(dir.join("token")));
    assert_eq!(c.server.state_dir, Some("/abs".into()));
    assert_eq!(c.source, Some(file.clone()));
    // Every file a gateway reads, too.
    std::fs::write(
        &file,
        "[[gateway.http]]\nlisten = \"127.0.0.1:8448\"\nupstream = \"https://hs.example\"\nprotocol = \"matrix\"\nupstream_ca = \"ca.pem\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
    )
    .unwrap();
    let c = load(&file).unwrap();
    let g = &c.gateway.http[0];
    assert_eq!(g.upstream_ca, Some(dir.join("ca.pem")));
    assert_eq!(g.tls_cert, Some(dir.join("c.pem")));
    std::fs::write(&file, "[server]\nlisten = 1\n").unwrap();
    let e = load(&file).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:2:10: ", file.display())),
        "{e}"
    );
    let missing = dir.join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("cannot read"), "{e}");
    assert_eq!(e.exit_code(), EXIT_CONFIG);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ----- errors, each at its value -------------------------------------------------------

#[test]
fn syntax_and_unknown_keys() {
    err_at("preset = \n", 1, 10, "");
    err_at("colour = \"blue\"\n", 1, 1, "unknown field `colour`");
    err_at(
        "[server]\nlisten = \"127.0.0.1:1\"\nport = 3\n",
        3,
        1,
        "unknown field `port`",
    );
    err_at(
        "[limits.client.targets]\nlogin = \"1/1m\"\n",
        1,
        16,
        "unknown field `targets`",
    );
    err_at(
        "[limits.clients.target]\nlogin = \"1/1m\"\n",
        1,
        9,
        "unknown field `clients`",
    );
    err_at(
        "[limits.client.target]\nlogin = { rate = \"1/1m\", brust = 3 }\n",
        2,
        26,
        "unknown field `brust`",
    );
    err_at(
        "[[gateway.tcp]]\nlisten = \"0.0.0.0:1\"\nupstream = \"a:1\"\nside = \"client\"\nproxy = true\n",
        5,
        1,
        "unknown field `proxy`",
    );
    err_at("[store]\nkind = \"etcd\"\n", 2, 8, "unknown variant `etcd`");
    err_at("[privacy]\nlog_ips = \"yes\"\n", 2, 11, "invalid type");
    err_at(
        "[limits]\nclient = 5\n",
        2,
        10,
        "invalid type: integer `5`, expected a table",
    );
    err_at(
        "[[limits.client.target]]\nlogin = \"1/1m\"\n",
        1,
        1,
        "invalid type: array, expected a table",
    );
    err_at("[store]\nmax_keys = 99999999999999999999\n", 2, 12, "");
    err_at(
        "[limits.client.target]\nlogin = \"1/1m\"\nlogin = \"2/1m\"\n",
        3,
        1,
        "duplicate key `login`",
    );
}

#[test]
fn preset_errors() {
    err_at("preset = \"huge\"\n", 1, 10, "unknown preset \"huge\"");
    err_at("preset = 3\n", 1, 10, "invalid type");
}

#[test]
fn rate_errors() {
    err_at(
        "[limits.client.target]\nlogin = \"ten/1m\"\n",
        2,
        9,
        "bad count \"ten\"",
    );
    err_at(
        "[limits.client.target]\nlogin = \"10/1w\"\n",
        2,
        9,
        "bad period \"1w\"",
    );
    err_at(
        "[limits.client.target]\nlogin = \"10\"\n",
        2,
        9,
        "expected `count/period`",
    );
    err_at(
        "[limits.client.target]\nlogin = \"0/1m\"\n",
        2,
        9,
        "greater than zero",
    );
    err_at("[limits.client.target]\nlogin = 10\n", 2, 9, "needs a period");
    err_at("[limits.client.target]\nlogin = true\n", 2, 9, "invalid type");
    err_at("[limits.client.target]\nlogin = []\n", 2, 9, "empty list");
    err_at(
        "[limits.client.target]\nlogin = { rate = \"10/1m\", burst = 0 }\n",
        2,
        35,
        "greater than zero",
    );
    err_at(
        "[limits.client.target]\nlogin = { burst = 3 }\n",
        2,
        9,
        "missing field `rate`",
    );
    err_at(
        "[limits.client.target]\nlogin = \"10KiB/1m\"\n",
        2,
        9,
        "counts events, not bytes",
    );
    err_at(
        "[limits.client.target]\nmedia_create = \"10/1m\"\n",
        2,
        16,
        "counts bytes",
    );
}

#[test]
fn action_and_per_errors() {
    err_at(
        "[limits.client.target]\nteleport = \"1/1m\"\n",
        2,
        1,
        "unknown client action \"teleport\"",
    );
    err_at(
        "[limits.client.target]\ntransaction = \"1/1m\"\n",
        2,
        1,
        "it is a federation action",
    );
    err_at(
        "[limits.client.global]\nlogin = { rate = \"1/1m\", per = \"ip\" }\n",
        2,
        32,
        "`per` only applies to target limits",
    );
    err_at(
        "[limits.client.target]\nlogin = { rate = \"1/1m\", per = \"mac\" }\n",
        2,
        32,
        "unknown target kind \"mac\"",
    );
    err_at(
        "[limits.client.target]\nlogin = { rate = \"1/1m\", per = \"global\" }\n",
        2,
        32,
        "unknown target kind",
    );
    err_at(
        "[limits.client.target]\nrequest = [\n  { rate = \"1/1m\", per = \"user\" },\n  { rate = \"2/1m\", per = \"user\" },\n]\n",
        4,
        3,
        "different `per`",
    );
    err_at("[actions.client]\nlogin = \"ip\"\n", 2, 1, "built in");
    err_at("[actions.client]\nNew-Thing = \"ip\"\n", 2, 1, "bad action name");
    err_at("[actions.client]\nthing = \"mac\"\n", 2, 9, "unknown target kind");
    err_at(
        "[actions.server]\nthing = \"ip\"\n",
        1,
        10,
        "unknown field `server`",
    );
}

#[test]
fn concurrency_errors() {
    err_at(
        "[concurrency.client.target]\nconnection = 0\n",
        2,
        14,
        "between 1 and",
    );
    err_at(
        "[concurrency.client.target]\nconnection = -3\n",
        2,
        14,
        "between 1 and",
    );
    err_at(
        "[concurrency.client.target]\nconnection = \"20\"\n",
        2,
        14,
        "expected a number",
    );
    err_at(
        "[concurrency.client.target]\nconnection = { max = 0 }\n",
        2,
        22,
        "between 1 and",
    );
    err_at(
        "[concurrency.client.global]\nconnection = { max = 5, per = \"ip\" }\n",
        2,
        31,
        "`per` only applies",
    );
    err_at(
        "[concurrency.client.target]\nwarp = 3\n",
        2,
        1,
        "unknown client action",
    );
}

#[test]
fn server_store_network_errors() {
    err_at(
        "[server]\nlisten = \"localhost\"\n",
        2,
        10,
        "not an address with a port",
    );
    err_at("[server]\nmax_body_bytes = 10\n", 2, 18, "between 1024");
    err_at("[server]\nmax_body_bytes = -1\n", 2, 18, "invalid value");
    err_at("[server]\nstate_dir = \"\"\n", 2, 13, "empty path");
    err_at("[store]\nkind = \"redis\"\n", 2, 8, "needs a `url`");
    err_at(
        "[store]\nurl = \"redis://x\"\n",
        2,
        7,
        "only used with kind = \"redis\"",
    );
    err_at(
        "[store]\nkind = \"redis\"\nurl = \"http://x\"\n",
        3,
        7,
        "not a Redis URL",
    );
    err_at("[store]\ncluster = true\n", 2, 11, "only used with kind");
    err_at("[store]\nmax_keys = 0\n", 2, 12, "between 1024");
    err_at(
        "[store]\non_error = \"panic\"\n",
        2,
        12,
        "unknown variant `panic`",
    );
    let redis = "[store]\nkind = \"redis\"\nurl = \"redis://x\"\n";
    err_at(&format!("{redis}key_prefix = \"a b\"\n"), 4, 14, "key_prefix");
    err_at(
        &format!("{redis}command_timeout = \"fast\"\n"),
        4,
        19,
        "bad period",
    );
    err_at(
        &format!("{redis}connect_timeout = \"0s\"\n"),
        4,
        19,
        "greater than zero",
    );
    err_at("[store]\nlocal_admission = 50\n", 2, 19, "only used with kind");
    err_at(
        &format!("{redis}local_admission = 0\n"),
        4,
        19,
        "between 1 (off) and 10000",
    );
    err_at(
        &format!("{redis}local_admission = -3\n"),
        4,
        19,
        "between 1 (off) and 10000",
    );
    err_at(
        &format!("{redis}local_admission = 10001\n"),
        4,
        19,
        "between 1 (off) and 10000",
    );
    err_at(
        &format!("{redis}local_admission = \"50\"\n"),
        4,
        19,
        "invalid type",
    );
    err_at(
        &format!("{redis}local_hold = \"5ms\"\n"),
        4,
        14,
        "between 10ms and 60s",
    );
    err_at(
        &format!("{redis}local_hold = \"2m\"\n"),
        4,
        14,
        "between 10ms and 60s",
    );
    err_at("[store]\nlocal_hold = \"1s\"\n", 2, 14, "only used with kind");
    err_at(
        "[network]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
        2,
        34,
        "not an IP address",
    );
    err_at(
        "[network]\ntrusted_proxies = \"10.0.0.0/8\"\n",
        2,
        19,
        "invalid type",
    );
    err_at("[network]\nipv4_prefix = 8\n", 2, 15, "between 16 and 32");
    err_at("[network]\nipv6_prefix = 129\n", 2, 15, "between 32 and 128");
    err_at("[network]\nipv6_prefix = 300\n", 2, 15, "invalid value");
}

#[test]
fn exempt_blocklist_override_errors() {
    err_at("[exempt]\nnetworks = [\"nope\"]\n", 2, 13, "not an IP address");
    err_at("[exempt]\ntargets = [\"global\"]\n", 2, 12, "`global` cannot be");
    err_at(
        "[exempt]\ntargets = [\"user:bob\"]\n",
        2,
        12,
        "not a Matrix user ID",
    );
    err_at(
        "[blocklist]\nservers = [\"bad host\"]\n",
        2,
        12,
        "not a valid server name",
    );
    err_at(
        "[blocklist]\nnetworks = [\"1.2.3\"]\n",
        2,
        13,
        "not an IP address",
    );
    err_at("[[override]]\ntarget = \"ip:10.0.0.0/8\"\n", 1, 1, "needs one of");
    err_at(
        "[[override]]\ntarget = \"ip:10.0.0.0/8\"\nmultiply = 2\nunlimited = true\n",
        4,
        13,
        "exactly one of",
    );
    err_at(
        "[[override]]\ntarget = \"ip:x\"\nmultiply = 2\n",
        2,
        10,
        "not an IP address",
    );
    err_at(
        "[[override]]\ntarget = \"mac:1\"\nmultiply = 2\n",
        2,
        10,
        "unknown target kind",
    );
    err_at(
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nmultiply = 0\n",
        3,
        12,
        "above 0",
    );
    err_at(
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nmultiply = nan\n",
        3,
        12,
        "above 0",
    );
    err_at(
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nrate = \"5/1m\"\n",
        3,
        8,
        "needs `actions`",
    );
    err_at(
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nactions = [\"login\", \"fly\"]\nmultiply = 2\n",
        3,
        21,
        "unknown action \"fly\"",
    );
    err_at(
        "[[override]]\ntarget = \"user:@a:b.org\"\nactions = [\"media_create\"]\nrate = \"5/1m\"\n",
        4,
        8,
        "counts bytes",
    );
    err_at(
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nunlimited = false\n",
        3,
        13,
        "does nothing",
    );
    err_at("[[override]]\nmultiply = 2\n", 1, 1, "missing field `target`");
    err_at(
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nactions = []\nmultiply = 2\n",
        3,
        11,
        "empty `actions`",
    );
}

#[test]
fn autoban_errors() {
    // One rule without a side and one with: they overlap (both would apply).
    err_at(
        "[[autoban]]\naction = \"request\"\ndenials = 1\nwithin = \"1m\"\nban = \"1m\"\n[[autoban]]\naction = \"request\"\nside = \"client\"\ndenials = 2\nwithin = \"1m\"\nban = \"1m\"\n",
        7,
        10,
        "merge them",
    );
    // Different sides do not.
    ok("[[autoban]]\naction = \"request\"\nside = \"federation\"\ndenials = 1\nwithin = \"1m\"\nban = \"1m\"\n[[autoban]]\naction = \"request\"\nside = \"client\"\ndenials = 2\nwithin = \"1m\"\nban = \"1m\"\n");
    err_at(
        "[[autoban]]\naction = \"fly\"\ndenials = 1\nwithin = \"1m\"\nban = \"1m\"\n",
        2,
        10,
        "unknown action",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\nside = \"federation\"\ndenials = 1\nwithin = \"1m\"\nban = \"1m\"\n",
        2,
        10,
        "unknown federation action",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\nside = \"server\"\n",
        3,
        8,
        "unknown side",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\nwithin = \"1m\"\nban = \"1m\"\n",
        1,
        1,
        "needs `denials`",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\ndenials = 5\nban = \"1m\"\n",
        1,
        1,
        "needs `within`",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\ndenials = 0\nwithin = \"1m\"\nban = \"1m\"\n",
        3,
        11,
        "between 1",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\ndenials = 5\nwithin = \"1m\"\nban = \"1h\"\nmax_ban = \"1m\"\n",
        6,
        11,
        "shorter than ban",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\ndenials = 5\nwithin = \"1m\"\nban = \"1h\"\nper = \"global\"\n",
        6,
        7,
        "cannot ban per",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\noff = true\nban = \"1h\"\n",
        4,
        7,
        "takes only",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\noff = true\n[[autoban]]\naction = \"login\"\noff = true\n",
        5,
        10,
        "second [[autoban]]",
    );
    err_at(
        "[[autoban]]\naction = \"login\"\ndenials = 5\nwithin = \"1m\"\nban = \"1w\"\n",
        5,
        7,
        "bad period",
    );
}

#[test]
fn bandwidth_errors() {
    err_at(
        "[bandwidth.client]\nper_connection = \"10/1s\"\n",
        2,
        18,
        "counts bytes",
    );
    err_at(
        "[bandwidth.client]\nper_ip = \"fast\"\n",
        2,
        10,
        "expected `count/period`",
    );
    err_at(
        "[limits.client.target]\nbandwidth = \"1MiB/1s\"\n[bandwidth.client]\nper_ip = \"1MiB/1s\"\n",
        4,
        10,
        "set twice",
    );
    err_at(
        "[bandwidth.server]\nper_ip = \"1MiB/1s\"\n",
        1,
        12,
        "unknown field `server`",
    );
}

#[test]
fn gateway_errors() {
    let tcp = |body: &str| format!("[[gateway.tcp]]\n{body}");
    err_at(
        &tcp("listen = \"0.0.0.0:5222\"\nupstream = \"a:1\"\n"),
        1,
        1,
        "missing field `side`",
    );
    err_at(
        &tcp("listen = \"0.0.0.0:5222\"\nupstream = \"a:1\"\nside = \"c2s\"\n"),
        4,
        8,
        "unknown side",
    );
    err_at(
        &tcp("listen = \"0.0.0.0:5222\"\nupstream = \"localhost\"\nside = \"client\"\n"),
        3,
        12,
        "host:port",
    );
    err_at(
        &tcp("listen = \"0.0.0.0:5222\"\nupstream = \"::1:5222\"\nside = \"client\"\n"),
        3,
        12,
        "host:port",
    );
    err_at(
        &tcp("listen = \"0.0.0.0:5222\"\nupstream = \"a:1\"\nside = \"client\"\nsend_proxy = \"v3\"\n"),
        5,
        14,
        "unknown variant `v3`",
    );
    err_at(
        &tcp("listen = \"0.0.0.0:5222\"\nupstream = \"a:1\"\nside = \"client\"\naccept_proxy = true\n"),
        5,
        16,
        "trusted_proxies",
    );
    // A wildcard takes the port on every address: the API's 127.0.0.1:8470 too.
    err_at(
        &tcp("listen = \"0.0.0.0:8470\"\nupstream = \"a:1\"\nside = \"client\"\n"),
        2,
        10,
        "already used",
    );
    // `[::]` also takes IPv4 (dual stack by default).
    err_at(
        "[[gateway.tcp]]\nlisten = \"0.0.0.0:5222\"\nupstream = \"a:1\"\nside = \"client\"\n[[gateway.tcp]]\nlisten = \"[::]:5222\"\nupstream = \"a:1\"\nside = \"client\"\n",
        6,
        10,
        "already used",
    );
    // Distinct addresses on one port are fine.
    ok("[[gateway.tcp]]\nlisten = \"127.0.0.1:5222\"\nupstream = \"a:1\"\nside = \"client\"\n[[gateway.tcp]]\nlisten = \"127.0.0.2:5222\"\nupstream = \"a:1\"\nside = \"client\"\n[[gateway.tcp]]\nlisten = \"[::1]:5222\"\nupstream = \"a:1\"\nside = \"client\"\n");
    err_at(
        &tcp("listen = \"127.0.0.1:8470\"\nupstream = \"a:1\"\nside = \"client\"\n"),
        2,
        10,
        "already used",
    );
    let http = |body: &str| format!("[[gateway.http]]\n{body}");
    err_at(
        &http("listen = \"0.0.0.0:8008\"\nupstream = \"127.0.0.1:8008\"\nprotocol = \"matrix\"\n"),
        3,
        12,
        "base URL",
    );
    err_at(
        &http("listen = \"0.0.0.0:8008\"\nupstream = \"http://a:1/x\"\nprotocol = \"matrix\"\n"),
        3,
        12,
        "no path",
    );
    err_at(
        &http("listen = \"0.0.0.0:8008\"\nupstream = \"http://a:1\"\nprotocol = \"xmpp\"\n"),
        4,
        12,
        "unknown variant `xmpp`",
    );
}

#[test]
fn http_gateway_options() {
    let base = "[[gateway.http]]\nlisten = \"127.0.0.1:8008\"\nupstream = \"http://127.0.0.1:18008\"\n";
    let c = ok(&format!("{base}protocol = \"matrix\"\n"));
    let g = &c.gateway.http[0];
    assert_eq!(g.user_identity, UserIdentity::Whoami);
    assert_eq!(g.long_polls_per_account, 8);
    assert_eq!(g.workers, None);
    assert!(g.rules.is_empty() && g.appservices.is_empty() && g.tls_cert.is_none());
    let c = ok(&format!(
        "{base}protocol = \"generic\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nuser_identity = \"token_hash\"\nlong_polls_per_account = 2\nworkers = 3\n\
         [[gateway.http.appservice]]\nid = \"irc\"\ntoken_file = \"irc.token\"\n\
         [[gateway.http.rule]]\nmethod = \"POST\"\npath = \"/upload/*\"\naction = \"media_create\"\nbytes = true\n\
         [[gateway.http.rule]]\npath = \"/fed\"\nside = \"federation\"\naction = \"transaction\"\n"
    ));
    let g = &c.gateway.http[0];
    assert_eq!(g.user_identity, UserIdentity::TokenHash);
    assert_eq!(g.long_polls_per_account, 2);
    assert_eq!(g.workers, Some(3));
    assert_eq!(g.appservices[0].id, "irc");
    assert_eq!(g.tls_key.as_deref(), Some(std::path::Path::new("k.pem")));
    assert_eq!(
        g.rules[0],
        HttpRule {
            method: Some("POST".into()),
            path: "/upload/*".into(),
            side: Side::Client,
            action: "media_create".into(),
            bytes: true,
            long_poll: false,
        }
    );
    assert_eq!(g.rules[1].side, Side::Federation);
    let c = ok(&format!(
        "{base}protocol = \"generic\"\n[[gateway.http.rule]]\npath = \"/events\"\naction = \"request\"\nlong_poll = true\n"
    ));
    assert!(c.gateway.http[0].rules[0].long_poll);

    let m = |body: &str| format!("{base}protocol = \"matrix\"\n{body}");
    err_at(&m("tls_cert = \"c.pem\"\n"), 5, 12, "tls_key");
    err_at(&m("tls_key = \"k.pem\"\n"), 5, 11, "tls_cert");
    err_at(
        &m("user_identity = \"guess\"\n"),
        5,
        17,
        "unknown variant `guess`",
    );
    err_at(&m("long_polls_per_account = 0\n"), 5, 26, "between 1 and 1024");
    err_at(&m("workers = 0\n"), 5, 11, "between 1 and 256");
    err_at(
        &m("upstream_ca = \"ca.pem\"\n"),
        5,
        15,
        "needs an https:// upstream",
    );
    let https = "[[gateway.http]]\nlisten = \"127.0.0.1:8008\"\nupstream = \"https://hs.example:8448\"\nprotocol = \"matrix\"\n";
    let c = ok(&format!("{https}upstream_ca = \"ca.pem\"\n"));
    assert_eq!(
        c.gateway.http[0].upstream_ca.as_deref(),
        Some(std::path::Path::new("ca.pem"))
    );
    assert_eq!(ok(&m("")).gateway.http[0].body_timeout, Duration::from_secs(60));
    let c = ok(&m("body_timeout = \"500ms\"\n"));
    assert_eq!(c.gateway.http[0].body_timeout, Duration::from_millis(500));
    err_at(&m("body_timeout = \"soon\"\n"), 5, 16, "period");
    assert_eq!(
        ok(&m("")).gateway.http[0].upstream_timeout,
        Duration::from_secs(60)
    );
    let c = ok(&m("upstream_timeout = \"2m\"\n"));
    assert_eq!(c.gateway.http[0].upstream_timeout, Duration::from_secs(120));
    let c = ok(&m("real_ip_header = \"forwarded\"\n"));
    assert_eq!(c.gateway.http[0].real_ip_header, crate::RealIpHeader::Forwarded);
    err_at(&m("real_ip_header = \"x-real-ip\"\n"), 5, 18, "unknown variant");
    err_at(
        "[store]\nkind = \"redis\"\nurl = \"redis://a\"\nkey_prefix = \"{x}:\"\n",
        4,
        14,
        "braces",
    );
    err_at(
        "[store]\nkey_prefix = \"x:\"\n",
        2,
        14,
        "only used with kind = \"redis\"",
    );
    err_at(
        "[store]\ncommand_timeout = \"1s\"\n",
        2,
        19,
        "only used with kind = \"redis\"",
    );
    // Beyond what the Redis store keeps exact: refused here, as `serve` does.
    err_at(
        "[store]\nkind = \"redis\"\nurl = \"redis://a\"\n[limits.client.target]\nlogin = \"5/365d\"\n",
        2,
        8,
        "104 days",
    );
    ok("[limits.client.target]\nlogin = \"5/365d\"\n");
    // An override's replacement rate too.
    err_at(
        "[store]\nkind = \"redis\"\nurl = \"redis://a\"\n[[override]]\ntarget = \"user:@a:example.org\"\nactions = [\"login\"]\nrate = \"5/365d\"\n",
        4,
        1,
        "104 days",
    );
    err_at(
        &m("[[gateway.http.rule]]\npath = \"/x\"\naction = \"teleport\"\n"),
        7,
        10,
        "unknown client action",
    );
    // A rule charges as its action counts: bytes by default for a byte
    // action, and a mismatch is an error.
    let c = ok(&m(
        "[[gateway.http.rule]]\npath = \"/up\"\naction = \"media_create\"\n",
    ));
    assert!(c.gateway.http[0].rules[0].bytes);
    err_at(
        &m("[[gateway.http.rule]]\npath = \"/up\"\naction = \"media_create\"\nbytes = false\n"),
        7,
        10,
        "counts bytes",
    );
    err_at(
        &m("[[gateway.http.rule]]\npath = \"/x\"\naction = \"login\"\nbytes = true\n"),
        7,
        10,
        "counts events",
    );
    err_at(
        &m("[[gateway.http.rule]]\npath = \"x\"\naction = \"login\"\n"),
        6,
        8,
        "start with '/'",
    );
    err_at(
        &m("[[gateway.http.rule]]\npath = \"/a*b\"\naction = \"login\"\n"),
        6,
        8,
        "end in '*'",
    );
    err_at(
        &m("[[gateway.http.rule]]\nmethod = \"post\"\npath = \"/a\"\naction = \"login\"\n"),
        6,
        10,
        "upper-case",
    );
    err_at(
        &m("[[gateway.http.rule]]\npath = \"/a\"\naction = \"login\"\ncost = 3\n"),
        8,
        1,
        "unknown field `cost`",
    );
    err_at(
        &m("[[gateway.http.appservice]]\nid = \"a\"\ntoken_file = \"t\"\n[[gateway.http.appservice]]\nid = \"a\"\ntoken_file = \"u\"\n"),
        9,
        6,
        "twice",
    );
}

#[test]
fn hostile_input_never_panics() {
    let samples = [
        "\u{0}",
        "[[[",
        "a = \"\\u{d800}\"",
        "[limits.client.target]\nlogin = { rate = \"99999999999999999999999/1ms\" }",
        "[limits.client.target]\nlogin = \"1/99999999999999999999d\"",
        "[limits.client.target]\nlogin = [[1]]",
        "[limits.client.target]\nlogin = [{ rate = \"1/1m\" }, \"x\"]",
        "[concurrency.client.target]\nconnection = 99999999999999999999",
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nmultiply = 1e308",
        "[[override]]\ntarget = \"ip:1.2.3.4\"\nmultiply = inf",
        "[[autoban]]\naction = \"login\"\ndenials = 99999999999\nwithin = \"1m\"\nban = \"1m\"",
        "é = 1",
    ];
    for s in samples {
        let _ = parse(s, "t.toml");
    }
    // Every truncation of a full config is either valid or a located error.
    let full = include_str!("../../../examples/public_medium.toml");
    for (i, _) in full.char_indices() {
        match parse(&full[..i], "t.toml") {
            Ok(_) | Err(ConfigError::Invalid { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn tidy_speaks_toml() {
    assert_eq!(
        compile::tidy("invalid type: integer `5`, expected struct RawStore"),
        "invalid type: integer `5`, expected a table"
    );
    assert_eq!(
        compile::tidy("invalid type: sequence, expected a map"),
        "invalid type: array, expected a table"
    );
}

#[test]
fn dotted_keys_and_nested_tables_are_the_same_config() {
    let a = ok("limits.client.target.login = { rate = \"2/1m\", burst = 4 }\n");
    let b = ok("[limits.client.target.login]\nrate = \"2/1m\"\nburst = 4\n");
    assert_eq!(a.policy.limits(), b.policy.limits());
    assert_eq!(
        kind(&a, "client.target.login.ip"),
        Some(LimitKind::Rate(
            "2/1m".parse::<Rate>().unwrap().with_burst(4).unwrap()
        ))
    );
}

#[test]
fn explicit_target_parses_normalise() {
    let t: Target = "user:@Alice:Example.org".parse().unwrap();
    let c = ok("[exempt]\ntargets = [\"user:@Alice:EXAMPLE.org\"]\n");
    assert!(c.policy.is_exempt(&t));
    assert_eq!(t.to_string(), "user:@Alice:example.org");
}

mod never_panics {
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../../examples/public_medium.toml");

    proptest! {
        #[test]
        fn arbitrary_text(text in "(?s).{0,200}") {
            let _ = crate::parse(&text, "fuzz.toml");
        }

        #[test]
        fn toml_shaped_text(text in r#"(\[{1,2}[a-z._]{1,30}\]{1,2}\n|[a-z_]{1,12} = ("[0-9a-zA-Z:/.@ ]{0,20}"|-?[0-9]{1,12}|true|\[\]|\{ ?[a-z]{1,6} = "[0-9/a-z]{0,8}" ?\})\n){0,12}"#) {
            match crate::parse(&text, "fuzz.toml") {
                Ok(_) | Err(crate::ConfigError::Invalid { .. }) => {}
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn one_byte_changed_in_a_real_config(at in 0..EXAMPLE.len(), byte in 0x20u8..0x7f) {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            bytes[at] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                if let Err(crate::ConfigError::Invalid { line, col, message, .. }) = crate::parse(&text, "f.toml") {
                    prop_assert!(line >= 1 && col >= 1);
                    prop_assert!(!message.contains('\n'));
                }
            }
        }
    }
}

#[test]
fn blocklist_sources_compile() {
    use crate::SourceLocation;
    use sluice_core::blocklist::parse::ListFormat;
    use sluice_core::blocklist::{DomainMatch, ListAction};
    let c = ok(r#"
[blocklist]
except = ["server:friend.example"]

[[blocklist.source]]
name = "jabberspam"
url = "https://raw.githubusercontent.com/JabberSPAM/blacklist/master/blacklist.txt"
format = "domains"
match = "subdomains"
side = "federation"

[[blocklist.source]]
name = "xmppbl"
path = "lists/xmppbl.txt"
format = "sha256"
action = "shadow"
refresh = "5m"

[[blocklist.source]]
name = "drop"
url = "http://127.0.0.1:8080/drop_v4.json"
format = "spamhaus_json"
refresh = "12h"
drop_when_stale = true

[[blocklist.source]]
name = "coc"
url = "https://matrix.example/_matrix/client/v3/rooms/!r:example/state"
format = "matrix_policy"
token_file = "token"
recommendations = ["m.ban"]
"#);
    let b = &c.blocklist;
    assert_eq!(b.sources.len(), 4);
    assert_eq!(b.except, vec!["server:friend.example".parse().unwrap()]);
    let j = &b.sources[0];
    assert_eq!(
        (j.format, j.domain_match, j.side, j.action),
        (
            ListFormat::Domains,
            DomainMatch::Subdomains,
            Some(sluice_core::Side::Federation),
            ListAction::Deny
        )
    );
    assert_eq!(j.refresh, std::time::Duration::from_secs(3600));
    assert_eq!(j.stale_after, std::time::Duration::from_secs(3 * 3600));
    let x = &b.sources[1];
    assert_eq!(x.location, SourceLocation::Path("lists/xmppbl.txt".into()));
    assert_eq!(
        (x.action, x.refresh, x.side),
        (ListAction::Shadow, std::time::Duration::from_secs(300), None)
    );
    assert!(b.sources[2].drop_when_stale);
    assert_eq!(b.sources[3].recommendations, vec!["m.ban".to_owned()]);
}

#[test]
fn blocklist_source_errors_point_at_the_key() {
    let src = |body: &str| format!("[[blocklist.source]]\nname = \"l\"\n{body}");
    err_at(
        &src("url = \"https://x.example/l\"\nformat = \"domains\"\nrefresh = \"30m\"\n"),
        5,
        11,
        "at least 1h",
    );
    err_at(
        &src("url = \"http://lists.example/l\"\nformat = \"domains\"\n"),
        3,
        7,
        "only to a loopback",
    );
    err_at(
        &src("url = \"ftp://lists.example/l\"\nformat = \"domains\"\n"),
        3,
        7,
        "unsupported scheme",
    );
    err_at(&src("format = \"domains\"\n"), 1, 1, "needs a url or a path");
    err_at(
        &src("path = \"a\"\nurl = \"https://x.example/\"\nformat = \"domains\"\n"),
        4,
        7,
        "not both",
    );
    err_at(&src("path = \"a\"\nformat = \"csv\"\n"), 4, 10, "unknown format");
    err_at(
        &src("path = \"a\"\nformat = \"cidr\"\nmatch = \"subdomains\"\n"),
        5,
        9,
        "domains format only",
    );
    err_at(
        &src("path = \"a\"\nformat = \"domains\"\nmatch = \"suffix\"\n"),
        5,
        9,
        "exact or subdomains",
    );
    err_at(
        &src("path = \"a\"\nformat = \"domains\"\naction = \"block\"\n"),
        5,
        10,
        "deny or shadow",
    );
    err_at(
        &src("path = \"a\"\nformat = \"domains\"\ntoken_file = \"t\"\n"),
        5,
        14,
        "matrix_policy sources only",
    );
    err_at(
        &src("path = \"a\"\nformat = \"domains\"\ndrop_when_stale = true\n"),
        5,
        19,
        "IP lists",
    );
    err_at(
        &src("path = \"a\"\nformat = \"domains\"\nmin_keep = 2.0\n"),
        5,
        12,
        "share from 0 to 1",
    );
    err_at(
        &src("path = \"a\"\nformat = \"domains\"\ncolour = \"red\"\n"),
        5,
        1,
        "unknown field",
    );
    err_at(
        "[[blocklist.source]]\nname = \"a b\"\npath = \"a\"\nformat = \"domains\"\n",
        2,
        8,
        "source name",
    );
    err_at(
        "[[blocklist.source]]\nname = \"l\"\npath = \"a\"\nformat = \"domains\"\n[[blocklist.source]]\nname = \"l\"\npath = \"b\"\nformat = \"cidr\"\n",
        6,
        8,
        "defined twice",
    );
    err_at(
        "[blocklist]\nexcept = [\"global\"]\n",
        2,
        11,
        "`global` cannot be",
    );
}
