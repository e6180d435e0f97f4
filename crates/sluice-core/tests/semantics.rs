//! Named tests for the engine's semantics ("Semantics that must hold" in the
//! design brief): all-or-nothing, exact GCRA timing, exemptions, bans,
//! blocklists, overrides, shadow mode, dry runs, reload, address grouping,
//! automatic bans, inspection and concurrency leases.
//!
//! Time is a [`FakeClock`]: nothing sleeps.

#![allow(clippy::unwrap_used, reason = "test helpers unwrap fixed, valid inputs")]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    AutobanRule, BanSource, Decision, Effect, Engine, EngineError, FakeClock, Lease, Limit, LimitKind,
    LimitOutcome, LimitReport, Matcher, MemoryStore, Normalizer, Override, Per, Policy, PolicyBuilder, Rate,
    Reason, Request, Scope, Side, Target, TargetKind,
};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

fn user(s: &str) -> Target {
    Target::user(s).unwrap()
}

fn per(k: TargetKind) -> Scope {
    Scope::Target(Per::Kind(k))
}

fn rate_limit(side: Side, action: &str, scope: Scope, r: &str) -> Limit {
    Limit::new(side, action, scope, LimitKind::Rate(rate(r)))
}

fn engine(policy: Policy) -> (Engine, FakeClock) {
    let clock = FakeClock::new();
    let e = Engine::new(
        policy,
        Arc::new(MemoryStore::new(1 << 14)),
        Arc::new(clock.clone()),
    );
    (e, clock)
}

fn login_policy(r: &str) -> PolicyBuilder {
    Policy::builder()
        .limit(rate_limit(Side::Client, "login", per(TargetKind::Ip), r))
        .unwrap()
}

fn login(addr: &str) -> Request<'static> {
    Request::client("login").ip(ip(addr))
}

fn report<'a>(d: &'a Decision, name: &str) -> &'a LimitReport {
    d.limits
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no report for {name} in {d:?}"))
}

fn inspect_one(e: &Engine, target: &Target, name: &str) -> LimitReport {
    e.inspect(target)
        .unwrap()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("inspect({target}) has no {name}"))
}

fn allowed_count(e: &Engine, req: &Request<'_>, n: usize) -> usize {
    (0..n).filter(|_| e.check(req).unwrap().allowed).count()
}

// ---------------------------------------------------------------- all-or-nothing

#[test]
fn denied_request_consumes_nothing_from_any_bucket() {
    // The global bucket comes first, so it is committed before the per-IP
    // bucket denies and must be rolled back.
    let policy = Policy::builder()
        .limit(rate_limit(Side::Client, "login", Scope::Global, "100/1m"))
        .unwrap()
        .limit(rate_limit(Side::Client, "login", per(TargetKind::Ip), "1/1m"))
        .unwrap()
        .build();
    let (e, _clock) = engine(policy);
    assert!(e.check(&login("203.0.113.7")).unwrap().allowed);
    for _ in 0..50 {
        let d = e.check(&login("203.0.113.7")).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reason, Reason::Limited("client.target.login.ip"));
        let g = report(&d, "client.global.login");
        assert_eq!(g.outcome, LimitOutcome::Allowed);
        assert_eq!(g.remaining, 99, "global bucket charged by a denied request");
        assert_eq!(report(&d, "client.target.login.ip").outcome, LimitOutcome::Denied);
    }
    assert_eq!(
        inspect_one(&e, &Target::Global, "client.global.login").remaining,
        99
    );
    let other = e.check(&login("203.0.113.8")).unwrap();
    assert!(other.allowed);
    assert_eq!(report(&other, "client.global.login").remaining, 98);
}

#[test]
fn denied_by_global_consumes_nothing_per_target() {
    let policy = Policy::builder()
        .limit(rate_limit(Side::Client, "login", per(TargetKind::Ip), "5/1m"))
        .unwrap()
        .limit(rate_limit(Side::Client, "login", Scope::Global, "2/1m"))
        .unwrap()
        .build();
    let (e, _clock) = engine(policy);
    assert!(e.check(&login("203.0.113.1")).unwrap().allowed);
    assert!(e.check(&login("203.0.113.2")).unwrap().allowed);
    for _ in 0..10 {
        let d = e.check(&login("203.0.113.1")).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reason, Reason::Limited("client.global.login"));
        assert_eq!(report(&d, "client.target.login.ip").remaining, 4);
    }
    assert_eq!(
        inspect_one(&e, &t("ip:203.0.113.1"), "client.target.login.ip").remaining,
        4
    );
}

// ---------------------------------------------------------------- GCRA timing

#[test]
fn n_at_once_then_one_every_period_over_n() {
    let (e, clock) = engine(login_policy("10/1m").build());
    let req = login("203.0.113.7");
    for i in 0..10 {
        let d = e.check(&req).unwrap();
        assert!(d.allowed, "request {i} of the burst denied");
        assert_eq!(d.retry_after, Duration::ZERO);
        let r = report(&d, "client.target.login.ip");
        assert_eq!(r.remaining, 9 - i);
        assert_eq!(r.reset, 6 * SEC * (i as u32 + 1));
        assert_eq!(r.limit, 10);
        assert_eq!(r.window, Some(MIN));
    }
    let d = e.check(&req).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, 6 * SEC);
    assert_eq!(report(&d, "client.target.login.ip").reset, MIN);
    // Then exactly one every 6 s.
    for _ in 0..5 {
        clock.advance(6 * SEC - Duration::from_nanos(1));
        let d = e.check(&req).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_nanos(1));
        clock.advance(Duration::from_nanos(1));
        assert!(e.check(&req).unwrap().allowed);
        let d = e.check(&req).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 6 * SEC);
    }
    // A full period idle refills the whole burst, and no more.
    clock.advance(MIN);
    assert_eq!(allowed_count(&e, &req, 20), 10);
}

