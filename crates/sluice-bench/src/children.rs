//! Memory and flood measurements. Each runs in a fresh child process (the
//! bench binary re-executing itself with `--child`), so its resident-set
//! figures are not blurred by what the timing runs allocated and freed, and
//! its peak (VmHWM) is its own. A child prints `key=value` lines.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{Clock, CoarseClock, Engine, MemoryStore, Rate, Request, Store};

use crate::contenders::{governor_quota, ip_of, per_sec, policy, ACTION, GLOBAL_PER_SEC, TARGET_PER_SEC};

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
pub fn status_kib(field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What a child reported.
pub type Report = BTreeMap<String, String>;

/// Runs `current_exe --child ARGS…` and parses its `key=value` lines.
pub fn spawn(args: &[String]) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let out = Command::new(exe)
        .arg("--child")
        .args(args)
        .output()
        .map_err(|e| format!("cannot start child {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "child {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Entry point of a child: `mem-sluice KEYS`, `mem-governor KEYS` or `flood KEYS MAX_KEYS`.
pub fn child(args: &[String]) -> Result<(), String> {
    let num = |i: usize| -> Result<u32, String> {
        args.get(i)
            .ok_or_else(|| format!("child {args:?}: missing argument {i}"))?
            .parse()
            .map_err(|e| format!("child {args:?}: argument {i}: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("mem-sluice") => mem_sluice(num(1)?),
        Some("mem-governor") => mem_governor(num(1)?),
        Some("flood") => flood(num(1)?, num(2)?),
        other => return Err(format!("unknown child {other:?}")),
    }
    Ok(())
}

fn kv(k: &str, v: impl std::fmt::Display) {
    println!("{k}={v}");
}

/// A realistic per-key rate (keys stay live for minutes) and a generous global one.
fn live_policy_rates() -> (Rate, Rate) {
    let target: Rate = "10/1h".parse().expect("a valid rate literal");
    (target, per_sec(GLOBAL_PER_SEC))
}

/// sluice: a store capped at `keys`, then `keys` distinct live keys through the engine.
fn mem_sluice(keys: u32) {
    let clock = CoarseClock::new();
    let rss0 = status_kib("VmRSS");
    let store = Arc::new(MemoryStore::new(keys as usize));
    let rss1 = status_kib("VmRSS");
    let (target, global) = live_policy_rates();
    let engine = Engine::new(policy(target, global), store.clone(), Arc::new(clock.clone()));
    let mut allowed = 0u64;
    for i in 0..keys {
        let req = Request::client(ACTION).ip(ip_of(i));
        allowed += u64::from(engine.check(&req).is_ok_and(|d| d.allowed));
    }
    let rss2 = status_kib("VmRSS");
    let stats = store.stats();
    kv("keys", keys);
    kv("allowed", allowed);
    kv("capacity", stats.capacity);
    kv("bytes", stats.bytes);
    kv("evictions", stats.evictions);
    kv("tracked", store.tracked_keys(clock.now()));
    kv("rss_create_kib", rss1.saturating_sub(rss0));
    kv("rss_total_kib", rss2.saturating_sub(rss0));
    kv("hwm_kib", status_kib("VmHWM"));
}

/// governor: `keys` distinct keys through a keyed limiter (it keeps them all).
fn mem_governor(keys: u32) {
    let rss0 = status_kib("VmRSS");
    let limiter: governor::DefaultKeyedRateLimiter<IpAddr> =
        governor::RateLimiter::keyed(governor_quota(TARGET_PER_SEC));
    let mut allowed = 0u64;
    for i in 0..keys {
        allowed += u64::from(limiter.check_key(&ip_of(i)).is_ok());
    }
    let rss1 = status_kib("VmRSS");
    kv("keys", keys);
    kv("allowed", allowed);
    kv("tracked", limiter.len());
    kv("rss_total_kib", rss1.saturating_sub(rss0));
    kv("hwm_kib", status_kib("VmHWM"));
}

/// The `i`-th flood address: a distinct IPv6 /64 in 2001:db8::/32.
fn flood_ip(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8u128 << 96) | (u128::from(i) << 64) | 1,
    ))
}

/// `flood` distinct /64s through `Engine::check` with `max_keys`; an abuser
/// limited before must still be limited after.
fn flood(flood: u32, max_keys: u32) {
    let clock = CoarseClock::new();
    let store = Arc::new(MemoryStore::new(max_keys as usize));
    let (target, global) = live_policy_rates();
    let engine = Engine::new(policy(target, global), store.clone(), Arc::new(clock.clone()));
    let abuser: IpAddr = "2001:db8:ffff:ffff::7".parse().expect("a valid address literal");
    let check = |ip: IpAddr| engine.check(&Request::client(ACTION).ip(ip));
    let burst = target.burst();
    let mut abuser_allowed = 0u64;
    for _ in 0..burst {
        abuser_allowed += u64::from(check(abuser).is_ok_and(|d| d.allowed));
    }
    let before = check(abuser).ok();
    kv("abuser_burst_allowed", abuser_allowed);
    kv(
        "abuser_limited_before",
        before.as_ref().is_some_and(|d| !d.allowed),
    );
    kv("hwm_before_kib", status_kib("VmHWM"));
    kv("rss_before_kib", status_kib("VmRSS"));
    let t0 = Instant::now();
    let mut allowed = 0u64;
    for i in 0..flood {
        allowed += u64::from(check(flood_ip(i)).is_ok_and(|d| d.allowed));
    }
    let elapsed = t0.elapsed();
    let after = check(abuser).ok();
    let stats = store.stats();
    kv("flood", flood);
    kv("max_keys", max_keys);
    kv("capacity", stats.capacity);
    kv("bytes", stats.bytes);
    kv("flood_allowed", allowed);
    kv(
        "ns_per_decision",
        elapsed.as_nanos() as f64 / f64::from(flood.max(1)),
    );
    kv("seconds", elapsed.as_secs_f64());
    kv("evictions", stats.evictions);
    kv("tracked", store.tracked_keys(clock.now()));
    kv("hwm_after_kib", status_kib("VmHWM"));
    kv("rss_after_kib", status_kib("VmRSS"));
    kv("abuser_limited_after", after.as_ref().is_some_and(|d| !d.allowed));
    kv(
        "abuser_retry_after_s",
        after.map_or(Duration::ZERO, |d| d.retry_after).as_secs(),
    );
}