#[test]
fn burst_changes_bucket_size_not_speed() {
    let r = rate("10/1m").with_burst(3).unwrap();
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "login",
            per(TargetKind::Ip),
            LimitKind::Rate(r),
        ))
        .unwrap()
        .build();
    let (e, clock) = engine(policy);
    let req = login("203.0.113.7");
    assert_eq!(allowed_count(&e, &req, 10), 3);
    let d = e.check(&req).unwrap();
    assert_eq!(d.retry_after, 6 * SEC);
    assert_eq!(report(&d, "client.target.login.ip").limit, 3);
    clock.advance(6 * SEC);
    assert_eq!(allowed_count(&e, &req, 10), 1);
    clock.advance(MIN);
    assert_eq!(allowed_count(&e, &req, 10), 3);
}

#[test]
fn byte_costs_are_exact_and_too_large_never_passes() {
    let policy = Policy::builder()
        .limit(rate_limit(
            Side::Client,
            "media_create",
            per(TargetKind::User),
            "10KiB/1s",
        ))
        .unwrap()
        .build();
    let (e, clock) = engine(policy);
    let r = rate("10KiB/1s");
    let emission = r.emission();
    assert_eq!(emission, 97_656); // 1e9 / 10240, rounded to nearest
    let req = |cost| {
        Request::client("media_create")
            .user(user("@a:example.org"))
            .cost(cost)
    };
    let name = "client.target.media_create.user";

    let big = e.check(&req(10_241)).unwrap();
    assert!(!big.allowed);
    assert_eq!(big.retry_after, Duration::MAX);
    assert_eq!(big.reason, Reason::TooLarge(name));
    assert_eq!(
        report(&big, name).remaining,
        10_240,
        "a too-large request consumed"
    );

    assert!(e.check(&req(4096)).unwrap().allowed);
    let d = e.check(&req(4096)).unwrap();
    assert!(d.allowed);
    assert_eq!(report(&d, name).remaining, 2048);
    let d = e.check(&req(4096)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_nanos(2048 * emission));
    // A smaller request that fits still passes: nothing was taken by the denial.
    assert!(e.check(&req(2048)).unwrap().allowed);
    clock.advance(Duration::from_nanos(4096 * emission - 1));
    assert!(!e.check(&req(4096)).unwrap().allowed);
    clock.advance(Duration::from_nanos(1));
    assert!(e.check(&req(4096)).unwrap().allowed);
    // The whole bucket at once from idle.
    clock.advance(SEC);
    assert!(e.check(&req(10_240)).unwrap().allowed);
}

#[test]
fn no_limit_applies_means_allowed() {
    let (e, _clock) = engine(login_policy("1/1h").build());
    // `join` is a known action with no limit; login without an IP has no target.
    let d = e
        .check(&Request::client("join").user(user("@a:example.org")))
        .unwrap();
    assert!(d.allowed && d.limits.is_empty());
    let d = e.check(&Request::client("login")).unwrap();
    assert!(d.allowed && d.limits.is_empty());
    assert_eq!(d.reason, Reason::Allowed);
}

#[test]
fn unknown_action_is_an_error() {
    let (e, _clock) = engine(login_policy("1/1h").build());
    let err = e.check(&Request::client("teleport").ip(ip("203.0.113.7")));
    assert!(
        matches!(err, Err(EngineError::UnknownAction { side: Side::Client, ref action }) if action == "teleport")
    );
    // `registration` exists on the client side only.
    let err = e.check(&Request::federation("registration"));
    assert!(matches!(
        err,
        Err(EngineError::UnknownAction {
            side: Side::Federation,
            ..
        })
    ));
    assert!(e.dry_run(&Request::client("teleport")).is_err());
    assert!(e.acquire(&Request::client("teleport"), SEC).is_err());
}

// ---------------------------------------------------------------- exemptions, bans, blocklist

#[test]
fn exemptions_win_over_limits_and_bans() {
    let policy = login_policy("1/1h")
        .exempt_network("10.0.0.0/8".parse().unwrap())
        .exempt_target(user("@ops:example.org"))
        .block(Matcher::Target(t("ip:10.9.9.9")))
        .build();
    let (e, _clock) = engine(policy);
    e.ban(t("ip:10.1.2.3"), None, "should not matter");
    for _ in 0..20 {
        let d = e.check(&login("10.1.2.3")).unwrap();
        assert!(d.allowed);
        assert_eq!(d.reason, Reason::Exempt(t("ip:10.1.2.3")));
        assert!(d.limits.is_empty());
    }
    // Exempt beats the blocklist too.
    assert!(e.check(&login("10.9.9.9")).unwrap().allowed);
    // An exempt user from a banned, limited address is still let through.
    e.ban(t("ip:203.0.113.7"), None, "abuse");
    let req = login("203.0.113.7").user(user("@ops:example.org"));
    let d = e.check(&req).unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reason, Reason::Exempt(user("@ops:example.org")));
    // Exempt requests consume nothing.
    e.unban(&t("ip:203.0.113.7"));
    assert!(e.check(&login("203.0.113.7")).unwrap().allowed);
    assert!(!e.check(&login("203.0.113.7")).unwrap().allowed);
}

#[test]
fn bans_win_over_limits_and_consume_nothing() {
    let (e, _clock) = engine(login_policy("3/1m").build());
    let ban = e.ban(t("ip:203.0.113.7"), Some(10 * MIN), "spam");
    assert_eq!(ban.source, BanSource::Manual);
    for _ in 0..10 {
        let d = e.check(&login("203.0.113.7")).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 10 * MIN);
        assert!(
            matches!(&d.reason, Reason::Banned(b) if b.target == t("ip:203.0.113.7") && &*b.reason == "spam")
        );
    }
    assert_eq!(
        inspect_one(&e, &t("ip:203.0.113.7"), "client.target.login.ip").remaining,
        3
    );
    assert!(e.unban(&t("ip:203.0.113.7")).is_some());
    assert_eq!(allowed_count(&e, &login("203.0.113.7"), 10), 3);
    // A permanent ban has no retry time.
    e.ban(t("ip:203.0.113.8"), None, "forever");
    assert_eq!(e.check(&login("203.0.113.8")).unwrap().retry_after, Duration::MAX);
}

#[test]
fn bans_on_any_target_of_the_request() {
    let policy = Policy::builder()
        .limit(rate_limit(
            Side::Federation,
            "transaction",
            per(TargetKind::Server),
            "10/1s",
        ))
        .unwrap()
        .build();
    let (e, _clock) = engine(policy);
    e.ban(Target::server("Evil.Example").unwrap(), None, "spam");
    let req = Request::federation("transaction")
        .ip(ip("198.51.100.1"))
        .server(Target::server("evil.example.").unwrap());
    assert!(matches!(e.check(&req).unwrap().reason, Reason::Banned(_)));
    let ok = Request::federation("transaction").server(Target::server("good.example").unwrap());
    assert!(e.check(&ok).unwrap().allowed);
}

#[test]
fn network_bans_cover_addresses_inside() {
    let (e, _clock) = engine(login_policy("100/1m").build());
    e.ban(t("ip:203.0.113.0/24"), None, "bad range");
    e.ban(t("ip:2001:db8:bad::/48"), None, "bad v6 range");
    assert!(!e.check(&login("203.0.113.99")).unwrap().allowed);
    assert!(!e.check(&login("::ffff:203.0.113.99")).unwrap().allowed);
    assert!(e.check(&login("203.0.114.1")).unwrap().allowed);
    assert!(!e.check(&login("2001:db8:bad:1234::1")).unwrap().allowed);
    assert!(e.check(&login("2001:db8:bae::1")).unwrap().allowed);
    // Unbanning takes the exact banned network.
    assert!(e.unban(&t("ip:203.0.113.99")).is_none());
    assert!(e.unban(&t("ip:203.0.113.0/24")).is_some());
    assert!(e.check(&login("203.0.113.99")).unwrap().allowed);
}

#[test]
fn banning_one_ipv6_address_bans_its_group() {
    // Requests are counted per /64; a ban on one address of the /64 must
    // apply to the key the engine actually checks, not be silently inert.
    let (e, _clock) = engine(login_policy("100/1m").build());
    e.ban(t("ip:2001:db8:1:2::1"), None, "one address");
    assert!(!e.check(&login("2001:db8:1:2::1")).unwrap().allowed);
    assert!(!e.check(&login("2001:db8:1:2:ffff::7")).unwrap().allowed);
    assert!(e.check(&login("2001:db8:1:3::1")).unwrap().allowed);
    assert!(e.unban(&t("ip:2001:db8:1:2::1")).is_some());
    assert!(e.check(&login("2001:db8:1:2::1")).unwrap().allowed);

    // Likewise with coarser IPv4 grouping.
    let policy = login_policy("100/1m")
        .normalizer(Normalizer::new(24, 48).unwrap())
        .build();
    let (e, _clock) = engine(policy);
    e.ban(t("ip:198.51.100.7"), None, "one address");
    assert!(!e.check(&login("198.51.100.200")).unwrap().allowed);
    assert!(e.check(&login("198.51.101.1")).unwrap().allowed);
    // A network narrower than the group (a NAT64 range, a /96 of the /48)
    // bans its group too: otherwise it would be listed and never match.
    e.ban(t("ip:198.51.102.0/28"), None, "part of a /24");
    assert!(!e.check(&login("198.51.102.200")).unwrap().allowed);
    let ban = e.ban(t("ip:2001:db8:7::/96"), None, "part of a /48");
    assert_eq!(ban.target, t("ip:2001:db8:7::/48"));
    assert!(!e.check(&login("2001:db8:7:1::5")).unwrap().allowed);
    assert!(e.check(&login("2001:db8:8::5")).unwrap().allowed);
}

#[test]
fn bans_expire_with_the_clock() {
    let (e, clock) = engine(login_policy("100/1m").build());
    e.ban(t("ip:203.0.113.7"), Some(10 * MIN), "cool down");
    assert_eq!(e.bans().list(e.now()).len(), 1);
    clock.advance(10 * MIN - Duration::from_nanos(1));
    let d = e.check(&login("203.0.113.7")).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_nanos(1));
    clock.advance(Duration::from_nanos(1));
    assert!(e.check(&login("203.0.113.7")).unwrap().allowed);
    assert!(e.bans().list(e.now()).is_empty());
}

#[test]
fn blocklist_denies_forever() {
    let policy = login_policy("100/1m")
        .limit(rate_limit(
            Side::Federation,
            "join",
            per(TargetKind::Server),
            "10/1d",
        ))
        .unwrap()
        .block(Matcher::Target(Target::server("evil.example").unwrap()))
        .block(Matcher::Network("192.0.2.0/24".parse().unwrap()))
        .build();
    let (e, _clock) = engine(policy);
    let d = e
        .check(&Request::federation("join").server(Target::server("EVIL.example").unwrap()))
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::MAX);
    assert_eq!(
        d.reason,
        Reason::Blocked(sluice_core::Blocked::config(
            Target::server("evil.example").unwrap()
        ))
    );
    let d = e.check(&login("192.0.2.55")).unwrap();
    assert!(matches!(d.reason, Reason::Blocked(_)));
    assert!(e.blocked(&t("ip:192.0.2.1")).is_some());
    assert!(e.blocked(&t("ip:192.0.3.1")).is_none());
    assert!(e.check(&login("192.0.3.1")).unwrap().allowed);
    // The blocklist wins over a ban's expiry (it is checked first).
    e.ban(t("ip:192.0.2.55"), Some(SEC), "also banned");
    assert!(matches!(
        e.check(&login("192.0.2.55")).unwrap().reason,
        Reason::Blocked(_)
    ));
}

// ---------------------------------------------------------------- blocklist sources

fn sources(e: &Engine, srcs: Vec<sluice_core::blocklist::Source>, except: &[&str]) {
    let mut ex = sluice_core::blocklist::Except::default();
    for x in except {
        ex.add(t(x));
    }
    e.set_blocklists(Arc::new(sluice_core::blocklist::Blocklists::new(
        srcs.into_iter().map(Arc::new).collect(),
        ex,
    )));
}

fn domain_source(
    name: &str,
    action: sluice_core::blocklist::ListAction,
    d: &str,
) -> sluice_core::blocklist::Source {
    let mut b = sluice_core::blocklist::SourceBuilder::new(name, action)
        .domain_match(sluice_core::blocklist::DomainMatch::Subdomains)
        .reason(Some("open registration spam"));
    b.add_domain(d, None).unwrap();
    b.add_network("198.51.100.0/24".parse().unwrap(), None);
    b.build()
}

#[test]
fn blocklist_sources_deny_name_the_entry_and_consume_nothing() {
    use sluice_core::blocklist::ListAction;
    let (e, _clock) = engine(login_policy("1/1m").build());
    sources(
        &e,
        vec![domain_source("jabberspam", ListAction::Deny, "spam.example")],
        &[],
    );
    let req = Request::client("login")
        .ip(ip("203.0.113.7"))
        .user(t("user:bot@xmpp.spam.example"));
    for _ in 0..3 {
        let d = e.check(&req).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::MAX);
        let Reason::Blocked(b) = &d.reason else {
            panic!("{:?}", d.reason)
        };
        let hit = b.list.as_ref().unwrap();
        assert_eq!((&*hit.source, hit.entry.as_str()), ("jabberspam", "spam.example"));
        assert_eq!(hit.reason.as_deref(), Some("open registration spam"));
    }
    assert_eq!(e.blocklists().sources()[0].stats().denied(), 3);
    // Nothing was consumed: the address's one login per minute is intact.
    assert!(e.check(&login("203.0.113.7")).unwrap().allowed);
    assert!(!e.admit(&login("198.51.100.4")).unwrap().allowed);
    // A dry run is not counted.
    e.dry_run(&req).unwrap();
    assert_eq!(e.blocklists().sources()[0].stats().denied(), 4);
}

#[test]
fn shadow_sources_report_and_never_deny() {
    use sluice_core::blocklist::ListAction;
    let (e, _clock) = engine(login_policy("100/1m").build());
    sources(
        &e,
        vec![domain_source("xmppbl", ListAction::Shadow, "grey.example")],
        &[],
    );
    let d = e
        .check(
            &Request::client("login")
                .ip(ip("203.0.113.7"))
                .server(t("server:grey.example")),
        )
        .unwrap();
    assert!(d.allowed);
    let fired: Vec<_> = d.fired().map(|l| (l.name, l.outcome)).collect();
    assert_eq!(
        fired,
        vec![("blocklist.xmppbl", sluice_core::LimitOutcome::ShadowDenied)]
    );
    assert_eq!(e.blocklists().sources()[0].stats().shadowed(), 1);
    assert!(e.admit(&login("198.51.100.1")).unwrap().allowed);
}

#[test]
fn except_cancels_list_hits_only_and_exemptions_win() {
    use sluice_core::blocklist::ListAction;
    let policy = login_policy("1/1m")
        .exempt_network("198.51.100.0/28".parse().unwrap())
        .build();
    let (e, _clock) = engine(policy);
    sources(
        &e,
        vec![domain_source("l", ListAction::Deny, "example")],
        &["server:friend.example"],
    );
    let friend = Request::client("login")
        .ip(ip("203.0.113.9"))
        .user(t("user:@me:friend.example"));
    assert!(e.check(&friend).unwrap().allowed);
    // Not an exemption from limits.
    assert!(matches!(e.check(&friend).unwrap().reason, Reason::Limited(_)));
    assert!(matches!(
        e.check(&login("198.51.100.3")).unwrap().reason,
        Reason::Exempt(_)
    ));
    assert!(matches!(
        e.check(&login("198.51.100.99")).unwrap().reason,
        Reason::Blocked(_)
    ));
}

#[test]
fn a_reload_keeps_the_sources_and_a_swap_replaces_them() {
    use sluice_core::blocklist::ListAction;
    let (e, _clock) = engine(login_policy("100/1m").build());
    sources(
        &e,
        vec![domain_source("l", ListAction::Deny, "spam.example")],
        &[],
    );
    e.reload(login_policy("50/1m").build());
    assert!(!e.check(&login("198.51.100.3")).unwrap().allowed);
    // The publisher dropped the network: gone at once, never merged.
    let mut b = sluice_core::blocklist::SourceBuilder::new("l", ListAction::Deny);
    b.add_domain("spam.example", None).unwrap();
    sources(&e, vec![b.build()], &[]);
    assert!(e.check(&login("198.51.100.3")).unwrap().allowed);
    sources(&e, Vec::new(), &[]);
    assert!(
        e.check(&Request::client("login").server(t("server:spam.example")))
            .unwrap()
            .allowed
    );
}

// ---------------------------------------------------------------- overrides

#[test]
fn overrides_multiply_replace_and_unlimit() {
    let policy = Policy::builder()
        .limit(rate_limit(Side::Client, "login", per(TargetKind::Ip), "10/1m"))
        .unwrap()
        .limit(rate_limit(
            Side::Client,
            "registration",
            per(TargetKind::Ip),
            "1/6m",
        ))
        .unwrap()
        .limit(rate_limit(Side::Client, "invite", per(TargetKind::User), "5/1d"))
        .unwrap()
        .limit(rate_limit(Side::Client, "invite", Scope::Global, "8/1d"))
        .unwrap()
        .override_limit(Override {
            matcher: Matcher::Network("10.0.0.0/8".parse().unwrap()),
            actions: vec!["login".into()],
            effect: Effect::Multiply(4.0),
        })
        .override_limit(Override {
            matcher: Matcher::Target(user("@bot:example.org")),
            actions: vec![],
            effect: Effect::Replace(rate("2/1d")),
        })
        .override_limit(Override {
            matcher: Matcher::Target(user("@admin:example.org")),
            actions: vec!["invite".into()],
            effect: Effect::Unlimited,
        })
        .build();
    let (e, clock) = engine(policy);
    // Multiply: 40 at once, then one every 1.5 s.
    let nat = login("10.20.30.40");
    assert_eq!(allowed_count(&e, &nat, 100), 40);
    let d = e.check(&nat).unwrap();
    assert_eq!(d.retry_after, Duration::from_millis(1500));
    assert_eq!(report(&d, "client.target.login.ip").limit, 40);
    clock.advance(Duration::from_millis(1500));
    assert_eq!(allowed_count(&e, &nat, 100), 1);
    // Outside the network: the plain limit.
    assert_eq!(allowed_count(&e, &login("11.0.0.1"), 100), 10);
    // The action filter: registration from the network is not multiplied.
    let reg = Request::client("registration").ip(ip("10.20.30.40"));
    assert_eq!(allowed_count(&e, &reg, 10), 1);

    // Replace, for every action of that user.
    let bot = Request::client("invite").user(user("@bot:example.org"));
    assert_eq!(allowed_count(&e, &bot, 10), 2);
    assert_eq!(
        report(&e.check(&bot).unwrap(), "client.target.invite.user").limit,
        2
    );
    // Unlimited lifts the per-target limit but the global one still applies.
    let admin = Request::client("invite").user(user("@admin:example.org"));
    let d = e.check(&admin).unwrap();
    assert!(d.allowed);
    assert_eq!(d.limits.len(), 1);
    assert_eq!(d.limits[0].name, "client.global.invite");
    // Global: 8 per day, 2 used by the bot and 1 by the admin.
    assert_eq!(allowed_count(&e, &admin, 100), 5);
    let d = e.check(&admin).unwrap();
    assert_eq!(d.reason, Reason::Limited("client.global.invite"));
}

#[test]
fn first_matching_override_wins() {
    let policy = login_policy("10/1m")
        .override_limit(Override {
            matcher: Matcher::Target(t("ip:10.0.0.1")),
            actions: vec!["login".into()],
            effect: Effect::Replace(rate("1/1m")),
        })
        .override_limit(Override {
            matcher: Matcher::Network("10.0.0.0/8".parse().unwrap()),
            actions: vec![],
            effect: Effect::Unlimited,
        })
        .build();
    let (e, _clock) = engine(policy);
    assert_eq!(allowed_count(&e, &login("10.0.0.1"), 10), 1);
    assert_eq!(allowed_count(&e, &login("10.0.0.2"), 50), 50);
}

// ---------------------------------------------------------------- shadow mode and dry runs

#[test]
fn shadow_limits_never_deny_but_report() {
    let policy = Policy::builder()
        .limit(rate_limit(Side::Client, "login", per(TargetKind::Ip), "2/1m").shadow(true))
        .unwrap()
        .limit(rate_limit(Side::Client, "login", Scope::Global, "5/1m"))
        .unwrap()
        .build();
    let (e, _clock) = engine(policy);
    let req = login("203.0.113.7");
    for i in 0..5 {
        let d = e.check(&req).unwrap();
        assert!(d.allowed, "shadow limit denied request {i}");
        assert_eq!(d.retry_after, Duration::ZERO);
        assert_eq!(d.reason, Reason::Allowed);
        let s = report(&d, "client.target.login.ip");
        assert!(s.shadow);
        if i < 2 {
            assert_eq!(s.outcome, LimitOutcome::Allowed);
            assert_eq!(s.remaining, 1 - i as u64);
            assert_eq!(d.fired().count(), 0);
        } else {
            assert_eq!(s.outcome, LimitOutcome::ShadowDenied);
            assert_eq!(s.remaining, 0);
            let fired: Vec<_> = d.fired().map(|l| l.name.to_string()).collect();
            assert_eq!(fired, ["client.target.login.ip"]);
        }
    }
    // The enforced global limit still denies, and the shadow bucket is not
    // consumed by the denied request.
    let d = e.check(&login("203.0.113.8")).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::Limited("client.global.login"));
    assert_eq!(report(&d, "client.target.login.ip").remaining, 2);
    assert_eq!(
        inspect_one(&e, &t("ip:203.0.113.8"), "client.target.login.ip").remaining,
        2
    );
}

#[test]
fn dry_run_consumes_nothing() {
    let (e, _clock) = engine(login_policy("3/1m").build());
    let req = login("203.0.113.7");
    for _ in 0..100 {
        let d = e.dry_run(&req).unwrap();
        assert!(d.allowed);
        assert_eq!(report(&d, "client.target.login.ip").remaining, 3);
    }
    assert_eq!(allowed_count(&e, &req, 3), 3);
    let checked = e.check(&req).unwrap();
    let dry = e.dry_run(&req).unwrap();
    assert!(!dry.allowed);
    assert_eq!(dry.retry_after, checked.retry_after);
    assert_eq!(dry.reason, checked.reason);
    assert_eq!(dry.limits, checked.limits);
    assert!(dry.lease.is_none() && dry.banned.is_none());
}

#[test]
fn dry_runs_never_trigger_automatic_bans() {
    let policy = login_policy("1/1h").autoban(autoban_rule(2)).build();
    let (e, _clock) = engine(policy);
    let req = login("203.0.113.7");
    assert!(e.check(&req).unwrap().allowed);
    for _ in 0..50 {
        let d = e.dry_run(&req).unwrap();
        assert!(!d.allowed && d.banned.is_none());
    }
    assert!(e.bans().is_empty());
}

// ---------------------------------------------------------------- reload

#[test]
fn reload_keeps_counters_and_bans() {
    let (e, clock) = engine(login_policy("3/1m").build());
    let req = login("203.0.113.7");
    assert_eq!(allowed_count(&e, &req, 3), 3);
    e.ban(t("ip:198.51.100.1"), Some(MIN), "x");
    // Same limit names, other limits added: counters and bans carry over.
    let policy = login_policy("3/1m")
        .limit(rate_limit(
            Side::Client,
            "registration",
            per(TargetKind::Ip),
            "1/6m",
        ))
        .unwrap()
        .build();
    e.reload(policy);
    assert!(!e.check(&req).unwrap().allowed);
    assert!(matches!(
        e.check(&login("198.51.100.1")).unwrap().reason,
        Reason::Banned(_)
    ));
    // A changed rate under the same name keeps the debt, measured in time.
    e.reload(login_policy("6/1m").build());
    // TAT is 60 s ahead; with 10 s per unit and a 60 s bucket that is full.
    assert!(!e.check(&req).unwrap().allowed);
    clock.advance(10 * SEC);
    assert!(e.check(&req).unwrap().allowed);
    // The new policy's exemptions apply at once.
    e.reload(
        login_policy("6/1m")
            .exempt_network("203.0.113.0/24".parse().unwrap())
            .build(),
    );
    assert_eq!(allowed_count(&e, &req, 50), 50);
}

// ---------------------------------------------------------------- address grouping

#[test]
fn ipv6_is_grouped_per_64_and_mapped_ipv4_is_ipv4() {
    let (e, _clock) = engine(login_policy("2/1m").build());
    assert!(e.check(&login("2001:db8:1:2::1")).unwrap().allowed);
    assert!(
        e.check(&login("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .unwrap()
            .allowed
    );
    let d = e.check(&login("2001:db8:1:2:1234::99")).unwrap();
    assert!(!d.allowed, "a /64 is one bucket");
    assert_eq!(d.limits[0].target, t("ip:2001:db8:1:2::/64"));
    assert!(e.check(&login("2001:db8:1:3::1")).unwrap().allowed);

    assert!(e.check(&login("203.0.113.7")).unwrap().allowed);
    let d = e.check(&login("::ffff:203.0.113.7")).unwrap();
    assert!(d.allowed);
    assert_eq!(d.limits[0].target, t("ip:203.0.113.7"));
    assert_eq!(d.limits[0].remaining, 0);
    assert!(!e.check(&login("::ffff:203.0.113.7")).unwrap().allowed);
    assert!(!e.check(&login("203.0.113.7")).unwrap().allowed);
    // IPv4 is per address by default.
    assert!(e.check(&login("203.0.113.8")).unwrap().allowed);
}

#[test]
fn custom_grouping_prefixes() {
    let policy = login_policy("1/1m")
        .normalizer(Normalizer::new(24, 48).unwrap())
        .build();
    let (e, _clock) = engine(policy);
    assert!(e.check(&login("198.51.100.1")).unwrap().allowed);
    assert!(!e.check(&login("198.51.100.254")).unwrap().allowed);
    assert!(!e.check(&login("::ffff:198.51.100.9")).unwrap().allowed);
    assert!(e.check(&login("2001:db8:1:2::1")).unwrap().allowed);
    assert!(!e.check(&login("2001:db8:1:ffff::1")).unwrap().allowed);
}

#[test]
fn anonymous_ip_limits_only_anonymous_requests() {
    let policy = Policy::builder()
        .limit(rate_limit(
            Side::Client,
            "request",
            Scope::Target(Per::AnonymousIp),
            "2/1m",
        ))
        .unwrap()
        .limit(rate_limit(Side::Client, "request", per(TargetKind::User), "5/1m"))
        .unwrap()
        .build();
    let (e, _clock) = engine(policy);
    let anon = Request::client("request").ip(ip("203.0.113.7"));
    assert_eq!(allowed_count(&e, &anon, 10), 2);
    // Logged-in users behind the same NAT are not locked out.
    for u in ["@a:example.org", "@b:example.org"] {
        let req = Request::client("request").ip(ip("203.0.113.7")).user(user(u));
        let d = e.check(&req).unwrap();
        assert!(d.allowed);
        assert_eq!(d.limits.len(), 1);
        assert_eq!(allowed_count(&e, &req, 10), 4);
    }
}

// ---------------------------------------------------------------- automatic bans

fn autoban_rule(denials: u32) -> AutobanRule {
    AutobanRule {
        side: Some(Side::Client),
        action: "login".into(),
        per: TargetKind::Ip,
        denials,
        window: MIN,
        ban: 10 * MIN,
        max_ban: 30 * MIN,
        forget_after: Duration::from_secs(3600),
    }
}

/// Sends denied requests until one places a ban; returns how many it took.
fn deny_until_banned(e: &Engine, req: &Request<'_>, max: usize) -> (usize, sluice_core::Ban) {
    for i in 1..=max {
        let d = e.check(req).unwrap();
        assert!(!d.allowed, "expected a denial");
        assert!(matches!(d.reason, Reason::Limited(_)), "{:?}", d.reason);
        if let Some(b) = d.banned {
            return (i, *b);
        }
    }
    panic!("no ban after {max} denials");
}

#[test]
fn automatic_bans_are_bounded() {
    // An attacker with a whole IPv6 range trips the rule from one /64
    // after another: the ban list stops growing at the cap (the limits
    // still deny), and expired bans make room again.
    let policy = login_policy("1/1d").autoban(autoban_rule(1)).build();
    // A store with room for every attacker's key (a smaller one would, as
    // designed, start new keys from its sketch of evicted heavy ones).
    let clock = FakeClock::new();
    let e = Engine::new(
        policy,
        Arc::new(MemoryStore::new(1 << 18)),
        Arc::new(clock.clone()),
    );
    let cap = sluice_core::MAX_AUTO_BANS;
    for i in 0..=cap as u64 {
        let req = login(&format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff));
        assert!(e.check(&req).unwrap().allowed);
        assert!(!e.check(&req).unwrap().allowed);
    }
    assert_eq!(e.bans().len(), cap);
    // A manual ban is still placed.
    e.ban(t("ip:198.51.100.0/24"), None, "by hand");
    assert_eq!(e.bans().len(), cap + 1);
    // Once the automatic ones have expired, new ones are placed again.
    clock.advance(11 * MIN);
    let req = login("2001:db8:ffff:1::1");
    assert!(e.check(&req).unwrap().allowed);
    assert!(e.check(&req).unwrap().banned.is_some());
    assert_eq!(e.bans().len(), 2);
}

#[test]
fn autoban_after_n_denials_doubling_up_to_the_cap_then_forgotten() {
    let policy = login_policy("1/1d").autoban(autoban_rule(3)).build();
    let (e, clock) = engine(policy);
    let req = login("2001:db8:1:2::1");
    let target = t("ip:2001:db8:1:2::/64");
    assert!(e.check(&req).unwrap().allowed);

    let mut expected = [10 * MIN, 20 * MIN, 30 * MIN, 30 * MIN].into_iter();
    for round in 0..4 {
        let (n, ban) = deny_until_banned(&e, &req, 10);
        assert_eq!(n, 3, "round {round}: ban after {n} denials");
        assert_eq!(ban.target, target);
        assert_eq!(ban.source, BanSource::Auto);
        let len = expected.next().unwrap();
        assert_eq!(
            ban.expires,
            Some(e.now() + len.as_nanos() as u64),
            "round {round}"
        );
        // While banned: denied as banned, with the ban's remaining time.
        let d = e.check(&login("2001:db8:1:2::99")).unwrap();
        assert!(matches!(d.reason, Reason::Banned(ref b) if b.source == BanSource::Auto));
        assert_eq!(d.retry_after, len);
        clock.advance(len);
        assert!(e.bans().find(&target, e.now()).is_none());
    }
    // A clean record for `forget_after` after the last ban resets the doubling.
    clock.advance(Duration::from_secs(3600));
    let (_, ban) = deny_until_banned(&e, &req, 10);
    assert_eq!(ban.expires, Some(e.now() + (10 * MIN).as_nanos() as u64));
}

#[test]
fn autoban_needs_the_denials_within_the_window() {
    let policy = login_policy("1/1d").autoban(autoban_rule(3)).build();
    let (e, clock) = engine(policy);
    let req = login("203.0.113.7");
    assert!(e.check(&req).unwrap().allowed);
    // One denial every 30 s: never 3 within a minute.
    for _ in 0..50 {
        let d = e.check(&req).unwrap();
        assert!(!d.allowed && d.banned.is_none());
        clock.advance(30 * SEC);
    }
    assert!(e.bans().is_empty());
    // Other actions' denials are not counted by a login rule.
    let policy = login_policy("1/1d")
        .limit(rate_limit(
            Side::Client,
            "registration",
            per(TargetKind::Ip),
            "1/1d",
        ))
        .unwrap()
        .autoban(autoban_rule(3))
        .build();
    e.reload(policy);
    let reg = Request::client("registration").ip(ip("203.0.113.9"));
    for _ in 0..20 {
        assert!(e.check(&reg).unwrap().banned.is_none());
    }
    assert!(e.bans().is_empty());
}

// ---------------------------------------------------------------- inspect

#[test]
fn inspect_reports_state() {
    let policy = Policy::builder()
        .limit(rate_limit(Side::Client, "login", per(TargetKind::Ip), "10/1m"))
        .unwrap()
        .limit(rate_limit(
            Side::Client,
            "request",
            Scope::Target(Per::AnonymousIp),
            "100/1m",
        ))
        .unwrap()
        .limit(rate_limit(Side::Client, "login", Scope::Global, "1000/1m"))
        .unwrap()
        .limit(Limit::new(
            Side::Client,
            "connection",
            per(TargetKind::Ip),
            LimitKind::Concurrency(20),
        ))
        .unwrap()
        .build();
    let (e, clock) = engine(policy);
    let target = t("ip:203.0.113.7");
    let fresh = e.inspect(&target).unwrap();
    let names: Vec<_> = fresh.iter().map(|l| l.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "client.target.login.ip",
            "client.target.request.anonymous_ip",
            "client.concurrent.connection.ip"
        ]
    );
    assert!(fresh
        .iter()
        .all(|l| l.remaining == l.limit && l.reset == Duration::ZERO));

    assert_eq!(allowed_count(&e, &login("203.0.113.7"), 3), 3);
    let _g = e
        .acquire_guard(&Request::client("connection").ip(ip("203.0.113.7")))
        .unwrap()
        .unwrap();
    let r = inspect_one(&e, &target, "client.target.login.ip");
    assert_eq!((r.remaining, r.reset, r.limit), (7, 18 * SEC, 10));
    assert_eq!(r.outcome, LimitOutcome::Allowed);
    let c = inspect_one(&e, &target, "client.concurrent.connection.ip");
    assert_eq!((c.remaining, c.limit, c.window), (19, 20, None));
    let g = inspect_one(&e, &Target::Global, "client.global.login");
    assert_eq!(g.remaining, 997);

    assert_eq!(allowed_count(&e, &login("203.0.113.7"), 20), 7);
    let r = inspect_one(&e, &target, "client.target.login.ip");
    assert_eq!((r.remaining, r.outcome), (0, LimitOutcome::Denied));
    clock.advance(6 * SEC);
    assert_eq!(inspect_one(&e, &target, "client.target.login.ip").remaining, 1);
    // Inspecting consumes nothing.
    assert_eq!(allowed_count(&e, &login("203.0.113.7"), 20), 1);
}

#[test]
fn inspect_normalises_addresses_and_applies_overrides() {
    let policy = login_policy("10/1m")
        .override_limit(Override {
            matcher: Matcher::Network("2001:db8::/32".parse().unwrap()),
            actions: vec!["login".into()],
            effect: Effect::Multiply(4.0),
        })
        .build();
    let (e, _clock) = engine(policy);
    assert_eq!(allowed_count(&e, &login("2001:db8:1:2::1"), 10), 10);
    // The operator types one address; the engine counts its /64, with the
    // override's 40-unit bucket.
    for spelled in ["ip:2001:db8:1:2::1", "ip:2001:db8:1:2::/64"] {
        let r = inspect_one(&e, &t(spelled), "client.target.login.ip");
        assert_eq!(r.target, t("ip:2001:db8:1:2::/64"));
        assert_eq!((r.limit, r.remaining), (40, 30), "{spelled}");
        assert_eq!(r.reset, Duration::from_millis(15_000));
    }
}

// ---------------------------------------------------------------- leases

fn lease_policy(cap: u32) -> Policy {
    Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "request",
            per(TargetKind::User),
            LimitKind::Concurrency(cap),
        ))
        .unwrap()
        .build()
}

fn upload(u: &str) -> Request<'static> {
    Request::client("request").user(user(u))
}

#[test]
fn leases_cap_release_and_expire() {
    let (e, clock) = engine(lease_policy(3));
    let req = upload("@a:example.org");
    let leases: Vec<Lease> = (0..3)
        .map(|i| {
            let d = e.acquire(&req, 30 * SEC).unwrap();
            assert!(d.allowed, "lease {i} refused");
            let r = report(&d, "client.concurrent.request.user");
            assert_eq!(r.remaining, 2 - i as u64);
            d.lease.unwrap()
        })
        .collect();
    assert_eq!(leases[0].expires, e.now() + (30 * SEC).as_nanos() as u64);
    let d = e.acquire(&req, 30 * SEC).unwrap();
    assert!(!d.allowed && d.lease.is_none());
    assert_eq!(d.reason, Reason::Limited("client.concurrent.request.user"));
    // Other users are not affected.
    assert!(e.acquire(&upload("@b:example.org"), 30 * SEC).unwrap().allowed);
    // Checks (not acquires) ignore concurrency caps.
    assert!(e.check(&req).unwrap().allowed);

    assert!(e.release(leases[1].id).unwrap());
    assert!(!e.release(leases[1].id).unwrap(), "double release");
    assert!(!e.release(12345).unwrap(), "unknown lease");
    let token = leases[0].token();
    assert_eq!(Lease::parse_token(&token), Some(leases[0].id));
    let again = e.acquire(&req, 30 * SEC).unwrap();
    assert!(again.allowed);
    assert!(!e.acquire(&req, 30 * SEC).unwrap().allowed);
    assert_eq!(e.store().active_leases(e.now()), 4);

    // Lease 0 and 2 lapse at 30 s; the re-acquired one 30 s after it was taken.
    clock.advance(30 * SEC - Duration::from_nanos(1));
    assert!(!e.acquire(&req, 30 * SEC).unwrap().allowed);
    clock.advance(Duration::from_nanos(1));
    assert!(!e.release(leases[0].id).unwrap(), "expired lease released");
    let taken: usize = (0..5).filter(|_| e.acquire(&req, SEC).unwrap().allowed).count();
    assert_eq!(taken, 3);
}

#[test]
fn guards_release_on_drop() {
    let (e, _clock) = engine(lease_policy(2));
    let req = upload("@a:example.org");
    let g1 = e.acquire_guard(&req).unwrap().unwrap();
    let g2 = e.acquire_guard(&req).unwrap().unwrap();
    assert!(g1.decision().allowed);
    let denied = e.acquire_guard(&req).unwrap().unwrap_err();
    assert!(!denied.allowed);
    drop(g1);
    let g3 = e.acquire_guard(&req).unwrap().unwrap();
    assert!(e.acquire_guard(&req).unwrap().is_err());
    drop((g2, g3));
    assert_eq!(e.store().active_leases(e.now()), 0);
    let held = inspect_one(&e, &user("@a:example.org"), "client.concurrent.request.user");
    assert_eq!(held.remaining, 2);
    // Guards without any cap (no limit applies) are fine and free nothing.
    let g = e.acquire_guard(&Request::client("join")).unwrap().unwrap();
    drop(g);
}

#[test]
fn a_split_guard_keeps_only_what_holds_a_lease() {
    let (e, _clock) = engine(lease_policy(1));
    let req = upload("@a:example.org");
    let (d, kept) = e.acquire_guard(&req).unwrap().unwrap().split();
    assert!(d.allowed && !d.limits.is_empty(), "the decision moves out whole");
    let kept = kept.expect("a capped guard holds a lease");
    assert!(
        e.acquire_guard(&req).unwrap().is_err(),
        "still held after the split"
    );
    drop(kept);
    assert!(
        e.acquire_guard(&req).unwrap().is_ok(),
        "released with the kept guard"
    );
    // No cap applies: nothing to keep.
    let (d, kept) = e
        .acquire_guard(&Request::client("join"))
        .unwrap()
        .unwrap()
        .split();
    assert!(d.allowed && kept.is_none());
}

#[test]
fn acquire_checks_rates_all_or_nothing() {
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "connection",
            per(TargetKind::Ip),
            LimitKind::Concurrency(2),
        ))
        .unwrap()
        .limit(rate_limit(
            Side::Client,
            "connection",
            per(TargetKind::Ip),
            "3/1h",
        ))
        .unwrap()
        .build();
    let (e, _clock) = engine(policy);
    let req = Request::client("connection").ip(ip("203.0.113.7"));
    let a = e.acquire(&req, MIN).unwrap();
    let b = e.acquire(&req, MIN).unwrap();
    assert!(a.allowed && b.allowed);
    // The cap denies: the rate bucket is not charged.
    for _ in 0..5 {
        let d = e.acquire(&req, MIN).unwrap();
        assert_eq!(d.reason, Reason::Limited("client.concurrent.connection.ip"));
        assert_eq!(report(&d, "client.target.connection.ip").remaining, 1);
    }
    assert!(e.release(a.lease.unwrap().id).unwrap());
    assert!(e.acquire(&req, MIN).unwrap().allowed);
    // Now the rate denies (3 per hour): no lease is held for the denied call.
    assert!(e.release(b.lease.unwrap().id).unwrap());
    let d = e.acquire(&req, MIN).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::Limited("client.target.connection.ip"));
    assert_eq!(e.store().active_leases(e.now()), 1);
}

#[test]
fn concurrency_overrides_scale_the_cap() {
    let policy = Policy::builder()
        .limit(Limit::new(
            Side::Client,
            "connection",
            per(TargetKind::Ip),
            LimitKind::Concurrency(2),
        ))
        .unwrap()
        .override_limit(Override {
            matcher: Matcher::Network("10.0.0.0/8".parse().unwrap()),
            actions: vec![],
            effect: Effect::Multiply(3.0),
        })
        .build();
    let (e, _clock) = engine(policy);
    let nat = Request::client("connection").ip(ip("10.0.0.1"));
    let guards: Vec<_> = (0..10)
        .filter_map(|_| e.acquire_guard(&nat).unwrap().ok())
        .collect();
    assert_eq!(guards.len(), 6);
    let plain = Request::client("connection").ip(ip("11.0.0.1"));
    let guards2: Vec<_> = (0..10)
        .filter_map(|_| e.acquire_guard(&plain).unwrap().ok())
        .collect();
    assert_eq!(guards2.len(), 2);
}
